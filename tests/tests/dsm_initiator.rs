//! The async initiator of `mosaic-dsm` against the real `mosaic` binary: login with
//! and without digests, CHAP one-way and mutual (and a wrong secret refused),
//! discovery, pipelined reads and writes over the CmdSN window with immediate,
//! unsolicited and R2T-solicited data, unit attentions reported to the caller, the
//! target's NOP-In pings answered, our keepalive noticing a dead link, a
//! dropped connection replaced by a reinstated session, and logout.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mosaic_dsm::conn::ConnTimers;
use mosaic_dsm::discovery;
use mosaic_dsm::login::{ChapConfig, LoginConfig};
use mosaic_dsm::scsi::Command;
use mosaic_dsm::session::{Session, SessionConfig};
use mosaic_dsm::Error;
use mosaic_tests::server::{Mosaic, Volume};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BLOCK: u32 = 512;
/// Where the keepalive test writes: away from the other test's extents, for runs
/// against one shared external LUN (MOSAIC_TEST_TARGET).
const KA_LBA: u64 = 120_000;

fn external() -> bool {
    std::env::var_os("MOSAIC_TEST_TARGET").is_some()
}

fn config(server: &Mosaic, volume: &str, tweak: impl FnOnce(&mut LoginConfig)) -> SessionConfig {
    let mut login = LoginConfig::normal(&server.iqn(volume));
    login.timeout = Duration::from_secs(20);
    tweak(&mut login);
    let mut cfg = SessionConfig::new(login);
    cfg.lun = server.lun();
    cfg.timers = ConnTimers {
        command_timeout: Duration::from_secs(30),
        nop_interval: Duration::from_secs(2),
        nop_timeout: Duration::from_secs(10),
    };
    cfg
}

/// A block that names its LBA and a round, so a misplaced or stale block shows.
fn stamp(lba: u64, round: u64, blocks: u32) -> Bytes {
    Bytes::from(mosaic_tests::pattern::stamped(lba, round, blocks, BLOCK))
}

/// Writes then reads back `n` extents of `blocks` blocks, all in flight together.
async fn pipelined_roundtrip(s: &Arc<Session>, n: u64, blocks: u32, round: u64) {
    let mut tasks = Vec::new();
    for i in 0..n {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let lba = i * u64::from(blocks);
            s.write(lba, stamp(lba, round, blocks), BLOCK).await
        }));
    }
    for t in tasks {
        t.await.expect("task").expect("write");
    }
    let mut tasks = Vec::new();
    for i in 0..n {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let lba = i * u64::from(blocks);
            let got = s.read(lba, blocks, BLOCK).await?;
            Ok::<_, Error>((lba, got))
        }));
    }
    for t in tasks {
        let (lba, got) = t.await.expect("task").expect("read");
        let want = stamp(lba, round, blocks);
        let first = got.iter().zip(want.iter()).position(|(a, b)| a != b);
        assert!(
            got == want,
            "extent at LBA {lba} differs (round {round}): {} bytes, first difference at {first:?}",
            got.len()
        );
    }
}

/// The target's CmdSN window in the I/O test: far fewer than the commands the
/// test keeps in flight.
const SMALL_WINDOW: &str = "[limits]\nqueue_depth = 4\n";

