//! A per-logical-unit LBA range lock: shared for reads, exclusive for every command
//! that modifies the medium.
//!
//! It gives COMPARE AND WRITE and ORWRITE their atomic read-modify-write against
//! every other write to the range (SBC-3 §5.2), and makes each WRITE (and WRITE
//! ATOMIC) atomic with respect to overlapping reads and writes (SBC-4 §4.29), so the
//! whole MAXIMUM TRANSFER LENGTH can be reported as the atomic transfer length.
//! Commands on disjoint ranges never wait for each other; a command holds at most
//! one range at a time, so there is no lock ordering to get wrong.

use parking_lot::Mutex;
use tokio::sync::Notify;

/// One range held by a command.
#[derive(Debug)]
struct Held {
    /// Identifies the holder, so its guard removes exactly its own entry.
    id: u64,
    /// First block.
    start: u64,
    /// One past the last block.
    end: u64,
    /// Whether the holder modifies the range.
    exclusive: bool,
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    held: Vec<Held>,
}

/// The lock table. Waiters are woken whenever any range is released and re-check.
#[derive(Debug, Default)]
pub(crate) struct RangeLock {
    state: Mutex<State>,
    released: Notify,
}

/// Releases its range when dropped (also when the command's future is cancelled).
#[derive(Debug)]
pub(crate) struct RangeGuard<'a> {
    lock: &'a RangeLock,
    id: u64,
}

impl RangeLock {
    /// Waits until `[start, start + blocks)` is free of conflicting holders and takes
    /// it: shared ranges conflict only with exclusive ones.
    pub(crate) async fn lock(&self, start: u64, blocks: u64, exclusive: bool) -> RangeGuard<'_> {
        let end = start.saturating_add(blocks);
        loop {
            let released = {
                let mut st = self.state.lock();
                let conflict = blocks > 0
                    && st
                        .held
                        .iter()
                        .any(|h| (exclusive || h.exclusive) && h.start < end && start < h.end);
                if !conflict {
                    let id = st.next_id;
                    st.next_id += 1;
                    st.held.push(Held {
                        id,
                        start,
                        end,
                        exclusive,
                    });
                    return RangeGuard { lock: self, id };
                }
                // Created under the mutex, so a release after we unlock wakes it
                // (Notify::notify_waiters reaches every Notified created before it).
                self.released.notified()
            };
            released.await;
        }
    }

    /// Number of ranges currently held (for tests).
    #[cfg(test)]
    pub(super) fn held(&self) -> usize {
        self.state.lock().held.len()
    }
}

impl Drop for RangeGuard<'_> {
    fn drop(&mut self) {
        let mut st = self.lock.state.lock();
        st.held.retain(|h| h.id != self.id);
        drop(st);
        self.lock.released.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    async fn blocked<F: std::future::Future>(f: F) -> bool {
        tokio::time::timeout(Duration::from_millis(50), f)
            .await
            .is_err()
    }

    #[tokio::test]
    async fn shared_ranges_overlap_freely() {
        let l = RangeLock::default();
        let _a = l.lock(0, 10, false).await;
        let _b = l.lock(5, 10, false).await;
        assert_eq!(l.held(), 2);
    }

    #[tokio::test]
    async fn exclusive_waits_for_overlapping_shared_and_exclusive() {
        let l = RangeLock::default();
        let a = l.lock(0, 10, false).await;
        assert!(blocked(l.lock(9, 1, true)).await);
        drop(a);
        let b = l.lock(9, 1, true).await;
        assert!(blocked(l.lock(0, 10, false)).await);
        assert!(blocked(l.lock(9, 1, true)).await);
        drop(b);
        assert_eq!(l.held(), 0);
    }

    #[tokio::test]
    async fn disjoint_exclusive_ranges_do_not_wait() {
        let l = RangeLock::default();
        let _a = l.lock(0, 10, true).await;
        let _b = l.lock(10, 10, true).await;
        let _c = l.lock(100, 1, true).await;
        assert_eq!(l.held(), 3);
    }

    #[tokio::test]
    async fn empty_range_never_conflicts() {
        let l = RangeLock::default();
        let _a = l.lock(0, 10, true).await;
        let _b = l.lock(5, 0, true).await;
    }

    #[tokio::test]
    async fn waiter_proceeds_when_the_holder_releases() {
        let l = Arc::new(RangeLock::default());
        let g = l.lock(0, 8, true).await;
        let l2 = Arc::clone(&l);
        let waiter = tokio::spawn(async move {
            let _g = l2.lock(4, 8, true).await;
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        drop(g);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("waiter woke")
            .unwrap();
        assert_eq!(l.held(), 0);
    }

    #[tokio::test]
    async fn cancelled_holder_releases_its_range() {
        let l = RangeLock::default();
        {
            let _g = l.lock(0, 1, true).await;
        }
        let _again = l.lock(0, 1, true).await;
        assert_eq!(l.held(), 1);
    }
}
