//! The clustered I/O path: a volume as seen through one node.
//!
//! [`ClusterStore`] splits each byte range at page boundaries and sends every piece
//! to the page's primary: reads, writes, deallocations and COMPARE AND WRITE alike.
//! Pieces whose primary is this node are served here directly; the others go over
//! the inter-node link with this node's routing epoch, and a peer at another epoch
//! refuses without serving: the piece is routed again from a refreshed table
//! (bounded attempts).
//!
//! [`NodeService`] is the primary's side, for its own receiving node and for its
//! peers alike. Every modification of a range takes the range exclusively in the
//! volume's [`RangeLock`] (reads share it), checks under the lock that this node is
//! still the primary, applies the change locally and copies it to every replica
//! before it answers and lets go. So writes to one page are ordered once, at its
//! primary, and reach every replica in that order; COMPARE AND WRITE is atomic
//! against every write from any node; and a page move holds the page while it
//! copies it (see [`NodeService::move_page`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::future::try_join_all;
use mosaic_routing::{NodeId, RoutingTable, VolumeId, VolumeMap};
use parking_lot::RwLock;
use thiserror::Error;

use super::link::{
    self, ConnState, LinkError, LocalService, Peers, Request, Response, ServeFuture, WireError,
    MAX_DATA_LEN,
};
use super::state::{ClusterState, StateError};
use crate::scsi::lock::RangeLock;
use crate::store::{BackingStore, StoreError};

/// Attempts at one piece when peers keep answering with another epoch: each retry
/// follows a refreshed table, so a few suffice unless the table is in flux.
const ROUTE_ATTEMPTS: u32 = 4;

/// Bytes of a page sent in one request while the page is moved.
const PAGE_COPY_CHUNK: u64 = 1 << 20;

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
    /// This node is not (or no longer) the primary of the range asked for.
    #[error("not the primary of the range")]
    NotPrimary,
    /// The routing table could not be changed (a page move).
    #[error(transparent)]
    State(#[from] super::state::StateError),
}

impl ClusterIoError {
    /// The answer to a peer whose request failed with this error.
    fn to_wire(&self) -> WireError {
        match self {
            ClusterIoError::NotPrimary | ClusterIoError::NoVolume(_) => WireError::NotOwner,
            ClusterIoError::Link {
                source: LinkError::StaleEpoch { current },
                ..
            } => WireError::StaleEpoch { current: *current },
            ClusterIoError::Link {
                source: LinkError::NotOwner,
                ..
            } => WireError::NotOwner,
            other => WireError::Io(other.to_string()),
        }
    }
}

/// This node's copy of one volume's pages: a store the size of the whole volume in
/// which only the pages this node holds are ever written (sparse).
#[derive(Debug)]
pub struct LocalVolume {
    pub id: VolumeId,
    pub store: BackingStore,
    /// Byte ranges being modified (exclusive) or read (shared) at this node as the
    /// primary: the one place where writes to a page are ordered.
    locks: RangeLock,
}

impl LocalVolume {
    pub fn new(id: VolumeId, store: BackingStore) -> LocalVolume {
        LocalVolume {
            id,
            store,
            locks: RangeLock::default(),
        }
    }
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
    /// Reads handed to their page's owner, which built the final PDUs (short-cut).
    pub shortcut: AtomicU64,
    /// Short-cut reads this node built for a peer's connection.
    pub shortcut_served: AtomicU64,
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
    /// To copy modifications to the replicas.
    peers: Arc<Peers>,
    /// The cluster's I/O mode: `true` for short-cut (see [`IoMode`]).
    shortcut: std::sync::atomic::AtomicBool,
}

/// How a node answers a read of a page another node owns (per cluster, switchable
/// at run time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IoMode {
    /// The receiving node gathers the data from the owner and builds the PDUs.
    Forward,
    /// The owner is given the connection's state and builds the final Data-In and
    /// SCSI Response PDUs; the receiving node writes them out unchanged.
    ShortCut,
}

