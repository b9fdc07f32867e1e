//! Resets reach every node. Every node exports each volume as the same logical
//! unit, so a LOGICAL UNIT RESET or a TARGET RESET received by one node must take
//! effect on all of them, as it would on one target: every I_T nexus of the
//! volume, whichever node it is on, gets the reset's unit attention (SAM-5 §6.3;
//! SPC-4 §5.14: BUS DEVICE RESET FUNCTION OCCURRED, SCSI BUS RESET OCCURRED, POWER
//! ON OCCURRED), and an SPC-2 reservation held there is released.
//!
//! Through the coordinator, so it works the same when nodes are processes:
//!
//! - the node that received the reset puts `/mosaic/resets/<volume id>`
//!   (`{"kind": ..., "node": ...}`) and waits, bounded by [`PROPAGATION_LIMIT`],
//!   until every other node that is not failed has put
//!   `/mosaic/resets-applied/<volume id>/<node id>` = the revision of that put;
//! - each node follows the volume's reset key, once for all its devices of the
//!   volume ([`NodeResets`]: after a resize an old and a new device coexist): a
//!   reset from another node is applied to every one with
//!   [`Device::reset_by_peer`]; a TARGET COLD RESET also ends their sessions on
//!   that node ([`Device::stop_sessions`], waited for), as it ends every session
//!   on a stand-alone target; then the node acknowledges. The receiving node's
//!   other devices of the volume take the reset at once
//!   ([`NodeResets::apply_here`]).
//!
//! Only then does the task management response go out, so an initiator that sends
//! its next command to another node already finds the unit attention there (the
//! libiscsi test SCSI.MultipathIO.Reset does exactly that).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use mosaic_coord::{Coordinator, EventKind, KeyRange, Revision};
use mosaic_routing::{NodeId, NodeState, RoutingTable, VolumeId};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tracing::{debug, warn};

use crate::device::{Device, ResetKind};

/// Prefix of the keys announcing a reset, one per volume.
pub const RESETS_PREFIX: &str = "/mosaic/resets/";
/// Prefix of the keys where nodes acknowledge a reset they applied.
pub const APPLIED_PREFIX: &str = "/mosaic/resets-applied/";
/// How long the receiving node waits for its peers before answering anyway: a
/// peer applies a reset in microseconds, so only a node that is gone takes this
/// long (its initiators lose their sessions anyway).
pub const PROPAGATION_LIMIT: Duration = Duration::from_secs(5);
/// Pause before a follower watches again after its watch ended.
const REWATCH_PAUSE: Duration = Duration::from_millis(100);
/// How often a follower without news checks that its volume still has devices.
const IDLE_CHECK: Duration = Duration::from_secs(5);

/// Why announcing a reset failed.
#[derive(Debug, Error)]
pub enum ResetError {
    #[error("coordinator: {0}")]
    Coord(#[from] mosaic_coord::CoordError),
    #[error("nodes {0:?} did not apply the reset in time")]
    Late(Vec<u32>),
}

/// What the reset key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct ResetEvent {
    kind: Kind,
    /// The node that received the reset (it applied it itself).
    node: u32,
}

/// [`ResetKind`] as it is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Kind {
    LogicalUnit,
    TargetWarm,
    TargetCold,
}

impl From<ResetKind> for Kind {
    fn from(k: ResetKind) -> Kind {
        match k {
            ResetKind::LogicalUnit => Kind::LogicalUnit,
            ResetKind::TargetWarm => Kind::TargetWarm,
            ResetKind::TargetCold => Kind::TargetCold,
        }
    }
}

impl From<Kind> for ResetKind {
    fn from(k: Kind) -> ResetKind {
        match k {
            Kind::LogicalUnit => ResetKind::LogicalUnit,
            Kind::TargetWarm => ResetKind::TargetWarm,
            Kind::TargetCold => ResetKind::TargetCold,
        }
    }
}

