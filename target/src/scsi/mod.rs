//! The SCSI block device (SBC-3 over SPC-4): a logical unit that executes CDBs
//! against a [`BackingStore`] and answers with status, sense and data.
//!
//! One [`LogicalUnit`] is shared through `Arc` by every session; `execute` takes
//! `&self`, so commands from all sessions run concurrently. The only lock held across
//! I/O is the LBA range lock ([`lock`]): reads share a range, commands that modify
//! the medium hold theirs exclusively, so COMPARE AND WRITE and ORWRITE are atomic
//! against every other write. Nothing here knows about PDUs: the session gives a
//! [`ScsiRequest`] (CDB, LUN, the Data-Out it received, EDTL) and gets a
//! [`ScsiResult`] back.
//!
//! - [`inquiry`]: standard INQUIRY data and the VPD pages.
//! - [`mode`]: MODE SENSE / MODE SELECT and the mode parameters they change (WCE, SWP).
//! - [`block`]: VERIFY, WRITE AND VERIFY, PRE-FETCH, ORWRITE, COMPARE AND WRITE,
//!   WRITE ATOMIC, START STOP UNIT, PREVENT ALLOW MEDIUM REMOVAL.
//! - [`provisioning`]: thin provisioning: UNMAP, WRITE SAME, GET LBA STATUS.
//! - [`opcodes`]: REPORT SUPPORTED OPERATION CODES and TASK MANAGEMENT FUNCTIONS.
//!
//! Residuals (RFC 7143 §11.4.5): the session truncates `data_in` to EDTL and reports
//! `|EDTL - transfer_len|` as overflow (EDTL smaller) or underflow (EDTL larger).
//! `transfer_len` is what the command moves: for data-in commands the length of
//! `data_in` (READ: blocks × block size; INQUIRY etc.: min(allocation length, data
//! available)), for WRITE the bytes the CDB asks for, and EDTL itself for commands
//! that fail before their length is known (unknown opcode, malformed CDB, missing LUN).

mod block;
mod inquiry;
pub(crate) mod lock;
mod mode;
mod opcodes;
mod provisioning;
#[cfg(test)]
mod tests;

use bytes::Bytes;
use mosaic_proto::scsi::sense::{key, FieldPointer};
use mosaic_proto::scsi::{status, Asc, Cdb, RwCdb, Sense};

use crate::store::BackingStore;

pub use mode::{ModeParams, ModeSelectPlan};
pub use opcodes::{Command, RESERVATION_COMMANDS, SUPPORTED_TMFS, SUPPORTED_TMFS_2};

/// The largest READ or WRITE we execute, in bytes: bounds the memory one command can
/// pin. Reported to initiators as MAXIMUM TRANSFER LENGTH in the Block Limits VPD page
/// (SBC-3 §6.5.3); larger commands get INVALID FIELD IN CDB.
pub const MAX_TRANSFER_BYTES: u64 = 32 * 1024 * 1024;
/// Logical block sizes we accept (bytes).
pub const SUPPORTED_BLOCK_SIZES: [u32; 2] = [512, 4096];
/// The only logical unit number a volume exposes.
pub const LUN0: u64 = 0;

/// Identity and geometry of a logical unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LuConfig {
    /// Volume name (also the T10 vendor ID designator's vendor-specific part).
    pub name: String,
    /// Logical block size: 512 or 4096.
    pub block_size: u32,
    /// Unit serial number (VPD page 0x80); printable ASCII.
    pub serial: String,
    /// Stable per-volume identifier for the NAA designator of VPD page 0x83; derive it
    /// with [`LuConfig::naa_id_for`] so it survives restarts and failover.
    pub naa_id: u64,
    /// T10 vendor identification, 8 ASCII characters (padded or cut to 8).
    pub vendor: String,
    /// Product identification, 16 ASCII characters (padded or cut).
    pub product: String,
    /// Product revision level, 4 ASCII characters (padded or cut).
    pub revision: String,
    /// The target's iSCSI name (IQN), for the SCSI name string designators.
    pub target_name: String,
    /// Relative target port identifier (VPD 0x83 designator type 4); nonzero.
    pub relative_port: u16,
    /// Target port group (VPD 0x83 designator type 5); also used as the portal group
    /// tag in the target port's SCSI name string ("<iqn>,t,0x<tpg>").
    pub tpg: u16,
}

