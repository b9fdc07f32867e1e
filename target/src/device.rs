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
//!   SPC-2 reservation and forgets its unit attentions, unless it is a registrant
//!   or one of them is about reservations (2A/03-05): an initiator reconnecting
//!   with the same ISID still learns that it was preempted or cleared. At most
//!   [`MAX_IDLE_UA_NEXUSES`] lost nexuses keep conditions; the oldest go first. No
//!   I_T NEXUS LOSS OCCURRED is raised (its only audience would be that same
//!   nexus, which already knows).
//! - APTPL: with an APTPL file ([`Device::with_aptpl_file`]) registrations and the
//!   reservation are written (temp file, fsync, rename, fsync of the directory)
//!   before PERSISTENT RESERVE OUT returns GOOD while APTPL is active, and loaded at
//!   start; the file is removed when APTPL is turned off. Without one, APTPL = 1 is
//!   refused (PTPL_C = 0).
//! - PREEMPT AND ABORT preempts like PREEMPT; aborting the preempted nexuses' tasks
//!   needs the connection's task table, which the device cannot reach: it is logged.

use std::collections::{HashMap, VecDeque};
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

/// The most lost I_T nexuses whose unit attentions we keep for their return (see
/// the module docs). Initiators that reconnect reuse their ISID (open-iscsi keeps
/// one per interface); libiscsi picks a new one per session, so without a bound
/// every test run would leave queues behind. A few hundred covers a cluster's paths
/// many times over.
pub const MAX_IDLE_UA_NEXUSES: usize = 256;

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
    /// Lost nexuses whose unit attentions are kept, oldest first.
    idle: VecDeque<Arc<str>>,
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
        let port = &nexus.initiator_port;
        let about_reservations = st.ua.pending(port).iter().any(|a| {
            [
                ua::asc::RESERVATIONS_PREEMPTED,
                ua::asc::RESERVATIONS_RELEASED,
                ua::asc::REGISTRATIONS_PREEMPTED,
            ]
            .contains(a)
        });
        if !about_reservations && !st.pr.is_registered(nexus) {
            st.ua.drop_nexus(port);
            return;
        }
        st.idle.retain(|p| p != port);
        st.idle.push_back(port.clone());
        while st.idle.len() > MAX_IDLE_UA_NEXUSES {
            if let Some(old) = st.idle.pop_front() {
                if !st.nexuses.contains_key(&old) {
                    st.ua.drop_nexus(&old);
                }
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::LuConfig;
    use crate::store::BackingStore;
    use mosaic_proto::scsi::sense::key;

    const BS: u32 = 512;

    fn lu() -> LogicalUnit {
        let cfg = LuConfig {
            name: "vol".into(),
            block_size: BS,
            serial: "S1".into(),
            naa_id: LuConfig::naa_id_for("vol"),
            vendor: "MOSAIC".into(),
            product: "Mosaic volume".into(),
            revision: "0001".into(),
            target_name: "iqn.t:vol".into(),
            relative_port: 1,
            tpg: 1,
        };
        LogicalUnit::new(cfg, BackingStore::memory(1024 * u64::from(BS))).unwrap()
    }

    fn nexus(name: &str, isid: u64) -> Nexus {
        Nexus::new(name, isid, "iqn.t:vol", 1, 1)
    }

    async fn exec(d: &Device, n: &Nexus, cdb: &[u8], data_out: &[u8]) -> ScsiResult {
        let mut c = cdb.to_vec();
        c.resize(16, 0);
        d.execute(
            n,
            ScsiRequest {
                cdb: Bytes::from(c),
                lun: 0,
                data_out: Bytes::copy_from_slice(data_out),
                expected_len: data_out.len().max(512) as u32,
            },
        )
        .await
    }

    const TUR: [u8; 6] = [0; 6];
    const INQUIRY: [u8; 6] = [0x12, 0, 0, 0, 36, 0];
    const READ10: [u8; 10] = [0x28, 0, 0, 0, 0, 1, 0, 0, 1, 0];
    const WRITE10: [u8; 10] = [0x2a, 0, 0, 0, 0, 1, 0, 0, 1, 0];
    const RESERVE6: [u8; 6] = [op::RESERVE_6, 0, 0, 0, 0, 0];
    const RELEASE6: [u8; 6] = [op::RELEASE_6, 0, 0, 0, 0, 0];

    fn prout(sa: u8, ptype: u8, key: u64, sa_key: u64, flags: u8) -> ([u8; 10], Vec<u8>) {
        let mut p = vec![0u8; 24];
        p[0..8].copy_from_slice(&key.to_be_bytes());
        p[8..16].copy_from_slice(&sa_key.to_be_bytes());
        p[20] = flags;
        ([0x5f, sa, ptype, 0, 0, 0, 0, 0, 24, 0], p)
    }

    async fn out(d: &Device, n: &Nexus, sa: u8, ptype: u8, key: u64, sa_key: u64) -> ScsiResult {
        let (cdb, p) = prout(sa, ptype, key, sa_key, 0);
        exec(d, n, &cdb, &p).await
    }

    fn ua_of(r: &ScsiResult) -> Option<Asc> {
        let s = r.sense_data()?;
        (r.status == status::CHECK_CONDITION && s.key == key::UNIT_ATTENTION).then_some(s.asc)
    }

    #[tokio::test]
    async fn lu_reset_raises_29_03_on_every_nexus_and_drops_reserve() {
        let d = Device::new(lu());
        let (a, b) = (nexus("iqn.a", 1), nexus("iqn.b", 2));
        assert_eq!(exec(&d, &a, &RESERVE6, &[]).await.status, status::GOOD);
        d.nexus_added(&b);
        d.reset(ResetKind::LogicalUnit, &a);
        // INQUIRY neither reports nor clears.
        assert_eq!(exec(&d, &b, &INQUIRY, &[]).await.status, status::GOOD);
        for n in [&a, &b] {
            let r = exec(&d, n, &TUR, &[]).await;
            assert_eq!(ua_of(&r), Some(ua::asc::BUS_DEVICE_RESET_FUNCTION_OCCURRED));
            assert_eq!(exec(&d, n, &TUR, &[]).await.status, status::GOOD);
        }
        // The SPC-2 reservation is gone: b may reserve.
        assert_eq!(exec(&d, &b, &RESERVE6, &[]).await.status, status::GOOD);
    }

    #[tokio::test]
    async fn target_resets_use_their_own_codes() {
        let d = Device::new(lu());
        let a = nexus("iqn.a", 1);
        d.reset(ResetKind::TargetWarm, &a);
        d.reset(ResetKind::TargetCold, &a);
        assert_eq!(
            d.pending_unit_attentions(&a),
            vec![ua::asc::SCSI_BUS_RESET_OCCURRED, ua::asc::POWER_ON_OCCURRED]
        );
    }

    #[tokio::test]
    async fn request_sense_returns_the_unit_attention_as_data() {
        let d = Device::new(lu());
        let a = nexus("iqn.a", 1);
        d.nexus_added(&a);
        d.raise_all(ua::asc::CAPACITY_DATA_HAS_CHANGED);
        let r = exec(&d, &a, &[0x03, 0, 0, 0, 18, 0], &[]).await;
        assert_eq!(r.status, status::GOOD);
        let s = Sense::parse_fixed(&r.data_in).unwrap();
        assert_eq!(
            (s.key, s.asc),
            (key::UNIT_ATTENTION, ua::asc::CAPACITY_DATA_HAS_CHANGED)
        );
        assert_eq!(exec(&d, &a, &TUR, &[]).await.status, status::GOOD);
    }

    #[tokio::test]
    async fn spc2_reserve_conflicts_for_others_until_release_or_nexus_loss() {
        let d = Device::new(lu());
        let (a, b) = (nexus("iqn.a", 1), nexus("iqn.b", 2));
        assert_eq!(exec(&d, &a, &RESERVE6, &[]).await.status, status::GOOD);
        assert_eq!(exec(&d, &a, &RESERVE6, &[]).await.status, status::GOOD);
        assert_eq!(
            exec(&d, &b, &RESERVE6, &[]).await.status,
            status::RESERVATION_CONFLICT
        );
        assert_eq!(
            exec(&d, &b, &[0x1a, 0, 0x3f, 0, 192, 0], &[]).await.status,
            status::RESERVATION_CONFLICT
        );
        assert_eq!(exec(&d, &b, &INQUIRY, &[]).await.status, status::GOOD);
        // RELEASE from a non-holder does nothing.
        assert_eq!(exec(&d, &b, &RELEASE6, &[]).await.status, status::GOOD);
        assert_eq!(
            exec(&d, &b, &READ10, &[]).await.status,
            status::RESERVATION_CONFLICT
        );
        assert_eq!(exec(&d, &a, &READ10, &[]).await.status, status::GOOD);
        d.nexus_lost(&a);
        assert_eq!(exec(&d, &b, &READ10, &[]).await.status, status::GOOD);
        // RESERVE(10) third-party reservations are refused.
        let r = exec(&d, &b, &[op::RESERVE_10, 0x10, 0, 0, 0, 0, 0, 0, 0, 0], &[]).await;
        assert_eq!(r.status, status::CHECK_CONDITION);
    }

    #[tokio::test]
    async fn reserve6_with_registrations_follows_crh() {
        let d = Device::new(lu());
        let (a, b) = (nexus("iqn.a", 1), nexus("iqn.b", 2));
        assert_eq!(out(&d, &a, 6, 0, 0, 7).await.status, status::GOOD);
        // Registrations but no reservation: RESERVE conflicts for everyone.
        assert_eq!(
            exec(&d, &a, &RESERVE6, &[]).await.status,
            status::RESERVATION_CONFLICT
        );
        assert_eq!(
            exec(&d, &b, &RESERVE6, &[]).await.status,
            status::RESERVATION_CONFLICT
        );
        // The holder's RESERVE and RELEASE are GOOD and change nothing.
        assert_eq!(out(&d, &a, 1, 1, 7, 0).await.status, status::GOOD);
        assert_eq!(exec(&d, &a, &RESERVE6, &[]).await.status, status::GOOD);
        assert_eq!(exec(&d, &a, &RELEASE6, &[]).await.status, status::GOOD);
        assert_eq!(
            exec(&d, &b, &WRITE10, &[0; 512]).await.status,
            status::RESERVATION_CONFLICT
        );
        // An SPC-2 holder makes PERSISTENT RESERVE commands of others conflict.
        let d = Device::new(lu());
        assert_eq!(exec(&d, &a, &RESERVE6, &[]).await.status, status::GOOD);
        assert_eq!(
            out(&d, &b, 6, 0, 0, 7).await.status,
            status::RESERVATION_CONFLICT
        );
    }

    #[tokio::test]
    async fn preempt_tells_the_preempted_and_not_the_preemptor() {
        let d = Device::new(lu());
        let (a, b) = (nexus("iqn.a", 1), nexus("iqn.b", 2));
        assert_eq!(out(&d, &a, 6, 0, 0, 1).await.status, status::GOOD);
        assert_eq!(out(&d, &b, 6, 0, 0, 2).await.status, status::GOOD);
        assert_eq!(out(&d, &a, 1, 3, 1, 0).await.status, status::GOOD);
        assert_eq!(out(&d, &b, 4, 3, 2, 1).await.status, status::GOOD);
        assert!(d.pending_unit_attentions(&b).is_empty());
        let r = exec(&d, &a, &READ10, &[]).await;
        assert_eq!(ua_of(&r), Some(ua::asc::REGISTRATIONS_PREEMPTED));
        assert_eq!(
            exec(&d, &a, &READ10, &[]).await.status,
            status::RESERVATION_CONFLICT
        );
        // A preempted registrant keeps its unit attentions across nexus loss.
        assert_eq!(out(&d, &a, 6, 0, 0, 1).await.status, status::GOOD);
        assert_eq!(out(&d, &b, 3, 0, 2, 0).await.status, status::GOOD); // CLEAR
        d.nexus_lost(&a);
        assert_eq!(
            d.pending_unit_attentions(&a),
            vec![ua::asc::RESERVATIONS_PREEMPTED]
        );
    }

    #[tokio::test]
    async fn lost_nexuses_keep_reservation_news_within_a_bound() {
        let d = Device::new(lu());
        let b = nexus("iqn.b", 1);
        assert_eq!(out(&d, &b, 6, 0, 0, 9).await.status, status::GOOD);
        let lost: Vec<Nexus> = (0..MAX_IDLE_UA_NEXUSES as u64 + 1)
            .map(|i| nexus("iqn.a", 100 + i))
            .collect();
        // In batches that fit MAX_REGISTRATIONS: register, get preempted by b
        // (REGISTRATIONS PREEMPTED), go away.
        for batch in lost.chunks(64) {
            for n in batch {
                assert_eq!(out(&d, n, 6, 0, 0, 7).await.status, status::GOOD);
            }
            assert_eq!(out(&d, &b, 4, 0, 9, 7).await.status, status::GOOD);
            for n in batch {
                d.nexus_lost(n);
            }
        }
        assert!(
            d.pending_unit_attentions(&lost[0]).is_empty(),
            "oldest evicted"
        );
        assert_eq!(
            d.pending_unit_attentions(&lost[1]),
            vec![ua::asc::REGISTRATIONS_PREEMPTED]
        );
        // A nexus with only a reset condition forgets it.
        let c = nexus("iqn.c", 1);
        d.reset(ResetKind::LogicalUnit, &c);
        d.nexus_lost(&c);
        assert!(d.pending_unit_attentions(&c).is_empty());
    }

    #[tokio::test]
    async fn mode_select_tells_the_other_nexuses() {
        let d = Device::new(lu());
        let (a, b) = (nexus("iqn.a", 1), nexus("iqn.b", 2));
        d.nexus_added(&a);
        d.nexus_added(&b);
        // MODE SELECT(6) with just a header: nothing to change, but GOOD.
        let r = exec(&d, &a, &[0x15, 0x10, 0, 0, 4, 0], &[0, 0, 0, 0]).await;
        if r.status == status::GOOD {
            assert!(d.pending_unit_attentions(&a).is_empty());
            assert_eq!(
                d.pending_unit_attentions(&b),
                vec![ua::asc::MODE_PARAMETERS_CHANGED]
            );
        } else {
            assert!(d.pending_unit_attentions(&b).is_empty());
        }
    }

    #[tokio::test]
    async fn aptpl_state_survives_a_new_device_on_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("vol.pr.toml");
        let a = nexus("iqn.a", 0x23d000001);
        {
            let d = Device::with_aptpl_file(lu(), Some(file.clone())).unwrap();
            let (cdb, p) = prout(6, 0, 0, 0xabc, 0x01);
            assert_eq!(exec(&d, &a, &cdb, &p).await.status, status::GOOD);
            assert_eq!(out(&d, &a, 1, 5, 0xabc, 0).await.status, status::GOOD);
        }
        assert!(file.exists());
        let d = Device::with_aptpl_file(lu(), Some(file.clone())).unwrap();
        let b = nexus("iqn.b", 2);
        assert_eq!(
            exec(&d, &b, &WRITE10, &[0; 512]).await.status,
            status::RESERVATION_CONFLICT
        );
        let r = exec(&d, &b, &[0x5e, 1, 0, 0, 0, 0, 0, 0, 64, 0], &[]).await;
        assert_eq!(r.data_in[8..16], 0xabcu64.to_be_bytes());
        assert_eq!(r.data_in[21], 5);
        // Turning APTPL off removes the file.
        let (cdb, p) = prout(0, 0, 0xabc, 0xabc, 0);
        assert_eq!(exec(&d, &a, &cdb, &p).await.status, status::GOOD);
        assert!(!file.exists());
    }

    #[tokio::test]
    async fn aptpl_is_refused_without_a_file_and_bad_files_are_errors() {
        let d = Device::new(lu());
        let (cdb, p) = prout(6, 0, 0, 1, 0x01);
        let r = exec(&d, &nexus("iqn.a", 1), &cdb, &p).await;
        assert_eq!(r.status, status::CHECK_CONDITION);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.pr.toml");
        std::fs::write(&file, "version = 99\ngeneration = 0\n").unwrap();
        assert!(matches!(
            Device::with_aptpl_file(lu(), Some(file)),
            Err(DeviceError::BadAptpl { .. })
        ));
    }
}
