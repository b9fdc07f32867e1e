//! Mode parameters and target resets shared by the nodes of a lab cluster (`mosaic
//! lab`), with our blocking initiator:
//!
//! - A MODE SELECT through node 1 (WCE off in the Caching page) changes what MODE
//!   SENSE returns through nodes 2 and 3; every other I_T nexus, on every node and
//!   the same initiator port through node 2 included, hears MODE PARAMETERS
//!   CHANGED (2Ah/01h) exactly once, the sender never. SWP set through node 3
//!   write-protects the volume through node 1 and 2.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mosaic_tests::initiator::{LoginOptions, Session, CHECK_CONDITION, GOOD};
use mosaic_tests::lab::{node_portal, LabOptions};
use mosaic_tests::server::Mosaic;

const IQN: &str = "iqn.2026-11.io.mosaic:mdv";
/// UNIT ATTENTION, MODE PARAMETERS CHANGED.
const MODE_CHANGED: (u8, u8, u8) = (0x06, 0x2a, 0x01);
/// DATA PROTECT, WRITE PROTECTED.
const WRITE_PROTECTED: (u8, u8, u8) = (0x07, 0x27, 0x00);
const CACHING: u8 = 0x08;
const CONTROL: u8 = 0x0a;
const WCE: u8 = 0x04;
const SWP: u8 = 0x08;
/// How long another node may take to follow a change (an in-process watch: far less).
const FOLLOW_LIMIT: Duration = Duration::from_secs(10);

/// A lab of three nodes with the volume `mdv` in memory.
fn start_lab() -> (Mosaic, u16) {
    let lab = LabOptions::new()
        .volume("name=mdv,size=16M,backing=memory")
        .start();
    (lab.mosaic, lab.port)
}

/// Node `n`'s first NIC portal.
fn node(n: u32, port: u16) -> SocketAddr {
    node_portal(n, 1, port)
}

/// A session of `name` (with `isid`) through `at`, its fresh-nexus unit
/// attentions (if any) taken.
fn login(at: SocketAddr, name: &str, isid: u64) -> Session {
    let mut o = LoginOptions::new(IQN);
    o.initiator_name = name.to_string();
    o.isid = isid;
    let mut s = Session::login(at, &o).expect("login");
    s.lun = 0;
    for _ in 0..4 {
        if s.test_unit_ready().expect("TEST UNIT READY").status == GOOD {
            return s;
        }
    }
    panic!("{name}: unit attentions do not end");
}

/// The current mode page `code` (MODE SENSE(6), DBD), and the status if it was not
/// GOOD (with its sense).
fn mode_page(s: &mut Session, code: u8) -> Result<Vec<u8>, Option<(u8, u8, u8)>> {
    let r = s
        .command(&[0x1a, 0x08, code, 0, 255, 0], &[], 255)
        .expect("MODE SENSE(6)");
    if r.status != GOOD {
        return Err(r.sense_key());
    }
    assert!(r.data.len() > 4, "MODE SENSE data: {:x?}", r.data);
    Ok(r.data[4..].to_vec())
}

/// MODE SELECT(6) of one page (PF = 1); its status.
fn mode_select(s: &mut Session, page: &[u8]) -> u8 {
    let mut list = vec![0u8; 4];
    list.extend_from_slice(page);
    s.command(&[0x15, 0x10, 0, 0, list.len() as u8, 0], &list, 0)
        .expect("MODE SELECT(6)")
        .status
}

