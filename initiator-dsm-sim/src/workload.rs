//! Workloads for a multipath disk: random or sequential, a read/write mix, block
//! size, queue depth, uniform / zipf / hotspot skew, bounded by time or count, and
//! a verify mode in which every block written carries its LBA, a generation
//! number and the run's id, and every read of a block written in this run is
//! checked against what was last written there.

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::mpio::MpioDisk;

/// Marks a block written by a verify run.
const STAMP_MAGIC: u64 = 0x4d4f_5341_4943_4453; // "MOSAICDS"
/// Largest zipf table we build (units beyond it are folded).
const MAX_ZIPF_UNITS: u64 = 1 << 22;
/// Tries at finding a unit no other worker holds before waiting.
const BUSY_TRIES: usize = 64;
/// Errors after which a run stops.
const MAX_ERRORS: u64 = 100;
/// Mismatch descriptions kept.
const MAX_MISMATCH_NOTES: usize = 8;

/// xorshift64*: small, fast, reproducible from a seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in [0, n) (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// How accesses spread over the region.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Skew {
    Uniform,
    /// Zipf with exponent `theta` (0 < theta; 0.9 to 1.2 is typical), hot units
    /// scattered over the region.
    Zipf {
        theta: f64,
    },
    /// `share` of the I/O goes to the first `space` of the region.
    Hotspot {
        space: f64,
        share: f64,
    },
}

impl FromStr for Skew {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let num = |t: &str| {
            t.parse::<f64>()
                .map_err(|_| format!("bad number {t:?} in {s:?}"))
        };
        match parts.as_slice() {
            ["uniform"] => Ok(Skew::Uniform),
            ["zipf"] => Ok(Skew::Zipf { theta: 0.99 }),
            ["zipf", t] => {
                let theta = num(t)?;
                if !(theta > 0.0 && theta < 10.0) {
                    return Err(format!("zipf exponent {theta} outside (0, 10)"));
                }
                Ok(Skew::Zipf { theta })
            }
            ["hotspot", space, share] => {
                let (space, share) = (num(space)?, num(share)?);
                if !(space > 0.0 && space < 1.0 && (0.0..=1.0).contains(&share)) {
                    return Err(format!(
                        "hotspot needs 0 < space < 1 and 0 <= share <= 1, got {s:?}"
                    ));
                }
                Ok(Skew::Hotspot { space, share })
            }
            _ => Err(format!(
                "unknown skew {s:?} (uniform, zipf[:THETA], hotspot:SPACE:SHARE)"
            )),
        }
    }
}

impl fmt::Display for Skew {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Skew::Uniform => f.write_str("uniform"),
            Skew::Zipf { theta } => write!(f, "zipf:{theta}"),
            Skew::Hotspot { space, share } => write!(f, "hotspot:{space}:{share}"),
        }
    }
}

/// Random or sequential offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    Random,
    Sequential,
}

impl FromStr for Pattern {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "random" | "rand" => Ok(Pattern::Random),
            "sequential" | "seq" => Ok(Pattern::Sequential),
            _ => Err(format!("unknown pattern {s:?} (random, sequential)")),
        }
    }
}

/// When a run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    Time(Duration),
    Count(u64),
}

/// A workload.
#[derive(Debug, Clone)]
pub struct Workload {
    pub pattern: Pattern,
    /// Percent of I/Os that are reads (0..=100).
    pub read_pct: u32,
    /// Bytes per I/O (a multiple of the block size).
    pub io_bytes: u32,
    pub queue_depth: usize,
    pub skew: Skew,
    pub bound: Bound,
    pub verify: bool,
    /// Only the first this many bytes of the disk (None: all of it).
    pub region_bytes: Option<u64>,
    pub seed: u64,
}

