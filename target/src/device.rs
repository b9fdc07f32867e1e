//! The nexus-aware layer over a logical unit: what SCSI state depends on *which*
//! I_T nexus sends a command (SAM-5 §4.6): unit attention conditions ([`crate::ua`]),
//! persistent reservations ([`crate::pr`], SPC-4 §5.13), RESERVE/RELEASE (SPC-2
//! §7.21, §7.17, with the SPC-4 §5.13.3 exceptions), and what resets and nexus loss
//! do to them. The logical unit below it executes CDBs and knows nothing of
//! initiators.
//!
//! Every command to LUN 0 passes, in order (SAM-5 §5.14, SPC-4 §5.13.1):
//! 1. the unit attention check of its nexus ([`UnitAttentions::on_command`]);
//! 2. the SPC-2 reservation check (another nexus holds RESERVE: most commands get
//!    RESERVATION CONFLICT);
//! 3. the persistent reservation check ([`PrState::conflicts`]);
//! 4. PERSISTENT RESERVE IN/OUT and RESERVE/RELEASE(6/10) run here, everything else
//!    in the logical unit.
//!
//! Choices:
//! - No power-on unit attention for new nexuses: no libiscsi test needs it, and
//!   every fresh session (random ISID) would pay a CHECK CONDITION for nothing.
//! - Resets raise their unit attention for every nexus, the requester's included
//!   (SAM-5 §6.3: "for all I_T nexuses"; libiscsi MultipathIO.Reset expects it on
//!   the path that sent the reset too). LOGICAL UNIT RESET raises 29/03, TARGET WARM
//!   RESET (a SAM-5 hard reset) 29/02, TARGET COLD RESET (a power-on, RFC 7143
//!   §11.5.1) 29/01. Resets release SPC-2 reservations; persistent reservations and
//!   registrations survive every reset (SPC-4 §5.13.1), the cold one included, since
//!   dropping a cluster's fence on a TMF would be worse than keeping it.
//! - Nexus loss (logout, dropped connection, reinstatement) releases the nexus's
//!   SPC-2 reservation and forgets its unit attentions unless it is a registrant:
//!   a registrant reconnecting with the same ISID still learns that it was
//!   preempted. No I_T NEXUS LOSS OCCURRED is raised (its only audience would be
//!   that same nexus, which already knows).
//! - APTPL: with an APTPL file ([`Device::with_aptpl_file`]) registrations and the
//!   reservation are written (temp file, fsync, rename, fsync of the directory)
//!   before PERSISTENT RESERVE OUT returns GOOD while APTPL is active, and loaded at
//!   start; the file is removed when APTPL is turned off. Without one, APTPL = 1 is
//!   refused (PTPL_C = 0).
//! - PREEMPT AND ABORT preempts like PREEMPT; aborting the preempted nexuses' tasks
//!   needs the connection's task table, which the device cannot reach: it is logged.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use mosaic_proto::scsi::sense::key;
use mosaic_proto::scsi::{status, Asc, Sense};
use parking_lot::Mutex;

use crate::pr::{Initiator, PrError, PrState, PrType};
use crate::scsi::{LogicalUnit, ScsiRequest, ScsiResult, LUN0};
use crate::store::StoreError;
use crate::ua::{self, UaAction, UnitAttentions};

/// One I_T nexus: an initiator port talking to a target port (SAM-5 §4.6, RFC 7143
/// §4.4.1 for the iSCSI names).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Nexus {
    /// iSCSI initiator port name: `<InitiatorName>,i,0x<ISID>`.
    pub initiator_port: Arc<str>,
    /// The initiator's iSCSI name alone (TransportIDs carry it, SPC-4 §7.6.4.6).
    pub initiator_name: Arc<str>,
    /// iSCSI target port name: `<TargetName>,t,0x<TPGT>`.
    pub target_port: Arc<str>,
    /// Relative target port identifier (VPD 0x83).
    pub relative_port: u16,
}

impl Nexus {
    /// The nexus of a session: initiator name and ISID, target name and portal group.
    pub fn new(
        initiator_name: &str,
        isid: u64,
        target_name: &str,
        tpgt: u16,
        relative_port: u16,
    ) -> Nexus {
        Nexus {
            initiator_port: format!("{initiator_name},i,0x{isid:012x}").into(),
            initiator_name: initiator_name.into(),
            target_port: format!("{target_name},t,0x{tpgt:04x}").into(),
            relative_port,
        }
    }
}

