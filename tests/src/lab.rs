//! Starting a `mosaic lab` cluster for one test, and reading what its admin
//! endpoint and `mosaic routing show` say.
//!
//! Every lab a test starts has its own ports: the node portals on a port free on
//! every node address ([`lab_port`]), a group portal and an admin endpoint on free
//! 127.0.0.1 ports. [`LabOptions`] keeps the flags a test cares about (volumes, page
//! size, data directory, I/O mode, ...) and fills in the rest.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use crate::server::{free_port, http_get, lab_port, mosaic_bin, Mosaic};
use crate::tools::{self, RunOutput};

/// Nodes of every test lab (the lab's default).
pub const NODES: u32 = 3;
/// NIC portals per node of every test lab (the lab's default).
pub const NICS: u8 = 2;
/// How long a `mosaic` client command may take: a change waits for every node to
/// follow it (the endpoint gives up after 15 s).
pub const CLI_LIMIT: Duration = Duration::from_secs(90);

/// The `mosaic lab` command line of a test, built up flag by flag.
#[derive(Debug, Clone)]
pub struct LabOptions {
    page_size: Option<String>,
    data_dir: String,
    volumes: Vec<String>,
    log: String,
    extra: Vec<String>,
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions::new()
    }
}

impl LabOptions {
    /// No volume, the lab's page size, data under `data` in the lab's scratch
    /// directory, `info` logging.
    pub fn new() -> LabOptions {
        LabOptions {
            page_size: None,
            data_dir: "data".into(),
            volumes: Vec::new(),
            log: "info".into(),
            extra: Vec::new(),
        }
    }

    /// One `--volume SPEC` (`name=...,size=...,backing=...`).
    pub fn volume(mut self, spec: impl Into<String>) -> LabOptions {
        self.volumes.push(spec.into());
        self
    }

    /// `--page-size SIZE` (bytes or K/M/G).
    pub fn page_size(mut self, size: impl ToString) -> LabOptions {
        self.page_size = Some(size.to_string());
        self
    }

    /// `--data-dir DIR` instead of the lab's private `data` (for a test that reads
    /// the backing files or restarts a lab on the same data).
    pub fn data_dir(mut self, dir: &std::path::Path) -> LabOptions {
        self.data_dir = dir.display().to_string();
        self
    }

    /// `--log FILTER` instead of `info`.
    pub fn log(mut self, filter: &str) -> LabOptions {
        self.log = filter.into();
        self
    }

    /// Further flags, as given (`--io-mode short-cut`, ...).
    pub fn args(mut self, args: &[&str]) -> LabOptions {
        self.extra.extend(args.iter().map(|s| s.to_string()));
        self
    }

    fn command_line(&self, port: u16, group: SocketAddr, admin: SocketAddr) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "lab".into(),
            "--nodes".into(),
            NODES.to_string(),
            "--nics".into(),
            NICS.to_string(),
            "--port".into(),
            port.to_string(),
            "--group-portal".into(),
            group.to_string(),
            // Bound before the banner is printed, so it answers once the lab runs.
            "--admin".into(),
            admin.to_string(),
            "--data-dir".into(),
            self.data_dir.clone(),
            "--log".into(),
            self.log.clone(),
        ];
        if let Some(size) = &self.page_size {
            args.extend(["--page-size".into(), size.clone()]);
        }
        for v in &self.volumes {
            args.extend(["--volume".into(), v.clone()]);
        }
        args.extend(self.extra.iter().cloned());
        args
    }

    /// Starts the lab and waits until its group portal listens; picks other ports
    /// when one was taken between choosing and binding it.
    pub fn start(&self) -> Lab {
        let (mosaic, (port, group, admin)) = Mosaic::launch_retrying(|| {
            let (port, group, admin) = (lab_port(NODES, NICS), free_addr(), free_addr());
            (
                self.command_line(port, group, admin),
                group,
                (port, group, admin),
            )
        });
        Lab {
            mosaic,
            port,
            group,
            admin,
        }
    }
}

/// A free 127.0.0.1 address (free when asked).
pub fn free_addr() -> SocketAddr {
    ([127, 0, 0, 1], free_port()).into()
}

/// The portal of NIC `nic` of node `node` of a lab on `port`: `127.0.NODE.NIC`.
pub fn node_portal(node: u32, nic: u8, port: u16) -> SocketAddr {
    let node = u8::try_from(node).expect("a lab node number fits an address byte");
    ([127, 0, node, nic], port).into()
}

/// A running `mosaic lab` (stopped when `mosaic` drops) and its addresses.
#[derive(Debug)]
pub struct Lab {
    pub mosaic: Mosaic,
    /// The port of every node portal.
    pub port: u16,
    pub group: SocketAddr,
    pub admin: SocketAddr,
}

impl Lab {
    /// The portal of NIC `nic` of node `node`.
    pub fn portal(&self, node: u32, nic: u8) -> SocketAddr {
        node_portal(node, nic, self.port)
    }

