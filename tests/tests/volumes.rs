//! Volume management of a running lab cluster through its admin endpoint, with
//! the `mosaic` CLI as the client and real iSCSI clients on the result:
//!
//! - `mosaic volume create` makes a volume that discovery at the group portal
//!   lists at once, and that qemu-img writes through node 1 and reads back
//!   identical through node 2 and the group portal; `mosaic routing show` finds
//!   its pages on all three nodes; `mosaic volume list` and `mosaic status` show it.
//! - `mosaic volume resize`: a new login sees the new capacity and the old data;
//!   a session logged in before keeps the old capacity and is told CAPACITY DATA
//!   HAS CHANGED.
//! - `mosaic volume delete`: the volume leaves discovery and the listing.
//! - Errors: an unknown volume, a name taken, an unreachable endpoint: non-zero
//!   exit and a message that says so.
//! - `/metrics` over a plain TcpStream: Prometheus text with the mosaic_* names.

use std::process::Command;
use std::time::{Duration, Instant};

use mosaic_proto::pdu::{tmf_function, tmf_response, Bhs, Pdu, ScsiCommand};
use mosaic_tests::initiator::{LoginOptions, Session, GOOD};
use mosaic_tests::lab::{free_addr, samples, Lab, LabOptions, NODES};
use mosaic_tests::server::{http_get, mosaic_bin};
use mosaic_tests::tools::{self, RunOutput};

const TOOL_LIMIT: Duration = Duration::from_secs(300);
const VOLUME: &str = "dyn";
/// 64 MiB in 4 MiB pages: 16 pages, enough to land on every node.
const VOLUME_SIZE: &str = "64M";
const PAGE_SIZE: &str = "4M";
const IMAGE_BYTES: usize = 32 << 20;
const BLOCK: u64 = 512;

fn start_lab() -> Lab {
    LabOptions::new()
        .volume("name=lv,size=16M,backing=memory")
        .start()
}

fn refused(out: RunOutput, what: &str, message: &str) {
    assert!(!out.success(), "{what} succeeded:\n{}", out.both());
    assert!(
        out.stderr.contains(message),
        "{what}: expected {message:?} in:\n{}",
        out.both()
    );
}

