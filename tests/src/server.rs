//! Starting and stopping the real `mosaic` binary for one test.
//!
//! [`Mosaic::start`] picks a free loopback port, starts `mosaic serve` with the given
//! volumes and a private data directory, and waits (bounded) until the port accepts
//! connections. Dropping the guard sends SIGTERM, waits, then SIGKILLs; if the test
//! is failing, the server's log tail is printed. The server also gets SIGKILL if the
//! test process dies first (PR_SET_PDEATHSIG), so no target outlives its test.
//!
//! Which binary: `$MOSAIC_BIN` if set (scripts/test.sh sets it to the release build).
//! Otherwise the tests first run `cargo build -p mosaic-target --bin mosaic` in their
//! own profile, so they never test a stale binary, and use
//! `build/<profile>/mosaic`.
//!
//! To run the same black-box tests against another target (e.g. tgt, for
//! comparison), set `MOSAIC_TEST_TARGET="HOST:PORT IQN LUN"`: no binary is started and
//! every volume name maps to that one LUN.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use crate::tools::tail_lines;

/// How long the binary may take from spawn to accepting connections. A debug build
/// creating a sparse file is well under a second; this leaves room for a loaded CI box.
pub const START_LIMIT: Duration = Duration::from_secs(30);
/// How long SIGTERM gets before SIGKILL.
pub const STOP_LIMIT: Duration = Duration::from_secs(10);
/// Attempts at a free port (another process may take the one we picked first).
const PORT_ATTEMPTS: usize = 5;

/// Where a volume keeps its blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing {
    Memory,
    File,
}

/// One `--volume` of the server.
#[derive(Debug, Clone)]
pub struct Volume {
    pub name: String,
    /// A size as the CLI takes it: `64M`, `1G`, or bytes.
    pub size: String,
    pub block: u32,
    pub backing: Backing,
}

impl Volume {
    /// A memory-backed volume with 512-byte blocks.
    pub fn memory(name: &str, size: &str) -> Volume {
        Volume {
            name: name.to_string(),
            size: size.to_string(),
            block: 512,
            backing: Backing::Memory,
        }
    }

    /// A file-backed volume (sparse file in the server's data dir), 512-byte blocks.
    pub fn file(name: &str, size: &str) -> Volume {
        Volume {
            backing: Backing::File,
            ..Volume::memory(name, size)
        }
    }

    /// The same volume with `block`-byte logical blocks.
    pub fn block(mut self, block: u32) -> Volume {
        self.block = block;
        self
    }

    fn arg(&self) -> String {
        let backing = match self.backing {
            Backing::Memory => "memory",
            Backing::File => "file",
        };
        format!(
            "name={},size={},block={},backing={backing}",
            self.name, self.size, self.block
        )
    }
}

/// How long building the binary on demand may take (a cold debug build on 2 cores).
const BUILD_LIMIT: Duration = Duration::from_secs(1200);

/// Locates the `mosaic` binary (see the module docs), building it first when
/// `MOSAIC_BIN` is not set.
pub fn mosaic_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("MOSAIC_BIN") {
            let p = PathBuf::from(p);
            assert!(p.is_file(), "MOSAIC_BIN={} does not exist", p.display());
            eprintln!("mosaic-tests: using MOSAIC_BIN={}", p.display());
            return p;
        }
        let root = workspace_root();
        // build/<profile>/deps/<test exe> -> build/<profile>
        let profile_dir = std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.parent()?.to_path_buf()));
        let release = profile_dir
            .as_deref()
            .and_then(|d| d.file_name())
            .is_some_and(|n| n == "release");
        build_mosaic(&root, release);
        let mut candidates = Vec::new();
        if let Some(d) = &profile_dir {
            candidates.push(d.join("mosaic"));
        }
        candidates.push(root.join("build/release/mosaic"));
        candidates.push(root.join("build/debug/mosaic"));
        let found = candidates
            .into_iter()
            .find(|p| p.is_file())
            .unwrap_or_else(|| {
                panic!(
                    "the `mosaic` binary is not built: run `cargo build -p mosaic-target` \
                 (or scripts/test.sh), or set MOSAIC_BIN"
                )
            });
        warn_if_stale(&found, &root);
        eprintln!("mosaic-tests: using {}", found.display());
        found
    })
}

