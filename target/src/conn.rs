//! One iSCSI connection: a reader that frames PDUs and drives login and the
//! full-feature phase, and a writer task that owns the socket's write half.
//!
//! The writer stamps every outgoing PDU with StatSN, ExpCmdSN and MaxCmdSN at the
//! moment it goes out, so that numbering always follows the order on the wire
//! whatever order tasks finish in (RFC 7143 §4.2.2.2).
//!
//! Error handling follows RFC 7143 §7 at ErrorRecoveryLevel 0: a malformed or
//! unsupported PDU that leaves the stream intact gets a Reject and we go on; a
//! header digest error, a segment longer than we declared, or a data sequence
//! error (DataSN, offset) drops the connection.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use mosaic_proto::frame::{self, FrameError, FrameLimits};
use mosaic_proto::negotiate::{SessionParams, SessionType};
use mosaic_proto::pdu::{
    logout, opcode, reject_reason, tmf_function, tmf_response, Bhs, DataIn, DataOut, LoginResponse,
    LogoutResponse, NopIn, NopOut, Pdu, R2t, Reject, ScsiCommand, ScsiResponse, TaskMgmtRequest,
    TaskMgmtResponse, TextRequest, TextResponse, BHS_LEN, RESERVED_TAG,
};
use mosaic_proto::scsi::sense::{self, Asc, Sense};
use mosaic_proto::text::{self, TextAccumulator};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::cluster::link::ConnState;
use crate::device::{Device, Nexus, ResetKind, ShortCut};
use crate::latency::{CommandClass, CommandLatency};
use crate::login::{LoginStep, TargetLogin};
use crate::scsi::{ScsiRequest, ScsiResult};
use crate::server::Target;
use crate::session::{CmdSnVerdict, CmdWindow, SessionKey};

/// PDUs queued for the writer; the CmdSN window bounds how many tasks can add to it.
const WRITER_QUEUE: usize = 1024;
/// PDUs the writer gathers into one vectored write.
const WRITE_BATCH: usize = 64;
/// Bytes the reader asks the kernel for at a time.
const READ_CHUNK: usize = 256 * 1024;
/// From this many bytes missing of the PDU in progress, reads stop at its end.
const LARGE_PDU_REST: usize = 32 * 1024;
/// A PDU's bytes besides its data segment, at most: BHS, the largest AHS (255
/// words), two digests and padding.
const MAX_PDU_OVERHEAD: usize = BHS_LEN + 255 * 4 + 2 * 4 + 3;
/// A login that takes longer than this is abandoned (it holds a connection slot).
const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Text a Text Request sequence may accumulate (C bit), bounding memory.
const MAX_TEXT: usize = 64 * 1024;
/// Aborted tasks whose late Data-Out PDUs we silently drop, remembered per connection.
const ABORTED_MEMORY: usize = 1024;
/// Bytes reserved for a write's data before it arrives; the buffer grows as data
/// comes, so a large EDTL alone cannot make us allocate.
const INITIAL_WRITE_BUFFER: usize = 1 << 20;
/// AHS type of an extended CDB (RFC 7143 §11.2.2.3).
const AHS_EXTENDED_CDB: u8 = 1;
/// Largest CDB we accept: 16 bytes in the BHS plus an extended-CDB AHS (SPC-4 §4.2.5).
const MAX_CDB_LEN: usize = 260;

/// A message to the writer task.
#[derive(Debug)]
enum Out {
    /// Send a PDU. `frees_slot`: it answers a non-immediate command, whose CmdSN slot
    /// is released before MaxCmdSN is stamped on it.
    Pdu { pdu: Pdu, frees_slot: bool },
    /// Start numbering with this StatSN (the first Login Response).
    InitStatSn(u32),
    /// Enter full-feature phase: digests and the command window from now on.
    FullFeature {
        limits: FrameLimits,
        window: Arc<CmdWindow>,
    },
    /// A response whose StatSN is reserved now, in wire order, and whose bytes come
    /// later (a short-cut read: the page's owner builds them with these numbers).
    /// The writer sends what it has, answers `numbers`, and sends nothing else
    /// until `body` arrives: StatSN stays in order on the wire.
    Reserved {
        numbers: oneshot::Sender<SeqNumbers>,
        body: oneshot::Receiver<ReservedBody>,
        frees_slot: bool,
    },
    /// Flush what is queued, then close the socket.
    Close,
}

/// The numbers a reserved response carries.
#[derive(Debug, Clone, Copy)]
struct SeqNumbers {
    stat_sn: u32,
    exp_cmd_sn: u32,
    max_cmd_sn: u32,
}

/// What fills a reserved response.
#[derive(Debug)]
enum ReservedBody {
    /// PDUs built elsewhere with the reserved numbers, written unchanged.
    Encoded(Bytes),
    /// PDUs to stamp with the reserved numbers and encode here (the short-cut
    /// failed and the command ran by the normal path).
    Pdus(Vec<Pdu>),
}

/// Why the reader stopped.
#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("connection closed by peer")]
    Closed,
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Frame(FrameError),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("writer stopped")]
    WriterGone,
    #[error("stopped: {0}")]
    Stopped(&'static str),
}

/// Serves one accepted connection to its end.
pub async fn serve(
    target: Arc<Target>,
    stream: TcpStream,
    peer: SocketAddr,
    shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().ok();
    let (rd, wr) = stream.into_split();
    let (tx, rx) = mpsc::channel(WRITER_QUEUE);
    let writer = tokio::spawn(writer_task(wr, rx));
    let mut conn = Conn {
        target,
        rd,
        buf: BytesMut::with_capacity(READ_CHUNK),
        limits: FrameLimits::default(),
        tx,
        peer,
        local,
        shutdown,
    };
    match conn.run().await {
        Ok(()) | Err(ConnError::Closed) => debug!(%peer, "connection closed"),
        Err(e) => info!(%peer, "connection ended: {e}"),
    }
    let _ = conn.tx.send(Out::Close).await;
    drop(conn);
    let _ = writer.await;
}

struct Conn {
    target: Arc<Target>,
    rd: OwnedReadHalf,
    buf: BytesMut,
    /// What we accept: MaxRecvDataSegmentLength we declared and digests in force.
    limits: FrameLimits,
    tx: mpsc::Sender<Out>,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    shutdown: watch::Receiver<bool>,
}

/// Result of reading one PDU.
enum Read {
    Pdu(Pdu),
    /// A PDU whose data digest failed; it was consumed.
    BadDataDigest(Box<[u8; BHS_LEN]>),
}

impl Conn {
    async fn send(&self, pdu: Pdu, frees_slot: bool) -> Result<(), ConnError> {
        self.tx
            .send(Out::Pdu { pdu, frees_slot })
            .await
            .map_err(|_| ConnError::WriterGone)
    }

    async fn read_pdu(&mut self) -> Result<Read, ConnError> {
        loop {
            match frame::decode(&mut self.buf, &self.limits) {
                Ok(Some(p)) => return Ok(Read::Pdu(p)),
                Ok(None) => {}
                Err(FrameError::DataDigest { header }) => return Ok(Read::BadDataDigest(header)),
                Err(e) => {
                    if let FrameError::DataSegmentTooLong { header, .. } = &e {
                        // Quote the header so the initiator learns why, then drop.
                        let _ = self
                            .send(reject_pdu(reject_reason::PROTOCOL_ERROR, header), false)
                            .await;
                    }
                    return Err(ConnError::Frame(e));
                }
            }
            // Bytes still missing of the PDU in progress, bounded by what `decode`
            // accepts (its header may not have been checked yet: digest pending).
            let most = self.limits.max_recv_data_segment_length as usize + MAX_PDU_OVERHEAD;
            let missing = match self.buf.first_chunk::<BHS_LEN>() {
                Some(h) => frame::wire_len(h, &self.limits)
                    .min(most)
                    .saturating_sub(self.buf.len()),
                None => 0,
            };
            if self.buf.capacity() - self.buf.len() < missing.max(READ_CHUNK / 4) {
                // Growing copies the partial PDU: make room for all of it at once.
                self.buf.reserve(missing.max(READ_CHUNK));
            }
            // The rest of a large PDU is read up to its end only, so the next PDU
            // starts a fresh buffer and no large partial PDU is ever copied.
            let n = if missing >= LARGE_PDU_REST {
                (&mut self.rd)
                    .take(missing as u64)
                    .read_buf(&mut self.buf)
                    .await?
            } else {
                self.rd.read_buf(&mut self.buf).await?
            };
            if n == 0 {
                return Err(ConnError::Closed);
            }
        }
    }

    async fn run(&mut self) -> Result<(), ConnError> {
        let (result, resp, body) = match tokio::time::timeout(LOGIN_TIMEOUT, self.login()).await {
            Ok(r) => r?,
            Err(_) => return Err(ConnError::Protocol("login timed out".into())),
        };
        self.full_feature(result, resp, body).await
    }