#[test]
fn login_io_digests_window_reconnect_and_logout() {
    let dir = tempfile::tempdir().expect("temp dir");
    let conf = dir.path().join("window.toml");
    std::fs::write(&conf, SMALL_WINDOW).expect("write config");
    let server = Mosaic::start_with(
        &[Volume::memory("dsm", "64M")],
        &["--config", conf.to_str().expect("utf-8")],
    );
    let rt = mosaic_tests::tokio_runtime();
    rt.block_on(async {
        // Plain login; the first command may report the new nexus's unit
        // attention, which the caller sees as such.
        let s = Arc::new(
            Session::login(server.addr(), config(&server, "dsm", |_| {}))
                .await
                .expect("login"),
        );
        let o = s.execute(&Command::test_unit_ready()).await.expect("TUR");
        if o.status != 0 {
            let ua = o
                .unit_attention()
                .expect("a non-GOOD first TUR is a unit attention");
            eprintln!("first command reported {ua}");
            let o = s.execute(&Command::test_unit_ready()).await.expect("TUR");
            assert_eq!(o.status, 0, "the unit attention was reported once");
        }
        let (blocks, bs) = s.capacity().await.expect("capacity");
        assert_eq!(bs, BLOCK);
        if !external() {
            assert_eq!(blocks, 64 << 20 >> 9);
        }
        // 64 commands of 64 KiB in flight against a CmdSN window of 4: commands
        // wait for it (a command outside the window would be dropped by the
        // target and time out); 64 KiB is past FirstBurstLength with
        // ImmediateData and InitialR2T=No (unsolicited Data-Out, then R2T).
        pipelined_roundtrip(&s, 64, 128, 1).await;
        if !external() {
            assert!(
                s.window_waits() > 0,
                "64 commands in flight against a window of 4 never waited"
            );
        }
        // Bigger than MaxBurstLength: several R2Ts per command.
        pipelined_roundtrip(&s, 4, 2048, 2).await;
        s.ping().await.expect("ping");
        // A dead connection: the next command logs in again with the same ISID
        // and the session is reinstated; nothing written is lost.
        let tsih = s.tsih();
        s.drop_connection().await;
        let got = s.read(0, 128, BLOCK).await.expect("read after reconnect");
        assert!(got == stamp(0, 2, 128), "round 2 wrote LBA 0 last");
        assert_eq!(s.reconnects(), 1);
        eprintln!("TSIH {tsih:#x} -> {:#x} after reinstatement", s.tsih());
        // Commands in flight when the connection dies are replayed.
        let s2 = s.clone();
        let dropper = tokio::spawn(async move {
            tokio::task::yield_now().await;
            s2.drop_connection().await;
        });
        pipelined_roundtrip(&s, 32, 128, 3).await;
        dropper.await.expect("dropper");
        assert!(s.reconnects() >= 1);
        s.logout().await.expect("logout");
        assert!(matches!(
            s.execute(&Command::test_unit_ready()).await,
            Err(Error::SessionClosed)
        ));

        // Header and data digests, R2T only (no immediate data, InitialR2T=Yes).
        let s = Arc::new(
            Session::login(
                server.addr(),
                config(&server, "dsm", |l| {
                    l.header_digest = true;
                    l.data_digest = true;
                    l.immediate_data = false;
                    l.initial_r2t = true;
                    l.max_recv_data_segment_length = 8192;
                }),
            )
            .await
            .expect("login with digests"),
        );
        let p = s.params();
        if !external() {
            // (tgt, as tgt-up.sh sets it up, answers None.)
            assert!(
                p.header_digest && p.data_digest,
                "digests negotiated: {p:?}"
            );
        }
        assert!(!p.immediate_data && p.initial_r2t);
        let _ = s.execute(&Command::test_unit_ready()).await.expect("TUR");
        pipelined_roundtrip(&s, 16, 256, 4).await;
        s.logout().await.expect("logout");
    });
}

#[test]
fn discovery_lists_the_targets() {
    if external() {
        return;
    }
    let server = Mosaic::start(&[Volume::memory("d1", "8M"), Volume::memory("d2", "8M")]);
    let rt = mosaic_tests::tokio_runtime();
    rt.block_on(async {
        let targets = discovery::send_targets(
            server.addr(),
            &LoginConfig::discovery(),
            ConnTimers::default(),
        )
        .await
        .expect("SendTargets");
        let names: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
        for v in ["d1", "d2"] {
            let iqn = server.iqn(v);
            let t = targets
                .iter()
                .find(|t| t.name == iqn)
                .unwrap_or_else(|| panic!("{iqn} missing from {names:?}"));
            assert!(t.portals.iter().any(|p| p.addr == server.addr()));
        }
    });
}

const CHAP_CONFIG: &str = r#"
[[volumes]]
name = "oneway"
size = "8M"
backing = "memory"
chap = { user = "alice", secret = "alice-secret-12" }

[[volumes]]
name = "mutual"
size = "8M"
backing = "memory"
chap = { user = "bob", secret = "bob-secret-1234", mutual_user = "tgt", mutual_secret = "target-secret-1" }
"#;

#[test]
fn chap_one_way_and_mutual() {
    if external() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("chap.toml");
    std::fs::write(&path, CHAP_CONFIG).expect("write config");
    let server = Mosaic::start_with(&[], &["--config", path.to_str().expect("utf-8")]);
    let rt = mosaic_tests::tokio_runtime();
    rt.block_on(async {
        let chap = |user: &str, secret: &str, mutual: Option<(&str, &str)>| {
            Some(ChapConfig {
                user: user.into(),
                secret: secret.into(),
                mutual: mutual.map(|(u, s)| (u.into(), s.into())),
            })
        };
        // One-way CHAP.
        let s = Session::login(
            server.addr(),
            config(&server, "oneway", |l| {
                l.chap = chap("alice", "alice-secret-12", None)
            }),
        )
        .await
        .expect("one-way CHAP login");
        assert_eq!(s.params().auth_method, "CHAP");
        s.execute_past_ua(&Command::test_unit_ready(), 2)
            .await
            .expect("TUR");
        s.logout().await.expect("logout");
        // A wrong secret: authentication failure (02/01).
        let e = Session::login(
            server.addr(),
            config(&server, "oneway", |l| {
                l.chap = chap("alice", "wrong-secret-00", None)
            }),
        )
        .await
        .expect_err("wrong secret");
        assert!(
            matches!(
                e,
                Error::LoginFailed {
                    class: 2,
                    detail: 1,
                    ..
                }
            ),
            "{e}"
        );
        // No CHAP at all where it is required.
        let e = Session::login(server.addr(), config(&server, "oneway", |_| {}))
            .await
            .expect_err("no CHAP");
        assert!(matches!(e, Error::LoginFailed { class: 2, .. }), "{e}");
        // Mutual CHAP: the target proves itself.
        let s = Session::login(
            server.addr(),
            config(&server, "mutual", |l| {
                l.chap = chap("bob", "bob-secret-1234", Some(("tgt", "target-secret-1")))
            }),
        )
        .await
        .expect("mutual CHAP login");
        s.write(0, stamp(0, 9, 8), BLOCK).await.ok();
        s.logout().await.expect("logout");
        // Mutual CHAP with the wrong target secret on our side: we refuse the target.
        let e = Session::login(
            server.addr(),
            config(&server, "mutual", |l| {
                l.chap = chap("bob", "bob-secret-1234", Some(("tgt", "not-the-secret")))
            }),
        )
        .await
        .expect_err("the target's proof must not match");
        assert!(matches!(e, Error::Auth(_)), "{e}");
    });
}