impl LuConfig {
    /// A stable 64-bit identifier derived from a volume name (FNV-1a), for `naa_id`.
    pub fn naa_id_for(name: &str) -> u64 {
        const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
        const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
        name.bytes().fold(FNV_OFFSET, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(FNV_PRIME)
        })
    }
}

/// How a volume is provisioned and whether it may be written. Separate from
/// [`LuConfig`] (identity and geometry) so that adding a policy does not touch every
/// place that builds a config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LuOptions {
    /// Thin provisioned (SBC-3 §4.7.3): LBPME = 1, UNMAP and WRITE SAME with UNMAP
    /// deallocate (holes in a file, dropped chunks in memory), GET LBA STATUS reports
    /// holes. False: fully provisioned, LBPME = 0, a file store is preallocated, and
    /// UNMAP is not supported.
    pub thin: bool,
    /// Write protected: every command that would modify the medium fails with DATA
    /// PROTECT / WRITE PROTECTED and MODE SENSE reports WP = 1 (SBC-3 §4.11).
    pub read_only: bool,
}

impl Default for LuOptions {
    /// Thin and writable: volumes are thin by default.
    fn default() -> LuOptions {
        LuOptions {
            thin: true,
            read_only: false,
        }
    }
}

/// Errors creating a logical unit.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScsiError {
    /// The block size is not one of [`SUPPORTED_BLOCK_SIZES`].
    #[error("block size {0} is not supported (use 512 or 4096)")]
    BlockSize(u32),
    /// The store's size is not a whole number of blocks.
    #[error("store size {size} is not a multiple of the block size {block_size}")]
    Unaligned { size: u64, block_size: u32 },
    /// The store has no blocks at all (READ CAPACITY could not describe it).
    #[error("store is empty")]
    Empty,
    /// A fully provisioned volume's backing file could not be allocated.
    #[error("cannot preallocate the fully provisioned volume: {0}")]
    Preallocate(String),
}

/// One SCSI command as the session hands it over.
#[derive(Debug, Clone)]
pub struct ScsiRequest {
    /// The CDB: 6..=260 bytes (BHS CDB plus extended CDB AHS).
    pub cdb: Bytes,
    /// The decoded flat LUN number.
    pub lun: u64,
    /// Write data received; may be shorter than the CDB asks (EDTL too small) or longer.
    pub data_out: Bytes,
    /// iSCSI Expected Data Transfer Length.
    pub expected_len: u32,
}

/// The outcome of one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScsiResult {
    /// SCSI status (`mosaic_proto::scsi::status`).
    pub status: u8,
    /// Fixed-format sense data; empty unless CHECK CONDITION.
    pub sense: Bytes,
    /// All data the command produced; the session truncates it to EDTL.
    pub data_in: Bytes,
    /// Bytes the command moves (see the module doc); residual = |EDTL - transfer_len|.
    pub transfer_len: u32,
}

impl ScsiResult {
    fn good(data_in: Bytes, transfer_len: u32) -> ScsiResult {
        ScsiResult {
            status: status::GOOD,
            sense: Bytes::new(),
            data_in,
            transfer_len,
        }
    }

    /// GOOD with `data` cut to `alloc_len`; transfer_len is what remains.
    fn good_truncated(mut data: Vec<u8>, alloc_len: usize) -> ScsiResult {
        data.truncate(alloc_len);
        let len = data.len() as u32;
        ScsiResult::good(Bytes::from(data), len)
    }

    /// GOOD with no data.
    fn ok(transfer_len: u32) -> ScsiResult {
        ScsiResult::good(Bytes::new(), transfer_len)
    }

    fn check(sense: Sense, transfer_len: u32) -> ScsiResult {
        ScsiResult {
            status: status::CHECK_CONDITION,
            sense: sense.to_bytes(),
            data_in: Bytes::new(),
            transfer_len,
        }
    }

    /// The sense data decoded, if there is any.
    pub fn sense_data(&self) -> Option<Sense> {
        Sense::parse_fixed(&self.sense)
    }
}

