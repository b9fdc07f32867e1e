//! Reading the output of libiscsi's `iscsi-test-cu` (CUnit's verbose mode).
//!
//! ```text
//! Suite: iSCSIdatasn
//!   Test: iSCSIDataSnInvalid ...FAILED
//!     1. test_iscsi_datasn_invalid.c:98  - CU_ASSERT_NOT_EQUAL(ret,0)
//! Suite: Inquiry
//!   Test: BlockLimits ...    [SKIPPED] Logical unit is fully provisioned. Skipping test
//! passed
//!
//! Run Summary:    Type  Total    Ran Passed Failed Inactive
//!               suites      4      4    n/a      0        0
//!                tests     15     15     14      1        0
//!              asserts    337    337    333      4      n/a
//! ```
//!
//! libiscsi's tests "pass" when the target lacks an optional feature and print
//! `[SKIPPED]`; CUnit has no skip state, so those are counted apart here.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The initiator names libiscsi's two-initiator tests log in with (`-i`, `-I`).
pub const INITIATOR_1: &str = "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test";
pub const INITIATOR_2: &str = "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test-2";

/// libiscsi's persistent reservation, RESERVE(6) and multipath suites: every test
/// of them needs two initiators, so each runs with a second URL.
pub const RESERVATION_SUITES: &[&str] = &[
    "SCSI.PrinReadKeys",
    "SCSI.PrinServiceactionRange",
    "SCSI.PrinReportCapabilities",
    "SCSI.ProutRegister",
    "SCSI.ProutReserve",
    "SCSI.ProutClear",
    "SCSI.ProutPreempt",
    "SCSI.Reserve6",
    "SCSI.MultipathIO",
];

/// `iscsi-test-cu --dataloss -i INITIATOR_1 -I INITIATOR_2 -t SELECTION URL...`:
/// the write tests run (`--dataloss`), and the two-initiator tests log in with
/// both names (the second URL, if given, is the second path).
pub fn test_cu(cu: &Path, selection: &str, urls: &[&str]) -> Command {
    let mut cmd = Command::new(cu);
    cmd.args([
        "--dataloss",
        "-i",
        INITIATOR_1,
        "-I",
        INITIATOR_2,
        "-t",
        selection,
    ])
    .args(urls);
    cmd
}

/// Every `FAMILY.SUITE.TEST` that `iscsi-test-cu --list` names for `suites`
/// (`FAMILY.SUITE` each), so a test can check that all of them ran.
pub fn listed_tests(cu: &Path, suites: &[&str]) -> BTreeSet<String> {
    let out = crate::tools::run(Command::new(cu).arg("--list"), Duration::from_secs(30));
    assert!(out.success(), "iscsi-test-cu --list failed\n{}", out.both());
    out.stdout
        .lines()
        .map(str::trim)
        .filter(|l| l.matches('.').count() == 2)
        .filter(|l| suites.iter().any(|s| l.starts_with(&format!("{s}."))))
        .map(str::to_string)
        .collect()
}

/// The verdict on one test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Passed,
    /// CUnit says passed, but the test printed `[SKIPPED]`.
    Skipped,
    Failed,
    /// The test started but no verdict was printed (the client died or hung).
    NoVerdict,
}

/// One test's result, with the lines it printed.
#[derive(Debug, Clone)]
pub struct TestResult {
    pub suite: String,
    pub test: String,
    pub verdict: Verdict,
    /// What the test printed before its verdict.
    pub lines: Vec<String>,
    /// The verdict line and what follows it: CUnit's assertion details, and output of
    /// the suite's clean-up (libiscsi's teardown prints e.g. "[SKIPPED] PERSISTENT
    /// RESERVE IN is not implemented." after the last test's "passed").
    pub after: Vec<String>,
}

impl TestResult {
    /// `Suite.Test`.
    pub fn name(&self) -> String {
        format!("{}.{}", self.suite, self.test)
    }
}

