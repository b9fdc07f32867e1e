//! Hostile input against the real `mosaic` binary. Each case gets the RFC's answer:
//! a Reject PDU, a login reject, or the connection dropped (for a CmdSN outside the
//! window: silently ignored, RFC 7143 §4.2.2.1). After each, the process is still up,
//! a session opened before the attack still reads and writes correctly, and a new
//! session can log in and do the same.

use std::io::Write;
use std::net::Shutdown;
use std::time::Duration;

use bytes::Bytes;
use mosaic_proto::digest;
use mosaic_proto::frame::{self, FrameLimits};
use mosaic_proto::pdu::{
    self, Bhs, DataOut, LoginRequest, LogoutRequest, NopOut, Pdu, ScsiCommand, TaskMgmtRequest,
    TextRequest, RESERVED_TAG,
};
use mosaic_tests::initiator::{self, connect, lun_field, Outcome, Session};
use mosaic_tests::pattern;
use mosaic_tests::server::{Mosaic, Volume};

/// How long the target gets to answer or drop a hostile connection.
const ANSWER_LIMIT: Duration = Duration::from_secs(10);
const BS: u32 = 512;

/// A server, and a session logged in before the attack with known data on it.
struct Scene {
    server: Mosaic,
    bystander: Session,
    known: Vec<u8>,
}

impl Scene {
    fn new() -> Scene {
        let server = Mosaic::start(&[Volume::memory("vol", "16M")]);
        let mut bystander =
            mosaic_tests::login(&server, "vol", |o| o).expect("bystander session login");
        let known = pattern::bytes(0xb1, 64 << 10);
        bystander
            .write(0, &known, BS)
            .expect("bystander's first write");
        Scene {
            server,
            bystander,
            known,
        }
    }

    /// A raw connection to the portal.
    fn raw(&self) -> std::net::TcpStream {
        connect(self.server.addr(), ANSWER_LIMIT).expect("connect")
    }

    /// A fresh, logged-in session (no digests unless asked).
    fn session(&self, header_digest: bool) -> Session {
        mosaic_tests::login(&self.server, "vol", |o| o.digests(header_digest, false))
            .expect("login of a well-behaved session")
    }

    /// The process is up, the bystander's data and I/O are intact, and a new session
    /// works.
    fn check_after(&mut self, what: &str) {
        self.server.assert_alive(&format!("after {what}"));
        let back = self
            .bystander
            .read(0, (self.known.len() as u32) / BS, BS)
            .unwrap_or_else(|e| panic!("after {what}: the bystander session's read failed: {e}"));
        if let Some(d) = pattern::first_difference(&self.known, &back) {
            panic!("after {what}: the bystander's data changed: {d}");
        }
        let more = pattern::bytes(0xb2, 16 << 10);
        self.bystander
            .write(256, &more, BS)
            .unwrap_or_else(|e| panic!("after {what}: the bystander session's write failed: {e}"));
        let mut fresh = mosaic_tests::login(&self.server, "vol", |o| o)
            .unwrap_or_else(|e| panic!("after {what}: a new session cannot log in: {e}"));
        let data = pattern::bytes(0xb3, 32 << 10);
        fresh
            .write(1024, &data, BS)
            .unwrap_or_else(|e| panic!("after {what}: a new session's write failed: {e}"));
        let back = fresh
            .read(1024, (data.len() as u32) / BS, BS)
            .unwrap_or_else(|e| panic!("after {what}: a new session's read failed: {e}"));
        assert!(
            back == data,
            "after {what}: a new session reads back other data"
        );
        assert_eq!(
            fresh.read(256, 32, BS).expect("read the bystander's write"),
            more,
            "after {what}: the bystander's second write is not visible"
        );
        fresh.logout().expect("logout");
    }
}

