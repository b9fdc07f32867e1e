//! Named SCSI operation codes and the sub-codes some of them carry (SPC-4 Annex D,
//! SBC-3 §5).

/// TEST UNIT READY (SPC-4 §6.47).
pub const TEST_UNIT_READY: u8 = 0x00;
/// REQUEST SENSE (SPC-4 §6.39).
pub const REQUEST_SENSE: u8 = 0x03;
/// READ(6) (SBC-3 §5.14).
pub const READ_6: u8 = 0x08;
/// WRITE(6) (SBC-3 §5.40).
pub const WRITE_6: u8 = 0x0a;
/// INQUIRY (SPC-4 §6.6).
pub const INQUIRY: u8 = 0x12;
/// MODE SELECT(6) (SPC-4 §6.13).
pub const MODE_SELECT_6: u8 = 0x15;
/// MODE SENSE(6) (SPC-4 §6.15).
pub const MODE_SENSE_6: u8 = 0x1a;
/// START STOP UNIT (SBC-3 §5.25).
pub const START_STOP_UNIT: u8 = 0x1b;
/// PREVENT ALLOW MEDIUM REMOVAL (SBC-3 §5.13).
pub const PREVENT_ALLOW_MEDIUM_REMOVAL: u8 = 0x1e;
/// READ CAPACITY(10) (SBC-3 §5.15).
pub const READ_CAPACITY_10: u8 = 0x25;
/// READ(10) (SBC-3 §5.11).
pub const READ_10: u8 = 0x28;
/// WRITE(10) (SBC-3 §5.35).
pub const WRITE_10: u8 = 0x2a;
/// WRITE AND VERIFY(10) (SBC-3 §5.45).
pub const WRITE_AND_VERIFY_10: u8 = 0x2e;
/// VERIFY(10) (SBC-3 §5.33).
pub const VERIFY_10: u8 = 0x2f;
/// PRE-FETCH(10) (SBC-3 §5.9).
pub const PRE_FETCH_10: u8 = 0x34;
/// READ DEFECT DATA(10) (SBC-3 §5.17).
pub const READ_DEFECT_DATA_10: u8 = 0x37;
/// SYNCHRONIZE CACHE(10) (SBC-3 §5.22).
pub const SYNCHRONIZE_CACHE_10: u8 = 0x35;
/// WRITE SAME(10) (SBC-3 §5.43).
pub const WRITE_SAME_10: u8 = 0x41;
/// UNMAP (SBC-3 §5.28).
pub const UNMAP: u8 = 0x42;
/// MODE SELECT(10) (SPC-4 §6.14).
pub const MODE_SELECT_10: u8 = 0x55;
/// MODE SENSE(10) (SPC-4 §6.16).
pub const MODE_SENSE_10: u8 = 0x5a;
/// PERSISTENT RESERVE IN (SPC-4 §6.17).
pub const PERSISTENT_RESERVE_IN: u8 = 0x5e;
/// PERSISTENT RESERVE OUT (SPC-4 §6.18).
pub const PERSISTENT_RESERVE_OUT: u8 = 0x5f;
/// READ(16) (SBC-3 §5.13).
pub const READ_16: u8 = 0x88;
/// COMPARE AND WRITE (SBC-3 §5.2).
pub const COMPARE_AND_WRITE: u8 = 0x89;
/// WRITE(16) (SBC-3 §5.37).
pub const WRITE_16: u8 = 0x8a;
/// ORWRITE(16) (SBC-4 §5.9).
pub const ORWRITE_16: u8 = 0x8b;
/// WRITE AND VERIFY(16) (SBC-3 §5.47).
pub const WRITE_AND_VERIFY_16: u8 = 0x8e;
/// VERIFY(16) (SBC-3 §5.35).
pub const VERIFY_16: u8 = 0x8f;
/// PRE-FETCH(16) (SBC-3 §5.10).
pub const PRE_FETCH_16: u8 = 0x90;
/// SYNCHRONIZE CACHE(16) (SBC-3 §5.23).
pub const SYNCHRONIZE_CACHE_16: u8 = 0x91;
/// WRITE SAME(16) (SBC-3 §5.44).
pub const WRITE_SAME_16: u8 = 0x93;
/// WRITE ATOMIC(16) (SBC-4 §5.48).
pub const WRITE_ATOMIC_16: u8 = 0x9c;
/// SERVICE ACTION IN(16): READ CAPACITY(16), GET LBA STATUS, ... (SBC-3 §5.16).
pub const SERVICE_ACTION_IN_16: u8 = 0x9e;
/// REPORT LUNS (SPC-4 §6.33).
pub const REPORT_LUNS: u8 = 0xa0;
/// MAINTENANCE IN: REPORT TARGET PORT GROUPS, REPORT SUPPORTED OPCODES (SPC-4 §6.23).
pub const MAINTENANCE_IN: u8 = 0xa3;
/// READ(12) (SBC-3 §5.12).
pub const READ_12: u8 = 0xa8;
/// WRITE(12) (SBC-3 §5.36).
pub const WRITE_12: u8 = 0xaa;
/// READ DEFECT DATA(12) (SBC-3 §5.18).
pub const READ_DEFECT_DATA_12: u8 = 0xb7;
/// WRITE AND VERIFY(12) (SBC-3 §5.46).
pub const WRITE_AND_VERIFY_12: u8 = 0xae;
/// VERIFY(12) (SBC-3 §5.34).
pub const VERIFY_12: u8 = 0xaf;
/// READ ROUTING TABLE: Mosaic's vendor-specific command (C0h-FFh are vendor
/// specific, SPC-4 §4.2.5.1) that returns the routing table of the addressed
/// volume in pieces; see [`super::vendor`] and docs/wire-formats.md.
pub const READ_ROUTING_TABLE: u8 = 0xc5;

