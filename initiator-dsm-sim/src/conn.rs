//! One iSCSI connection in full feature phase: a reader task that takes every PDU
//! off the socket and hands it to the task waiting on its Initiator Task Tag, a
//! writer shared by the tasks (CmdSN is taken and the command written under one
//! lock, so commands leave in CmdSN order), the CmdSN window (RFC 7143 §4.2.2.1),
//! NOP-In pings answered, and a keepalive that declares the connection dead when
//! the target stops answering NOP-Out pings.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use mosaic_proto::frame::{self, FrameLimits};
use mosaic_proto::negotiate::SessionParams;
use mosaic_proto::pdu::{
    self, Bhs, DataOut, LogoutRequest, NopOut, Pdu, ScsiCommand, TextRequest, BHS_LEN, RESERVED_TAG,
};
use mosaic_proto::serial::Serial;
use mosaic_proto::text::{self, KeyValue, TextAccumulator};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::login::LoggedIn;
use crate::scsi::{Command, Outcome, Sense};

/// SIMPLE task attribute (RFC 7143 §11.3.1.1).
const ATTR_SIMPLE: u8 = 1;
/// Most Text Response PDUs we follow for one request.
const MAX_TEXT_PDUS: usize = 256;
/// Largest text answer (SendTargets of a big cluster).
const MAX_TEXT_BYTES: usize = 4 << 20;
/// Payload of our NOP-Out pings.
const PING_DATA: &[u8] = b"mosaic-dsm ping";

/// Time limits of a connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnTimers {
    /// How long one command (or text, logout) may wait for its status.
    pub command_timeout: Duration,
    /// Silence after which we ping the target (zero: never).
    pub nop_interval: Duration,
    /// How long a ping may go unanswered before the connection counts as dead.
    pub nop_timeout: Duration,
}

impl Default for ConnTimers {
    fn default() -> Self {
        ConnTimers {
            command_timeout: Duration::from_secs(30),
            nop_interval: Duration::from_secs(5),
            nop_timeout: Duration::from_secs(5),
        }
    }
}

/// An Asynchronous Message the target sent (RFC 7143 §11.9).
#[derive(Debug, Clone)]
pub struct AsyncEvent {
    pub event: u8,
    /// For a SCSI asynchronous event: the sense data it carried.
    pub sense: Option<Sense>,
}

#[derive(Debug)]
struct State {
    cmd_sn: u32,
    exp_stat_sn: u32,
    exp_cmd_sn: u32,
    max_cmd_sn: u32,
    next_itt: u32,
    tasks: HashMap<u32, mpsc::UnboundedSender<Pdu>>,
    dead: Option<String>,
    last_rx: Instant,
    events: Vec<AsyncEvent>,
}

#[derive(Debug)]
struct Shared {
    addr: SocketAddr,
    params: SessionParams,
    tx_limits: FrameLimits,
    rx_limits: FrameLimits,
    lun_field: u64,
    timers: ConnTimers,
    writer: tokio::sync::Mutex<Option<OwnedWriteHalf>>,
    st: Mutex<State>,
    /// Signalled when MaxCmdSN moves or the connection dies.
    window: Notify,
    /// Times a command waited for the CmdSN window to open.
    window_waits: std::sync::atomic::AtomicU64,
}

/// A logged-in connection. Dropping it stops its tasks and closes the socket.
#[derive(Debug)]
pub struct Conn {
    shared: Arc<Shared>,
    reader: JoinHandle<()>,
    keepalive: Option<JoinHandle<()>>,
    tsih: u16,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.reader.abort();
        if let Some(k) = &self.keepalive {
            k.abort();
        }
        self.shared.kill("connection dropped by its owner");
    }
}

/// The 8-byte LUN field for a single-level LUN (SAM-5 §4.7.3).
pub fn lun_field(lun: u64) -> u64 {
    if lun < 256 {
        lun << 48
    } else {
        (0x4000 | (lun & 0x3fff)) << 48
    }
}