/// Asserts `outcome` is a drop, a Reject, or a login reject.
fn assert_rejected_or_dropped(what: &str, outcome: &Outcome) {
    eprintln!("{what}: {outcome:?}");
    match outcome {
        Outcome::Closed => {}
        Outcome::Answered(pdus) => {
            let ok = match &pdus[0] {
                Bhs::Reject(_) => true,
                Bhs::LoginResponse(r) => r.status_class != 0,
                _ => false,
            };
            assert!(
                ok,
                "{what}: expected a Reject, a login reject or a dropped connection; got {pdus:?}"
            );
        }
        Outcome::Silent => panic!(
            "{what}: the target neither answered nor dropped the connection within {ANSWER_LIMIT:?}"
        ),
        Outcome::Garbled(e) => {
            panic!("{what}: the target answered with bytes that do not frame: {e}")
        }
    }
}

fn login_limits() -> FrameLimits {
    FrameLimits::default()
}

fn ffp_limits(header_digest: bool) -> FrameLimits {
    FrameLimits {
        header_digest,
        data_digest: false,
        max_recv_data_segment_length: initiator::OUR_MAX_RECV_DATA_SEGMENT_LENGTH,
    }
}

fn tur(itt: u32, cmd_sn: u32, exp_stat_sn: u32) -> Bhs {
    Bhs::ScsiCommand(ScsiCommand {
        immediate: false,
        final_bit: true,
        read: false,
        write: false,
        attr: 1,
        lun: 0,
        itt,
        expected_data_transfer_length: 0,
        cmd_sn,
        exp_stat_sn,
        cdb: [0; 16],
    })
}

fn wire(bhs: Bhs, data: &[u8]) -> Vec<u8> {
    frame::encode(
        &Pdu::new(bhs, Bytes::copy_from_slice(data)),
        &login_limits(),
    )
    .to_bytes()
    .to_vec()
}

fn garbage(seed: u64, len: usize) -> Vec<u8> {
    let mut g = b"GET / HTTP/1.1\r\nHost: mosaic\r\n\r\n".to_vec();
    g.extend(pattern::bytes(seed, len - g.len()));
    g
}

#[test]
fn garbage_bytes_before_login() {
    let mut scene = Scene::new();
    // Random bytes as a whole BHS with an undefined opcode and no data segment: the
    // target has all of it and must answer or drop.
    let mut undefined = pattern::bytes(2, 48);
    undefined[0] = 0x3c;
    undefined[4..8].copy_from_slice(&[0, 0, 0, 0]);
    for (i, bytes) in [
        garbage(1, 4096),
        vec![0xff; 4096],
        undefined,
        vec![0u8; 48 + 8192 + 100],
    ]
    .iter()
    .enumerate()
    {
        let mut c = scene.raw();
        // The target may drop us halfway through: a failed write is a drop too.
        let _ = c.write_all(bytes);
        let outcome = initiator::observe(&mut c, login_limits(), ANSWER_LIMIT);
        assert_rejected_or_dropped(&format!("garbage #{i} before login"), &outcome);
    }
    scene.check_after("garbage before login");
}

#[test]
fn garbage_bytes_after_login() {
    let mut scene = Scene::new();
    let mut s = scene.session(false);
    let mut bytes = vec![0xff; 48]; // opcode 0x3f (a target opcode), 16 MiB data segment
    bytes.extend(pattern::bytes(3, 4048));
    let _ = s.send_raw(&bytes);
    let outcome = initiator::observe(s.stream(), ffp_limits(false), ANSWER_LIMIT);
    assert_rejected_or_dropped("garbage after login", &outcome);
    scene.check_after("garbage after login");
}

/// An opcode RFC 7143 does not define, well framed: Reject (or a drop).
#[test]
fn unknown_opcode_after_login() {
    let mut scene = Scene::new();
    let mut s = scene.session(false);
    let mut bhs = [0u8; 48];
    bhs[0] = 0x1e; // not an initiator opcode
    bhs[1] = 0x80;
    bhs[16..20].copy_from_slice(&0x1234u32.to_be_bytes());
    s.send_raw(&bhs).expect("send");
    let outcome = initiator::observe(s.stream(), ffp_limits(false), ANSWER_LIMIT);
    assert_rejected_or_dropped("unknown opcode 0x1e", &outcome);
    if let Outcome::Answered(pdus) = &outcome {
        if let Bhs::Reject(r) = pdus[0] {
            assert!(
                [
                    pdu::reject_reason::COMMAND_NOT_SUPPORTED,
                    pdu::reject_reason::PROTOCOL_ERROR
                ]
                .contains(&r.reason),
                "unknown opcode: Reject reason {:#04x}, expected command not supported (0x05) or protocol error (0x04)",
                r.reason
            );
        }
    }
    scene.check_after("an unknown opcode");
}