/// A SCSI block device over a backing store.
#[derive(Debug)]
pub struct LogicalUnit {
    cfg: LuConfig,
    opts: LuOptions,
    store: BackingStore,
    num_blocks: u64,
    /// LBA range lock: shared by reads, exclusive for writes.
    locks: lock::RangeLock,
    /// Mode parameters MODE SELECT may change.
    mode: mode::ModeState,
    /// Commands a layer above executes for this unit, for REPORT SUPPORTED
    /// OPERATION CODES.
    layered_commands: &'static [opcodes::Command],
}

impl LogicalUnit {
    /// A thin, writable logical unit over `store` (see [`LogicalUnit::with_options`]).
    pub fn new(cfg: LuConfig, store: BackingStore) -> Result<LogicalUnit, ScsiError> {
        LogicalUnit::with_options(cfg, store, LuOptions::default())
    }

    /// A logical unit over `store`, whose size must be a nonzero multiple of the block
    /// size. A fully provisioned (`thin: false`), writable file store is preallocated
    /// here, which blocks: call it at startup.
    pub fn with_options(
        cfg: LuConfig,
        store: BackingStore,
        opts: LuOptions,
    ) -> Result<LogicalUnit, ScsiError> {
        if !SUPPORTED_BLOCK_SIZES.contains(&cfg.block_size) {
            return Err(ScsiError::BlockSize(cfg.block_size));
        }
        let size = store.len();
        if !size.is_multiple_of(u64::from(cfg.block_size)) {
            return Err(ScsiError::Unaligned {
                size,
                block_size: cfg.block_size,
            });
        }
        if size == 0 {
            return Err(ScsiError::Empty);
        }
        let num_blocks = size / u64::from(cfg.block_size);
        if !opts.thin && !opts.read_only {
            store
                .preallocate()
                .map_err(|e| ScsiError::Preallocate(e.to_string()))?;
        }
        Ok(LogicalUnit {
            cfg,
            opts,
            store,
            num_blocks,
            locks: lock::RangeLock::default(),
            mode: mode::ModeState::default(),
            layered_commands: &[],
        })
    }

    /// Declares commands a layer above the unit executes before they reach
    /// [`LogicalUnit::execute`] (e.g. [`RESERVATION_COMMANDS`]), so that REPORT
    /// SUPPORTED OPERATION CODES lists them too.
    pub fn with_reported_commands(mut self, commands: &'static [opcodes::Command]) -> Self {
        self.layered_commands = commands;
        self
    }

    /// The provisioning and write-protection policy this unit was built with.
    pub fn options(&self) -> LuOptions {
        self.opts
    }

    /// Logical block size in bytes.
    pub fn block_size(&self) -> u32 {
        self.cfg.block_size
    }

    /// Capacity in logical blocks.
    pub fn num_blocks(&self) -> u64 {
        self.num_blocks
    }

    /// The configuration this unit was built with.
    pub fn config(&self) -> &LuConfig {
        &self.cfg
    }

    /// The current values of the parameters MODE SELECT may change.
    pub fn mode_params(&self) -> ModeParams {
        self.mode.params()
    }

    /// Makes `p` the current mode parameters (a cluster installing what a MODE
    /// SELECT through any node set, [`crate::cluster::mode`]).
    pub fn set_mode_params(&self, p: ModeParams) {
        self.mode.set(p);
    }

    /// For a MODE SELECT(6/10): checks it as [`LogicalUnit::execute`] would and
    /// returns what it changes and its transfer length, changing nothing (`Err`:
    /// the command's answer). `None` for any other command.
    pub fn plan_mode_select(
        &self,
        req: &ScsiRequest,
    ) -> Option<Result<(ModeSelectPlan, u32), ScsiResult>> {
        match Cdb::decode(&req.cdb) {
            Ok(Cdb::ModeSelect6(ms)) => {
                Some(mode::plan_mode_select(self, &ms, false, &req.data_out))
            }
            Ok(Cdb::ModeSelect10(ms)) => {
                Some(mode::plan_mode_select(self, &ms, true, &req.data_out))
            }
            _ => None,
        }
    }

    /// Writes everything buffered to stable storage (shutdown, SYNCHRONIZE CACHE).
    pub async fn flush(&self) -> Result<(), crate::store::StoreError> {
        self.store.flush().await
    }

