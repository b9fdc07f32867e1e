//! The routing table of one volume as initiators fetch it over SCSI: a versioned,
//! checksummed byte format, documented byte by byte in docs/wire-formats.md.
//!
//! Layout, all integers big-endian: a fixed 56-byte header (magic `MRTB`, format
//! version, header length, total length, run count, epoch, volume identity and
//! geometry, node count, name length), the volume name, the node list with each
//! node's NICs and portals, the page -> node map run-length encoded as pairs of
//! LEB128 varints (node index, run length), and a CRC32C of everything before it.
//!
//! The target serves the encoding in pieces ([`piece`]: offset and allocation
//! length, as a SCSI command asks); the initiator collects them with an
//! [`Assembler`]. A table that changes between two pieces fails the checksum, and
//! the initiator starts over. Decoding never panics: truncated or corrupt input is
//! an error.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hashbrown::HashMap;
use nom::bytes::complete::take;
use nom::number::complete::{be_u16, be_u32, be_u8};
use nom::IResult;

use crate::model::{Epoch, NicId, NodeId, NodeState, RoutingTable, VolumeId};

/// The four magic bytes that open an encoded table: "MRTB" (Mosaic Routing Table,
/// Binary).
pub const MAGIC: [u8; 4] = *b"MRTB";

/// The format version this code writes and reads.
pub const FORMAT_VERSION: u8 = 1;

/// Length of the fixed header; a later version may make it longer, and a reader
/// skips what it does not know.
pub const HEADER_LEN: usize = 56;

/// Length of the CRC32C trailer.
pub const TRAILER_LEN: usize = 4;

/// Largest encoding an [`Assembler`] accepts: 64 MiB, far above the worst case of
/// 2^32 pages alternating between nodes would need it, and a bound on memory that
/// a corrupt length field can make us allocate.
pub const MAX_ENCODED_LEN: usize = 64 << 20;

/// Offsets of the header fields (see docs/wire-formats.md).
mod off {
    pub const VERSION: usize = 4;
    pub const FLAGS: usize = 5;
    pub const HEADER_LEN: usize = 6;
    pub const TOTAL_LEN: usize = 8;
    pub const RUN_COUNT: usize = 12;
    pub const EPOCH: usize = 16;
    pub const VOLUME_ID: usize = 24;
    pub const VOLUME_BLOCKS: usize = 32;
    pub const BLOCK_SIZE: usize = 40;
    pub const PAGE_BLOCKS: usize = 44;
    pub const PAGE_COUNT: usize = 48;
    pub const NODE_COUNT: usize = 52;
    pub const NAME_LEN: usize = 54;
}

/// Why a table could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The table has no such volume.
    #[error("unknown volume {0}")]
    UnknownVolume(VolumeId),
    /// A count does not fit its field (more than 65,535 nodes, 255 NICs...).
    #[error("too many {0} for the wire format")]
    TooLarge(&'static str),
    /// The input ends before the table does.
    #[error("truncated: {needed} bytes needed, {have} present")]
    Truncated {
        /// Bytes the table needs.
        needed: usize,
        /// Bytes present.
        have: usize,
    },
    /// The input does not start with the magic bytes.
    #[error("not a routing table (bad magic)")]
    BadMagic,
    /// A format version this code does not read.
    #[error("unsupported format version {0}")]
    UnsupportedVersion(u8),
    /// The checksum does not match: corrupt, or the table changed between pieces.
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum {
        /// CRC32C in the trailer.
        stored: u32,
        /// CRC32C of the bytes received.
        computed: u32,
    },
    /// A field is out of its range or the parts do not add up; the text says which.
    #[error("malformed table: {0}")]
    Malformed(&'static str),
    /// A piece arrived that does not continue the bytes collected so far.
    #[error("piece at offset {got} does not follow the {have} bytes collected")]
    OutOfOrder {
        /// Offset of the piece.
        got: u64,
        /// Bytes collected so far.
        have: usize,
    },
}

/// One NIC of a node as the initiator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireNic {
    /// NIC index on its node.
    pub id: NicId,
    /// Link speed in Mbit/s.
    pub speed_mbps: u32,
    /// Portals on this NIC.
    pub portals: Vec<SocketAddr>,
}

