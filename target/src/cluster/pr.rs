//! Persistent reservations shared by every node of the cluster (SPC-4 §5.13, issue 5).
//!
//! Each volume's reservation state lives in one coordinator key,
//! [`PR_PREFIX`]`<volume>`, as JSON: the registrations, the reservation, APTPL and
//! PRGENERATION ([`crate::pr::Persisted`]), plus the effects of the PERSISTENT
//! RESERVE OUT that wrote it (the unit attentions it establishes and the initiators
//! whose tasks PREEMPT AND ABORT aborts).
//!
//! - A PERSISTENT RESERVE OUT, on whichever node it arrives, reads the key, runs the
//!   service action on that state ([`crate::pr::PrState::persistent_reserve_out`],
//!   the same state machine as a stand-alone target) and writes the result with a
//!   compare-and-set on the key's `mod_revision` (absent: `version = 0`); when
//!   another change won, it reads again and retries. A refused service action
//!   (RESERVATION CONFLICT, CHECK CONDITION) writes nothing.
//! - Every node's device follows the key by watch ([`attach`]) and installs each
//!   state it sees: the conflict checks of every command, PERSISTENT RESERVE IN and
//!   RESERVE/RELEASE's CRH rules use the followed state. Installing a state also
//!   establishes its unit attentions for the nexuses on this node and aborts the
//!   tasks of this node's sessions that PREEMPT AND ABORT names, so every node does
//!   its share of one change.
//! - A PERSISTENT RESERVE OUT completes (GOOD) only after the node it arrived on has
//!   installed the revision it wrote: the initiator's next command, on this node,
//!   already sees it. Other nodes follow within a watch delivery.
//! - SPC-2 RESERVE/RELEASE go through the key the same way (the holder's port is
//!   in the record). A lost nexus's SPC-2 reservation is released in the
//!   background ([`release_spc2`]); a reset releases it in the record before
//!   [`crate::cluster::resets`] tells the other nodes
//!   ([`Device::reset_peers`]).
//! - APTPL: a node that installs a state with APTPL active writes it to its own APTPL
//!   file (as a stand-alone target does), and a node that opens a volume whose key
//!   is absent seeds the key from that file, so the lab's reservations survive a
//!   restart of every node. The embedded coordinator itself keeps nothing on disk.

use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use mosaic_coord::{Compare, CompareOp, CoordError, Coordinator, EventKind, KeyRange, Txn, TxnOp};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::warn;

use crate::device::Device;
use crate::pr::{Effects, Initiator, Persisted, PrState};

/// The coordinator keys of the volumes' reservation states: `/mosaic/pr/<volume>`.
pub const PR_PREFIX: &str = "/mosaic/pr/";
/// Compare-and-set attempts of one PERSISTENT RESERVE OUT before giving up: each
/// failed attempt means another node's change won.
pub const UPDATE_ATTEMPTS: usize = 16;
/// How long a PERSISTENT RESERVE OUT waits for its own node to install what it
/// wrote (an in-process watch delivers in microseconds; a networked coordinator in
/// milliseconds).
pub const APPLY_WAIT: Duration = Duration::from_secs(10);
/// Pause before watching again after a watch broke.
const REWATCH_PAUSE: Duration = Duration::from_millis(100);
/// How often a follower with no events checks that its device still exists.
const IDLE_CHECK: Duration = Duration::from_secs(5);
/// Format version of [`Record`].
const RECORD_VERSION: u32 = 1;

/// The key of `volume`'s reservation state.
pub fn pr_key(volume: &str) -> String {
    format!("{PR_PREFIX}{volume}")
}

/// An initiator as stored: its name or port, and which of the two it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StoredInitiator {
    name: String,
    port: bool,
}

impl StoredInitiator {
    fn of(i: &Initiator) -> StoredInitiator {
        match i {
            Initiator::Port(p) => StoredInitiator {
                name: p.clone(),
                port: true,
            },
            Initiator::Device(n) => StoredInitiator {
                name: n.clone(),
                port: false,
            },
        }
    }

    fn initiator(&self) -> Initiator {
        let name = self.name.to_ascii_lowercase();
        if self.port {
            Initiator::Port(name)
        } else {
            Initiator::Device(name)
        }
    }
}

