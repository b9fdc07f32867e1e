//! EXTENDED COPY (LID1) and RECEIVE COPY RESULTS: the copy manager of each logical
//! unit (SPC-4 §5.17, §6.4, §6.18; SPC-3 §6.3, §6.17), and the registry through which
//! a copy reaches another of our volumes.
//!
//! - [`parse_param_list`] decodes the EXTENDED COPY parameter list (SPC-4 §6.4.3):
//!   the header, the CSCD descriptors and the segment descriptors. It is pure and
//!   never panics; every fault is an [`XcopyError`] that maps to the sense data the
//!   standard asks for.
//! - [`plan`] checks the segments against the resolved copy targets (indexes,
//!   capacity, block sizes, limits) before any block moves, so a refused copy writes
//!   nothing.
//! - [`CopyManager`] knows this node's volumes by the designators of their VPD 0x83
//!   page, so that a CSCD descriptor naming another volume finds it.
//! - [`CopyRecords`] keeps, per I_T nexus and list identifier, what RECEIVE COPY
//!   RESULTS reports (COPY STATUS, RECEIVE DATA, FAILED SEGMENT DETAILS).
//!
//! Supported: CSCD descriptor E4h (identification descriptor, SPC-4 §6.4.5.6) with
//! peripheral device type 00h (the obsolete LU ID TYPE is ignored, NUL honoured), naming one of our logical units by
//! any logical-unit designator of its VPD 0x83 page (initiators use the NAA one);
//! segment descriptor 02h (block device to block device, SPC-4 §6.4.6.5) with DC.
//! Not supported: stream devices, inline and held data (their limits are reported as
//! 0), proxy tokens, EXTENDED COPY(LID4) and the ROD token commands.
//!
//! Choices where the standard leaves room (checked by libiscsi's ExtendedCopy suite):
//! a descriptor list longer than [`MAX_DESCRIPTOR_LIST_LEN`] is PARAMETER LIST LENGTH
//! ERROR before the descriptor counts are checked; a segment that names a missing
//! CSCD descriptor, a NUL descriptor or a volume we do not have ends with COPY ABORTED
//! / COPY TARGET DEVICE NOT REACHABLE (0D/02); a segment beyond a volume's capacity or
//! a failed read or write ends with COPY ABORTED / NO ADDITIONAL SENSE INFORMATION,
//! with the sense-key-specific field pointing at the segment descriptor; a write to a
//! write-protected volume is DATA PROTECT as for a WRITE.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Weak};

use mosaic_proto::scsi::sense::{key, FieldPointer};
use mosaic_proto::scsi::{Asc, Sense};
use parking_lot::{Mutex, RwLock};

use crate::device::Device;

/// EXTENDED COPY (SPC-4 §6.4; THIRD-PARTY COPY OUT, service action 00h = LID1).
pub const EXTENDED_COPY: u8 = 0x83;
/// RECEIVE COPY RESULTS (SPC-4 §6.18; THIRD-PARTY COPY IN).
pub const RECEIVE_COPY_RESULTS: u8 = 0x84;
/// Service action of EXTENDED COPY(LID1) (SPC-4 Table 94).
pub const SA_EXTENDED_COPY_LID1: u8 = 0x00;

/// Service actions of RECEIVE COPY RESULTS (SPC-4 §6.18.1, Table 148).
pub mod sa {
    /// COPY STATUS(LID1).
    pub const COPY_STATUS: u8 = 0x00;
    /// RECEIVE DATA(LID1): held data (we hold none).
    pub const RECEIVE_DATA: u8 = 0x01;
    /// OPERATING PARAMETERS.
    pub const OPERATING_PARAMETERS: u8 = 0x03;
    /// FAILED SEGMENT DETAILS(LID1).
    pub const FAILED_SEGMENT_DETAILS: u8 = 0x04;
}

/// The most CSCD descriptors one EXTENDED COPY may carry: a copy names a source and
/// a destination, VMware sends two; a few more let one command gather several volumes.
pub const MAX_CSCD_DESCRIPTORS: u16 = 8;
/// The most segment descriptors one EXTENDED COPY may carry. With
/// [`MAX_SEGMENT_BYTES`] it bounds the work of one command (VMware sends one segment
/// per command by default).
pub const MAX_SEGMENT_DESCRIPTORS: u16 = 64;
/// MAXIMUM DESCRIPTOR LIST LENGTH: exactly the largest CSCD and segment lists we take
/// (32-byte E4h descriptors, 28-byte 02h descriptors), so the parameter list we must
/// buffer stays small.
pub const MAX_DESCRIPTOR_LIST_LEN: u32 = MAX_CSCD_DESCRIPTORS as u32 * CSCD_DESC_LEN as u32
    + MAX_SEGMENT_DESCRIPTORS as u32 * B2B_DESC_LEN as u32;
/// MAXIMUM SEGMENT LENGTH: the bytes one segment may move, the same bound as one READ
/// or WRITE ([`crate::scsi::MAX_TRANSFER_BYTES`]).
pub const MAX_SEGMENT_BYTES: u64 = crate::scsi::MAX_TRANSFER_BYTES;
/// The most bytes one EXTENDED COPY moves in all: bounds how long a command holds its
/// slot (about a quarter of a second from memory, a few seconds from disk), well under
/// the 30 s command timeout REPORT SUPPORTED OPERATION CODES recommends.
pub const MAX_COPY_BYTES: u64 = 256 * 1024 * 1024;
/// Bytes read and written at a time inside a segment: the memory one copy holds. A
/// multiple of every supported block size.
pub const COPY_CHUNK_BYTES: u64 = 1024 * 1024;
/// Copies a logical unit runs at once (TOTAL CONCURRENT COPIES); more wait. Bounds
/// the memory copies pin to this many chunks per volume.
pub const MAX_CONCURRENT_COPIES: u8 = 4;
/// Nexuses whose copy results a logical unit keeps; the oldest go first. Results are
/// also dropped on nexus loss.
pub const MAX_RECORD_NEXUSES: usize = 256;

/// Length of the EXTENDED COPY parameter list header (SPC-4 Table 97).
const HEADER_LEN: usize = 16;
/// Length of the E4h identification CSCD descriptor (and of all of E0h..E9h).
const CSCD_DESC_LEN: usize = 32;
/// Length of the 02h block-to-block segment descriptor.
const B2B_DESC_LEN: usize = 28;
/// CSCD descriptor type: identification descriptor (SPC-4 §6.4.5.6).
const CSCD_IDENTIFICATION: u8 = 0xe4;
/// Segment descriptor type: block device to block device (SPC-4 §6.4.6.5).
const SEG_BLOCK_TO_BLOCK: u8 = 0x02;
/// The longest designator an E4h descriptor holds (bytes 8..27).
const MAX_CSCD_DESIGNATOR_LEN: usize = 20;

/// COPY ABORTED sense key (SPC-4 Table 49); not in the proto crate's list.
pub const KEY_COPY_ABORTED: u8 = 0x0a;
/// Additional sense codes of third-party copy (SPC-4 Table 50).
pub mod asc {
    use mosaic_proto::scsi::Asc;
    pub const TOO_MANY_TARGET_DESCRIPTORS: Asc = Asc::new(0x26, 0x06);
    pub const UNSUPPORTED_TARGET_DESCRIPTOR_TYPE_CODE: Asc = Asc::new(0x26, 0x07);
    pub const TOO_MANY_SEGMENT_DESCRIPTORS: Asc = Asc::new(0x26, 0x08);
    pub const UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE_CODE: Asc = Asc::new(0x26, 0x09);
    pub const INLINE_DATA_LENGTH_EXCEEDED: Asc = Asc::new(0x26, 0x0b);
    pub const COPY_TARGET_DEVICE_NOT_REACHABLE: Asc = Asc::new(0x0d, 0x02);
    pub const OPERATION_IN_PROGRESS: Asc = Asc::new(0x00, 0x16);
}

