//! Mode parameters shared by every node of the cluster (SPC-4 §6.11, §7.5; issue 5).
//!
//! Every node exports each volume as the same logical unit, so what a MODE SELECT
//! changes through one node (WCE in the Caching page, SWP in the Control page) must
//! hold through all of them, as on one target. The changeable parameters of a
//! volume live in one coordinator key, [`MODE_PREFIX`]`<volume>`, as JSON, with the
//! I_T nexus that sent the MODE SELECT that wrote them:
//!
//! - A MODE SELECT, on whichever node it arrives, is checked by the logical unit
//!   ([`crate::scsi::LogicalUnit::plan_mode_select`]: nothing changes when it is
//!   refused), applied to the stored parameters and written with compare-and-set
//!   on the key's `mod_revision` (absent: `version = 0`); when another change won,
//!   it reads again and retries. It completes (GOOD) once the device it arrived on
//!   installed the revision it wrote, so the initiator's next command through that
//!   node already runs with it.
//! - Every node's device follows the key by watch ([`attach`]) and installs each
//!   revision: the logical unit's parameters (so WCE = 0 makes every write durable
//!   and SWP refuses writes on every node), and MODE PARAMETERS CHANGED (2Ah/01h)
//!   for each of its nexuses except the one that sent the MODE SELECT (SPC-4
//!   §6.11: every I_T nexus but the sender's, and a nexus is an initiator port *and*
//!   a target port, so the same initiator port through another node hears it).
//! - A device opened later (a resize builds a new one) starts from the stored
//!   parameters, without unit attentions. The key is deleted with the volume
//!   ([`forget`]); a deleted key is the power-on values again.
//!
//! The record's encoding and the rules of who hears of a change are pure
//! ([`encode`], [`decode`], [`hears`]); the rest is the coordinator I/O.

use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use mosaic_coord::{Compare, CompareOp, CoordError, Coordinator, EventKind, KeyRange, Txn, TxnOp};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::warn;

use crate::device::{Device, Nexus};
use crate::scsi::ModeParams;

/// The coordinator keys of the volumes' mode parameters: `/mosaic/mode/<volume>`.
pub const MODE_PREFIX: &str = "/mosaic/mode/";
/// Compare-and-set attempts of one MODE SELECT before giving up: each failed
/// attempt means another node's MODE SELECT won.
pub const UPDATE_ATTEMPTS: usize = 16;
/// How long a MODE SELECT waits for its own device to install what it wrote.
pub const APPLY_WAIT: Duration = Duration::from_secs(10);
/// Pause before watching again after a watch broke.
const REWATCH_PAUSE: Duration = Duration::from_millis(100);
/// How often a follower without news checks that its device still exists.
const IDLE_CHECK: Duration = Duration::from_secs(5);
/// Format version of [`Record`].
const RECORD_VERSION: u32 = 1;
/// [`SharedMode::applied`] before the first state is installed.
const NOT_LOADED: i64 = -1;

/// The key of `volume`'s mode parameters.
pub fn mode_key(volume: &str) -> String {
    format!("{MODE_PREFIX}{volume}")
}

/// The I_T nexus a MODE SELECT came from: its initiator port and the relative
/// target port (the node) it reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sender {
    pub initiator_port: String,
    pub relative_port: u16,
}

impl Sender {
    /// The sender of a MODE SELECT arriving on `nexus`.
    pub fn of(nexus: &Nexus) -> Sender {
        Sender {
            initiator_port: nexus.initiator_port.to_string(),
            relative_port: nexus.relative_port,
        }
    }
}

/// The value of a volume's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    version: u32,
    wce: bool,
    swp: bool,
    /// Who sent the MODE SELECT that wrote this record.
    sender: Option<Sender>,
}

/// One revision of a volume's mode parameters as the followers install it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Change {
    pub params: ModeParams,
    /// The nexus that must not hear MODE PARAMETERS CHANGED; `None`: nobody hears
    /// of it (the state a device starts from, or a deleted key).
    pub sender: Option<Sender>,
}

fn encode(change: &Change) -> Bytes {
    let r = Record {
        version: RECORD_VERSION,
        wce: change.params.wce,
        swp: change.params.swp,
        sender: change.sender.clone(),
    };
    Bytes::from(serde_json::to_vec(&r).expect("a mode record always serialises"))
}