    /// For a short-cut read (the page's owner builds the response): when `cdb` is a
    /// READ(6/10/12/16) of at least one block, inside the capacity and the transfer
    /// limit, of a clustered volume, the volume and the byte range it reads. Any
    /// other command, or any READ that must be refused, is `None`: the normal path
    /// runs it and answers with the right sense.
    pub fn plain_read(
        &self,
        cdb: &[u8],
    ) -> Option<(
        std::sync::Arc<crate::cluster::store::ClusterStore>,
        u64,
        u64,
    )> {
        let BackingStore::Cluster(store) = &self.store else {
            return None;
        };
        let (rw, len_field) = match Cdb::decode(cdb).ok()? {
            Cdb::Read6(rw) => (rw, 4),
            Cdb::Read10(rw) => (rw, 7),
            Cdb::Read12(rw) => (rw, 6),
            Cdb::Read16(rw) => (rw, 10),
            _ => return None,
        };
        let bytes = self.check_rw(&rw, len_field).ok()?;
        if bytes == 0 {
            return None;
        }
        Some((store.clone(), self.offset_of(rw.lba), bytes))
    }

    /// Executes one command (SAM-5 §5.1). Never panics; store errors become MEDIUM ERROR.
    pub async fn execute(&self, req: ScsiRequest) -> ScsiResult {
        let cdb = match Cdb::decode(&req.cdb) {
            Ok(cdb) => cdb,
            Err(e) => return ScsiResult::check(e.sense(), req.expected_len),
        };
        if req.lun != LUN0 {
            return self.execute_for_missing_lun(cdb, &req);
        }
        match cdb {
            // SPC-4 §6.47: no medium to spin up; always ready.
            Cdb::TestUnitReady => ScsiResult::good(Bytes::new(), 0),
            Cdb::Inquiry {
                evpd,
                page_code,
                alloc_len,
            } => {
                let data = if evpd {
                    match inquiry::vpd_page(self, page_code) {
                        Ok(d) => d,
                        Err(sense) => return ScsiResult::check(sense, 0),
                    }
                } else {
                    inquiry::standard(&self.cfg, inquiry::PERIPHERAL_DISK)
                };
                ScsiResult::good_truncated(data, usize::from(alloc_len))
            }
            Cdb::RequestSense { desc, alloc_len } => {
                if desc {
                    // We only produce fixed-format sense (SPC-4 §6.39).
                    return ScsiResult::check(Sense::invalid_field_in_cdb(1, Some(0)), 0);
                }
                // Sense is always delivered with the status (autosense), so nothing
                // is pending here: NO SENSE.
                let data = Sense::new(key::NO_SENSE, Asc::NO_ADDITIONAL_SENSE).to_fixed();
                ScsiResult::good_truncated(data.to_vec(), usize::from(alloc_len))
            }
            Cdb::ReportLuns {
                select_report,
                alloc_len,
            } => report_luns(select_report, alloc_len),
            Cdb::ReadCapacity10 => self.read_capacity10(),
            Cdb::ReadCapacity16 { alloc_len } => self.read_capacity16(alloc_len),
            Cdb::ModeSense6(ms) => match mode::mode_sense(self, &ms, false) {
                Ok(data) => ScsiResult::good_truncated(data, usize::from(ms.alloc_len)),
                Err(sense) => ScsiResult::check(sense, 0),
            },
            Cdb::ModeSense10(ms) => match mode::mode_sense(self, &ms, true) {
                Ok(data) => ScsiResult::good_truncated(data, usize::from(ms.alloc_len)),
                Err(sense) => ScsiResult::check(sense, 0),
            },
            Cdb::ModeSelect6(ms) => mode::mode_select(self, &ms, false, &req.data_out),
            Cdb::ModeSelect10(ms) => mode::mode_select(self, &ms, true, &req.data_out),
            Cdb::Read6(rw) => self.read(rw, 4).await,
            Cdb::Read10(rw) => self.read(rw, 7).await,
            Cdb::Read12(rw) => self.read(rw, 6).await,
            Cdb::Read16(rw) => self.read(rw, 10).await,
            Cdb::Write6(rw) => self.write(rw, 4, req.data_out).await,
            Cdb::Write10(rw) => self.write(rw, 7, req.data_out).await,
            Cdb::Write12(rw) => self.write(rw, 6, req.data_out).await,
            Cdb::Write16(rw) => self.write(rw, 10, req.data_out).await,
            Cdb::SynchronizeCache10 { lba, blocks, .. }
            | Cdb::SynchronizeCache16 { lba, blocks, .. } => {
                self.synchronize_cache(lba, blocks).await
            }
            Cdb::Verify10(v) => self.verify(v, 7, req.data_out).await,
            Cdb::Verify12(v) => self.verify(v, 6, req.data_out).await,
            Cdb::Verify16(v) => self.verify(v, 10, req.data_out).await,
            Cdb::WriteAndVerify10(v) => self.write_and_verify(v, 7, req.data_out).await,
            Cdb::WriteAndVerify12(v) => self.write_and_verify(v, 6, req.data_out).await,
            Cdb::WriteAndVerify16(v) => self.write_and_verify(v, 10, req.data_out).await,
            Cdb::PreFetch10(p) | Cdb::PreFetch16(p) => self.prefetch(p).await,
            Cdb::OrWrite16(rw) => self.orwrite(rw, req.data_out).await,
            Cdb::CompareAndWrite(rw) => self.compare_and_write(rw, req.data_out).await,
            Cdb::WriteAtomic16(rw) => self.write_atomic(rw, &req.cdb, req.data_out).await,
            Cdb::WriteSame10(ws) => self.write_same(ws, 7, req.data_out).await,
            Cdb::WriteSame16(ws) => self.write_same(ws, 10, req.data_out).await,
            Cdb::Unmap { anchor, param_len } => self.unmap(anchor, param_len, req.data_out).await,
            Cdb::GetLbaStatus { lba, alloc_len } => self.get_lba_status(lba, alloc_len).await,
            Cdb::StartStopUnit(ss) => self.start_stop_unit(ss).await,
            Cdb::PreventAllowMediumRemoval { prevent } => block::prevent_allow(prevent),
            Cdb::ReportSupportedOpcodes(r) => opcodes::report_supported_opcodes(self, &r),
            Cdb::ReadDefectData {
                twelve,
                req_plist,
                req_glist,
                format,
                alloc_len,
            } => block::read_defect_data(twelve, req_plist, req_glist, format, alloc_len),
            Cdb::ReportSupportedTmfs { repd, alloc_len } => {
                opcodes::report_supported_tmfs(repd, alloc_len)
            }
            Cdb::UnsupportedServiceAction { .. } => {
                ScsiResult::check(Sense::invalid_field_in_cdb(1, Some(4)), req.expected_len)
            }
            Cdb::Unknown(_) => ScsiResult::check(
                Sense::new(key::ILLEGAL_REQUEST, Asc::INVALID_COMMAND_OPERATION_CODE)
                    .with_field_pointer(FieldPointer {
                        in_cdb: true,
                        byte: 0,
                        bit: None,
                    }),
                req.expected_len,
            ),
        }
    }