/// Why an EXTENDED COPY is refused or failed; each maps to its sense data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XcopyError {
    /// The parameter list is shorter than its lengths say, or the descriptor lists
    /// are longer than MAXIMUM DESCRIPTOR LIST LENGTH (1A/00).
    #[error("parameter list length error")]
    ParamListLength,
    /// More than [`MAX_CSCD_DESCRIPTORS`] CSCD descriptors (26/06).
    #[error("too many CSCD descriptors")]
    TooManyCscds,
    /// More than [`MAX_SEGMENT_DESCRIPTORS`] segment descriptors (26/08).
    #[error("too many segment descriptors")]
    TooManySegments,
    /// A CSCD descriptor type we do not support (26/07).
    #[error("unsupported CSCD descriptor type {code:#04x} at byte {offset}")]
    UnsupportedCscd { code: u8, offset: usize },
    /// A segment descriptor type we do not support (26/09).
    #[error("unsupported segment descriptor type {code:#04x} at byte {offset}")]
    UnsupportedSegment { code: u8, offset: usize },
    /// INLINE DATA LENGTH beyond what we take, which is none (26/0B).
    #[error("inline data length exceeded")]
    InlineDataLengthExceeded,
    /// A field of the parameter list holds a value we refuse (26/00), at `byte`.
    #[error("invalid field in parameter list at byte {byte}")]
    InvalidField { byte: usize, bit: Option<u8> },
    /// The nexus already runs a copy with this list identifier (00/16).
    #[error("a copy with this list identifier is in progress")]
    OperationInProgress,
    /// The segment at `offset` names a copy target we cannot reach: a missing or NUL
    /// CSCD descriptor, or a volume that is not ours (COPY ABORTED, 0D/02).
    #[error("copy target of the segment at byte {offset} not reachable")]
    Unreachable { offset: usize },
    /// The segment at `offset` could not be processed: beyond a volume's capacity, or
    /// a read or write failed (COPY ABORTED, 00/00).
    #[error("segment at byte {offset} failed")]
    SegmentFailed { offset: usize },
    /// A copy target refused the write with this sense (DATA PROTECT).
    #[error("copy target refused: {0:?}")]
    Target(Sense),
    /// A copy target is reserved by another nexus: RESERVATION CONFLICT status, as
    /// a READ or WRITE of it would get (no sense data).
    #[error("reservation conflict on a copy target")]
    ReservationConflict,
}

/// A parameter-list offset as a sense field pointer (offsets stay far below 64 KiB:
/// the descriptor lists are bounded by [`MAX_DESCRIPTOR_LIST_LEN`]).
fn pointer(byte: usize, bit: Option<u8>) -> FieldPointer {
    FieldPointer {
        in_cdb: false,
        byte: u16::try_from(byte).unwrap_or(u16::MAX),
        bit,
    }
}

impl XcopyError {
    /// The sense data of the CHECK CONDITION that reports this error.
    pub fn sense(&self) -> Sense {
        let illegal = |a: Asc| Sense::new(key::ILLEGAL_REQUEST, a);
        match *self {
            XcopyError::ParamListLength => illegal(Asc::PARAMETER_LIST_LENGTH_ERROR),
            XcopyError::TooManyCscds => illegal(asc::TOO_MANY_TARGET_DESCRIPTORS),
            XcopyError::TooManySegments => illegal(asc::TOO_MANY_SEGMENT_DESCRIPTORS),
            XcopyError::UnsupportedCscd { offset, .. } => {
                illegal(asc::UNSUPPORTED_TARGET_DESCRIPTOR_TYPE_CODE)
                    .with_field_pointer(pointer(offset, None))
            }
            XcopyError::UnsupportedSegment { offset, .. } => {
                illegal(asc::UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE_CODE)
                    .with_field_pointer(pointer(offset, None))
            }
            XcopyError::InlineDataLengthExceeded => {
                illegal(asc::INLINE_DATA_LENGTH_EXCEEDED).with_field_pointer(pointer(12, None))
            }
            XcopyError::InvalidField { byte, bit } => {
                illegal(Asc::INVALID_FIELD_IN_PARAMETER_LIST).with_field_pointer(pointer(byte, bit))
            }
            XcopyError::OperationInProgress => illegal(asc::OPERATION_IN_PROGRESS),
            // SPC-4 §4.5.2.4.5: the segment pointer (SD = 0, relative to the start
            // of the parameter list) has the field pointer's layout.
            XcopyError::Unreachable { offset } => {
                Sense::new(KEY_COPY_ABORTED, asc::COPY_TARGET_DEVICE_NOT_REACHABLE)
                    .with_field_pointer(pointer(offset, None))
            }
            XcopyError::SegmentFailed { offset } => {
                Sense::new(KEY_COPY_ABORTED, Asc::NO_ADDITIONAL_SENSE)
                    .with_field_pointer(pointer(offset, None))
            }
            XcopyError::Target(sense) => sense,
            // Only recorded for COPY STATUS; the command ends with the status.
            XcopyError::ReservationConflict => Sense::new(key::NO_SENSE, Asc::NO_ADDITIONAL_SENSE),
        }
    }
}

/// LIST ID USAGE (SPC-4 §6.4.3, Table 98).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListIdUsage {
    /// 00b: the list identifier is valid; held data is kept (we never have any).
    Hold,
    /// 10b: the list identifier is valid; no held data is kept.
    Discard,
    /// 11b: no list identifier (it must be zero); no results are kept.
    None,
}

/// A designation descriptor (SPC-4 §7.8.6.1) as an E4h descriptor carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Designator {
    /// CODE SET (bits 3..0 of byte 0).
    pub code_set: u8,
    /// ASSOCIATION (bits 5..4 of byte 1): 00b is the logical unit.
    pub association: u8,
    /// DESIGNATOR TYPE (bits 3..0 of byte 1): 3 is NAA.
    pub designator_type: u8,
    /// The DESIGNATOR bytes.
    pub id: Vec<u8>,
}

/// One E4h identification CSCD descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cscd {
    /// Byte offset of the descriptor in the parameter list (for sense pointers).
    pub offset: usize,
    /// NUL: the descriptor names no device (we cannot copy to or from it).
    pub nul: bool,
    /// The logical unit it names.
    pub designator: Designator,
    /// DISK BLOCK LENGTH: must be the volume's block size.
    pub block_len: u32,
}

/// One 02h block-to-block segment descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Byte offset of the descriptor in the parameter list (for sense pointers).
    pub offset: usize,
    /// DC: NUMBER OF BLOCKS counts destination blocks (else source blocks).
    pub dc: bool,
    /// SOURCE CSCD DESCRIPTOR INDEX.
    pub src: u16,
    /// DESTINATION CSCD DESCRIPTOR INDEX.
    pub dst: u16,
    /// BLOCK DEVICE NUMBER OF BLOCKS.
    pub blocks: u16,
    /// SOURCE BLOCK DEVICE LOGICAL BLOCK ADDRESS.
    pub src_lba: u64,
    /// DESTINATION BLOCK DEVICE LOGICAL BLOCK ADDRESS.
    pub dst_lba: u64,
}

/// A decoded EXTENDED COPY parameter list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamList {
    /// LIST IDENTIFIER.
    pub list_id: u8,
    /// LIST ID USAGE.
    pub usage: ListIdUsage,
    /// The CSCD descriptors, in order (segments name them by index).
    pub cscds: Vec<Cscd>,
    /// The segment descriptors, in the order they run.
    pub segments: Vec<Segment>,
}

impl ParamList {
    /// The list identifier RECEIVE COPY RESULTS can ask about, if any.
    pub fn tracked_id(&self) -> Option<u8> {
        (self.usage != ListIdUsage::None).then_some(self.list_id)
    }
}