/// Removes a task's registration when the task ends, however it ends.
struct TaskGuard<'a> {
    shared: &'a Shared,
    itt: u32,
}

impl Drop for TaskGuard<'_> {
    fn drop(&mut self) {
        self.shared.st.lock().tasks.remove(&self.itt);
    }
}

impl Conn {
    /// Takes over a connection that login brought to full feature phase.
    pub(crate) fn open(l: LoggedIn, lun: u64, timers: ConnTimers) -> Conn {
        let (read, write) = l.stream.into_split();
        let hd = l.params.header_digest;
        let dd = l.params.data_digest;
        let shared = Arc::new(Shared {
            addr: l.addr,
            tx_limits: FrameLimits {
                header_digest: hd,
                data_digest: dd,
                max_recv_data_segment_length: l.params.max_recv_data_segment_length_target,
            },
            rx_limits: FrameLimits {
                header_digest: hd,
                data_digest: dd,
                max_recv_data_segment_length: l.params.max_recv_data_segment_length_initiator,
            },
            params: l.params,
            lun_field: lun_field(lun),
            timers,
            writer: tokio::sync::Mutex::new(Some(write)),
            st: Mutex::new(State {
                cmd_sn: l.cmd_sn,
                exp_stat_sn: l.exp_stat_sn,
                exp_cmd_sn: l.cmd_sn,
                max_cmd_sn: l.max_cmd_sn,
                next_itt: 0x10,
                tasks: HashMap::new(),
                dead: None,
                last_rx: Instant::now(),
                events: Vec::new(),
            }),
            window: Notify::new(),
            window_waits: std::sync::atomic::AtomicU64::new(0),
        });
        let reader = tokio::spawn(read_loop(shared.clone(), read, l.rx));
        let keepalive = (!timers.nop_interval.is_zero())
            .then(|| tokio::spawn(keepalive(Arc::downgrade(&shared))));
        Conn {
            shared,
            reader,
            keepalive,
            tsih: l.tsih,
        }
    }

    /// What login agreed on.
    pub fn params(&self) -> &SessionParams {
        &self.shared.params
    }

    /// The portal this connection is on.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// The session handle the target assigned.
    pub fn tsih(&self) -> u16 {
        self.tsih
    }

