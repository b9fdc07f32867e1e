//! Login (RFC 7143 §6.3, §11.12): the security stage with CHAP (one-way or mutual)
//! or AuthMethod=None, the operational stage through the proto crate's
//! table-driven negotiator on its initiator side, redirects, and the vendor keys
//! (the MPIO group) in the leading request.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use mosaic_proto::chap;
use mosaic_proto::frame::{self, FrameLimits};
use mosaic_proto::negotiate::{
    Digest, InitiatorIdentity, Limits, Negotiator, SessionParams, SessionType, Stage,
};
use mosaic_proto::pdu::{self, Bhs, LoginRequest, Pdu};
use mosaic_proto::text::{self, KeyValue, TextAccumulator};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::{Error, Result};

/// The initiator name used when the caller names none.
pub const DEFAULT_INITIATOR_NAME: &str = "iqn.2026-11.io.mosaic:dsm";
/// The MPIO group login key (docs/wire-formats.md).
pub const MPIO_GROUP_KEY: &str = "X-io.mosaic.MpioGroup";
/// Login PDUs exchanged before we give up on a target that never finishes.
const MAX_LOGIN_ROUNDS: usize = 16;
/// Largest text a target may spread over continued Login Responses.
const MAX_LOGIN_TEXT: usize = 64 * 1024;

/// CHAP credentials: ours, and optionally what the target must prove (mutual).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChapConfig {
    pub user: String,
    pub secret: String,
    /// For mutual CHAP: the target's user name and secret.
    pub mutual: Option<(String, String)>,
}

/// What to say at login.
#[derive(Debug, Clone)]
pub struct LoginConfig {
    pub initiator_name: String,
    /// The target; `None` for a discovery session.
    pub target_name: Option<String>,
    /// Initiator session id (6 bytes). The same ISID on a new login reinstates the
    /// session (RFC 7143 §6.3.5).
    pub isid: u64,
    pub chap: Option<ChapConfig>,
    /// Offer HeaderDigest=CRC32C (first) rather than None only.
    pub header_digest: bool,
    /// Offer DataDigest=CRC32C (first) rather than None only.
    pub data_digest: bool,
    pub immediate_data: bool,
    pub initial_r2t: bool,
    pub first_burst_length: u32,
    pub max_burst_length: u32,
    /// What we declare we can receive.
    pub max_recv_data_segment_length: u32,
    /// Vendor `X-` keys for the leading Login Request (e.g. the MPIO group).
    pub vendor_keys: Vec<KeyValue>,
    /// Time limit for connecting and for each login round.
    pub timeout: Duration,
    /// Redirects (status 0101h/0102h) followed before giving up.
    pub max_redirects: usize,
}

impl LoginConfig {
    /// A Normal session to `target_name` with RFC defaults and a fresh ISID.
    pub fn normal(target_name: &str) -> LoginConfig {
        LoginConfig {
            initiator_name: DEFAULT_INITIATOR_NAME.into(),
            target_name: Some(target_name.into()),
            isid: fresh_isid(),
            chap: None,
            header_digest: false,
            data_digest: false,
            immediate_data: true,
            initial_r2t: false,
            first_burst_length: 65_536,
            max_burst_length: 262_144,
            max_recv_data_segment_length: 262_144,
            vendor_keys: Vec::new(),
            timeout: Duration::from_secs(10),
            max_redirects: 4,
        }
    }

    /// A discovery session.
    pub fn discovery() -> LoginConfig {
        LoginConfig {
            target_name: None,
            ..LoginConfig::normal("")
        }
    }

    /// Names the MPIO group this session belongs to.
    pub fn mpio_group(mut self, group: &str) -> LoginConfig {
        self.vendor_keys.retain(|(k, _)| k != MPIO_GROUP_KEY);
        self.vendor_keys
            .push((MPIO_GROUP_KEY.to_string(), group.to_string()));
        self
    }

