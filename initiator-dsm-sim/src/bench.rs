//! `mosaic-dsm bench`: one workload on a real cluster under one policy or all of
//! them, with the initiator's view (IOPS, MB/s, latency quantiles, share of bytes
//! sent to the owner) cross-checked with the nodes' own counters (pieces served
//! locally vs forwarded, from the admin endpoint), as a markdown table and an SVG
//! chart.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::admin::{self, TargetCounters};
use crate::error::Result;
use crate::mpio::{DiskStats, MpioConfig, MpioDisk};
use crate::selector::Policy;
use crate::workload::{self, Bound, Live, Rng, RunResult, Workload};

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub mpio: MpioConfig,
    pub policies: Vec<Policy>,
    pub workload: Workload,
    /// The lab's admin endpoint, for the target-side counters and churn.
    pub admin: Option<SocketAddr>,
    /// Move a random page to another node this often during each run.
    pub churn: Option<Duration>,
    /// Unmeasured run before each measured one (not in verify mode).
    pub warmup: Duration,
    /// Print a progress line every second.
    pub progress: bool,
}

/// One policy's outcome.
#[derive(Debug, Clone)]
pub struct PolicyResult {
    pub policy: Policy,
    pub run: RunResult,
    pub disk: DiskStats,
    pub target: Option<TargetCounters>,
    pub paths: usize,
}

async fn counters(admin: Option<SocketAddr>) -> Option<TargetCounters> {
    let a = admin?;
    match admin::target_counters(a).await {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(error = %e, "no target counters");
            None
        }
    }
}

/// Moves random single pages to other nodes until `stop`.
async fn churn(
    disk: Arc<MpioDisk>,
    admin: SocketAddr,
    every: Duration,
    stop: Arc<AtomicBool>,
    moves: Arc<AtomicU64>,
) {
    let mut rng = Rng::new(0xc4u64 ^ Instant::now().elapsed().as_nanos() as u64);
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(every).await;
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let Some(t) = disk.table() else { continue };
        if t.nodes.len() < 2 || t.owners.is_empty() {
            continue;
        }
        let page = rng.below(t.owners.len() as u64);
        let owner = t.nodes[usize::from(t.owners[page as usize])].id.0;
        let others: Vec<u32> = t
            .nodes
            .iter()
            .map(|n| n.id.0)
            .filter(|n| *n != owner)
            .collect();
        let to = others[rng.below(others.len() as u64) as usize];
        match admin::move_pages(admin, &t.name, page, page, to).await {
            Ok(()) => {
                moves.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => tracing::warn!(error = %e, "page move failed"),
        }
    }
}

async fn progress(label: String, live: Arc<Live>, stop: Arc<AtomicBool>) {
    let start = Instant::now();
    let mut last = (0u64, 0u64, Instant::now());
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let ios = live.ios.load(Ordering::Relaxed);
        let bytes = live.bytes.load(Ordering::Relaxed);
        let dt = last.2.elapsed().as_secs_f64().max(1e-9);
        eprint!(
            "\r  {label:<40} {:>5.0}s {:>9.0} IOPS {:>8.1} MB/s  errors {}   ",
            start.elapsed().as_secs_f64(),
            (ios - last.0) as f64 / dt,
            (bytes - last.1) as f64 / 1e6 / dt,
            live.errors.load(Ordering::Relaxed)
        );
        let _ = std::io::stderr().flush();
        last = (ios, bytes, Instant::now());
    }
    eprintln!();
}

/// Runs the workload under every configured policy on one multipath disk.
pub async fn bench(cfg: &BenchConfig) -> Result<Vec<PolicyResult>> {
    let first = cfg.policies.first().copied().unwrap_or(cfg.mpio.policy);
    let mut mcfg = cfg.mpio.clone();
    mcfg.policy = first;
    let disk = Arc::new(MpioDisk::open(&mcfg).await?);
    let mut out = Vec::new();
    for policy in &cfg.policies {
        disk.set_policy(*policy);
        if !cfg.warmup.is_zero() && !cfg.workload.verify {
            let mut w = cfg.workload.clone();
            w.bound = Bound::Time(cfg.warmup);
            workload::run(disk.clone(), &w, Arc::new(Live::default())).await?;
            disk.set_policy(*policy);
        }
        let before = counters(cfg.admin).await;
        let live = Arc::new(Live::default());
        let stop = Arc::new(AtomicBool::new(false));
        let moves = Arc::new(AtomicU64::new(0));
        let prog = cfg
            .progress
            .then(|| tokio::spawn(progress(policy.to_string(), live.clone(), stop.clone())));
        let churner = match (cfg.churn, cfg.admin) {
            (Some(every), Some(a)) => Some(tokio::spawn(churn(
                disk.clone(),
                a,
                every,
                stop.clone(),
                moves.clone(),
            ))),
            _ => None,
        };
        let r = workload::run(disk.clone(), &cfg.workload, live).await;
        stop.store(true, Ordering::Relaxed);
        if let Some(p) = prog {
            let _ = p.await;
        }
        if let Some(c) = churner {
            let _ = c.await;
        }
        let mut run = r?;
        run.moves = moves.load(Ordering::Relaxed);
        let after = counters(cfg.admin).await;
        let target = match (before, after) {
            (Some(b), Some(a)) => Some(a.since(&b)),
            _ => None,
        };
        out.push(PolicyResult {
            policy: *policy,
            run,
            disk: disk.stats(),
            target,
            paths: disk.paths().iter().filter(|p| !p.failed()).count(),
        });
    }
    disk.close().await;
    Ok(out)
}