/// One node as the initiator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireNode {
    /// Cluster-wide id.
    pub id: NodeId,
    /// Active or draining (failed nodes are not sent).
    pub state: NodeState,
    /// NICs with their portals.
    pub nics: Vec<WireNic>,
}

/// A decoded table of one volume: enough for an initiator to send every I/O to
/// its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireTable {
    /// Version of the cluster table this was made from.
    pub epoch: Epoch,
    /// Volume id.
    pub volume: VolumeId,
    /// Volume name.
    pub name: String,
    /// Volume size in blocks.
    pub blocks: u64,
    /// Block size in bytes.
    pub block_size: u32,
    /// Page size in blocks (a power of two).
    pub page_blocks: u32,
    /// The nodes that own pages or serve portals.
    pub nodes: Vec<WireNode>,
    /// Owner of every page as an index into `nodes`.
    pub owners: Vec<u16>,
}

impl WireTable {
    /// The node that owns block `lba`: constant time.
    #[inline]
    pub fn owner(&self, lba: u64) -> Option<&WireNode> {
        if lba >= self.blocks {
            return None;
        }
        let page = lba >> self.page_blocks.trailing_zeros();
        let idx = *self.owners.get(page as usize)?;
        self.nodes.get(usize::from(idx))
    }

    /// The owner's id for block `lba`.
    pub fn owner_id(&self, lba: u64) -> Option<NodeId> {
        self.owner(lba).map(|n| n.id)
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Encode the table of `volume`. The result starts with the header and ends with
/// the CRC32C; serve it whole or with [`piece`].
pub fn encode(table: &RoutingTable, volume: VolumeId) -> Result<Vec<u8>, WireError> {
    let vm = table
        .volume(volume)
        .ok_or(WireError::UnknownVolume(volume))?;
    let v = vm.volume();
    let nodes: Vec<_> = table.nodes().values().filter(|n| n.is_alive()).collect();
    let node_count = u16::try_from(nodes.len()).map_err(|_| WireError::TooLarge("nodes"))?;
    let name_len = u16::try_from(v.name.len()).map_err(|_| WireError::TooLarge("name bytes"))?;
    let index: HashMap<NodeId, u16> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.id, i as u16))
        .collect();
    let page_count = u32::try_from(vm.page_count()).map_err(|_| WireError::TooLarge("pages"))?;
    let page_blocks =
        u32::try_from(v.page_blocks()).map_err(|_| WireError::TooLarge("page blocks"))?;

    let mut out = Vec::with_capacity(HEADER_LEN + 64 * nodes.len() + vm.primaries().len() / 2);
    out.extend_from_slice(&MAGIC);
    out.push(FORMAT_VERSION);
    out.push(0); // flags
    out.extend_from_slice(&(HEADER_LEN as u16).to_be_bytes());
    out.extend_from_slice(&[0; 4]); // total length, set below
    out.extend_from_slice(&[0; 4]); // run count, set below
    out.extend_from_slice(&table.epoch().0.to_be_bytes());
    out.extend_from_slice(&v.id.0.to_be_bytes());
    out.extend_from_slice(&v.blocks.to_be_bytes());
    out.extend_from_slice(&v.block_size.to_be_bytes());
    out.extend_from_slice(&page_blocks.to_be_bytes());
    out.extend_from_slice(&page_count.to_be_bytes());
    out.extend_from_slice(&node_count.to_be_bytes());
    out.extend_from_slice(&name_len.to_be_bytes());
    debug_assert_eq!(out.len(), HEADER_LEN);
    out.extend_from_slice(v.name.as_bytes());

    for node in &nodes {
        out.extend_from_slice(&node.id.0.to_be_bytes());
        out.push(node.state.code());
        out.push(u8::try_from(node.nics.len()).map_err(|_| WireError::TooLarge("NICs"))?);
        for nic in &node.nics {
            out.push(nic.id.0);
            out.extend_from_slice(&nic.speed_mbps.to_be_bytes());
            out.push(u8::try_from(nic.portals.len()).map_err(|_| WireError::TooLarge("portals"))?);
            for portal in &nic.portals {
                match portal.ip() {
                    IpAddr::V4(a) => {
                        out.push(4);
                        out.extend_from_slice(&a.octets());
                    }
                    IpAddr::V6(a) => {
                        out.push(6);
                        out.extend_from_slice(&a.octets());
                    }
                }
                out.extend_from_slice(&portal.port().to_be_bytes());
            }
        }
    }

