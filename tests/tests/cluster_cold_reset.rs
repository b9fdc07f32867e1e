//! TARGET COLD RESET in a lab cluster (`mosaic lab`), with our blocking initiator:
//! as on a single target it ends every session (RFC 7143 §11.5.1), on every node.
//! The node that receives it announces it through the coordinator; every other
//! node ends its sessions to the volume before acknowledging, and the task
//! management response waits for those acknowledgements, so when the initiator
//! has the response the sessions through the other nodes are gone. The receiving
//! node ends its own sessions after the response. Logins afterwards work.

use std::net::SocketAddr;

use mosaic_proto::pdu::{tmf_function, tmf_response, RESERVED_TAG};
use mosaic_tests::initiator::{Error, LoginOptions, Session, CHECK_CONDITION, GOOD};
use mosaic_tests::lab::{node_portal, LabOptions};
use mosaic_tests::server::Mosaic;

const IQN: &str = "iqn.2026-11.io.mosaic:crv";
const A: &str = "iqn.2026-11.io.mosaic:tests-cold-a";
const B: &str = "iqn.2026-11.io.mosaic:tests-cold-b";

/// A lab of three nodes with the volume `crv` in memory.
fn start_lab() -> (Mosaic, u16) {
    let lab = LabOptions::new()
        .volume("name=crv,size=16M,backing=memory")
        .start();
    (lab.mosaic, lab.port)
}

/// Node `n`'s first NIC portal.
fn node(n: u32, port: u16) -> SocketAddr {
    node_portal(n, 1, port)
}

/// A session of `name` through `at`, with whatever unit attention it starts with
/// taken; the (sense key, ASC) of the first one, if any.
fn login(at: SocketAddr, name: &str, isid: u64) -> (Session, Option<(u8, u8)>) {
    let mut o = LoginOptions::new(IQN);
    o.initiator_name = name.to_string();
    o.isid = isid;
    let mut s = Session::login(at, &o).expect("login");
    s.lun = 0;
    let mut first = None;
    for _ in 0..4 {
        let r = s.test_unit_ready().expect("TEST UNIT READY");
        if r.status == GOOD {
            return (s, first);
        }
        assert_eq!(r.status, CHECK_CONDITION);
        first = first.or(r.sense_key().map(|(k, asc, _)| (k, asc)));
    }
    panic!("{name}: unit attentions do not end");
}

/// Whether the session's connection has ended: a command finds it closed (not a
/// timeout: a session left open would not answer either if it were stuck).
fn ended(s: &mut Session) -> bool {
    matches!(s.test_unit_ready(), Err(Error::Closed | Error::Io(_)))
}

#[test]
fn a_cold_reset_through_node_1_ends_the_sessions_of_every_node() {
    let (mut lab, port) = start_lab();
    let (mut a, _) = login(node(1, port), A, 0x0000_2302_0001);
    let (mut a1, _) = login(node(1, port), B, 0x0000_2302_0002);
    let (mut b, _) = login(node(2, port), B, 0x0000_2302_0003);
    let (mut c, _) = login(node(3, port), B, 0x0000_2302_0004);
    let (mut a2, _) = login(node(2, port), A, 0x0000_2302_0001);

    let r = a
        .task_mgmt(tmf_function::TARGET_COLD_RESET, RESERVED_TAG)
        .expect("TARGET COLD RESET answered");
    assert_eq!(r.response, tmf_response::COMPLETE, "{r:?}");
    // Nodes 2 and 3 acknowledged only once their sessions had ended.
    for (s, who) in [
        (&mut b, "b at node 2"),
        (&mut c, "c at node 3"),
        (&mut a2, "a's port at node 2"),
    ] {
        assert!(ended(s), "{who} still has a session:\n{}", lab.log());
    }
    // Node 1 ends its own after the response, the sender's included.
    assert!(
        ended(&mut a),
        "the sender's session outlived the cold reset"
    );
    assert!(ended(&mut a1), "a1 at node 1 still has a session");

    // Logins work afterwards, on every node, and the initiator hears of what
    // happened (a 29h unit attention: power on, or the loss of its nexus).
    for n in 1..=3u32 {
        let (mut s, heard) = login(node(n, port), B, 0x0000_2302_0001 + u64::from(n));
        assert_eq!(
            heard,
            Some((0x06, 0x29)),
            "node {n}: a fresh session of the same port hears of the reset"
        );
        assert_eq!(s.test_unit_ready().expect("TUR").status, GOOD);
    }
    lab.assert_alive("after the cold reset");
    assert!(lab.stop(), "the lab stops on SIGTERM");
}
