//! The multipath disk (our DSM): every path to one volume, found by discovery at a
//! (group) portal, grouped by the VPD 0x83 identity, each a session that names
//! the MPIO group at login; I/O goes down the path a [`Policy`] picks.
//!
//! Routing-aware: the disk fetches the volume's routing table with READ ROUTING
//! TABLE (C5h), splits each I/O at page boundaries, and sends each piece to a path
//! of the page's owner (the fallback selector picks among the owner's paths, or
//! among all paths when the owner has none). A unit attention 2Ah/06h means the
//! table changed: it is fetched again and the piece is sent again.
//!
//! Every policy is measured the same way: the share of bytes that went to a path
//! of the node owning them (with the table, whatever the policy).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use mosaic_routing::wire::{self, Assembler, Progress, WireTable};
use parking_lot::{Mutex, RwLock};

use crate::discovery::{self, Portal};
use crate::error::{Error, Result};
use crate::scsi::{Command, DeviceId, STATUS_GOOD};
use crate::selector::{Policy, Selector};
use crate::session::{Session, SessionConfig};

/// Bytes asked per READ ROUTING TABLE.
const TABLE_PIECE: u32 = 64 * 1024;
/// Times a table fetch starts over (it changed between two pieces).
const TABLE_ATTEMPTS: usize = 8;
/// Times one piece of I/O is sent again (unit attentions, a failed path).
const PIECE_ATTEMPTS: usize = 8;
/// Unit attentions skipped while opening a path.
const UA_RETRIES: usize = 4;

/// How to build a multipath disk.
#[derive(Debug, Clone)]
pub struct MpioConfig {
    /// Where to ask SendTargets (the cluster's group portal, or any portal).
    pub portal: SocketAddr,
    /// The target: its full name, or the end of it (e.g. the volume name).
    pub target: String,
    /// Login and session settings for every path (the target name and ISID are
    /// set per path).
    pub session: SessionConfig,
    /// The MPIO group name sent with `X-io.mosaic.MpioGroup`.
    pub group: String,
    pub policy: Policy,
    /// rr_min_io of round-robin.
    pub repeat_count: u32,
    /// At most this many paths (0: all).
    pub max_paths: usize,
    /// Use these portals instead of asking SendTargets (then `target` must be
    /// the full target name).
    pub portals: Vec<SocketAddr>,
    /// A failed path is tried again after this long (as multipathd's checker
    /// reinstates paths).
    pub path_retry: Duration,
}

impl MpioConfig {
    /// Discovery at `portal`, every path, the given policy, a 5 s path retry.
    pub fn new(
        portal: SocketAddr,
        target: &str,
        session: SessionConfig,
        policy: Policy,
    ) -> MpioConfig {
        MpioConfig {
            portal,
            target: target.to_string(),
            session,
            group: format!("mosaic-dsm-{}:{target}", std::process::id()),
            policy,
            repeat_count: 1,
            max_paths: 0,
            portals: Vec::new(),
            path_retry: Duration::from_secs(5),
        }
    }
}

/// Counters of one path.
#[derive(Debug, Default)]
pub struct PathCounters {
    pub ios: AtomicU64,
    pub bytes: AtomicU64,
    /// Bytes whose page is owned by this path's node.
    pub owner_bytes: AtomicU64,
}

/// One path: a session on one portal.
#[derive(Debug)]
pub struct Path {
    pub index: usize,
    pub portal: Portal,
    /// The cluster node behind the portal (routing table, else VPD 0x83 port group).
    pub node: Option<u32>,
    pub device_id: DeviceId,
    pub session: Session,
    pub counters: PathCounters,
    /// When the path failed (ns on the disk's clock, plus one); 0 while healthy.
    failed_at: AtomicU64,
}

impl Path {
    /// Whether the path is marked failed (it is still tried again after the
    /// retry interval).
    pub fn failed(&self) -> bool {
        self.failed_at.load(Ordering::Relaxed) != 0
    }
}

/// Disk-wide counters.
#[derive(Debug, Default)]
pub struct DiskCounters {
    pub pieces: AtomicU64,
    pub bytes: AtomicU64,
    pub owner_bytes: AtomicU64,
    pub table_fetches: AtomicU64,
    pub routing_attentions: AtomicU64,
    pub other_attentions: AtomicU64,
    pub path_failures: AtomicU64,
}

/// A snapshot of the counters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DiskStats {
    pub pieces: u64,
    pub bytes: u64,
    pub owner_bytes: u64,
    pub table_fetches: u64,
    pub routing_attentions: u64,
    pub other_attentions: u64,
    pub path_failures: u64,
    /// (portal, node, ios, bytes) per path.
    pub per_path: Vec<(SocketAddr, Option<u32>, u64, u64)>,
}

