//! Fixed-format sense data (SPC-4 §4.5.3): sense keys, additional sense codes, and a
//! builder that encodes them, with the optional INFORMATION field and the
//! sense-key-specific field pointer (SPC-4 §4.5.2.4.2).

use bytes::Bytes;

/// Response code of current, fixed-format sense data (SPC-4 §4.5.3).
pub const RESPONSE_CODE_CURRENT_FIXED: u8 = 0x70;
/// Length of the fixed-format sense data we build: 8 header bytes plus an additional
/// sense length of 10 (SPC-4 §4.5.3, Table 47). No vendor bytes follow.
pub const FIXED_SENSE_LEN: usize = 18;
/// VALID bit of byte 0: the INFORMATION field holds a defined value.
const VALID_BIT: u8 = 0x80;
/// SKSV bit of byte 15: the sense-key-specific bytes are valid.
const SKSV_BIT: u8 = 0x80;
/// C/D bit of byte 15: the field pointer points into the CDB (1) or the parameter list (0).
const CD_BIT: u8 = 0x40;
/// BPV bit of byte 15: the bit pointer is valid.
const BPV_BIT: u8 = 0x08;

/// Sense keys (SPC-4 §4.5.6, Table 49).
pub mod key {
    pub const NO_SENSE: u8 = 0x0;
    pub const RECOVERED_ERROR: u8 = 0x1;
    pub const NOT_READY: u8 = 0x2;
    pub const MEDIUM_ERROR: u8 = 0x3;
    pub const HARDWARE_ERROR: u8 = 0x4;
    pub const ILLEGAL_REQUEST: u8 = 0x5;
    pub const UNIT_ATTENTION: u8 = 0x6;
    pub const DATA_PROTECT: u8 = 0x7;
    pub const BLANK_CHECK: u8 = 0x8;
    pub const ABORTED_COMMAND: u8 = 0xb;
    pub const MISCOMPARE: u8 = 0xe;
}

/// An additional sense code and its qualifier (ASC/ASCQ, SPC-4 §4.5.6, Table 50).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Asc {
    /// ADDITIONAL SENSE CODE (byte 12).
    pub asc: u8,
    /// ADDITIONAL SENSE CODE QUALIFIER (byte 13).
    pub ascq: u8,
}

impl Asc {
    pub const NO_ADDITIONAL_SENSE: Asc = Asc::new(0x00, 0x00);
    pub const LOGICAL_UNIT_NOT_READY_CAUSE_NOT_REPORTABLE: Asc = Asc::new(0x04, 0x00);
    pub const LOGICAL_UNIT_NOT_READY_BECOMING_READY: Asc = Asc::new(0x04, 0x01);
    pub const LOGICAL_UNIT_COMMUNICATION_FAILURE: Asc = Asc::new(0x08, 0x00);
    pub const WRITE_ERROR: Asc = Asc::new(0x0c, 0x00);
    pub const INVALID_FIELD_IN_INFORMATION_UNIT: Asc = Asc::new(0x0e, 0x03);
    pub const UNRECOVERED_READ_ERROR: Asc = Asc::new(0x11, 0x00);
    pub const MISCOMPARE_DURING_VERIFY: Asc = Asc::new(0x1d, 0x00);
    pub const PARAMETER_LIST_LENGTH_ERROR: Asc = Asc::new(0x1a, 0x00);
    pub const INVALID_COMMAND_OPERATION_CODE: Asc = Asc::new(0x20, 0x00);
    pub const LBA_OUT_OF_RANGE: Asc = Asc::new(0x21, 0x00);
    pub const INVALID_FIELD_IN_CDB: Asc = Asc::new(0x24, 0x00);
    pub const LOGICAL_UNIT_NOT_SUPPORTED: Asc = Asc::new(0x25, 0x00);
    pub const INVALID_FIELD_IN_PARAMETER_LIST: Asc = Asc::new(0x26, 0x00);
    pub const WRITE_PROTECTED: Asc = Asc::new(0x27, 0x00);
    pub const POWER_ON_RESET_OR_BUS_DEVICE_RESET: Asc = Asc::new(0x29, 0x00);
    pub const PARAMETERS_CHANGED: Asc = Asc::new(0x2a, 0x00);
    pub const CAPACITY_DATA_HAS_CHANGED: Asc = Asc::new(0x2a, 0x09);
    pub const COMMANDS_CLEARED_BY_ANOTHER_INITIATOR: Asc = Asc::new(0x2f, 0x00);
    pub const SAVING_PARAMETERS_NOT_SUPPORTED: Asc = Asc::new(0x39, 0x00);
    pub const MEDIUM_NOT_PRESENT: Asc = Asc::new(0x3a, 0x00);
    pub const INTERNAL_TARGET_FAILURE: Asc = Asc::new(0x44, 0x00);
    pub const REPORTED_LUNS_DATA_HAS_CHANGED: Asc = Asc::new(0x3f, 0x0e);
    pub const COMMAND_PHASE_ERROR: Asc = Asc::new(0x4a, 0x00);
    pub const DATA_PHASE_ERROR: Asc = Asc::new(0x4b, 0x00);
    pub const INVALID_TARGET_PORT_TRANSFER_TAG: Asc = Asc::new(0x4b, 0x01);
    pub const TOO_MUCH_WRITE_DATA: Asc = Asc::new(0x4b, 0x02);
    pub const DATA_OFFSET_ERROR: Asc = Asc::new(0x4b, 0x05);
    pub const ASYMMETRIC_ACCESS_STATE_CHANGED: Asc = Asc::new(0x2a, 0x06);

