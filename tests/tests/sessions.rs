//! Session behaviour of the real `mosaic` binary, with our own initiator: Discovery
//! with SendTargets, NOP-Out pings, logout, session reinstatement on a reused ISID,
//! the target's own NOP-In pings of idle connections, the data-transfer keys
//! (ImmediateData, InitialR2T, FirstBurstLength), and SCSI errors.

use std::time::{Duration, Instant};

use mosaic_proto::pdu::{Bhs, RESERVED_TAG};
use mosaic_tests::initiator::{Error, LoginOptions, Session, CHECK_CONDITION};
use mosaic_tests::pattern;
use mosaic_tests::server::{Mosaic, Volume};

fn external() -> bool {
    std::env::var_os("MOSAIC_TEST_TARGET").is_some()
}

#[test]
fn discovery_send_targets_all_and_one() {
    if external() {
        return;
    }
    let server = Mosaic::start(&[Volume::memory("one", "8M"), Volume::memory("two", "8M")]);
    let mut d = Session::login(server.addr(), &LoginOptions::discovery()).expect("discovery login");
    let all = d.text(&[("SendTargets", "All")]).expect("SendTargets=All");
    let names: Vec<&str> = all
        .iter()
        .filter(|(k, _)| k == "TargetName")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(
        names,
        vec![server.iqn("one").as_str(), server.iqn("two").as_str()],
        "SendTargets=All: {all:?}"
    );
    let portal = format!("{},", server.portal());
    assert!(
        all.iter()
            .any(|(k, v)| k == "TargetAddress" && v.starts_with(&portal)),
        "SendTargets=All names no TargetAddress {portal}<tag>: {all:?}"
    );
    let one = d
        .text(&[("SendTargets", &server.iqn("two"))])
        .expect("SendTargets=<name>");
    let names: Vec<&str> = one
        .iter()
        .filter(|(k, _)| k == "TargetName")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(
        names,
        vec![server.iqn("two").as_str()],
        "SendTargets=<name>: {one:?}"
    );
    d.logout().expect("discovery logout");
}

#[test]
fn login_to_an_unknown_target_is_refused() {
    let server = Mosaic::start(&[Volume::memory("vol", "8M")]);
    let opts = LoginOptions::new("iqn.2026-11.io.mosaic:no-such-volume");
    match Session::login(server.addr(), &opts) {
        Err(Error::LoginFailed { class: 2, detail }) => {
            assert_eq!(
                detail, 3,
                "expected 'not found' (0x0203), got 0x02{detail:02x}"
            )
        }
        other => panic!("login to an unknown target: expected status 0x0203, got {other:?}"),
    }
}

#[test]
fn ping_and_logout() {
    let server = Mosaic::start(&[Volume::memory("vol", "8M")]);
    let mut s = mosaic_tests::login(&server, "vol", |o| o).expect("login");
    for _ in 0..3 {
        s.ping().expect("NOP-Out ping");
    }
    s.test_unit_ready().expect("TEST UNIT READY");
    s.logout().expect("logout");
}

/// A new login with the ISID of a live session and TSIH 0 replaces that session
/// (RFC 7143 §6.3.5): the old connection is closed, the new one works.
#[test]
fn reused_isid_reinstates_the_session() {
    let server = Mosaic::start(&[Volume::memory("vol", "8M")]);
    let mut old = mosaic_tests::login(&server, "vol", |o| o).expect("first login");
    old.write(0, &pattern::bytes(1, 4096), 512).expect("write");
    let isid = old.isid;
    let mut new = mosaic_tests::login(&server, "vol", |o| LoginOptions { isid, ..o })
        .expect("login reusing the ISID");
    assert_ne!(new.tsih, 0, "the new session has a TSIH");
    let deadline = Instant::now() + Duration::from_secs(10);
    let closed = loop {
        match old.recv_within(Duration::from_millis(500)) {
            // An Async Message (e.g. "connection will be dropped") may come first.
            Ok(_) if Instant::now() < deadline => continue,
            Ok(_) => break false,
            Err(_) => break true,
        }
    };
    assert!(
        closed,
        "the reinstated session's connection is still open after 10 s"
    );
    assert_eq!(new.read(0, 8, 512).expect("read"), pattern::bytes(1, 4096));
}

