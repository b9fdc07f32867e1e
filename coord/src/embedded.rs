//! The embedded coordinator: the [`Store`] behind a mutex, in this process, for a
//! lab cluster of several nodes in one process. Cheap to clone (an `Arc`); every
//! clone is the same store.
//!
//! It is a thin driver over the sans-IO store. Each call locks the store, first
//! passes it the current time (so an expired lease is never visible), runs the
//! operation, and hands the resulting changes to the watchers before unlocking, so
//! every watcher sees changes in revision order. A background task, started with
//! the first lease, sleeps until the next lease deadline so that expiry reaches
//! watchers on time even when nobody calls. Time is tokio's, so tests under
//! `tokio::time::pause()` are deterministic.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::coordinator::{CoordFuture, Coordinator};
use crate::error::CoordError;
use crate::store::{Store, StoreConfig};
use crate::types::{
    DeleteResponse, GetResponse, KeyRange, LeaseGrant, LeaseId, LeaseInfo, LeaseKeepAlive,
    LeaseRevoke, PutResponse, Revision, Txn, TxnResponse, WatchResponse,
};
use crate::watch::{watch_channel, Watch, WatchSender, WATCH_CHANNEL_CAPACITY};

/// How the embedded coordinator is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmbeddedConfig {
    /// History kept for watches that start in the past.
    pub store: StoreConfig,
    /// Live responses queued per watcher before it is cut off as lagging.
    pub watch_capacity: usize,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        EmbeddedConfig {
            store: StoreConfig::default(),
            watch_capacity: WATCH_CHANNEL_CAPACITY,
        }
    }
}

/// The in-process coordinator. See the module documentation.
#[derive(Debug, Clone)]
pub struct EmbeddedCoordinator {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    /// Wakes the expiry task: a lease deadline may have moved earlier, or the
    /// coordinator is gone.
    timer: Arc<Notify>,
    /// Whether the expiry task runs.
    timer_started: AtomicBool,
    watch_capacity: usize,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Lets the expiry task see that the coordinator is gone and end.
        self.timer.notify_one();
    }
}

#[derive(Debug)]
struct State {
    store: Store,
    watchers: Vec<Watcher>,
}

#[derive(Debug)]
struct Watcher {
    range: KeyRange,
    /// Responses before this revision are not for this watcher (a watch may start
    /// in the future).
    start_revision: Revision,
    tx: WatchSender,
}

/// The current time on tokio's clock (paused and advanced in tests).
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

impl State {
    /// Brings the store up to `now` and hands all changes to the watchers.
    fn advance(&mut self, now: Instant) {
        self.store.advance_to(now);
        self.dispatch();
    }

    fn dispatch(&mut self) {
        let responses = self.store.take_events();
        self.watchers.retain(|w| !w.tx.is_closed());
        for response in responses {
            self.watchers
                .retain(|w| match filter(&response, &w.range, w.start_revision) {
                    Some(matching) => w.tx.deliver(matching),
                    None => true,
                });
        }
    }
}

/// The part of `response` that a watcher of `range` from `start_revision` asked
/// for, if any.
fn filter(
    response: &WatchResponse,
    range: &KeyRange,
    start_revision: Revision,
) -> Option<WatchResponse> {
    if response.revision < start_revision {
        return None;
    }
    let events: Vec<_> = response
        .events
        .iter()
        .filter(|e| range.contains(&e.kv.key))
        .cloned()
        .collect();
    (!events.is_empty()).then_some(WatchResponse {
        revision: response.revision,
        events,
    })
}

impl Default for EmbeddedCoordinator {
    fn default() -> Self {
        EmbeddedCoordinator::new(EmbeddedConfig::default())
    }
}

