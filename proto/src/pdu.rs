//! The basic header segment (BHS) of every iSCSI PDU (RFC 7143 §11.2), decoded at
//! fixed, named offsets from a `[u8; 48]` into one typed header per opcode, and
//! encoded back. Decoding never fails on the header bytes themselves: an opcode we do
//! not know becomes [`Bhs::Unknown`], which the receiver answers with a Reject.

use bytes::Bytes;

/// Length of the basic header segment (RFC 7143 §11.2).
pub const BHS_LEN: usize = 48;
/// The largest DataSegmentLength the 24-bit field can carry.
pub const MAX_DATA_SEGMENT_LEN: u32 = (1 << 24) - 1;
/// The Initiator Task Tag value reserved for "no task" (RFC 7143 §11.2.1.8).
pub const RESERVED_TAG: u32 = 0xffff_ffff;

// Field offsets shared by (almost) every PDU (RFC 7143 §11.2.1).
const OFF_OPCODE: usize = 0;
const OFF_FLAGS: usize = 1;
const OFF_TOTAL_AHS_LEN: usize = 4;
const OFF_DATA_SEG_LEN: usize = 5;
const OFF_LUN: usize = 8;
const OFF_ITT: usize = 16;
const OFF_20: usize = 20;
const OFF_24: usize = 24;
const OFF_28: usize = 28;
const OFF_32: usize = 32;
const OFF_36: usize = 36;
const OFF_40: usize = 40;
const OFF_44: usize = 44;
const OFF_CDB: usize = 32;

/// Byte 0: the immediate-delivery bit of initiator PDUs.
const IMMEDIATE_BIT: u8 = 0x40;
/// Byte 0: the six opcode bits.
const OPCODE_MASK: u8 = 0x3f;
/// Byte 1: the Final bit.
const FINAL_BIT: u8 = 0x80;

/// Opcodes (RFC 7143 §11.2.1.2).
pub mod opcode {
    pub const NOP_OUT: u8 = 0x00;
    pub const SCSI_COMMAND: u8 = 0x01;
    pub const TASK_MGMT_REQUEST: u8 = 0x02;
    pub const LOGIN_REQUEST: u8 = 0x03;
    pub const TEXT_REQUEST: u8 = 0x04;
    pub const DATA_OUT: u8 = 0x05;
    pub const LOGOUT_REQUEST: u8 = 0x06;
    pub const SNACK_REQUEST: u8 = 0x10;
    pub const NOP_IN: u8 = 0x20;
    pub const SCSI_RESPONSE: u8 = 0x21;
    pub const TASK_MGMT_RESPONSE: u8 = 0x22;
    pub const LOGIN_RESPONSE: u8 = 0x23;
    pub const TEXT_RESPONSE: u8 = 0x24;
    pub const DATA_IN: u8 = 0x25;
    pub const LOGOUT_RESPONSE: u8 = 0x26;
    pub const R2T: u8 = 0x31;
    pub const ASYNC_MESSAGE: u8 = 0x32;
    pub const REJECT: u8 = 0x3f;
}

/// Reject reasons (RFC 7143 §11.17.1).
pub mod reject_reason {
    pub const DATA_DIGEST_ERROR: u8 = 0x02;
    pub const SNACK_REJECT: u8 = 0x03;
    pub const PROTOCOL_ERROR: u8 = 0x04;
    pub const COMMAND_NOT_SUPPORTED: u8 = 0x05;
    pub const IMMEDIATE_COMMAND_REJECT: u8 = 0x06;
    pub const TASK_IN_PROGRESS: u8 = 0x07;
    pub const INVALID_DATA_ACK: u8 = 0x08;
    pub const INVALID_PDU_FIELD: u8 = 0x09;
    pub const LONG_OP_REJECT: u8 = 0x0a;
    pub const DEPRECATED: u8 = 0x0b;
    pub const WAITING_FOR_LOGOUT: u8 = 0x0c;
}

/// Task management functions (RFC 7143 §11.5.1; 9 to 12 added by RFC 7144 §4.1 for
/// the SAM-4/SAM-5 functions).
pub mod tmf_function {
    pub const ABORT_TASK: u8 = 1;
    pub const ABORT_TASK_SET: u8 = 2;
    pub const CLEAR_ACA: u8 = 3;
    pub const CLEAR_TASK_SET: u8 = 4;
    pub const LOGICAL_UNIT_RESET: u8 = 5;
    pub const TARGET_WARM_RESET: u8 = 6;
    pub const TARGET_COLD_RESET: u8 = 7;
    pub const TASK_REASSIGN: u8 = 8;
    /// Is the task named by the Referenced Task Tag still in the task set?
    pub const QUERY_TASK: u8 = 9;
    /// Is any task of this I_T_L nexus in the task set?
    pub const QUERY_TASK_SET: u8 = 10;
    /// The I_T nexus loss function (SAM-5) for the nexus the request came on.
    pub const I_T_NEXUS_RESET: u8 = 11;
    /// Is a unit attention or deferred error pending for this I_T_L nexus?
    pub const QUERY_ASYNC_EVENT: u8 = 12;
}

/// Task management responses (RFC 7143 §11.6.1).
pub mod tmf_response {
    pub const COMPLETE: u8 = 0;
    pub const TASK_DOES_NOT_EXIST: u8 = 1;
    pub const LUN_DOES_NOT_EXIST: u8 = 2;
    pub const TASK_STILL_ALLEGIANT: u8 = 3;
    pub const REASSIGNMENT_NOT_SUPPORTED: u8 = 4;
    pub const NOT_SUPPORTED: u8 = 5;
    pub const AUTHORIZATION_FAILED: u8 = 6;
    /// SAM-5 FUNCTION SUCCEEDED (RFC 7144 §4.2, IANA iSCSI "Task Management
    /// Function Response" registry): the answer "yes" to QUERY TASK, QUERY TASK SET
    /// and QUERY ASYNCHRONOUS EVENT; "no" is [`COMPLETE`] (FUNCTION COMPLETE).
    pub const FUNCTION_SUCCEEDED: u8 = 7;
    pub const REJECTED: u8 = 255;
}