/// Which reset happened (SAM-5 §6.3, RFC 7143 §11.5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetKind {
    /// LOGICAL UNIT RESET.
    LogicalUnit,
    /// TARGET WARM RESET.
    TargetWarm,
    /// TARGET COLD RESET.
    TargetCold,
}

/// A logical unit shared by every session, with its nexus-dependent state.
#[derive(Debug)]
pub struct Device {
    lu: LogicalUnit,
    /// Unit attentions, reservations and the nexuses we know; never held across I/O
    /// except the small APTPL file write.
    state: Mutex<State>,
    /// Where APTPL state is kept; `None`: APTPL is not supported.
    aptpl_file: Option<PathBuf>,
}

/// Errors creating a device.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The APTPL file exists but cannot be read.
    #[error("reading persistent reservations from {path}: {source}")]
    ReadAptpl {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The APTPL file is not valid.
    #[error("persistent reservations in {path} are invalid: {why}")]
    BadAptpl { path: PathBuf, why: String },
}

#[derive(Debug, Default)]
struct State {
    ua: UnitAttentions,
    pr: PrState,
    /// The initiator port holding an SPC-2 RESERVE, if any.
    spc2: Option<Arc<str>>,
    /// The nexuses that sent a command and were not lost since, by initiator port.
    nexuses: HashMap<Arc<str>, Nexus>,
}

/// Operation codes handled here rather than by the logical unit (SPC-2 §7.17, §7.21).
mod op {
    pub const RESERVE_6: u8 = 0x16;
    pub const RELEASE_6: u8 = 0x17;
    pub const RESERVE_10: u8 = 0x56;
    pub const RELEASE_10: u8 = 0x57;
    pub const MODE_SELECT_6: u8 = 0x15;
    pub const MODE_SELECT_10: u8 = 0x55;
}

fn result(status: u8, sense: Option<Sense>, data: Vec<u8>, transfer_len: u32) -> ScsiResult {
    ScsiResult {
        status,
        sense: sense.map(|s| s.to_bytes()).unwrap_or_default(),
        data_in: Bytes::from(data),
        transfer_len,
    }
}

fn conflict(req: &ScsiRequest) -> ScsiResult {
    result(
        status::RESERVATION_CONFLICT,
        None,
        Vec::new(),
        req.expected_len,
    )
}

fn check(sense: Sense, transfer_len: u32) -> ScsiResult {
    result(
        status::CHECK_CONDITION,
        Some(sense),
        Vec::new(),
        transfer_len,
    )
}

fn good(data: Vec<u8>, transfer_len: u32) -> ScsiResult {
    result(status::GOOD, None, data, transfer_len)
}

/// May a command from a nexus that does not hold an SPC-2 reservation run? (SPC-2
/// §5.5.1: INQUIRY, REQUEST SENSE, REPORT LUNS, LOG SENSE, RELEASE (which does
/// nothing), PREVENT ALLOW MEDIUM REMOVAL with PREVENT = 0, and SPC-3's REPORT
/// TARGET PORT GROUPS.)
fn spc2_allowed(cdb: &[u8]) -> bool {
    let byte = |i: usize| cdb.get(i).copied().unwrap_or(0);
    match byte(0) {
        0x12 | 0x03 | 0xa0 | 0x4d | op::RELEASE_6 | op::RELEASE_10 => true,
        0x1e => byte(4) & 0x03 == 0,
        0xa3 => byte(1) & 0x1f == 0x0a,
        _ => false,
    }
}

impl State {
    /// Remembers `nexus` as one to tell about resets and changes.
    fn know(&mut self, nexus: &Nexus) {
        if !self.nexuses.contains_key(&*nexus.initiator_port) {
            self.nexuses
                .insert(nexus.initiator_port.clone(), nexus.clone());
        }
    }

    /// Raises `asc` for every known nexus and every registered initiator port,
    /// except `except`.
    fn raise_all(&mut self, asc: Asc, except: Option<&Nexus>) {
        let mut ports: Vec<String> = self.nexuses.keys().map(|p| p.to_string()).collect();
        for r in &self.pr.registrations {
            if let Initiator::Port(p) = &r.initiator {
                ports.push(p.clone());
            }
        }
        for p in ports {
            if except.is_some_and(|n| n.initiator_port.eq_ignore_ascii_case(&p)) {
                continue;
            }
            self.ua.raise(&p, asc);
        }
    }

