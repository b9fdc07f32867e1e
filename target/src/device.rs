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
//! 4. PERSISTENT RESERVE IN/OUT, RESERVE/RELEASE(6/10), EXTENDED COPY and RECEIVE
//!    COPY RESULTS ([`crate::xcopy`]) and REPORT TARGET PORT GROUPS run here,
//!    everything else in the logical unit.
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
//! - Nexus loss (logout, dropped connection, reinstatement) and the I_T NEXUS
//!   RESET task management function are the I_T nexus loss of SAM-5: the
//!   nexus's SPC-2 reservation is released and I_T NEXUS LOSS OCCURRED (29/07)
//!   established for its initiator port, ahead of the conditions about
//!   reservations (2A/03-05) it still has to hear; its other conditions are
//!   forgotten. An initiator that logs in again with the same ISID (open-iscsi
//!   keeps one per interface; a reinstated session always does) hears of the loss
//!   on its next command. At most [`MAX_IDLE_UA_NEXUSES`] lost nexuses keep
//!   conditions; the oldest go first.
//! - In a cluster the persistent reservation state is the coordinator's
//!   ([`crate::cluster::pr`]): PERSISTENT RESERVE OUT runs on the stored state and
//!   writes it back with compare-and-set; the device installs every state the key
//!   takes, and checks conflicts against it.
//! - In a cluster the mode parameters MODE SELECT changes (WCE, SWP) are the
//!   coordinator's too ([`crate::cluster::mode`]): MODE SELECT is checked here and
//!   applied to the stored parameters with compare-and-set; every node's device
//!   installs each revision and raises MODE PARAMETERS CHANGED (2A/01) for its
//!   nexuses but the sender's.
//! - APTPL: with an APTPL file ([`Device::with_aptpl_file`]) registrations and the
//!   reservation are written (temp file, fsync, rename, fsync of the directory)
//!   before PERSISTENT RESERVE OUT returns GOOD while APTPL is active, and loaded at
//!   start; the file is removed when APTPL is turned off. Without one, APTPL = 1 is
//!   refused (PTPL_C = 0).
//! - PREEMPT AND ABORT preempts like PREEMPT and aborts the preempted nexuses' tasks
//!   through the [`TaskAborter`] the server gives every device it exports.
//! - EXTENDED COPY reads and writes through the logical units' own READ(16) and
//!   WRITE(16), so range locks, write protection and WCE apply as for the
//!   initiator's own commands; a copy target is checked for reservation conflicts
//!   as seen from the same initiator port (on that volume's target port), but its
//!   unit attentions are neither reported nor cleared.
//! - ALUA (SPC-4 §5.16): implicit only (TPGS = 01b). Stand-alone, one target port
//!   group, always active/optimized, with the one relative target port (the numbers
//!   VPD 0x83 gives). In a cluster ([`Device::attach_cluster`]), one group per node
//!   (group = relative port = node id, as every node builds its exports): the node
//!   owning most of the volume's pages active/optimized (PREF set), the other live
//!   nodes active/non-optimized, failed ones unavailable; so dm-multipath with
//!   `prio alua` prefers the owner. A routing change that affects the volume raises
//!   ASYMMETRIC ACCESS STATE CHANGED (2A/06) for every nexus
//!   ([`crate::cluster::view::attach`]).
//! - READ ROUTING TABLE (vendor specific, C5h; docs/wire-formats.md): a piece of
//!   the volume's routing table. It is metadata, like REPORT TARGET PORT GROUPS: it
//!   runs despite SPC-2 and persistent reservations. A stand-alone target answers
//!   with a one-node table ([`SingleNodeView`]).

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use mosaic_proto::scsi::opcode::READ_ROUTING_TABLE;
use mosaic_proto::scsi::sense::key;
use mosaic_proto::scsi::vendor::ReadRoutingTableCdb;
use mosaic_proto::scsi::{status, Asc, Sense};
use mosaic_routing::{wire, NodeId, NodeState, RoutingTable, VolumeId};
use parking_lot::Mutex;

use crate::cluster::view::{ClusterView, SingleNodeView};
use crate::pr::{Initiator, PrError, PrState, PrType};
use crate::scsi::{LogicalUnit, ScsiRequest, ScsiResult, LUN0};
use crate::store::StoreError;
use crate::ua::{self, UaAction, UnitAttentions};
use crate::xcopy::{
    self, CopyManager, CopyRecords, CopyState, Designator, RecordGuard, XcopyError,
};

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

/// What [`Device::shortcut`] decided for one command.
#[derive(Debug)]
pub enum ShortCut {
    /// Execute it here as usual.
    Normal,
    /// The gate answered it (unit attention or reservation conflict).
    Answer(ScsiResult),
    /// Hand it to the page's owner.
    Owner(ShortCutRead),
}

/// A plain READ of one page whose primary is another node.
#[derive(Debug)]
pub struct ShortCutRead {
    pub store: Arc<crate::cluster::store::ClusterStore>,
    /// The page's primary.
    pub owner: mosaic_routing::NodeId,
    /// Byte offset and length in the volume.
    pub offset: u64,
    pub len: u32,
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
    /// The node's volumes, for EXTENDED COPY between them; unset: copies stay
    /// within this volume.
    copy_manager: OnceLock<Arc<CopyManager>>,
    /// RECEIVE COPY RESULTS data per nexus and list identifier.
    copies: Mutex<CopyRecords>,
    /// Bounds the copies running at once ([`xcopy::MAX_CONCURRENT_COPIES`]).
    copy_slots: tokio::sync::Semaphore,
    /// The logical-unit designators of VPD 0x83, read once, for CSCD descriptors.
    designators: OnceLock<Vec<Designator>>,
    /// The cluster this volume belongs to; unset: a stand-alone target.
    cluster: OnceLock<Arc<dyn ClusterView>>,
    /// The one-node view a stand-alone target answers READ ROUTING TABLE from,
    /// made on first use (`None`: the volume's geometry does not fit a table).
    single_node: OnceLock<Option<Arc<SingleNodeView>>>,
    /// The last routing-table encoding served and the table it was made from: an
    /// initiator fetches a large table in many pieces, and encoding it for each
    /// would cost the whole table every time.
    routing_encoding: Mutex<Option<EncodedTable>>,
    /// Aborts the tasks of the given initiators' sessions to this volume (PREEMPT
    /// AND ABORT); set by the server, which owns the sessions.
    task_aborter: OnceLock<TaskAborter>,
    /// In a cluster, the volume's reservation state in the coordinator, shared by
    /// every node ([`crate::cluster::pr`]); unset: this device's own.
    shared_pr: OnceLock<Arc<crate::cluster::pr::SharedPr>>,
    /// In a cluster, the volume's mode parameters in the coordinator, shared by
    /// every node ([`crate::cluster::mode`]); unset: the logical unit's own.
    shared_mode: OnceLock<Arc<crate::cluster::mode::SharedMode>>,
    /// Ends this node's sessions to the volume (a TARGET COLD RESET received by
    /// another node); set by the server, which owns the sessions.
    session_stopper: OnceLock<SessionStopper>,
}

/// Ends every session of this node to a device's target and resolves once they
/// have ended (bounded) (see [`Device::set_session_stopper`]).
#[derive(Clone)]
pub struct SessionStopper(pub Arc<StopFn>);

/// The function behind a [`SessionStopper`].
pub type StopFn = dyn Fn() -> futures::future::BoxFuture<'static, ()> + Send + Sync;

impl std::fmt::Debug for SessionStopper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionStopper")
    }
}

/// Aborts every task of the sessions of these initiators (see
/// [`Device::set_task_aborter`]).
#[derive(Clone)]
pub struct TaskAborter(pub Arc<AbortFn>);

/// The function behind a [`TaskAborter`].
pub type AbortFn = dyn Fn(&[Initiator]) + Send + Sync;

impl std::fmt::Debug for TaskAborter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TaskAborter")
    }
}

