//! The target process: volumes opened as logical units, one listener per portal,
//! a bounded number of connections, and orderly shutdown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock, Weak};

use anyhow::{Context, Result};
use mosaic_proto::negotiate::TargetLimits;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tracing::{info, warn};

use crate::cluster::portals::PortalLoad;
use crate::config::{Backing, Settings};
use crate::device::{Device, SessionStopper, TaskAborter};
use crate::latency::CommandLatency;
use crate::login::{LoginTarget, TargetAccess};
use crate::pr::Initiator;
use crate::scsi::{LogicalUnit, LuConfig, LuOptions};
use crate::session::SessionRegistry;
use crate::store::BackingStore;

/// Connections a target accepts at once, beyond which new ones wait in the kernel's
/// backlog; a few per session allowed, so discovery can always get in.
const CONNECTIONS_PER_SESSION: u32 = 2;

/// One exported volume.
#[derive(Debug, Clone)]
pub struct Export {
    pub iqn: String,
    pub device: Arc<Device>,
}

/// The volumes a node exports, by target IQN. Volumes come and go at run time in a
/// cluster (created, deleted), so it is shared and locked; lookups clone an `Arc`.
#[derive(Debug, Default)]
pub struct Exports {
    inner: parking_lot::RwLock<HashMap<String, Export>>,
    /// The sessions of the node serving these exports, once it is bound: every
    /// device exported, then or later, gets a [`TaskAborter`] into them so that
    /// PREEMPT AND ABORT reaches the preempted initiators' tasks. The first node
    /// to attach keeps them (the lab's group portal shares node 1's exports and
    /// serves no normal session: it redirects them).
    sessions: OnceLock<Weak<SessionRegistry>>,
}

impl Exports {
    pub fn new(map: HashMap<String, Export>) -> Exports {
        Exports {
            inner: parking_lot::RwLock::new(map),
            sessions: OnceLock::new(),
        }
    }
    /// The export of a target IQN.
    pub fn get(&self, iqn: &str) -> Option<Export> {
        self.inner.read().get(iqn).cloned()
    }
    /// Every target IQN, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.inner.read().keys().cloned().collect();
        v.sort();
        v
    }
    /// Every export.
    pub fn all(&self) -> Vec<Export> {
        self.inner.read().values().cloned().collect()
    }
    /// Adds (or replaces) an export; its device can abort the tasks of the node's
    /// sessions if [`Exports::attach_sessions`] was called.
    pub fn insert(&self, e: Export) {
        // Under the lock, so that an `attach_sessions` running now either is seen
        // here or sees this export in the map.
        let mut map = self.inner.write();
        if let Some(sessions) = self.sessions.get() {
            install_task_aborter(&e, sessions.clone());
        }
        map.insert(e.iqn.clone(), e);
    }
    /// Removes an export; sessions already logged in keep their device until they end.
    pub fn remove(&self, iqn: &str) -> Option<Export> {
        self.inner.write().remove(iqn)
    }
    /// Connects every device exported now and later to `registry`, the sessions of
    /// the node serving these exports (see the `sessions` field). Returns whether
    /// this call attached them (`false`: another node already had).
    pub fn attach_sessions(&self, registry: &Arc<SessionRegistry>) -> bool {
        if self.sessions.set(Arc::downgrade(registry)).is_err() {
            return false;
        }
        // See `insert`: the lock orders this against exports being added.
        let map = self.inner.write();
        for e in map.values() {
            install_task_aborter(e, Arc::downgrade(registry));
        }
        true
    }
}

/// How long a TARGET COLD RESET received by another node waits for this node's
/// sessions to the volume to end (they abort their tasks and close): within the
/// announcing node's wait (`cluster::resets::PROPAGATION_LIMIT`).
pub const COLD_RESET_STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Gives `e`'s device the hooks into the node's sessions: the one PREEMPT AND
/// ABORT uses (SPC-4 §5.13.11.2.4: abort every task of the sessions to `e`'s
/// target whose initiator port is preempted), and the one a TARGET COLD RESET
/// received by another node uses (end every session to `e`'s target).
fn install_task_aborter(e: &Export, sessions: Weak<SessionRegistry>) {
    let iqn = e.iqn.clone();
    let registry = sessions.clone();
    e.device
        .set_task_aborter(TaskAborter(Arc::new(move |who: &[Initiator]| {
            if let Some(reg) = registry.upgrade() {
                reg.abort_tasks_where(&iqn, |port| who.iter().any(|i| i.matches_port(port)));
            }
        })));
    let iqn = e.iqn.clone();
    e.device.set_session_stopper(SessionStopper(Arc::new(move || {
        let (registry, iqn) = (sessions.upgrade(), iqn.clone());
        Box::pin(async move {
            if let Some(reg) = registry {
                let late = reg.stop_target(&iqn, COLD_RESET_STOP_WAIT).await;
                if late > 0 {
                    tracing::warn!(target = %iqn, late, "sessions still ending after a cold reset");
                }
            }
        })
    })));
}