/// `cargo build -p mosaic-target --bin mosaic` in the test's own profile, so the tests
/// never run a stale binary. (Cargo releases its build lock while tests run.)
fn build_mosaic(root: &Path, release: bool) {
    let Some(cargo) = std::env::var_os("CARGO")
        .map(PathBuf::from)
        .or_else(|| crate::tools::which("cargo"))
    else {
        eprintln!("mosaic-tests: no cargo to build mosaic with; using what is built");
        return;
    };
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-p", "mosaic-target", "--bin", "mosaic"])
        .current_dir(root);
    if release {
        cmd.arg("--release");
    }
    let out = crate::tools::run(&mut cmd, BUILD_LIMIT);
    assert!(
        out.success(),
        "building the mosaic binary failed (timed out: {}):\n{}",
        out.timed_out,
        out.tail(60)
    );
}

/// The workspace root (this crate lives in `<root>/tests`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Warns when a source file of the target is newer than the binary under test.
fn warn_if_stale(bin: &Path, root: &Path) {
    let Ok(built) = bin.metadata().and_then(|m| m.modified()) else {
        return;
    };
    let newest = ["target/src", "proto/src"]
        .iter()
        .filter_map(|d| newest_mtime(&root.join(d)))
        .max();
    if let Some(src) = newest {
        if src > built {
            eprintln!(
                "mosaic-tests: WARNING: {} is older than the sources in target/ or proto/; \
                 rebuild it (`cargo build -p mosaic-target`) to test the current code",
                bin.display()
            );
        }
    }
}

fn newest_mtime(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let p = entry.path();
        let t = if p.is_dir() {
            newest_mtime(&p)
        } else {
            entry.metadata().and_then(|m| m.modified()).ok()
        };
        newest = newest.max(t);
    }
    newest
}

/// The last line of `mosaic`'s start-up banners, printed once its portals are bound.
const BANNER_END: &str = "Stop with Ctrl-C.";

/// A free TCP port on 127.0.0.1 (free when asked; the caller retries on a clash).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// An external target named by `MOSAIC_TEST_TARGET="HOST:PORT IQN LUN"`.
#[derive(Debug, Clone)]
struct External {
    addr: SocketAddr,
    iqn: String,
    lun: u64,
}

fn external() -> Option<External> {
    let v = std::env::var("MOSAIC_TEST_TARGET").ok()?;
    let parts: Vec<&str> = v.split_whitespace().collect();
    match parts.as_slice() {
        [addr, iqn, lun] => Some(External {
            addr: addr.parse().expect("MOSAIC_TEST_TARGET: HOST:PORT"),
            iqn: iqn.to_string(),
            lun: lun.parse().expect("MOSAIC_TEST_TARGET: LUN"),
        }),
        _ => panic!("MOSAIC_TEST_TARGET must be \"HOST:PORT IQN LUN\", got {v:?}"),
    }
}

/// A running `mosaic serve`, stopped when dropped.
#[derive(Debug)]
pub struct Mosaic {
    child: Option<Child>,
    addr: SocketAddr,
    external: Option<External>,
    dir: tempfile::TempDir,
    args: Vec<String>,
}

impl Mosaic {
    /// Starts `mosaic serve` exporting `volumes`, and waits until it listens.
    pub fn start(volumes: &[Volume]) -> Mosaic {
        Mosaic::start_with(volumes, &[])
    }

    /// Like [`Mosaic::start`], with extra command-line arguments.
    pub fn start_with(volumes: &[Volume], extra: &[&str]) -> Mosaic {
        if let Some(ext) = external() {
            return Mosaic {
                child: None,
                addr: ext.addr,
                external: Some(ext),
                dir: new_dir(),
                args: Vec::new(),
            };
        }
        let log_level = std::env::var("MOSAIC_TEST_LOG").unwrap_or_else(|_| "info".into());
        Mosaic::launch_on_free_port(|addr| {
            let mut args = vec![
                "serve".to_string(),
                "--portal".into(),
                addr.to_string(),
                // Relative to the server's working directory, its private temp dir.
                "--data-dir".into(),
                "data".into(),
                "--log".into(),
                log_level.clone(),
            ];
            for v in volumes {
                args.push("--volume".into());
                args.push(v.arg());
            }
            args.extend(extra.iter().map(|s| s.to_string()));
            args
        })
    }

