//! MODE SENSE(6/10) and MODE SELECT(6/10) (SPC-4 §6.11, §6.12, §6.15, §6.16): the
//! mode parameter header, an optional block descriptor (SBC-3 §6.4.2), and the
//! Caching, Control and Informational Exceptions pages.
//!
//! Two parameters are changeable, both shared by every I_T nexus (TST = 0): WCE in
//! the Caching page (with WCE = 0 every write is on stable storage before GOOD) and
//! SWP in the Control page (software write protect). Nothing can be saved (SP = 1 and
//! PC = saved values are refused).

use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use mosaic_proto::scsi::opcode::{mode_page, page_control};
use mosaic_proto::scsi::sense::{key, FieldPointer};
use mosaic_proto::scsi::{Asc, ModeSelectCdb, ModeSenseCdb, Sense};

use super::{LogicalUnit, ScsiResult};

/// DEVICE-SPECIFIC PARAMETER (SBC-3 §6.4.1): DPOFUA = 1 (we accept DPO and FUA;
/// libiscsi's dpofua tests require the two to agree).
const DEVICE_SPECIFIC_DPOFUA: u8 = 0x10;
/// DEVICE-SPECIFIC PARAMETER bit 7: WP, the medium is write-protected.
const DEVICE_SPECIFIC_WP: u8 = 0x80;
/// Byte 4 of the MODE SENSE(10) header: LONGLBA, the block descriptor is 16 bytes.
const LONGLBA: u8 = 0x01;
/// Caching page byte 2 bit 2: WCE (SBC-3 §6.4.5).
const WCE: u8 = 0x04;
/// Control page byte 4 bit 3: SWP (SPC-4 §7.5.7).
const SWP: u8 = 0x08;
/// Byte 0 of a mode page: PS (bit 7, reserved in MODE SELECT) and SPF (bit 6).
const PS_BIT: u8 = 0x80;
const SPF_BIT: u8 = 0x40;

/// The mode parameters MODE SELECT may change.
#[derive(Debug)]
pub(super) struct ModeState {
    /// Write cache enable; power-on default 1 (writes land in the host page cache).
    wce: AtomicBool,
    /// Software write protect; power-on default 0.
    swp: AtomicBool,
}

impl Default for ModeState {
    fn default() -> ModeState {
        ModeState {
            wce: AtomicBool::new(true),
            swp: AtomicBool::new(false),
        }
    }
}

/// The values of the parameters MODE SELECT may change, as one value: what a
/// cluster shares between the nodes exporting a volume ([`crate::cluster::mode`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModeParams {
    /// WCE of the Caching page.
    pub wce: bool,
    /// SWP of the Control page.
    pub swp: bool,
}

impl Default for ModeParams {
    /// The power-on values: write cache enabled, no software write protect.
    fn default() -> ModeParams {
        ModeParams {
            wce: true,
            swp: false,
        }
    }
}

/// What a valid MODE SELECT changes, to be applied to whatever parameters are
/// current when it takes effect (the pages it carries set their parameters; the
/// others keep theirs). Empty for a MODE SELECT without pages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModeSelectPlan {
    changes: Vec<Change>,
}

impl ModeSelectPlan {
    /// `current` with this MODE SELECT's changes applied.
    pub fn apply(&self, current: ModeParams) -> ModeParams {
        let mut p = current;
        for change in &self.changes {
            match *change {
                Change::Wce(v) => p.wce = v,
                Change::Swp(v) => p.swp = v,
            }
        }
        p
    }
}

impl ModeState {
    /// The current values.
    pub(super) fn params(&self) -> ModeParams {
        ModeParams {
            wce: self.wce(),
            swp: self.swp(),
        }
    }

    /// Makes `p` the current values.
    pub(super) fn set(&self, p: ModeParams) {
        self.wce.store(p.wce, Ordering::Release);
        self.swp.store(p.swp, Ordering::Release);
    }

    /// Whether the write cache is enabled.
    pub(super) fn wce(&self) -> bool {
        self.wce.load(Ordering::Acquire)
    }

