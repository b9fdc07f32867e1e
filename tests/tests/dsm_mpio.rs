//! The multipath disk of `mosaic-dsm` on the lab cluster (`mosaic lab`, three
//! nodes, two NICs each): discovery at the group portal finds all six paths, VPD
//! 0x83 groups them as one logical unit, routing-aware sends every byte to its
//! owner's paths (round-robin does not), a volume resize raises the unit attention
//! 2Ah/06h on every nexus and the disk fetches the table again and goes on, page
//! moves through the admin endpoint send the pages' I/O to their new owners, and
//! every block reads back as written throughout. A second test puts two paths to
//! one `mosaic serve` behind relays, takes one down (its I/O fails over) and
//! brings it back (it is reinstated after the retry interval).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use mosaic_dsm::conn::ConnTimers;
use mosaic_dsm::login::LoginConfig;
use mosaic_dsm::mpio::{MpioConfig, MpioDisk};
use mosaic_dsm::selector::{Policy, SelectorKind};
use mosaic_dsm::session::SessionConfig;
use mosaic_tests::lab::{Lab, LabOptions, NICS, NODES};
use mosaic_tests::server::{Mosaic, Volume};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PAGE: u64 = 1 << 20;

fn start_lab() -> Lab {
    LabOptions::new()
        .page_size("1M")
        .volume("name=lv,size=64M,backing=memory")
        .start()
}

/// `blocks` blocks from `lba` that name their LBA and `generation`.
fn block(lba: u64, generation: u64, blocks: u32, bs: u32) -> Bytes {
    Bytes::from(mosaic_tests::pattern::stamped(lba, generation, blocks, bs))
}

/// Extents of 192 KiB at page-straddling offsets, each written then read back.
async fn write_read_all(disk: &MpioDisk, generation: u64) {
    let bs = disk.block_size();
    let blocks = (192 * 1024) / bs;
    let page_blocks = PAGE / u64::from(bs);
    for i in 0..24u64 {
        // 64 KiB before a page boundary: every extent crosses one.
        let lba = (i + 1) * page_blocks - u64::from(65_536 / bs);
        disk.write(lba, block(lba, generation, blocks, bs))
            .await
            .unwrap_or_else(|e| panic!("write at {lba}: {e}"));
        let got = disk
            .read(lba, blocks)
            .await
            .unwrap_or_else(|e| panic!("read at {lba}: {e}"));
        assert!(
            got == block(lba, generation, blocks, bs),
            "extent at LBA {lba} (generation {generation}) reads back different"
        );
    }
}

#[test]
fn multipath_routing_aware_on_the_lab_cluster() {
    if mosaic_tests::skip_against_external_target("multipath_routing_aware_on_the_lab_cluster") {
        return;
    }
    let lab = start_lab();
    let (group, admin) = (lab.group, lab.admin);
    let rt = mosaic_tests::tokio_runtime();
    rt.block_on(async {
        let mut session = SessionConfig::new(LoginConfig::normal("unused"));
        session.timers = ConnTimers {
            command_timeout: Duration::from_secs(30),
            nop_interval: Duration::from_secs(5),
            nop_timeout: Duration::from_secs(10),
        };
        let mut cfg = MpioConfig::new(
            group,
            "lv",
            session,
            Policy::RoutingAware {
                fallback: SelectorKind::QueueLength,
            },
        );
        cfg.group = "dsm-test:lv".into();
        let disk = MpioDisk::open(&cfg).await.expect("open the multipath disk");
        assert_eq!(disk.paths().len(), (NODES * u32::from(NICS)) as usize);
        let mut nodes: Vec<u32> = (0..disk.paths().len())
            .filter_map(|p| disk.path_node(p))
            .collect();
        nodes.sort();
        nodes.dedup();
        assert_eq!(nodes, vec![1, 2, 3], "every node has paths");
        let table = disk.table().expect("the lab serves a routing table");
        assert_eq!(table.nodes.len(), NODES as usize);
        let epoch = table.epoch;

        write_read_all(&disk, 1).await;
        let st = disk.stats();
        assert_eq!(
            st.owner_share(),
            Some(1.0),
            "routing-aware: every byte to its owner ({st:?})"
        );
        assert!(st.pieces > 48, "extents were split at page boundaries");

        // Round-robin, one I/O at a time: most bytes land on other nodes.
        disk.set_policy(Policy::Classic(SelectorKind::RoundRobin));
        write_read_all(&disk, 2).await;
        let rr = disk.stats().owner_share().expect("bytes moved");
        assert!(rr < 0.9, "round-robin owner share {rr}");

        // Grow the volume: every nexus gets 2Ah/06h, the table is fetched again.
        disk.set_policy(Policy::RoutingAware {
            fallback: SelectorKind::RoundRobin,
        });
        let fetches = disk.stats().table_fetches;
        lab.cli_ok(&["volume", "resize", "--size", "96M", "lv"]);
        write_read_all(&disk, 3).await;
        let st = disk.stats();
        assert!(st.routing_attentions >= 1, "2Ah/06h seen: {st:?}");
        assert!(st.table_fetches > fetches, "table fetched again: {st:?}");
        let t = disk.table().expect("table");
        assert!(t.epoch > epoch, "newer epoch {:?} > {:?}", t.epoch, epoch);
        assert_eq!(t.blocks * u64::from(t.block_size), 96 << 20);
        assert_eq!(st.owner_share(), Some(1.0), "{st:?}");

        // Move the pages the extents touch to other nodes (the admin endpoint's
        // page move, as `mosaic routing move` does): the next commands see
        // 2Ah/06h, the disk follows the new owners, and nothing is lost.
        let before = disk.stats();
        let t = disk.table().expect("table");
        let moved: Vec<(u64, u32)> = (0..4u64)
            .map(|page| {
                let owner = t
                    .owner_id(page * u64::from(t.page_blocks))
                    .expect("owner")
                    .0;
                (page, owner % NODES + 1)
            })
            .collect();
        for (page, to) in &moved {
            mosaic_dsm::admin::move_pages(admin, "lv", *page, *page, *to)
                .await
                .unwrap_or_else(|e| panic!("move page {page} to node {to}: {e}"));
        }
        write_read_all(&disk, 4).await;
        let st = disk.stats();
        assert!(
            st.routing_attentions > before.routing_attentions,
            "2Ah/06h after the moves: {st:?}"
        );
        let t = disk.table().expect("table");
        for (page, to) in &moved {
            assert_eq!(
                t.owner_id(page * u64::from(t.page_blocks)).map(|n| n.0),
                Some(*to),
                "page {page} now belongs to node {to}"
            );
        }
        assert_eq!(st.owner_share(), Some(1.0), "{st:?}");
        disk.close().await;
    });
    drop(lab);
}

