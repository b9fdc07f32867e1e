//! libiscsi's whole conformance suite (`iscsi-test-cu -t SCSI,iSCSI --dataloss`, both
//! initiator names, a second portal of the same target so SCSI.MultipathIO runs)
//! against the real binary, on a thin volume, a thick (fully provisioned) volume and
//! a read-only volume.
//!
//! - Thin and thick: no test may fail. libiscsi skips tests for features that are
//!   not ours to have (removable media, SANITIZE without --allow-sanitize, and the
//!   thin-provisioning tests on a thick volume); those skips are allowed.
//! - Read-only: the tests that apply to a write-protected unit, with no failure
//!   (see [`READ_ONLY_TESTS`] for which and why).

use std::net::TcpListener;
use std::time::Duration;

use mosaic_tests::cunit::{self, Verdict};
use mosaic_tests::server::Mosaic;
use mosaic_tests::tools;

/// The whole suite takes a few minutes on a loaded 2-core machine.
const RUN_LIMIT: Duration = Duration::from_secs(1200);

/// Runs the `tests` (an iscsi-test-cu `-t` list) against `spec` (a `--volume` value
/// named `full`) with two portals; returns the parsed report.
fn run_full(test: &str, spec: &str, tests: &str) -> Option<(cunit::Report, Mosaic)> {
    if std::env::var_os("MOSAIC_TEST_TARGET").is_some() {
        eprintln!("{test}: skipped against an external target (needs two portals)");
        return None;
    }
    let cu = tools::require(test, "iscsi-test-cu", "libiscsi-bin")?;
    let second = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let server = Mosaic::start_with(&[], &["--volume", spec, "--portal", &second.to_string()]);
    let url = server.url("full");
    let mpurl = format!("iscsi://{second}/{}/{}", server.iqn("full"), server.lun());
    let out = tools::run(&mut cunit::test_cu(&cu, tests, &[&url, &mpurl]), RUN_LIMIT);
    assert!(
        !out.timed_out,
        "{test}: iscsi-test-cu timed out\n{}",
        out.tail(40)
    );
    let report = cunit::parse(&out.stdout);
    eprintln!("{test}: {}", report.counts());
    assert!(
        report.summary.is_some(),
        "{test}: iscsi-test-cu printed no summary (crashed?)\n{}",
        out.tail(40)
    );
    assert!(
        report.with(Verdict::NoVerdict).is_empty(),
        "{test}: tests without a verdict:\n{}",
        report.describe_failures()
    );
    Some((report, server))
}

fn assert_no_failures(test: &str, spec: &str) {
    let Some((report, mut server)) = run_full(test, spec, "SCSI,iSCSI") else {
        return;
    };
    assert!(
        report.with(Verdict::Failed).is_empty(),
        "{test}: failures\n{}",
        report.describe_failures()
    );
    assert!(
        report.with(Verdict::Passed).len() > 150,
        "{test}: too few tests passed: {}",
        report.counts()
    );
    // MultipathIO ran on the second portal.
    assert!(
        report
            .tests
            .iter()
            .any(|t| t.suite == "MultipathIO" && t.verdict == Verdict::Passed),
        "{test}: SCSI.MultipathIO did not run"
    );
    server.assert_alive("after the whole conformance suite");
}

#[test]
fn whole_suite_on_a_thin_volume_has_no_failures() {
    assert_no_failures(
        "whole_suite_on_a_thin_volume_has_no_failures",
        "name=full,size=64M,backing=file,provisioning=thin",
    );
}

#[test]
fn whole_suite_on_a_thick_volume_has_no_failures() {
    assert_no_failures(
        "whole_suite_on_a_thick_volume_has_no_failures",
        "name=full,size=64M,backing=file,provisioning=thick",
    );
}

