//! The cluster's shared state in the coordinator, and each node's cached view of it.
//!
//! One key, [`ROUTING_KEY`], holds the whole routing table (nodes, volumes, page
//! maps, epoch) as JSON. Every change reads it, applies a routing plan (epoch + 1)
//! and writes it back in a transaction that compares the key's `mod_revision`:
//! two concurrent changes cannot both win, the loser re-reads and tries again.
//! Every node watches the key and swaps its cached `Arc<RoutingTable>`; readers
//! never block. A single key keeps updates atomic; its size bounds the table
//! (the coordinator accepts requests up to 1.5 MiB, thousands of pages of JSON).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mosaic_coord::{Compare, CompareOp, CoordError, Coordinator, KeyRange, Txn, TxnOp};
use mosaic_routing::{RoutingError, RoutingTable};
use thiserror::Error;
use tokio::sync::watch;
use tracing::{debug, warn};

/// The coordinator key of the routing table.
pub const ROUTING_KEY: &str = "/mosaic/routing";
/// Attempts of a compare-and-set update before giving up: each failed attempt means
/// another change won, so a few suffice unless something loops.
const UPDATE_ATTEMPTS: usize = 16;
/// Pause before re-watching after the watch broke (coordinator restart, lag).
const REWATCH_PAUSE: Duration = Duration::from_millis(100);

/// Why a cluster-state operation failed.
#[derive(Debug, Error)]
pub enum StateError {
    /// The coordinator refused or failed.
    #[error("coordinator: {0}")]
    Coord(#[from] CoordError),
    /// The plan for the change was refused by the routing rules.
    #[error("routing: {0}")]
    Routing(#[from] RoutingError),
    /// The stored table is not valid JSON or not a valid table.
    #[error("stored routing table is corrupt: {0}")]
    Corrupt(String),
    /// Other changes kept winning.
    #[error("gave up after {0} conflicting updates")]
    Contended(usize),
    /// The change itself is not possible (the message says why).
    #[error("{0}")]
    Refused(String),
}

/// A node's view of the cluster state.
#[derive(Debug)]
pub struct ClusterState {
    coord: Arc<dyn Coordinator>,
    table: watch::Sender<Arc<RoutingTable>>,
    /// The node's devices of each volume, which resets reach together
    /// ([`super::resets::NodeResets`]).
    resets: Arc<super::resets::NodeResets>,
}

fn decode(value: &[u8]) -> Result<RoutingTable, StateError> {
    let t: RoutingTable =
        serde_json::from_slice(value).map_err(|e| StateError::Corrupt(e.to_string()))?;
    t.validate()
        .map_err(|e| StateError::Corrupt(e.to_string()))?;
    Ok(t)
}

fn encode(table: &RoutingTable) -> Bytes {
    Bytes::from(serde_json::to_vec(table).expect("a routing table always serialises"))
}

impl ClusterState {
    /// Reads the table (writing `initial` when there is none yet) and starts
    /// following changes.
    pub async fn open(
        coord: Arc<dyn Coordinator>,
        initial: RoutingTable,
    ) -> Result<Arc<ClusterState>, StateError> {
        // Create the key only if absent: the first node to open the cluster wins.
        let txn = Txn::new()
            .when([Compare::absent(ROUTING_KEY)])
            .and_then([TxnOp::put(ROUTING_KEY, encode(&initial), None)]);
        coord.txn(txn).await?;
        let got = coord.get(KeyRange::key(ROUTING_KEY)).await?;
        let kv = got
            .kvs
            .first()
            .ok_or_else(|| StateError::Corrupt("routing key vanished".into()))?;
        let table = Arc::new(decode(&kv.value)?);
        let (tx, _) = watch::channel(table);
        let state = Arc::new(ClusterState {
            coord,
            table: tx,
            resets: Arc::default(),
        });
        let follower = Arc::downgrade(&state);
        let start = got.revision + 1;
        tokio::spawn(async move { follow(follower, start).await });
        Ok(state)
    }

    /// The coordinator the state lives in.
    pub fn coordinator(&self) -> &Arc<dyn Coordinator> {
        &self.coord
    }

    /// The node's devices of each volume as resets see them.
    pub fn resets(&self) -> &Arc<super::resets::NodeResets> {
        &self.resets
    }

    /// The current table (cheap: an `Arc` clone).
    pub fn table(&self) -> Arc<RoutingTable> {
        self.table.borrow().clone()
    }

    /// Changes of the table, as they are seen.
    pub fn subscribe(&self) -> watch::Receiver<Arc<RoutingTable>> {
        self.table.subscribe()
    }

    /// Re-reads the table from the coordinator (after a peer said our epoch is stale).
    pub async fn refresh(&self) -> Result<Arc<RoutingTable>, StateError> {
        let got = self.coord.get(KeyRange::key(ROUTING_KEY)).await?;
        let kv = got
            .kvs
            .first()
            .ok_or_else(|| StateError::Corrupt("routing key missing".into()))?;
        let t = decode(&kv.value)?;
        Ok(self.install(t))
    }

    /// Installs a table if it is newer than the cached one; returns the current one.
    fn install(&self, t: RoutingTable) -> Arc<RoutingTable> {
        self.table.send_if_modified(|cur| {
            if t.epoch() > cur.epoch() {
                *cur = Arc::new(t);
                true
            } else {
                false
            }
        });
        self.table()
    }

    /// Applies `change` to the latest table with compare-and-set, retrying when
    /// another change won. `change` must return the next table (epoch + 1).
    pub async fn update<F>(&self, change: F) -> Result<Arc<RoutingTable>, StateError>
    where
        F: Fn(&RoutingTable) -> Result<RoutingTable, StateError>,
    {
        for _ in 0..UPDATE_ATTEMPTS {
            let got = self.coord.get(KeyRange::key(ROUTING_KEY)).await?;
            let kv = got
                .kvs
                .first()
                .ok_or_else(|| StateError::Corrupt("routing key missing".into()))?;
            let cur = decode(&kv.value)?;
            let next = change(&cur)?;
            if next.epoch() <= cur.epoch() {
                return Err(StateError::Refused(
                    "a change must produce a newer epoch".into(),
                ));
            }
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    ROUTING_KEY,
                    CompareOp::Equal,
                    kv.mod_revision,
                )])
                .and_then([TxnOp::put(ROUTING_KEY, encode(&next), None)]);
            if self.coord.txn(txn).await?.succeeded {
                debug!(epoch = next.epoch().0, "routing table updated");
                return Ok(self.install(next));
            }
        }
        Err(StateError::Contended(UPDATE_ATTEMPTS))
    }
}

