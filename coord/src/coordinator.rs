//! The coordinator trait: what the cluster asks of its coordination store. Shaped
//! after etcd v3 (KV, Lease and Watch services) so that the embedded and the etcd
//! implementations are interchangeable behind `Arc<dyn Coordinator>`; the mapping
//! of each method onto etcd is in docs/coordinator.md.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;

use crate::error::CoordError;
use crate::types::{
    DeleteResponse, GetResponse, KeyRange, LeaseGrant, LeaseId, LeaseInfo, LeaseKeepAlive,
    LeaseRevoke, PutResponse, Revision, Txn, TxnResponse,
};
use crate::watch::Watch;

/// The future every coordinator method returns: boxed so that the trait stays
/// object safe (`Arc<dyn Coordinator>`), `Send` so that it can run on any task.
pub type CoordFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, CoordError>> + Send + 'a>>;

/// A coordination store: keys with revisions, atomic compare-then-write
/// transactions, leases with a TTL, and watches. Every method is linearizable: its
/// effect happens at one point between its call and its completion, in one total
/// order with every other (the store's revision order).
pub trait Coordinator: Send + Sync + std::fmt::Debug {
    /// Reads one key or every key under a prefix, with the revision read at
    /// (etcd `KV.Range`).
    fn get(&self, range: KeyRange) -> CoordFuture<'_, GetResponse>;

    /// Writes a key, attached to `lease` if given, detached from any lease if not
    /// (etcd `KV.Put` with `prev_kv`). Fails with [`CoordError::LeaseNotFound`] if
    /// the lease has ended.
    fn put(&self, key: Bytes, value: Bytes, lease: Option<LeaseId>)
        -> CoordFuture<'_, PutResponse>;

    /// Deletes one key or every key under a prefix (etcd `KV.DeleteRange` with
    /// `prev_kv`).
    fn delete(&self, range: KeyRange) -> CoordFuture<'_, DeleteResponse>;

    /// Compares, then runs the success or the failure branch, atomically (etcd
    /// `KV.Txn`): the building block of compare-and-set, create-if-absent and
    /// leader election.
    fn txn(&self, txn: Txn) -> CoordFuture<'_, TxnResponse>;

    /// Drops history before `revision`; watches can no longer start earlier (etcd
    /// `KV.Compact`).
    fn compact(&self, revision: Revision) -> CoordFuture<'_, ()>;

    /// Grants a lease that ends `ttl` after the last keep-alive (etcd
    /// `Lease.LeaseGrant`; etcd counts whole seconds, so its implementation rounds
    /// up).
    fn lease_grant(&self, ttl: Duration) -> CoordFuture<'_, LeaseGrant>;

    /// Restarts the lease's TTL; [`CoordError::LeaseNotFound`] once it has ended
    /// (etcd `Lease.LeaseKeepAlive`, one round of the stream).
    fn lease_keep_alive(&self, lease: LeaseId) -> CoordFuture<'_, LeaseKeepAlive>;

    /// Ends the lease now and deletes its keys (etcd `Lease.LeaseRevoke`).
    fn lease_revoke(&self, lease: LeaseId) -> CoordFuture<'_, LeaseRevoke>;

    /// The lease's granted TTL, time left and keys (etcd `Lease.LeaseTimeToLive`
    /// with `keys`).
    fn lease_time_to_live(&self, lease: LeaseId) -> CoordFuture<'_, LeaseInfo>;

    /// Watches a key or prefix (etcd `Watch.Watch` with `prev_kv`). With
    /// `start_revision`, changes from that revision on are replayed first
    /// ([`CoordError::Compacted`] if it is older than the history kept); without,
    /// only changes after the call are delivered. To follow a snapshot without a
    /// gap, get it, then watch from its `revision + 1`.
    fn watch(&self, range: KeyRange, start_revision: Option<Revision>) -> CoordFuture<'_, Watch>;
}
