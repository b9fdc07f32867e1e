//! A session with one connection that survives the connection: when the
//! connection dies (EOF, reset, unanswered pings, a timed-out command) the next
//! command logs in again with the same ISID and TSIH 0, which makes the target
//! reinstate the session (RFC 7143 §6.3.5), and the command is sent again. Block
//! reads and writes are idempotent, so a replay is safe.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mosaic_proto::negotiate::SessionParams;
use parking_lot::RwLock;

use crate::conn::{AsyncEvent, Conn, ConnTimers};
use crate::error::{Error, Result};
use crate::login::{connect_and_login, LoginConfig};
use crate::scsi::{self, Command, DeviceId, Outcome};

/// Unit attentions a convenience call skips before giving up.
const UA_RETRIES: usize = 4;

/// How a session behaves after login.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub login: LoginConfig,
    /// The LUN commands go to.
    pub lun: u64,
    pub timers: ConnTimers,
    /// Logins tried after a connection dies before a command fails (0: none).
    pub reconnect_attempts: u32,
    /// Pause between reconnect attempts.
    pub reconnect_delay: Duration,
}

impl SessionConfig {
    /// Defaults around a login configuration.
    pub fn new(login: LoginConfig) -> SessionConfig {
        SessionConfig {
            login,
            lun: 0,
            timers: ConnTimers::default(),
            reconnect_attempts: 5,
            reconnect_delay: Duration::from_millis(200),
        }
    }
}

/// A logged-in Normal session.
#[derive(Debug)]
pub struct Session {
    cfg: SessionConfig,
    /// Where the session lives (after any redirect): reconnects go here.
    portal: SocketAddr,
    conn: RwLock<Arc<Conn>>,
    generation: AtomicU64,
    reconnect_lock: tokio::sync::Mutex<()>,
    reconnects: AtomicU64,
    closed: AtomicBool,
}

impl Session {
    /// Connects to `addr` (following redirects) and logs in.
    pub async fn login(addr: SocketAddr, cfg: SessionConfig) -> Result<Session> {
        if cfg.login.target_name.is_none() {
            return Err(Error::Invalid(
                "a Session needs a target name (use discovery for SendTargets)".into(),
            ));
        }
        let l = connect_and_login(addr, &cfg.login, 0).await?;
        let portal = l.addr;
        let conn = Conn::open(l, cfg.lun, cfg.timers);
        Ok(Session {
            cfg,
            portal,
            conn: RwLock::new(Arc::new(conn)),
            generation: AtomicU64::new(0),
            reconnect_lock: tokio::sync::Mutex::new(()),
            reconnects: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        })
    }

    /// The portal the session is on.
    pub fn portal(&self) -> SocketAddr {
        self.portal
    }

    /// The ISID.
    pub fn isid(&self) -> u64 {
        self.cfg.login.isid
    }

    /// What the current connection negotiated.
    pub fn params(&self) -> SessionParams {
        self.conn.read().params().clone()
    }

    /// The TSIH of the current connection's session.
    pub fn tsih(&self) -> u16 {
        self.conn.read().tsih()
    }

    /// How many times the session logged in again.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    /// Times a command on the current connection waited for the CmdSN window.
    pub fn window_waits(&self) -> u64 {
        self.conn.read().window_waits()
    }

    /// Why the current connection is dead, if it is (the next command reconnects).
    pub fn connection_dead(&self) -> Option<String> {
        self.conn.read().dead()
    }

    /// Asynchronous messages received on the current connection (taken).
    pub fn take_events(&self) -> Vec<AsyncEvent> {
        self.conn.read().take_events()
    }

    fn current(&self) -> (Arc<Conn>, u64) {
        let c = self.conn.read().clone();
        (c, self.generation.load(Ordering::Acquire))
    }

