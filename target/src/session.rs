//! Sessions: the CmdSN window (the one place where command numbering is checked),
//! and the registry that assigns TSIHs and reinstates sessions (RFC 7143 §6.3.5).

use std::collections::HashMap;
use std::sync::Arc;

use mosaic_proto::serial::Serial;
use parking_lot::Mutex;
use tokio::sync::watch;

/// What the window says about an arriving command's CmdSN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmdSnVerdict {
    /// Deliver the command.
    Accept,
    /// Outside [ExpCmdSN, MaxCmdSN]: silently ignore it (RFC 7143 §4.2.2.1).
    Ignore,
}

#[derive(Debug)]
struct WindowState {
    exp_cmd_sn: Serial,
    /// Non-immediate commands accepted and not yet answered.
    in_flight: u32,
}

/// The session's command window (RFC 7143 §4.2.2.1). MaxCmdSN is derived so that the
/// initiator can have at most `depth` non-immediate commands outstanding: that is the
/// back-pressure. It never moves backwards: a command's arrival moves ExpCmdSN up
/// and the in-flight count up by one each, its completion moves only the count down.
#[derive(Debug)]
pub struct CmdWindow {
    depth: u32,
    state: Mutex<WindowState>,
}

impl CmdWindow {
    /// A window starting at the CmdSN of the leading login request.
    pub fn new(first_cmd_sn: u32, depth: u32) -> CmdWindow {
        CmdWindow {
            depth: depth.max(1),
            state: Mutex::new(WindowState {
                exp_cmd_sn: Serial(first_cmd_sn),
                in_flight: 0,
            }),
        }
    }

    /// ExpCmdSN and MaxCmdSN as the next PDU should carry them.
    pub fn current(&self) -> (u32, u32) {
        let s = self.state.lock();
        (s.exp_cmd_sn.0, Self::max_of(&s, self.depth).0)
    }

    fn max_of(s: &WindowState, depth: u32) -> Serial {
        // MaxCmdSN = ExpCmdSN + (free slots) - 1; with no free slot it is ExpCmdSN - 1,
        // which closes the window.
        let free = depth.saturating_sub(s.in_flight);
        s.exp_cmd_sn.plus(free).plus(u32::MAX) // + free - 1, wrapping
    }

    /// Checks a command's CmdSN and, for a non-immediate command in the window,
    /// advances ExpCmdSN past it and counts it in flight.
    ///
    /// With one connection per session TCP keeps commands in order, so a CmdSN
    /// ahead of ExpCmdSN but inside the window means the initiator skipped numbers;
    /// we deliver it and move ExpCmdSN past it rather than wait for a gap that
    /// would never fill.
    pub fn admit(&self, cmd_sn: u32, immediate: bool) -> CmdSnVerdict {
        let mut s = self.state.lock();
        let sn = Serial(cmd_sn);
        if immediate {
            // Immediate commands carry the current CmdSN and do not advance it
            // (RFC 7143 §3.2.2.1); they are not subject to the window.
            return CmdSnVerdict::Accept;
        }
        let max = Self::max_of(&s, self.depth);
        if !sn.in_window(s.exp_cmd_sn, max) {
            return CmdSnVerdict::Ignore;
        }
        s.exp_cmd_sn = sn.next();
        s.in_flight += 1;
        CmdSnVerdict::Accept
    }

    /// A non-immediate command has been answered (or aborted): its slot frees up.
    pub fn complete(&self) {
        let mut s = self.state.lock();
        s.in_flight = s.in_flight.saturating_sub(1);
    }
}

/// The identity RFC 7143 §4.4.3 uses to recognise "the same session".
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionKey {
    pub initiator_name: String,
    pub isid: u64,
    pub target_name: String,
}

#[derive(Debug)]
struct Entry {
    key: SessionKey,
    /// Wakes the session to abort all its tasks (PREEMPT AND ABORT).
    abort: Arc<tokio::sync::Notify>,
    /// Set to `true` to tell the session's connection to stop.
    stop: watch::Sender<bool>,
    /// Becomes `true` when the session's connection has finished.
    done: watch::Receiver<bool>,
}

/// Live sessions, by TSIH.
#[derive(Debug, Default)]
pub struct SessionRegistry {
    inner: Mutex<RegistryInner>,
}

#[derive(Debug, Default)]
struct RegistryInner {
    next_tsih: u16,
    sessions: HashMap<u16, Entry>,
}

/// Held by a session's connection task; dropping it removes the session.
#[derive(Debug)]
pub struct SessionHandle {
    pub tsih: u16,
    registry: Arc<SessionRegistry>,
    /// Flips to `true` when the session must stop (reinstated elsewhere).
    pub stop: watch::Receiver<bool>,
    /// Notified when another nexus's PREEMPT AND ABORT aborts this session's tasks.
    pub abort_tasks: Arc<tokio::sync::Notify>,
    done: watch::Sender<bool>,
}

impl Drop for SessionHandle {
    fn drop(&mut self) {
        let _ = self.done.send(true);
        let mut inner = self.registry.inner.lock();
        inner.sessions.remove(&self.tsih);
    }
}

