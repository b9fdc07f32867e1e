//! Path selectors, behaving as the Linux dm-multipath selectors of the same names
//! (drivers/md/dm-ps-round-robin.c, dm-ps-queue-length.c, dm-ps-service-time.c,
//! dm-ps-historical-service-time.c), written from their documented behaviour:
//!
//! - **round-robin**: the path at the head of the list takes `repeat_count`
//!   (rr_min_io) I/Os in a row, then goes to the tail.
//! - **queue-length**: the path with the fewest I/Os in flight; the chosen path goes
//!   to the tail, so ties rotate.
//! - **service-time**: the path with the least (bytes in flight + this I/O) /
//!   relative throughput; ties go to the higher throughput, then list order; the
//!   chosen path goes to the tail.
//! - **historical-service-time**: an exponentially weighted moving average of each
//!   path's service time (weight 0.95 per ~16 ms of age, in 10-bit fixed point),
//!   predicted completion = (1 + in flight) × average; a path that has not finished
//!   within (paths × its average) is stale and gets at most an equal share.
//!
//! The same selectors drive the real multipath disk ([`crate::mpio`]) and the
//! simulator ([`crate::sim`]): time is passed in as nanoseconds.

use std::fmt;
use std::str::FromStr;

/// Which classic selector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SelectorKind {
    RoundRobin,
    QueueLength,
    ServiceTime,
    HistoricalServiceTime,
}

impl SelectorKind {
    /// Every classic selector, in report order.
    pub const ALL: [SelectorKind; 4] = [
        SelectorKind::RoundRobin,
        SelectorKind::QueueLength,
        SelectorKind::ServiceTime,
        SelectorKind::HistoricalServiceTime,
    ];

    /// The dm-multipath name.
    pub fn name(self) -> &'static str {
        match self {
            SelectorKind::RoundRobin => "round-robin",
            SelectorKind::QueueLength => "queue-length",
            SelectorKind::ServiceTime => "service-time",
            SelectorKind::HistoricalServiceTime => "historical-service-time",
        }
    }

    /// A selector of this kind over `paths` paths.
    pub fn build(self, paths: usize, repeat_count: u32) -> Box<dyn Selector> {
        match self {
            SelectorKind::RoundRobin => Box::new(RoundRobin::new(paths, repeat_count)),
            SelectorKind::QueueLength => Box::new(QueueLength::new(paths)),
            SelectorKind::ServiceTime => Box::new(ServiceTime::new(paths)),
            SelectorKind::HistoricalServiceTime => Box::new(HistoricalServiceTime::new(paths)),
        }
    }
}

impl fmt::Display for SelectorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SelectorKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "round-robin" | "rr" => Ok(SelectorKind::RoundRobin),
            "queue-length" | "ql" => Ok(SelectorKind::QueueLength),
            "service-time" | "st" => Ok(SelectorKind::ServiceTime),
            "historical-service-time" | "hst" => Ok(SelectorKind::HistoricalServiceTime),
            _ => Err(format!(
                "unknown selector {s:?} (round-robin, queue-length, service-time, historical-service-time)"
            )),
        }
    }
}

/// The policy of a multipath disk: a classic selector over all paths, or
/// routing-aware with a fallback selector among the owner's paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Policy {
    Classic(SelectorKind),
    RoutingAware { fallback: SelectorKind },
}

impl Policy {
    /// Every policy `--compare` runs: the four classic ones and routing-aware.
    pub fn all(fallback: SelectorKind) -> Vec<Policy> {
        let mut v: Vec<Policy> = SelectorKind::ALL
            .iter()
            .map(|k| Policy::Classic(*k))
            .collect();
        v.push(Policy::RoutingAware { fallback });
        v
    }

    /// The selector that picks among candidate paths.
    pub fn selector(self) -> SelectorKind {
        match self {
            Policy::Classic(k) => k,
            Policy::RoutingAware { fallback } => fallback,
        }
    }

