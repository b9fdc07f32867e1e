//! INQUIRY data (SPC-4 §6.6): the standard page and the vital product data pages
//! 0x00, 0x80, 0x83, 0x86, 0x8F (SPC-4 §7.8) and 0xB0, 0xB1, 0xB2 (SBC-3 §6.5).

use mosaic_proto::scsi::opcode::vpd;
use mosaic_proto::scsi::Sense;

use super::block::MAX_COMPARE_AND_WRITE_BLOCKS;
use super::provisioning::{MAX_UNMAP_DESCRIPTORS, MAX_UNMAP_LBA_COUNT};
use super::{LogicalUnit, LuConfig, MAX_TRANSFER_BYTES};

/// Peripheral qualifier 000b, device type 00h: a connected direct-access block device.
pub(super) const PERIPHERAL_DISK: u8 = 0x00;
/// Peripheral qualifier 011b, device type 1Fh: no logical unit at this LUN (SPC-4 §6.6.2).
pub(super) const PERIPHERAL_NO_LUN: u8 = 0x7f;

/// Length of our standard INQUIRY data: through the eight version descriptors and the
/// reserved bytes after them (SPC-4 §6.6.2, Table 142).
const STANDARD_LEN: usize = 96;
/// VERSION: the device claims SPC-4.
const VERSION_SPC4: u8 = 0x06;
/// Byte 3: HISUP (hierarchical LUN addressing) and RESPONSE DATA FORMAT 2.
const HISUP_FORMAT2: u8 = 0x12;
/// Byte 7: CMDQUE, full task management model.
const CMDQUE: u8 = 0x02;
/// Byte 5: TPGS 01b, implicit ALUA only (REPORT TARGET PORT GROUPS, no SET TARGET
/// PORT GROUPS; SPC-4 §6.6.2), and 3PC, a copy manager (EXTENDED COPY, SPC-4 §5.17).
/// Both are commands of the device layer above (`device.rs`, `xcopy.rs`).
const TPGS_IMPLICIT_3PC: u8 = 0x10 | 0x08;
/// Version descriptors (SPC-4 Table 144): SAM-5, iSCSI, SPC-4, SBC-3. libiscsi detects
/// SBC-3 support through 0x04C0.
const VERSION_DESCRIPTORS: [u16; 4] = [0x00a0, 0x0960, 0x0460, 0x04c0];

/// The VPD pages we implement, ascending, as listed in page 0x00.
const SUPPORTED_VPD_PAGES: [u8; 8] = [
    vpd::SUPPORTED_PAGES,
    vpd::UNIT_SERIAL_NUMBER,
    vpd::DEVICE_IDENTIFICATION,
    vpd::EXTENDED_INQUIRY,
    vpd::THIRD_PARTY_COPY,
    vpd::BLOCK_LIMITS,
    vpd::BLOCK_DEVICE_CHARACTERISTICS,
    vpd::LOGICAL_BLOCK_PROVISIONING,
];

/// Placeholder IEEE company ID in our NAA 6 designators: Mosaic has no registered OUI.
/// Replace it if one is ever assigned; identifiers stay unique through `naa_id`.
const NAA_OUI: u32 = 0x00_0000;

// Designator header fields (SPC-4 §7.8.6.1, Table 459).
const PROTOCOL_ISCSI: u8 = 0x5;
const CODE_SET_BINARY: u8 = 0x1;
const CODE_SET_ASCII: u8 = 0x2;
const CODE_SET_UTF8: u8 = 0x3;
const PIV: u8 = 0x80;
const ASSOC_LU: u8 = 0x00;
const ASSOC_TARGET_PORT: u8 = 0x10;
const ASSOC_TARGET_DEVICE: u8 = 0x20;
const TYPE_T10_VENDOR: u8 = 0x1;
const TYPE_NAA: u8 = 0x3;
const TYPE_RELATIVE_PORT: u8 = 0x4;
const TYPE_TARGET_PORT_GROUP: u8 = 0x5;
const TYPE_SCSI_NAME: u8 = 0x8;
/// A SCSI name string designator is at most 256 bytes (SPC-4 §7.8.6.11).
const MAX_SCSI_NAME_LEN: usize = 256;