/// One unit attention a change establishes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StoredUa {
    who: StoredInitiator,
    asc: u8,
    ascq: u8,
}

/// The value of a volume's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    version: u32,
    /// Registrations, reservation and PRGENERATION.
    state: Persisted,
    /// APTPL as the last registration set it ([`Persisted`] does not carry it).
    aptpl: bool,
    /// What the PERSISTENT RESERVE OUT that wrote this record establishes.
    #[serde(default)]
    unit_attentions: Vec<StoredUa>,
    /// Whose tasks it aborts (PREEMPT AND ABORT).
    #[serde(default)]
    abort: Vec<StoredInitiator>,
    /// The initiator port holding an SPC-2 RESERVE, if any.
    #[serde(default)]
    spc2: Option<String>,
}

/// The reservation state of a volume as the cluster shares it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shared {
    /// Persistent reservations.
    pub pr: PrState,
    /// The SPC-2 RESERVE holder's initiator port.
    pub spc2: Option<Arc<str>>,
}

/// What a change does besides its new state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Update {
    pub unit_attentions: Vec<(Initiator, mosaic_proto::scsi::Asc)>,
    pub abort: Vec<Initiator>,
}

impl Update {
    /// The effects of a PERSISTENT RESERVE OUT.
    pub fn of(fx: &Effects) -> Update {
        Update {
            unit_attentions: fx.unit_attentions.clone(),
            abort: fx.abort.clone(),
        }
    }
}

/// A change as the followers install it.
#[derive(Debug, Clone, Default)]
pub struct Change {
    pub state: Shared,
    pub update: Update,
}

fn encode(state: &Shared, update: &Update) -> Bytes {
    let r = Record {
        version: RECORD_VERSION,
        state: state.pr.to_persisted(),
        aptpl: state.pr.aptpl,
        unit_attentions: update
            .unit_attentions
            .iter()
            .map(|(who, asc)| StoredUa {
                who: StoredInitiator::of(who),
                asc: asc.asc,
                ascq: asc.ascq,
            })
            .collect(),
        abort: update.abort.iter().map(StoredInitiator::of).collect(),
        spc2: state.spc2.as_deref().map(str::to_string),
    };
    Bytes::from(serde_json::to_vec(&r).expect("a reservation record always serialises"))
}

fn decode(value: &[u8]) -> Result<Change, String> {
    let r: Record = serde_json::from_slice(value).map_err(|e| e.to_string())?;
    if r.version != RECORD_VERSION {
        return Err(format!("unknown record version {}", r.version));
    }
    let mut pr = PrState::from_persisted(&r.state)?;
    pr.aptpl = r.aptpl;
    Ok(Change {
        state: Shared {
            pr,
            spc2: r.spc2.map(|p| Arc::from(p.to_ascii_lowercase())),
        },
        update: Update {
            unit_attentions: r
                .unit_attentions
                .iter()
                .map(|u| {
                    (
                        u.who.initiator(),
                        mosaic_proto::scsi::Asc::new(u.asc, u.ascq),
                    )
                })
                .collect(),
            abort: r.abort.iter().map(StoredInitiator::initiator).collect(),
        },
    })
}

/// Why a shared PERSISTENT RESERVE OUT could not complete.
#[derive(Debug, thiserror::Error)]
pub enum SharedPrError {
    /// The coordinator refused or failed.
    #[error("coordinator: {0}")]
    Coord(#[from] CoordError),
    /// The stored record does not decode.
    #[error("stored reservation state is corrupt: {0}")]
    Corrupt(String),
    /// Other changes kept winning.
    #[error("gave up after {0} conflicting updates")]
    Contended(usize),
    /// This node did not install the change in time.
    #[error("the change was not installed here within {0:?}")]
    NotApplied(Duration),
}

/// One device's link to its volume's shared reservation state.
#[derive(Debug)]
pub struct SharedPr {
    coord: Arc<dyn Coordinator>,
    key: String,
    /// The revision of the key this device installed last ([`NOT_LOADED`] before
    /// the first, 0 when the key was absent).
    applied: watch::Sender<i64>,
}

/// The state read for a change: the decoded state and the key's `mod_revision`
/// (`None`: the key is absent).
pub type Loaded = (Shared, Option<i64>);

impl SharedPr {
    /// Reads the current state.
    pub async fn load(&self) -> Result<Loaded, SharedPrError> {
        let got = self.coord.get(KeyRange::key(self.key.clone())).await?;
        match got.kvs.first() {
            None => Ok((Shared::default(), None)),
            Some(kv) => {
                let c = decode(&kv.value).map_err(SharedPrError::Corrupt)?;
                Ok((c.state, Some(kv.mod_revision)))
            }
        }
    }