impl EmbeddedCoordinator {
    /// An empty coordinator at revision 1. Needs no runtime to create; lease
    /// expiry runs on the tokio runtime of the first `lease_grant`.
    pub fn new(config: EmbeddedConfig) -> Self {
        EmbeddedCoordinator {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    store: Store::new(config.store),
                    watchers: Vec::new(),
                }),
                timer: Arc::new(Notify::new()),
                timer_started: AtomicBool::new(false),
                watch_capacity: config.watch_capacity,
            }),
        }
    }

    /// Runs `op` on the store brought up to now, then delivers its changes.
    fn with_store<T>(&self, op: impl FnOnce(&mut Store, Instant) -> T) -> T {
        let mut state = self.inner.state.lock();
        let now = now();
        state.store.advance_to(now);
        let out = op(&mut state.store, now);
        state.dispatch();
        out
    }

    /// Wakes (starting if need be) the task that expires leases on time.
    fn kick_timer(&self) {
        if !self.inner.timer_started.swap(true, Ordering::AcqRel) {
            tokio::spawn(expire_leases(
                Arc::downgrade(&self.inner),
                self.inner.timer.clone(),
            ));
        }
        self.inner.timer.notify_one();
    }

    fn open_watch(
        &self,
        range: KeyRange,
        start_revision: Option<Revision>,
    ) -> Result<Watch, CoordError> {
        let mut state = self.inner.state.lock();
        state.advance(now());
        let start = match start_revision {
            Some(start) => start.max(1),
            None => state.store.revision() + 1,
        };
        let backlog: VecDeque<WatchResponse> = state
            .store
            .history_from(start)?
            .filter_map(|r| filter(r, &range, start))
            .collect();
        let (tx, watch) = watch_channel(self.inner.watch_capacity, backlog);
        state.watchers.push(Watcher {
            range,
            start_revision: start,
            tx,
        });
        Ok(watch)
    }
}

/// Sleeps until the next lease deadline (or a wake-up) and expires what is due;
/// ends when the coordinator is dropped.
async fn expire_leases(inner: Weak<Inner>, timer: Arc<Notify>) {
    loop {
        let deadline = {
            let Some(inner) = inner.upgrade() else { return };
            let mut state = inner.state.lock();
            state.advance(now());
            state.store.next_deadline()
        };
        match deadline {
            Some(deadline) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => {}
                    _ = timer.notified() => {}
                }
            }
            None => timer.notified().await,
        }
    }
}