    /// A LUN we do not have (SPC-4 §6.6.2, §6.33, §6.39; SAM-5 §5.8.4): INQUIRY answers
    /// with peripheral qualifier 011b, REPORT LUNS works, REQUEST SENSE returns
    /// LOGICAL UNIT NOT SUPPORTED as data, everything else fails with it.
    fn execute_for_missing_lun(&self, cdb: Cdb, req: &ScsiRequest) -> ScsiResult {
        let not_supported = Sense::new(key::ILLEGAL_REQUEST, Asc::LOGICAL_UNIT_NOT_SUPPORTED);
        match cdb {
            Cdb::Inquiry {
                evpd,
                page_code,
                alloc_len,
            } => {
                let data = if evpd {
                    vec![inquiry::PERIPHERAL_NO_LUN, page_code, 0, 0]
                } else {
                    inquiry::standard(&self.cfg, inquiry::PERIPHERAL_NO_LUN)
                };
                ScsiResult::good_truncated(data, usize::from(alloc_len))
            }
            Cdb::ReportLuns {
                select_report,
                alloc_len,
            } => report_luns(select_report, alloc_len),
            Cdb::RequestSense { alloc_len, .. } => {
                ScsiResult::good_truncated(not_supported.to_fixed().to_vec(), alloc_len.into())
            }
            _ => ScsiResult::check(not_supported, req.expected_len),
        }
    }