/// CUnit's "Run Summary" row for tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    pub total: u32,
    pub ran: u32,
    pub passed: u32,
    pub failed: u32,
    pub inactive: u32,
}

/// Everything read from one run.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub tests: Vec<TestResult>,
    /// `None` when the output has no Run Summary (the client died before the end).
    pub summary: Option<Summary>,
}

impl Report {
    /// Tests with the given verdict.
    pub fn with(&self, v: Verdict) -> Vec<&TestResult> {
        self.tests.iter().filter(|t| t.verdict == v).collect()
    }

    /// Failed and verdict-less tests, each with what it printed, for a failure message.
    pub fn describe_failures(&self) -> String {
        let mut s = String::new();
        for t in self
            .tests
            .iter()
            .filter(|t| matches!(t.verdict, Verdict::Failed | Verdict::NoVerdict))
        {
            s.push_str(&format!("  {:?}: {}\n", t.verdict, t.name()));
            for l in t
                .lines
                .iter()
                .chain(&t.after)
                .filter(|l| !l.trim().is_empty())
                .take(12)
            {
                s.push_str(&format!("      {}\n", l.trim_end()));
            }
        }
        s
    }

    /// One line: counts by verdict.
    pub fn counts(&self) -> String {
        format!(
            "{} tests: {} passed, {} failed, {} skipped, {} without verdict",
            self.tests.len(),
            self.with(Verdict::Passed).len(),
            self.with(Verdict::Failed).len(),
            self.with(Verdict::Skipped).len(),
            self.with(Verdict::NoVerdict).len()
        )
    }
}

/// Parses `iscsi-test-cu` output.
pub fn parse(output: &str) -> Report {
    let mut report = Report::default();
    let mut suite = String::new();
    let mut cur: Option<TestResult> = None;
    let mut lines = output.lines();
    let close = |cur: &mut Option<TestResult>, report: &mut Report| {
        if let Some(t) = cur.take() {
            report.tests.push(t);
        }
    };
    while let Some(line) = lines.next() {
        if let Some(rest) = line.trim_start().strip_prefix("Suite: ") {
            close(&mut cur, &mut report);
            suite = rest.trim().to_string();
        } else if let Some(rest) = line.trim_start().strip_prefix("Test: ") {
            close(&mut cur, &mut report);
            let (name, tail) = rest.split_once(" ...").unwrap_or((rest, ""));
            let mut t = TestResult {
                suite: suite.clone(),
                test: name.trim().to_string(),
                verdict: Verdict::NoVerdict,
                lines: Vec::new(),
                after: Vec::new(),
            };
            take_line(&mut t, tail);
            cur = Some(t);
        } else if line.starts_with("Run Summary:") {
            close(&mut cur, &mut report);
            for row in lines.by_ref().take(3) {
                let f: Vec<&str> = row.split_whitespace().collect();
                if f.first() == Some(&"tests") && f.len() >= 6 {
                    let n = |i: usize| f[i].parse().unwrap_or(0);
                    report.summary = Some(Summary {
                        total: n(1),
                        ran: n(2),
                        passed: n(3),
                        failed: n(4),
                        inactive: n(5),
                    });
                }
            }
        } else if let Some(t) = cur.as_mut() {
            take_line(t, line);
        }
    }
    close(&mut cur, &mut report);
    for t in &mut report.tests {
        if t.verdict == Verdict::Passed && t.lines.iter().any(|l| l.contains("[SKIPPED]")) {
            t.verdict = Verdict::Skipped;
        }
    }
    report
}

