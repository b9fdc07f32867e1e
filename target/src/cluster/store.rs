//! The clustered I/O path: a volume as seen through one node.
//!
//! [`ClusterStore`] splits each byte range at page boundaries and sends every piece
//! to the node that holds it: reads to the page's primary, writes and deallocations
//! to the primary and every replica, in parallel. Pieces this node holds go to its
//! [`LocalVolume`] directly; the others go over the inter-node link with this
//! node's routing epoch, and a peer at another epoch refuses without serving: the
//! piece is routed again from a refreshed table (bounded attempts).
//!
//! [`NodeService`] is the other side: what this node serves to its peers, from the
//! same local volumes, after checking that it still holds the pages asked for.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::future::try_join_all;
use mosaic_routing::{NodeId, RoutingTable, VolumeId, VolumeMap};
use parking_lot::RwLock;
use thiserror::Error;

use super::link::{
    self, LinkError, LocalService, Peers, Request, Response, ServeFuture, WireError,
};
use super::state::ClusterState;
use crate::store::{BackingStore, StoreError};

/// Attempts at one piece when peers keep answering with another epoch: each retry
/// follows a refreshed table, so a few suffice unless the table is in flux.
const ROUTE_ATTEMPTS: u32 = 4;

/// Why a clustered I/O failed.
#[derive(Debug, Error)]
pub enum ClusterIoError {
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A peer could not be reached or failed the request.
    #[error("node {node}: {source}")]
    Link { node: u32, source: LinkError },
    /// The volume is not (or no longer) in the routing table.
    #[error("volume {0} is not in the routing table")]
    NoVolume(u64),
    /// A page has no live holder.
    #[error("page {0} has no holder")]
    NoHolder(u64),
}

/// This node's copy of one volume's pages: a store the size of the whole volume in
/// which only the pages this node holds are ever written (sparse).
#[derive(Debug)]
pub struct LocalVolume {
    pub id: VolumeId,
    pub store: BackingStore,
}

/// Counters of the clustered I/O path, for `mosaic status` and metrics.
#[derive(Debug, Default)]
pub struct IoStats {
    /// Pieces served from this node's own store.
    pub local: AtomicU64,
    /// Pieces sent to a peer.
    pub forwarded: AtomicU64,
    /// Pieces re-routed after a peer reported another epoch.
    pub rerouted: AtomicU64,
    /// Requests served for peers.
    pub served: AtomicU64,
    /// Reads of a volume through this node (one per read command of an initiator).
    pub reads: AtomicU64,
    /// Writes of a volume through this node (one per write command).
    pub writes: AtomicU64,
    /// Bytes read through this node.
    pub read_bytes: AtomicU64,
    /// Bytes written through this node.
    pub written_bytes: AtomicU64,
}

/// What this node serves to its peers: its local volumes.
#[derive(Debug)]
pub struct NodeService {
    node: NodeId,
    state: Arc<ClusterState>,
    volumes: RwLock<HashMap<u64, Arc<LocalVolume>>>,
    stats: Arc<IoStats>,
}

impl NodeService {
    pub fn new(node: NodeId, state: Arc<ClusterState>, stats: Arc<IoStats>) -> NodeService {
        NodeService {
            node,
            state,
            volumes: RwLock::new(HashMap::new()),
            stats,
        }
    }

    /// Makes a local volume available to peers.
    pub fn add_volume(&self, v: Arc<LocalVolume>) {
        self.volumes.write().insert(v.id.0, v);
    }

    /// Stops serving a volume (deleted).
    pub fn remove_volume(&self, id: VolumeId) {
        self.volumes.write().remove(&id.0);
    }

    fn volume(&self, id: u64) -> Option<Arc<LocalVolume>> {
        self.volumes.read().get(&id).cloned()
    }