    fn limits(&self) -> Limits {
        let digests = |on: bool| {
            if on {
                vec![Digest::Crc32c, Digest::None]
            } else {
                vec![Digest::None]
            }
        };
        Limits {
            max_recv_data_segment_length: self.max_recv_data_segment_length,
            max_burst_length: self.max_burst_length,
            first_burst_length: self.first_burst_length,
            immediate_data: self.immediate_data,
            initial_r2t: self.initial_r2t,
            header_digests: digests(self.header_digest),
            data_digests: digests(self.data_digest),
            auth_methods: vec![if self.chap.is_some() { "CHAP" } else { "None" }.into()],
            ..Limits::default()
        }
    }
}

/// A new ISID for each session of this process: type "random" (10b in the top two
/// bits, RFC 7143 §11.12.5), 14 bits of the process id and a 24-bit counter.
pub fn fresh_isid() -> u64 {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let n = u64::from(NEXT.fetch_add(1, Ordering::Relaxed));
    let pid = u64::from(std::process::id()) & 0x3fff;
    (0x80u64 << 40) | (pid << 24) | (n & 0xff_ffff)
}

/// A connection in full feature phase, as login left it.
#[derive(Debug)]
pub(crate) struct LoggedIn {
    pub stream: TcpStream,
    /// Bytes received after the last Login Response (normally none).
    pub rx: BytesMut,
    pub addr: SocketAddr,
    pub params: SessionParams,
    pub tsih: u16,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub max_cmd_sn: u32,
}

/// Connects to `addr` and logs in, following redirects.
pub(crate) async fn connect_and_login(
    addr: SocketAddr,
    cfg: &LoginConfig,
    tsih: u16,
) -> Result<LoggedIn> {
    let mut at = addr;
    for _ in 0..=cfg.max_redirects {
        match login_once(at, cfg, tsih).await {
            Err(Error::Redirected(address)) => {
                at = parse_target_address(&address)?;
                tracing::debug!(from = %addr, to = %at, "login redirected");
            }
            r => return r,
        }
    }
    Err(Error::Redirected(format!(
        "more than {} redirects from {addr}",
        cfg.max_redirects
    )))
}

/// `ip:port[,tpgt]` (IPv6 in brackets) of a TargetAddress.
pub fn parse_target_address(v: &str) -> Result<SocketAddr> {
    let portal = v.split(',').next().unwrap_or_default();
    portal
        .parse()
        .map_err(|_| Error::Protocol(format!("bad TargetAddress {v:?}")))
}

async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream> {
    let s = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| Error::Timeout(format!("connecting to {addr}")))?
        .map_err(|source| Error::Io { addr, source })?;
    s.set_nodelay(true)
        .map_err(|source| Error::Io { addr, source })?;
    Ok(s)
}

/// The CHAP exchange from the initiator's side.
#[derive(Debug)]
enum ChapStep {
    /// AuthMethod not yet agreed.
    Idle,
    /// CHAP_A sent.
    SentAlgorithm,
    /// CHAP_N/CHAP_R sent; for mutual CHAP, our challenge.
    SentResponse { mutual: Option<(u8, Vec<u8>)> },
    /// Authenticated both ways as configured.
    Done,
}

fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::getrandom(&mut b).map_err(|e| Error::Auth(format!("no random source: {e}")))?;
    Ok(b)
}

fn key<'a>(keys: &'a [KeyValue], k: &str) -> Option<&'a str> {
    keys.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
}

