//! Mosaic's coordinator: the store of cluster state (routing tables, node
//! membership and liveness, volume definitions, session profiles, persistent
//! reservations), shaped after etcd v3 so that the embedded implementation here and
//! a later etcd one are interchangeable (docs/coordinator.md).
//!
//! - [`types`]: keys with `create_revision`, `mod_revision` and `version`; ranges;
//!   compares and transactions; leases; watch events (etcd's data model).
//! - [`store`]: the sans-IO core: revisions, history, transactions and leases, with
//!   time passed in. No clock, no locks, no channels.
//! - [`watch`]: the receiving end of a watch, bounded, common to every
//!   implementation.
//! - [`coordinator`]: the object-safe async [`Coordinator`] trait that callers hold
//!   as `Arc<dyn Coordinator>`.
//! - [`embedded`]: [`EmbeddedCoordinator`], the store in this process behind a
//!   mutex, driven by tokio time: the lab cluster's coordinator.
//! - [`error`]: [`CoordError`], the errors of every implementation.

pub mod coordinator;
pub mod embedded;
pub mod error;
pub mod store;
pub mod types;
pub mod watch;

#[cfg(test)]
mod reference_tests;

pub use coordinator::{CoordFuture, Coordinator};
pub use embedded::{EmbeddedConfig, EmbeddedCoordinator};
pub use error::CoordError;
pub use store::{
    Store, StoreConfig, DEFAULT_HISTORY_BYTES, DEFAULT_HISTORY_REVISIONS, MAX_LEASE_TTL,
    MAX_REQUEST_BYTES, MAX_TXN_OPS,
};
pub use types::{
    Compare, CompareOp, CompareTarget, DeleteResponse, Event, EventKind, GetResponse, KeyRange,
    KeyValue, LeaseGrant, LeaseId, LeaseInfo, LeaseKeepAlive, LeaseRevoke, PutResponse, Revision,
    Txn, TxnOp, TxnOpResponse, TxnResponse, Version, WatchResponse,
};
pub use watch::{watch_channel, Watch, WatchSender, WATCH_CHANNEL_CAPACITY};