fn pct(x: Option<f64>) -> String {
    x.map(|v| format!("{:.1}%", v * 100.0))
        .unwrap_or_else(|| "n/a".into())
}

/// The results as a markdown table.
pub fn markdown(title: &str, results: &[PolicyResult]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "### {title}\n");
    let _ = writeln!(
        s,
        "| policy | IOPS | MB/s | p50 µs | p99 µs | p99.9 µs | to owner (initiator) | served locally (target counters) | table fetches | errors | verified blocks / mismatches | page moves |"
    );
    let _ = writeln!(
        s,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for r in results {
        let _ = writeln!(
            s,
            "| {} | {:.0} | {:.1} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.policy,
            r.run.iops(),
            r.run.mb_per_s(),
            r.run.latency_us(0.5),
            r.run.latency_us(0.99),
            r.run.latency_us(0.999),
            pct(r.disk.owner_share()),
            pct(r.target.and_then(|t| t.local_share())),
            r.disk.table_fetches,
            r.run.errors,
            if r.run.verified_blocks > 0 || r.run.mismatches > 0 {
                format!("{} / {}", r.run.verified_blocks, r.run.mismatches)
            } else {
                "-".into()
            },
            r.run.moves,
        );
    }
    s
}

/// The results as an SVG bar chart (IOPS per policy, p99 latency as a label).
pub fn svg(title: &str, results: &[PolicyResult]) -> String {
    let w = 760.0;
    let bar_h = 34.0;
    let left = 230.0;
    let top = 50.0;
    let h = top + bar_h * results.len() as f64 + 40.0;
    let max = results.iter().map(|r| r.run.iops()).fold(1.0, f64::max);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="13">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="10" y="24" font-size="15" font-weight="bold">{}</text>"#,
        xml(title)
    );
    for (i, r) in results.iter().enumerate() {
        let y = top + i as f64 * bar_h;
        let len = (w - left - 150.0) * r.run.iops() / max;
        let color = if r.policy.routing_aware() {
            "#2b8a3e"
        } else {
            "#1c7ed6"
        };
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
            left - 8.0,
            y + 20.0,
            xml(&r.policy.to_string())
        );
        let _ = writeln!(
            s,
            r#"<rect x="{left}" y="{}" width="{len:.1}" height="{}" fill="{color}"/>"#,
            y + 6.0,
            bar_h - 12.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}">{:.0} IOPS, p99 {} µs, {} to owner</text>"#,
            left + len + 6.0,
            y + 20.0,
            r.run.iops(),
            r.run.latency_us(0.99),
            pct(r.disk.owner_share())
        );
    }
    let _ = writeln!(s, "</svg>");
    s
}

fn xml(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selector::SelectorKind;

    fn result(policy: Policy, ios: u64) -> PolicyResult {
        PolicyResult {
            policy,
            run: RunResult {
                ios,
                bytes: ios * 4096,
                elapsed: Duration::from_secs(1),
                latencies_us: vec![10, 20, 30],
                ..RunResult::default()
            },
            disk: DiskStats {
                bytes: 100,
                owner_bytes: 99,
                ..DiskStats::default()
            },
            target: Some(TargetCounters {
                local: 3.0,
                forwarded: 0.5,
                shortcut: 0.5,
            }),
            paths: 6,
        }
    }

    #[test]
    fn table_and_chart_carry_the_numbers() {
        let rs = vec![
            result(Policy::Classic(SelectorKind::RoundRobin), 1000),
            result(
                Policy::RoutingAware {
                    fallback: SelectorKind::QueueLength,
                },
                2000,
            ),
        ];
        let md = markdown("4 KiB <random>", &rs);
        assert!(
            md.contains("| round-robin | 1000 | 4.1 | 20 | 30 | 30 | 99.0% | 75.0% |"),
            "{md}"
        );
        assert!(md.contains("routing-aware (queue-length) | 2000"));
        let svg = svg("4 KiB <random>", &rs);
        assert!(svg.contains("&lt;random&gt;"));
        assert!(svg.contains("2000 IOPS"));
        assert!(svg.starts_with("<svg"));
    }
}
