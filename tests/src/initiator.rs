//! A tiny blocking iSCSI initiator for tests, over `mosaic_proto`'s codec.
//!
//! One connection, one command at a time, ErrorRecoveryLevel 0. Login goes straight
//! from operational negotiation to full-feature phase (no security stage, which RFC
//! 7143 §6.3 allows when no authentication is wanted). It honours what the target
//! negotiates: digests, ImmediateData, InitialR2T, FirstBurstLength, R2Ts, and the
//! target's MaxRecvDataSegmentLength; it answers the target's NOP-In pings.
//!
//! It also sends raw bytes and hand-built PDUs, for the hostile-input tests.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use mosaic_proto::frame::{self, FrameLimits};
use mosaic_proto::pdu::{
    self, Bhs, DataOut, LoginRequest, LogoutRequest, NopOut, Pdu, ScsiCommand, TaskMgmtRequest,
    TaskMgmtResponse, RESERVED_TAG,
};

/// The initiator name the tests log in with.
pub const INITIATOR_NAME: &str = "iqn.2026-11.io.mosaic:tests";
/// What we declare we receive: RFC 7143's largest common value.
pub const OUR_MAX_RECV_DATA_SEGMENT_LENGTH: u32 = 262_144;
/// How long any single wait for the target may take by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);
/// Login rounds before giving up on a target that never transits to full feature.
const MAX_LOGIN_ROUNDS: usize = 8;

/// Why an exchange failed.
#[derive(Debug)]
pub enum Error {
    /// A socket error other than a timeout.
    Io(io::Error),
    /// The target closed the connection (EOF or reset).
    Closed,
    /// Nothing arrived within the time limit.
    Timeout,
    /// The target answered with a Reject PDU.
    Reject { reason: u8 },
    /// The login response carried a non-zero status.
    LoginFailed { class: u8, detail: u8 },
    /// The target redirected the login (status class 1) to this TargetAddress.
    Redirected { address: String },
    /// The target's bytes did not frame (bad digest or length from the target).
    Frame(String),
    /// The target did something this initiator does not expect.
    Protocol(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => write!(f, "I/O error: {e}"),
            Error::Closed => write!(f, "connection closed by the target"),
            Error::Timeout => write!(f, "timed out waiting for the target"),
            Error::Reject { reason } => write!(f, "Reject PDU, reason {reason:#04x}"),
            Error::LoginFailed { class, detail } => {
                write!(f, "login failed: status {class:#04x}/{detail:#04x}")
            }
            Error::Redirected { address } => write!(f, "login redirected to {address}"),
            Error::Frame(e) => write!(f, "bad PDU from the target: {e}"),
            Error::Protocol(e) => write!(f, "protocol: {e}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Error::Timeout,
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => Error::Closed,
            _ => Error::Io(e),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// What to offer at login.
#[derive(Debug, Clone)]
pub struct LoginOptions {
    pub initiator_name: String,
    pub target_name: String,
    pub isid: u64,
    pub header_digest: bool,
    pub data_digest: bool,
    pub immediate_data: bool,
    pub initial_r2t: bool,
    pub first_burst_length: u32,
    pub max_burst_length: u32,
    /// `Normal` (the default) or `Discovery` (then no TargetName is sent).
    pub session_type: &'static str,
    pub timeout: Duration,
    /// More keys for the leading login (vendor keys such as the MPIO group).
    pub extra_keys: Vec<(String, String)>,
}

impl LoginOptions {
    /// Normal session to `target_name`, no digests, a fresh ISID.
    pub fn new(target_name: &str) -> LoginOptions {
        LoginOptions {
            initiator_name: INITIATOR_NAME.to_string(),
            target_name: target_name.to_string(),
            isid: fresh_isid(),
            header_digest: false,
            data_digest: false,
            immediate_data: true,
            initial_r2t: true,
            first_burst_length: 65_536,
            max_burst_length: 262_144,
            session_type: "Normal",
            timeout: DEFAULT_TIMEOUT,
            extra_keys: Vec::new(),
        }
    }

    /// A Discovery session (for SendTargets).
    pub fn discovery() -> LoginOptions {
        LoginOptions {
            session_type: "Discovery",
            ..LoginOptions::new("")
        }
    }

    /// Offer HeaderDigest=CRC32C,None and/or DataDigest=CRC32C,None.
    pub fn digests(mut self, header: bool, data: bool) -> LoginOptions {
        self.header_digest = header;
        self.data_digest = data;
        self
    }

    fn keys(&self) -> Vec<(String, String)> {
        let digest = |on: bool| if on { "CRC32C,None" } else { "None" };
        let yes_no = |b: bool| if b { "Yes" } else { "No" };
        let mut keys: Vec<(&str, String)> = vec![("InitiatorName", self.initiator_name.clone())];
        keys.extend(self.extra_keys.iter().map(|(k, v)| (k.as_str(), v.clone())));
        if self.session_type != "Discovery" {
            keys.push(("TargetName", self.target_name.clone()));
        }
        keys.push(("SessionType", self.session_type.into()));
        keys.extend([
            ("HeaderDigest", digest(self.header_digest).into()),
            ("DataDigest", digest(self.data_digest).into()),
            (
                "MaxRecvDataSegmentLength",
                OUR_MAX_RECV_DATA_SEGMENT_LENGTH.to_string(),
            ),
        ]);
        if self.session_type == "Discovery" {
            // The session-wide data-movement keys are irrelevant there (RFC 7143 §13).
            return keys.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        }
        keys.extend([
            ("InitialR2T", yes_no(self.initial_r2t).into()),
            ("ImmediateData", yes_no(self.immediate_data).into()),
            ("FirstBurstLength", self.first_burst_length.to_string()),
            ("MaxBurstLength", self.max_burst_length.to_string()),
            ("MaxConnections", "1".into()),
            ("ErrorRecoveryLevel", "0".into()),
            ("DefaultTime2Wait", "0".into()),
            ("DefaultTime2Retain", "0".into()),
        ]);
        keys.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }
}

/// A new ISID for every session of this process: type "random" (0b10 in the top
/// bits), the process id and a counter.
pub fn fresh_isid() -> u64 {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed) as u64;
    let pid = std::process::id() as u64 & 0x3fff;
    (0x80u64 << 40) | (pid << 24) | (n & 0xff_ffff)
}

/// Encodes `Key=Value\0` pairs (RFC 7143 §6.1).
pub fn encode_keys<K: AsRef<str>, V: AsRef<str>>(keys: &[(K, V)]) -> Bytes {
    let mut v = Vec::new();
    for (k, val) in keys {
        v.extend_from_slice(k.as_ref().as_bytes());
        v.push(b'=');
        v.extend_from_slice(val.as_ref().as_bytes());
        v.push(0);
    }
    Bytes::from(v)
}

/// Decodes `Key=Value\0` pairs; anything without `=` is kept with an empty value.
pub fn decode_keys(data: &[u8]) -> Vec<(String, String)> {
    data.split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| {
            let s = String::from_utf8_lossy(s);
            match s.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (s.to_string(), String::new()),
            }
        })
        .collect()
}