    let mut runs: u32 = 0;
    let primaries = vm.primaries();
    let mut i = 0;
    while i < primaries.len() {
        let node = primaries[i];
        let mut j = i + 1;
        while j < primaries.len() && primaries[j] == node {
            j += 1;
        }
        let idx = *index
            .get(&node)
            .ok_or(WireError::Malformed("page owner is not a live node"))?;
        put_varint(&mut out, u64::from(idx));
        put_varint(&mut out, (j - i) as u64);
        runs += 1;
        i = j;
    }

    let total = out.len() + TRAILER_LEN;
    let total32 = u32::try_from(total).map_err(|_| WireError::TooLarge("bytes"))?;
    out[off::TOTAL_LEN..off::TOTAL_LEN + 4].copy_from_slice(&total32.to_be_bytes());
    out[off::RUN_COUNT..off::RUN_COUNT + 4].copy_from_slice(&runs.to_be_bytes());
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    Ok(out)
}

/// The bytes a SCSI command with this buffer offset and allocation length returns:
/// `encoded[offset .. offset + alloc_len]`, clipped to the end (empty past it).
pub fn piece(encoded: &[u8], offset: u64, alloc_len: u32) -> &[u8] {
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(encoded.len());
    let end = start.saturating_add(alloc_len as usize).min(encoded.len());
    &encoded[start..end]
}

fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

fn be_u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(a)
}

fn be_u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Total length announced by a header prefix of at least 12 bytes, after checking
/// magic and version: what an initiator must fetch.
pub fn total_len(prefix: &[u8]) -> Result<usize, WireError> {
    if prefix.len() < off::TOTAL_LEN + 4 {
        return Err(WireError::Truncated {
            needed: off::TOTAL_LEN + 4,
            have: prefix.len(),
        });
    }
    if prefix[..4] != MAGIC {
        return Err(WireError::BadMagic);
    }
    if prefix[off::VERSION] != FORMAT_VERSION {
        return Err(WireError::UnsupportedVersion(prefix[off::VERSION]));
    }
    let total = be_u32_at(prefix, off::TOTAL_LEN) as usize;
    if total < HEADER_LEN + TRAILER_LEN {
        return Err(WireError::Malformed("total length shorter than the header"));
    }
    Ok(total)
}

type Res<'a, T> = IResult<&'a [u8], T>;

fn varint(input: &[u8]) -> Res<'_, u64> {
    let mut v: u64 = 0;
    for (i, &b) in input.iter().enumerate().take(10) {
        let bits = u64::from(b & 0x7f);
        if i == 9 && b > 1 {
            break; // more than 64 bits
        }
        v |= bits << (7 * i);
        if b & 0x80 == 0 {
            return Ok((&input[i + 1..], v));
        }
    }
    Err(nom::Err::Error(nom::error::Error::new(
        input,
        nom::error::ErrorKind::TooLarge,
    )))
}

fn portal(input: &[u8]) -> Res<'_, Option<SocketAddr>> {
    let (input, family) = be_u8(input)?;
    let (input, ip) = match family {
        4 => {
            let (input, a) = take(4usize)(input)?;
            (input, IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3])))
        }
        6 => {
            let (input, a) = take(16usize)(input)?;
            let mut o = [0u8; 16];
            o.copy_from_slice(a);
            (input, IpAddr::V6(Ipv6Addr::from(o)))
        }
        _ => return Ok((input, None)),
    };
    let (input, port) = be_u16(input)?;
    Ok((input, Some(SocketAddr::new(ip, port))))
}

fn nic(input: &[u8]) -> Res<'_, Option<WireNic>> {
    let (input, id) = be_u8(input)?;
    let (input, speed_mbps) = be_u32(input)?;
    let (mut input, count) = be_u8(input)?;
    let mut portals = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let (rest, p) = portal(input)?;
        input = rest;
        match p {
            Some(p) => portals.push(p),
            None => return Ok((input, None)),
        }
    }
    Ok((
        input,
        Some(WireNic {
            id: NicId(id),
            speed_mbps,
            portals,
        }),
    ))
}