    /// Whether software write protect is set.
    pub(super) fn swp(&self) -> bool {
        self.swp.load(Ordering::Acquire)
    }
}

/// Current parameter values, as the page builders see them.
#[derive(Clone, Copy, Debug)]
struct Current {
    wce: bool,
    swp: bool,
}

/// Caching page (SBC-3 §6.4.5): WCE current value, changeable.
fn caching_page(pc: u8, cur: Current) -> Vec<u8> {
    let mut p = vec![0u8; 20];
    p[0] = mode_page::CACHING;
    p[1] = 0x12;
    p[2] = match pc {
        page_control::CHANGEABLE => WCE,
        page_control::DEFAULT => WCE,
        _ if cur.wce => WCE,
        _ => 0,
    };
    p
}

/// Control page (SPC-4 §7.5.7): TST 0 (one task set), GLTSD 1 (no logs to save),
/// QUEUE ALGORITHM MODIFIER 1 (unrestricted reordering: commands run concurrently),
/// QERR 0, D_SENSE 0 (fixed-format sense), SWP current value (changeable), BUSY
/// TIMEOUT PERIOD unlimited.
fn control_page(pc: u8, cur: Current) -> Vec<u8> {
    const GLTSD: u8 = 0x02;
    const QAM_UNRESTRICTED: u8 = 0x10;
    const BUSY_TIMEOUT_UNLIMITED: u16 = 0xffff;
    let mut p = vec![0u8; 12];
    p[0] = mode_page::CONTROL;
    p[1] = 0x0a;
    if pc == page_control::CHANGEABLE {
        p[4] = SWP;
    } else {
        p[2] = GLTSD;
        p[3] = QAM_UNRESTRICTED;
        if pc == page_control::CURRENT && cur.swp {
            p[4] = SWP;
        }
        p[8..10].copy_from_slice(&BUSY_TIMEOUT_UNLIMITED.to_be_bytes());
    }
    p
}

/// Informational Exceptions Control page (SPC-4 §7.5.8): MRIE 0, we report none.
fn informational_exceptions_page(_pc: u8, _cur: Current) -> Vec<u8> {
    let mut p = vec![0u8; 12];
    p[0] = mode_page::INFORMATIONAL_EXCEPTIONS;
    p[1] = 0x0a;
    p
}

/// Builds one mode page for a page control value.
type PageFn = fn(u8, Current) -> Vec<u8>;

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
    let cur = Current {
        wce: lu.mode.wce(),
        swp: lu.mode.swp(),
    };
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
            pages.extend_from_slice(&page(ms.pc, cur));
        }
    } else {
        let Some((_, page)) = PAGES.iter().find(|(code, _)| *code == ms.page) else {
            return Err(Sense::invalid_field_in_cdb(2, Some(5)));
        };
        if ms.subpage != 0 {
            return Err(Sense::invalid_field_in_cdb(3, None));
        }
        pages = page(ms.pc, cur);
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

    let device_specific = if lu.is_write_protected() {
        DEVICE_SPECIFIC_DPOFUA | DEVICE_SPECIFIC_WP
    } else {
        DEVICE_SPECIFIC_DPOFUA
    };
    let mut d = Vec::with_capacity(8 + descriptor.len() + pages.len());
    if ten {
        let total = 8 + descriptor.len() + pages.len();
        d.extend_from_slice(&((total - 2) as u16).to_be_bytes());
        d.push(0); // MEDIUM TYPE
        d.push(device_specific);
        d.push(if descriptor.len() == 16 { LONGLBA } else { 0 });
        d.push(0);
        d.extend_from_slice(&(descriptor.len() as u16).to_be_bytes());
    } else {
        let total = 4 + descriptor.len() + pages.len();
        d.push((total - 1) as u8);
        d.push(0);
        d.push(device_specific);
        d.push(descriptor.len() as u8);
    }
    d.extend_from_slice(&descriptor);
    d.extend_from_slice(&pages);
    Ok(d)
}