fn be16(b: &[u8], i: usize) -> usize {
    match b.get(i..i + 2) {
        Some(s) => usize::from(u16::from_be_bytes([s[0], s[1]])),
        None => 0,
    }
}

fn be32(b: &[u8], i: usize) -> u64 {
    match b.get(i..i + 4) {
        Some(s) => u64::from(u32::from_be_bytes([s[0], s[1], s[2], s[3]])),
        None => 0,
    }
}

fn be64(b: &[u8], i: usize) -> u64 {
    match b.get(i..i + 8) {
        Some(s) => {
            let mut a = [0u8; 8];
            a.copy_from_slice(s);
            u64::from_be_bytes(a)
        }
        None => 0,
    }
}

/// Decodes an EXTENDED COPY(LID1) parameter list (SPC-4 §6.4.3): `data` is what the
/// initiator sent, `param_len` the CDB's PARAMETER LIST LENGTH. `Ok(None)`: the
/// length is 0, nothing to do (not an error, SPC-4 §6.4.1). Checks, in order: the
/// header fits; LIST ID USAGE; the descriptor lists against MAXIMUM DESCRIPTOR LIST
/// LENGTH; the inline data against its limit (0); every length against the
/// parameter list; then each CSCD descriptor (count, type, fields) and each segment
/// descriptor (count, type, length).
pub fn parse_param_list(data: &[u8], param_len: u32) -> Result<Option<ParamList>, XcopyError> {
    if param_len == 0 {
        return Ok(None);
    }
    let len = data.len().min(param_len as usize);
    let data = &data[..len];
    if data.len() < HEADER_LEN {
        return Err(XcopyError::ParamListLength);
    }
    let list_id = data[0];
    let usage = match (data[1] >> 3) & 0x03 {
        0b00 => ListIdUsage::Hold,
        0b10 => ListIdUsage::Discard,
        0b11 => ListIdUsage::None,
        _ => {
            return Err(XcopyError::InvalidField {
                byte: 1,
                bit: Some(4),
            })
        }
    };
    if usage == ListIdUsage::None && list_id != 0 {
        return Err(XcopyError::InvalidField { byte: 0, bit: None });
    }
    let cscd_len = be16(data, 2) as u64;
    let seg_len = be32(data, 8);
    let inline_len = be32(data, 12);
    if cscd_len + seg_len > u64::from(MAX_DESCRIPTOR_LIST_LEN) {
        return Err(XcopyError::ParamListLength);
    }
    if inline_len > 0 {
        return Err(XcopyError::InlineDataLengthExceeded);
    }
    if HEADER_LEN as u64 + cscd_len + seg_len + inline_len > data.len() as u64 {
        return Err(XcopyError::ParamListLength);
    }
    // Both fit in the data now, so these conversions and slices are in bounds.
    let cscd_end = HEADER_LEN + cscd_len as usize;
    let seg_end = cscd_end + seg_len as usize;
    let cscds = parse_cscds(&data[HEADER_LEN..cscd_end], HEADER_LEN)?;
    let segments = parse_segments(&data[cscd_end..seg_end], cscd_end)?;
    Ok(Some(ParamList {
        list_id,
        usage,
        cscds,
        segments,
    }))
}

/// The CSCD descriptor list; `base` is its offset in the parameter list.
fn parse_cscds(list: &[u8], base: usize) -> Result<Vec<Cscd>, XcopyError> {
    let mut cscds = Vec::new();
    let mut off = 0;
    while off < list.len() {
        let at = base + off;
        if cscds.len() >= usize::from(MAX_CSCD_DESCRIPTORS) {
            return Err(XcopyError::TooManyCscds);
        }
        let code = list[off];
        if code != CSCD_IDENTIFICATION {
            return Err(XcopyError::UnsupportedCscd { code, offset: at });
        }
        let Some(d) = list.get(off..off + CSCD_DESC_LEN) else {
            // The list ends inside a descriptor: its length is wrong.
            return Err(XcopyError::InvalidField { byte: 2, bit: None });
        };
        // Bits 7..6 (SPC-3's LU ID TYPE) are ignored: SPC-4, which we claim, made
        // them obsolete (libiscsi ValidTgtDescr expects GOOD from an SPC-4 device).
        if d[1] & 0x1f != 0 {
            // PERIPHERAL DEVICE TYPE: our logical units are all block devices.
            return Err(XcopyError::InvalidField {
                byte: at + 1,
                bit: Some(4),
            });
        }
        let id_len = usize::from(d[7]);
        if id_len > MAX_CSCD_DESIGNATOR_LEN {
            return Err(XcopyError::InvalidField {
                byte: at + 7,
                bit: None,
            });
        }
        cscds.push(Cscd {
            offset: at,
            nul: d[1] & 0x20 != 0,
            designator: Designator {
                code_set: d[4] & 0x0f,
                association: (d[5] >> 4) & 0x03,
                designator_type: d[5] & 0x0f,
                id: d[8..8 + id_len].to_vec(),
            },
            block_len: u32::from_be_bytes([0, d[29], d[30], d[31]]),
        });
        off += CSCD_DESC_LEN;
    }
    Ok(cscds)
}

/// The segment descriptor list; `base` is its offset in the parameter list.
fn parse_segments(list: &[u8], base: usize) -> Result<Vec<Segment>, XcopyError> {
    /// SEGMENT DESCRIPTOR LIST LENGTH, for pointers at a list that ends mid-descriptor.
    const SEG_LIST_LEN_FIELD: usize = 8;
    let mut segments = Vec::new();
    let mut off = 0;
    while off < list.len() {
        let at = base + off;
        if segments.len() >= usize::from(MAX_SEGMENT_DESCRIPTORS) {
            return Err(XcopyError::TooManySegments);
        }
        let code = list[off];
        if code != SEG_BLOCK_TO_BLOCK {
            return Err(XcopyError::UnsupportedSegment { code, offset: at });
        }
        if list.len() - off < 4 {
            return Err(XcopyError::InvalidField {
                byte: SEG_LIST_LEN_FIELD,
                bit: None,
            });
        }
        // DESCRIPTOR LENGTH counts the bytes after the first four.
        if be16(list, off + 2) != B2B_DESC_LEN - 4 {
            return Err(XcopyError::InvalidField {
                byte: at + 2,
                bit: None,
            });
        }
        let Some(d) = list.get(off..off + B2B_DESC_LEN) else {
            return Err(XcopyError::InvalidField {
                byte: SEG_LIST_LEN_FIELD,
                bit: None,
            });
        };
        segments.push(Segment {
            offset: at,
            dc: d[1] & 0x02 != 0,
            src: be16(d, 4) as u16,
            dst: be16(d, 6) as u16,
            blocks: be16(d, 10) as u16,
            src_lba: be64(d, 12),
            dst_lba: be64(d, 20),
        });
        off += B2B_DESC_LEN;
    }
    Ok(segments)
}

/// What the copy needs to know of a resolved copy target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetGeometry {
    /// Logical block size in bytes.
    pub block_size: u32,
    /// Capacity in logical blocks.
    pub num_blocks: u64,
}

/// One segment ready to run: byte ranges on resolved targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// Offset of the segment descriptor (for sense pointers).
    pub offset: usize,
    /// CSCD index of the source.
    pub src: usize,
    /// CSCD index of the destination.
    pub dst: usize,
    /// First source block.
    pub src_lba: u64,
    /// First destination block.
    pub dst_lba: u64,
    /// Bytes to move.
    pub bytes: u64,
}