/// Logout reason codes (RFC 7143 §11.14.1) and responses (§11.15.1).
pub mod logout {
    pub const CLOSE_SESSION: u8 = 0;
    pub const CLOSE_CONNECTION: u8 = 1;
    pub const REMOVE_CONNECTION_FOR_RECOVERY: u8 = 2;
    pub const RESPONSE_SUCCESS: u8 = 0;
    pub const RESPONSE_CID_NOT_FOUND: u8 = 1;
    pub const RESPONSE_RECOVERY_NOT_SUPPORTED: u8 = 2;
    pub const RESPONSE_CLEANUP_FAILED: u8 = 3;
}

/// Login status classes and details (RFC 7143 §11.13.5).
pub mod login_status {
    pub const SUCCESS: (u8, u8) = (0x00, 0x00);
    pub const TARGET_MOVED_TEMPORARILY: (u8, u8) = (0x01, 0x01);
    pub const TARGET_MOVED_PERMANENTLY: (u8, u8) = (0x01, 0x02);
    pub const INITIATOR_ERROR: (u8, u8) = (0x02, 0x00);
    pub const AUTHENTICATION_FAILURE: (u8, u8) = (0x02, 0x01);
    pub const AUTHORIZATION_FAILURE: (u8, u8) = (0x02, 0x02);
    pub const NOT_FOUND: (u8, u8) = (0x02, 0x03);
    pub const TARGET_REMOVED: (u8, u8) = (0x02, 0x04);
    pub const UNSUPPORTED_VERSION: (u8, u8) = (0x02, 0x05);
    pub const TOO_MANY_CONNECTIONS: (u8, u8) = (0x02, 0x06);
    pub const MISSING_PARAMETER: (u8, u8) = (0x02, 0x07);
    pub const CANT_INCLUDE_IN_SESSION: (u8, u8) = (0x02, 0x08);
    pub const SESSION_TYPE_NOT_SUPPORTED: (u8, u8) = (0x02, 0x09);
    pub const SESSION_DOES_NOT_EXIST: (u8, u8) = (0x02, 0x0a);
    pub const INVALID_DURING_LOGIN: (u8, u8) = (0x02, 0x0b);
    pub const TARGET_ERROR: (u8, u8) = (0x03, 0x00);
    pub const SERVICE_UNAVAILABLE: (u8, u8) = (0x03, 0x01);
    pub const OUT_OF_RESOURCES: (u8, u8) = (0x03, 0x02);
}

/// Login stages (RFC 7143 §11.12.3).
pub mod stage {
    pub const SECURITY_NEGOTIATION: u8 = 0;
    pub const LOGIN_OPERATIONAL_NEGOTIATION: u8 = 1;
    pub const FULL_FEATURE_PHASE: u8 = 3;
}

/// SCSI Response "Response" field (RFC 7143 §11.4.3).
pub mod scsi_response {
    pub const COMMAND_COMPLETED_AT_TARGET: u8 = 0x00;
    pub const TARGET_FAILURE: u8 = 0x01;
}

/// Async message events (RFC 7143 §11.9.1).
pub mod async_event {
    pub const SCSI_ASYNC_EVENT: u8 = 0;
    pub const LOGOUT_REQUEST: u8 = 1;
    pub const CONNECTION_DROP: u8 = 2;
    pub const SESSION_DROP: u8 = 3;
    pub const NEGOTIATION_REQUEST: u8 = 4;
    pub const TASK_TERMINATION: u8 = 5;
    pub const VENDOR_SPECIFIC: u8 = 255;
}

/// The protocol version this implementation speaks (RFC 7143 §11.12.4).
pub const ISCSI_VERSION: u8 = 0x00;

#[inline]
fn u16_at(b: &[u8; BHS_LEN], off: usize) -> u16 {
    u16::from_be_bytes([b[off], b[off + 1]])
}
#[inline]
fn u32_at(b: &[u8; BHS_LEN], off: usize) -> u32 {
    u32::from_be_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}
#[inline]
fn u64_at(b: &[u8; BHS_LEN], off: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[off..off + 8]);
    u64::from_be_bytes(x)
}
#[inline]
fn put_u16(b: &mut [u8; BHS_LEN], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_be_bytes());
}
#[inline]
fn put_u32(b: &mut [u8; BHS_LEN], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_be_bytes());
}
#[inline]
fn put_u64(b: &mut [u8; BHS_LEN], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_be_bytes());
}

/// The opcode (without the immediate bit) of a raw header.
#[inline]
pub fn raw_opcode(b: &[u8; BHS_LEN]) -> u8 {
    b[OFF_OPCODE] & OPCODE_MASK
}
/// TotalAHSLength of a raw header, in bytes (the field counts 4-byte words).
#[inline]
pub fn raw_ahs_len(b: &[u8; BHS_LEN]) -> usize {
    b[OFF_TOTAL_AHS_LEN] as usize * 4
}
/// DataSegmentLength of a raw header, in bytes (without padding).
#[inline]
pub fn raw_data_len(b: &[u8; BHS_LEN]) -> u32 {
    u32::from_be_bytes([
        0,
        b[OFF_DATA_SEG_LEN],
        b[OFF_DATA_SEG_LEN + 1],
        b[OFF_DATA_SEG_LEN + 2],
    ])
}
/// Initiator Task Tag of a raw header.
#[inline]
pub fn raw_itt(b: &[u8; BHS_LEN]) -> u32 {
    u32_at(b, OFF_ITT)
}

/// NOP-Out (RFC 7143 §11.18).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NopOut {
    pub immediate: bool,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