    /// The login phase: returns what was agreed and the final Login Response, which
    /// is sent once the session has its TSIH.
    async fn login(
        &mut self,
    ) -> Result<(crate::login::LoginResult, LoginResponse, Bytes), ConnError> {
        let mut seed = [0u8; 1 + mosaic_proto::chap::CHALLENGE_LEN];
        getrandom::getrandom(&mut seed)
            .map_err(|e| ConnError::Protocol(format!("no randomness for CHAP: {e}")))?;
        let mut challenge = [0u8; mosaic_proto::chap::CHALLENGE_LEN];
        challenge.copy_from_slice(&seed[1..]);
        let mut login_target = self.target.login.clone();
        // Volumes may have come or gone since the server started.
        login_target.target_names = self.target.exports.names();
        let mut login = TargetLogin::new(login_target, (seed[0], challenge));
        let mut first = true;
        loop {
            let pdu = match self.read_pdu().await? {
                Read::Pdu(p) => p,
                Read::BadDataDigest(_) => {
                    return Err(ConnError::Protocol("data digest during login".into()))
                }
            };
            let Bhs::LoginRequest(req) = pdu.bhs else {
                // RFC 7143 §6.3: anything but a Login Request before full-feature
                // phase is a protocol error; the connection is terminated.
                return Err(ConnError::Protocol(format!(
                    "opcode {:#04x} before login completed",
                    pdu.bhs.opcode()
                )));
            };
            if first {
                self.tx
                    .send(Out::InitStatSn(req.exp_stat_sn))
                    .await
                    .map_err(|_| ConnError::WriterGone)?;
                first = false;
            }
            let depth = self.target.settings.limits.queue_depth;
            let number = |mut r: LoginResponse| {
                r.exp_cmd_sn = req.cmd_sn;
                r.max_cmd_sn = req.cmd_sn.wrapping_add(depth - 1);
                r
            };
            match login.handle(&req, &pdu.data) {
                LoginStep::Continue(r, body) => {
                    self.send(Pdu::new(Bhs::LoginResponse(number(r)), body), false)
                        .await?;
                }
                LoginStep::Redirect(r, body) => {
                    info!(peer = %self.peer, "login redirected: {}", String::from_utf8_lossy(&body).trim_end_matches('\0'));
                    self.send(Pdu::new(Bhs::LoginResponse(number(r)), body), false)
                        .await?;
                    return Err(ConnError::Stopped("login redirected"));
                }
                LoginStep::Fail(r, why) => {
                    warn!(peer = %self.peer, "login refused: {why}");
                    self.send(Pdu::new(Bhs::LoginResponse(number(r)), Bytes::new()), false)
                        .await?;
                    return Err(ConnError::Stopped("login refused"));
                }
                LoginStep::Complete(r, body, result) => {
                    let mut r = number(r);
                    if result.tsih != 0 {
                        // Adding a connection to an existing session: we negotiate
                        // MaxConnections=1, so there is nothing to add it to.
                        let status = if self.target.registry.contains(result.tsih) {
                            mosaic_proto::pdu::login_status::TOO_MANY_CONNECTIONS
                        } else {
                            mosaic_proto::pdu::login_status::SESSION_DOES_NOT_EXIST
                        };
                        r.transit = false;
                        r.status_class = status.0;
                        r.status_detail = status.1;
                        self.send(Pdu::new(Bhs::LoginResponse(r), Bytes::new()), false)
                            .await?;
                        return Err(ConnError::Stopped("login to an existing session refused"));
                    }
                    return Ok((*result, r, body));
                }
            }
        }
    }