/// `--nop-interval 1`: the target pings an idle connection with NOP-In (TTT set),
/// and drops a connection that does not answer.
#[test]
fn target_pings_idle_connections_and_drops_dead_ones() {
    if external() {
        return;
    }
    let server = Mosaic::start_with(&[Volume::memory("vol", "8M")], &["--nop-interval", "1"]);
    let mut s = mosaic_tests::login(&server, "vol", |o| o).expect("login");
    // recv_any does not answer pings.
    let start = Instant::now();
    let mut pinged = false;
    let mut closed = false;
    while start.elapsed() < Duration::from_secs(60) {
        match s.recv_any() {
            Ok(p) => {
                if let Bhs::NopIn(n) = p.bhs {
                    if n.ttt != RESERVED_TAG {
                        pinged = true;
                    }
                }
            }
            Err(Error::Timeout) => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    assert!(pinged, "no NOP-In ping within 60 s with --nop-interval 1");
    assert!(
        closed,
        "a connection that never answers pings is still open after 60 s"
    );
    // A session that answers (recv does) stays up.
    let mut live = mosaic_tests::login(&server, "vol", |o| o).expect("login");
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(4) {
        let _ = live.recv_within(Duration::from_millis(500));
    }
    live.test_unit_ready()
        .expect("a session that answers pings is still up");
}

/// Every combination of ImmediateData and InitialR2T, with a FirstBurstLength smaller
/// than the writes, so immediate data, unsolicited Data-Out and R2Ts all happen.
#[test]
fn immediate_data_and_initial_r2t_combinations() {
    let server = Mosaic::start(&[Volume::memory("vol", "16M")]);
    for (imm, r2t) in [(true, true), (true, false), (false, true), (false, false)] {
        let mut s = mosaic_tests::login(&server, "vol", |o| LoginOptions {
            immediate_data: imm,
            initial_r2t: r2t,
            first_burst_length: 16 << 10,
            max_burst_length: 64 << 10,
            ..o
        })
        .expect("login");
        // InitialR2T is OR-negotiated and ImmediateData AND-negotiated: a target may
        // insist on InitialR2T=Yes or ImmediateData=No. Whatever it chose is used.
        let n = &s.negotiated;
        eprintln!(
            "offered ImmediateData={imm} InitialR2T={r2t}: got ImmediateData={} InitialR2T={} FirstBurstLength={}",
            n.immediate_data, n.initial_r2t, n.first_burst_length
        );
        assert!(
            imm || !n.immediate_data,
            "ImmediateData=No offered, Yes negotiated"
        );
        assert!(
            !r2t || n.initial_r2t,
            "InitialR2T=Yes offered, No negotiated"
        );
        for (i, len) in [512usize, 8 << 10, 16 << 10, 200 << 10, 1 << 20]
            .into_iter()
            .enumerate()
        {
            let lba = (i as u64) * 4096;
            let data = pattern::bytes(((imm as u64) << 8) + ((r2t as u64) << 4) + i as u64, len);
            s.write(lba, &data, 512).unwrap_or_else(|e| {
                panic!("ImmediateData={imm} InitialR2T={r2t}: WRITE {len} bytes: {e}")
            });
            let back = s.read(lba, (len / 512) as u32, 512).expect("read");
            if let Some(d) = pattern::first_difference(&data, &back) {
                panic!("ImmediateData={imm} InitialR2T={r2t}, {len} bytes: {d}");
            }
        }
        s.logout().expect("logout");
    }
}

/// Out-of-range LBAs and unknown opcodes: CHECK CONDITION, ILLEGAL REQUEST, with the
/// right additional sense code.
#[test]
fn scsi_errors_have_the_right_sense() {
    let server = Mosaic::start(&[Volume::memory("vol", "8M")]);
    let mut s = mosaic_tests::login(&server, "vol", |o| o).expect("login");
    let (blocks, bs) = s.read_capacity().expect("READ CAPACITY");
    if !external() {
        assert_eq!((blocks, bs), (16384, 512), "8 MiB of 512-byte blocks");
    }
    let mut cdb = [0u8; 16];
    cdb[0] = 0x88; // READ(16) of 1 block just past the end
    cdb[2..10].copy_from_slice(&blocks.to_be_bytes());
    cdb[13] = 1;
    let r = s.command(&cdb, &[], 512).expect("READ past the end");
    assert_eq!(r.status, CHECK_CONDITION);
    assert_eq!(
        r.sense_key().map(|(k, asc, _)| (k, asc)),
        Some((0x05, 0x21)),
        "READ past the end: ILLEGAL REQUEST / LOGICAL BLOCK ADDRESS OUT OF RANGE"
    );
    let r = s
        .command(&[0xc7, 0, 0, 0, 0, 0], &[], 0)
        .expect("vendor opcode");
    assert_eq!(r.status, CHECK_CONDITION);
    assert_eq!(
        r.sense_key().map(|(k, asc, _)| (k, asc)),
        Some((0x05, 0x20)),
        "unknown opcode: ILLEGAL REQUEST / INVALID COMMAND OPERATION CODE"
    );
    // Still fine afterwards.
    s.test_unit_ready().expect("TEST UNIT READY");
}
