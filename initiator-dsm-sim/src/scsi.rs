//! SCSI on the initiator side: CDBs we send, sense data and the pages we parse
//! (READ CAPACITY (16), VPD 0x83 device identification).

use std::fmt;

use bytes::Bytes;
use mosaic_proto::scsi::opcode;
use mosaic_proto::scsi::sense::key;
use mosaic_proto::scsi::vendor::ReadRoutingTableCdb;

/// SCSI status GOOD (SAM-5 §5.3.1).
pub const STATUS_GOOD: u8 = 0x00;
/// SCSI status CHECK CONDITION.
pub const STATUS_CHECK_CONDITION: u8 = 0x02;
/// SCSI status BUSY.
pub const STATUS_BUSY: u8 = 0x08;
/// SCSI status TASK SET FULL.
pub const STATUS_TASK_SET_FULL: u8 = 0x28;

/// ASC/ASCQ of ASYMMETRIC ACCESS STATE CHANGED: the routing table changed
/// (docs/wire-formats.md, "When the table changes").
pub const ASC_ASYMMETRIC_ACCESS_STATE_CHANGED: (u8, u8) = (0x2a, 0x06);
/// Allocation length of the READ CAPACITY (16) parameter data.
const READ_CAPACITY_16_LEN: u32 = 32;
/// Allocation length we use for VPD pages.
pub const VPD_ALLOC_LEN: u16 = 1024;
/// Designator types of VPD 0x83 (SPC-4 §7.8.6.1, Table 611).
mod designator {
    pub const T10_VENDOR_ID: u8 = 0x1;
    pub const EUI64: u8 = 0x2;
    pub const NAA: u8 = 0x3;
    pub const RELATIVE_TARGET_PORT: u8 = 0x4;
    pub const TARGET_PORT_GROUP: u8 = 0x5;
    pub const SCSI_NAME: u8 = 0x8;
}

/// Sense data reduced to what an initiator acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sense {
    pub key: u8,
    pub asc: u8,
    pub ascq: u8,
    /// The raw bytes (without the iSCSI 2-byte length).
    pub raw: Bytes,
}

impl Sense {
    /// Parses fixed (70h/71h) or descriptor (72h/73h) format sense data.
    pub fn parse(raw: &[u8]) -> Option<Sense> {
        let code = raw.first()? & 0x7f;
        let (k, asc, ascq) = match code {
            0x70 | 0x71 if raw.len() >= 14 => (raw[2] & 0x0f, raw[12], raw[13]),
            0x70 | 0x71 if raw.len() >= 3 => (raw[2] & 0x0f, 0, 0),
            0x72 | 0x73 if raw.len() >= 4 => (raw[1] & 0x0f, raw[2], raw[3]),
            _ => return None,
        };
        Some(Sense {
            key: k,
            asc,
            ascq,
            raw: Bytes::copy_from_slice(raw),
        })
    }

    /// A UNIT ATTENTION of any kind.
    pub fn is_unit_attention(&self) -> bool {
        self.key == key::UNIT_ATTENTION
    }

    /// The unit attention that says "fetch the routing table again".
    pub fn is_routing_change(&self) -> bool {
        self.is_unit_attention() && (self.asc, self.ascq) == ASC_ASYMMETRIC_ACCESS_STATE_CHANGED
    }
}

impl fmt::Display for Sense {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sense key {:#x}, ASC/ASCQ {:02x}h/{:02x}h",
            self.key, self.asc, self.ascq
        )
    }
}

/// One SCSI command as the initiator sends it.
#[derive(Debug, Clone)]
pub struct Command {
    /// The CDB, at most 16 bytes (no extended-CDB AHS).
    pub cdb: [u8; 16],
    /// Bytes to write (empty for none).
    pub data_out: Bytes,
    /// Bytes expected in (0 for none).
    pub read_len: u32,
}

impl Command {
    /// A command from a CDB of up to 16 bytes.
    pub fn new(cdb: &[u8], data_out: Bytes, read_len: u32) -> Command {
        let mut c = [0u8; 16];
        let n = cdb.len().min(16);
        c[..n].copy_from_slice(&cdb[..n]);
        Command {
            cdb: c,
            data_out,
            read_len,
        }
    }

    /// TEST UNIT READY.
    pub fn test_unit_ready() -> Command {
        Command::new(&[opcode::TEST_UNIT_READY, 0, 0, 0, 0, 0], Bytes::new(), 0)
    }