/// The libiscsi tests that apply to a write-protected logical unit.
///
/// How iscsi-test-cu treats a read-only unit (libiscsi 1.19, test-tool): at start it
/// sends MODE SENSE(6) and sets its global `readonly` from the WP bit of the
/// DEVICE-SPECIFIC PARAMETER (we set it, SBC-3 mode parameter header). `readonly`
/// is used by one macro only, `CHECK_FOR_READONLY`, which makes SCSI.ReadOnly run
/// (it skips on a writable unit); no other test looks at it. The write tests
/// (SCSI.Write10.Simple, CompareAndWrite, WriteSame*, Unmap, OrWrite,
/// WriteVerify*, WriteAtomic16, the writing tests of ExtendedCopy,
/// GetLBAStatus.UnmapSingle, the ProutReserve.Access* tests, iSCSIResiduals.Write*,
/// MultipathIO.Simple and CompareAndWrite*) write with EXPECT_STATUS_GOOD through
/// the helpers of iscsi-support.c, whose `check_result` skips only when the target
/// answers INVALID COMMAND OPERATION CODE ("not implemented"). A write refused with
/// DATA PROTECT / WRITE PROTECTED, the answer SBC-3 requires of a write-protected
/// unit and the one SCSI.ReadOnly.ReadOnlySBC checks for, is a failure to them. So
/// those 74 tests fail on every correct target (Debian's tgt fails 69 write tests
/// on its read-only unit), and the only way to make them pass or skip would be to
/// claim that WRITE is not implemented, which would be a lie.
/// Nothing we report is wrong, so the read-only run takes what applies instead:
///
/// - every suite of the SCSI and iSCSI families whose tests need no write to
///   succeed: reads, VERIFY, PRE-FETCH, capacity, INQUIRY and VPD, MODE SENSE, REPORT
///   SUPPORTED OPERATION CODES, TEST UNIT READY, START STOP UNIT, PREVENT ALLOW,
///   RESERVE(6), the PERSISTENT RESERVE IN/OUT suites (reservations are not medium
///   writes), SANITIZE (skipped: --allow-sanitize is not given), the removable-medium
///   tests (skipped: our units are not removable), the iSCSI command and DataSN
///   numbering suites, and SCSI.ReadOnly (not iSCSITMF: both its tests abort or
///   reset a WRITE in flight and fail when the write completes first, which on a
///   write-protected unit is CHECK CONDITION: a race the write usually loses, so
///   the test passed or failed by scheduling; it runs on the writable volumes);
/// - from the suites that also write, the tests that need no write to succeed:
///   each write command's BeyondEol (LBA out of range) and WriteProtect (WRPROTECT
///   field refused) tests, which check that CDB errors are reported ahead of write
///   protection; WriteAtomic16.VPD; ExtendedCopy's parameter-list checks;
///   ReceiveCopyResults.OpParams; GetLBAStatus.Simple and BeyondEol;
///   ProutReserve.Simple and its Ownership* tests; iSCSIResiduals' read tests; and
///   MultipathIO.Reset (over both portals).
///
/// Every pattern must match at least one test of the run (checked below), so a
/// renamed libiscsi test cannot drop out silently.
const READ_ONLY_TESTS: &[&str] = &[
    "iSCSI.iSCSIcmdsn",
    "iSCSI.iSCSIdatasn",
    "iSCSI.iSCSIResiduals.Read*",
    "SCSI.Inquiry",
    "SCSI.Mandatory",
    "SCSI.ModeSense6",
    "SCSI.NoMedia",
    "SCSI.Prefetch10",
    "SCSI.Prefetch16",
    "SCSI.PreventAllow",
    "SCSI.PrinReadKeys",
    "SCSI.PrinServiceactionRange",
    "SCSI.PrinReportCapabilities",
    "SCSI.ProutRegister",
    "SCSI.ProutClear",
    "SCSI.ProutPreempt",
    "SCSI.ProutReserve.Simple",
    "SCSI.ProutReserve.Ownership*",
    "SCSI.Read6",
    "SCSI.Read10",
    "SCSI.Read12",
    "SCSI.Read16",
    "SCSI.ReadCapacity10",
    "SCSI.ReadCapacity16",
    "SCSI.ReadDefectData10",
    "SCSI.ReadDefectData12",
    "SCSI.ReadOnly",
    "SCSI.ReportSupportedOpcodes",
    "SCSI.Reserve6",
    "SCSI.Sanitize",
    "SCSI.StartStopUnit",
    "SCSI.TestUnitReady",
    "SCSI.Verify10",
    "SCSI.Verify12",
    "SCSI.Verify16",
    "SCSI.GetLBAStatus.Simple",
    "SCSI.GetLBAStatus.BeyondEol",
    "SCSI.ExtendedCopy.ParamHdr",
    "SCSI.ExtendedCopy.DescrLimits",
    "SCSI.ExtendedCopy.DescrType",
    "SCSI.ExtendedCopy.ValidSegDescr",
    "SCSI.ReceiveCopyResults.OpParams",
    "SCSI.WriteAtomic16.VPD",
    "SCSI.Write10.BeyondEol",
    "SCSI.Write10.WriteProtect",
    "SCSI.Write12.BeyondEol",
    "SCSI.Write12.WriteProtect",
    "SCSI.Write16.BeyondEol",
    "SCSI.Write16.WriteProtect",
    "SCSI.WriteSame10.BeyondEol",
    "SCSI.WriteSame10.WriteProtect",
    "SCSI.WriteSame16.BeyondEol",
    "SCSI.WriteSame16.WriteProtect",
    "SCSI.WriteVerify10.BeyondEol",
    "SCSI.WriteVerify10.WriteProtect",
    "SCSI.WriteVerify12.BeyondEol",
    "SCSI.WriteVerify12.WriteProtect",
    "SCSI.WriteVerify16.BeyondEol",
    "SCSI.WriteVerify16.WriteProtect",
    "SCSI.OrWrite.BeyondEol",
    "SCSI.OrWrite.Protect",
    "SCSI.MultipathIO.Reset",
];