    /// Replaces connection `generation` with a new login, unless another task did
    /// already.
    async fn reconnect(&self, generation: u64) -> Result<()> {
        let _g = self.reconnect_lock.lock().await;
        if self.generation.load(Ordering::Acquire) != generation {
            return Ok(());
        }
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::SessionClosed);
        }
        let mut last = None;
        for attempt in 0..self.cfg.reconnect_attempts.max(1) {
            if attempt > 0 {
                tokio::time::sleep(self.cfg.reconnect_delay).await;
            }
            // TSIH 0 with the old ISID: the target reinstates the session.
            match connect_and_login(self.portal, &self.cfg.login, 0).await {
                Ok(l) => {
                    let conn = Arc::new(Conn::open(l, self.cfg.lun, self.cfg.timers));
                    let old = std::mem::replace(&mut *self.conn.write(), conn);
                    self.generation.fetch_add(1, Ordering::AcqRel);
                    self.reconnects.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(portal = %self.portal, isid = format!("{:#x}", self.cfg.login.isid), "session reinstated");
                    old.abort("replaced by a new connection").await;
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(portal = %self.portal, error = %e, "reconnect failed");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or(Error::SessionClosed))
    }

    /// Runs a SCSI command; if the connection dies under it, logs in again and
    /// sends it again (up to the configured attempts). The status, including any
    /// CHECK CONDITION / UNIT ATTENTION, goes to the caller.
    pub async fn execute(&self, cmd: &Command) -> Result<Outcome> {
        let mut tries = 0;
        loop {
            if self.closed.load(Ordering::Acquire) {
                return Err(Error::SessionClosed);
            }
            let (conn, generation) = self.current();
            match conn.execute(cmd).await {
                Err(e) if e.is_connection_loss() && tries < self.cfg.reconnect_attempts => {
                    tries += 1;
                    tracing::debug!(portal = %self.portal, error = %e, "command lost with its connection");
                    self.reconnect(generation).await?;
                }
                r => return r,
            }
        }
    }

    /// A command that must end GOOD.
    pub async fn execute_good(&self, cmd: &Command) -> Result<Outcome> {
        self.execute(cmd).await?.good()
    }

    /// Runs a command, retrying while it reports a unit attention (each is
    /// reported once per nexus), at most `limit` times.
    pub async fn execute_past_ua(&self, cmd: &Command, limit: usize) -> Result<Outcome> {
        let mut n = 0;
        loop {
            let o = self.execute(cmd).await?;
            if o.unit_attention().is_some() && n < limit {
                n += 1;
                continue;
            }
            return o.good();
        }
    }

    /// READ CAPACITY (16): (blocks, block size).
    pub async fn capacity(&self) -> Result<(u64, u32)> {
        let o = self
            .execute_past_ua(&Command::read_capacity_16(), 4)
            .await?;
        scsi::parse_read_capacity_16(&o.data)
    }

    /// VPD 0x83 of the LUN.
    pub async fn device_id(&self) -> Result<DeviceId> {
        let o = self
            .execute_good(&Command::inquiry(
                Some(mosaic_proto::scsi::opcode::vpd::DEVICE_IDENTIFICATION),
                scsi::VPD_ALLOC_LEN,
            ))
            .await?;
        scsi::parse_device_id(&o.data)
    }

    /// READ (16). Unit attentions (a new nexus after a reconnect reports "power on
    /// or reset") are retried, as SCSI midlayers do; [`Session::execute`] shows
    /// them. Any other CHECK CONDITION comes back as [`Error::Check`].
    pub async fn read(&self, lba: u64, blocks: u32, block_size: u32) -> Result<Bytes> {
        let o = self
            .execute_past_ua(&Command::read_16(lba, blocks, block_size), UA_RETRIES)
            .await?;
        let want = blocks as usize * block_size as usize;
        if o.data.len() != want {
            return Err(Error::Protocol(format!(
                "READ (16) of {want} bytes returned {}",
                o.data.len()
            )));
        }
        Ok(o.data)
    }

    /// WRITE (16) of whole blocks (unit attentions retried as for [`Session::read`]).
    pub async fn write(&self, lba: u64, data: Bytes, block_size: u32) -> Result<()> {
        if data.is_empty() || !data.len().is_multiple_of(block_size.max(1) as usize) {
            return Err(Error::Invalid(format!(
                "write of {} bytes is not whole {block_size}-byte blocks",
                data.len()
            )));
        }
        self.execute_past_ua(&Command::write_16(lba, data, block_size), UA_RETRIES)
            .await?;
        Ok(())
    }

    /// NOP-Out ping on the current connection.
    pub async fn ping(&self) -> Result<()> {
        let (conn, _) = self.current();
        conn.ping().await
    }

    /// Kills the current connection as if the network had failed (the next command
    /// reconnects). For tests and fault drills.
    pub async fn drop_connection(&self) {
        let (conn, _) = self.current();
        conn.abort("dropped on request").await;
    }

    /// Logs out and closes the session.
    pub async fn logout(&self) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        let (conn, _) = self.current();
        conn.logout().await
    }
}