/// Checks every segment of `list` against `targets` (the resolution of each CSCD
/// descriptor: `None` when it names nothing of ours) before any block moves: CSCD
/// indexes, NUL descriptors and unresolved targets (COPY ABORTED, 0D/02), DISK BLOCK
/// LENGTH against the volume, whole blocks at both ends, [`MAX_SEGMENT_BYTES`] and
/// [`MAX_COPY_BYTES`], then capacity (COPY ABORTED).
pub fn plan(list: &ParamList, targets: &[Option<TargetGeometry>]) -> Result<Vec<Step>, XcopyError> {
    let mut steps = Vec::with_capacity(list.segments.len());
    let mut total: u64 = 0;
    for seg in &list.segments {
        let unreachable = XcopyError::Unreachable { offset: seg.offset };
        let resolve = |index: u16| -> Result<(usize, TargetGeometry), XcopyError> {
            let i = usize::from(index);
            let cscd = list.cscds.get(i).ok_or(unreachable.clone())?;
            if cscd.nul {
                return Err(unreachable.clone());
            }
            let geometry = targets
                .get(i)
                .copied()
                .flatten()
                .ok_or(unreachable.clone())?;
            if cscd.block_len != geometry.block_size {
                return Err(XcopyError::InvalidField {
                    byte: cscd.offset + 29,
                    bit: None,
                });
            }
            Ok((i, geometry))
        };
        let (src, s) = resolve(seg.src)?;
        let (dst, d) = resolve(seg.dst)?;
        let unit = if seg.dc { d.block_size } else { s.block_size };
        let bytes = u64::from(seg.blocks) * u64::from(unit);
        let blocks_field = XcopyError::InvalidField {
            byte: seg.offset + 10,
            bit: None,
        };
        if bytes % u64::from(s.block_size) != 0 || bytes % u64::from(d.block_size) != 0 {
            return Err(blocks_field);
        }
        if bytes > MAX_SEGMENT_BYTES {
            return Err(blocks_field);
        }
        total += bytes;
        if total > MAX_COPY_BYTES {
            return Err(blocks_field);
        }
        let fits = |lba: u64, g: TargetGeometry| {
            lba.checked_add(bytes / u64::from(g.block_size))
                .is_some_and(|end| end <= g.num_blocks)
        };
        if !fits(seg.src_lba, s) || !fits(seg.dst_lba, d) {
            return Err(XcopyError::SegmentFailed { offset: seg.offset });
        }
        steps.push(Step {
            offset: seg.offset,
            src,
            dst,
            src_lba: seg.src_lba,
            dst_lba: seg.dst_lba,
            bytes,
        });
    }
    Ok(steps)
}

/// The chunks of a step, as (offset from the step's start, length) in bytes, each
/// at most [`COPY_CHUNK_BYTES`]. When source and destination are the same volume
/// and the destination overlaps the source further on, the chunks run backwards so
/// that no source block is overwritten before it is read (as memmove).
pub fn chunks(step: &Step, same_volume: bool, block_size: u32) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < step.bytes {
        let len = (step.bytes - at).min(COPY_CHUNK_BYTES);
        out.push((at, len));
        at += len;
    }
    let src = step.src_lba.saturating_mul(u64::from(block_size));
    let dst = step.dst_lba.saturating_mul(u64::from(block_size));
    if same_volume && dst > src && dst < src.saturating_add(step.bytes) {
        out.reverse();
    }
    out
}

/// OPERATING PARAMETERS data (SPC-4 §6.18.4, Table 153): our limits, and the
/// descriptor types we implement (02h, E4h).
pub fn operating_parameters() -> Vec<u8> {
    /// SNLID: LIST ID USAGE 11b (no list identifier) is supported.
    const SNLID: u8 = 0x01;
    const IMPLEMENTED: [u8; 2] = IMPLEMENTED_DESCRIPTORS;
    let mut d = vec![0u8; 44];
    d[4] = SNLID;
    d[8..10].copy_from_slice(&MAX_CSCD_DESCRIPTORS.to_be_bytes());
    d[10..12].copy_from_slice(&MAX_SEGMENT_DESCRIPTORS.to_be_bytes());
    d[12..16].copy_from_slice(&MAX_DESCRIPTOR_LIST_LEN.to_be_bytes());
    d[16..20].copy_from_slice(&(MAX_SEGMENT_BYTES as u32).to_be_bytes());
    // MAXIMUM INLINE DATA LENGTH, HELD DATA LIMIT, MAXIMUM STREAM DEVICE TRANSFER
    // SIZE: 0, none supported.
    d[34..36].copy_from_slice(&u16::from(MAX_CONCURRENT_COPIES).to_be_bytes());
    d[36] = MAX_CONCURRENT_COPIES;
    d[37] = DATA_SEGMENT_GRANULARITY_LOG2;
    d[43] = IMPLEMENTED.len() as u8;
    d.extend_from_slice(&IMPLEMENTED);
    let available = (d.len() - 4) as u32;
    d[0..4].copy_from_slice(&available.to_be_bytes());
    d
}

/// Third-party copy descriptor types of the Third-party Copy VPD page (SPC-4
/// §7.8.17).
pub mod tpc_descriptor {
    /// Supported Commands: the third-party copy commands and service actions.
    pub const SUPPORTED_COMMANDS: u16 = 0x0001;
    /// Parameter Data: the EXTENDED COPY(LID1) parameter list limits.
    pub const PARAMETER_DATA: u16 = 0x0004;
    /// Supported Descriptors: the CSCD and segment descriptor type codes.
    pub const SUPPORTED_DESCRIPTORS: u16 = 0x0008;
    /// Supported CSCD Descriptor IDs: the CSCD descriptor IDs above 07FFh.
    pub const SUPPORTED_CSCD_DESCRIPTOR_IDS: u16 = 0x000c;
    /// General Copy Operations: concurrency, segment length and granularities.
    pub const GENERAL_COPY_OPERATIONS: u16 = 0x8001;
}

/// The descriptor type codes we implement: segment 02h (block to block), CSCD E4h
/// (identification descriptor); reported by OPERATING PARAMETERS and VPD 0x8F.
const IMPLEMENTED_DESCRIPTORS: [u8; 2] = [SEG_BLOCK_TO_BLOCK, CSCD_IDENTIFICATION];
/// DATA SEGMENT GRANULARITY (log2 bytes): one 512-byte block.
const DATA_SEGMENT_GRANULARITY_LOG2: u8 = 9;

/// Appends one third-party copy descriptor (SPC-4 §7.8.17: type, length, then
/// `body`, padded with zeros to a multiple of four bytes).
fn tpc_descriptor(out: &mut Vec<u8>, kind: u16, body: &[u8]) {
    let padded = body.len().div_ceil(4) * 4;
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&(padded as u16).to_be_bytes());
    out.extend_from_slice(body);
    out.resize(out.len() + padded - body.len(), 0);
}