fn node(input: &[u8]) -> Res<'_, Option<WireNode>> {
    let (input, id) = be_u32(input)?;
    let (input, state) = be_u8(input)?;
    let (mut input, count) = be_u8(input)?;
    let Some(state) = NodeState::from_code(state) else {
        return Ok((input, None));
    };
    let mut nics = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let (rest, n) = nic(input)?;
        input = rest;
        match n {
            Some(n) => nics.push(n),
            None => return Ok((input, None)),
        }
    }
    Ok((
        input,
        Some(WireNode {
            id: NodeId(id),
            state,
            nics,
        }),
    ))
}

/// Decode a complete encoding (extra bytes after the announced total length are
/// ignored, as a SCSI buffer may be padded). Checks magic, version, length and
/// checksum before it parses anything else.
pub fn decode(bytes: &[u8]) -> Result<WireTable, WireError> {
    let total = total_len(bytes)?;
    if bytes.len() < total {
        return Err(WireError::Truncated {
            needed: total,
            have: bytes.len(),
        });
    }
    let bytes = &bytes[..total];
    let body_end = total - TRAILER_LEN;
    let stored = be_u32_at(bytes, body_end);
    let computed = crc32c::crc32c(&bytes[..body_end]);
    if stored != computed {
        return Err(WireError::Checksum { stored, computed });
    }
    if bytes[off::FLAGS] != 0 {
        return Err(WireError::Malformed("unknown flags"));
    }
    let header_len = usize::from(be_u16_at(bytes, off::HEADER_LEN));
    if header_len < HEADER_LEN || header_len > body_end {
        return Err(WireError::Malformed("header length"));
    }
    let runs = be_u32_at(bytes, off::RUN_COUNT);
    let epoch = Epoch(be_u64(bytes, off::EPOCH));
    let volume = VolumeId(be_u64(bytes, off::VOLUME_ID));
    let blocks = be_u64(bytes, off::VOLUME_BLOCKS);
    let block_size = be_u32_at(bytes, off::BLOCK_SIZE);
    let page_blocks = be_u32_at(bytes, off::PAGE_BLOCKS);
    let page_count = be_u32_at(bytes, off::PAGE_COUNT);
    let node_count = be_u16_at(bytes, off::NODE_COUNT);
    let name_len = be_u16_at(bytes, off::NAME_LEN);
    if !block_size.is_power_of_two() || !page_blocks.is_power_of_two() {
        return Err(WireError::Malformed(
            "block or page size not a power of two",
        ));
    }
    if blocks.div_ceil(u64::from(page_blocks)) != u64::from(page_count) {
        return Err(WireError::Malformed("page count does not match the size"));
    }
    if runs > page_count {
        return Err(WireError::Malformed("more runs than pages"));
    }

    let body = &bytes[header_len..body_end];
    let parsed = parse_body(body, name_len, node_count, runs, page_count);
    let (rest, (name, nodes, owners)) = match parsed {
        Ok(ok) => ok,
        Err(_) => return Err(WireError::Malformed("body does not parse")),
    };
    if !rest.is_empty() {
        return Err(WireError::Malformed("bytes after the page map"));
    }
    let name = name?;
    let nodes = nodes?;
    let owners = owners?;
    Ok(WireTable {
        epoch,
        volume,
        name,
        blocks,
        block_size,
        page_blocks,
        nodes,
        owners,
    })
}

type Body = (
    Result<String, WireError>,
    Result<Vec<WireNode>, WireError>,
    Result<Vec<u16>, WireError>,
);

fn parse_body(
    input: &[u8],
    name_len: u16,
    node_count: u16,
    runs: u32,
    page_count: u32,
) -> Res<'_, Body> {
    let (mut input, name) = take(usize::from(name_len))(input)?;
    let name =
        String::from_utf8(name.to_vec()).map_err(|_| WireError::Malformed("name is not UTF-8"));
    let mut nodes = Vec::with_capacity(usize::from(node_count).min(input.len()));
    for _ in 0..node_count {
        let (rest, n) = node(input)?;
        input = rest;
        match n {
            Some(n) => nodes.push(n),
            None => {
                return Ok((
                    &[],
                    (
                        name,
                        Err(WireError::Malformed("bad node entry")),
                        Ok(Vec::new()),
                    ),
                ))
            }
        }
    }
    // Every run takes at least two bytes: do not trust the page count for more.
    let mut owners: Vec<u16> = Vec::with_capacity((page_count as usize).min(input.len() * 64));
    let mut owners_err = None;
    for _ in 0..runs {
        let (rest, idx) = varint(input)?;
        let (rest, len) = varint(rest)?;
        input = rest;
        if idx >= u64::from(node_count) {
            owners_err = Some(WireError::Malformed("run names a node past the list"));
            break;
        }
        if len == 0 || len > u64::from(page_count) - owners.len() as u64 {
            owners_err = Some(WireError::Malformed("runs do not add up to the page count"));
            break;
        }
        owners.resize(owners.len() + len as usize, idx as u16);
    }
    if owners_err.is_none() && owners.len() != page_count as usize {
        owners_err = Some(WireError::Malformed("runs do not add up to the page count"));
    }
    let owners = match owners_err {
        Some(e) => Err(e),
        None => Ok(owners),
    };
    Ok((input, (name, Ok(nodes), owners)))
}