impl ChapStep {
    /// Our next CHAP keys, given the target's latest CHAP keys.
    fn next(&mut self, cfg: &ChapConfig, got: &[KeyValue]) -> Result<Vec<KeyValue>> {
        match self {
            ChapStep::Idle => {
                *self = ChapStep::SentAlgorithm;
                Ok(vec![("CHAP_A".into(), chap::ALGORITHM_MD5.to_string())])
            }
            ChapStep::SentAlgorithm => {
                let a = key(got, "CHAP_A").ok_or_else(|| Error::Auth("no CHAP_A".into()))?;
                if text::parse_number(a).ok() != Some(u64::from(chap::ALGORITHM_MD5)) {
                    return Err(Error::Auth(format!("target chose CHAP_A={a}")));
                }
                let id = key(got, "CHAP_I")
                    .and_then(|v| text::parse_number(v).ok())
                    .and_then(|v| u8::try_from(v).ok())
                    .ok_or_else(|| Error::Auth("missing or bad CHAP_I".into()))?;
                let challenge = key(got, "CHAP_C")
                    .and_then(|v| text::parse_binary(v).ok())
                    .filter(|c| !c.is_empty())
                    .ok_or_else(|| Error::Auth("missing or bad CHAP_C".into()))?;
                let r = chap::response(id, cfg.secret.as_bytes(), &challenge);
                let mut out = vec![
                    ("CHAP_N".into(), cfg.user.clone()),
                    ("CHAP_R".into(), text::format_hex(&r)),
                ];
                let mut mutual = None;
                if cfg.mutual.is_some() {
                    let [mid] = random_bytes::<1>()?;
                    let mut mc = random_bytes::<{ chap::CHALLENGE_LEN }>()?.to_vec();
                    if mc == challenge {
                        // Never send the target its own challenge back.
                        mc[0] ^= 0xff;
                    }
                    out.push(("CHAP_I".into(), mid.to_string()));
                    out.push(("CHAP_C".into(), text::format_hex(&mc)));
                    mutual = Some((mid, mc));
                }
                *self = ChapStep::SentResponse { mutual };
                Ok(out)
            }
            ChapStep::SentResponse { mutual } => {
                if let (Some((id, challenge)), Some((user, secret))) =
                    (mutual.as_ref(), &cfg.mutual)
                {
                    let n = key(got, "CHAP_N")
                        .ok_or_else(|| Error::Auth("target sent no CHAP_N".into()))?;
                    let r = key(got, "CHAP_R")
                        .and_then(|v| text::parse_binary(v).ok())
                        .ok_or_else(|| Error::Auth("target sent no CHAP_R".into()))?;
                    if n != user {
                        return Err(Error::Auth(format!("target named itself {n:?}")));
                    }
                    if r != chap::response(*id, secret.as_bytes(), challenge) {
                        return Err(Error::Auth("the target's CHAP response is wrong".into()));
                    }
                }
                *self = ChapStep::Done;
                Ok(Vec::new())
            }
            ChapStep::Done => Ok(Vec::new()),
        }
    }
}