    /// Whether I/O is split by page and sent to the owner.
    pub fn routing_aware(self) -> bool {
        matches!(self, Policy::RoutingAware { .. })
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Policy::Classic(k) => f.write_str(k.name()),
            Policy::RoutingAware { fallback } => write!(f, "routing-aware ({fallback})"),
        }
    }
}

impl FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(rest) = s.strip_prefix("routing-aware") {
            let fallback = match rest.strip_prefix(':') {
                Some(f) => f.parse()?,
                None if rest.is_empty() => SelectorKind::QueueLength,
                None => return Err(format!("unknown policy {s:?}")),
            };
            return Ok(Policy::RoutingAware { fallback });
        }
        Ok(Policy::Classic(s.parse()?))
    }
}

/// A path selector. Paths are numbered `0..n`; `candidates` is the subset allowed
/// for this I/O (all paths for a classic policy, the owner's for routing-aware).
pub trait Selector: Send + fmt::Debug {
    /// Picks a path for an I/O of `bytes` bytes at time `now_ns`.
    fn select(&mut self, candidates: &[usize], bytes: u64, now_ns: u64) -> Option<usize>;
    /// The I/O was sent on `path`.
    fn start_io(&mut self, path: usize, bytes: u64, now_ns: u64);
    /// The I/O sent on `path` at `start_ns` completed at `now_ns`.
    fn end_io(&mut self, path: usize, bytes: u64, start_ns: u64, now_ns: u64);
}

/// The list order dm-multipath keeps: chosen paths move to the tail.
#[derive(Debug, Clone)]
struct Order(Vec<usize>);

impl Order {
    fn new(n: usize) -> Order {
        Order((0..n).collect())
    }
    /// Candidates in list order.
    fn iter<'a>(&'a self, candidates: &'a [usize]) -> impl Iterator<Item = usize> + 'a {
        self.0.iter().copied().filter(|p| candidates.contains(p))
    }
    fn move_to_tail(&mut self, p: usize) {
        if let Some(i) = self.0.iter().position(|x| *x == p) {
            self.0.remove(i);
            self.0.push(p);
        }
    }
}

/// dm's round-robin.
#[derive(Debug, Clone)]
pub struct RoundRobin {
    order: Order,
    repeat_count: u32,
    current: Option<usize>,
    left: u32,
}

impl RoundRobin {
    pub fn new(paths: usize, repeat_count: u32) -> RoundRobin {
        RoundRobin {
            order: Order::new(paths),
            repeat_count: repeat_count.max(1),
            current: None,
            left: 0,
        }
    }
}

impl Selector for RoundRobin {
    fn select(&mut self, candidates: &[usize], _bytes: u64, _now: u64) -> Option<usize> {
        if let Some(c) = self.current {
            if self.left > 0 && candidates.contains(&c) {
                self.left -= 1;
                return Some(c);
            }
        }
        let p = self.order.iter(candidates).next()?;
        self.order.move_to_tail(p);
        self.current = Some(p);
        self.left = self.repeat_count - 1;
        Some(p)
    }
    fn start_io(&mut self, _: usize, _: u64, _: u64) {}
    fn end_io(&mut self, _: usize, _: u64, _: u64, _: u64) {}
}

/// dm's queue-length.
#[derive(Debug, Clone)]
pub struct QueueLength {
    order: Order,
    in_flight: Vec<u64>,
}

impl QueueLength {
    pub fn new(paths: usize) -> QueueLength {
        QueueLength {
            order: Order::new(paths),
            in_flight: vec![0; paths],
        }
    }
}

impl Selector for QueueLength {
    fn select(&mut self, candidates: &[usize], _bytes: u64, _now: u64) -> Option<usize> {
        let mut best: Option<usize> = None;
        for p in self.order.iter(candidates) {
            if best.is_none_or(|b| self.in_flight[p] < self.in_flight[b]) {
                best = Some(p);
                if self.in_flight[p] == 0 {
                    break;
                }
            }
        }
        let p = best?;
        self.order.move_to_tail(p);
        Some(p)
    }
    fn start_io(&mut self, path: usize, _: u64, _: u64) {
        self.in_flight[path] += 1;
    }
    fn end_io(&mut self, path: usize, _: u64, _: u64, _: u64) {
        self.in_flight[path] = self.in_flight[path].saturating_sub(1);
    }
}