impl DiskStats {
    /// Share of bytes sent to the owner's paths (0..=1), if anything moved.
    pub fn owner_share(&self) -> Option<f64> {
        (self.bytes > 0).then(|| self.owner_bytes as f64 / self.bytes as f64)
    }
}

/// A multipath disk.
#[derive(Debug)]
pub struct MpioDisk {
    paths: Vec<Arc<Path>>,
    policy: RwLock<Policy>,
    selector: Mutex<Box<dyn Selector>>,
    repeat_count: u32,
    block_size: u32,
    blocks: u64,
    table: RwLock<Option<Arc<WireTable>>>,
    /// Paths of each node id, from the table.
    node_paths: RwLock<HashMap<u32, Vec<usize>>>,
    refresh: tokio::sync::Mutex<()>,
    refreshed: AtomicU64,
    counters: DiskCounters,
    clock: Instant,
    target: String,
    path_retry_ns: u64,
}

fn find_target<'a>(targets: &'a [discovery::Target], want: &str) -> Result<&'a discovery::Target> {
    targets
        .iter()
        .find(|t| t.name == want)
        .or_else(|| {
            let suffix = format!(":{want}");
            targets.iter().find(|t| t.name.ends_with(&suffix))
        })
        .ok_or_else(|| {
            let names: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
            Error::NoPath(format!("no target {want:?} among {names:?}"))
        })
}