/// Block Limits and Block Device Characteristics have PAGE LENGTH 3Ch (SBC-3).
const SBC3_VPD_PAGE_LEN: usize = 0x3c;

/// `s` as a fixed-width, space-padded ASCII field; characters outside 0x20..=0x7E
/// (SPC-4 §4.3.1) become '?'.
pub(super) fn ascii_field(s: &str, width: usize) -> Vec<u8> {
    let mut v: Vec<u8> = s
        .bytes()
        .map(|b| if (0x20..=0x7e).contains(&b) { b } else { b'?' })
        .take(width)
        .collect();
    v.resize(width, b' ');
    v
}

/// Standard INQUIRY data (SPC-4 §6.6.2) with the given peripheral byte.
pub(super) fn standard(cfg: &LuConfig, peripheral: u8) -> Vec<u8> {
    let mut d = vec![0u8; STANDARD_LEN];
    d[0] = peripheral;
    d[2] = VERSION_SPC4;
    d[3] = HISUP_FORMAT2;
    d[4] = (STANDARD_LEN - 5) as u8;
    d[5] = TPGS_IMPLICIT_3PC;
    d[7] = CMDQUE;
    d[8..16].copy_from_slice(&ascii_field(&cfg.vendor, 8));
    d[16..32].copy_from_slice(&ascii_field(&cfg.product, 16));
    d[32..36].copy_from_slice(&ascii_field(&cfg.revision, 4));
    for (i, v) in VERSION_DESCRIPTORS.iter().enumerate() {
        d[58 + 2 * i..60 + 2 * i].copy_from_slice(&v.to_be_bytes());
    }
    d
}

/// A VPD page, or INVALID FIELD IN CDB for a page we do not implement.
pub(super) fn vpd_page(lu: &LogicalUnit, page: u8) -> Result<Vec<u8>, Sense> {
    let body = match page {
        vpd::SUPPORTED_PAGES => SUPPORTED_VPD_PAGES.to_vec(),
        vpd::UNIT_SERIAL_NUMBER => {
            let s = &lu.cfg.serial;
            ascii_field(s, s.len().min(255))
        }
        vpd::DEVICE_IDENTIFICATION => device_identification(&lu.cfg),
        vpd::EXTENDED_INQUIRY => extended_inquiry(),
        // The copy manager is the device layer's (3PC, `crate::xcopy`).
        vpd::THIRD_PARTY_COPY => crate::xcopy::third_party_copy_vpd(),
        vpd::BLOCK_LIMITS => block_limits(lu),
        vpd::BLOCK_DEVICE_CHARACTERISTICS => {
            let mut b = vec![0u8; SBC3_VPD_PAGE_LEN];
            // MEDIUM ROTATION RATE 0001h: non-rotating medium (SBC-3 §6.5.2).
            b[1] = 0x01;
            b
        }
        vpd::LOGICAL_BLOCK_PROVISIONING => logical_block_provisioning(lu.opts.thin),
        _ => return Err(Sense::invalid_field_in_cdb(2, None)),
    };
    let mut d = Vec::with_capacity(4 + body.len());
    d.push(PERIPHERAL_DISK);
    d.push(page);
    d.extend_from_slice(&(body.len() as u16).to_be_bytes());
    d.extend_from_slice(&body);
    Ok(d)
}