    /// libiscsi's URL of `volume`'s LUN 0 at `portal`.
    pub fn url(&self, portal: impl std::fmt::Display, volume: &str) -> String {
        format!("iscsi://{portal}/{}/0", crate::target_iqn(volume))
    }

    /// `mosaic ARGS... --admin ADDR`, however it ends.
    pub fn cli(&self, args: &[&str]) -> RunOutput {
        let mut cmd = Command::new(mosaic_bin());
        cmd.args(args).arg("--admin").arg(self.admin.to_string());
        tools::run(&mut cmd, CLI_LIMIT)
    }

    /// `mosaic ARGS... --admin ADDR`, which must succeed: its standard output.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        self.cli(args)
            .assert_success(&format!("mosaic {}", args.join(" ")))
            .stdout
    }

    /// `mosaic routing show VOLUME`, as printed and parsed.
    pub fn routing(&self, volume: &str) -> (String, Routing) {
        let text = self.cli_ok(&["routing", "show", volume]);
        let parsed = Routing::parse(&text);
        (text, parsed)
    }

    /// `GET /metrics` of the admin endpoint, which must answer 200.
    pub fn metrics(&self) -> String {
        let (code, text) = http_get(self.admin, "/metrics");
        assert_eq!(code, 200, "GET /metrics: {text}");
        text
    }
}

/// One row of `mosaic routing show`'s table of nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodePages {
    pub node: u32,
    pub primary: u64,
    pub replica: u64,
}

/// What `mosaic routing show VOLUME` prints, parsed: the line
/// "volume NAME (id N), routing epoch E: ...", the NODE / PRIMARY PAGES /
/// REPLICA PAGES rows, and "map (PAGES:PRIMARY+REPLICAS): 0-3:1+2 4:2+3 ...".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routing {
    pub epoch: u64,
    /// The primary node of every page, from the map.
    pub primaries: Vec<u32>,
    /// The table of nodes, in the order printed.
    pub nodes: Vec<NodePages>,
}

impl Routing {
    /// Parses the output; panics, quoting it, where it is not what the CLI prints.
    pub fn parse(out: &str) -> Routing {
        let epoch = out
            .split("routing epoch ")
            .nth(1)
            .and_then(|r| r.split(':').next())
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no epoch in:\n{out}"));
        let map = out
            .lines()
            .find_map(|l| l.strip_prefix("map (PAGES:PRIMARY+REPLICAS):"))
            .unwrap_or_else(|| panic!("no map line in:\n{out}"));
        let number = |s: &str| -> u64 {
            s.parse()
                .unwrap_or_else(|_| panic!("{s:?} is not a number in:\n{out}"))
        };
        let mut primaries = Vec::new();
        for run in map.split_whitespace() {
            let (pages, holders) = run
                .split_once(':')
                .unwrap_or_else(|| panic!("{run:?} is not PAGES:HOLDERS in:\n{out}"));
            let (first, last) = pages.split_once('-').unwrap_or((pages, pages));
            let primary = number(holders.split('+').next().unwrap_or_default()) as u32;
            let (first, last) = (number(first) as usize, number(last) as usize);
            assert_eq!(first, primaries.len(), "runs in page order: {map}");
            primaries.extend(std::iter::repeat_n(primary, last - first + 1));
        }
        let nodes = out
            .lines()
            .filter_map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                match cols.as_slice() {
                    [n, p, r] => Some(NodePages {
                        node: n.parse().ok()?,
                        primary: p.parse().ok()?,
                        replica: r.parse().ok()?,
                    }),
                    _ => None,
                }
            })
            .collect();
        Routing {
            epoch,
            primaries,
            nodes,
        }
    }

    /// Primary pages per node, from the table of nodes.
    pub fn primary_pages(&self) -> BTreeMap<u32, u64> {
        self.nodes.iter().map(|n| (n.node, n.primary)).collect()
    }
}

/// One sample of the Prometheus text format: `NAME{LABEL="VALUE",...} VALUE`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// The value as served.
    pub value: String,
}

impl Sample {
    /// The value of label `key`, if the sample has it.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }

    /// The value as a whole number (a counter, a gauge of things, a bucket count).
    pub fn as_u64(&self) -> u64 {
        self.value
            .parse()
            .unwrap_or_else(|_| panic!("{} is not a whole number: {self:?}", self.value))
    }

    /// The value as a number.
    pub fn as_f64(&self) -> f64 {
        self.value
            .parse()
            .unwrap_or_else(|_| panic!("{} is not a number: {self:?}", self.value))
    }
}

/// Every sample of a Prometheus text page (comment lines left out).
pub fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|line| {
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("a sample has a value: {line:?}"));
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, labels.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split(',')
                .filter(|kv| !kv.is_empty())
                .map(|kv| {
                    let (k, v) = kv
                        .split_once('=')
                        .unwrap_or_else(|| panic!("label {kv:?} of {line:?} is not key=value"));
                    (k.to_string(), v.trim_matches('"').to_string())
                })
                .collect();
            Sample {
                name: name.to_string(),
                labels,
                value: value.to_string(),
            }
        })
        .collect()
}
