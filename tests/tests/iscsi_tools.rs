//! libiscsi's command-line tools and the binary's own command line, against the real
//! `mosaic` binary: discovery with `iscsi-ls`, INQUIRY pages with `iscsi-inq`,
//! capacity with `iscsi-readcapacity16`, the no-argument demo target of the README's
//! first command, bad flags, and SIGTERM.

use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::time::Duration;

use mosaic_tests::server::{Mosaic, Volume};
use mosaic_tests::tools::{self, RunOutput};

const TOOL_LIMIT: Duration = Duration::from_secs(60);

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
    // iscsi-inq takes page codes in decimal: 0x00, 0x80, 0x83.
    let pages = run_ok(&inq, &["-e", "1", "-c", "0", &url]);
    for want in ["Page:0x00", "Page:0x80", "Page:0x83"] {
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

/// The README's first command: `mosaic` with no arguments serves a 1 GiB demo volume
/// on 127.0.0.1:3260 from a sparse file under ./data, says how to connect, and stops
/// on SIGTERM.
#[test]
fn no_arguments_serves_the_demo_volume_on_3260() {
    let test = "no_arguments_serves_the_demo_volume_on_3260";
    if external() {
        return;
    }
    let addr: SocketAddr = ([127, 0, 0, 1], 3260).into();
    if TcpListener::bind(addr).is_err() {
        eprintln!("SKIP {test}: 127.0.0.1:3260 is in use by something else");
        return;
    }
    let mut server = Mosaic::launch(&[], addr)
        .unwrap_or_else(|log| panic!("`mosaic` with no arguments did not listen:\n{log}"));
    // The connect instructions may be printed just after the port opens.
    let waited = std::time::Instant::now();
    let mut printed = server.log();
    while !printed.contains("iqn.2026-11.io.mosaic:demo")
        && waited.elapsed() < Duration::from_secs(5)
    {
        std::thread::sleep(Duration::from_millis(100));
        printed = server.log();
    }
    assert!(
        printed.contains("iqn.2026-11.io.mosaic:demo"),
        "the startup message should name the demo target:\n{printed}"
    );
    assert!(
        printed.contains("iscsi-ls")
            || printed.contains("iscsiadm")
            || printed.contains("qemu-img"),
        "the startup message should say how to connect:\n{printed}"
    );
    let img = server.scratch().join("data/demo.img");
    let meta =
        std::fs::metadata(&img).unwrap_or_else(|e| panic!("{} should exist: {e}", img.display()));
    assert_eq!(meta.len(), 1 << 30, "demo.img should be 1 GiB");
    {
        use std::os::unix::fs::MetadataExt;
        assert!(
            meta.blocks() * 512 < 64 << 20,
            "demo.img should be sparse, has {} bytes allocated",
            meta.blocks() * 512
        );
    }
    if let Some(ls) = tools::which("iscsi-ls") {
        let out = run_ok(&ls, &["-s", "iscsi://127.0.0.1:3260"]);
        assert!(
            out.stdout.contains("Target:iqn.2026-11.io.mosaic:demo"),
            "iscsi-ls does not list the demo target:\n{}",
            out.stdout
        );
    }
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