fn reset_key(volume: VolumeId) -> String {
    format!("{RESETS_PREFIX}{}", volume.0)
}

fn applied_prefix(volume: VolumeId) -> String {
    format!("{APPLIED_PREFIX}{}/", volume.0)
}

fn applied_key(volume: VolumeId, node: NodeId) -> String {
    format!("{}{}", applied_prefix(volume), node.0)
}

/// The node an acknowledgement key names, and the revision it acknowledges.
fn parse_ack(volume: VolumeId, key: &[u8], value: &[u8]) -> Option<(u32, Revision)> {
    let key = std::str::from_utf8(key).ok()?;
    let node = key.strip_prefix(&applied_prefix(volume))?.parse().ok()?;
    let revision = std::str::from_utf8(value).ok()?.parse().ok()?;
    Some((node, revision))
}

/// Tells every other node of `table` that `node` received a reset of `volume`,
/// and returns once each that is not failed has applied it (or with the nodes
/// that did not within [`PROPAGATION_LIMIT`]).
pub async fn announce(
    coord: &dyn Coordinator,
    table: &RoutingTable,
    volume: VolumeId,
    node: NodeId,
    kind: ResetKind,
) -> Result<(), ResetError> {
    announce_within(coord, table, volume, node, kind, PROPAGATION_LIMIT).await
}

async fn announce_within(
    coord: &dyn Coordinator,
    table: &RoutingTable,
    volume: VolumeId,
    node: NodeId,
    kind: ResetKind,
    limit: Duration,
) -> Result<(), ResetError> {
    let mut waiting: HashSet<u32> = table
        .nodes()
        .values()
        .filter(|n| n.id != node && n.state != NodeState::Failed)
        .map(|n| n.id.0)
        .collect();
    let event = ResetEvent {
        kind: kind.into(),
        node: node.0,
    };
    let value = serde_json::to_vec(&event).expect("a reset event always serialises");
    let put = coord
        .put(Bytes::from(reset_key(volume)), Bytes::from(value), None)
        .await?;
    if waiting.is_empty() {
        return Ok(());
    }
    let revision = put.revision;
    let mut watch = coord
        .watch(KeyRange::prefix(applied_prefix(volume)), Some(revision + 1))
        .await?;
    let wait = async {
        while !waiting.is_empty() {
            let resp = watch.recv().await?;
            for ev in resp.events {
                if ev.kind != EventKind::Put {
                    continue;
                }
                if let Some((n, r)) = parse_ack(volume, &ev.kv.key, &ev.kv.value) {
                    if r >= revision {
                        waiting.remove(&n);
                    }
                }
            }
        }
        Ok::<(), ResetError>(())
    };
    match tokio::time::timeout(limit, wait).await {
        Ok(r) => r,
        Err(_) => {
            let mut late: Vec<u32> = waiting.into_iter().collect();
            late.sort_unstable();
            Err(ResetError::Late(late))
        }
    }
}

/// The devices of each volume on one node. Usually one per volume, but right
/// after a resize the old device (kept by the sessions logged in before) and the
/// new one coexist: a reset must reach both before the node acknowledges it. So
/// one task per volume and node follows the volume's reset key
/// ([`NodeResets::follow`]) and applies each reset to every live device of the
/// volume here, stops their sessions for a cold reset, and only then
/// acknowledges. It ends once the volume has no device left on the node.
#[derive(Debug, Default)]
pub struct NodeResets {
    volumes: Mutex<HashMap<VolumeId, Vec<Weak<Device>>>>,
}

impl NodeResets {
    /// Adds `device`, an export of `volume` here; `true` when it is the only live
    /// one (no follower runs for the volume: the caller starts one).
    fn register(&self, volume: VolumeId, device: &Arc<Device>) -> bool {
        let mut volumes = self.volumes.lock();
        let devices = volumes.entry(volume).or_default();
        devices.retain(|d| d.strong_count() > 0);
        let first = devices.is_empty();
        devices.push(Arc::downgrade(device));
        first
    }