/// What login settled on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub header_digest: bool,
    pub data_digest: bool,
    pub immediate_data: bool,
    pub initial_r2t: bool,
    pub first_burst_length: u32,
    pub max_burst_length: u32,
    /// The target's declared MaxRecvDataSegmentLength: our Data-Out limit.
    pub target_max_recv_data_segment_length: u32,
    /// Every key the target sent, in order.
    pub keys: Vec<(String, String)>,
}

impl Negotiated {
    fn from_keys(keys: Vec<(String, String)>, opts: &LoginOptions) -> Negotiated {
        let get = |k: &str| {
            keys.iter()
                .rev()
                .find(|(kk, _)| kk == k)
                .map(|(_, v)| v.clone())
        };
        let num = |k: &str, default: u32| get(k).and_then(|v| v.parse().ok()).unwrap_or(default);
        let yes = |k: &str, default: bool| get(k).map(|v| v == "Yes").unwrap_or(default);
        Negotiated {
            header_digest: get("HeaderDigest").map(|v| v == "CRC32C").unwrap_or(false),
            data_digest: get("DataDigest").map(|v| v == "CRC32C").unwrap_or(false),
            // RFC 7143 defaults when the target does not answer.
            immediate_data: yes("ImmediateData", true) && opts.immediate_data,
            initial_r2t: yes("InitialR2T", true) || opts.initial_r2t,
            first_burst_length: num("FirstBurstLength", 65_536).min(opts.first_burst_length),
            max_burst_length: num("MaxBurstLength", 262_144).min(opts.max_burst_length),
            target_max_recv_data_segment_length: num("MaxRecvDataSegmentLength", 8192),
            keys,
        }
    }
}