    /// Registers the session, sends the final Login Response and serves the
    /// full-feature phase until logout, disconnect, reinstatement or shutdown.
    async fn full_feature(
        &mut self,
        result: crate::login::LoginResult,
        mut resp: LoginResponse,
        body: Bytes,
    ) -> Result<(), ConnError> {
        let registered = self
            .target
            .registry
            .register(
                SessionKey {
                    initiator_name: result.initiator_name.clone(),
                    isid: result.isid,
                    target_name: result.target_name.clone().unwrap_or_default(),
                },
                self.target.settings.limits.max_sessions,
            )
            .await;
        let handle = match registered {
            Ok(h) => h,
            Err(e) => {
                let s = mosaic_proto::pdu::login_status::OUT_OF_RESOURCES;
                resp.transit = false;
                resp.status_class = s.0;
                resp.status_detail = s.1;
                self.send(Pdu::new(Bhs::LoginResponse(resp), Bytes::new()), false)
                    .await?;
                warn!(peer = %self.peer, "login refused: {e}");
                return Err(ConnError::Stopped("no session slot"));
            }
        };
        resp.tsih = handle.tsih;
        self.send(Pdu::new(Bhs::LoginResponse(resp), body), false)
            .await?;
        let p = result.params.clone();
        let window = Arc::new(CmdWindow::new(
            result.cmd_sn,
            self.target.settings.limits.queue_depth,
        ));
        self.limits = FrameLimits {
            header_digest: p.header_digest,
            data_digest: p.data_digest,
            max_recv_data_segment_length: p.max_recv_data_segment_length_target,
        };
        self.tx
            .send(Out::FullFeature {
                limits: FrameLimits {
                    max_recv_data_segment_length: p.max_recv_data_segment_length_initiator,
                    ..self.limits
                },
                window: window.clone(),
            })
            .await
            .map_err(|_| ConnError::WriterGone)?;
        let lu = result
            .target_name
            .as_ref()
            .and_then(|t| self.target.exports.get(t))
            .map(|e| e.device.clone());
        info!(
            peer = %self.peer,
            initiator = %result.initiator_name,
            target = result.target_name.as_deref().unwrap_or("(discovery)"),
            tsih = handle.tsih,
            header_digest = p.header_digest,
            data_digest = p.data_digest,
            "login complete"
        );
        let nexus = Arc::new(Nexus::new(
            &result.initiator_name,
            result.isid,
            result.target_name.as_deref().unwrap_or(""),
            self.target.identity.tpgt,
            self.target.identity.relative_port,
        ));
        if let Some(d) = &lu {
            // From now on resets and reservation changes queue unit attentions for it.
            d.nexus_added(&nexus);
        }
        let mut session = Session {
            tsih: handle.tsih,
            nexus,
            initiator_name: result.initiator_name.clone(),
            params: p,
            kind: result.session_type,
            target_name: result.target_name.clone(),
            lu,
            window,
            running: Arc::new(Mutex::new(HashMap::new())),
            pending: HashMap::new(),
            aborted: VecDeque::new(),
            aborted_set: HashSet::new(),
            next_ttt: 1,
            ping: None,
            text: None,
            latency: self.target.latency.clone(),
        };
        // A connection naming its MPIO group counts in the group's placement until
        // it ends (the group portal spreads the group's connections over NICs).
        let _group = result
            .params
            .vendor
            .iter()
            .find(|(k, _)| k == crate::cluster::portals::MPIO_GROUP_KEY)
            .zip(self.local)
            .map(|((_, g), local)| self.target.portals.join_group(g, local));
        let mut stop = handle.stop.clone();
        let abort_tasks = handle.abort_tasks.clone();
        let mut shutdown = self.shutdown.clone();
        let outcome = loop {
            let idle = self.target.settings.nop_interval;
            let deadline = match (&session.ping, idle) {
                (Some((_, sent)), _) => Some(*sent + self.target.settings.nop_timeout),
                (None, Some(i)) => Some(Instant::now() + i),
                (None, None) => None,
            };
            let read = tokio::select! {
                r = self.read_pdu() => r,
                _ = stopped(&mut stop) => break Err(ConnError::Stopped("session reinstated")),
                _ = abort_tasks.notified() => {
                    // Another initiator's PREEMPT AND ABORT (SPC-4 §5.13.11.2.4).
                    info!(peer = %self.peer, "tasks aborted by another initiator's PREEMPT AND ABORT");
                    session.abort_all();
                    continue;
                }
                _ = stopped(&mut shutdown) => break Err(ConnError::Stopped("target shutting down")),
                _ = sleep_until_opt(deadline) => {
                    if session.ping.is_some() {
                        break Err(ConnError::Protocol("no answer to NOP-In ping".into()));
                    }
                    let ttt = session.new_ttt();
                    session.ping = Some((ttt, Instant::now()));
                    let ping = NopIn { lun: 0, itt: RESERVED_TAG, ttt, ..Default::default() };
                    if let Err(e) = self.send(Pdu::new(Bhs::NopIn(ping), Bytes::new()), false).await {
                        break Err(e);
                    }
                    continue;
                }
            };
            let pdu = match read {
                Ok(Read::Pdu(p)) => p,
                Ok(Read::BadDataDigest(h)) => {
                    // RFC 7143 §7.8: discard, Reject with "data digest error", go on.
                    // A command whose Data-Out was lost cannot complete at ERL 0.
                    warn!(peer = %self.peer, "data digest error on opcode {:#04x}", h[0] & 0x3f);
                    if let Err(e) = self
                        .send(reject_pdu(reject_reason::DATA_DIGEST_ERROR, &h), false)
                        .await
                    {
                        break Err(e);
                    }
                    if h[0] & 0x3f == opcode::DATA_OUT {
                        break Err(ConnError::Protocol(
                            "Data-Out lost to a data digest error".into(),
                        ));
                    }
                    continue;
                }
                Err(e) => break Err(e),
            };
            // Any PDU shows the initiator is alive.
            if let Some((ttt, _)) = session.ping {
                if !matches!(pdu.bhs, Bhs::NopOut(n) if n.ttt != ttt && n.ttt != RESERVED_TAG) {
                    session.ping = None;
                }
            }
            match self.dispatch(&mut session, pdu).await {
                Ok(Flow::Continue) => {}
                Ok(Flow::Close) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        // The connection is going away: tasks still running will never be answered.
        session.abort_all();
        if let Some(d) = &session.lu {
            d.nexus_lost(&session.nexus);
        }
        if let Err(ConnError::Stopped(why)) = &outcome {
            info!(peer = %self.peer, tsih = handle.tsih, "session stopped: {why}");
        }
        // Dropping the handle removes the session from the registry.
        drop(handle);
        outcome
    }

    async fn dispatch(&mut self, s: &mut Session, pdu: Pdu) -> Result<Flow, ConnError> {
        match pdu.bhs {
            Bhs::ScsiCommand(c) => self.scsi_command(s, c, pdu.ahs, pdu.data).await,
            Bhs::DataOut(d) => self.data_out(s, d, pdu.data).await,
            Bhs::NopOut(n) => self.nop_out(s, n, pdu.data).await,
            Bhs::TaskMgmtRequest(t) => self.task_mgmt(s, t).await,
            Bhs::TextRequest(t) => self.text_request(s, t, pdu.data).await,
            Bhs::LogoutRequest(l) => {
                if s.window.admit(l.cmd_sn, l.immediate) == CmdSnVerdict::Ignore {
                    return Ok(Flow::Continue);
                }
                let response = match l.reason {
                    logout::CLOSE_SESSION | logout::CLOSE_CONNECTION => logout::RESPONSE_SUCCESS,
                    _ => logout::RESPONSE_RECOVERY_NOT_SUPPORTED,
                };
                if response != logout::RESPONSE_SUCCESS {
                    let r = LogoutResponse {
                        response,
                        itt: l.itt,
                        ..Default::default()
                    };
                    self.send(Pdu::new(Bhs::LogoutResponse(r), Bytes::new()), !l.immediate)
                        .await?;
                    return Ok(Flow::Continue);
                }
                // RFC 7143 §11.14: outstanding tasks are terminated before the response.
                s.abort_all();
                let r = LogoutResponse {
                    response,
                    itt: l.itt,
                    ..Default::default()
                };
                self.send(Pdu::new(Bhs::LogoutResponse(r), Bytes::new()), !l.immediate)
                    .await?;
                info!(peer = %self.peer, "logout");
                Ok(Flow::Close)
            }
            Bhs::SnackRequest(_) => {
                // We run at ErrorRecoveryLevel 0: no SNACK support (RFC 7143 §11.16).
                let raw = pdu.bhs.encode(pdu.ahs.len(), pdu.data.len() as u32);
                self.send(reject_pdu(reject_reason::SNACK_REJECT, &raw), false)
                    .await?;
                Ok(Flow::Continue)
            }
            Bhs::LoginRequest(_) => {
                let raw = pdu.bhs.encode(pdu.ahs.len(), pdu.data.len() as u32);
                self.send(reject_pdu(reject_reason::PROTOCOL_ERROR, &raw), false)
                    .await?;
                Ok(Flow::Continue)
            }
            Bhs::Unknown(raw) => {
                warn!(peer = %self.peer, "unknown opcode {:#04x}", raw[0] & 0x3f);
                self.send(
                    reject_pdu(reject_reason::COMMAND_NOT_SUPPORTED, &raw),
                    false,
                )
                .await?;
                Ok(Flow::Continue)
            }
            other => {
                // A target-to-initiator opcode sent to us.
                let raw = other.encode(pdu.ahs.len(), pdu.data.len() as u32);
                warn!(peer = %self.peer, "initiator sent target opcode {:#04x}", other.opcode());
                self.send(reject_pdu(reject_reason::PROTOCOL_ERROR, &raw), false)
                    .await?;
                Ok(Flow::Continue)
            }
        }
    }

    async fn nop_out(
        &mut self,
        s: &mut Session,
        n: NopOut,
        data: Bytes,
    ) -> Result<Flow, ConnError> {
        if n.itt == RESERVED_TAG {
            // An answer to our ping, or a NOP the initiator wants no answer to. It must
            // be immediate (RFC 7143 §11.18), so it does not take a CmdSN.
            return Ok(Flow::Continue);
        }
        if s.window.admit(n.cmd_sn, n.immediate) == CmdSnVerdict::Ignore {
            return Ok(Flow::Continue);
        }
        let reply = NopIn {
            lun: n.lun,
            itt: n.itt,
            ttt: RESERVED_TAG,
            ..Default::default()
        };
        // The ping data comes back unchanged (RFC 7143 §11.19.2).
        self.send(Pdu::new(Bhs::NopIn(reply), data), !n.immediate)
            .await?;
        Ok(Flow::Continue)
    }

    async fn text_request(
        &mut self,
        s: &mut Session,
        t: TextRequest,
        data: Bytes,
    ) -> Result<Flow, ConnError> {
        if s.window.admit(t.cmd_sn, t.immediate) == CmdSnVerdict::Ignore {
            return Ok(Flow::Continue);
        }
        let acc = s
            .text
            .get_or_insert_with(|| TextAccumulator::with_limit(MAX_TEXT));
        let keys = match acc.push_pairs(&data, t.continue_bit) {
            Ok(Some(keys)) => {
                s.text = None;
                keys
            }
            Ok(None) => {
                // More text follows: answer empty and ask for the rest (RFC 7143 §11.10.2).
                let resp = TextResponse {
                    final_bit: false,
                    lun: t.lun,
                    itt: t.itt,
                    ttt: s.new_ttt(),
                    ..Default::default()
                };
                self.send(
                    Pdu::new(Bhs::TextResponse(resp), Bytes::new()),
                    !t.immediate,
                )
                .await?;
                return Ok(Flow::Continue);
            }
            Err(e) => {
                s.text = None;
                warn!(peer = %self.peer, "text request: {e}");
                let raw = Bhs::TextRequest(t).encode(0, data.len() as u32);
                self.send(
                    reject_pdu(reject_reason::PROTOCOL_ERROR, &raw),
                    !t.immediate,
                )
                .await?;
                return Ok(Flow::Continue);
            }
        };
        let resp = TextResponse {
            final_bit: true,
            lun: t.lun,
            itt: t.itt,
            ttt: RESERVED_TAG,
            ..Default::default()
        };
        let answer = self.text_answer(s, &keys);
        // Our answers are built from valid names; encoding cannot fail on them.
        let body = text::encode(&answer).unwrap_or_default();
        self.send(Pdu::new(Bhs::TextResponse(resp), body), !t.immediate)
            .await?;
        Ok(Flow::Continue)
    }

    /// Answers the keys of a full-feature Text Request: SendTargets (RFC 7143
    /// Appendix C); other keys are not negotiable after login.
    fn text_answer(&self, s: &Session, keys: &[(String, String)]) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (k, v) in keys {
            if k == "SendTargets" {
                let all = self.target.exports.names();
                let mut names: Vec<&String> = match (s.kind, v.as_str()) {
                    (SessionType::Discovery, "All") => all.iter().collect(),
                    // In a Normal session only the session's own target is reported.
                    (SessionType::Normal, "" | "All") => s.target_name.iter().collect(),
                    (_, name) => all.iter().filter(|t| *t == name).collect(),
                };
                names.sort();
                // Only the targets this initiator may log in to (RFC 7143 §13.3).
                names.retain(|n| {
                    self.target.login.access.get(*n).is_none_or(|a| {
                        a.initiators.is_empty() || a.initiators.contains(&s.initiator_name)
                    })
                });
                for name in names {
                    out.push(("TargetName".to_string(), name.clone()));
                    for (addr, tpgt) in self.target.portals.list() {
                        // A wildcard portal is reported as the address this
                        // connection reached us on.
                        let addr = if addr.ip().is_unspecified() {
                            self.local
                                .map(|l| SocketAddr::new(l.ip(), addr.port()))
                                .unwrap_or(addr)
                        } else {
                            addr
                        };
                        out.push((
                            "TargetAddress".to_string(),
                            crate::cluster::portals::target_address(addr, tpgt),
                        ));
                    }
                }
            } else if k.starts_with("X-") || k.starts_with("X#") {
                out.push((k.clone(), "NotUnderstood".to_string()));
            } else {
                out.push((k.clone(), "Reject".to_string()));
            }
        }
        out
    }

    /// Task Management Function Request (RFC 7143 §11.5, RFC 7144 §4.1 for QUERY
    /// TASK, QUERY TASK SET, I_T NEXUS RESET and QUERY ASYNCHRONOUS EVENT).
    async fn task_mgmt(&mut self, s: &mut Session, t: TaskMgmtRequest) -> Result<Flow, ConnError> {
        if s.window.admit(t.cmd_sn, t.immediate) == CmdSnVerdict::Ignore {
            return Ok(Flow::Continue);
        }
        let mut additional = [0u8; 3];
        let response = match &s.lu {
            None => tmf_response::REJECTED,
            Some(lu) => {
                let lu = lu.clone();
                let lun_ok = decode_lun(t.lun) == 0;
                match t.function {
                    tmf_function::ABORT_TASK => {
                        if s.abort(t.referenced_task_tag) {
                            tmf_response::COMPLETE
                        } else {
                            tmf_response::TASK_DOES_NOT_EXIST
                        }
                    }
                    tmf_function::ABORT_TASK_SET
                    | tmf_function::CLEAR_TASK_SET
                    | tmf_function::LOGICAL_UNIT_RESET => {
                        if !lun_ok {
                            tmf_response::LUN_DOES_NOT_EXIST
                        } else {
                            s.abort_all();
                            if t.function == tmf_function::LOGICAL_UNIT_RESET {
                                lu.reset(ResetKind::LogicalUnit, &s.nexus);
                                lu.reset_peers(ResetKind::LogicalUnit).await;
                            }
                            tmf_response::COMPLETE
                        }
                    }
                    tmf_function::TARGET_WARM_RESET | tmf_function::TARGET_COLD_RESET => {
                        s.abort_all();
                        let kind = if t.function == tmf_function::TARGET_COLD_RESET {
                            ResetKind::TargetCold
                        } else {
                            ResetKind::TargetWarm
                        };
                        // A target reset reaches every logical unit of the target.
                        for e in self.target.exports.all() {
                            e.device.reset(kind, &s.nexus);
                            e.device.reset_peers(kind).await;
                        }
                        tmf_response::COMPLETE
                    }
                    tmf_function::TASK_REASSIGN => tmf_response::REASSIGNMENT_NOT_SUPPORTED,
                    // SAM-5: FUNCTION SUCCEEDED when the task is in the task set,
                    // FUNCTION COMPLETE when it is not; nothing changes.
                    tmf_function::QUERY_TASK if !lun_ok => tmf_response::LUN_DOES_NOT_EXIST,
                    tmf_function::QUERY_TASK => query_answer(s.has_task(t.referenced_task_tag)),
                    tmf_function::QUERY_TASK_SET if !lun_ok => tmf_response::LUN_DOES_NOT_EXIST,
                    tmf_function::QUERY_TASK_SET => query_answer(s.has_tasks()),
                    // The I_T nexus loss for this session's nexus: its tasks end
                    // here (RFC 7143 §4.2.3: no responses), the logical unit does
                    // the rest; the LUN field is not used. The session stays up.
                    tmf_function::I_T_NEXUS_RESET => {
                        s.abort_all();
                        lu.nexus_reset(&s.nexus);
                        tmf_response::COMPLETE
                    }
                    tmf_function::QUERY_ASYNC_EVENT if !lun_ok => tmf_response::LUN_DOES_NOT_EXIST,
                    tmf_function::QUERY_ASYNC_EVENT => match lu.query_async_event(&s.nexus) {
                        Some(info) => {
                            additional = info;
                            tmf_response::FUNCTION_SUCCEEDED
                        }
                        None => tmf_response::COMPLETE,
                    },
                    _ => tmf_response::NOT_SUPPORTED,
                }
            }
        };
        let r = TaskMgmtResponse {
            response,
            itt: t.itt,
            additional_response_information: additional,
            ..Default::default()
        };
        self.send(
            Pdu::new(Bhs::TaskMgmtResponse(r), Bytes::new()),
            !t.immediate,
        )
        .await?;
        if t.function == tmf_function::TARGET_COLD_RESET && response == tmf_response::COMPLETE {
            // A cold reset also drops every connection of every session (RFC 7143
            // §11.5.1): the others are told to stop, this one closes after the response.
            self.target.registry.stop_all_except(s.tsih);
            return Ok(Flow::Close);
        }
        Ok(Flow::Continue)
    }

    async fn scsi_command(
        &mut self,
        s: &mut Session,
        c: ScsiCommand,
        ahs: Bytes,
        data: Bytes,
    ) -> Result<Flow, ConnError> {
        let raw = || Bhs::ScsiCommand(c).encode(ahs.len(), data.len() as u32);
        if s.window.admit(c.cmd_sn, c.immediate) == CmdSnVerdict::Ignore {
            debug!(peer = %self.peer, cmd_sn = c.cmd_sn, "CmdSN outside the window: ignored");
            return Ok(Flow::Continue);
        }
        let frees_slot = !c.immediate;
        let Some(lu) = s.lu.clone() else {
            // Discovery sessions carry no SCSI (RFC 7143 §4.3).
            self.send(
                reject_pdu(reject_reason::PROTOCOL_ERROR, &raw()),
                frees_slot,
            )
            .await?;
            return Ok(Flow::Continue);
        };
        if s.running.lock().contains_key(&c.itt) || s.pending.contains_key(&c.itt) {
            self.send(
                reject_pdu(reject_reason::TASK_IN_PROGRESS, &raw()),
                frees_slot,
            )
            .await?;
            return Ok(Flow::Continue);
        }
        let cdb = match build_cdb(&c, &ahs) {
            Ok(cdb) => cdb,
            Err(why) => {
                warn!(peer = %self.peer, "SCSI command: {why}");
                self.send(
                    reject_pdu(reject_reason::INVALID_PDU_FIELD, &raw()),
                    frees_slot,
                )
                .await?;
                return Ok(Flow::Continue);
            }
        };
        let edtl = c.expected_data_transfer_length;
        let p = &s.params;
        if !data.is_empty() {
            let problem = if !c.write {
                Some("data with a command that is not a write")
            } else if !p.immediate_data {
                Some("immediate data while ImmediateData=No")
            } else if data.len() as u64 > p.first_burst_length.min(edtl) as u64 {
                Some("immediate data beyond FirstBurstLength or the expected length")
            } else {
                None
            };
            if let Some(why) = problem {
                warn!(peer = %self.peer, "SCSI command: {why}");
                self.send(
                    reject_pdu(reject_reason::PROTOCOL_ERROR, &raw()),
                    frees_slot,
                )
                .await?;
                return Ok(Flow::Continue);
            }
        }
        if !c.write || edtl == 0 {
            if !c.final_bit {
                warn!(peer = %self.peer, "SCSI command without F bit but nothing to send");
            }
            s.execute(&self.tx, lu, c, cdb, data, 0);
            return Ok(Flow::Continue);
        }
        // A write: gather immediate, unsolicited and solicited data (RFC 7143 §4.2.4).
        let unsolicited = !c.final_bit;
        if u64::from(edtl) > crate::scsi::MAX_TRANSFER_BYTES {
            // More than any command may move (VPD 0xB0): refuse before buffering
            // anything, and drop whatever unsolicited data follows.
            warn!(peer = %self.peer, edtl, "write larger than the maximum transfer length");
            s.remember_aborted(c.itt);
            let result = ScsiResult {
                status: mosaic_proto::scsi::status::CHECK_CONDITION,
                sense: Sense::invalid_field_in_cdb(0, None).to_bytes(),
                data_in: Bytes::new(),
                transfer_len: edtl,
            };
            for pdu in response_pdus(&c, result, 512, 512, 0) {
                self.send(pdu, frees_slot).await?;
            }
            return Ok(Flow::Continue);
        }
        if unsolicited && p.initial_r2t {
            self.send(
                reject_pdu(reject_reason::PROTOCOL_ERROR, &raw()),
                frees_slot,
            )
            .await?;
            return Ok(Flow::Continue);
        }
        let received = data.len() as u32;
        if received == edtl {
            s.execute(&self.tx, lu, c, cdb, data, 0);
            return Ok(Flow::Continue);
        }
        // Grow with the data actually received rather than trusting EDTL up front.
        let mut buf = BytesMut::with_capacity((edtl as usize).min(INITIAL_WRITE_BUFFER));
        buf.extend_from_slice(&data);
        let w = PendingWrite {
            cmd: c,
            cdb,
            buf,
            unsolicited_open: unsolicited,
            unsolicited_data_sn: 0,
            unsolicited_limit: p.first_burst_length.min(edtl),
            r2ts: Vec::new(),
            next_r2t_offset: received,
            r2t_sn: 0,
        };
        s.pending.insert(c.itt, w);
        if !unsolicited {
            self.issue_r2ts(s, c.itt).await?;
        }
        Ok(Flow::Continue)
    }

    /// Sends R2Ts for a pending write, up to MaxOutstandingR2T at a time, each at most
    /// MaxBurstLength long (RFC 7143 §13.13, §13.17).
    async fn issue_r2ts(&mut self, s: &mut Session, itt: u32) -> Result<(), ConnError> {
        let max_out = s.params.max_outstanding_r2t.max(1) as usize;
        let burst = s.params.max_burst_length.max(512);
        let mut out = Vec::new();
        {
            let Some(w) = s.pending.get_mut(&itt) else {
                return Ok(());
            };
            let edtl = w.cmd.expected_data_transfer_length;
            while w.r2ts.len() < max_out && w.next_r2t_offset < edtl {
                let len = burst.min(edtl - w.next_r2t_offset);
                let ttt = s.next_ttt;
                s.next_ttt = s.next_ttt.wrapping_add(1);
                if s.next_ttt == RESERVED_TAG {
                    s.next_ttt = 1;
                }
                w.r2ts.push(R2tState {
                    ttt,
                    offset: w.next_r2t_offset,
                    len,
                    received: 0,
                    next_data_sn: 0,
                });
                out.push(R2t {
                    lun: w.cmd.lun,
                    itt,
                    ttt,
                    r2t_sn: w.r2t_sn,
                    buffer_offset: w.next_r2t_offset,
                    desired_data_transfer_length: len,
                    ..Default::default()
                });
                w.r2t_sn += 1;
                w.next_r2t_offset += len;
            }
        }
        for r in out {
            self.send(Pdu::new(Bhs::R2t(r), Bytes::new()), false)
                .await?;
        }
        Ok(())
    }

    async fn data_out(
        &mut self,
        s: &mut Session,
        d: DataOut,
        data: Bytes,
    ) -> Result<Flow, ConnError> {
        let Some(w) = s.pending.get_mut(&d.itt) else {
            if s.aborted_set.contains(&d.itt) {
                // Data for a task we aborted: drop it (RFC 7143 §4.2.3.3).
                return Ok(Flow::Continue);
            }
            warn!(peer = %self.peer, itt = d.itt, "Data-Out for no pending write");
            let raw = Bhs::DataOut(d).encode(0, data.len() as u32);
            self.send(reject_pdu(reject_reason::INVALID_PDU_FIELD, &raw), false)
                .await?;
            return Ok(Flow::Continue);
        };
        let edtl = w.cmd.expected_data_transfer_length;
        let offset = w.buf.len() as u32;
        let len = data.len() as u32;
        match check_data_out(w, &d, offset, len, edtl) {
            Ok(()) => {}
            Err((asc, why)) => {
                // The data sequence is broken: end the task with CHECK CONDITION
                // and keep the connection; its remaining Data-Out PDUs are dropped.
                warn!(peer = %self.peer, "Data-Out ITT {:#x}: {why}", d.itt);
                let w = s.pending.remove(&d.itt).expect("present");
                s.remember_aborted(d.itt);
                let sense = Sense::new(sense::key::ABORTED_COMMAND, asc).to_bytes();
                let result = ScsiResult {
                    status: mosaic_proto::scsi::status::CHECK_CONDITION,
                    sense,
                    data_in: Bytes::new(),
                    transfer_len: edtl,
                };
                for pdu in response_pdus(&w.cmd, result, 512, 512, w.r2t_sn) {
                    self.send(pdu, !w.cmd.immediate).await?;
                }
                return Ok(Flow::Continue);
            }
        }
        let r2t_done = d.final_bit && d.ttt != RESERVED_TAG;
        if d.ttt == RESERVED_TAG {
            w.unsolicited_data_sn += 1;
            if d.final_bit {
                w.unsolicited_open = false;
                w.next_r2t_offset = offset + len;
            }
        } else if let Some(r) = w.r2ts.iter_mut().find(|r| r.ttt == d.ttt) {
            r.next_data_sn += 1;
            r.received += len;
        }
        w.buf.extend_from_slice(&data);
        if r2t_done {
            w.r2ts.retain(|r| r.ttt != d.ttt);
        }
        if w.buf.len() as u32 == edtl && w.r2ts.is_empty() && !w.unsolicited_open {
            let w = s.pending.remove(&d.itt).expect("present");
            let lu = s.lu.clone().expect("pending writes exist only with a LU");
            let r2ts = w.r2t_sn;
            s.execute(&self.tx, lu, w.cmd, w.cdb, w.buf.freeze(), r2ts);
        } else if r2t_done || (d.ttt == RESERVED_TAG && d.final_bit) {
            self.issue_r2ts(s, d.itt).await?;
        }
        Ok(Flow::Continue)
    }
}

/// Checks a Data-Out against the sequence it belongs to (RFC 7143 §11.7): its
/// DataSN, its offset (we negotiate DataPDUInOrder=Yes), and its R2T's bounds.
fn check_data_out(
    w: &PendingWrite,
    d: &DataOut,
    offset: u32,
    len: u32,
    edtl: u32,
) -> Result<(), (Asc, String)> {
    if d.buffer_offset != offset {
        return Err((
            Asc::DATA_OFFSET_ERROR,
            format!(
                "buffer offset {} where {offset} was expected",
                d.buffer_offset
            ),
        ));
    }
    if offset as u64 + len as u64 > edtl as u64 {
        return Err((
            Asc::TOO_MUCH_WRITE_DATA,
            "data beyond the expected transfer length".into(),
        ));
    }
    if d.ttt == RESERVED_TAG {
        if !w.unsolicited_open {
            return Err((
                Asc::DATA_PHASE_ERROR,
                "unsolicited data not allowed here".into(),
            ));
        }
        if d.data_sn != w.unsolicited_data_sn {
            return Err((
                Asc::DATA_PHASE_ERROR,
                format!(
                    "DataSN {} where {} was expected",
                    d.data_sn, w.unsolicited_data_sn
                ),
            ));
        }
        if offset + len > w.unsolicited_limit {
            return Err((
                Asc::TOO_MUCH_WRITE_DATA,
                "unsolicited data beyond FirstBurstLength".into(),
            ));
        }
        return Ok(());
    }
    let Some(r) = w.r2ts.iter().find(|r| r.ttt == d.ttt) else {
        return Err((
            Asc::INVALID_TARGET_PORT_TRANSFER_TAG,
            format!("unknown Target Transfer Tag {:#x}", d.ttt),
        ));
    };
    if d.data_sn != r.next_data_sn {
        return Err((
            Asc::DATA_PHASE_ERROR,
            format!("DataSN {} where {} was expected", d.data_sn, r.next_data_sn),
        ));
    }
    if offset < r.offset || offset + len > r.offset + r.len {
        return Err((
            Asc::DATA_OFFSET_ERROR,
            "data outside the R2T's range".into(),
        ));
    }
    if d.final_bit && r.received + len != r.len {
        return Err((
            Asc::DATA_PHASE_ERROR,
            "F bit before the R2T's data was complete".into(),
        ));
    }
    Ok(())
}

/// What the reader does after a PDU.
enum Flow {
    Continue,
    Close,
}

/// An outstanding R2T of a pending write.
#[derive(Debug)]
struct R2tState {
    ttt: u32,
    offset: u32,
    len: u32,
    received: u32,
    next_data_sn: u32,
}

/// A write command still collecting its Data-Out.
#[derive(Debug)]
struct PendingWrite {
    cmd: ScsiCommand,
    cdb: Bytes,
    buf: BytesMut,
    /// Unsolicited Data-Out may still arrive (the command came without the F bit).
    unsolicited_open: bool,
    unsolicited_data_sn: u32,
    /// Immediate plus unsolicited data may not exceed this (FirstBurstLength, EDTL).
    unsolicited_limit: u32,
    r2ts: Vec<R2tState>,
    next_r2t_offset: u32,
    r2t_sn: u32,
}

/// Tasks executing at the logical unit, by ITT, so task management can abort them.
type Running = Arc<Mutex<HashMap<u32, tokio::task::AbortHandle>>>;

/// Full-feature state of the session (one connection per session).
struct Session {
    tsih: u16,
    initiator_name: String,
    params: SessionParams,
    kind: SessionType,
    target_name: Option<String>,
    lu: Option<Arc<Device>>,
    /// This session's I_T nexus.
    nexus: Arc<Nexus>,
    window: Arc<CmdWindow>,
    running: Running,
    pending: HashMap<u32, PendingWrite>,
    aborted: VecDeque<u32>,
    aborted_set: HashSet<u32>,
    next_ttt: u32,
    /// An outstanding NOP-In ping: its TTT and when it went out.
    ping: Option<(u32, Instant)>,
    /// A Text Request sequence being accumulated (C bit).
    text: Option<TextAccumulator>,
    /// The node's SCSI command latency histograms.
    latency: Arc<CommandLatency>,
}

impl Session {
    fn new_ttt(&mut self) -> u32 {
        let t = self.next_ttt;
        self.next_ttt = self.next_ttt.wrapping_add(1);
        if self.next_ttt == RESERVED_TAG || self.next_ttt == 0 {
            self.next_ttt = 1;
        }
        t
    }

