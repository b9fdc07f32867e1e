//! The real Linux initiator: open-iscsi and the kernel's iscsi_tcp in a QEMU guest
//! (`../shared/vmlab`) against the release `mosaic` binary started inside the lab's
//! network namespace. `scripts/vmlab-test.sh` does the work: vmlab's `tests/basic.sh`
//! (discovery, login, sha256 round trips, fio with verify, logout), then the same with
//! CRC32C header and data digests (`scripts/vmlab/basic-digests.sh`).
//!
//! Slow (a software-emulated guest boots twice: about 2.5 minutes here, longer on a
//! first run that builds the lab) and needs root. Outside CI it is skipped when not
//! root or when the lab's QEMU can neither run nor be built; under `CI=true` it always
//! runs. Run it alone with
//! `cargo test -p mosaic-tests --test linux_initiator -- --nocapture`.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use mosaic_tests::server::workspace_root;
use mosaic_tests::tools::{self, in_ci};

const TEST: &str = "linux_initiator_in_vm_slow_basic_and_crc32c_digests";
/// Building the release binary (a no-op when it is up to date).
const BUILD_LIMIT: Duration = Duration::from_secs(20 * 60);
/// The whole script: lab build (idempotent; the first one downloads and debootstraps),
/// two guest runs of about 75 s each under TCG. This bounds a hang, not the speed.
const RUN_LIMIT: Duration = Duration::from_secs(25 * 60);
/// After SIGTERM to the script's process group, how long its cleanup trap may take.
const TERM_GRACE: Duration = Duration::from_secs(30);

/// Why the lab cannot run on this machine, if it cannot.
fn cannot_run_here() -> Option<String> {
    // The effective uid, from /proc (the workspace denies unsafe code, so no geteuid).
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?");
    if euid != "0" {
        return Some(format!(
            "needs root (network namespace, tap devices), running as uid {euid}"
        ));
    }
    // scripts/vmlab-test.sh's default, or its $VMLAB.
    let vmlab = match std::env::var_os("VMLAB") {
        Some(d) => Some(PathBuf::from(d)),
        None => workspace_root().parent().map(|p| p.join("shared/vmlab")),
    };
    if !vmlab
        .as_ref()
        .is_some_and(|d| d.join("run-test.sh").is_file())
    {
        return Some(format!(
            "no vmlab beside the repository (looked for {})",
            vmlab.unwrap_or_default().join("run-test.sh").display()
        ));
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("no /dev/net/tun: QEMU cannot attach the lab's tap devices".into());
    }
    let lab = std::env::var_os("LAB")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                        .join(".cache")
                });
            cache.join("vmlab")
        });
    let qemu = lab.join("qemu/usr/bin/qemu-system-x86_64");
    let qemu_runs = qemu.is_file()
        && Command::new(&qemu)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    // Without a working lab QEMU, vmlab/build.sh makes one from Debian packages.
    if !qemu_runs && tools::which("apt-get").is_none() {
        return Some(format!(
            "{} does not run and there is no apt-get for vmlab/build.sh to build it",
            qemu.display()
        ));
    }
    None
}

/// `cargo build --release -p mosaic-target`; returns the binary.
fn release_binary(root: &Path) -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = tools::run(
        Command::new(cargo).current_dir(root).args([
            "build",
            "--release",
            "-p",
            "mosaic-target",
            "--bin",
            "mosaic",
        ]),
        BUILD_LIMIT,
    );
    assert!(
        out.success(),
        "cargo build --release -p mosaic-target failed (exit {:?}, timed out: {})\n{}",
        out.status,
        out.timed_out,
        out.tail(40)
    );
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|d| if d.is_absolute() { d } else { root.join(d) })
        .unwrap_or_else(|| root.join("build"));
    let bin = dir.join("release/mosaic");
    assert!(bin.is_file(), "cargo built no {}", bin.display());
    bin
}

/// `kill -SIGNAL -- TARGET` (a pid, or a process group as `-pgid`).
fn signal(target: &str, signal: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{signal}"), "--", target])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

#[test]
fn linux_initiator_in_vm_slow_basic_and_crc32c_digests() {
    if let Some(why) = cannot_run_here() {
        if in_ci() {
            panic!("{TEST}: {why}; CI=true, so the real-initiator test must run");
        }
        eprintln!("SKIP {TEST}: {why}");
        return;
    }
    let root = workspace_root();
    let bin = match std::env::var_os("MOSAIC_BIN") {
        Some(b) => PathBuf::from(b),
        None => release_binary(&root),
    };
    let out_dir = root.join("build/vmlab").join(format!(
        "test-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    ));
    std::fs::create_dir_all(&out_dir).expect("create the results dir");
    let log_path = out_dir.join("vmlab-test.log");
    let log = File::create(&log_path).expect("create the log");
    let script = root.join("scripts/vmlab-test.sh");

    // On a timeout: SIGTERM to the script, whose trap stops the guest and mosaic and
    // deletes the netns; if it is still there after TERM_GRACE, SIGKILL its process
    // group (its own, so nothing else of ours is hit).
    let start = Instant::now();
    let mut child = Command::new("bash")
        .arg(&script)
        .current_dir(&root)
        .env("MOSAIC_BIN", &bin)
        .env("VMLAB_TEST_OUT", &out_dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup the log"))
        .stderr(log)
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", script.display()));
    let pgid = child.id();
    let mut timed_out = false;
    let status = loop {
        match child.try_wait().expect("waiting for vmlab-test.sh") {
            Some(s) => break Some(s),
            None if start.elapsed() >= RUN_LIMIT && !timed_out => {
                timed_out = true;
                signal(&pgid.to_string(), "TERM");
            }
            None if timed_out && start.elapsed() >= RUN_LIMIT + TERM_GRACE => {
                signal(&format!("-{pgid}"), "KILL");
                let _ = child.wait();
                break None;
            }
            None => thread::sleep(Duration::from_millis(200)),
        }
    };
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    let summary: String = text
        .lines()
        .skip_while(|l| !l.starts_with("==== vmlab-test summary"))
        .collect::<Vec<_>>()
        .join("\n");
    eprintln!(
        "{TEST}: {:.0} s, log {}\n{summary}",
        start.elapsed().as_secs_f64(),
        log_path.display()
    );
    assert!(
        !timed_out,
        "{TEST}: scripts/vmlab-test.sh still running after {} s; stopped it. Last lines:\n{}",
        RUN_LIMIT.as_secs(),
        tools::tail_lines(&text, 60)
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "{TEST}: scripts/vmlab-test.sh failed ({status:?}); results in {}. Last lines:\n{}",
        out_dir.display(),
        tools::tail_lines(&text, 80)
    );
}
