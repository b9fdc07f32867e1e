//! `mosaic-dsm`: measure path selectors on a real cluster (`bench`) and model them
//! on clusters too big for one machine (`simulate`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use mosaic_dsm::bench::{self, BenchConfig};
use mosaic_dsm::conn::ConnTimers;
use mosaic_dsm::login::{ChapConfig, LoginConfig, DEFAULT_INITIATOR_NAME};
use mosaic_dsm::mpio::MpioConfig;
use mosaic_dsm::selector::{Policy, SelectorKind};
use mosaic_dsm::session::SessionConfig;
use mosaic_dsm::workload::{Bound, Pattern, Skew, Workload};

#[derive(Debug, Parser)]
#[command(
    name = "mosaic-dsm",
    version,
    about = "Mosaic's multipath initiator: benchmark and simulate path selectors"
)]
struct Cli {
    /// Log filter (error, warn, info, debug, trace).
    #[arg(long, default_value = "warn", global = true)]
    log: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run a workload on a running cluster through every path of a volume, under one
    /// policy or all of them (--compare).
    Bench(Box<BenchArgs>),
    /// Discrete-event model of a cluster: compare the policies at sizes one machine
    /// cannot run.
    Simulate(mosaic_dsm::sim::SimArgs),
}

/// A size: bytes, or with K/M/G (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let unit = t[i..].to_ascii_uppercase();
            let m = match unit.trim_end_matches("IB").trim_end_matches('B') {
                "" => 1,
                "K" => 1 << 10,
                "M" => 1 << 20,
                "G" => 1 << 30,
                "T" => 1 << 40,
                _ => return Err(format!("unknown unit in {s:?}")),
            };
            (&t[..i], m)
        }
        None => (t, 1),
    };
    let n: u64 = num.trim().parse().map_err(|_| format!("bad size {s:?}"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} too large"))
}

