//! The sans-IO core: the key-value store with its revision history and leases. No
//! clock, no channels, no locks: time comes in as an argument ([`Store::advance_to`]
//! expires leases whose deadline has passed) and changes go out as
//! [`WatchResponse`]s that the driver collects with [`Store::take_events`] after each
//! call. The embedded coordinator is a thin async driver over it; tests drive it by
//! hand with made-up instants.
//!
//! Semantics follow etcd v3's MVCC store: one revision per change, `create_revision`,
//! `mod_revision` and `version` per key, a transaction's writes at one revision, a
//! lease's keys deleted together at one revision when it ends.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::error::CoordError;
use crate::types::{
    DeleteResponse, Event, EventKind, GetResponse, KeyRange, KeyValue, LeaseGrant, LeaseId,
    LeaseInfo, LeaseKeepAlive, LeaseRevoke, PutResponse, Revision, Txn, TxnOp, TxnOpResponse,
    TxnResponse, WatchResponse,
};

/// Most compares, or operations in one branch, in one transaction: etcd's default
/// `--max-txn-ops`, so a transaction that works here also works against etcd.
pub const MAX_TXN_OPS: usize = 128;

/// Most bytes of keys and values in one request: etcd's default
/// `--max-request-bytes` (1.5 MiB), for the same reason.
pub const MAX_REQUEST_BYTES: usize = 1536 * 1024;

/// Longest lease TTL: etcd's `MaxLeaseTTL` (9,000,000,000 s). It also keeps
/// `now + ttl` far from `Instant` overflow.
pub const MAX_LEASE_TTL: Duration = Duration::from_secs(9_000_000_000);

/// Revisions of history kept for watchers that start in the past, by default. A
/// node that restarts its watch after a short hiccup resumes from history; one that
/// is further behind re-reads the state (etcd compacts too, by default every hour).
/// 10,000 revisions are minutes of routing, membership and session changes.
pub const DEFAULT_HISTORY_REVISIONS: usize = 10_000;

/// Bytes of history kept, by default, whichever of the two limits comes first:
/// 10,000 revisions of 1.5 MiB values would otherwise be 15 GiB.
pub const DEFAULT_HISTORY_BYTES: usize = 64 * 1024 * 1024;

/// Bytes counted per event in history besides its keys and values: the counters,
/// the `Bytes` handles and the vector slot, roughly.
const EVENT_OVERHEAD_BYTES: usize = 128;

/// How much history the store keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreConfig {
    /// At most this many revisions.
    pub history_revisions: usize,
    /// At most about this many bytes of keys and values.
    pub history_bytes: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            history_revisions: DEFAULT_HISTORY_REVISIONS,
            history_bytes: DEFAULT_HISTORY_BYTES,
        }
    }
}

/// A granted lease.
#[derive(Debug)]
struct Lease {
    /// The TTL it was granted; each keep-alive restarts the full TTL.
    ttl: Duration,
    /// When it expires unless kept alive.
    deadline: Instant,
    /// The keys attached, deleted when it ends.
    keys: BTreeSet<Bytes>,
}

/// The store. See the module documentation.
#[derive(Debug)]
pub struct Store {
    config: StoreConfig,
    /// The current value of every key.
    kvs: BTreeMap<Bytes, KeyValue>,
    /// The revision of the last change; 1 when empty, as in etcd.
    revision: Revision,
    /// History before this revision is gone; watching from here on is possible.
    compact_revision: Revision,
    /// One entry per revision in `compact_revision..=revision`, ascending (every
    /// revision has at least one event).
    history: VecDeque<WatchResponse>,
    /// Bytes counted in `history`.
    history_bytes: usize,
    leases: HashMap<LeaseId, Lease>,
    /// Lease deadlines in expiry order, ties broken by id.
    deadlines: BTreeSet<(Instant, LeaseId)>,
    /// The id the next lease gets.
    next_lease: i64,
    /// The latest time passed in.
    now: Option<Instant>,
    /// Changes not yet collected by the driver.
    pending: Vec<WatchResponse>,
}

impl Default for Store {
    fn default() -> Self {
        Store::new(StoreConfig::default())
    }
}

/// Writes being made at one revision.
struct Batch {
    revision: Revision,
    events: Vec<Event>,
}

