//! Writes through several nodes of a `mosaic lab` at once are ordered at each page's
//! primary:
//!
//! - COMPARE AND WRITE is atomic against every write through any node: counters
//!   bumped by compare-and-swap loops through three nodes at once lose no update.
//! - Concurrent overlapping writes through different nodes leave the primary's and
//!   the replica's copy of every page identical (each page's writes are applied in
//!   one order everywhere), checked in the nodes' backing files after a clean stop.
//! - Pages moved with `mosaic routing move` while two initiators write through two
//!   nodes lose no acknowledged write: every block reads back, through a third
//!   node, as the last write to it; a nexus opened before the moves gets
//!   ASYMMETRIC ACCESS STATE CHANGED on its next command.

use std::net::SocketAddr;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use mosaic_tests::initiator::{self, LoginOptions, Session, UNIT_ATTENTION};
use mosaic_tests::lab::{node_portal, Lab, LabOptions, NODES};

const BLOCK: usize = 512;
/// 1 MiB pages, so a 16 MiB volume has 16 pages over the three nodes.
const PAGE: u64 = 1 << 20;
const VOLUME_BYTES: u64 = 16 << 20;
const IQN: &str = "iqn.2026-11.io.mosaic:cw";
/// Retries of a command answered with a unit attention (one per table change).
const UA_RETRIES: usize = 32;
/// Whole loops are bounded by this, whatever happens.
const LIMIT: Duration = Duration::from_secs(120);