/// SCSI Command (RFC 7143 §11.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScsiCommand {
    pub immediate: bool,
    pub final_bit: bool,
    pub read: bool,
    pub write: bool,
    /// Task attribute (untagged, simple, ordered, head of queue, ACA).
    pub attr: u8,
    pub lun: u64,
    pub itt: u32,
    pub expected_data_transfer_length: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    /// The first 16 CDB bytes; longer CDBs continue in an extended-CDB AHS.
    pub cdb: [u8; 16],
}

/// Task Management Function Request (RFC 7143 §11.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TaskMgmtRequest {
    pub immediate: bool,
    pub function: u8,
    pub lun: u64,
    pub itt: u32,
    pub referenced_task_tag: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub ref_cmd_sn: u32,
    pub exp_data_sn: u32,
}

/// Login Request (RFC 7143 §11.12).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LoginRequest {
    pub transit: bool,
    pub continue_bit: bool,
    pub csg: u8,
    pub nsg: u8,
    pub version_max: u8,
    pub version_min: u8,
    /// Initiator Session ID: the 6-byte ISID as a big-endian number.
    pub isid: u64,
    pub tsih: u16,
    pub itt: u32,
    pub cid: u16,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

/// Text Request (RFC 7143 §11.10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TextRequest {
    pub immediate: bool,
    pub final_bit: bool,
    pub continue_bit: bool,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

/// SCSI Data-Out (RFC 7143 §11.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DataOut {
    pub final_bit: bool,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub exp_stat_sn: u32,
    pub data_sn: u32,
    pub buffer_offset: u32,
}

/// Logout Request (RFC 7143 §11.14).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogoutRequest {
    pub immediate: bool,
    pub reason: u8,
    pub itt: u32,
    pub cid: u16,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

/// SNACK Request (RFC 7143 §11.16).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SnackRequest {
    pub kind: u8,
    pub lun: u64,
    pub itt: u32,
    pub snack_tag: u32,
    pub exp_stat_sn: u32,
    pub beg_run: u32,
    pub run_length: u32,
}

/// NOP-In (RFC 7143 §11.19).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NopIn {
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
}

/// SCSI Response (RFC 7143 §11.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScsiResponse {
    pub bidi_overflow: bool,
    pub bidi_underflow: bool,
    pub overflow: bool,
    pub underflow: bool,
    pub response: u8,
    pub status: u8,
    pub itt: u32,
    pub snack_tag: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub exp_data_sn: u32,
    pub bidi_residual_count: u32,
    pub residual_count: u32,
}

/// Task Management Function Response (RFC 7143 §11.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TaskMgmtResponse {
    pub response: u8,
    pub itt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    /// The SAM-5 ADDITIONAL RESPONSE INFORMATION, bytes 36..39 (RFC 7144 §4.2):
    /// for QUERY ASYNCHRONOUS EVENT the pending condition's UADE DEPTH and sense
    /// key, ASC and ASCQ; zero otherwise (the bytes RFC 7143 reserved).
    pub additional_response_information: [u8; 3],
}

/// Login Response (RFC 7143 §11.13).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LoginResponse {
    pub transit: bool,
    pub continue_bit: bool,
    pub csg: u8,
    pub nsg: u8,
    pub version_max: u8,
    pub version_active: u8,
    pub isid: u64,
    pub tsih: u16,
    pub itt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub status_class: u8,
    pub status_detail: u8,
}

/// Text Response (RFC 7143 §11.11).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TextResponse {
    pub final_bit: bool,
    pub continue_bit: bool,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
}

/// SCSI Data-In (RFC 7143 §11.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DataIn {
    pub final_bit: bool,
    /// Acknowledge requested (ErrorRecoveryLevel > 0 only).
    pub ack: bool,
    pub overflow: bool,
    pub underflow: bool,
    /// The PDU carries the command's status (phase collapse, RFC 7143 §11.7.3).
    pub status_present: bool,
    pub status: u8,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub data_sn: u32,
    pub buffer_offset: u32,
    pub residual_count: u32,
}

/// Logout Response (RFC 7143 §11.15).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogoutResponse {
    pub response: u8,
    pub itt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub time2wait: u16,
    pub time2retain: u16,
}

/// Ready To Transfer (RFC 7143 §11.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct R2t {
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub r2t_sn: u32,
    pub buffer_offset: u32,
    pub desired_data_transfer_length: u32,
}

/// Asynchronous Message (RFC 7143 §11.9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AsyncMessage {
    pub lun: u64,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub event: u8,
    pub vcode: u8,
    pub parameter1: u16,
    pub parameter2: u16,
    pub parameter3: u16,
}

/// Reject (RFC 7143 §11.17). Its data segment is the rejected PDU's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reject {
    pub reason: u8,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub data_sn: u32,
}

/// One decoded basic header segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bhs {
    NopOut(NopOut),
    ScsiCommand(ScsiCommand),
    TaskMgmtRequest(TaskMgmtRequest),
    LoginRequest(LoginRequest),
    TextRequest(TextRequest),
    DataOut(DataOut),
    LogoutRequest(LogoutRequest),
    SnackRequest(SnackRequest),
    NopIn(NopIn),
    ScsiResponse(ScsiResponse),
    TaskMgmtResponse(TaskMgmtResponse),
    LoginResponse(LoginResponse),
    TextResponse(TextResponse),
    DataIn(DataIn),
    LogoutResponse(LogoutResponse),
    R2t(R2t),
    AsyncMessage(AsyncMessage),
    Reject(Reject),
    /// An opcode RFC 7143 does not define; kept whole so it can be quoted in a Reject.
    Unknown([u8; BHS_LEN]),
}

#[inline]
fn flag(b: u8, bit: u8) -> bool {
    b & bit != 0
}
#[inline]
fn bit(on: bool, bit: u8) -> u8 {
    if on {
        bit
    } else {
        0
    }
}