    /// Writes `state` (with what the change does, `update`) if the key is still at
    /// `mod_revision`; the revision written, or `None` when another change won.
    pub async fn store(
        &self,
        state: &Shared,
        update: &Update,
        mod_revision: Option<i64>,
    ) -> Result<Option<i64>, SharedPrError> {
        let compare = match mod_revision {
            Some(r) => Compare::mod_revision(self.key.clone(), CompareOp::Equal, r),
            None => Compare::absent(self.key.clone()),
        };
        let txn = Txn::new().when([compare]).and_then([TxnOp::put(
            self.key.clone(),
            encode(state, update),
            None,
        )]);
        let r = self.coord.txn(txn).await?;
        Ok(r.succeeded.then_some(r.revision))
    }

    /// Waits (at most [`APPLY_WAIT`]) until the device installed its first state, so
    /// that no command is checked against reservations it has not seen; returns at
    /// once after that.
    pub async fn wait_ready(&self) {
        if *self.applied.borrow() > NOT_LOADED {
            return;
        }
        let mut rx = self.applied.subscribe();
        let ready = tokio::time::timeout(APPLY_WAIT, async {
            rx.wait_for(|r| *r > NOT_LOADED).await.is_ok()
        })
        .await;
        if !matches!(ready, Ok(true)) {
            warn!(key = %self.key, "reservations not loaded yet; checking against none");
        }
    }