fn decode(value: &[u8]) -> Result<Change, String> {
    let r: Record = serde_json::from_slice(value).map_err(|e| e.to_string())?;
    if r.version != RECORD_VERSION {
        return Err(format!("unknown record version {}", r.version));
    }
    Ok(Change {
        params: ModeParams {
            wce: r.wce,
            swp: r.swp,
        },
        sender: r.sender,
    })
}

/// Who, of a device on relative target port `relative_port`, hears of `change`:
/// `None` nobody; `Some(None)` every nexus; `Some(Some(port))` every nexus but the
/// one of initiator port `port` (the sender, when it is on this target port).
pub fn hears(change: &Change, relative_port: u16) -> Option<Option<&str>> {
    let sender = change.sender.as_ref()?;
    Some((sender.relative_port == relative_port).then_some(sender.initiator_port.as_str()))
}

/// Why a shared MODE SELECT could not complete.
#[derive(Debug, thiserror::Error)]
pub enum SharedModeError {
    /// The coordinator refused or failed.
    #[error("coordinator: {0}")]
    Coord(#[from] CoordError),
    /// The stored record does not decode.
    #[error("stored mode parameters are corrupt: {0}")]
    Corrupt(String),
    /// Other changes kept winning.
    #[error("gave up after {0} conflicting updates")]
    Contended(usize),
    /// This device did not install the change in time.
    #[error("the change was not installed here within {0:?}")]
    NotApplied(Duration),
}

/// One device's link to its volume's shared mode parameters.
#[derive(Debug)]
pub struct SharedMode {
    coord: Arc<dyn Coordinator>,
    key: String,
    /// The revision of the key this device installed last ([`NOT_LOADED`] before
    /// the first, 0 when the key was absent).
    applied: watch::Sender<i64>,
}

impl SharedMode {
    /// The stored parameters and the key's `mod_revision` (`None`: absent, the
    /// power-on values).
    async fn load(&self) -> Result<(ModeParams, Option<i64>), SharedModeError> {
        let got = self.coord.get(KeyRange::key(self.key.clone())).await?;
        match got.kvs.first() {
            None => Ok((ModeParams::default(), None)),
            Some(kv) => {
                let c = decode(&kv.value).map_err(SharedModeError::Corrupt)?;
                Ok((c.params, Some(kv.mod_revision)))
            }
        }
    }

    /// Writes `change` if the key is still at `mod_revision`; the revision
    /// written, or `None` when another change won.
    async fn store(
        &self,
        change: &Change,
        mod_revision: Option<i64>,
    ) -> Result<Option<i64>, SharedModeError> {
        let compare = match mod_revision {
            Some(r) => Compare::mod_revision(self.key.clone(), CompareOp::Equal, r),
            None => Compare::absent(self.key.clone()),
        };
        let txn = Txn::new().when([compare]).and_then([TxnOp::put(
            self.key.clone(),
            encode(change),
            None,
        )]);
        let r = self.coord.txn(txn).await?;
        Ok(r.succeeded.then_some(r.revision))
    }

    /// Applies `change` (a valid MODE SELECT's effect on whatever parameters are
    /// stored) for the MODE SELECT `sender` sent, and returns once this device
    /// installed it.
    pub async fn update(
        &self,
        change: impl Fn(ModeParams) -> ModeParams,
        sender: Sender,
    ) -> Result<(), SharedModeError> {
        for _ in 0..UPDATE_ATTEMPTS {
            let (params, revision) = self.load().await?;
            let next = Change {
                params: change(params),
                sender: Some(sender.clone()),
            };
            if let Some(written) = self.store(&next, revision).await? {
                return self.wait_applied(written).await;
            }
        }
        Err(SharedModeError::Contended(UPDATE_ATTEMPTS))
    }