fn write_one(s: &mut Session) -> (u8, Option<(u8, u8, u8)>) {
    let r = s
        .command(&[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[0x5a; 512], 0)
        .expect("WRITE(10)");
    (r.status, r.sense_key())
}

/// TEST UNIT READY until it reports `ua` (the change may still be on its way to
/// this node), then once more, which must be GOOD: the condition is reported once.
/// Returns how many GOOD answers came before it.
fn hears_once(s: &mut Session, ua: (u8, u8, u8), who: &str, lab: &Mosaic) -> usize {
    let deadline = Instant::now() + FOLLOW_LIMIT;
    let mut before = 0;
    loop {
        let r = s.test_unit_ready().expect("TEST UNIT READY");
        if r.status == CHECK_CONDITION {
            assert_eq!(r.sense_key(), Some(ua), "{who}: another condition");
            break;
        }
        assert_eq!(r.status, GOOD, "{who}");
        before += 1;
        assert!(
            Instant::now() < deadline,
            "{who} never heard {ua:x?}:\n{}",
            lab.log()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    for _ in 0..3 {
        let r = s.test_unit_ready().expect("TEST UNIT READY");
        assert_eq!(
            (r.status, r.sense_key()),
            (GOOD, None),
            "{who}: {ua:x?} reported more than once"
        );
    }
    before
}

#[test]
fn a_mode_select_through_node_1_is_what_every_node_reports() {
    let (mut lab, port) = start_lab();
    const A: &str = "iqn.2026-11.io.mosaic:tests-mode-a";
    const B: &str = "iqn.2026-11.io.mosaic:tests-mode-b";
    // a sends the MODE SELECT through node 1; b is another initiator on node 1;
    // a2 is a's initiator port (same name and ISID) through node 2, another I_T
    // nexus; c and d are on nodes 2 and 3.
    let mut a = login(node(1, port), A, 0x0000_2301_0001);
    let mut b = login(node(1, port), B, 0x0000_2301_0002);
    let mut a2 = login(node(2, port), A, 0x0000_2301_0001);
    let mut c = login(node(2, port), B, 0x0000_2301_0003);
    let mut d = login(node(3, port), B, 0x0000_2301_0004);

    let mut caching = mode_page(&mut a, CACHING).expect("caching page via node 1");
    assert_eq!(caching[2] & WCE, WCE, "WCE = 1 at power-on");
    for (s, n) in [(&mut c, 2), (&mut d, 3)] {
        let p = mode_page(s, CACHING).expect("caching page");
        assert_eq!(p[2] & WCE, WCE, "WCE = 1 through node {n} before");
    }
    caching[2] &= !WCE;
    assert_eq!(
        mode_select(&mut a, &caching),
        GOOD,
        "MODE SELECT via node 1"
    );

    // The sender hears nothing; the others once each, then MODE SENSE through
    // nodes 2 and 3 reports WCE = 0.
    for _ in 0..3 {
        let r = a.test_unit_ready().expect("TEST UNIT READY");
        assert_eq!((r.status, r.sense_key()), (GOOD, None), "the sender");
    }
    // Node 1 installed the change before GOOD: b hears it on its first command.
    assert_eq!(hears_once(&mut b, MODE_CHANGED, "b at node 1", &lab), 0);
    hears_once(&mut a2, MODE_CHANGED, "a's port at node 2", &lab);
    hears_once(&mut c, MODE_CHANGED, "c at node 2", &lab);
    hears_once(&mut d, MODE_CHANGED, "d at node 3", &lab);
    for (s, n) in [(&mut a, 1), (&mut c, 2), (&mut d, 3)] {
        let p = mode_page(s, CACHING).expect("caching page");
        assert_eq!(p[2] & WCE, 0, "WCE = 0 through node {n}");
    }
    // With the write cache off writes still work through every node (each is made
    // durable at its pages' primaries and replicas before GOOD).
    for (s, n) in [(&mut a, 1), (&mut c, 2), (&mut d, 3)] {
        assert_eq!(write_one(s), (GOOD, None), "write through node {n}");
    }

    // SWP through node 3: writes through nodes 1 and 2 are refused.
    let mut control = mode_page(&mut d, CONTROL).expect("control page via node 3");
    control[4] |= SWP;
    assert_eq!(mode_select(&mut d, &control), GOOD, "SWP via node 3");
    hears_once(&mut a, MODE_CHANGED, "a at node 1", &lab);
    hears_once(&mut c, MODE_CHANGED, "c at node 2", &lab);
    for (s, n) in [(&mut a, 1), (&mut c, 2), (&mut d, 3)] {
        assert_eq!(
            write_one(s),
            (CHECK_CONDITION, Some(WRITE_PROTECTED)),
            "write through node {n} with SWP"
        );
        let p = mode_page(s, CONTROL).expect("control page");
        assert_eq!(p[4] & SWP, SWP, "SWP through node {n}");
        // WCE = 0 from node 1's MODE SELECT is still there.
        assert_eq!(mode_page(s, CACHING).expect("caching")[2] & WCE, 0);
    }
    control[4] &= !SWP;
    assert_eq!(
        mode_select(&mut d, &control),
        GOOD,
        "SWP cleared via node 3"
    );
    hears_once(&mut c, MODE_CHANGED, "c at node 2", &lab);
    assert_eq!(
        write_one(&mut c),
        (GOOD, None),
        "write through node 2 again"
    );
    lab.assert_alive("after the mode changes");
    assert!(lab.stop(), "the lab stops on SIGTERM");
}