/// A TCP relay to `to` that can be frozen: while frozen, bytes already accepted
/// are held back in both directions, as on a dead link (new connections still
/// pass once it thaws).
async fn freezable_proxy(to: SocketAddr, frozen: Arc<AtomicBool>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let addr = l.local_addr().expect("proxy addr");
    tokio::spawn(async move {
        while let Ok((client, _)) = l.accept().await {
            let Ok(server) = TcpStream::connect(to).await else {
                continue;
            };
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            for (mut r, mut w) in [(cr, sw), (sr, cw)].map(|(r, w)| (r, w)) {
                let frozen = frozen.clone();
                // A connection born frozen stays usable; only a link frozen
                // after it was made goes dead.
                let born_frozen = frozen.load(Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match r.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if !born_frozen && frozen.load(Ordering::SeqCst) {
                            // Swallow everything from now on: a black hole.
                            continue;
                        }
                        if w.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        }
    });
    addr
}

#[test]
fn unanswered_pings_declare_the_connection_dead_and_the_session_comes_back() {
    let server = Mosaic::start(&[Volume::memory("ka", "64M")]);
    let rt = mosaic_tests::tokio_runtime();
    rt.block_on(async {
        let frozen = Arc::new(AtomicBool::new(false));
        let proxy = freezable_proxy(server.addr(), frozen.clone()).await;
        let mut cfg = config(&server, "ka", |_| {});
        cfg.timers = ConnTimers {
            command_timeout: Duration::from_secs(30),
            nop_interval: Duration::from_millis(300),
            nop_timeout: Duration::from_millis(500),
        };
        let s = Session::login(proxy, cfg)
            .await
            .expect("login through the proxy");
        s.execute_past_ua(&Command::test_unit_ready(), 2)
            .await
            .expect("TUR");
        s.write(KA_LBA, stamp(KA_LBA, 7, 8), BLOCK)
            .await
            .expect("write");
        // The link goes dead: nothing more arrives, the keepalive's ping is not
        // answered, and the connection is declared dead without any command.
        frozen.store(true, Ordering::SeqCst);
        let limit = Instant::now() + Duration::from_secs(30);
        let why = loop {
            if let Some(why) = s.connection_dead() {
                break why;
            }
            assert!(Instant::now() < limit, "the dead link was never noticed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(why.contains("keepalive"), "{why}");
        // New connections pass: the next command reinstates the session.
        let got = s
            .read(KA_LBA, 8, BLOCK)
            .await
            .expect("read after the link died");
        assert!(got == stamp(KA_LBA, 7, 8));
        assert_eq!(s.reconnects(), 1);
        s.logout().await.expect("logout");
    });
}

#[test]
fn the_targets_pings_are_answered() {
    if external() {
        return;
    }
    // The target pings after 1 s of silence and drops a connection that does not
    // answer within 1 s; our own keepalive is off, so only its pings flow.
    let server = Mosaic::start_with(
        &[Volume::memory("np", "8M")],
        &["--nop-interval", "1", "--nop-timeout", "1"],
    );
    let rt = mosaic_tests::tokio_runtime();
    rt.block_on(async {
        let mut cfg = config(&server, "np", |_| {});
        cfg.timers.nop_interval = Duration::ZERO;
        let s = Session::login(server.addr(), cfg).await.expect("login");
        s.execute_past_ua(&Command::test_unit_ready(), 2)
            .await
            .expect("TUR");
        // Three intervals of silence: at least two pings, each answered.
        tokio::time::sleep(Duration::from_millis(3500)).await;
        assert_eq!(
            s.connection_dead(),
            None,
            "the target dropped the connection"
        );
        s.execute_past_ua(&Command::test_unit_ready(), 2)
            .await
            .expect("TUR after the pings");
        assert_eq!(s.reconnects(), 0);
        s.logout().await.expect("logout");
    });
}