/// dm's service-time (all paths with relative throughput 1 unless set).
#[derive(Debug, Clone)]
pub struct ServiceTime {
    order: Order,
    in_flight_bytes: Vec<u64>,
    relative_throughput: Vec<u64>,
}

impl ServiceTime {
    pub fn new(paths: usize) -> ServiceTime {
        ServiceTime {
            order: Order::new(paths),
            in_flight_bytes: vec![0; paths],
            relative_throughput: vec![1; paths],
        }
    }

    /// Sets a path's relative throughput (0..=100 in dm; 0 means "use only if
    /// nothing else").
    pub fn set_relative_throughput(&mut self, path: usize, t: u64) {
        self.relative_throughput[path] = t;
    }

    /// <0: `a` better, >0: `b` better, 0: equal (dm's st_compare_load).
    fn compare(&self, a: usize, b: usize, incoming: u64) -> i128 {
        let (sa, sb) = (
            u128::from(self.in_flight_bytes[a] + incoming),
            u128::from(self.in_flight_bytes[b] + incoming),
        );
        let (ta, tb) = (
            u128::from(self.relative_throughput[a]),
            u128::from(self.relative_throughput[b]),
        );
        if ta == tb {
            return sa as i128 - sb as i128;
        }
        if ta == 0 || tb == 0 {
            return tb as i128 - ta as i128;
        }
        let (la, lb) = (sa * tb, sb * ta);
        if la != lb {
            return la as i128 - lb as i128;
        }
        tb as i128 - ta as i128
    }
}

impl Selector for ServiceTime {
    fn select(&mut self, candidates: &[usize], bytes: u64, _now: u64) -> Option<usize> {
        let mut best: Option<usize> = None;
        for p in self.order.iter(candidates) {
            if best.is_none_or(|b| self.compare(p, b, bytes) < 0) {
                best = Some(p);
            }
        }
        let p = best?;
        self.order.move_to_tail(p);
        Some(p)
    }
    fn start_io(&mut self, path: usize, bytes: u64, _: u64) {
        self.in_flight_bytes[path] += bytes;
    }
    fn end_io(&mut self, path: usize, bytes: u64, _: u64, _: u64) {
        self.in_flight_bytes[path] = self.in_flight_bytes[path].saturating_sub(bytes);
    }
}

const HST_FIXED_SHIFT: u32 = 10;
const HST_FIXED_1: u64 = 1 << HST_FIXED_SHIFT;
const HST_FIXED_MAX: u64 = u64::MAX >> HST_FIXED_SHIFT;
/// 0.95 in 10-bit fixed point.
const HST_FIXED_95: u64 = 972;
const HST_MAX_INFLIGHT: u64 = HST_FIXED_1;
/// Age buckets of 2^24 ns (~16 ms).
const HST_BUCKET_SHIFT: u32 = 24;
const HST_WEIGHT_COUNT: usize = 64;

#[derive(Debug, Clone, Copy, Default)]
struct HstPath {
    /// Fixed point (10 bits), nanoseconds.
    hst: u64,
    outstanding: u64,
    stale_after: u64,
    last_finish: u64,
}

/// dm's historical-service-time (base weight 0.95, threshold multiplier 0).
#[derive(Debug, Clone)]
pub struct HistoricalServiceTime {
    order: Order,
    paths: Vec<HstPath>,
    weights: [u64; HST_WEIGHT_COUNT],
    threshold_multiplier: u64,
}

fn fixed_power(mut x: u64, frac_bits: u32, mut n: u32) -> u64 {
    let mut result = 1u64 << frac_bits;
    if n > 0 {
        loop {
            if n & 1 == 1 {
                result = (result * x + (1 << (frac_bits - 1))) >> frac_bits;
            }
            n >>= 1;
            if n == 0 {
                break;
            }
            x = (x * x + (1 << (frac_bits - 1))) >> frac_bits;
        }
    }
    result
}