    /// The live devices of `volume` here; `None` when none is left, and then the
    /// volume is forgotten (its follower ends; a later device starts a new one).
    fn live(&self, volume: VolumeId) -> Option<Vec<Arc<Device>>> {
        let mut volumes = self.volumes.lock();
        let devices = volumes.get_mut(&volume)?;
        let live: Vec<Arc<Device>> = devices.iter().filter_map(Weak::upgrade).collect();
        if live.is_empty() {
            volumes.remove(&volume);
            return None;
        }
        devices.retain(|d| d.strong_count() > 0);
        Some(live)
    }

    /// A reset received here through `from` (which applied it already) reaches the
    /// node's other devices of `volume`.
    pub fn apply_here(&self, volume: VolumeId, kind: ResetKind, from: &Device) {
        for d in self.live(volume).unwrap_or_default() {
            if !std::ptr::eq(Arc::as_ptr(&d), from) {
                d.reset_by_peer(kind);
            }
        }
    }

    /// Makes the resets other nodes announce for `volume` from now on reach
    /// `device` (the export of `volume` on `node`), with the node's other devices
    /// of the volume: the first device of a volume starts the volume's follower,
    /// the others join it. Returns the follower when one was started.
    pub fn follow(
        self: &Arc<Self>,
        device: &Arc<Device>,
        coord: Arc<dyn Coordinator>,
        volume: VolumeId,
        node: NodeId,
    ) -> Option<tokio::task::JoinHandle<()>> {
        if !self.register(volume, device) {
            return None;
        }
        Some(tokio::spawn(follow_volume(
            self.clone(),
            coord,
            volume,
            node,
        )))
    }
}

/// Applies every reset another node announces for `volume` to the node's devices
/// of it ([`NodeResets::live`]): the reset's unit attentions, and for a cold reset
/// the end of their sessions; then acknowledges it. Ends when the volume has no
/// device on the node any more.
async fn follow_volume(
    resets: Arc<NodeResets>,
    coord: Arc<dyn Coordinator>,
    volume: VolumeId,
    node: NodeId,
) {
    let key = reset_key(volume);
    // Resets announced before the volume's first device existed are not its
    // business.
    let mut start = match coord.get(KeyRange::key(key.clone())).await {
        Ok(g) => g.revision + 1,
        Err(e) => {
            warn!(%volume, "reading the reset key: {e}");
            1
        }
    };
    loop {
        if resets.live(volume).is_none() {
            return;
        }
        let mut watch = match coord.watch(KeyRange::key(key.clone()), Some(start)).await {
            Ok(w) => w,
            Err(e) => {
                warn!(%volume, "watching resets: {e}");
                tokio::time::sleep(REWATCH_PAUSE).await;
                continue;
            }
        };
        loop {
            let resp = tokio::select! {
                r = watch.recv() => r,
                // Wake up now and then to notice that the devices are gone.
                _ = tokio::time::sleep(IDLE_CHECK) => {
                    if resets.live(volume).is_none() {
                        return;
                    }
                    continue;
                }
            };
            let resp = match resp {
                Ok(r) => r,
                Err(e) => {
                    debug!(%volume, "reset watch ended: {e}");
                    tokio::time::sleep(REWATCH_PAUSE).await;
                    break;
                }
            };
            let Some(devices) = resets.live(volume) else {
                return;
            };
            for ev in resp.events {
                if ev.kind != EventKind::Put {
                    continue;
                }
                let revision = ev.revision();
                start = revision + 1;
                let event: ResetEvent = match serde_json::from_slice(&ev.kv.value) {
                    Ok(e) => e,
                    Err(e) => {
                        warn!(%volume, "ignoring a reset event: {e}");
                        continue;
                    }
                };
                if event.node == node.0 {
                    // The receiving node applied it to all its devices itself.
                    continue;
                }
                debug!(%volume, %node, from = event.node, kind = ?event.kind, devices = devices.len(), "reset from a peer");
                apply(&devices, event.kind.into()).await;
                let ack = coord
                    .put(
                        Bytes::from(applied_key(volume, node)),
                        Bytes::from(revision.to_string()),
                        None,
                    )
                    .await;
                if let Err(e) = ack {
                    warn!(%volume, "acknowledging a reset: {e}");
                }
            }
            start = start.max(resp.revision + 1);
        }
    }
}

