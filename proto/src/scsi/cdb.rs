//! Command descriptor block decoding (SPC-4 §4.2, SBC-3 §5) into a typed [`Cdb`].
//!
//! Decoding checks the CDB's length against its opcode and the fields every device
//! server must reject whatever its state (RDPROTECT/WRPROTECT without protection
//! information, INQUIRY with EVPD = 0 and a page code, NACA in the CONTROL byte); the
//! logical unit checks the rest (LBA range, page support). It never panics: a short
//! CDB is [`CdbError::TooShort`] and an opcode we do not know is [`Cdb::Unknown`].

use super::opcode as op;
use super::opcode::maintenance_in as mi;
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

/// VERIFY (10/12/16) and WRITE AND VERIFY (10/12/16) (SBC-3 §5.33-5.35, §5.45-5.47).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerifyCdb {
    /// First logical block.
    pub lba: u64,
    /// VERIFICATION LENGTH / TRANSFER LENGTH in blocks; 0 means none.
    pub blocks: u32,
    /// Disable page out: a cache-retention hint.
    pub dpo: bool,
    /// BYTCHK (byte 1 bits 2..1): 00b verify the medium only, 01b compare the
    /// Data-Out buffer with the medium, 11b compare one Data-Out block with every
    /// block of the range (VERIFY only). 10b is reserved.
    pub bytchk: u8,
}

/// PRE-FETCH (10/16) (SBC-3 §5.9, §5.10).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PreFetchCdb {
    /// First logical block.
    pub lba: u64,
    /// PREFETCH LENGTH in blocks; 0 means "to the end of the medium".
    pub blocks: u32,
    /// Return status as soon as the CDB is validated.
    pub immed: bool,
}

/// WRITE SAME (10/16) (SBC-3 §5.42, §5.43).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteSameCdb {
    /// First logical block.
    pub lba: u64,
    /// NUMBER OF LOGICAL BLOCKS; 0 is refused (we report WSNZ = 1).
    pub blocks: u32,
    /// Deallocate the blocks instead of writing them (thin provisioning).
    pub unmap: bool,
    /// Anchor instead of deallocate; needs ANC_SUP, which we do not report.
    pub anchor: bool,
    /// No Data-Out buffer: the block is all zeros (WRITE SAME(16) only, SBC-4).
    pub ndob: bool,
}

/// MODE SELECT(6) and MODE SELECT(10) (SPC-4 §6.11, §6.12).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModeSelectCdb {
    /// Page format: the parameter list holds SPC mode pages.
    pub pf: bool,
    /// Save pages: make the change persistent (not supported).
    pub sp: bool,
    /// PARAMETER LIST LENGTH in bytes.
    pub param_len: u16,
}

/// START STOP UNIT (SBC-3 §5.25).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StartStopCdb {
    /// Return status before the operation completes.
    pub immed: bool,
    /// POWER CONDITION MODIFIER (byte 3, bits 3..0).
    pub power_condition_modifier: u8,
    /// POWER CONDITION (byte 4, bits 7..4).
    pub power_condition: u8,
    /// Do not synchronize the cache before stopping.
    pub no_flush: bool,
    /// Load or eject the medium (removable media only).
    pub loej: bool,
    /// Start (1) or stop (0) the unit.
    pub start: bool,
}

