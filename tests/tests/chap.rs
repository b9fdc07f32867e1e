//! CHAP and initiator ACLs against the real `mosaic` binary, checked with libiscsi's
//! tools (a client nobody here wrote): right secrets log in, wrong ones are refused
//! with "Authentication failure", mutual CHAP is verified by libiscsi against
//! target_user/target_password, and an initiator outside a target's ACL gets
//! "Authorization failure".

use std::process::Command;
use std::time::Duration;

use mosaic_tests::server::Mosaic;
use mosaic_tests::tools::{self, RunOutput};

const TOOL_LIMIT: Duration = Duration::from_secs(60);
const INQ_INITIATOR: &str = "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-inq";

const CONFIG: &str = r#"
[discovery_chap]
user = "seeker"
secret = "discovery-secret"

[[volumes]]
name = "oneway"
size = "16M"
backing = "memory"
chap = { user = "alice", secret = "alice-secret-12" }

[[volumes]]
name = "mutual"
size = "16M"
backing = "memory"
chap = { user = "bob", secret = "bob-secret-1234", mutual_user = "tgt", mutual_secret = "target-secret-1" }

[[volumes]]
name = "acl"
size = "16M"
backing = "memory"
initiators = ["iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-inq"]
"#;

fn start() -> Option<Mosaic> {
    if std::env::var_os("MOSAIC_TEST_TARGET").is_some() {
        eprintln!("chap: skipped against an external target (needs our config)");
        return None;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("chap.toml");
    std::fs::write(&path, CONFIG).expect("write config");
    let path = path.to_str().expect("utf-8 path").to_string();
    let server = Mosaic::start_with(&[], &["--config", &path]);
    // The config was read at start-up; the directory may go.
    drop(dir);
    Some(server)
}

fn inq(tool: &std::path::Path, url: &str) -> RunOutput {
    tools::run(
        Command::new(tool).args(["-i", INQ_INITIATOR, url]),
        TOOL_LIMIT,
    )
}

#[test]
fn chap_one_way_mutual_and_acls_against_libiscsi() {
    let test = "chap_one_way_mutual_and_acls_against_libiscsi";
    let Some(inq_tool) = tools::require(test, "iscsi-inq", "libiscsi-bin") else {
        return;
    };
    let Some(ls_tool) = tools::require(test, "iscsi-ls", "libiscsi-bin") else {
        return;
    };
    let Some(mut server) = start() else {
        return;
    };
    let p = server.portal();
    let iqn = |v: &str| server.iqn(v);

    let ok = inq(
        &inq_tool,
        &format!("iscsi://alice%alice-secret-12@{p}/{}/0", iqn("oneway")),
    );
    assert!(ok.success(), "right secret refused:\n{}", ok.both());
    assert!(ok.both().contains("DIRECT_ACCESS"), "{}", ok.both());

    let bad = inq(
        &inq_tool,
        &format!("iscsi://alice%not-the-secret@{p}/{}/0", iqn("oneway")),
    );
    assert!(!bad.success(), "wrong secret accepted:\n{}", bad.both());
    assert!(
        bad.both().contains("Authentication failure"),
        "{}",
        bad.both()
    );

    let none = inq(&inq_tool, &format!("iscsi://{p}/{}/0", iqn("oneway")));
    assert!(!none.success(), "no credentials accepted:\n{}", none.both());
    assert!(
        none.both().contains("Authentication failure"),
        "{}",
        none.both()
    );

    let mutual = inq(
        &inq_tool,
        &format!(
            "iscsi://bob%bob-secret-1234@{p}/{}/0?target_user=tgt&target_password=target-secret-1",
            iqn("mutual")
        ),
    );
    assert!(mutual.success(), "mutual CHAP refused:\n{}", mutual.both());

    // libiscsi checks our CHAP_R against the target password it was given.
    let spoofed = inq(
        &inq_tool,
        &format!(
            "iscsi://bob%bob-secret-1234@{p}/{}/0?target_user=tgt&target_password=other-secret-9",
            iqn("mutual")
        ),
    );
    assert!(
        !spoofed.success(),
        "libiscsi accepted a wrong target response:\n{}",
        spoofed.both()
    );

    let allowed = inq(&inq_tool, &format!("iscsi://{p}/{}/0", iqn("acl")));
    assert!(
        allowed.success(),
        "initiator in the ACL refused:\n{}",
        allowed.both()
    );
    let other = tools::run(
        Command::new(&inq_tool).args([
            "-i",
            "iqn.2026-11.io.example:intruder",
            &format!("iscsi://{p}/{}/0", iqn("acl")),
        ]),
        TOOL_LIMIT,
    );
    assert!(
        !other.success(),
        "initiator outside the ACL accepted:\n{}",
        other.both()
    );
    assert!(
        other.both().contains("Authorization failure"),
        "{}",
        other.both()
    );

    // Discovery needs its own CHAP.
    let disc_bad = tools::run(
        Command::new(&ls_tool).arg(format!("iscsi://{p}")),
        TOOL_LIMIT,
    );
    assert!(
        !disc_bad.success(),
        "discovery without CHAP accepted:\n{}",
        disc_bad.both()
    );
    let disc = tools::run(
        Command::new(&ls_tool).arg(format!("iscsi://seeker%discovery-secret@{p}")),
        TOOL_LIMIT,
    );
    assert!(
        disc.success(),
        "discovery with CHAP refused:\n{}",
        disc.both()
    );
    assert!(disc.both().contains(&iqn("oneway")), "{}", disc.both());

    server.assert_alive("after the CHAP logins");
    let log = server.log();
    assert!(
        log.contains("wrong CHAP response"),
        "refusals are logged:\n{log}"
    );
    assert!(
        log.contains("is not allowed to"),
        "ACL refusals are logged:\n{log}"
    );
}