/// Follows the routing key from `start` and installs each new table.
async fn follow(state: std::sync::Weak<ClusterState>, mut start: i64) {
    loop {
        let Some(s) = state.upgrade() else { return };
        let watch = s.coord.watch(KeyRange::key(ROUTING_KEY), Some(start)).await;
        drop(s);
        let mut watch = match watch {
            Ok(w) => w,
            Err(e) => {
                warn!("watching the routing table: {e}");
                tokio::time::sleep(REWATCH_PAUSE).await;
                if let Some(s) = state.upgrade() {
                    if let Ok(t) = s.refresh().await {
                        let _ = t;
                    }
                    if let Ok(g) = s.coord.get(KeyRange::key(ROUTING_KEY)).await {
                        start = g.revision + 1;
                    }
                }
                continue;
            }
        };
        loop {
            match watch.recv().await {
                Ok(resp) => {
                    let Some(s) = state.upgrade() else { return };
                    for ev in resp.events {
                        if ev.kind == mosaic_coord::EventKind::Put {
                            match decode(&ev.kv.value) {
                                Ok(t) => {
                                    s.install(t);
                                }
                                Err(e) => warn!("ignoring a routing table update: {e}"),
                            }
                        }
                    }
                    start = resp.revision + 1;
                }
                Err(CoordError::WatchClosed) => return,
                Err(e) => {
                    warn!("routing table watch ended: {e}");
                    break;
                }
            }
        }
        tokio::time::sleep(REWATCH_PAUSE).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mosaic_coord::EmbeddedCoordinator;
    use mosaic_routing::{plan_create_volume, Node, NodeId, Volume, VolumeId};

    fn nodes() -> RoutingTable {
        RoutingTable::new((1..=3).map(|i| Node::new(NodeId(i), 1 << 40))).unwrap()
    }

    fn create(
        name: &str,
        id: u64,
    ) -> impl Fn(&RoutingTable) -> Result<RoutingTable, StateError> + '_ {
        move |t| {
            Ok(plan_create_volume(
                t,
                Volume::new(VolumeId(id), name, 64 << 20),
            )?)
        }
    }

    #[tokio::test]
    async fn second_open_reads_the_first_table() {
        let coord: Arc<dyn Coordinator> = Arc::new(EmbeddedCoordinator::default());
        let a = ClusterState::open(coord.clone(), nodes()).await.unwrap();
        a.update(create("v", 1)).await.unwrap();
        let b = ClusterState::open(coord, RoutingTable::new([]).unwrap())
            .await
            .unwrap();
        assert_eq!(b.table().nodes().len(), 3);
        assert!(b.table().volume_by_name("v").is_some());
    }

    #[tokio::test]
    async fn updates_reach_every_view() {
        let coord: Arc<dyn Coordinator> = Arc::new(EmbeddedCoordinator::default());
        let a = ClusterState::open(coord.clone(), nodes()).await.unwrap();
        let b = ClusterState::open(coord, nodes()).await.unwrap();
        let mut rx = b.subscribe();
        let t = a.update(create("v", 1)).await.unwrap();
        tokio::time::timeout(
            Duration::from_secs(5),
            rx.wait_for(|x| x.epoch() == t.epoch()),
        )
        .await
        .expect("b sees the update in time")
        .unwrap();
    }

    #[tokio::test]
    async fn concurrent_updates_both_land() {
        let coord: Arc<dyn Coordinator> = Arc::new(EmbeddedCoordinator::default());
        let a = ClusterState::open(coord.clone(), nodes()).await.unwrap();
        let b = ClusterState::open(coord, nodes()).await.unwrap();
        let (x, y) = tokio::join!(a.update(create("x", 1)), b.update(create("y", 2)));
        x.unwrap();
        y.unwrap();
        let t = a.refresh().await.unwrap();
        assert!(t.volume_by_name("x").is_some() && t.volume_by_name("y").is_some());
        assert_eq!(t.epoch().0, 3);
    }

    #[tokio::test]
    async fn refused_change_leaves_the_table() {
        let coord: Arc<dyn Coordinator> = Arc::new(EmbeddedCoordinator::default());
        let a = ClusterState::open(coord, nodes()).await.unwrap();
        a.update(create("v", 1)).await.unwrap();
        assert!(
            a.update(create("v", 2)).await.is_err(),
            "duplicate name refused"
        );
        assert_eq!(a.refresh().await.unwrap().epoch().0, 2);
    }
}