    /// Checks that `[lba, lba + blocks)` lies within the unit (SBC-3 §4.5).
    fn check_range(&self, lba: u64, blocks: u32) -> Result<(), Sense> {
        match lba.checked_add(u64::from(blocks)) {
            Some(end) if end <= self.num_blocks => Ok(()),
            _ => Err(Sense::new(key::ILLEGAL_REQUEST, Asc::LBA_OUT_OF_RANGE)),
        }
    }

    /// Common checks of READ and WRITE: range, then size limit. Returns the byte
    /// length of the transfer.
    fn check_rw(&self, rw: &RwCdb, len_field: u16) -> Result<u64, Sense> {
        self.check_range(rw.lba, rw.blocks)?;
        let bytes = u64::from(rw.blocks) * u64::from(self.cfg.block_size);
        if bytes > MAX_TRANSFER_BYTES {
            return Err(Sense::invalid_field_in_cdb(len_field, None));
        }
        Ok(bytes)
    }

    /// Bytes a READ/WRITE CDB asks to move, saturated to u32.
    fn rw_transfer_len(&self, rw: &RwCdb) -> u32 {
        self.blocks_len(rw.blocks)
    }

    /// `blocks` logical blocks in bytes, saturated to u32 (for transfer lengths).
    fn blocks_len(&self, blocks: u32) -> u32 {
        let bytes = u64::from(blocks) * u64::from(self.cfg.block_size);
        u32::try_from(bytes).unwrap_or(u32::MAX)
    }

    /// LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT: physical blocks are 4 KiB, so 3 for
    /// 512-byte logical blocks and 0 for 4096-byte ones.
    fn lbppb_exponent(&self) -> u8 {
        const PHYSICAL_BLOCK_SIZE: u32 = 4096;
        let per = (PHYSICAL_BLOCK_SIZE / self.cfg.block_size).max(1);
        per.trailing_zeros() as u8
    }

    /// Logical blocks per physical block (1 << LBPPBE).
    fn lbppb(&self) -> u64 {
        1 << self.lbppb_exponent()
    }

    /// Byte offset of a logical block in the store.
    fn offset_of(&self, lba: u64) -> u64 {
        lba * u64::from(self.cfg.block_size)
    }

    /// DATA PROTECT / WRITE PROTECTED when the medium may not be modified: a read-only
    /// volume, or software write protect (SWP) set through the Control mode page
    /// (SBC-3 §4.11, SPC-4 §7.5.7).
    fn check_writable(&self) -> Result<(), Sense> {
        if self.is_write_protected() {
            return Err(Sense::new(key::DATA_PROTECT, Asc::WRITE_PROTECTED));
        }
        Ok(())
    }

    /// Whether writes are refused (read-only volume or SWP), as MODE SENSE's WP bit.
    fn is_write_protected(&self) -> bool {
        self.opts.read_only || self.mode.swp()
    }

    /// The Data-Out bytes a command writes: all `bytes` the CDB asks for, or only the
    /// whole blocks received when fewer arrived (EDTL too small; the session reports
    /// the residual). Extra bytes are ignored; a partial block is INVALID FIELD IN
    /// INFORMATION UNIT.
    fn whole_blocks(&self, data_out: Bytes, bytes: usize) -> Result<Bytes, Sense> {
        if data_out.len() >= bytes {
            Ok(data_out.slice(..bytes))
        } else if data_out.len().is_multiple_of(self.cfg.block_size as usize) {
            Ok(data_out)
        } else {
            Err(Sense::new(
                key::ILLEGAL_REQUEST,
                Asc::INVALID_FIELD_IN_INFORMATION_UNIT,
            ))
        }
    }

