//! Reservations and unit attentions against the real `mosaic` binary:
//!
//! - libiscsi's persistent reservation, RESERVE(6) and multipath suites
//!   (`iscsi-test-cu --dataloss`, both libiscsi initiator names, the same target
//!   given twice so a second session is the second path): every listed test runs,
//!   none fails, none is skipped (a skip there means "not implemented").
//! - APTPL: a registration and a reservation made with APTPL = 1 survive a restart
//!   of the process on the same data directory; the holder's I_T nexus (same name,
//!   same ISID) keeps its access after relogin, a new ISID or another initiator is
//!   a different I_T nexus and conflicts (SPC-4 §5.13.5, §5.13.7).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use mosaic_tests::cunit::{self, Verdict, RESERVATION_SUITES};
use mosaic_tests::initiator::{self, LoginOptions, Session};
use mosaic_tests::server::{Mosaic, Volume};
use mosaic_tests::{target_iqn, tools};

/// One run of all of them: Reserve6 sleeps 3 s after each of its three resets; the
/// rest takes seconds on a debug build.
const RUN_LIMIT: Duration = Duration::from_secs(300);

#[test]
fn libiscsi_reservation_and_multipath_suites_pass() {
    let test = "libiscsi_reservation_and_multipath_suites_pass";
    let Some(cu) = tools::require(test, "iscsi-test-cu", "libiscsi-bin") else {
        return;
    };
    let listed = cunit::listed_tests(&cu, RESERVATION_SUITES);
    assert!(
        listed.len() >= 30,
        "iscsi-test-cu --list names only {listed:?} for {RESERVATION_SUITES:?}"
    );
    let mut server = Mosaic::start(&[Volume::memory("pr", "64M")]);
    let url = server.url("pr");
    let selection = RESERVATION_SUITES.join(",");
    let out = tools::run(
        &mut cunit::test_cu(&cu, &selection, &[&url, &url]),
        RUN_LIMIT,
    );
    let report = cunit::parse(&out.stdout);
    eprintln!(
        "{test}: {} in {:.1}s",
        report.counts(),
        out.elapsed.as_secs_f64()
    );
    server.assert_alive("after iscsi-test-cu");
    let failures = report.describe_failures();
    assert!(
        !out.timed_out,
        "iscsi-test-cu did not finish within {RUN_LIMIT:?}\n{failures}\n{}",
        out.tail(40)
    );
    assert!(
        failures.is_empty(),
        "{}\nFailing tests:\n{failures}\n{}",
        report.counts(),
        out.tail(60)
    );
    let skipped: Vec<String> = report
        .with(Verdict::Skipped)
        .iter()
        .map(|t| {
            format!(
                "{} ({})",
                t.name(),
                cunit::skip_reason(t).unwrap_or_default()
            )
        })
        .collect();
    assert!(
        skipped.is_empty(),
        "skipped (not implemented?): {skipped:?}"
    );
    let summary = report
        .summary
        .unwrap_or_else(|| panic!("no CUnit Run Summary\n{}", out.tail(60)));
    assert_eq!(summary.failed, 0, "CUnit counts failures\n{}", out.tail(60));
    let ran: BTreeSet<String> = report
        .tests
        .iter()
        .filter(|t| t.verdict == Verdict::Passed)
        .map(|t| format!("SCSI.{}", t.name()))
        .collect();
    let missing: Vec<&String> = listed.difference(&ran).collect();
    assert!(
        missing.is_empty(),
        "listed tests that did not pass: {missing:?}\n{}",
        out.tail(60)
    );
}

// --- APTPL across a restart -------------------------------------------------------

const PRIN: u8 = 0x5e;
const PROUT: u8 = 0x5f;
const RESERVATION_CONFLICT: u8 = 0x18;
const KEY: u64 = 0x00c0_ffee_0000_0001;
/// PR type Write Exclusive: others may read, not write.
const WRITE_EXCLUSIVE: u8 = 0x1;

fn prout(s: &mut Session, sa: u8, ptype: u8, key: u64, sa_key: u64, aptpl: bool) -> u8 {
    let mut p = [0u8; 24];
    p[0..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sa_key.to_be_bytes());
    p[20] = u8::from(aptpl);
    let cdb = [PROUT, sa, ptype, 0, 0, 0, 0, 0, 24, 0];
    let r = s.command(&cdb, &p, 0).expect("PERSISTENT RESERVE OUT");
    assert!(
        r.status != initiator::CHECK_CONDITION,
        "PROUT service action {sa}: CHECK CONDITION {:x?}",
        r.sense_key()
    );
    r.status
}