    fn remember_aborted(&mut self, itt: u32) {
        if self.aborted_set.insert(itt) {
            self.aborted.push_back(itt);
            if self.aborted.len() > ABORTED_MEMORY {
                if let Some(old) = self.aborted.pop_front() {
                    self.aborted_set.remove(&old);
                }
            }
        }
    }

    /// Aborts one task; `false` when there is no such task (already answered).
    fn abort(&mut self, itt: u32) -> bool {
        if let Some(w) = self.pending.remove(&itt) {
            if !w.cmd.immediate {
                self.window.complete();
            }
            self.remember_aborted(itt);
            return true;
        }
        // Removing the entry is what decides: a task that finds its entry gone
        // sends no response (see `execute`).
        let handle = self.running.lock().remove(&itt);
        match handle {
            Some(h) => {
                h.abort();
                true
            }
            None => false,
        }
    }

    /// Is the task `itt` in the task set (executing, or a write gathering data)?
    fn has_task(&self, itt: u32) -> bool {
        self.pending.contains_key(&itt) || self.running.lock().contains_key(&itt)
    }

    /// Is any task of the session in the task set?
    fn has_tasks(&self) -> bool {
        !self.pending.is_empty() || !self.running.lock().is_empty()
    }

    /// Aborts every task of the session (resets, logout, connection loss).
    fn abort_all(&mut self) {
        let itts: Vec<u32> = self.pending.keys().copied().collect();
        for itt in itts {
            self.abort(itt);
        }
        let running: Vec<_> = self.running.lock().drain().collect();
        for (_, h) in running {
            h.abort();
        }
    }