/// Why a session could not be registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// Every TSIH (1..=65535) is in use, or the session limit is reached.
    #[error("too many sessions")]
    Full,
}

impl SessionRegistry {
    /// Registers a new session, first stopping any session with the same key
    /// (session reinstatement, RFC 7143 §6.3.5) and waiting, bounded, for it to end.
    pub async fn register(
        self: &Arc<Self>,
        key: SessionKey,
        max_sessions: u32,
    ) -> Result<SessionHandle, RegistryError> {
        let old: Vec<watch::Receiver<bool>> = {
            let inner = self.inner.lock();
            inner
                .sessions
                .values()
                .filter(|e| e.key == key)
                .map(|e| {
                    let _ = e.stop.send(true);
                    e.done.clone()
                })
                .collect()
        };
        for mut done in old {
            // The old connection aborts its tasks and closes; give it a moment.
            let _ = tokio::time::timeout(REINSTATEMENT_WAIT, done.wait_for(|d| *d)).await;
        }
        let mut inner = self.inner.lock();
        inner.sessions.retain(|_, e| e.key != key);
        if inner.sessions.len() >= max_sessions as usize {
            return Err(RegistryError::Full);
        }
        let mut tsih = None;
        for _ in 0..=u16::MAX as u32 {
            inner.next_tsih = inner.next_tsih.wrapping_add(1);
            // TSIH 0 is reserved for "new session" (RFC 7143 §11.12.6).
            if inner.next_tsih != 0 && !inner.sessions.contains_key(&inner.next_tsih) {
                tsih = Some(inner.next_tsih);
                break;
            }
        }
        let tsih = tsih.ok_or(RegistryError::Full)?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let (done_tx, done_rx) = watch::channel(false);
        let abort = Arc::new(tokio::sync::Notify::new());
        inner.sessions.insert(
            tsih,
            Entry {
                key,
                abort: abort.clone(),
                stop: stop_tx,
                done: done_rx,
            },
        );
        Ok(SessionHandle {
            tsih,
            registry: self.clone(),
            stop: stop_rx,
            abort_tasks: abort,
            done: done_tx,
        })
    }

    /// Asks every session to `target_name` whose initiator port
    /// (`<name>,i,0x<ISID>`) satisfies `matches` to abort all its tasks; returns how
    /// many were asked.
    pub fn abort_tasks_where(&self, target_name: &str, matches: impl Fn(&str) -> bool) -> usize {
        let inner = self.inner.lock();
        let mut n = 0;
        for e in inner.sessions.values() {
            let port = format!("{},i,0x{:012x}", e.key.initiator_name, e.key.isid);
            if e.key.target_name == target_name && matches(&port) {
                // A stored permit: the session aborts even if it is busy right now.
                e.abort.notify_one();
                n += 1;
            }
        }
        n
    }

    /// Tells every session but `keep` to stop (TARGET COLD RESET).
    pub fn stop_all_except(&self, keep: u16) {
        let inner = self.inner.lock();
        for (tsih, e) in &inner.sessions {
            if *tsih != keep {
                let _ = e.stop.send(true);
            }
        }
    }

    /// Tells every session to `target_name` to stop (a TARGET COLD RESET received
    /// by another node of the cluster) and waits, at most `limit`, until they have
    /// ended; returns how many had not by then.
    pub async fn stop_target(&self, target_name: &str, limit: std::time::Duration) -> usize {
        let stopping: Vec<watch::Receiver<bool>> = {
            let inner = self.inner.lock();
            inner
                .sessions
                .values()
                .filter(|e| e.key.target_name == target_name)
                .map(|e| {
                    let _ = e.stop.send(true);
                    e.done.clone()
                })
                .collect()
        };
        let deadline = tokio::time::Instant::now() + limit;
        let mut late = 0;
        for mut done in stopping {
            let ended = tokio::time::timeout_at(deadline, done.wait_for(|d| *d)).await;
            // A closed channel means the handle is gone: the session ended.
            if ended.is_err() {
                late += 1;
            }
        }
        late
    }

    /// Whether a session with this TSIH is live.
    pub fn contains(&self, tsih: u16) -> bool {
        self.inner.lock().sessions.contains_key(&tsih)
    }

    /// Number of live sessions.
    pub fn len(&self) -> usize {
        self.inner.lock().sessions.len()
    }

    /// `true` when no session is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How long a reinstating login waits for the old session's connection to close.
const REINSTATEMENT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_admits_in_order_and_ignores_outside() {
        let w = CmdWindow::new(10, 4);
        assert_eq!(w.current(), (10, 13));
        assert_eq!(w.admit(9, false), CmdSnVerdict::Ignore);
        assert_eq!(w.admit(14, false), CmdSnVerdict::Ignore);
        assert_eq!(w.admit(10, false), CmdSnVerdict::Accept);
        assert_eq!(w.current(), (11, 13));
        assert_eq!(
            w.admit(10, false),
            CmdSnVerdict::Ignore,
            "duplicate is below ExpCmdSN"
        );
    }

