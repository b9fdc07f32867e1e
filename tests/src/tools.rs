//! External tools: find them, decide between skipping and failing when one is absent,
//! and run them with a time limit.
//!
//! A test whose tool is absent SKIPS (prints why and passes) on a developer's machine,
//! but FAILS under CI (`CI=true`): `scripts/test.sh` installs every tool the tests
//! need, so a missing one in CI is a broken setup, not a reason to test less.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// `true` when running under CI (`CI` set to anything but empty, `0` or `false`).
pub fn in_ci() -> bool {
    match std::env::var("CI") {
        Ok(v) => !matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "" | "0" | "false" | "no"
        ),
        Err(_) => false,
    }
}

/// Reports a missing prerequisite: panics under CI, otherwise prints a SKIP line.
/// The caller returns from the test when this returns.
pub fn skip_or_fail(test: &str, why: &str) {
    if in_ci() {
        panic!(
            "{test}: {why}. CI=true, so a missing tool is a failure: \
             run scripts/install-deps.sh (as root) to install it"
        );
    }
    eprintln!("SKIP {test}: {why} (run scripts/install-deps.sh as root to install it)");
}

/// The full path of `name` on PATH (or the standard sbin directories), if any.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    for extra in ["/usr/sbin", "/sbin", "/usr/local/sbin"] {
        dirs.push(PathBuf::from(extra));
    }
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Finds tool `name` for `test`; `None` (after a SKIP line) when it is absent
/// outside CI. Panics when it is absent under CI.
pub fn require(test: &str, name: &str, package: &str) -> Option<PathBuf> {
    let found = which(name);
    if found.is_none() {
        skip_or_fail(
            test,
            &format!("`{name}` not found (Debian package {package})"),
        );
    }
    found
}

/// What a finished (or killed) tool run produced.
#[derive(Debug)]
pub struct RunOutput {
    /// The exit status; `None` when the run was killed at the time limit.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
    pub timed_out: bool,
}

impl RunOutput {
    /// Exited by itself with status 0.
    pub fn success(&self) -> bool {
        self.status.map(|s| s.success()).unwrap_or(false)
    }

    /// Panics, with both outputs, unless the run succeeded; the output otherwise.
    pub fn assert_success(self, what: &str) -> RunOutput {
        assert!(self.success(), "{what} failed:\n{}", self.both());
        self
    }

    /// stdout and stderr, for a failure message.
    pub fn both(&self) -> String {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout, self.stderr
        )
    }

    /// The last `n` lines of stdout and stderr, for a failure message.
    pub fn tail(&self, n: usize) -> String {
        format!(
            "--- stdout (last {n} lines) ---\n{}\n--- stderr (last {n} lines) ---\n{}",
            tail_lines(&self.stdout, n),
            tail_lines(&self.stderr, n)
        )
    }
}

/// The last `n` lines of `s`.
pub fn tail_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs `cmd` with stdin closed, capturing its output; kills it after `limit`.
pub fn run(cmd: &mut Command, limit: Duration) -> RunOutput {
    let shown = format!("{cmd:?}");
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {shown}: {e}"));
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out_t = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_t = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if start.elapsed() >= limit => {
                timed_out = true;
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("waiting for {shown}: {e}"),
        }
    };
    // A grandchild that inherited the pipes could keep them open: don't wait forever.
    let stdout = join_with_limit(out_t, Duration::from_secs(5));
    let stderr = join_with_limit(err_t, Duration::from_secs(5));
    RunOutput {
        status,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        elapsed: start.elapsed(),
        timed_out,
    }
}

fn join_with_limit(t: thread::JoinHandle<Vec<u8>>, limit: Duration) -> Vec<u8> {
    let start = Instant::now();
    while !t.is_finished() && start.elapsed() < limit {
        thread::sleep(Duration::from_millis(10));
    }
    if t.is_finished() {
        t.join().unwrap_or_default()
    } else {
        b"<output still open after the process ended; not read>".to_vec()
    }
}