/// Extended INQUIRY Data (SPC-4 §7.8.7): no protection information; SIMPSUP only
/// (every command is a SIMPLE task: the session runs them concurrently and does not
/// order ORDERED or HEAD OF QUEUE ones); V_SUP, a volatile cache (the host page cache,
/// WCE) that SYNCHRONIZE CACHE flushes, no non-volatile one; LUICLR, unit attentions
/// are cleared per I_T nexus; MAXIMUM SUPPORTED SENSE DATA LENGTH 18, our fixed
/// format sense.
fn extended_inquiry() -> Vec<u8> {
    const SIMPSUP: u8 = 0x01;
    const V_SUP: u8 = 0x01;
    const LUICLR: u8 = 0x01;
    let mut b = vec![0u8; SBC3_VPD_PAGE_LEN];
    // Offsets below are page offsets minus the 4-byte header.
    b[1] = SIMPSUP;
    b[2] = V_SUP;
    b[3] = LUICLR;
    b[9] = mosaic_proto::scsi::sense::FIXED_SENSE_LEN as u8;
    b
}

/// Appends one designation descriptor (SPC-4 §7.8.6.1).
fn designator(out: &mut Vec<u8>, proto_codeset: u8, piv_assoc_type: u8, id: &[u8]) {
    out.push(proto_codeset);
    out.push(piv_assoc_type);
    out.push(0);
    out.push(id.len() as u8);
    out.extend_from_slice(id);
}

/// A SCSI name string: UTF-8, NUL-terminated, padded with NULs to a multiple of 4,
/// at most 256 bytes (SPC-4 §7.8.6.11).
fn scsi_name(s: &str) -> Vec<u8> {
    let mut v: Vec<u8> = s.as_bytes().to_vec();
    v.truncate(MAX_SCSI_NAME_LEN - 4);
    v.push(0);
    while !v.len().is_multiple_of(4) {
        v.push(0);
    }
    v
}

/// Device identification (SPC-4 §7.8.6): NAA and T10 vendor ID for the logical unit;
/// relative port, port group and SCSI name string for the target port; SCSI name
/// string for the target device.
fn device_identification(cfg: &LuConfig) -> Vec<u8> {
    let mut d = Vec::new();
    // NAA 6, IEEE Registered Extended (SPC-4 §7.8.6.6.5): NAA(4) OUI(24)
    // VENDOR SPECIFIC IDENTIFIER(36) | VENDOR SPECIFIC IDENTIFIER EXTENSION(64).
    let hi = (6u64 << 60) | (u64::from(NAA_OUI) << 36) | (cfg.naa_id >> 28);
    let mut naa = [0u8; 16];
    naa[..8].copy_from_slice(&hi.to_be_bytes());
    naa[8..].copy_from_slice(&cfg.naa_id.to_be_bytes());
    designator(&mut d, CODE_SET_BINARY, ASSOC_LU | TYPE_NAA, &naa);

    // T10 vendor ID (SPC-4 §7.8.6.4): vendor then the volume name.
    let mut t10 = ascii_field(&cfg.vendor, 8);
    t10.extend_from_slice(&ascii_field(&cfg.name, cfg.name.len().min(200)));
    designator(&mut d, CODE_SET_ASCII, ASSOC_LU | TYPE_T10_VENDOR, &t10);

    let port = (PROTOCOL_ISCSI << 4) | CODE_SET_BINARY;
    let mut rel = [0u8; 4];
    rel[2..].copy_from_slice(&cfg.relative_port.to_be_bytes());
    designator(
        &mut d,
        port,
        PIV | ASSOC_TARGET_PORT | TYPE_RELATIVE_PORT,
        &rel,
    );
    let mut tpg = [0u8; 4];
    tpg[2..].copy_from_slice(&cfg.tpg.to_be_bytes());
    designator(
        &mut d,
        port,
        PIV | ASSOC_TARGET_PORT | TYPE_TARGET_PORT_GROUP,
        &tpg,
    );

    let name = (PROTOCOL_ISCSI << 4) | CODE_SET_UTF8;
    // Target port name: "<iSCSI name>,t,0x<TPGT>" (SPC-4 §7.8.6.11, RFC 7143 §13).
    let port_name = format!("{},t,0x{:04x}", cfg.target_name, cfg.tpg);
    designator(
        &mut d,
        name,
        PIV | ASSOC_TARGET_PORT | TYPE_SCSI_NAME,
        &scsi_name(&port_name),
    );
    designator(
        &mut d,
        name,
        PIV | ASSOC_TARGET_DEVICE | TYPE_SCSI_NAME,
        &scsi_name(&cfg.target_name),
    );
    d
}