/// The body of the Third-party Copy VPD page (SPC-4 §7.8.17, page 8Fh): what our
/// EXTENDED COPY(LID1) copy manager does, in the descriptors SPC-4 requires of one
/// that supports it (Supported Commands, Parameter Data, Supported Descriptors,
/// Supported CSCD Descriptor IDs, General Copy Operations). The limits are the
/// ones OPERATING PARAMETERS reports.
pub fn third_party_copy_vpd() -> Vec<u8> {
    let mut d = Vec::new();
    // Supported Commands (SPC-4 §7.8.17): a list of command support descriptors
    // (OPERATION CODE, SERVICE ACTION LIST LENGTH, SERVICE ACTIONs) after its length.
    let commands: [(u8, &[u8]); 2] = [
        (EXTENDED_COPY, &[SA_EXTENDED_COPY_LID1]),
        (
            RECEIVE_COPY_RESULTS,
            &[
                sa::COPY_STATUS,
                sa::RECEIVE_DATA,
                sa::OPERATING_PARAMETERS,
                sa::FAILED_SEGMENT_DETAILS,
            ],
        ),
    ];
    let mut list = Vec::new();
    for (opcode, actions) in commands {
        list.push(opcode);
        list.push(actions.len() as u8);
        list.extend_from_slice(actions);
    }
    let mut body = vec![list.len() as u8];
    body.extend_from_slice(&list);
    tpc_descriptor(&mut d, tpc_descriptor::SUPPORTED_COMMANDS, &body);
    // Parameter Data (SPC-4 §7.8.17): 4 reserved bytes, MAXIMUM CSCD DESCRIPTOR
    // COUNT, MAXIMUM SEGMENT DESCRIPTOR COUNT, MAXIMUM DESCRIPTOR LIST LENGTH,
    // MAXIMUM INLINE DATA LENGTH (0: no inline data), reserved to 28 bytes.
    let mut body = vec![0u8; 28];
    body[4..6].copy_from_slice(&MAX_CSCD_DESCRIPTORS.to_be_bytes());
    body[6..8].copy_from_slice(&MAX_SEGMENT_DESCRIPTORS.to_be_bytes());
    body[8..12].copy_from_slice(&MAX_DESCRIPTOR_LIST_LEN.to_be_bytes());
    tpc_descriptor(&mut d, tpc_descriptor::PARAMETER_DATA, &body);
    // Supported Descriptors (SPC-4 §7.8.17): list length, then the type codes.
    let mut body = vec![IMPLEMENTED_DESCRIPTORS.len() as u8];
    body.extend_from_slice(&IMPLEMENTED_DESCRIPTORS);
    tpc_descriptor(&mut d, tpc_descriptor::SUPPORTED_DESCRIPTORS, &body);
    // Supported CSCD Descriptor IDs (SPC-4 §7.8.17): none above 07FFh (we take
    // CSCD descriptors by their index in the list only), so the list is empty.
    tpc_descriptor(
        &mut d,
        tpc_descriptor::SUPPORTED_CSCD_DESCRIPTOR_IDS,
        &[0, 0],
    );
    // General Copy Operations (SPC-4 §7.8.17): TOTAL CONCURRENT COPIES, MAXIMUM
    // IDENTIFIED CONCURRENT COPIES, MAXIMUM SEGMENT LENGTH, DATA SEGMENT
    // GRANULARITY and INLINE DATA GRANULARITY (log2), reserved to 32 bytes.
    let mut body = vec![0u8; 32];
    body[0..4].copy_from_slice(&u32::from(MAX_CONCURRENT_COPIES).to_be_bytes());
    body[4..8].copy_from_slice(&u32::from(MAX_CONCURRENT_COPIES).to_be_bytes());
    body[8..12].copy_from_slice(&(MAX_SEGMENT_BYTES as u32).to_be_bytes());
    body[12] = DATA_SEGMENT_GRANULARITY_LOG2;
    body[13] = DATA_SEGMENT_GRANULARITY_LOG2;
    tpc_descriptor(&mut d, tpc_descriptor::GENERAL_COPY_OPERATIONS, &body);
    d
}

/// Where a copy stands, for COPY STATUS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyState {
    /// Still running.
    InProgress,
    /// Completed with GOOD status.
    Done,
    /// Completed with CHECK CONDITION and this sense.
    Failed(Sense),
}

/// What RECEIVE COPY RESULTS reports about one copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyRecord {
    pub state: CopyState,
    /// Segments completed.
    pub segments_processed: u16,
    /// Bytes written to copy targets.
    pub bytes: u64,
}

/// Copy results per I_T nexus (by initiator port) and list identifier (SPC-4 §6.18:
/// list identifiers are unique per I_T nexus). At most [`MAX_RECORD_NEXUSES`]
/// nexuses; at most 256 list identifiers each, by construction.
#[derive(Debug, Default)]
pub struct CopyRecords {
    nexuses: HashMap<Arc<str>, HashMap<u8, CopyRecord>>,
    /// Nexuses in the order they first kept a result, oldest first.
    order: VecDeque<Arc<str>>,
}

impl CopyRecords {
    /// Starts tracking a copy; OPERATION IN PROGRESS if the nexus already runs one
    /// with this list identifier. A finished one with the same identifier is replaced.
    pub fn begin(&mut self, port: &Arc<str>, list_id: u8) -> Result<(), XcopyError> {
        if !self.nexuses.contains_key(&**port) {
            while self.nexuses.len() >= MAX_RECORD_NEXUSES {
                let Some(old) = self.order.pop_front() else {
                    break;
                };
                self.nexuses.remove(&old);
            }
            self.nexuses.insert(port.clone(), HashMap::new());
            self.order.push_back(port.clone());
        }
        let ids = self.nexuses.entry(port.clone()).or_default();
        if ids
            .get(&list_id)
            .is_some_and(|r| r.state == CopyState::InProgress)
        {
            return Err(XcopyError::OperationInProgress);
        }
        ids.insert(
            list_id,
            CopyRecord {
                state: CopyState::InProgress,
                segments_processed: 0,
                bytes: 0,
            },
        );
        Ok(())
    }

    fn get_mut(&mut self, port: &str, list_id: u8) -> Option<&mut CopyRecord> {
        self.nexuses.get_mut(port)?.get_mut(&list_id)
    }

    /// Records progress of a running copy.
    pub fn progress(&mut self, port: &str, list_id: u8, segments_processed: u16, bytes: u64) {
        if let Some(r) = self.get_mut(port, list_id) {
            r.segments_processed = segments_processed;
            r.bytes = bytes;
        }
    }

    /// Records the end of a copy.
    pub fn finish(&mut self, port: &str, list_id: u8, state: CopyState) {
        if let Some(r) = self.get_mut(port, list_id) {
            r.state = state;
        }
    }

    /// Forgets a nexus's results (nexus loss).
    pub fn forget(&mut self, port: &str) {
        self.nexuses.remove(port);
        self.order.retain(|p| &**p != port);
    }

    /// Removes a finished record after its results went out (SPC-4 §6.18.2: the
    /// copy manager discards the status of a completed copy once reported).
    fn discard_if_finished(&mut self, port: &str, list_id: u8) {
        if let Some(ids) = self.nexuses.get_mut(port) {
            if ids
                .get(&list_id)
                .is_some_and(|r| r.state != CopyState::InProgress)
            {
                ids.remove(&list_id);
            }
        }
    }

    /// COPY STATUS data (SPC-4 §6.18.2, Table 149), `None` for a list identifier we
    /// know nothing of (INVALID FIELD IN CDB).
    pub fn copy_status(&mut self, port: &str, list_id: u8) -> Option<Vec<u8>> {
        let r = self.nexuses.get(port)?.get(&list_id)?.clone();
        let mut d = vec![0u8; 12];
        d[0..4].copy_from_slice(&8u32.to_be_bytes());
        // COPY MANAGER STATUS (HDD = 0: no held data was discarded).
        d[4] = match r.state {
            CopyState::InProgress => 0x00,
            CopyState::Done => 0x01,
            CopyState::Failed(_) => 0x02,
        };
        d[5..7].copy_from_slice(&r.segments_processed.to_be_bytes());
        // TRANSFER COUNT UNITS: the smallest power of 2^10 bytes whose count fits.
        let mut units = 0u8;
        let mut count = r.bytes;
        while count > u64::from(u32::MAX) {
            count >>= 10;
            units += 1;
        }
        d[7] = units;
        d[8..12].copy_from_slice(&(count as u32).to_be_bytes());
        self.discard_if_finished(port, list_id);
        Some(d)
    }

    /// RECEIVE DATA (SPC-4 §6.18.3): we never hold data, so a known list identifier
    /// returns an empty list.
    pub fn receive_data(&self, port: &str, list_id: u8) -> Option<Vec<u8>> {
        self.nexuses.get(port)?.get(&list_id)?;
        Some(vec![0u8; 4])
    }

