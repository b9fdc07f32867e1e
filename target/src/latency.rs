//! Latency histograms of SCSI commands, per node: fixed log-spaced buckets (1-2-5
//! per decade, 10 µs to 10 s, then +Inf) of lock-free counters, so recording costs
//! one binary search over 19 bounds and three relaxed atomic additions.
//!
//! A command's latency runs from the moment it can execute (the command PDU and all
//! its data received) until its response goes to the connection's writer: the time
//! the target spends on it, with forwarding to peers (and, in short-cut mode, the
//! owner building the response), but without the initiator's Data-Out transfer.
//! Aborted commands, which get no response, are not recorded. Commands are classed by operation code
//! ([`CommandClass::of`]): reads, writes, and the rest.
//!
//! Readers take a [`Snapshot`]: Prometheus text (`_bucket{le=...}` cumulative,
//! `_sum` in seconds, `_count`) and quantile estimates (linear within a bucket, as
//! Prometheus' `histogram_quantile` does). A snapshot's count is the sum of its
//! buckets, so `_count` always equals the `+Inf` bucket even while commands are
//! being recorded.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mosaic_proto::scsi::opcode as op;

/// Upper bounds of the finite buckets, in nanoseconds: 1-2-5 per decade.
pub const BUCKET_BOUNDS_NS: [u64; 19] = [
    10_000,
    20_000,
    50_000,
    100_000,
    200_000,
    500_000,
    1_000_000,
    2_000_000,
    5_000_000,
    10_000_000,
    20_000_000,
    50_000_000,
    100_000_000,
    200_000_000,
    500_000_000,
    1_000_000_000,
    2_000_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// Buckets including the last, unbounded one (`le="+Inf"`).
pub const BUCKETS: usize = BUCKET_BOUNDS_NS.len() + 1;

const NANOS_PER_SEC: f64 = 1e9;

/// One histogram: a counter per bucket and the sum of what was recorded.
#[derive(Debug)]
pub struct Histogram {
    /// Observations per bucket (not cumulative): bucket `i` holds those at most
    /// `BUCKET_BOUNDS_NS[i]` and above the bound before it.
    buckets: [AtomicU64; BUCKETS],
    /// Sum of the observations, in nanoseconds (584 years before it wraps).
    sum_ns: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
        }
    }
}

/// The bucket an observation of `ns` nanoseconds falls in.
fn bucket_of(ns: u64) -> usize {
    BUCKET_BOUNDS_NS.partition_point(|&bound| bound < ns)
}

impl Histogram {
    /// Records one observation.
    pub fn record(&self, latency: Duration) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.buckets[bucket_of(ns)].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// The counts as they are now.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            buckets: std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed)),
            sum_ns: self.sum_ns.load(Ordering::Relaxed),
        }
    }
}

/// A histogram's counts at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    /// Per bucket, not cumulative.
    pub buckets: [u64; BUCKETS],
    /// Sum of the observations, nanoseconds.
    pub sum_ns: u64,
}

impl Snapshot {
    /// Observations in all.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// Cumulative counts, as Prometheus' `_bucket{le=...}` (the last is `+Inf`).
    pub fn cumulative(&self) -> [u64; BUCKETS] {
        let mut total = 0;
        std::array::from_fn(|i| {
            total += self.buckets[i];
            total
        })
    }

    /// The `q` quantile (0..=1), interpolated linearly within its bucket; `None`
    /// without observations. An estimate that falls in the `+Inf` bucket is the
    /// largest finite bound (as `histogram_quantile` answers).
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let count = self.count();
        if count == 0 || !(0.0..=1.0).contains(&q) {
            return None;
        }
        let rank = q * count as f64;
        let mut below = 0u64;
        for (i, &n) in self.buckets.iter().enumerate() {
            if n > 0 && (below + n) as f64 >= rank {
                let Some(&upper) = BUCKET_BOUNDS_NS.get(i) else {
                    return Some(Duration::from_nanos(BUCKET_BOUNDS_NS[BUCKETS - 2]));
                };
                let lower = if i == 0 { 0 } else { BUCKET_BOUNDS_NS[i - 1] };
                let within = ((rank - below as f64) / n as f64).clamp(0.0, 1.0);
                let ns = lower as f64 + (upper - lower) as f64 * within;
                return Some(Duration::from_nanos(ns.round() as u64));
            }
            below += n;
        }
        None
    }

    /// Writes the `_bucket`, `_sum` and `_count` samples of metric `name` with
    /// the labels `labels` (`key="value",...`, already escaped).
    pub fn write_prometheus(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let cumulative = self.cumulative();
        for (i, n) in cumulative.iter().enumerate() {
            let le = match BUCKET_BOUNDS_NS.get(i) {
                Some(&ns) => format_seconds(ns),
                None => "+Inf".to_string(),
            };
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {n}");
        }
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(
            out,
            "{name}_sum{braces} {}",
            format_seconds_f64(self.sum_ns as f64 / NANOS_PER_SEC)
        );
        let _ = writeln!(out, "{name}_count{braces} {}", cumulative[BUCKETS - 1]);
    }
}