    /// Waits until this device installed `revision` or a later one.
    pub async fn wait_applied(&self, revision: i64) -> Result<(), SharedPrError> {
        let mut rx = self.applied.subscribe();
        let applied = tokio::time::timeout(APPLY_WAIT, async {
            rx.wait_for(|r| *r >= revision).await.is_ok()
        })
        .await;
        match applied {
            Ok(true) => Ok(()),
            _ => Err(SharedPrError::NotApplied(APPLY_WAIT)),
        }
    }
}

/// Shares `device`'s reservations through `coord` under [`pr_key`]`(volume)`, from
/// now on: PERSISTENT RESERVE OUT goes through the key at once, and a task installs
/// the key's current state (seeding the key from the device's own APTPL state when
/// it is absent) and then follows it until the device is dropped. Commands wait for
/// that first state ([`SharedPr::wait_ready`]).
pub fn attach(device: &Arc<Device>, coord: Arc<dyn Coordinator>, volume: &str) {
    let key = pr_key(volume);
    let (tx, _) = watch::channel(NOT_LOADED);
    let shared = Arc::new(SharedPr {
        coord,
        key: key.clone(),
        applied: tx,
    });
    device.set_shared_pr(shared.clone());
    let weak = Arc::downgrade(device);
    tokio::spawn(async move {
        let Some(start) = load_first(&weak, &shared, &key).await else {
            return;
        };
        follow(weak, shared, key, start).await;
    });
}

/// [`SharedPr::applied`] before the first state is installed.
const NOT_LOADED: i64 = -1;

/// Seeds the key from the device's APTPL state if it is absent, installs the key's
/// state, and returns the revision to watch from; retries until it works or the
/// device is gone (`None`).
async fn load_first(device: &Weak<Device>, shared: &SharedPr, key: &str) -> Option<i64> {
    loop {
        let d = device.upgrade()?;
        let local = Shared {
            pr: d.local_pr_state(),
            spc2: None,
        };
        let attempt = async {
            if local.pr.aptpl {
                // The first node to open the volume after a restart brings back what
                // its APTPL file kept; later nodes find the key present.
                let txn = Txn::new()
                    .when([Compare::absent(key.to_string())])
                    .and_then([TxnOp::put(
                        key.to_string(),
                        encode(&local, &Update::default()),
                        None,
                    )]);
                shared.coord.txn(txn).await?;
            }
            let got = shared.coord.get(KeyRange::key(key.to_string())).await?;
            let change = match got.kvs.first() {
                Some(kv) => {
                    let mut c = decode(&kv.value).map_err(SharedPrError::Corrupt)?;
                    // What happened before this device existed concerns none of
                    // its nexuses.
                    c.update = Update::default();
                    (c, kv.mod_revision)
                }
                None => (Change::default(), 0),
            };
            Ok::<_, SharedPrError>((change, got.revision))
        };
        match attempt.await {
            Ok(((change, revision), at)) => {
                install(&d, shared, change, revision);
                return Some(at + 1);
            }
            Err(e) => {
                warn!(key = %key, "loading shared reservations: {e}");
                drop(d);
                tokio::time::sleep(REWATCH_PAUSE).await;
            }
        }
    }
}

fn install(device: &Device, shared: &SharedPr, change: Change, revision: i64) {
    device.install_shared_pr(change);
    shared.applied.send_if_modified(|cur| {
        if revision > *cur {
            *cur = revision;
            true
        } else {
            false
        }
    });
}

/// Installs every change of the key from revision `start` on, until the device is
/// gone.
async fn follow(device: Weak<Device>, shared: Arc<SharedPr>, key: String, start: i64) {
    let coord = shared.coord.clone();
    let resync = || {
        let (device, shared, key) = (device.clone(), shared.clone(), key.clone());
        async move {
            // Retried until it works or the device is gone.
            let g = loop {
                match shared.coord.get(KeyRange::key(key.clone())).await {
                    Ok(g) => break g,
                    Err(e) => warn!(key = %key, "loading shared reservations: {e}"),
                }
                device.upgrade()?;
                tokio::time::sleep(REWATCH_PAUSE).await;
            };
            let d = device.upgrade()?;
            if let Some(kv) = g.kvs.first() {
                match decode(&kv.value) {
                    Ok(mut c) => {
                        // Effects missed while not watching are lost; the state
                        // is what matters for conflicts.
                        c.update = Update::default();
                        install(&d, &shared, c, kv.mod_revision);
                    }
                    Err(e) => warn!(key = %key, "ignoring reservations: {e}"),
                }
            }
            Some(g.revision + 1)
        }
    };
    let event = |d: &Device, ev: mosaic_coord::Event| {
        let change = match ev.kind {
            EventKind::Put => match decode(&ev.kv.value) {
                Ok(c) => c,
                Err(e) => {
                    warn!(key = %key, "ignoring reservations: {e}");
                    return;
                }
            },
            EventKind::Delete => Change::default(),
        };
        install(d, &shared, change, ev.kv.mod_revision);
    };
    super::follow::follow_key(
        coord,
        key.clone(),
        device.clone(),
        start,
        IDLE_CHECK,
        resync,
        event,
    )
    .await;
}

/// Releases the SPC-2 reservation of `port` cluster-wide if it still holds it (its
/// I_T nexus was lost), in the background: nexus loss has no response to wait for.
pub fn release_spc2(shared: Arc<SharedPr>, port: Arc<str>) {
    tokio::spawn(async move {
        for _ in 0..UPDATE_ATTEMPTS {
            let (mut state, revision) = match shared.load().await {
                Ok(l) => l,
                Err(e) => return warn!(key = %shared.key, "releasing an SPC-2 reservation: {e}"),
            };
            if state.spc2.as_deref() != Some(&*port) {
                return;
            }
            state.spc2 = None;
            match shared.store(&state, &Update::default(), revision).await {
                Ok(Some(_)) => return,
                Ok(None) => continue,
                Err(e) => return warn!(key = %shared.key, "releasing an SPC-2 reservation: {e}"),
            }
        }
    });
}

/// Removes `volume`'s reservation state (the volume is deleted).
pub async fn forget(coord: &dyn Coordinator, volume: &str) -> Result<(), CoordError> {
    coord.delete(KeyRange::key(pr_key(volume))).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Nexus;
    use crate::scsi::{LogicalUnit, LuConfig, ScsiRequest};
    use crate::store::BackingStore;
    use mosaic_coord::EmbeddedCoordinator;
    use mosaic_proto::scsi::status;

    /// One volume's device as node `node` exports it (its own target port).
    fn node_device(node: u16) -> Arc<Device> {
        let cfg = LuConfig {
            name: "vol".into(),
            block_size: 512,
            serial: "S1".into(),
            naa_id: LuConfig::naa_id_for("vol"),
            vendor: "MOSAIC".into(),
            product: "Mosaic volume".into(),
            revision: "0001".into(),
            target_name: "iqn.t:vol".into(),
            relative_port: node,
            tpg: node,
        };
        let lu = LogicalUnit::new(cfg, BackingStore::memory(64 * 512)).unwrap();
        Arc::new(Device::new(lu))
    }

    async fn exec(d: &Device, n: &Nexus, cdb: &[u8], data_out: &[u8]) -> u8 {
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
        .status
    }

    async fn prout(d: &Device, n: &Nexus, sa: u8, ptype: u8, key: u64, sa_key: u64) -> u8 {
        let mut p = vec![0u8; 24];
        p[0..8].copy_from_slice(&key.to_be_bytes());
        p[8..16].copy_from_slice(&sa_key.to_be_bytes());
        exec(d, n, &[0x5f, sa, ptype, 0, 0, 0, 0, 0, 24, 0], &p).await
    }

    const WRITE10: [u8; 10] = [0x2a, 0, 0, 0, 0, 1, 0, 0, 1, 0];
    const READ10: [u8; 10] = [0x28, 0, 0, 0, 0, 1, 0, 0, 1, 0];
    const TUR: [u8; 6] = [0; 6];
    const WRITE_EXCLUSIVE: u8 = 1;

    /// Two nodes' devices of one volume over one coordinator: a reservation taken
    /// through node 1 is enforced at node 2, and a PREEMPT through node 2 reaches
    /// the preempted initiator at node 1 as a unit attention.
    #[tokio::test]
    async fn a_reservation_through_one_node_holds_at_the_other() {
        let coord: Arc<dyn Coordinator> = Arc::new(EmbeddedCoordinator::default());
        let (d1, d2) = (node_device(1), node_device(2));
        attach(&d1, coord.clone(), "vol");
        attach(&d2, coord.clone(), "vol");
        let a = Nexus::new("iqn.a", 1, "iqn.t:vol", 1, 1);
        let b = Nexus::new("iqn.b", 2, "iqn.t:vol", 2, 2);
        d1.nexus_added(&a);
        d2.nexus_added(&b);
        // a registers and reserves Write Exclusive through node 1; b registers
        // through node 2.
        assert_eq!(prout(&d1, &a, 0x00, 0, 0, 0xa).await, status::GOOD);
        assert_eq!(
            prout(&d1, &a, 0x01, WRITE_EXCLUSIVE, 0xa, 0).await,
            status::GOOD
        );
        // Node 2 followed it before its own PROUT wrote (its CAS read the key).
        assert_eq!(prout(&d2, &b, 0x00, 0, 0, 0xb).await, status::GOOD);
        let deadline = std::time::Instant::now() + APPLY_WAIT;
        while d2.local_pr_state().registrations.len() < 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "node 2 never followed"
            );
            tokio::task::yield_now().await;
        }
        assert_eq!(
            exec(&d2, &b, &WRITE10, &[0; 512]).await,
            status::RESERVATION_CONFLICT
        );
        assert_eq!(exec(&d2, &b, &READ10, &[]).await, status::GOOD);
        assert_eq!(exec(&d1, &a, &WRITE10, &[0; 512]).await, status::GOOD);
        // b preempts a through node 2: a hears REGISTRATIONS PREEMPTED at node 1.
        assert_eq!(
            prout(&d2, &b, 0x04, WRITE_EXCLUSIVE, 0xb, 0xa).await,
            status::GOOD
        );
        while d1.pending_unit_attentions(&a).is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "node 1 never followed"
            );
            tokio::task::yield_now().await;
        }
        assert_eq!(
            d1.pending_unit_attentions(&a),
            vec![crate::ua::asc::REGISTRATIONS_PREEMPTED]
        );
        assert_eq!(exec(&d1, &a, &TUR, &[]).await, status::CHECK_CONDITION);
        assert_eq!(
            exec(&d1, &a, &WRITE10, &[0; 512]).await,
            status::RESERVATION_CONFLICT
        );
        assert_eq!(exec(&d2, &b, &WRITE10, &[0; 512]).await, status::GOOD);
        // A refused PROUT writes nothing: a is no longer registered.
        let before = coord
            .get(KeyRange::key(pr_key("vol")))
            .await
            .unwrap()
            .revision;
        assert_eq!(
            prout(&d1, &a, 0x01, WRITE_EXCLUSIVE, 0xa, 0).await,
            status::RESERVATION_CONFLICT
        );
        assert_eq!(
            coord
                .get(KeyRange::key(pr_key("vol")))
                .await
                .unwrap()
                .revision,
            before
        );
    }

    /// SPC-2 RESERVE is the cluster's too: a RESERVE through node 1 conflicts at
    /// node 2, a LOGICAL UNIT RESET through node 1 releases it everywhere, and a
    /// lost nexus's RESERVE goes away.
    #[tokio::test]
    async fn reserve_and_resets_reach_every_node() {
        let coord: Arc<dyn Coordinator> = Arc::new(EmbeddedCoordinator::default());
        let (d1, d2) = (node_device(1), node_device(2));
        attach(&d1, coord.clone(), "vol");
        attach(&d2, coord.clone(), "vol");
        let a = Nexus::new("iqn.a", 1, "iqn.t:vol", 1, 1);
        let b = Nexus::new("iqn.b", 2, "iqn.t:vol", 2, 2);
        d1.nexus_added(&a);
        d2.nexus_added(&b);
        const RESERVE6: [u8; 6] = [0x16, 0, 0, 0, 0, 0];
        const RELEASE6: [u8; 6] = [0x17, 0, 0, 0, 0, 0];
        assert_eq!(exec(&d1, &a, &RESERVE6, &[]).await, status::GOOD);
        // The RESERVE through node 2 reads the stored state: conflict at once.
        assert_eq!(
            exec(&d2, &b, &RESERVE6, &[]).await,
            status::RESERVATION_CONFLICT
        );
        let deadline = std::time::Instant::now() + APPLY_WAIT;
        while exec(&d2, &b, &WRITE10, &[0; 512]).await != status::RESERVATION_CONFLICT {
            assert!(
                std::time::Instant::now() < deadline,
                "node 2 never followed"
            );
            tokio::task::yield_now().await;
        }
        // RELEASE by a non-holder does nothing; a reset releases it everywhere.
        assert_eq!(exec(&d2, &b, &RELEASE6, &[]).await, status::GOOD);
        assert_eq!(
            exec(&d2, &b, &RESERVE6, &[]).await,
            status::RESERVATION_CONFLICT
        );
        d1.reset(crate::device::ResetKind::LogicalUnit, &a);
        d1.reset_peers(crate::device::ResetKind::LogicalUnit).await;
        assert_eq!(exec(&d2, &b, &RESERVE6, &[]).await, status::GOOD);
        // b's nexus is lost: its reservation goes with it, at every node.
        d2.nexus_lost(&b);
        assert_eq!(exec(&d1, &a, &TUR, &[]).await, status::CHECK_CONDITION);
        while exec(&d1, &a, &RESERVE6, &[]).await != status::GOOD {
            assert!(
                std::time::Instant::now() < deadline,
                "b's RESERVE outlived it"
            );
            tokio::task::yield_now().await;
        }
    }

    #[test]
    fn records_round_trip_with_their_effects() {
        let n = Nexus::new("iqn.a", 1, "iqn.t", 1, 1);
        let mut s = PrState::default();
        let mut p = vec![0u8; 24];
        p[8..16].copy_from_slice(&7u64.to_be_bytes());
        let fx = s
            .persistent_reserve_out(&n, &[0x5f, 0x06, 0, 0, 0, 0, 0, 0, 24, 0], &p, false)
            .expect("register");
        let mut fx = fx;
        fx.unit_attentions.push((
            Initiator::Port("iqn.b,i,0x000000000002".into()),
            crate::ua::asc::REGISTRATIONS_PREEMPTED,
        ));
        fx.abort.push(Initiator::Device("iqn.c".into()));
        let shared = Shared {
            pr: s.clone(),
            spc2: Some(Arc::from("iqn.d,i,0x000000000004")),
        };
        let update = Update::of(&fx);
        let c = decode(&encode(&shared, &update)).expect("decodes");
        assert_eq!(c.state, shared);
        assert_eq!(c.update, update);
        assert!(decode(b"{}").is_err());
        assert!(decode(b"not json").is_err());
    }
}