/// A duration: `10s`, `500ms`, `2m`, or seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, unit) = match t.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&t[..i], &t[i..]),
        None => (t, "s"),
    };
    let n: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    if !(n >= 0.0 && n.is_finite()) {
        return Err(format!("bad duration {s:?}"));
    }
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("unknown unit in {s:?} (ms, s, m)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

#[derive(Debug, Args)]
struct BenchArgs {
    /// Where to discover the paths: the cluster's group portal (or any portal).
    #[arg(long)]
    portal: SocketAddr,
    /// The target: full IQN or the volume name.
    #[arg(long)]
    target: String,
    /// Policy: round-robin, queue-length, service-time, historical-service-time,
    /// routing-aware[:FALLBACK].
    #[arg(long, default_value = "routing-aware")]
    policy: Policy,
    /// Run every policy on the same workload, one after the other.
    #[arg(long)]
    compare: bool,
    /// The selector routing-aware uses among the owner's paths (with --compare).
    #[arg(long, default_value = "queue-length")]
    fallback: SelectorKind,
    /// rr_min_io: I/Os round-robin sends down a path before the next.
    #[arg(long, default_value_t = 1)]
    rr_min_io: u32,
    /// random or sequential.
    #[arg(long, default_value = "random")]
    pattern: Pattern,
    /// Percent of reads.
    #[arg(long, default_value_t = 100)]
    read_pct: u32,
    /// Bytes per I/O (K/M suffixes).
    #[arg(long, default_value = "4K", value_parser = parse_size)]
    bs: u64,
    /// I/Os in flight.
    #[arg(long, default_value_t = 32)]
    qd: usize,
    /// uniform, zipf[:THETA], hotspot:SPACE:SHARE.
    #[arg(long, default_value = "uniform")]
    skew: Skew,
    /// Run time per policy.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    time: Duration,
    /// Stop after this many I/Os instead of after --time.
    #[arg(long)]
    count: Option<u64>,
    /// Only the first this many bytes of the volume.
    #[arg(long, value_parser = parse_size)]
    region: Option<u64>,
    /// Stamp every block with its LBA and a generation and check every read.
    #[arg(long)]
    verify: bool,
    /// Seed of the workload's random numbers.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Unmeasured warm-up per policy (not with --verify).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// The lab's admin endpoint: target-side counters (and --churn).
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// Move a random page to another node this often during each run (needs --admin).
    #[arg(long, value_parser = parse_duration)]
    churn: Option<Duration>,
    /// Use these portals as the paths instead of SendTargets (repeatable; then
    /// --target is the full target name).
    #[arg(long)]
    path: Vec<SocketAddr>,
    /// Try a failed path again after this long.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    path_retry: Duration,
    /// Use at most this many paths (0: all).
    #[arg(long, default_value_t = 0)]
    max_paths: usize,
    /// Append the markdown table to this file.
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Write an SVG bar chart here.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
    /// Our initiator name.
    #[arg(long, default_value = DEFAULT_INITIATOR_NAME)]
    initiator_name: String,
    /// CHAP user (with --chap-secret).
    #[arg(long)]
    chap_user: Option<String>,
    #[arg(long)]
    chap_secret: Option<String>,
    /// Mutual CHAP: the target's user and secret.
    #[arg(long)]
    target_user: Option<String>,
    #[arg(long)]
    target_secret: Option<String>,
    /// Offer CRC32C header and data digests.
    #[arg(long)]
    digests: bool,
    /// The MPIO group name sent at login.
    #[arg(long)]
    group: Option<String>,
}

fn bench_config(a: &BenchArgs) -> Result<BenchConfig, String> {
    let mut login = LoginConfig::normal(&a.target);
    login.initiator_name = a.initiator_name.clone();
    login.header_digest = a.digests;
    login.data_digest = a.digests;
    login.chap = match (&a.chap_user, &a.chap_secret) {
        (Some(u), Some(s)) => Some(ChapConfig {
            user: u.clone(),
            secret: s.clone(),
            mutual: match (&a.target_user, &a.target_secret) {
                (Some(tu), Some(ts)) => Some((tu.clone(), ts.clone())),
                (None, None) => None,
                _ => return Err("mutual CHAP needs both --target-user and --target-secret".into()),
            },
        }),
        (None, None) => None,
        _ => return Err("CHAP needs both --chap-user and --chap-secret".into()),
    };
    let mut session = SessionConfig::new(login);
    session.timers = ConnTimers::default();
    let io_bytes = u32::try_from(a.bs).map_err(|_| "--bs too large".to_string())?;
    if a.read_pct > 100 {
        return Err("--read-pct is at most 100".into());
    }
    if a.churn.is_some() && a.admin.is_none() {
        return Err("--churn needs --admin".into());
    }
    let policies = if a.compare {
        Policy::all(a.fallback)
    } else {
        vec![a.policy]
    };
    Ok(BenchConfig {
        mpio: MpioConfig {
            portal: a.portal,
            target: a.target.clone(),
            session,
            group: a
                .group
                .clone()
                .unwrap_or_else(|| format!("mosaic-dsm-{}:{}", std::process::id(), a.target)),
            policy: policies[0],
            repeat_count: a.rr_min_io,
            max_paths: a.max_paths,
            portals: a.path.clone(),
            path_retry: a.path_retry,
        },
        policies,
        workload: Workload {
            pattern: a.pattern,
            read_pct: a.read_pct,
            io_bytes,
            queue_depth: a.qd,
            skew: a.skew,
            bound: match a.count {
                Some(n) => Bound::Count(n),
                None => Bound::Time(a.time),
            },
            verify: a.verify,
            region_bytes: a.region,
            seed: a.seed,
        },
        admin: a.admin,
        churn: a.churn,
        warmup: a.warmup,
        progress: !a.quiet,
    })
}

async fn run_bench(a: BenchArgs) -> Result<(), String> {
    let cfg = bench_config(&a)?;
    let title = format!("{} on {}", cfg.workload.describe(), a.target);
    eprintln!("mosaic-dsm bench: {title}");
    let results = bench::bench(&cfg).await.map_err(|e| e.to_string())?;
    let md = bench::markdown(&title, &results);
    println!("{md}");
    for r in &results {
        if let Some(e) = &r.run.first_error {
            eprintln!("{}: {} errors, first: {e}", r.policy, r.run.errors);
        }
        for n in &r.run.mismatch_notes {
            eprintln!("{}: MISMATCH {n}", r.policy);
        }
        eprintln!(
            "{}: {} paths, per path (portal, node, I/Os, bytes): {:?}",
            r.policy, r.paths, r.disk.per_path
        );
    }
    if let Some(p) = &a.markdown {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .map_err(|e| format!("{}: {e}", p.display()))?;
        writeln!(f, "{md}").map_err(|e| format!("{}: {e}", p.display()))?;
    }
    if let Some(p) = &a.svg {
        std::fs::write(p, bench::svg(&title, &results))
            .map_err(|e| format!("{}: {e}", p.display()))?;
    }
    let mismatches: u64 = results.iter().map(|r| r.run.mismatches).sum();
    if mismatches > 0 {
        return Err(format!("{mismatches} verify mismatches"));
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cli.log))
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.cmd {
        Cmd::Bench(a) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("tokio: {e}"))
            .and_then(|rt| rt.block_on(run_bench(*a))),
        Cmd::Simulate(a) => mosaic_dsm::sim::run_cli(&a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mosaic-dsm: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("1m"), Ok(1 << 20));
        assert_eq!(parse_size("512"), Ok(512));
        assert!(parse_size("4Q").is_err());
        assert!(parse_size("x").is_err());
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("1h").is_err());
    }
}
