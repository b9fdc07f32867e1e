//! The coordinator's errors: one enum for every implementation, so callers handle
//! the embedded and the etcd coordinator alike.

use std::time::Duration;

use bytes::Bytes;

use crate::types::{LeaseId, Revision};

/// Why a coordinator operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CoordError {
    /// The revision asked for is older than the oldest one kept in history (etcd's
    /// `ErrCompacted`): read the current state and watch from its revision + 1.
    #[error("revision {requested} is compacted; history starts at {compact_revision}")]
    Compacted {
        /// The revision asked for.
        requested: Revision,
        /// The oldest revision still available.
        compact_revision: Revision,
    },
    /// The revision asked for is newer than the store's (etcd's `ErrFutureRev`).
    #[error("revision {requested} is in the future; the store is at {current}")]
    FutureRevision {
        /// The revision asked for.
        requested: Revision,
        /// The store's current revision.
        current: Revision,
    },
    /// The lease was never granted, has expired, or was revoked (etcd's
    /// `ErrLeaseNotFound`).
    #[error("lease {0} not found (expired, revoked or never granted)")]
    LeaseNotFound(LeaseId),
    /// A lease TTL of zero or above [`crate::MAX_LEASE_TTL`].
    #[error("lease TTL {0:?} is out of range")]
    InvalidTtl(Duration),
    /// Keys may not be empty (etcd's `ErrEmptyKey`).
    #[error("empty key")]
    EmptyKey,
    /// A request larger than [`crate::MAX_REQUEST_BYTES`] (etcd's
    /// `ErrRequestTooLarge`).
    #[error("request of {size} bytes exceeds the limit of {limit}")]
    RequestTooLarge {
        /// Bytes of keys and values in the request.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A transaction with more compares or operations in a branch than
    /// [`crate::MAX_TXN_OPS`] (etcd's `ErrTooManyOps`).
    #[error("{count} operations exceed the limit of {limit} per transaction part")]
    TooManyOps {
        /// Compares, success or failure operations, whichever is over.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// A transaction branch writes the same key twice (etcd's `ErrDuplicateKey`):
    /// two puts, or a put inside a deleted range.
    #[error("key {} is written twice in one transaction branch", String::from_utf8_lossy(.0))]
    DuplicateKey(Bytes),
    /// The watcher fell more than [`crate::WATCH_CHANNEL_CAPACITY`] responses behind
    /// and was cancelled rather than buffer without bound. Every response before
    /// `resume_revision` was delivered; watch again from it, or if that is
    /// compacted, read the state anew.
    #[error("watcher fell behind; resume from revision {resume_revision}")]
    WatchLagged {
        /// The first revision the watcher did not receive.
        resume_revision: Revision,
    },
    /// The watch ended because the coordinator shut down (every handle of the
    /// embedded one dropped, or the etcd stream closed).
    #[error("watch closed")]
    WatchClosed,
    /// The coordinator cannot be reached (networked implementations; the embedded
    /// one never returns it). A node that sees this cannot renew its lease and must
    /// assume it will lose it.
    #[error("coordinator unavailable: {0}")]
    Unavailable(String),
}