impl std::str::FromStr for IoMode {
    type Err = String;
    fn from_str(s: &str) -> Result<IoMode, String> {
        match s {
            "forward" => Ok(IoMode::Forward),
            "short-cut" | "shortcut" => Ok(IoMode::ShortCut),
            other => Err(format!("{other:?}: expected forward or short-cut")),
        }
    }
}

impl std::fmt::Display for IoMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IoMode::Forward => "forward",
            IoMode::ShortCut => "short-cut",
        })
    }
}

impl NodeService {
    pub fn new(
        node: NodeId,
        state: Arc<ClusterState>,
        stats: Arc<IoStats>,
        peers: Arc<Peers>,
    ) -> NodeService {
        NodeService {
            node,
            state,
            volumes: RwLock::new(HashMap::new()),
            stats,
            peers,
            shortcut: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The node's I/O mode.
    pub fn io_mode(&self) -> IoMode {
        if self.shortcut.load(Ordering::Relaxed) {
            IoMode::ShortCut
        } else {
            IoMode::Forward
        }
    }

    /// Switches the node's I/O mode (takes effect for the next command).
    pub fn set_io_mode(&self, mode: IoMode) {
        self.shortcut
            .store(mode == IoMode::ShortCut, Ordering::Relaxed);
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

    fn local(&self, volume: u64) -> Result<Arc<LocalVolume>, ClusterIoError> {
        self.volume(volume).ok_or(ClusterIoError::NotPrimary)
    }

    /// The replicas of the pages of `[offset, offset + len)`, checked under the
    /// range lock: this node must be the primary of every page.
    fn replicas_as_primary(
        &self,
        volume: u64,
        offset: u64,
        len: u64,
    ) -> Result<(u64, Vec<NodeId>), ClusterIoError> {
        let table = self.state.table();
        if !self.holds(&table, volume, offset, len, true) {
            return Err(ClusterIoError::NotPrimary);
        }
        let map = table
            .volume(VolumeId(volume))
            .ok_or(ClusterIoError::NoVolume(volume))?;
        let mut replicas: Vec<NodeId> = Vec::new();
        for (page, _, _) in pages(map, offset, len) {
            for n in map.holders(page).filter(|&n| n != self.node) {
                if !replicas.contains(&n) {
                    replicas.push(n);
                }
            }
        }
        Ok((table.epoch().0, replicas))
    }

    /// Sends `req` (a replica copy) to each of `replicas` at `epoch`.
    async fn to_replicas(
        &self,
        epoch: u64,
        replicas: &[NodeId],
        req: Request,
    ) -> Result<(), ClusterIoError> {
        try_join_all(replicas.iter().map(|&n| {
            let req = req.clone();
            async move {
                let link_err = |source| ClusterIoError::Link { node: n.0, source };
                match self.peers.call(n.0, epoch, req).await.map_err(link_err)? {
                    Response::Done => Ok(()),
                    Response::Error(e) => Err(link_err(e.into())),
                    other => Err(link_err(LinkError::Protocol(format!(
                        "unexpected response {other:?}"
                    )))),
                }
            }
        }))
        .await?;
        Ok(())
    }

    /// Copies a modification of `[offset, offset + len)` to the range's replicas,
    /// with the range held: when a replica answers that the epoch moved, the table
    /// is read again and, if this node is still the primary, the copy goes to the
    /// replicas the new table names (a replica behind catches up by its watch).
    async fn replicate(
        &self,
        volume: u64,
        offset: u64,
        len: u64,
        (mut epoch, mut replicas): (u64, Vec<NodeId>),
        req: Request,
    ) -> Result<(), ClusterIoError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.to_replicas(epoch, &replicas, req.clone()).await {
                Err(ClusterIoError::Link {
                    source: LinkError::StaleEpoch { .. },
                    ..
                }) if attempt < ROUTE_ATTEMPTS => {
                    tokio::time::sleep(std::time::Duration::from_millis(5 * attempt as u64)).await;
                    let _ = self.state.refresh().await;
                    (epoch, replicas) = self.replicas_as_primary(volume, offset, len)?;
                }
                other => return other,
            }
        }
    }

    /// Reads `[offset, offset + len)` as the primary, sharing the range with other
    /// readers and waiting for writes in progress.
    pub async fn read_as_primary(
        &self,
        volume: u64,
        offset: u64,
        len: u64,
    ) -> Result<Bytes, ClusterIoError> {
        let v = self.local(volume)?;
        let _range = v.locks.lock(offset, len, false).await;
        let table = self.state.table();
        if !self.holds(&table, volume, offset, len, true) {
            return Err(ClusterIoError::NotPrimary);
        }
        Ok(v.store.read_at(offset, len as usize).await?)
    }

    /// Writes `data` at `offset` as the primary: ordered against every other
    /// modification of the range, copied to every replica before it returns.
    pub async fn write_as_primary(
        &self,
        volume: u64,
        offset: u64,
        data: Bytes,
        fua: bool,
    ) -> Result<(), ClusterIoError> {
        let v = self.local(volume)?;
        let len = data.len() as u64;
        let _range = v.locks.lock(offset, len, true).await;
        let route = self.replicas_as_primary(volume, offset, len)?;
        let copy = Request::Write {
            volume,
            offset,
            data: data.clone(),
            fua,
            replica: true,
        };
        let here = async {
            v.store.write_at(offset, data).await?;
            if fua {
                v.store.flush().await?;
            }
            Ok::<(), ClusterIoError>(())
        };
        tokio::try_join!(here, self.replicate(volume, offset, len, route, copy))?;
        Ok(())
    }

    /// Deallocates `[offset, offset + len)` as the primary, like a write.
    pub async fn unmap_as_primary(
        &self,
        volume: u64,
        offset: u64,
        len: u64,
    ) -> Result<(), ClusterIoError> {
        let v = self.local(volume)?;
        let _range = v.locks.lock(offset, len, true).await;
        let route = self.replicas_as_primary(volume, offset, len)?;
        let copy = Request::Unmap {
            volume,
            offset,
            len,
            replica: true,
        };
        let here = async {
            v.store.deallocate(offset, len).await?;
            Ok::<(), ClusterIoError>(())
        };
        tokio::try_join!(here, self.replicate(volume, offset, len, route, copy))?;
        Ok(())
    }

    /// COMPARE AND WRITE as the primary (SBC-4 §5.3): under the exclusive range
    /// lock, compares the medium with `compare`; on a difference returns the offset
    /// of its first byte and writes nothing, else writes `write` here and on every
    /// replica.
    pub async fn compare_and_write_as_primary(
        &self,
        volume: u64,
        offset: u64,
        compare: Bytes,
        write: Bytes,
    ) -> Result<Option<u32>, ClusterIoError> {
        let v = self.local(volume)?;
        let len = compare.len() as u64;
        if write.len() != compare.len() {
            return Err(ClusterIoError::Store(StoreError::Cluster(
                "COMPARE AND WRITE with unequal compare and write lengths".into(),
            )));
        }
        let _range = v.locks.lock(offset, len, true).await;
        let route = self.replicas_as_primary(volume, offset, len)?;
        let medium = v.store.read_at(offset, compare.len()).await?;
        if let Some(at) = medium.iter().zip(compare.iter()).position(|(a, b)| a != b) {
            return Ok(Some(at as u32));
        }
        let copy = Request::Write {
            volume,
            offset,
            data: write.clone(),
            fua: false,
            replica: true,
        };
        let here = async {
            v.store.write_at(offset, write).await?;
            Ok::<(), ClusterIoError>(())
        };
        tokio::try_join!(here, self.replicate(volume, offset, len, route, copy))?;
        Ok(None)
    }

    /// Moves the primary of `page` of `volume` to node `to` (an operator's page
    /// move): this node must be the page's primary. Holding the page exclusively
    /// (writes and reads through any node wait at this lock), it copies the page to
    /// `to` when `to` holds no copy yet, then switches the table (epoch + 1) and
    /// lets go; the requests that waited find this node no longer the primary and
    /// are routed again, to `to`. Returns the new table.
    pub async fn move_page(
        &self,
        volume: u64,
        page: u64,
        to: NodeId,
    ) -> Result<Arc<mosaic_routing::RoutingTable>, ClusterIoError> {
        let v = self.local(volume)?;
        let (offset, len) = {
            let table = self.state.table();
            let map = table
                .volume(VolumeId(volume))
                .ok_or(ClusterIoError::NoVolume(volume))?;
            if page >= map.page_count() {
                return Err(ClusterIoError::NoHolder(page));
            }
            (page * map.volume().page_size, map.page_bytes(page))
        };
        let _page = v.locks.lock(offset, len, true).await;
        let table = self.state.table();
        if !self.holds(&table, volume, offset, len, true) {
            return Err(ClusterIoError::NotPrimary);
        }
        if table.page_move_copies(VolumeId(volume), page, to) {
            let mut at = offset;
            while at < offset + len {
                let n = (offset + len - at).min(PAGE_COPY_CHUNK);
                let data = v.store.read_at(at, n as usize).await?;
                let copy = Request::PageCopy {
                    volume,
                    offset: at,
                    data,
                };
                self.to_node_at_any_epoch(to, copy).await?;
                at += n;
            }
            self.to_node_at_any_epoch(to, Request::Flush { volume })
                .await?;
        }
        let next = self
            .state
            .update(|t| {
                t.move_primary(VolumeId(volume), page, to)
                    .map_err(StateError::Routing)
            })
            .await?;
        let still_holds = next
            .volume(VolumeId(volume))
            .is_some_and(|m| m.holders(page).any(|n| n == self.node));
        if !still_holds {
            // The copy given up: free its space (nothing routes here for it now).
            if let Err(e) = v.store.deallocate(offset, len).await {
                tracing::warn!(volume, page, "freeing a moved page: {e}");
            }
        }
        Ok(next)
    }

    /// Sends `req` to `node`; when the two disagree on the epoch, reads the table
    /// again and retries (the one behind catches up by its watch).
    async fn to_node_at_any_epoch(&self, node: NodeId, req: Request) -> Result<(), ClusterIoError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let epoch = self.state.table().epoch().0;
            match self.to_replicas(epoch, &[node], req.clone()).await {
                Err(ClusterIoError::Link {
                    source: LinkError::StaleEpoch { .. },
                    ..
                }) if attempt < ROUTE_ATTEMPTS => {
                    tokio::time::sleep(std::time::Duration::from_millis(5 * attempt as u64)).await;
                    let _ = self.state.refresh().await;
                }
                other => return other,
            }
        }
    }

    /// ORWRITE as the primary (SBC-4 §5.9): under the exclusive range lock, the
    /// range becomes the bitwise OR of the medium and `data`, here and on every
    /// replica.
    pub async fn or_write_as_primary(
        &self,
        volume: u64,
        offset: u64,
        data: Bytes,
    ) -> Result<(), ClusterIoError> {
        let v = self.local(volume)?;
        let len = data.len() as u64;
        let _range = v.locks.lock(offset, len, true).await;
        let route = self.replicas_as_primary(volume, offset, len)?;
        let mut merged = BytesMut::from(&v.store.read_at(offset, data.len()).await?[..]);
        for (m, d) in merged.iter_mut().zip(data.iter()) {
            *m |= d;
        }
        let merged = merged.freeze();
        let copy = Request::Write {
            volume,
            offset,
            data: merged.clone(),
            fua: false,
            replica: true,
        };
        let here = async {
            v.store.write_at(offset, merged).await?;
            Ok::<(), ClusterIoError>(())
        };
        tokio::try_join!(here, self.replicate(volume, offset, len, route, copy))?;
        Ok(())
    }

    /// A primary's copy, written as is by a holder of the range.
    async fn write_as_replica(
        &self,
        volume: u64,
        offset: u64,
        data: Bytes,
        fua: bool,
    ) -> Result<(), ClusterIoError> {
        let v = self.local(volume)?;
        if !self.holds(
            &self.state.table(),
            volume,
            offset,
            data.len() as u64,
            false,
        ) {
            return Err(ClusterIoError::NotPrimary);
        }
        v.store.write_at(offset, data).await?;
        if fua {
            v.store.flush().await?;
        }
        Ok(())
    }

    async fn serve_request(&self, req: Request) -> Response {
        self.stats.served.fetch_add(1, Ordering::Relaxed);
        let done = |r: Result<(), ClusterIoError>| match r {
            Ok(()) => Response::Done,
            Err(e) => Response::Error(e.to_wire()),
        };
        match req {
            Request::Read {
                volume,
                offset,
                len,
            } => match self.read_as_primary(volume, offset, len as u64).await {
                Ok(d) => Response::Data(d),
                Err(e) => Response::Error(e.to_wire()),
            },
            Request::Write {
                volume,
                offset,
                data,
                fua,
                replica: false,
            } => done(self.write_as_primary(volume, offset, data, fua).await),
            Request::Write {
                volume,
                offset,
                data,
                fua,
                replica: true,
            } => done(self.write_as_replica(volume, offset, data, fua).await),
            Request::Flush { volume } => match self.volume(volume) {
                Some(v) => done(v.store.flush().await.map_err(ClusterIoError::from)),
                None => Response::Done,
            },
            Request::Unmap {
                volume,
                offset,
                len,
                replica: false,
            } => done(self.unmap_as_primary(volume, offset, len).await),
            Request::Unmap {
                volume,
                offset,
                len,
                replica: true,
            } => {
                let r = async {
                    let v = self.local(volume)?;
                    if !self.holds(&self.state.table(), volume, offset, len, false) {
                        return Err(ClusterIoError::NotPrimary);
                    }
                    Ok(v.store.deallocate(offset, len).await?)
                };
                done(r.await)
            }
            Request::CompareAndWrite {
                volume,
                offset,
                compare,
                write,
            } => match self
                .compare_and_write_as_primary(volume, offset, compare, write)
                .await
            {
                Ok(None) => Response::Done,
                Ok(Some(offset)) => Response::Miscompare { offset },
                Err(e) => Response::Error(e.to_wire()),
            },
            Request::OrWrite {
                volume,
                offset,
                data,
            } => done(self.or_write_as_primary(volume, offset, data).await),
            Request::PageCopy {
                volume,
                offset,
                data,
            } => {
                let r = async {
                    let v = self.local(volume)?;
                    // Only the primary orders writes to its pages: a copy must
                    // never land over them.
                    let len = data.len() as u64;
                    let table = self.state.table();
                    let map = table
                        .volume(VolumeId(volume))
                        .ok_or(ClusterIoError::NoVolume(volume))?;
                    if pages(map, offset, len).any(|(p, _, _)| map.primary(p) == Some(self.node)) {
                        return Err(ClusterIoError::NotPrimary);
                    }
                    Ok(v.store.write_at(offset, data).await?)
                };
                done(r.await)
            }
            Request::ShortCut {
                volume,
                offset,
                len,
                state,
            } => match self.read_as_primary(volume, offset, u64::from(len)).await {
                Ok(data) => {
                    self.stats.shortcut_served.fetch_add(1, Ordering::Relaxed);
                    Response::Pdus(crate::conn::shortcut_response(&state, data))
                }
                Err(e) => Response::Error(e.to_wire()),
            },
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
    /// This node as a primary: pieces whose primary is here are served by it.
    service: Arc<NodeService>,
}

/// What to do with one piece.
#[derive(Clone)]
enum Op {
    Read,
    Write(Bytes, bool),
    Unmap,
    CompareAndWrite(Bytes, Bytes),
    OrWrite(Bytes),
}

/// The outcome of one piece.
enum Done {
    Data(Bytes),
    Ok,
    Miscompare(u32),
}

impl ClusterStore {
    pub fn new(
        volume: VolumeId,
        size: u64,
        local: Arc<LocalVolume>,
        service: Arc<NodeService>,
        peers: Arc<Peers>,
    ) -> ClusterStore {
        ClusterStore {
            volume,
            size,
            node: service.node,
            local,
            state: service.state.clone(),
            peers,
            stats: service.stats.clone(),
            service,
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

    /// Runs `op` on one piece at its page's primary, re-routing when the epoch moved
    /// or the node asked is no longer the primary.
    async fn piece(
        &self,
        page: u64,
        offset: u64,
        len: u64,
        op: Op,
    ) -> Result<Done, ClusterIoError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let table = self.state.table();
            let epoch = table.epoch().0;
            let map = table
                .volume(self.volume)
                .ok_or(ClusterIoError::NoVolume(self.volume.0))?;
            let primary = map.primary(page).ok_or(ClusterIoError::NoHolder(page))?;
            match self.at_node(primary, epoch, offset, len, op.clone()).await {
                Ok(done) => return Ok(done),
                Err(
                    ClusterIoError::NotPrimary
                    | ClusterIoError::Link {
                        source: LinkError::StaleEpoch { .. } | LinkError::NotOwner,
                        ..
                    },
                ) if attempt < ROUTE_ATTEMPTS => {
                    self.stats.rerouted.fetch_add(1, Ordering::Relaxed);
                    // Our table or a peer's is behind: read the coordinator's and
                    // route again (a peer behind catches up by its watch).
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
    ) -> Result<Done, ClusterIoError> {
        let volume = self.volume.0;
        if node == self.node {
            self.stats.local.fetch_add(1, Ordering::Relaxed);
            let s = &self.service;
            return match op {
                Op::Read => Ok(Done::Data(s.read_as_primary(volume, offset, len).await?)),
                Op::Write(data, fua) => {
                    s.write_as_primary(volume, offset, data, fua).await?;
                    Ok(Done::Ok)
                }
                Op::Unmap => {
                    s.unmap_as_primary(volume, offset, len).await?;
                    Ok(Done::Ok)
                }
                Op::OrWrite(data) => {
                    s.or_write_as_primary(volume, offset, data).await?;
                    Ok(Done::Ok)
                }
                Op::CompareAndWrite(compare, write) => Ok(
                    match s
                        .compare_and_write_as_primary(volume, offset, compare, write)
                        .await?
                    {
                        Some(at) => Done::Miscompare(at),
                        None => Done::Ok,
                    },
                ),
            };
        }
        self.stats.forwarded.fetch_add(1, Ordering::Relaxed);
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
                replica: false,
            },
            Op::Unmap => Request::Unmap {
                volume,
                offset,
                len,
                replica: false,
            },
            Op::CompareAndWrite(compare, write) => Request::CompareAndWrite {
                volume,
                offset,
                compare,
                write,
            },
            Op::OrWrite(data) => Request::OrWrite {
                volume,
                offset,
                data,
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
            Response::Data(d) => Ok(Done::Data(d)),
            Response::Done => Ok(Done::Ok),
            Response::Miscompare { offset } => Ok(Done::Miscompare(offset)),
            Response::Error(e) => Err(link_err(e.into())),
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
        let data = |d: Done| match d {
            Done::Data(d) => d,
            Done::Ok | Done::Miscompare(_) => Bytes::new(),
        };
        if pieces.len() == 1 {
            let (page, off, l) = pieces[0];
            return Ok(data(self.piece(page, off, l, Op::Read).await?));
        }
        let parts = try_join_all(
            pieces
                .iter()
                .map(|&(page, off, l)| self.piece(page, off, l, Op::Read)),
        )
        .await?;
        let mut out = BytesMut::with_capacity(len);
        for p in parts {
            out.extend_from_slice(&data(p));
        }
        Ok(out.freeze())
    }

    /// Writes `data` at `offset`, each page through its primary (which copies it to
    /// the page's replicas).
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

    /// ORWRITE of `data` at `offset`, each page at its primary (atomic against
    /// other writes within each page).
    pub async fn or_write(&self, offset: u64, data: Bytes) -> Result<(), ClusterIoError> {
        self.stats.writes.fetch_add(1, Ordering::Relaxed);
        self.stats
            .written_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        let pieces = self.map_pieces(offset, data.len() as u64)?;
        try_join_all(pieces.iter().map(|&(page, off, l)| {
            let from = (off - offset) as usize;
            let part = data.slice(from..from + l as usize);
            self.piece(page, off, l, Op::OrWrite(part))
        }))
        .await?;
        Ok(())
    }

    /// Deallocates `[offset, offset + len)`, each page through its primary.
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

    /// The owner of a short-cut read of `[offset, offset + len)`: the primary of
    /// its page when the node is in short-cut mode, the range lies in one page and
    /// that page's primary is another node; `None` otherwise (served here).
    pub fn shortcut_owner(&self, offset: u64, len: u64) -> Option<NodeId> {
        if self.service.io_mode() != IoMode::ShortCut || len > u64::from(MAX_DATA_LEN) {
            return None;
        }
        let table = self.state.table();
        let map = table.volume(self.volume)?;
        let page_size = map.volume().page_size;
        let page = offset / page_size;
        if (offset + len - 1) / page_size != page {
            return None;
        }
        map.primary(page).filter(|&p| p != self.node)
    }

    /// A short-cut read: the owner reads the range and builds the task's final
    /// PDUs from `state`; the bytes come back ready to be written to the
    /// initiator. Any failure (another epoch, another owner, a link error) is for
    /// the caller to answer by the normal path.
    pub async fn shortcut_read(
        &self,
        owner: NodeId,
        offset: u64,
        len: u32,
        state: ConnState,
    ) -> Result<Bytes, ClusterIoError> {
        let epoch = self.state.table().epoch().0;
        let req = Request::ShortCut {
            volume: self.volume.0,
            offset,
            len,
            state,
        };
        let link_err = |source| ClusterIoError::Link {
            node: owner.0,
            source,
        };
        match self
            .peers
            .call(owner.0, epoch, req)
            .await
            .map_err(link_err)?
        {
            Response::Pdus(p) => {
                // Counted once it succeeded: a failed one is run (and counted) by
                // the normal path.
                self.stats.shortcut.fetch_add(1, Ordering::Relaxed);
                self.stats.reads.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .read_bytes
                    .fetch_add(u64::from(len), Ordering::Relaxed);
                Ok(p)
            }
            Response::Error(e) => Err(link_err(e.into())),
            other => Err(link_err(LinkError::Protocol(format!(
                "unexpected response {other:?}"
            )))),
        }
    }

    /// COMPARE AND WRITE (SBC-4 §5.3) at the primary of the range: atomic against
    /// every write to it through any node. Returns the offset of the first
    /// differing byte on a miscompare (nothing written).
    ///
    /// A range across a page boundary (two primaries) is compared piece by piece
    /// and written only when every piece matched; that is atomic against writes
    /// only within each page (documented in docs/architecture.md).
    pub async fn compare_and_write(
        &self,
        offset: u64,
        compare: Bytes,
        write: Bytes,
    ) -> Result<Option<u32>, ClusterIoError> {
        self.stats.writes.fetch_add(1, Ordering::Relaxed);
        let pieces = self.map_pieces(offset, compare.len() as u64)?;
        if let [(page, off, l)] = pieces[..] {
            return match self
                .piece(page, off, l, Op::CompareAndWrite(compare, write))
                .await?
            {
                Done::Miscompare(at) => Ok(Some(at)),
                Done::Ok | Done::Data(_) => Ok(None),
            };
        }
        let medium = self.read_at(offset, compare.len()).await?;
        if let Some(at) = medium.iter().zip(compare.iter()).position(|(a, b)| a != b) {
            return Ok(Some(at as u32));
        }
        self.write_at(offset, write, false).await?;
        Ok(None)
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
