//! Command descriptor block decoding (SPC-4 §4.2, SBC-3 §5) into a typed [`Cdb`].
//!
//! Decoding checks the CDB's length against its opcode and the fields every device
//! server must reject whatever its state (RDPROTECT/WRPROTECT without protection
//! information, INQUIRY with EVPD = 0 and a page code, NACA in the CONTROL byte); the
//! logical unit checks the rest (LBA range, page support). It never panics: a short
//! CDB is [`CdbError::TooShort`] and an opcode we do not know is [`Cdb::Unknown`].

use super::opcode as op;
use super::opcode::service_action_in_16 as sai;
use super::sense::{key, Asc, Sense};

/// The NACA bit of the CONTROL byte (SAM-5 §5.2, Table 21).
const CONTROL_NACA: u8 = 0x04;
/// Byte 1 bits 7..5: RDPROTECT / WRPROTECT of READ/WRITE(10/12/16) (SBC-3 §5.11).
const PROTECT_MASK: u8 = 0xe0;
/// Byte 1 bit 4: DPO (disable page out) of READ/WRITE(10/12/16).
const DPO_BIT: u8 = 0x10;
/// Byte 1 bit 3: FUA (force unit access) of READ/WRITE(10/12/16).
const FUA_BIT: u8 = 0x08;
/// READ(6)/WRITE(6): a TRANSFER LENGTH of 0 means 256 blocks (SBC-3 §5.14).
const RW6_ZERO_LEN_BLOCKS: u32 = 256;

/// The fields of READ and WRITE (6/10/12/16) that matter to a block device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RwCdb {
    /// First logical block.
    pub lba: u64,
    /// Number of logical blocks; 0 means none, except READ(6)/WRITE(6) where the
    /// decoder already turned 0 into 256.
    pub blocks: u32,
    /// Disable page out: a cache-retention hint (absent in the 6-byte forms).
    pub dpo: bool,
    /// Force unit access: for a write, the data must be on stable storage before
    /// GOOD (absent in the 6-byte forms).
    pub fua: bool,
}

/// MODE SENSE(6) and MODE SENSE(10) (SPC-4 §6.15, §6.16).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModeSenseCdb {
    /// Disable block descriptors.
    pub dbd: bool,
    /// Long LBA accepted: the block descriptor may be the 16-byte form (MODE SENSE(10) only).
    pub llbaa: bool,
    /// Page control: current, changeable, default, saved (see `opcode::page_control`).
    pub pc: u8,
    /// Page code (6 bits).
    pub page: u8,
    /// Subpage code.
    pub subpage: u8,
    /// Allocation length.
    pub alloc_len: u16,
}

/// A decoded CDB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cdb {
    /// TEST UNIT READY (SPC-4 §6.47).
    TestUnitReady,
    /// REQUEST SENSE (SPC-4 §6.39).
    RequestSense {
        desc: bool,
        alloc_len: u8,
    },
    /// INQUIRY (SPC-4 §6.6).
    Inquiry {
        evpd: bool,
        page_code: u8,
        alloc_len: u16,
    },
    /// READ CAPACITY(10) (SBC-3 §5.15).
    ReadCapacity10,
    /// SERVICE ACTION IN(16) / READ CAPACITY(16) (SBC-3 §5.16).
    ReadCapacity16 {
        alloc_len: u32,
    },
    Read6(RwCdb),
    Read10(RwCdb),
    Read12(RwCdb),
    Read16(RwCdb),
    Write6(RwCdb),
    Write10(RwCdb),
    Write12(RwCdb),
    Write16(RwCdb),
    /// SYNCHRONIZE CACHE(10) (SBC-3 §5.22); `blocks` 0 means "to the end".
    SynchronizeCache10 {
        lba: u64,
        blocks: u32,
        immed: bool,
    },
    /// SYNCHRONIZE CACHE(16) (SBC-3 §5.23); `blocks` 0 means "to the end".
    SynchronizeCache16 {
        lba: u64,
        blocks: u32,
        immed: bool,
    },
    ModeSense6(ModeSenseCdb),
    ModeSense10(ModeSenseCdb),
    /// REPORT LUNS (SPC-4 §6.33).
    ReportLuns {
        select_report: u8,
        alloc_len: u32,
    },
    /// A known opcode with a service action we do not implement: the device server
    /// answers INVALID FIELD IN CDB pointing at byte 1 (SPC-4 §4.2.5.1).
    UnsupportedServiceAction {
        opcode: u8,
        service_action: u8,
    },
    /// Any other opcode: INVALID COMMAND OPERATION CODE.
    Unknown(u8),
}