/// A PDU cut short, then the connection half-closed: the target must give up on it.
#[test]
fn truncated_pdus() {
    let mut scene = Scene::new();
    let login = wire(
        Bhs::LoginRequest(LoginRequest {
            transit: true,
            csg: 1,
            nsg: 3,
            isid: initiator::fresh_isid(),
            ..Default::default()
        }),
        b"InitiatorName=iqn.2026-11.io.mosaic:tests\0SessionType=Normal\0",
    );
    // Half a header; a whole header and half its data segment.
    for (what, cut) in [
        ("half a login BHS", 24),
        ("login BHS and part of its data", 60),
    ] {
        let mut c = scene.raw();
        c.write_all(&login[..cut]).expect("send");
        let _ = c.shutdown(Shutdown::Write);
        let outcome = initiator::observe(&mut c, login_limits(), ANSWER_LIMIT);
        assert_rejected_or_dropped(what, &outcome);
    }
    // The same after login: half a SCSI command header.
    let mut s = scene.session(false);
    let cmd = wire(tur(0x77, s.cmd_sn(), s.exp_stat_sn()), &[]);
    s.send_raw(&cmd[..30]).expect("send");
    let _ = s.stream().shutdown(Shutdown::Write);
    let outcome = initiator::observe(s.stream(), ffp_limits(false), ANSWER_LIMIT);
    assert_rejected_or_dropped("half a SCSI command BHS after login", &outcome);
    scene.check_after("truncated PDUs");
}