fn isid_at(b: &[u8; BHS_LEN]) -> u64 {
    let mut x = [0u8; 8];
    x[2..].copy_from_slice(&b[8..14]);
    u64::from_be_bytes(x)
}
fn put_isid(b: &mut [u8; BHS_LEN], isid: u64) {
    b[8..14].copy_from_slice(&isid.to_be_bytes()[2..]);
}

impl Bhs {
    /// Decodes a header. Total: every 48-byte input yields a value.
    pub fn decode(b: &[u8; BHS_LEN]) -> Bhs {
        let imm = flag(b[OFF_OPCODE], IMMEDIATE_BIT);
        let f = b[OFF_FLAGS];
        let lun = u64_at(b, OFF_LUN);
        let itt = u32_at(b, OFF_ITT);
        match raw_opcode(b) {
            opcode::NOP_OUT => Bhs::NopOut(NopOut {
                immediate: imm,
                lun,
                itt,
                ttt: u32_at(b, OFF_20),
                cmd_sn: u32_at(b, OFF_24),
                exp_stat_sn: u32_at(b, OFF_28),
            }),
            opcode::SCSI_COMMAND => {
                let mut cdb = [0u8; 16];
                cdb.copy_from_slice(&b[OFF_CDB..OFF_CDB + 16]);
                Bhs::ScsiCommand(ScsiCommand {
                    immediate: imm,
                    final_bit: flag(f, FINAL_BIT),
                    read: flag(f, 0x40),
                    write: flag(f, 0x20),
                    attr: f & 0x07,
                    lun,
                    itt,
                    expected_data_transfer_length: u32_at(b, OFF_20),
                    cmd_sn: u32_at(b, OFF_24),
                    exp_stat_sn: u32_at(b, OFF_28),
                    cdb,
                })
            }
            opcode::TASK_MGMT_REQUEST => Bhs::TaskMgmtRequest(TaskMgmtRequest {
                immediate: imm,
                function: f & 0x7f,
                lun,
                itt,
                referenced_task_tag: u32_at(b, OFF_20),
                cmd_sn: u32_at(b, OFF_24),
                exp_stat_sn: u32_at(b, OFF_28),
                ref_cmd_sn: u32_at(b, OFF_32),
                exp_data_sn: u32_at(b, OFF_36),
            }),
            opcode::LOGIN_REQUEST => Bhs::LoginRequest(LoginRequest {
                transit: flag(f, 0x80),
                continue_bit: flag(f, 0x40),
                csg: (f >> 2) & 0x03,
                nsg: f & 0x03,
                version_max: b[2],
                version_min: b[3],
                isid: isid_at(b),
                tsih: u16_at(b, 14),
                itt,
                cid: u16_at(b, OFF_20),
                cmd_sn: u32_at(b, OFF_24),
                exp_stat_sn: u32_at(b, OFF_28),
            }),
            opcode::TEXT_REQUEST => Bhs::TextRequest(TextRequest {
                immediate: imm,
                final_bit: flag(f, FINAL_BIT),
                continue_bit: flag(f, 0x40),
                lun,
                itt,
                ttt: u32_at(b, OFF_20),
                cmd_sn: u32_at(b, OFF_24),
                exp_stat_sn: u32_at(b, OFF_28),
            }),
            opcode::DATA_OUT => Bhs::DataOut(DataOut {
                final_bit: flag(f, FINAL_BIT),
                lun,
                itt,
                ttt: u32_at(b, OFF_20),
                exp_stat_sn: u32_at(b, OFF_28),
                data_sn: u32_at(b, OFF_36),
                buffer_offset: u32_at(b, OFF_40),
            }),
            opcode::LOGOUT_REQUEST => Bhs::LogoutRequest(LogoutRequest {
                immediate: imm,
                reason: f & 0x7f,
                itt,
                cid: u16_at(b, OFF_20),
                cmd_sn: u32_at(b, OFF_24),
                exp_stat_sn: u32_at(b, OFF_28),
            }),
            opcode::SNACK_REQUEST => Bhs::SnackRequest(SnackRequest {
                kind: f & 0x0f,
                lun,
                itt,
                snack_tag: u32_at(b, OFF_20),
                exp_stat_sn: u32_at(b, OFF_28),
                beg_run: u32_at(b, OFF_40),
                run_length: u32_at(b, OFF_44),
            }),
            opcode::NOP_IN => Bhs::NopIn(NopIn {
                lun,
                itt,
                ttt: u32_at(b, OFF_20),
                stat_sn: u32_at(b, OFF_24),
                exp_cmd_sn: u32_at(b, OFF_28),
                max_cmd_sn: u32_at(b, OFF_32),
            }),
            opcode::SCSI_RESPONSE => Bhs::ScsiResponse(ScsiResponse {
                bidi_overflow: flag(f, 0x10),
                bidi_underflow: flag(f, 0x08),
                overflow: flag(f, 0x04),
                underflow: flag(f, 0x02),
                response: b[2],
                status: b[3],
                itt,
                snack_tag: u32_at(b, OFF_20),
                stat_sn: u32_at(b, OFF_24),
                exp_cmd_sn: u32_at(b, OFF_28),
                max_cmd_sn: u32_at(b, OFF_32),
                exp_data_sn: u32_at(b, OFF_36),
                bidi_residual_count: u32_at(b, OFF_40),
                residual_count: u32_at(b, OFF_44),
            }),
            opcode::TASK_MGMT_RESPONSE => Bhs::TaskMgmtResponse(TaskMgmtResponse {
                response: b[2],
                itt,
                stat_sn: u32_at(b, OFF_24),
                exp_cmd_sn: u32_at(b, OFF_28),
                max_cmd_sn: u32_at(b, OFF_32),
                additional_response_information: [b[OFF_36], b[OFF_36 + 1], b[OFF_36 + 2]],
            }),
            opcode::LOGIN_RESPONSE => Bhs::LoginResponse(LoginResponse {
                transit: flag(f, 0x80),
                continue_bit: flag(f, 0x40),
                csg: (f >> 2) & 0x03,
                nsg: f & 0x03,
                version_max: b[2],
                version_active: b[3],
                isid: isid_at(b),
                tsih: u16_at(b, 14),
                itt,
                stat_sn: u32_at(b, OFF_24),
                exp_cmd_sn: u32_at(b, OFF_28),
                max_cmd_sn: u32_at(b, OFF_32),
                status_class: b[36],
                status_detail: b[37],
            }),
            opcode::TEXT_RESPONSE => Bhs::TextResponse(TextResponse {
                final_bit: flag(f, FINAL_BIT),
                continue_bit: flag(f, 0x40),
                lun,
                itt,
                ttt: u32_at(b, OFF_20),
                stat_sn: u32_at(b, OFF_24),
                exp_cmd_sn: u32_at(b, OFF_28),
                max_cmd_sn: u32_at(b, OFF_32),
            }),
            opcode::DATA_IN => Bhs::DataIn(DataIn {
                final_bit: flag(f, FINAL_BIT),
                ack: flag(f, 0x40),
                overflow: flag(f, 0x04),
                underflow: flag(f, 0x02),
                status_present: flag(f, 0x01),
                // The status byte is meaningful only with the S bit (RFC 7143 §11.7.4).
                status: if flag(f, 0x01) { b[3] } else { 0 },
                lun,
                itt,
                ttt: u32_at(b, OFF_20),
                stat_sn: u32_at(b, OFF_24),
                exp_cmd_sn: u32_at(b, OFF_28),
                max_cmd_sn: u32_at(b, OFF_32),
                data_sn: u32_at(b, OFF_36),
                buffer_offset: u32_at(b, OFF_40),
                residual_count: u32_at(b, OFF_44),
            }),
            opcode::LOGOUT_RESPONSE => Bhs::LogoutResponse(LogoutResponse {
                response: b[2],
                itt,
                stat_sn: u32_at(b, OFF_24),
                exp_cmd_sn: u32_at(b, OFF_28),
                max_cmd_sn: u32_at(b, OFF_32),
                time2wait: u16_at(b, OFF_40),
                time2retain: u16_at(b, OFF_40 + 2),
            }),
            opcode::R2T => Bhs::R2t(R2t {
                lun,
                itt,
                ttt: u32_at(b, OFF_20),
                stat_sn: u32_at(b, OFF_24),
                exp_cmd_sn: u32_at(b, OFF_28),
                max_cmd_sn: u32_at(b, OFF_32),
                r2t_sn: u32_at(b, OFF_36),
                buffer_offset: u32_at(b, OFF_40),
                desired_data_transfer_length: u32_at(b, OFF_44),
            }),
            opcode::ASYNC_MESSAGE => Bhs::AsyncMessage(AsyncMessage {
                lun,
                stat_sn: u32_at(b, OFF_24),
                exp_cmd_sn: u32_at(b, OFF_28),
                max_cmd_sn: u32_at(b, OFF_32),
                event: b[36],
                vcode: b[37],
                parameter1: u16_at(b, 38),
                parameter2: u16_at(b, 40),
                parameter3: u16_at(b, 42),
            }),
            opcode::REJECT => Bhs::Reject(Reject {
                reason: b[2],
                stat_sn: u32_at(b, OFF_24),
                exp_cmd_sn: u32_at(b, OFF_28),
                max_cmd_sn: u32_at(b, OFF_32),
                data_sn: u32_at(b, OFF_36),
            }),
            _ => Bhs::Unknown(*b),
        }
    }