/// One login on a fresh connection to `addr` (no redirect following).
async fn login_once(addr: SocketAddr, cfg: &LoginConfig, tsih: u16) -> Result<LoggedIn> {
    let mut stream = connect(addr, cfg.timeout).await?;
    let identity = InitiatorIdentity {
        initiator_name: cfg.initiator_name.clone(),
        target_name: cfg.target_name.clone(),
        session_type: if cfg.target_name.is_some() {
            SessionType::Normal
        } else {
            SessionType::Discovery
        },
    };
    let mut neg = Negotiator::initiator(cfg.limits(), identity);
    neg.set_leading(tsih == 0);
    let mut stage = Stage::Security;
    neg.set_stage(stage);
    let mut chap_step = ChapStep::Idle;
    let mut rx = BytesMut::with_capacity(16 * 1024);
    let limits = FrameLimits {
        max_recv_data_segment_length: cfg.max_recv_data_segment_length.max(8192),
        ..FrameLimits::default()
    };
    let cmd_sn = 1u32;
    let mut exp_stat_sn = 0u32;
    let mut first = true;
    let mut pending_auth: Vec<KeyValue> = Vec::new();
    let mut acc = TextAccumulator::with_limit(MAX_LOGIN_TEXT);
    let mut continuing = false;
    for _ in 0..MAX_LOGIN_ROUNDS {
        let mut keys = if continuing {
            Vec::new()
        } else {
            neg.initiator_offer()
        };
        if first && cfg.target_name.is_some() {
            keys.extend(cfg.vendor_keys.iter().cloned());
        }
        let mut transit = true;
        if stage == Stage::Security && !continuing {
            if let Some(c) = &cfg.chap {
                if neg.params().auth_method == "CHAP" || !matches!(chap_step, ChapStep::Idle) {
                    keys.extend(chap_step.next(c, &pending_auth)?);
                }
                transit = matches!(chap_step, ChapStep::SentResponse { .. } | ChapStep::Done);
            }
        }
        if continuing {
            transit = false;
        }
        let (csg, nsg) = match stage {
            Stage::Security => (
                pdu::stage::SECURITY_NEGOTIATION,
                pdu::stage::LOGIN_OPERATIONAL_NEGOTIATION,
            ),
            _ => (
                pdu::stage::LOGIN_OPERATIONAL_NEGOTIATION,
                pdu::stage::FULL_FEATURE_PHASE,
            ),
        };
        let req = LoginRequest {
            transit,
            continue_bit: false,
            csg,
            nsg: if transit { nsg } else { 0 },
            version_max: pdu::ISCSI_VERSION,
            version_min: pdu::ISCSI_VERSION,
            isid: cfg.isid,
            tsih,
            itt: 0,
            cid: 0,
            cmd_sn,
            exp_stat_sn,
        };
        let data = text::encode(&keys)?;
        send(
            &mut stream,
            addr,
            &Pdu::new(Bhs::LoginRequest(req), data),
            &limits,
        )
        .await?;
        first = false;
        let resp = recv(&mut stream, addr, &mut rx, &limits, cfg.timeout).await?;
        let r = match resp.bhs {
            Bhs::LoginResponse(r) => r,
            Bhs::Reject(r) => return Err(Error::Reject(r.reason)),
            other => {
                return Err(Error::Protocol(format!(
                    "expected a Login Response, got opcode {:#04x}",
                    other.opcode()
                )))
            }
        };
        if r.status_class == pdu::login_status::TARGET_MOVED_TEMPORARILY.0 {
            let got = text::parse_allow_duplicates(&resp.data)?;
            let to = key(&got, "TargetAddress")
                .ok_or_else(|| Error::Protocol("redirect without TargetAddress".into()))?;
            return Err(Error::Redirected(to.to_string()));
        }
        if r.status_class != 0 {
            return Err(Error::LoginFailed {
                addr,
                class: r.status_class,
                detail: r.status_detail,
            });
        }
        exp_stat_sn = r.stat_sn.wrapping_add(1);
        let Some(all) = acc.push(&resp.data, r.continue_bit)? else {
            continuing = true;
            continue;
        };
        continuing = false;
        let got = text::parse(&all)?;
        neg.absorb_response(&got)?;
        if stage == Stage::Security {
            pending_auth = neg.take_auth_keys();
            if matches!(chap_step, ChapStep::SentResponse { .. }) {
                if let Some(c) = &cfg.chap {
                    chap_step.next(c, &pending_auth)?;
                }
            }
        }
        if r.transit {
            let to_operational = r.nsg == pdu::stage::LOGIN_OPERATIONAL_NEGOTIATION;
            let to_full = r.nsg == pdu::stage::FULL_FEATURE_PHASE;
            if stage == Stage::Security && (to_operational || to_full) {
                if cfg.chap.is_some() && !matches!(chap_step, ChapStep::Done) {
                    return Err(Error::Auth(
                        "the target left the security stage before CHAP finished".into(),
                    ));
                }
                neg.finish_stage()?;
                stage = Stage::Operational;
                neg.set_stage(stage);
            }
            if to_full {
                neg.finish_stage()?;
                neg.set_stage(Stage::FullFeature);
                return Ok(LoggedIn {
                    stream,
                    rx,
                    addr,
                    params: neg.params().clone(),
                    tsih: r.tsih,
                    cmd_sn,
                    exp_stat_sn,
                    max_cmd_sn: r.max_cmd_sn,
                });
            }
        }
    }
    Err(Error::Protocol(format!(
        "login at {addr} did not reach full feature phase in {MAX_LOGIN_ROUNDS} rounds"
    )))
}