impl Coordinator for EmbeddedCoordinator {
    fn get(&self, range: KeyRange) -> CoordFuture<'_, GetResponse> {
        Box::pin(async move { Ok(self.with_store(|s, _| s.get(&range))) })
    }

    fn put(
        &self,
        key: Bytes,
        value: Bytes,
        lease: Option<LeaseId>,
    ) -> CoordFuture<'_, PutResponse> {
        Box::pin(async move { self.with_store(|s, _| s.put(key, value, lease)) })
    }

    fn delete(&self, range: KeyRange) -> CoordFuture<'_, DeleteResponse> {
        Box::pin(async move { self.with_store(|s, _| s.delete(&range)) })
    }

    fn txn(&self, txn: Txn) -> CoordFuture<'_, TxnResponse> {
        Box::pin(async move { self.with_store(|s, _| s.txn(&txn)) })
    }

    fn compact(&self, revision: Revision) -> CoordFuture<'_, ()> {
        Box::pin(async move { self.with_store(|s, _| s.compact(revision)) })
    }

    fn lease_grant(&self, ttl: Duration) -> CoordFuture<'_, LeaseGrant> {
        Box::pin(async move {
            let grant = self.with_store(|s, now| s.lease_grant(now, ttl))?;
            self.kick_timer();
            Ok(grant)
        })
    }

    fn lease_keep_alive(&self, lease: LeaseId) -> CoordFuture<'_, LeaseKeepAlive> {
        // The deadline only moves later: the timer need not be woken.
        Box::pin(async move { self.with_store(|s, now| s.lease_keep_alive(now, lease)) })
    }

    fn lease_revoke(&self, lease: LeaseId) -> CoordFuture<'_, LeaseRevoke> {
        Box::pin(async move { self.with_store(|s, now| s.lease_revoke(now, lease)) })
    }

    fn lease_time_to_live(&self, lease: LeaseId) -> CoordFuture<'_, LeaseInfo> {
        Box::pin(async move { self.with_store(|s, now| s.lease_time_to_live(now, lease)) })
    }

    fn watch(&self, range: KeyRange, start_revision: Option<Revision>) -> CoordFuture<'_, Watch> {
        Box::pin(async move { self.open_watch(range, start_revision) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Compare, CompareOp, EventKind, TxnOp};
    use std::time::Duration;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn coord() -> Arc<dyn Coordinator> {
        Arc::new(EmbeddedCoordinator::default())
    }

    fn summary(r: &WatchResponse) -> Vec<(Revision, EventKind, String)> {
        r.events
            .iter()
            .map(|e| {
                (
                    r.revision,
                    e.kind,
                    String::from_utf8(e.kv.key.to_vec()).unwrap(),
                )
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn lease_expiry_deletes_keys_and_notifies_watchers() {
        let c = coord();
        let start = tokio::time::Instant::now();
        let lease = c.lease_grant(Duration::from_secs(3)).await.unwrap().id;
        c.put(b("/nodes/1"), b("up"), Some(lease)).await.unwrap();
        c.put(b("/nodes/1/nics"), b("2"), Some(lease))
            .await
            .unwrap();
        c.put(b("/nodes/2"), b("up"), None).await.unwrap();
        let mut watch = c.watch(KeyRange::prefix("/nodes/"), None).await.unwrap();

        // Nobody calls the coordinator: the expiry task alone must deliver this,
        // at the deadline (paused time jumps straight to it).
        let expired = watch.recv().await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(3));
        assert_eq!(
            summary(&expired),
            [
                (5, EventKind::Delete, "/nodes/1".to_string()),
                (5, EventKind::Delete, "/nodes/1/nics".to_string())
            ]
        );
        assert_eq!(
            expired.events[0].prev_kv.as_ref().unwrap().lease,
            Some(lease)
        );
        let left = c.get(KeyRange::prefix("/nodes/")).await.unwrap();
        assert_eq!(left.kvs.len(), 1);
        assert_eq!(left.revision, 5);
        assert_eq!(
            c.lease_keep_alive(lease).await,
            Err(CoordError::LeaseNotFound(lease))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn keep_alive_extends_ttl() {
        let c = coord();
        let ttl = Duration::from_secs(3);
        let lease = c.lease_grant(ttl).await.unwrap().id;
        c.put(b("/nodes/1"), b("up"), Some(lease)).await.unwrap();
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_secs(2)).await;
            assert_eq!(c.lease_keep_alive(lease).await.unwrap().ttl, ttl);
        }
        // 20 s later, well past the first TTL, still alive.
        assert_eq!(c.get(KeyRange::key("/nodes/1")).await.unwrap().kvs.len(), 1);
        let info = c.lease_time_to_live(lease).await.unwrap();
        assert_eq!(info.remaining, ttl);
        // Stop renewing: gone one TTL after the last renewal, not before.
        tokio::time::sleep(ttl - Duration::from_millis(1)).await;
        assert_eq!(c.get(KeyRange::key("/nodes/1")).await.unwrap().kvs.len(), 1);
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(c
            .get(KeyRange::key("/nodes/1"))
            .await
            .unwrap()
            .kvs
            .is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn revoke_notifies_watchers_and_unknown_lease_is_refused() {
        let c = coord();
        let lease = c.lease_grant(Duration::from_secs(30)).await.unwrap().id;
        c.put(b("/lead"), b("node-1"), Some(lease)).await.unwrap();
        let mut watch = c.watch(KeyRange::key("/lead"), None).await.unwrap();
        assert_eq!(c.lease_revoke(lease).await.unwrap().revision, 3);
        let r = watch.recv().await.unwrap();
        assert_eq!(summary(&r), [(3, EventKind::Delete, "/lead".to_string())]);
        assert_eq!(
            c.put(b("/lead"), b("node-2"), Some(lease)).await,
            Err(CoordError::LeaseNotFound(lease))
        );
    }

    #[tokio::test]
    async fn watch_from_old_revision_replays_history() {
        let c = coord();
        c.put(b("/v/a"), b("1"), None).await.unwrap(); // 2
        c.put(b("/other"), b("x"), None).await.unwrap(); // 3
        c.put(b("/v/a"), b("2"), None).await.unwrap(); // 4
        c.delete(KeyRange::key("/v/a")).await.unwrap(); // 5
        let mut watch = c.watch(KeyRange::prefix("/v/"), Some(3)).await.unwrap();
        c.put(b("/v/b"), b("1"), None).await.unwrap(); // 6, live
        let mut seen = Vec::new();
        for _ in 0..3 {
            seen.extend(summary(&watch.recv().await.unwrap()));
        }
        assert_eq!(
            seen,
            [
                (4, EventKind::Put, "/v/a".to_string()),
                (5, EventKind::Delete, "/v/a".to_string()),
                (6, EventKind::Put, "/v/b".to_string())
            ]
        );
        assert!(watch.try_recv().is_none());
    }

    #[tokio::test]
    async fn get_then_watch_from_next_revision_misses_and_repeats_nothing() {
        let c = coord();
        for i in 0..5 {
            c.put(b(&format!("/t/{i}")), b("v"), None).await.unwrap();
        }
        let snapshot = c.get(KeyRange::prefix("/t/")).await.unwrap();
        // A change lands between the read and the watch.
        c.put(b("/t/9"), b("v"), None).await.unwrap();
        let mut watch = c
            .watch(KeyRange::prefix("/t/"), Some(snapshot.revision + 1))
            .await
            .unwrap();
        let r = watch.recv().await.unwrap();
        assert_eq!(
            summary(&r),
            [(snapshot.revision + 1, EventKind::Put, "/t/9".to_string())]
        );
        assert!(watch.try_recv().is_none());
    }

    #[tokio::test]
    async fn watch_starting_in_the_future_skips_earlier_revisions() {
        let c = coord();
        let mut watch = c.watch(KeyRange::all(), Some(4)).await.unwrap();
        for k in ["/a", "/b", "/c", "/d"] {
            c.put(b(k), b("v"), None).await.unwrap();
        }
        assert_eq!(watch.recv().await.unwrap().revision, 4);
        assert_eq!(watch.recv().await.unwrap().revision, 5);
    }

    #[tokio::test]
    async fn watch_from_compacted_revision_is_refused() {
        let c = coord();
        for i in 0..4 {
            c.put(b("/k"), b(&i.to_string()), None).await.unwrap();
        }
        c.compact(4).await.unwrap();
        assert_eq!(
            c.watch(KeyRange::all(), Some(3)).await.err(),
            Some(CoordError::Compacted {
                requested: 3,
                compact_revision: 4
            })
        );
        let mut watch = c.watch(KeyRange::all(), Some(4)).await.unwrap();
        assert_eq!(watch.recv().await.unwrap().revision, 4);
    }

    #[tokio::test]
    async fn slow_watcher_is_cut_off_as_lagged_and_can_resume() {
        let config = EmbeddedConfig {
            watch_capacity: 4,
            ..EmbeddedConfig::default()
        };
        let embedded = EmbeddedCoordinator::new(config);
        let c: Arc<dyn Coordinator> = Arc::new(embedded.clone());
        let mut slow = c.watch(KeyRange::all(), None).await.unwrap();
        let mut other = c.watch(KeyRange::prefix("/quiet/"), None).await.unwrap();
        for i in 0..10 {
            c.put(b("/busy"), b(&i.to_string()), None).await.unwrap();
        }
        // Revisions 2..=5 were queued; 6 did not fit.
        for rev in 2..=5 {
            assert_eq!(slow.recv().await.unwrap().revision, rev);
        }
        let err = slow.recv().await.unwrap_err();
        assert_eq!(err, CoordError::WatchLagged { resume_revision: 6 });
        assert_eq!(slow.recv().await.unwrap_err(), err, "the end is final");
        // The coordinator holds nothing for it any more, only the quiet watcher.
        assert_eq!(embedded.inner.state.lock().watchers.len(), 1);
        // Resuming from the revision it was told replays the rest from history.
        let mut resumed = c.watch(KeyRange::all(), Some(6)).await.unwrap();
        let revs: Vec<Revision> = std::iter::from_fn(|| resumed.try_recv())
            .map(|r| r.unwrap().revision)
            .collect();
        assert_eq!(revs, (6..=11).collect::<Vec<_>>());
        // A watcher of a quiet range was not affected.
        c.put(b("/quiet/x"), b("v"), None).await.unwrap();
        assert_eq!(other.recv().await.unwrap().revision, 12);
    }

    #[tokio::test]
    async fn lagged_and_dropped_watchers_are_removed() {
        let config = EmbeddedConfig {
            watch_capacity: 1,
            ..EmbeddedConfig::default()
        };
        let c = EmbeddedCoordinator::new(config);
        let _lagging = c.watch(KeyRange::all(), None).await.unwrap();
        let dropped = c.watch(KeyRange::all(), None).await.unwrap();
        let _kept = c.watch(KeyRange::prefix("/x/"), None).await.unwrap();
        drop(dropped);
        assert_eq!(c.inner.state.lock().watchers.len(), 3);
        c.put(b("/a"), b("1"), None).await.unwrap();
        assert_eq!(c.inner.state.lock().watchers.len(), 2);
        c.put(b("/a"), b("2"), None).await.unwrap();
        assert_eq!(c.inner.state.lock().watchers.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_every_handle_closes_watches_and_the_expiry_task() {
        let c = EmbeddedCoordinator::default();
        let lease = c.lease_grant(Duration::from_secs(5)).await.unwrap().id;
        c.put(b("/k"), b("v"), Some(lease)).await.unwrap();
        let mut watch = c.watch(KeyRange::all(), None).await.unwrap();
        let weak = Arc::downgrade(&c.inner);
        let clone = c.clone();
        drop(c);
        tokio::task::yield_now().await;
        assert!(weak.upgrade().is_some(), "a clone still holds it");
        drop(clone);
        assert_eq!(watch.recv().await, Err(CoordError::WatchClosed));
        // The expiry task ends instead of waking up for the lease forever.
        tokio::task::yield_now().await;
        assert!(weak.upgrade().is_none());
        let metrics = tokio::runtime::Handle::current().metrics();
        assert_eq!(metrics.num_alive_tasks(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_cas_increments_from_many_nodes_never_lose_an_update() {
        let shared = EmbeddedCoordinator::default();
        shared.put(b("/counter"), b("0"), None).await.unwrap();
        let mut nodes = Vec::new();
        for _ in 0..4 {
            let c: Arc<dyn Coordinator> = Arc::new(shared.clone());
            nodes.push(tokio::spawn(async move {
                let mut done = 0;
                let mut conflicts = 0;
                while done < 50 {
                    let kv = c
                        .get(KeyRange::key("/counter"))
                        .await
                        .unwrap()
                        .kvs
                        .remove(0);
                    let n: u64 = std::str::from_utf8(&kv.value).unwrap().parse().unwrap();
                    tokio::task::yield_now().await;
                    let txn = Txn::new()
                        .when([Compare::mod_revision(
                            kv.key.clone(),
                            CompareOp::Equal,
                            kv.mod_revision,
                        )])
                        .and_then([TxnOp::put(kv.key, (n + 1).to_string(), None)]);
                    if c.txn(txn).await.unwrap().succeeded {
                        done += 1;
                    } else {
                        conflicts += 1;
                    }
                }
                conflicts
            }));
        }
        for node in nodes {
            node.await.unwrap();
        }
        let kv = shared
            .get(KeyRange::key("/counter"))
            .await
            .unwrap()
            .kvs
            .remove(0);
        assert_eq!(kv.value, b("200"));
        assert_eq!(kv.version, 201);
    }
}
