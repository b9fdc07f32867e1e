//! The lab cluster (`mosaic lab`) against real clients: three nodes in one process,
//! a volume spread over all of them by pages, any node serving any block.
//!
//! - qemu-img writes a 256 MiB random image through node 1; `qemu-img compare`
//!   through nodes 2 and 3 (and through the group portal, which redirects the
//!   login) finds it identical; `mosaic routing show` (the admin endpoint's
//!   routing view) has primary pages on all three nodes, and each node's sparse
//!   file holds the data of every page the view gives it.
//! - Discovery at the group portal lists every portal of every node, each with its
//!   node's portal group tag; a login there ends on a redirected node portal.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use mosaic_tests::lab::{Lab, LabOptions, NodePages, NICS, NODES};
use mosaic_tests::tools;

const TOOL_LIMIT: Duration = Duration::from_secs(300);
const IMAGE_BYTES: usize = 256 << 20;
/// The lab's default page size: the 256 MiB volume has 16 pages.
const PAGE_BYTES: u64 = 16 << 20;

/// A lab with the 256 MiB volume `lv`.
fn start_lab() -> Lab {
    LabOptions::new()
        .volume("name=lv,size=256M,backing=file")
        .start()
}

#[test]
fn lab_cluster_serves_the_same_bytes_through_every_node() {
    let test = "lab_cluster_serves_the_same_bytes_through_every_node";
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
    let url = |addr: String| lab.url(addr, "lv");

    // Discovery at the group portal: every portal of every node, with its group.
    let disc = tools::run(
        Command::new(&ls).arg(format!("iscsi://{group}")),
        TOOL_LIMIT,
    )
    .assert_success("iscsi-ls at the group portal");
    for node in 1..=NODES {
        for nic in 1..=NICS {
            let want = format!("127.0.{node}.{nic}:{port},{node}");
            assert!(
                disc.both().contains(&want),
                "{want} missing from:\n{}",
                disc.both()
            );
        }
    }

    // 256 MiB of random data through node 1.
    let dir = tempfile::tempdir().expect("temp dir");
    let image = dir.path().join("random.img");
    mosaic_tests::pattern::random_file(&image, 1, IMAGE_BYTES);
    let image = image.to_str().expect("utf-8").to_string();
    qemu.convert(
        "qemu-img convert into node 1",
        &["-n", &image, &url(format!("127.0.1.1:{port}"))],
    );
    // The same bytes through the other nodes and through the group portal.
    for addr in [
        format!("127.0.2.1:{port}"),
        format!("127.0.3.2:{port}"),
        group.to_string(),
    ] {
        qemu.assert_identical(&image, &url(addr));
    }

    lab.mosaic.assert_alive("after the cluster I/O");
    let log = lab.mosaic.log();
    assert!(
        log.contains("login redirected"),
        "group portal redirected:\n{log}"
    );
    // The routing view: every page has a primary, and every node is primary of
    // some. Each node's file holds the data of each page the view gives it (the
    // image is random, so every byte written is allocated).
    let (routing, shown) = lab.routing("lv");
    eprintln!("mosaic routing show lv:\n{routing}");
    assert_eq!(
        shown.nodes.iter().map(|r| r.node).collect::<Vec<_>>(),
        (1..=NODES).collect::<Vec<_>>(),
        "a row per node:\n{routing}"
    );
    let pages = IMAGE_BYTES as u64 / PAGE_BYTES;
    assert_eq!(
        shown.nodes.iter().map(|r| r.primary).sum::<u64>(),
        pages,
        "every page has one primary:\n{routing}"
    );
    for &NodePages {
        node,
        primary,
        replica,
    } in &shown.nodes
    {
        assert!(primary > 0, "node {node} is primary of no page:\n{routing}");
        let img = lab.mosaic.scratch().join(format!("data/node{node}/lv.img"));
        let allocated = std::fs::metadata(&img)
            .map(|m| {
                use std::os::unix::fs::MetadataExt;
                m.blocks() * 512
            })
            .unwrap_or_else(|e| panic!("{}: {e}", img.display()));
        assert!(
            allocated >= (primary + replica) * PAGE_BYTES,
            "node {node} holds {primary} primary and {replica} replica pages, but its file \
             has only {allocated} bytes allocated"
        );
    }
}

/// Logs in `n` connections of MPIO group `group` at the group portal, each kept
/// open, and returns the node portal each ended on.
fn mpio_group(
    group: SocketAddr,
    name: &str,
    n: usize,
) -> (Vec<mosaic_tests::initiator::Session>, Vec<SocketAddr>) {
    use mosaic_tests::initiator::{LoginOptions, Session};
    let mut sessions = Vec::new();
    let mut portals = Vec::new();
    for _ in 0..n {
        let mut opts = LoginOptions::new("iqn.2026-11.io.mosaic:lv");
        opts.extra_keys = vec![("X-io.mosaic.MpioGroup".to_string(), name.to_string())];
        let (mut s, at) = Session::login_following_redirect(group, &opts)
            .unwrap_or_else(|e| panic!("group {name}: login at the group portal: {e}"));
        s.test_unit_ready()
            .expect("a command on the redirected session");
        sessions.push(s);
        portals.push(at);
    }
    (sessions, portals)
}

#[test]
fn mpio_groups_land_on_distinct_nics_spread_over_nodes() {
    if mosaic_tests::skip_against_external_target(
        "mpio_groups_land_on_distinct_nics_spread_over_nodes",
    ) {
        return;
    }
    let mut lab = start_lab();
    let group = lab.group;
    let (_a_sessions, a) = mpio_group(group, "disk-a", 4);
    let mut distinct = a.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 4, "group a on four distinct NICs: {a:?}");
    let node = |s: &SocketAddr| match s.ip() {
        std::net::IpAddr::V4(v4) => v4.octets()[2],
        _ => 0,
    };
    let mut nodes: Vec<u8> = a.iter().map(node).collect();
    nodes.sort();
    nodes.dedup();
    assert_eq!(
        nodes.len(),
        NODES as usize,
        "group a spread over every node: {a:?}"
    );
    let (_b_sessions, b) = mpio_group(group, "disk-b", 4);
    let mut distinct = b.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 4, "group b on four distinct NICs: {b:?}");
    // Six NICs for eight connections: group b first takes the two NICs group a
    // left free, and never more than one connection per NIC for either group.
    let free: Vec<&SocketAddr> = b.iter().filter(|p| !a.contains(p)).collect();
    assert_eq!(
        free.len(),
        2,
        "group b used the two NICs a left free: a={a:?} b={b:?}"
    );
    assert!(
        !a.contains(&b[0]) && !a.contains(&b[1]),
        "b's first picks avoid a's NICs: a={a:?} b={b:?}"
    );
    lab.mosaic.assert_alive("after the MPIO logins");
}
