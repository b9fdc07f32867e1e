//! The lab's SCSI command latency histograms on `GET /metrics` of the admin
//! endpoint, after I/O of a known shape through one node: the node's read and
//! write histograms count exactly the commands sent (reads and writes that span
//! pages of several nodes are still one command each), the other nodes count none
//! of them (serving a peer's pieces is not a SCSI command), every histogram is well
//! formed (buckets in increasing `le`, cumulative, `+Inf` equal to `_count`), and
//! `mosaic status` shows the counts with their p50 and p99.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mosaic_tests::initiator::{LoginOptions, Session, GOOD};
use mosaic_tests::lab::{samples, Lab, LabOptions, NODES};

const IQN: &str = "iqn.2026-11.io.mosaic:lat";
const BLOCK: u32 = 512;
/// 1 MiB pages: a 256 KiB command at a page boundary touches two nodes.
const PAGE: u64 = 1 << 20;
const READS: u64 = 40;
const WRITES: u64 = 25;
const HISTOGRAM: &str = "mosaic_node_scsi_command_latency_seconds";
/// How long the counts may take to catch up with responses already received:
/// a command is recorded as its response goes out, so a scrape can overtake it.
const CATCH_UP: Duration = Duration::from_secs(10);

/// One histogram as scraped.
#[derive(Debug, Default, Clone)]
struct Histogram {
    /// (`le`, cumulative count) in the order served.
    buckets: Vec<(f64, u64)>,
    sum: f64,
    count: u64,
}

/// Every series of the latency histogram, by (node, op).
fn histograms(text: &str) -> BTreeMap<(u32, String), Histogram> {
    let mut out: BTreeMap<(u32, String), Histogram> = BTreeMap::new();
    for sample in samples(text)
        .into_iter()
        .filter(|s| s.name.starts_with(HISTOGRAM))
    {
        let label = |k: &str| {
            sample
                .label(k)
                .unwrap_or_else(|| panic!("no {k} label on {sample:?}"))
        };
        let node: u32 = label("node").parse().expect("node label");
        let h = out.entry((node, label("op").to_string())).or_default();
        match sample.name.strip_prefix(HISTOGRAM) {
            Some("_bucket") => {
                let le = match label("le") {
                    "+Inf" => f64::INFINITY,
                    v => v.parse().expect("le is a number"),
                };
                h.buckets.push((le, sample.as_u64()));
            }
            Some("_sum") => h.sum = sample.as_f64(),
            Some("_count") => h.count = sample.as_u64(),
            other => panic!("unexpected series {other:?} in {sample:?}"),
        }
    }
    out
}

fn scrape(lab: &Lab) -> (String, BTreeMap<(u32, String), Histogram>) {
    let text = lab.metrics();
    let h = histograms(&text);
    (text, h)
}

fn count(h: &BTreeMap<(u32, String), Histogram>, node: u32, op: &str) -> u64 {
    h.get(&(node, op.to_string()))
        .unwrap_or_else(|| panic!("no {op} histogram for node {node}"))
        .count
}

#[test]
fn latency_histograms_count_every_command_of_their_node() {
    let test = "latency_histograms_count_every_command_of_their_node";
    if mosaic_tests::skip_against_external_target(test) {
        return;
    }
    let mut lab = LabOptions::new()
        .page_size("1M")
        .volume("name=lat,size=16M,backing=memory")
        .start();

    // A session at node 2; its first commands take the unit attentions a new
    // nexus may have.
    let node = 2;
    let mut s =
        Session::login(lab.portal(node, 1), &LoginOptions::new(IQN)).expect("login at node 2");
    for _ in 0..8 {
        if s.test_unit_ready().expect("TEST UNIT READY").status == GOOD {
            break;
        }
    }
    let (_, before) = scrape(&lab);
    // Reads and writes of 256 KiB across page boundaries (two nodes each).
    let data = mosaic_tests::pattern::bytes(7, 256 << 10);
    let blocks = (data.len() / BLOCK as usize) as u64;
    let page_blocks = PAGE / u64::from(BLOCK);
    let lba = |i: u64| (i % 15 + 1) * page_blocks - blocks / 2;
    for i in 0..WRITES {
        s.write(lba(i), &data, BLOCK).expect("write");
    }
    for i in 0..READS {
        let back = s.read(lba(i), blocks as u32, BLOCK).expect("read");
        assert!(back == data, "read {i} returned other bytes");
    }

    let start = Instant::now();
    let (text, after) = loop {
        let (text, h) = scrape(&lab);
        let done = count(&h, node, "read") >= count(&before, node, "read") + READS
            && count(&h, node, "write") >= count(&before, node, "write") + WRITES;
        if done || start.elapsed() > CATCH_UP {
            break (text, h);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        text.matches(&format!("# TYPE {HISTOGRAM} histogram"))
            .count(),
        1,
        "{text}"
    );
    for op in ["read", "write"] {
        let sent = if op == "read" { READS } else { WRITES };
        assert_eq!(
            count(&after, node, op) - count(&before, node, op),
            sent,
            "node {node} counts every {op} sent through it"
        );
        for other in (1..=NODES).filter(|&n| n != node) {
            assert_eq!(
                count(&after, other, op),
                count(&before, other, op),
                "node {other} served pieces of node {node}'s {op}s: no SCSI commands of its own"
            );
        }
    }
    let h = &after[&(node, "read".to_string())];
    assert!(h.sum > 0.0, "reads took some time: {h:?}");
    // Every series: a histogram in order.
    assert_eq!(
        after.len(),
        NODES as usize * 3,
        "read, write, other per node"
    );
    for ((n, op), h) in &after {
        assert!(h.buckets.len() > 10, "node {n} {op}: {h:?}");
        assert!(
            h.buckets.windows(2).all(|w| w[0].0 < w[1].0),
            "node {n} {op}: le increases: {h:?}"
        );
        assert!(
            h.buckets.windows(2).all(|w| w[0].1 <= w[1].1),
            "node {n} {op}: buckets are cumulative: {h:?}"
        );
        let last = h.buckets.last().expect("buckets");
        assert!(last.0.is_infinite(), "node {n} {op}: ends with +Inf");
        assert_eq!(last.1, h.count, "node {n} {op}: +Inf bucket = _count");
        assert_eq!(h.count == 0, h.sum == 0.0, "node {n} {op}: sum and count");
    }

    // mosaic status: the counts, with p50 and p99.
    let status = lab.cli_ok(&["status"]);
    eprintln!("mosaic status:\n{status}");
    let row: Vec<&str> = status
        .lines()
        .find(|l| l.starts_with(&format!("node {node} ")))
        .unwrap_or_else(|| panic!("no latency row for node {node}:\n{status}"))
        .split_whitespace()
        .collect();
    // node N  READS p50 unit p99 unit  WRITES p50 unit p99 unit ...
    assert_eq!(row[2], count(&after, node, "read").to_string(), "{row:?}");
    assert_eq!(row[7], count(&after, node, "write").to_string(), "{row:?}");
    assert!(
        ["us", "ms"].contains(&row[4]) && ["us", "ms"].contains(&row[6]),
        "p50 and p99 of reads: {row:?}"
    );
    let _ = s.logout();
    lab.mosaic.assert_alive("after the metrics test");
}