impl Store {
    /// An empty store at revision 1.
    pub fn new(config: StoreConfig) -> Self {
        Store {
            config,
            kvs: BTreeMap::new(),
            revision: 1,
            compact_revision: 1,
            history: VecDeque::new(),
            history_bytes: 0,
            leases: HashMap::new(),
            deadlines: BTreeSet::new(),
            next_lease: 1,
            now: None,
            pending: Vec::new(),
        }
    }

    /// The revision of the last change.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// The oldest revision a watch may start from.
    pub fn compact_revision(&self) -> Revision {
        self.compact_revision
    }

    /// The earliest lease deadline: the driver calls [`Store::advance_to`] then.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|&(deadline, _)| deadline)
    }

    /// Passes time in: every lease whose deadline is at or before `now` expires, in
    /// deadline order, each deleting its keys at a revision of its own. Time never
    /// goes backwards: an earlier `now` than seen before is ignored.
    pub fn advance_to(&mut self, now: Instant) {
        let now = match self.now {
            Some(seen) if seen > now => seen,
            _ => now,
        };
        self.now = Some(now);
        while let Some(&(deadline, id)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            tracing::debug!(lease = %id, "lease expired");
            self.end_lease(id);
        }
    }

    /// The changes made since the last call, in revision order. The driver must
    /// collect them after every call that may write (everything but reads).
    pub fn take_events(&mut self) -> Vec<WatchResponse> {
        std::mem::take(&mut self.pending)
    }

    /// Reads one key or a prefix.
    pub fn get(&self, range: &KeyRange) -> GetResponse {
        GetResponse {
            revision: self.revision,
            kvs: self.range(range).cloned().collect(),
        }
    }

    /// Writes `key`, attached to `lease` if given (and detached from any other).
    pub fn put(
        &mut self,
        key: Bytes,
        value: Bytes,
        lease: Option<LeaseId>,
    ) -> Result<PutResponse, CoordError> {
        check_key(&key)?;
        check_size(key.len() + value.len())?;
        self.check_lease(lease)?;
        let mut batch = self.begin();
        let response = self.apply_put(&mut batch, key, value, lease);
        self.commit(batch);
        Ok(response)
    }

    /// Deletes one key or a prefix. Makes a revision only if something was deleted.
    pub fn delete(&mut self, range: &KeyRange) -> Result<DeleteResponse, CoordError> {
        check_range(range)?;
        let mut batch = self.begin();
        let prev_kvs = self.apply_delete(&mut batch, range);
        self.commit(batch);
        Ok(DeleteResponse {
            revision: self.revision,
            prev_kvs,
        })
    }

    /// Runs a transaction atomically: validates it whole, evaluates the compares,
    /// then runs one branch at one new revision (if it writes). Nothing is changed
    /// when an error is returned.
    pub fn txn(&mut self, txn: &Txn) -> Result<TxnResponse, CoordError> {
        check_txn(txn)?;
        let succeeded = txn.compare.iter().all(|c| c.holds(self.kvs.get(&c.key)));
        let ops = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        for op in ops {
            if let TxnOp::Put { lease, .. } = op {
                self.check_lease(*lease)?;
            }
        }
        let mut batch = self.begin();
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            responses.push(match op {
                TxnOp::Get(range) => TxnOpResponse::Get(GetResponse {
                    revision: 0,
                    kvs: self.range(range).cloned().collect(),
                }),
                TxnOp::Put { key, value, lease } => TxnOpResponse::Put(self.apply_put(
                    &mut batch,
                    key.clone(),
                    value.clone(),
                    *lease,
                )),
                TxnOp::Delete(range) => TxnOpResponse::Delete(DeleteResponse {
                    revision: 0,
                    prev_kvs: self.apply_delete(&mut batch, range),
                }),
            });
        }
        self.commit(batch);
        // As in etcd, every response of a transaction carries its final revision.
        let revision = self.revision;
        for response in &mut responses {
            match response {
                TxnOpResponse::Get(r) => r.revision = revision,
                TxnOpResponse::Put(r) => r.revision = revision,
                TxnOpResponse::Delete(r) => r.revision = revision,
            }
        }
        Ok(TxnResponse {
            succeeded,
            revision,
            responses,
        })
    }

    /// Drops history before `revision`: watches can no longer start earlier (etcd's
    /// `Compact`).
    pub fn compact(&mut self, revision: Revision) -> Result<(), CoordError> {
        if revision > self.revision {
            return Err(CoordError::FutureRevision {
                requested: revision,
                current: self.revision,
            });
        }
        if revision <= self.compact_revision {
            return Err(CoordError::Compacted {
                requested: revision,
                compact_revision: self.compact_revision,
            });
        }
        while self.history.front().is_some_and(|r| r.revision < revision) {
            self.pop_history();
        }
        self.compact_revision = revision;
        Ok(())
    }

    /// The recorded changes from `start` on, for a watch that starts in the past.
    pub fn history_from(
        &self,
        start: Revision,
    ) -> Result<impl Iterator<Item = &WatchResponse> + '_, CoordError> {
        if start < self.compact_revision {
            return Err(CoordError::Compacted {
                requested: start,
                compact_revision: self.compact_revision,
            });
        }
        let first = self.history.partition_point(|r| r.revision < start);
        Ok(self.history.range(first..))
    }

    /// Grants a lease of `ttl` from `now`.
    pub fn lease_grant(&mut self, now: Instant, ttl: Duration) -> Result<LeaseGrant, CoordError> {
        if ttl.is_zero() || ttl > MAX_LEASE_TTL {
            return Err(CoordError::InvalidTtl(ttl));
        }
        self.advance_to(now);
        let now = self.now.unwrap_or(now);
        let id = LeaseId(self.next_lease);
        self.next_lease += 1;
        let deadline = now + ttl;
        self.leases.insert(
            id,
            Lease {
                ttl,
                deadline,
                keys: BTreeSet::new(),
            },
        );
        self.deadlines.insert((deadline, id));
        Ok(LeaseGrant { id, ttl })
    }

    /// Restarts the lease's full TTL from `now`, unless it has already expired.
    pub fn lease_keep_alive(
        &mut self,
        now: Instant,
        id: LeaseId,
    ) -> Result<LeaseKeepAlive, CoordError> {
        self.advance_to(now);
        let now = self.now.unwrap_or(now);
        let lease = self
            .leases
            .get_mut(&id)
            .ok_or(CoordError::LeaseNotFound(id))?;
        self.deadlines.remove(&(lease.deadline, id));
        lease.deadline = now + lease.ttl;
        self.deadlines.insert((lease.deadline, id));
        Ok(LeaseKeepAlive { id, ttl: lease.ttl })
    }

    /// Ends the lease now, deleting its keys at one revision.
    pub fn lease_revoke(&mut self, now: Instant, id: LeaseId) -> Result<LeaseRevoke, CoordError> {
        self.advance_to(now);
        if !self.leases.contains_key(&id) {
            return Err(CoordError::LeaseNotFound(id));
        }
        self.end_lease(id);
        Ok(LeaseRevoke {
            revision: self.revision,
        })
    }

    /// The lease's TTL, time left and keys.
    pub fn lease_time_to_live(
        &mut self,
        now: Instant,
        id: LeaseId,
    ) -> Result<LeaseInfo, CoordError> {
        self.advance_to(now);
        let now = self.now.unwrap_or(now);
        let lease = self.leases.get(&id).ok_or(CoordError::LeaseNotFound(id))?;
        Ok(LeaseInfo {
            id,
            granted_ttl: lease.ttl,
            remaining: lease.deadline.saturating_duration_since(now),
            keys: lease.keys.iter().cloned().collect(),
        })
    }

    fn range<'a>(&'a self, range: &KeyRange) -> Box<dyn Iterator<Item = &'a KeyValue> + 'a> {
        match range {
            KeyRange::Key(key) => Box::new(self.kvs.get(key).into_iter()),
            KeyRange::Prefix(prefix) => {
                let prefix = prefix.clone();
                Box::new(
                    self.kvs
                        .range::<[u8], _>((
                            std::ops::Bound::Included(prefix.as_ref()),
                            std::ops::Bound::Unbounded,
                        ))
                        .take_while(move |(k, _)| k.starts_with(&prefix))
                        .map(|(_, kv)| kv),
                )
            }
        }
    }

    fn check_lease(&self, lease: Option<LeaseId>) -> Result<(), CoordError> {
        match lease {
            Some(id) if !self.leases.contains_key(&id) => Err(CoordError::LeaseNotFound(id)),
            _ => Ok(()),
        }
    }

    fn begin(&self) -> Batch {
        Batch {
            revision: self.revision + 1,
            events: Vec::new(),
        }
    }

    fn apply_put(
        &mut self,
        batch: &mut Batch,
        key: Bytes,
        value: Bytes,
        lease: Option<LeaseId>,
    ) -> PutResponse {
        let prev_kv = self.kvs.get(&key).cloned();
        let (create_revision, version) = match &prev_kv {
            Some(prev) => (prev.create_revision, prev.version + 1),
            None => (batch.revision, 1),
        };
        if let Some(old) = prev_kv.as_ref().and_then(|p| p.lease) {
            if Some(old) != lease {
                if let Some(old) = self.leases.get_mut(&old) {
                    old.keys.remove(&key);
                }
            }
        }
        if let Some(new) = lease.and_then(|id| self.leases.get_mut(&id)) {
            new.keys.insert(key.clone());
        }
        let kv = KeyValue {
            key: key.clone(),
            value,
            create_revision,
            mod_revision: batch.revision,
            version,
            lease,
        };
        self.kvs.insert(key, kv.clone());
        batch.events.push(Event {
            kind: EventKind::Put,
            kv,
            prev_kv: prev_kv.clone(),
        });
        PutResponse {
            revision: batch.revision,
            prev_kv,
        }
    }

    fn apply_delete(&mut self, batch: &mut Batch, range: &KeyRange) -> Vec<KeyValue> {
        let keys: Vec<Bytes> = self.range(range).map(|kv| kv.key.clone()).collect();
        let mut prev_kvs = Vec::with_capacity(keys.len());
        for key in keys {
            let Some(prev) = self.kvs.remove(&key) else {
                continue;
            };
            if let Some(lease) = prev.lease.and_then(|id| self.leases.get_mut(&id)) {
                lease.keys.remove(&key);
            }
            let kv = KeyValue {
                key,
                value: Bytes::new(),
                create_revision: 0,
                mod_revision: batch.revision,
                version: 0,
                lease: None,
            };
            batch.events.push(Event {
                kind: EventKind::Delete,
                kv,
                prev_kv: Some(prev.clone()),
            });
            prev_kvs.push(prev);
        }
        prev_kvs
    }

    /// Records the batch as a new revision, if it changed anything.
    fn commit(&mut self, batch: Batch) {
        if batch.events.is_empty() {
            return;
        }
        self.revision = batch.revision;
        let response = WatchResponse {
            revision: batch.revision,
            events: batch.events,
        };
        self.history_bytes += response_bytes(&response);
        self.history.push_back(response.clone());
        self.pending.push(response);
        while self.history.len() > self.config.history_revisions
            || self.history_bytes > self.config.history_bytes
        {
            self.pop_history();
        }
    }

    fn pop_history(&mut self) {
        if let Some(oldest) = self.history.pop_front() {
            self.history_bytes -= response_bytes(&oldest);
            self.compact_revision = oldest.revision + 1;
        }
    }

    /// Removes a lease and deletes its keys at one revision.
    fn end_lease(&mut self, id: LeaseId) {
        let Some(lease) = self.leases.remove(&id) else {
            return;
        };
        self.deadlines.remove(&(lease.deadline, id));
        let mut batch = self.begin();
        for key in lease.keys {
            self.apply_delete(&mut batch, &KeyRange::Key(key));
        }
        self.commit(batch);
    }
}