/// REPORT SUPPORTED OPERATION CODES (SPC-4 §6.35).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReportOpcodesCdb {
    /// Return command timeouts descriptors.
    pub rctd: bool,
    /// REPORTING OPTIONS (byte 2, bits 2..0).
    pub options: u8,
    /// REQUESTED OPERATION CODE.
    pub opcode: u8,
    /// REQUESTED SERVICE ACTION.
    pub service_action: u16,
    /// ALLOCATION LENGTH.
    pub alloc_len: u32,
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
    ModeSelect6(ModeSelectCdb),
    ModeSelect10(ModeSelectCdb),
    Verify10(VerifyCdb),
    Verify12(VerifyCdb),
    Verify16(VerifyCdb),
    WriteAndVerify10(VerifyCdb),
    WriteAndVerify12(VerifyCdb),
    WriteAndVerify16(VerifyCdb),
    PreFetch10(PreFetchCdb),
    PreFetch16(PreFetchCdb),
    /// ORWRITE(16) (SBC-4 §5.9): OR the Data-Out buffer into the medium.
    OrWrite16(RwCdb),
    /// COMPARE AND WRITE (SBC-3 §5.2); `blocks` is NUMBER OF LOGICAL BLOCKS.
    CompareAndWrite(RwCdb),
    /// WRITE ATOMIC(16) (SBC-4 §5.48).
    WriteAtomic16(RwCdb),
    WriteSame10(WriteSameCdb),
    WriteSame16(WriteSameCdb),
    /// UNMAP (SBC-3 §5.28).
    Unmap {
        anchor: bool,
        param_len: u16,
    },
    /// GET LBA STATUS (SBC-3 §5.7).
    GetLbaStatus {
        lba: u64,
        alloc_len: u32,
    },
    StartStopUnit(StartStopCdb),
    /// PREVENT ALLOW MEDIUM REMOVAL (SBC-3 §5.13): PREVENT field, byte 4 bits 1..0.
    PreventAllowMediumRemoval {
        prevent: u8,
    },
    ReportSupportedOpcodes(ReportOpcodesCdb),
    /// READ DEFECT DATA(10) (SBC-3 §5.17) when `twelve` is false, (12) (§5.18) when
    /// true: which lists are requested and in which format.
    ReadDefectData {
        twelve: bool,
        req_plist: bool,
        req_glist: bool,
        format: u8,
        alloc_len: u32,
    },
    /// REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS (SPC-4 §6.36).
    ReportSupportedTmfs {
        repd: bool,
        alloc_len: u32,
    },
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
        | op::MODE_SELECT_6
        | op::MODE_SENSE_6
        | op::START_STOP_UNIT
        | op::PREVENT_ALLOW_MEDIUM_REMOVAL => 6,
        op::READ_CAPACITY_10
        | op::READ_10
        | op::WRITE_10
        | op::WRITE_AND_VERIFY_10
        | op::VERIFY_10
        | op::PRE_FETCH_10
        | op::READ_DEFECT_DATA_10
        | op::SYNCHRONIZE_CACHE_10
        | op::WRITE_SAME_10
        | op::UNMAP
        | op::MODE_SELECT_10
        | op::MODE_SENSE_10 => 10,
        op::READ_12
        | op::WRITE_12
        | op::WRITE_AND_VERIFY_12
        | op::VERIFY_12
        | op::READ_DEFECT_DATA_12
        | op::REPORT_LUNS
        | op::MAINTENANCE_IN => 12,
        op::READ_16
        | op::WRITE_16
        | op::COMPARE_AND_WRITE
        | op::ORWRITE_16
        | op::WRITE_AND_VERIFY_16
        | op::VERIFY_16
        | op::PRE_FETCH_16
        | op::SYNCHRONIZE_CACHE_16
        | op::WRITE_SAME_16
        | op::WRITE_ATOMIC_16
        | op::SERVICE_ACTION_IN_16 => 16,
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
                sai::GET_LBA_STATUS => Cdb::GetLbaStatus {
                    lba: be64(b, 2),
                    alloc_len: be32(b, 10),
                },
                service_action => Cdb::UnsupportedServiceAction {
                    opcode,
                    service_action,
                },
            },
            op::MAINTENANCE_IN => match b[1] & 0x1f {
                mi::REPORT_SUPPORTED_OPERATION_CODES => {
                    Cdb::ReportSupportedOpcodes(ReportOpcodesCdb {
                        rctd: b[2] & 0x80 != 0,
                        options: b[2] & 0x07,
                        opcode: b[3],
                        service_action: be16(b, 4),
                        alloc_len: be32(b, 6),
                    })
                }
                mi::REPORT_SUPPORTED_TMFS => Cdb::ReportSupportedTmfs {
                    repd: b[2] & 0x80 != 0,
                    alloc_len: be32(b, 6),
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
            op::VERIFY_10 => {
                Cdb::Verify10(verify(b, u64::from(be32(b, 2)), u32::from(be16(b, 7)))?)
            }
            op::VERIFY_12 => Cdb::Verify12(verify(b, u64::from(be32(b, 2)), be32(b, 6))?),
            op::VERIFY_16 => Cdb::Verify16(verify(b, be64(b, 2), be32(b, 10))?),
            op::WRITE_AND_VERIFY_10 => Cdb::WriteAndVerify10(write_verify(
                b,
                u64::from(be32(b, 2)),
                u32::from(be16(b, 7)),
            )?),
            op::WRITE_AND_VERIFY_12 => {
                Cdb::WriteAndVerify12(write_verify(b, u64::from(be32(b, 2)), be32(b, 6))?)
            }
            op::WRITE_AND_VERIFY_16 => {
                Cdb::WriteAndVerify16(write_verify(b, be64(b, 2), be32(b, 10))?)
            }
            op::PRE_FETCH_10 => Cdb::PreFetch10(PreFetchCdb {
                lba: u64::from(be32(b, 2)),
                blocks: u32::from(be16(b, 7)),
                immed: b[1] & 0x02 != 0,
            }),
            op::PRE_FETCH_16 => Cdb::PreFetch16(PreFetchCdb {
                lba: be64(b, 2),
                blocks: be32(b, 10),
                immed: b[1] & 0x02 != 0,
            }),
            op::ORWRITE_16 => Cdb::OrWrite16(rw_flags(b, be64(b, 2), be32(b, 10))?),
            op::COMPARE_AND_WRITE => {
                Cdb::CompareAndWrite(rw_flags(b, be64(b, 2), u32::from(b[13]))?)
            }
            op::WRITE_ATOMIC_16 => {
                Cdb::WriteAtomic16(rw_flags(b, be64(b, 2), u32::from(be16(b, 12)))?)
            }
            op::WRITE_SAME_10 => Cdb::WriteSame10(write_same(
                b,
                u64::from(be32(b, 2)),
                u32::from(be16(b, 7)),
                false,
            )?),
            op::WRITE_SAME_16 => {
                Cdb::WriteSame16(write_same(b, be64(b, 2), be32(b, 10), b[1] & 0x01 != 0)?)
            }
            op::READ_DEFECT_DATA_10 => Cdb::ReadDefectData {
                twelve: false,
                req_plist: b[2] & 0x10 != 0,
                req_glist: b[2] & 0x08 != 0,
                format: b[2] & 0x07,
                alloc_len: u32::from(be16(b, 7)),
            },
            op::READ_DEFECT_DATA_12 => Cdb::ReadDefectData {
                twelve: true,
                req_plist: b[1] & 0x10 != 0,
                req_glist: b[1] & 0x08 != 0,
                format: b[1] & 0x07,
                alloc_len: be32(b, 6),
            },
            op::UNMAP => Cdb::Unmap {
                anchor: b[1] & 0x01 != 0,
                param_len: be16(b, 7),
            },
            op::START_STOP_UNIT => Cdb::StartStopUnit(StartStopCdb {
                immed: b[1] & 0x01 != 0,
                power_condition_modifier: b[3] & 0x0f,
                power_condition: b[4] >> 4,
                no_flush: b[4] & 0x04 != 0,
                loej: b[4] & 0x02 != 0,
                start: b[4] & 0x01 != 0,
            }),
            op::PREVENT_ALLOW_MEDIUM_REMOVAL => Cdb::PreventAllowMediumRemoval {
                prevent: b[4] & 0x03,
            },
            op::MODE_SELECT_6 => Cdb::ModeSelect6(ModeSelectCdb {
                pf: b[1] & 0x10 != 0,
                sp: b[1] & 0x01 != 0,
                param_len: u16::from(b[4]),
            }),
            op::MODE_SELECT_10 => Cdb::ModeSelect10(ModeSelectCdb {
                pf: b[1] & 0x10 != 0,
                sp: b[1] & 0x01 != 0,
                param_len: be16(b, 7),
            }),
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
            Cdb::ModeSelect6(_) => op::MODE_SELECT_6,
            Cdb::ModeSelect10(_) => op::MODE_SELECT_10,
            Cdb::Verify10(_) => op::VERIFY_10,
            Cdb::Verify12(_) => op::VERIFY_12,
            Cdb::Verify16(_) => op::VERIFY_16,
            Cdb::WriteAndVerify10(_) => op::WRITE_AND_VERIFY_10,
            Cdb::WriteAndVerify12(_) => op::WRITE_AND_VERIFY_12,
            Cdb::WriteAndVerify16(_) => op::WRITE_AND_VERIFY_16,
            Cdb::PreFetch10(_) => op::PRE_FETCH_10,
            Cdb::PreFetch16(_) => op::PRE_FETCH_16,
            Cdb::OrWrite16(_) => op::ORWRITE_16,
            Cdb::CompareAndWrite(_) => op::COMPARE_AND_WRITE,
            Cdb::WriteAtomic16(_) => op::WRITE_ATOMIC_16,
            Cdb::WriteSame10(_) => op::WRITE_SAME_10,
            Cdb::WriteSame16(_) => op::WRITE_SAME_16,
            Cdb::Unmap { .. } => op::UNMAP,
            Cdb::ReadDefectData { twelve: false, .. } => op::READ_DEFECT_DATA_10,
            Cdb::ReadDefectData { twelve: true, .. } => op::READ_DEFECT_DATA_12,
            Cdb::GetLbaStatus { .. } => op::SERVICE_ACTION_IN_16,
            Cdb::StartStopUnit(_) => op::START_STOP_UNIT,
            Cdb::PreventAllowMediumRemoval { .. } => op::PREVENT_ALLOW_MEDIUM_REMOVAL,
            Cdb::ReportSupportedOpcodes(_) | Cdb::ReportSupportedTmfs { .. } => op::MAINTENANCE_IN,
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

/// Byte 1 bits 2..1 of VERIFY and WRITE AND VERIFY: BYTCHK (SBC-4 §5.33.1).
const BYTCHK_SHIFT: u8 = 1;
/// BYTCHK 10b is reserved in both commands (SBC-4 Table 158).
const BYTCHK_RESERVED: u8 = 0b10;
/// BYTCHK 11b (one block compared with every block) exists for VERIFY only.
const BYTCHK_ONE_BLOCK: u8 = 0b11;

/// VERIFY (10/12/16): VRPROTECT must be 0 (no protection information, SBC-3 §5.33
/// Table 80), BYTCHK 10b is reserved.
fn verify(b: &[u8], lba: u64, blocks: u32) -> Result<VerifyCdb, CdbError> {
    let v = protected_verify(b, lba, blocks)?;
    if v.bytchk == BYTCHK_RESERVED {
        return Err(CdbError::InvalidField {
            byte: 1,
            bit: Some(2),
        });
    }
    Ok(v)
}

/// WRITE AND VERIFY (10/12/16): WRPROTECT must be 0; BYTCHK is 00b or 01b.
fn write_verify(b: &[u8], lba: u64, blocks: u32) -> Result<VerifyCdb, CdbError> {
    let v = protected_verify(b, lba, blocks)?;
    if v.bytchk == BYTCHK_RESERVED || v.bytchk == BYTCHK_ONE_BLOCK {
        return Err(CdbError::InvalidField {
            byte: 1,
            bit: Some(2),
        });
    }
    Ok(v)
}

fn protected_verify(b: &[u8], lba: u64, blocks: u32) -> Result<VerifyCdb, CdbError> {
    if b[1] & PROTECT_MASK != 0 {
        return Err(CdbError::InvalidField {
            byte: 1,
            bit: Some(7),
        });
    }
    Ok(VerifyCdb {
        lba,
        blocks,
        dpo: b[1] & DPO_BIT != 0,
        bytchk: (b[1] >> BYTCHK_SHIFT) & 0x03,
    })
}

/// WRITE SAME (10/16): WRPROTECT must be 0 (SBC-3 §5.42 Table 98); ANCHOR is byte 1
/// bit 4, UNMAP bit 3.
fn write_same(b: &[u8], lba: u64, blocks: u32, ndob: bool) -> Result<WriteSameCdb, CdbError> {
    if b[1] & PROTECT_MASK != 0 {
        return Err(CdbError::InvalidField {
            byte: 1,
            bit: Some(7),
        });
    }
    Ok(WriteSameCdb {
        lba,
        blocks,
        unmap: b[1] & 0x08 != 0,
        anchor: b[1] & 0x10 != 0,
        ndob,
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
        // SEND DIAGNOSTIC (0x1D) is not ours.
        assert_eq!(Cdb::decode(&[0x1d; 16]), Ok(Cdb::Unknown(0x1d)));
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
        // 0x13: REPORT REFERRALS, not ours.
        c[1] = 0x13;
        assert_eq!(
            Cdb::decode(&c),
            Ok(Cdb::UnsupportedServiceAction {
                opcode: op::SERVICE_ACTION_IN_16,
                service_action: 0x13
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

    fn cdb16(opcode: u8, byte1: u8, lba: u64, len: u32) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[0] = opcode;
        c[1] = byte1;
        c[2..10].copy_from_slice(&lba.to_be_bytes());
        c[10..14].copy_from_slice(&len.to_be_bytes());
        c
    }

    #[test]
    fn verify10_decodes_bytchk_and_dpo() {
        let c = [op::VERIFY_10, 0x12, 0, 0, 0, 7, 0, 0, 3, 0];
        assert_eq!(
            Cdb::decode(&c),
            Ok(Cdb::Verify10(VerifyCdb {
                lba: 7,
                blocks: 3,
                dpo: true,
                bytchk: 1
            }))
        );
        let c = [op::VERIFY_10, 0x06, 0, 0, 0, 7, 0, 0, 3, 0];
        assert!(matches!(
            Cdb::decode(&c),
            Ok(Cdb::Verify10(VerifyCdb { bytchk: 3, .. }))
        ));
    }

    #[test]
    fn verify_reserved_bytchk_and_vrprotect_are_invalid() {
        let c = [op::VERIFY_10, 0x04, 0, 0, 0, 7, 0, 0, 3, 0];
        assert_eq!(
            Cdb::decode(&c),
            Err(CdbError::InvalidField {
                byte: 1,
                bit: Some(2)
            })
        );
        for prot in 1u8..8 {
            let c = cdb16(op::VERIFY_16, prot << 5, 0, 1);
            assert_eq!(
                Cdb::decode(&c),
                Err(CdbError::InvalidField {
                    byte: 1,
                    bit: Some(7)
                })
            );
        }
    }

    #[test]
    fn write_and_verify_accepts_bytchk_0_and_1_only() {
        let mut c = [0u8; 12];
        c[0] = op::WRITE_AND_VERIFY_12;
        c[1] = 0x02;
        c[2..6].copy_from_slice(&9u32.to_be_bytes());
        c[6..10].copy_from_slice(&2u32.to_be_bytes());
        assert_eq!(
            Cdb::decode(&c),
            Ok(Cdb::WriteAndVerify12(VerifyCdb {
                lba: 9,
                blocks: 2,
                dpo: false,
                bytchk: 1
            }))
        );
        c[1] = 0x06;
        assert!(Cdb::decode(&c).is_err(), "BYTCHK 11b is VERIFY only");
    }

    #[test]
    fn prefetch_decodes_immed() {
        let c = [op::PRE_FETCH_10, 0x02, 0, 0, 1, 0, 0, 0, 4, 0];
        assert_eq!(
            Cdb::decode(&c),
            Ok(Cdb::PreFetch10(PreFetchCdb {
                lba: 256,
                blocks: 4,
                immed: true
            }))
        );
        let c = cdb16(op::PRE_FETCH_16, 0, 1 << 33, 8);
        assert_eq!(
            Cdb::decode(&c),
            Ok(Cdb::PreFetch16(PreFetchCdb {
                lba: 1 << 33,
                blocks: 8,
                immed: false
            }))
        );
    }

    #[test]
    fn compare_and_write_takes_blocks_from_byte_13() {
        let mut c = cdb16(op::COMPARE_AND_WRITE, 0x18, 5, 0);
        c[13] = 2;
        assert_eq!(
            Cdb::decode(&c),
            Ok(Cdb::CompareAndWrite(rw(5, 2, true, true)))
        );
        c[1] = 0x20;
        assert!(Cdb::decode(&c).is_err(), "WRPROTECT");
    }

    #[test]
    fn write_atomic16_takes_a_16_bit_length_at_byte_12() {
        let mut c = cdb16(op::WRITE_ATOMIC_16, 0, 3, 0);
        c[12..14].copy_from_slice(&0x0102u16.to_be_bytes());
        assert_eq!(
            Cdb::decode(&c),
            Ok(Cdb::WriteAtomic16(rw(3, 0x102, false, false)))
        );
    }

    #[test]
    fn orwrite16_decodes_and_rejects_orprotect() {
        let c = cdb16(op::ORWRITE_16, 0x08, 11, 4);
        assert_eq!(Cdb::decode(&c), Ok(Cdb::OrWrite16(rw(11, 4, false, true))));
        let c = cdb16(op::ORWRITE_16, 0x40, 11, 4);
        assert!(Cdb::decode(&c).is_err());
    }

    #[test]
    fn write_same_decodes_unmap_anchor_ndob() {
        let c = [op::WRITE_SAME_10, 0x18, 0, 0, 0, 1, 0, 0, 2, 0];
        assert_eq!(
            Cdb::decode(&c),
            Ok(Cdb::WriteSame10(WriteSameCdb {
                lba: 1,
                blocks: 2,
                unmap: true,
                anchor: true,
                ndob: false
            }))
        );
        let c = cdb16(op::WRITE_SAME_16, 0x09, 1, 2);
        assert_eq!(
            Cdb::decode(&c),
            Ok(Cdb::WriteSame16(WriteSameCdb {
                lba: 1,
                blocks: 2,
                unmap: true,
                anchor: false,
                ndob: true
            }))
        );
        let c = cdb16(op::WRITE_SAME_16, 0x80, 1, 2);
        assert!(Cdb::decode(&c).is_err(), "WRPROTECT");
    }

    #[test]
    fn unmap_and_get_lba_status_decode() {
        let c = [op::UNMAP, 1, 0, 0, 0, 0, 0, 0, 24, 0];
        assert_eq!(
            Cdb::decode(&c),
            Ok(Cdb::Unmap {
                anchor: true,
                param_len: 24
            })
        );
        let c = cdb16(op::SERVICE_ACTION_IN_16, sai::GET_LBA_STATUS, 77, 24);
        assert_eq!(
            Cdb::decode(&c),
            Ok(Cdb::GetLbaStatus {
                lba: 77,
                alloc_len: 24
            })
        );
    }

    #[test]
    fn start_stop_and_prevent_allow_decode() {
        let c = [op::START_STOP_UNIT, 1, 0, 0x0f, 0x37, 0];
        assert_eq!(
            Cdb::decode(&c),
            Ok(Cdb::StartStopUnit(StartStopCdb {
                immed: true,
                power_condition_modifier: 0x0f,
                power_condition: 3,
                no_flush: true,
                loej: true,
                start: true
            }))
        );
        let c = [op::PREVENT_ALLOW_MEDIUM_REMOVAL, 0, 0, 0, 0xfd, 0];
        assert_eq!(
            Cdb::decode(&c),
            Ok(Cdb::PreventAllowMediumRemoval { prevent: 1 })
        );
    }

    #[test]
    fn mode_select_decodes_pf_sp_and_length() {
        let c = [op::MODE_SELECT_6, 0x11, 0, 0, 28, 0];
        assert_eq!(
            Cdb::decode(&c),
            Ok(Cdb::ModeSelect6(ModeSelectCdb {
                pf: true,
                sp: true,
                param_len: 28
            }))
        );
        let c = [op::MODE_SELECT_10, 0x10, 0, 0, 0, 0, 0, 1, 2, 0];
        assert_eq!(
            Cdb::decode(&c),
            Ok(Cdb::ModeSelect10(ModeSelectCdb {
                pf: true,
                sp: false,
                param_len: 0x102
            }))
        );
    }

    #[test]
    fn read_defect_data_10_and_12_decode() {
        let c = [op::READ_DEFECT_DATA_10, 0, 0x1b, 0, 0, 0, 0, 0, 32, 0];
        assert_eq!(
            Cdb::decode(&c),
            Ok(Cdb::ReadDefectData {
                twelve: false,
                req_plist: true,
                req_glist: true,
                format: 3,
                alloc_len: 32
            })
        );
        let mut c = [0u8; 12];
        c[0] = op::READ_DEFECT_DATA_12;
        c[1] = 0x08 | 0x05;
        c[9] = 64;
        assert_eq!(
            Cdb::decode(&c),
            Ok(Cdb::ReadDefectData {
                twelve: true,
                req_plist: false,
                req_glist: true,
                format: 5,
                alloc_len: 64
            })
        );
    }

    #[test]
    fn maintenance_in_decodes_report_opcodes_and_tmfs() {
        let mut c = [0u8; 12];
        c[0] = op::MAINTENANCE_IN;
        c[1] = mi::REPORT_SUPPORTED_OPERATION_CODES;
        c[2] = 0x82;
        c[3] = op::SERVICE_ACTION_IN_16;
        c[4..6].copy_from_slice(&0x10u16.to_be_bytes());
        c[6..10].copy_from_slice(&512u32.to_be_bytes());
        assert_eq!(
            Cdb::decode(&c),
            Ok(Cdb::ReportSupportedOpcodes(ReportOpcodesCdb {
                rctd: true,
                options: 2,
                opcode: op::SERVICE_ACTION_IN_16,
                service_action: 0x10,
                alloc_len: 512
            }))
        );
        c[1] = mi::REPORT_SUPPORTED_TMFS;
        assert_eq!(
            Cdb::decode(&c),
            Ok(Cdb::ReportSupportedTmfs {
                repd: true,
                alloc_len: 512
            })
        );
        c[1] = mi::REPORT_TARGET_PORT_GROUPS;
        assert!(matches!(
            Cdb::decode(&c),
            Ok(Cdb::UnsupportedServiceAction { .. })
        ));
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
                op::SYNCHRONIZE_CACHE_16, op::SERVICE_ACTION_IN_16, op::MODE_SELECT_6,
                op::MODE_SELECT_10, op::START_STOP_UNIT, op::PREVENT_ALLOW_MEDIUM_REMOVAL,
                op::VERIFY_10, op::VERIFY_12, op::VERIFY_16, op::WRITE_AND_VERIFY_10,
                op::WRITE_AND_VERIFY_12, op::WRITE_AND_VERIFY_16, op::PRE_FETCH_10,
                op::PRE_FETCH_16, op::ORWRITE_16, op::COMPARE_AND_WRITE,
                op::WRITE_ATOMIC_16, op::WRITE_SAME_10, op::WRITE_SAME_16, op::UNMAP,
                op::MAINTENANCE_IN, op::READ_DEFECT_DATA_10, op::READ_DEFECT_DATA_12,
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