    /// FAILED SEGMENT DETAILS (SPC-4 §6.18.5, Table 154) of a copy that ended with
    /// CHECK CONDITION, then discarded; `None` when there is no such failed copy.
    pub fn failed_segment_details(&mut self, port: &str, list_id: u8) -> Option<Vec<u8>> {
        /// COPY COMMAND STATUS: the EXTENDED COPY ended with CHECK CONDITION.
        const CHECK_CONDITION: u8 = 0x02;
        let CopyState::Failed(sense) = &self.nexuses.get(port)?.get(&list_id)?.state else {
            return None;
        };
        let sense = sense.to_fixed();
        let mut d = vec![0u8; 60];
        d[56] = CHECK_CONDITION;
        d[58..60].copy_from_slice(&(sense.len() as u16).to_be_bytes());
        d.extend_from_slice(&sense);
        let available = (d.len() - 4) as u32;
        d[0..4].copy_from_slice(&available.to_be_bytes());
        self.discard_if_finished(port, list_id);
        Some(d)
    }
}

/// Marks a tracked copy failed if it is dropped before it finished (the task was
/// aborted), so COPY STATUS never reports a dead copy as in progress.
#[derive(Debug)]
pub struct RecordGuard<'a> {
    records: &'a Mutex<CopyRecords>,
    port: Arc<str>,
    list_id: Option<u8>,
}

impl<'a> RecordGuard<'a> {
    /// Starts tracking `list_id` (if any) for `port`.
    pub fn begin(
        records: &'a Mutex<CopyRecords>,
        port: &Arc<str>,
        list_id: Option<u8>,
    ) -> Result<RecordGuard<'a>, XcopyError> {
        if let Some(id) = list_id {
            records.lock().begin(port, id)?;
        }
        Ok(RecordGuard {
            records,
            port: port.clone(),
            list_id,
        })
    }

    /// Records progress.
    pub fn progress(&self, segments_processed: u16, bytes: u64) {
        if let Some(id) = self.list_id {
            self.records
                .lock()
                .progress(&self.port, id, segments_processed, bytes);
        }
    }

    /// Records the outcome.
    pub fn finish(mut self, state: CopyState) {
        if let Some(id) = self.list_id.take() {
            self.records.lock().finish(&self.port, id, state);
        }
    }
}

impl Drop for RecordGuard<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.list_id.take() {
            let aborted = Sense::new(key::ABORTED_COMMAND, Asc::NO_ADDITIONAL_SENSE);
            self.records
                .lock()
                .finish(&self.port, id, CopyState::Failed(aborted));
        }
    }
}

/// The copy manager's view of this node's volumes: every [`Device`] registered here
/// can be named by a CSCD descriptor of an EXTENDED COPY sent to any other. Holds
/// the devices weakly; each device holds the manager (see
/// [`Device::set_copy_manager`]).
#[derive(Debug, Default)]
pub struct CopyManager {
    devices: RwLock<Vec<Weak<Device>>>,
}

impl CopyManager {
    /// An empty registry.
    pub fn new() -> Arc<CopyManager> {
        Arc::new(CopyManager::default())
    }

    /// Makes `device` reachable as a copy target and lets it reach the others.
    pub fn register(self: &Arc<Self>, device: &Arc<Device>) {
        device.set_copy_manager(self.clone());
        let mut devices = self.devices.write();
        devices.retain(|d| d.strong_count() > 0);
        devices.push(Arc::downgrade(device));
    }

    /// The registered device whose VPD 0x83 page has `designator` for its logical
    /// unit.
    pub async fn find(&self, designator: &Designator) -> Option<Arc<Device>> {
        let devices: Vec<Arc<Device>> = self
            .devices
            .read()
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        for d in devices {
            if d.has_designator(designator).await {
                return Some(d);
            }
        }
        None
    }
}

