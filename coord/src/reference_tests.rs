//! The store against a deliberately naive reference model: a map scanned in full
//! for every range, leases found by scanning keys, expiry by searching for the
//! earliest due lease. A random sequence of puts, deletes, transactions and lease
//! operations, with time passing in between, must give the same answers, the same
//! final state and the same revision history (what watchers see) in both.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;

use crate::error::CoordError;
use crate::store::{Store, StoreConfig};
use crate::types::{
    Compare, CompareOp, CompareTarget, EventKind, KeyRange, KeyValue, LeaseId, Txn, TxnOp,
    TxnOpResponse,
};

#[derive(Debug, Clone, PartialEq, Eq)]
struct MKv {
    key: Vec<u8>,
    value: Vec<u8>,
    create: i64,
    modr: i64,
    version: i64,
    lease: Option<i64>,
}

fn from_kv(kv: &KeyValue) -> MKv {
    MKv {
        key: kv.key.to_vec(),
        value: kv.value.to_vec(),
        create: kv.create_revision,
        modr: kv.mod_revision,
        version: kv.version,
        lease: kv.lease.map(|l| l.0),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct MEvent {
    put: bool,
    kv: MKv,
    prev: Option<MKv>,
}

#[derive(Debug, Clone)]
enum MRange {
    Key(Vec<u8>),
    Prefix(Vec<u8>),
}

impl MRange {
    fn contains(&self, key: &[u8]) -> bool {
        match self {
            MRange::Key(k) => k == key,
            MRange::Prefix(p) => key.starts_with(p),
        }
    }

    fn to_range(&self) -> KeyRange {
        match self {
            MRange::Key(k) => KeyRange::Key(Bytes::from(k.clone())),
            MRange::Prefix(p) => KeyRange::Prefix(Bytes::from(p.clone())),
        }
    }
}

#[derive(Debug, Clone)]
enum MOp {
    Get(MRange),
    Put(Vec<u8>, Vec<u8>, Option<i64>),
    Delete(MRange),
}

#[derive(Debug, Clone)]
enum MTarget {
    Version(i64),
    Create(i64),
    Mod(i64),
    Value(Vec<u8>),
}

#[derive(Debug, Clone)]
struct MCompare {
    key: Vec<u8>,
    op: CompareOp,
    target: MTarget,
}

#[derive(Debug, Clone)]
enum Action {
    Put(Vec<u8>, Vec<u8>, Option<i64>),
    Delete(MRange),
    Txn(Vec<MCompare>, Vec<MOp>, Vec<MOp>),
    Grant(u64),
    KeepAlive(i64),
    Revoke(i64),
    Advance(u64),
}

/// An answer, in a form both sides produce.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Out {
    Get(i64, Vec<MKv>),
    Put(i64, Option<MKv>),
    Delete(i64, Vec<MKv>),
    Txn(bool, i64, Vec<Out>),
    Lease(i64),
    Revoke(i64),
    Err(CoordError),
}

#[derive(Debug, Default)]
struct Model {
    kvs: BTreeMap<Vec<u8>, MKv>,
    revision: i64,
    history: Vec<(i64, Vec<MEvent>)>,
    /// id -> (ttl, deadline), in milliseconds.
    leases: BTreeMap<i64, (u64, u64)>,
    next_lease: i64,
    now: u64,
}

fn cmp_holds<T: Ord + ?Sized>(op: CompareOp, a: &T, b: &T) -> bool {
    match op {
        CompareOp::Equal => a == b,
        CompareOp::NotEqual => a != b,
        CompareOp::Greater => a > b,
        CompareOp::Less => a < b,
    }
}

impl Model {
    fn new() -> Self {
        Model {
            revision: 1,
            next_lease: 1,
            ..Model::default()
        }
    }

    fn matching(&self, range: &MRange) -> Vec<MKv> {
        self.kvs
            .values()
            .filter(|kv| range.contains(&kv.key))
            .cloned()
            .collect()
    }

    fn do_put(
        &mut self,
        rev: i64,
        events: &mut Vec<MEvent>,
        key: &[u8],
        value: &[u8],
        lease: Option<i64>,
    ) -> Out {
        let prev = self.kvs.get(key).cloned();
        let kv = MKv {
            key: key.to_vec(),
            value: value.to_vec(),
            create: prev.as_ref().map_or(rev, |p| p.create),
            modr: rev,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            lease,
        };
        self.kvs.insert(key.to_vec(), kv.clone());
        events.push(MEvent {
            put: true,
            kv,
            prev: prev.clone(),
        });
        Out::Put(rev, prev)
    }

    fn do_delete(&mut self, rev: i64, events: &mut Vec<MEvent>, range: &MRange) -> Vec<MKv> {
        let gone = self.matching(range);
        for prev in &gone {
            self.kvs.remove(&prev.key);
            let kv = MKv {
                key: prev.key.clone(),
                value: vec![],
                create: 0,
                modr: rev,
                version: 0,
                lease: None,
            };
            events.push(MEvent {
                put: false,
                kv,
                prev: Some(prev.clone()),
            });
        }
        gone
    }

    fn commit(&mut self, rev: i64, events: Vec<MEvent>) {
        if !events.is_empty() {
            self.revision = rev;
            self.history.push((rev, events));
        }
    }

    fn expire(&mut self) {
        loop {
            let due = self
                .leases
                .iter()
                .filter(|(_, &(_, deadline))| deadline <= self.now)
                .min_by_key(|(&id, &(_, deadline))| (deadline, id))
                .map(|(&id, _)| id);
            let Some(id) = due else { break };
            self.end_lease(id);
        }
    }

    fn end_lease(&mut self, id: i64) {
        self.leases.remove(&id);
        let keys: Vec<Vec<u8>> = self
            .kvs
            .values()
            .filter(|kv| kv.lease == Some(id))
            .map(|kv| kv.key.clone())
            .collect();
        let rev = self.revision + 1;
        let mut events = Vec::new();
        for key in keys {
            self.do_delete(rev, &mut events, &MRange::Key(key));
        }
        self.commit(rev, events);
    }

    fn duplicate(branch: &[MOp]) -> Option<Vec<u8>> {
        let mut puts = BTreeSet::new();
        let mut deletes: Vec<&MRange> = Vec::new();
        for op in branch {
            match op {
                MOp::Get(_) => {}
                MOp::Put(key, _, _) => {
                    if !puts.insert(key.clone()) || deletes.iter().any(|d| d.contains(key)) {
                        return Some(key.clone());
                    }
                }
                MOp::Delete(range) => {
                    if let Some(k) = puts.iter().find(|k| range.contains(k)) {
                        return Some(k.clone());
                    }
                    deletes.push(range);
                }
            }
        }
        None
    }

    fn apply(&mut self, action: &Action) -> Out {
        self.expire();
        match action {
            Action::Put(key, value, lease) => {
                if let Some(l) = lease.filter(|l| !self.leases.contains_key(l)) {
                    return Out::Err(CoordError::LeaseNotFound(LeaseId(l)));
                }
                let rev = self.revision + 1;
                let mut events = Vec::new();
                let out = self.do_put(rev, &mut events, key, value, *lease);
                self.commit(rev, events);
                out
            }
            Action::Delete(range) => {
                let rev = self.revision + 1;
                let mut events = Vec::new();
                let gone = self.do_delete(rev, &mut events, range);
                self.commit(rev, events);
                Out::Delete(self.revision, gone)
            }
            Action::Txn(compares, success, failure) => {
                for branch in [success, failure] {
                    if let Some(key) = Model::duplicate(branch) {
                        return Out::Err(CoordError::DuplicateKey(Bytes::from(key)));
                    }
                }
                let ok = compares.iter().all(|c| {
                    let cur = self.kvs.get(&c.key);
                    match &c.target {
                        MTarget::Value(v) => cur.is_some_and(|kv| cmp_holds(c.op, &kv.value, v)),
                        MTarget::Version(n) => cmp_holds(c.op, &cur.map_or(0, |kv| kv.version), n),
                        MTarget::Create(n) => cmp_holds(c.op, &cur.map_or(0, |kv| kv.create), n),
                        MTarget::Mod(n) => cmp_holds(c.op, &cur.map_or(0, |kv| kv.modr), n),
                    }
                });
                let ops = if ok { success } else { failure };
                for op in ops {
                    if let MOp::Put(_, _, Some(l)) = op {
                        if !self.leases.contains_key(l) {
                            return Out::Err(CoordError::LeaseNotFound(LeaseId(*l)));
                        }
                    }
                }
                let rev = self.revision + 1;
                let mut events = Vec::new();
                let mut outs = Vec::new();
                for op in ops {
                    outs.push(match op {
                        MOp::Get(range) => Out::Get(0, self.matching(range)),
                        MOp::Put(k, v, l) => self.do_put(rev, &mut events, k, v, *l),
                        MOp::Delete(range) => {
                            Out::Delete(0, self.do_delete(rev, &mut events, range))
                        }
                    });
                }
                self.commit(rev, events);
                let final_rev = self.revision;
                let outs = outs
                    .into_iter()
                    .map(|o| match o {
                        Out::Get(_, kvs) => Out::Get(final_rev, kvs),
                        Out::Put(_, prev) => Out::Put(final_rev, prev),
                        Out::Delete(_, prev) => Out::Delete(final_rev, prev),
                        other => other,
                    })
                    .collect();
                Out::Txn(ok, final_rev, outs)
            }
            Action::Grant(ttl) => {
                let id = self.next_lease;
                self.next_lease += 1;
                self.leases.insert(id, (*ttl, self.now + ttl));
                Out::Lease(id)
            }
            Action::KeepAlive(id) => match self.leases.get_mut(id) {
                Some((ttl, deadline)) => {
                    *deadline = self.now + *ttl;
                    Out::Lease(*id)
                }
                None => Out::Err(CoordError::LeaseNotFound(LeaseId(*id))),
            },
            Action::Revoke(id) => {
                if !self.leases.contains_key(id) {
                    return Out::Err(CoordError::LeaseNotFound(LeaseId(*id)));
                }
                self.end_lease(*id);
                Out::Revoke(self.revision)
            }
            Action::Advance(ms) => {
                self.now += ms;
                self.expire();
                Out::Revoke(self.revision)
            }
        }
    }
}

fn to_op(op: &MOp) -> TxnOp {
    match op {
        MOp::Get(r) => TxnOp::Get(r.to_range()),
        MOp::Put(k, v, l) => TxnOp::put(k.clone(), v.clone(), l.map(LeaseId)),
        MOp::Delete(r) => TxnOp::Delete(r.to_range()),
    }
}

fn to_compare(c: &MCompare) -> Compare {
    let target = match &c.target {
        MTarget::Version(n) => CompareTarget::Version(*n),
        MTarget::Create(n) => CompareTarget::CreateRevision(*n),
        MTarget::Mod(n) => CompareTarget::ModRevision(*n),
        MTarget::Value(v) => CompareTarget::Value(Bytes::from(v.clone())),
    };
    Compare {
        key: Bytes::from(c.key.clone()),
        op: c.op,
        target,
    }
}

fn txn_out(r: &TxnOpResponse) -> Out {
    match r {
        TxnOpResponse::Get(g) => Out::Get(g.revision, g.kvs.iter().map(from_kv).collect()),
        TxnOpResponse::Put(p) => Out::Put(p.revision, p.prev_kv.as_ref().map(from_kv)),
        TxnOpResponse::Delete(d) => {
            Out::Delete(d.revision, d.prev_kvs.iter().map(from_kv).collect())
        }
    }
}

/// Applies `action` to the store as the embedded driver would: time first.
fn apply_store(store: &mut Store, t0: Instant, now: &mut u64, action: &Action) -> Out {
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    store.advance_to(at(*now));
    let out = match action {
        Action::Put(k, v, l) => store
            .put(
                Bytes::from(k.clone()),
                Bytes::from(v.clone()),
                l.map(LeaseId),
            )
            .map(|p| Out::Put(p.revision, p.prev_kv.as_ref().map(from_kv))),
        Action::Delete(r) => store
            .delete(&r.to_range())
            .map(|d| Out::Delete(d.revision, d.prev_kvs.iter().map(from_kv).collect())),
        Action::Txn(c, s, f) => {
            let txn = Txn::new()
                .when(c.iter().map(to_compare))
                .and_then(s.iter().map(to_op))
                .or_else(f.iter().map(to_op));
            store.txn(&txn).map(|t| {
                Out::Txn(
                    t.succeeded,
                    t.revision,
                    t.responses.iter().map(txn_out).collect(),
                )
            })
        }
        Action::Grant(ttl) => store
            .lease_grant(at(*now), Duration::from_millis(*ttl))
            .map(|g| Out::Lease(g.id.0)),
        Action::KeepAlive(id) => store
            .lease_keep_alive(at(*now), LeaseId(*id))
            .map(|k| Out::Lease(k.id.0)),
        Action::Revoke(id) => store
            .lease_revoke(at(*now), LeaseId(*id))
            .map(|r| Out::Revoke(r.revision)),
        Action::Advance(ms) => {
            *now += ms;
            store.advance_to(at(*now));
            Ok(Out::Revoke(store.revision()))
        }
    };
    out.unwrap_or_else(Out::Err)
}

const KEYS: [&str; 6] = ["a", "a/1", "a/2", "b", "b/1", "c"];
const PREFIXES: [&str; 4] = ["", "a", "a/", "b"];

fn key() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(&KEYS[..]).prop_map(|k| k.as_bytes().to_vec())
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    (0u8..4).prop_map(|v| vec![b'0' + v])
}