fn response_bytes(response: &WatchResponse) -> usize {
    response
        .events
        .iter()
        .map(|e| {
            EVENT_OVERHEAD_BYTES
                + e.kv.key.len()
                + e.kv.value.len()
                + e.prev_kv
                    .as_ref()
                    .map_or(0, |p| p.key.len() + p.value.len())
        })
        .sum()
}

fn check_key(key: &[u8]) -> Result<(), CoordError> {
    if key.is_empty() {
        Err(CoordError::EmptyKey)
    } else {
        Ok(())
    }
}

fn check_range(range: &KeyRange) -> Result<(), CoordError> {
    match range {
        KeyRange::Key(key) => check_key(key),
        KeyRange::Prefix(_) => Ok(()),
    }
}

fn check_size(size: usize) -> Result<(), CoordError> {
    if size > MAX_REQUEST_BYTES {
        Err(CoordError::RequestTooLarge {
            size,
            limit: MAX_REQUEST_BYTES,
        })
    } else {
        Ok(())
    }
}

fn range_bytes(range: &KeyRange) -> usize {
    match range {
        KeyRange::Key(k) | KeyRange::Prefix(k) => k.len(),
    }
}

/// Checks what can be checked without the store: limits, keys, and that no branch
/// writes a key twice (which would make its one revision ambiguous).
fn check_txn(txn: &Txn) -> Result<(), CoordError> {
    for count in [txn.compare.len(), txn.success.len(), txn.failure.len()] {
        if count > MAX_TXN_OPS {
            return Err(CoordError::TooManyOps {
                count,
                limit: MAX_TXN_OPS,
            });
        }
    }
    let mut size = 0;
    for compare in &txn.compare {
        check_key(&compare.key)?;
        size += compare.key.len();
        if let crate::types::CompareTarget::Value(v) = &compare.target {
            size += v.len();
        }
    }
    for branch in [&txn.success, &txn.failure] {
        let mut puts: BTreeSet<&Bytes> = BTreeSet::new();
        let mut deletes: Vec<&KeyRange> = Vec::new();
        for op in branch.iter() {
            match op {
                TxnOp::Get(range) => {
                    check_range(range)?;
                    size += range_bytes(range);
                }
                TxnOp::Put { key, value, .. } => {
                    check_key(key)?;
                    size += key.len() + value.len();
                    if !puts.insert(key) || deletes.iter().any(|d| d.contains(key)) {
                        return Err(CoordError::DuplicateKey(key.clone()));
                    }
                }
                TxnOp::Delete(range) => {
                    check_range(range)?;
                    size += range_bytes(range);
                    if let Some(key) = puts.iter().find(|k| range.contains(k)) {
                        return Err(CoordError::DuplicateKey((*key).clone()));
                    }
                    deletes.push(range);
                }
            }
        }
    }
    check_size(size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Compare, CompareOp};

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn put(store: &mut Store, key: &str, value: &str) -> PutResponse {
        store.put(b(key), b(value), None).unwrap()
    }

    fn keys(store: &Store, prefix: &str) -> Vec<String> {
        store
            .get(&KeyRange::prefix(b(prefix)))
            .kvs
            .iter()
            .map(|kv| String::from_utf8(kv.key.to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn counters_follow_etcd_semantics_across_put_delete_and_recreate() {
        let mut s = Store::default();
        assert_eq!(s.revision(), 1);
        let r = put(&mut s, "/k", "a");
        assert_eq!((r.revision, r.prev_kv), (2, None));
        put(&mut s, "/other", "x");
        let r = put(&mut s, "/k", "b");
        assert_eq!(r.revision, 4);
        assert_eq!(r.prev_kv.unwrap().value, b("a"));
        let kv = &s.get(&KeyRange::key(b("/k"))).kvs[0];
        assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 4, 2));

        let d = s.delete(&KeyRange::key(b("/k"))).unwrap();
        assert_eq!((d.revision, d.deleted()), (5, 1));
        // Deleting nothing makes no revision.
        let d = s.delete(&KeyRange::key(b("/k"))).unwrap();
        assert_eq!((d.revision, d.deleted()), (5, 0));

        put(&mut s, "/k", "c");
        let kv = &s.get(&KeyRange::key(b("/k"))).kvs[0];
        assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (6, 6, 1));
    }

    #[test]
    fn prefix_get_and_delete_stay_inside_the_prefix() {
        let mut s = Store::default();
        for k in ["/a", "/a/1", "/a/2", "/a0", "/b/1"] {
            put(&mut s, k, "v");
        }
        assert_eq!(keys(&s, "/a/"), ["/a/1", "/a/2"]);
        assert_eq!(keys(&s, "/a"), ["/a", "/a/1", "/a/2", "/a0"]);
        let d = s.delete(&KeyRange::prefix(b("/a/"))).unwrap();
        assert_eq!(d.deleted(), 2);
        assert_eq!(keys(&s, ""), ["/a", "/a0", "/b/1"]);
        // One revision for the whole prefix delete.
        assert_eq!(d.revision, 7);
        assert_eq!(s.history_from(7).unwrap().next().unwrap().events.len(), 2);
    }

    #[test]
    fn cas_succeeds_only_at_expected_revision() {
        let mut s = Store::default();
        let read = put(&mut s, "/table", "epoch-1").revision;
        let cas = |rev, value: &str| {
            Txn::new()
                .when([Compare::mod_revision(b("/table"), CompareOp::Equal, rev)])
                .and_then([TxnOp::put(b("/table"), b(value), None)])
                .or_else([TxnOp::get(KeyRange::key(b("/table")))])
        };
        // A writer that read at `read` wins once ...
        let first = s.txn(&cas(read, "epoch-2")).unwrap();
        assert!(first.succeeded);
        assert_eq!(first.revision, read + 1);
        // ... a second writer that read at the same revision loses, changes nothing,
        // and gets the current value from the failure branch to retry with.
        let second = s.txn(&cas(read, "epoch-2-other")).unwrap();
        assert!(!second.succeeded);
        assert_eq!(second.revision, read + 1);
        let TxnOpResponse::Get(current) = &second.responses[0] else {
            panic!("not a get")
        };
        assert_eq!(current.kvs[0].value, b("epoch-2"));
        assert_eq!(current.kvs[0].mod_revision, read + 1);
        // Retrying at the revision it was told succeeds.
        assert!(s.txn(&cas(read + 1, "epoch-3")).unwrap().succeeded);
        assert_eq!(
            s.get(&KeyRange::key(b("/table"))).kvs[0].value,
            b("epoch-3")
        );
    }

    #[test]
    fn create_if_absent_succeeds_once() {
        let mut s = Store::default();
        let create = |v: &str| {
            Txn::new()
                .when([Compare::absent(b("/lead"))])
                .and_then([TxnOp::put(b("/lead"), b(v), None)])
        };
        assert!(s.txn(&create("node-1")).unwrap().succeeded);
        let lost = s.txn(&create("node-2")).unwrap();
        assert!(!lost.succeeded);
        assert_eq!(
            lost.revision, 2,
            "a failed txn with no writes makes no revision"
        );
        assert_eq!(s.get(&KeyRange::key(b("/lead"))).kvs[0].value, b("node-1"));
    }

    #[test]
    fn txn_writes_share_one_revision_and_see_each_other() {
        let mut s = Store::default();
        put(&mut s, "/old", "x");
        let t = Txn::new().and_then([
            TxnOp::put(b("/a"), b("1"), None),
            TxnOp::delete(KeyRange::key(b("/old"))),
            TxnOp::get(KeyRange::prefix(b("/"))),
            TxnOp::put(b("/b"), b("2"), None),
        ]);
        let r = s.txn(&t).unwrap();
        assert_eq!(r.revision, 3);
        let TxnOpResponse::Get(seen) = &r.responses[2] else {
            panic!("not a get")
        };
        assert_eq!(
            seen.kvs.len(),
            1,
            "the get sees the put and the delete before it"
        );
        assert_eq!(seen.revision, 3);
        let events = &s.history_from(3).unwrap().next().unwrap().events;
        assert_eq!(events.len(), 3);
        assert!(events.iter().all(|e| e.revision() == 3));
    }

    #[test]
    fn txn_refuses_writing_a_key_twice_and_changes_nothing() {
        let mut s = Store::default();
        let twice = Txn::new().and_then([
            TxnOp::put(b("/a"), b("1"), None),
            TxnOp::put(b("/a"), b("2"), None),
        ]);
        assert_eq!(s.txn(&twice), Err(CoordError::DuplicateKey(b("/a"))));
        let put_in_deleted = Txn::new().or_else([
            TxnOp::delete(KeyRange::prefix(b("/"))),
            TxnOp::put(b("/a"), b("1"), None),
        ]);
        assert_eq!(
            s.txn(&put_in_deleted),
            Err(CoordError::DuplicateKey(b("/a")))
        );
        let too_many = Txn::new()
            .and_then((0..=MAX_TXN_OPS).map(|i| TxnOp::put(b(&format!("/k{i}")), b("v"), None)));
        assert!(matches!(
            s.txn(&too_many),
            Err(CoordError::TooManyOps { .. })
        ));
        let unknown_lease = Txn::new().and_then([
            TxnOp::put(b("/a"), b("1"), None),
            TxnOp::put(b("/b"), b("1"), Some(LeaseId(9))),
        ]);
        assert_eq!(
            s.txn(&unknown_lease),
            Err(CoordError::LeaseNotFound(LeaseId(9)))
        );
        assert_eq!(s.revision(), 1);
        assert!(s.get(&KeyRange::all()).kvs.is_empty());
        assert!(s.take_events().is_empty());
    }

    #[test]
    fn requests_over_the_limits_are_refused() {
        let mut s = Store::default();
        assert_eq!(s.put(Bytes::new(), b("v"), None), Err(CoordError::EmptyKey));
        let big = Bytes::from(vec![0u8; MAX_REQUEST_BYTES]);
        assert!(matches!(
            s.put(b("k"), big, None),
            Err(CoordError::RequestTooLarge { .. })
        ));
        assert_eq!(
            s.delete(&KeyRange::key(Bytes::new())),
            Err(CoordError::EmptyKey)
        );
        let t0 = Instant::now();
        assert_eq!(
            s.lease_grant(t0, Duration::ZERO),
            Err(CoordError::InvalidTtl(Duration::ZERO))
        );
        assert_eq!(s.revision(), 1);
    }

    #[test]
    fn lease_expiry_deletes_its_keys_at_one_revision() {
        let mut s = Store::default();
        let t0 = Instant::now();
        let lease = s.lease_grant(t0, Duration::from_secs(10)).unwrap().id;
        s.put(b("/nodes/1"), b("up"), Some(lease)).unwrap();
        s.put(b("/nodes/1/nic"), b("a"), Some(lease)).unwrap();
        put(&mut s, "/volumes/v", "kept");
        s.take_events();

        s.advance_to(t0 + Duration::from_millis(9_999));
        assert_eq!(keys(&s, "/nodes"), ["/nodes/1", "/nodes/1/nic"]);
        assert_eq!(s.next_deadline(), Some(t0 + Duration::from_secs(10)));

        s.advance_to(t0 + Duration::from_secs(10));
        assert!(keys(&s, "/nodes").is_empty());
        assert_eq!(keys(&s, ""), ["/volumes/v"]);
        let events = s.take_events();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].revision, 5);
        assert!(events[0].events.iter().all(|e| e.kind == EventKind::Delete));
        assert_eq!(events[0].events[0].prev_kv.as_ref().unwrap().value, b("up"));
        assert_eq!(s.next_deadline(), None);
        assert_eq!(
            s.lease_keep_alive(t0 + Duration::from_secs(10), lease),
            Err(CoordError::LeaseNotFound(lease))
        );
        assert_eq!(
            s.put(b("/x"), b("v"), Some(lease)),
            Err(CoordError::LeaseNotFound(lease))
        );
    }

    #[test]
    fn keep_alive_extends_ttl() {
        let mut s = Store::default();
        let t0 = Instant::now();
        let ttl = Duration::from_secs(5);
        let lease = s.lease_grant(t0, ttl).unwrap().id;
        s.put(b("/alive"), b("1"), Some(lease)).unwrap();
        // Renew every 4 s for 40 s: never expires.
        for i in 1..=10 {
            let now = t0 + Duration::from_secs(4 * i);
            assert_eq!(s.lease_keep_alive(now, lease).unwrap().ttl, ttl);
            assert_eq!(s.lease_time_to_live(now, lease).unwrap().remaining, ttl);
        }
        let last = t0 + Duration::from_secs(40);
        let info = s
            .lease_time_to_live(last + Duration::from_secs(2), lease)
            .unwrap();
        assert_eq!(info.remaining, Duration::from_secs(3));
        assert_eq!(info.keys, [b("/alive")]);
        s.advance_to(last + Duration::from_millis(4_999));
        assert_eq!(keys(&s, "/alive"), ["/alive"]);
        // Stop renewing: gone 5 s after the last renewal.
        s.advance_to(last + ttl);
        assert!(keys(&s, "/alive").is_empty());
    }

    #[test]
    fn revoke_deletes_keys_and_a_put_without_lease_detaches() {
        let mut s = Store::default();
        let t0 = Instant::now();
        let lease = s.lease_grant(t0, Duration::from_secs(60)).unwrap().id;
        s.put(b("/a"), b("1"), Some(lease)).unwrap();
        s.put(b("/b"), b("1"), Some(lease)).unwrap();
        s.put(b("/b"), b("2"), None).unwrap();
        assert_eq!(s.lease_time_to_live(t0, lease).unwrap().keys, [b("/a")]);
        let r = s.lease_revoke(t0, lease).unwrap();
        assert_eq!(r.revision, 5);
        assert_eq!(keys(&s, "/"), ["/b"]);
        assert_eq!(
            s.lease_revoke(t0, lease),
            Err(CoordError::LeaseNotFound(lease))
        );
        // Revoking an empty lease makes no revision.
        let empty = s.lease_grant(t0, Duration::from_secs(1)).unwrap().id;
        assert_eq!(s.lease_revoke(t0, empty).unwrap().revision, 5);
    }

    #[test]
    fn leases_expire_in_deadline_order_each_at_its_own_revision() {
        let mut s = Store::default();
        let t0 = Instant::now();
        let late = s.lease_grant(t0, Duration::from_secs(3)).unwrap().id;
        let early = s.lease_grant(t0, Duration::from_secs(2)).unwrap().id;
        s.put(b("/late"), b("x"), Some(late)).unwrap();
        s.put(b("/early"), b("x"), Some(early)).unwrap();
        s.take_events();
        s.advance_to(t0 + Duration::from_secs(60));
        let events = s.take_events();
        let order: Vec<(Revision, &[u8])> = events
            .iter()
            .map(|r| (r.revision, r.events[0].kv.key.as_ref()))
            .collect();
        assert_eq!(order, [(4, &b"/early"[..]), (5, &b"/late"[..])]);
    }

    #[test]
    fn time_going_backwards_is_ignored() {
        let mut s = Store::default();
        let t0 = Instant::now();
        let lease = s
            .lease_grant(t0 + Duration::from_secs(10), Duration::from_secs(5))
            .unwrap();
        s.advance_to(t0);
        assert_eq!(s.next_deadline(), Some(t0 + Duration::from_secs(15)));
        assert!(s.lease_keep_alive(t0, lease.id).is_ok());
        assert_eq!(s.next_deadline(), Some(t0 + Duration::from_secs(15)));
    }

    #[test]
    fn history_is_trimmed_by_revisions_and_bytes_and_compact() {
        let mut s = Store::new(StoreConfig {
            history_revisions: 3,
            history_bytes: usize::MAX,
        });
        for i in 0..5 {
            put(&mut s, "/k", &i.to_string());
        }
        assert_eq!(s.revision(), 6);
        assert_eq!(s.compact_revision(), 4);
        assert_eq!(
            s.history_from(4)
                .unwrap()
                .map(|r| r.revision)
                .collect::<Vec<_>>(),
            [4, 5, 6]
        );
        assert_eq!(
            s.history_from(3).err(),
            Some(CoordError::Compacted {
                requested: 3,
                compact_revision: 4
            })
        );
        s.compact(6).unwrap();
        assert_eq!(s.history_from(6).unwrap().count(), 1);
        assert!(matches!(s.compact(6), Err(CoordError::Compacted { .. })));
        assert!(matches!(
            s.compact(7),
            Err(CoordError::FutureRevision { .. })
        ));

        let mut s = Store::new(StoreConfig {
            history_revisions: 100,
            history_bytes: 1000,
        });
        for _ in 0..10 {
            s.put(b("/k"), Bytes::from(vec![b'x'; 300]), None).unwrap();
        }
        // Each revision counts the value and the previous value: at most one fits.
        assert_eq!(s.compact_revision(), 11);
        assert_eq!(s.history_from(11).unwrap().count(), 1);
    }
}