/// What a reset from another node does to this node's devices of the volume: the
/// reset's unit attentions on every one, and, for a TARGET COLD RESET, the end of
/// every session to them (RFC 7143 §11.5.1: a cold reset drops every connection
/// of the target), waited for, so that the acknowledgement follows it.
async fn apply(devices: &[Arc<Device>], kind: ResetKind) {
    for d in devices {
        d.reset_by_peer(kind);
    }
    if kind == ResetKind::TargetCold {
        for d in devices {
            d.stop_sessions().await;
        }
    }
}

/// Removes `volume`'s reset key and acknowledgements (the volume is deleted).
pub async fn forget(
    coord: &dyn Coordinator,
    volume: VolumeId,
) -> Result<(), mosaic_coord::CoordError> {
    coord.delete(KeyRange::key(reset_key(volume))).await?;
    coord
        .delete(KeyRange::prefix(applied_prefix(volume)))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Nexus;
    use crate::scsi::{LogicalUnit, LuConfig, ScsiRequest};
    use crate::store::BackingStore;
    use mosaic_coord::EmbeddedCoordinator;
    use mosaic_proto::scsi::sense::key;
    use mosaic_proto::scsi::status;
    use mosaic_routing::Node;

    const BS: u32 = 512;

    fn table(nodes: u32) -> RoutingTable {
        RoutingTable::new((1..=nodes).map(|i| Node::new(NodeId(i), 1 << 40))).unwrap()
    }

    fn device(node: u16) -> Arc<Device> {
        let cfg = LuConfig {
            name: "v".into(),
            block_size: BS,
            serial: "S1".into(),
            naa_id: LuConfig::naa_id_for("v"),
            vendor: "MOSAIC".into(),
            product: "Mosaic volume".into(),
            revision: "0001".into(),
            target_name: "iqn.t:v".into(),
            relative_port: node,
            tpg: node,
        };
        let lu = LogicalUnit::new(cfg, BackingStore::memory(1 << 20)).unwrap();
        Arc::new(Device::new(lu))
    }

    async fn tur(d: &Device, n: &Nexus) -> (u8, Option<(u8, u8, u8)>) {
        let r = d
            .execute(
                n,
                ScsiRequest {
                    cdb: Bytes::from_static(&[0; 6]),
                    lun: 0,
                    data_out: Bytes::new(),
                    expected_len: 0,
                },
            )
            .await;
        let sense = (r.status == status::CHECK_CONDITION && r.sense.len() >= 14)
            .then(|| (r.sense[2] & 0x0f, r.sense[12], r.sense[13]));
        (r.status, sense)
    }

    #[tokio::test]
    async fn a_reset_at_one_node_is_a_unit_attention_at_the_others_before_it_returns() {
        let coord: Arc<dyn Coordinator> = Arc::new(EmbeddedCoordinator::default());
        let t = table(3);
        let volume = VolumeId(7);
        let devices: Vec<Arc<Device>> = (1..=3).map(device).collect();
        let mut followers = Vec::new();
        // One initiator with a session at each node (each node its own port group).
        let nexus: Vec<Nexus> = (1..=3u16)
            .map(|n| Nexus::new("iqn.i", 1, "iqn.t:v", n, n))
            .collect();
        for (i, d) in devices.iter().enumerate() {
            // A first command makes the nexus known (its power-on attention is used up).
            let _ = tur(d, &nexus[i]).await;
            assert_eq!(tur(d, &nexus[i]).await.0, status::GOOD);
            let node = Arc::new(NodeResets::default());
            node.follow(d, coord.clone(), volume, NodeId(i as u32 + 1))
                .expect("the volume's first device starts its follower");
            followers.push(node);
        }
        // Let the followers start watching.
        tokio::time::sleep(Duration::from_millis(50)).await;
        devices[0].reset(ResetKind::LogicalUnit, &nexus[0]);
        announce(
            coord.as_ref(),
            &t,
            volume,
            NodeId(1),
            ResetKind::LogicalUnit,
        )
        .await
        .expect("every node applies it");
        for (d, n) in devices.iter().zip(&nexus) {
            // BUS DEVICE RESET FUNCTION OCCURRED (29h/03h) everywhere, no waiting.
            assert_eq!(
                tur(d, n).await,
                (
                    status::CHECK_CONDITION,
                    Some((key::UNIT_ATTENTION, 0x29, 0x03))
                )
            );
            assert_eq!(tur(d, n).await.0, status::GOOD);
        }
    }

    /// Right after a resize a node has an old and a new device of the volume: a
    /// reset from another node reaches both before the node acknowledges (one
    /// follower for the two), a reset received through one reaches the other at
    /// once, and the follower ends with the last device.
    #[tokio::test]
    async fn a_reset_reaches_every_device_of_the_volume_on_a_node_before_its_ack() {
        let coord: Arc<dyn Coordinator> = Arc::new(EmbeddedCoordinator::default());
        let t = table(2);
        let volume = VolumeId(9);
        let here = Arc::new(NodeResets::default());
        let (old, new) = (device(2), device(2));
        let (a, b) = (
            Nexus::new("iqn.a", 1, "iqn.t:v", 2, 2),
            Nexus::new("iqn.b", 2, "iqn.t:v", 2, 2),
        );
        for (d, n) in [(&old, &a), (&new, &b)] {
            let _ = tur(d, n).await;
            assert_eq!(tur(d, n).await.0, status::GOOD);
        }
        let follower = here
            .follow(&old, coord.clone(), volume, NodeId(2))
            .expect("the first device starts the follower");
        assert!(
            here.follow(&new, coord.clone(), volume, NodeId(2))
                .is_none(),
            "the second device joins it"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        announce(coord.as_ref(), &t, volume, NodeId(1), ResetKind::TargetWarm)
            .await
            .expect("node 2 acknowledges");
        for (d, n) in [(&old, &a), (&new, &b)] {
            assert_eq!(
                d.pending_unit_attentions(n),
                vec![crate::ua::asc::SCSI_BUS_RESET_OCCURRED],
                "{}",
                n.initiator_port
            );
            let _ = tur(d, n).await;
        }
        // A LOGICAL UNIT RESET received through the new device reaches the old one
        // too, and is not raised again on the new one (whose nexus already heard).
        new.reset(ResetKind::LogicalUnit, &b);
        assert_eq!(tur(&new, &b).await.0, status::CHECK_CONDITION);
        here.apply_here(volume, ResetKind::LogicalUnit, &new);
        assert_eq!(
            old.pending_unit_attentions(&a),
            vec![crate::ua::asc::BUS_DEVICE_RESET_FUNCTION_OCCURRED]
        );
        assert!(new.pending_unit_attentions(&b).is_empty());
        // Both devices gone: the follower ends at the next reset, acknowledging
        // nothing.
        drop((old, new));
        let late = announce_within(
            coord.as_ref(),
            &t,
            volume,
            NodeId(1),
            ResetKind::LogicalUnit,
            Duration::from_millis(200),
        )
        .await;
        assert!(
            matches!(late, Err(ResetError::Late(ref n)) if n == &[2]),
            "{late:?}"
        );
        tokio::time::timeout(Duration::from_secs(10), follower)
            .await
            .expect("the follower ends")
            .unwrap();
    }

    /// A TARGET COLD RESET from another node ends this node's sessions to the
    /// volume before the node acknowledges it; other resets leave them.
    #[tokio::test]
    async fn a_cold_reset_from_another_node_stops_the_sessions_before_the_ack() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let coord: Arc<dyn Coordinator> = Arc::new(EmbeddedCoordinator::default());
        let t = table(2);
        let volume = VolumeId(4);
        let here = Arc::new(NodeResets::default());
        let d = device(2);
        let stopped = Arc::new(AtomicUsize::new(0));
        let counter = stopped.clone();
        d.set_session_stopper(crate::device::SessionStopper(Arc::new(move || {
            let counter = counter.clone();
            Box::pin(async move {
                // Sessions take a moment to end: the acknowledgement waits.
                tokio::time::sleep(Duration::from_millis(20)).await;
                counter.fetch_add(1, Ordering::SeqCst);
            })
        })));
        here.follow(&d, coord.clone(), volume, NodeId(2));
        tokio::time::sleep(Duration::from_millis(50)).await;
        for kind in [ResetKind::LogicalUnit, ResetKind::TargetWarm] {
            announce(coord.as_ref(), &t, volume, NodeId(1), kind)
                .await
                .unwrap();
        }
        assert_eq!(
            stopped.load(Ordering::SeqCst),
            0,
            "warm resets keep sessions"
        );
        announce(coord.as_ref(), &t, volume, NodeId(1), ResetKind::TargetCold)
            .await
            .unwrap();
        assert_eq!(
            stopped.load(Ordering::SeqCst),
            1,
            "sessions ended before the acknowledgement"
        );
    }

    #[tokio::test]
    async fn a_node_that_does_not_follow_makes_the_announcement_late_not_stuck() {
        let coord: Arc<dyn Coordinator> = Arc::new(EmbeddedCoordinator::default());
        let err = announce_within(
            coord.as_ref(),
            &table(2),
            VolumeId(1),
            NodeId(1),
            ResetKind::TargetWarm,
            Duration::from_millis(100),
        )
        .await
        .unwrap_err();
        assert!(matches!(&err, ResetError::Late(n) if n == &[2]), "{err}");
        // Alone, there is nobody to wait for.
        announce(
            coord.as_ref(),
            &table(1),
            VolumeId(1),
            NodeId(1),
            ResetKind::TargetWarm,
        )
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn forgetting_a_volume_removes_its_reset_keys_only() {
        let coord: Arc<dyn Coordinator> = Arc::new(EmbeddedCoordinator::default());
        for v in [VolumeId(1), VolumeId(2)] {
            announce(
                coord.as_ref(),
                &table(1),
                v,
                NodeId(1),
                ResetKind::TargetWarm,
            )
            .await
            .unwrap();
            coord
                .put(
                    Bytes::from(applied_key(v, NodeId(2))),
                    Bytes::from("1"),
                    None,
                )
                .await
                .unwrap();
        }
        forget(coord.as_ref(), VolumeId(1)).await.unwrap();
        let count = |prefix: &str| {
            let coord = coord.clone();
            let prefix = prefix.to_string();
            async move { coord.get(KeyRange::prefix(prefix)).await.unwrap().kvs.len() }
        };
        assert_eq!(count(&reset_key(VolumeId(1))).await, 0);
        assert_eq!(count(&applied_prefix(VolumeId(1))).await, 0);
        assert_eq!(count(&reset_key(VolumeId(2))).await, 1);
        assert_eq!(count(&applied_prefix(VolumeId(2))).await, 1);
    }

    #[test]
    fn acknowledgements_name_their_node_and_revision() {
        let v = VolumeId(3);
        assert_eq!(
            parse_ack(v, applied_key(v, NodeId(2)).as_bytes(), b"41"),
            Some((2, 41))
        );
        assert_eq!(parse_ack(v, b"/mosaic/resets-applied/4/2", b"41"), None);
        assert_eq!(
            parse_ack(v, applied_key(v, NodeId(2)).as_bytes(), b"x"),
            None
        );
    }
}