/// A bound in nanoseconds as seconds, without trailing zeros ("0.00001", "2").
fn format_seconds(ns: u64) -> String {
    let whole = ns / 1_000_000_000;
    let frac = ns % 1_000_000_000;
    if frac == 0 {
        return whole.to_string();
    }
    let digits = format!("{frac:09}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

fn format_seconds_f64(s: f64) -> String {
    // Prometheus reads any float; nine decimals keep nanoseconds.
    let text = format!("{s:.9}");
    let text = text.trim_end_matches('0');
    text.strip_suffix('.').unwrap_or(text).to_string()
}

/// What a SCSI command is, for its latency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandClass {
    /// READ (6), (10), (12), (16).
    Read,
    /// WRITE (6), (10), (12), (16), WRITE AND VERIFY, COMPARE AND WRITE.
    Write,
    /// Everything else (INQUIRY, TEST UNIT READY, UNMAP, WRITE SAME, ...).
    Other,
}

impl CommandClass {
    /// Every class, in the order metrics list them.
    pub const ALL: [CommandClass; 3] =
        [CommandClass::Read, CommandClass::Write, CommandClass::Other];

    /// The class of a command by its operation code (an empty CDB is `Other`).
    pub fn of(cdb: &[u8]) -> CommandClass {
        match cdb.first() {
            Some(&(op::READ_6 | op::READ_10 | op::READ_12 | op::READ_16)) => CommandClass::Read,
            Some(
                &(op::WRITE_6
                | op::WRITE_10
                | op::WRITE_12
                | op::WRITE_16
                | op::WRITE_AND_VERIFY_10
                | op::WRITE_AND_VERIFY_12
                | op::WRITE_AND_VERIFY_16
                | op::COMPARE_AND_WRITE),
            ) => CommandClass::Write,
            _ => CommandClass::Other,
        }
    }

    /// The metric label value.
    pub fn label(self) -> &'static str {
        match self {
            CommandClass::Read => "read",
            CommandClass::Write => "write",
            CommandClass::Other => "other",
        }
    }
}

/// The latency histograms of one node's SCSI commands.
#[derive(Debug, Default)]
pub struct CommandLatency {
    read: Histogram,
    write: Histogram,
    other: Histogram,
}

impl CommandLatency {
    /// Records a command of class `class` that took `latency`.
    pub fn record(&self, class: CommandClass, latency: Duration) {
        self.histogram(class).record(latency);
    }