/// The outcome of a SCSI command that got a status.
#[derive(Debug, Clone, Default)]
pub struct ScsiResult {
    pub status: u8,
    /// Data-In bytes (for reads), as long as the highest offset received.
    pub data: Vec<u8>,
    /// Sense data (without the 2-byte length prefix), for CHECK CONDITION.
    pub sense: Vec<u8>,
    pub residual_count: u32,
    pub underflow: bool,
    pub overflow: bool,
}

impl ScsiResult {
    /// (sense key, ASC, ASCQ) of fixed-format (0x70/0x71) or descriptor sense.
    pub fn sense_key(&self) -> Option<(u8, u8, u8)> {
        let s = &self.sense;
        match s.first()? & 0x7f {
            0x70 | 0x71 if s.len() >= 14 => Some((s[2] & 0x0f, s[12], s[13])),
            0x72 | 0x73 if s.len() >= 4 => Some((s[1] & 0x0f, s[2], s[3])),
            _ => None,
        }
    }
}

/// SCSI status GOOD.
pub const GOOD: u8 = 0x00;
/// SCSI status CHECK CONDITION.
pub const CHECK_CONDITION: u8 = 0x02;
/// Sense key UNIT ATTENTION.
pub const UNIT_ATTENTION: u8 = 0x06;
/// More unit attentions queued on one nexus than a test ever causes.
pub const MAX_UNIT_ATTENTIONS: usize = 8;

/// The 8-byte LUN field for a single-level LUN (SAM-5 peripheral addressing).
pub fn lun_field(lun: u64) -> u64 {
    if lun < 256 {
        lun << 48
    } else {
        (0x4000 | (lun & 0x3fff)) << 48
    }
}

/// Opens a TCP connection with read and write timeouts.
pub fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// One logged-in connection (a single-connection session).
#[derive(Debug)]
pub struct Session {
    stream: TcpStream,
    rx: BytesMut,
    rx_limits: FrameLimits,
    tx_limits: FrameLimits,
    pub negotiated: Negotiated,
    pub lun: u64,
    pub tsih: u16,
    pub isid: u64,
    cmd_sn: u32,
    exp_stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    next_itt: u32,
    timeout: Duration,
}

impl Session {
    /// Connects to `addr` and logs in to full-feature phase.
    pub fn login(addr: SocketAddr, opts: &LoginOptions) -> Result<Session> {
        let stream = connect(addr, opts.timeout)?;
        Session::login_on(stream, opts)
    }

    /// Logs in at `addr`, following one redirect (RFC 7143 §11.13.5) to the
    /// TargetAddress it names; returns the session and the portal it ended on.
    pub fn login_following_redirect(
        addr: SocketAddr,
        opts: &LoginOptions,
    ) -> Result<(Session, SocketAddr)> {
        match Session::login(addr, opts) {
            Ok(s) => Ok((s, addr)),
            Err(Error::Redirected { address }) => {
                let portal = address.split(',').next().unwrap_or_default();
                let to: SocketAddr = portal
                    .parse()
                    .map_err(|_| Error::Protocol(format!("bad TargetAddress {address:?}")))?;
                Ok((Session::login(to, opts)?, to))
            }
            Err(e) => Err(e),
        }
    }