    /// An ASC/ASCQ pair.
    pub const fn new(asc: u8, ascq: u8) -> Asc {
        Asc { asc, ascq }
    }
}

/// Where in the CDB (or parameter list) the offending field is: the sense-key-specific
/// FIELD POINTER bytes of ILLEGAL REQUEST sense (SPC-4 §4.5.2.4.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldPointer {
    /// True when the pointer refers to the CDB, false for the parameter list (C/D bit).
    pub in_cdb: bool,
    /// Byte offset of the field (its most significant byte).
    pub byte: u16,
    /// The bit within that byte (its most significant bit), if known.
    pub bit: Option<u8>,
}

/// Sense data to be returned with CHECK CONDITION (or by REQUEST SENSE).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sense {
    /// SENSE KEY (byte 2, bits 3..0): one of [`key`].
    pub key: u8,
    /// ASC/ASCQ (bytes 12 and 13).
    pub asc: Asc,
    /// INFORMATION (bytes 3..6), e.g. the first failing LBA; sets VALID when present.
    /// Fixed format carries only 32 bits; larger values are reported as not valid.
    pub information: Option<u64>,
    /// Sense-key-specific field pointer (bytes 15..17), for ILLEGAL REQUEST.
    pub field_pointer: Option<FieldPointer>,
}

impl Sense {
    /// Sense data with a key and an ASC/ASCQ, and nothing else.
    pub const fn new(key: u8, asc: Asc) -> Sense {
        Sense {
            key,
            asc,
            information: None,
            field_pointer: None,
        }
    }

    /// ILLEGAL REQUEST / INVALID FIELD IN CDB pointing at `byte` (and `bit`) of the CDB.
    pub const fn invalid_field_in_cdb(byte: u16, bit: Option<u8>) -> Sense {
        Sense::new(key::ILLEGAL_REQUEST, Asc::INVALID_FIELD_IN_CDB).with_field_pointer(
            FieldPointer {
                in_cdb: true,
                byte,
                bit,
            },
        )
    }

    /// ILLEGAL REQUEST / INVALID FIELD IN PARAMETER LIST pointing at `byte` (and
    /// `bit`) of the parameter list (SPC-4 §4.5.2.4.2, C/D = 0).
    pub const fn invalid_field_in_param(byte: u16, bit: Option<u8>) -> Sense {
        Sense::new(key::ILLEGAL_REQUEST, Asc::INVALID_FIELD_IN_PARAMETER_LIST).with_field_pointer(
            FieldPointer {
                in_cdb: false,
                byte,
                bit,
            },
        )
    }

    /// Sets the INFORMATION field.
    pub const fn with_information(mut self, information: u64) -> Sense {
        self.information = Some(information);
        self
    }

    /// Sets the sense-key-specific field pointer.
    pub const fn with_field_pointer(mut self, pointer: FieldPointer) -> Sense {
        self.field_pointer = Some(pointer);
        self
    }

    /// Encodes fixed-format sense data (SPC-4 §4.5.3, Table 47).
    pub fn to_fixed(&self) -> [u8; FIXED_SENSE_LEN] {
        let mut b = [0u8; FIXED_SENSE_LEN];
        b[0] = RESPONSE_CODE_CURRENT_FIXED;
        b[2] = self.key & 0x0f;
        if let Some(info) = self.information {
            if let Ok(info) = u32::try_from(info) {
                b[0] |= VALID_BIT;
                b[3..7].copy_from_slice(&info.to_be_bytes());
            }
        }
        // ADDITIONAL SENSE LENGTH: the bytes after byte 7.
        b[7] = (FIXED_SENSE_LEN - 8) as u8;
        b[12] = self.asc.asc;
        b[13] = self.asc.ascq;
        if let Some(fp) = self.field_pointer {
            let mut flags = SKSV_BIT;
            if fp.in_cdb {
                flags |= CD_BIT;
            }
            if let Some(bit) = fp.bit {
                flags |= BPV_BIT | (bit & 0x07);
            }
            b[15] = flags;
            b[16..18].copy_from_slice(&fp.byte.to_be_bytes());
        }
        b
    }