    /// Waits (at most [`APPLY_WAIT`]) until the device installed its first state,
    /// so that no command runs with parameters the cluster has changed; at once
    /// after that.
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
            warn!(key = %self.key, "mode parameters not loaded yet; using the current ones");
        }
    }

    async fn wait_applied(&self, revision: i64) -> Result<(), SharedModeError> {
        let mut rx = self.applied.subscribe();
        let applied = tokio::time::timeout(APPLY_WAIT, async {
            rx.wait_for(|r| *r >= revision).await.is_ok()
        })
        .await;
        match applied {
            Ok(true) => Ok(()),
            _ => Err(SharedModeError::NotApplied(APPLY_WAIT)),
        }
    }

    fn installed(&self, revision: i64) {
        self.applied.send_if_modified(|cur| {
            if revision > *cur {
                *cur = revision;
                true
            } else {
                false
            }
        });
    }
}

/// Shares `device`'s mode parameters through `coord` under [`mode_key`]`(volume)`
/// from now on: MODE SELECT goes through the key at once, and a task installs the
/// key's current state and then follows it until the device is dropped. Commands
/// wait for that first state ([`SharedMode::wait_ready`]).
pub fn attach(device: &Arc<Device>, coord: Arc<dyn Coordinator>, volume: &str) {
    let (tx, _) = watch::channel(NOT_LOADED);
    let shared = Arc::new(SharedMode {
        coord,
        key: mode_key(volume),
        applied: tx,
    });
    device.set_shared_mode(shared.clone());
    let weak = Arc::downgrade(device);
    tokio::spawn(async move {
        let Some(start) = load_first(&weak, &shared).await else {
            return;
        };
        follow(weak, shared, start).await;
    });
}

/// Installs the key's state without unit attentions (what changed before now
/// concerns none of the device's nexuses) and returns the revision to watch from;
/// retries until it works or the device is gone (`None`).
async fn load_first(device: &Weak<Device>, shared: &SharedMode) -> Option<i64> {
    loop {
        let got = shared.coord.get(KeyRange::key(shared.key.clone())).await;
        let d = device.upgrade()?;
        let loaded = got.map_err(SharedModeError::from).and_then(|g| {
            let (change, revision) = match g.kvs.first() {
                Some(kv) => (
                    decode(&kv.value).map_err(SharedModeError::Corrupt)?,
                    kv.mod_revision,
                ),
                None => (Change::default(), 0),
            };
            Ok((change, revision, g.revision))
        });
        match loaded {
            Ok((change, revision, at)) => {
                d.install_shared_mode(&Change {
                    sender: None,
                    ..change
                });
                shared.installed(revision);
                return Some(at + 1);
            }
            Err(e) => {
                warn!(key = %shared.key, "loading shared mode parameters: {e}");
                drop(d);
                tokio::time::sleep(REWATCH_PAUSE).await;
            }
        }
    }
}

/// Installs every revision of the key from `start` on, until the device is gone.
/// After a broken watch the current state is installed without unit attentions
/// (what was missed cannot be told apart) and watching resumes after it.
async fn follow(device: Weak<Device>, shared: Arc<SharedMode>, start: i64) {
    let (coord, key) = (shared.coord.clone(), shared.key.clone());
    let resync = || {
        let (device, shared) = (device.clone(), shared.clone());
        async move { load_first(&device, &shared).await }
    };
    let event = |d: &Device, ev: mosaic_coord::Event| {
        let change = match ev.kind {
            EventKind::Put => match decode(&ev.kv.value) {
                Ok(c) => c,
                Err(e) => {
                    warn!(key = %shared.key, "ignoring mode parameters: {e}");
                    return;
                }
            },
            EventKind::Delete => Change::default(),
        };
        d.install_shared_mode(&change);
        shared.installed(ev.revision());
    };
    super::follow::follow_key(coord, key, device.clone(), start, IDLE_CHECK, resync, event).await;
}