    /// `true` when this node holds every page of `[offset, offset + len)` in the
    /// current table: a peer routed by an older table must not be served.
    fn holds(
        &self,
        table: &RoutingTable,
        volume: u64,
        offset: u64,
        len: u64,
        primary: bool,
    ) -> bool {
        let Some(map) = table.volume(VolumeId(volume)) else {
            return false;
        };
        pages(map, offset, len).all(|(page, _, _)| {
            if primary {
                map.primary(page) == Some(self.node)
            } else {
                map.holders(page).any(|n| n == self.node)
            }
        })
    }

    async fn serve_request(&self, req: Request) -> Response {
        self.stats.served.fetch_add(1, Ordering::Relaxed);
        let table = self.state.table();
        let io_err = |e: StoreError| Response::Error(WireError::Io(e.to_string()));
        match req {
            Request::Read {
                volume,
                offset,
                len,
            } => {
                let Some(v) = self.volume(volume) else {
                    return Response::Error(WireError::NotOwner);
                };
                if !self.holds(&table, volume, offset, len as u64, true) {
                    return Response::Error(WireError::NotOwner);
                }
                match v.store.read_at(offset, len as usize).await {
                    Ok(d) => Response::Data(d),
                    Err(e) => io_err(e),
                }
            }
            Request::Write {
                volume,
                offset,
                data,
                fua,
            } => {
                let Some(v) = self.volume(volume) else {
                    return Response::Error(WireError::NotOwner);
                };
                if !self.holds(&table, volume, offset, data.len() as u64, false) {
                    return Response::Error(WireError::NotOwner);
                }
                if let Err(e) = v.store.write_at(offset, data).await {
                    return io_err(e);
                }
                if fua {
                    if let Err(e) = v.store.flush().await {
                        return io_err(e);
                    }
                }
                Response::Done
            }
            Request::Flush { volume } => match self.volume(volume) {
                Some(v) => match v.store.flush().await {
                    Ok(()) => Response::Done,
                    Err(e) => io_err(e),
                },
                None => Response::Done,
            },
            Request::Unmap {
                volume,
                offset,
                len,
            } => {
                let Some(v) = self.volume(volume) else {
                    return Response::Error(WireError::NotOwner);
                };
                if !self.holds(&table, volume, offset, len, false) {
                    return Response::Error(WireError::NotOwner);
                }
                match v.store.deallocate(offset, len).await {
                    Ok(()) => Response::Done,
                    Err(e) => io_err(e),
                }
            }
            // Compare-and-write and short-cut responses are not served over the
            // link yet: the receiving node runs them (see docs/architecture.md).
            Request::CompareAndWrite { .. } | Request::ShortCut { .. } => {
                Response::Error(WireError::Unsupported)
            }
            Request::Ping => Response::Pong,
        }
    }
}

impl LocalService for NodeService {
    fn epoch(&self) -> u64 {
        self.state.table().epoch().0
    }

    fn serve(&self, req: Request) -> ServeFuture<'_> {
        Box::pin(self.serve_request(req))
    }
}

/// The pages of a byte range: (page, offset, length) of each piece.
fn pages(map: &VolumeMap, offset: u64, len: u64) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
    let page_size = map.volume().page_size;
    let end = offset.saturating_add(len);
    let mut at = offset;
    std::iter::from_fn(move || {
        if at >= end {
            return None;
        }
        let page = at / page_size;
        let piece_end = ((page + 1) * page_size).min(end);
        let piece = (page, at, piece_end - at);
        at = piece_end;
        Some(piece)
    })
}

/// One volume as seen through one node.
#[derive(Debug)]
pub struct ClusterStore {
    volume: VolumeId,
    size: u64,
    node: NodeId,
    local: Arc<LocalVolume>,
    state: Arc<ClusterState>,
    peers: Arc<Peers>,
    stats: Arc<IoStats>,
}

/// What to do with one piece.
#[derive(Clone)]
enum Op {
    Read,
    Write(Bytes, bool),
    Unmap,
}

impl ClusterStore {
    pub fn new(
        volume: VolumeId,
        size: u64,
        node: NodeId,
        local: Arc<LocalVolume>,
        state: Arc<ClusterState>,
        peers: Arc<Peers>,
        stats: Arc<IoStats>,
    ) -> ClusterStore {
        ClusterStore {
            volume,
            size,
            node,
            local,
            state,
            peers,
            stats,
        }
    }