#[test]
fn volumes_created_resized_and_deleted_at_run_time_work_through_every_node() {
    let test = "volumes_created_resized_and_deleted_at_run_time_work_through_every_node";
    if mosaic_tests::skip_against_external_target(test) {
        return;
    }
    let Some(qemu) = tools::require_qemu_img(test) else {
        return;
    };
    let Some(ls) = tools::require(test, "iscsi-ls", "libiscsi-bin") else {
        return;
    };
    let mut lab = start_lab();
    let (port, group) = (lab.port, lab.group);
    let iqn = mosaic_tests::target_iqn(VOLUME);
    let url = |addr: String| lab.url(addr, VOLUME);
    let discover = || {
        tools::run(
            Command::new(&ls).arg(format!("iscsi://{group}")),
            TOOL_LIMIT,
        )
        .assert_success("iscsi-ls at the group portal")
        .both()
    };
    assert!(!discover().contains(&iqn), "not there before it is created");

    // Create.
    let out = lab.cli_ok(&[
        "volume",
        "create",
        VOLUME,
        "--size",
        VOLUME_SIZE,
        "--page-size",
        PAGE_SIZE,
    ]);
    assert!(
        out.contains(&format!("created volume {VOLUME}: 64 MiB")),
        "{out}"
    );
    refused(
        lab.cli(&["volume", "create", VOLUME, "--size", "1M"]),
        "creating it twice",
        "exists",
    );
    let list = lab.cli_ok(&["volume", "list"]);
    assert!(
        list.lines()
            .any(|l| l.starts_with(&format!("{VOLUME} ")) && l.contains("64 MiB")),
        "{list}"
    );
    assert!(list.lines().any(|l| l.starts_with("lv ")), "{list}");
    let disc = discover();
    for node in 1..=NODES {
        let want = format!("Target:{iqn} Portal:127.0.{node}.1:{port},{node}");
        assert!(disc.contains(&want), "{want} missing from:\n{disc}");
    }

    // Its pages are on all three nodes.
    let (routing, shown) = lab.routing(VOLUME);
    assert_eq!(
        shown.nodes.len(),
        NODES as usize,
        "a row per node:\n{routing}"
    );
    for n in &shown.nodes {
        assert!(
            n.primary > 0,
            "node {} holds primary pages:\n{routing}",
            n.node
        );
    }
    assert_eq!(
        shown.nodes.iter().map(|n| n.primary).sum::<u64>(),
        16,
        "16 pages of 4 MiB:\n{routing}"
    );
    assert!(
        routing.contains("map (PAGES:PRIMARY+REPLICAS): 0"),
        "{routing}"
    );

    // Written through node 1, identical through node 2 and the group portal.
    let dir = tempfile::tempdir().expect("temp dir");
    let image = dir.path().join("random.img");
    mosaic_tests::pattern::random_file(&image, 2, IMAGE_BYTES);
    let image = image.to_str().expect("utf-8").to_string();
    qemu.convert(
        "qemu-img convert into node 1",
        &["-n", &image, &url(format!("127.0.1.1:{port}"))],
    );
    let compare = |addr: String| qemu.assert_identical(&image, &url(addr));
    compare(format!("127.0.2.2:{port}"));
    compare(group.to_string());

    // Status: every node, its portals, and I/O that went between nodes.
    let status = lab.cli_ok(&["status"]);
    for node in 1..=NODES {
        assert!(
            status
                .lines()
                .any(|l| l.starts_with(&format!("{node} ")) && l.contains("active")),
            "node {node} in:\n{status}"
        );
        assert!(
            status.contains(&format!("127.0.{node}.2:{port}")),
            "node {node}'s second NIC in:\n{status}"
        );
    }
    let metrics = lab.metrics();
    for name in [
        "# TYPE mosaic_node_read_commands_total counter",
        "mosaic_node_written_bytes_total{node=\"1\"}",
        "mosaic_node_local_pieces_total{node=\"2\"}",
        "mosaic_node_served_requests_total{node=\"3\"}",
        "mosaic_node_sessions{node=\"1\"}",
        "mosaic_routing_epoch ",
        &format!("mosaic_portal_connections{{node=\"3\",portal=\"127.0.3.2:{port}\"}}"),
        &format!("mosaic_volume_primary_pages{{volume=\"{VOLUME}\",node=\"1\"}}"),
    ] {
        assert!(metrics.contains(name), "{name} missing from:\n{metrics}");
    }
    // Node 1 wrote the image: pieces went to the other nodes.
    let forwarded_1 = samples(&metrics)
        .iter()
        .find(|s| s.name == "mosaic_node_forwarded_pieces_total" && s.label("node") == Some("1"))
        .unwrap_or_else(|| panic!("node 1's forwarded pieces in:\n{metrics}"))
        .as_u64();
    assert!(forwarded_1 > 0, "{metrics}");
    let (code, body) = http_get(lab.admin, "/routing/nope");
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("\"error\""), "{body}");

    // Resize: a session from before keeps the old capacity and hears of the change.
    let mut opts = LoginOptions::new(&iqn);
    opts.initiator_name = "iqn.2026-11.io.mosaic.test:resize".into();
    let node2 = lab.portal(2, 1);
    let mut before = Session::login(node2, &opts).expect("login before the resize");
    before.lun = 0;
    before.drain_unit_attentions();
    assert_eq!(
        before.read_capacity().expect("READ CAPACITY").0,
        (64 << 20) / BLOCK
    );
    let out = lab.cli_ok(&["volume", "resize", VOLUME, "--size", "128M"]);
    assert!(out.contains("128 MiB"), "{out}");
    let uas = before.drain_unit_attentions();
    assert!(
        uas.contains(&(0x2a, 0x09)),
        "CAPACITY DATA HAS CHANGED among {uas:x?}"
    );
    let mut after = Session::login(node2, &opts).expect("login after the resize");
    after.lun = 0;
    after.drain_unit_attentions();
    assert_eq!(
        after.read_capacity().expect("READ CAPACITY").0,
        (128 << 20) / BLOCK,
        "a new login sees the new size"
    );
    let _ = before.logout();
    let _ = after.logout();
    let info = tools::run(
        qemu.command()
            .args(["info", &url(format!("127.0.3.2:{port}"))]),
        TOOL_LIMIT,
    )
    .assert_success("qemu-img info after the resize");
    assert!(
        info.stdout.contains("134217728 bytes"),
        "128 MiB:\n{}",
        info.both()
    );
    // The data written before the resize is still there (the rest reads zeros,
    // which qemu-img compare accepts past the shorter image).
    compare(format!("127.0.3.1:{port}"));
    refused(
        lab.cli(&["volume", "resize", "nope", "--size", "1G"]),
        "resizing an unknown volume",
        "no volume named \"nope\"",
    );

    // Delete.
    lab.cli_ok(&["volume", "delete", VOLUME]);
    assert!(!discover().contains(&iqn), "gone from discovery");
    let list = lab.cli_ok(&["volume", "list"]);
    assert!(
        !list.lines().any(|l| l.starts_with(&format!("{VOLUME} "))),
        "{list}"
    );
    refused(
        lab.cli(&["volume", "delete", VOLUME]),
        "deleting it again",
        "no volume named",
    );
    refused(
        lab.cli(&["routing", "show", VOLUME]),
        "routing of a deleted volume",
        "no volume named",
    );
    lab.mosaic.assert_alive("after the volume changes");

    // Nothing listening: the client says where it looked.
    let closed = free_addr();
    refused(
        tools::run(
            Command::new(mosaic_bin()).args(["status", "--admin", &closed.to_string()]),
            mosaic_tests::lab::CLI_LIMIT,
        ),
        "status without a lab",
        "cannot reach the admin endpoint",
    );
}

