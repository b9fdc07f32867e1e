//! 64 sessions at once against the real `mosaic` binary, each doing a mix of verified
//! 4 KiB reads and writes (and some 64 KiB ones, which need R2Ts) in its own region of
//! one volume, then reading its whole region back. No errors, no hang: every wait is
//! bounded and the whole run has a deadline.

use std::sync::{Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use mosaic_tests::initiator::Session;
use mosaic_tests::pattern::{self, Rng};
use mosaic_tests::server::{Mosaic, Volume};

const SESSIONS: usize = 64;
/// Each session's private region of the volume.
const REGION: usize = 1 << 20;
const BS: u32 = 512;
const OPS_PER_SESSION: usize = 150;
/// The whole run; on 2 cores with a release build it takes a few seconds.
const DEADLINE: Duration = Duration::from_secs(240);

fn run(test: &str, volume: Volume, digests: bool, sessions: usize) {
    let mut server = Mosaic::start(std::slice::from_ref(&volume));
    let start = Instant::now();
    let deadline = start + DEADLINE;
    let errors = Mutex::new(Vec::<String>::new());
    let logged_in = Barrier::new(sessions);
    let ops_done = std::sync::atomic::AtomicUsize::new(0);
    thread::scope(|scope| {
        for i in 0..sessions {
            let (server, errors, logged_in, ops_done) = (&server, &errors, &logged_in, &ops_done);
            let name = volume.name.clone();
            scope.spawn(move || {
                let fail = |msg: String| errors.lock().unwrap().push(format!("session {i}: {msg}"));
                let session = mosaic_tests::login(server, &name, |o| o.digests(digests, digests));
                // Everyone waits here, logged in or not, so all sessions are open at once.
                logged_in.wait();
                let mut s = match session {
                    Ok(s) => s,
                    Err(e) => return fail(format!("login: {e}")),
                };
                if let Err(e) = session_work(i, &mut s, deadline, ops_done) {
                    return fail(e);
                }
                if let Err(e) = s.logout() {
                    fail(format!("logout: {e}"));
                }
            });
        }
    });
    let elapsed = start.elapsed();
    let errors = errors.into_inner().unwrap();
    eprintln!(
        "{test}: {sessions} sessions, {} verified I/Os in {:.2}s, {} errors",
        ops_done.load(std::sync::atomic::Ordering::Relaxed),
        elapsed.as_secs_f64(),
        errors.len()
    );
    server.assert_alive("after the concurrent sessions");
    assert!(
        errors.is_empty(),
        "{} of {sessions} sessions failed; first ones:\n{}",
        errors.len(),
        errors
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// One session's I/O: random 4 KiB (sometimes 64 KiB) reads and writes inside its
/// region, checked against a shadow copy, then the whole region read back.
fn session_work(
    i: usize,
    s: &mut Session,
    deadline: Instant,
    ops_done: &std::sync::atomic::AtomicUsize,
) -> Result<(), String> {
    let base_lba = (i * REGION) as u64 / BS as u64;
    // A new volume reads as zeros; another target's LUN (MOSAIC_TEST_TARGET) may not.
    let mut shadow = vec![0u8; REGION];
    if std::env::var_os("MOSAIC_TEST_TARGET").is_some() {
        shadow = s
            .read(base_lba, (REGION / BS as usize) as u32, BS)
            .map_err(|e| format!("first READ of the region: {e}"))?;
    }
    let mut rng = Rng::new(0xc0c0 + i as u64);
    for op in 0..OPS_PER_SESSION {
        if Instant::now() > deadline {
            return Err(format!("deadline passed at op {op}"));
        }
        let len = if rng.below(10) == 0 {
            64 << 10
        } else {
            4 << 10
        };
        let off = rng.below((REGION / len) as u64) as usize * len;
        let lba = base_lba + (off / BS as usize) as u64;
        if rng.below(2) == 0 {
            let mut data = vec![0u8; len];
            rng.fill(&mut data);
            s.write(lba, &data, BS)
                .map_err(|e| format!("op {op}: WRITE {len} bytes at LBA {lba}: {e}"))?;
            shadow[off..off + len].copy_from_slice(&data);
        } else {
            let back = s
                .read(lba, (len / BS as usize) as u32, BS)
                .map_err(|e| format!("op {op}: READ {len} bytes at LBA {lba}: {e}"))?;
            if let Some(d) = pattern::first_difference(&shadow[off..off + len], &back) {
                return Err(format!("op {op}: READ {len} bytes at LBA {lba}: {d}"));
            }
        }
        ops_done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    let all = s
        .read(base_lba, (REGION / BS as usize) as u32, BS)
        .map_err(|e| format!("final READ of the region: {e}"))?;
    if let Some(d) = pattern::first_difference(&shadow, &all) {
        return Err(format!("final READ of the region: {d}"));
    }
    Ok(())
}

#[test]
fn sixty_four_sessions_mixed_verified_io() {
    run(
        "sixty_four_sessions_mixed_verified_io",
        Volume::memory("vol", "64M"),
        false,
        SESSIONS,
    );
}

#[test]
fn sixty_four_sessions_file_backed_with_digests() {
    run(
        "sixty_four_sessions_file_backed_with_digests",
        Volume::file("filevol", "64M"),
        true,
        SESSIONS,
    );
}