    /// Encodes the header with the given AHS and data-segment lengths (bytes, unpadded).
    pub fn encode(&self, ahs_len: usize, data_len: u32) -> [u8; BHS_LEN] {
        let mut b = [0u8; BHS_LEN];
        match *self {
            Bhs::NopOut(p) => {
                b[0] = opcode::NOP_OUT | bit(p.immediate, IMMEDIATE_BIT);
                b[1] = FINAL_BIT;
                put_u64(&mut b, OFF_LUN, p.lun);
                put_u32(&mut b, OFF_ITT, p.itt);
                put_u32(&mut b, OFF_20, p.ttt);
                put_u32(&mut b, OFF_24, p.cmd_sn);
                put_u32(&mut b, OFF_28, p.exp_stat_sn);
            }
            Bhs::ScsiCommand(p) => {
                b[0] = opcode::SCSI_COMMAND | bit(p.immediate, IMMEDIATE_BIT);
                b[1] = bit(p.final_bit, FINAL_BIT)
                    | bit(p.read, 0x40)
                    | bit(p.write, 0x20)
                    | (p.attr & 0x07);
                put_u64(&mut b, OFF_LUN, p.lun);
                put_u32(&mut b, OFF_ITT, p.itt);
                put_u32(&mut b, OFF_20, p.expected_data_transfer_length);
                put_u32(&mut b, OFF_24, p.cmd_sn);
                put_u32(&mut b, OFF_28, p.exp_stat_sn);
                b[OFF_CDB..OFF_CDB + 16].copy_from_slice(&p.cdb);
            }
            Bhs::TaskMgmtRequest(p) => {
                b[0] = opcode::TASK_MGMT_REQUEST | bit(p.immediate, IMMEDIATE_BIT);
                b[1] = FINAL_BIT | (p.function & 0x7f);
                put_u64(&mut b, OFF_LUN, p.lun);
                put_u32(&mut b, OFF_ITT, p.itt);
                put_u32(&mut b, OFF_20, p.referenced_task_tag);
                put_u32(&mut b, OFF_24, p.cmd_sn);
                put_u32(&mut b, OFF_28, p.exp_stat_sn);
                put_u32(&mut b, OFF_32, p.ref_cmd_sn);
                put_u32(&mut b, OFF_36, p.exp_data_sn);
            }
            Bhs::LoginRequest(p) => {
                b[0] = opcode::LOGIN_REQUEST | IMMEDIATE_BIT;
                b[1] = bit(p.transit, 0x80)
                    | bit(p.continue_bit, 0x40)
                    | ((p.csg & 3) << 2)
                    | (p.nsg & 3);
                b[2] = p.version_max;
                b[3] = p.version_min;
                put_isid(&mut b, p.isid);
                put_u16(&mut b, 14, p.tsih);
                put_u32(&mut b, OFF_ITT, p.itt);
                put_u16(&mut b, OFF_20, p.cid);
                put_u32(&mut b, OFF_24, p.cmd_sn);
                put_u32(&mut b, OFF_28, p.exp_stat_sn);
            }
            Bhs::TextRequest(p) => {
                b[0] = opcode::TEXT_REQUEST | bit(p.immediate, IMMEDIATE_BIT);
                b[1] = bit(p.final_bit, FINAL_BIT) | bit(p.continue_bit, 0x40);
                put_u64(&mut b, OFF_LUN, p.lun);
                put_u32(&mut b, OFF_ITT, p.itt);
                put_u32(&mut b, OFF_20, p.ttt);
                put_u32(&mut b, OFF_24, p.cmd_sn);
                put_u32(&mut b, OFF_28, p.exp_stat_sn);
            }
            Bhs::DataOut(p) => {
                b[0] = opcode::DATA_OUT;
                b[1] = bit(p.final_bit, FINAL_BIT);
                put_u64(&mut b, OFF_LUN, p.lun);
                put_u32(&mut b, OFF_ITT, p.itt);
                put_u32(&mut b, OFF_20, p.ttt);
                put_u32(&mut b, OFF_28, p.exp_stat_sn);
                put_u32(&mut b, OFF_36, p.data_sn);
                put_u32(&mut b, OFF_40, p.buffer_offset);
            }
            Bhs::LogoutRequest(p) => {
                b[0] = opcode::LOGOUT_REQUEST | bit(p.immediate, IMMEDIATE_BIT);
                b[1] = FINAL_BIT | (p.reason & 0x7f);
                put_u32(&mut b, OFF_ITT, p.itt);
                put_u16(&mut b, OFF_20, p.cid);
                put_u32(&mut b, OFF_24, p.cmd_sn);
                put_u32(&mut b, OFF_28, p.exp_stat_sn);
            }
            Bhs::SnackRequest(p) => {
                b[0] = opcode::SNACK_REQUEST;
                b[1] = FINAL_BIT | (p.kind & 0x0f);
                put_u64(&mut b, OFF_LUN, p.lun);
                put_u32(&mut b, OFF_ITT, p.itt);
                put_u32(&mut b, OFF_20, p.snack_tag);
                put_u32(&mut b, OFF_28, p.exp_stat_sn);
                put_u32(&mut b, OFF_40, p.beg_run);
                put_u32(&mut b, OFF_44, p.run_length);
            }
            Bhs::NopIn(p) => {
                b[0] = opcode::NOP_IN;
                b[1] = FINAL_BIT;
                put_u64(&mut b, OFF_LUN, p.lun);
                put_u32(&mut b, OFF_ITT, p.itt);
                put_u32(&mut b, OFF_20, p.ttt);
                put_u32(&mut b, OFF_24, p.stat_sn);
                put_u32(&mut b, OFF_28, p.exp_cmd_sn);
                put_u32(&mut b, OFF_32, p.max_cmd_sn);
            }
            Bhs::ScsiResponse(p) => {
                b[0] = opcode::SCSI_RESPONSE;
                b[1] = FINAL_BIT
                    | bit(p.bidi_overflow, 0x10)
                    | bit(p.bidi_underflow, 0x08)
                    | bit(p.overflow, 0x04)
                    | bit(p.underflow, 0x02);
                b[2] = p.response;
                b[3] = p.status;
                put_u32(&mut b, OFF_ITT, p.itt);
                put_u32(&mut b, OFF_20, p.snack_tag);
                put_u32(&mut b, OFF_24, p.stat_sn);
                put_u32(&mut b, OFF_28, p.exp_cmd_sn);
                put_u32(&mut b, OFF_32, p.max_cmd_sn);
                put_u32(&mut b, OFF_36, p.exp_data_sn);
                put_u32(&mut b, OFF_40, p.bidi_residual_count);
                put_u32(&mut b, OFF_44, p.residual_count);
            }
            Bhs::TaskMgmtResponse(p) => {
                b[0] = opcode::TASK_MGMT_RESPONSE;
                b[1] = FINAL_BIT;
                b[2] = p.response;
                put_u32(&mut b, OFF_ITT, p.itt);
                put_u32(&mut b, OFF_24, p.stat_sn);
                put_u32(&mut b, OFF_28, p.exp_cmd_sn);
                put_u32(&mut b, OFF_32, p.max_cmd_sn);
                b[OFF_36..OFF_36 + 3].copy_from_slice(&p.additional_response_information);
            }
            Bhs::LoginResponse(p) => {
                b[0] = opcode::LOGIN_RESPONSE;
                b[1] = bit(p.transit, 0x80)
                    | bit(p.continue_bit, 0x40)
                    | ((p.csg & 3) << 2)
                    | (p.nsg & 3);
                b[2] = p.version_max;
                b[3] = p.version_active;
                put_isid(&mut b, p.isid);
                put_u16(&mut b, 14, p.tsih);
                put_u32(&mut b, OFF_ITT, p.itt);
                put_u32(&mut b, OFF_24, p.stat_sn);
                put_u32(&mut b, OFF_28, p.exp_cmd_sn);
                put_u32(&mut b, OFF_32, p.max_cmd_sn);
                b[36] = p.status_class;
                b[37] = p.status_detail;
            }
            Bhs::TextResponse(p) => {
                b[0] = opcode::TEXT_RESPONSE;
                b[1] = bit(p.final_bit, FINAL_BIT) | bit(p.continue_bit, 0x40);
                put_u64(&mut b, OFF_LUN, p.lun);
                put_u32(&mut b, OFF_ITT, p.itt);
                put_u32(&mut b, OFF_20, p.ttt);
                put_u32(&mut b, OFF_24, p.stat_sn);
                put_u32(&mut b, OFF_28, p.exp_cmd_sn);
                put_u32(&mut b, OFF_32, p.max_cmd_sn);
            }
            Bhs::DataIn(p) => {
                b[0] = opcode::DATA_IN;
                b[1] = bit(p.final_bit, FINAL_BIT)
                    | bit(p.ack, 0x40)
                    | bit(p.overflow, 0x04)
                    | bit(p.underflow, 0x02)
                    | bit(p.status_present, 0x01);
                b[3] = if p.status_present { p.status } else { 0 };
                put_u64(&mut b, OFF_LUN, p.lun);
                put_u32(&mut b, OFF_ITT, p.itt);
                put_u32(&mut b, OFF_20, p.ttt);
                put_u32(&mut b, OFF_24, p.stat_sn);
                put_u32(&mut b, OFF_28, p.exp_cmd_sn);
                put_u32(&mut b, OFF_32, p.max_cmd_sn);
                put_u32(&mut b, OFF_36, p.data_sn);
                put_u32(&mut b, OFF_40, p.buffer_offset);
                put_u32(&mut b, OFF_44, p.residual_count);
            }
            Bhs::LogoutResponse(p) => {
                b[0] = opcode::LOGOUT_RESPONSE;
                b[1] = FINAL_BIT;
                b[2] = p.response;
                put_u32(&mut b, OFF_ITT, p.itt);
                put_u32(&mut b, OFF_24, p.stat_sn);
                put_u32(&mut b, OFF_28, p.exp_cmd_sn);
                put_u32(&mut b, OFF_32, p.max_cmd_sn);
                put_u16(&mut b, OFF_40, p.time2wait);
                put_u16(&mut b, OFF_40 + 2, p.time2retain);
            }
            Bhs::R2t(p) => {
                b[0] = opcode::R2T;
                b[1] = FINAL_BIT;
                put_u64(&mut b, OFF_LUN, p.lun);
                put_u32(&mut b, OFF_ITT, p.itt);
                put_u32(&mut b, OFF_20, p.ttt);
                put_u32(&mut b, OFF_24, p.stat_sn);
                put_u32(&mut b, OFF_28, p.exp_cmd_sn);
                put_u32(&mut b, OFF_32, p.max_cmd_sn);
                put_u32(&mut b, OFF_36, p.r2t_sn);
                put_u32(&mut b, OFF_40, p.buffer_offset);
                put_u32(&mut b, OFF_44, p.desired_data_transfer_length);
            }
            Bhs::AsyncMessage(p) => {
                b[0] = opcode::ASYNC_MESSAGE;
                b[1] = FINAL_BIT;
                put_u64(&mut b, OFF_LUN, p.lun);
                put_u32(&mut b, OFF_ITT, RESERVED_TAG);
                put_u32(&mut b, OFF_24, p.stat_sn);
                put_u32(&mut b, OFF_28, p.exp_cmd_sn);
                put_u32(&mut b, OFF_32, p.max_cmd_sn);
                b[36] = p.event;
                b[37] = p.vcode;
                put_u16(&mut b, 38, p.parameter1);
                put_u16(&mut b, 40, p.parameter2);
                put_u16(&mut b, 42, p.parameter3);
            }
            Bhs::Reject(p) => {
                b[0] = opcode::REJECT;
                b[1] = FINAL_BIT;
                b[2] = p.reason;
                put_u32(&mut b, OFF_ITT, RESERVED_TAG);
                put_u32(&mut b, OFF_24, p.stat_sn);
                put_u32(&mut b, OFF_28, p.exp_cmd_sn);
                put_u32(&mut b, OFF_32, p.max_cmd_sn);
                put_u32(&mut b, OFF_36, p.data_sn);
            }
            Bhs::Unknown(raw) => b = raw,
        }
        if !matches!(self, Bhs::Unknown(_)) {
            b[OFF_TOTAL_AHS_LEN] = (ahs_len / 4).min(u8::MAX as usize) as u8;
            let dl = data_len.min(MAX_DATA_SEGMENT_LEN).to_be_bytes();
            b[OFF_DATA_SEG_LEN..OFF_DATA_SEG_LEN + 3].copy_from_slice(&dl[1..]);
        }
        b
    }

