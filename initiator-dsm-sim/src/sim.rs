//! `mosaic-dsm simulate`: a discrete-event model of hosts doing I/O to a cluster
//! through every path, to compare the path policies at cluster sizes one machine
//! cannot run (4 to 64 nodes and more).
//!
//! The model:
//! - `nodes` nodes, each with `nics` front-end NICs of `nic_gbps` and one back-end
//!   link of `link_gbps` to its peers, and `cores` CPU servers (FIFO).
//! - A volume of `volume` bytes cut into pages of `page` bytes, each owned by a
//!   node (placed at random, evenly).
//! - `hosts` hosts, each with `qd` I/Os in flight (closed loop) and its own
//!   selector over all `nodes × nics` paths (the same selector code the real
//!   multipath disk runs, [`crate::selector`]).
//! - An I/O costs `local_us` of CPU on the node that owns its page. Arriving at
//!   another node it costs that node `forward_us` (receive, look up, forward,
//!   relay the answer), crosses both nodes' back-end links with its data, and
//!   then costs the owner `local_us`. Data crosses the chosen front-end NIC.
//!
//! Every resource is a FIFO queue with one or more servers; the events are taken
//! in time order, so each queue sees arrivals in order.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt::Write as _;

use crate::selector::{Policy, Selector, SelectorKind};
use crate::workload::{Pattern, Picker, Rng, Skew};

/// Where the default per-I/O costs come from (printed with every result).
pub const CALIBRATION: &str = "\
Calibration of --local-us and --forward-us (defaults 51 and 119): measured on the \
3-node lab cluster (`mosaic lab --page-size 1M`, 256 MiB memory volume, one \
process on a 2-core machine shared with the initiator, loopback) with `mosaic-dsm \
bench --compare --bs 4K --read-pct 100 --qd 32`: routing-aware, with every piece \
served where it arrived (target counters: 100% local), ran 39,463 IOPS, so a \
local I/O costs 2 cores / 39,463 = 51 us of CPU (initiator included); \
queue-length, with 66.7% of pieces forwarded (target counters), ran 15,388 IOPS = \
130 us per I/O, so forwarding adds (130 - 51) / 0.667 = 119 us. The box was \
shared with other builds (load average 5-7), so these are rough; pass your own. \
NIC and link speeds cannot be measured on loopback and are parameters.";

/// The simulator's parameters.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Cluster sizes to simulate (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "4,16,64")]
    pub nodes: Vec<usize>,
    /// Front-end NICs per node.
    #[arg(long, default_value_t = 2)]
    pub nics: usize,
    /// Front-end NIC speed, Gbit/s.
    #[arg(long, default_value_t = 25.0)]
    pub nic_gbps: f64,
    /// Back-end (node-to-node) link speed per node, Gbit/s.
    #[arg(long, default_value_t = 25.0)]
    pub link_gbps: f64,
    /// CPU servers per node.
    #[arg(long, default_value_t = 4)]
    pub cores: usize,
    /// CPU time of an I/O served by the node it arrived at, µs (see CALIBRATION).
    #[arg(long, default_value_t = 51.0)]
    pub local_us: f64,
    /// Extra CPU time on the receiving node for an I/O it forwards, µs.
    #[arg(long, default_value_t = 119.0)]
    pub forward_us: f64,
    /// Hosts (0: as many as nodes).
    #[arg(long, default_value_t = 0)]
    pub hosts: usize,
    /// I/Os in flight per host.
    #[arg(long, default_value_t = 32)]
    pub qd: usize,
    /// Bytes per I/O.
    #[arg(long, default_value_t = 4096)]
    pub io_bytes: u64,
    /// Percent reads.
    #[arg(long, default_value_t = 100)]
    pub read_pct: u32,
    /// uniform, zipf[:THETA], hotspot:SPACE:SHARE.
    #[arg(long, default_value = "uniform")]
    pub skew: Skew,
    /// Page size in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub page: u64,
    /// Volume size per node in bytes (the volume grows with the cluster).
    #[arg(long, default_value_t = 1 << 30)]
    pub volume_per_node: u64,
    /// Completed I/Os to simulate per configuration.
    #[arg(long, default_value_t = 200_000)]
    pub ios: u64,
    /// rr_min_io of round-robin.
    #[arg(long, default_value_t = 1)]
    pub rr_min_io: u32,
    /// The selector routing-aware uses among the owner's paths.
    #[arg(long, default_value = "queue-length")]
    pub fallback: SelectorKind,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