/// Why a CDB could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CdbError {
    /// No bytes at all.
    #[error("empty CDB")]
    Empty,
    /// Fewer bytes than the opcode's CDB length.
    #[error("CDB for opcode {opcode:#04x} needs {need} bytes, got {got}")]
    TooShort { opcode: u8, need: usize, got: usize },
    /// A field holds a value the device server must reject (INVALID FIELD IN CDB).
    #[error("invalid field in CDB at byte {byte} bit {bit:?}")]
    InvalidField { byte: u16, bit: Option<u8> },
}

impl CdbError {
    /// The sense data that reports this error with CHECK CONDITION.
    pub fn sense(&self) -> Sense {
        match *self {
            CdbError::Empty | CdbError::TooShort { .. } => {
                Sense::new(key::ILLEGAL_REQUEST, Asc::INVALID_FIELD_IN_CDB)
            }
            CdbError::InvalidField { byte, bit } => Sense::invalid_field_in_cdb(byte, bit),
        }
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// The CDB length of a known opcode (SPC-4 §4.2.5.1), or `None` if we do not decode it.
fn known_len(opcode: u8) -> Option<usize> {
    Some(match opcode {
        op::TEST_UNIT_READY
        | op::REQUEST_SENSE
        | op::READ_6
        | op::WRITE_6
        | op::INQUIRY
        | op::MODE_SENSE_6 => 6,
        op::READ_CAPACITY_10
        | op::READ_10
        | op::WRITE_10
        | op::SYNCHRONIZE_CACHE_10
        | op::MODE_SENSE_10 => 10,
        op::READ_12 | op::WRITE_12 | op::REPORT_LUNS => 12,
        op::READ_16 | op::WRITE_16 | op::SYNCHRONIZE_CACHE_16 | op::SERVICE_ACTION_IN_16 => 16,
        _ => return None,
    })
}

impl Cdb {
    /// Decodes a CDB. `b` may be longer than the opcode's CDB (iSCSI always carries 16
    /// bytes in the BHS); extra bytes are ignored.
    pub fn decode(b: &[u8]) -> Result<Cdb, CdbError> {
        let opcode = *b.first().ok_or(CdbError::Empty)?;
        let Some(len) = known_len(opcode) else {
            return Ok(Cdb::Unknown(opcode));
        };
        if b.len() < len {
            return Err(CdbError::TooShort {
                opcode,
                need: len,
                got: b.len(),
            });
        }
        let b = &b[..len];
        let control = len - 1;
        if b[control] & CONTROL_NACA != 0 {
            // We do not support ACA (SAM-5 §5.9.2).
            return Err(CdbError::InvalidField {
                byte: control as u16,
                bit: Some(2),
            });
        }
        let cdb = match opcode {
            op::TEST_UNIT_READY => Cdb::TestUnitReady,
            op::REQUEST_SENSE => Cdb::RequestSense {
                desc: b[1] & 0x01 != 0,
                alloc_len: b[4],
            },
            op::INQUIRY => {
                if b[1] & 0x02 != 0 {
                    // CMDDT is obsolete since SPC-3 and must be rejected (SPC-4 §6.6.1).
                    return Err(CdbError::InvalidField {
                        byte: 1,
                        bit: Some(1),
                    });
                }
                let evpd = b[1] & 0x01 != 0;
                let page_code = b[2];
                if !evpd && page_code != 0 {
                    return Err(CdbError::InvalidField {
                        byte: 2,
                        bit: Some(7),
                    });
                }
                Cdb::Inquiry {
                    evpd,
                    page_code,
                    alloc_len: be16(b, 3),
                }
            }
            op::READ_CAPACITY_10 => {
                // PMI = 0 requires LOGICAL BLOCK ADDRESS = 0 (SBC-3 §5.15.1).
                if b[8] & 0x01 == 0 && be32(b, 2) != 0 {
                    return Err(CdbError::InvalidField { byte: 2, bit: None });
                }
                Cdb::ReadCapacity10
            }
            op::SERVICE_ACTION_IN_16 => match b[1] & 0x1f {
                sai::READ_CAPACITY_16 => Cdb::ReadCapacity16 {
                    alloc_len: be32(b, 10),
                },
                service_action => Cdb::UnsupportedServiceAction {
                    opcode,
                    service_action,
                },
            },
            op::READ_6 | op::WRITE_6 => {
                let rw = RwCdb {
                    lba: u64::from(u32::from_be_bytes([0, b[1] & 0x1f, b[2], b[3]])),
                    blocks: match b[4] {
                        0 => RW6_ZERO_LEN_BLOCKS,
                        n => u32::from(n),
                    },
                    dpo: false,
                    fua: false,
                };
                if opcode == op::READ_6 {
                    Cdb::Read6(rw)
                } else {
                    Cdb::Write6(rw)
                }
            }
            op::READ_10 | op::WRITE_10 => {
                let rw = rw_flags(b, u64::from(be32(b, 2)), u32::from(be16(b, 7)))?;
                if opcode == op::READ_10 {
                    Cdb::Read10(rw)
                } else {
                    Cdb::Write10(rw)
                }
            }
            op::READ_12 | op::WRITE_12 => {
                let rw = rw_flags(b, u64::from(be32(b, 2)), be32(b, 6))?;
                if opcode == op::READ_12 {
                    Cdb::Read12(rw)
                } else {
                    Cdb::Write12(rw)
                }
            }
            op::READ_16 | op::WRITE_16 => {
                let rw = rw_flags(b, be64(b, 2), be32(b, 10))?;
                if opcode == op::READ_16 {
                    Cdb::Read16(rw)
                } else {
                    Cdb::Write16(rw)
                }
            }
            op::SYNCHRONIZE_CACHE_10 => Cdb::SynchronizeCache10 {
                lba: u64::from(be32(b, 2)),
                blocks: u32::from(be16(b, 7)),
                immed: b[1] & 0x02 != 0,
            },
            op::SYNCHRONIZE_CACHE_16 => Cdb::SynchronizeCache16 {
                lba: be64(b, 2),
                blocks: be32(b, 10),
                immed: b[1] & 0x02 != 0,
            },
            op::MODE_SENSE_6 => Cdb::ModeSense6(ModeSenseCdb {
                dbd: b[1] & 0x08 != 0,
                llbaa: false,
                pc: b[2] >> 6,
                page: b[2] & 0x3f,
                subpage: b[3],
                alloc_len: u16::from(b[4]),
            }),
            op::MODE_SENSE_10 => Cdb::ModeSense10(ModeSenseCdb {
                dbd: b[1] & 0x08 != 0,
                llbaa: b[1] & 0x10 != 0,
                pc: b[2] >> 6,
                page: b[2] & 0x3f,
                subpage: b[3],
                alloc_len: be16(b, 7),
            }),
            op::REPORT_LUNS => Cdb::ReportLuns {
                select_report: b[2],
                alloc_len: be32(b, 6),
            },
            // known_len() and this match list the same opcodes.
            _ => Cdb::Unknown(opcode),
        };
        Ok(cdb)
    }

    /// The operation code this CDB was decoded from.
    pub fn opcode(&self) -> u8 {
        match *self {
            Cdb::TestUnitReady => op::TEST_UNIT_READY,
            Cdb::RequestSense { .. } => op::REQUEST_SENSE,
            Cdb::Inquiry { .. } => op::INQUIRY,
            Cdb::ReadCapacity10 => op::READ_CAPACITY_10,
            Cdb::ReadCapacity16 { .. } => op::SERVICE_ACTION_IN_16,
            Cdb::Read6(_) => op::READ_6,
            Cdb::Read10(_) => op::READ_10,
            Cdb::Read12(_) => op::READ_12,
            Cdb::Read16(_) => op::READ_16,
            Cdb::Write6(_) => op::WRITE_6,
            Cdb::Write10(_) => op::WRITE_10,
            Cdb::Write12(_) => op::WRITE_12,
            Cdb::Write16(_) => op::WRITE_16,
            Cdb::SynchronizeCache10 { .. } => op::SYNCHRONIZE_CACHE_10,
            Cdb::SynchronizeCache16 { .. } => op::SYNCHRONIZE_CACHE_16,
            Cdb::ModeSense6(_) => op::MODE_SENSE_6,
            Cdb::ModeSense10(_) => op::MODE_SENSE_10,
            Cdb::ReportLuns { .. } => op::REPORT_LUNS,
            Cdb::UnsupportedServiceAction { opcode, .. } => opcode,
            Cdb::Unknown(opcode) => opcode,
        }
    }
}

/// Byte 1 of READ/WRITE(10/12/16): protection must be off (we have no protection
/// information, so any nonzero RDPROTECT/WRPROTECT is INVALID FIELD IN CDB,
/// SBC-3 §5.11 Table 45); DPO and FUA are accepted.
fn rw_flags(b: &[u8], lba: u64, blocks: u32) -> Result<RwCdb, CdbError> {
    if b[1] & PROTECT_MASK != 0 {
        return Err(CdbError::InvalidField {
            byte: 1,
            bit: Some(7),
        });
    }
    Ok(RwCdb {
        lba,
        blocks,
        dpo: b[1] & DPO_BIT != 0,
        fua: b[1] & FUA_BIT != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rw(lba: u64, blocks: u32, dpo: bool, fua: bool) -> RwCdb {
        RwCdb {
            lba,
            blocks,
            dpo,
            fua,
        }
    }

    #[test]
    fn empty_cdb_is_an_error() {
        assert_eq!(Cdb::decode(&[]), Err(CdbError::Empty));
    }

    #[test]
    fn short_cdb_is_too_short() {
        assert_eq!(
            Cdb::decode(&[op::READ_16, 0, 0, 0]),
            Err(CdbError::TooShort {
                opcode: op::READ_16,
                need: 16,
                got: 4
            })
        );
    }

    #[test]
    fn unknown_opcode_decodes_even_when_short() {
        assert_eq!(Cdb::decode(&[0xc7]), Ok(Cdb::Unknown(0xc7)));
        assert_eq!(
            Cdb::decode(&[op::VERIFY_10; 16]),
            Ok(Cdb::Unknown(op::VERIFY_10))
        );
    }

    #[test]
    fn test_unit_ready_decodes() {
        assert_eq!(Cdb::decode(&[0; 16]), Ok(Cdb::TestUnitReady));
    }

    #[test]
    fn read6_zero_length_means_256_blocks() {
        let c = Cdb::decode(&[op::READ_6, 0x1f, 0xff, 0xfe, 0, 0]).unwrap();
        assert_eq!(c, Cdb::Read6(rw(0x1f_fffe, 256, false, false)));
        let c = Cdb::decode(&[op::WRITE_6, 0xe0, 0, 1, 7, 0]).unwrap();
        assert_eq!(
            c,
            Cdb::Write6(rw(1, 7, false, false)),
            "top 3 bits are not LBA"
        );
    }

    #[test]
    fn read10_decodes_lba_len_and_flags() {
        let c = [op::READ_10, 0x18, 0x12, 0x34, 0x56, 0x78, 0, 0x01, 0x02, 0];
        assert_eq!(
            Cdb::decode(&c),
            Ok(Cdb::Read10(rw(0x1234_5678, 0x102, true, true)))
        );
    }

    #[test]
    fn read10_zero_length_is_zero_blocks() {
        let c = [op::READ_10, 0, 0, 0, 0, 9, 0, 0, 0, 0];
        assert_eq!(Cdb::decode(&c), Ok(Cdb::Read10(rw(9, 0, false, false))));
    }

    #[test]
    fn write10_decodes_fua_only() {
        let c = [op::WRITE_10, 0x08, 0, 0, 0, 1, 0, 0, 4, 0];
        assert_eq!(Cdb::decode(&c), Ok(Cdb::Write10(rw(1, 4, false, true))));
    }

    #[test]
    fn read12_and_write12_decode() {
        let mut c = [0u8; 12];
        c[0] = op::READ_12;
        c[1] = 0x10;
        c[2..6].copy_from_slice(&7u32.to_be_bytes());
        c[6..10].copy_from_slice(&0x0001_0000u32.to_be_bytes());
        assert_eq!(
            Cdb::decode(&c),
            Ok(Cdb::Read12(rw(7, 0x1_0000, true, false)))
        );
        c[0] = op::WRITE_12;
        assert_eq!(
            Cdb::decode(&c),
            Ok(Cdb::Write12(rw(7, 0x1_0000, true, false)))
        );
    }

    #[test]
    fn read16_and_write16_decode_64_bit_lba() {
        let mut c = [0u8; 16];
        c[0] = op::READ_16;
        c[2..10].copy_from_slice(&0x0123_4567_89ab_cdefu64.to_be_bytes());
        c[10..14].copy_from_slice(&3u32.to_be_bytes());
        assert_eq!(
            Cdb::decode(&c),
            Ok(Cdb::Read16(rw(0x0123_4567_89ab_cdef, 3, false, false)))
        );
        c[0] = op::WRITE_16;
        c[1] = 0x08;
        assert_eq!(
            Cdb::decode(&c),
            Ok(Cdb::Write16(rw(0x0123_4567_89ab_cdef, 3, false, true)))
        );
    }

    #[test]
    fn rdprotect_and_wrprotect_are_invalid_fields() {
        for opcode in [
            op::READ_10,
            op::WRITE_10,
            op::READ_12,
            op::WRITE_12,
            op::READ_16,
            op::WRITE_16,
        ] {
            for prot in 1u8..8 {
                let mut c = [0u8; 16];
                c[0] = opcode;
                c[1] = prot << 5;
                assert_eq!(
                    Cdb::decode(&c),
                    Err(CdbError::InvalidField {
                        byte: 1,
                        bit: Some(7)
                    }),
                    "opcode {opcode:#x} protect {prot}"
                );
            }
        }
    }

    #[test]
    fn naca_in_control_byte_is_invalid() {
        let c = [op::READ_10, 0, 0, 0, 0, 0, 0, 0, 1, 0x04];
        assert_eq!(
            Cdb::decode(&c),
            Err(CdbError::InvalidField {
                byte: 9,
                bit: Some(2)
            })
        );
    }

    #[test]
    fn inquiry_decodes_evpd_page_and_alloc_len() {
        let c = [op::INQUIRY, 1, 0x83, 0x01, 0x00, 0];
        assert_eq!(
            Cdb::decode(&c),
            Ok(Cdb::Inquiry {
                evpd: true,
                page_code: 0x83,
                alloc_len: 256
            })
        );
    }

    #[test]
    fn inquiry_page_code_without_evpd_is_invalid() {
        let c = [op::INQUIRY, 0, 0x80, 0, 0xff, 0];
        assert_eq!(
            Cdb::decode(&c),
            Err(CdbError::InvalidField {
                byte: 2,
                bit: Some(7)
            })
        );
    }

    #[test]
    fn inquiry_cmddt_is_invalid() {
        let c = [op::INQUIRY, 2, 0, 0, 0xff, 0];
        assert_eq!(
            Cdb::decode(&c),
            Err(CdbError::InvalidField {
                byte: 1,
                bit: Some(1)
            })
        );
    }

    #[test]
    fn report_luns_decodes() {
        let c = [op::REPORT_LUNS, 0, 2, 0, 0, 0, 0, 0, 0x10, 0, 0, 0];
        assert_eq!(
            Cdb::decode(&c),
            Ok(Cdb::ReportLuns {
                select_report: 2,
                alloc_len: 0x1000
            })
        );
    }

    #[test]
    fn read_capacity10_rejects_lba_without_pmi() {
        let mut c = [0u8; 10];
        c[0] = op::READ_CAPACITY_10;
        assert_eq!(Cdb::decode(&c), Ok(Cdb::ReadCapacity10));
        c[5] = 1;
        assert_eq!(
            Cdb::decode(&c),
            Err(CdbError::InvalidField { byte: 2, bit: None })
        );
        c[8] = 1;
        assert_eq!(Cdb::decode(&c), Ok(Cdb::ReadCapacity10));
    }

    #[test]
    fn service_action_in_decodes_read_capacity16_and_others() {
        let mut c = [0u8; 16];
        c[0] = op::SERVICE_ACTION_IN_16;
        c[1] = sai::READ_CAPACITY_16;
        c[13] = 32;
        assert_eq!(Cdb::decode(&c), Ok(Cdb::ReadCapacity16 { alloc_len: 32 }));
        c[1] = sai::GET_LBA_STATUS;
        assert_eq!(
            Cdb::decode(&c),
            Ok(Cdb::UnsupportedServiceAction {
                opcode: op::SERVICE_ACTION_IN_16,
                service_action: sai::GET_LBA_STATUS
            })
        );
    }

    #[test]
    fn synchronize_cache_10_and_16_decode() {
        let c = [op::SYNCHRONIZE_CACHE_10, 0x02, 0, 0, 1, 0, 0, 0, 8, 0];
        assert_eq!(
            Cdb::decode(&c),
            Ok(Cdb::SynchronizeCache10 {
                lba: 256,
                blocks: 8,
                immed: true
            })
        );
        let mut c = [0u8; 16];
        c[0] = op::SYNCHRONIZE_CACHE_16;
        c[2..10].copy_from_slice(&(1u64 << 40).to_be_bytes());
        c[10..14].copy_from_slice(&5u32.to_be_bytes());
        assert_eq!(
            Cdb::decode(&c),
            Ok(Cdb::SynchronizeCache16 {
                lba: 1 << 40,
                blocks: 5,
                immed: false
            })
        );
    }

    #[test]
    fn request_sense_decodes_desc() {
        let c = [op::REQUEST_SENSE, 1, 0, 0, 252, 0];
        assert_eq!(
            Cdb::decode(&c),
            Ok(Cdb::RequestSense {
                desc: true,
                alloc_len: 252
            })
        );
    }

    #[test]
    fn mode_sense6_decodes() {
        let c = [op::MODE_SENSE_6, 0x08, 0x80 | 0x3f, 0xff, 0xfc, 0];
        assert_eq!(
            Cdb::decode(&c),
            Ok(Cdb::ModeSense6(ModeSenseCdb {
                dbd: true,
                llbaa: false,
                pc: 2,
                page: 0x3f,
                subpage: 0xff,
                alloc_len: 0xfc
            }))
        );
    }

    #[test]
    fn mode_sense10_decodes_llbaa() {
        let c = [op::MODE_SENSE_10, 0x10, 0x48, 0, 0, 0, 0, 0x02, 0x00, 0];
        assert_eq!(
            Cdb::decode(&c),
            Ok(Cdb::ModeSense10(ModeSenseCdb {
                dbd: false,
                llbaa: true,
                pc: 1,
                page: 0x08,
                subpage: 0,
                alloc_len: 0x200
            }))
        );
    }

    #[test]
    fn opcode_round_trips_for_decoded_cdbs() {
        for opcode in 0u8..=255 {
            let mut c = [0u8; 16];
            c[0] = opcode;
            if opcode == op::SERVICE_ACTION_IN_16 {
                c[1] = sai::READ_CAPACITY_16;
            }
            if let Ok(cdb) = Cdb::decode(&c) {
                assert_eq!(cdb.opcode(), opcode);
            }
        }
    }

    #[test]
    fn invalid_field_error_maps_to_field_pointer_sense() {
        let e = CdbError::InvalidField {
            byte: 1,
            bit: Some(7),
        };
        let s = e.sense().to_fixed();
        assert_eq!((s[2], s[12], s[13]), (key::ILLEGAL_REQUEST, 0x24, 0));
        assert_eq!(s[15], 0xc8 | 7);
    }

    proptest! {
        #[test]
        fn decode_never_panics(v in proptest::collection::vec(any::<u8>(), 0..270)) {
            let _ = Cdb::decode(&v);
        }

        #[test]
        fn decode_of_known_opcode_never_panics_at_any_length(
            opcode in prop::sample::select(vec![
                op::TEST_UNIT_READY, op::REQUEST_SENSE, op::READ_6, op::WRITE_6,
                op::INQUIRY, op::MODE_SENSE_6, op::READ_CAPACITY_10, op::READ_10,
                op::WRITE_10, op::SYNCHRONIZE_CACHE_10, op::MODE_SENSE_10, op::READ_12,
                op::WRITE_12, op::REPORT_LUNS, op::READ_16, op::WRITE_16,
                op::SYNCHRONIZE_CACHE_16, op::SERVICE_ACTION_IN_16,
            ]),
            rest in proptest::collection::vec(any::<u8>(), 0..20),
        ) {
            let mut v = vec![opcode];
            v.extend_from_slice(&rest);
            match Cdb::decode(&v) {
                Err(CdbError::TooShort { need, got, .. }) => prop_assert!(got < need),
                Err(CdbError::Empty) => prop_assert!(false, "not empty"),
                _ => {}
            }
        }

        #[test]
        fn read16_fields_round_trip(lba in any::<u64>(), blocks in any::<u32>(), dpo: bool, fua: bool) {
            let mut c = [0u8; 16];
            c[0] = op::READ_16;
            c[1] = if dpo { DPO_BIT } else { 0 } | if fua { FUA_BIT } else { 0 };
            c[2..10].copy_from_slice(&lba.to_be_bytes());
            c[10..14].copy_from_slice(&blocks.to_be_bytes());
            prop_assert_eq!(Cdb::decode(&c), Ok(Cdb::Read16(rw(lba, blocks, dpo, fua))));
        }
    }
}