/// Files one output line under test `t`: before its verdict, the verdict itself
/// (the same rules as ../shared/peers/cu-summary.py: a line that is, or starts with,
/// "passed", or is "FAILED" / contains "...FAILED"; libiscsi also prints
/// informational "[FAILED] ..." lines inside tests that CUnit still passes), or after.
fn take_line(t: &mut TestResult, line: &str) {
    if t.verdict != Verdict::NoVerdict {
        t.after.push(line.to_string());
        return;
    }
    let trimmed = line.trim();
    if trimmed == "FAILED" || trimmed == "...FAILED" || line.contains("...FAILED") {
        t.verdict = Verdict::Failed;
        t.after.push(line.to_string());
    } else if let Some(rest) = trimmed
        .strip_prefix("...passed")
        .or_else(|| trimmed.strip_prefix("passed"))
    {
        t.verdict = Verdict::Passed;
        t.after.push(rest.to_string());
    } else {
        t.lines.push(line.to_string());
    }
}

/// The reason a skipped test gave, if any: the first `[SKIPPED]` message.
pub fn skip_reason(t: &TestResult) -> Option<String> {
    t.lines
        .iter()
        .find_map(|l| l.split_once("[SKIPPED]").map(|(_, w)| w.trim().to_string()))
}

/// The SCSI command a skip reason says the target lacks ("WRITE10 is not
/// implemented." -> "WRITE10"), letters and digits only, upper case.
pub fn missing_command(reason: &str) -> Option<String> {
    let (cmd, _) = reason.split_once(" is not implemented")?;
    Some(
        cmd.chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_uppercase(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r"

     CUnit - A unit testing framework for C - Version 2.1-3
Suite: iSCSIcmdsn
  Test: iSCSICmdSnTooHigh ...passed    [SKIPPED] PERSISTENT RESERVE IN is not implemented.
Suite: iSCSIdatasn
  Test: iSCSIDataSnInvalid ...FAILED
    1. test_iscsi_datasn_invalid.c:98  - CU_ASSERT_NOT_EQUAL(ret,0)
Suite: Inquiry
  Test: BlockLimits ...    [SKIPPED] Logical unit is fully provisioned. Skipping test
passed
  Test: Standard ...    [FAILED] informational line CUnit still passes
passed
  Test: Crashed ...

Run Summary:    Type  Total    Ran Passed Failed Inactive
              suites      4      4    n/a      0        0
               tests     15     15     14      1        0
             asserts    337    337    333      4      n/a
";

    #[test]
    fn verdicts_and_summary_are_read() {
        let r = parse(SAMPLE);
        let v: Vec<(String, Verdict)> = r.tests.iter().map(|t| (t.name(), t.verdict)).collect();
        assert_eq!(
            v,
            vec![
                ("iSCSIcmdsn.iSCSICmdSnTooHigh".into(), Verdict::Passed),
                ("iSCSIdatasn.iSCSIDataSnInvalid".into(), Verdict::Failed),
                ("Inquiry.BlockLimits".into(), Verdict::Skipped),
                ("Inquiry.Standard".into(), Verdict::Passed),
                ("Inquiry.Crashed".into(), Verdict::NoVerdict),
            ]
        );
        assert_eq!(
            r.summary,
            Some(Summary {
                total: 15,
                ran: 15,
                passed: 14,
                failed: 1,
                inactive: 0
            })
        );
        assert!(r.describe_failures().contains("CU_ASSERT_NOT_EQUAL"));
        assert_eq!(
            skip_reason(&r.tests[2]).as_deref(),
            Some("Logical unit is fully provisioned. Skipping test")
        );
    }

    #[test]
    fn missing_commands_are_named() {
        assert_eq!(
            missing_command("WRITE10 is not implemented.").as_deref(),
            Some("WRITE10")
        );
        assert_eq!(
            missing_command("READ_CAPACITY16 is not implemented").as_deref(),
            Some("READCAPACITY16")
        );
        assert_eq!(missing_command("Logical unit is fully provisioned"), None);
    }

    #[test]
    fn output_cut_short_has_no_summary() {
        let r = parse("Suite: Read10\n  Test: Simple ...");
        assert_eq!(r.summary, None);
        assert_eq!(r.tests[0].verdict, Verdict::NoVerdict);
    }
}