/// Service actions of MAINTENANCE IN (byte 1, bits 4..0; SPC-4 §6.23).
pub mod maintenance_in {
    /// REPORT TARGET PORT GROUPS (SPC-4 §6.35).
    pub const REPORT_TARGET_PORT_GROUPS: u8 = 0x0a;
    /// REPORT SUPPORTED OPERATION CODES (SPC-4 §6.35).
    pub const REPORT_SUPPORTED_OPERATION_CODES: u8 = 0x0c;
    /// REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS (SPC-4 §6.36).
    pub const REPORT_SUPPORTED_TMFS: u8 = 0x0d;
}

/// Service actions of SERVICE ACTION IN(16) (byte 1, bits 4..0).
pub mod service_action_in_16 {
    /// READ CAPACITY(16) (SBC-3 §5.16).
    pub const READ_CAPACITY_16: u8 = 0x10;
    /// GET LBA STATUS (SBC-3 §5.7).
    pub const GET_LBA_STATUS: u8 = 0x12;
}

/// Vital product data page codes (SPC-4 §7.8, SBC-3 §6.5).
pub mod vpd {
    /// Supported VPD pages (SPC-4 §7.8.16).
    pub const SUPPORTED_PAGES: u8 = 0x00;
    /// Unit serial number (SPC-4 §7.8.17).
    pub const UNIT_SERIAL_NUMBER: u8 = 0x80;
    /// Device identification (SPC-4 §7.8.6).
    pub const DEVICE_IDENTIFICATION: u8 = 0x83;
    /// Extended INQUIRY data (SPC-4 §7.8.7).
    pub const EXTENDED_INQUIRY: u8 = 0x86;
    /// Third-party Copy (SPC-4 §7.8.17): the EXTENDED COPY copy manager.
    pub const THIRD_PARTY_COPY: u8 = 0x8f;
    /// Block limits (SBC-3 §6.5.3).
    pub const BLOCK_LIMITS: u8 = 0xb0;
    /// Block device characteristics (SBC-3 §6.5.2).
    pub const BLOCK_DEVICE_CHARACTERISTICS: u8 = 0xb1;
    /// Logical block provisioning (SBC-3 §6.5.4).
    pub const LOGICAL_BLOCK_PROVISIONING: u8 = 0xb2;
}

/// Mode page codes (SPC-4 §7.5, SBC-3 §6.4).
pub mod mode_page {
    /// Caching mode page (SBC-3 §6.4.5).
    pub const CACHING: u8 = 0x08;
    /// Control mode page (SPC-4 §7.5.7).
    pub const CONTROL: u8 = 0x0a;
    /// Informational exceptions control mode page (SPC-4 §7.5.8 / SBC-3 §6.4.8).
    pub const INFORMATIONAL_EXCEPTIONS: u8 = 0x1c;
    /// "Return all mode pages" (SPC-4 §6.15, Table 163).
    pub const ALL_PAGES: u8 = 0x3f;
    /// Subpage code "all subpages" when used with [`ALL_PAGES`].
    pub const ALL_SUBPAGES: u8 = 0xff;
}

/// Page control field of MODE SENSE (SPC-4 §6.15, Table 162).
pub mod page_control {
    /// Current values.
    pub const CURRENT: u8 = 0;
    /// Changeable values (a mask of what MODE SELECT may change).
    pub const CHANGEABLE: u8 = 1;
    /// Default values.
    pub const DEFAULT: u8 = 2;
    /// Saved values.
    pub const SAVED: u8 = 3;
}