    /// Times a command had to wait for the target's CmdSN window.
    pub fn window_waits(&self) -> u64 {
        self.shared
            .window_waits
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Why the connection is dead, if it is.
    pub fn dead(&self) -> Option<String> {
        self.shared.st.lock().dead.clone()
    }

    /// Asynchronous messages received so far (taken).
    pub fn take_events(&self) -> Vec<AsyncEvent> {
        std::mem::take(&mut self.shared.st.lock().events)
    }

    /// Declares the connection dead and closes the socket (tests use it to
    /// provoke a reconnect; the session code uses it after a timeout).
    pub async fn abort(&self, reason: &str) {
        self.shared.kill(reason);
        if let Some(mut w) = self.shared.writer.lock().await.take() {
            let _ = w.shutdown().await;
        }
        self.reader.abort();
    }

    /// Runs one SCSI command to its status: immediate data, unsolicited Data-Out
    /// and R2T-solicited Data-Out as negotiated; Data-In reassembled by offset.
    pub async fn execute(&self, cmd: &Command) -> Result<Outcome> {
        let s = &*self.shared;
        let p = &s.params;
        let write_len = u32::try_from(cmd.data_out.len())
            .map_err(|_| Error::Invalid("write longer than 4 GiB".into()))?;
        if write_len > 0 && cmd.read_len > 0 {
            return Err(Error::Invalid(
                "bidirectional commands are not supported".into(),
            ));
        }
        let (itt, mut rx) = s.register()?;
        let _guard = TaskGuard { shared: s, itt };
        let mrdsl = s.tx_limits.max_recv_data_segment_length.max(512);
        let unsolicited_limit = write_len.min(p.first_burst_length);
        let immediate = if p.immediate_data {
            unsolicited_limit.min(mrdsl)
        } else {
            0
        };
        let unsolicited_end = if p.initial_r2t {
            immediate
        } else {
            unsolicited_limit
        };
        let data = cmd.data_out.clone();
        let imm = data.slice(..immediate as usize);
        let edtl = if write_len > 0 {
            write_len
        } else {
            cmd.read_len
        };
        let lun = s.lun_field;
        let cdb = cmd.cdb;
        s.send_numbered(false, |cmd_sn, exp_stat_sn| {
            Pdu::new(
                Bhs::ScsiCommand(ScsiCommand {
                    immediate: false,
                    final_bit: unsolicited_end == immediate,
                    read: cmd.read_len > 0,
                    write: write_len > 0,
                    attr: ATTR_SIMPLE,
                    lun,
                    itt,
                    expected_data_transfer_length: edtl,
                    cmd_sn,
                    exp_stat_sn,
                    cdb,
                }),
                imm,
            )
        })
        .await?;
        if unsolicited_end > immediate {
            s.send_data_out(itt, RESERVED_TAG, &data, immediate, unsolicited_end)
                .await?;
        }
        let mut buf: Option<BytesMut> = None;
        let mut high = 0usize;
        loop {
            let pdu = s.wait(&mut rx, "SCSI command").await?;
            match pdu.bhs {
                Bhs::R2t(r) => {
                    let start = r.buffer_offset;
                    let end = start.saturating_add(r.desired_data_transfer_length);
                    if end > write_len || start >= end {
                        s.kill("R2T outside the write");
                        return Err(Error::Protocol(format!(
                            "R2T for bytes {start}..{end} of a {write_len}-byte write"
                        )));
                    }
                    s.send_data_out(itt, r.ttt, &data, start, end).await?;
                }
                Bhs::DataIn(d) => {
                    let off = d.buffer_offset as usize;
                    let end = off + pdu.data.len();
                    if end > cmd.read_len as usize {
                        s.kill("Data-In beyond the read");
                        return Err(Error::Protocol(format!(
                            "Data-In for bytes {off}..{end} of a {}-byte read",
                            cmd.read_len
                        )));
                    }
                    if !pdu.data.is_empty() {
                        let b = buf.get_or_insert_with(|| {
                            let mut b = BytesMut::with_capacity(cmd.read_len as usize);
                            b.resize(cmd.read_len as usize, 0);
                            b
                        });
                        b[off..end].copy_from_slice(&pdu.data);
                        high = high.max(end);
                    }
                    if d.status_present {
                        return Ok(Outcome {
                            status: d.status,
                            data: finish(buf, high),
                            sense: None,
                            residual_count: d.residual_count,
                            underflow: d.underflow,
                            overflow: d.overflow,
                        });
                    }
                }
                Bhs::ScsiResponse(r) => {
                    if r.response != pdu::scsi_response::COMMAND_COMPLETED_AT_TARGET {
                        return Err(Error::Protocol(format!(
                            "SCSI Response with iSCSI response {:#04x}",
                            r.response
                        )));
                    }
                    let sense = (pdu.data.len() >= 2)
                        .then(|| {
                            let sl = usize::from(u16::from_be_bytes([pdu.data[0], pdu.data[1]]));
                            Sense::parse(&pdu.data[2..(2 + sl).min(pdu.data.len())])
                        })
                        .flatten();
                    return Ok(Outcome {
                        status: r.status,
                        data: finish(buf, high),
                        sense,
                        residual_count: r.residual_count,
                        underflow: r.underflow,
                        overflow: r.overflow,
                    });
                }
                Bhs::Reject(r) => return Err(Error::Reject(r.reason)),
                other => {
                    return Err(Error::Protocol(format!(
                        "unexpected opcode {:#04x} for a SCSI task",
                        other.opcode()
                    )))
                }
            }
        }
    }

    /// A Text Request exchange (RFC 7143 §11.10), following continued responses.
    pub async fn text(&self, keys: &[KeyValue]) -> Result<Vec<KeyValue>> {
        let s = &*self.shared;
        let (itt, mut rx) = s.register()?;
        let _guard = TaskGuard { shared: s, itt };
        let mut data = text::encode(keys)?;
        let mut ttt = RESERVED_TAG;
        let mut acc = TextAccumulator::with_limit(MAX_TEXT_BYTES);
        for _ in 0..MAX_TEXT_PDUS {
            let body = std::mem::take(&mut data);
            s.send_numbered(false, |cmd_sn, exp_stat_sn| {
                Pdu::new(
                    Bhs::TextRequest(TextRequest {
                        immediate: false,
                        final_bit: true,
                        continue_bit: false,
                        lun: 0,
                        itt,
                        ttt,
                        cmd_sn,
                        exp_stat_sn,
                    }),
                    body,
                )
            })
            .await?;
            let p = s.wait(&mut rx, "Text Response").await?;
            match p.bhs {
                Bhs::TextResponse(r) => {
                    if let Some(all) = acc.push(&p.data, r.continue_bit)? {
                        return Ok(text::parse_allow_duplicates(&all)?);
                    }
                    ttt = r.ttt;
                }
                Bhs::Reject(r) => return Err(Error::Reject(r.reason)),
                other => {
                    return Err(Error::Protocol(format!(
                        "unexpected opcode {:#04x} for a Text Request",
                        other.opcode()
                    )))
                }
            }
        }
        Err(Error::Protocol(format!(
            "Text Response continued for {MAX_TEXT_PDUS} PDUs"
        )))
    }

    /// NOP-Out ping, waiting for the echo.
    pub async fn ping(&self) -> Result<()> {
        self.shared.ping(self.shared.timers.command_timeout).await
    }

    /// Logout (close the session, RFC 7143 §11.14), then close the connection.
    pub async fn logout(&self) -> Result<()> {
        let s = &*self.shared;
        let (itt, mut rx) = s.register()?;
        let _guard = TaskGuard { shared: s, itt };
        s.send_numbered(true, |cmd_sn, exp_stat_sn| {
            Pdu::new(
                Bhs::LogoutRequest(LogoutRequest {
                    immediate: true,
                    reason: pdu::logout::CLOSE_SESSION,
                    itt,
                    cid: 0,
                    cmd_sn,
                    exp_stat_sn,
                }),
                Bytes::new(),
            )
        })
        .await?;
        let p = s.wait(&mut rx, "Logout Response").await?;
        let result = match p.bhs {
            Bhs::LogoutResponse(r) if r.response == pdu::logout::RESPONSE_SUCCESS => Ok(()),
            Bhs::LogoutResponse(r) => Err(Error::Protocol(format!(
                "logout refused with response {}",
                r.response
            ))),
            Bhs::Reject(r) => Err(Error::Reject(r.reason)),
            other => Err(Error::Protocol(format!(
                "unexpected opcode {:#04x} for a Logout Request",
                other.opcode()
            ))),
        };
        self.abort("logged out").await;
        result
    }
}

fn finish(buf: Option<BytesMut>, high: usize) -> Bytes {
    match buf {
        Some(mut b) => {
            b.truncate(high);
            b.freeze()
        }
        None => Bytes::new(),
    }
}

impl Shared {
    fn register(&self) -> Result<(u32, mpsc::UnboundedReceiver<Pdu>)> {
        let mut st = self.st.lock();
        if let Some(why) = &st.dead {
            return Err(Error::ConnectionLost(why.clone()));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        loop {
            st.next_itt = st.next_itt.wrapping_add(1);
            let itt = st.next_itt;
            if itt != RESERVED_TAG && !st.tasks.contains_key(&itt) {
                st.tasks.insert(itt, tx);
                return Ok((itt, rx));
            }
        }
    }

    fn kill(&self, reason: &str) {
        let mut st = self.st.lock();
        if st.dead.is_none() {
            tracing::debug!(portal = %self.addr, reason, "connection dead");
            st.dead = Some(reason.to_string());
        }
        st.tasks.clear();
        drop(st);
        self.window.notify_waiters();
    }

    fn lost(&self) -> Error {
        Error::ConnectionLost(
            self.st
                .lock()
                .dead
                .clone()
                .unwrap_or_else(|| "connection closed".into()),
        )
    }

    /// Waits for the next PDU of a task; a timeout kills the connection (ERL 0
    /// cannot recover a single task; the session reconnects).
    async fn wait(&self, rx: &mut mpsc::UnboundedReceiver<Pdu>, what: &str) -> Result<Pdu> {
        match tokio::time::timeout(self.timers.command_timeout, rx.recv()).await {
            Ok(Some(p)) => Ok(p),
            Ok(None) => Err(self.lost()),
            Err(_) => {
                let why = format!("no answer to a {what} in {:?}", self.timers.command_timeout);
                self.kill(&why);
                Err(Error::Timeout(why))
            }
        }
    }

    /// Sends a PDU that carries CmdSN: waits for the window (unless immediate),
    /// numbers it and writes it, in CmdSN order.
    async fn send_numbered(
        &self,
        immediate: bool,
        build: impl FnOnce(u32, u32) -> Pdu,
    ) -> Result<()> {
        let deadline = tokio::time::Instant::now() + self.timers.command_timeout;
        let mut build = Some(build);
        loop {
            let notified = self.window.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut w = self.writer.lock().await;
                let numbers = {
                    let mut st = self.st.lock();
                    if st.dead.is_some() {
                        None
                    } else {
                        let open = Serial(st.cmd_sn)
                            .in_window(Serial(st.exp_cmd_sn), Serial(st.max_cmd_sn));
                        if immediate || open {
                            let sn = st.cmd_sn;
                            if !immediate {
                                st.cmd_sn = sn.wrapping_add(1);
                            }
                            Some(Some((sn, st.exp_stat_sn)))
                        } else {
                            Some(None)
                        }
                    }
                };
                match numbers {
                    None => return Err(self.lost()),
                    Some(Some((sn, exp))) => {
                        let f = build.take().expect("built once");
                        let pdu = f(sn, exp);
                        return self.write_locked(&mut w, &pdu).await;
                    }
                    Some(None) => {
                        self.window_waits
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let why = "the CmdSN window stayed closed".to_string();
                self.kill(&why);
                return Err(Error::Timeout(why));
            }
        }
    }

    async fn send(&self, pdu: &Pdu) -> Result<()> {
        let mut w = self.writer.lock().await;
        self.write_locked(&mut w, pdu).await
    }

    async fn write_locked(&self, w: &mut Option<OwnedWriteHalf>, pdu: &Pdu) -> Result<()> {
        let Some(stream) = w.as_mut() else {
            return Err(self.lost());
        };
        let e = frame::encode(pdu, &self.tx_limits);
        let r = if e.data.len() <= 16 * 1024 {
            stream.write_all(&e.to_bytes()).await
        } else {
            async {
                stream.write_all(&e.head).await?;
                stream.write_all(&e.data).await?;
                stream.write_all(&e.tail).await
            }
            .await
        };
        r.map_err(|source| {
            self.kill(&format!("write failed: {source}"));
            Error::Io {
                addr: self.addr,
                source,
            }
        })
    }

    /// Sends bytes `start..end` of `data` as Data-Out PDUs of at most the target's
    /// MaxRecvDataSegmentLength, DataSN from 0, F on the last.
    async fn send_data_out(
        &self,
        itt: u32,
        ttt: u32,
        data: &Bytes,
        start: u32,
        end: u32,
    ) -> Result<()> {
        let chunk = self.tx_limits.max_recv_data_segment_length.max(512);
        let mut off = start;
        let mut data_sn = 0;
        while off < end {
            let len = chunk.min(end - off);
            let exp_stat_sn = self.st.lock().exp_stat_sn;
            let d = DataOut {
                final_bit: off + len == end,
                lun: self.lun_field,
                itt,
                ttt,
                exp_stat_sn,
                data_sn,
                buffer_offset: off,
            };
            let bytes = data.slice(off as usize..(off + len) as usize);
            self.send(&Pdu::new(Bhs::DataOut(d), bytes)).await?;
            off += len;
            data_sn += 1;
        }
        Ok(())
    }

    async fn ping(&self, limit: Duration) -> Result<()> {
        let (itt, mut rx) = self.register()?;
        let _guard = TaskGuard { shared: self, itt };
        self.send_numbered(true, |cmd_sn, exp_stat_sn| {
            Pdu::new(
                Bhs::NopOut(NopOut {
                    immediate: true,
                    lun: 0,
                    itt,
                    ttt: RESERVED_TAG,
                    cmd_sn,
                    exp_stat_sn,
                }),
                Bytes::from_static(PING_DATA),
            )
        })
        .await?;
        match tokio::time::timeout(limit, rx.recv()).await {
            Ok(Some(p)) => match p.bhs {
                Bhs::NopIn(_) => Ok(()),
                Bhs::Reject(r) => Err(Error::Reject(r.reason)),
                other => Err(Error::Protocol(format!(
                    "unexpected opcode {:#04x} for a NOP-Out",
                    other.opcode()
                ))),
            },
            Ok(None) => Err(self.lost()),
            Err(_) => Err(Error::Timeout(format!("no NOP-In within {limit:?}"))),
        }
    }

    /// Takes in the sequence numbers of a PDU from the target.
    fn note_numbers(&self, bhs: &Bhs) {
        let (stat_sn, exp, max) = match bhs {
            Bhs::ScsiResponse(r) => (Some(r.stat_sn), r.exp_cmd_sn, r.max_cmd_sn),
            Bhs::DataIn(d) => (
                d.status_present.then_some(d.stat_sn),
                d.exp_cmd_sn,
                d.max_cmd_sn,
            ),
            Bhs::NopIn(n) => (
                (n.itt != RESERVED_TAG).then_some(n.stat_sn),
                n.exp_cmd_sn,
                n.max_cmd_sn,
            ),
            Bhs::TaskMgmtResponse(r) => (Some(r.stat_sn), r.exp_cmd_sn, r.max_cmd_sn),
            Bhs::TextResponse(r) => (Some(r.stat_sn), r.exp_cmd_sn, r.max_cmd_sn),
            Bhs::LogoutResponse(r) => (Some(r.stat_sn), r.exp_cmd_sn, r.max_cmd_sn),
            Bhs::Reject(r) => (Some(r.stat_sn), r.exp_cmd_sn, r.max_cmd_sn),
            Bhs::R2t(r) => (None, r.exp_cmd_sn, r.max_cmd_sn),
            Bhs::AsyncMessage(a) => (Some(a.stat_sn), a.exp_cmd_sn, a.max_cmd_sn),
            _ => return,
        };
        let mut st = self.st.lock();
        st.last_rx = Instant::now();
        if let Some(s) = stat_sn {
            if Serial(s) >= Serial(st.exp_stat_sn) {
                st.exp_stat_sn = s.wrapping_add(1);
            }
        }
        // RFC 7143 §4.2.2.1: take a window only if MaxCmdSN >= ExpCmdSN - 1, and
        // only one later than what we hold.
        let sane = Serial(max) >= Serial(exp.wrapping_sub(1));
        let mut moved = false;
        if sane {
            if Serial(exp) > Serial(st.exp_cmd_sn) {
                st.exp_cmd_sn = exp;
                moved = true;
            }
            if Serial(max) > Serial(st.max_cmd_sn) {
                st.max_cmd_sn = max;
                moved = true;
            }
        }
        drop(st);
        if moved {
            self.window.notify_waiters();
        }
    }

    async fn on_pdu(&self, p: Pdu) {
        self.note_numbers(&p.bhs);
        let itt = match &p.bhs {
            Bhs::NopIn(n) => {
                if n.ttt != RESERVED_TAG {
                    // A ping from the target: answer with its TTT (RFC 7143 §11.18).
                    let exp_stat_sn = self.st.lock().exp_stat_sn;
                    let cmd_sn = self.st.lock().cmd_sn;
                    let reply = NopOut {
                        immediate: true,
                        lun: n.lun,
                        itt: RESERVED_TAG,
                        ttt: n.ttt,
                        cmd_sn,
                        exp_stat_sn,
                    };
                    let _ = self
                        .send(&Pdu::new(Bhs::NopOut(reply), p.data.clone()))
                        .await;
                }
                n.itt
            }
            Bhs::AsyncMessage(a) => {
                let sense = (a.event == pdu::async_event::SCSI_ASYNC_EVENT && p.data.len() > 2)
                    .then(|| Sense::parse(&p.data[2..]))
                    .flatten();
                tracing::info!(portal = %self.addr, event = a.event, ?sense, "asynchronous message");
                self.st.lock().events.push(AsyncEvent {
                    event: a.event,
                    sense,
                });
                match a.event {
                    pdu::async_event::LOGOUT_REQUEST
                    | pdu::async_event::CONNECTION_DROP
                    | pdu::async_event::SESSION_DROP => {
                        self.kill(&format!("the target sent asynchronous event {}", a.event));
                    }
                    _ => {}
                }
                return;
            }
            Bhs::Reject(_) => {
                if p.data.len() >= BHS_LEN {
                    let mut raw = [0u8; BHS_LEN];
                    raw.copy_from_slice(&p.data[..BHS_LEN]);
                    pdu::raw_itt(&raw)
                } else {
                    RESERVED_TAG
                }
            }
            Bhs::ScsiResponse(r) => r.itt,
            Bhs::DataIn(d) => d.itt,
            Bhs::R2t(r) => r.itt,
            Bhs::TextResponse(r) => r.itt,
            Bhs::LogoutResponse(r) => r.itt,
            Bhs::TaskMgmtResponse(r) => r.itt,
            other => {
                tracing::warn!(portal = %self.addr, opcode = other.opcode(), "unexpected PDU");
                return;
            }
        };
        if itt == RESERVED_TAG {
            return;
        }
        let tx = self.st.lock().tasks.get(&itt).cloned();
        match tx {
            Some(tx) => {
                let _ = tx.send(p);
            }
            None => tracing::debug!(portal = %self.addr, itt, "PDU for no task"),
        }
    }
}

async fn read_loop(shared: Arc<Shared>, mut read: OwnedReadHalf, mut rx: BytesMut) {
    let why = loop {
        loop {
            match frame::decode(&mut rx, &shared.rx_limits) {
                Ok(Some(p)) => shared.on_pdu(p).await,
                Ok(None) => break,
                Err(e) => {
                    // ERL 0: a digest error or an oversized segment ends the connection.
                    shared.kill(&format!("bad PDU from the target: {e}"));
                    return;
                }
            }
        }
        if rx.capacity() - rx.len() < 64 * 1024 {
            rx.reserve(256 * 1024);
        }
        match read.read_buf(&mut rx).await {
            Ok(0) => break "the target closed the connection".to_string(),
            Ok(_) => {}
            Err(e) => break format!("read failed: {e}"),
        }
    };
    shared.kill(&why);
}

async fn keepalive(weak: Weak<Shared>) {
    loop {
        let Some(s) = weak.upgrade() else { return };
        let interval = s.timers.nop_interval;
        let idle = s.st.lock().last_rx.elapsed();
        if s.st.lock().dead.is_some() {
            return;
        }
        if idle >= interval {
            let limit = s.timers.nop_timeout;
            match s.ping(limit).await {
                Ok(()) => {}
                Err(e) => {
                    s.kill(&format!("keepalive: {e}"));
                    if let Some(mut w) = s.writer.lock().await.take() {
                        let _ = w.shutdown().await;
                    }
                    return;
                }
            }
            drop(s);
            continue;
        }
        let wait = interval - idle;
        drop(s);
        tokio::time::sleep(wait).await;
    }
}
