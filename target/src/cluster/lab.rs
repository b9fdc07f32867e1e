//! The lab cluster: several equivalent nodes in one process, sharing the embedded
//! coordinator, each with its own NIC portals on distinct loopback addresses
//! (node `i`, NIC `j` at `127.0.i.j`), an inter-node link, and a group portal for
//! discovery that redirects Normal logins to the least-loaded node portal.
//!
//! Every volume is spread over all nodes page by page (the routing crate's
//! placement); every node exports every volume under the same IQN and device
//! identity, and serves any I/O: its own pages from its store, the rest over the
//! link from their holders.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use mosaic_coord::{Coordinator, EmbeddedCoordinator};
use mosaic_routing::{plan_create_volume, Node, NodeId, RoutingTable, Volume, VolumeId};
use tokio::sync::watch;
use tracing::info;

use super::link::{LinkConfig, LinkServer, Peers};
use super::portals::PortalLoad;
use super::state::{ClusterState, StateError};
use super::store::{IoMode, IoStats, NodeService};
use super::volumes::{NodeParts, NodeVolumes};
use crate::config::Settings;
use crate::server::{NodeIdentity, NodeSpec, Server};

/// The iSCSI port every portal of the lab listens on.
pub const ISCSI_PORT: u16 = 3260;
/// Capacity each lab node declares for placement: placement is proportional to it,
/// and lab nodes are equal.
const LAB_NODE_CAPACITY: u64 = 1 << 40;
/// Link speed the lab declares for its loopback NICs (Mbit/s), for the NIC planner.
const LAB_NIC_SPEED: u32 = 10_000;
/// Most nodes a lab can have: node `i` uses `127.0.i.x`, and 0 is the group portal's.
pub const MAX_LAB_NODES: u32 = 254;

/// The shape of a lab cluster.
#[derive(Debug, Clone)]
pub struct LabConfig {
    /// Number of nodes.
    pub nodes: u32,
    /// NICs (portal addresses) per node.
    pub nics: u8,
    /// The group portal (discovery and redirects).
    pub group_portal: SocketAddr,
    /// Page size of the volumes created (bytes, a power of two).
    pub page_size: u64,
    /// Replicas per page besides the primary.
    pub replicas: u8,
    /// TCP port of every node portal; the link listens on the next one.
    pub port: u16,
    /// How a node answers reads of pages other nodes own.
    pub io_mode: IoMode,
}

impl Default for LabConfig {
    fn default() -> Self {
        LabConfig {
            nodes: 3,
            nics: 2,
            group_portal: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), ISCSI_PORT),
            page_size: mosaic_routing::DEFAULT_PAGE_SIZE,
            replicas: 1,
            port: ISCSI_PORT,
            io_mode: IoMode::Forward,
        }
    }
}

/// The address of NIC `nic` (1-based) of node `node` (1-based).
pub fn nic_addr(node: u32, nic: u8, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, node as u8, nic)), port)
}

/// The link address of node `node`: its first NIC's address, the next port.
pub fn link_addr(node: u32, port: u16) -> SocketAddr {
    SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(127, 0, node as u8, 1)),
        port.wrapping_add(1),
    )
}

/// A running lab: its servers, bound and ready.
#[derive(Debug)]
pub struct Lab {
    pub config: LabConfig,
    /// Each node's shared state view, by node id.
    pub states: HashMap<u32, Arc<ClusterState>>,
    /// Each node's I/O counters.
    pub stats: HashMap<u32, Arc<IoStats>>,
    /// Every portal with its load.
    pub portals: Arc<PortalLoad>,
    /// Each node's exports (volumes can be added at run time).
    pub exports: HashMap<u32, Arc<crate::server::Exports>>,
    /// Each node's volumes, following the routing table.
    pub volumes: HashMap<u32, Arc<NodeVolumes>>,
    /// Each node as the primary of its pages (page moves start there).
    pub services: HashMap<u32, Arc<NodeService>>,
    /// The coordinator every node shares.
    pub coord: Arc<dyn Coordinator>,
    servers: Vec<Server>,
    links: Vec<LinkServer>,
}