    /// Raises `asc` for the nexuses `who` names: its port, or every known port of
    /// the initiator.
    fn raise_for(&mut self, who: &Initiator, asc: Asc) {
        match who {
            Initiator::Port(p) => {
                self.ua.raise(p, asc);
            }
            Initiator::Device(_) => {
                let ports: Vec<Arc<str>> = self
                    .nexuses
                    .keys()
                    .filter(|p| who.matches_port(p))
                    .cloned()
                    .collect();
                for p in ports {
                    self.ua.raise(&p, asc);
                }
            }
        }
    }

    /// Steps 1-3 of the module docs: `Some` is the command's answer.
    fn gate(&mut self, nexus: &Nexus, req: &ScsiRequest) -> Option<ScsiResult> {
        self.know(nexus);
        match self.ua.on_command(&nexus.initiator_port, &req.cdb) {
            UaAction::Proceed => {}
            UaAction::Report(asc) => {
                return Some(check(
                    Sense::new(key::UNIT_ATTENTION, asc),
                    req.expected_len,
                ));
            }
            UaAction::AsSenseData(asc) => {
                // REQUEST SENSE (SPC-4 §6.39): the condition as data, GOOD status.
                let alloc_len = usize::from(req.cdb.get(4).copied().unwrap_or(0));
                let mut d = Sense::new(key::UNIT_ATTENTION, asc).to_fixed().to_vec();
                d.truncate(alloc_len);
                let len = d.len() as u32;
                return Some(good(d, len));
            }
        }
        if let Some(holder) = &self.spc2 {
            if **holder != *nexus.initiator_port && !spc2_allowed(&req.cdb) {
                return Some(conflict(req));
            }
        }
        if self.pr.conflicts(nexus, &req.cdb) {
            return Some(conflict(req));
        }
        None
    }
}

impl Device {
    /// A device without APTPL support.
    pub fn new(lu: LogicalUnit) -> Device {
        Device {
            lu,
            state: Mutex::new(State::default()),
            aptpl_file: None,
        }
    }

    /// A device that keeps APTPL persistent reservations in `aptpl_file` (e.g.
    /// `<data_dir>/<volume>.pr.toml`), restoring what is there. `None` is
    /// [`Device::new`].
    pub fn with_aptpl_file(
        lu: LogicalUnit,
        aptpl_file: Option<PathBuf>,
    ) -> Result<Device, DeviceError> {
        let mut pr = PrState::default();
        if let Some(path) = &aptpl_file {
            match std::fs::read_to_string(path) {
                Ok(text) => {
                    let bad = |why: String| DeviceError::BadAptpl {
                        path: path.clone(),
                        why,
                    };
                    let persisted = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
                    pr = PrState::from_persisted(&persisted).map_err(bad)?;
                    tracing::info!(
                        lu = %lu.config().name,
                        registrations = pr.registrations.len(),
                        reserved = pr.reservation.is_some(),
                        "restored persistent reservations (APTPL)"
                    );
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(DeviceError::ReadAptpl {
                        path: path.clone(),
                        source,
                    })
                }
            }
        }
        Ok(Device {
            lu,
            state: Mutex::new(State {
                pr,
                ..State::default()
            }),
            aptpl_file,
        })
    }

    /// The logical unit below.
    pub fn lu(&self) -> &LogicalUnit {
        &self.lu
    }

    /// Executes a command arriving on `nexus`.
    pub async fn execute(&self, nexus: &Nexus, req: ScsiRequest) -> ScsiResult {
        if req.lun != LUN0 || req.cdb.is_empty() {
            return self.lu.execute(req).await;
        }
        if let Some(answer) = self.state.lock().gate(nexus, &req) {
            return answer;
        }
        match req.cdb[0] {
            crate::pr::PERSISTENT_RESERVE_IN => self.persistent_reserve_in(&req),
            crate::pr::PERSISTENT_RESERVE_OUT => self.persistent_reserve_out(nexus, &req),
            op::RESERVE_6 | op::RESERVE_10 => self.reserve(nexus, &req),
            op::RELEASE_6 | op::RELEASE_10 => self.release(nexus, &req),
            opcode => {
                let result = self.lu.execute(req).await;
                // SPC-4 §6.11: a MODE SELECT tells every other nexus.
                if matches!(opcode, op::MODE_SELECT_6 | op::MODE_SELECT_10)
                    && result.status == status::GOOD
                {
                    self.raise_all_except(ua::asc::MODE_PARAMETERS_CHANGED, nexus);
                }
                result
            }
        }
    }

