//! MODE SENSE(6) and MODE SENSE(10) (SPC-4 §6.15, §6.16): the mode parameter header,
//! an optional block descriptor (SBC-3 §6.4.2), and the Caching, Control and
//! Informational Exceptions pages. No MODE SELECT: nothing is changeable.

use mosaic_proto::scsi::opcode::{mode_page, page_control};
use mosaic_proto::scsi::sense::{key, FieldPointer};
use mosaic_proto::scsi::{Asc, ModeSenseCdb, Sense};

use super::LogicalUnit;

/// DEVICE-SPECIFIC PARAMETER (SBC-3 §6.4.1): WP = 0, DPOFUA = 1 (we accept DPO and FUA
/// in READ/WRITE; libiscsi's dpofua tests require the two to agree).
const DEVICE_SPECIFIC_DPOFUA: u8 = 0x10;
/// Byte 4 of the MODE SENSE(10) header: LONGLBA, the block descriptor is 16 bytes.
const LONGLBA: u8 = 0x01;

/// Caching page (SBC-3 §6.4.5): WCE = 1, since writes land in the host page cache
/// and reach stable storage on SYNCHRONIZE CACHE or FUA.
fn caching_page(pc: u8) -> Vec<u8> {
    const WCE: u8 = 0x04;
    let mut p = vec![0u8; 20];
    p[0] = mode_page::CACHING;
    p[1] = 0x12;
    if pc != page_control::CHANGEABLE {
        p[2] = WCE;
    }
    p
}

/// Control page (SPC-4 §7.5.7): TST 0 (one task set), GLTSD 1 (no logs to save),
/// QUEUE ALGORITHM MODIFIER 1 (unrestricted reordering: commands run concurrently),
/// QERR 0, D_SENSE 0 (fixed-format sense), SWP 0, BUSY TIMEOUT PERIOD unlimited.
fn control_page(pc: u8) -> Vec<u8> {
    const GLTSD: u8 = 0x02;
    const QAM_UNRESTRICTED: u8 = 0x10;
    const BUSY_TIMEOUT_UNLIMITED: u16 = 0xffff;
    let mut p = vec![0u8; 12];
    p[0] = mode_page::CONTROL;
    p[1] = 0x0a;
    if pc != page_control::CHANGEABLE {
        p[2] = GLTSD;
        p[3] = QAM_UNRESTRICTED;
        p[8..10].copy_from_slice(&BUSY_TIMEOUT_UNLIMITED.to_be_bytes());
    }
    p
}

/// Informational Exceptions Control page (SPC-4 §7.5.8): MRIE 0, we report none.
fn informational_exceptions_page(_pc: u8) -> Vec<u8> {
    let mut p = vec![0u8; 12];
    p[0] = mode_page::INFORMATIONAL_EXCEPTIONS;
    p[1] = 0x0a;
    p
}

/// Builds one mode page for a page control value.
type PageFn = fn(u8) -> Vec<u8>;

/// The mode pages we implement, ascending (SPC-4 §6.15: "all pages" returns them in
/// ascending page code order).
const PAGES: [(u8, PageFn); 3] = [
    (mode_page::CACHING, caching_page),
    (mode_page::CONTROL, control_page),
    (
        mode_page::INFORMATIONAL_EXCEPTIONS,
        informational_exceptions_page,
    ),
];

/// The full MODE SENSE parameter data (before allocation-length truncation).
pub(super) fn mode_sense(lu: &LogicalUnit, ms: &ModeSenseCdb, ten: bool) -> Result<Vec<u8>, Sense> {
    if ms.pc == page_control::SAVED {
        return Err(
            Sense::new(key::ILLEGAL_REQUEST, Asc::SAVING_PARAMETERS_NOT_SUPPORTED)
                .with_field_pointer(FieldPointer {
                    in_cdb: true,
                    byte: 2,
                    bit: Some(7),
                }),
        );
    }
    let mut pages = Vec::new();
    if ms.page == mode_page::ALL_PAGES {
        // We have no subpages, so "all pages and subpages" is the same list.
        if ms.subpage != 0 && ms.subpage != mode_page::ALL_SUBPAGES {
            return Err(Sense::invalid_field_in_cdb(3, None));
        }
        for (_, page) in PAGES {
            pages.extend_from_slice(&page(ms.pc));
        }
    } else {
        let Some((_, page)) = PAGES.iter().find(|(code, _)| *code == ms.page) else {
            return Err(Sense::invalid_field_in_cdb(2, Some(5)));
        };
        if ms.subpage != 0 {
            return Err(Sense::invalid_field_in_cdb(3, None));
        }
        pages = page(ms.pc);
    }

    let blocks = lu.num_blocks();
    let block_size = lu.block_size();
    let descriptor: Vec<u8> = if ms.dbd {
        Vec::new()
    } else if ten && ms.llbaa {
        // Long LBA block descriptor (SBC-3 §6.4.2.3).
        let mut b = vec![0u8; 16];
        b[0..8].copy_from_slice(&blocks.to_be_bytes());
        b[12..16].copy_from_slice(&block_size.to_be_bytes());
        b
    } else {
        // Short LBA block descriptor (SBC-3 §6.4.2.2): too many blocks reads FFFFFFFFh.
        let mut b = vec![0u8; 8];
        let n = u32::try_from(blocks).unwrap_or(u32::MAX);
        b[0..4].copy_from_slice(&n.to_be_bytes());
        b[5..8].copy_from_slice(&block_size.to_be_bytes()[1..]);
        b
    };

    let mut d = Vec::with_capacity(8 + descriptor.len() + pages.len());
    if ten {
        let total = 8 + descriptor.len() + pages.len();
        d.extend_from_slice(&((total - 2) as u16).to_be_bytes());
        d.push(0); // MEDIUM TYPE
        d.push(DEVICE_SPECIFIC_DPOFUA);
        d.push(if descriptor.len() == 16 { LONGLBA } else { 0 });
        d.push(0);
        d.extend_from_slice(&(descriptor.len() as u16).to_be_bytes());
    } else {
        let total = 4 + descriptor.len() + pages.len();
        d.push((total - 1) as u8);
        d.push(0);
        d.push(DEVICE_SPECIFIC_DPOFUA);
        d.push(descriptor.len() as u8);
    }
    d.extend_from_slice(&descriptor);
    d.extend_from_slice(&pages);
    Ok(d)
}