    /// Encodes fixed-format sense data into `Bytes`.
    pub fn to_bytes(&self) -> Bytes {
        Bytes::copy_from_slice(&self.to_fixed())
    }

    /// Decodes the key, ASC/ASCQ, INFORMATION and field pointer of fixed-format sense
    /// data (response code 0x70 or 0x71). Returns `None` for anything else or if it is
    /// too short to hold the ASC/ASCQ.
    pub fn parse_fixed(b: &[u8]) -> Option<Sense> {
        let code = b.first()? & 0x7f;
        if code != 0x70 && code != 0x71 {
            return None;
        }
        if b.len() < 14 {
            return None;
        }
        let information = if b[0] & VALID_BIT != 0 {
            Some(u64::from(u32::from_be_bytes([b[3], b[4], b[5], b[6]])))
        } else {
            None
        };
        let field_pointer = match b.get(15..18) {
            Some(s) if s[0] & SKSV_BIT != 0 => Some(FieldPointer {
                in_cdb: s[0] & CD_BIT != 0,
                byte: u16::from_be_bytes([s[1], s[2]]),
                bit: (s[0] & BPV_BIT != 0).then_some(s[0] & 0x07),
            }),
            _ => None,
        };
        Some(Sense {
            key: b[2] & 0x0f,
            asc: Asc::new(b[12], b[13]),
            information,
            field_pointer,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lba_out_of_range_encodes_fixed_format() {
        let b = Sense::new(key::ILLEGAL_REQUEST, Asc::LBA_OUT_OF_RANGE).to_fixed();
        assert_eq!(b[0], 0x70);
        assert_eq!(b[2], 0x05);
        assert_eq!(b[7], 10);
        assert_eq!((b[12], b[13]), (0x21, 0x00));
        assert_eq!(b[15], 0, "no sense-key-specific data");
    }

    #[test]
    fn information_sets_valid_bit() {
        let b = Sense::new(key::MEDIUM_ERROR, Asc::UNRECOVERED_READ_ERROR)
            .with_information(0x1234_5678)
            .to_fixed();
        assert_eq!(b[0], 0xf0);
        assert_eq!(&b[3..7], &[0x12, 0x34, 0x56, 0x78]);
    }

    #[test]
    fn information_too_large_for_fixed_format_is_not_valid() {
        let b = Sense::new(key::MEDIUM_ERROR, Asc::UNRECOVERED_READ_ERROR)
            .with_information(1 << 40)
            .to_fixed();
        assert_eq!(b[0], 0x70);
        assert_eq!(&b[3..7], &[0, 0, 0, 0]);
    }

    #[test]
    fn field_pointer_encodes_sksv_cd_bpv() {
        let b = Sense::invalid_field_in_cdb(1, Some(7)).to_fixed();
        assert_eq!((b[12], b[13]), (0x24, 0x00));
        assert_eq!(b[15], 0x80 | 0x40 | 0x08 | 7);
        assert_eq!(&b[16..18], &[0, 1]);
        let b = Sense::invalid_field_in_cdb(0x102, None).to_fixed();
        assert_eq!(b[15], 0xc0);
        assert_eq!(&b[16..18], &[1, 2]);
    }

    #[test]
    fn invalid_field_in_param_points_into_the_parameter_list() {
        let b = Sense::invalid_field_in_param(9, Some(3)).to_fixed();
        assert_eq!((b[2], b[12], b[13]), (key::ILLEGAL_REQUEST, 0x26, 0));
        assert_eq!(b[15], 0x80 | 0x08 | 3, "SKSV and BPV, C/D clear");
        assert_eq!(&b[16..18], &[0, 9]);
    }

    #[test]
    fn parse_fixed_round_trips() {
        let s = Sense::invalid_field_in_cdb(8, Some(3)).with_information(42);
        assert_eq!(Sense::parse_fixed(&s.to_fixed()), Some(s));
        let s = Sense::new(key::UNIT_ATTENTION, Asc::POWER_ON_RESET_OR_BUS_DEVICE_RESET);
        assert_eq!(Sense::parse_fixed(&s.to_fixed()), Some(s));
    }

    #[test]
    fn parse_fixed_rejects_descriptor_and_short_data() {
        assert_eq!(Sense::parse_fixed(&[0x72, 0, 5, 0x24, 0, 0, 0, 0]), None);
        assert_eq!(Sense::parse_fixed(&[0x70, 0, 5]), None);
        assert_eq!(Sense::parse_fixed(&[]), None);
    }
}