    /// A reset requested on `from` took effect (see the module docs).
    pub fn reset(&self, kind: ResetKind, from: &Nexus) {
        let asc = match kind {
            ResetKind::LogicalUnit => ua::asc::BUS_DEVICE_RESET_FUNCTION_OCCURRED,
            ResetKind::TargetWarm => ua::asc::SCSI_BUS_RESET_OCCURRED,
            ResetKind::TargetCold => ua::asc::POWER_ON_OCCURRED,
        };
        let mut st = self.state.lock();
        st.know(from);
        st.spc2 = None;
        st.raise_all(asc, None);
    }

    /// The nexus is gone (logout, connection loss, session reinstatement).
    pub fn nexus_lost(&self, nexus: &Nexus) {
        let mut st = self.state.lock();
        st.nexuses.remove(&*nexus.initiator_port);
        if st.spc2.as_deref() == Some(&*nexus.initiator_port) {
            st.spc2 = None;
        }
        if !st.pr.is_registered(nexus) {
            st.ua.drop_nexus(&nexus.initiator_port);
        }
    }

    /// A nexus logged in: it will hear of resets and changes even before its first
    /// command. (Commands register their nexus too; this only closes that gap.)
    pub fn nexus_added(&self, nexus: &Nexus) {
        self.state.lock().know(nexus);
    }

    /// Establishes a unit attention for every nexus (e.g. CAPACITY DATA HAS CHANGED
    /// 2A/09, REPORTED LUNS DATA HAS CHANGED 3F/0E; see [`ua::asc`]).
    pub fn raise_all(&self, asc: Asc) {
        self.state.lock().raise_all(asc, None);
    }

    /// Establishes a unit attention for every nexus but `except` (e.g. MODE
    /// PARAMETERS CHANGED 2A/01 after `except` ran MODE SELECT).
    pub fn raise_all_except(&self, asc: Asc, except: &Nexus) {
        self.state.lock().raise_all(asc, Some(except));
    }

    /// The unit attentions pending for `nexus`, oldest first.
    pub fn pending_unit_attentions(&self, nexus: &Nexus) -> Vec<Asc> {
        self.state.lock().ua.pending(&nexus.initiator_port)
    }

    /// PERSISTENT RESERVE IN (SPC-4 §6.15).
    fn persistent_reserve_in(&self, req: &ScsiRequest) -> ScsiResult {
        let cdb = &req.cdb;
        if cdb.len() < 10 {
            return check(Sense::invalid_field_in_cdb(0, None), req.expected_len);
        }
        let alloc_len = usize::from(u16::from_be_bytes([cdb[7], cdb[8]]));
        let st = self.state.lock();
        match st.pr.persistent_reserve_in(cdb, self.aptpl_file.is_some()) {
            Ok(mut d) => {
                d.truncate(alloc_len);
                let len = d.len() as u32;
                good(d, len)
            }
            Err(sense) => check(sense, 0),
        }
    }

    /// PERSISTENT RESERVE OUT (SPC-4 §6.16): runs the service action, persists the
    /// state if APTPL is (or was) active, then raises the unit attentions it causes.
    fn persistent_reserve_out(&self, nexus: &Nexus, req: &ScsiRequest) -> ScsiResult {
        let cdb = &req.cdb;
        if cdb.len() < 10 {
            return check(Sense::invalid_field_in_cdb(0, None), req.expected_len);
        }
        let param_len = u32::from_be_bytes([cdb[5], cdb[6], cdb[7], cdb[8]]);
        let mut st = self.state.lock();
        let before = st.pr.clone();
        let can_persist = self.aptpl_file.is_some();
        let fx = match st
            .pr
            .persistent_reserve_out(nexus, cdb, &req.data_out, can_persist)
        {
            Ok(fx) => fx,
            Err(PrError::Conflict) => return conflict(req),
            Err(PrError::Check(sense)) => return check(sense, param_len),
        };
        if fx.changed && (st.pr.aptpl || before.aptpl) {
            if let Err(e) = self.save(&st.pr) {
                tracing::error!(lu = %self.lu.config().name, error = %e, "persisting reservations failed; PERSISTENT RESERVE OUT undone");
                st.pr = before;
                return check(
                    Sense::new(key::HARDWARE_ERROR, Asc::INTERNAL_TARGET_FAILURE),
                    param_len,
                );
            }
        }
        for (who, asc) in &fx.unit_attentions {
            st.raise_for(who, *asc);
        }
        if !fx.abort.is_empty() {
            tracing::info!(
                lu = %self.lu.config().name,
                preempted = ?fx.abort,
                "PREEMPT AND ABORT: the preempted nexuses' tasks are not aborted by the device"
            );
        }
        good(Vec::new(), param_len)
    }