    /// Launches `mosaic` with the arguments `args_for(portal)` builds for a free
    /// 127.0.0.1 portal, picking another port when the chosen one was taken meanwhile.
    pub fn launch_on_free_port(args_for: impl Fn(SocketAddr) -> Vec<String>) -> Mosaic {
        Mosaic::launch_retrying(|| {
            let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
            (args_for(addr), addr, ())
        })
        .0
    }

    /// Launches `mosaic` with what `pick()` chooses: its arguments, the address to
    /// wait for, and what the caller keeps of the choice (its ports). Chooses again
    /// when `mosaic` says an address is in use (taken between choosing and binding).
    pub fn launch_retrying<T>(pick: impl Fn() -> (Vec<String>, SocketAddr, T)) -> (Mosaic, T) {
        let mut last_log = String::new();
        for attempt in 1..=PORT_ATTEMPTS {
            let (args, addr, chosen) = pick();
            match Mosaic::launch(&args, addr) {
                Ok(m) => return (m, chosen),
                Err(log) => {
                    let in_use = log.to_ascii_lowercase().contains("in use");
                    last_log = log;
                    if !in_use {
                        break;
                    }
                    eprintln!("mosaic-tests: a port was taken (attempt {attempt}), retrying");
                }
            }
        }
        panic!("mosaic did not start listening; its output:\n{last_log}");
    }

    /// Starts `mosaic ARGS...` in a fresh temp dir (its working directory) and waits
    /// until `addr` accepts connections. On failure, returns what it printed.
    pub fn launch(args: &[String], addr: SocketAddr) -> Result<Mosaic, String> {
        let dir = new_dir();
        let child = spawn(mosaic_bin(), args, dir.path());
        let mut m = Mosaic {
            child: Some(child),
            addr,
            external: None,
            dir,
            args: args.to_vec(),
        };
        match m.wait_listening() {
            Ok(()) => Ok(m),
            Err(log) => {
                m.stop();
                Err(log)
            }
        }
    }

    /// Runs `mosaic ARGS...` to completion (for arguments it must refuse), in a fresh
    /// temp dir, killing it after `limit`.
    pub fn run_to_exit(args: &[&str], limit: Duration) -> crate::tools::RunOutput {
        let dir = new_dir();
        let mut cmd = Command::new(mosaic_bin());
        cmd.args(args).current_dir(dir.path());
        die_with_parent(&mut cmd);
        crate::tools::run(&mut cmd, limit)
    }