/// Everything the connections of a target share.
#[derive(Debug)]
pub struct Target {
    pub settings: Settings,
    /// Volumes by target IQN.
    pub exports: Arc<Exports>,
    pub registry: Arc<SessionRegistry>,
    pub login: LoginTarget,
    /// Addresses actually bound (for SendTargets and tests using port 0).
    pub bound: Vec<SocketAddr>,
    /// This node's target portal group tag and relative target port.
    pub identity: NodeIdentity,
    /// Every portal SendTargets reports (in a cluster, every node's), with its
    /// load for the group portal's redirects.
    pub portals: Arc<PortalLoad>,
    /// Latency of the SCSI commands this node answered.
    pub latency: Arc<CommandLatency>,
}

/// What makes one node distinct to initiators: its portal group and target port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeIdentity {
    /// Target portal group tag (RFC 7143 §13.9): one group per node.
    pub tpgt: u16,
    /// Relative target port identifier (SPC-4 VPD 0x83): one port per node.
    pub relative_port: u16,
}

impl NodeIdentity {
    /// A stand-alone target: group 1, port 1.
    pub const SINGLE: NodeIdentity = NodeIdentity {
        tpgt: PORTAL_GROUP_TAG,
        relative_port: RELATIVE_PORT,
    };
}

/// How a node's server is put together (a stand-alone target, or one node of a
/// cluster, or the cluster's group portal).
#[derive(Debug)]
pub struct NodeSpec {
    pub settings: Settings,
    pub exports: Arc<Exports>,
    pub identity: NodeIdentity,
    /// The cluster's portals; `None` for a stand-alone target (its own bound ones).
    pub portals: Option<Arc<PortalLoad>>,
    /// Redirect Normal logins (the group portal).
    pub redirect: bool,
}

/// Our target portal group tag: a single node is a single portal group.
pub const PORTAL_GROUP_TAG: u16 = 1;
/// Our relative target port identifier (VPD 0x83): one port per node.
pub const RELATIVE_PORT: u16 = 1;

/// Opens every volume of the settings as a logical unit.
pub fn open_exports(settings: &Settings) -> Result<HashMap<String, Export>> {
    let mut exports = HashMap::new();
    // Reservation state (APTPL) lives here even for memory-backed volumes.
    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("creating data directory {}", settings.data_dir.display()))?;
    for (i, v) in settings.volumes.iter().enumerate() {
        let store = match v.backing {
            Backing::File => {
                if let Some(dir) = v.path.parent() {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("creating data directory {}", dir.display()))?;
                }
                let opened = BackingStore::open_file(&v.path, v.size);
                if v.read_only {
                    // Created (sparse) if missing above; served without write access.
                    drop(opened);
                    BackingStore::open_file_read_only(&v.path, v.size)
                } else {
                    opened
                }
                .with_context(|| format!("volume {}: opening {}", v.name, v.path.display()))?
            }
            Backing::Memory => BackingStore::memory(v.size),
        };
        let export = build_export(settings, v, store, NodeIdentity::SINGLE)
            .with_context(|| format!("volume {} (volumes[{i}])", v.name))?;
        exports.insert(v.iqn.clone(), export);
    }
    // EXTENDED COPY between volumes: each device reaches the others through this.
    let copy_manager = crate::xcopy::CopyManager::new();
    for e in exports.values() {
        copy_manager.register(&e.device);
    }
    Ok(exports)
}

/// The logical unit and device of one volume over `store`, as node `identity`
/// exports it. Every node of a cluster builds the same identity (NAA, serial) for
/// a volume, so multipath groups the paths; the port and group differ per node.
pub fn build_export(
    settings: &Settings,
    v: &crate::config::Volume,
    store: BackingStore,
    identity: NodeIdentity,
) -> Result<Export> {
    let lu = LogicalUnit::with_options(
        LuConfig {
            name: v.name.clone(),
            block_size: v.block_size,
            serial: format!("MOSAIC{:010}", stable_hash(&v.iqn) % 10_000_000_000),
            naa_id: stable_hash(&v.iqn),
            vendor: "MOSAIC".into(),
            product: "Mosaic volume".into(),
            revision: "0001".into(),
            target_name: v.iqn.clone(),
            relative_port: identity.relative_port,
            tpg: identity.tpgt,
        },
        store,
        LuOptions {
            thin: v.thin,
            read_only: v.read_only,
        },
    )?;
    // Reservations with APTPL survive restarts in this file.
    let device = Device::with_aptpl_file(
        lu,
        Some(settings.data_dir.join(format!("{}.pr.toml", v.name))),
    )
    .context("reservations")?;
    Ok(Export {
        iqn: v.iqn.clone(),
        device: Arc::new(device),
    })
}