fn lease() -> impl Strategy<Value = Option<i64>> {
    prop_oneof![2 => Just(None), 1 => (1i64..5).prop_map(Some)]
}

fn range() -> impl Strategy<Value = MRange> {
    prop_oneof![
        3 => key().prop_map(MRange::Key),
        1 => prop::sample::select(&PREFIXES[..]).prop_map(|p| MRange::Prefix(p.as_bytes().to_vec())),
    ]
}

fn op() -> impl Strategy<Value = MOp> {
    prop_oneof![
        1 => range().prop_map(MOp::Get),
        3 => (key(), value(), lease()).prop_map(|(k, v, l)| MOp::Put(k, v, l)),
        1 => range().prop_map(MOp::Delete),
    ]
}

fn compare() -> impl Strategy<Value = MCompare> {
    let op = prop::sample::select(
        &[
            CompareOp::Equal,
            CompareOp::NotEqual,
            CompareOp::Greater,
            CompareOp::Less,
        ][..],
    );
    let target = prop_oneof![
        (0i64..4).prop_map(MTarget::Version),
        (0i64..30).prop_map(MTarget::Create),
        (0i64..30).prop_map(MTarget::Mod),
        value().prop_map(MTarget::Value),
    ];
    (key(), op, target).prop_map(|(key, op, target)| MCompare { key, op, target })
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        4 => (key(), value(), lease()).prop_map(|(k, v, l)| Action::Put(k, v, l)),
        2 => range().prop_map(Action::Delete),
        3 => (
            prop::collection::vec(compare(), 0..3),
            prop::collection::vec(op(), 0..4),
            prop::collection::vec(op(), 0..4)
        )
            .prop_map(|(c, s, f)| Action::Txn(c, s, f)),
        1 => (1u64..5_000).prop_map(Action::Grant),
        1 => (1i64..5).prop_map(Action::KeepAlive),
        1 => (1i64..5).prop_map(Action::Revoke),
        2 => (0u64..3_000).prop_map(Action::Advance),
    ]
}

