//! The data model, shaped after etcd v3 (`mvccpb.KeyValue`, `mvccpb.Event`,
//! `etcdserverpb.Compare`, `RequestOp`, `ResponseOp`), so that an etcd implementation
//! can translate each type field by field (docs/coordinator.md).

use std::time::Duration;

use bytes::Bytes;

/// A point in the store's history. Like etcd, the store starts at revision 1 and
/// every change (a put, a delete that removed something, a transaction that wrote,
/// a lease expiry or revoke that deleted keys) makes exactly one new revision.
/// `i64` because etcd's revisions are `int64` on the wire.
pub type Revision = i64;

/// How many times a key has been put since it was (re)created; 0 means absent.
/// etcd's `KeyValue.version`.
pub type Version = i64;

/// A lease handle. etcd lease ids are non-zero `int64`; zero means "no lease", which
/// we spell `Option<LeaseId>` instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseId(pub i64);

impl std::fmt::Display for LeaseId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

/// One key with its value and history counters (etcd's `mvccpb.KeyValue`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: Bytes,
    /// The value; empty in the `kv` of a delete event.
    pub value: Bytes,
    /// Revision of the put that created the key (since its last deletion); 0 in a
    /// delete event.
    pub create_revision: Revision,
    /// Revision of the last change: the basis of compare-and-set. In a delete event,
    /// the revision of the delete.
    pub mod_revision: Revision,
    /// Puts since creation, starting at 1; 0 in a delete event.
    pub version: Version,
    /// The lease the key is attached to; it is deleted when that lease ends.
    pub lease: Option<LeaseId>,
}

/// The keys an operation applies to: one key or every key under a prefix.
/// etcd expresses both as `key` + `range_end` (docs/coordinator.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRange {
    /// Exactly this key.
    Key(Bytes),
    /// Every key that starts with these bytes; the empty prefix is every key.
    Prefix(Bytes),
}

impl KeyRange {
    /// Exactly `key`.
    pub fn key(key: impl Into<Bytes>) -> Self {
        KeyRange::Key(key.into())
    }

    /// Every key starting with `prefix`.
    pub fn prefix(prefix: impl Into<Bytes>) -> Self {
        KeyRange::Prefix(prefix.into())
    }

    /// Every key in the store.
    pub fn all() -> Self {
        KeyRange::Prefix(Bytes::new())
    }

    /// Whether `key` falls in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        match self {
            KeyRange::Key(k) => k.as_ref() == key,
            KeyRange::Prefix(p) => key.starts_with(p),
        }
    }

    /// Whether the two ranges share at least one possible key.
    pub fn overlaps(&self, other: &KeyRange) -> bool {
        match (self, other) {
            (KeyRange::Key(a), b) | (b, KeyRange::Key(a)) => b.contains(a),
            (KeyRange::Prefix(a), KeyRange::Prefix(b)) => a.starts_with(b) || b.starts_with(a),
        }
    }

    /// etcd's `range_end` for this range: `None` for a single key, the prefix with
    /// its last byte below 0xff incremented (and what follows dropped), or `[0]`
    /// ("every key from `key` on") when there is no such byte, as clientv3's
    /// `GetPrefixRangeEnd` does.
    pub fn etcd_range_end(&self) -> Option<Vec<u8>> {
        match self {
            KeyRange::Key(_) => None,
            KeyRange::Prefix(p) => {
                let mut end = p.to_vec();
                while let Some(last) = end.pop() {
                    if last < 0xff {
                        end.push(last + 1);
                        return Some(end);
                    }
                }
                Some(vec![0])
            }
        }
    }
}

/// What a get returns (etcd's `RangeResponse`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetResponse {
    /// The store's revision when the read was made: watch from `revision + 1` to
    /// follow on from this snapshot without missing or repeating a change.
    pub revision: Revision,
    /// The matching keys, in key order.
    pub kvs: Vec<KeyValue>,
}

/// What a put returns (etcd's `PutResponse` with `prev_kv` requested).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutResponse {
    /// The revision the put made.
    pub revision: Revision,
    /// The key as it was before, if it existed.
    pub prev_kv: Option<KeyValue>,
}

/// What a delete returns (etcd's `DeleteRangeResponse` with `prev_kv` requested).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteResponse {
    /// The store's revision after the delete: a new one if anything was deleted,
    /// otherwise unchanged.
    pub revision: Revision,
    /// The deleted keys as they were, in key order.
    pub prev_kvs: Vec<KeyValue>,
}

impl DeleteResponse {
    /// How many keys were deleted.
    pub fn deleted(&self) -> usize {
        self.prev_kvs.len()
    }
}

/// The comparison of a [`Compare`] (etcd's `Compare.CompareResult`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    /// The key's field equals the operand.
    Equal,
    /// The key's field differs from the operand.
    NotEqual,
    /// The key's field is greater than the operand.
    Greater,
    /// The key's field is less than the operand.
    Less,
}