    /// Size of the volume in bytes.
    pub fn len(&self) -> u64 {
        self.size
    }

    /// `true` for an empty volume (never: volumes have at least one block).
    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// Runs `op` on one piece at one node, re-routing when the epoch moved.
    async fn piece(
        &self,
        page: u64,
        offset: u64,
        len: u64,
        op: Op,
    ) -> Result<Option<Bytes>, ClusterIoError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let table = self.state.table();
            let epoch = table.epoch().0;
            let map = table
                .volume(self.volume)
                .ok_or(ClusterIoError::NoVolume(self.volume.0))?;
            let targets: Vec<NodeId> = match op {
                Op::Read => map.primary(page).into_iter().collect(),
                Op::Write(..) | Op::Unmap => map.holders(page).collect(),
            };
            if targets.is_empty() {
                return Err(ClusterIoError::NoHolder(page));
            }
            let calls = targets
                .iter()
                .map(|&n| self.at_node(n, epoch, offset, len, op.clone()));
            match try_join_all(calls).await {
                Ok(mut results) => return Ok(results.swap_remove(0)),
                Err(ClusterIoError::Link {
                    source: LinkError::StaleEpoch { .. } | LinkError::NotOwner,
                    ..
                }) if attempt < ROUTE_ATTEMPTS => {
                    self.stats.rerouted.fetch_add(1, Ordering::Relaxed);
                    // Our table or the peer's is behind: read the coordinator's
                    // and route again (a peer behind catches up by its watch).
                    let _ = self.state.refresh().await;
                    tokio::time::sleep(std::time::Duration::from_millis(10 * attempt as u64)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn at_node(
        &self,
        node: NodeId,
        epoch: u64,
        offset: u64,
        len: u64,
        op: Op,
    ) -> Result<Option<Bytes>, ClusterIoError> {
        if node == self.node {
            self.stats.local.fetch_add(1, Ordering::Relaxed);
            let s = &self.local.store;
            return match op {
                Op::Read => Ok(Some(s.read_at(offset, len as usize).await?)),
                Op::Write(data, fua) => {
                    s.write_at(offset, data).await?;
                    if fua {
                        s.flush().await?;
                    }
                    Ok(None)
                }
                Op::Unmap => {
                    s.deallocate(offset, len).await?;
                    Ok(None)
                }
            };
        }
        self.stats.forwarded.fetch_add(1, Ordering::Relaxed);
        let volume = self.volume.0;
        let req = match op {
            Op::Read => Request::Read {
                volume,
                offset,
                len: len as u32,
            },
            Op::Write(data, fua) => Request::Write {
                volume,
                offset,
                data,
                fua,
            },
            Op::Unmap => Request::Unmap {
                volume,
                offset,
                len,
            },
        };
        let link_err = |source| ClusterIoError::Link {
            node: node.0,
            source,
        };
        match self
            .peers
            .call(node.0, epoch, req)
            .await
            .map_err(link_err)?
        {
            Response::Data(d) => Ok(Some(d)),
            Response::Done => Ok(None),
            Response::Error(WireError::NotOwner) => Err(link_err(LinkError::NotOwner)),
            Response::Error(WireError::StaleEpoch { current }) => {
                Err(link_err(LinkError::StaleEpoch { current }))
            }
            other => Err(link_err(LinkError::Protocol(format!(
                "unexpected response {other:?}"
            )))),
        }
    }

    fn map_pieces(&self, offset: u64, len: u64) -> Result<Vec<(u64, u64, u64)>, ClusterIoError> {
        let table = self.state.table();
        let map = table
            .volume(self.volume)
            .ok_or(ClusterIoError::NoVolume(self.volume.0))?;
        Ok(pages(map, offset, len).collect())
    }

    /// Reads `len` bytes at `offset`, each page from its primary.
    pub async fn read_at(&self, offset: u64, len: usize) -> Result<Bytes, ClusterIoError> {
        self.stats.reads.fetch_add(1, Ordering::Relaxed);
        self.stats
            .read_bytes
            .fetch_add(len as u64, Ordering::Relaxed);
        let pieces = self.map_pieces(offset, len as u64)?;
        if pieces.len() == 1 {
            let (page, off, l) = pieces[0];
            return Ok(self
                .piece(page, off, l, Op::Read)
                .await?
                .unwrap_or_default());
        }
        let parts = try_join_all(
            pieces
                .iter()
                .map(|&(page, off, l)| self.piece(page, off, l, Op::Read)),
        )
        .await?;
        let mut out = BytesMut::with_capacity(len);
        for p in parts {
            out.extend_from_slice(&p.unwrap_or_default());
        }
        Ok(out.freeze())
    }

    /// Writes `data` at `offset` to every holder of each page.
    pub async fn write_at(
        &self,
        offset: u64,
        data: Bytes,
        fua: bool,
    ) -> Result<(), ClusterIoError> {
        self.stats.writes.fetch_add(1, Ordering::Relaxed);
        self.stats
            .written_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        let pieces = self.map_pieces(offset, data.len() as u64)?;
        try_join_all(pieces.iter().map(|&(page, off, l)| {
            let from = (off - offset) as usize;
            let part = data.slice(from..from + l as usize);
            self.piece(page, off, l, Op::Write(part, fua))
        }))
        .await?;
        Ok(())
    }

    /// Deallocates `[offset, offset + len)` on every holder.
    pub async fn deallocate(&self, offset: u64, len: u64) -> Result<(), ClusterIoError> {
        let pieces = self.map_pieces(offset, len)?;
        try_join_all(
            pieces
                .iter()
                .map(|&(page, off, l)| self.piece(page, off, l, Op::Unmap)),
        )
        .await?;
        Ok(())
    }

    /// Makes earlier writes durable on this node and on every peer.
    pub async fn flush(&self) -> Result<(), ClusterIoError> {
        self.local.store.flush().await?;
        let table = self.state.table();
        let epoch = table.epoch().0;
        let peers: Vec<u32> = table
            .active_nodes()
            .map(|n| n.id.0)
            .filter(|&n| n != self.node.0)
            .collect();
        try_join_all(peers.into_iter().map(|n| async move {
            match self
                .peers
                .call(
                    n,
                    epoch,
                    Request::Flush {
                        volume: self.volume.0,
                    },
                )
                .await
            {
                Ok(_) => Ok(()),
                // A peer at another epoch holds nothing we wrote under ours that it
                // has not flushed by its own SYNCHRONIZE path; retrying is not needed.
                Err(LinkError::StaleEpoch { .. }) => Ok(()),
                Err(source) => Err(ClusterIoError::Link { node: n, source }),
            }
        }))
        .await?;
        Ok(())
    }

    /// Whether `[offset, ..)` is mapped, from this node's store for pages it holds;
    /// pages held elsewhere are reported mapped (thin-provisioning status is not
    /// carried over the link yet).
    pub async fn allocation(&self, offset: u64, len: u64) -> Result<(bool, u64), ClusterIoError> {
        let table = self.state.table();
        let map = table
            .volume(self.volume)
            .ok_or(ClusterIoError::NoVolume(self.volume.0))?;
        let Some((page, off, l)) = pages(map, offset, len).next() else {
            return Ok((true, 0));
        };
        if map.holders(page).any(|n| n == self.node) {
            let (mapped, run) = self.local.store.allocation(off, l).await?;
            return Ok((mapped, run.min(l)));
        }
        Ok((true, l))
    }

    /// Statistics shared with the node.
    pub fn stats(&self) -> &Arc<IoStats> {
        &self.stats
    }

    /// The link used to reach peers (for tests).
    pub fn peers(&self) -> &Arc<Peers> {
        &self.peers
    }
}

/// `link` is re-exported for callers building a node.
pub use link::LinkServer;