fn fixed_ema(last: u64, next: u64, weight: u64) -> u64 {
    let v = u128::from(last) * u128::from(weight)
        + u128::from(next) * u128::from(HST_FIXED_1 - weight)
        + (1u128 << (HST_FIXED_SHIFT - 1));
    (v >> HST_FIXED_SHIFT) as u64
}

impl HistoricalServiceTime {
    pub fn new(paths: usize) -> HistoricalServiceTime {
        let mut weights = [0u64; HST_WEIGHT_COUNT];
        for (i, w) in weights.iter_mut().enumerate().take(HST_WEIGHT_COUNT - 1) {
            *w = fixed_power(HST_FIXED_95, HST_FIXED_SHIFT, i as u32 + 1);
        }
        HistoricalServiceTime {
            order: Order::new(paths),
            paths: vec![
                HstPath {
                    hst: HST_FIXED_1,
                    ..HstPath::default()
                };
                paths
            ],
            weights,
            threshold_multiplier: 0,
        }
    }

    /// The average service time of `path` in nanoseconds.
    pub fn estimate_ns(&self, path: usize) -> u64 {
        self.paths[path].hst >> HST_FIXED_SHIFT
    }

    fn weight(&self, delta: u64) -> u64 {
        let bucket = (delta >> HST_BUCKET_SHIFT).min(HST_WEIGHT_COUNT as u64 - 1);
        self.weights[bucket as usize]
    }

    /// <0: `a` better, >0: `b` better (dm's hst_compare).
    fn compare(&self, a: usize, b: usize, now: u64) -> i64 {
        let (pa, pb) = (self.paths[a], self.paths[b]);
        let (mut h1, mut h2) = (pa.hst, pb.hst);
        let (o1, o2) = (pa.outstanding as i64, pb.outstanding as i64);
        let (s1, s2) = (pa.stale_after, pb.stale_after);
        let over = if h1 > h2 {
            h1 > self.threshold_multiplier * h2
        } else {
            h2 > self.threshold_multiplier * h1
        };
        if !over {
            return o1 - o2;
        }
        if (o1 == 0 && s1 < now) || (o2 == 0 && s2 < now) || (o1 == 0 && o2 == 0) {
            let v = i128::from(u8::from(o2 == 0)) * i128::from(s1)
                - i128::from(u8::from(o1 == 0)) * i128::from(s2);
            return v.signum() as i64;
        }
        let b_better = if o1 == o2 {
            h1 > h2
        } else {
            if pa.outstanding >= HST_MAX_INFLIGHT || pb.outstanding >= HST_MAX_INFLIGHT {
                h1 >>= HST_FIXED_SHIFT;
                h2 >>= HST_FIXED_SHIFT;
            }
            u128::from(1 + pa.outstanding) * u128::from(h1)
                > u128::from(1 + pb.outstanding) * u128::from(h2)
        };
        if b_better {
            if s2 < now {
                return o1 - o2;
            }
            return 1;
        }
        if s1 < now {
            return o1 - o2;
        }
        -1
    }
}