/// The logical-unit designators of a VPD 0x83 page (SPC-4 §7.8.6): what a CSCD
/// descriptor may name. Stops at the first malformed descriptor.
pub fn lu_designators(page: &[u8]) -> Vec<Designator> {
    let mut out = Vec::new();
    let end = (4 + be16(page, 2)).min(page.len());
    let mut off = 4;
    while off + 4 <= end {
        let h = &page[off..off + 4];
        let len = usize::from(h[3]);
        let Some(id) = page.get(off + 4..off + 4 + len) else {
            break;
        };
        let association = (h[1] >> 4) & 0x03;
        if association == 0 {
            out.push(Designator {
                code_set: h[0] & 0x0f,
                association,
                designator_type: h[1] & 0x0f,
                id: id.to_vec(),
            });
        }
        off += 4 + len;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NAA: [u8; 16] = [
        0x60, 0, 0, 0, 0x0a, 0xbc, 0xde, 0xf0, 1, 2, 3, 4, 5, 6, 7, 8,
    ];

    /// An E4h descriptor naming an NAA designator, as libiscsi builds it.
    fn e4(id: &[u8], flags: u8, block_len: u32) -> Vec<u8> {
        let mut d = vec![0u8; 32];
        d[0] = CSCD_IDENTIFICATION;
        d[1] = flags;
        d[4] = 0x01; // binary
        d[5] = 0x03; // LU, NAA
        d[7] = id.len() as u8;
        d[8..8 + id.len()].copy_from_slice(id);
        d[29..32].copy_from_slice(&block_len.to_be_bytes()[1..]);
        d
    }

    fn b2b(src: u16, dst: u16, blocks: u16, src_lba: u64, dst_lba: u64) -> Vec<u8> {
        let mut d = vec![0u8; 28];
        d[0] = SEG_BLOCK_TO_BLOCK;
        d[2..4].copy_from_slice(&24u16.to_be_bytes());
        d[4..6].copy_from_slice(&src.to_be_bytes());
        d[6..8].copy_from_slice(&dst.to_be_bytes());
        d[10..12].copy_from_slice(&blocks.to_be_bytes());
        d[12..20].copy_from_slice(&src_lba.to_be_bytes());
        d[20..28].copy_from_slice(&dst_lba.to_be_bytes());
        d
    }

    fn list(list_id: u8, usage: u8, cscds: &[Vec<u8>], segs: &[Vec<u8>]) -> Vec<u8> {
        let c: Vec<u8> = cscds.concat();
        let s: Vec<u8> = segs.concat();
        let mut d = vec![0u8; 16];
        d[0] = list_id;
        d[1] = usage << 3;
        d[2..4].copy_from_slice(&(c.len() as u16).to_be_bytes());
        d[8..12].copy_from_slice(&(s.len() as u32).to_be_bytes());
        d.extend_from_slice(&c);
        d.extend_from_slice(&s);
        d
    }

    fn parse(d: &[u8]) -> Result<Option<ParamList>, XcopyError> {
        parse_param_list(d, d.len() as u32)
    }

    const GEOMETRY: TargetGeometry = TargetGeometry {
        block_size: 512,
        num_blocks: 8192,
    };

    #[test]
    fn libiscsi_simple_list_parses_into_one_block_to_block_segment() {
        let d = list(1, 2, &[e4(&NAA, 0, 512)], &[b2b(0, 0, 2048, 0, 6144)]);
        let p = parse(&d).unwrap().unwrap();
        assert_eq!(p.tracked_id(), Some(1));
        assert_eq!(p.cscds.len(), 1);
        assert_eq!(p.cscds[0].designator.id, NAA);
        assert_eq!(p.cscds[0].designator.designator_type, 3);
        assert_eq!(p.cscds[0].block_len, 512);
        assert_eq!(
            p.segments,
            vec![Segment {
                offset: 48,
                dc: false,
                src: 0,
                dst: 0,
                blocks: 2048,
                src_lba: 0,
                dst_lba: 6144
            }]
        );
        let steps = plan(&p, &[Some(GEOMETRY)]).unwrap();
        assert_eq!(steps[0].bytes, 2048 * 512);
    }

    #[test]
    fn zero_parameter_list_length_is_nothing_to_do() {
        assert_eq!(parse_param_list(&[], 0), Ok(None));
        assert_eq!(parse_param_list(&[1, 2, 3], 0), Ok(None));
    }

    #[test]
    fn truncated_lists_are_parameter_list_length_errors() {
        let d = list(1, 0, &[e4(&NAA, 0, 512)], &[b2b(0, 0, 2048, 0, 6144)]);
        for cut in [1, 15, 16 + 31, d.len() - 1] {
            assert_eq!(
                parse_param_list(&d, cut as u32),
                Err(XcopyError::ParamListLength),
                "cut at {cut}"
            );
        }
        // Fewer bytes arrived than PARAMETER LIST LENGTH says.
        assert_eq!(
            parse_param_list(&d[..40], d.len() as u32),
            Err(XcopyError::ParamListLength)
        );
    }

    #[test]
    fn one_descriptor_too_many_of_each_kind_is_refused_and_oversize_lists_first() {
        let cscds: Vec<Vec<u8>> = (0..=MAX_CSCD_DESCRIPTORS)
            .map(|_| e4(&NAA, 0, 512))
            .collect();
        let segs: Vec<Vec<u8>> = (0..=MAX_SEGMENT_DESCRIPTORS)
            .map(|_| b2b(0, 0, 1, 0, 1))
            .collect();
        let one_seg = std::slice::from_ref(&segs[0]);
        assert_eq!(
            parse(&list(1, 0, &cscds, one_seg)),
            Err(XcopyError::TooManyCscds)
        );
        assert_eq!(
            parse(&list(2, 0, &cscds[..1], &segs)),
            Err(XcopyError::TooManySegments)
        );
        assert_eq!(
            parse(&list(3, 0, &cscds, &segs)),
            Err(XcopyError::ParamListLength)
        );
        // Exactly the limits is fine.
        let max = list(
            4,
            0,
            &cscds[..MAX_CSCD_DESCRIPTORS as usize],
            &segs[..MAX_SEGMENT_DESCRIPTORS as usize],
        );
        assert_eq!(max.len() - 16, MAX_DESCRIPTOR_LIST_LEN as usize);
        assert!(parse(&max).unwrap().is_some());
    }

    #[test]
    fn unsupported_descriptor_types_name_their_offset() {
        let mut fc = e4(&NAA, 0, 512);
        fc[0] = 0xe0;
        assert_eq!(
            parse(&list(1, 0, &[fc], &[b2b(0, 0, 1, 0, 1)])),
            Err(XcopyError::UnsupportedCscd {
                code: 0xe0,
                offset: 16
            })
        );
        let mut stream = vec![0u8; 20];
        stream[0] = 0x03;
        stream[3] = 16;
        let e = parse(&list(1, 0, &[e4(&NAA, 0, 512)], &[stream])).unwrap_err();
        assert_eq!(
            e,
            XcopyError::UnsupportedSegment {
                code: 0x03,
                offset: 48
            }
        );
        let s = e.sense();
        assert_eq!((s.key, s.asc), (key::ILLEGAL_REQUEST, Asc::new(0x26, 0x09)));
    }

    #[test]
    fn obsolete_lu_id_type_is_ignored_and_nul_is_unreachable() {
        let p = parse(&list(1, 0, &[e4(&NAA, 0x80, 512)], &[b2b(0, 0, 1, 0, 1)]))
            .unwrap()
            .unwrap();
        assert!(plan(&p, &[Some(GEOMETRY)]).is_ok());
        // A peripheral device type other than a block device is refused.
        let e = parse(&list(1, 0, &[e4(&NAA, 0x01, 512)], &[b2b(0, 0, 1, 0, 1)])).unwrap_err();
        assert_eq!(e.sense().asc, Asc::INVALID_FIELD_IN_PARAMETER_LIST);
        let p = parse(&list(1, 0, &[e4(&NAA, 0x20, 512)], &[b2b(0, 0, 1, 0, 1)]))
            .unwrap()
            .unwrap();
        let e = plan(&p, &[Some(GEOMETRY)]).unwrap_err();
        assert_eq!(e, XcopyError::Unreachable { offset: 48 });
        let s = e.sense();
        assert_eq!(
            (s.key, s.asc),
            (KEY_COPY_ABORTED, asc::COPY_TARGET_DEVICE_NOT_REACHABLE)
        );
    }

    #[test]
    fn segments_past_the_list_or_the_capacity_abort_the_copy() {
        let p = parse(&list(1, 0, &[e4(&NAA, 0, 512)], &[b2b(0, 1, 1, 0, 1)]))
            .unwrap()
            .unwrap();
        assert_eq!(
            plan(&p, &[Some(GEOMETRY)]),
            Err(XcopyError::Unreachable { offset: 48 })
        );
        // An unresolved (foreign) volume is unreachable too.
        let p = parse(&list(1, 0, &[e4(&NAA, 0, 512)], &[b2b(0, 0, 1, 0, 1)]))
            .unwrap()
            .unwrap();
        assert_eq!(
            plan(&p, &[None]),
            Err(XcopyError::Unreachable { offset: 48 })
        );
        let p = parse(&list(
            1,
            0,
            &[e4(&NAA, 0, 512)],
            &[b2b(0, 0, 2048, 0, 8192 - 1)],
        ))
        .unwrap()
        .unwrap();
        let e = plan(&p, &[Some(GEOMETRY)]).unwrap_err();
        assert_eq!(e, XcopyError::SegmentFailed { offset: 48 });
        assert_eq!(e.sense().key, KEY_COPY_ABORTED);
        // The last block exactly fits.
        let p = parse(&list(
            1,
            0,
            &[e4(&NAA, 0, 512)],
            &[b2b(0, 0, 2048, 0, 8192 - 2048)],
        ))
        .unwrap()
        .unwrap();
        assert!(plan(&p, &[Some(GEOMETRY)]).is_ok());
    }

    #[test]
    fn block_sizes_must_match_and_dc_counts_destination_blocks() {
        let big = TargetGeometry {
            block_size: 4096,
            num_blocks: 1024,
        };
        let p = parse(&list(
            1,
            0,
            &[e4(&NAA, 0, 512), e4(&NAA, 0, 512)],
            &[b2b(0, 1, 8, 0, 0)],
        ))
        .unwrap()
        .unwrap();
        // Descriptor 1 says 512 but the volume has 4096-byte blocks.
        assert_eq!(
            plan(&p, &[Some(GEOMETRY), Some(big)]),
            Err(XcopyError::InvalidField {
                byte: 48 + 29,
                bit: None
            })
        );
        let mut seg = b2b(0, 1, 1, 0, 0);
        seg[1] = 0x02; // DC: one 4096-byte destination block
        let p = parse(&list(1, 0, &[e4(&NAA, 0, 512), e4(&NAA, 0, 4096)], &[seg]))
            .unwrap()
            .unwrap();
        let steps = plan(&p, &[Some(GEOMETRY), Some(big)]).unwrap();
        assert_eq!(steps[0].bytes, 4096);
        // Without DC: three 512-byte source blocks are not whole destination blocks.
        let p = parse(&list(
            1,
            0,
            &[e4(&NAA, 0, 512), e4(&NAA, 0, 4096)],
            &[b2b(0, 1, 3, 0, 0)],
        ))
        .unwrap()
        .unwrap();
        assert!(matches!(
            plan(&p, &[Some(GEOMETRY), Some(big)]),
            Err(XcopyError::InvalidField { .. })
        ));
    }

    #[test]
    fn copies_larger_than_the_limits_are_refused_before_any_io() {
        let huge = TargetGeometry {
            block_size: 4096,
            num_blocks: 1 << 30,
        };
        // 65535 blocks of 4 KiB is over MAX_SEGMENT_BYTES.
        let p = parse(&list(
            1,
            0,
            &[e4(&NAA, 0, 4096)],
            &[b2b(0, 0, u16::MAX, 0, 1 << 20)],
        ))
        .unwrap()
        .unwrap();
        assert!(matches!(
            plan(&p, &[Some(huge)]),
            Err(XcopyError::InvalidField { byte: 58, .. })
        ));
        // Segments within MAX_SEGMENT_BYTES adding up past MAX_COPY_BYTES.
        let per = (MAX_SEGMENT_BYTES / 4096) as u16;
        let n = (MAX_COPY_BYTES / MAX_SEGMENT_BYTES) as usize + 1;
        let segs: Vec<Vec<u8>> = (0..n)
            .map(|i| b2b(0, 0, per, 0, (i as u64 + 1) << 16))
            .collect();
        let p = parse(&list(1, 0, &[e4(&NAA, 0, 4096)], &segs))
            .unwrap()
            .unwrap();
        assert!(matches!(
            plan(&p, &[Some(huge)]),
            Err(XcopyError::InvalidField { .. })
        ));
    }

    #[test]
    fn list_id_usage_rules() {
        let c = [e4(&NAA, 0, 512)];
        let s = [b2b(0, 0, 1, 0, 1)];
        assert_eq!(
            parse(&list(0, 3, &c, &s)).unwrap().unwrap().tracked_id(),
            None
        );
        assert!(matches!(
            parse(&list(5, 3, &c, &s)),
            Err(XcopyError::InvalidField { byte: 0, .. })
        ));
        assert!(matches!(
            parse(&list(5, 1, &c, &s)),
            Err(XcopyError::InvalidField { byte: 1, .. })
        ));
        let mut d = list(5, 0, &c, &s);
        d[15] = 1; // inline data
        d.push(0);
        assert_eq!(parse(&d), Err(XcopyError::InlineDataLengthExceeded));
    }

    #[test]
    fn overlapping_copies_within_a_volume_run_backwards() {
        let step = Step {
            offset: 48,
            src: 0,
            dst: 0,
            src_lba: 0,
            dst_lba: 1,
            bytes: 3 * COPY_CHUNK_BYTES,
        };
        let c = chunks(&step, true, 512);
        assert_eq!(c.len(), 3);
        assert_eq!(c[0].0, 2 * COPY_CHUNK_BYTES);
        assert_eq!(chunks(&step, false, 512)[0].0, 0);
        let apart = Step {
            dst_lba: 1 << 20,
            ..step
        };
        assert_eq!(chunks(&apart, true, 512)[0].0, 0);
    }

    #[test]
    fn operating_parameters_report_the_named_limits() {
        let d = operating_parameters();
        assert_eq!(
            u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize,
            d.len() - 4
        );
        assert!(d.len() - 4 >= 40, "libiscsi needs at least 40");
        assert_eq!(u16::from_be_bytes([d[8], d[9]]), MAX_CSCD_DESCRIPTORS);
        assert_eq!(u16::from_be_bytes([d[10], d[11]]), MAX_SEGMENT_DESCRIPTORS);
        assert_eq!(
            u32::from_be_bytes([d[12], d[13], d[14], d[15]]),
            MAX_DESCRIPTOR_LIST_LEN
        );
        assert_eq!(
            u64::from(u32::from_be_bytes([d[16], d[17], d[18], d[19]])),
            MAX_SEGMENT_BYTES
        );
        assert_eq!(&d[43..], &[2, 0x02, 0xe4]);
    }

    #[test]
    fn copy_status_is_per_nexus_and_discarded_once_reported_complete() {
        let records = Mutex::new(CopyRecords::default());
        let a: Arc<str> = "iqn.a,i,0x1".into();
        let b: Arc<str> = "iqn.b,i,0x2".into();
        assert!(records.lock().copy_status(&a, 1).is_none());
        let g = RecordGuard::begin(&records, &a, Some(1)).unwrap();
        assert_eq!(
            RecordGuard::begin(&records, &a, Some(1)).err(),
            Some(XcopyError::OperationInProgress)
        );
        assert!(records.lock().copy_status(&b, 1).is_none(), "other nexus");
        g.progress(1, 5 << 32);
        let s = records.lock().copy_status(&a, 1).unwrap();
        assert_eq!(s[4], 0x00, "in progress");
        assert_eq!(s[7], 1, "KiB units");
        assert_eq!(u32::from_be_bytes([s[8], s[9], s[10], s[11]]), 5 << 22);
        g.finish(CopyState::Done);
        let s = records.lock().copy_status(&a, 1).unwrap();
        assert_eq!((s[4], u16::from_be_bytes([s[5], s[6]])), (0x01, 1));
        assert!(records.lock().copy_status(&a, 1).is_none(), "discarded");
        // A dropped (aborted) copy reads as failed, with details.
        drop(RecordGuard::begin(&records, &a, Some(2)).unwrap());
        let f = records.lock().failed_segment_details(&a, 2).unwrap();
        assert_eq!(f[56], 0x02);
        assert_eq!(
            Sense::parse_fixed(&f[60..]).unwrap().key,
            key::ABORTED_COMMAND
        );
        records.lock().forget(&a);
        assert!(records.lock().receive_data(&a, 2).is_none());
    }

    #[test]
    fn records_keep_a_bounded_number_of_nexuses() {
        let mut r = CopyRecords::default();
        for i in 0..=MAX_RECORD_NEXUSES {
            let p: Arc<str> = format!("iqn.x,i,0x{i}").into();
            r.begin(&p, 0).unwrap();
        }
        assert_eq!(r.nexuses.len(), MAX_RECORD_NEXUSES);
        assert!(r.receive_data("iqn.x,i,0x0", 0).is_none(), "oldest evicted");
        assert!(r
            .receive_data(&format!("iqn.x,i,0x{MAX_RECORD_NEXUSES}"), 0)
            .is_some());
    }

    #[test]
    fn lu_designators_reads_only_logical_unit_associations() {
        let mut page = vec![0x00, 0x83, 0, 0];
        page.extend_from_slice(&[0x01, 0x03, 0, 16]);
        page.extend_from_slice(&NAA);
        page.extend_from_slice(&[0x51, 0x94, 0, 4, 0, 0, 0, 1]); // target port
        page.extend_from_slice(&[0x01, 0x03, 0, 200]); // runs past the end
        let n = (page.len() - 4) as u16;
        page[2..4].copy_from_slice(&n.to_be_bytes());
        let d = lu_designators(&page);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].id, NAA);
    }

    proptest! {
        #[test]
        fn parsing_never_panics_on_any_bytes(
            data in proptest::collection::vec(any::<u8>(), 0..600),
            len in any::<u32>(),
        ) {
            let _ = parse_param_list(&data, len);
            let _ = lu_designators(&data);
        }

        #[test]
        fn parsing_and_planning_never_panic_on_mutated_valid_lists(
            flips in proptest::collection::vec((0usize..120, any::<u8>()), 0..8),
            cut in 0usize..130,
            geometry in proptest::option::of((prop_oneof![Just(512u32), Just(4096u32)], 1u64..1 << 40)),
        ) {
            let mut d = list(
                1,
                0,
                &[e4(&NAA, 0, 512), e4(&NAA, 0, 4096)],
                &[b2b(0, 1, 8, 0, 0)],
            );
            for (i, v) in flips {
                if let Some(b) = d.get_mut(i) {
                    *b = v;
                }
            }
            let g = geometry.map(|(block_size, num_blocks)| TargetGeometry { block_size, num_blocks });
            if let Ok(Some(p)) = parse_param_list(&d, cut as u32) {
                prop_assert!(p.cscds.len() <= MAX_CSCD_DESCRIPTORS as usize);
                prop_assert!(p.segments.len() <= MAX_SEGMENT_DESCRIPTORS as usize);
                if let Ok(steps) = plan(&p, &[g, g]) {
                    let total: u64 = steps.iter().map(|s| s.bytes).sum();
                    prop_assert!(total <= MAX_COPY_BYTES);
                    for s in &steps {
                        prop_assert!(s.bytes <= MAX_SEGMENT_BYTES);
                        let c = chunks(s, true, 512);
                        prop_assert_eq!(c.iter().map(|x| x.1).sum::<u64>(), s.bytes);
                    }
                }
            }
        }
    }
}
