//! The receiving end of a watch, common to every implementation, and the sending
//! end an implementation feeds.
//!
//! A watch delivers [`WatchResponse`]s in revision order: first the history it was
//! asked to replay (held in the [`Watch`] itself, already bounded by the store's
//! history), then live changes through a bounded tokio channel. The producer never
//! waits for a slow watcher (that would stall every writer): when the channel is
//! full it ends the watch with [`CoordError::WatchLagged`], which the watcher
//! receives after the responses already queued.

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use tokio::sync::mpsc;

use crate::error::CoordError;
use crate::types::WatchResponse;

/// Live responses queued per watcher before it is cut off as lagging. A watcher is
/// a node's cache of the routing table, membership or sessions, and applies each
/// response in microseconds; 1024 revisions of backlog means it has stopped keeping
/// up, and re-reading the state (one get) is cheaper than the coordinator holding
/// an unbounded queue for it. At worst 1024 x 1.5 MiB requests, in practice a few
/// hundred KiB.
pub const WATCH_CHANNEL_CAPACITY: usize = 1024;

/// Creates a watch: the producer's [`WatchSender`] and the consumer's [`Watch`],
/// which yields `backlog` first.
pub fn watch_channel(capacity: usize, backlog: VecDeque<WatchResponse>) -> (WatchSender, Watch) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let end = Arc::new(OnceLock::new());
    (
        WatchSender {
            tx,
            end: end.clone(),
        },
        Watch { backlog, rx, end },
    )
}

/// The producer's end of a watch.
#[derive(Debug)]
pub struct WatchSender {
    tx: mpsc::Sender<WatchResponse>,
    /// Why the watch ended, read by the consumer once the channel is drained.
    end: Arc<OnceLock<CoordError>>,
}

impl WatchSender {
    /// Queues a response without waiting. Returns `false` if the watch is over: the
    /// consumer dropped its [`Watch`], or the queue was full and the watch is now
    /// ended as lagging at `response.revision`. Either way, drop the sender.
    pub fn deliver(&self, response: WatchResponse) -> bool {
        match self.tx.try_send(response) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(response)) => {
                tracing::debug!(revision = response.revision, "watcher lagged; cancelled");
                let _ = self.end.set(CoordError::WatchLagged {
                    resume_revision: response.revision,
                });
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Ends the watch with `error`, delivered after the responses already queued.
    pub fn close(self, error: CoordError) {
        let _ = self.end.set(error);
    }

    /// Whether the consumer dropped its [`Watch`].
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// A stream of changes under a key range, in revision order. Dropping it cancels
/// the watch.
#[derive(Debug)]
pub struct Watch {
    /// Replayed history, delivered before anything from `rx`.
    backlog: VecDeque<WatchResponse>,
    rx: mpsc::Receiver<WatchResponse>,
    end: Arc<OnceLock<CoordError>>,
}

impl Watch {
    /// The next response. After an error the watch is over and every later call
    /// returns the same error: [`CoordError::WatchLagged`] if it fell behind,
    /// [`CoordError::WatchClosed`] if the coordinator went away, or what the
    /// implementation ended it with.
    pub async fn recv(&mut self) -> Result<WatchResponse, CoordError> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Polls for the next response (for hand-written futures and `select!`).
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<WatchResponse, CoordError>> {
        if let Some(response) = self.backlog.pop_front() {
            return Poll::Ready(Ok(response));
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(response)) => Poll::Ready(Ok(response)),
            Poll::Ready(None) => Poll::Ready(Err(self.end_error())),
            Poll::Pending => Poll::Pending,
        }
    }

    /// The next response if one is ready now: `None` if the watch is still open
    /// but has nothing queued.
    pub fn try_recv(&mut self) -> Option<Result<WatchResponse, CoordError>> {
        if let Some(response) = self.backlog.pop_front() {
            return Some(Ok(response));
        }
        match self.rx.try_recv() {
            Ok(response) => Some(Ok(response)),
            Err(mpsc::error::TryRecvError::Empty) => None,
            Err(mpsc::error::TryRecvError::Disconnected) => Some(Err(self.end_error())),
        }
    }

    fn end_error(&self) -> CoordError {
        self.end.get().cloned().unwrap_or(CoordError::WatchClosed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Event, EventKind, KeyValue};
    use bytes::Bytes;

    fn response(revision: i64) -> WatchResponse {
        let kv = KeyValue {
            key: Bytes::from_static(b"k"),
            value: Bytes::new(),
            create_revision: revision,
            mod_revision: revision,
            version: 1,
            lease: None,
        };
        WatchResponse {
            revision,
            events: vec![Event {
                kind: EventKind::Put,
                kv,
                prev_kv: None,
            }],
        }
    }

    #[test]
    fn backlog_comes_first_then_live_then_the_end_reason() {
        let (tx, mut watch) = watch_channel(4, VecDeque::from([response(2), response(3)]));
        assert!(tx.deliver(response(4)));
        tx.close(CoordError::Unavailable("gone".into()));
        let revisions: Vec<i64> = std::iter::from_fn(|| watch.try_recv())
            .take(4)
            .map(|r| r.map(|r| r.revision).unwrap_or(-1))
            .collect();
        assert_eq!(revisions, [2, 3, 4, -1]);
        assert_eq!(
            watch.try_recv(),
            Some(Err(CoordError::Unavailable("gone".into())))
        );
    }

    #[test]
    fn full_queue_ends_the_watch_as_lagged_after_what_was_queued() {
        let (tx, mut watch) = watch_channel(2, VecDeque::new());
        assert!(tx.deliver(response(2)));
        assert!(tx.deliver(response(3)));
        assert!(!tx.deliver(response(4)));
        drop(tx);
        assert_eq!(watch.try_recv().unwrap().unwrap().revision, 2);
        assert_eq!(watch.try_recv().unwrap().unwrap().revision, 3);
        assert_eq!(
            watch.try_recv(),
            Some(Err(CoordError::WatchLagged { resume_revision: 4 }))
        );
    }

    #[test]
    fn dropped_watch_is_seen_by_the_sender() {
        let (tx, watch) = watch_channel(2, VecDeque::new());
        assert!(!tx.is_closed());
        drop(watch);
        assert!(tx.is_closed());
        assert!(!tx.deliver(response(2)));
    }
}