    /// Reads `len` bytes from block `lba`; failures are MEDIUM ERROR.
    async fn read_medium(&self, lba: u64, len: usize) -> Result<Bytes, Sense> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        self.store
            .read_at(self.offset_of(lba), len)
            .await
            .map_err(|e| {
                tracing::warn!(lu = %self.cfg.name, lba, error = %e, "read failed");
                Sense::new(key::MEDIUM_ERROR, Asc::UNRECOVERED_READ_ERROR).with_information(lba)
            })
    }

    /// Writes `data` at block `lba`, then makes it durable when FUA asks for it or the
    /// write cache is disabled (WCE = 0 in the Caching mode page: every write is on
    /// stable storage before GOOD, SBC-3 §6.4.5). Failures are MEDIUM ERROR.
    /// The durable write of a clustered volume sends each page with FUA to its
    /// primary, which flushes its copy and has every replica flush theirs, instead
    /// of flushing the volume on every node.
    async fn write_medium(&self, lba: u64, data: Bytes, fua: bool) -> Result<(), Sense> {
        if data.is_empty() {
            return self.flush_if_needed(lba, fua).await;
        }
        let offset = self.offset_of(lba);
        let written = match &self.store {
            BackingStore::Cluster(c) if fua || !self.mode.wce() => {
                Box::pin(c.write_at(offset, data, true))
                    .await
                    .map_err(|e| e.to_string())
            }
            _ => match self.store.write_at(offset, data).await {
                Ok(()) => return self.flush_if_needed(lba, fua).await,
                Err(e) => Err(e.to_string()),
            },
        };
        if let Err(e) = written {
            tracing::warn!(lu = %self.cfg.name, lba, error = %e, "write failed");
            return Err(Sense::new(key::MEDIUM_ERROR, Asc::WRITE_ERROR).with_information(lba));
        }
        Ok(())
    }

    /// Flushes when FUA is set or the write cache is disabled.
    async fn flush_if_needed(&self, lba: u64, fua: bool) -> Result<(), Sense> {
        if fua || !self.mode.wce() {
            if let Err(e) = self.store.flush().await {
                tracing::warn!(lu = %self.cfg.name, error = %e, "flush failed");
                return Err(Sense::new(key::MEDIUM_ERROR, Asc::WRITE_ERROR).with_information(lba));
            }
        }
        Ok(())
    }

    /// READ(6/10/12/16) (SBC-3 §5.11-5.14). DPO and FUA need nothing: reads come from
    /// the page cache, which is coherent with every completed write.
    async fn read(&self, rw: RwCdb, len_field: u16) -> ScsiResult {
        let transfer_len = self.rw_transfer_len(&rw);
        let bytes = match self.check_rw(&rw, len_field) {
            Ok(bytes) => bytes,
            Err(sense) => return ScsiResult::check(sense, transfer_len),
        };
        if bytes == 0 {
            return ScsiResult::good(Bytes::new(), 0);
        }
        let _range = self.locks.lock(rw.lba, u64::from(rw.blocks), false).await;
        match self.read_medium(rw.lba, bytes as usize).await {
            Ok(data) => ScsiResult::good(data, transfer_len),
            Err(sense) => ScsiResult::check(sense, transfer_len),
        }
    }

    /// WRITE(6/10/12/16) (SBC-3 §5.35-5.40). When fewer bytes arrived than the CDB
    /// asks (EDTL too small), only the whole blocks received are written and the
    /// command is GOOD, with the session reporting the overflow residual (libiscsi
    /// test_write10_residuals); a partial block is refused with INVALID FIELD IN
    /// INFORMATION UNIT and nothing is written. Extra bytes beyond the CDB's length are
    /// ignored. FUA (or WCE = 0) flushes before GOOD. The range is held exclusively, so
    /// the write is atomic to overlapping reads and writes.
    async fn write(&self, rw: RwCdb, len_field: u16, data_out: Bytes) -> ScsiResult {
        let transfer_len = self.rw_transfer_len(&rw);
        let bytes = match self.check_rw(&rw, len_field) {
            Ok(bytes) => bytes as usize,
            Err(sense) => return ScsiResult::check(sense, transfer_len),
        };
        if let Err(sense) = self.check_writable() {
            return ScsiResult::check(sense, transfer_len);
        }
        if bytes == 0 {
            return ScsiResult::ok(0);
        }
        let data = match self.whole_blocks(data_out, bytes) {
            Ok(data) => data,
            Err(sense) => return ScsiResult::check(sense, transfer_len),
        };
        let blocks = data.len() as u64 / u64::from(self.cfg.block_size);
        let _range = self.locks.lock(rw.lba, blocks, true).await;
        match self.write_medium(rw.lba, data, rw.fua).await {
            Ok(()) => ScsiResult::ok(transfer_len),
            Err(sense) => ScsiResult::check(sense, transfer_len),
        }
    }

    /// SYNCHRONIZE CACHE(10/16) (SBC-3 §5.22): flushes the whole store; IMMED is
    /// honoured by simply finishing the flush before answering.
    async fn synchronize_cache(&self, lba: u64, blocks: u32) -> ScsiResult {
        // The first block must exist even when NUMBER OF BLOCKS is 0 ("to the end").
        if lba >= self.num_blocks {
            return ScsiResult::check(Sense::new(key::ILLEGAL_REQUEST, Asc::LBA_OUT_OF_RANGE), 0);
        }
        if let Err(sense) = self.check_range(lba, blocks) {
            return ScsiResult::check(sense, 0);
        }
        match self.store.flush().await {
            Ok(()) => ScsiResult::good(Bytes::new(), 0),
            Err(e) => {
                tracing::warn!(lu = %self.cfg.name, error = %e, "flush failed");
                ScsiResult::check(Sense::new(key::MEDIUM_ERROR, Asc::WRITE_ERROR), 0)
            }
        }
    }

    /// READ CAPACITY(10) (SBC-3 §5.15.2): last LBA, or 0xFFFFFFFF when it does not fit.
    fn read_capacity10(&self) -> ScsiResult {
        let last = u32::try_from(self.num_blocks - 1).unwrap_or(u32::MAX);
        let mut d = Vec::with_capacity(8);
        d.extend_from_slice(&last.to_be_bytes());
        d.extend_from_slice(&self.cfg.block_size.to_be_bytes());
        ScsiResult::good(Bytes::from(d), 8)
    }

    /// READ CAPACITY(16) (SBC-3 §5.16.2): no protection, 4 KiB physical blocks (LBPPBE
    /// 3 for 512-byte logical blocks, 0 for 4096-byte ones; lowest aligned LBA 0);
    /// LBPME and LBPRZ = 1 on a thin volume (deallocated blocks read as zeros),
    /// both 0 when fully provisioned. Any allocation length is fine, even 0.
    fn read_capacity16(&self, alloc_len: u32) -> ScsiResult {
        const READ_CAPACITY_16_LEN: usize = 32;
        /// Byte 14: LBPME (bit 7) and LBPRZ (bit 6).
        const LBPME_LBPRZ: u8 = 0xc0;
        let mut d = vec![0u8; READ_CAPACITY_16_LEN];
        d[0..8].copy_from_slice(&(self.num_blocks - 1).to_be_bytes());
        d[8..12].copy_from_slice(&self.cfg.block_size.to_be_bytes());
        d[13] = self.lbppb_exponent();
        if self.opts.thin {
            d[14] = LBPME_LBPRZ;
        }
        ScsiResult::good_truncated(d, alloc_len as usize)
    }
}

