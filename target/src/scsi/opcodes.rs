//! REPORT SUPPORTED OPERATION CODES (SPC-4 §6.35) and REPORT SUPPORTED TASK
//! MANAGEMENT FUNCTIONS (SPC-4 §6.36).
//!
//! [`COMMANDS`] is the one list of what [`LogicalUnit::execute`] implements, with each
//! CDB's usage map (the bits the device server looks at; everything else must be
//! zero or is ignored as reserved). Whoever adds a command to `execute` adds it here.
//!
//! [`LogicalUnit::execute`]: super::LogicalUnit::execute

use mosaic_proto::scsi::opcode::{self as op, maintenance_in as mi, service_action_in_16 as sai};
use mosaic_proto::scsi::{ReportOpcodesCdb, Sense};

use super::{LogicalUnit, ScsiResult};

/// One supported command.
#[derive(Debug)]
pub struct Command {
    /// Operation code.
    pub opcode: u8,
    /// Service action, for opcodes that have them.
    pub service_action: Option<u16>,
    /// CDB USAGE DATA: byte 0 is the opcode, the service action sits where the CDB
    /// carries it, every other byte is a mask of the bits we use.
    pub usage: &'static [u8],
    /// Only on thin volumes (UNMAP).
    pub thin_only: bool,
}