    /// Logs in on an open connection.
    pub fn login_on(stream: TcpStream, opts: &LoginOptions) -> Result<Session> {
        let mut s = Session {
            stream,
            rx: BytesMut::with_capacity(64 * 1024),
            rx_limits: FrameLimits::default(),
            tx_limits: FrameLimits::default(),
            negotiated: Negotiated::from_keys(Vec::new(), opts),
            lun: 0,
            tsih: 0,
            isid: opts.isid,
            cmd_sn: 1,
            exp_stat_sn: 0,
            exp_cmd_sn: 1,
            max_cmd_sn: 1,
            next_itt: 0x100,
            timeout: opts.timeout,
        };
        let mut data = encode_keys(&opts.keys());
        let mut all_keys = Vec::new();
        for _ in 0..MAX_LOGIN_ROUNDS {
            let req = LoginRequest {
                transit: true,
                continue_bit: false,
                csg: pdu::stage::LOGIN_OPERATIONAL_NEGOTIATION,
                nsg: pdu::stage::FULL_FEATURE_PHASE,
                version_max: 0,
                version_min: 0,
                isid: opts.isid,
                tsih: 0,
                itt: 0,
                cid: 0,
                cmd_sn: s.cmd_sn,
                exp_stat_sn: s.exp_stat_sn,
            };
            s.send(&Pdu::new(Bhs::LoginRequest(req), data))?;
            data = Bytes::new();
            let resp = s.recv()?;
            let Bhs::LoginResponse(r) = resp.bhs else {
                if let Bhs::Reject(r) = resp.bhs {
                    return Err(Error::Reject { reason: r.reason });
                }
                return Err(Error::Protocol(format!(
                    "expected a Login Response, got opcode {:#04x}",
                    resp.bhs.opcode()
                )));
            };
            if r.status_class == 1 {
                let address = decode_keys(&resp.data)
                    .into_iter()
                    .find(|(k, _)| k == "TargetAddress")
                    .map(|(_, v)| v)
                    .unwrap_or_default();
                return Err(Error::Redirected { address });
            }
            if r.status_class != 0 {
                return Err(Error::LoginFailed {
                    class: r.status_class,
                    detail: r.status_detail,
                });
            }
            all_keys.extend(decode_keys(&resp.data));
            s.exp_stat_sn = r.stat_sn.wrapping_add(1);
            s.exp_cmd_sn = r.exp_cmd_sn;
            s.max_cmd_sn = r.max_cmd_sn;
            s.tsih = r.tsih;
            if r.transit && r.nsg == pdu::stage::FULL_FEATURE_PHASE && !r.continue_bit {
                s.negotiated = Negotiated::from_keys(all_keys, opts);
                s.rx_limits = FrameLimits {
                    header_digest: s.negotiated.header_digest,
                    data_digest: s.negotiated.data_digest,
                    max_recv_data_segment_length: OUR_MAX_RECV_DATA_SEGMENT_LENGTH,
                };
                s.tx_limits = FrameLimits {
                    header_digest: s.negotiated.header_digest,
                    data_digest: s.negotiated.data_digest,
                    max_recv_data_segment_length: s.negotiated.target_max_recv_data_segment_length,
                };
                return Ok(s);
            }
        }
        Err(Error::Protocol(format!(
            "target did not reach full-feature phase in {MAX_LOGIN_ROUNDS} login rounds"
        )))
    }

    /// The underlying socket (to shut it down, or write raw bytes).
    pub fn stream(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// The next CmdSN this session will use.
    pub fn cmd_sn(&self) -> u32 {
        self.cmd_sn
    }

    /// The StatSN this session expects next.
    pub fn exp_stat_sn(&self) -> u32 {
        self.exp_stat_sn
    }

    /// The digest settings this session sends with.
    pub fn tx_limits(&self) -> FrameLimits {
        self.tx_limits
    }

    /// A new initiator task tag.
    pub fn next_itt(&mut self) -> u32 {
        self.next_itt = self.next_itt.wrapping_add(1);
        if self.next_itt == RESERVED_TAG {
            self.next_itt = 1;
        }
        self.next_itt
    }

    /// Uses up one CmdSN (for a non-immediate command built by hand).
    pub fn take_cmd_sn(&mut self) -> u32 {
        let c = self.cmd_sn;
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        c
    }

    /// Encodes and sends one PDU under the negotiated digests.
    pub fn send(&mut self, p: &Pdu) -> Result<()> {
        let e = frame::encode(p, &self.tx_limits);
        self.stream.write_all(&e.to_bytes())?;
        Ok(())
    }

    /// Sends bytes as they are.
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.write_all(bytes)?;
        Ok(())
    }

    /// Receives one PDU (NOP-In pings from the target are answered and skipped).
    pub fn recv(&mut self) -> Result<Pdu> {
        loop {
            let p = self.recv_any()?;
            if let Bhs::NopIn(n) = p.bhs {
                if n.ttt != RESERVED_TAG {
                    // A ping from the target: answer with the same TTT (RFC 7143 §11.18).
                    let reply = NopOut {
                        immediate: true,
                        lun: n.lun,
                        itt: RESERVED_TAG,
                        ttt: n.ttt,
                        cmd_sn: self.cmd_sn,
                        exp_stat_sn: self.exp_stat_sn,
                    };
                    self.send(&Pdu::new(Bhs::NopOut(reply), p.data.clone()))?;
                    continue;
                }
            }
            return Ok(p);
        }
    }