impl Workload {
    /// A short description, e.g. `4 KiB random 100% read QD32 uniform`.
    pub fn describe(&self) -> String {
        let size = if self.io_bytes.is_multiple_of(1024) {
            format!("{} KiB", self.io_bytes / 1024)
        } else {
            format!("{} B", self.io_bytes)
        };
        let mix = match self.read_pct {
            100 => "read".to_string(),
            0 => "write".to_string(),
            r => format!("{r}% read"),
        };
        let pattern = match self.pattern {
            Pattern::Random => "random",
            Pattern::Sequential => "sequential",
        };
        format!(
            "{size} {pattern} {mix}, QD{}, {}{}",
            self.queue_depth,
            self.skew,
            if self.verify { ", verify" } else { "" }
        )
    }
}

/// Chooses I/O units (io_bytes-sized, aligned) in a region.
#[derive(Debug)]
pub(crate) struct Picker {
    units: u64,
    pattern: Pattern,
    skew: Skew,
    zipf_cdf: Vec<f64>,
    scramble: u64,
    next_seq: AtomicU64,
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl Picker {
    pub(crate) fn new(units: u64, pattern: Pattern, skew: Skew) -> Picker {
        let zipf_cdf = match skew {
            Skew::Zipf { theta } => {
                let n = units.min(MAX_ZIPF_UNITS);
                let mut cdf = Vec::with_capacity(n as usize);
                let mut sum = 0.0;
                for k in 1..=n {
                    sum += 1.0 / (k as f64).powf(theta);
                    cdf.push(sum);
                }
                for c in &mut cdf {
                    *c /= sum;
                }
                cdf
            }
            _ => Vec::new(),
        };
        // A multiplier coprime with the unit count spreads hot ranks over the
        // region (a bijection on 0..units).
        let mut scramble = 0x9e37_79b9_7f4a_7c15 % units.max(1);
        while units > 1 && gcd(scramble, units) != 1 {
            scramble += 1;
        }
        Picker {
            units,
            pattern,
            skew,
            zipf_cdf,
            scramble: scramble.max(1),
            next_seq: AtomicU64::new(0),
        }
    }

    pub(crate) fn pick(&self, rng: &mut Rng) -> u64 {
        if self.pattern == Pattern::Sequential {
            return self.next_seq.fetch_add(1, Ordering::Relaxed) % self.units;
        }
        match self.skew {
            Skew::Uniform => rng.below(self.units),
            Skew::Hotspot { space, share } => {
                let hot = ((self.units as f64 * space) as u64).clamp(1, self.units);
                if rng.next_f64() < share || hot == self.units {
                    rng.below(hot)
                } else {
                    hot + rng.below(self.units - hot)
                }
            }
            Skew::Zipf { .. } => {
                let u = rng.next_f64();
                let rank = self.zipf_cdf.partition_point(|c| *c < u) as u64;
                let rank = rank.min(self.zipf_cdf.len() as u64 - 1);
                // Fold the table over a bigger region.
                let spread = self.units / self.zipf_cdf.len() as u64;
                let rank = rank * spread.max(1) + if spread > 1 { rng.below(spread) } else { 0 };
                ((u128::from(rank) * u128::from(self.scramble)) % u128::from(self.units)) as u64
            }
        }
    }
}

/// Stamps `blocks` blocks from `lba` with generation `generation` of run `run`.
pub fn stamp(lba: u64, generation: u64, run: u64, blocks: u32, block_size: u32) -> Bytes {
    let mut v = Vec::with_capacity(blocks as usize * block_size as usize);
    for b in 0..u64::from(blocks) {
        let l = lba + b;
        v.extend_from_slice(&l.to_le_bytes());
        v.extend_from_slice(&generation.to_le_bytes());
        v.extend_from_slice(&STAMP_MAGIC.to_le_bytes());
        v.extend_from_slice(&run.to_le_bytes());
        let mut r = Rng::new(l ^ (generation << 40) ^ run);
        for _ in 4..(block_size / 8) {
            v.extend_from_slice(&r.next_u64().to_le_bytes());
        }
    }
    Bytes::from(v)
}

/// Checks blocks read at `lba` against generation `generation`; the first
/// difference, described.
pub fn check(data: &[u8], lba: u64, generation: u64, run: u64, block_size: u32) -> Option<String> {
    let bs = block_size as usize;
    if !data.len().is_multiple_of(bs) {
        return Some(format!("{} bytes is not whole blocks", data.len()));
    }
    let blocks = (data.len() / bs) as u32;
    let want = stamp(lba, generation, run, blocks, block_size);
    if data == &want[..] {
        return None;
    }
    let i = data
        .iter()
        .zip(want.iter())
        .position(|(a, b)| a != b)
        .unwrap_or(0);
    let block = i / bs;
    let got = &data[block * bs..];
    let word = |o: usize| u64::from_le_bytes(got[o..o + 8].try_into().unwrap_or([0; 8]));
    Some(format!(
        "LBA {}: expected generation {generation}, found a block stamped LBA {} generation {} run {:#x} (first bad byte {})",
        lba + block as u64,
        word(0),
        word(8),
        word(24),
        i % bs
    ))
}

#[derive(Debug)]
struct VerifyState {
    run: u64,
    gens: Vec<u64>,
    busy: Vec<bool>,
}

/// What a run measured.
#[derive(Debug, Clone, Default)]
pub struct RunResult {
    pub ios: u64,
    pub reads: u64,
    pub writes: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    /// Latencies in microseconds, sorted.
    pub latencies_us: Vec<u32>,
    pub verified_blocks: u64,
    pub mismatches: u64,
    pub mismatch_notes: Vec<String>,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Table changes made during the run (churn).
    pub moves: u64,
}

impl RunResult {
    pub fn iops(&self) -> f64 {
        self.ios as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64().max(1e-9)
    }
    /// The `q` quantile (0..=1) of the latency, in microseconds.
    pub fn latency_us(&self, q: f64) -> u32 {
        if self.latencies_us.is_empty() {
            return 0;
        }
        let i = ((self.latencies_us.len() as f64 * q).ceil() as usize)
            .clamp(1, self.latencies_us.len());
        self.latencies_us[i - 1]
    }
}

/// Live counters, for a progress display.
#[derive(Debug, Default)]
pub struct Live {
    pub ios: AtomicU64,
    pub bytes: AtomicU64,
    pub errors: AtomicU64,
}

#[derive(Debug, Default)]
struct Acc {
    reads: u64,
    writes: u64,
    bytes: u64,
    lat: Vec<u32>,
    verified: u64,
    mismatches: u64,
    notes: Vec<String>,
    errors: u64,
    first_error: Option<String>,
}

/// Runs `w` on `disk`. `live` is updated as I/Os complete.
pub async fn run(disk: Arc<MpioDisk>, w: &Workload, live: Arc<Live>) -> Result<RunResult> {
    let bs = disk.block_size();
    if w.io_bytes == 0 || !w.io_bytes.is_multiple_of(bs) {
        return Err(Error::Invalid(format!(
            "I/O size {} is not a multiple of the block size {bs}",
            w.io_bytes
        )));
    }
    if w.read_pct > 100 || w.queue_depth == 0 {
        return Err(Error::Invalid(
            "read percentage over 100 or queue depth 0".into(),
        ));
    }
    let disk_bytes = disk.blocks() * u64::from(bs);
    let region = w.region_bytes.unwrap_or(disk_bytes).min(disk_bytes);
    let units = region / u64::from(w.io_bytes);
    if units == 0 {
        return Err(Error::Invalid("the region holds no whole I/O".into()));
    }
    let blocks_per_io = w.io_bytes / bs;
    let picker = Arc::new(Picker::new(units, w.pattern, w.skew));
    let verify = w.verify.then(|| {
        Arc::new(Mutex::new(VerifyState {
            run: w.seed ^ 0x5eed,
            gens: vec![0; units as usize],
            busy: vec![false; units as usize],
        }))
    });
    let plain = Bytes::from(vec![0xa5u8; w.io_bytes as usize]);
    let start = Instant::now();
    let deadline = match w.bound {
        Bound::Time(d) => Some(start + d),
        Bound::Count(_) => None,
    };
    let issued = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for q in 0..w.queue_depth {
        let disk = disk.clone();
        let picker = picker.clone();
        let verify = verify.clone();
        let plain = plain.clone();
        let issued = issued.clone();
        let stop = stop.clone();
        let live = live.clone();
        let w = w.clone();
        workers.push(tokio::spawn(async move {
            let mut rng = Rng::new(w.seed.wrapping_add(q as u64 * 0x1000_0001));
            let mut acc = Acc::default();
            loop {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match (w.bound, deadline) {
                    (Bound::Count(n), _) if issued.fetch_add(1, Ordering::Relaxed) >= n => break,
                    (_, Some(d)) if Instant::now() >= d => break,
                    _ => {}
                }
                let is_read = rng.below(100) < u64::from(w.read_pct);
                // Pick a unit; in verify mode one no other worker holds.
                let mut unit = picker.pick(&mut rng);
                let mut generation = 0;
                if let Some(v) = &verify {
                    let mut tries = 0;
                    loop {
                        {
                            let mut st = v.lock();
                            if !st.busy[unit as usize] {
                                st.busy[unit as usize] = true;
                                generation = st.gens[unit as usize];
                                break;
                            }
                        }
                        tries += 1;
                        if tries % BUSY_TRIES == 0 {
                            tokio::task::yield_now().await;
                        }
                        unit = picker.pick(&mut rng);
                    }
                }
                let lba = unit * u64::from(blocks_per_io);
                let t0 = Instant::now();
                let (res, new_gen) = if is_read {
                    (disk.read(lba, blocks_per_io).await.map(Some), generation)
                } else {
                    let (data, g) = match &verify {
                        Some(v) => {
                            let run = v.lock().run;
                            (
                                stamp(lba, generation + 1, run, blocks_per_io, bs),
                                generation + 1,
                            )
                        }
                        None => (plain.clone(), 0),
                    };
                    (disk.write(lba, data).await.map(|_| None), g)
                };
                let lat = t0.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                match res {
                    Ok(data) => {
                        acc.lat.push(lat);
                        acc.bytes += u64::from(w.io_bytes);
                        if is_read {
                            acc.reads += 1;
                        } else {
                            acc.writes += 1;
                        }
                        live.ios.fetch_add(1, Ordering::Relaxed);
                        live.bytes
                            .fetch_add(u64::from(w.io_bytes), Ordering::Relaxed);
                        if let (Some(v), Some(d)) = (&verify, data) {
                            if generation > 0 {
                                let run = v.lock().run;
                                acc.verified += u64::from(blocks_per_io);
                                if let Some(why) = check(&d, lba, generation, run, bs) {
                                    acc.mismatches += 1;
                                    if acc.notes.len() < MAX_MISMATCH_NOTES {
                                        acc.notes.push(why);
                                    }
                                }
                            }
                        }
                        if let Some(v) = &verify {
                            let mut st = v.lock();
                            if !is_read {
                                st.gens[unit as usize] = new_gen;
                            }
                            st.busy[unit as usize] = false;
                        }
                    }
                    Err(e) => {
                        acc.errors += 1;
                        live.errors.fetch_add(1, Ordering::Relaxed);
                        if acc.first_error.is_none() {
                            acc.first_error = Some(e.to_string());
                        }
                        if let Some(v) = &verify {
                            // A failed write may or may not have landed: that unit
                            // can no longer be checked.
                            let mut st = v.lock();
                            if !is_read {
                                st.gens[unit as usize] = 0;
                            }
                            st.busy[unit as usize] = false;
                        }
                        if live.errors.load(Ordering::Relaxed) >= MAX_ERRORS {
                            stop.store(true, Ordering::Relaxed);
                        }
                    }
                }
            }
            acc
        }));
    }
    let mut out = RunResult::default();
    let mut lats = Vec::new();
    let mut notes = VecDeque::new();
    for h in workers {
        let a = h
            .await
            .map_err(|e| Error::Invalid(format!("a worker panicked: {e}")))?;
        out.reads += a.reads;
        out.writes += a.writes;
        out.bytes += a.bytes;
        out.verified_blocks += a.verified;
        out.mismatches += a.mismatches;
        out.errors += a.errors;
        if out.first_error.is_none() {
            out.first_error = a.first_error;
        }
        notes.extend(a.notes);
        lats.extend(a.lat);
    }
    out.elapsed = start.elapsed();
    out.ios = out.reads + out.writes;
    lats.sort_unstable();
    out.latencies_us = lats;
    out.mismatch_notes = notes.into_iter().take(MAX_MISMATCH_NOTES).collect();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skews_parse() {
        assert_eq!("uniform".parse::<Skew>(), Ok(Skew::Uniform));
        assert_eq!("zipf:1.1".parse::<Skew>(), Ok(Skew::Zipf { theta: 1.1 }));
        assert_eq!(
            "hotspot:0.1:0.9".parse::<Skew>(),
            Ok(Skew::Hotspot {
                space: 0.1,
                share: 0.9
            })
        );
        for bad in [
            "zipf:-1",
            "hotspot:2:0.5",
            "hotspot:0.1",
            "pareto",
            "zipf:x",
        ] {
            assert!(bad.parse::<Skew>().is_err(), "{bad}");
        }
    }

    #[test]
    fn pickers_stay_in_range_and_skew() {
        let mut rng = Rng::new(7);
        for skew in [
            Skew::Uniform,
            Skew::Zipf { theta: 1.0 },
            Skew::Hotspot {
                space: 0.1,
                share: 0.9,
            },
        ] {
            let p = Picker::new(1000, Pattern::Random, skew);
            let mut counts = vec![0u32; 1000];
            for _ in 0..100_000 {
                let u = p.pick(&mut rng);
                assert!(u < 1000);
                counts[u as usize] += 1;
            }
            let mut sorted = counts.clone();
            sorted.sort_unstable_by(|a, b| b.cmp(a));
            let top10: u32 = sorted[..100].iter().sum();
            match skew {
                Skew::Uniform => assert!(top10 < 20_000, "{top10}"),
                Skew::Zipf { .. } => assert!(top10 > 50_000, "{top10}"),
                Skew::Hotspot { .. } => {
                    let hot: u32 = counts[..100].iter().sum();
                    assert!(hot > 85_000, "{hot}");
                }
            }
        }
        let p = Picker::new(5, Pattern::Sequential, Skew::Uniform);
        let seq: Vec<u64> = (0..7).map(|_| p.pick(&mut rng)).collect();
        assert_eq!(seq, vec![0, 1, 2, 3, 4, 0, 1]);
    }

    #[test]
    fn stamps_check_lba_generation_and_run() {
        let d = stamp(100, 3, 9, 2, 512);
        assert_eq!(check(&d, 100, 3, 9, 512), None);
        assert!(check(&d, 100, 2, 9, 512).unwrap().contains("generation 3"));
        assert!(check(&d, 101, 3, 9, 512).is_some());
        assert!(check(&d, 100, 3, 8, 512).is_some());
        assert!(check(&d[..100], 100, 3, 9, 512).is_some());
        let mut bad = d.to_vec();
        bad[600] ^= 1;
        assert!(check(&bad, 100, 3, 9, 512).unwrap().starts_with("LBA 101"));
    }

    #[test]
    fn latency_quantiles() {
        let r = RunResult {
            latencies_us: (1..=1000).collect(),
            ..RunResult::default()
        };
        assert_eq!(r.latency_us(0.5), 500);
        assert_eq!(r.latency_us(0.99), 990);
        assert_eq!(r.latency_us(0.999), 999);
        assert_eq!(RunResult::default().latency_us(0.5), 0);
    }
}