/// A field of the parameter list the device server refuses.
fn bad_param(byte: usize, bit: Option<u8>) -> Sense {
    Sense::invalid_field_in_param(byte as u16, bit)
}

fn param_list_length_error() -> Sense {
    Sense::new(key::ILLEGAL_REQUEST, Asc::PARAMETER_LIST_LENGTH_ERROR)
}

/// MODE SELECT(6/10) (SPC-4 §6.11, §6.12, §5.x mode parameters). PF must be 1 and SP 0
/// (we cannot save pages). The whole parameter list is checked before anything
/// changes: a truncated header, block descriptor or page is PARAMETER LIST LENGTH
/// ERROR; a block descriptor with another block length, an unknown page or subpage,
/// a wrong PAGE LENGTH, PS set, or any bit that differs from the current value where
/// it is not changeable is INVALID FIELD IN PARAMETER LIST pointing at it.
pub(super) fn mode_select(
    lu: &LogicalUnit,
    ms: &ModeSelectCdb,
    ten: bool,
    data_out: &Bytes,
) -> ScsiResult {
    match plan_mode_select(lu, ms, ten, data_out) {
        Ok((plan, transfer_len)) => {
            lu.mode.set(plan.apply(lu.mode.params()));
            ScsiResult::ok(transfer_len)
        }
        Err(refused) => refused,
    }
}

/// Checks a MODE SELECT as [`mode_select`] does and returns what it changes and its
/// transfer length, without changing anything; `Err` is the command's answer.
pub(super) fn plan_mode_select(
    lu: &LogicalUnit,
    ms: &ModeSelectCdb,
    ten: bool,
    data_out: &Bytes,
) -> Result<(ModeSelectPlan, u32), ScsiResult> {
    let transfer_len = u32::from(ms.param_len);
    if !ms.pf && ms.param_len > 0 {
        return Err(ScsiResult::check(
            Sense::invalid_field_in_cdb(1, Some(4)),
            transfer_len,
        ));
    }
    if ms.sp {
        return Err(ScsiResult::check(
            Sense::invalid_field_in_cdb(1, Some(0)),
            transfer_len,
        ));
    }
    let list = &data_out[..data_out.len().min(usize::from(ms.param_len))];
    match parse_mode_select(lu, list, ten) {
        Ok(changes) => Ok((ModeSelectPlan { changes }, transfer_len)),
        Err(sense) => Err(ScsiResult::check(sense, transfer_len)),
    }
}

/// A parameter change a valid MODE SELECT applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Wce(bool),
    Swp(bool),
}