/// How long one qemu-img run over loopback may take: it bounds a hang, not the
/// speed (a 256 MiB image on a loaded 2-core box takes well under a minute).
pub const QEMU_LIMIT: Duration = Duration::from_secs(300);

/// A qemu-img that has QEMU's iSCSI block driver, and the module directory it needs.
#[derive(Debug, Clone)]
pub struct QemuImg {
    pub path: PathBuf,
    /// QEMU_MODULE_DIR to set, for a qemu-img unpacked beside the system one.
    pub module_dir: Option<PathBuf>,
}

impl QemuImg {
    /// A `Command` for this qemu-img, with its module directory set.
    pub fn command(&self) -> Command {
        let mut c = Command::new(&self.path);
        if let Some(d) = &self.module_dir {
            c.env("QEMU_MODULE_DIR", d);
        }
        c
    }

    /// `qemu-img convert -f raw -O raw ARGS...`, which must succeed (`what` says
    /// which copy it is, for the failure message).
    pub fn convert(&self, what: &str, args: &[&str]) -> RunOutput {
        run(
            self.command()
                .args(["convert", "-f", "raw", "-O", "raw"])
                .args(args),
            QEMU_LIMIT,
        )
        .assert_success(what)
    }

    /// `qemu-img compare` of the raw `image` with the raw volume at `url`, which
    /// must find them identical (past the shorter one, the rest must read zeros).
    pub fn assert_identical(&self, image: &str, url: &str) {
        let out = run(
            self.command()
                .args(["compare", "-f", "raw", "-F", "raw", image, url]),
            QEMU_LIMIT,
        )
        .assert_success(&format!("qemu-img compare with {url}"));
        assert!(out.both().contains("identical"), "{url}: {}", out.both());
    }

    /// Does this qemu-img load its iSCSI driver? Port 1 on loopback refuses the
    /// connection; a qemu-img with the driver says so in an "iSCSI: ..." error.
    fn has_iscsi(&self) -> bool {
        let out = run(
            self.command()
                .arg("info")
                .arg("iscsi://127.0.0.1:1/iqn.2000-01.invalid:probe/0"),
            Duration::from_secs(20),
        );
        out.stderr.contains("iSCSI:") || out.stdout.contains("iSCSI:")
    }
}

/// Finds a qemu-img with the iSCSI driver for `test`; `None` (after a SKIP line)
/// when there is none outside CI. Panics when there is none under CI.
pub fn require_qemu_img(test: &str) -> Option<QemuImg> {
    let q = qemu_img_with_iscsi();
    if q.is_none() {
        skip_or_fail(
            test,
            "no qemu-img with the iSCSI block driver (scripts/setup-qemu-iscsi.sh installs one)",
        );
    }
    q
}

/// Finds a qemu-img with the iSCSI driver: `$MOSAIC_QEMU_IMG`, then the one
/// `scripts/setup-qemu-iscsi.sh` unpacks into /opt/qemu72, then the one on PATH.
pub fn qemu_img_with_iscsi() -> Option<QemuImg> {
    let mut candidates = Vec::new();
    if let Some(p) = std::env::var_os("MOSAIC_QEMU_IMG") {
        let p = PathBuf::from(p);
        let module_dir = p
            .parent()
            .and_then(|bin| bin.parent())
            .map(|usr| usr.join("lib/x86_64-linux-gnu/qemu"))
            .filter(|d| d.is_dir());
        candidates.push(QemuImg {
            path: p,
            module_dir,
        });
    }
    candidates.push(QemuImg {
        path: PathBuf::from("/opt/qemu72/usr/bin/qemu-img"),
        module_dir: Some(PathBuf::from("/opt/qemu72/usr/lib/x86_64-linux-gnu/qemu")),
    });
    if let Some(p) = which("qemu-img") {
        candidates.push(QemuImg {
            path: p,
            module_dir: None,
        });
    }
    candidates
        .into_iter()
        .find(|q| is_executable(&q.path) && q.has_iscsi())
}
