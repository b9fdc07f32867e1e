//! libiscsi's command-line tools and the binary's own command line, against the real
//! `mosaic` binary: discovery with `iscsi-ls`, INQUIRY pages with `iscsi-inq`,
//! capacity with `iscsi-readcapacity16`, the no-argument lab cluster of the README's
//! first command, bad flags, and SIGTERM.

use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::time::Duration;

use mosaic_tests::server::{Mosaic, Volume};
use mosaic_tests::tools::{self, RunOutput};

const TOOL_LIMIT: Duration = Duration::from_secs(60);
/// What a bare `mosaic` starts: 3 nodes of 2 NICs, every portal on port 3260.
const LAB_NODES: u8 = 3;
const LAB_NICS: u8 = 2;
const LAB_PORT: u16 = 3260;

fn external() -> bool {
    std::env::var_os("MOSAIC_TEST_TARGET").is_some()
}

fn run_ok(tool: &std::path::Path, args: &[&str]) -> RunOutput {
    let out = tools::run(Command::new(tool).args(args), TOOL_LIMIT);
    assert!(
        out.success(),
        "{} {} failed (exit {:?}, timed out: {})\n{}",
        tool.display(),
        args.join(" "),
        out.status,
        out.timed_out,
        out.both()
    );
    out
}

#[test]
fn iscsi_ls_discovers_every_volume_with_its_lun() {
    let test = "iscsi_ls_discovers_every_volume_with_its_lun";
    let Some(ls) = tools::require(test, "iscsi-ls", "libiscsi-bin") else {
        return;
    };
    let mut server = Mosaic::start(&[
        Volume::memory("alpha", "16M"),
        Volume::file("beta", "32M").block(4096),
    ]);
    let portal = format!("iscsi://{}", server.portal());
    let out = run_ok(&ls, &["-s", &portal]);
    eprintln!("iscsi-ls -s {portal}:\n{}", out.stdout);
    let names: Vec<String> = if external() {
        vec![server.iqn("alpha")]
    } else {
        vec![server.iqn("alpha"), server.iqn("beta")]
    };
    for iqn in &names {
        let line = format!("Target:{iqn} Portal:{}", server.portal());
        assert!(
            out.stdout.contains(&line),
            "iscsi-ls does not list `{line}`:\n{}",
            out.stdout
        );
    }
    let disks = out
        .stdout
        .lines()
        .filter(|l| l.contains("Type:DIRECT_ACCESS"))
        .count();
    assert!(
        disks >= names.len(),
        "expected a DIRECT_ACCESS LUN per target:\n{}",
        out.stdout
    );
    if !external() {
        assert!(
            out.stdout.lines().any(|l| l.starts_with("Lun:0")),
            "every volume is LUN 0:\n{}",
            out.stdout
        );
    }
    server.assert_alive("after iscsi-ls");
}

#[test]
fn iscsi_inq_standard_and_vpd_pages() {
    let test = "iscsi_inq_standard_and_vpd_pages";
    let Some(inq) = tools::require(test, "iscsi-inq", "libiscsi-bin") else {
        return;
    };
    let mut server = Mosaic::start(&[Volume::memory("vol", "16M")]);
    let url = server.url("vol");

    let std_inq = run_ok(&inq, &[&url]);
    for want in [
        "Peripheral Device Type:DIRECT_ACCESS",
        "Vendor:",
        "Product:",
    ] {
        assert!(
            std_inq.stdout.contains(want),
            "standard INQUIRY lacks `{want}`:\n{}",
            std_inq.stdout
        );
    }
    // iscsi-inq takes page codes in decimal: 0x00, 0x80, 0x83. (It lists 0x8F but
    // cannot decode it: see sg_vpd_decodes_the_third_party_copy_page.)
    let pages = run_ok(&inq, &["-e", "1", "-c", "0", &url]);
    for want in ["Page:0x00", "Page:0x80", "Page:0x83", "Page:0x8f"] {
        assert!(
            pages.stdout.contains(want),
            "VPD 0x00 does not list `{want}`:\n{}",
            pages.stdout
        );
    }
    let serial = run_ok(&inq, &["-e", "1", "-c", "128", &url]);
    assert!(
        serial.stdout.contains("Unit Serial Number:"),
        "VPD 0x80:\n{}",
        serial.stdout
    );
    let ids = run_ok(&inq, &["-e", "1", "-c", "131", &url]);
    assert!(
        ids.stdout.contains("DEVICE DESIGNATOR"),
        "VPD 0x83 has no designator:\n{}",
        ids.stdout
    );
    // A page nobody implements: CHECK CONDITION, ILLEGAL REQUEST.
    let bad = tools::run(
        Command::new(&inq).args(["-e", "1", "-c", "222", &url]),
        TOOL_LIMIT,
    );
    assert!(
        !bad.success() && bad.both().contains("ILLEGAL_REQUEST"),
        "VPD page 0xde should fail with ILLEGAL REQUEST\n{}",
        bad.both()
    );
    server.assert_alive("after iscsi-inq");
}