/// Removes `volume`'s mode parameters (the volume is deleted): a later volume of
/// the same name starts from the power-on values.
pub async fn forget(coord: &dyn Coordinator, volume: &str) -> Result<(), CoordError> {
    coord.delete(KeyRange::key(mode_key(volume))).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::{LogicalUnit, LuConfig, ScsiRequest};
    use crate::store::BackingStore;
    use crate::ua;
    use mosaic_coord::EmbeddedCoordinator;
    use mosaic_proto::scsi::sense::key;
    use mosaic_proto::scsi::status;

    const BS: usize = 512;

    /// One volume's device as node `node` exports it (its own target port).
    fn node_device(node: u16) -> (Arc<Device>, BackingStore) {
        let cfg = LuConfig {
            name: "vol".into(),
            block_size: BS as u32,
            serial: "S1".into(),
            naa_id: LuConfig::naa_id_for("vol"),
            vendor: "MOSAIC".into(),
            product: "Mosaic volume".into(),
            revision: "0001".into(),
            target_name: "iqn.t:vol".into(),
            relative_port: node,
            tpg: node,
        };
        let store = BackingStore::memory(64 * BS as u64);
        let lu = LogicalUnit::new(cfg, store.clone()).unwrap();
        (Arc::new(Device::new(lu)), store)
    }

    fn nexus(name: &str, node: u16) -> Nexus {
        Nexus::new(name, 1, "iqn.t:vol", node, node)
    }

    async fn exec(d: &Device, n: &Nexus, cdb: &[u8], data_out: &[u8], read: u32) -> (u8, Bytes) {
        let r = d
            .execute(
                n,
                ScsiRequest {
                    cdb: Bytes::copy_from_slice(cdb),
                    lun: 0,
                    data_out: Bytes::copy_from_slice(data_out),
                    expected_len: read.max(data_out.len() as u32),
                },
            )
            .await;
        let sense = r.sense.clone();
        (
            r.status,
            if r.status == status::GOOD {
                r.data_in
            } else {
                sense
            },
        )
    }

    /// The current page `code` through `d` (MODE SENSE(6), DBD).
    async fn page(d: &Device, n: &Nexus, code: u8) -> Vec<u8> {
        let (st, data) = exec(d, n, &[0x1a, 0x08, code, 0, 255, 0], &[], 255).await;
        assert_eq!(st, status::GOOD, "MODE SENSE");
        data[4..].to_vec()
    }

    /// MODE SELECT(6) of one page through `d`.
    async fn select(d: &Device, n: &Nexus, page: &[u8]) -> u8 {
        let mut list = vec![0u8; 4];
        list.extend_from_slice(page);
        exec(d, n, &[0x15, 0x10, 0, 0, list.len() as u8, 0], &list, 0)
            .await
            .0
    }

    fn flushes(store: &BackingStore) -> u64 {
        match store {
            BackingStore::Memory(m) => m.flushes(),
            _ => unreachable!("the tests use memory stores"),
        }
    }

    async fn followed(d: &Device, what: impl Fn(ModeParams) -> bool) {
        let deadline = std::time::Instant::now() + APPLY_WAIT;
        while !what(d.lu().mode_params()) {
            assert!(std::time::Instant::now() < deadline, "never followed");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Two nodes' devices of one volume over one coordinator: WCE cleared and SWP
    /// set through node 1 hold at node 2 (MODE SENSE, durable writes, write
    /// protection); every nexus but the sender hears MODE PARAMETERS CHANGED once,
    /// the same initiator port through node 2 included.
    #[tokio::test]
    async fn a_mode_select_through_one_node_holds_at_the_other() {
        let coord: Arc<dyn Coordinator> = Arc::new(EmbeddedCoordinator::default());
        let ((d1, _), (d2, s2)) = (node_device(1), node_device(2));
        attach(&d1, coord.clone(), "vol");
        attach(&d2, coord.clone(), "vol");
        let (a1, b1) = (nexus("iqn.a", 1), nexus("iqn.b", 1));
        let (a2, c2) = (nexus("iqn.a", 2), nexus("iqn.c", 2));
        for (d, n) in [(&d1, &a1), (&d1, &b1), (&d2, &a2), (&d2, &c2)] {
            d.nexus_added(n);
        }
        let mut caching = page(&d1, &a1, 0x08).await;
        assert_eq!(caching[2] & 0x04, 0x04, "WCE = 1 at power-on");
        caching[2] &= !0x04;
        assert_eq!(select(&d1, &a1, &caching).await, status::GOOD);
        // GOOD means node 1 already runs with it; node 2 follows by watch.
        assert!(!d1.lu().mode_params().wce);
        followed(&d2, |p| !p.wce).await;
        assert!(d1.pending_unit_attentions(&a1).is_empty(), "not the sender");
        for (d, n) in [(&d1, &b1), (&d2, &a2), (&d2, &c2)] {
            assert_eq!(
                d.pending_unit_attentions(n),
                vec![ua::asc::MODE_PARAMETERS_CHANGED],
                "{}",
                n.initiator_port
            );
            let (st, sense) = exec(d, n, &[0; 6], &[], 0).await;
            assert_eq!(st, status::CHECK_CONDITION);
            assert_eq!(
                (sense[2] & 0x0f, sense[12], sense[13]),
                (key::UNIT_ATTENTION, 0x2a, 0x01)
            );
            assert_eq!(exec(d, n, &[0; 6], &[], 0).await.0, status::GOOD, "once");
        }
        assert_eq!(page(&d2, &c2, 0x08).await[2] & 0x04, 0, "WCE = 0 at node 2");
        // WCE = 0: a write through node 2 is durable before GOOD.
        let before = flushes(&s2);
        let write10 = [0x2a, 0, 0, 0, 0, 1, 0, 0, 1, 0];
        assert_eq!(exec(&d2, &c2, &write10, &[7; BS], 0).await.0, status::GOOD);
        assert_eq!(flushes(&s2), before + 1, "flushed before GOOD");

        // SWP through node 2: node 1 refuses writes, and hears of it.
        let mut control = page(&d2, &c2, 0x0a).await;
        control[4] |= 0x08;
        assert_eq!(select(&d2, &c2, &control).await, status::GOOD);
        followed(&d1, |p| p.swp).await;
        assert_eq!(
            d1.pending_unit_attentions(&a1),
            vec![ua::asc::MODE_PARAMETERS_CHANGED]
        );
        assert!(d2.pending_unit_attentions(&c2).is_empty());
        let _ = exec(&d1, &a1, &[0; 6], &[], 0).await;
        let (st, sense) = exec(&d1, &a1, &write10, &[7; BS], 0).await;
        assert_eq!(st, status::CHECK_CONDITION);
        assert_eq!((sense[2] & 0x0f, sense[12]), (key::DATA_PROTECT, 0x27));
        // The stored state kept node 1's WCE = 0 (the change applies to what is
        // stored, not to what node 2 had).
        assert!(!d1.lu().mode_params().wce && !d2.lu().mode_params().wce);

        // A refused MODE SELECT writes nothing.
        let before = coord
            .get(KeyRange::key(mode_key("vol")))
            .await
            .unwrap()
            .revision;
        let mut bad = control.clone();
        bad[4] |= 0x04; // D_SENSE is not changeable
        assert_eq!(select(&d1, &a1, &bad).await, status::CHECK_CONDITION);
        assert_eq!(
            coord
                .get(KeyRange::key(mode_key("vol")))
                .await
                .unwrap()
                .revision,
            before
        );

        // A device opened later (a resize) starts from the stored values, quietly;
        // deleting the key is the power-on values again.
        let (d3, _) = node_device(3);
        let a3 = nexus("iqn.a", 3);
        d3.nexus_added(&a3);
        attach(&d3, coord.clone(), "vol");
        assert_eq!(exec(&d3, &a3, &[0; 6], &[], 0).await.0, status::GOOD);
        assert_eq!(
            d3.lu().mode_params(),
            ModeParams {
                wce: false,
                swp: true
            }
        );
        forget(coord.as_ref(), "vol").await.unwrap();
        followed(&d3, |p| p == ModeParams::default()).await;
        followed(&d1, |p| p == ModeParams::default()).await;
        assert!(d3.pending_unit_attentions(&a3).is_empty());
    }

    #[test]
    fn records_round_trip_and_name_who_hears() {
        let c = Change {
            params: ModeParams {
                wce: false,
                swp: true,
            },
            sender: Some(Sender::of(&nexus("iqn.a", 2))),
        };
        assert_eq!(decode(&encode(&c)).unwrap(), c);
        assert!(decode(b"{}").is_err());
        assert!(decode(b"not json").is_err());
        assert!(decode(br#"{"version":9,"wce":true,"swp":false,"sender":null}"#).is_err());
        assert_eq!(hears(&c, 2), Some(Some("iqn.a,i,0x000000000001")));
        assert_eq!(hears(&c, 1), Some(None));
        assert_eq!(hears(&Change::default(), 1), None);
    }
}
