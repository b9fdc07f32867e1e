//! libiscsi's conformance suite through each node of a lab cluster in turn:
//! `iscsi-test-cu --dataloss` over the SCSI and iSCSI families (both initiator
//! names, as conformance_full.rs runs it on one node), with the first URL on one
//! node and the second URL on the next, so SCSI.MultipathIO and every
//! two-initiator test run across nodes. Each run has a volume of its own (64 MiB
//! in 1 MiB pages, spread over all three nodes, so nearly every command touches
//! pages of several nodes): libiscsi's SCSI.MultipathIO.CompareAndWrite zeroes
//! blocks 0-255 and then compares blocks 0-256, so it fails on any target, one
//! node too, when an earlier run left data in block 256.
//!
//! No test may fail, and the only skips are those the single-node run has
//! (features that are not ours to have: removable media, SANITIZE without
//! --allow-sanitize, the read-only test on a writable unit).
//!
//! Nothing is left out: persistent and SPC-2 reservations are shared through the
//! coordinator (`cluster::pr`), so the tests where one initiator's RESERVE(6) must
//! stop the other initiator on another node (SCSI.Reserve6.2Initiators, Logout,
//! ITNexusLoss) run across nodes too.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use mosaic_tests::cunit::{self, Verdict};
use mosaic_tests::lab::{Lab, LabOptions, NODES};
use mosaic_tests::tools;

/// One node's run takes about half a minute; this leaves room for a loaded box.
const RUN_LIMIT: Duration = Duration::from_secs(600);
const LIST_LIMIT: Duration = Duration::from_secs(30);
/// The volume of the run through node `i` is `full<i>`.
const VOLUME_PREFIX: &str = "full";

/// Suites whose tests the single-node run of the whole suite skips on a thin,
/// writable, non-removable unit without --allow-sanitize (conformance_full.rs):
/// PreventAllow and StartStopUnit (not removable), Sanitize (not allowed),
/// ReadOnly (not write-protected).
const SINGLE_NODE_SKIP_SUITES: [&str; 4] =
    ["PreventAllow", "StartStopUnit", "Sanitize", "ReadOnly"];

/// The `-t` argument: every test of the SCSI and iSCSI families but `excluded`,
/// whole suites where nothing is excluded, from `iscsi-test-cu -l`.
fn test_selection(cu: &std::path::Path, excluded: &[&str]) -> String {
    let out = tools::run(Command::new(cu).arg("-l"), LIST_LIMIT);
    assert!(out.success(), "iscsi-test-cu -l failed:\n{}", out.both());
    let tests: Vec<&str> = out
        .stdout
        .lines()
        .map(str::trim)
        .filter(|l| {
            (l.starts_with("SCSI.") || l.starts_with("iSCSI.")) && l.split('.').count() == 3
        })
        .collect();
    for x in excluded {
        assert!(
            tests.contains(x),
            "{x} is not a test of this libiscsi (iscsi-test-cu -l): update the exclusions"
        );
    }
    let suite = |t: &str| {
        t.rsplit_once('.')
            .map(|(s, _)| s.to_string())
            .unwrap_or_default()
    };
    let touched: BTreeSet<String> = excluded.iter().map(|t| suite(t)).collect();
    let mut selection: Vec<String> = Vec::new();
    for t in &tests {
        let s = suite(t);
        if touched.contains(&s) {
            if !excluded.contains(t) {
                selection.push(t.to_string());
            }
        } else if !selection.contains(&s) {
            selection.push(s);
        }
    }
    selection.join(",")
}

/// A lab with one thin 64 MiB volume per node's run, in 1 MiB pages.
fn start_lab() -> Lab {
    (1..=NODES)
        .fold(LabOptions::new().page_size("1M"), |o, i| {
            o.volume(format!(
                "name={VOLUME_PREFIX}{i},size=64M,backing=file,provisioning=thin"
            ))
        })
        .start()
}

#[test]
fn the_whole_suite_passes_through_each_node_with_multipath_across_nodes() {
    let test = "the_whole_suite_passes_through_each_node_with_multipath_across_nodes";
    if mosaic_tests::skip_against_external_target(test) {
        return;
    }
    let Some(cu) = tools::require(test, "iscsi-test-cu", "libiscsi-bin") else {
        return;
    };
    let selection = test_selection(&cu, &[]);
    let mut lab = start_lab();
    let iqn = |i: u32| mosaic_tests::target_iqn(&format!("{VOLUME_PREFIX}{i}"));
    // Each volume's pages are on every node.
    let log = lab.mosaic.log();
    for i in 1..=NODES {
        let line = log
            .lines()
            .find(|l| l.contains(&format!("{} ", iqn(i))) && l.contains("primaries per node"))
            .unwrap_or_else(|| panic!("no line for volume {i} in the banner:\n{log}"));
        for node in 1..=NODES {
            assert!(
                line.contains(&format!("{node}: ")),
                "node {node} owns pages: {line}"
            );
        }
    }
    let mut failures = Vec::new();
    for node in 1..=NODES {
        let other = node % NODES + 1;
        let volume = format!("{VOLUME_PREFIX}{node}");
        let url = lab.url(lab.portal(node, 1), &volume);
        let mpurl = lab.url(lab.portal(other, 2), &volume);
        let out = tools::run(
            &mut cunit::test_cu(&cu, &selection, &[&url, &mpurl]),
            RUN_LIMIT,
        );
        assert!(
            !out.timed_out,
            "node {node}: iscsi-test-cu timed out\n{}",
            out.tail(40)
        );
        let report = cunit::parse(&out.stdout);
        eprintln!(
            "{test}: node {node} (second URL on node {other}): {}",
            report.counts()
        );
        assert!(
            report.summary.is_some(),
            "node {node}: iscsi-test-cu printed no summary (crashed?)\n{}",
            out.tail(40)
        );
        assert!(
            report.with(Verdict::Passed).len() > 150,
            "node {node}: too few tests passed: {}",
            report.counts()
        );
        // The two-initiator RESERVE(6) tests ran, across nodes.
        for x in ["2Initiators", "Logout", "ITNexusLoss"] {
            assert!(
                report
                    .tests
                    .iter()
                    .any(|t| t.suite == "Reserve6" && t.test == x),
                "node {node}: SCSI.Reserve6.{x} did not run"
            );
        }
        let skips: Vec<String> = report
            .with(Verdict::Skipped)
            .iter()
            .filter(|t| !SINGLE_NODE_SKIP_SUITES.contains(&t.suite.as_str()))
            .map(|t| t.name())
            .collect();
        assert!(
            skips.is_empty(),
            "node {node}: skipped beyond what one node skips: {skips:?}"
        );
        // SCSI.MultipathIO ran, across nodes.
        let mpio: Vec<_> = report
            .tests
            .iter()
            .filter(|t| t.suite == "MultipathIO")
            .collect();
        assert!(
            mpio.len() >= 2 && mpio.iter().all(|t| t.verdict == Verdict::Passed),
            "node {node}: SCSI.MultipathIO across nodes {node} and {other}:\n{}",
            report.describe_failures()
        );
        if !report.with(Verdict::Failed).is_empty() || !report.with(Verdict::NoVerdict).is_empty() {
            failures.push(format!("node {node}:\n{}", report.describe_failures()));
        }
        lab.mosaic
            .assert_alive(&format!("after the suite through node {node}"));
    }
    assert!(failures.is_empty(), "{test}:\n{}", failures.join("\n"));
}