/// The Third-party Copy VPD page (0x8F) as sg3_utils' `sg_vpd` decodes it. libiscsi's
/// `iscsi-inq` lists the page in VPD 0x00 but cannot decode it ("failed to
/// unmarshall inquiry datain blob", as for 0x86), so our initiator fetches the page
/// and `sg_vpd --inhex --raw` reads the bytes.
#[test]
fn sg_vpd_decodes_the_third_party_copy_page() {
    let test = "sg_vpd_decodes_the_third_party_copy_page";
    let Some(sg_vpd) = tools::require(test, "sg_vpd", "sg3-utils") else {
        return;
    };
    let mut server = Mosaic::start(&[Volume::memory("vol", "16M")]);
    let mut s = mosaic_tests::login(&server, "vol", |o| o).expect("login");
    let page = s
        .command_good(
            "INQUIRY VPD 0x8F",
            &[0x12, 0x01, 0x8f, 0x04, 0x00, 0],
            &[],
            1024,
        )
        .expect("INQUIRY VPD 0x8F")
        .data;
    s.logout().expect("logout");
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("vpd8f.bin");
    std::fs::write(&file, &page).expect("write the page");
    let inhex = format!("--inhex={}", file.display());
    let out = run_ok(&sg_vpd, &[&inhex, "--raw", "--page=0x8f"]);
    eprintln!("sg_vpd --page=0x8f:\n{}", out.stdout);
    let text = out.stdout.to_ascii_lowercase();
    for want in [
        "third party copy",
        "supported commands",
        "extended copy(lid1)",
        "receive copy operating parameters",
        "parameter data",
        "maximum cscd descriptor count: 8",
        "maximum segment descriptor count: 64",
        "maximum descriptor list length: 2048",
        "supported descriptors",
        "general copy operations",
        "total concurrent copies: 4",
        "maximum segment length: 33554432",
    ] {
        assert!(
            text.contains(want),
            "sg_vpd output lacks `{want}`:\n{}",
            out.both()
        );
    }
    server.assert_alive("after INQUIRY VPD 0x8F");
}

#[test]
fn iscsi_readcapacity16_reports_size_and_block_length() {
    let test = "iscsi_readcapacity16_reports_size_and_block_length";
    let Some(rc16) = tools::require(test, "iscsi-readcapacity16", "libiscsi-bin") else {
        return;
    };
    let server = Mosaic::start(&[Volume::file("big", "32M").block(4096)]);
    let out = run_ok(&rc16, &[&server.url("big")]);
    if !external() {
        for want in [
            "LOGICAL BLOCK LENGTH IN BYTES:4096",
            "RETURNED LOGICAL BLOCK ADDRESS:8191",
            "Total size:33554432",
        ] {
            assert!(
                out.stdout.contains(want),
                "READ CAPACITY(16) lacks `{want}`:\n{}",
                out.stdout
            );
        }
    }
}