/// A TCP relay to `to` with an off switch: while off, it closes the connections
/// it carries at their next byte and refuses new ones (a path whose link is down).
async fn switchable_proxy(to: SocketAddr, down: Arc<AtomicBool>) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind proxy");
    let addr = l.local_addr().expect("proxy address");
    tokio::spawn(async move {
        while let Ok((client, _)) = l.accept().await {
            if down.load(Ordering::SeqCst) {
                drop(client);
                continue;
            }
            let Ok(server) = tokio::net::TcpStream::connect(to).await else {
                continue;
            };
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            fn relay(
                mut r: tokio::net::tcp::OwnedReadHalf,
                mut w: tokio::net::tcp::OwnedWriteHalf,
                down: Arc<AtomicBool>,
            ) {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        match r.read(&mut buf).await {
                            Ok(n) if n > 0 && !down.load(Ordering::SeqCst) => {
                                if w.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                            _ => {
                                let _ = w.shutdown().await;
                                return;
                            }
                        }
                    }
                });
            }
            relay(cr, sw, down.clone());
            relay(sr, cw, down.clone());
        }
    });
    addr
}

#[test]
fn a_failed_path_is_avoided_then_reinstated() {
    if mosaic_tests::skip_against_external_target("a_failed_path_is_avoided_then_reinstated") {
        return;
    }
    let server = Mosaic::start(&[Volume::memory("fo", "16M")]);
    let rt = mosaic_tests::tokio_runtime();
    rt.block_on(async {
        let a_down = Arc::new(AtomicBool::new(false));
        let a = switchable_proxy(server.addr(), a_down.clone()).await;
        let b = switchable_proxy(server.addr(), Arc::new(AtomicBool::new(false))).await;
        let mut session = SessionConfig::new(LoginConfig::normal("unused"));
        session.reconnect_attempts = 1;
        session.reconnect_delay = Duration::from_millis(50);
        session.timers = ConnTimers {
            command_timeout: Duration::from_secs(20),
            nop_interval: Duration::from_secs(5),
            nop_timeout: Duration::from_secs(5),
        };
        let mut cfg = MpioConfig::new(
            server.addr(),
            &server.iqn("fo"),
            session,
            Policy::Classic(SelectorKind::RoundRobin),
        );
        cfg.portals = vec![a, b];
        cfg.path_retry = Duration::from_millis(300);
        let disk = MpioDisk::open(&cfg)
            .await
            .expect("open through two proxies");
        assert_eq!(disk.paths().len(), 2, "two paths, one logical unit");
        let bs = disk.block_size();
        let cycle = |generation: u64| {
            let disk = &disk;
            async move {
                for i in 0..8u64 {
                    let lba = i * 64;
                    disk.write(lba, block(lba, generation, 16, bs))
                        .await
                        .unwrap_or_else(|e| panic!("write at {lba}: {e}"));
                    let got = disk.read(lba, 16).await.expect("read");
                    assert!(got == block(lba, generation, 16, bs), "LBA {lba} differs");
                }
            }
        };
        cycle(1).await;
        // Paths are ordered by portal: find A's.
        let pa = disk
            .paths()
            .iter()
            .position(|p| p.portal.addr == a)
            .expect("path through A");
        let pb = 1 - pa;
        let ios = |p: usize| disk.stats().per_path[p].2;
        assert!(ios(pa) > 0 && ios(pb) > 0, "round-robin uses both paths");

        // Path A's link goes down: its I/O fails over to B, nothing is lost.
        a_down.store(true, Ordering::SeqCst);
        cycle(2).await;
        let st = disk.stats();
        assert!(st.path_failures >= 1, "{st:?}");
        assert!(disk.paths()[pa].failed());
        assert!(!disk.paths()[pb].failed());
        assert_eq!(st.per_path.len(), 2);

        // Back up: after the retry interval the path is tried, logs in again and
        // carries I/O.
        a_down.store(false, Ordering::SeqCst);
        let before = ios(pa);
        let limit = std::time::Instant::now() + Duration::from_secs(30);
        let mut generation = 3;
        while ios(pa) == before {
            assert!(std::time::Instant::now() < limit, "path A never came back");
            cycle(generation).await;
            generation += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(!disk.paths()[pa].failed());
        assert!(disk.paths()[pa].session.reconnects() >= 1);
        disk.close().await;
    });
}