fn parse_mode_select(lu: &LogicalUnit, list: &[u8], ten: bool) -> Result<Vec<Change>, Sense> {
    if list.is_empty() {
        return Ok(Vec::new());
    }
    let header_len = if ten { 8 } else { 4 };
    if list.len() < header_len {
        return Err(param_list_length_error());
    }
    // MODE DATA LENGTH is reserved in MODE SELECT; MEDIUM TYPE must be 0 (SBC-3
    // §6.4.1); the WP and DPOFUA bits of DEVICE-SPECIFIC PARAMETER are ignored.
    let medium_type_at = if ten { 2 } else { 1 };
    if list[medium_type_at] != 0 {
        return Err(bad_param(medium_type_at, None));
    }
    let (bd_len, long_lba) = if ten {
        (
            usize::from(u16::from_be_bytes([list[6], list[7]])),
            list[4] & LONGLBA != 0,
        )
    } else {
        (usize::from(list[3]), false)
    };
    let descriptor_len = if long_lba { 16 } else { 8 };
    if bd_len % descriptor_len != 0 {
        return Err(bad_param(if ten { 6 } else { 3 }, None));
    }
    if list.len() < header_len + bd_len {
        return Err(param_list_length_error());
    }
    for i in 0..bd_len / descriptor_len {
        let at = header_len + i * descriptor_len;
        let d = &list[at..at + descriptor_len];
        // The block length cannot change (SBC-3 §6.4.2); NUMBER OF LOGICAL BLOCKS 0 or
        // our capacity keeps it.
        let (blocks, block_len, len_at) = if long_lba {
            (
                u64::from_be_bytes(d[0..8].try_into().unwrap_or_default()),
                u32::from_be_bytes(d[12..16].try_into().unwrap_or_default()),
                at + 12,
            )
        } else {
            (
                u64::from(u32::from_be_bytes(d[0..4].try_into().unwrap_or_default())),
                u32::from_be_bytes([0, d[5], d[6], d[7]]),
                at + 5,
            )
        };
        if block_len != lu.block_size() {
            return Err(bad_param(len_at, None));
        }
        let capacity = if long_lba {
            lu.num_blocks()
        } else {
            lu.num_blocks().min(u64::from(u32::MAX))
        };
        if blocks != 0 && blocks != capacity {
            return Err(bad_param(at, None));
        }
    }
    let cur = Current {
        wce: lu.mode.wce(),
        swp: lu.mode.swp(),
    };
    let mut changes = Vec::new();
    let mut at = header_len + bd_len;
    while at < list.len() {
        if list.len() < at + 2 {
            return Err(param_list_length_error());
        }
        if list[at] & PS_BIT != 0 {
            return Err(bad_param(at, Some(7)));
        }
        if list[at] & SPF_BIT != 0 {
            // We have no subpages.
            return Err(bad_param(at, Some(6)));
        }
        let code = list[at] & 0x3f;
        let Some((_, page)) = PAGES.iter().find(|(c, _)| *c == code) else {
            return Err(bad_param(at, Some(5)));
        };
        let current = page(page_control::CURRENT, cur);
        let changeable = page(page_control::CHANGEABLE, cur);
        let page_len = usize::from(list[at + 1]);
        if page_len + 2 != current.len() {
            return Err(bad_param(at + 1, None));
        }
        if list.len() < at + 2 + page_len {
            return Err(param_list_length_error());
        }
        let given = &list[at..at + 2 + page_len];
        for i in 2..given.len() {
            let differs = (given[i] ^ current[i]) & !changeable[i];
            if differs != 0 {
                return Err(bad_param(at + i, Some(7 - differs.leading_zeros() as u8)));
            }
        }
        match code {
            mode_page::CACHING => changes.push(Change::Wce(given[2] & WCE != 0)),
            mode_page::CONTROL => changes.push(Change::Swp(given[4] & SWP != 0)),
            _ => {}
        }
        at += 2 + page_len;
    }
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::super::{BackingStore, LogicalUnit, LuOptions};
    use mosaic_proto::scsi::sense::key;
    use mosaic_proto::scsi::Asc;

    fn mode_select6(param_len: u8) -> [u8; 6] {
        [0x15, 0x10, 0, 0, param_len, 0]
    }

    /// The current page `code` as MODE SENSE(6) returns it with DBD = 1.
    async fn current_page(lu: &LogicalUnit, code: u8) -> Vec<u8> {
        let r = exec(lu, &mode_sense6(true, 0, code, 0, 255)).await;
        assert_good(&r);
        r.data_in[4..].to_vec()
    }

    /// A MODE SELECT(6) parameter list: empty header, no block descriptor, `page`.
    fn list6(page: &[u8]) -> Vec<u8> {
        let mut v = vec![0, 0, 0, 0];
        v.extend_from_slice(page);
        v
    }

    async fn select(lu: &LogicalUnit, list: &[u8]) -> super::super::ScsiResult {
        exec_out(lu, &mode_select6(list.len() as u8), list).await
    }

    fn memory_lu() -> (LogicalUnit, BackingStore) {
        let store = BackingStore::memory(BLOCKS * u64::from(BS));
        (LogicalUnit::new(cfg(BS), store.clone()).unwrap(), store)
    }

    fn flushes(store: &BackingStore) -> u64 {
        match store {
            BackingStore::Memory(m) => m.flushes(),
            _ => unreachable!("the tests use a memory store"),
        }
    }

    #[tokio::test]
    async fn clearing_wce_makes_every_write_flush_before_good() {
        let (lu, store) = memory_lu();
        assert_good(&exec_out(&lu, &write10(0, 1, false), &[1; 512]).await);
        assert_eq!(flushes(&store), 0, "WCE = 1: writes stay in the cache");

        let mut page = current_page(&lu, 0x08).await;
        assert_eq!(page[2] & 0x04, 0x04, "WCE = 1 by default");
        page[2] &= !0x04;
        assert_good(&select(&lu, &list6(&page)).await);
        assert_eq!(current_page(&lu, 0x08).await[2] & 0x04, 0, "WCE now 0");

        assert_good(&exec_out(&lu, &write10(0, 1, false), &[2; 512]).await);
        assert_eq!(flushes(&store), 1, "WCE = 0: the write was flushed");
        let ws = [0x41, 0, 0, 0, 0, 0, 0, 0, 4, 0];
        assert_good(&exec_out(&lu, &ws, &[3; 512]).await);
        assert_eq!(flushes(&store), 2, "WRITE SAME flushes too");

        page[2] |= 0x04;
        assert_good(&select(&lu, &list6(&page)).await);
        assert_good(&exec_out(&lu, &write10(0, 1, false), &[4; 512]).await);
        assert_eq!(flushes(&store), 2);
        assert_good(&exec_out(&lu, &write10(0, 1, true), &[5; 512]).await);
        assert_eq!(flushes(&store), 3, "FUA flushes whatever WCE");
    }

    #[tokio::test]
    async fn setting_swp_write_protects_the_unit_until_cleared() {
        let lu = lu();
        let mut page = current_page(&lu, 0x0a).await;
        page[4] |= 0x08;
        assert_good(&select(&lu, &list6(&page)).await);
        let r = exec(&lu, &mode_sense6(true, 0, 0x0a, 0, 255)).await;
        assert_eq!(r.data_in[2] & 0x80, 0x80, "WP in the header");
        assert_eq!(r.data_in[4 + 4] & 0x08, 0x08, "SWP in the page");
        let r = exec_out(&lu, &write10(0, 1, false), &[1; 512]).await;
        assert_check(&r, key::DATA_PROTECT, Asc::WRITE_PROTECTED);
        assert_good(&exec(&lu, &read10(0, 1)).await);
        page[4] &= !0x08;
        assert_good(&select(&lu, &list6(&page)).await);
        assert_good(&exec_out(&lu, &write10(0, 1, false), &[1; 512]).await);
    }

    #[tokio::test]
    async fn read_only_volume_reports_wp_and_refuses_every_write() {
        let lu = lu_opts(LuOptions {
            thin: true,
            read_only: true,
        });
        let r = exec(&lu, &mode_sense10(false, true, 0x3f, 255)).await;
        assert_eq!(r.data_in[3] & 0x80, 0x80, "WP");
        let one = vec![0u8; 512];
        let two = vec![0u8; 1024];
        let mut caw = rw16(0x89, 0, 0);
        caw[13] = 1;
        let mut wa = rw16(0x9c, 0, 0);
        wa[13] = 1;
        let unmap_list = [
            0, 22, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0,
        ];
        let cases: Vec<(Vec<u8>, &[u8])> = vec![
            (vec![0x0a, 0, 0, 0, 1, 0], &one),
            (write10(0, 1, false).to_vec(), &one),
            (rw12(0xaa, 0, 1).to_vec(), &one),
            (rw16(0x8a, 0, 1).to_vec(), &one),
            (rw16(0x8e, 0, 1).to_vec(), &one),
            (rw16(0x8b, 0, 1).to_vec(), &one),
            (caw.to_vec(), &two),
            (wa.to_vec(), &one),
            (vec![0x41, 0, 0, 0, 0, 0, 0, 0, 1, 0], &one),
            (vec![0x41, 0x08, 0, 0, 0, 0, 0, 0, 1, 0], &[]),
            (rw16(0x93, 0, 1).to_vec(), &one),
            (vec![0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], &unmap_list),
        ];
        for (cdb, data) in cases {
            let r = exec_out(&lu, &cdb, data).await;
            assert_check(&r, key::DATA_PROTECT, Asc::WRITE_PROTECTED);
        }
        assert_good(&exec(&lu, &read10(0, 1)).await);
        assert_good(&exec(&lu, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0]).await);
    }

    #[tokio::test]
    async fn mode_select_refuses_changes_to_fields_that_are_not_changeable() {
        let lu = lu();
        let mut page = current_page(&lu, 0x0a).await;
        page[4] |= 0x04; // D_SENSE
        let r = select(&lu, &list6(&page)).await;
        assert_check(
            &r,
            key::ILLEGAL_REQUEST,
            Asc::INVALID_FIELD_IN_PARAMETER_LIST,
        );
        let s = r.sense_data().unwrap().field_pointer.unwrap();
        assert_eq!((s.in_cdb, s.byte, s.bit), (false, 4 + 4, Some(2)));
        assert!(!lu.mode.swp(), "nothing applied");
    }

    #[tokio::test]
    async fn mode_select_parameter_list_validation() {
        let lu = lu();
        let caching = current_page(&lu, 0x08).await;
        // Truncated header, truncated page.
        let r = select(&lu, &[0, 0]).await;
        assert_check(&r, key::ILLEGAL_REQUEST, Asc::PARAMETER_LIST_LENGTH_ERROR);
        let r = select(&lu, &list6(&caching)[..10]).await;
        assert_check(&r, key::ILLEGAL_REQUEST, Asc::PARAMETER_LIST_LENGTH_ERROR);
        // Unknown page, wrong page length, PS set, SPF set.
        let bad = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut p = caching.clone();
            f(&mut p);
            list6(&p)
        };
        for list in [
            bad(&|p| p[0] = 0x19),
            bad(&|p| p[1] = 0x10),
            bad(&|p| p[0] |= 0x80),
            bad(&|p| p[0] |= 0x40),
        ] {
            let r = select(&lu, &list).await;
            assert_check(
                &r,
                key::ILLEGAL_REQUEST,
                Asc::INVALID_FIELD_IN_PARAMETER_LIST,
            );
        }
        // A block descriptor with our block length is fine; another one is not.
        let mut with_bd = vec![0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0x02, 0x00];
        with_bd.extend_from_slice(&caching);
        assert_good(&select(&lu, &with_bd).await);
        with_bd[10] = 0x10;
        let r = select(&lu, &with_bd).await;
        assert_check(
            &r,
            key::ILLEGAL_REQUEST,
            Asc::INVALID_FIELD_IN_PARAMETER_LIST,
        );
        // SP = 1 (cannot save) and PF = 0.
        let list = list6(&caching);
        let r = exec_out(&lu, &[0x15, 0x11, 0, 0, list.len() as u8, 0], &list).await;
        assert_check(&r, key::ILLEGAL_REQUEST, Asc::INVALID_FIELD_IN_CDB);
        let r = exec_out(&lu, &[0x15, 0x00, 0, 0, list.len() as u8, 0], &list).await;
        assert_check(&r, key::ILLEGAL_REQUEST, Asc::INVALID_FIELD_IN_CDB);
        // An empty parameter list changes nothing.
        assert_good(&exec(&lu, &mode_select6(0)).await);
    }

    #[tokio::test]
    async fn mode_select10_changes_wce() {
        let lu = lu();
        let mut page = current_page(&lu, 0x08).await;
        page[2] &= !0x04;
        let mut list = vec![0u8; 8];
        list.extend_from_slice(&page);
        let l = (list.len() as u16).to_be_bytes();
        let cdb = [0x55, 0x10, 0, 0, 0, 0, 0, l[0], l[1], 0];
        assert_good(&exec_out(&lu, &cdb, &list).await);
        assert!(!lu.mode.wce());
    }
}