    /// The histogram of one class.
    pub fn histogram(&self, class: CommandClass) -> &Histogram {
        match class {
            CommandClass::Read => &self.read,
            CommandClass::Write => &self.write,
            CommandClass::Other => &self.other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn bounds_are_log_spaced_and_increasing() {
        for w in BUCKET_BOUNDS_NS.windows(2) {
            let ratio = w[1] as f64 / w[0] as f64;
            assert!((2.0..=2.5).contains(&ratio), "{w:?}");
        }
    }

    #[test]
    fn an_observation_on_a_bound_counts_in_that_bucket() {
        // Prometheus buckets are "less than or equal".
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(10_000), 0);
        assert_eq!(bucket_of(10_001), 1);
        assert_eq!(bucket_of(1_000_000), 6);
        assert_eq!(bucket_of(10_000_000_000), BUCKETS - 2);
        assert_eq!(bucket_of(10_000_000_001), BUCKETS - 1);
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn snapshots_count_sum_and_cumulate() {
        let h = Histogram::default();
        for d in [us(5), us(15), us(15), us(700), Duration::from_secs(30)] {
            h.record(d);
        }
        let s = h.snapshot();
        assert_eq!(s.count(), 5);
        assert_eq!(s.sum_ns, (5 + 15 + 15 + 700) * 1000 + 30_000_000_000);
        let c = s.cumulative();
        assert_eq!(c[0], 1, "5 µs <= 10 µs");
        assert_eq!(c[1], 3, "15 µs <= 20 µs");
        assert_eq!(c[5], 3, "nothing up to 500 µs more");
        assert_eq!(c[6], 4, "700 µs <= 1 ms");
        assert_eq!(c[BUCKETS - 2], 4, "30 s is beyond the last bound");
        assert_eq!(c[BUCKETS - 1], 5);
        assert!(c.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket() {
        let h = Histogram::default();
        assert_eq!(h.snapshot().quantile(0.5), None, "nothing recorded");
        // 100 observations in (100 µs, 200 µs].
        for _ in 0..100 {
            h.record(us(150));
        }
        let s = h.snapshot();
        assert_eq!(s.quantile(0.5), Some(us(150)));
        assert_eq!(s.quantile(1.0), Some(us(200)));
        assert_eq!(s.quantile(0.0), Some(us(100)));
        assert_eq!(s.quantile(1.5), None, "not a quantile");
        // One slow command in a hundred moves p99 but not p50.
        let h = Histogram::default();
        for _ in 0..98 {
            h.record(us(150));
        }
        for _ in 0..2 {
            h.record(Duration::from_millis(40));
        }
        let s = h.snapshot();
        assert!(s.quantile(0.5).unwrap() <= us(200));
        let p99 = s.quantile(0.99).unwrap();
        assert!(
            p99 > Duration::from_millis(20) && p99 <= Duration::from_millis(50),
            "{p99:?}"
        );
        // Beyond the last bound: the last finite bound.
        let h = Histogram::default();
        h.record(Duration::from_secs(60));
        assert_eq!(h.snapshot().quantile(0.5), Some(Duration::from_secs(10)));
    }

    #[test]
    fn prometheus_text_has_buckets_sum_and_count() {
        let h = Histogram::default();
        h.record(us(15));
        h.record(Duration::from_millis(3));
        let mut out = String::new();
        h.snapshot()
            .write_prometheus(&mut out, "m", "node=\"1\",op=\"read\"");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), BUCKETS + 2);
        assert_eq!(
            lines[0],
            "m_bucket{node=\"1\",op=\"read\",le=\"0.00001\"} 0"
        );
        assert_eq!(
            lines[1],
            "m_bucket{node=\"1\",op=\"read\",le=\"0.00002\"} 1"
        );
        assert_eq!(lines[8], "m_bucket{node=\"1\",op=\"read\",le=\"0.005\"} 2");
        assert_eq!(lines[15], "m_bucket{node=\"1\",op=\"read\",le=\"1\"} 2");
        assert_eq!(
            lines[BUCKETS - 1],
            "m_bucket{node=\"1\",op=\"read\",le=\"+Inf\"} 2"
        );
        assert_eq!(lines[BUCKETS], "m_sum{node=\"1\",op=\"read\"} 0.003015");
        assert_eq!(lines[BUCKETS + 1], "m_count{node=\"1\",op=\"read\"} 2");
        let mut bare = String::new();
        Histogram::default()
            .snapshot()
            .write_prometheus(&mut bare, "m", "");
        assert!(bare.starts_with("m_bucket{le=\"0.00001\"} 0\n"), "{bare}");
        assert!(bare.ends_with("m_sum 0\nm_count 0\n"), "{bare}");
    }

    #[test]
    fn commands_are_classed_by_operation_code() {
        assert_eq!(CommandClass::of(&[op::READ_10, 0, 0]), CommandClass::Read);
        assert_eq!(CommandClass::of(&[op::READ_16]), CommandClass::Read);
        assert_eq!(CommandClass::of(&[op::WRITE_6]), CommandClass::Write);
        assert_eq!(
            CommandClass::of(&[op::COMPARE_AND_WRITE]),
            CommandClass::Write
        );
        assert_eq!(CommandClass::of(&[op::INQUIRY]), CommandClass::Other);
        assert_eq!(CommandClass::of(&[op::WRITE_SAME_16]), CommandClass::Other);
        assert_eq!(CommandClass::of(&[]), CommandClass::Other);
    }

    #[test]
    fn concurrent_recording_loses_nothing() {
        let l = std::sync::Arc::new(CommandLatency::default());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let l = l.clone();
                std::thread::spawn(move || {
                    for i in 0..1000u64 {
                        l.record(CommandClass::ALL[(t + i as usize) % 3], us(i % 300));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let total: u64 = CommandClass::ALL
            .iter()
            .map(|&c| l.histogram(c).snapshot().count())
            .sum();
        assert_eq!(total, 4000);
    }
}