impl Lab {
    /// Builds the cluster: the table, the volumes, each node's stores, exports,
    /// link server and portals.
    pub async fn start(config: LabConfig, settings: Settings) -> Result<Lab> {
        if config.nodes == 0 || config.nodes > MAX_LAB_NODES {
            bail!("--nodes: a lab has 1 to {MAX_LAB_NODES} nodes");
        }
        if config.nics == 0 || config.nics > 254 {
            bail!("--nics: 1 to 254 NICs per node");
        }
        let coord: Arc<dyn Coordinator> = Arc::new(EmbeddedCoordinator::default());
        let nodes: Vec<Node> = (1..=config.nodes)
            .map(|i| {
                let mut n = Node::new(NodeId(i), LAB_NODE_CAPACITY);
                for j in 1..=config.nics {
                    n = n.with_nic(LAB_NIC_SPEED, vec![nic_addr(i, j, config.port)]);
                }
                n
            })
            .collect();
        let initial = RoutingTable::new(nodes).context("building the lab's routing table")?;
        let first = ClusterState::open(coord.clone(), initial.clone()).await?;
        for (i, v) in settings.volumes.iter().enumerate() {
            let volume = Volume {
                id: VolumeId(i as u64 + 1),
                name: v.name.clone(),
                blocks: v.size / u64::from(v.block_size),
                block_size: v.block_size,
                page_size: config.page_size,
                replicas: config.replicas.min(config.nodes.saturating_sub(1) as u8),
            };
            let created = first
                .update(|t| {
                    if t.volume_by_name(&volume.name).is_some() {
                        return Err(StateError::Refused("exists".into()));
                    }
                    Ok(plan_create_volume(t, volume.clone())?)
                })
                .await;
            match created {
                Ok(_) | Err(StateError::Refused(_)) => {}
                Err(e) => return Err(e).with_context(|| format!("creating volume {}", v.name)),
            }
        }
        let portals = Arc::new(
            PortalLoad::new((1..=config.nodes).flat_map(|i| {
                let port = config.port;
                (1..=config.nics).map(move |j| (nic_addr(i, j, port), i as u16, i))
            }))
            // MPIO groups are placed by the NIC planner over the nodes' NICs.
            .with_layout(initial.clone()),
        );
        let mut states = HashMap::new();
        let mut stats_by_node = HashMap::new();
        let mut servers = Vec::new();
        let mut links = Vec::new();
        let mut first_exports = None;
        let mut exports_by_node = HashMap::new();
        let mut volumes_by_node = HashMap::new();
        let mut services = HashMap::new();
        for i in 1..=config.nodes {
            let state = ClusterState::open(coord.clone(), initial.clone()).await?;
            let table = state.table();
            let stats = Arc::new(IoStats::default());
            let peers = Arc::new(Peers::new(LinkConfig::default()));
            for j in 1..=config.nodes {
                if j != i {
                    peers.set_address(j, link_addr(j, config.port));
                }
            }
            let service = Arc::new(NodeService::new(
                NodeId(i),
                state.clone(),
                stats.clone(),
                peers.clone(),
            ));
            let node_dir = settings.data_dir.join(format!("node{i}"));
            let mut node_settings = settings.clone();
            node_settings.data_dir = node_dir.clone();
            node_settings.portals = (1..=config.nics)
                .map(|j| nic_addr(i, j, config.port))
                .collect();
            let identity = NodeIdentity {
                tpgt: i as u16,
                relative_port: i as u16,
            };
            let volumes = Arc::new(NodeVolumes::new(NodeParts {
                node: NodeId(i),
                settings: node_settings.clone(),
                identity,
                coord: coord.clone(),
                state: state.clone(),
                service: service.clone(),
                peers: peers.clone(),
                stats: stats.clone(),
            }));
            let mut exports = HashMap::new();
            for v in &settings.volumes {
                let map = table
                    .volume_by_name(&v.name)
                    .with_context(|| format!("volume {} is not in the table", v.name))?;
                let export = volumes.open(v, map.volume().id, false)?;
                exports.insert(v.iqn.clone(), export);
            }
            let exports = Arc::new(crate::server::Exports::new(exports));
            // Volumes created, resized or deleted from now on follow the table.
            volumes.follow(exports.clone());
            volumes_by_node.insert(i, volumes);
            if first_exports.is_none() {
                first_exports = Some(exports.clone());
            }
            exports_by_node.insert(i, exports.clone());
            service.set_io_mode(config.io_mode);
            services.insert(i, service.clone());
            let link = LinkServer::bind(link_addr(i, config.port), service)
                .await
                .with_context(|| {
                    format!(
                        "node {i}: binding the link on {}",
                        link_addr(i, config.port)
                    )
                })?;
            links.push(link);
            servers.push(
                Server::bind_node(NodeSpec {
                    settings: node_settings,
                    exports,
                    identity,
                    portals: Some(portals.clone()),
                    redirect: false,
                })
                .await
                .with_context(|| format!("node {i}"))?,
            );
            states.insert(i, state);
            stats_by_node.insert(i, stats);
        }
        // The group portal knows the targets (for discovery) and redirects logins.
        let mut group_settings = settings.clone();
        group_settings.portals = vec![config.group_portal];
        servers.push(
            Server::bind_node(NodeSpec {
                settings: group_settings,
                // The same exports as node 1: discovery lists every volume.
                exports: first_exports.unwrap_or_default(),
                identity: NodeIdentity {
                    tpgt: 1,
                    relative_port: 1,
                },
                portals: Some(portals.clone()),
                redirect: true,
            })
            .await
            .context("the group portal")?,
        );
        Ok(Lab {
            config,
            states,
            stats: stats_by_node,
            portals,
            exports: exports_by_node,
            volumes: volumes_by_node,
            services,
            coord,
            servers,
            links,
        })
    }

    /// Each node's target (by node id) and the group portal's (`None`), for
    /// sessions and status.
    pub fn targets(&self) -> Vec<(Option<u32>, Arc<crate::server::Target>)> {
        let nodes = self.config.nodes as usize;
        self.servers
            .iter()
            .enumerate()
            .map(|(k, s)| ((k < nodes).then_some(k as u32 + 1), s.target().clone()))
            .collect()
    }

    /// Serves until `shutdown` turns `true`.
    pub async fn run(self, shutdown: watch::Receiver<bool>) -> Result<()> {
        // The links outlive the portals: a node flushing its volumes at shutdown
        // still reaches its peers.
        let (links_stop_tx, links_stop) = watch::channel(false);
        let mut links = tokio::task::JoinSet::new();
        for l in self.links {
            let s = links_stop.clone();
            links.spawn(async move { l.run(s).await.map_err(anyhow::Error::from) });
        }
        let mut servers = tokio::task::JoinSet::new();
        for srv in self.servers {
            let s = shutdown.clone();
            servers.spawn(async move { srv.run(s).await });
        }
        info!(nodes = self.config.nodes, "lab cluster running");
        let mut result = Ok(());
        let mut note = |r: Result<Result<()>, tokio::task::JoinError>| match r {
            Ok(Err(e)) if result.is_ok() => result = Err(e),
            Err(e) if result.is_ok() => result = Err(e.into()),
            _ => {}
        };
        while let Some(r) = servers.join_next().await {
            note(r);
        }
        let _ = links_stop_tx.send(true);
        while let Some(r) = links.join_next().await {
            note(r);
        }
        result
    }
}