    /// Runs a command at the logical unit on its own task and queues its response.
    fn execute(
        &mut self,
        tx: &mpsc::Sender<Out>,
        lu: Arc<Device>,
        c: ScsiCommand,
        cdb: Bytes,
        data_out: Bytes,
        r2ts: u32,
    ) {
        let tx = tx.clone();
        let running = self.running.clone();
        let window = self.window.clone();
        let nexus = self.nexus.clone();
        let max_seg = self.params.max_recv_data_segment_length_initiator.max(512);
        let burst = self.params.max_burst_length.max(512);
        // Holds the lock across spawn so the task cannot look itself up first.
        let mut map = self.running.lock();
        let guard = SlotGuard {
            window: (!c.immediate).then_some(window),
        };
        let digests = (self.params.header_digest, self.params.data_digest);
        // From now (the command and its data are in) until its response goes to the
        // writer.
        let (latency, class, started) =
            (self.latency.clone(), CommandClass::of(&cdb), Instant::now());
        let handle = tokio::spawn(async move {
            let mut guard = guard;
            let req = ScsiRequest {
                cdb,
                lun: decode_lun(c.lun),
                data_out,
                expected_len: c.expected_data_transfer_length,
            };
            let result = match lu.shortcut(&nexus, &req) {
                ShortCut::Normal => lu.execute(&nexus, req).await,
                ShortCut::Answer(answer) => answer,
                ShortCut::Owner(read) => {
                    let link = ShortCutLink {
                        max_seg,
                        burst,
                        digests,
                    };
                    shortcut_read(&tx, &running, &mut guard, &lu, &nexus, &c, req, read, link)
                        .await;
                    latency.record(class, started.elapsed());
                    return;
                }
            };
            if running.lock().remove(&c.itt).is_none() {
                // Aborted while executing: no response (RFC 7143 §4.2.3.2).
                return;
            }
            let frees_slot = guard.disarm();
            latency.record(class, started.elapsed());
            for pdu in response_pdus(&c, result, max_seg, burst, r2ts) {
                let last = matches!(pdu.bhs, Bhs::ScsiResponse(_))
                    || matches!(pdu.bhs, Bhs::DataIn(d) if d.status_present);
                if tx
                    .send(Out::Pdu {
                        pdu,
                        frees_slot: frees_slot && last,
                    })
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        map.insert(c.itt, handle.abort_handle());
    }
}

/// The connection settings a short-cut owner needs besides the task's numbers.
#[derive(Debug, Clone, Copy)]
struct ShortCutLink {
    max_seg: u32,
    burst: u32,
    /// Header and data digests in force.
    digests: (bool, bool),
}

/// Runs a short-cut read: reserves the response's StatSN in the writer's order,
/// has the page's owner build the final PDUs with it, and hands them to the writer
/// unchanged. When the owner cannot (another epoch, another owner, a link error),
/// the command runs by the normal path and its PDUs take the reserved numbers.
#[allow(clippy::too_many_arguments)]
async fn shortcut_read(
    tx: &mpsc::Sender<Out>,
    running: &Mutex<HashMap<u32, tokio::task::AbortHandle>>,
    guard: &mut SlotGuard,
    lu: &Device,
    nexus: &Nexus,
    c: &ScsiCommand,
    req: ScsiRequest,
    read: crate::device::ShortCutRead,
    link: ShortCutLink,
) {
    let (numbers_tx, numbers_rx) = oneshot::channel();
    let (body_tx, body_rx) = oneshot::channel();
    let frees_slot = guard.window.is_some();
    if tx
        .send(Out::Reserved {
            numbers: numbers_tx,
            body: body_rx,
            frees_slot,
        })
        .await
        .is_err()
    {
        return;
    }
    let Ok(numbers) = numbers_rx.await else {
        return;
    };
    let state = ConnState {
        itt: c.itt,
        lun: c.lun,
        stat_sn: numbers.stat_sn,
        exp_cmd_sn: numbers.exp_cmd_sn,
        max_cmd_sn: numbers.max_cmd_sn,
        data_sn: 0,
        max_recv_data_segment_length: link.max_seg,
        max_burst_length: link.burst,
        header_digest: link.digests.0,
        data_digest: link.digests.1,
        expected_data_transfer_length: c.expected_data_transfer_length,
    };
    let body = match read
        .store
        .shortcut_read(read.owner, read.offset, read.len, state)
        .await
    {
        Ok(encoded) => ReservedBody::Encoded(encoded),
        Err(e) => {
            debug!("short-cut read at node {}: {e}; served here", read.owner.0);
            let result = lu.execute(nexus, req).await;
            ReservedBody::Pdus(response_pdus(c, result, link.max_seg, link.burst, 0))
        }
    };
    if running.lock().remove(&c.itt).is_none() {
        // Aborted meanwhile: no response (RFC 7143 §4.2.3.2); dropping `body_tx`
        // gives the reserved StatSN back.
        return;
    }
    // The writer frees the slot when it sends the response.
    guard.disarm();
    let _ = body_tx.send(body);
}

/// The answer to QUERY TASK and QUERY TASK SET (RFC 7144 §4.2, SAM-5): FUNCTION
/// SUCCEEDED for "yes", FUNCTION COMPLETE for "no".
fn query_answer(yes: bool) -> u8 {
    if yes {
        tmf_response::FUNCTION_SUCCEEDED
    } else {
        tmf_response::COMPLETE
    }
}

/// Frees a command's CmdSN slot if its task ends without a response (aborted).
struct SlotGuard {
    window: Option<Arc<CmdWindow>>,
}

impl SlotGuard {
    /// The response is going out and frees the slot itself; returns whether there
    /// was a slot to free.
    fn disarm(&mut self) -> bool {
        self.window.take().is_some()
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        if let Some(w) = self.window.take() {
            w.complete();
        }
    }
}

/// Builds the Data-In and SCSI Response PDUs for a finished command (RFC 7143
/// §11.4, §11.7), with residuals relative to the expected data transfer length.
fn response_pdus(c: &ScsiCommand, r: ScsiResult, max_seg: u32, burst: u32, r2ts: u32) -> Vec<Pdu> {
    let edtl = c.expected_data_transfer_length;
    // What the command wanted to move, against what the initiator expected.
    let wanted = if c.write && !c.read {
        r.transfer_len
    } else {
        r.data_in.len() as u32
    };
    let (overflow, underflow, residual) = if wanted > edtl {
        (true, false, wanted - edtl)
    } else if wanted < edtl {
        (false, true, edtl - wanted)
    } else {
        (false, false, 0)
    };
    let data = if c.read {
        r.data_in.slice(..(r.data_in.len().min(edtl as usize)))
    } else {
        Bytes::new()
    };
    let good = r.status == mosaic_proto::scsi::status::GOOD && r.sense.is_empty();
    let mut pdus = Vec::with_capacity(data.len() / max_seg as usize + 2);
    let mut data_sn = 0u32;
    let mut off = 0usize;
    let mut in_burst = 0u32;
    while off < data.len() {
        let n = (data.len() - off)
            .min(max_seg as usize)
            .min((burst - in_burst) as usize);
        let end = off + n;
        in_burst += n as u32;
        let last = end == data.len();
        let seq_end = last || in_burst == burst;
        if seq_end {
            in_burst = 0;
        }
        let with_status = last && good;
        pdus.push(Pdu::new(
            Bhs::DataIn(DataIn {
                final_bit: seq_end,
                status_present: with_status,
                status: if with_status { r.status } else { 0 },
                overflow: with_status && overflow,
                underflow: with_status && underflow,
                residual_count: if with_status { residual } else { 0 },
                lun: c.lun,
                itt: c.itt,
                ttt: RESERVED_TAG,
                data_sn,
                buffer_offset: off as u32,
                ..Default::default()
            }),
            data.slice(off..end),
        ));
        data_sn += 1;
        off = end;
    }
    if pdus.is_empty() || !good {
        let sense = if r.sense.is_empty() {
            Bytes::new()
        } else {
            // SCSI Response data: SenseLength, then the sense data (RFC 7143 §11.4.7.2).
            let mut b = BytesMut::with_capacity(2 + r.sense.len());
            b.extend_from_slice(&(r.sense.len() as u16).to_be_bytes());
            b.extend_from_slice(&r.sense);
            b.freeze()
        };
        pdus.push(Pdu::new(
            Bhs::ScsiResponse(ScsiResponse {
                overflow,
                underflow,
                residual_count: residual,
                response: mosaic_proto::pdu::scsi_response::COMMAND_COMPLETED_AT_TARGET,
                status: r.status,
                itt: c.itt,
                exp_data_sn: if c.read { data_sn } else { r2ts },
                ..Default::default()
            }),
            sense,
        ));
    }
    pdus
}

/// The final PDUs of a short-cut read (the cluster's short-cut mode), built by the
/// page's owner from the receiving connection's state and the data read, encoded
/// with that connection's digests: the receiving node writes them out unchanged.
pub(crate) fn shortcut_response(state: &ConnState, data: Bytes) -> Bytes {
    let c = ScsiCommand {
        final_bit: true,
        read: true,
        lun: state.lun,
        itt: state.itt,
        expected_data_transfer_length: state.expected_data_transfer_length,
        ..Default::default()
    };
    let len = data.len() as u32;
    let result = ScsiResult {
        status: mosaic_proto::scsi::status::GOOD,
        sense: Bytes::new(),
        data_in: data,
        transfer_len: len,
    };
    let limits = FrameLimits {
        header_digest: state.header_digest,
        data_digest: state.data_digest,
        max_recv_data_segment_length: state.max_recv_data_segment_length,
    };
    let pdus = response_pdus(
        &c,
        result,
        state.max_recv_data_segment_length,
        state.max_burst_length,
        0,
    );
    let mut out = BytesMut::with_capacity(len as usize + pdus.len() * 64);
    let mut stat_sn = state.stat_sn;
    for mut pdu in pdus {
        if let Bhs::DataIn(d) = &mut pdu.bhs {
            d.data_sn = d.data_sn.wrapping_add(state.data_sn);
        }
        stamp_with(
            &mut pdu.bhs,
            &mut stat_sn,
            state.exp_cmd_sn,
            state.max_cmd_sn,
            true,
        );
        let enc = frame::encode(&pdu, &limits);
        out.extend_from_slice(&enc.head);
        out.extend_from_slice(&enc.data);
        out.extend_from_slice(&enc.tail);
    }
    out.freeze()
}

/// The CDB of a command: 16 bytes from the BHS plus any extended-CDB AHS.
fn build_cdb(c: &ScsiCommand, ahs: &Bytes) -> Result<Bytes, String> {
    if ahs.is_empty() {
        return Ok(Bytes::copy_from_slice(&c.cdb));
    }
    let mut cdb = BytesMut::with_capacity(MAX_CDB_LEN);
    cdb.extend_from_slice(&c.cdb);
    let mut rest = &ahs[..];
    while rest.len() >= 3 {
        let len = u16::from_be_bytes([rest[0], rest[1]]) as usize;
        let kind = rest[2];
        // AHSLength counts the bytes after the type field, padded to 4 (§11.2.2).
        let total = (3 + len + 3) & !3;
        if total > rest.len() {
            return Err("AHS longer than TotalAHSLength".into());
        }
        if kind == AHS_EXTENDED_CDB {
            if len < 1 {
                return Err("empty extended-CDB AHS".into());
            }
            // The first byte after the type is reserved; the rest continues the CDB.
            cdb.extend_from_slice(&rest[4..3 + len]);
        } else {
            return Err(format!("unsupported AHS type {kind}"));
        }
        rest = &rest[total..];
    }
    if cdb.len() > MAX_CDB_LEN {
        return Err(format!("CDB of {} bytes", cdb.len()));
    }
    Ok(cdb.freeze())
}

/// The LUN number of a single-level LUN field (SAM-5 §4.7: peripheral or flat
/// addressing); other forms map to a number no LU has.
pub fn decode_lun(raw: u64) -> u64 {
    let method = raw >> 62;
    if raw & 0x0000_ffff_ffff_ffff != 0 || method > 1 {
        return u64::MAX;
    }
    (raw >> 48) & 0x3fff
}

/// A Reject PDU quoting the rejected header (RFC 7143 §11.17).
fn reject_pdu(reason: u8, header: &[u8; BHS_LEN]) -> Pdu {
    Pdu::new(
        Bhs::Reject(Reject {
            reason,
            ..Default::default()
        }),
        Bytes::copy_from_slice(header),
    )
}

/// Resolves when the flag turns `true` (or its sender is gone).
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Stamps the sequence numbers of an outgoing PDU (RFC 7143 §4.2.2.2): PDUs that
/// carry status take the next StatSN; others show the current one unchanged.
fn stamp(bhs: &mut Bhs, stat_sn: &mut u32, window: Option<&CmdWindow>) {
    let (exp, max) = window.map(|w| w.current()).unwrap_or((0, 0));
    stamp_with(bhs, stat_sn, exp, max, window.is_some());
}

/// [`stamp`] with given ExpCmdSN and MaxCmdSN; `running`: the command window is
/// running (full-feature phase), so a Login Response keeps its own numbers otherwise.
fn stamp_with(bhs: &mut Bhs, stat_sn: &mut u32, exp: u32, max: u32, running: bool) {
    let mut take = |advance: bool| {
        let v = *stat_sn;
        if advance {
            *stat_sn = stat_sn.wrapping_add(1);
        }
        v
    };
    // StatSN (advanced or not), ExpCmdSN and MaxCmdSN of one target PDU.
    macro_rules! seq {
        ($p:expr, $advance:expr) => {{
            $p.stat_sn = take($advance);
            $p.exp_cmd_sn = exp;
            $p.max_cmd_sn = max;
        }};
    }
    match bhs {
        Bhs::ScsiResponse(p) => seq!(p, true),
        Bhs::TaskMgmtResponse(p) => seq!(p, true),
        Bhs::TextResponse(p) => seq!(p, true),
        Bhs::LogoutResponse(p) => seq!(p, true),
        Bhs::Reject(p) => seq!(p, true),
        Bhs::AsyncMessage(p) => seq!(p, true),
        Bhs::R2t(p) => seq!(p, false),
        // A ping (ITT reserved) does not advance StatSN (RFC 7143 §11.19.4).
        Bhs::NopIn(p) => seq!(p, p.itt != RESERVED_TAG),
        Bhs::DataIn(p) => {
            let with_status = p.status_present;
            seq!(p, with_status);
            if !with_status {
                // StatSN is reserved in a Data-In without status (§11.7.4).
                p.stat_sn = 0;
            }
        }
        Bhs::LoginResponse(p) => {
            // During login the window is not running yet: the login code set
            // ExpCmdSN/MaxCmdSN from the request.
            p.stat_sn = take(true);
            if running {
                p.exp_cmd_sn = exp;
                p.max_cmd_sn = max;
            }
        }
        _ => {}
    }
}

/// A reserved response (short-cut read) whose bytes have not arrived yet.
struct Waiting {
    body: oneshot::Receiver<ReservedBody>,
    numbers: SeqNumbers,
    frees_slot: bool,
    /// What was stamped after it: it goes out only after this response.
    after: Vec<Bytes>,
}

/// The writer task's state: the numbering and what is ready to go.
struct Writer {
    stat_sn: u32,
    limits: FrameLimits,
    window: Option<Arc<CmdWindow>>,
    /// Encoded PDUs that may go out now, in wire order.
    ready: Vec<Bytes>,
    /// Reserved responses in StatSN order, each with what follows it.
    waiting: VecDeque<Waiting>,
}

impl Writer {
    /// Encoded parts go out in order: behind the last response still waiting.
    fn queue(&mut self, enc: frame::EncodedPdu) {
        let to = match self.waiting.back_mut() {
            Some(w) => &mut w.after,
            None => &mut self.ready,
        };
        to.extend(
            [enc.head, enc.data, enc.tail]
                .into_iter()
                .filter(|b| !b.is_empty()),
        );
    }

    fn pdu(&mut self, mut pdu: Pdu, frees_slot: bool) {
        if frees_slot {
            if let Some(w) = &self.window {
                w.complete();
            }
        }
        stamp(&mut pdu.bhs, &mut self.stat_sn, self.window.as_deref());
        let enc = frame::encode(&pdu, &self.limits);
        self.queue(enc);
    }

    fn reserve(
        &mut self,
        numbers: oneshot::Sender<SeqNumbers>,
        body: oneshot::Receiver<ReservedBody>,
        frees_slot: bool,
    ) {
        let (exp_cmd_sn, max_cmd_sn) = self
            .window
            .as_deref()
            .map(|w| w.current())
            .unwrap_or((0, 0));
        let reserved = SeqNumbers {
            stat_sn: self.stat_sn,
            exp_cmd_sn,
            max_cmd_sn,
        };
        if numbers.send(reserved).is_err() {
            // The task is gone (aborted): nothing reserved.
            return;
        }
        self.stat_sn = self.stat_sn.wrapping_add(1);
        self.waiting.push_back(Waiting {
            body,
            numbers: reserved,
            frees_slot,
            after: Vec::new(),
        });
    }

    /// The first waiting response got its bytes (or its task ended without them).
    fn filled(&mut self, body: Result<ReservedBody, oneshot::error::RecvError>) {
        let Some(w) = self.waiting.pop_front() else {
            return;
        };
        // A task aborted after its StatSN was reserved sends nothing (RFC 7143
        // §4.2.3.2): that StatSN is skipped, and its slot is freed by the task.
        if let Ok(body) = body {
            if w.frees_slot {
                if let Some(win) = &self.window {
                    win.complete();
                }
            }
            // `w` was the first waiting: its bytes may go now.
            let to = &mut self.ready;
            match body {
                ReservedBody::Encoded(b) => to.push(b),
                ReservedBody::Pdus(pdus) => {
                    let mut sn = w.numbers.stat_sn;
                    for mut pdu in pdus {
                        let n = &w.numbers;
                        stamp_with(&mut pdu.bhs, &mut sn, n.exp_cmd_sn, n.max_cmd_sn, true);
                        let enc = frame::encode(&pdu, &self.limits);
                        to.extend(
                            [enc.head, enc.data, enc.tail]
                                .into_iter()
                                .filter(|b| !b.is_empty()),
                        );
                    }
                }
            }
        }
        self.ready.extend(w.after);
    }
}

/// Resolves when the first waiting response is filled.
async fn first_filled(
    waiting: &mut VecDeque<Waiting>,
) -> Result<ReservedBody, oneshot::error::RecvError> {
    match waiting.front_mut() {
        Some(w) => (&mut w.body).await,
        None => std::future::pending().await,
    }
}

/// The writer task: stamps, encodes and writes PDUs in batches with vectored writes.
/// StatSN follows wire order; a short-cut response reserves its StatSN when its
/// turn comes and what follows waits behind it, while later short-cuts are
/// already on their way.
async fn writer_task(mut wr: OwnedWriteHalf, mut rx: mpsc::Receiver<Out>) {
    let mut w = Writer {
        stat_sn: 0,
        limits: FrameLimits::default(),
        window: None,
        ready: Vec::with_capacity(WRITE_BATCH * 3),
        waiting: VecDeque::new(),
    };
    let mut close = false;
    loop {
        if !w.ready.is_empty() && write_parts(&mut wr, &mut w.ready).await.is_err() {
            break;
        }
        if close && w.waiting.is_empty() {
            break;
        }
        tokio::select! {
            biased;
            body = first_filled(&mut w.waiting), if !w.waiting.is_empty() => w.filled(body),
            msg = rx.recv(), if !close => {
                if msg.is_none() {
                    // Every sender is gone: finish what is waiting, then stop.
                    close = true;
                }
                let mut next = msg;
                let mut count = 0;
                while let Some(m) = next.take() {
                    match m {
                        Out::Pdu { pdu, frees_slot } => {
                            w.pdu(pdu, frees_slot);
                            count += 1;
                        }
                        Out::InitStatSn(n) => w.stat_sn = n,
                        Out::Reserved { numbers, body, frees_slot } => {
                            w.reserve(numbers, body, frees_slot);
                        }
                        Out::FullFeature { limits, window } => {
                            // Everything queued so far (the last Login Response)
                            // goes out under the old settings.
                            if write_parts(&mut wr, &mut w.ready).await.is_err() {
                                close = true;
                                w.waiting.clear();
                                break;
                            }
                            w.limits = limits;
                            w.window = Some(window);
                        }
                        Out::Close => {
                            close = true;
                            break;
                        }
                    }
                    if count < WRITE_BATCH {
                        next = rx.try_recv().ok();
                    }
                }
            }
        }
    }
    let _ = wr.shutdown().await;
}

/// Writes all parts with as few system calls as possible.
async fn write_parts<W: AsyncWrite + Unpin>(
    w: &mut W,
    parts: &mut Vec<Bytes>,
) -> std::io::Result<()> {
    let mut start = 0;
    while start < parts.len() {
        let slices: Vec<IoSlice<'_>> = parts[start..]
            .iter()
            .take(512)
            .map(|b| IoSlice::new(b))
            .collect();
        let mut n = w.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 {
            let len = parts[start].len();
            if n >= len {
                n -= len;
                start += 1;
            } else {
                let rest = parts[start].slice(n..);
                parts[start] = rest;
                n = 0;
            }
        }
    }
    parts.clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(status: u8, data: usize, transfer: u32) -> ScsiResult {
        ScsiResult {
            status,
            sense: Bytes::new(),
            data_in: Bytes::from(vec![7u8; data]),
            transfer_len: transfer,
        }
    }

    fn read_cmd(edtl: u32) -> ScsiCommand {
        ScsiCommand {
            final_bit: true,
            read: true,
            itt: 9,
            expected_data_transfer_length: edtl,
            ..Default::default()
        }
    }

    #[test]
    fn read_splits_by_segment_and_collapses_status() {
        let pdus = response_pdus(&read_cmd(10000), result(0, 10000, 10000), 4096, 1 << 20, 0);
        assert_eq!(pdus.len(), 3);
        let Bhs::DataIn(last) = pdus[2].bhs else {
            panic!()
        };
        assert!(last.status_present && last.final_bit);
        assert_eq!(last.data_sn, 2);
        assert_eq!(last.buffer_offset, 8192);
        assert_eq!(pdus[2].data.len(), 10000 - 8192);
    }

    #[test]
    fn read_sequences_end_at_max_burst() {
        let pdus = response_pdus(&read_cmd(16384), result(0, 16384, 16384), 4096, 8192, 0);
        let finals: Vec<bool> = pdus
            .iter()
            .map(|p| matches!(p.bhs, Bhs::DataIn(d) if d.final_bit))
            .collect();
        assert_eq!(finals, vec![false, true, false, true]);
    }

    #[test]
    fn read_overflow_truncates_and_reports_residual() {
        let pdus = response_pdus(&read_cmd(512), result(0, 1024, 1024), 8192, 1 << 20, 0);
        assert_eq!(pdus.len(), 1);
        let Bhs::DataIn(d) = pdus[0].bhs else {
            panic!()
        };
        assert!(d.overflow && !d.underflow);
        assert_eq!(d.residual_count, 512);
        assert_eq!(pdus[0].data.len(), 512);
    }

    #[test]
    fn short_read_is_underflow() {
        let pdus = response_pdus(&read_cmd(255), result(0, 36, 36), 8192, 1 << 20, 0);
        let Bhs::DataIn(d) = pdus[0].bhs else {
            panic!()
        };
        assert!(d.underflow);
        assert_eq!(d.residual_count, 219);
    }

    #[test]
    fn check_condition_goes_in_scsi_response_with_sense() {
        let mut r = result(2, 0, 0);
        r.sense =
            Bytes::from_static(&[0x70, 0, 5, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x21, 0, 0, 0, 0, 0]);
        let pdus = response_pdus(&read_cmd(512), r, 8192, 1 << 20, 0);
        assert_eq!(pdus.len(), 1);
        let Bhs::ScsiResponse(s) = pdus[0].bhs else {
            panic!()
        };
        assert_eq!(s.status, 2);
        assert_eq!(&pdus[0].data[..2], &[0, 18]);
    }

    #[test]
    fn write_residual_uses_cdb_length() {
        let c = ScsiCommand {
            final_bit: true,
            write: true,
            expected_data_transfer_length: 200,
            ..Default::default()
        };
        let pdus = response_pdus(&c, result(0, 0, 512), 8192, 1 << 20, 1);
        let Bhs::ScsiResponse(s) = pdus[0].bhs else {
            panic!()
        };
        assert!(s.overflow);
        assert_eq!(s.residual_count, 312);
    }

    #[test]
    fn lun_decoding() {
        assert_eq!(decode_lun(0), 0);
        assert_eq!(decode_lun(0x0001_0000_0000_0000), 1);
        assert_eq!(decode_lun(0x4005_0000_0000_0000), 5);
        assert_eq!(decode_lun(0x0000_0000_0000_0001), u64::MAX);
    }

    #[test]
    fn extended_cdb_is_appended() {
        let c = ScsiCommand::default();
        // AHSLength = 1 reserved + 16 CDB bytes = 17, padded to 20 after the 3-byte head.
        let mut ahs = vec![0, 17, AHS_EXTENDED_CDB, 0];
        ahs.extend_from_slice(&[0xab; 16]);
        ahs.resize(20, 0);
        let cdb = build_cdb(&c, &Bytes::from(ahs)).unwrap();
        assert_eq!(cdb.len(), 32);
        assert_eq!(cdb[31], 0xab);
    }

    #[test]
    fn stamping_advances_only_on_status() {
        let w = CmdWindow::new(5, 8);
        let mut sn = 100;
        let mut r2t = Bhs::R2t(R2t::default());
        stamp(&mut r2t, &mut sn, Some(&w));
        assert_eq!(sn, 100);
        let mut resp = Bhs::ScsiResponse(ScsiResponse::default());
        stamp(&mut resp, &mut sn, Some(&w));
        assert_eq!(sn, 101);
        let Bhs::ScsiResponse(r) = resp else { panic!() };
        assert_eq!((r.stat_sn, r.exp_cmd_sn, r.max_cmd_sn), (100, 5, 12));
    }
}