proptest! {
    #[test]
    fn store_matches_reference_model(actions in prop::collection::vec(action(), 1..60)) {
        let config = StoreConfig { history_revisions: usize::MAX, history_bytes: usize::MAX };
        let mut store = Store::new(config);
        let mut model = Model::new();
        let t0 = Instant::now();
        let mut now = 0;
        let mut delivered = Vec::new();
        for action in &actions {
            let got = apply_store(&mut store, t0, &mut now, action);
            let want = model.apply(action);
            prop_assert_eq!(got, want, "answer to {:?}", action);
            delivered.extend(store.take_events());
        }
        prop_assert_eq!(store.revision(), model.revision);
        let state: Vec<MKv> = store.get(&KeyRange::all()).kvs.iter().map(from_kv).collect();
        prop_assert_eq!(state, model.kvs.values().cloned().collect::<Vec<_>>());

        // History: what a watcher from revision 1 would replay ...
        let history: Vec<(i64, Vec<MEvent>)> = store
            .history_from(1)
            .unwrap()
            .map(|r| {
                let events = r
                    .events
                    .iter()
                    .map(|e| MEvent { put: e.kind == EventKind::Put, kv: from_kv(&e.kv), prev: e.prev_kv.as_ref().map(from_kv) })
                    .collect();
                (r.revision, events)
            })
            .collect();
        prop_assert_eq!(&history, &model.history);
        // ... is exactly what was handed to live watchers, revision by revision.
        let live: Vec<i64> = delivered.iter().map(|r| r.revision).collect();
        prop_assert_eq!(live, model.history.iter().map(|(r, _)| *r).collect::<Vec<_>>());
        prop_assert!(history.iter().all(|(rev, events)| events.iter().all(|e| e.kv.modr == *rev)));

        // Leases: the same ones alive, with the same keys and time left.
        let at = t0 + Duration::from_millis(now);
        for id in 1..model.next_lease {
            let got = store.lease_time_to_live(at, LeaseId(id)).ok().map(|info| {
                (info.remaining, info.keys.iter().map(|k| k.to_vec()).collect::<Vec<_>>())
            });
            let want = model.leases.get(&id).map(|&(_, deadline)| {
                let keys = model.kvs.values().filter(|kv| kv.lease == Some(id)).map(|kv| kv.key.clone()).collect();
                (Duration::from_millis(deadline - now), keys)
            });
            prop_assert_eq!(got, want, "lease {}", id);
        }
    }
}
