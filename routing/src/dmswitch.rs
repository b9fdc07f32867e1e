//! Export of a volume's page map to the Linux device-mapper `switch` target
//! (kernel Documentation/admin-guide/device-mapper/switch.rst), so that a stock
//! Linux host routes every I/O to the node that owns it: one dm-multipath device
//! per node below, one dm-switch device above, with the region size equal to the
//! page size in 512-byte sectors. See docs/dm-switch.md for the whole recipe.
//!
//! - [`table_line`]: `0 <sectors> switch <num_paths> <region_size> 0 <dev> <offset>...`
//!   for `dmsetup create <name> --table`.
//! - [`set_region_mappings`]: the messages for `dmsetup message <name> 0 ...` in
//!   the kernel's syntax: hexadecimal without `0x`, `<index>:<path>` to start, a
//!   bare `:<path>` for the next region, `R<n>,<m>` to repeat the last `n`
//!   mappings over the next `m` regions.
//! - [`parse`]: reads a table line and messages back exactly as the kernel does,
//!   so tests can check that the export means what the table says.

use std::fmt::Write as _;

use crate::model::{NodeId, VolumeMap};

/// Sector size of the device mapper: every length and offset counts 512 bytes.
pub const SECTOR: u64 = 512;

/// Longest message we emit, in bytes. The kernel takes any length, but each
/// message is one `dmsetup message` command line; 4 KiB keeps it far below
/// ARG_MAX and the dm ioctl buffer while still carrying hundreds of mappings.
pub const MAX_MESSAGE_LEN: usize = 4096;

/// Longest repeat cycle the encoder looks for: patterns of placement repeat with
/// the number of nodes (or a small multiple), and 256 covers any cluster we plan
/// for while keeping the search linear.
pub const MAX_CYCLE: usize = 256;

/// One lower device of the switch: the path (usually a dm-multipath device) that
/// reaches one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmPath {
    /// The node this device reaches.
    pub node: NodeId,
    /// Device path, e.g. `/dev/mapper/mosaic-n1`.
    pub device: String,
    /// Start sector on that device (0 for a whole LUN).
    pub offset: u64,
}

/// Why an export or a parse failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DmSwitchError {
    /// A page is owned by a node that has no path in the given order.
    #[error("no path to node {0}")]
    NoPath(NodeId),
    /// No paths at all.
    #[error("a switch needs at least one path")]
    NoPaths,
    /// A table line that is not a switch table; the text says what is wrong.
    #[error("bad table line: {0}")]
    BadTable(&'static str),
    /// A message the kernel would refuse (with the offending argument).
    #[error("bad set_region_mappings argument {0:?}")]
    BadMessage(String),
}

/// A switch device as parsed back from its table line and messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmSwitchMap {
    /// Length of the device in sectors.
    pub sectors: u64,
    /// Region size in sectors.
    pub region_size: u64,
    /// Lower devices with their start sectors, in path order.
    pub devices: Vec<(String, u64)>,
    /// Path number of each region.
    pub regions: Vec<u32>,
}

fn path_numbers(vm: &VolumeMap, paths: &[DmPath]) -> Result<Vec<u32>, DmSwitchError> {
    if paths.is_empty() {
        return Err(DmSwitchError::NoPaths);
    }
    let mut last: Option<(NodeId, u32)> = None;
    vm.primaries()
        .iter()
        .map(|&node| {
            if let Some((n, p)) = last {
                if n == node {
                    return Ok(p);
                }
            }
            let p = paths
                .iter()
                .position(|d| d.node == node)
                .ok_or(DmSwitchError::NoPath(node))? as u32;
            last = Some((node, p));
            Ok(p)
        })
        .collect()
}

/// Sectors of the volume and of one region (page).
fn geometry(vm: &VolumeMap) -> (u64, u64) {
    let v = vm.volume();
    (
        v.blocks * u64::from(v.block_size) / SECTOR,
        v.page_size / SECTOR,
    )
}

/// The `dmsetup create` table line for the volume over `paths` (in that order:
/// path number i is `paths[i]`).
pub fn table_line(vm: &VolumeMap, paths: &[DmPath]) -> Result<String, DmSwitchError> {
    if paths.is_empty() {
        return Err(DmSwitchError::NoPaths);
    }
    let (sectors, region) = geometry(vm);
    let mut line = format!("0 {sectors} switch {} {region} 0", paths.len());
    for p in paths {
        let _ = write!(line, " {} {}", p.device, p.offset);
    }
    Ok(line)
}

/// Length of the repeat that starts at `i`: the best cycle `n` (at most `i`, at
/// most [`MAX_CYCLE`]) and how many regions it covers.
fn best_repeat(m: &[u32], i: usize) -> (usize, usize) {
    let mut best = (0, 0);
    for n in 1..=i.min(MAX_CYCLE) {
        let mut len = 0;
        while i + len < m.len() && m[i + len] == m[i + len - n] {
            len += 1;
        }
        if len > best.1 {
            best = (n, len);
        }
    }
    best
}