fn prin(s: &mut Session, sa: u8) -> Vec<u8> {
    let cdb = [PRIN, sa, 0, 0, 0, 0, 0, 0x10, 0, 0];
    s.command_good("PERSISTENT RESERVE IN", &cdb, &[], 0x1000)
        .expect("PERSISTENT RESERVE IN")
        .data
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn write_status(s: &mut Session) -> u8 {
    let cdb = [0x2a, 0, 0, 0, 0, 8, 0, 0, 1, 0];
    s.command(&cdb, &[0x5a; 512], 0).expect("WRITE(10)").status
}

fn read_status(s: &mut Session) -> u8 {
    let cdb = [0x28, 0, 0, 0, 0, 8, 0, 0, 1, 0];
    s.command(&cdb, &[], 512).expect("READ(10)").status
}

/// Starts `mosaic serve` on a free port with `data_dir` as its data directory.
fn start_on(data_dir: &Path) -> Mosaic {
    Mosaic::launch_on_free_port(|addr| {
        [
            "serve",
            "--portal",
            &addr.to_string(),
            "--data-dir",
            &data_dir.display().to_string(),
            "--volume",
            "name=pr,size=16M,backing=file",
            "--log",
            "info",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    })
}

fn login(server: &Mosaic, name: &str, isid: u64) -> Session {
    let mut opts = LoginOptions::new(&target_iqn("pr"));
    opts.initiator_name = name.to_string();
    opts.isid = isid;
    let mut s = Session::login(server.addr(), &opts).expect("login");
    s.lun = 0;
    // Whatever unit attention a fresh nexus has, take it now.
    let _ = s.test_unit_ready();
    s
}

#[test]
fn aptpl_registration_and_reservation_survive_a_restart() {
    if std::env::var_os("MOSAIC_TEST_TARGET").is_some() {
        eprintln!("aptpl restart test: needs to restart the target; skipped for an external one");
        return;
    }
    let data = tempfile::tempdir().expect("temp dir");
    let holder = "iqn.2026-11.io.mosaic:tests-holder";
    let holder_isid = initiator::fresh_isid();

    let mut server = start_on(data.path());
    let mut a = login(&server, holder, holder_isid);
    // REGISTER AND IGNORE EXISTING KEY with APTPL, then RESERVE Write Exclusive.
    let mut p = [0u8; 24];
    p[8..16].copy_from_slice(&KEY.to_be_bytes());
    p[20] = 0x01;
    let r = a
        .command(&[PROUT, 0x06, 0, 0, 0, 0, 0, 0, 24, 0], &p, 0)
        .expect("PROUT");
    assert_eq!(
        r.status,
        initiator::GOOD,
        "REGISTER AND IGNORE EXISTING KEY with APTPL = 1 refused (sense {:x?}): the server \
         must build each device with Device::with_aptpl_file(lu, Some(<data dir>/<volume>.pr.toml))",
        r.sense_key()
    );
    assert_eq!(
        prout(&mut a, 0x01, WRITE_EXCLUSIVE, KEY, 0, false),
        initiator::GOOD
    );
    let caps = prin(&mut a, 0x02);
    assert_eq!(caps[2] & 0x01, 1, "PTPL_C");
    assert_eq!(caps[3] & 0x01, 1, "PTPL_A after APTPL = 1");
    let generation = be32(&prin(&mut a, 0x00), 0);
    assert_eq!(write_status(&mut a), initiator::GOOD);
    a.logout().expect("logout");
    assert!(server.stop(), "mosaic stops on SIGTERM");
    drop(server);

    let mut server = start_on(data.path());
    // Another initiator sees the registration and the reservation.
    let mut b = login(
        &server,
        "iqn.2026-11.io.mosaic:tests-other",
        initiator::fresh_isid(),
    );
    let keys = prin(&mut b, 0x00);
    assert_eq!(be32(&keys, 0), generation, "PRGENERATION survives");
    assert_eq!(be32(&keys, 4), 8, "one key");
    assert_eq!(be64(&keys, 8), KEY);
    let res = prin(&mut b, 0x01);
    assert_eq!(be32(&res, 4), 16, "reserved");
    assert_eq!(be64(&res, 8), KEY);
    assert_eq!(res[21] & 0x0f, WRITE_EXCLUSIVE);
    // READ FULL STATUS names the holder's port in a format 01 iSCSI TransportID.
    let full = prin(&mut b, 0x03);
    assert_eq!(full[20] & 0x01, 1, "R_HOLDER");
    let tid_len = be32(&full, 28) as usize;
    let tid = &full[32..32 + tid_len];
    assert_eq!(tid[0], 0x45, "format 01, protocol iSCSI");
    let port = format!("{holder},i,0x{holder_isid:012x}");
    assert_eq!(&tid[4..4 + port.len()], port.as_bytes());
    // Write Exclusive: others read, do not write.
    assert_eq!(read_status(&mut b), initiator::GOOD);
    assert_eq!(write_status(&mut b), RESERVATION_CONFLICT);
    // The holder's name with a new ISID is another I_T nexus: not registered.
    let mut a2 = login(&server, holder, initiator::fresh_isid());
    assert_eq!(write_status(&mut a2), RESERVATION_CONFLICT);
    // The holder's own I_T nexus (same name, same ISID) still holds it.
    let mut a = login(&server, holder, holder_isid);
    assert_eq!(write_status(&mut a), initiator::GOOD);
    // Release and unregister with APTPL = 0: nothing is kept for the next start.
    assert_eq!(
        prout(&mut a, 0x02, WRITE_EXCLUSIVE, KEY, 0, false),
        initiator::GOOD
    );
    assert_eq!(prout(&mut a, 0x00, 0, KEY, 0, false), initiator::GOOD);
    assert_eq!(write_status(&mut b), initiator::GOOD);
    server.assert_alive("after the APTPL checks");
    drop((a, a2, b));
    server.stop();
    drop(server);

    let server = start_on(data.path());
    let mut c = login(
        &server,
        "iqn.2026-11.io.mosaic:tests-other",
        initiator::fresh_isid(),
    );
    assert_eq!(
        be32(&prin(&mut c, 0x00), 4),
        0,
        "no registrations after APTPL = 0"
    );
    assert_eq!(be32(&prin(&mut c, 0x01), 4), 0, "not reserved");
}
