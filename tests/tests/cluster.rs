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

use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::time::Duration;

use mosaic_tests::server::{mosaic_bin, Mosaic};
use mosaic_tests::tools::{self, RunOutput};

const TOOL_LIMIT: Duration = Duration::from_secs(300);
const NODES: u32 = 3;
const NICS: u8 = 2;
const IMAGE_BYTES: usize = 256 << 20;
/// The lab's default page size: the 256 MiB volume has 16 pages.
const PAGE_BYTES: u64 = 16 << 20;

/// A port free on every lab address (node portals and, one higher, links).
fn lab_port() -> u16 {
    mosaic_tests::server::lab_port(NODES, NICS)
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// A lab with the 256 MiB volume `lv`: (lab, node port, group portal, admin endpoint).
fn start_lab() -> (Mosaic, u16, SocketAddr, SocketAddr) {
    let port = lab_port();
    let group = free_addr();
    let admin = free_addr();
    let args: Vec<String> = [
        "lab",
        "--port",
        &port.to_string(),
        "--group-portal",
        &group.to_string(),
        // Bound before the banner is printed, so it answers once the lab has started.
        "--admin",
        &admin.to_string(),
        "--data-dir",
        "data",
        "--volume",
        "name=lv,size=256M,backing=file",
        "--log",
        "info",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let lab =
        Mosaic::launch(&args, group).unwrap_or_else(|log| panic!("lab did not start:\n{log}"));
    (lab, port, group, admin)
}

fn ok(out: RunOutput, what: &str) -> RunOutput {
    assert!(out.success(), "{what} failed:\n{}", out.both());
    out
}

#[test]
fn lab_cluster_serves_the_same_bytes_through_every_node() {
    let test = "lab_cluster_serves_the_same_bytes_through_every_node";
    if std::env::var_os("MOSAIC_TEST_TARGET").is_some() {
        eprintln!("{test}: skipped against an external target");
        return;
    }
    let Some(qemu) = tools::qemu_img_with_iscsi() else {
        tools::skip_or_fail(test, "no qemu-img with the iSCSI driver");
        return;
    };
    let Some(ls) = tools::require(test, "iscsi-ls", "libiscsi-bin") else {
        return;
    };
    let (mut lab, port, group, admin) = start_lab();
    let iqn = "iqn.2026-11.io.mosaic:lv";
    let url = |addr: String| format!("iscsi://{addr}/{iqn}/0");

    // Discovery at the group portal: every portal of every node, with its group.
    let disc = ok(
        tools::run(
            Command::new(&ls).arg(format!("iscsi://{group}")),
            TOOL_LIMIT,
        ),
        "iscsi-ls at the group portal",
    );
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
    let mut data = vec![0u8; IMAGE_BYTES];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    std::fs::write(&image, &data).expect("write image");
    let image = image.to_str().expect("utf-8").to_string();
    ok(
        tools::run(
            qemu.command().args([
                "convert",
                "-n",
                "-f",
                "raw",
                "-O",
                "raw",
                &image,
                &url(format!("127.0.1.1:{port}")),
            ]),
            TOOL_LIMIT,
        ),
        "qemu-img convert into node 1",
    );
    // The same bytes through the other nodes and through the group portal.
    for addr in [
        format!("127.0.2.1:{port}"),
        format!("127.0.3.2:{port}"),
        group.to_string(),
    ] {
        let out = ok(
            tools::run(
                qemu.command().args([
                    "compare",
                    "-f",
                    "raw",
                    "-F",
                    "raw",
                    &image,
                    &url(addr.clone()),
                ]),
                TOOL_LIMIT,
            ),
            &format!("qemu-img compare through {addr}"),
        );
        assert!(out.both().contains("identical"), "{addr}: {}", out.both());
    }

    lab.assert_alive("after the cluster I/O");
    let log = lab.log();
    assert!(
        log.contains("login redirected"),
        "group portal redirected:\n{log}"
    );
    // The routing view: every page has a primary, and every node is primary of
    // some. Each node's file holds the data of each page the view gives it (the
    // image is random, so every byte written is allocated).
    let routing = ok(
        tools::run(
            Command::new(mosaic_bin())
                .args(["routing", "show", "lv", "--admin"])
                .arg(admin.to_string()),
            TOOL_LIMIT,
        ),
        "mosaic routing show lv",
    )
    .stdout;
    eprintln!("mosaic routing show lv:\n{routing}");
    let per_node = pages_per_node(&routing);
    assert_eq!(
        per_node.iter().map(|r| r.0).collect::<Vec<_>>(),
        (1..=NODES).collect::<Vec<_>>(),
        "a row per node:\n{routing}"
    );
    let pages = IMAGE_BYTES as u64 / PAGE_BYTES;
    assert_eq!(
        per_node.iter().map(|r| r.1).sum::<u64>(),
        pages,
        "every page has one primary:\n{routing}"
    );
    for &(node, primary, replica) in &per_node {
        assert!(primary > 0, "node {node} is primary of no page:\n{routing}");
        let img = lab.scratch().join(format!("data/node{node}/lv.img"));
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

/// Pages per node from `mosaic routing show`: (node, primary pages, replica pages).
fn pages_per_node(out: &str) -> Vec<(u32, u64, u64)> {
    out.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.as_slice() {
                [n, p, r] => Some((n.parse().ok()?, p.parse().ok()?, r.parse().ok()?)),
                _ => None,
            }
        })
        .collect()
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
    if std::env::var_os("MOSAIC_TEST_TARGET").is_some() {
        return;
    }
    let (mut lab, _port, group, _admin) = start_lab();
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
    lab.assert_alive("after the MPIO logins");
}