/// The `set_region_mappings` messages (without the `dmsetup message <dev> 0`
/// prefix) that set every region of the volume to its owner's path. Each message
/// starts with an explicit index, since the kernel counts from zero in each.
pub fn set_region_mappings(vm: &VolumeMap, paths: &[DmPath]) -> Result<Vec<String>, DmSwitchError> {
    let m = path_numbers(vm, paths)?;
    let mut messages = Vec::new();
    let mut msg = String::new();
    let mut i = 0;
    while i < m.len() {
        let mut token = String::new();
        let mut advance = 1;
        if msg.is_empty() {
            msg.push_str("set_region_mappings");
            let _ = write!(token, "{i:x}:{:x}", m[i]);
        } else {
            let (n, len) = best_repeat(&m, i);
            let repeat = format!("R{n:x},{len:x}");
            // A repeat pays when it is shorter than the bare mappings it replaces.
            if len > 0 && repeat.len() < len * 3 {
                token = repeat;
                advance = len;
            } else {
                let _ = write!(token, ":{:x}", m[i]);
            }
        }
        if msg.len() + 1 + token.len() > MAX_MESSAGE_LEN && msg != "set_region_mappings" {
            messages.push(std::mem::take(&mut msg));
            continue; // restart this region with an explicit index
        }
        msg.push(' ');
        msg.push_str(&token);
        i += advance;
    }
    if !msg.is_empty() {
        messages.push(msg);
    }
    Ok(messages)
}

/// The kernel's hex reader: digits until the first non-digit (none gives 0).
fn parse_hex(s: &[u8]) -> (u64, &[u8]) {
    let mut v: u64 = 0;
    let mut i = 0;
    while i < s.len() {
        let d = match s[i] {
            b'0'..=b'9' => s[i] - b'0',
            b'a'..=b'f' => s[i] - b'a' + 10,
            b'A'..=b'F' => s[i] - b'A' + 10,
            _ => break,
        };
        v = v.wrapping_shl(4) | u64::from(d);
        i += 1;
    }
    (v, &s[i..])
}