/// A routing table and its wire encoding for this device's volume.
type EncodedTable = (Arc<RoutingTable>, Arc<[u8]>);

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
    /// MAINTENANCE IN, whose service action 0Ah is REPORT TARGET PORT GROUPS.
    pub const MAINTENANCE_IN: u8 = 0xa3;
    pub const SA_REPORT_TARGET_PORT_GROUPS: u8 = 0x0a;
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
/// TARGET PORT GROUPS; and our READ ROUTING TABLE, which reads no medium either.)
fn spc2_allowed(cdb: &[u8]) -> bool {
    let byte = |i: usize| cdb.get(i).copied().unwrap_or(0);
    match byte(0) {
        0x12 | 0x03 | 0xa0 | 0x4d | op::RELEASE_6 | op::RELEASE_10 | READ_ROUTING_TABLE => true,
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
    fn raise_all(&mut self, asc: Asc, except: Option<&str>) {
        let mut ports: Vec<String> = self.nexuses.keys().map(|p| p.to_string()).collect();
        for r in &self.pr.registrations {
            if let Initiator::Port(p) = &r.initiator {
                ports.push(p.clone());
            }
        }
        for p in ports {
            if except.is_some_and(|e| e.eq_ignore_ascii_case(&p)) {
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
        Device::build(lu, State::default(), None)
    }

    fn build(lu: LogicalUnit, state: State, aptpl_file: Option<PathBuf>) -> Device {
        Device {
            lu: lu.with_reported_commands(crate::scsi::RESERVATION_COMMANDS),
            state: Mutex::new(state),
            aptpl_file,
            copy_manager: OnceLock::new(),
            copies: Mutex::new(CopyRecords::default()),
            copy_slots: tokio::sync::Semaphore::new(usize::from(xcopy::MAX_CONCURRENT_COPIES)),
            designators: OnceLock::new(),
            cluster: OnceLock::new(),
            single_node: OnceLock::new(),
            routing_encoding: Mutex::new(None),
            task_aborter: OnceLock::new(),
            shared_pr: OnceLock::new(),
            shared_mode: OnceLock::new(),
            session_stopper: OnceLock::new(),
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
        Ok(Device::build(
            lu,
            State {
                pr,
                ..State::default()
            },
            aptpl_file,
        ))
    }

    /// Lets PREEMPT AND ABORT abort the preempted initiators' tasks (SPC-4
    /// §5.13.11.2.4): the server, which owns the sessions, sets this once.
    pub fn set_task_aborter(&self, aborter: TaskAborter) {
        let _ = self.task_aborter.set(aborter);
    }

    /// Lets a TARGET COLD RESET received by another node of the cluster end this
    /// node's sessions to the volume ([`crate::cluster::resets`]): the server,
    /// which owns the sessions, sets this once.
    pub fn set_session_stopper(&self, stopper: SessionStopper) {
        let _ = self.session_stopper.set(stopper);
    }

    /// Ends this node's sessions to the volume and returns once they have ended
    /// (bounded by the stopper); nothing without a stopper.
    pub async fn stop_sessions(&self) {
        if let Some(stop) = self.session_stopper.get() {
            (stop.0)().await;
        }
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
        if let Some(shared) = self.shared_pr.get() {
            shared.wait_ready().await;
        }
        if let Some(shared) = self.shared_mode.get() {
            shared.wait_ready().await;
        }
        if let Some(answer) = self.state.lock().gate(nexus, &req) {
            return answer;
        }
        match req.cdb[0] {
            crate::pr::PERSISTENT_RESERVE_IN => self.persistent_reserve_in(&req),
            crate::pr::PERSISTENT_RESERVE_OUT => match self.shared_pr.get() {
                Some(shared) => {
                    self.shared_persistent_reserve_out(shared, nexus, &req)
                        .await
                }
                None => self.persistent_reserve_out(nexus, &req),
            },
            op::RESERVE_6 | op::RESERVE_10 => match self.shared_pr.get() {
                Some(shared) => self.shared_reserve_release(shared, nexus, &req, true).await,
                None => self.reserve(nexus, &req),
            },
            op::RELEASE_6 | op::RELEASE_10 => match self.shared_pr.get() {
                Some(shared) => {
                    self.shared_reserve_release(shared, nexus, &req, false)
                        .await
                }
                None => self.release(nexus, &req),
            },
            xcopy::EXTENDED_COPY => self.extended_copy(nexus, &req).await,
            xcopy::RECEIVE_COPY_RESULTS => self.receive_copy_results(nexus, &req),
            op::MAINTENANCE_IN
                if req.cdb.get(1).copied().unwrap_or(0) & 0x1f
                    == op::SA_REPORT_TARGET_PORT_GROUPS =>
            {
                self.report_target_port_groups(&req)
            }
            READ_ROUTING_TABLE => self.read_routing_table(&req),
            op::MODE_SELECT_6 | op::MODE_SELECT_10 if self.shared_mode.get().is_some() => {
                self.shared_mode_select(nexus, &req).await
            }
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

    /// Whether a command may take the short-cut (its page's owner builds the final
    /// PDUs): [`ShortCut::Owner`] for a plain READ of one remote page of a
    /// clustered volume in short-cut mode whose nexus has no unit attention to hear
    /// and no reservation in its way; [`ShortCut::Answer`] when the gate already
    /// answers it (unit attention, reservation conflict); otherwise
    /// [`ShortCut::Normal`].
    pub fn shortcut(&self, nexus: &Nexus, req: &ScsiRequest) -> ShortCut {
        if req.lun != LUN0 || req.cdb.is_empty() {
            return ShortCut::Normal;
        }
        let Some((store, offset, len)) = self.lu.plain_read(&req.cdb) else {
            return ShortCut::Normal;
        };
        if len != u64::from(req.expected_len) {
            // Residuals are the normal path's business.
            return ShortCut::Normal;
        }
        let Some(owner) = store.shortcut_owner(offset, len) else {
            return ShortCut::Normal;
        };
        if let Some(answer) = self.state.lock().gate(nexus, req) {
            return ShortCut::Answer(answer);
        }
        ShortCut::Owner(ShortCutRead {
            store,
            owner,
            offset,
            len: len as u32,
        })
    }

    /// A reset requested on `from` took effect (see the module docs).
    pub fn reset(&self, kind: ResetKind, from: &Nexus) {
        self.state.lock().know(from);
        self.reset_by_peer(kind);
    }

    /// A reset received by another node of the cluster took effect on this one
    /// (`cluster::resets`): the same as [`Device::reset`] without a nexus here.
    pub fn reset_by_peer(&self, kind: ResetKind) {
        let asc = match kind {
            ResetKind::LogicalUnit => ua::asc::BUS_DEVICE_RESET_FUNCTION_OCCURRED,
            ResetKind::TargetWarm => ua::asc::SCSI_BUS_RESET_OCCURRED,
            ResetKind::TargetCold => ua::asc::POWER_ON_OCCURRED,
        };
        let mut st = self.state.lock();
        st.spc2 = None;
        st.raise_all(asc, None);
    }

    /// Tells the other nodes of the cluster of a reset taken here, and returns
    /// once they have established it (at once for a stand-alone target).
    pub async fn reset_peers(&self, kind: ResetKind) {
        if let Some(shared) = self.shared_pr.get() {
            // The SPC-2 reservation is the cluster's (`cluster::pr`): released in
            // the shared record too, or the next change installed would bring it
            // back.
            let _ = self
                .shared_change(shared, 0, |s| {
                    if s.spc2.take().is_some() {
                        Ok(Some(crate::cluster::pr::Update::default()))
                    } else {
                        Ok(None)
                    }
                })
                .await;
        }
        if let Some(c) = self.cluster.get() {
            c.reset_peers(kind, self).await;
        }
    }

    /// The nexus is gone (logout, connection loss, session reinstatement): the I_T
    /// nexus loss of SAM-5 (see the module docs).
    pub fn nexus_lost(&self, nexus: &Nexus) {
        let mut st = self.state.lock();
        st.nexuses.remove(&*nexus.initiator_port);
        drop(st);
        self.nexus_loss(nexus);
    }

    /// The I_T NEXUS RESET task management function arrived on `nexus` (RFC 7144
    /// §4.1, SAM-5): the connection has aborted the nexus's tasks; here the
    /// rest of the I_T nexus loss happens, and the nexus stays logged in to hear of
    /// it on its next command.
    pub fn nexus_reset(&self, nexus: &Nexus) {
        self.state.lock().know(nexus);
        self.nexus_loss(nexus);
    }

    /// The SAM-5 I_T nexus loss of one nexus: its SPC-2 reservation is released, its copy
    /// results forgotten, I_T NEXUS LOSS OCCURRED established ahead of the
    /// reservation news it still has to hear; registrations stay (SPC-4 §5.13.1).
    fn nexus_loss(&self, nexus: &Nexus) {
        self.copies.lock().forget(&nexus.initiator_port);
        self.release_shared_spc2(nexus);
        let mut st = self.state.lock();
        if st.spc2.as_deref() == Some(&*nexus.initiator_port) {
            st.spc2 = None;
        }
        let port = &nexus.initiator_port;
        st.ua.nexus_lost(port, |a| {
            [
                ua::asc::RESERVATIONS_PREEMPTED,
                ua::asc::RESERVATIONS_RELEASED,
                ua::asc::REGISTRATIONS_PREEMPTED,
            ]
            .contains(a)
        });
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
        self.state
            .lock()
            .raise_all(asc, Some(&except.initiator_port));
    }

    /// The SAM-5 ADDITIONAL RESPONSE INFORMATION of QUERY ASYNCHRONOUS EVENT
    /// for `nexus`, or `None` when nothing is pending: UADE DEPTH
    /// (01b one condition, 10b more than one) and the sense key in byte 0, ASC and
    /// ASCQ of the condition its next command would report. Nothing is cleared.
    pub fn query_async_event(&self, nexus: &Nexus) -> Option<[u8; 3]> {
        let pending = self.pending_unit_attentions(nexus);
        let first = pending.first()?;
        let depth: u8 = if pending.len() == 1 { 0b01 } else { 0b10 };
        Some([depth << 4 | key::UNIT_ATTENTION, first.asc, first.ascq])
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
            match self.task_aborter.get() {
                Some(abort) => (abort.0)(&fx.abort),
                None => tracing::info!(
                    lu = %self.lu.config().name,
                    preempted = ?fx.abort,
                    "PREEMPT AND ABORT: no session hook, the preempted nexuses' tasks run on"
                ),
            }
        }
        good(Vec::new(), param_len)
    }

    /// PERSISTENT RESERVE OUT on a volume whose reservations the cluster shares
    /// ([`crate::cluster::pr`]): the service action runs on the coordinator's state
    /// and is written back with compare-and-set; GOOD once this node installed it
    /// (its unit attentions and aborts happen as every node installs it).
    async fn shared_persistent_reserve_out(
        &self,
        shared: &crate::cluster::pr::SharedPr,
        nexus: &Nexus,
        req: &ScsiRequest,
    ) -> ScsiResult {
        let cdb = &req.cdb;
        if cdb.len() < 10 {
            return check(Sense::invalid_field_in_cdb(0, None), req.expected_len);
        }
        let param_len = u32::from_be_bytes([cdb[5], cdb[6], cdb[7], cdb[8]]);
        let can_persist = self.aptpl_file.is_some();
        let done = self
            .shared_change(shared, param_len, |s| {
                // SPC-4 §5.13.3 via SPC-2 §5.5.1: another nexus's RESERVE makes
                // PERSISTENT RESERVE commands conflict (checked at the gate too,
                // against the followed state; here against the stored one).
                if s.spc2
                    .as_deref()
                    .is_some_and(|h| *h != *nexus.initiator_port)
                {
                    return Err(conflict(req));
                }
                match s
                    .pr
                    .persistent_reserve_out(nexus, cdb, &req.data_out, can_persist)
                {
                    Ok(fx)
                        if !fx.changed && fx.unit_attentions.is_empty() && fx.abort.is_empty() =>
                    {
                        Ok(None)
                    }
                    Ok(fx) => Ok(Some(crate::cluster::pr::Update::of(&fx))),
                    Err(PrError::Conflict) => Err(conflict(req)),
                    Err(PrError::Check(sense)) => Err(check(sense, param_len)),
                }
            })
            .await;
        match done {
            Ok(()) => good(Vec::new(), param_len),
            Err(r) => r,
        }
    }

    /// One change of the cluster's reservation state: `change` runs on the stored
    /// state and says what to write (`Ok(None)`: nothing, `Err`: the command's
    /// answer); written with compare-and-set (retried when another change won) and
    /// complete once this node installed it. A coordinator failure is HARDWARE ERROR,
    /// INTERNAL TARGET FAILURE.
    async fn shared_change<F>(
        &self,
        shared: &crate::cluster::pr::SharedPr,
        transfer_len: u32,
        change: F,
    ) -> Result<(), ScsiResult>
    where
        F: Fn(
            &mut crate::cluster::pr::Shared,
        ) -> Result<Option<crate::cluster::pr::Update>, ScsiResult>,
    {
        use crate::cluster::pr::{SharedPrError, UPDATE_ATTEMPTS};
        let failed = |e: SharedPrError| {
            tracing::error!(lu = %self.lu.config().name, error = %e, "shared reservation change failed");
            check(
                Sense::new(key::HARDWARE_ERROR, Asc::INTERNAL_TARGET_FAILURE),
                transfer_len,
            )
        };
        for _ in 0..UPDATE_ATTEMPTS {
            let (mut state, revision) = shared.load().await.map_err(failed)?;
            let Some(update) = change(&mut state)? else {
                return Ok(());
            };
            match shared.store(&state, &update, revision).await {
                Ok(Some(written)) => return shared.wait_applied(written).await.map_err(failed),
                Ok(None) => continue,
                Err(e) => return Err(failed(e)),
            }
        }
        Err(failed(SharedPrError::Contended(UPDATE_ATTEMPTS)))
    }

    /// RESERVE and RELEASE (6/10) on a volume whose reservations the cluster
    /// shares: the same rules as [`Device::reserve`] and [`Device::release`], on the
    /// stored state.
    async fn shared_reserve_release(
        &self,
        shared: &crate::cluster::pr::SharedPr,
        nexus: &Nexus,
        req: &ScsiRequest,
        reserve: bool,
    ) -> ScsiResult {
        let invalid = match req.cdb[0] {
            op::RESERVE_6 | op::RELEASE_6 => 0x01,
            _ => 0x13,
        };
        if req.cdb.get(1).copied().unwrap_or(0) & invalid != 0 {
            return check(Sense::invalid_field_in_cdb(1, None), req.expected_len);
        }
        let done = self
            .shared_change(shared, 0, |s| {
                if !s.pr.registrations.is_empty() {
                    return if Self::crh_noop(&s.pr, nexus) {
                        Ok(None)
                    } else {
                        Err(conflict(req))
                    };
                }
                let mine = s.spc2.as_deref() == Some(&*nexus.initiator_port);
                match (reserve, &s.spc2) {
                    (true, Some(_)) if !mine => Err(conflict(req)),
                    (true, _) if mine => Ok(None),
                    (true, _) => {
                        s.spc2 = Some(nexus.initiator_port.clone());
                        Ok(Some(crate::cluster::pr::Update::default()))
                    }
                    (false, _) if mine => {
                        s.spc2 = None;
                        Ok(Some(crate::cluster::pr::Update::default()))
                    }
                    (false, _) => Ok(None),
                }
            })
            .await;
        match done {
            Ok(()) => good(Vec::new(), 0),
            Err(r) => r,
        }
    }

    /// The SPC-2 reservation `nexus` holds, if any, is released cluster-wide (its
    /// I_T nexus is lost). In the background: nexus loss has no response.
    fn release_shared_spc2(&self, nexus: &Nexus) {
        let Some(shared) = self.shared_pr.get() else {
            return;
        };
        if self.state.lock().spc2.as_deref() == Some(&*nexus.initiator_port) {
            crate::cluster::pr::release_spc2(shared.clone(), nexus.initiator_port.clone());
        }
    }

    /// MODE SELECT on a volume whose mode parameters the cluster shares
    /// ([`crate::cluster::mode`]): checked by the logical unit, applied to the
    /// stored parameters with compare-and-set, GOOD once this device installed
    /// them (installing raises MODE PARAMETERS CHANGED for the other nexuses, on
    /// every node). A coordinator failure is HARDWARE ERROR, INTERNAL TARGET
    /// FAILURE, and nothing changed on this node.
    async fn shared_mode_select(&self, nexus: &Nexus, req: &ScsiRequest) -> ScsiResult {
        let Some(shared) = self.shared_mode.get() else {
            return self.lu.execute(req.clone()).await;
        };
        let (plan, transfer_len) = match self.lu.plan_mode_select(req) {
            Some(Ok(planned)) => planned,
            Some(Err(refused)) => return refused,
            None => return self.lu.execute(req.clone()).await,
        };
        let sender = crate::cluster::mode::Sender::of(nexus);
        match shared.update(|p| plan.apply(p), sender).await {
            Ok(()) => good(Vec::new(), transfer_len),
            Err(e) => {
                tracing::error!(lu = %self.lu.config().name, error = %e, "shared MODE SELECT failed");
                check(
                    Sense::new(key::HARDWARE_ERROR, Asc::INTERNAL_TARGET_FAILURE),
                    transfer_len,
                )
            }
        }
    }

    /// Shares this device's mode parameters through the cluster (set once, by
    /// [`crate::cluster::mode::attach`]).
    pub(crate) fn set_shared_mode(&self, shared: Arc<crate::cluster::mode::SharedMode>) {
        let _ = self.shared_mode.set(shared);
    }

    /// Installs mode parameters the cluster agreed on: the logical unit runs with
    /// them from now on, and the nexuses [`crate::cluster::mode::hears`] names get
    /// MODE PARAMETERS CHANGED.
    pub(crate) fn install_shared_mode(&self, change: &crate::cluster::mode::Change) {
        self.lu.set_mode_params(change.params);
        if let Some(except) = crate::cluster::mode::hears(change, self.lu.config().relative_port) {
            self.state
                .lock()
                .raise_all(ua::asc::MODE_PARAMETERS_CHANGED, except);
        }
    }

    /// Shares this device's reservations through the cluster (set once, by
    /// [`crate::cluster::pr::attach`]).
    pub(crate) fn set_shared_pr(&self, shared: Arc<crate::cluster::pr::SharedPr>) {
        let _ = self.shared_pr.set(shared);
    }

    /// The reservation state this device holds now.
    pub fn local_pr_state(&self) -> PrState {
        self.state.lock().pr.clone()
    }

    /// Installs a reservation state the cluster agreed on: conflict checks use it
    /// from now on; its unit attentions are established for this
    /// device's nexuses, its PREEMPT AND ABORT reaches this node's sessions, and
    /// with APTPL active (or just turned off) it is written to (or removed from)
    /// this node's APTPL file.
    pub(crate) fn install_shared_pr(&self, change: crate::cluster::pr::Change) {
        let mut st = self.state.lock();
        let before = std::mem::replace(&mut st.pr, change.state.pr);
        st.spc2 = change.state.spc2;
        if st.pr != before && (st.pr.aptpl || before.aptpl) {
            if let Err(e) = self.save(&st.pr) {
                tracing::error!(lu = %self.lu.config().name, error = %e, "persisting shared reservations failed");
            }
        }
        for (who, asc) in &change.update.unit_attentions {
            st.raise_for(who, *asc);
        }
        drop(st);
        if !change.update.abort.is_empty() {
            if let Some(abort) = self.task_aborter.get() {
                (abort.0)(&change.update.abort);
            }
        }
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

    /// Lets EXTENDED COPY reach the other volumes of `manager` (see
    /// [`CopyManager::register`]); a second manager is ignored.
    pub fn set_copy_manager(&self, manager: Arc<CopyManager>) {
        let _ = self.copy_manager.set(manager);
    }

    /// The logical-unit designators of this unit's VPD 0x83 page, read through the
    /// logical unit once and kept.
    async fn lu_designators(&self) -> &[Designator] {
        if let Some(d) = self.designators.get() {
            return d;
        }
        /// INQUIRY, EVPD, page 83h, allocation length 1024.
        const INQUIRY_VPD_83: [u8; 6] = [0x12, 0x01, 0x83, 0x04, 0x00, 0x00];
        let r = self
            .lu
            .execute(ScsiRequest {
                cdb: Bytes::from_static(&INQUIRY_VPD_83),
                lun: LUN0,
                data_out: Bytes::new(),
                expected_len: 1024,
            })
            .await;
        let found = if r.status == status::GOOD {
            xcopy::lu_designators(&r.data_in)
        } else {
            Vec::new()
        };
        self.designators.get_or_init(|| found)
    }

    /// Whether `designator` names this logical unit (a CSCD descriptor's target).
    pub async fn has_designator(&self, designator: &Designator) -> bool {
        self.lu_designators().await.contains(designator)
    }

    /// Whether `nexus` would get RESERVATION CONFLICT reading (or writing) this
    /// volume: the check EXTENDED COPY makes for each copy target.
    fn copy_conflicts(&self, nexus: &Nexus, write: bool) -> bool {
        /// READ(16) and WRITE(16) of one block at LBA 0: only the opcode matters.
        const READ16: [u8; 16] = [0x88, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0];
        const WRITE16: [u8; 16] = [0x8a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0];
        let st = self.state.lock();
        if st
            .spc2
            .as_deref()
            .is_some_and(|h| *h != *nexus.initiator_port)
        {
            return true;
        }
        st.pr
            .conflicts(nexus, if write { &WRITE16 } else { &READ16 })
    }

    /// EXTENDED COPY(LID1) (SPC-4 §6.4): parses the parameter list, resolves the
    /// copy targets, checks every segment, then copies segment by segment (see
    /// [`crate::xcopy`]).
    async fn extended_copy(&self, nexus: &Nexus, req: &ScsiRequest) -> ScsiResult {
        let cdb = &req.cdb;
        if cdb.len() < 16 {
            return check(Sense::invalid_field_in_cdb(0, None), req.expected_len);
        }
        if cdb[1] & 0x1f != xcopy::SA_EXTENDED_COPY_LID1 {
            // EXTENDED COPY(LID4) and the ROD token service actions.
            return check(Sense::invalid_field_in_cdb(1, Some(4)), req.expected_len);
        }
        let param_len = u32::from_be_bytes([cdb[10], cdb[11], cdb[12], cdb[13]]);
        let list = match xcopy::parse_param_list(&req.data_out, param_len) {
            Ok(Some(list)) => list,
            Ok(None) => return good(Vec::new(), 0),
            Err(e) => return check(e.sense(), param_len),
        };
        let guard = match RecordGuard::begin(&self.copies, &nexus.initiator_port, list.tracked_id())
        {
            Ok(g) => g,
            Err(e) => return check(e.sense(), param_len),
        };
        let outcome = self.copy(nexus, &list, &guard).await;
        match outcome {
            Ok(()) => {
                guard.finish(CopyState::Done);
                good(Vec::new(), param_len)
            }
            Err(e) => {
                tracing::debug!(lu = %self.lu.config().name, error = %e, "EXTENDED COPY failed");
                guard.finish(CopyState::Failed(e.sense()));
                if e == XcopyError::ReservationConflict {
                    return conflict(req);
                }
                check(e.sense(), param_len)
            }
        }
    }

    /// The copy proper: resolve, plan, check reservations, then move the blocks.
    async fn copy(
        &self,
        nexus: &Nexus,
        list: &xcopy::ParamList,
        guard: &RecordGuard<'_>,
    ) -> Result<(), XcopyError> {
        let mut others: Vec<Option<Arc<Device>>> = Vec::with_capacity(list.cscds.len());
        let mut resolved: Vec<bool> = Vec::with_capacity(list.cscds.len());
        for c in &list.cscds {
            if c.nul {
                others.push(None);
                resolved.push(false);
            } else if self.has_designator(&c.designator).await {
                others.push(None);
                resolved.push(true);
            } else {
                let found = match self.copy_manager.get() {
                    Some(m) => m.find(&c.designator).await,
                    None => None,
                };
                resolved.push(found.is_some());
                others.push(found);
            }
        }
        // The device a resolved CSCD descriptor names: another volume or this one.
        let device = |i: usize| -> &Device { others[i].as_deref().unwrap_or(self) };
        let geometry: Vec<Option<xcopy::TargetGeometry>> = (0..list.cscds.len())
            .map(|i| {
                resolved[i].then(|| xcopy::TargetGeometry {
                    block_size: device(i).lu.block_size(),
                    num_blocks: device(i).lu.num_blocks(),
                })
            })
            .collect();
        let steps = xcopy::plan(list, &geometry)?;
        for s in &steps {
            for (i, write) in [(s.src, false), (s.dst, true)] {
                let d = device(i);
                let conflicts = if std::ptr::eq(d, self) {
                    d.copy_conflicts(nexus, write)
                } else {
                    let cfg = d.lu.config();
                    let there = Nexus {
                        target_port: format!("{},t,0x{:04x}", cfg.target_name, cfg.tpg).into(),
                        relative_port: cfg.relative_port,
                        ..nexus.clone()
                    };
                    d.copy_conflicts(&there, write)
                };
                if conflicts {
                    return Err(XcopyError::ReservationConflict);
                }
            }
        }
        let _slot = self.copy_slots.acquire().await;
        let mut moved = 0u64;
        for (n, s) in steps.iter().enumerate() {
            let (src, dst) = (device(s.src), device(s.dst));
            let failed = XcopyError::SegmentFailed { offset: s.offset };
            let sbs = u64::from(src.lu.block_size());
            let dbs = u64::from(dst.lu.block_size());
            for (at, len) in xcopy::chunks(s, std::ptr::eq(src, dst), sbs as u32) {
                let data = block_io(&src.lu, 0x88, s.src_lba + at / sbs, len / sbs, Bytes::new())
                    .await
                    .map_err(|_| failed.clone())?;
                if data.len() as u64 != len {
                    return Err(failed);
                }
                block_io(&dst.lu, 0x8a, s.dst_lba + at / dbs, len / dbs, data)
                    .await
                    .map_err(|sense| match sense {
                        Some(sense) if sense.key == key::DATA_PROTECT => XcopyError::Target(sense),
                        _ => failed.clone(),
                    })?;
                moved += len;
            }
            guard.progress(u16::try_from(n + 1).unwrap_or(u16::MAX), moved);
        }
        Ok(())
    }

    /// RECEIVE COPY RESULTS (SPC-4 §6.18): COPY STATUS, RECEIVE DATA and FAILED
    /// SEGMENT DETAILS of this nexus's copies by list identifier, and OPERATING
    /// PARAMETERS. An unknown list identifier is INVALID FIELD IN CDB.
    fn receive_copy_results(&self, nexus: &Nexus, req: &ScsiRequest) -> ScsiResult {
        let cdb = &req.cdb;
        if cdb.len() < 16 {
            return check(Sense::invalid_field_in_cdb(0, None), req.expected_len);
        }
        let list_id = cdb[2];
        let alloc_len = u32::from_be_bytes([cdb[10], cdb[11], cdb[12], cdb[13]]) as usize;
        let port = &nexus.initiator_port;
        let data = match cdb[1] & 0x1f {
            xcopy::sa::OPERATING_PARAMETERS => Some(xcopy::operating_parameters()),
            xcopy::sa::COPY_STATUS => self.copies.lock().copy_status(port, list_id),
            xcopy::sa::RECEIVE_DATA => self.copies.lock().receive_data(port, list_id),
            xcopy::sa::FAILED_SEGMENT_DETAILS => {
                self.copies.lock().failed_segment_details(port, list_id)
            }
            _ => return check(Sense::invalid_field_in_cdb(1, Some(4)), 0),
        };
        match data {
            Some(mut d) => {
                d.truncate(alloc_len);
                let len = d.len() as u32;
                good(d, len)
            }
            None => check(Sense::invalid_field_in_cdb(2, None), 0),
        }
    }

    /// REPORT TARGET PORT GROUPS (SPC-4 §6.36), in the length-only (000b) or
    /// extended (001b) header format.
    fn report_target_port_groups(&self, req: &ScsiRequest) -> ScsiResult {
        let cdb = &req.cdb;
        if cdb.len() < 12 {
            return check(Sense::invalid_field_in_cdb(0, None), req.expected_len);
        }
        let extended = match cdb[1] >> 5 {
            0b000 => false,
            0b001 => true,
            _ => return check(Sense::invalid_field_in_cdb(1, Some(7)), 0),
        };
        let alloc_len = u32::from_be_bytes([cdb[6], cdb[7], cdb[8], cdb[9]]) as usize;
        let cfg = self.lu.config();
        let clustered = self
            .cluster
            .get()
            .and_then(|v| cluster_port_groups(extended, &v.table(), v.volume()));
        let mut d =
            clustered.unwrap_or_else(|| target_port_groups(extended, cfg.tpg, cfg.relative_port));
        d.truncate(alloc_len);
        let len = d.len() as u32;
        good(d, len)
    }

    /// Makes this device one volume of a cluster: REPORT TARGET PORT GROUPS lists
    /// every node and READ ROUTING TABLE serves the cluster's table (see the module
    /// docs). A second view is ignored.
    pub fn attach_cluster(&self, view: Arc<dyn ClusterView>) {
        let _ = self.cluster.set(view);
    }

    /// The cluster view attached, if any.
    pub fn cluster(&self) -> Option<&Arc<dyn ClusterView>> {
        self.cluster.get()
    }

    /// The table and volume READ ROUTING TABLE answers from: the cluster's, or the
    /// stand-alone one-node table.
    fn routing_view(&self) -> Option<(Arc<RoutingTable>, VolumeId)> {
        if let Some(v) = self.cluster.get() {
            return Some((v.table(), v.volume()));
        }
        let single = self.single_node.get_or_init(|| {
            SingleNodeView::for_unit(&self.lu)
                .map_err(|e| {
                    tracing::warn!(lu = %self.lu.config().name, error = %e, "no one-node routing table for READ ROUTING TABLE");
                })
                .ok()
                .map(Arc::new)
        });
        single.as_ref().map(|v| (v.table(), v.volume()))
    }

    /// READ ROUTING TABLE (vendor specific, docs/wire-formats.md): bytes `offset ..
    /// offset + allocation length` of the volume's routing table in the
    /// `mosaic_routing::wire` format, clipped to its end (nothing past it).
    fn read_routing_table(&self, req: &ScsiRequest) -> ScsiResult {
        let cdb = match ReadRoutingTableCdb::decode(&req.cdb) {
            Ok(c) => c,
            Err(e) => return check(e.sense(), 0),
        };
        let Some((table, volume)) = self.routing_view() else {
            return check(
                Sense::new(key::ILLEGAL_REQUEST, Asc::INVALID_COMMAND_OPERATION_CODE),
                0,
            );
        };
        let encoded = {
            let mut cache = self.routing_encoding.lock();
            match &*cache {
                Some((t, e)) if Arc::ptr_eq(t, &table) => e.clone(),
                _ => match wire::encode(&table, volume) {
                    Ok(e) => {
                        let e: Arc<[u8]> = e.into();
                        *cache = Some((table.clone(), e.clone()));
                        e
                    }
                    // The volume is being deleted: it is no longer in the table.
                    Err(wire::WireError::UnknownVolume(_)) => {
                        return check(
                            Sense::new(key::ILLEGAL_REQUEST, Asc::LOGICAL_UNIT_NOT_SUPPORTED),
                            0,
                        );
                    }
                    Err(e) => {
                        tracing::error!(lu = %self.lu.config().name, error = %e, "encoding the routing table");
                        return check(
                            Sense::new(key::HARDWARE_ERROR, Asc::INTERNAL_TARGET_FAILURE),
                            0,
                        );
                    }
                },
            }
        };
        let d = wire::piece(&encoded, cdb.offset, cdb.alloc_len).to_vec();
        let len = d.len() as u32;
        good(d, len)
    }

    /// Writes buffered data to stable storage.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.lu.flush().await
    }
}

/// One READ(16) (`opcode` 0x88) or WRITE(16) (0x8a) of `blocks` blocks at `lba`
/// through the logical unit; the data read, or the sense of a failure (`None` when
/// there was none).
async fn block_io(
    lu: &LogicalUnit,
    opcode: u8,
    lba: u64,
    blocks: u64,
    data_out: Bytes,
) -> Result<Bytes, Option<Sense>> {
    let blocks = u32::try_from(blocks).map_err(|_| None)?;
    let mut cdb = [0u8; 16];
    cdb[0] = opcode;
    cdb[2..10].copy_from_slice(&lba.to_be_bytes());
    cdb[10..14].copy_from_slice(&blocks.to_be_bytes());
    let expected_len =
        u32::try_from(u64::from(blocks) * u64::from(lu.block_size())).unwrap_or(u32::MAX);
    let r = lu
        .execute(ScsiRequest {
            cdb: Bytes::copy_from_slice(&cdb),
            lun: LUN0,
            data_out,
            expected_len,
        })
        .await;
    if r.status == status::GOOD {
        Ok(r.data_in)
    } else {
        tracing::warn!(lu = %lu.config().name, opcode, lba, status = r.status, sense = ?r.sense_data(), "EXTENDED COPY: segment I/O failed");
        Err(r.sense_data())
    }
}

/// REPORT TARGET PORT GROUPS data (SPC-4 §6.36.2): one group, `tpg`, with PREF set,
/// in the active/optimized state, supporting only that state (AO_SUP), with its one
/// relative target port. The extended header (FORMAT TYPE 001b) has an IMPLICIT
/// TRANSITION TIME of 0: the state never changes.
fn target_port_groups(extended: bool, tpg: u16, relative_port: u16) -> Vec<u8> {
    /// PREF (bit 7) and ASYMMETRIC ACCESS STATE 0h (active/optimized).
    const PREF_ACTIVE_OPTIMIZED: u8 = 0x80;
    /// AO_SUP: the active/optimized state is supported (and no other).
    const AO_SUP: u8 = 0x01;
    /// FORMAT TYPE 001b of the extended header (byte 4, bits 6..4).
    const FORMAT_EXTENDED: u8 = 0x10;
    let mut d = vec![0u8; 4];
    if extended {
        d.extend_from_slice(&[FORMAT_EXTENDED, 0, 0, 0]);
    }
    d.extend_from_slice(&[PREF_ACTIVE_OPTIMIZED, AO_SUP]);
    d.extend_from_slice(&tpg.to_be_bytes());
    // Reserved, STATUS CODE 00h (no status), vendor specific, TARGET PORT COUNT.
    d.extend_from_slice(&[0, 0, 0, 1]);
    d.extend_from_slice(&[0, 0]);
    d.extend_from_slice(&relative_port.to_be_bytes());
    let len = (d.len() - 4) as u32;
    d[0..4].copy_from_slice(&len.to_be_bytes());
    d
}

/// REPORT TARGET PORT GROUPS data of `volume` in a cluster (SPC-4 §6.36.2): one
/// target port group per node of `table`, in node order, with group id and its one
/// relative target port both the node id. The node owning most of the volume's
/// pages (the lowest id on a tie) is active/optimized with PREF set, the other live
/// nodes active/non-optimized, failed nodes unavailable. `None` when the volume is
/// not in the table (the caller answers for a single node); nodes whose id does not
/// fit a port identifier (0 or above 65535) are left out.
fn cluster_port_groups(extended: bool, table: &RoutingTable, volume: VolumeId) -> Option<Vec<u8>> {
    /// PREF (byte 0, bit 7): the preferred group.
    const PREF: u8 = 0x80;
    /// ASYMMETRIC ACCESS STATE values (SPC-4 §6.36.2, Table 193).
    const ACTIVE_OPTIMIZED: u8 = 0x0;
    const ACTIVE_NON_OPTIMIZED: u8 = 0x1;
    const UNAVAILABLE: u8 = 0xe;
    /// U_SUP | AN_SUP | AO_SUP: the states we report.
    const SUPPORTED: u8 = 0x08 | 0x02 | 0x01;
    /// FORMAT TYPE 001b of the extended header (byte 4, bits 6..4).
    const FORMAT_EXTENDED: u8 = 0x10;
    let map = table.volume(volume)?;
    let mut pages: HashMap<NodeId, u64> = HashMap::new();
    for n in map.primaries() {
        *pages.entry(*n).or_default() += 1;
    }
    // Nodes come in id order: the first with the most pages wins a tie.
    let mut owner: Option<(NodeId, u64)> = None;
    for id in table.nodes().keys() {
        let n = pages.get(id).copied().unwrap_or(0);
        let better = match owner {
            None => n > 0,
            Some((_, best)) => n > best,
        };
        if better {
            owner = Some((*id, n));
        }
    }
    let mut d = vec![0u8; 4];
    if extended {
        d.extend_from_slice(&[FORMAT_EXTENDED, 0, 0, 0]);
    }
    for node in table.nodes().values() {
        let Some(port) = u16::try_from(node.id.0).ok().filter(|p| *p != 0) else {
            continue;
        };
        let state = if node.state == NodeState::Failed {
            UNAVAILABLE
        } else if owner.is_some_and(|(o, _)| o == node.id) {
            PREF | ACTIVE_OPTIMIZED
        } else {
            ACTIVE_NON_OPTIMIZED
        };
        d.extend_from_slice(&[state, SUPPORTED]);
        d.extend_from_slice(&port.to_be_bytes());
        // Reserved, STATUS CODE 00h, vendor specific, TARGET PORT COUNT 1.
        d.extend_from_slice(&[0, 0, 0, 1]);
        d.extend_from_slice(&[0, 0]);
        d.extend_from_slice(&port.to_be_bytes());
    }
    let len = (d.len() - 4) as u32;
    d[0..4].copy_from_slice(&len.to_be_bytes());
    Some(d)
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
    async fn i_t_nexus_reset_is_a_nexus_loss_for_that_nexus_only() {
        let d = Device::new(lu());
        let (a, b) = (nexus("iqn.a", 1), nexus("iqn.b", 2));
        d.nexus_added(&b);
        assert_eq!(exec(&d, &a, &RESERVE6, &[]).await.status, status::GOOD);
        d.raise_all(ua::asc::CAPACITY_DATA_HAS_CHANGED);
        d.nexus_reset(&a);
        // b is untouched.
        assert_eq!(
            d.pending_unit_attentions(&b),
            vec![ua::asc::CAPACITY_DATA_HAS_CHANGED]
        );
        let r = exec(&d, &b, &READ10, &[]).await;
        assert_eq!(ua_of(&r), Some(ua::asc::CAPACITY_DATA_HAS_CHANGED));
        // The SPC-2 reservation went with the nexus.
        assert_eq!(exec(&d, &b, &RESERVE6, &[]).await.status, status::GOOD);
        // a hears of the loss only: its other condition is gone.
        let r = exec(&d, &a, &READ10, &[]).await;
        assert_eq!(ua_of(&r), Some(ua::asc::I_T_NEXUS_LOSS_OCCURRED));
        assert_eq!(
            exec(&d, &a, &READ10, &[]).await.status,
            status::RESERVATION_CONFLICT
        );
    }

    #[tokio::test]
    async fn query_async_event_reports_the_next_condition_without_clearing_it() {
        let d = Device::new(lu());
        let a = nexus("iqn.a", 1);
        d.nexus_added(&a);
        assert_eq!(d.query_async_event(&a), None);
        d.raise_all(ua::asc::MODE_PARAMETERS_CHANGED);
        // UADE DEPTH 01b (one), UNIT ATTENTION, 2A/01.
        assert_eq!(d.query_async_event(&a), Some([0x16, 0x2a, 0x01]));
        d.raise_all(ua::asc::CAPACITY_DATA_HAS_CHANGED);
        // UADE DEPTH 10b (more than one), still the oldest.
        assert_eq!(d.query_async_event(&a), Some([0x26, 0x2a, 0x01]));
        let r = exec(&d, &a, &READ10, &[]).await;
        assert_eq!(ua_of(&r), Some(ua::asc::MODE_PARAMETERS_CHANGED));
        assert_eq!(d.query_async_event(&a), Some([0x16, 0x2a, 0x09]));
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
        // A preempted registrant keeps its unit attentions across nexus loss,
        // behind I_T NEXUS LOSS OCCURRED.
        assert_eq!(out(&d, &a, 6, 0, 0, 1).await.status, status::GOOD);
        assert_eq!(out(&d, &b, 3, 0, 2, 0).await.status, status::GOOD); // CLEAR
        d.nexus_lost(&a);
        assert_eq!(
            d.pending_unit_attentions(&a),
            vec![
                ua::asc::I_T_NEXUS_LOSS_OCCURRED,
                ua::asc::RESERVATIONS_PREEMPTED
            ]
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
            vec![
                ua::asc::I_T_NEXUS_LOSS_OCCURRED,
                ua::asc::REGISTRATIONS_PREEMPTED
            ]
        );
        // A nexus with a reset condition forgets it: the loss replaces it.
        let c = nexus("iqn.c", 1);
        d.reset(ResetKind::LogicalUnit, &c);
        d.nexus_lost(&c);
        assert_eq!(
            d.pending_unit_attentions(&c),
            vec![ua::asc::I_T_NEXUS_LOSS_OCCURRED]
        );
    }

    #[tokio::test]
    async fn a_lost_nexus_hears_of_its_loss_when_it_returns() {
        let d = Device::new(lu());
        let (a, b) = (nexus("iqn.a", 1), nexus("iqn.b", 2));
        d.nexus_added(&a);
        d.nexus_added(&b);
        assert_eq!(exec(&d, &a, &RESERVE6, &[]).await.status, status::GOOD);
        d.nexus_lost(&a);
        // Its SPC-2 reservation went with it; the other nexus hears nothing.
        assert_eq!(exec(&d, &b, &RESERVE6, &[]).await.status, status::GOOD);
        assert!(d.pending_unit_attentions(&b).is_empty());
        // The same initiator port (same ISID) logs in again.
        d.nexus_added(&a);
        let r = exec(&d, &a, &INQUIRY, &[]).await;
        assert_eq!(r.status, status::GOOD, "INQUIRY neither reports nor clears");
        let r = exec(&d, &a, &READ10, &[]).await;
        assert_eq!(ua_of(&r), Some(ua::asc::I_T_NEXUS_LOSS_OCCURRED));
        assert_eq!(
            exec(&d, &a, &READ10, &[]).await.status,
            status::RESERVATION_CONFLICT
        );
        // Another ISID of the same initiator is another nexus: nothing pending.
        let a2 = nexus("iqn.a", 3);
        d.nexus_lost(&a);
        assert!(d.pending_unit_attentions(&a2).is_empty());
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

    fn lu_named(name: &str, read_only: bool) -> LogicalUnit {
        let cfg = LuConfig {
            name: name.into(),
            naa_id: LuConfig::naa_id_for(name),
            target_name: format!("iqn.t:{name}"),
            ..lu().config().clone()
        };
        let opts = crate::scsi::LuOptions {
            read_only,
            ..Default::default()
        };
        LogicalUnit::with_options(cfg, BackingStore::memory(1024 * u64::from(BS)), opts).unwrap()
    }

    /// The E4h CSCD descriptor naming `d` by the first designator of its VPD 0x83.
    async fn cscd_for(d: &Device, n: &Nexus) -> Vec<u8> {
        let r = exec(d, n, &[0x12, 1, 0x83, 0x04, 0, 0], &[]).await;
        let id = xcopy::lu_designators(&r.data_in).remove(0);
        let mut c = vec![0u8; 32];
        c[0] = 0xe4;
        c[4] = id.code_set;
        c[5] = id.designator_type;
        c[7] = id.id.len() as u8;
        c[8..8 + id.id.len()].copy_from_slice(&id.id);
        c[29..32].copy_from_slice(&BS.to_be_bytes()[1..]);
        c
    }

    /// An EXTENDED COPY(LID1) CDB and parameter list: LIST ID USAGE 00b, one
    /// block-to-block segment per (src, dst, blocks, src_lba, dst_lba).
    fn xcopy_cmd(
        list_id: u8,
        cscds: &[Vec<u8>],
        segs: &[(u16, u16, u16, u64, u64)],
    ) -> ([u8; 16], Vec<u8>) {
        let c = cscds.concat();
        let mut s = Vec::new();
        for &(src, dst, blocks, src_lba, dst_lba) in segs {
            let mut d = vec![0u8; 28];
            d[0] = 0x02;
            d[3] = 24;
            d[4..6].copy_from_slice(&src.to_be_bytes());
            d[6..8].copy_from_slice(&dst.to_be_bytes());
            d[10..12].copy_from_slice(&blocks.to_be_bytes());
            d[12..20].copy_from_slice(&src_lba.to_be_bytes());
            d[20..28].copy_from_slice(&dst_lba.to_be_bytes());
            s.extend_from_slice(&d);
        }
        let mut p = vec![0u8; 16];
        p[0] = list_id;
        p[2..4].copy_from_slice(&(c.len() as u16).to_be_bytes());
        p[8..12].copy_from_slice(&(s.len() as u32).to_be_bytes());
        p.extend_from_slice(&c);
        p.extend_from_slice(&s);
        let mut cdb = [0u8; 16];
        cdb[0] = xcopy::EXTENDED_COPY;
        cdb[10..14].copy_from_slice(&(p.len() as u32).to_be_bytes());
        (cdb, p)
    }

    fn write10(lba: u32, fill: u8, blocks: u16) -> ([u8; 10], Vec<u8>) {
        let mut cdb = [0x2a, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        cdb[2..6].copy_from_slice(&lba.to_be_bytes());
        cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
        (cdb, vec![fill; usize::from(blocks) * BS as usize])
    }

    async fn read10(d: &Device, n: &Nexus, lba: u32, blocks: u16) -> Bytes {
        let mut cdb = [0x28, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        cdb[2..6].copy_from_slice(&lba.to_be_bytes());
        cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
        let r = exec(d, n, &cdb, &[]).await;
        assert_eq!(r.status, status::GOOD);
        r.data_in
    }

    fn copy_status_cdb(sa: u8, list_id: u8) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[0] = xcopy::RECEIVE_COPY_RESULTS;
        c[1] = sa;
        c[2] = list_id;
        c[10..14].copy_from_slice(&1024u32.to_be_bytes());
        c
    }

    #[tokio::test]
    async fn extended_copy_within_a_volume_copies_and_reports_its_status_once() {
        let d = Device::new(lu());
        let a = nexus("iqn.a", 1);
        let (w, data) = write10(0, 0xa5, 4);
        assert_eq!(exec(&d, &a, &w, &data).await.status, status::GOOD);
        let c = cscd_for(&d, &a).await;
        let (cdb, p) = xcopy_cmd(7, &[c], &[(0, 0, 4, 0, 100)]);
        assert_eq!(exec(&d, &a, &cdb, &p).await.status, status::GOOD);
        assert_eq!(read10(&d, &a, 100, 4).await, Bytes::from(data));
        // COPY STATUS: completed, 1 segment, 2048 bytes; then discarded.
        let r = exec(&d, &a, &copy_status_cdb(0, 7), &[]).await;
        assert_eq!(r.status, status::GOOD);
        assert_eq!(&r.data_in[4..12], &[0x01, 0, 1, 0, 0, 0, 0x08, 0x00]);
        let r = exec(&d, &a, &copy_status_cdb(0, 7), &[]).await;
        assert_eq!(r.status, status::CHECK_CONDITION);
        // Another nexus never sees this nexus's list identifiers.
        let (cdb, p) = xcopy_cmd(8, &[cscd_for(&d, &a).await], &[(0, 0, 1, 0, 1)]);
        assert_eq!(exec(&d, &a, &cdb, &p).await.status, status::GOOD);
        let b = nexus("iqn.b", 2);
        let r = exec(&d, &b, &copy_status_cdb(0, 8), &[]).await;
        assert_eq!(r.status, status::CHECK_CONDITION);
        // OPERATING PARAMETERS need no copy at all.
        let r = exec(&d, &b, &copy_status_cdb(3, 0), &[]).await;
        assert_eq!(r.status, status::GOOD);
        assert_eq!(r.data_in.len(), 46);
    }

    #[tokio::test]
    async fn overlapping_copy_within_a_volume_behaves_like_memmove() {
        let a = nexus("iqn.a", 1);
        // 3000 blocks of a per-block pattern: more than one chunk, copied 7 blocks
        // further on, so source and destination overlap by most of the range.
        let blocks: u16 = 3000;
        let d2 = Device::new(
            LogicalUnit::new(
                lu().config().clone(),
                BackingStore::memory(4096 * u64::from(BS)),
            )
            .unwrap(),
        );
        let mut data = Vec::new();
        for i in 0..u32::from(blocks) {
            data.extend(std::iter::repeat_n((i % 251) as u8, BS as usize));
        }
        let mut w = [0x2a, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        w[7..9].copy_from_slice(&blocks.to_be_bytes());
        let r = d2
            .execute(
                &a,
                ScsiRequest {
                    cdb: Bytes::copy_from_slice(&w),
                    lun: 0,
                    data_out: Bytes::from(data.clone()),
                    expected_len: data.len() as u32,
                },
            )
            .await;
        assert_eq!(r.status, status::GOOD);
        let c = cscd_for(&d2, &a).await;
        let (cdb, p) = xcopy_cmd(1, &[c], &[(0, 0, blocks, 0, 7)]);
        assert_eq!(exec(&d2, &a, &cdb, &p).await.status, status::GOOD);
        let mut cdb = [0x28, 0, 0, 0, 0, 7, 0, 0, 0, 0];
        cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
        let r = d2
            .execute(
                &a,
                ScsiRequest {
                    cdb: Bytes::copy_from_slice(&cdb),
                    lun: 0,
                    data_out: Bytes::new(),
                    expected_len: data.len() as u32,
                },
            )
            .await;
        assert!(r.data_in == data, "copied range differs from the original");
    }

    #[tokio::test]
    async fn extended_copy_between_volumes_goes_through_the_copy_manager() {
        let (t, u) = (
            Arc::new(Device::new(lu_named("t", false))),
            Arc::new(Device::new(lu_named("u", false))),
        );
        let a = nexus("iqn.a", 1);
        let (w, data) = write10(10, 0x3c, 2);
        assert_eq!(exec(&t, &a, &w, &data).await.status, status::GOOD);
        let (ct, cu) = (cscd_for(&t, &a).await, cscd_for(&u, &a).await);
        assert_ne!(ct, cu);
        // Not registered: u is not reachable from t.
        let (cdb, p) = xcopy_cmd(1, &[ct.clone(), cu.clone()], &[(0, 1, 2, 10, 20)]);
        let r = exec(&t, &a, &cdb, &p).await;
        let s = r.sense_data().unwrap();
        assert_eq!(
            (s.key, s.asc),
            (
                xcopy::KEY_COPY_ABORTED,
                xcopy::asc::COPY_TARGET_DEVICE_NOT_REACHABLE
            )
        );
        let m = CopyManager::new();
        m.register(&t);
        m.register(&u);
        assert_eq!(exec(&t, &a, &cdb, &p).await.status, status::GOOD);
        assert_eq!(read10(&u, &a, 20, 2).await, Bytes::from(data.clone()));
        // Sent to u, copying from t to u (u names itself through its own designator).
        let (cdb, p) = xcopy_cmd(2, &[cu.clone(), ct.clone()], &[(1, 0, 2, 10, 30)]);
        assert_eq!(exec(&u, &a, &cdb, &p).await.status, status::GOOD);
        assert_eq!(read10(&u, &a, 30, 2).await, Bytes::from(data));
        // A capacity overrun on the other volume aborts the copy before any write.
        let (cdb, p) = xcopy_cmd(3, &[ct, cu], &[(0, 1, 1, 0, 0), (0, 1, 2, 0, 1023)]);
        let r = exec(&t, &a, &cdb, &p).await;
        assert_eq!(r.sense_data().unwrap().key, xcopy::KEY_COPY_ABORTED);
        assert_eq!(
            read10(&u, &a, 0, 1).await,
            Bytes::from(vec![0u8; BS as usize])
        );
        // Its failure is kept for FAILED SEGMENT DETAILS.
        let r = exec(&t, &a, &copy_status_cdb(4, 3), &[]).await;
        assert_eq!(r.status, status::GOOD);
        assert_eq!(r.data_in[56], 0x02);
    }

    #[tokio::test]
    async fn extended_copy_respects_the_copy_targets_reservations_and_write_protection() {
        let (t, u, ro) = (
            Arc::new(Device::new(lu_named("t", false))),
            Arc::new(Device::new(lu_named("u", false))),
            Arc::new(Device::new(lu_named("ro", true))),
        );
        let m = CopyManager::new();
        for d in [&t, &u, &ro] {
            m.register(d);
        }
        let (a, b) = (nexus("iqn.a", 1), nexus("iqn.b", 2));
        let (ct, cu, cro) = (
            cscd_for(&t, &a).await,
            cscd_for(&u, &a).await,
            cscd_for(&ro, &a).await,
        );
        // b holds an SPC-2 reservation of u (on u's target port).
        let on_u = Nexus::new("iqn.b", 2, "iqn.t:u", 1, 1);
        assert_eq!(exec(&u, &on_u, &RESERVE6, &[]).await.status, status::GOOD);
        let (cdb, p) = xcopy_cmd(1, &[ct.clone(), cu.clone()], &[(0, 1, 1, 0, 0)]);
        assert_eq!(
            exec(&t, &a, &cdb, &p).await.status,
            status::RESERVATION_CONFLICT
        );
        // The holder itself may copy into it.
        assert_eq!(exec(&t, &b, &cdb, &p).await.status, status::GOOD);
        // A read-only destination is DATA PROTECT, as for a WRITE.
        let (cdb, p) = xcopy_cmd(2, &[ct, cro], &[(0, 1, 1, 0, 0)]);
        let s = exec(&t, &a, &cdb, &p).await.sense_data().unwrap();
        assert_eq!((s.key, s.asc), (key::DATA_PROTECT, Asc::WRITE_PROTECTED));
    }

    #[tokio::test]
    async fn report_target_port_groups_lists_one_active_optimized_group_in_both_formats() {
        let d = Device::new(lu());
        let a = nexus("iqn.a", 1);
        let rtpg = |format: u8, alloc: u32| {
            let mut c = [0xa3, (format << 5) | 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
            c[6..10].copy_from_slice(&alloc.to_be_bytes());
            c
        };
        let r = exec(&d, &a, &rtpg(0, 256), &[]).await;
        assert_eq!(r.status, status::GOOD);
        assert_eq!(
            &r.data_in[..],
            &[0, 0, 0, 12, 0x80, 0x01, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1]
        );
        let r = exec(&d, &a, &rtpg(1, 256), &[]).await;
        assert_eq!(&r.data_in[..8], &[0, 0, 0, 16, 0x10, 0, 0, 0]);
        assert_eq!(&r.data_in[8..], &[0x80, 0x01, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1]);
        // Short allocation lengths truncate; other formats are refused.
        assert_eq!(exec(&d, &a, &rtpg(0, 4), &[]).await.data_in.len(), 4);
        assert_eq!(
            exec(&d, &a, &rtpg(2, 256), &[]).await.status,
            status::CHECK_CONDITION
        );
        // The standard INQUIRY says implicit ALUA (TPGS 01b) and 3PC.
        let r = exec(&d, &a, &INQUIRY, &[]).await;
        assert_eq!(r.data_in[5] & 0x38, 0x18);
    }

    #[tokio::test]
    async fn report_supported_opcodes_lists_the_device_layer_commands() {
        let d = Device::new(lu());
        let a = nexus("iqn.a", 1);
        for (opcode, sa) in [
            (0x83u8, 0u16),
            (0x84, 0),
            (0x84, 3),
            (0xa3, 0x0a),
            (0x5e, 0),
        ] {
            let mut c = [0xa3, 0x0c, 0x02, opcode, 0, 0, 0, 0, 0, 0, 0, 0];
            c[4..6].copy_from_slice(&sa.to_be_bytes());
            c[6..10].copy_from_slice(&512u32.to_be_bytes());
            let r = exec(&d, &a, &c, &[]).await;
            assert_eq!(r.status, status::GOOD);
            assert_eq!(r.data_in[1] & 0x07, 0b011, "{opcode:#x}/{sa:#x} supported");
        }
        // READ ROUTING TABLE has no service action: reporting option 001b.
        let mut c = [0xa3, 0x0c, 0x01, READ_ROUTING_TABLE, 0, 0, 0, 0, 0, 0, 0, 0];
        c[6..10].copy_from_slice(&512u32.to_be_bytes());
        let r = exec(&d, &a, &c, &[]).await;
        assert_eq!(r.status, status::GOOD);
        assert_eq!(r.data_in[1] & 0x07, 0b011);
        assert_eq!(&r.data_in[4..6], &[READ_ROUTING_TABLE, 0]);
        assert_eq!(u16::from_be_bytes([r.data_in[2], r.data_in[3]]), 16);
    }

    /// A cluster view over a table the test replaces at will.
    #[derive(Debug)]
    struct FixedView {
        table: Mutex<Arc<RoutingTable>>,
        volume: VolumeId,
    }

    impl ClusterView for FixedView {
        fn table(&self) -> Arc<RoutingTable> {
            self.table.lock().clone()
        }
        fn volume(&self) -> VolumeId {
            self.volume
        }
        fn node(&self) -> NodeId {
            NodeId(1)
        }
    }

    /// Volume 7 over the 1024 blocks of [`lu`], 32 pages of 16 KiB, on nodes 1-3.
    fn three_node_table() -> RoutingTable {
        use mosaic_routing::{plan_create_volume, Node, Volume};
        let nodes = RoutingTable::new((1..=3).map(|i| {
            Node::new(NodeId(i), 1 << 40)
                .with_nic(10_000, vec![([127, 0, i as u8, 1], 3260).into()])
        }))
        .unwrap();
        let v = Volume {
            id: VolumeId(7),
            name: "vol".into(),
            blocks: 1024,
            block_size: BS,
            page_size: 16 << 10,
            replicas: 1,
        };
        plan_create_volume(&nodes, v).unwrap()
    }

    /// `t` after node 1's pages of volume 7 became hot: the hot-page plan moves
    /// most of them away, so node 1 no longer owns the most.
    fn hot_node_1(t: &RoutingTable) -> RoutingTable {
        use mosaic_routing::{plan_hot_pages, PageLoad, PageRef};
        let vm = t.volume(VolumeId(7)).unwrap();
        let hot: Vec<PageLoad> = (0..vm.page_count())
            .filter(|&p| vm.primary(p) == Some(NodeId(1)))
            .map(|page| PageLoad {
                page: PageRef {
                    volume: VolumeId(7),
                    page,
                },
                load: 10.0,
            })
            .collect();
        plan_hot_pages(t, &hot, 100).next
    }

    fn clustered(t: RoutingTable) -> (Device, Arc<FixedView>) {
        let d = Device::new(lu());
        let view = Arc::new(FixedView {
            table: Mutex::new(Arc::new(t)),
            volume: VolumeId(7),
        });
        d.attach_cluster(view.clone());
        (d, view)
    }

    fn rtpg_cdb(format: u8) -> [u8; 12] {
        let mut c = [0xa3, (format << 5) | 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        c[6..10].copy_from_slice(&1024u32.to_be_bytes());
        c
    }

    /// (state byte, supported byte, group id, relative port) per descriptor.
    fn groups(d: &[u8]) -> Vec<(u8, u8, u16, u16)> {
        let len = u32::from_be_bytes(d[0..4].try_into().unwrap()) as usize;
        assert_eq!(len + 4, d.len());
        d[4..]
            .chunks(12)
            .map(|g| {
                assert_eq!(g[7], 1, "one target port per group");
                (
                    g[0],
                    g[1],
                    u16::from_be_bytes([g[2], g[3]]),
                    u16::from_be_bytes([g[10], g[11]]),
                )
            })
            .collect()
    }

    /// The node with the most primaries of volume 7, the lowest id on a tie.
    fn most_pages(t: &RoutingTable) -> NodeId {
        let p = t.volume(VolumeId(7)).unwrap().primaries();
        (1..=3)
            .map(NodeId)
            .max_by_key(|n| (p.iter().filter(|x| *x == n).count(), std::cmp::Reverse(n.0)))
            .unwrap()
    }

    #[tokio::test]
    async fn rtpg_with_three_nodes_prefers_the_node_owning_most_pages() {
        let a = nexus("iqn.a", 1);
        for t in [three_node_table(), hot_node_1(&three_node_table())] {
            let owner = most_pages(&t);
            let (d, _) = clustered(t);
            let r = exec(&d, &a, &rtpg_cdb(0), &[]).await;
            assert_eq!(r.status, status::GOOD);
            let g = groups(&r.data_in);
            assert_eq!(g.len(), 3);
            for (i, (state, supported, group, port)) in g.into_iter().enumerate() {
                let node = i as u16 + 1;
                assert_eq!((group, port), (node, node));
                assert_eq!(supported, 0x0b, "AO, AN and U supported");
                if NodeId(u32::from(node)) == owner {
                    assert_eq!(state, 0x80, "node {node}: PREF, active/optimized");
                } else {
                    assert_eq!(state, 0x01, "node {node}: active/non-optimized");
                }
            }
        }
        // The move took the preference off node 1.
        assert_ne!(most_pages(&hot_node_1(&three_node_table())), NodeId(1));
        // The extended format: the same groups after an 8-byte header.
        let (d, _) = clustered(three_node_table());
        let r = exec(&d, &a, &rtpg_cdb(1), &[]).await;
        assert_eq!(&r.data_in[4..8], &[0x10, 0, 0, 0]);
        assert_eq!(r.data_in.len(), 8 + 3 * 12);
    }

    #[tokio::test]
    async fn rtpg_reports_a_failed_node_unavailable() {
        use mosaic_routing::{plan_node_failure, Loads};
        let t = three_node_table();
        let failed = plan_node_failure(&t, NodeId(2), &Loads::new())
            .unwrap()
            .next;
        let owner = most_pages(&failed);
        let (d, _) = clustered(failed);
        let r = exec(&d, &nexus("iqn.a", 1), &rtpg_cdb(0), &[]).await;
        let g = groups(&r.data_in);
        assert_eq!(g[1].0, 0x0e, "node 2 unavailable");
        assert_ne!(owner, NodeId(2));
        assert_eq!(g[owner.0 as usize - 1].0, 0x80);
    }

    /// READ ROUTING TABLE at `offset` for `alloc_len` bytes.
    async fn read_table(d: &Device, n: &Nexus, offset: u64, alloc_len: u32) -> ScsiResult {
        let c = ReadRoutingTableCdb { offset, alloc_len }.encode();
        exec(d, n, &c, &[]).await
    }

    /// The whole table fetched in pieces of `step` bytes, through the assembler.
    async fn fetch_table(d: &Device, n: &Nexus, step: u32) -> wire::WireTable {
        let mut asm = wire::Assembler::new();
        let mut offset = 0u64;
        for _ in 0..100_000 {
            let r = read_table(d, n, offset, step).await;
            assert_eq!(r.status, status::GOOD);
            assert!(r.data_in.len() <= step as usize);
            match asm.push(offset, &r.data_in).unwrap() {
                wire::Progress::Complete(t) => return *t,
                wire::Progress::NeedMore { offset: next, .. } => offset = next,
            }
        }
        panic!("the table never completed");
    }

    #[tokio::test]
    async fn read_routing_table_pages_by_offset_and_allocation_length() {
        let t = three_node_table();
        let whole = wire::encode(&t, VolumeId(7)).unwrap();
        let (d, view) = clustered(t.clone());
        let a = nexus("iqn.a", 1);
        // Every piece is exactly the encoding's bytes at its offset, clipped.
        for (offset, len) in [(0u64, 12u32), (5, 1), (12, 40), (50, 4096), (0, 4096)] {
            let r = read_table(&d, &a, offset, len).await;
            assert_eq!(r.status, status::GOOD);
            let start = (offset as usize).min(whole.len());
            let end = (start + len as usize).min(whole.len());
            assert_eq!(&r.data_in[..], &whole[start..end], "{offset}+{len}");
        }
        // Allocation length 0 and offsets at or past the end: GOOD, nothing.
        for (offset, len) in [(0u64, 0u32), (whole.len() as u64, 16), (u64::MAX, 16)] {
            let r = read_table(&d, &a, offset, len).await;
            assert_eq!((r.status, r.data_in.len()), (status::GOOD, 0));
        }
        // Small and odd piece sizes all assemble to the same table.
        let want = wire::decode(&whole).unwrap();
        for step in [1u32, 7, 12, 64, 1 << 20] {
            assert_eq!(fetch_table(&d, &a, step).await, want, "pieces of {step}");
        }
        assert_eq!(want.epoch, t.epoch());
        assert_eq!(want.nodes.len(), 3);
        // A new table is served at once, with its epoch.
        let next = hot_node_1(&t);
        *view.table.lock() = Arc::new(next.clone());
        let got = fetch_table(&d, &a, 100).await;
        assert_eq!(got.epoch, next.epoch());
        assert_eq!(
            got,
            wire::decode(&wire::encode(&next, VolumeId(7)).unwrap()).unwrap()
        );
        // Reserved bits are refused.
        let mut c = ReadRoutingTableCdb {
            offset: 0,
            alloc_len: 64,
        }
        .encode();
        c[1] = 0x01;
        let r = exec(&d, &a, &c, &[]).await;
        let s = r.sense_data().unwrap();
        assert_eq!(
            (s.key, s.asc),
            (key::ILLEGAL_REQUEST, Asc::INVALID_FIELD_IN_CDB)
        );
    }

    #[tokio::test]
    async fn read_routing_table_runs_despite_reservations_and_reports_unit_attentions() {
        let (d, _) = clustered(three_node_table());
        let (a, b) = (nexus("iqn.a", 1), nexus("iqn.b", 2));
        assert_eq!(exec(&d, &a, &RESERVE6, &[]).await.status, status::GOOD);
        assert_eq!(read_table(&d, &b, 0, 64).await.status, status::GOOD);
        d.raise_all(ua::asc::ASYMMETRIC_ACCESS_STATE_CHANGED);
        let r = read_table(&d, &b, 0, 64).await;
        assert_eq!(ua_of(&r), Some(ua::asc::ASYMMETRIC_ACCESS_STATE_CHANGED));
        assert_eq!(read_table(&d, &b, 0, 64).await.status, status::GOOD);
    }

    #[tokio::test]
    async fn stand_alone_target_serves_a_one_node_table() {
        let d = Device::new(lu());
        let a = nexus("iqn.a", 1);
        let t = fetch_table(&d, &a, 32).await;
        assert_eq!(t.volume, VolumeId(d.lu().config().naa_id));
        assert_eq!(t.name, "vol");
        assert_eq!((t.blocks, t.block_size), (1024, BS));
        assert_eq!(t.nodes.len(), 1);
        assert_eq!(t.nodes[0].id, NodeId(1));
        assert!(t.owners.iter().all(|o| *o == 0));
        assert_eq!(t.owner_id(1023), Some(NodeId(1)));
        // RTPG stays the single always-optimized group.
        let r = exec(&d, &a, &rtpg_cdb(0), &[]).await;
        assert_eq!(&r.data_in[4..6], &[0x80, 0x01]);
    }
}
