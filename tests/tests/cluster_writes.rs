//! Writes through several nodes of a `mosaic lab` at once are ordered at each page's
//! primary:
//!
//! - COMPARE AND WRITE is atomic against every write through any node: counters
//!   bumped by compare-and-swap loops through three nodes at once lose no update.
//! - Concurrent overlapping writes through different nodes leave the primary's and
//!   the replica's copy of every page identical (each page's writes are applied in
//!   one order everywhere), checked in the nodes' backing files after a clean stop.

use std::net::SocketAddr;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use mosaic_tests::initiator::{self, LoginOptions, Session};
use mosaic_tests::server::{lab_port, Mosaic};

const NODES: u32 = 3;
const NICS: u8 = 2;
const BLOCK: usize = 512;
/// 1 MiB pages, so a 16 MiB volume has 16 pages over the three nodes.
const PAGE: u64 = 1 << 20;
const VOLUME_BYTES: u64 = 16 << 20;
const IQN: &str = "iqn.2026-11.io.mosaic:cw";
/// Whole loops are bounded by this, whatever happens.
const LIMIT: Duration = Duration::from_secs(120);

fn start_lab(data_dir: &Path) -> (Mosaic, u16) {
    let port = lab_port(NODES, NICS);
    let group: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free group port");
    let args: Vec<String> = [
        "lab",
        "--port",
        &port.to_string(),
        "--group-portal",
        &group.to_string(),
        "--page-size",
        "1M",
        "--data-dir",
        &data_dir.display().to_string(),
        "--volume",
        &format!("name=cw,size={VOLUME_BYTES},backing=file"),
        "--log",
        "info",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let lab =
        Mosaic::launch(&args, group).unwrap_or_else(|log| panic!("lab did not start:\n{log}"));
    (lab, port)
}

fn node_portal(node: u32, port: u16) -> SocketAddr {
    ([127, 0, node as u8, 1], port).into()
}

fn login(addr: SocketAddr) -> Session {
    let mut opts = LoginOptions::new(IQN);
    opts.isid = initiator::fresh_isid();
    let mut s = Session::login(addr, &opts).expect("login");
    s.lun = 0;
    let _ = s.test_unit_ready();
    s
}

fn read_block(s: &mut Session, lba: u64) -> Vec<u8> {
    let mut cdb = [0u8; 16];
    cdb[0] = 0x88;
    cdb[2..10].copy_from_slice(&lba.to_be_bytes());
    cdb[13] = 1;
    let r = s.command(&cdb, &[], BLOCK as u32).expect("READ(16)");
    assert_eq!(r.status, initiator::GOOD, "READ(16) at {lba}");
    r.data
}

fn write_blocks(s: &mut Session, lba: u64, data: &[u8]) {
    let mut cdb = [0u8; 16];
    cdb[0] = 0x8a;
    cdb[2..10].copy_from_slice(&lba.to_be_bytes());
    cdb[10..14].copy_from_slice(&((data.len() / BLOCK) as u32).to_be_bytes());
    let r = s.command(&cdb, data, 0).expect("WRITE(16)");
    assert_eq!(r.status, initiator::GOOD, "WRITE(16) at {lba}");
}

/// COMPARE AND WRITE of one block: `true` when it wrote, `false` on MISCOMPARE.
fn compare_and_write(s: &mut Session, lba: u64, old: &[u8], new: &[u8]) -> bool {
    let mut cdb = [0u8; 16];
    cdb[0] = 0x89;
    cdb[2..10].copy_from_slice(&lba.to_be_bytes());
    cdb[13] = 1;
    let data = [old, new].concat();
    let r = s.command(&cdb, &data, 0).expect("COMPARE AND WRITE");
    if r.status == initiator::GOOD {
        return true;
    }
    assert_eq!(
        r.sense_key().map(|(k, _, _)| k),
        Some(0x0e),
        "COMPARE AND WRITE: only MISCOMPARE may refuse (sense {:x?})",
        r.sense_key()
    );
    false
}

fn counter_block(n: u64) -> Vec<u8> {
    let mut b = vec![0xc5; BLOCK];
    b[..8].copy_from_slice(&n.to_be_bytes());
    b
}

#[test]
fn compare_and_write_through_three_nodes_loses_no_update() {
    if std::env::var_os("MOSAIC_TEST_TARGET").is_some() {
        eprintln!("cluster write test: needs a lab; skipped for an external target");
        return;
    }
    let data = tempfile::tempdir().expect("temp dir");
    let (mut lab, port) = start_lab(data.path());
    // One counter on a page boundary's neighbour in each of three pages, so the
    // counters' primaries differ; every node bumps every counter.
    let counters: Vec<u64> = (0..3u64)
        .map(|p| (p * 5 + 1) * PAGE / BLOCK as u64)
        .collect();
    let mut setup = login(node_portal(1, port));
    for &lba in &counters {
        write_blocks(&mut setup, lba, &counter_block(0));
    }
    drop(setup);
    const BUMPS: u64 = 40;
    let start = Instant::now();
    let workers: Vec<_> = (1..=NODES)
        .map(|node| {
            let counters = counters.clone();
            thread::spawn(move || {
                let mut s = login(node_portal(node, port));
                let mut misses = 0u64;
                for &lba in &counters {
                    let mut done = 0;
                    while done < BUMPS {
                        assert!(start.elapsed() < LIMIT, "compare-and-swap loop too slow");
                        let cur = read_block(&mut s, lba);
                        let n = u64::from_be_bytes(cur[..8].try_into().expect("8 bytes"));
                        if compare_and_write(&mut s, lba, &cur, &counter_block(n + 1)) {
                            done += 1;
                        } else {
                            misses += 1;
                        }
                    }
                }
                misses
            })
        })
        .collect();
    let misses: u64 = workers.into_iter().map(|w| w.join().expect("worker")).sum();
    let mut check = login(node_portal(2, port));
    for &lba in &counters {
        let b = read_block(&mut check, lba);
        let n = u64::from_be_bytes(b[..8].try_into().expect("8 bytes"));
        assert_eq!(
            n,
            BUMPS * NODES as u64,
            "counter at LBA {lba}: every successful COMPARE AND WRITE must count \
             ({misses} miscompares were retried)"
        );
    }
    eprintln!("{misses} miscompares retried over {} bumps", BUMPS * 9);
    lab.assert_alive("after the compare-and-write race");
    drop(check);
    assert!(lab.stop(), "lab stops on SIGTERM");
}

#[test]
fn racing_writes_through_different_nodes_leave_every_copy_identical() {
    if std::env::var_os("MOSAIC_TEST_TARGET").is_some() {
        return;
    }
    let data = tempfile::tempdir().expect("temp dir");
    let (mut lab, port) = start_lab(data.path());
    // Each node writes its own pattern over the same 64 KiB in every page, many
    // times: the last writer of each range differs between pages and rounds, but
    // every copy of a page must end up with the same bytes.
    const ROUNDS: usize = 12;
    const SPAN: usize = 64 << 10;
    let start = Instant::now();
    let workers: Vec<_> = (1..=NODES)
        .map(|node| {
            thread::spawn(move || {
                let mut s = login(node_portal(node, port));
                for round in 0..ROUNDS {
                    assert!(start.elapsed() < LIMIT, "write race too slow");
                    let fill = (node as u8) << 4 | round as u8;
                    for page in 0..VOLUME_BYTES / PAGE {
                        // Straddle into the next page too, except at the end.
                        let at = page * PAGE + PAGE - (SPAN as u64) / 2;
                        if at + SPAN as u64 > VOLUME_BYTES {
                            continue;
                        }
                        write_blocks(&mut s, at / BLOCK as u64, &vec![fill; SPAN]);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("writer");
    }
    lab.assert_alive("after the write race");
    assert!(lab.stop(), "lab stops on SIGTERM and flushes");

    // Every page: the copies that hold data (primary and replica) are identical.
    let files: Vec<Vec<u8>> = (1..=NODES)
        .map(|n| {
            let p = data.path().join(format!("node{n}")).join("cw.img");
            std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        })
        .collect();
    for page in 0..(VOLUME_BYTES / PAGE) as usize {
        let range = page * PAGE as usize..(page + 1) * PAGE as usize;
        let copies: Vec<(usize, &[u8])> = files
            .iter()
            .enumerate()
            .filter_map(|(i, f)| f.get(range.clone()).map(|c| (i + 1, c)))
            .filter(|(_, c)| c.iter().any(|&b| b != 0))
            .collect();
        assert_eq!(
            copies.len(),
            2,
            "page {page}: a primary and one replica hold data (holders {:?})",
            copies.iter().map(|(n, _)| n).collect::<Vec<_>>()
        );
        if let Some(at) = copies[0]
            .1
            .iter()
            .zip(copies[1].1)
            .position(|(a, b)| a != b)
        {
            panic!(
                "page {page}: node {} and node {} differ at byte {at} ({:#04x} vs {:#04x})",
                copies[0].0, copies[1].0, copies[0].1[at], copies[1].1[at]
            );
        }
    }
}