/// Block Limits (SBC-3 §6.5.3, SBC-4 §6.6.4): WSNZ = 0 (WRITE SAME of 0 blocks
/// reaches the last block), COMPARE AND WRITE length, our transfer limit, UNMAP limits and
/// granularity on a thin volume, WRITE SAME limit, and atomic writes up to the
/// transfer limit (every write is atomic, see `lock`) with no alignment, granularity
/// or boundary rules.
fn block_limits(lu: &LogicalUnit) -> Vec<u8> {
    /// OPTIMAL TRANSFER LENGTH GRANULARITY: 4 KiB, the page size of the host cache.
    const OPTIMAL_GRANULARITY_BYTES: u32 = 4096;
    /// UGAVALID: UNMAP GRANULARITY ALIGNMENT is valid (alignment 0).
    const UGAVALID: u32 = 0x8000_0000;
    let block_size = lu.cfg.block_size;
    let mut b = vec![0u8; SBC3_VPD_PAGE_LEN];
    // Offsets below are page offsets minus the 4-byte header.
    b[1] = MAX_COMPARE_AND_WRITE_BLOCKS as u8;
    let granularity = (OPTIMAL_GRANULARITY_BYTES / block_size).max(1) as u16;
    b[2..4].copy_from_slice(&granularity.to_be_bytes());
    let max_blocks = (MAX_TRANSFER_BYTES / u64::from(block_size)) as u32;
    b[4..8].copy_from_slice(&max_blocks.to_be_bytes());
    if lu.opts.thin {
        b[16..20].copy_from_slice(&MAX_UNMAP_LBA_COUNT.to_be_bytes());
        b[20..24].copy_from_slice(&MAX_UNMAP_DESCRIPTORS.to_be_bytes());
        let unit = (lu.store.allocation_unit() / u64::from(block_size)).max(1) as u32;
        b[24..28].copy_from_slice(&unit.to_be_bytes());
        b[28..32].copy_from_slice(&UGAVALID.to_be_bytes());
    }
    b[32..40].copy_from_slice(&lu.max_write_same_blocks().to_be_bytes());
    // MAXIMUM ATOMIC TRANSFER LENGTH; ATOMIC ALIGNMENT, ATOMIC TRANSFER LENGTH
    // GRANULARITY and the boundary fields stay 0.
    b[40..44].copy_from_slice(&max_blocks.to_be_bytes());
    b
}

/// Logical Block Provisioning (SBC-3 §6.5.4, SBC-4 §6.6.6). Thin: LBPU (UNMAP),
/// LBPWS and LBPWS10 (WRITE SAME with UNMAP), LBPRZ 001b (deallocated blocks read as
/// zeros), no anchoring, PROVISIONING TYPE 010b (thin). Fully provisioned: all zero.
fn logical_block_provisioning(thin: bool) -> Vec<u8> {
    const LBPU: u8 = 0x80;
    const LBPWS: u8 = 0x40;
    const LBPWS10: u8 = 0x20;
    /// LBPRZ field (bits 4..2) = 001b.
    const LBPRZ: u8 = 0x04;
    const PROVISIONING_TYPE_THIN: u8 = 0x02;
    let mut b = vec![0u8; 4];
    if thin {
        b[1] = LBPU | LBPWS | LBPWS10 | LBPRZ;
        b[2] = PROVISIONING_TYPE_THIN;
    }
    b
}