/// Whether `family.suite.test` matches `pattern` (`Family.Suite[.Test]`, a trailing
/// `*` in the test name), as iscsi-test-cu's fnmatch does for these patterns.
fn matches(pattern: &str, suite: &str, test: &str) -> bool {
    let mut parts = pattern.split('.');
    let (_family, p_suite, p_test) = (parts.next(), parts.next(), parts.next());
    if p_suite != Some(suite) {
        return false;
    }
    match p_test {
        None => true,
        Some(t) => match t.strip_suffix('*') {
            Some(prefix) => test.starts_with(prefix),
            None => t == test,
        },
    }
}

#[test]
fn read_side_suite_on_a_read_only_volume_has_no_failures() {
    let test = "read_side_suite_on_a_read_only_volume_has_no_failures";
    let tests = READ_ONLY_TESTS.join(",");
    let Some((report, mut server)) =
        run_full(test, "name=full,size=64M,backing=file,readonly=yes", &tests)
    else {
        return;
    };
    assert!(
        report.with(Verdict::Failed).is_empty(),
        "{test}: failures\n{}",
        report.describe_failures()
    );
    let read_only = report
        .tests
        .iter()
        .find(|t| t.suite == "ReadOnly" && t.test == "ReadOnlySBC")
        .expect("SCSI.ReadOnly.ReadOnlySBC ran");
    assert_eq!(
        read_only.verdict,
        Verdict::Passed,
        "ReadOnlySBC skipped or failed"
    );
    for pattern in READ_ONLY_TESTS {
        assert!(
            report
                .tests
                .iter()
                .any(|t| matches(pattern, &t.suite, &t.test)),
            "{test}: {pattern} matched no test of the run"
        );
    }
    // Skips only where the test says the feature is not ours: SANITIZE without
    // --allow-sanitize, removable media.
    for t in report.with(Verdict::Skipped) {
        let why = cunit::skip_reason(t).unwrap_or_default();
        assert!(
            why.contains("--allow-sanitize") || why.contains("not removable"),
            "{test}: {} skipped: {why}",
            t.name()
        );
    }
    assert!(
        report.with(Verdict::Passed).len() > 120,
        "{test}: too few tests passed: {}",
        report.counts()
    );
    server.assert_alive("after the read-side suite");
}