    #[test]
    fn full_window_closes_then_reopens() {
        let w = CmdWindow::new(0, 2);
        assert_eq!(w.admit(0, false), CmdSnVerdict::Accept);
        assert_eq!(w.admit(1, false), CmdSnVerdict::Accept);
        let (exp, max) = w.current();
        assert_eq!((exp, max), (2, 1), "MaxCmdSN = ExpCmdSN - 1: closed");
        assert_eq!(w.admit(2, false), CmdSnVerdict::Ignore);
        w.complete();
        assert_eq!(w.current(), (2, 2));
        assert_eq!(w.admit(2, false), CmdSnVerdict::Accept);
    }

    #[test]
    fn immediate_does_not_advance() {
        let w = CmdWindow::new(5, 8);
        assert_eq!(w.admit(5, true), CmdSnVerdict::Accept);
        assert_eq!(w.current().0, 5);
    }

    #[test]
    fn window_wraps() {
        let w = CmdWindow::new(u32::MAX, 4);
        assert_eq!(w.admit(u32::MAX, false), CmdSnVerdict::Accept);
        assert_eq!(w.admit(0, false), CmdSnVerdict::Accept);
        assert_eq!(w.current().0, 1);
    }

    #[test]
    fn max_cmd_sn_never_decreases() {
        let w = CmdWindow::new(0, 3);
        let mut last = w.current().1;
        for i in 0..20u32 {
            w.admit(i, false);
            let m = w.current().1;
            assert!(Serial(m) >= Serial(last));
            last = m;
            w.complete();
            let m = w.current().1;
            assert!(Serial(m) >= Serial(last));
            last = m;
        }
    }

    #[tokio::test]
    async fn reinstatement_stops_the_old_session() {
        let reg = Arc::new(SessionRegistry::default());
        let key = SessionKey {
            initiator_name: "iqn.i".into(),
            isid: 1,
            target_name: "iqn.t".into(),
        };
        let mut old = reg.register(key.clone(), 10).await.unwrap();
        let old_tsih = old.tsih;
        let waiter = tokio::spawn(async move {
            old.stop.wait_for(|s| *s).await.unwrap();
            drop(old);
        });
        let new = reg.register(key, 10).await.unwrap();
        waiter.await.unwrap();
        assert_ne!(new.tsih, old_tsih);
        assert!(!reg.contains(old_tsih));
        assert_eq!(reg.len(), 1);
    }

    #[tokio::test]
    async fn abort_reaches_only_matching_sessions() {
        let reg = Arc::new(SessionRegistry::default());
        let k = |isid| SessionKey {
            initiator_name: "iqn.i".into(),
            isid,
            target_name: "iqn.t".into(),
        };
        let a = reg.register(k(1), 10).await.unwrap();
        let b = reg.register(k(2), 10).await.unwrap();
        let asked = reg.abort_tasks_where("iqn.t", |p| p == "iqn.i,i,0x000000000001");
        assert_eq!(asked, 1);
        tokio::time::timeout(std::time::Duration::from_secs(1), a.abort_tasks.notified())
            .await
            .expect("session a was asked");
        assert!(
            tokio::time::timeout(
                std::time::Duration::from_millis(50),
                b.abort_tasks.notified()
            )
            .await
            .is_err(),
            "session b was not"
        );
    }

    #[tokio::test]
    async fn stopping_a_target_ends_its_sessions_only_and_waits_for_them() {
        let reg = Arc::new(SessionRegistry::default());
        let k = |isid, target: &str| SessionKey {
            initiator_name: "iqn.i".into(),
            isid,
            target_name: target.into(),
        };
        let mut a = reg.register(k(1, "iqn.t:a"), 10).await.unwrap();
        let b = reg.register(k(2, "iqn.t:b"), 10).await.unwrap();
        let a_tsih = a.tsih;
        let ending = tokio::spawn(async move {
            a.stop.wait_for(|s| *s).await.unwrap();
            drop(a);
        });
        let limit = std::time::Duration::from_secs(5);
        assert_eq!(
            reg.stop_target("iqn.t:a", limit).await,
            0,
            "a ended in time"
        );
        assert!(!reg.contains(a_tsih));
        assert!(!*b.stop.borrow(), "b is another target's");
        ending.await.unwrap();
        // A session that does not end is reported late, not waited for forever.
        assert_eq!(
            reg.stop_target("iqn.t:b", std::time::Duration::from_millis(20))
                .await,
            1
        );
        assert!(*b.stop.borrow());
    }

    #[tokio::test]
    async fn session_limit_is_enforced() {
        let reg = Arc::new(SessionRegistry::default());
        let k = |i| SessionKey {
            initiator_name: "iqn.i".into(),
            isid: i,
            target_name: "iqn.t".into(),
        };
        let _a = reg.register(k(1), 1).await.unwrap();
        assert_eq!(
            reg.register(k(2), 1).await.unwrap_err(),
            RegistryError::Full
        );
    }
}