async fn send(
    stream: &mut TcpStream,
    addr: SocketAddr,
    p: &Pdu,
    limits: &FrameLimits,
) -> Result<()> {
    let e = frame::encode(p, limits);
    stream
        .write_all(&e.to_bytes())
        .await
        .map_err(|source| Error::Io { addr, source })
}

async fn recv(
    stream: &mut TcpStream,
    addr: SocketAddr,
    rx: &mut BytesMut,
    limits: &FrameLimits,
    timeout: Duration,
) -> Result<Pdu> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(p) = frame::decode(rx, limits)? {
            return Ok(p);
        }
        let n = tokio::time::timeout_at(deadline, stream.read_buf(rx))
            .await
            .map_err(|_| Error::Timeout(format!("login response from {addr}")))?
            .map_err(|source| Error::Io { addr, source })?;
        if n == 0 {
            return Err(Error::ConnectionLost(format!(
                "{addr} closed the connection during login"
            )));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_address_forms() {
        assert_eq!(
            parse_target_address("127.0.0.1:3260,1").unwrap(),
            "127.0.0.1:3260".parse().unwrap()
        );
        assert_eq!(
            parse_target_address("[::1]:3261").unwrap(),
            "[::1]:3261".parse().unwrap()
        );
        assert!(parse_target_address("nohost").is_err());
    }

    #[test]
    fn isids_are_random_type_and_distinct() {
        let a = fresh_isid();
        let b = fresh_isid();
        assert_ne!(a, b);
        assert_eq!(a >> 46, 0b10);
    }

    #[test]
    fn chap_answers_and_checks_mutual() {
        let cfg = ChapConfig {
            user: "alice".into(),
            secret: "alice-secret-12".into(),
            mutual: Some(("tgt".into(), "target-secret-1".into())),
        };
        let mut s = ChapStep::Idle;
        assert_eq!(
            s.next(&cfg, &[]).unwrap(),
            vec![("CHAP_A".into(), "5".into())]
        );
        let ch = [7u8; 16];
        let got = vec![
            ("CHAP_A".into(), "5".into()),
            ("CHAP_I".into(), "9".into()),
            ("CHAP_C".into(), text::format_hex(&ch)),
        ];
        let out = s.next(&cfg, &got).unwrap();
        let r = chap::response(9, b"alice-secret-12", &ch);
        assert_eq!(key(&out, "CHAP_R"), Some(text::format_hex(&r).as_str()));
        let (mid, mc) = match &s {
            ChapStep::SentResponse { mutual: Some(m) } => m.clone(),
            other => panic!("{other:?}"),
        };
        // A wrong proof from the target fails, the right one passes.
        let mut bad = ChapStep::SentResponse {
            mutual: Some((mid, mc.clone())),
        };
        let wrong = vec![
            ("CHAP_N".into(), "tgt".into()),
            ("CHAP_R".into(), text::format_hex(&[0u8; 16])),
        ];
        assert!(matches!(bad.next(&cfg, &wrong), Err(Error::Auth(_))));
        let right = vec![
            ("CHAP_N".into(), "tgt".into()),
            (
                "CHAP_R".into(),
                text::format_hex(&chap::response(mid, b"target-secret-1", &mc)),
            ),
        ];
        s.next(&cfg, &right).unwrap();
        assert!(matches!(s, ChapStep::Done));
        // Missing keys are errors, not panics.
        let mut t = ChapStep::SentAlgorithm;
        assert!(t.next(&cfg, &[]).is_err());
    }
}
