//! Mosaic's vendor-specific SCSI commands, shared by the target (decode) and our
//! initiators (encode). Operation codes C0h to FFh are vendor specific (SPC-4
//! §4.2.5.1, group codes 6 and 7), so their CDB length is ours to define; the one
//! here is 16 bytes, which the iSCSI SCSI Command BHS carries without an AHS
//! (RFC 7143 §11.3.5).
//!
//! READ ROUTING TABLE (C5h) returns the routing table of the addressed volume in the
//! format of `mosaic_routing::wire`, a piece at a time: the initiator names a byte
//! offset into the encoding and an allocation length, and gets
//! `encoding[offset .. offset + allocation length]` clipped to the end. The CDB,
//! byte by byte, and the target's answers are in docs/wire-formats.md.

use super::cdb::CdbError;
use super::opcode::READ_ROUTING_TABLE;

/// Length of the READ ROUTING TABLE CDB.
pub const READ_ROUTING_TABLE_CDB_LEN: usize = 16;

/// The NACA bit of the CONTROL byte (SAM-5 §5.2, Table 21): we do not support ACA.
const CONTROL_NACA: u8 = 0x04;

/// Byte offsets of the READ ROUTING TABLE CDB fields.
mod at {
    /// Reserved (a later version may put flags or a service action here).
    pub const RESERVED_1: usize = 1;
    /// BUFFER OFFSET, 8 bytes, big-endian.
    pub const OFFSET: usize = 2;
    /// ALLOCATION LENGTH, 4 bytes, big-endian.
    pub const ALLOC_LEN: usize = 10;
    /// Reserved.
    pub const RESERVED_14: usize = 14;
    /// CONTROL.
    pub const CONTROL: usize = 15;
}

/// READ ROUTING TABLE (C5h): a piece of the addressed volume's routing table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadRoutingTableCdb {
    /// BUFFER OFFSET: the first byte of the encoding to return.
    pub offset: u64,
    /// ALLOCATION LENGTH: the most bytes to return (SPC-4 §4.2.5.6); 0 is not an
    /// error and returns nothing.
    pub alloc_len: u32,
}

/// The bit to point at for a non-zero reserved byte: its highest set bit.
fn top_bit(b: u8) -> Option<u8> {
    (b != 0).then(|| 7 - b.leading_zeros() as u8)
}

impl ReadRoutingTableCdb {
    /// Decodes a READ ROUTING TABLE CDB. `b` may be longer than 16 bytes (extra
    /// bytes are ignored); reserved bytes must be zero and NACA clear, or the field
    /// is reported for INVALID FIELD IN CDB. Never panics.
    pub fn decode(b: &[u8]) -> Result<ReadRoutingTableCdb, CdbError> {
        let opcode = *b.first().ok_or(CdbError::Empty)?;
        if opcode != READ_ROUTING_TABLE {
            return Err(CdbError::InvalidField { byte: 0, bit: None });
        }
        if b.len() < READ_ROUTING_TABLE_CDB_LEN {
            return Err(CdbError::TooShort {
                opcode,
                need: READ_ROUTING_TABLE_CDB_LEN,
                got: b.len(),
            });
        }
        for byte in [at::RESERVED_1, at::RESERVED_14] {
            if let Some(bit) = top_bit(b[byte]) {
                return Err(CdbError::InvalidField {
                    byte: byte as u16,
                    bit: Some(bit),
                });
            }
        }
        if b[at::CONTROL] & CONTROL_NACA != 0 {
            return Err(CdbError::InvalidField {
                byte: at::CONTROL as u16,
                bit: Some(2),
            });
        }
        let mut offset = [0u8; 8];
        offset.copy_from_slice(&b[at::OFFSET..at::OFFSET + 8]);
        let mut alloc_len = [0u8; 4];
        alloc_len.copy_from_slice(&b[at::ALLOC_LEN..at::ALLOC_LEN + 4]);
        Ok(ReadRoutingTableCdb {
            offset: u64::from_be_bytes(offset),
            alloc_len: u32::from_be_bytes(alloc_len),
        })
    }

    /// The 16-byte CDB an initiator sends.
    pub fn encode(&self) -> [u8; READ_ROUTING_TABLE_CDB_LEN] {
        let mut c = [0u8; READ_ROUTING_TABLE_CDB_LEN];
        c[0] = READ_ROUTING_TABLE;
        c[at::OFFSET..at::OFFSET + 8].copy_from_slice(&self.offset.to_be_bytes());
        c[at::ALLOC_LEN..at::ALLOC_LEN + 4].copy_from_slice(&self.alloc_len.to_be_bytes());
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::sense::{key, Asc};
    use proptest::prelude::*;

    #[test]
    fn encodes_the_documented_bytes() {
        let c = ReadRoutingTableCdb {
            offset: 0x0102_0304_0506_0708,
            alloc_len: 0x0a0b_0c0d,
        };
        assert_eq!(
            c.encode(),
            [0xc5, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0x0a, 0x0b, 0x0c, 0x0d, 0, 0]
        );
        assert_eq!(ReadRoutingTableCdb::decode(&c.encode()), Ok(c));
    }

    #[test]
    fn reserved_bytes_naca_and_short_cdbs_are_refused() {
        let ok = ReadRoutingTableCdb {
            offset: 12,
            alloc_len: 4096,
        }
        .encode();
        let mut c = ok;
        c[1] = 0x10;
        assert_eq!(
            ReadRoutingTableCdb::decode(&c),
            Err(CdbError::InvalidField {
                byte: 1,
                bit: Some(4)
            })
        );
        let mut c = ok;
        c[14] = 0x81;
        assert_eq!(
            ReadRoutingTableCdb::decode(&c),
            Err(CdbError::InvalidField {
                byte: 14,
                bit: Some(7)
            })
        );
        let mut c = ok;
        c[15] = 0x04;
        let e = ReadRoutingTableCdb::decode(&c).unwrap_err();
        assert_eq!(
            e,
            CdbError::InvalidField {
                byte: 15,
                bit: Some(2)
            }
        );
        assert_eq!(
            (e.sense().key, e.sense().asc),
            (key::ILLEGAL_REQUEST, Asc::INVALID_FIELD_IN_CDB)
        );
        // Vendor-specific CONTROL bits 7..6 are ignored.
        let mut c = ok;
        c[15] = 0xc0;
        assert!(ReadRoutingTableCdb::decode(&c).is_ok());
        assert!(matches!(
            ReadRoutingTableCdb::decode(&ok[..12]),
            Err(CdbError::TooShort { need: 16, .. })
        ));
        assert_eq!(ReadRoutingTableCdb::decode(&[]), Err(CdbError::Empty));
        assert!(ReadRoutingTableCdb::decode(&[0x12; 16]).is_err());
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = ReadRoutingTableCdb::decode(&bytes);
        }

        #[test]
        fn encode_then_decode_round_trips(offset in any::<u64>(), alloc_len in any::<u32>()) {
            let c = ReadRoutingTableCdb { offset, alloc_len };
            prop_assert_eq!(ReadRoutingTableCdb::decode(&c.encode()), Ok(c));
        }
    }
}