/// PERSISTENT RESERVE IN/OUT (every service action), RESERVE/RELEASE(6/10), EXTENDED
/// COPY(LID1), RECEIVE COPY RESULTS, REPORT TARGET PORT GROUPS and our vendor READ
/// ROUTING TABLE: the commands the nexus-aware layer above the logical unit
/// (`device.rs`, `xcopy.rs`) executes.
/// That layer reports them through [`LogicalUnit::with_reported_commands`].
///
/// [`LogicalUnit::with_reported_commands`]: super::LogicalUnit::with_reported_commands
pub const RESERVATION_COMMANDS: &[Command] = &[
    cmd(0x16, &[0x16, 0, 0, 0, 0, 0]),
    cmd(0x17, &[0x17, 0, 0, 0, 0, 0]),
    cmd(0x56, &[0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
    cmd(0x57, &[0x57, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
    sa_cmd(0x5e, 0x00, &[0x5e, 0x00, 0, 0, 0, 0, 0, 0xff, 0xff, 0]),
    sa_cmd(0x5e, 0x01, &[0x5e, 0x01, 0, 0, 0, 0, 0, 0xff, 0xff, 0]),
    sa_cmd(0x5e, 0x02, &[0x5e, 0x02, 0, 0, 0, 0, 0, 0xff, 0xff, 0]),
    sa_cmd(0x5e, 0x03, &[0x5e, 0x03, 0, 0, 0, 0, 0, 0xff, 0xff, 0]),
    sa_cmd(
        0x5f,
        0x00,
        &[0x5f, 0x00, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0],
    ),
    sa_cmd(
        0x5f,
        0x01,
        &[0x5f, 0x01, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0],
    ),
    sa_cmd(
        0x5f,
        0x02,
        &[0x5f, 0x02, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0],
    ),
    sa_cmd(
        0x5f,
        0x03,
        &[0x5f, 0x03, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0],
    ),
    sa_cmd(
        0x5f,
        0x04,
        &[0x5f, 0x04, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0],
    ),
    sa_cmd(
        0x5f,
        0x05,
        &[0x5f, 0x05, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0],
    ),
    sa_cmd(
        0x5f,
        0x06,
        &[0x5f, 0x06, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0],
    ),
    sa_cmd(
        0x5f,
        0x07,
        &[0x5f, 0x07, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0],
    ),
    // EXTENDED COPY(LID1): PARAMETER LIST LENGTH.
    sa_cmd(
        0x83,
        0x00,
        &[
            0x83, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0,
        ],
    ),
    // RECEIVE COPY RESULTS: LIST IDENTIFIER (not for OPERATING PARAMETERS) and
    // ALLOCATION LENGTH.
    sa_cmd(
        0x84,
        0x00,
        &[
            0x84, 0x00, 0xff, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0,
        ],
    ),
    sa_cmd(
        0x84,
        0x01,
        &[
            0x84, 0x01, 0xff, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0,
        ],
    ),
    sa_cmd(
        0x84,
        0x03,
        &[
            0x84, 0x03, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0,
        ],
    ),
    sa_cmd(
        0x84,
        0x04,
        &[
            0x84, 0x04, 0xff, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0,
        ],
    ),
    // REPORT TARGET PORT GROUPS: PARAMETER DATA FORMAT, ALLOCATION LENGTH.
    sa_cmd(
        0xa3,
        0x0a,
        &[0xa3, 0xea, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0],
    ),
    // READ ROUTING TABLE (vendor specific, docs/wire-formats.md): BUFFER OFFSET,
    // ALLOCATION LENGTH.
    cmd(
        0xc5,
        &[
            0xc5, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0,
        ],
    ),
];

const fn cmd(opcode: u8, usage: &'static [u8]) -> Command {
    Command {
        opcode,
        service_action: None,
        usage,
        thin_only: false,
    }
}

const fn sa_cmd(opcode: u8, service_action: u8, usage: &'static [u8]) -> Command {
    Command {
        opcode,
        service_action: Some(service_action as u16),
        usage,
        thin_only: false,
    }
}

/// Every command we execute, in opcode order. Byte 1 masks: 0x18 is DPO+FUA, 0x16
/// DPO+BYTCHK (VERIFY), 0x12 DPO+BYTCHK 01b (WRITE AND VERIFY), 0x02 IMMED. The
/// CONTROL byte is 0: NACA is not supported.
pub(super) const COMMANDS: &[Command] = &[
    cmd(op::TEST_UNIT_READY, &[op::TEST_UNIT_READY, 0, 0, 0, 0, 0]),
    cmd(op::REQUEST_SENSE, &[op::REQUEST_SENSE, 0x01, 0, 0, 0xff, 0]),
    cmd(op::READ_6, &[op::READ_6, 0x1f, 0xff, 0xff, 0xff, 0]),
    cmd(op::WRITE_6, &[op::WRITE_6, 0x1f, 0xff, 0xff, 0xff, 0]),
    cmd(op::INQUIRY, &[op::INQUIRY, 0x01, 0xff, 0xff, 0xff, 0]),
    cmd(op::MODE_SELECT_6, &[op::MODE_SELECT_6, 0x11, 0, 0, 0xff, 0]),
    cmd(
        op::MODE_SENSE_6,
        &[op::MODE_SENSE_6, 0x08, 0xff, 0xff, 0xff, 0],
    ),
    cmd(
        op::START_STOP_UNIT,
        &[op::START_STOP_UNIT, 0x01, 0, 0x0f, 0xf7, 0],
    ),
    cmd(
        op::PREVENT_ALLOW_MEDIUM_REMOVAL,
        &[op::PREVENT_ALLOW_MEDIUM_REMOVAL, 0, 0, 0, 0x03, 0],
    ),
    cmd(
        op::READ_CAPACITY_10,
        &[
            op::READ_CAPACITY_10,
            0,
            0xff,
            0xff,
            0xff,
            0xff,
            0,
            0,
            0x01,
            0,
        ],
    ),
    cmd(
        op::READ_10,
        &[op::READ_10, 0x18, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, 0],
    ),
    cmd(
        op::WRITE_10,
        &[op::WRITE_10, 0x18, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, 0],
    ),
    cmd(
        op::WRITE_AND_VERIFY_10,
        &[
            op::WRITE_AND_VERIFY_10,
            0x12,
            0xff,
            0xff,
            0xff,
            0xff,
            0,
            0xff,
            0xff,
            0,
        ],
    ),
    cmd(
        op::VERIFY_10,
        &[
            op::VERIFY_10,
            0x16,
            0xff,
            0xff,
            0xff,
            0xff,
            0,
            0xff,
            0xff,
            0,
        ],
    ),
    cmd(
        op::PRE_FETCH_10,
        &[
            op::PRE_FETCH_10,
            0x02,
            0xff,
            0xff,
            0xff,
            0xff,
            0,
            0xff,
            0xff,
            0,
        ],
    ),
    cmd(
        op::READ_DEFECT_DATA_10,
        &[op::READ_DEFECT_DATA_10, 0, 0x1f, 0, 0, 0, 0, 0xff, 0xff, 0],
    ),
    cmd(
        op::SYNCHRONIZE_CACHE_10,
        &[
            op::SYNCHRONIZE_CACHE_10,
            0x02,
            0xff,
            0xff,
            0xff,
            0xff,
            0,
            0xff,
            0xff,
            0,
        ],
    ),
    cmd(
        op::WRITE_SAME_10,
        &[
            op::WRITE_SAME_10,
            0x08,
            0xff,
            0xff,
            0xff,
            0xff,
            0,
            0xff,
            0xff,
            0,
        ],
    ),
    Command {
        opcode: op::UNMAP,
        service_action: None,
        usage: &[op::UNMAP, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0],
        thin_only: true,
    },
    cmd(
        op::MODE_SELECT_10,
        &[op::MODE_SELECT_10, 0x11, 0, 0, 0, 0, 0, 0xff, 0xff, 0],
    ),
    cmd(
        op::MODE_SENSE_10,
        &[op::MODE_SENSE_10, 0x18, 0xff, 0xff, 0, 0, 0, 0xff, 0xff, 0],
    ),
    cmd(op::READ_16, &RW16_USAGE[0]),
    cmd(
        op::COMPARE_AND_WRITE,
        &[
            op::COMPARE_AND_WRITE,
            0x18,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0,
            0,
            0,
            0xff,
            0,
            0,
        ],
    ),
    cmd(op::WRITE_16, &RW16_USAGE[1]),
    cmd(op::ORWRITE_16, &RW16_USAGE[2]),
    cmd(
        op::WRITE_AND_VERIFY_16,
        &[
            op::WRITE_AND_VERIFY_16,
            0x12,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0,
            0,
        ],
    ),
    cmd(
        op::VERIFY_16,
        &[
            op::VERIFY_16,
            0x16,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0,
            0,
        ],
    ),
    cmd(
        op::PRE_FETCH_16,
        &[
            op::PRE_FETCH_16,
            0x02,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0,
            0,
        ],
    ),
    cmd(
        op::SYNCHRONIZE_CACHE_16,
        &[
            op::SYNCHRONIZE_CACHE_16,
            0x02,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0,
            0,
        ],
    ),
    cmd(
        op::WRITE_SAME_16,
        &[
            op::WRITE_SAME_16,
            0x09,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0,
            0,
        ],
    ),
    cmd(
        op::WRITE_ATOMIC_16,
        &[
            op::WRITE_ATOMIC_16,
            0x18,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0,
            0,
            0xff,
            0xff,
            0,
            0,
        ],
    ),
    sa_cmd(
        op::SERVICE_ACTION_IN_16,
        sai::READ_CAPACITY_16,
        &[
            op::SERVICE_ACTION_IN_16,
            sai::READ_CAPACITY_16,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0xff,
            0xff,
            0xff,
            0xff,
            0,
            0,
        ],
    ),
    sa_cmd(
        op::SERVICE_ACTION_IN_16,
        sai::GET_LBA_STATUS,
        &[
            op::SERVICE_ACTION_IN_16,
            sai::GET_LBA_STATUS,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0,
            0,
        ],
    ),
    cmd(
        op::REPORT_LUNS,
        &[
            op::REPORT_LUNS,
            0,
            0xff,
            0,
            0,
            0,
            0xff,
            0xff,
            0xff,
            0xff,
            0,
            0,
        ],
    ),
    sa_cmd(
        op::MAINTENANCE_IN,
        mi::REPORT_SUPPORTED_OPERATION_CODES,
        &[
            op::MAINTENANCE_IN,
            mi::REPORT_SUPPORTED_OPERATION_CODES,
            0x87,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0,
            0,
        ],
    ),
    sa_cmd(
        op::MAINTENANCE_IN,
        mi::REPORT_SUPPORTED_TMFS,
        &[
            op::MAINTENANCE_IN,
            mi::REPORT_SUPPORTED_TMFS,
            0x80,
            0,
            0,
            0,
            0xff,
            0xff,
            0xff,
            0xff,
            0,
            0,
        ],
    ),
    cmd(op::READ_12, &RW12_USAGE[0]),
    cmd(op::WRITE_12, &RW12_USAGE[1]),
    cmd(
        op::READ_DEFECT_DATA_12,
        &[
            op::READ_DEFECT_DATA_12,
            0x1f,
            0,
            0,
            0,
            0,
            0xff,
            0xff,
            0xff,
            0xff,
            0,
            0,
        ],
    ),
    cmd(
        op::WRITE_AND_VERIFY_12,
        &[
            op::WRITE_AND_VERIFY_12,
            0x12,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0,
            0,
        ],
    ),
    cmd(
        op::VERIFY_12,
        &[
            op::VERIFY_12,
            0x16,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0,
            0,
        ],
    ),
];

/// READ(16), WRITE(16), ORWRITE(16): DPO, FUA, LBA, TRANSFER LENGTH.
const RW16_USAGE: [[u8; 16]; 3] = {
    let mut u = [[0u8; 16]; 3];
    let ops = [op::READ_16, op::WRITE_16, op::ORWRITE_16];
    let mut i = 0;
    while i < 3 {
        u[i][0] = ops[i];
        u[i][1] = 0x18;
        let mut b = 2;
        while b < 14 {
            u[i][b] = 0xff;
            b += 1;
        }
        i += 1;
    }
    u
};

/// READ(12), WRITE(12): DPO, FUA, LBA, TRANSFER LENGTH.
const RW12_USAGE: [[u8; 12]; 2] = {
    let mut u = [[0u8; 12]; 2];
    let ops = [op::READ_12, op::WRITE_12];
    let mut i = 0;
    while i < 2 {
        u[i][0] = ops[i];
        u[i][1] = 0x18;
        let mut b = 2;
        while b < 10 {
            u[i][b] = 0xff;
            b += 1;
        }
        i += 1;
    }
    u
};

/// REPORTING OPTIONS (SPC-4 §6.35.1, Table 214).
const OPTIONS_ALL: u8 = 0b000;
const OPTIONS_OPCODE: u8 = 0b001;
const OPTIONS_OPCODE_AND_SA: u8 = 0b010;
/// SUPPORT values of the one-command format (SPC-4 Table 217).
const SUPPORT_NOT_SUPPORTED: u8 = 0b001;
const SUPPORT_STANDARD: u8 = 0b011;
/// Command timeouts descriptor (SPC-4 §6.35.4): DESCRIPTOR LENGTH 0Ah.
const TIMEOUTS_DESCRIPTOR_LEN: u16 = 0x0a;
/// RECOMMENDED COMMAND TIMEOUT we report, in seconds: a command that has not
/// completed by then is stuck (the longest, a 32 MiB write with FUA, takes well under
/// a second). NOMINAL COMMAND PROCESSING TIMEOUT is reported as 0 (not specified).
const RECOMMENDED_TIMEOUT_SECS: u32 = 30;
/// CTDP (bit 1) and SERVACTV (bit 0) of an all-commands descriptor, CTDP (bit 7) of
/// the one-command format.
const CTDP_ALL: u8 = 0x02;
const SERVACTV: u8 = 0x01;
const CTDP_ONE: u8 = 0x80;

/// Every command `lu` reports: its own and those of the layers above it, in
/// (opcode, service action) order.
fn reported(lu: &LogicalUnit) -> Vec<&'static Command> {
    let mut all: Vec<&'static Command> = COMMANDS
        .iter()
        .chain(lu.layered_commands.iter())
        .filter(|c| !c.thin_only || lu.options().thin)
        .collect();
    all.sort_by_key(|c| (c.opcode, c.service_action));
    all
}

fn timeouts_descriptor(out: &mut Vec<u8>) {
    out.extend_from_slice(&TIMEOUTS_DESCRIPTOR_LEN.to_be_bytes());
    out.extend_from_slice(&[0, 0]); // reserved, COMMAND SPECIFIC
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(&RECOMMENDED_TIMEOUT_SECS.to_be_bytes());
}

/// REPORT SUPPORTED OPERATION CODES (SPC-4 §6.35): all commands (REPORTING OPTIONS
/// 000b), one opcode (001b; INVALID FIELD IN CDB if it has service actions), or one
/// opcode and service action (010b; INVALID FIELD IN CDB if it has none). A command
/// we do not implement is reported as "not supported" with GOOD. With RCTD every
/// descriptor carries a command timeouts descriptor.
pub(super) fn report_supported_opcodes(lu: &LogicalUnit, r: &ReportOpcodesCdb) -> ScsiResult {
    let commands = reported(lu);
    let data = match r.options {
        OPTIONS_ALL => {
            let mut descriptors = Vec::new();
            for c in &commands {
                descriptors.push(c.opcode);
                descriptors.push(0);
                descriptors.extend_from_slice(&c.service_action.unwrap_or(0).to_be_bytes());
                descriptors.push(0);
                let mut flags = 0;
                if c.service_action.is_some() {
                    flags |= SERVACTV;
                }
                if r.rctd {
                    flags |= CTDP_ALL;
                }
                descriptors.push(flags);
                descriptors.extend_from_slice(&(c.usage.len() as u16).to_be_bytes());
                if r.rctd {
                    timeouts_descriptor(&mut descriptors);
                }
            }
            let mut d = Vec::with_capacity(4 + descriptors.len());
            d.extend_from_slice(&(descriptors.len() as u32).to_be_bytes());
            d.extend_from_slice(&descriptors);
            d
        }
        OPTIONS_OPCODE | OPTIONS_OPCODE_AND_SA => {
            let with_sa = r.options == OPTIONS_OPCODE_AND_SA;
            let known = commands.iter().any(|c| c.opcode == r.opcode);
            let has_sa = commands
                .iter()
                .any(|c| c.opcode == r.opcode && c.service_action.is_some());
            if known && has_sa != with_sa {
                return ScsiResult::check(Sense::invalid_field_in_cdb(2, Some(2)), 0);
            }
            let found = commands.iter().find(|c| {
                c.opcode == r.opcode && (!with_sa || c.service_action == Some(r.service_action))
            });
            let mut d = vec![0u8; 4];
            match found {
                Some(c) => {
                    d[1] = SUPPORT_STANDARD | if r.rctd { CTDP_ONE } else { 0 };
                    d[2..4].copy_from_slice(&(c.usage.len() as u16).to_be_bytes());
                    d.extend_from_slice(c.usage);
                    if r.rctd {
                        timeouts_descriptor(&mut d);
                    }
                }
                None => d[1] = SUPPORT_NOT_SUPPORTED,
            }
            d
        }
        _ => return ScsiResult::check(Sense::invalid_field_in_cdb(2, Some(2)), 0),
    };
    ScsiResult::good_truncated(data, r.alloc_len as usize)
}

/// The task management functions the iSCSI layer (`conn.rs`) carries out, as the
/// first byte of the REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS data (SPC-4 §6.36.2,
/// Table 222): ATS (ABORT TASK), ATSS (ABORT TASK SET), CTSS (CLEAR TASK SET), LURS
/// (LOGICAL UNIT RESET), QTS (QUERY TASK), TRS (TARGET RESET, warm and cold). Not:
/// CLEAR ACA (no ACA: NACA is not supported), WAKEUP. Keep in step with the session's TMF
/// handling.
pub const SUPPORTED_TMFS: u8 = ATS | ATSS | CTSS | LURS | QTS | TRS;
/// The second byte: QAES (QUERY ASYNCHRONOUS EVENT), QTSS (QUERY TASK SET), ITNRS
/// (I_T NEXUS RESET), the functions RFC 7144 §4.1 brings to iSCSI.
pub const SUPPORTED_TMFS_2: u8 = QAES | QTSS | ITNRS;
const ATS: u8 = 0x80;
const ATSS: u8 = 0x40;
const CTSS: u8 = 0x10;
const LURS: u8 = 0x08;
const QTS: u8 = 0x04;
const TRS: u8 = 0x02;
const QAES: u8 = 0x04;
const QTSS: u8 = 0x02;
const ITNRS: u8 = 0x01;
/// SPC-4 §6.36: an ALLOCATION LENGTH below 4 is INVALID FIELD IN CDB.
const MIN_TMF_ALLOC_LEN: u32 = 4;
/// With REPD = 1 the data is 16 bytes (ADDITIONAL DATA LENGTH 0Ch).
const TMF_EXTENDED_LEN: usize = 16;

/// REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS (SPC-4 §6.36).
pub(super) fn report_supported_tmfs(repd: bool, alloc_len: u32) -> ScsiResult {
    if alloc_len < MIN_TMF_ALLOC_LEN {
        return ScsiResult::check(Sense::invalid_field_in_cdb(6, None), 0);
    }
    let mut d = vec![SUPPORTED_TMFS, SUPPORTED_TMFS_2, 0, 0];
    if repd {
        d[3] = (TMF_EXTENDED_LEN - 4) as u8;
        d.resize(TMF_EXTENDED_LEN, 0);
    }
    ScsiResult::good_truncated(d, alloc_len as usize)
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::*;
    use mosaic_proto::scsi::sense::key;
    use mosaic_proto::scsi::{status, Asc};

    fn rsoc(rctd: bool, options: u8, opcode: u8, sa: u16, alloc: u32) -> [u8; 12] {
        let mut c = [0u8; 12];
        c[0] = op::MAINTENANCE_IN;
        c[1] = mi::REPORT_SUPPORTED_OPERATION_CODES;
        c[2] = options | if rctd { 0x80 } else { 0 };
        c[3] = opcode;
        c[4..6].copy_from_slice(&sa.to_be_bytes());
        c[6..10].copy_from_slice(&alloc.to_be_bytes());
        c
    }

    /// (opcode, service action, flags, cdb length) of each all-commands descriptor.
    fn all_descriptors(d: &[u8]) -> Vec<(u8, u16, u8, u16)> {
        let len = u32::from_be_bytes(d[0..4].try_into().unwrap()) as usize;
        let mut out = Vec::new();
        let mut at = 4;
        while at < 4 + len {
            let x = &d[at..];
            out.push((
                x[0],
                u16::from_be_bytes([x[2], x[3]]),
                x[5],
                u16::from_be_bytes([x[6], x[7]]),
            ));
            at += if x[5] & CTDP_ALL != 0 { 20 } else { 8 };
        }
        out
    }

    #[test]
    fn usage_maps_start_with_opcode_and_service_action_and_match_cdb_length() {
        for c in COMMANDS {
            assert_eq!(c.usage[0], c.opcode);
            if let Some(sa) = c.service_action {
                assert_eq!(u16::from(c.usage[1]), sa, "opcode {:#x}", c.opcode);
            }
            let len = match c.opcode >> 5 {
                0 => 6,
                1 | 2 => 10,
                4 => 16,
                5 => 12,
                _ => unreachable!(),
            };
            assert_eq!(c.usage.len(), len, "opcode {:#x}", c.opcode);
        }
    }

    #[test]
    fn every_listed_command_decodes() {
        for c in COMMANDS {
            let mut cdb = [0u8; 16];
            cdb[0] = c.opcode;
            if let Some(sa) = c.service_action {
                cdb[1] = sa as u8;
            }
            let decoded = mosaic_proto::scsi::Cdb::decode(&cdb);
            assert!(
                !matches!(
                    decoded,
                    Ok(mosaic_proto::scsi::Cdb::Unknown(_))
                        | Ok(mosaic_proto::scsi::Cdb::UnsupportedServiceAction { .. })
                ),
                "opcode {:#x} is listed but not decoded",
                c.opcode
            );
        }
    }

    #[tokio::test]
    async fn all_commands_lists_each_with_servactv_only_for_service_actions() {
        let r = exec(&lu(), &rsoc(false, 0, 0, 0, 65535)).await;
        assert_good(&r);
        let d = all_descriptors(&r.data_in);
        assert_eq!(d.len(), COMMANDS.len());
        for (opcode, sa, flags, _) in &d {
            assert_eq!(flags & CTDP_ALL, 0);
            if flags & SERVACTV == 0 {
                assert_eq!(*sa, 0, "opcode {opcode:#x}");
            }
        }
        assert!(d.contains(&(op::SERVICE_ACTION_IN_16, 0x12, SERVACTV, 16)));
        assert!(d.iter().any(|x| x.0 == op::UNMAP));
    }

    #[tokio::test]
    async fn all_commands_with_rctd_carries_timeouts_descriptors() {
        let r = exec(&lu(), &rsoc(true, 0, 0, 0, 65535)).await;
        assert_good(&r);
        let d = all_descriptors(&r.data_in);
        assert_eq!(d.len(), COMMANDS.len());
        assert!(d.iter().all(|x| x.2 & CTDP_ALL != 0));
        // First timeouts descriptor: length 0Ah, recommended timeout.
        let t = &r.data_in[4 + 8..4 + 20];
        assert_eq!(u16::from_be_bytes([t[0], t[1]]), 0x0a);
        assert_eq!(
            u32::from_be_bytes(t[8..12].try_into().unwrap()),
            RECOMMENDED_TIMEOUT_SECS
        );
    }

    #[tokio::test]
    async fn layered_reservation_commands_are_reported_in_opcode_order() {
        let lu = lu().with_reported_commands(RESERVATION_COMMANDS);
        let r = exec(&lu, &rsoc(false, 0, 0, 0, 65535)).await;
        let d = all_descriptors(&r.data_in);
        assert_eq!(d.len(), COMMANDS.len() + RESERVATION_COMMANDS.len());
        let keys: Vec<(u8, u16)> = d.iter().map(|x| (x.0, x.1)).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        assert!(d.contains(&(0x5f, 0x07, SERVACTV, 10)), "REGISTER AND MOVE");
        let r = exec(&lu, &rsoc(false, 2, 0x5e, 0x03, 64)).await;
        assert_eq!(r.data_in[1] & 0x07, SUPPORT_STANDARD);
        let r = exec(&lu, &rsoc(false, 1, 0x5e, 0, 64)).await;
        assert_check(&r, key::ILLEGAL_REQUEST, Asc::INVALID_FIELD_IN_CDB);
        let r = exec(&lu, &rsoc(false, 1, 0x16, 0, 64)).await;
        assert_eq!(r.data_in[1] & 0x07, SUPPORT_STANDARD);
        // Without the layer they are not ours.
        let r = exec(&super::super::tests::lu(), &rsoc(false, 1, 0x16, 0, 64)).await;
        assert_eq!(r.data_in[1] & 0x07, SUPPORT_NOT_SUPPORTED);
    }

    #[test]
    fn reservation_usage_maps_are_well_formed() {
        for c in RESERVATION_COMMANDS {
            assert_eq!(c.usage[0], c.opcode);
            // CDB length from the group code (SPC-4 §4.2.5.1); vendor-specific
            // groups 6 and 7 have no standard length, ours are 16 bytes.
            let len = match c.opcode >> 5 {
                0 => 6,
                1 | 2 => 10,
                4 | 6 | 7 => 16,
                5 => 12,
                _ => unreachable!(),
            };
            assert_eq!(c.usage.len(), len, "opcode {:#x}", c.opcode);
            if let Some(sa) = c.service_action {
                // The service action sits in bits 4..0; the bits above may be usage.
                assert_eq!(u16::from(c.usage[1] & 0x1f), sa, "opcode {:#x}", c.opcode);
            }
        }
    }

    #[tokio::test]
    async fn thick_volume_does_not_list_unmap() {
        let r = exec(&thick_lu(), &rsoc(false, 0, 0, 0, 65535)).await;
        let d = all_descriptors(&r.data_in);
        assert!(!d.iter().any(|x| x.0 == op::UNMAP));
        let r = exec(&thick_lu(), &rsoc(false, 1, op::UNMAP, 0, 64)).await;
        assert_good(&r);
        assert_eq!(r.data_in[1] & 0x07, SUPPORT_NOT_SUPPORTED);
    }

    #[tokio::test]
    async fn one_command_reports_usage_data_with_dpo_fua() {
        let lu = lu();
        let r = exec(&lu, &rsoc(false, 1, op::VERIFY_10, 0, 64)).await;
        assert_good(&r);
        let d = &r.data_in;
        assert_eq!(d[1] & 0x07, SUPPORT_STANDARD);
        assert_eq!(u16::from_be_bytes([d[2], d[3]]), 10);
        assert_eq!(d[4], op::VERIFY_10);
        assert_eq!(d[5] & 0x10, 0x10, "DPO");
        let r = exec(&lu, &rsoc(true, 1, op::COMPARE_AND_WRITE, 0, 64)).await;
        assert_eq!(r.data_in[1] & 0x80, 0x80, "CTDP");
        assert_eq!(r.data_in[5] & 0x18, 0x18, "DPO and FUA");
        assert_eq!(r.data_in.len(), 4 + 16 + 12);
    }

    #[tokio::test]
    async fn one_command_checks_service_action_use() {
        let lu = lu();
        // Opcode with service actions asked without one, and the reverse.
        let r = exec(&lu, &rsoc(false, 1, op::SERVICE_ACTION_IN_16, 0x10, 64)).await;
        assert_check(&r, key::ILLEGAL_REQUEST, Asc::INVALID_FIELD_IN_CDB);
        let r = exec(&lu, &rsoc(false, 2, op::READ_10, 0, 64)).await;
        assert_check(&r, key::ILLEGAL_REQUEST, Asc::INVALID_FIELD_IN_CDB);
        let r = exec(&lu, &rsoc(false, 2, op::SERVICE_ACTION_IN_16, 0x10, 64)).await;
        assert_good(&r);
        assert_eq!(r.data_in[1] & 0x07, SUPPORT_STANDARD);
        assert_eq!(&r.data_in[4..6], &[op::SERVICE_ACTION_IN_16, 0x10]);
        // Unknown service action and unknown opcode: not supported, GOOD.
        let r = exec(&lu, &rsoc(false, 2, op::SERVICE_ACTION_IN_16, 0x1f, 64)).await;
        assert_eq!(r.data_in[1] & 0x07, SUPPORT_NOT_SUPPORTED);
        let r = exec(&lu, &rsoc(false, 1, 0xc0, 0, 64)).await;
        assert_eq!(r.status, status::GOOD);
        assert_eq!(r.data_in[1] & 0x07, SUPPORT_NOT_SUPPORTED);
        // Reserved reporting options.
        let r = exec(&lu, &rsoc(false, 5, 0, 0, 64)).await;
        assert_check(&r, key::ILLEGAL_REQUEST, Asc::INVALID_FIELD_IN_CDB);
    }

    #[tokio::test]
    async fn report_supported_tmfs_lists_what_the_session_carries_out_with_rfc_7144_queries() {
        let mut c = [0u8; 12];
        c[0] = op::MAINTENANCE_IN;
        c[1] = mi::REPORT_SUPPORTED_TMFS;
        c[9] = 4;
        let lu = lu();
        let r = exec(&lu, &c).await;
        assert_good(&r);
        // ATS ATSS CTSS LURS QTS TRS; QAES QTSS ITNRS.
        assert_eq!(&r.data_in[..], &[0xde, 0x07, 0, 0]);
        c[2] = 0x80;
        c[9] = 16;
        let r = exec(&lu, &c).await;
        assert_eq!(r.data_in.len(), 16);
        assert_eq!(r.data_in[3], 0x0c);
        c[9] = 3;
        let r = exec(&lu, &c).await;
        assert_check(&r, key::ILLEGAL_REQUEST, Asc::INVALID_FIELD_IN_CDB);
    }
}