impl CompareOp {
    fn holds<T: Ord + ?Sized>(self, actual: &T, operand: &T) -> bool {
        match self {
            CompareOp::Equal => actual == operand,
            CompareOp::NotEqual => actual != operand,
            CompareOp::Greater => actual > operand,
            CompareOp::Less => actual < operand,
        }
    }
}

/// The field a [`Compare`] looks at, with its operand (etcd's `Compare.target` and
/// `target_union`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompareTarget {
    /// `KeyValue::version` (0 when absent).
    Version(Version),
    /// `KeyValue::create_revision` (0 when absent).
    CreateRevision(Revision),
    /// `KeyValue::mod_revision` (0 when absent).
    ModRevision(Revision),
    /// `KeyValue::value`. Like etcd, a value comparison on an absent key is false
    /// whatever the operator.
    Value(Bytes),
}

/// One condition of a transaction, on one key (etcd's `Compare` without
/// `range_end`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    /// The key looked at.
    pub key: Bytes,
    /// How the field compares to the operand.
    pub op: CompareOp,
    /// The field and the operand.
    pub target: CompareTarget,
}

impl Compare {
    /// `key`'s version `op` `version`.
    pub fn version(key: impl Into<Bytes>, op: CompareOp, version: Version) -> Self {
        Compare {
            key: key.into(),
            op,
            target: CompareTarget::Version(version),
        }
    }

    /// `key`'s create revision `op` `revision`.
    pub fn create_revision(key: impl Into<Bytes>, op: CompareOp, revision: Revision) -> Self {
        Compare {
            key: key.into(),
            op,
            target: CompareTarget::CreateRevision(revision),
        }
    }

    /// `key`'s mod revision `op` `revision`: with `Equal`, "nobody changed it since I
    /// read it at `revision`", the compare of compare-and-set.
    pub fn mod_revision(key: impl Into<Bytes>, op: CompareOp, revision: Revision) -> Self {
        Compare {
            key: key.into(),
            op,
            target: CompareTarget::ModRevision(revision),
        }
    }

    /// `key`'s value `op` `value`.
    pub fn value(key: impl Into<Bytes>, op: CompareOp, value: impl Into<Bytes>) -> Self {
        Compare {
            key: key.into(),
            op,
            target: CompareTarget::Value(value.into()),
        }
    }

    /// `key` does not exist (version == 0, as etcd clients spell it).
    pub fn absent(key: impl Into<Bytes>) -> Self {
        Compare::version(key, CompareOp::Equal, 0)
    }

    /// `key` exists (version > 0).
    pub fn present(key: impl Into<Bytes>) -> Self {
        Compare::version(key, CompareOp::Greater, 0)
    }

    /// Evaluates the condition against the key's current state.
    pub fn holds(&self, current: Option<&KeyValue>) -> bool {
        match (&self.target, current) {
            (CompareTarget::Value(_), None) => false,
            (CompareTarget::Value(v), Some(kv)) => self.op.holds(kv.value.as_ref(), v.as_ref()),
            (CompareTarget::Version(v), kv) => self.op.holds(&kv.map_or(0, |kv| kv.version), v),
            (CompareTarget::CreateRevision(r), kv) => {
                self.op.holds(&kv.map_or(0, |kv| kv.create_revision), r)
            }
            (CompareTarget::ModRevision(r), kv) => {
                self.op.holds(&kv.map_or(0, |kv| kv.mod_revision), r)
            }
        }
    }
}

/// One operation of a transaction branch (etcd's `RequestOp`, without nested
/// transactions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    /// Read keys; sees the writes made earlier in the same branch.
    Get(KeyRange),
    /// Write a key, attached to the lease if given.
    Put {
        /// The key.
        key: Bytes,
        /// The new value.
        value: Bytes,
        /// The lease to attach the key to; `None` detaches it from any lease.
        lease: Option<LeaseId>,
    },
    /// Delete keys.
    Delete(KeyRange),
}

impl TxnOp {
    /// A get of `range`.
    pub fn get(range: KeyRange) -> Self {
        TxnOp::Get(range)
    }

    /// A put of `key` = `value`.
    pub fn put(key: impl Into<Bytes>, value: impl Into<Bytes>, lease: Option<LeaseId>) -> Self {
        TxnOp::Put {
            key: key.into(),
            value: value.into(),
            lease,
        }
    }

    /// A delete of `range`.
    pub fn delete(range: KeyRange) -> Self {
        TxnOp::Delete(range)
    }
}

/// An atomic transaction: if every compare holds, run `success`, else `failure`
/// (etcd's `TxnRequest`). All writes of the branch share one new revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    /// Conditions, all of which must hold.
    pub compare: Vec<Compare>,
    /// Run when every compare holds.
    pub success: Vec<TxnOp>,
    /// Run otherwise.
    pub failure: Vec<TxnOp>,
}

impl Txn {
    /// An empty transaction (no compares: the success branch runs).
    pub fn new() -> Self {
        Txn::default()
    }