/// PERSISTENT RESERVE OUT with PREEMPT AND ABORT on a volume created at run time
/// aborts the preempted initiator's tasks (SPC-4 §5.13.11.2.4), as it does on the
/// volumes the lab started with: the device of a runtime volume gets the node's
/// task-aborter hook too. The preempted session's task is a write waiting for its
/// data; QUERY TASK (RFC 7144) tells whether it is still in the task set.
#[test]
fn preempt_and_abort_reaches_the_tasks_on_a_volume_created_at_run_time() {
    if mosaic_tests::skip_against_external_target(
        "preempt_and_abort_reaches_the_tasks_on_a_volume_created_at_run_time",
    ) {
        return;
    }
    const KEY_A: u64 = 0xa;
    const KEY_B: u64 = 0xb;
    const WRITE_EXCLUSIVE: u8 = 0x01;
    let mut lab = start_lab();
    lab.cli_ok(&["volume", "create", "pa", "--size", "16M"]);
    let iqn = "iqn.2026-11.io.mosaic:pa";
    let node1 = lab.portal(1, 1);
    let login = |name: &str| {
        let mut o = LoginOptions::new(iqn);
        o.initiator_name = name.to_string();
        let mut s = Session::login(node1, &o).expect("login at node 1");
        s.lun = 0;
        s.drain_unit_attentions();
        s
    };
    let mut a = login("iqn.2026-11.io.mosaic:tests-a");
    let mut b = login("iqn.2026-11.io.mosaic:tests-b");
    let prout = |s: &mut Session, sa: u8, ty: u8, key: u64, sa_key: u64| {
        let mut p = [0u8; 24];
        p[..8].copy_from_slice(&key.to_be_bytes());
        p[8..16].copy_from_slice(&sa_key.to_be_bytes());
        let r = s
            .command(&[0x5f, sa, ty, 0, 0, 0, 0, 0, 24, 0], &p, 0)
            .expect("PERSISTENT RESERVE OUT");
        assert_eq!(r.status, GOOD, "PROUT {sa:#x}: sense {:x?}", r.sense_key());
    };
    prout(&mut a, 0x00, 0, 0, KEY_A); // REGISTER
    prout(&mut b, 0x00, 0, 0, KEY_B);
    prout(&mut a, 0x01, WRITE_EXCLUSIVE, KEY_A, 0); // RESERVE

    // a's WRITE(10) without its data: the target answers with an R2T and the task
    // waits in the task set.
    let itt = a.next_itt();
    let mut cdb = [0u8; 16];
    cdb[..10].copy_from_slice(&[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
    let cmd = ScsiCommand {
        final_bit: true,
        write: true,
        attr: 1,
        itt,
        expected_data_transfer_length: 512,
        cmd_sn: a.take_cmd_sn(),
        exp_stat_sn: a.exp_stat_sn(),
        cdb,
        ..Default::default()
    };
    a.send(&Pdu::new(Bhs::ScsiCommand(cmd), bytes::Bytes::new()))
        .expect("send WRITE(10)");
    loop {
        match a.recv().expect("R2T").bhs {
            Bhs::R2t(r) if r.itt == itt => break,
            Bhs::NopIn(_) => {}
            other => panic!("expected an R2T, got {other:?}"),
        }
    }
    let r = a
        .task_mgmt(tmf_function::QUERY_TASK, itt)
        .expect("QUERY TASK");
    assert_eq!(
        r.response,
        tmf_response::FUNCTION_SUCCEEDED,
        "the write waits"
    );

    // b: PREEMPT AND ABORT a's key.
    prout(&mut b, 0x05, WRITE_EXCLUSIVE, KEY_B, KEY_A);
    // The abort reaches a's connection as a notification: ask until it has acted.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = a
            .task_mgmt(tmf_function::QUERY_TASK, itt)
            .expect("QUERY TASK");
        if r.response == tmf_response::COMPLETE {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the preempted initiator's write is still in the task set 10 s after \
             PREEMPT AND ABORT on a volume created at run time:\n{}",
            lab.mosaic.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // a is preempted: it hears of it, then its writes conflict.
    let r = a.test_unit_ready().expect("TEST UNIT READY");
    assert_eq!(
        r.sense_key(),
        Some((0x06, 0x2a, 0x05)),
        "REGISTRATIONS PREEMPTED"
    );
    let r = a
        .command(&[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[0u8; 512], 0)
        .expect("write");
    assert_eq!(r.status, 0x18, "RESERVATION CONFLICT");
    lab.mosaic.assert_alive("after PREEMPT AND ABORT");
}