    fn wait_listening(&mut self) -> Result<(), String> {
        let start = Instant::now();
        loop {
            // The banner is printed once every portal is bound: without it, whatever
            // answers on the port may be another test's server that won a port race.
            if self.banner_printed()
                && TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok()
                && self.is_alive()
            {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(format!(
                    "`mosaic {}` exited with {status} before listening\n{}",
                    self.args.join(" "),
                    self.log()
                ));
            }
            if start.elapsed() > START_LIMIT {
                return Err(format!(
                    "`mosaic {}` not listening on {} after {START_LIMIT:?}\n{}",
                    self.args.join(" "),
                    self.addr,
                    self.log()
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The portal address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `HOST:PORT` of the portal.
    pub fn portal(&self) -> String {
        self.addr.to_string()
    }

    /// The target name of `volume`.
    pub fn iqn(&self, volume: &str) -> String {
        match &self.external {
            Some(e) => e.iqn.clone(),
            None => crate::target_iqn(volume),
        }
    }

    /// The LUN every volume is exported as.
    pub fn lun(&self) -> u64 {
        self.external.as_ref().map(|e| e.lun).unwrap_or(0)
    }

    /// libiscsi's URL of `volume`'s LUN: `iscsi://HOST:PORT/IQN/LUN`.
    pub fn url(&self, volume: &str) -> String {
        format!("iscsi://{}/{}/{}", self.addr, self.iqn(volume), self.lun())
    }

    /// A scratch directory that lives as long as the server.
    pub fn scratch(&self) -> &Path {
        self.dir.path()
    }

    /// Is the process still running? (Always true for an external target.)
    pub fn is_alive(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => true,
        }
    }

    /// Panics, with the server's log, if the process has exited.
    pub fn assert_alive(&mut self, context: &str) {
        if !self.is_alive() {
            let status = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
                .map(|s| s.to_string())
                .unwrap_or_default();
            panic!(
                "mosaic is no longer running ({status}) {context}\n{}",
                self.log()
            );
        }
    }

    /// The server's stdout and stderr so far (the last 80 lines of each).
    /// Whether the server printed its start-up banner (after binding its portals).
    fn banner_printed(&self) -> bool {
        std::fs::read_to_string(self.dir.path().join("stdout.log"))
            .map(|s| s.contains(BANNER_END))
            .unwrap_or(false)
    }

    pub fn log(&self) -> String {
        let read = |n: &str| std::fs::read_to_string(self.dir.path().join(n)).unwrap_or_default();
        format!(
            "--- mosaic stdout (tail) ---\n{}\n--- mosaic stderr (tail) ---\n{}",
            tail_lines(&read("stdout.log"), 80),
            tail_lines(&read("stderr.log"), 80)
        )
    }

    /// Stops the server: SIGTERM, then SIGKILL after [`STOP_LIMIT`]. Returns whether it
    /// stopped by itself after SIGTERM.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        signal(child.id(), libc::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < STOP_LIMIT {
            if let Ok(Some(_)) = child.try_wait() {
                return true;
            }
            thread::sleep(Duration::from_millis(20));
        }
        eprintln!("mosaic-tests: mosaic ignored SIGTERM for {STOP_LIMIT:?}; killing it");
        let _ = child.kill();
        let _ = child.wait();
        false
    }
}

impl Drop for Mosaic {
    fn drop(&mut self) {
        if self.child.is_some() && thread::panicking() {
            eprintln!("mosaic-tests: the test failed; server log:\n{}", self.log());
        }
        self.stop();
    }
}

fn new_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("mosaic-test-")
        .tempdir()
        .expect("temp dir")
}

fn spawn(bin: &Path, args: &[String], dir: &Path) -> Child {
    let stdout = File::create(dir.join("stdout.log")).expect("stdout.log");
    let stderr = File::create(dir.join("stderr.log")).expect("stderr.log");
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
    die_with_parent(&mut cmd);
    cmd.spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()))
}

/// Asks the kernel to SIGKILL the child when the thread that spawned it goes away, so
/// a test process killed by a timeout leaves no target behind.
#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no memory of
    // the parent; it is the only call made between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Sends `sig` to process `pid` (one we started).
#[allow(unsafe_code)]
fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) with a pid of a child we spawned and have not yet reaped, so the
    // pid cannot have been reused.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// A TCP port free on every address of a `mosaic lab` with `nodes` nodes of `nics`
/// NICs (`127.0.i.j`), and one higher (each node's inter-node link).
pub fn lab_port(nodes: u32, nics: u8) -> u16 {
    'next: for _ in 0..50 {
        let port = free_port();
        if port == u16::MAX {
            continue;
        }
        for node in 1..=nodes {
            for nic in 1..=nics {
                for p in [port, port + 1] {
                    let a: SocketAddr = ([127, 0, node as u8, nic], p).into();
                    if TcpListener::bind(a).is_err() {
                        continue 'next;
                    }
                }
            }
        }
        return port;
    }
    panic!("no free port on the lab addresses");
}

/// One HTTP/1.1 GET over a plain TcpStream: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send request");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read response");
    let (head, body) = text.split_once("\r\n\r\n").expect("headers end");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("status line of {head:?}"));
    (status, body.to_string())
}