    /// Adds conditions.
    pub fn when(mut self, compares: impl IntoIterator<Item = Compare>) -> Self {
        self.compare.extend(compares);
        self
    }

    /// Adds operations to the success branch.
    pub fn and_then(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Self {
        self.success.extend(ops);
        self
    }

    /// Adds operations to the failure branch.
    pub fn or_else(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Self {
        self.failure.extend(ops);
        self
    }
}

/// The result of one [`TxnOp`] (etcd's `ResponseOp`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOpResponse {
    /// Result of [`TxnOp::Get`].
    Get(GetResponse),
    /// Result of [`TxnOp::Put`].
    Put(PutResponse),
    /// Result of [`TxnOp::Delete`].
    Delete(DeleteResponse),
}

/// What a transaction returns (etcd's `TxnResponse`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnResponse {
    /// Whether every compare held (the success branch ran).
    pub succeeded: bool,
    /// The store's revision after the transaction: new if the branch wrote.
    pub revision: Revision,
    /// One response per operation of the branch that ran, in order.
    pub responses: Vec<TxnOpResponse>,
}

/// A granted lease (etcd's `LeaseGrantResponse`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseGrant {
    /// The new lease.
    pub id: LeaseId,
    /// Its time to live; every keep-alive restarts it.
    pub ttl: Duration,
}

/// A renewed lease (etcd's `LeaseKeepAliveResponse`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseKeepAlive {
    /// The lease.
    pub id: LeaseId,
    /// The time it now has left, the full granted TTL.
    pub ttl: Duration,
}

/// A lease's state (etcd's `LeaseTimeToLiveResponse` with keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseInfo {
    /// The lease.
    pub id: LeaseId,
    /// The TTL it was granted with.
    pub granted_ttl: Duration,
    /// The time left before it expires.
    pub remaining: Duration,
    /// The keys attached to it, in key order.
    pub keys: Vec<Bytes>,
}

/// What a revoke returns (etcd's `LeaseRevokeResponse`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseRevoke {
    /// The store's revision after the revoke: new if it deleted keys.
    pub revision: Revision,
}

/// Whether an event wrote or removed its key (etcd's `Event.EventType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The key was created or changed.
    Put,
    /// The key was deleted, explicitly or by the end of its lease.
    Delete,
}

/// One change to one key (etcd's `mvccpb.Event` with `prev_kv`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// The key after the change; for a delete only `key` and `mod_revision` (the
    /// revision of the delete) are set, as in etcd.
    pub kv: KeyValue,
    /// The key before the change, if it existed.
    pub prev_kv: Option<KeyValue>,
}

impl Event {
    /// The revision that made the change.
    pub fn revision(&self) -> Revision {
        self.kv.mod_revision
    }
}

/// The changes of one revision that match a watcher's range, in key order for a
/// lease expiry or a delete of a prefix and in operation order for a transaction
/// (etcd's `WatchResponse`, which also groups events by revision).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchResponse {
    /// The revision every event here was made at.
    pub revision: Revision,
    /// The matching changes; never empty.
    pub events: Vec<Event>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_range_end_increments_last_byte_below_ff() {
        assert_eq!(
            KeyRange::prefix("/a/").etcd_range_end(),
            Some(b"/a0".to_vec())
        );
        assert_eq!(
            KeyRange::prefix(&b"a\xff\xff"[..]).etcd_range_end(),
            Some(b"b".to_vec())
        );
        assert_eq!(
            KeyRange::prefix(&b"\xff"[..]).etcd_range_end(),
            Some(vec![0])
        );
        assert_eq!(KeyRange::all().etcd_range_end(), Some(vec![0]));
        assert_eq!(KeyRange::key("k").etcd_range_end(), None);
    }

    #[test]
    fn ranges_overlap_only_when_a_key_can_be_in_both() {
        assert!(KeyRange::prefix("/a").overlaps(&KeyRange::key("/ab")));
        assert!(KeyRange::key("/ab").overlaps(&KeyRange::prefix("/a")));
        assert!(!KeyRange::key("/b").overlaps(&KeyRange::prefix("/a")));
        assert!(KeyRange::prefix("/a").overlaps(&KeyRange::prefix("/a/b")));
        assert!(!KeyRange::prefix("/a").overlaps(&KeyRange::prefix("/b")));
        assert!(!KeyRange::key("/a").overlaps(&KeyRange::key("/b")));
        assert!(KeyRange::all().overlaps(&KeyRange::key("x")));
    }

    #[test]
    fn value_compare_on_absent_key_is_false_for_every_operator() {
        for op in [
            CompareOp::Equal,
            CompareOp::NotEqual,
            CompareOp::Greater,
            CompareOp::Less,
        ] {
            assert!(!Compare::value("k", op, "v").holds(None));
        }
        assert!(Compare::absent("k").holds(None));
        assert!(Compare::mod_revision("k", CompareOp::Equal, 0).holds(None));
        assert!(!Compare::present("k").holds(None));
    }
}