/// The README's first command: a bare `mosaic` starts the lab cluster (three nodes
/// with two NIC portals each, the group portal on 127.0.0.1:3260, the 1 GiB demo
/// volume spread over every node in sparse files under ./data/node<i>), says how to
/// connect, redirects a login at the group portal to a node portal, serves the same
/// bytes through every node, and stops on SIGTERM.
#[test]
fn no_arguments_serves_the_demo_volume_on_3260() {
    use mosaic_tests::initiator::{LoginOptions, Session};
    let test = "no_arguments_serves_the_demo_volume_on_3260";
    if external() {
        return;
    }
    let group: SocketAddr = ([127, 0, 0, 1], LAB_PORT).into();
    // The lab's fixed addresses: the group portal, every NIC portal and, one port
    // higher, each node's link (127.0.i.1:3261).
    let mut addrs = vec![group];
    for node in 1..=LAB_NODES {
        for nic in 1..=LAB_NICS {
            addrs.push(([127, 0, node, nic], LAB_PORT).into());
        }
        addrs.push(([127, 0, node, 1], LAB_PORT + 1).into());
    }
    if let Some(busy) = addrs.iter().find(|a| TcpListener::bind(a).is_err()) {
        eprintln!("SKIP {test}: {busy} is in use by something else");
        return;
    }
    let mut server = Mosaic::launch(&[], group)
        .unwrap_or_else(|log| panic!("`mosaic` with no arguments did not listen:\n{log}"));
    let printed = server.log();
    assert!(
        printed.contains("Mosaic lab cluster is running: 3 nodes, 2 NICs each"),
        "a bare mosaic should start the lab:\n{printed}"
    );
    assert!(
        printed.contains("iqn.2026-11.io.mosaic:demo"),
        "the startup message should name the demo target:\n{printed}"
    );
    assert!(
        printed.contains("iscsi-ls -s iscsi://127.0.0.1:3260")
            && printed.contains("iscsiadm -m discovery -t sendtargets -p 127.0.0.1:3260"),
        "the startup message should say how to connect:\n{printed}"
    );
    // Each node keeps its pages of the demo volume in its own sparse file.
    for node in 1..=LAB_NODES {
        let img = server.scratch().join(format!("data/node{node}/demo.img"));
        let meta = std::fs::metadata(&img)
            .unwrap_or_else(|e| panic!("{} should exist: {e}", img.display()));
        assert_eq!(meta.len(), 1 << 30, "{} should be 1 GiB", img.display());
        use std::os::unix::fs::MetadataExt;
        assert!(
            meta.blocks() * 512 < 64 << 20,
            "{} should be sparse, has {} bytes allocated",
            img.display(),
            meta.blocks() * 512
        );
    }

    // Discovery at the group portal lists every NIC portal of every node, each
    // with its node's portal group tag.
    let iqn = "iqn.2026-11.io.mosaic:demo";
    let mut disc = Session::login(group, &LoginOptions::discovery()).expect("discovery login");
    let keys = disc
        .text(&[("SendTargets", "All")])
        .expect("SendTargets at the group portal");
    assert!(
        keys.iter().any(|(k, v)| k == "TargetName" && v == iqn),
        "SendTargets lacks {iqn}: {keys:?}"
    );
    for node in 1..=LAB_NODES {
        for nic in 1..=LAB_NICS {
            let want = format!("127.0.{node}.{nic}:{LAB_PORT},{node}");
            assert!(
                keys.iter().any(|(k, v)| k == "TargetAddress" && *v == want),
                "SendTargets lacks {want}: {keys:?}"
            );
        }
    }
    let _ = disc.logout();
    if let Some(ls) = tools::which("iscsi-ls") {
        let out = run_ok(&ls, &["-s", "iscsi://127.0.0.1:3260"]);
        assert!(
            out.stdout.contains("Target:iqn.2026-11.io.mosaic:demo"),
            "iscsi-ls does not list the demo target:\n{}",
            out.stdout
        );
    }

    // A Normal login at the group portal ends on a node portal.
    let (mut session, at) =
        Session::login_following_redirect(group, &LoginOptions::new(iqn)).expect("login");
    assert_ne!(at, group, "the group portal should redirect the login");
    let node = match at.ip() {
        std::net::IpAddr::V4(ip) => ip.octets()[2],
        other => panic!("redirected to {other}"),
    };
    assert!(
        (1..=LAB_NODES).contains(&node) && at.port() == LAB_PORT,
        "redirected to {at}, not a node portal"
    );
    // Data moves: a write across the first page boundary (pages are 16 MiB, the
    // lab's default, so its two halves have different primaries) through the
    // redirected portal, read back through another node.
    let (blocks, block) = session.read_capacity().expect("READ CAPACITY");
    assert_eq!(blocks * u64::from(block), 1 << 30);
    let page_blocks = (16u64 << 20) / u64::from(block);
    let data = mosaic_tests::pattern::bytes(0x5eed, 256 << 10);
    let lba = page_blocks - (data.len() as u64 / u64::from(block)) / 2;
    session.write(lba, &data, block).expect("write");
    let other = node % LAB_NODES + 1;
    let mut reader = Session::login(
        ([127, 0, other, 2], LAB_PORT).into(),
        &LoginOptions::new(iqn),
    )
    .unwrap_or_else(|e| panic!("login at node {other}: {e}"));
    let back = reader
        .read(lba, (data.len() / block as usize) as u32, block)
        .expect("read");
    assert!(
        back == data,
        "node {other} reads other bytes than node {node} wrote: {}",
        mosaic_tests::pattern::first_difference(&data, &back).unwrap_or_default()
    );
    let _ = reader.logout();
    let _ = session.logout();
    server.assert_alive("after I/O through the lab");
    assert!(server.stop(), "mosaic did not stop on SIGTERM");
}

#[test]
fn sigterm_stops_the_server() {
    if external() {
        return;
    }
    let mut server = Mosaic::start(&[Volume::memory("vol", "8M")]);
    assert!(server.stop(), "mosaic did not stop within 10 s of SIGTERM");
}

/// Bad flags end the process with an error that names the field.
#[test]
fn bad_volume_flags_are_refused_naming_the_field() {
    if external() {
        return;
    }
    for (arg, field) in [
        ("name=bad,size=lots,block=512,backing=memory", "size"),
        ("name=bad,size=8M,block=1000,backing=memory", "block"),
        ("name=bad,size=8M,block=512,backing=tape", "backing"),
    ] {
        let out = Mosaic::run_to_exit(
            &["serve", "--portal", "127.0.0.1:1", "--volume", arg],
            Duration::from_secs(30),
        );
        assert!(
            !out.timed_out && !out.success(),
            "`mosaic serve --volume {arg}` should exit with an error\n{}",
            out.both()
        );
        assert!(
            out.both().to_ascii_lowercase().contains(field),
            "the error for `--volume {arg}` should name `{field}`:\n{}",
            out.both()
        );
    }
}