/// Collects the pieces of an encoding that an initiator fetches one SCSI command
/// at a time, in order, and decodes the whole once it is complete.
#[derive(Debug, Default, Clone)]
pub struct Assembler {
    buf: Vec<u8>,
    total: Option<usize>,
}

/// What an [`Assembler`] needs next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Fetch again from this offset (at most `remaining` more bytes are needed; the
    /// total is not known before the first 12 bytes arrive).
    NeedMore {
        /// Offset of the next fetch.
        offset: u64,
        /// Bytes still missing, when known.
        remaining: Option<usize>,
    },
    /// The table is complete and valid.
    Complete(Box<WireTable>),
}

impl Assembler {
    /// An empty assembler.
    pub fn new() -> Assembler {
        Assembler::default()
    }

    /// Add a piece fetched at `offset`. An empty piece before the end is an error
    /// (the target has less than it announced).
    pub fn push(&mut self, offset: u64, piece: &[u8]) -> Result<Progress, WireError> {
        if offset != self.buf.len() as u64 {
            return Err(WireError::OutOfOrder {
                got: offset,
                have: self.buf.len(),
            });
        }
        if piece.is_empty() {
            return Err(WireError::Truncated {
                needed: self.total.unwrap_or(self.buf.len() + 1),
                have: self.buf.len(),
            });
        }
        let room = self.total.unwrap_or(MAX_ENCODED_LEN) - self.buf.len();
        self.buf.extend_from_slice(&piece[..piece.len().min(room)]);
        if self.total.is_none() && self.buf.len() >= off::TOTAL_LEN + 4 {
            let total = total_len(&self.buf)?;
            if total > MAX_ENCODED_LEN {
                return Err(WireError::TooLarge("bytes"));
            }
            self.total = Some(total);
            self.buf.truncate(total);
        }
        match self.total {
            Some(total) if self.buf.len() >= total => {
                Ok(Progress::Complete(Box::new(decode(&self.buf)?)))
            }
            total => Ok(Progress::NeedMore {
                offset: self.buf.len() as u64,
                remaining: total.map(|t| t - self.buf.len()),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Node, Volume};
    use crate::placement::plan_create_volume;

    fn table() -> RoutingTable {
        let nodes = (0..3).map(|i| {
            Node::new(NodeId(i), 1 << 40)
                .with_nic(
                    10_000,
                    vec![SocketAddr::from(([127, 0, 0, 1], 3260 + i as u16))],
                )
                .with_nic(
                    25_000,
                    vec![
                        SocketAddr::from((Ipv6Addr::LOCALHOST, 3260)),
                        SocketAddr::from(([10, 0, 0, i as u8], 3261)),
                    ],
                )
        });
        let t = RoutingTable::new(nodes).unwrap();
        let v = Volume {
            id: VolumeId(7),
            name: "lun-ä".into(),
            blocks: 1000,
            block_size: 512,
            page_size: 32 * 512,
            replicas: 1,
        };
        plan_create_volume(&t, v).unwrap()
    }

    #[test]
    fn the_documented_example_byte_by_byte() {
        // docs/wire-formats.md, "Example".
        let node = Node::new(NodeId(3), 1 << 30)
            .with_nic(10_000, vec![SocketAddr::from(([127, 0, 0, 1], 3260))]);
        let mut t = RoutingTable::new([node]).unwrap();
        let v = Volume {
            id: VolumeId(7),
            name: "db".into(),
            blocks: 1000,
            block_size: 512,
            page_size: 32 * 512,
            replicas: 0,
        };
        t = plan_create_volume(&t, v).unwrap();
        while t.epoch() < Epoch(5) {
            t = t.mark_all_in_sync();
        }
        let bytes = encode(&t, VolumeId(7)).unwrap();
        #[rustfmt::skip]
        let expect: &[u8] = &[
            0x4d, 0x52, 0x54, 0x42, 0x01, 0x00, 0x00, 0x38,
            0x00, 0x00, 0x00, 0x53,
            0x00, 0x00, 0x00, 0x01,
            0, 0, 0, 0, 0, 0, 0, 5,
            0, 0, 0, 0, 0, 0, 0, 7,
            0, 0, 0, 0, 0, 0, 0x03, 0xe8,
            0x00, 0x00, 0x02, 0x00,
            0x00, 0x00, 0x00, 0x20,
            0x00, 0x00, 0x00, 0x20,
            0x00, 0x01,
            0x00, 0x02,
            0x64, 0x62,
            0x00, 0x00, 0x00, 0x03, 0x00, 0x01,
            0x00, 0x00, 0x00, 0x27, 0x10, 0x01,
            0x04, 0x7f, 0x00, 0x00, 0x01, 0x0c, 0xbc,
            0x00, 0x20,
        ];
        assert_eq!(&bytes[..bytes.len() - 4], expect);
        assert_eq!(bytes.len(), 83);
        let crc = crc32c::crc32c(expect).to_be_bytes();
        assert_eq!(&bytes[79..], &crc);
    }

    #[test]
    fn encode_decode_round_trip() {
        let t = table();
        let bytes = encode(&t, VolumeId(7)).unwrap();
        assert_eq!(&bytes[..4], b"MRTB");
        let w = decode(&bytes).unwrap();
        assert_eq!(w.epoch, t.epoch());
        assert_eq!(w.name, "lun-ä");
        assert_eq!(w.nodes.len(), 3);
        assert_eq!(w.nodes[1].nics[1].portals.len(), 2);
        let vm = t.volume(VolumeId(7)).unwrap();
        for lba in 0..1000 {
            assert_eq!(w.owner_id(lba), vm.owner(lba));
        }
        assert_eq!(w.owner(1000), None);
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let bytes = encode(&table(), VolumeId(7)).unwrap();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(decode(&bad).is_err(), "flip at {i} went unnoticed");
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = encode(&table(), VolumeId(7)).unwrap();
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n]).is_err());
        }
    }

    #[test]
    fn pieces_assemble_to_the_table() {
        let t = table();
        let bytes = encode(&t, VolumeId(7)).unwrap();
        for alloc in [1u32, 5, 12, 64, 4096] {
            let mut asm = Assembler::new();
            let mut offset = 0u64;
            let table = loop {
                match asm.push(offset, piece(&bytes, offset, alloc)).unwrap() {
                    Progress::NeedMore { offset: o, .. } => offset = o,
                    Progress::Complete(w) => break w,
                }
            };
            assert_eq!(*table, decode(&bytes).unwrap());
        }
    }

    #[test]
    fn pieces_of_two_epochs_fail_the_checksum() {
        let t1 = table();
        let vm = t1.volume(VolumeId(7)).unwrap();
        let owner = vm.primary(0).unwrap();
        let t2 = crate::plan::plan_node_failure(&t1, owner, &Default::default())
            .unwrap()
            .next;
        let (a, b) = (
            encode(&t1, VolumeId(7)).unwrap(),
            encode(&t2, VolumeId(7)).unwrap(),
        );
        // First piece from the old table, the rest from the new one.
        let mut asm = Assembler::new();
        let mut progress = asm.push(0, piece(&a, 0, 60));
        let outcome = loop {
            match progress {
                Ok(Progress::NeedMore { offset, .. }) => {
                    progress = asm.push(offset, piece(&b, offset, 64));
                }
                other => break other,
            }
        };
        assert!(outcome.is_err(), "{outcome:?}");
    }

    #[test]
    fn a_round_robin_map_costs_two_bytes_per_page() {
        let t = table();
        let bytes = encode(&t, VolumeId(7)).unwrap();
        let pages = t.volume(VolumeId(7)).unwrap().page_count() as usize;
        let fixed = HEADER_LEN + "lun-ä".len() + 3 * (6 + 6 + 7 + 6 + 19 + 7) + TRAILER_LEN;
        assert_eq!(bytes.len(), fixed + 2 * pages);
    }
}
