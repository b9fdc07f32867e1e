//! Persistent reservations shared by the nodes of a lab cluster (`mosaic lab`): the
//! state lives in the coordinator (`/mosaic/pr/<volume>`) and every node follows it.
//!
//! - A reservation taken through node 1 is enforced at node 2: a write there gets
//!   RESERVATION CONFLICT, a read is allowed (Write Exclusive), PERSISTENT RESERVE
//!   IN at node 2 reports node 1's key and reservation; a PREEMPT through node 2
//!   reaches the initiator at node 1 (REGISTRATIONS PREEMPTED, then conflicts).
//! - libiscsi's persistent reservation, RESERVE(6) and multipath suites
//!   (`iscsi-test-cu --dataloss`, both initiator names) with the first URL on node 1
//!   and the second on node 2: no failure, no skip. SPC-2 RESERVE and the resets
//!   are shared like the persistent reservations (Reserve6's second initiator and
//!   MultipathIO.Reset's second path are on node 2).
//! - APTPL: a registration and reservation made with APTPL = 1 through node 1 are
//!   there again, at another node, after the whole lab restarts on its data
//!   directory (each node keeps an APTPL file; the first to open the volume seeds
//!   the coordinator's key, which the embedded coordinator does not keep).

use std::net::SocketAddr;
use std::time::Duration;

use mosaic_tests::cunit::{self, Verdict};
use mosaic_tests::initiator::{LoginOptions, Session, CHECK_CONDITION, GOOD};
use mosaic_tests::lab::{node_portal, Lab, LabOptions};
use mosaic_tests::tools;

const IQN: &str = "iqn.2026-11.io.mosaic:prv";
const RESERVATION_CONFLICT: u8 = 0x18;
const WRITE_EXCLUSIVE: u8 = 0x01;
const RUN_LIMIT: Duration = Duration::from_secs(300);

fn start_lab() -> (Lab, u16) {
    start_lab_on(LabOptions::new(), "backing=memory")
}

/// A lab with the volume `prv` on `backing`, with `options` (a data directory).
fn start_lab_on(options: LabOptions, backing: &str) -> (Lab, u16) {
    let lab = options
        .volume(format!("name=prv,size=64M,{backing}"))
        .start();
    let port = lab.port;
    (lab, port)
}

/// Node `n`'s first NIC portal.
fn node(n: u32, port: u16) -> SocketAddr {
    node_portal(n, 1, port)
}

fn login(at: SocketAddr, name: &str) -> Session {
    let mut o = LoginOptions::new(IQN);
    o.initiator_name = name.to_string();
    let mut s = Session::login(at, &o).expect("login");
    s.lun = 0;
    // Whatever unit attention a fresh nexus has, take it now.
    for _ in 0..4 {
        if s.test_unit_ready().expect("TEST UNIT READY").status == GOOD {
            break;
        }
    }
    s
}

fn prout(s: &mut Session, sa: u8, ptype: u8, key: u64, sa_key: u64) -> u8 {
    let mut p = [0u8; 24];
    p[0..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sa_key.to_be_bytes());
    s.command(&[0x5f, sa, ptype, 0, 0, 0, 0, 0, 24, 0], &p, 0)
        .expect("PERSISTENT RESERVE OUT")
        .status
}

/// PERSISTENT RESERVE IN, READ KEYS: every registered key, in the order listed.
fn registered_keys(s: &mut Session) -> Vec<u64> {
    let data = s
        .command(&[0x5e, 0x00, 0, 0, 0, 0, 0, 0, 64, 0], &[], 64)
        .expect("READ KEYS")
        .data;
    let len = u32::from_be_bytes(data[4..8].try_into().expect("4 bytes")) as usize;
    data[8..8 + len]
        .chunks(8)
        .map(|k| u64::from_be_bytes(k.try_into().expect("a whole key")))
        .collect()
}