/// DataSegmentLength beyond MaxRecvDataSegmentLength: during login (8192, RFC 7143
/// §13.12) and in full-feature phase (what the target declared).
#[test]
fn oversized_data_segment_length() {
    let mut scene = Scene::new();
    let mut login = wire(
        Bhs::LoginRequest(LoginRequest {
            transit: true,
            csg: 1,
            nsg: 3,
            isid: initiator::fresh_isid(),
            ..Default::default()
        }),
        &[],
    );
    login[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
    let mut c = scene.raw();
    c.write_all(&login).expect("send");
    let _ = c.write_all(&[b'A'; 1024]);
    let outcome = initiator::observe(&mut c, login_limits(), ANSWER_LIMIT);
    assert_rejected_or_dropped("a login request claiming 16 MiB of data", &outcome);

    let mut s = scene.session(false);
    let declared = s.negotiated.target_max_recv_data_segment_length;
    let nop = Bhs::NopOut(NopOut {
        immediate: true,
        lun: 0,
        itt: 0x99,
        ttt: RESERVED_TAG,
        cmd_sn: s.cmd_sn(),
        exp_stat_sn: s.exp_stat_sn(),
    });
    let mut raw = wire(nop, &[]);
    assert!(
        declared < pdu::MAX_DATA_SEGMENT_LEN,
        "the target declared MaxRecvDataSegmentLength={declared}, the largest there is"
    );
    let claim = pdu::MAX_DATA_SEGMENT_LEN;
    raw[5..8].copy_from_slice(&claim.to_be_bytes()[1..]);
    s.send_raw(&raw).expect("send");
    let _ = s.send_raw(&vec![0x5a; 4096]);
    let outcome = initiator::observe(s.stream(), ffp_limits(false), ANSWER_LIMIT);
    assert_rejected_or_dropped(
        &format!("a NOP-Out claiming {claim} bytes of data (target declared {declared})"),
        &outcome,
    );
    scene.check_after("oversized DataSegmentLength");
}

/// A wrong header digest after HeaderDigest=CRC32C: the header cannot be trusted, so
/// the connection is dropped (or the PDU rejected).
#[test]
fn wrong_header_digest() {
    let mut scene = Scene::new();
    let mut s = scene.session(true);
    assert!(
        s.negotiated.header_digest,
        "the target did not agree to HeaderDigest=CRC32C: {:?}",
        s.negotiated.keys
    );
    let nop = Pdu::new(
        Bhs::NopOut(NopOut {
            immediate: true,
            lun: 0,
            itt: 0x42,
            ttt: RESERVED_TAG,
            cmd_sn: s.cmd_sn(),
            exp_stat_sn: s.exp_stat_sn(),
        }),
        Bytes::new(),
    );
    let mut raw = frame::encode(&nop, &s.tx_limits()).to_bytes().to_vec();
    assert_eq!(raw.len(), 52, "BHS + header digest");
    let good = digest::from_wire(raw[48..52].try_into().unwrap());
    raw[48] ^= 0x5a;
    assert_ne!(digest::from_wire(raw[48..52].try_into().unwrap()), good);
    s.send_raw(&raw).expect("send");
    let outcome = initiator::observe(s.stream(), ffp_limits(true), ANSWER_LIMIT);
    if let Outcome::Answered(pdus) = &outcome {
        assert!(
            !pdus
                .iter()
                .any(|p| matches!(p, Bhs::NopIn(n) if n.itt == 0x42)),
            "the target answered a NOP-Out whose header digest is wrong: {pdus:?}"
        );
    }
    assert_rejected_or_dropped("a wrong header digest", &outcome);
    scene.check_after("a wrong header digest");
}

/// Full-feature PDUs as the first PDU of a connection: the login phase allows only
/// Login requests, so the target rejects the login or drops the connection.
#[test]
fn full_feature_pdus_before_login() {
    let mut scene = Scene::new();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("SCSI Command (TEST UNIT READY)", wire(tur(1, 1, 0), &[])),
        ("SCSI Command (WRITE(10) with data)", {
            let mut cdb = [0u8; 16];
            cdb[0] = 0x2a;
            cdb[8] = 1;
            wire(
                Bhs::ScsiCommand(ScsiCommand {
                    final_bit: true,
                    write: true,
                    attr: 1,
                    itt: 2,
                    expected_data_transfer_length: 512,
                    cmd_sn: 1,
                    cdb,
                    ..Default::default()
                }),
                &[0xee; 512],
            )
        }),
        (
            "NOP-Out",
            wire(
                Bhs::NopOut(NopOut {
                    immediate: true,
                    itt: 3,
                    ttt: RESERVED_TAG,
                    cmd_sn: 1,
                    ..Default::default()
                }),
                &[],
            ),
        ),
        (
            "Text Request (SendTargets=All)",
            wire(
                Bhs::TextRequest(TextRequest {
                    final_bit: true,
                    itt: 4,
                    ttt: RESERVED_TAG,
                    cmd_sn: 1,
                    ..Default::default()
                }),
                b"SendTargets=All\0",
            ),
        ),
        (
            "Data-Out",
            wire(
                Bhs::DataOut(DataOut {
                    final_bit: true,
                    itt: 5,
                    ttt: RESERVED_TAG,
                    ..Default::default()
                }),
                &[0xdd; 512],
            ),
        ),
        (
            "Task Management (LUN RESET)",
            wire(
                Bhs::TaskMgmtRequest(TaskMgmtRequest {
                    immediate: true,
                    function: pdu::tmf_function::LOGICAL_UNIT_RESET,
                    itt: 6,
                    referenced_task_tag: RESERVED_TAG,
                    cmd_sn: 1,
                    ..Default::default()
                }),
                &[],
            ),
        ),
        (
            "Logout",
            wire(
                Bhs::LogoutRequest(LogoutRequest {
                    immediate: true,
                    reason: pdu::logout::CLOSE_SESSION,
                    itt: 7,
                    cmd_sn: 1,
                    ..Default::default()
                }),
                &[],
            ),
        ),
    ];
    for (what, bytes) in &cases {
        let mut c = scene.raw();
        let _ = c.write_all(bytes);
        let outcome = initiator::observe(&mut c, login_limits(), ANSWER_LIMIT);
        if let Outcome::Answered(pdus) = &outcome {
            assert!(
                !pdus.iter().any(|p| matches!(
                    p,
                    Bhs::ScsiResponse(_)
                        | Bhs::NopIn(_)
                        | Bhs::TextResponse(_)
                        | Bhs::TaskMgmtResponse(_)
                        | Bhs::LogoutResponse(_)
                )),
                "{what} before login was served: {pdus:?}"
            );
        }
        assert_rejected_or_dropped(&format!("{what} before login"), &outcome);
    }
    // The WRITE before login must not have reached the volume.
    let back = scene.bystander.read(0, 1, BS).expect("read");
    assert_eq!(
        back,
        scene.known[..512],
        "a WRITE sent before login changed the volume"
    );
    scene.check_after("full-feature PDUs before login");
}