    /// Standard INQUIRY, or the VPD page `page`.
    pub fn inquiry(vpd: Option<u8>, alloc: u16) -> Command {
        let mut c = [0u8; 6];
        c[0] = opcode::INQUIRY;
        if let Some(p) = vpd {
            c[1] = 0x01;
            c[2] = p;
        }
        c[3..5].copy_from_slice(&alloc.to_be_bytes());
        Command::new(&c, Bytes::new(), u32::from(alloc))
    }

    /// READ CAPACITY (16).
    pub fn read_capacity_16() -> Command {
        let mut c = [0u8; 16];
        c[0] = opcode::SERVICE_ACTION_IN_16;
        c[1] = opcode::service_action_in_16::READ_CAPACITY_16;
        c[10..14].copy_from_slice(&READ_CAPACITY_16_LEN.to_be_bytes());
        Command::new(&c, Bytes::new(), READ_CAPACITY_16_LEN)
    }

    /// READ (16) of `blocks` blocks at `lba`.
    pub fn read_16(lba: u64, blocks: u32, block_size: u32) -> Command {
        let mut c = [0u8; 16];
        c[0] = opcode::READ_16;
        c[2..10].copy_from_slice(&lba.to_be_bytes());
        c[10..14].copy_from_slice(&blocks.to_be_bytes());
        Command::new(&c, Bytes::new(), blocks.saturating_mul(block_size))
    }

    /// WRITE (16) of `data` (whole blocks) at `lba`.
    pub fn write_16(lba: u64, data: Bytes, block_size: u32) -> Command {
        let blocks = (data.len() / block_size.max(1) as usize) as u32;
        let mut c = [0u8; 16];
        c[0] = opcode::WRITE_16;
        c[2..10].copy_from_slice(&lba.to_be_bytes());
        c[10..14].copy_from_slice(&blocks.to_be_bytes());
        Command::new(&c, data, 0)
    }

    /// READ ROUTING TABLE (C5h) of `alloc_len` bytes from `offset`.
    pub fn read_routing_table(offset: u64, alloc_len: u32) -> Command {
        let c = ReadRoutingTableCdb { offset, alloc_len }.encode();
        Command::new(&c, Bytes::new(), alloc_len)
    }
}

/// How a command ended (it got a status).
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub status: u8,
    /// Data-In, as long as the highest offset received.
    pub data: Bytes,
    /// Sense data for CHECK CONDITION.
    pub sense: Option<Sense>,
    pub residual_count: u32,
    pub underflow: bool,
    pub overflow: bool,
}

impl Outcome {
    /// GOOD, or the status as an error.
    pub fn good(self) -> crate::Result<Outcome> {
        match self.status {
            STATUS_GOOD => Ok(self),
            STATUS_CHECK_CONDITION => match self.sense {
                Some(s) => Err(crate::Error::Check(s)),
                None => Err(crate::Error::Status(self.status)),
            },
            s => Err(crate::Error::Status(s)),
        }
    }

    /// The unit attention this command reported, if any.
    pub fn unit_attention(&self) -> Option<&Sense> {
        self.sense.as_ref().filter(|s| s.is_unit_attention())
    }
}

/// READ CAPACITY (16) parameter data: (number of blocks, block size).
pub fn parse_read_capacity_16(data: &[u8]) -> crate::Result<(u64, u32)> {
    if data.len() < 12 {
        return Err(crate::Error::Protocol(format!(
            "READ CAPACITY (16) returned {} bytes, need 12",
            data.len()
        )));
    }
    let mut last = [0u8; 8];
    last.copy_from_slice(&data[0..8]);
    let mut bs = [0u8; 4];
    bs.copy_from_slice(&data[8..12]);
    let block_size = u32::from_be_bytes(bs);
    if block_size == 0 {
        return Err(crate::Error::Protocol("block size 0".into()));
    }
    Ok((u64::from_be_bytes(last).saturating_add(1), block_size))
}

/// What VPD page 0x83 says about a logical unit and the port we reach it by.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceId {
    /// The logical unit's identity: the best LU designator (NAA, then EUI-64,
    /// SCSI name, T10 vendor id), as type byte followed by its bytes.
    pub lu: Vec<u8>,
    /// Target port group (ALUA), which Mosaic sets to the node id.
    pub target_port_group: Option<u16>,
    /// Relative target port identifier.
    pub relative_port: Option<u16>,
}