    /// Writes the state to the APTPL file, or removes the file when APTPL is off.
    fn save(&self, pr: &PrState) -> std::io::Result<()> {
        let Some(path) = &self.aptpl_file else {
            return Ok(());
        };
        if !pr.aptpl {
            return match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            };
        }
        let text = toml::to_string(&pr.to_persisted()).map_err(std::io::Error::other)?;
        write_atomically(path, text.as_bytes())
    }

    /// RESERVE(6) and RESERVE(10) (SPC-2 §7.21), with the SPC-4 §5.13.3 exceptions
    /// for logical units that have registrations (CRH = 1).
    fn reserve(&self, nexus: &Nexus, req: &ScsiRequest) -> ScsiResult {
        // RESERVE(6) bit 0 is the obsolete extent bit; RESERVE(10) adds 3RDPTY
        // (bit 4) and LONGID (bit 1): no third-party or extent reservations.
        let invalid = if req.cdb[0] == op::RESERVE_6 {
            0x01
        } else {
            0x13
        };
        if req.cdb.get(1).copied().unwrap_or(0) & invalid != 0 {
            return check(Sense::invalid_field_in_cdb(1, None), req.expected_len);
        }
        let mut st = self.state.lock();
        if !st.pr.registrations.is_empty() {
            return if Self::crh_noop(&st.pr, nexus) {
                good(Vec::new(), 0)
            } else {
                conflict(req)
            };
        }
        match &st.spc2 {
            Some(holder) if **holder != *nexus.initiator_port => conflict(req),
            _ => {
                st.spc2 = Some(nexus.initiator_port.clone());
                good(Vec::new(), 0)
            }
        }
    }

    /// RELEASE(6) and RELEASE(10) (SPC-2 §7.17): releasing a reservation one does
    /// not hold does nothing.
    fn release(&self, nexus: &Nexus, req: &ScsiRequest) -> ScsiResult {
        let invalid = if req.cdb[0] == op::RELEASE_6 {
            0x01
        } else {
            0x13
        };
        if req.cdb.get(1).copied().unwrap_or(0) & invalid != 0 {
            return check(Sense::invalid_field_in_cdb(1, None), req.expected_len);
        }
        let mut st = self.state.lock();
        if !st.pr.registrations.is_empty() {
            return if Self::crh_noop(&st.pr, nexus) {
                good(Vec::new(), 0)
            } else {
                conflict(req)
            };
        }
        if st.spc2.as_deref() == Some(&*nexus.initiator_port) {
            st.spc2 = None;
        }
        good(Vec::new(), 0)
    }

    /// SPC-4 §5.13.3: with registrations present, RESERVE and RELEASE complete with
    /// GOOD and change nothing when sent by a persistent reservation holder or, under
    /// a registrants-only or all-registrants reservation, by a registrant; otherwise
    /// they conflict (SPC-2 §5.5.1).
    fn crh_noop(pr: &PrState, nexus: &Nexus) -> bool {
        pr.is_holder(nexus)
            || (pr.is_registered(nexus)
                && pr
                    .reservation
                    .as_ref()
                    .is_some_and(|r| PrType::registrants_have_access(r.ptype)))
    }

    /// Writes buffered data to stable storage.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.lu.flush().await
    }
}

/// Replaces `path` with `data` so that a crash leaves the old or the new file, never
/// a mix: write a temporary file beside it, fsync, rename over, fsync the directory.
fn write_atomically(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(d) = dir {
        std::fs::create_dir_all(d)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir.unwrap_or(Path::new(".")))?.sync_all()
}