/// Non-immediate commands with a CmdSN outside [ExpCmdSN, MaxCmdSN] are silently
/// ignored (RFC 7143 §4.2.2.1), or rejected, or the connection dropped: never served.
/// A session that is still up then goes on with the right CmdSN.
#[test]
fn cmdsn_outside_the_window() {
    let mut scene = Scene::new();
    for (what, offset) in [
        ("far above MaxCmdSN", 0x4000_0000u32),
        ("just above MaxCmdSN", 0),
        ("below ExpCmdSN", 0x8000_0000 + 0x10),
    ] {
        let mut s = scene.session(false);
        s.test_unit_ready().expect("TEST UNIT READY in the window");
        let cmd_sn = match what {
            "just above MaxCmdSN" => s.max_cmd_sn.wrapping_add(1),
            "below ExpCmdSN" => s.cmd_sn().wrapping_sub(1000),
            _ => s.cmd_sn().wrapping_add(offset),
        };
        let itt = s.next_itt();
        // A WRITE, so that serving it would also show in the data.
        let mut cdb = [0u8; 16];
        cdb[0] = 0x2a;
        cdb[8] = 1; // LBA 0, 1 block
        let cmd = Bhs::ScsiCommand(ScsiCommand {
            final_bit: true,
            write: true,
            attr: 1,
            lun: lun_field(scene.server.lun()),
            itt,
            expected_data_transfer_length: 512,
            cmd_sn,
            exp_stat_sn: s.exp_stat_sn(),
            cdb,
            ..Default::default()
        });
        let bad = vec![0xcc; 512];
        let _ = s.send(&Pdu::new(cmd, Bytes::from(bad)));
        let outcome = initiator::observe(s.stream(), ffp_limits(false), Duration::from_secs(3));
        eprintln!("CmdSN {what}: {outcome:?}");
        match &outcome {
            Outcome::Closed | Outcome::Silent => {}
            Outcome::Answered(pdus) => assert!(
                !pdus.iter().any(|p| matches!(
                    p,
                    Bhs::ScsiResponse(r) if r.itt == itt
                ) || matches!(p, Bhs::R2t(r) if r.itt == itt)),
                "CmdSN {what}: the command was served: {pdus:?}"
            ),
            Outcome::Garbled(e) => panic!("CmdSN {what}: bad bytes from the target: {e}"),
        }
        if matches!(outcome, Outcome::Silent) {
            // Ignored: the session goes on with the CmdSN it should have used.
            s.test_unit_ready().unwrap_or_else(|e| {
                panic!("CmdSN {what} ignored, but the session then failed: {e}")
            });
        }
        let back = scene.bystander.read(0, 1, BS).expect("read");
        assert_eq!(back, scene.known[..512], "CmdSN {what}: the WRITE landed");
    }
    scene.check_after("CmdSNs outside the window");
}

/// Many connections that open and vanish mid-login do not take the target down.
#[test]
fn abandoned_connections() {
    let mut scene = Scene::new();
    for i in 0..50 {
        let mut c = scene.raw();
        if i % 2 == 0 {
            let _ = c.write_all(&garbage(i, 100)[..(i as usize % 48) + 1]);
        }
        drop(c);
    }
    scene.check_after("50 abandoned connections");
}
