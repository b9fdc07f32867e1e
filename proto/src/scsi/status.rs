//! SCSI status codes (SAM-5 §5.3.1), returned in the Status field of the iSCSI
//! SCSI Response PDU (RFC 7143 §11.4.2).

/// The command completed without error.
pub const GOOD: u8 = 0x00;
/// Sense data describes why the command failed.
pub const CHECK_CONDITION: u8 = 0x02;
/// Only for linked commands / conditions that were met (SBC PRE-FETCH).
pub const CONDITION_MET: u8 = 0x04;
/// The logical unit is busy; the initiator may retry later.
pub const BUSY: u8 = 0x08;
/// A persistent or SPC-2 reservation conflicts with the command.
pub const RESERVATION_CONFLICT: u8 = 0x18;
/// The task set is full; the initiator should retry with fewer outstanding commands.
pub const TASK_SET_FULL: u8 = 0x28;
/// An ACA condition is active.
pub const ACA_ACTIVE: u8 = 0x30;
/// The command was aborted by another I_T nexus (TAS = 1).
pub const TASK_ABORTED: u8 = 0x40;
