//! What a volume's device needs to know of the cluster: the current routing table,
//! which volume it is, and which node it runs on ([`ClusterView`]). The device uses
//! it for READ ROUTING TABLE (the vendor command that uploads the table to
//! initiators, docs/wire-formats.md) and for REPORT TARGET PORT GROUPS (one target
//! port group per node, the owner of most pages active/optimized).
//!
//! [`attach`] gives a device its view and is the other half: a task per device
//! follows the node's [`ClusterState`] and, when a new table changes what the
//! initiators of the volume see ([`affects`]), establishes ASYMMETRIC ACCESS STATE
//! CHANGED (2A/06) on every I_T nexus of the device, so each initiator learns of it
//! on its next command and fetches the table again.
//!
//! A stand-alone target has no cluster: [`SingleNodeView`] describes it as a
//! one-node cluster, so READ ROUTING TABLE works there too.

use std::fmt::Debug;
use std::sync::{Arc, Weak};

use futures::future::BoxFuture;
use mosaic_routing::{
    plan_create_volume, Node, NodeId, RoutingError, RoutingTable, Volume, VolumeId,
    DEFAULT_PAGE_SIZE,
};
use tracing::{debug, warn};

use super::state::ClusterState;
use crate::device::{Device, ResetKind};
use crate::scsi::LogicalUnit;
use crate::ua;

/// A volume's view of the cluster it belongs to.
pub trait ClusterView: Send + Sync + Debug {
    /// The current routing table (cheap: an `Arc` clone).
    fn table(&self) -> Arc<RoutingTable>;
    /// The volume this device exports.
    fn volume(&self) -> VolumeId;
    /// The node this device runs on.
    fn node(&self) -> NodeId;
    /// Takes a reset received by this node to the volume's devices on the other
    /// nodes, resolving once they have it ([`super::resets`]). Nothing to do
    /// by default (a one-node view).
    /// `from` is the device that received it (the node's other devices of the
    /// volume, if any, take it too).
    fn reset_peers(&self, _kind: ResetKind, _from: &Device) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}

/// One volume on one node of a cluster, over that node's [`ClusterState`].
#[derive(Debug)]
pub struct VolumeView {
    state: Arc<ClusterState>,
    volume: VolumeId,
    node: NodeId,
}

impl VolumeView {
    /// The view of `volume` as `node` sees it through `state`.
    pub fn new(state: Arc<ClusterState>, volume: VolumeId, node: NodeId) -> VolumeView {
        VolumeView {
            state,
            volume,
            node,
        }
    }
}

impl ClusterView for VolumeView {
    fn table(&self) -> Arc<RoutingTable> {
        self.state.table()
    }
    fn volume(&self) -> VolumeId {
        self.volume
    }
    fn node(&self) -> NodeId {
        self.node
    }
    fn reset_peers(&self, kind: ResetKind, from: &Device) -> BoxFuture<'static, ()> {
        // This node's other devices of the volume (an old one kept by sessions
        // after a resize) take it now, as the other nodes' devices will.
        self.state.resets().apply_here(self.volume, kind, from);
        let (state, volume, node) = (self.state.clone(), self.volume, self.node);
        Box::pin(async move {
            let table = state.table();
            if let Err(e) =
                super::resets::announce(state.coordinator().as_ref(), &table, volume, node, kind)
                    .await
            {
                warn!(%volume, %node, ?kind, "reset not taken to every node: {e}");
            }
        })
    }
}

/// Capacity the stand-alone node declares: placement only needs it to be at least
/// the volume's size, and it never goes on the wire.
const SINGLE_NODE_CAPACITY: u64 = 1 << 62;

/// A stand-alone target seen as a one-node cluster: node = the target port group
/// (1), volume id = the volume's NAA identifier (stable across restarts), every page
/// on that node, the default page size, and no NICs in the node list (the initiator
/// already knows the portal it is talking to). The epoch is fixed at 2 (a table of
/// nodes is epoch 1, creating the volume makes it 2) and never changes.
#[derive(Debug)]
pub struct SingleNodeView {
    table: Arc<RoutingTable>,
    volume: VolumeId,
    node: NodeId,
}

impl SingleNodeView {
    /// The one-node table of logical unit `lu`.
    pub fn for_unit(lu: &LogicalUnit) -> Result<SingleNodeView, RoutingError> {
        let cfg = lu.config();
        let node = NodeId(u32::from(cfg.tpg));
        let volume = VolumeId(cfg.naa_id);
        let block_size = lu.block_size();
        let nodes = RoutingTable::new([Node::new(node, SINGLE_NODE_CAPACITY)])?;
        let table = plan_create_volume(
            &nodes,
            Volume {
                id: volume,
                name: cfg.name.clone(),
                blocks: lu.num_blocks(),
                block_size,
                page_size: DEFAULT_PAGE_SIZE.max(u64::from(block_size)),
                replicas: 0,
            },
        )?;
        Ok(SingleNodeView {
            table: Arc::new(table),
            volume,
            node,
        })
    }
}