fn write_status(s: &mut Session) -> u8 {
    s.command(&[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[0x5a; 512], 0)
        .expect("WRITE(10)")
        .status
}

fn read_status(s: &mut Session) -> u8 {
    s.command(&[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[], 512)
        .expect("READ(10)")
        .status
}

#[test]
fn a_reservation_through_node_1_conflicts_a_write_through_node_2() {
    let (mut lab, port) = start_lab();
    let mut a = login(node(1, port), "iqn.2026-11.io.mosaic:tests-a");
    let mut b = login(node(2, port), "iqn.2026-11.io.mosaic:tests-b");
    const KEY_A: u64 = 0xaaaa;
    const KEY_B: u64 = 0xbbbb;
    assert_eq!(write_status(&mut b), GOOD, "no reservation yet");
    // a registers and reserves Write Exclusive through node 1.
    assert_eq!(
        prout(&mut a, 0x00, 0, 0, KEY_A),
        GOOD,
        "REGISTER via node 1"
    );
    assert_eq!(
        prout(&mut a, 0x01, WRITE_EXCLUSIVE, KEY_A, 0),
        GOOD,
        "RESERVE via node 1"
    );
    // Node 2 enforces it (PROUT completes once node 1 installed it; node 2 follows
    // by watch: allow it a moment, bounded).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while write_status(&mut b) != RESERVATION_CONFLICT {
        assert!(
            std::time::Instant::now() < deadline,
            "a write through node 2 is still allowed 10 s after node 1's RESERVE:\n{}",
            lab.mosaic.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        read_status(&mut b),
        GOOD,
        "Write Exclusive lets others read"
    );
    assert_eq!(write_status(&mut a), GOOD, "the holder writes");
    // PERSISTENT RESERVE IN at node 2 sees node 1's key and reservation.
    assert_eq!(registered_keys(&mut b), vec![KEY_A], "node 1's key only");
    let res = b
        .command(&[0x5e, 0x01, 0, 0, 0, 0, 0, 0, 64, 0], &[], 64)
        .expect("READ RESERVATION")
        .data;
    assert_eq!(u64::from_be_bytes(res[8..16].try_into().unwrap()), KEY_A);
    assert_eq!(res[21] & 0x0f, WRITE_EXCLUSIVE);
    // b registers through node 2 and preempts a: a hears of it at node 1.
    assert_eq!(
        prout(&mut b, 0x00, 0, 0, KEY_B),
        GOOD,
        "REGISTER via node 2"
    );
    assert_eq!(
        prout(&mut b, 0x04, WRITE_EXCLUSIVE, KEY_B, KEY_A),
        GOOD,
        "PREEMPT via node 2"
    );
    let r = a.test_unit_ready().expect("TEST UNIT READY");
    let mut seen = r.sense_key();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while r.status == GOOD && seen.is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "no unit attention at node 1"
        );
        std::thread::sleep(Duration::from_millis(20));
        let r = a.test_unit_ready().expect("TEST UNIT READY");
        if r.status == CHECK_CONDITION {
            seen = r.sense_key();
            break;
        }
    }
    assert_eq!(seen, Some((0x06, 0x2a, 0x05)), "REGISTRATIONS PREEMPTED");
    assert_eq!(
        write_status(&mut a),
        RESERVATION_CONFLICT,
        "a was preempted"
    );
    assert_eq!(write_status(&mut b), GOOD, "b holds it now");
    lab.mosaic
        .assert_alive("after reservations through two nodes");
}

#[test]
fn libiscsi_reservation_and_multipath_suites_pass_with_urls_on_two_nodes() {
    let test = "libiscsi_reservation_and_multipath_suites_pass_with_urls_on_two_nodes";
    let Some(cu) = tools::require(test, "iscsi-test-cu", "libiscsi-bin") else {
        return;
    };
    let (mut lab, port) = start_lab();
    let url1 = format!("iscsi://{}/{IQN}/0", node(1, port));
    let url2 = format!("iscsi://{}/{IQN}/0", node(2, port));
    let suites = cunit::RESERVATION_SUITES.join(",");
    let out = tools::run(
        &mut cunit::test_cu(&cu, &suites, &[&url1, &url2]),
        RUN_LIMIT,
    );
    let report = cunit::parse(&out.stdout);
    eprintln!("{test}: {}", report.counts());
    assert!(!out.timed_out, "{test}: timed out\n{}", out.tail(40));
    assert!(
        report.with(Verdict::Failed).is_empty() && report.with(Verdict::NoVerdict).is_empty(),
        "{test}: failures\n{}",
        report.describe_failures()
    );
    assert!(
        report.with(Verdict::Skipped).is_empty(),
        "{test}: skipped (not implemented?)\n{}",
        out.tail(40)
    );
    assert!(
        report.with(Verdict::Passed).len() >= 30,
        "{test}: too few tests ran: {}",
        report.counts()
    );
    assert!(
        report
            .tests
            .iter()
            .any(|t| t.suite == "MultipathIO" && t.test == "Reset" && t.verdict == Verdict::Passed),
        "{test}: MultipathIO.Reset did not pass"
    );
    lab.mosaic
        .assert_alive("after libiscsi's reservation suites");
}

#[test]
fn aptpl_reservations_survive_a_restart_of_the_lab() {
    let data = tempfile::tempdir().expect("temp dir");
    const KEY: u64 = 0x00c0_ffee_0000_0002;
    let holder = "iqn.2026-11.io.mosaic:tests-holder";
    let (mut lab, port) = start_lab_on(LabOptions::new().data_dir(data.path()), "backing=file");
    let mut a = login(node(1, port), holder);
    // REGISTER AND IGNORE EXISTING KEY with APTPL = 1, then RESERVE Write Exclusive.
    let mut p = [0u8; 24];
    p[8..16].copy_from_slice(&KEY.to_be_bytes());
    p[20] = 0x01;
    let r = a
        .command(&[0x5f, 0x06, 0, 0, 0, 0, 0, 0, 24, 0], &p, 0)
        .expect("PROUT");
    assert_eq!(r.status, GOOD, "APTPL registration: {:x?}", r.sense_key());
    assert_eq!(prout(&mut a, 0x01, WRITE_EXCLUSIVE, KEY, 0), GOOD);
    a.logout().expect("logout");
    assert!(lab.mosaic.stop(), "the lab stops on SIGTERM");
    drop(lab);

    let (mut lab, port) = start_lab_on(LabOptions::new().data_dir(data.path()), "backing=file");
    let mut b = login(node(3, port), "iqn.2026-11.io.mosaic:tests-other");
    assert_eq!(registered_keys(&mut b), vec![KEY], "the APTPL key only");
    assert_eq!(write_status(&mut b), RESERVATION_CONFLICT, "still reserved");
    lab.mosaic.assert_alive("after the restart");
}