/// A lab with the file-backed volume `cw` in 1 MiB pages, its data in `data_dir`
/// (read after the lab stops).
fn start_lab(data_dir: &Path) -> (Lab, u16) {
    let lab = LabOptions::new()
        .page_size("1M")
        .data_dir(data_dir)
        .volume(format!("name=cw,size={VOLUME_BYTES},backing=file"))
        .start();
    let port = lab.port;
    (lab, port)
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
    let mut r = s.command(&cdb, data, 0).expect("WRITE(16)");
    // Each routing change (a page move) is announced once per nexus; an initiator
    // retries the command. A few changes may come one after the other.
    for _ in 0..UA_RETRIES {
        if r.sense_key().map(|(k, _, _)| k) != Some(UNIT_ATTENTION) {
            break;
        }
        r = s.command(&cdb, data, 0).expect("WRITE(16)");
    }
    assert_eq!(
        r.status,
        initiator::GOOD,
        "WRITE(16) at {lba}: sense {:x?}",
        r.sense_key()
    );
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

/// ORWRITE(16) of whole blocks at `lba` (SBC-4 §5.9).
fn or_write(s: &mut Session, lba: u64, data: &[u8]) {
    let mut cdb = [0u8; 16];
    cdb[0] = 0x8b;
    cdb[2..10].copy_from_slice(&lba.to_be_bytes());
    cdb[10..14].copy_from_slice(&((data.len() / BLOCK) as u32).to_be_bytes());
    let r = s.command(&cdb, data, 0).expect("ORWRITE(16)");
    assert_eq!(
        r.status,
        initiator::GOOD,
        "ORWRITE(16) at {lba}: sense {:x?}",
        r.sense_key()
    );
}

fn counter_block(n: u64) -> Vec<u8> {
    let mut b = vec![0xc5; BLOCK];
    b[..8].copy_from_slice(&n.to_be_bytes());
    b
}

#[test]
fn compare_and_write_through_three_nodes_loses_no_update() {
    if mosaic_tests::skip_against_external_target(
        "compare_and_write_through_three_nodes_loses_no_update",
    ) {
        return;
    }
    let data = tempfile::tempdir().expect("temp dir");
    let (mut lab, port) = start_lab(data.path());
    // One counter on a page boundary's neighbour in each of three pages, so the
    // counters' primaries differ; every node bumps every counter.
    let counters: Vec<u64> = (0..3u64)
        .map(|p| (p * 5 + 1) * PAGE / BLOCK as u64)
        .collect();
    let mut setup = login(node_portal(1, 1, port));
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
                let mut s = login(node_portal(node, 1, port));
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
    let mut check = login(node_portal(2, 1, port));
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

    // ORWRITE is a read-modify-write at the primary too: three nodes OR-ing their
    // own bits into the same blocks at once lose none of them.
    let lba = counters[1] + 8;
    write_blocks(&mut check, lba, &[0u8; 2 * BLOCK]);
    let orers: Vec<_> = (1..=NODES)
        .map(|node| {
            thread::spawn(move || {
                let mut s = login(node_portal(node, 1, port));
                for bit in 0..8u32 {
                    assert!(start.elapsed() < LIMIT, "ORWRITE race too slow");
                    // Node n sets bit `bit` of byte lanes n-1, n+2, ...
                    let mut data = vec![0u8; 2 * BLOCK];
                    for (i, b) in data.iter_mut().enumerate() {
                        if i % NODES as usize == node as usize - 1 {
                            *b = 1 << bit;
                        }
                    }
                    or_write(&mut s, lba, &data);
                }
            })
        })
        .collect();
    for o in orers {
        o.join().expect("ORWRITE worker");
    }
    let mut cdb = [0u8; 16];
    cdb[0] = 0x88;
    cdb[2..10].copy_from_slice(&lba.to_be_bytes());
    cdb[13] = 2;
    let r = check
        .command(&cdb, &[], 2 * BLOCK as u32)
        .expect("READ(16)");
    assert_eq!(r.status, initiator::GOOD);
    assert!(
        r.data.iter().all(|&b| b == 0xff),
        "every node's ORWRITE bits must be there: {:x?}",
        &r.data[..16]
    );
    lab.mosaic.assert_alive("after the compare-and-write race");
    drop(check);
    assert!(lab.mosaic.stop(), "lab stops on SIGTERM");
}

#[test]
fn racing_writes_through_different_nodes_leave_every_copy_identical() {
    if mosaic_tests::skip_against_external_target(
        "racing_writes_through_different_nodes_leave_every_copy_identical",
    ) {
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
                let mut s = login(node_portal(node, 1, port));
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
    lab.mosaic.assert_alive("after the write race");
    assert!(lab.mosaic.stop(), "lab stops on SIGTERM and flushes");

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

/// A block stamped with its LBA and a generation, so a read tells which write it
/// returned.
fn stamped(lba: u64, generation: u64) -> Vec<u8> {
    mosaic_tests::pattern::stamped(lba, generation, 1, BLOCK as u32)
}

#[test]
fn moving_pages_under_writes_loses_no_acknowledged_write() {
    if mosaic_tests::skip_against_external_target(
        "moving_pages_under_writes_loses_no_acknowledged_write",
    ) {
        return;
    }
    let data = tempfile::tempdir().expect("temp dir");
    let (mut lab, port) = start_lab(data.path());
    let blocks = VOLUME_BYTES / BLOCK as u64;
    // A nexus opened before the moves.
    let mut watcher = login(node_portal(3, 1, port));

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let start = Instant::now();
    // Writer k owns the blocks b with b % 2 == k and writes them through node k+1,
    // 64 blocks apart so every page is touched, in rounds (a generation each).
    let writers: Vec<_> = (0..2u64)
        .map(|k| {
            let stop = stop.clone();
            thread::spawn(move || {
                let mut s = login(node_portal(k as u32 + 1, 1, port));
                let mut last = std::collections::HashMap::new();
                let mut generation = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) || generation < 2 {
                    assert!(start.elapsed() < LIMIT, "writers too slow");
                    generation += 1;
                    let mut lba = k + (generation % 32) * 2;
                    while lba < blocks {
                        write_blocks(&mut s, lba, &stamped(lba, generation));
                        last.insert(lba, generation);
                        lba += 64;
                    }
                }
                last
            })
        })
        .collect();

    // Meanwhile: move pages 0-7 to node 3 (copies for those it does not hold,
    // swaps for those it replicates), then pages 4-11 to node 1.
    thread::sleep(Duration::from_millis(200));
    let first = lab.cli_ok(&["routing", "move", "cw", "--pages", "0-7", "--to", "3"]);
    assert!(first.contains("to node 3"), "{first}");
    let second = lab.cli_ok(&["routing", "move", "cw", "--pages", "4-11", "--to", "1"]);
    assert!(second.contains("to node 1"), "{second}");
    thread::sleep(Duration::from_millis(200));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let last: Vec<_> = writers
        .into_iter()
        .map(|w| w.join().expect("writer"))
        .collect();

    // The table says what was asked.
    let (shown, routing) = lab.routing("cw");
    let primaries = routing.primaries;
    for page in 0..12 {
        let want = if page < 4 { 3 } else { 1 };
        assert_eq!(
            primaries.get(page),
            Some(&want),
            "page {page}: primary {want} expected after the moves:\n{shown}"
        );
    }

    // Every acknowledged write is there, read through node 3.
    let mut check = login(node_portal(3, 1, port));
    let mut checked = 0;
    for map in &last {
        for (&lba, &generation) in map {
            assert_eq!(
                read_block(&mut check, lba),
                stamped(lba, generation),
                "LBA {lba}: the last acknowledged write (generation {generation}) is lost"
            );
            checked += 1;
        }
    }
    assert!(checked > 100, "only {checked} blocks written");

    // The nexus opened before the moves hears of them once.
    let r = watcher.test_unit_ready().expect("TEST UNIT READY");
    assert_eq!(
        r.sense_key(),
        Some((0x06, 0x2a, 0x06)),
        "UNIT ATTENTION, ASYMMETRIC ACCESS STATE CHANGED expected after the moves"
    );
    assert_eq!(
        watcher.test_unit_ready().expect("TUR").status,
        initiator::GOOD
    );
    lab.mosaic.assert_alive("after the page moves");
    drop((watcher, check));
    assert!(lab.mosaic.stop(), "lab stops on SIGTERM");
}