impl Default for SimArgs {
    fn default() -> Self {
        SimArgs {
            nodes: vec![4, 16, 64],
            nics: 2,
            nic_gbps: 25.0,
            link_gbps: 25.0,
            cores: 4,
            local_us: 51.0,
            forward_us: 119.0,
            hosts: 0,
            qd: 32,
            io_bytes: 4096,
            read_pct: 100,
            skew: Skew::Uniform,
            page: 1 << 20,
            volume_per_node: 1 << 30,
            ios: 200_000,
            rr_min_io: 1,
            fallback: SelectorKind::QueueLength,
            seed: 1,
        }
    }
}

/// A FIFO queue with `servers` servers.
#[derive(Debug, Clone)]
struct Resource {
    free_at: Vec<u64>,
    busy_ns: u64,
}

impl Resource {
    fn new(servers: usize) -> Resource {
        Resource {
            free_at: vec![0; servers.max(1)],
            busy_ns: 0,
        }
    }
    /// Serves a job arriving at `t` for `service` ns; returns its finish time.
    fn serve(&mut self, t: u64, service: u64) -> u64 {
        let (i, free) = self
            .free_at
            .iter()
            .copied()
            .enumerate()
            .min_by_key(|(_, f)| *f)
            .unwrap_or((0, 0));
        let start = t.max(free);
        let end = start + service;
        self.free_at[i] = end;
        self.busy_ns += service;
        end
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    /// Arrives at the receiving node's NIC (writes carry data in).
    NicIn,
    /// Receiving node's CPU.
    Cpu,
    /// Forwarded: back-end links (both ends) with the data.
    Link,
    /// The owner's CPU.
    OwnerCpu,
    /// Back through the front-end NIC (reads carry data out).
    NicOut,
    Done,
}

#[derive(Debug, Clone, Copy)]
struct Io {
    host: usize,
    path: usize,
    owner: usize,
    read: bool,
    issued: u64,
}

/// One configuration's outcome.
#[derive(Debug, Clone)]
pub struct SimResult {
    pub nodes: usize,
    pub policy: Policy,
    pub iops: f64,
    pub mb_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub owner_share: f64,
    pub cpu_util: f64,
    pub link_util: f64,
}

fn ns(us: f64) -> u64 {
    (us * 1000.0).round().max(0.0) as u64
}

fn transfer_ns(bytes: u64, gbps: f64) -> u64 {
    ((bytes as f64 * 8.0) / gbps).round() as u64
}

/// Simulates `policy` on a cluster of `nodes` nodes.
pub fn simulate(a: &SimArgs, nodes: usize, policy: Policy) -> SimResult {
    let nics = a.nics.max(1);
    let paths = nodes * nics;
    let hosts = if a.hosts == 0 { nodes } else { a.hosts };
    let volume = a.volume_per_node * nodes as u64;
    let pages = (volume / a.page).max(1);
    let mut rng = Rng::new(a.seed ^ (nodes as u64) << 32);
    // Even placement, shuffled.
    let mut owner_of: Vec<usize> = (0..pages).map(|p| (p % nodes as u64) as usize).collect();
    for i in (1..owner_of.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        owner_of.swap(i, j);
    }
    let units = volume / a.io_bytes.max(1);
    let picker = Picker::new(units.max(1), Pattern::Random, a.skew);
    let node_of_path = |p: usize| p / nics;
    let owner_paths: Vec<Vec<usize>> = (0..nodes)
        .map(|n| (n * nics..(n + 1) * nics).collect())
        .collect();
    let all_paths: Vec<usize> = (0..paths).collect();
    let mut selectors: Vec<Box<dyn Selector>> = (0..hosts)
        .map(|_| policy.selector().build(paths, a.rr_min_io))
        .collect();
    let mut cpu: Vec<Resource> = (0..nodes).map(|_| Resource::new(a.cores)).collect();
    let mut link: Vec<Resource> = (0..nodes).map(|_| Resource::new(1)).collect();
    let mut nic_in: Vec<Resource> = (0..paths).map(|_| Resource::new(1)).collect();
    let mut nic_out: Vec<Resource> = (0..paths).map(|_| Resource::new(1)).collect();
    let mut ios: Vec<Io> = Vec::new();
    let mut heap: BinaryHeap<Reverse<(u64, Stage, usize)>> = BinaryHeap::new();
    let page_units = (a.page / a.io_bytes.max(1)).max(1);
    let issue = |host: usize,
                 t: u64,
                 rng: &mut Rng,
                 ios: &mut Vec<Io>,
                 heap: &mut BinaryHeap<Reverse<(u64, Stage, usize)>>,
                 selectors: &mut Vec<Box<dyn Selector>>| {
        let unit = picker.pick(rng);
        let page = (unit / page_units).min(pages - 1);
        let owner = owner_of[page as usize];
        let read = rng.below(100) < u64::from(a.read_pct);
        let cands: &[usize] = if policy.routing_aware() {
            &owner_paths[owner]
        } else {
            &all_paths
        };
        let sel = &mut selectors[host];
        let path = sel.select(cands, a.io_bytes, t).unwrap_or(0);
        sel.start_io(path, a.io_bytes, t);
        ios.push(Io {
            host,
            path,
            owner,
            read,
            issued: t,
        });
        heap.push(Reverse((t, Stage::NicIn, ios.len() - 1)));
    };
    for h in 0..hosts {
        for _ in 0..a.qd {
            issue(h, 0, &mut rng, &mut ios, &mut heap, &mut selectors);
        }
    }
    let mut done = 0u64;
    let mut owner_hits = 0u64;
    let mut lats: Vec<u64> = Vec::with_capacity(a.ios as usize);
    let warm = a.ios / 10;
    let mut t_start = 0u64;
    let mut now = 0u64;
    let mut measured_bytes = 0u64;
    let small = 64u64;
    while let Some(Reverse((t, stage, i))) = heap.pop() {
        now = t;
        let io = ios[i];
        let node = node_of_path(io.path);
        let local = node == io.owner;
        let (next, at) = match stage {
            Stage::NicIn => {
                let bytes = if io.read { small } else { a.io_bytes };
                (
                    Stage::Cpu,
                    nic_in[io.path].serve(t, transfer_ns(bytes, a.nic_gbps)),
                )
            }
            Stage::Cpu => {
                let cost = if local { a.local_us } else { a.forward_us };
                let next = if local { Stage::NicOut } else { Stage::Link };
                (next, cpu[node].serve(t, ns(cost)))
            }
            Stage::Link => {
                let d = transfer_ns(a.io_bytes + small, a.link_gbps);
                let a1 = link[node].serve(t, d);
                let a2 = link[io.owner].serve(t, d);
                (Stage::OwnerCpu, a1.max(a2))
            }
            Stage::OwnerCpu => (Stage::NicOut, cpu[io.owner].serve(t, ns(a.local_us))),
            Stage::NicOut => {
                let bytes = if io.read { a.io_bytes } else { small };
                (
                    Stage::Done,
                    nic_out[io.path].serve(t, transfer_ns(bytes, a.nic_gbps)),
                )
            }
            Stage::Done => {
                selectors[io.host].end_io(io.path, a.io_bytes, io.issued, t);
                done += 1;
                if done == warm {
                    t_start = t;
                    for r in cpu.iter_mut().chain(link.iter_mut()) {
                        r.busy_ns = 0;
                    }
                }
                if done > warm {
                    lats.push(t - io.issued);
                    measured_bytes += a.io_bytes;
                    if local {
                        owner_hits += 1;
                    }
                }
                if done >= a.ios + warm {
                    break;
                }
                issue(io.host, t, &mut rng, &mut ios, &mut heap, &mut selectors);
                continue;
            }
        };
        heap.push(Reverse((at, next, i)));
    }
    let span = (now - t_start).max(1) as f64 / 1e9;
    lats.sort_unstable();
    let q = |x: f64| {
        if lats.is_empty() {
            return 0.0;
        }
        let i = ((lats.len() as f64 * x).ceil() as usize).clamp(1, lats.len());
        lats[i - 1] as f64 / 1000.0
    };
    let n = lats.len().max(1) as f64;
    let cpu_busy: u64 = cpu.iter().map(|r| r.busy_ns).sum();
    let link_busy: u64 = link.iter().map(|r| r.busy_ns).sum();
    SimResult {
        nodes,
        policy,
        iops: lats.len() as f64 / span,
        mb_per_s: measured_bytes as f64 / 1e6 / span,
        p50_us: q(0.5),
        p99_us: q(0.99),
        p999_us: q(0.999),
        owner_share: owner_hits as f64 / n,
        cpu_util: cpu_busy as f64 / (span * 1e9 * (nodes * a.cores.max(1)) as f64),
        link_util: link_busy as f64 / (span * 1e9 * nodes as f64),
    }
}

/// Every policy at every size, as a markdown report.
pub fn report(a: &SimArgs) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "### Simulated: {} B I/O, {}% read, {}, QD{} per host, {} NICs × {} Gbit/s, link {} Gbit/s, {} cores/node, local {} µs, forwarded +{} µs\n",
        a.io_bytes, a.read_pct, a.skew, a.qd, a.nics, a.nic_gbps, a.link_gbps, a.cores, a.local_us, a.forward_us
    );
    let _ = writeln!(
        s,
        "| nodes | policy | IOPS | MB/s | p50 µs | p99 µs | p99.9 µs | to owner | node CPU busy | back-end link busy |"
    );
    let _ = writeln!(
        s,
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for &n in &a.nodes {
        for p in Policy::all(a.fallback) {
            let r = simulate(a, n.max(1), p);
            let _ = writeln!(
                s,
                "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1}% | {:.0}% | {:.0}% |",
                r.nodes,
                r.policy,
                r.iops,
                r.mb_per_s,
                r.p50_us,
                r.p99_us,
                r.p999_us,
                r.owner_share * 100.0,
                r.cpu_util * 100.0,
                r.link_util * 100.0
            );
        }
    }
    let _ = writeln!(s, "\n{CALIBRATION}");
    s
}