impl Selector for HistoricalServiceTime {
    fn select(&mut self, candidates: &[usize], _bytes: u64, now: u64) -> Option<usize> {
        let mut best: Option<usize> = None;
        for p in self.order.iter(candidates) {
            if best.is_none_or(|b| self.compare(p, b, now) < 0) {
                best = Some(p);
            }
        }
        let p = best?;
        self.order.move_to_tail(p);
        Some(p)
    }
    fn start_io(&mut self, path: usize, _: u64, _: u64) {
        self.paths[path].outstanding += 1;
    }
    fn end_io(&mut self, path: usize, _: u64, start: u64, now: u64) {
        let valid = self.paths.len() as u64;
        let w;
        {
            let p = &mut self.paths[path];
            // A request that finished after this one was sent: count serially.
            let start = start.max(p.last_finish);
            p.last_finish = now;
            let st = now.saturating_sub(start);
            p.outstanding = p.outstanding.saturating_sub(1);
            w = st;
        }
        let weight = self.weight(w);
        let p = &mut self.paths[path];
        p.hst = fixed_ema(
            p.hst,
            (w.saturating_mul(HST_FIXED_1)).min(HST_FIXED_MAX),
            weight,
        );
        p.stale_after = p.last_finish + valid * (p.hst >> HST_FIXED_SHIFT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(n: usize) -> Vec<usize> {
        (0..n).collect()
    }

    #[test]
    fn round_robin_repeats_then_rotates() {
        let mut s = RoundRobin::new(3, 2);
        let picks: Vec<usize> = (0..8)
            .map(|_| s.select(&all(3), 4096, 0).unwrap())
            .collect();
        assert_eq!(picks, vec![0, 0, 1, 1, 2, 2, 0, 0]);
        // Restricted to a subset, it rotates within it.
        let picks: Vec<usize> = (0..4)
            .map(|_| s.select(&[1, 2], 4096, 0).unwrap())
            .collect();
        assert_eq!(picks, vec![1, 1, 2, 2]);
        assert_eq!(s.select(&[], 1, 0), None);
    }

    #[test]
    fn queue_length_prefers_idle_paths_and_rotates_ties() {
        let mut s = QueueLength::new(3);
        let a = s.select(&all(3), 1, 0).unwrap();
        s.start_io(a, 1, 0);
        let b = s.select(&all(3), 1, 0).unwrap();
        s.start_io(b, 1, 0);
        let c = s.select(&all(3), 1, 0).unwrap();
        s.start_io(c, 1, 0);
        let mut seen = vec![a, b, c];
        seen.sort();
        assert_eq!(seen, vec![0, 1, 2]);
        s.end_io(b, 1, 0, 1);
        assert_eq!(s.select(&all(3), 1, 0), Some(b));
    }

    #[test]
    fn service_time_weighs_bytes_and_throughput() {
        let mut s = ServiceTime::new(2);
        s.start_io(0, 1 << 20, 0);
        assert_eq!(s.select(&all(2), 4096, 0), Some(1));
        s.start_io(1, 4 << 20, 0);
        assert_eq!(s.select(&all(2), 4096, 0), Some(0));
        // Path 1 ten times faster: 4 MiB there beats 1 MiB on path 0.
        s.set_relative_throughput(1, 10);
        assert_eq!(s.select(&all(2), 4096, 0), Some(1));
    }

    #[test]
    fn historical_service_time_learns_the_faster_path() {
        let mut s = HistoricalServiceTime::new(2);
        let mut now = 0u64;
        // Path 0 takes 1 ms, path 1 takes 50 µs.
        for _ in 0..200 {
            for (p, cost) in [(0usize, 1_000_000u64), (1, 50_000)] {
                s.start_io(p, 4096, now);
                s.end_io(p, 4096, now, now + cost);
            }
            now += 1_000_000;
        }
        assert!(
            s.estimate_ns(0) > 10 * s.estimate_ns(1),
            "{} vs {}",
            s.estimate_ns(0),
            s.estimate_ns(1)
        );
        // Just after the fast path's last completion, with one I/O already
        // outstanding there, it still wins: (1 + 1) x 50 us < 1 ms.
        let t = now - 1_000_000 + 60_000;
        s.start_io(1, 4096, t);
        assert_eq!(s.select(&all(2), 4096, t), Some(1));
        // Once it has not finished within (paths x its average) it is stale and
        // gets no more than an equal share: the idle slow path is chosen.
        assert_eq!(s.select(&all(2), 4096, t + 1_000_000), Some(0));
    }

    #[test]
    fn policies_parse() {
        assert_eq!(
            "rr".parse::<Policy>(),
            Ok(Policy::Classic(SelectorKind::RoundRobin))
        );
        assert_eq!(
            "routing-aware:service-time".parse::<Policy>(),
            Ok(Policy::RoutingAware {
                fallback: SelectorKind::ServiceTime
            })
        );
        assert_eq!(
            "routing-aware".parse::<Policy>(),
            Ok(Policy::RoutingAware {
                fallback: SelectorKind::QueueLength
            })
        );
        assert!("fastest".parse::<Policy>().is_err());
        assert!("routing-awarex".parse::<Policy>().is_err());
    }
}
