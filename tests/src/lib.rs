//! Shared helpers for the black-box tests in `tests/tests/`.
//!
//! Every test there starts the real `mosaic` binary on its own loopback port
//! ([`server::Mosaic`]), drives it with a real client (libiscsi's tools, qemu-img, or
//! the small blocking initiator in [`initiator`]) and stops it when the guard drops.
//!
//! - [`server`]: find the `mosaic` binary, start it on a free port, wait until it
//!   listens, stop it (SIGTERM, then SIGKILL) when the guard drops.
//! - [`lab`]: start a `mosaic lab` cluster on free ports, run `mosaic` client
//!   commands against its admin endpoint, parse `mosaic routing show`.
//! - [`tools`]: find external tools (skip outside CI when one is absent, fail in CI),
//!   run them with a time limit.
//! - [`cunit`]: read the CUnit output of libiscsi's `iscsi-test-cu`.
//! - [`initiator`]: a tiny blocking iSCSI initiator over `mosaic_proto`, for the
//!   hostile-input, digest and concurrency tests.
//! - [`pattern`]: deterministic test data.

pub mod cunit;
pub mod initiator;
pub mod lab;
pub mod pattern;
pub mod server;
pub mod tools;

/// The prefix of every target name the `mosaic` binary exports (one target per volume).
pub const IQN_PREFIX: &str = "iqn.2026-11.io.mosaic:";

/// The target name of volume `volume`.
pub fn target_iqn(volume: &str) -> String {
    format!("{IQN_PREFIX}{volume}")
}

/// A runtime for the tests that drive `mosaic-dsm` (async): two workers, like the
/// machine the tests run on.
pub fn tokio_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// `true`, after a line saying so, when the tests run against another target
/// (`MOSAIC_TEST_TARGET`, see [`server`]): `test` needs what only the `mosaic`
/// binary has (a lab cluster, its admin endpoint), so it does not apply there.
pub fn skip_against_external_target(test: &str) -> bool {
    let external = std::env::var_os("MOSAIC_TEST_TARGET").is_some();
    if external {
        eprintln!("{test}: skipped against an external target (needs the mosaic binary)");
    }
    external
}

/// Logs in to `volume` on `server` (its LUN set) with `opts` made for that target.
pub fn login(
    server: &server::Mosaic,
    volume: &str,
    tweak: impl FnOnce(initiator::LoginOptions) -> initiator::LoginOptions,
) -> initiator::Result<initiator::Session> {
    let opts = tweak(initiator::LoginOptions::new(&server.iqn(volume)));
    let mut s = initiator::Session::login(server.addr(), &opts)?;
    s.lun = server.lun();
    Ok(s)
}