/// `mosaic-dsm simulate`.
pub fn run_cli(a: &SimArgs) -> Result<(), String> {
    if a.nodes.is_empty() || a.nodes.contains(&0) {
        return Err("--nodes needs positive sizes".into());
    }
    if a.io_bytes == 0 || a.page < a.io_bytes || !a.page.is_multiple_of(a.io_bytes) {
        return Err("--page must be a positive multiple of --io-bytes".into());
    }
    if a.read_pct > 100 || a.qd == 0 || a.ios == 0 {
        return Err("--read-pct at most 100, --qd and --ios positive".into());
    }
    if !(a.nic_gbps > 0.0 && a.link_gbps > 0.0 && a.local_us >= 0.0 && a.forward_us >= 0.0) {
        return Err("speeds must be positive and costs non-negative".into());
    }
    println!("{}", report(a));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> SimArgs {
        SimArgs {
            ios: 20_000,
            volume_per_node: 64 << 20,
            ..SimArgs::default()
        }
    }

    #[test]
    fn routing_aware_serves_everything_locally() {
        let a = small();
        let r = simulate(
            &a,
            4,
            Policy::RoutingAware {
                fallback: SelectorKind::QueueLength,
            },
        );
        assert_eq!(r.owner_share, 1.0);
        assert_eq!(r.link_util, 0.0);
        let rr = simulate(&a, 4, Policy::Classic(SelectorKind::RoundRobin));
        // Round-robin lands on the owner about 1 time in 4.
        assert!((rr.owner_share - 0.25).abs() < 0.05, "{}", rr.owner_share);
        // With forwarding costing CPU on two nodes, CPU-bound throughput drops.
        assert!(rr.iops < r.iops, "{} vs {}", rr.iops, r.iops);
    }

    #[test]
    fn the_cpu_bound_matches_the_cost_model() {
        // One node, one core, all local: IOPS = 1 / local cost.
        let a = SimArgs {
            nodes: vec![1],
            nics: 1,
            cores: 1,
            hosts: 1,
            qd: 8,
            local_us: 100.0,
            ..small()
        };
        let r = simulate(&a, 1, Policy::Classic(SelectorKind::QueueLength));
        assert!((r.iops - 10_000.0).abs() < 200.0, "{}", r.iops);
        assert!(r.cpu_util > 0.95);
        // Little's law: 8 in flight at 10,000 IOPS is 800 µs each.
        assert!((r.p50_us - 800.0).abs() < 50.0, "{}", r.p50_us);
    }

    #[test]
    fn resources_queue_in_order() {
        let mut r = Resource::new(2);
        assert_eq!(r.serve(0, 10), 10);
        assert_eq!(r.serve(0, 10), 10);
        assert_eq!(r.serve(0, 10), 20);
        assert_eq!(r.serve(30, 5), 35);
    }
}