/// REPORT LUNS (SPC-4 §6.33): one LUN, 0, in single-level flat form.
fn report_luns(select_report: u8, alloc_len: u32) -> ScsiResult {
    /// SPC-4 §6.33.1: an allocation length below 16 is INVALID FIELD IN CDB.
    const MIN_ALLOC_LEN: u32 = 16;
    /// SELECT REPORT: 00h all LUNs except well-known, 01h well-known only, 02h all.
    const SELECT_ALL_BUT_WELL_KNOWN: u8 = 0x00;
    const SELECT_WELL_KNOWN: u8 = 0x01;
    const SELECT_ALL: u8 = 0x02;
    if alloc_len < MIN_ALLOC_LEN {
        return ScsiResult::check(Sense::invalid_field_in_cdb(6, None), 0);
    }
    let luns: &[u64] = match select_report {
        SELECT_ALL_BUT_WELL_KNOWN | SELECT_ALL => &[LUN0],
        SELECT_WELL_KNOWN => &[],
        _ => return ScsiResult::check(Sense::invalid_field_in_cdb(2, None), 0),
    };
    let mut d = Vec::with_capacity(8 + 8 * luns.len());
    d.extend_from_slice(&((8 * luns.len()) as u32).to_be_bytes());
    d.extend_from_slice(&[0; 4]);
    for &lun in luns {
        // Peripheral device addressing, bus 0 (SAM-5 §4.7.6): LUN < 256 in byte 1.
        d.extend_from_slice(&[0, lun as u8, 0, 0, 0, 0, 0, 0]);
    }
    ScsiResult::good_truncated(d, alloc_len as usize)
}
