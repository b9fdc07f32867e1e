//! The `mosaic-dsm` binary end to end: `bench --compare --verify --churn` against the
//! lab cluster (every policy runs, every read written in the run checks out while
//! pages move, routing-aware sends every byte to its owner) and `simulate`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use mosaic_tests::lab::LabOptions;
use mosaic_tests::server::workspace_root;
use mosaic_tests::tools;

const LIMIT: Duration = Duration::from_secs(600);

/// Builds `mosaic-dsm` in this test's profile and returns its path.
fn dsm_bin() -> PathBuf {
    let profile_dir = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.to_path_buf()))
        .expect("test executable path");
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-p", "mosaic-dsm", "--bin", "mosaic-dsm"])
        .current_dir(workspace_root());
    if release {
        cmd.arg("--release");
    }
    let out = tools::run(&mut cmd, Duration::from_secs(1200));
    assert!(
        out.success(),
        "building mosaic-dsm failed:\n{}",
        out.tail(40)
    );
    let bin = profile_dir.join("mosaic-dsm");
    assert!(bin.is_file(), "{} missing", bin.display());
    bin
}

/// The markdown row of `policy`.
fn row<'a>(md: &'a str, policy: &str) -> Vec<&'a str> {
    let line = md
        .lines()
        .find(|l| l.starts_with(&format!("| {policy} |")))
        .unwrap_or_else(|| panic!("no row for {policy} in:\n{md}"));
    line.trim_matches('|').split('|').map(str::trim).collect()
}

#[test]
fn bench_compare_verify_with_page_moves_and_simulate() {
    if mosaic_tests::skip_against_external_target(
        "bench_compare_verify_with_page_moves_and_simulate",
    ) {
        return;
    }
    let dsm = dsm_bin();
    let lab = LabOptions::new()
        .page_size("1M")
        .volume("name=bv,size=64M,backing=memory")
        .log("warn")
        .start();
    let (group, admin) = (lab.group, lab.admin);
    let out = tools::run(
        Command::new(&dsm).args([
            "bench",
            "--portal",
            &group.to_string(),
            "--target",
            "bv",
            "--admin",
            &admin.to_string(),
            "--compare",
            "--bs",
            "16K",
            "--read-pct",
            "50",
            "--qd",
            "4",
            "--count",
            "600",
            "--region",
            "8M",
            "--verify",
            "--churn",
            "50ms",
            "--quiet",
        ]),
        LIMIT,
    );
    assert!(out.success(), "bench failed:\n{}", out.both());
    let md = out.stdout.clone();
    for policy in [
        "round-robin",
        "queue-length",
        "service-time",
        "historical-service-time",
        "routing-aware (queue-length)",
    ] {
        let r = row(&md, policy);
        // errors, then "verified / mismatches".
        assert_eq!(r[9], "0", "{policy}: errors in\n{md}\n{}", out.stderr);
        let (verified, mismatches) = r[10].split_once(" / ").expect("verify column");
        assert_eq!(
            mismatches, "0",
            "{policy}: mismatches\n{md}\n{}",
            out.stderr
        );
        assert!(
            verified.parse::<u64>().expect("number") > 0,
            "{policy}: nothing verified"
        );
    }
    assert_eq!(
        row(&md, "routing-aware (queue-length)")[6],
        "100.0%",
        "{md}"
    );
    drop(lab);

    let sim = tools::run(
        Command::new(&dsm).args(["simulate", "--nodes", "4,16", "--ios", "20000"]),
        LIMIT,
    );
    assert!(sim.success(), "simulate failed:\n{}", sim.both());
    assert!(sim.stdout.contains("Calibration"), "{}", sim.stdout);
    for n in ["4", "16"] {
        let line = sim
            .stdout
            .lines()
            .find(|l| l.starts_with(&format!("| {n} | routing-aware")))
            .unwrap_or_else(|| panic!("no routing-aware row at {n} nodes:\n{}", sim.stdout));
        assert!(line.contains("| 100.0% |"), "{line}");
    }
    // Bad arguments are refused with a message, not a panic.
    let bad = tools::run(Command::new(&dsm).args(["simulate", "--nodes", "0"]), LIMIT);
    assert!(!bad.success());
    assert!(bad.stderr.contains("--nodes"), "{}", bad.stderr);
}