impl MpioDisk {
    /// Discovers every path of the target, logs in on each, keeps those with the
    /// same logical unit identity, and fetches the routing table if the target
    /// serves one.
    pub async fn open(cfg: &MpioConfig) -> Result<MpioDisk> {
        let target = if cfg.portals.is_empty() {
            let targets =
                discovery::send_targets(cfg.portal, &cfg.session.login, cfg.session.timers).await?;
            find_target(&targets, &cfg.target)?.clone()
        } else {
            discovery::Target {
                name: cfg.target.clone(),
                portals: cfg
                    .portals
                    .iter()
                    .map(|a| Portal { addr: *a, tpgt: 1 })
                    .collect(),
            }
        };
        let mut portals = target.portals.clone();
        portals.sort();
        portals.dedup();
        if cfg.max_paths > 0 {
            portals.truncate(cfg.max_paths);
        }
        let logins = portals.iter().map(|p| {
            let mut s = cfg.session.clone();
            s.login.target_name = Some(target.name.clone());
            s.login.isid = crate::login::fresh_isid();
            s.login = s.login.mpio_group(&cfg.group);
            let portal = *p;
            async move {
                let session = Session::login(portal.addr, s).await?;
                // The first command of a new nexus may report a unit attention.
                let _ = session
                    .execute_past_ua(&Command::test_unit_ready(), UA_RETRIES)
                    .await;
                let id = session.device_id().await?;
                Ok::<_, Error>((portal, session, id))
            }
        });
        let results = futures::future::join_all(logins).await;
        let mut opened = Vec::new();
        let mut errors = Vec::new();
        for (p, r) in portals.iter().zip(results) {
            match r {
                Ok(x) => opened.push(x),
                Err(e) => {
                    tracing::warn!(portal = %p.addr, error = %e, "path not opened");
                    errors.push(format!("{}: {e}", p.addr));
                }
            }
        }
        if opened.is_empty() {
            return Err(Error::NoPath(format!(
                "no path to {} could log in: {}",
                target.name,
                errors.join("; ")
            )));
        }
        // Group by logical unit identity; keep the biggest group.
        let mut groups: HashMap<Vec<u8>, usize> = HashMap::new();
        for (_, _, id) in &opened {
            *groups.entry(id.lu.clone()).or_default() += 1;
        }
        let lu = groups
            .into_iter()
            .max_by_key(|(_, n)| *n)
            .map(|(lu, _)| lu)
            .unwrap_or_default();
        let mut paths = Vec::new();
        for (portal, session, id) in opened {
            if id.lu != lu {
                tracing::warn!(portal = %portal.addr, "path reaches another logical unit; dropped");
                let _ = session.logout().await;
                continue;
            }
            paths.push(Arc::new(Path {
                index: paths.len(),
                portal,
                node: id.target_port_group.map(u32::from),
                device_id: id,
                session,
                counters: PathCounters::default(),
                failed_at: AtomicU64::new(0),
            }));
        }
        let (blocks, block_size) = paths[0].session.capacity().await?;
        let disk = MpioDisk {
            selector: Mutex::new(cfg.policy.selector().build(paths.len(), cfg.repeat_count)),
            paths,
            policy: RwLock::new(cfg.policy),
            repeat_count: cfg.repeat_count,
            block_size,
            blocks,
            table: RwLock::new(None),
            node_paths: RwLock::new(HashMap::new()),
            refresh: tokio::sync::Mutex::new(()),
            refreshed: AtomicU64::new(0),
            counters: DiskCounters::default(),
            clock: Instant::now(),
            target: target.name,
            path_retry_ns: cfg.path_retry.as_nanos() as u64,
        };
        match disk.fetch_table(0).await {
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(error = %e, "no routing table; routing-aware falls back to all paths")
            }
        }
        Ok(disk)
    }

    /// The target name.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The paths.
    pub fn paths(&self) -> &[Arc<Path>] {
        &self.paths
    }

    /// Logical block size.
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// Capacity in blocks.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// The routing table in use.
    pub fn table(&self) -> Option<Arc<WireTable>> {
        self.table.read().clone()
    }

    /// The policy in use.
    pub fn policy(&self) -> Policy {
        *self.policy.read()
    }

    /// Switches policy (a fresh selector) and zeroes the counters.
    pub fn set_policy(&self, policy: Policy) {
        *self.policy.write() = policy;
        *self.selector.lock() = policy.selector().build(self.paths.len(), self.repeat_count);
        self.reset_counters();
    }

    /// Zeroes every counter.
    pub fn reset_counters(&self) {
        let c = &self.counters;
        for a in [
            &c.pieces,
            &c.bytes,
            &c.owner_bytes,
            &c.table_fetches,
            &c.routing_attentions,
            &c.other_attentions,
            &c.path_failures,
        ] {
            a.store(0, Ordering::Relaxed);
        }
        for p in &self.paths {
            p.counters.ios.store(0, Ordering::Relaxed);
            p.counters.bytes.store(0, Ordering::Relaxed);
            p.counters.owner_bytes.store(0, Ordering::Relaxed);
        }
    }

    /// The counters now.
    pub fn stats(&self) -> DiskStats {
        let c = &self.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        DiskStats {
            pieces: g(&c.pieces),
            bytes: g(&c.bytes),
            owner_bytes: g(&c.owner_bytes),
            table_fetches: g(&c.table_fetches),
            routing_attentions: g(&c.routing_attentions),
            other_attentions: g(&c.other_attentions),
            path_failures: g(&c.path_failures),
            per_path: self
                .paths
                .iter()
                .map(|p| {
                    (
                        p.portal.addr,
                        p.node,
                        g(&p.counters.ios),
                        g(&p.counters.bytes),
                    )
                })
                .collect(),
        }
    }

    /// A path is used unless it failed less than the retry interval ago.
    fn usable(&self, p: &Path, now: u64) -> bool {
        let at = p.failed_at.load(Ordering::Relaxed);
        at == 0 || now.saturating_sub(at - 1) >= self.path_retry_ns
    }

    fn now_ns(&self) -> u64 {
        self.clock.elapsed().as_nanos() as u64
    }

    /// Fetches the routing table through any working path, unless it was fetched
    /// again since `seen` (the fetch count the caller saw before its unit attention).
    async fn fetch_table(&self, seen: u64) -> Result<()> {
        let _g = self.refresh.lock().await;
        if self.refreshed.load(Ordering::Acquire) != seen {
            return Ok(());
        }
        let mut last = Error::NoPath("no working path to fetch the routing table".into());
        let now = self.now_ns();
        for path in self.paths.iter().filter(|p| self.usable(p, now)) {
            match read_table(&path.session).await {
                Ok(t) => {
                    self.install_table(t);
                    self.refreshed.fetch_add(1, Ordering::AcqRel);
                    self.counters.table_fetches.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn install_table(&self, t: WireTable) {
        let mut by_portal: HashMap<SocketAddr, u32> = HashMap::new();
        for n in &t.nodes {
            for nic in &n.nics {
                for p in &nic.portals {
                    by_portal.insert(*p, n.id.0);
                }
            }
        }
        let mut node_paths: HashMap<u32, Vec<usize>> = HashMap::new();
        for p in &self.paths {
            let node = by_portal.get(&p.portal.addr).copied().or(p.node);
            if let Some(n) = node {
                node_paths.entry(n).or_default().push(p.index);
            }
        }
        tracing::debug!(
            epoch = t.epoch.0,
            nodes = t.nodes.len(),
            "routing table installed"
        );
        *self.node_paths.write() = node_paths;
        *self.table.write() = Some(Arc::new(t));
    }

    /// The node a path leads to, per the table (else VPD).
    pub fn path_node(&self, path: usize) -> Option<u32> {
        self.node_paths
            .read()
            .iter()
            .find(|(_, v)| v.contains(&path))
            .map(|(n, _)| *n)
            .or(self.paths[path].node)
    }

    /// Splits `lba..lba+blocks` at page boundaries of the table (one piece without
    /// a table).
    fn split(&self, lba: u64, blocks: u32, table: Option<&WireTable>) -> Vec<(u64, u32)> {
        let Some(t) = table else {
            return vec![(lba, blocks)];
        };
        let page = u64::from(t.page_blocks.max(1));
        let mut out = Vec::new();
        let end = lba + u64::from(blocks);
        let mut at = lba;
        while at < end {
            let next = ((at / page) + 1) * page;
            let stop = next.min(end);
            out.push((at, (stop - at) as u32));
            at = stop;
        }
        out
    }

    /// Blocks of `lba..lba+blocks` whose owner is `node`.
    fn owned_blocks(table: &WireTable, node: Option<u32>, lba: u64, blocks: u32) -> u64 {
        let Some(node) = node else { return 0 };
        let page = u64::from(table.page_blocks.max(1));
        let end = lba + u64::from(blocks);
        let mut at = lba;
        let mut owned = 0;
        while at < end {
            let stop = (((at / page) + 1) * page).min(end);
            if table.owner_id(at).map(|n| n.0) == Some(node) {
                owned += stop - at;
            }
            at = stop;
        }
        owned
    }

    fn check_range(&self, lba: u64, blocks: u32) -> Result<()> {
        if blocks == 0
            || lba
                .checked_add(u64::from(blocks))
                .is_none_or(|e| e > self.blocks)
        {
            return Err(Error::Invalid(format!(
                "blocks {lba}..+{blocks} outside a {}-block disk",
                self.blocks
            )));
        }
        Ok(())
    }

    /// Reads `blocks` blocks at `lba`.
    pub async fn read(&self, lba: u64, blocks: u32) -> Result<Bytes> {
        self.check_range(lba, blocks)?;
        let policy = self.policy();
        let table = self.table();
        let pieces = if policy.routing_aware() {
            self.split(lba, blocks, table.as_deref())
        } else {
            vec![(lba, blocks)]
        };
        if pieces.len() == 1 {
            return self.run_piece(lba, blocks, None).await;
        }
        let parts =
            futures::future::try_join_all(pieces.iter().map(|(l, b)| self.run_piece(*l, *b, None)))
                .await?;
        let mut out = BytesMut::with_capacity(blocks as usize * self.block_size as usize);
        for p in parts {
            out.extend_from_slice(&p);
        }
        Ok(out.freeze())
    }

    /// Writes whole blocks at `lba`.
    pub async fn write(&self, lba: u64, data: Bytes) -> Result<()> {
        let bs = self.block_size as usize;
        if data.is_empty() || !data.len().is_multiple_of(bs) {
            return Err(Error::Invalid(format!(
                "a write of {} bytes is not whole {bs}-byte blocks",
                data.len()
            )));
        }
        let blocks =
            u32::try_from(data.len() / bs).map_err(|_| Error::Invalid("write too long".into()))?;
        self.check_range(lba, blocks)?;
        let policy = self.policy();
        let table = self.table();
        let pieces = if policy.routing_aware() {
            self.split(lba, blocks, table.as_deref())
        } else {
            vec![(lba, blocks)]
        };
        futures::future::try_join_all(pieces.iter().map(|(l, b)| {
            let off = (*l - lba) as usize * bs;
            let part = data.slice(off..off + *b as usize * bs);
            self.run_piece(*l, *b, Some(part))
        }))
        .await?;
        Ok(())
    }

    /// The paths a piece may go to.
    fn candidates(&self, lba: u64, table: Option<&WireTable>) -> Vec<usize> {
        let now = self.now_ns();
        let mut alive: Vec<usize> = self
            .paths
            .iter()
            .filter(|p| self.usable(p, now))
            .map(|p| p.index)
            .collect();
        if alive.is_empty() {
            // Every path failed recently: try them all rather than give up.
            alive = (0..self.paths.len()).collect();
        }
        if !self.policy().routing_aware() {
            return alive;
        }
        let Some(owner) = table.and_then(|t| t.owner_id(lba)) else {
            return alive;
        };
        let owned: Vec<usize> = self
            .node_paths
            .read()
            .get(&owner.0)
            .map(|v| v.iter().copied().filter(|p| alive.contains(p)).collect())
            .unwrap_or_default();
        if owned.is_empty() {
            alive
        } else {
            owned
        }
    }

    async fn run_piece(&self, lba: u64, blocks: u32, data: Option<Bytes>) -> Result<Bytes> {
        let bytes = u64::from(blocks) * u64::from(self.block_size);
        let mut last = Error::NoPath("no attempt made".into());
        for _ in 0..PIECE_ATTEMPTS {
            let seen = self.refreshed.load(Ordering::Acquire);
            let table = self.table();
            let candidates = self.candidates(lba, table.as_deref());
            let start = self.now_ns();
            let path = {
                let mut sel = self.selector.lock();
                let p = sel
                    .select(&candidates, bytes, start)
                    .ok_or_else(|| Error::NoPath("every path has failed".into()))?;
                sel.start_io(p, bytes, start);
                p
            };
            let cmd = match &data {
                Some(d) => Command::write_16(lba, d.clone(), self.block_size),
                None => Command::read_16(lba, blocks, self.block_size),
            };
            let p = &self.paths[path];
            let r = p.session.execute(&cmd).await;
            self.selector
                .lock()
                .end_io(path, bytes, start, self.now_ns());
            match r {
                Ok(o) if o.status == STATUS_GOOD => {
                    if data.is_none() && o.data.len() as u64 != bytes {
                        return Err(Error::Protocol(format!(
                            "READ of {bytes} bytes returned {}",
                            o.data.len()
                        )));
                    }
                    p.failed_at.store(0, Ordering::Relaxed);
                    let node = self.path_node(path);
                    let owned = table
                        .as_deref()
                        .map(|t| Self::owned_blocks(t, node, lba, blocks))
                        .unwrap_or(0)
                        * u64::from(self.block_size);
                    let c = &self.counters;
                    c.pieces.fetch_add(1, Ordering::Relaxed);
                    c.bytes.fetch_add(bytes, Ordering::Relaxed);
                    c.owner_bytes.fetch_add(owned, Ordering::Relaxed);
                    p.counters.ios.fetch_add(1, Ordering::Relaxed);
                    p.counters.bytes.fetch_add(bytes, Ordering::Relaxed);
                    p.counters.owner_bytes.fetch_add(owned, Ordering::Relaxed);
                    return Ok(o.data);
                }
                Ok(o) => {
                    let Some(ua) = o.unit_attention().cloned() else {
                        return Err(o.good().err().unwrap_or(Error::Status(0)));
                    };
                    if ua.is_routing_change() {
                        self.counters
                            .routing_attentions
                            .fetch_add(1, Ordering::Relaxed);
                        if let Err(e) = self.fetch_table(seen).await {
                            tracing::warn!(error = %e, "routing table refetch failed");
                        }
                    } else {
                        self.counters
                            .other_attentions
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    last = Error::Check(ua);
                }
                Err(e) if e.is_connection_loss() || matches!(e, Error::SessionClosed) => {
                    tracing::warn!(portal = %p.portal.addr, error = %e, "path failed");
                    p.failed_at.store(self.now_ns() + 1, Ordering::Relaxed);
                    self.counters.path_failures.fetch_add(1, Ordering::Relaxed);
                    last = e;
                }
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// Logs out of every path.
    pub async fn close(&self) {
        let outs = self.paths.iter().map(|p| p.session.logout());
        for r in futures::future::join_all(outs).await {
            if let Err(e) = r {
                tracing::debug!(error = %e, "logout");
            }
        }
    }
}

/// Reads the whole routing table through one session (READ ROUTING TABLE in
/// pieces, starting over when it changed midway).
pub async fn read_table(session: &Session) -> Result<WireTable> {
    let mut last = String::new();
    for _ in 0..TABLE_ATTEMPTS {
        let mut asm = Assembler::new();
        let mut offset = 0u64;
        let mut restart = false;
        for _ in 0..(wire_max_pieces()) {
            let o = session
                .execute_past_ua(
                    &Command::read_routing_table(offset, TABLE_PIECE),
                    UA_RETRIES,
                )
                .await?;
            match asm.push(offset, &o.data) {
                Ok(Progress::Complete(t)) => return Ok(*t),
                Ok(Progress::NeedMore { offset: o, .. }) => offset = o,
                Err(e) => {
                    last = e.to_string();
                    restart = true;
                    break;
                }
            }
        }
        if !restart {
            last = "the table never completed".into();
        }
    }
    Err(Error::Routing(format!(
        "no consistent routing table after {TABLE_ATTEMPTS} tries: {last}"
    )))
}

/// Most pieces one table fetch may take (the format's size limit over the piece).
fn wire_max_pieces() -> usize {
    wire::MAX_ENCODED_LEN / TABLE_PIECE as usize + 2
}