    /// The opcode of this header.
    pub fn opcode(&self) -> u8 {
        match self {
            Bhs::NopOut(_) => opcode::NOP_OUT,
            Bhs::ScsiCommand(_) => opcode::SCSI_COMMAND,
            Bhs::TaskMgmtRequest(_) => opcode::TASK_MGMT_REQUEST,
            Bhs::LoginRequest(_) => opcode::LOGIN_REQUEST,
            Bhs::TextRequest(_) => opcode::TEXT_REQUEST,
            Bhs::DataOut(_) => opcode::DATA_OUT,
            Bhs::LogoutRequest(_) => opcode::LOGOUT_REQUEST,
            Bhs::SnackRequest(_) => opcode::SNACK_REQUEST,
            Bhs::NopIn(_) => opcode::NOP_IN,
            Bhs::ScsiResponse(_) => opcode::SCSI_RESPONSE,
            Bhs::TaskMgmtResponse(_) => opcode::TASK_MGMT_RESPONSE,
            Bhs::LoginResponse(_) => opcode::LOGIN_RESPONSE,
            Bhs::TextResponse(_) => opcode::TEXT_RESPONSE,
            Bhs::DataIn(_) => opcode::DATA_IN,
            Bhs::LogoutResponse(_) => opcode::LOGOUT_RESPONSE,
            Bhs::R2t(_) => opcode::R2T,
            Bhs::AsyncMessage(_) => opcode::ASYNC_MESSAGE,
            Bhs::Reject(_) => opcode::REJECT,
            Bhs::Unknown(raw) => raw_opcode(raw),
        }
    }
}