/// FNV-1a: a hash that stays the same across runs and builds, so a volume keeps
/// its device identity (VPD 0x83) and serial number across restarts.
pub fn stable_hash(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The negotiation limits derived from the configuration.
pub fn target_limits(settings: &Settings) -> TargetLimits {
    let l = &settings.limits;
    TargetLimits {
        max_recv_data_segment_length: l.max_recv_data_segment_length,
        max_burst_length: l.max_burst_length,
        first_burst_length: l.first_burst_length,
        max_outstanding_r2t: l.max_outstanding_r2t,
        immediate_data: l.immediate_data,
        initial_r2t: l.initial_r2t,
        // Recorded, not answered: names the connection's MPIO group.
        vendor_keys: vec![crate::cluster::portals::MPIO_GROUP_KEY.to_string()],
        ..TargetLimits::default()
    }
}

/// A running target: its listeners are bound; `run` serves until shutdown.
#[derive(Debug)]
pub struct Server {
    target: Arc<Target>,
    listeners: Vec<TcpListener>,
}

impl Server {
    /// Opens the volumes and binds every portal: a stand-alone target.
    pub async fn bind(settings: Settings) -> Result<Server> {
        let exports = Arc::new(Exports::new(open_exports(&settings)?));
        Server::bind_node(NodeSpec {
            settings,
            exports,
            identity: NodeIdentity::SINGLE,
            portals: None,
            redirect: false,
        })
        .await
    }

    /// Binds the portals of one node with the given exports.
    pub async fn bind_node(spec: NodeSpec) -> Result<Server> {
        let NodeSpec {
            settings,
            exports,
            identity,
            portals,
            redirect,
        } = spec;
        let mut listeners = Vec::new();
        let mut bound = Vec::new();
        for p in &settings.portals {
            let l = TcpListener::bind(p)
                .await
                .with_context(|| format!("binding portal {p}"))?;
            bound.push(l.local_addr()?);
            listeners.push(l);
        }
        let portals = portals.unwrap_or_else(|| {
            Arc::new(PortalLoad::new(
                bound.iter().map(|a| (*a, identity.tpgt, 0)),
            ))
        });
        let login = LoginTarget {
            target_names: exports.names(),
            portal_group_tag: identity.tpgt,
            limits: target_limits(&settings),
            discovery_chap: settings.discovery_chap.clone(),
            access: settings
                .volumes
                .iter()
                .map(|v| {
                    (
                        v.iqn.clone(),
                        TargetAccess {
                            chap: v.chap.clone(),
                            initiators: v.initiators.clone(),
                        },
                    )
                })
                .collect(),
            redirect: redirect.then(|| portals.clone()),
        };
        let registry = Arc::new(SessionRegistry::default());
        // PREEMPT AND ABORT reaches the preempted initiators' sessions here, for
        // the volumes exported now and those created at run time.
        exports.attach_sessions(&registry);
        let target = Arc::new(Target {
            settings,
            exports,
            registry,
            login,
            bound,
            identity,
            portals,
            latency: Arc::default(),
        });
        Ok(Server { target, listeners })
    }

    /// The shared target state.
    pub fn target(&self) -> &Arc<Target> {
        &self.target
    }

    /// Accepts connections on every portal until `shutdown` turns `true`.
    pub async fn run(self, shutdown: watch::Receiver<bool>) -> Result<()> {
        let max_conns = self
            .target
            .settings
            .limits
            .max_sessions
            .saturating_mul(CONNECTIONS_PER_SESSION) as usize;
        let permits = Arc::new(Semaphore::new(max_conns));
        let mut tasks = tokio::task::JoinSet::new();
        for (listener, addr) in self.listeners.into_iter().zip(self.target.bound.clone()) {
            info!("listening on {addr}");
            let target = self.target.clone();
            let permits = permits.clone();
            let mut shutdown = shutdown.clone();
            tasks.spawn(async move {
                loop {
                    let permit = tokio::select! {
                        p = permits.clone().acquire_owned() => p.expect("semaphore never closed"),
                        _ = crate::conn::stopped(&mut shutdown) => break,
                    };
                    let accepted = tokio::select! {
                        a = listener.accept() => a,
                        _ = crate::conn::stopped(&mut shutdown) => break,
                    };
                    match accepted {
                        Ok((stream, peer)) => {
                            let target = target.clone();
                            let shutdown = shutdown.clone();
                            let counted = target.portals.connected(addr);
                            tokio::spawn(async move {
                                crate::conn::serve(target, stream, peer, shutdown).await;
                                drop(counted);
                                drop(permit);
                            });
                        }
                        Err(e) => {
                            warn!("accept on {addr}: {e}");
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        }
                    }
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        // Let connections notice the shutdown and close, bounded.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while permits.available_permits() < max_conns && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        for e in self.target.exports.all() {
            if let Err(err) = e.device.flush().await {
                warn!("flushing {} at shutdown: {err}", e.iqn);
            }
        }
        info!("stopped");
        Ok(())
    }
}