impl ClusterView for SingleNodeView {
    fn table(&self) -> Arc<RoutingTable> {
        self.table.clone()
    }
    fn volume(&self) -> VolumeId {
        self.volume
    }
    fn node(&self) -> NodeId {
        self.node
    }
}

/// Whether going from `old` to `new` changes anything the initiators of `volume`
/// are told: its geometry or page -> primary map (READ ROUTING TABLE), or any
/// node's id, state or NICs and portals (the node list of READ ROUTING TABLE and
/// the port groups and their states in REPORT TARGET PORT GROUPS). Replica
/// changes, capacities, names and other volumes do not count, so a change
/// elsewhere in the cluster does not make every initiator fetch again.
pub fn affects(old: &RoutingTable, new: &RoutingTable, volume: VolumeId) -> bool {
    let map = |t: &RoutingTable| {
        t.volume(volume)
            .map(|m| (m.volume().clone(), m.primaries().to_vec()))
    };
    let nodes = |t: &RoutingTable| -> Vec<_> {
        t.nodes()
            .values()
            .map(|n| (n.id, n.state, n.nics.clone()))
            .collect()
    };
    map(old) != map(new) || nodes(old) != nodes(new)
}

/// Makes `device` the export of `volume` on `node` of the cluster behind `state`
/// ([`Device::attach_cluster`]) and follows `state`'s routing table: on each new
/// table that [`affects`] the volume, ASYMMETRIC ACCESS STATE CHANGED is
/// established on every I_T nexus of the device. The task follows the device, not
/// the node's exports: sessions keep the device they logged in to even when the
/// export is replaced (a resize builds a new one), and they must hear of changes
/// too. It ends at the first change after the device is dropped, or with `state`.
/// Resets received by other nodes reach the device too
/// ([`super::resets::NodeResets::follow`]).
/// Outside a tokio runtime only the view is attached (`None`).
pub fn attach(
    device: &Arc<Device>,
    state: Arc<ClusterState>,
    volume: VolumeId,
    node: NodeId,
) -> Option<tokio::task::JoinHandle<()>> {
    let mut rx = state.subscribe();
    // Taken now, not when the task first runs: a change in between must count.
    let mut seen = rx.borrow_and_update().clone();
    let coord = state.coordinator().clone();
    let resets = state.resets().clone();
    device.attach_cluster(Arc::new(VolumeView::new(state, volume, node)));
    let runtime = tokio::runtime::Handle::try_current().ok()?;
    resets.follow(device, coord, volume, node);
    let device: Weak<Device> = Arc::downgrade(device);
    Some(runtime.spawn(async move {
        while rx.changed().await.is_ok() {
            let next = rx.borrow_and_update().clone();
            if next.epoch() == seen.epoch() {
                continue;
            }
            let Some(device) = device.upgrade() else {
                return;
            };
            if affects(&seen, &next, volume) {
                debug!(
                    %volume,
                    %node,
                    from = %seen.epoch(),
                    to = %next.epoch(),
                    "routing change: ASYMMETRIC ACCESS STATE CHANGED for every nexus"
                );
                device.raise_all(ua::asc::ASYMMETRIC_ACCESS_STATE_CHANGED);
            }
            seen = next;
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Nexus;
    use crate::scsi::{LuConfig, ScsiRequest};
    use crate::store::BackingStore;
    use bytes::Bytes;
    use mosaic_coord::{Coordinator, EmbeddedCoordinator};
    use mosaic_proto::scsi::sense::key;
    use mosaic_proto::scsi::status;
    use mosaic_routing::{plan_hot_pages, plan_resize_volume, PageLoad, PageRef};
    use std::time::Duration;

    const BS: u32 = 512;
    /// 64 pages of 64 KiB.
    const PAGE: u64 = 64 << 10;

    fn nodes() -> RoutingTable {
        RoutingTable::new((1..=3).map(|i| {
            Node::new(NodeId(i), 1 << 40)
                .with_nic(10_000, vec![([127, 0, i as u8, 1], 3260).into()])
        }))
        .unwrap()
    }

    fn volume(id: u64, name: &str) -> Volume {
        Volume {
            id: VolumeId(id),
            name: name.into(),
            blocks: 64 * PAGE / u64::from(BS),
            block_size: BS,
            page_size: PAGE,
            replicas: 1,
        }
    }

    fn device(name: &str, node: u16) -> Arc<Device> {
        let cfg = LuConfig {
            name: name.into(),
            block_size: BS,
            serial: "S1".into(),
            naa_id: LuConfig::naa_id_for(name),
            vendor: "MOSAIC".into(),
            product: "Mosaic volume".into(),
            revision: "0001".into(),
            target_name: format!("iqn.t:{name}"),
            relative_port: node,
            tpg: node,
        };
        let lu = LogicalUnit::new(cfg, BackingStore::memory(64 * PAGE)).unwrap();
        Arc::new(Device::new(lu))
    }

    async fn tur(d: &Device, n: &Nexus) -> (u8, Option<(u8, u8, u8)>) {
        let r = d
            .execute(
                n,
                ScsiRequest {
                    cdb: Bytes::from_static(&[0; 16]),
                    lun: 0,
                    data_out: Bytes::new(),
                    expected_len: 0,
                },
            )
            .await;
        let s = r.sense_data().map(|s| (s.key, s.asc.asc, s.asc.ascq));
        (r.status, s)
    }

    #[test]
    fn only_changes_an_initiator_sees_affect_a_volume() {
        let t1 = plan_create_volume(&nodes(), volume(1, "a")).unwrap();
        // Another volume: a new epoch, but nothing about volume 1 changed.
        let t2 = plan_create_volume(&t1, volume(2, "b")).unwrap();
        assert!(!affects(&t1, &t2, VolumeId(1)));
        assert!(affects(&t1, &t2, VolumeId(2)), "a volume that appears");
        // Replicas marked in sync: not the initiators' business.
        assert!(!affects(&t2, &t2.mark_all_in_sync(), VolumeId(1)));
        // A node drained: its state is in the node list and in RTPG.
        let drained = mosaic_routing::plan_node_drain(&t2, NodeId(3))
            .unwrap()
            .next;
        assert!(affects(&t2, &drained, VolumeId(1)));
        assert!(affects(&t2, &drained, VolumeId(2)));
        // A volume that goes away.
        assert!(affects(
            &t2,
            &t2.delete_volume(VolumeId(1)).unwrap(),
            VolumeId(1)
        ));
    }

    #[test]
    fn single_node_view_puts_every_page_on_the_target_port_group() {
        let d = device("solo", 1);
        let v = SingleNodeView::for_unit(d.lu()).unwrap();
        let t = v.table();
        let m = t.volume(v.volume()).unwrap();
        assert_eq!(m.volume().blocks, d.lu().num_blocks());
        assert!(m.primaries().iter().all(|n| *n == NodeId(1)));
        assert_eq!(v.node(), NodeId(1));
        assert_eq!(t.epoch().0, 2);
    }

    #[tokio::test]
    async fn an_epoch_change_raises_the_unit_attention_once_per_nexus_of_affected_volumes() {
        let coord: Arc<dyn Coordinator> = Arc::new(EmbeddedCoordinator::default());
        let t = plan_create_volume(&nodes(), volume(1, "a")).unwrap();
        let t = plan_create_volume(&t, volume(2, "b")).unwrap();
        let state = ClusterState::open(coord, t).await.unwrap();
        let state_table_before = state.table();
        let (a, b) = (device("a", 1), device("b", 1));
        let task_a = attach(&a, state.clone(), VolumeId(1), NodeId(1)).unwrap();
        let task_b = attach(&b, state.clone(), VolumeId(2), NodeId(1)).unwrap();
        let nexuses: Vec<Nexus> = (1..=3)
            .map(|i| Nexus::new("iqn.i", i, "iqn.t:a", 1, 1))
            .collect();
        for n in &nexuses {
            a.nexus_added(n);
            b.nexus_added(n);
        }
        // Node 1's pages of volume 1 are hot: the hot-page plan moves some away.
        let next = state
            .update(|t| {
                let vm = t.volume(VolumeId(1)).unwrap();
                let hot: Vec<PageLoad> = (0..vm.page_count())
                    .filter(|&p| vm.primary(p) == Some(NodeId(1)))
                    .map(|page| PageLoad {
                        page: PageRef {
                            volume: VolumeId(1),
                            page,
                        },
                        load: 10.0,
                    })
                    .collect();
                Ok(plan_hot_pages(t, &hot, 100).next)
            })
            .await
            .unwrap();
        let before = state_table_before.volume(VolumeId(1)).unwrap().primaries();
        assert_ne!(
            next.volume(VolumeId(1)).unwrap().primaries(),
            before,
            "pages moved"
        );
        // The watcher runs on its own: wait until it has raised the condition.
        tokio::time::timeout(Duration::from_secs(5), async {
            while a.pending_unit_attentions(&nexuses[0]).is_empty() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the unit attention is raised");
        for n in &nexuses {
            assert_eq!(
                tur(&a, n).await,
                (
                    status::CHECK_CONDITION,
                    Some((key::UNIT_ATTENTION, 0x2a, 0x06))
                ),
                "{n:?}"
            );
            assert_eq!(tur(&a, n).await, (status::GOOD, None), "reported once");
            // Volume 2 did not change: nothing for its nexuses.
            assert_eq!(tur(&b, n).await, (status::GOOD, None));
        }
        // A dropped device ends its task at the next change.
        drop(a);
        let t = state.table();
        state
            .update(|_| {
                Ok(plan_resize_volume(
                    &t,
                    VolumeId(2),
                    t.volume(VolumeId(2)).unwrap().volume().blocks * 2,
                )?)
            })
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), task_a)
            .await
            .expect("the task of a dropped device ends")
            .unwrap();
        assert_eq!(
            tur(&b, &nexuses[0]).await.1,
            Some((key::UNIT_ATTENTION, 0x2a, 0x06)),
            "volume 2 resized"
        );
        task_b.abort();
    }
}