/// A whole PDU: header, additional header segments and data segment (unpadded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pdu {
    pub bhs: Bhs,
    /// Additional header segments, a multiple of 4 bytes (RFC 7143 §11.2.2).
    pub ahs: Bytes,
    pub data: Bytes,
}

impl Pdu {
    /// A PDU with no AHS.
    pub fn new(bhs: Bhs, data: Bytes) -> Pdu {
        Pdu {
            bhs,
            ahs: Bytes::new(),
            data,
        }
    }
}

/// Bytes needed to pad `len` to a multiple of 4 (RFC 7143 §11.2.3).
#[inline]
pub fn pad_len(len: usize) -> usize {
    (4 - (len & 3)) & 3
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn roundtrip(h: Bhs) {
        let raw = h.encode(0, 0);
        assert_eq!(Bhs::decode(&raw), h);
    }

    #[test]
    fn login_request_fields_at_rfc_offsets() {
        let h = Bhs::LoginRequest(LoginRequest {
            transit: true,
            csg: 1,
            nsg: 3,
            isid: 0x0002_3d00_0001,
            tsih: 7,
            itt: 0x11223344,
            cid: 9,
            cmd_sn: 5,
            exp_stat_sn: 6,
            ..Default::default()
        });
        let raw = h.encode(0, 300);
        assert_eq!(raw[0], 0x43);
        assert_eq!(raw[1], 0x87);
        assert_eq!(&raw[8..14], &[0x00, 0x02, 0x3d, 0x00, 0x00, 0x01]);
        assert_eq!(raw_data_len(&raw), 300);
        roundtrip(h);
    }

    #[test]
    fn task_mgmt_response_carries_additional_response_information_at_36() {
        let h = Bhs::TaskMgmtResponse(TaskMgmtResponse {
            response: tmf_response::FUNCTION_SUCCEEDED,
            itt: 9,
            stat_sn: 1,
            exp_cmd_sn: 2,
            max_cmd_sn: 3,
            additional_response_information: [0x16, 0x29, 0x07],
        });
        let raw = h.encode(0, 0);
        assert_eq!(raw[0], 0x22);
        assert_eq!(raw[2], 7);
        assert_eq!(&raw[36..40], &[0x16, 0x29, 0x07, 0]);
        roundtrip(h);
    }

    #[test]
    fn unknown_opcode_is_kept_whole() {
        let mut raw = [0u8; BHS_LEN];
        raw[0] = 0x1c;
        raw[47] = 0xaa;
        let h = Bhs::decode(&raw);
        assert_eq!(h, Bhs::Unknown(raw));
        assert_eq!(h.opcode(), 0x1c);
        assert_eq!(h.encode(0, 0), raw);
    }

    #[test]
    fn data_in_status_only_when_present() {
        let h = Bhs::DataIn(DataIn {
            final_bit: true,
            status: 2,
            ..Default::default()
        });
        assert_eq!(h.encode(0, 0)[3], 0);
    }

    proptest! {
        /// Every header decodes to a value, and its re-encoding decodes to the same value.
        #[test]
        fn decode_is_total_and_stable(v in proptest::collection::vec(any::<u8>(), BHS_LEN)) {
            let mut raw = [0u8; BHS_LEN];
            raw.copy_from_slice(&v);
            let h = Bhs::decode(&raw);
            let again = h.encode(raw_ahs_len(&raw), raw_data_len(&raw));
            prop_assert_eq!(Bhs::decode(&again), h);
        }

        #[test]
        fn scsi_command_roundtrip(imm: bool, r: bool, w: bool, attr in 0u8..8, lun: u64, itt: u32,
                                  edtl: u32, cmd_sn: u32, exp: u32, cdb: [u8; 16]) {
            roundtrip(Bhs::ScsiCommand(ScsiCommand { immediate: imm, final_bit: true, read: r, write: w, attr, lun, itt,
                expected_data_transfer_length: edtl, cmd_sn, exp_stat_sn: exp, cdb }));
        }

        #[test]
        fn data_in_roundtrip(f: bool, o: bool, u: bool, s: bool, status: u8, itt: u32, ttt: u32, sn: u32,
                             dsn: u32, off: u32, res: u32) {
            let status = if s { status } else { 0 };
            roundtrip(Bhs::DataIn(DataIn { final_bit: f, ack: false, overflow: o, underflow: u, status_present: s,
                status, lun: 0, itt, ttt, stat_sn: sn, exp_cmd_sn: sn, max_cmd_sn: sn, data_sn: dsn,
                buffer_offset: off, residual_count: res }));
        }

        #[test]
        fn scsi_response_roundtrip(o: bool, u: bool, status: u8, itt: u32, sn: u32, res: u32) {
            roundtrip(Bhs::ScsiResponse(ScsiResponse { overflow: o, underflow: u, status, itt, stat_sn: sn,
                residual_count: res, ..Default::default() }));
        }

        #[test]
        fn r2t_roundtrip(itt: u32, ttt: u32, sn: u32, off: u32, len: u32) {
            roundtrip(Bhs::R2t(R2t { itt, ttt, stat_sn: sn, r2t_sn: sn, buffer_offset: off,
                desired_data_transfer_length: len, ..Default::default() }));
        }
    }
}