/// Read a switch table line and `set_region_mappings` messages back into the
/// region -> path map, following the kernel's rules (regions start round robin
/// over the paths, as the kernel initialises them).
pub fn parse(table: &str, messages: &[String]) -> Result<DmSwitchMap, DmSwitchError> {
    let t: Vec<&str> = table.split_whitespace().collect();
    let num = |s: &str, what| s.parse::<u64>().map_err(|_| DmSwitchError::BadTable(what));
    if t.len() < 6 || t[2] != "switch" {
        return Err(DmSwitchError::BadTable("not a switch table"));
    }
    let sectors = num(t[1], "length")?;
    let num_paths = num(t[3], "number of paths")?;
    let region_size = num(t[4], "region size")?;
    let optional = num(t[5], "optional argument count")?;
    if optional != 0 {
        return Err(DmSwitchError::BadTable(
            "no optional arguments are supported",
        ));
    }
    if region_size == 0 || num_paths == 0 {
        return Err(DmSwitchError::BadTable("zero region size or paths"));
    }
    let rest = &t[6..];
    if rest.len() as u64 != num_paths * 2 {
        return Err(DmSwitchError::BadTable(
            "path count does not match the paths",
        ));
    }
    let devices = rest
        .chunks(2)
        .map(|c| Ok((c[0].to_owned(), num(c[1], "path offset")?)))
        .collect::<Result<Vec<_>, _>>()?;
    let nr_regions = sectors.div_ceil(region_size);
    let mut regions: Vec<u32> = (0..nr_regions).map(|r| (r % num_paths) as u32).collect();

    for message in messages {
        let mut args = message.split_whitespace();
        match args.next() {
            Some(cmd) if cmd.eq_ignore_ascii_case("set_region_mappings") => {}
            _ => return Err(DmSwitchError::BadMessage(message.clone())),
        }
        let mut index: u64 = 0;
        for arg in args {
            let bad = || DmSwitchError::BadMessage(arg.to_owned());
            let s = arg.as_bytes();
            if s[0] & 0xdf == b'R' {
                let s = &s[1..];
                if s.first() == Some(&b',') {
                    return Err(bad());
                }
                let (cycle, s) = parse_hex(s);
                if s.first() != Some(&b',') || s.len() < 2 {
                    return Err(bad());
                }
                let (count, s) = parse_hex(&s[1..]);
                if !s.is_empty() || cycle == 0 || cycle - 1 > index {
                    return Err(bad());
                }
                match index.checked_add(count) {
                    Some(end) if end < nr_regions => {}
                    _ => return Err(bad()),
                }
                for _ in 0..count {
                    index += 1;
                    regions[index as usize] = regions[(index - cycle) as usize];
                }
                continue;
            }
            let s = if s[0] == b':' {
                index += 1;
                s
            } else {
                let (v, s) = parse_hex(s);
                if s.first() != Some(&b':') {
                    return Err(bad());
                }
                index = v;
                s
            };
            let s = &s[1..];
            if s.is_empty() {
                return Err(bad());
            }
            let (path, s) = parse_hex(s);
            if !s.is_empty() || index >= nr_regions || path >= num_paths {
                return Err(bad());
            }
            regions[index as usize] = path as u32;
        }
    }
    Ok(DmSwitchMap {
        sectors,
        region_size,
        devices,
        regions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Replica, Volume, VolumeId};

    fn map(owners: &[u32]) -> VolumeMap {
        let v = Volume {
            id: VolumeId(1),
            name: "v".into(),
            blocks: owners.len() as u64 * 32 - 5,
            block_size: 512,
            page_size: 32 * 512,
            replicas: 0,
        };
        VolumeMap::from_parts(
            v,
            owners.iter().map(|&n| NodeId(n)).collect(),
            Vec::<Replica>::new(),
        )
    }

    fn paths(n: u32) -> Vec<DmPath> {
        (0..n)
            .map(|i| DmPath {
                node: NodeId(i),
                device: format!("/dev/mapper/mosaic-n{i}"),
                offset: 0,
            })
            .collect()
    }

    #[test]
    fn table_line_in_the_kernel_syntax() {
        let vm = map(&[0, 1, 2]);
        assert_eq!(
            table_line(&vm, &paths(3)).unwrap(),
            "0 91 switch 3 32 0 /dev/mapper/mosaic-n0 0 /dev/mapper/mosaic-n1 0 /dev/mapper/mosaic-n2 0"
        );
    }

    #[test]
    fn round_robin_compresses_to_one_repeat() {
        let owners: Vec<u32> = (0..1000).map(|p| p % 3).collect();
        let vm = map(&owners);
        let msgs = set_region_mappings(&vm, &paths(3)).unwrap();
        assert_eq!(
            msgs,
            vec!["set_region_mappings 0:0 :1 :2 R3,3e5".to_string()]
        );
    }

    #[test]
    fn the_kernel_documentation_example_parses() {
        let table =
            "0 4096 switch 3 128 0 /dev/vg1/switch0 0 /dev/vg1/switch1 0 /dev/vg1/switch2 0";
        let m = parse(table, &["set_region_mappings 0:0 :1 :2 :0 :1 :2 :1".into()]).unwrap();
        assert_eq!(&m.regions[..8], &[0, 1, 2, 0, 1, 2, 1, 1]);
        let big = "0 1048576 switch 3 128 0 a 0 b 0 c 0";
        let r = parse(big, &["set_region_mappings 1000:1 :2 R2,10".into()]).unwrap();
        let mut expect = vec![1u32, 2];
        for k in 0..16 {
            expect.push(if k % 2 == 0 { 1 } else { 2 });
        }
        assert_eq!(&r.regions[0x1000..0x1000 + 18], &expect[..]);
    }

    #[test]
    fn arguments_the_kernel_refuses_are_refused() {
        let table = "0 1024 switch 2 128 0 a 0 b 0";
        for bad in [
            "0:2", "0:", "x:1", "R,1", "0:0 R2,1", "0:0 R1,8", "0:1 R1", "8:0",
        ] {
            let m = format!("set_region_mappings {bad}");
            assert!(parse(table, &[m]).is_err(), "{bad} was accepted");
        }
        assert!(parse(table, &["set_region_mappings 0:1 R1,6".into()]).is_ok());
    }

    #[test]
    fn long_maps_split_into_messages_that_parse_back() {
        // An irregular map: no repeats to hide behind.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let owners: Vec<u32> = (0..5000)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((x >> 33) % 5) as u32
            })
            .collect();
        let vm = map(&owners);
        let ps = paths(5);
        let msgs = set_region_mappings(&vm, &ps).unwrap();
        assert!(msgs.len() > 1);
        assert!(msgs.iter().all(|m| m.len() <= MAX_MESSAGE_LEN));
        let parsed = parse(&table_line(&vm, &ps).unwrap(), &msgs).unwrap();
        assert_eq!(parsed.regions, owners);
        assert_eq!(parsed.region_size, 32);
    }

    #[test]
    fn a_node_without_a_path_is_an_error() {
        let vm = map(&[0, 3]);
        assert_eq!(
            set_region_mappings(&vm, &paths(2)),
            Err(DmSwitchError::NoPath(NodeId(3)))
        );
    }
}