    /// Receives one PDU, whatever it is, within the session's time limit.
    pub fn recv_any(&mut self) -> Result<Pdu> {
        let deadline = Instant::now() + self.timeout;
        loop {
            match frame::decode(&mut self.rx, &self.rx_limits) {
                Ok(Some(p)) => {
                    self.note_stat_sn(&p.bhs);
                    return Ok(p);
                }
                Ok(None) => {}
                Err(e) => return Err(Error::Frame(e.to_string())),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Timeout);
            }
            self.stream.set_read_timeout(Some(left))?;
            let mut buf = [0u8; 64 * 1024];
            let n = self.stream.read(&mut buf)?;
            if n == 0 {
                return Err(Error::Closed);
            }
            self.rx.extend_from_slice(&buf[..n]);
        }
    }

    /// Waits up to `limit` for one PDU; `Ok(None)` if nothing came.
    pub fn recv_within(&mut self, limit: Duration) -> Result<Option<Pdu>> {
        let saved = self.timeout;
        self.timeout = limit;
        let r = self.recv();
        self.timeout = saved;
        match r {
            Ok(p) => Ok(Some(p)),
            Err(Error::Timeout) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn note_stat_sn(&mut self, bhs: &Bhs) {
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
        if let Some(s) = stat_sn {
            self.exp_stat_sn = s.wrapping_add(1);
        }
        // Only a later window replaces the one we hold (RFC 7143 §4.2.2.1).
        if (exp.wrapping_sub(self.exp_cmd_sn) as i32) > 0 {
            self.exp_cmd_sn = exp;
        }
        if (max.wrapping_sub(self.max_cmd_sn) as i32) > 0 {
            self.max_cmd_sn = max;
        }
    }

    /// Runs one SCSI command to its status: `data_out` is written (immediate data,
    /// unsolicited Data-Out and R2T-solicited Data-Out as negotiated), `read_len`
    /// bytes are expected in.
    pub fn command(&mut self, cdb: &[u8], data_out: &[u8], read_len: u32) -> Result<ScsiResult> {
        assert!(cdb.len() <= 16, "CDB longer than 16 bytes needs an AHS");
        let mut cdb16 = [0u8; 16];
        cdb16[..cdb.len()].copy_from_slice(cdb);
        let itt = self.next_itt();
        let n = &self.negotiated;
        let write_len = data_out.len() as u32;
        let mrdsl = n.target_max_recv_data_segment_length.max(512);
        let unsolicited_limit = write_len.min(n.first_burst_length);
        let immediate = if n.immediate_data {
            unsolicited_limit.min(mrdsl)
        } else {
            0
        };
        let unsolicited_end = if n.initial_r2t {
            immediate
        } else {
            unsolicited_limit
        };
        let cmd = ScsiCommand {
            immediate: false,
            final_bit: unsolicited_end == immediate,
            read: read_len > 0,
            write: write_len > 0,
            attr: 1, // SIMPLE
            lun: lun_field(self.lun),
            itt,
            expected_data_transfer_length: if write_len > 0 { write_len } else { read_len },
            cmd_sn: self.take_cmd_sn(),
            exp_stat_sn: self.exp_stat_sn,
            cdb: cdb16,
        };
        let imm = Bytes::copy_from_slice(&data_out[..immediate as usize]);
        self.send(&Pdu::new(Bhs::ScsiCommand(cmd), imm))?;
        if unsolicited_end > immediate {
            self.send_data_out(itt, RESERVED_TAG, data_out, immediate, unsolicited_end)?;
        }
        let mut result = ScsiResult::default();
        loop {
            let p = self.recv()?;
            match p.bhs {
                Bhs::R2t(r) if r.itt == itt => {
                    let start = r.buffer_offset;
                    let end = start.saturating_add(r.desired_data_transfer_length);
                    if end > write_len || start >= end {
                        return Err(Error::Protocol(format!(
                            "R2T for bytes {start}..{end} of a {write_len}-byte write"
                        )));
                    }
                    self.send_data_out(itt, r.ttt, data_out, start, end)?;
                }
                Bhs::DataIn(d) if d.itt == itt => {
                    let off = d.buffer_offset as usize;
                    let end = off + p.data.len();
                    if end > read_len as usize {
                        return Err(Error::Protocol(format!(
                            "Data-In for bytes {off}..{end} of a {read_len}-byte read"
                        )));
                    }
                    if result.data.len() < end {
                        result.data.resize(end, 0);
                    }
                    result.data[off..end].copy_from_slice(&p.data);
                    if d.status_present {
                        result.status = d.status;
                        result.residual_count = d.residual_count;
                        result.underflow = d.underflow;
                        result.overflow = d.overflow;
                        return Ok(result);
                    }
                }
                Bhs::ScsiResponse(r) if r.itt == itt => {
                    if r.response != 0 {
                        return Err(Error::Protocol(format!(
                            "SCSI Response with iSCSI response {:#04x}",
                            r.response
                        )));
                    }
                    result.status = r.status;
                    result.residual_count = r.residual_count;
                    result.underflow = r.underflow;
                    result.overflow = r.overflow;
                    if p.data.len() >= 2 {
                        let sl = u16::from_be_bytes([p.data[0], p.data[1]]) as usize;
                        result.sense = p.data[2..(2 + sl).min(p.data.len())].to_vec();
                    }
                    return Ok(result);
                }
                Bhs::Reject(r) => return Err(Error::Reject { reason: r.reason }),
                Bhs::NopIn(_) | Bhs::AsyncMessage(_) => {}
                other => {
                    return Err(Error::Protocol(format!(
                        "unexpected PDU (opcode {:#04x}) while waiting for task {itt:#x}",
                        other.opcode()
                    )))
                }
            }
        }
    }

    /// Sends bytes `start..end` of `data` as Data-Out PDUs of at most the target's
    /// MaxRecvDataSegmentLength, DataSN from 0, F on the last.
    fn send_data_out(
        &mut self,
        itt: u32,
        ttt: u32,
        data: &[u8],
        start: u32,
        end: u32,
    ) -> Result<()> {
        let chunk = self.negotiated.target_max_recv_data_segment_length.max(512);
        let mut off = start;
        let mut data_sn = 0;
        while off < end {
            let len = chunk.min(end - off);
            let d = DataOut {
                final_bit: off + len == end,
                lun: lun_field(self.lun),
                itt,
                ttt,
                exp_stat_sn: self.exp_stat_sn,
                data_sn,
                buffer_offset: off,
            };
            let bytes = Bytes::copy_from_slice(&data[off as usize..(off + len) as usize]);
            self.send(&Pdu::new(Bhs::DataOut(d), bytes))?;
            off += len;
            data_sn += 1;
        }
        Ok(())
    }

    /// Runs a command and insists on GOOD status. A UNIT ATTENTION (e.g. "power on
    /// or reset occurred", which targets report once to each new I_T nexus) is
    /// retried, as initiators do.
    pub fn command_good(
        &mut self,
        what: &str,
        cdb: &[u8],
        data_out: &[u8],
        read_len: u32,
    ) -> Result<ScsiResult> {
        let mut attempts = 0;
        loop {
            let r = self.command(cdb, data_out, read_len)?;
            attempts += 1;
            if r.status == GOOD {
                return Ok(r);
            }
            let unit_attention = matches!(r.sense_key(), Some((0x06, _, _)));
            if !(r.status == CHECK_CONDITION && unit_attention && attempts < 4) {
                return Err(Error::Protocol(format!(
                    "{what}: status {:#04x}, sense (key, ASC, ASCQ) {:x?}",
                    r.status,
                    r.sense_key()
                )));
            }
        }
    }

    /// Sends a Task Management Function Request (RFC 7143 §11.5, RFC 7144) as an
    /// immediate PDU for `function` on this session's LUN, naming
    /// `referenced_task_tag` (RESERVED_TAG when the function names no task), and
    /// returns the target's response. Other PDUs that arrive first (the answers
    /// of commands still running) are skipped.
    pub fn task_mgmt(
        &mut self,
        function: u8,
        referenced_task_tag: u32,
    ) -> Result<TaskMgmtResponse> {
        let itt = self.next_itt();
        let req = TaskMgmtRequest {
            immediate: true,
            function,
            lun: lun_field(self.lun),
            itt,
            referenced_task_tag,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            ref_cmd_sn: self.cmd_sn,
            exp_data_sn: 0,
        };
        self.send(&Pdu::new(Bhs::TaskMgmtRequest(req), Bytes::new()))?;
        loop {
            match self.recv()?.bhs {
                Bhs::TaskMgmtResponse(r) if r.itt == itt => return Ok(r),
                Bhs::Reject(r) => return Err(Error::Reject { reason: r.reason }),
                _ => {}
            }
        }
    }

    /// TEST UNIT READY.
    pub fn test_unit_ready(&mut self) -> Result<ScsiResult> {
        self.command(&[0x00, 0, 0, 0, 0, 0], &[], 0)
    }

    /// TEST UNIT READY until GOOD, taking every pending unit attention: their
    /// (ASC, ASCQ) in the order reported. Panics on any other answer, and when
    /// they do not run out within [`MAX_UNIT_ATTENTIONS`] commands.
    pub fn drain_unit_attentions(&mut self) -> Vec<(u8, u8)> {
        let mut seen = Vec::new();
        for _ in 0..MAX_UNIT_ATTENTIONS {
            let r = self.test_unit_ready().expect("TEST UNIT READY");
            if r.status == GOOD {
                return seen;
            }
            assert_eq!(r.status, CHECK_CONDITION, "TEST UNIT READY status");
            let (key, asc, ascq) = r.sense_key().expect("sense data");
            assert_eq!(
                key, UNIT_ATTENTION,
                "only unit attentions expected, sense {key:#x}/{asc:#x}/{ascq:#x}"
            );
            seen.push((asc, ascq));
        }
        panic!("unit attentions never ran out: {seen:x?}");
    }

    /// READ CAPACITY (16): (number of blocks, block size).
    pub fn read_capacity(&mut self) -> Result<(u64, u32)> {
        let mut cdb = [0u8; 16];
        cdb[0] = 0x9e;
        cdb[1] = 0x10;
        cdb[13] = 32;
        let r = self.command_good("READ CAPACITY(16)", &cdb, &[], 32)?;
        if r.data.len() < 12 {
            return Err(Error::Protocol(format!(
                "READ CAPACITY(16) returned {} bytes",
                r.data.len()
            )));
        }
        let last = u64::from_be_bytes(r.data[0..8].try_into().expect("8 bytes"));
        let bs = u32::from_be_bytes(r.data[8..12].try_into().expect("4 bytes"));
        Ok((last + 1, bs))
    }

    /// READ (16) of `blocks` blocks of `block_size` bytes at `lba`.
    pub fn read(&mut self, lba: u64, blocks: u32, block_size: u32) -> Result<Vec<u8>> {
        let mut cdb = [0u8; 16];
        cdb[0] = 0x88;
        cdb[2..10].copy_from_slice(&lba.to_be_bytes());
        cdb[10..14].copy_from_slice(&blocks.to_be_bytes());
        let len = blocks * block_size;
        let r = self.command_good("READ(16)", &cdb, &[], len)?;
        if r.data.len() != len as usize {
            return Err(Error::Protocol(format!(
                "READ(16) of {len} bytes returned {} bytes",
                r.data.len()
            )));
        }
        Ok(r.data)
    }

    /// WRITE (16) of `data` (a whole number of `block_size` blocks) at `lba`.
    pub fn write(&mut self, lba: u64, data: &[u8], block_size: u32) -> Result<()> {
        assert_eq!(data.len() % block_size as usize, 0, "whole blocks only");
        let blocks = (data.len() / block_size as usize) as u32;
        let mut cdb = [0u8; 16];
        cdb[0] = 0x8a;
        cdb[2..10].copy_from_slice(&lba.to_be_bytes());
        cdb[10..14].copy_from_slice(&blocks.to_be_bytes());
        self.command_good("WRITE(16)", &cdb, data, 0)?;
        Ok(())
    }

    /// NOP-Out ping; waits for the NOP-In echo.
    pub fn ping(&mut self) -> Result<()> {
        let itt = self.next_itt();
        let nop = NopOut {
            immediate: true,
            lun: 0,
            itt,
            ttt: RESERVED_TAG,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
        };
        self.send(&Pdu::new(Bhs::NopOut(nop), Bytes::from_static(b"ping")))?;
        loop {
            let p = self.recv()?;
            match p.bhs {
                Bhs::NopIn(n) if n.itt == itt => return Ok(()),
                Bhs::Reject(r) => return Err(Error::Reject { reason: r.reason }),
                Bhs::AsyncMessage(_) => {}
                other => {
                    return Err(Error::Protocol(format!(
                        "unexpected PDU (opcode {:#04x}) while waiting for NOP-In",
                        other.opcode()
                    )))
                }
            }
        }
    }

    /// A Text Request exchange (RFC 7143 §11.10), following continued responses;
    /// returns every key the target sent.
    pub fn text(&mut self, keys: &[(&str, &str)]) -> Result<Vec<(String, String)>> {
        let itt = self.next_itt();
        let mut ttt = RESERVED_TAG;
        let mut data = encode_keys(keys);
        let mut answer = Vec::new();
        let mut bytes = Vec::new();
        for _ in 0..64 {
            let req = pdu::TextRequest {
                immediate: false,
                final_bit: true,
                continue_bit: false,
                lun: 0,
                itt,
                ttt,
                cmd_sn: self.take_cmd_sn(),
                exp_stat_sn: self.exp_stat_sn,
            };
            self.send(&Pdu::new(Bhs::TextRequest(req), data))?;
            data = Bytes::new();
            let p = self.recv()?;
            match p.bhs {
                Bhs::TextResponse(r) if r.itt == itt => {
                    bytes.extend_from_slice(&p.data);
                    if r.final_bit && !r.continue_bit {
                        answer.extend(decode_keys(&bytes));
                        return Ok(answer);
                    }
                    ttt = r.ttt;
                }
                Bhs::Reject(r) => return Err(Error::Reject { reason: r.reason }),
                other => {
                    return Err(Error::Protocol(format!(
                        "unexpected PDU (opcode {:#04x}) while waiting for a Text Response",
                        other.opcode()
                    )))
                }
            }
        }
        Err(Error::Protocol(
            "Text Response continued for 64 PDUs".into(),
        ))
    }

    /// Logout (close the session) and wait for the response.
    pub fn logout(mut self) -> Result<()> {
        let itt = self.next_itt();
        let req = LogoutRequest {
            immediate: true,
            reason: pdu::logout::CLOSE_SESSION,
            itt,
            cid: 0,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
        };
        self.send(&Pdu::new(Bhs::LogoutRequest(req), Bytes::new()))?;
        loop {
            let p = self.recv()?;
            match p.bhs {
                Bhs::LogoutResponse(r) if r.itt == itt => {
                    let _ = self.stream.shutdown(Shutdown::Both);
                    return if r.response == pdu::logout::RESPONSE_SUCCESS {
                        Ok(())
                    } else {
                        Err(Error::Protocol(format!("logout response {}", r.response)))
                    };
                }
                Bhs::AsyncMessage(_) => {}
                other => {
                    return Err(Error::Protocol(format!(
                        "unexpected PDU (opcode {:#04x}) while waiting for the logout response",
                        other.opcode()
                    )))
                }
            }
        }
    }
}

/// What a raw connection saw after hostile bytes went out.
#[derive(Debug)]
pub enum Outcome {
    /// The target closed the connection.
    Closed,
    /// The target sent these PDUs (the first is the answer).
    Answered(Vec<Bhs>),
    /// Nothing within the time limit, and the connection is still open.
    Silent,
    /// Bytes that do not frame as a PDU.
    Garbled(String),
}

/// Reads from a raw (not logged-in, or logged-in without digests) connection until it
/// closes or `limit` passes, collecting the PDUs that arrive.
pub fn observe(stream: &mut TcpStream, limits: FrameLimits, limit: Duration) -> Outcome {
    let mut deadline = Instant::now() + limit;
    let mut rx = BytesMut::new();
    let mut seen = Vec::new();
    loop {
        loop {
            match frame::decode(&mut rx, &limits) {
                Ok(Some(p)) => {
                    // Once answered, only wait a little for the close that may follow.
                    deadline = deadline.min(Instant::now() + Duration::from_secs(2));
                    seen.push(p.bhs)
                }
                Ok(None) => break,
                Err(e) => return Outcome::Garbled(e.to_string()),
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return if seen.is_empty() {
                Outcome::Silent
            } else {
                Outcome::Answered(seen)
            };
        }
        let _ = stream.set_read_timeout(Some(left));
        let mut buf = [0u8; 16 * 1024];
        match stream.read(&mut buf) {
            Ok(0) => {
                return if seen.is_empty() {
                    Outcome::Closed
                } else {
                    Outcome::Answered(seen)
                }
            }
            Ok(n) => rx.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => {
                return if seen.is_empty() {
                    Outcome::Closed
                } else {
                    Outcome::Answered(seen)
                }
            }
        }
    }
}