/// Parses VPD page 0x83 (SPC-4 §7.8.6). Never panics on short or odd input.
pub fn parse_device_id(page: &[u8]) -> crate::Result<DeviceId> {
    if page.len() < 4 || page[1] != 0x83 {
        return Err(crate::Error::Protocol(
            "not a device identification VPD page".into(),
        ));
    }
    let len = usize::from(u16::from_be_bytes([page[2], page[3]]));
    let end = (4 + len).min(page.len());
    let mut id = DeviceId::default();
    let mut best_rank = u8::MAX;
    let mut at = 4;
    while at + 4 <= end {
        let d = &page[at..];
        let association = (d[1] >> 4) & 0x3;
        let dtype = d[1] & 0x0f;
        let dlen = usize::from(d[3]);
        if at + 4 + dlen > end {
            break;
        }
        let body = &d[4..4 + dlen];
        match (association, dtype) {
            (0, t) => {
                let rank = match t {
                    designator::NAA => 0,
                    designator::EUI64 => 1,
                    designator::SCSI_NAME => 2,
                    designator::T10_VENDOR_ID => 3,
                    _ => u8::MAX,
                };
                if rank < best_rank {
                    best_rank = rank;
                    id.lu = std::iter::once(t).chain(body.iter().copied()).collect();
                }
            }
            (1, designator::RELATIVE_TARGET_PORT) if body.len() >= 4 => {
                id.relative_port = Some(u16::from_be_bytes([body[2], body[3]]));
            }
            (1, designator::TARGET_PORT_GROUP) if body.len() >= 4 => {
                id.target_port_group = Some(u16::from_be_bytes([body[2], body[3]]));
            }
            _ => {}
        }
        at += 4 + dlen;
    }
    if id.lu.is_empty() {
        return Err(crate::Error::Protocol(
            "VPD 0x83 has no logical unit designator".into(),
        ));
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sense_fixed_and_descriptor() {
        let mut f = [0u8; 18];
        f[0] = 0x70;
        f[2] = 0x06;
        f[12] = 0x2a;
        f[13] = 0x06;
        let s = Sense::parse(&f).unwrap();
        assert!(s.is_routing_change());
        let d = [0x72, 0x05, 0x24, 0x00];
        let s = Sense::parse(&d).unwrap();
        assert_eq!((s.key, s.asc, s.ascq), (5, 0x24, 0));
        assert!(!s.is_unit_attention());
        assert!(Sense::parse(&[]).is_none());
        assert!(Sense::parse(&[0x12, 0, 0]).is_none());
    }

    #[test]
    fn read_16_cdb_and_length() {
        let c = Command::read_16(0x0102_0304_0506_0708, 8, 512);
        assert_eq!(c.cdb[0], 0x88);
        assert_eq!(&c.cdb[2..10], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&c.cdb[10..14], &[0, 0, 0, 8]);
        assert_eq!(c.read_len, 4096);
        let w = Command::write_16(9, Bytes::from(vec![0u8; 1024]), 512);
        assert_eq!(w.cdb[0], 0x8a);
        assert_eq!(&w.cdb[10..14], &[0, 0, 0, 2]);
    }

    #[test]
    fn device_id_picks_naa_and_port_group() {
        let mut p = vec![0x00, 0x83, 0x00, 0x00];
        // T10 vendor id (LU)
        p.extend_from_slice(&[0x02, 0x01, 0x00, 0x04, b'A', b'B', b'C', b'D']);
        // NAA (LU)
        p.extend_from_slice(&[0x01, 0x03, 0x00, 0x08, 0x60, 1, 2, 3, 4, 5, 6, 7]);
        // relative target port (port association = 1)
        p.extend_from_slice(&[0x61, 0x14, 0x00, 0x04, 0, 0, 0, 2]);
        // target port group
        p.extend_from_slice(&[0x01, 0x15, 0x00, 0x04, 0, 0, 0, 3]);
        let n = (p.len() - 4) as u16;
        p[2..4].copy_from_slice(&n.to_be_bytes());
        let id = parse_device_id(&p).unwrap();
        assert_eq!(id.lu, vec![3, 0x60, 1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(id.target_port_group, Some(3));
        assert_eq!(id.relative_port, Some(2));
        // Truncated and foreign pages are errors, not panics.
        for cut in 0..p.len() {
            let _ = parse_device_id(&p[..cut]);
        }
        assert!(parse_device_id(&[0, 0x80, 0, 0]).is_err());
    }

    #[test]
    fn read_capacity_parse() {
        let mut d = [0u8; 32];
        d[7] = 0xff;
        d[10] = 0x02;
        assert_eq!(parse_read_capacity_16(&d).unwrap(), (256, 512));
        assert!(parse_read_capacity_16(&d[..8]).is_err());
    }
}
