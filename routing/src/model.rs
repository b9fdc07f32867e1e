//! The data model of the routing table: nodes with their NICs and portals, volumes
//! cut into pages, the page map (primary and ordered replicas per page) and the
//! versioned table that holds them all. Everything here is plain data, serde
//! serialisable so that the coordinator can store it; decisions live in
//! [`crate::placement`] and [`crate::plan`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::error::RoutingError;

/// Default page size: 16 MiB. Large enough that a 1 TiB volume has 65,536 pages
/// (a page map of a few hundred KiB) and that sequential streams stay on one node
/// for a while; small enough to spread a volume over a few dozen nodes.
pub const DEFAULT_PAGE_SIZE: u64 = 16 << 20;

/// Smallest block size: the SCSI logical block of 512 bytes.
pub const MIN_BLOCK_SIZE: u32 = 512;

/// Largest block size we accept: 64 KiB, beyond any real disk's logical block.
pub const MAX_BLOCK_SIZE: u32 = 64 << 10;

/// Largest page size: 1 GiB. Bigger pages would make rebalancing moves too coarse.
pub const MAX_PAGE_SIZE: u64 = 1 << 30;

/// Most replicas per page (besides the primary). Eight copies of every page is
/// already far beyond what any deployment wants; it bounds the page-map stride.
pub const MAX_REPLICAS: u8 = 7;

/// Identity of a target node in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub u32);

impl NodeId {
    /// Marks an empty replica slot inside the page map; never a real node.
    pub const NONE: NodeId = NodeId(u32::MAX);
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

/// Identity of a volume, stable across renames; also carried in the wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct VolumeId(pub u64);

impl fmt::Display for VolumeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

/// Identity of a NIC inside its node (0, 1, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NicId(pub u8);

impl fmt::Display for NicId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "nic{}", self.0)
    }
}

/// Version of the routing table. Every change of ownership is a new epoch; nodes
/// refuse inter-node requests that carry an older one.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Epoch(pub u64);

impl Epoch {
    /// The epoch that follows this one.
    pub fn next(self) -> Epoch {
        Epoch(self.0 + 1)
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "e{}", self.0)
    }
}

/// Lifecycle of a node as the table sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NodeState {
    /// Serves I/O and receives new pages.
    Active,
    /// Still serves the pages it has, but receives no new ones and is being emptied.
    Draining,
    /// Gone: holds no pages in the table any more (the failure plan took them over).
    Failed,
}

impl NodeState {
    /// Wire code of the state (see docs/wire-formats.md).
    pub fn code(self) -> u8 {
        match self {
            NodeState::Active => 0,
            NodeState::Draining => 1,
            NodeState::Failed => 2,
        }
    }

    /// The state for a wire code, if known.
    pub fn from_code(code: u8) -> Option<NodeState> {
        match code {
            0 => Some(NodeState::Active),
            1 => Some(NodeState::Draining),
            2 => Some(NodeState::Failed),
            _ => None,
        }
    }
}

/// One network interface of a node with the iSCSI portals bound to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nic {
    /// Index of the NIC on its node.
    pub id: NicId,
    /// Link speed in Mbit/s: the NIC planner weighs connections by it.
    pub speed_mbps: u32,
    /// Portals (address and TCP port) that listen on this NIC.
    pub portals: Vec<SocketAddr>,
}

/// A target node: its identity, its NICs, its room for pages and its state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Cluster-wide identity.
    pub id: NodeId,
    /// Human-readable name (host name), for listings only.
    pub name: String,
    /// Network interfaces with their portals; the NIC planner spreads MPIO groups
    /// over them.
    pub nics: Vec<Nic>,
    /// Bytes of page data this node can hold: placement is proportional to it.
    pub capacity: u64,
    /// Rack, power or host group: replicas go to other failure domains when there
    /// are any. `None` means the node is a domain of its own.
    pub failure_domain: Option<String>,
    /// Active, draining or failed.
    pub state: NodeState,
}

impl Node {
    /// An active node with one NIC per given portal list, all at `speed_mbps`.
    pub fn new(id: NodeId, capacity: u64) -> Node {
        Node {
            id,
            name: format!("node{}", id.0),
            nics: Vec::new(),
            capacity,
            failure_domain: None,
            state: NodeState::Active,
        }
    }

    /// Builder: set the failure domain.
    pub fn with_domain(mut self, domain: impl Into<String>) -> Node {
        self.failure_domain = Some(domain.into());
        self
    }

    /// Builder: add a NIC with its portals.
    pub fn with_nic(mut self, speed_mbps: u32, portals: Vec<SocketAddr>) -> Node {
        let id = NicId(self.nics.len() as u8);
        self.nics.push(Nic {
            id,
            speed_mbps,
            portals,
        });
        self
    }

    /// True when the node serves I/O (active or draining).
    pub fn is_alive(&self) -> bool {
        self.state != NodeState::Failed
    }
}

/// A volume's identity and geometry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    /// Stable identity.
    pub id: VolumeId,
    /// Name, unique in the cluster; the target IQN is derived from it.
    pub name: String,
    /// Size in logical blocks.
    pub blocks: u64,
    /// Logical block size in bytes: a power of two, 512 to 64 KiB.
    pub block_size: u32,
    /// Page size in bytes: a power of two, at least one block, at most 1 GiB.
    pub page_size: u64,
    /// Replicas per page besides the primary (0 = no redundancy).
    pub replicas: u8,
}

impl Volume {
    /// A volume with 512-byte blocks, the default page size and one replica.
    pub fn new(id: VolumeId, name: impl Into<String>, size_bytes: u64) -> Volume {
        Volume {
            id,
            name: name.into(),
            blocks: size_bytes.div_ceil(512),
            block_size: 512,
            page_size: DEFAULT_PAGE_SIZE,
            replicas: 1,
        }
    }

    /// Check the geometry rules; see [`RoutingError::InvalidVolume`].
    pub fn validate(&self) -> Result<(), RoutingError> {
        if !self.block_size.is_power_of_two()
            || self.block_size < MIN_BLOCK_SIZE
            || self.block_size > MAX_BLOCK_SIZE
        {
            return Err(RoutingError::InvalidVolume(
                "block size must be a power of two from 512 to 65536",
            ));
        }
        if !self.page_size.is_power_of_two()
            || self.page_size < u64::from(self.block_size)
            || self.page_size > MAX_PAGE_SIZE
        {
            return Err(RoutingError::InvalidVolume(
                "page size must be a power of two from one block to 1 GiB",
            ));
        }
        if self.blocks == 0 {
            return Err(RoutingError::InvalidVolume("volume size must not be zero"));
        }
        if self.replicas > MAX_REPLICAS {
            return Err(RoutingError::InvalidVolume("at most 7 replicas"));
        }
        if self.page_count() > u64::from(u32::MAX) {
            return Err(RoutingError::InvalidVolume("at most 2^32 - 1 pages"));
        }
        Ok(())
    }

    /// log2 of the blocks per page.
    pub fn page_shift(&self) -> u32 {
        self.page_size.trailing_zeros() - self.block_size.trailing_zeros()
    }

    /// Blocks per page.
    pub fn page_blocks(&self) -> u64 {
        1 << self.page_shift()
    }

    /// Number of pages (the last one may be partial).
    pub fn page_count(&self) -> u64 {
        self.blocks.div_ceil(self.page_blocks())
    }

    /// Size in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.blocks * u64::from(self.block_size)
    }

    /// Copies per page: the primary and its replicas.
    pub fn copies(&self) -> usize {
        1 + usize::from(self.replicas)
    }
}

/// One replica of a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Replica {
    /// The node that holds it.
    pub node: NodeId,
    /// False while the replica is being rebuilt: it takes writes but may miss old
    /// data, so it must not be promoted.
    pub in_sync: bool,
}

impl Replica {
    /// The content of an empty replica slot.
    pub const EMPTY: Replica = Replica {
        node: NodeId::NONE,
        in_sync: false,
    };
}

/// A volume with its page map: for every page a primary and up to
/// `volume.replicas` ordered replicas. Lookups are constant time: a shift and an
/// index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMap {
    /// Identity and geometry.
    pub(crate) volume: Volume,
    /// log2(blocks per page), cached from the geometry for the lookup.
    pub(crate) page_shift: u32,
    /// Primary of each page, indexed by page number: kept apart from the replicas
    /// so that the owner lookup touches one dense array.
    pub(crate) primaries: Vec<NodeId>,
    /// Replica slots, `volume.replicas` per page in page order; filled slots come
    /// first, empty ones are [`Replica::EMPTY`].
    pub(crate) replicas: Vec<Replica>,
}

impl VolumeMap {
    /// A page map of the given geometry with the given owners. `replicas` holds
    /// `volume.replicas` slots per page.
    pub(crate) fn from_parts(
        volume: Volume,
        primaries: Vec<NodeId>,
        replicas: Vec<Replica>,
    ) -> VolumeMap {
        let page_shift = volume.page_shift();
        VolumeMap {
            volume,
            page_shift,
            primaries,
            replicas,
        }
    }

    /// The volume's identity and geometry.
    pub fn volume(&self) -> &Volume {
        &self.volume
    }

    /// Number of pages.
    pub fn page_count(&self) -> u64 {
        self.primaries.len() as u64
    }

    /// The page that holds `lba`, or `None` past the end of the volume.
    #[inline]
    pub fn page_of(&self, lba: u64) -> Option<u64> {
        (lba < self.volume.blocks).then_some(lba >> self.page_shift)
    }

    /// The node that owns (serves) the block `lba`: constant time.
    #[inline]
    pub fn owner(&self, lba: u64) -> Option<NodeId> {
        if lba >= self.volume.blocks {
            return None;
        }
        self.primaries
            .get((lba >> self.page_shift) as usize)
            .copied()
    }

    /// Primary of a page.
    #[inline]
    pub fn primary(&self, page: u64) -> Option<NodeId> {
        self.primaries.get(page as usize).copied()
    }

    /// The filled replica slots of a page, in order (empty for a page past the end).
    #[inline]
    pub fn replicas(&self, page: u64) -> &[Replica] {
        let r = usize::from(self.volume.replicas);
        let start = page as usize * r;
        match self.replicas.get(start..start + r) {
            Some(slots) => {
                let filled = slots
                    .iter()
                    .position(|s| s.node == NodeId::NONE)
                    .unwrap_or(r);
                &slots[..filled]
            }
            None => &[],
        }
    }

    /// Every node holding a copy of the page, primary first.
    pub fn holders(&self, page: u64) -> impl Iterator<Item = NodeId> + '_ {
        self.primary(page)
            .into_iter()
            .chain(self.replicas(page).iter().map(|r| r.node))
    }

    /// All primaries, by page: the input of the wire format and dm-switch export.
    pub fn primaries(&self) -> &[NodeId] {
        &self.primaries
    }

    /// Bytes of the page (the last page of a volume may be shorter).
    pub fn page_bytes(&self, page: u64) -> u64 {
        let blocks = self.volume.page_blocks();
        let first = page * blocks;
        let len = blocks.min(self.volume.blocks.saturating_sub(first));
        len * u64::from(self.volume.block_size)
    }

    pub(crate) fn slots_mut(&mut self, page: u64) -> &mut [Replica] {
        let r = usize::from(self.volume.replicas);
        let start = page as usize * r;
        &mut self.replicas[start..start + r]
    }

    pub(crate) fn set_primary(&mut self, page: u64, node: NodeId) {
        self.primaries[page as usize] = node;
    }
}

/// The shared, versioned routing table: all nodes, all volumes and their page maps.
/// Nodes cache it; every change is a new table with a higher epoch, made by a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RoutingTable {
    /// Version; see [`Epoch`].
    pub(crate) epoch: Epoch,
    /// Nodes by id, failed ones included until they are removed.
    pub(crate) nodes: BTreeMap<NodeId, Node>,
    /// Volumes by id with their page maps.
    pub(crate) volumes: BTreeMap<VolumeId, VolumeMap>,
}

impl RoutingTable {
    /// A table of epoch 1 with these nodes and no volumes.
    pub fn new(nodes: impl IntoIterator<Item = Node>) -> Result<RoutingTable, RoutingError> {
        let mut table = RoutingTable {
            epoch: Epoch(1),
            ..RoutingTable::default()
        };
        for node in nodes {
            table.insert_node(node)?;
        }
        Ok(table)
    }

    pub(crate) fn insert_node(&mut self, node: Node) -> Result<(), RoutingError> {
        if node.id == NodeId::NONE {
            return Err(RoutingError::ReservedNodeId(node.id));
        }
        if self.nodes.contains_key(&node.id) {
            return Err(RoutingError::DuplicateNode(node.id));
        }
        self.nodes.insert(node.id, node);
        Ok(())
    }

    /// The table's version.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// All nodes by id.
    pub fn nodes(&self) -> &BTreeMap<NodeId, Node> {
        &self.nodes
    }

    /// One node.
    pub fn node(&self, id: NodeId) -> Option<&Node> {
        self.nodes.get(&id)
    }

    /// Nodes that receive new pages.
    pub fn active_nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values().filter(|n| n.state == NodeState::Active)
    }

    /// All volumes by id.
    pub fn volumes(&self) -> &BTreeMap<VolumeId, VolumeMap> {
        &self.volumes
    }

    /// One volume's page map. Callers on the I/O path keep this reference and call
    /// [`VolumeMap::owner`] directly.
    #[inline]
    pub fn volume(&self, id: VolumeId) -> Option<&VolumeMap> {
        self.volumes.get(&id)
    }

    /// A volume by name.
    pub fn volume_by_name(&self, name: &str) -> Option<&VolumeMap> {
        self.volumes.values().find(|v| v.volume.name == name)
    }

    /// The node that owns block `lba` of `volume`: a map lookup for the volume,
    /// then constant time in the number of pages.
    #[inline]
    pub fn owner(&self, volume: VolumeId, lba: u64) -> Option<NodeId> {
        self.volumes.get(&volume)?.owner(lba)
    }

    /// Bytes of page data held by each node (primaries and replicas), by node id.
    pub fn used_bytes(&self) -> BTreeMap<NodeId, u64> {
        let mut used: BTreeMap<NodeId, u64> = self.nodes.keys().map(|&id| (id, 0)).collect();
        for vm in self.volumes.values() {
            for page in 0..vm.page_count() {
                let bytes = vm.page_bytes(page);
                for node in vm.holders(page) {
                    *used.entry(node).or_insert(0) += bytes;
                }
            }
        }
        used
    }

    /// The next table with the replica of `page` on `node` marked in sync, once the
    /// target has finished rebuilding it. Epoch + 1.
    pub fn mark_in_sync(
        &self,
        volume: VolumeId,
        page: u64,
        node: NodeId,
    ) -> Result<RoutingTable, RoutingError> {
        let mut next = self.clone();
        let vm = next
            .volumes
            .get_mut(&volume)
            .ok_or(RoutingError::UnknownVolume(volume))?;
        if page >= vm.page_count() {
            return Err(RoutingError::OutOfRange {
                lba: page << vm.page_shift,
                blocks: 1,
                volume_blocks: vm.volume.blocks,
            });
        }
        let slot = vm
            .slots_mut(page)
            .iter_mut()
            .find(|s| s.node == node)
            .ok_or(RoutingError::UnknownNode(node))?;
        slot.in_sync = true;
        next.epoch = next.epoch.next();
        Ok(next)
    }

    /// The next table with `to` as the primary of `page` (an operator's page move).
    /// Epoch + 1.
    ///
    /// - `to` holds an in-sync replica: the two swap roles, nothing is copied.
    /// - `to` holds no copy: it takes the primary's place and the old primary gives
    ///   its copy up; the caller must have copied the page to `to` first, while
    ///   holding the page against writes (see [`RoutingTable::page_move_copies`]).
    pub fn move_primary(
        &self,
        volume: VolumeId,
        page: u64,
        to: NodeId,
    ) -> Result<RoutingTable, RoutingError> {
        let node = self.node(to).ok_or(RoutingError::UnknownNode(to))?;
        if node.state != NodeState::Active {
            return Err(RoutingError::NodeNotActive(to));
        }
        let mut next = self.clone();
        let vm = next
            .volumes
            .get_mut(&volume)
            .ok_or(RoutingError::UnknownVolume(volume))?;
        let from = vm.primary(page).ok_or(RoutingError::OutOfRange {
            lba: page << vm.page_shift,
            blocks: 1,
            volume_blocks: vm.volume.blocks,
        })?;
        if from == to {
            return Err(RoutingError::MoveRefused("the node is already the primary"));
        }
        match vm.slots_mut(page).iter_mut().find(|s| s.node == to) {
            Some(slot) if !slot.in_sync => {
                return Err(RoutingError::MoveRefused(
                    "the node's replica is still being rebuilt",
                ))
            }
            Some(slot) => {
                slot.node = from;
            }
            None => {}
        }
        vm.set_primary(page, to);
        next.epoch = next.epoch.next();
        Ok(next)
    }

    /// Whether moving the primary of `page` to `to` needs the page's data copied
    /// to `to` first (it holds no copy of it).
    pub fn page_move_copies(&self, volume: VolumeId, page: u64, to: NodeId) -> bool {
        self.volume(volume)
            .is_some_and(|vm| !vm.holders(page).any(|n| n == to))
    }

    /// The next table with every replica marked in sync (a whole rebuild finished).
    /// Epoch + 1.
    pub fn mark_all_in_sync(&self) -> RoutingTable {
        let mut next = self.clone();
        for vm in next.volumes.values_mut() {
            for slot in vm.replicas.iter_mut() {
                if slot.node != NodeId::NONE {
                    slot.in_sync = true;
                }
            }
        }
        next.epoch = next.epoch.next();
        next
    }

    /// The next table without the volume. Epoch + 1.
    pub fn delete_volume(&self, volume: VolumeId) -> Result<RoutingTable, RoutingError> {
        let mut next = self.clone();
        next.volumes
            .remove(&volume)
            .ok_or(RoutingError::UnknownVolume(volume))?;
        next.epoch = next.epoch.next();
        Ok(next)
    }

    /// Check every invariant: geometry, page-map sizes, known and alive holders,
    /// no node twice on a page, filled replica slots first. Run it on a table that
    /// came from outside (the coordinator) before trusting it.
    pub fn validate(&self) -> Result<(), RoutingError> {
        let bad = |s: String| Err(RoutingError::Inconsistent(s));
        for (id, node) in &self.nodes {
            if *id != node.id || *id == NodeId::NONE {
                return bad(format!("node key {id} holds node {}", node.id));
            }
        }
        for (id, vm) in &self.volumes {
            let v = &vm.volume;
            if *id != v.id {
                return bad(format!("volume key {id} holds volume {}", v.id));
            }
            v.validate()?;
            if vm.page_shift != v.page_shift() {
                return bad(format!("{id}: page shift {} is wrong", vm.page_shift));
            }
            let pages = v.page_count() as usize;
            if vm.primaries.len() != pages || vm.replicas.len() != pages * usize::from(v.replicas) {
                return bad(format!("{id}: page map has the wrong size"));
            }
            for page in 0..pages as u64 {
                let slots = &vm.replicas[page as usize * usize::from(v.replicas)..]
                    [..usize::from(v.replicas)];
                let filled = vm.replicas(page).len();
                if slots[filled..].iter().any(|s| s.node != NodeId::NONE) {
                    return bad(format!("{id} page {page}: gap in replica slots"));
                }
                let holders: Vec<NodeId> = vm.holders(page).collect();
                for (i, h) in holders.iter().enumerate() {
                    match self.nodes.get(h) {
                        None => return bad(format!("{id} page {page}: unknown node {h}")),
                        Some(n) if n.state == NodeState::Failed => {
                            return bad(format!("{id} page {page}: failed node {h} holds it"))
                        }
                        Some(_) => {}
                    }
                    if holders[..i].contains(h) {
                        return bad(format!("{id} page {page}: node {h} holds two copies"));
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vol(blocks: u64, block_size: u32, page_size: u64) -> Volume {
        Volume {
            id: VolumeId(1),
            name: "v".into(),
            blocks,
            block_size,
            page_size,
            replicas: 1,
        }
    }

    #[test]
    fn geometry_of_a_volume_with_a_partial_last_page() {
        let v = vol(100, 512, 8192); // 16 blocks per page
        assert_eq!(v.page_shift(), 4);
        assert_eq!(v.page_count(), 7);
        v.validate().unwrap();
        let vm = VolumeMap::from_parts(v, vec![NodeId(0); 7], vec![Replica::EMPTY; 7]);
        assert_eq!(vm.page_bytes(0), 8192);
        assert_eq!(vm.page_bytes(6), 4 * 512);
        assert_eq!(vm.page_of(99), Some(6));
        assert_eq!(vm.page_of(100), None);
        assert_eq!(vm.owner(100), None);
    }

    #[test]
    fn invalid_geometries_are_refused() {
        assert!(vol(10, 500, 8192).validate().is_err());
        assert!(vol(10, 512, 8000).validate().is_err());
        assert!(vol(10, 4096, 2048).validate().is_err());
        assert!(vol(0, 512, 8192).validate().is_err());
        assert!(vol(10, 512, 2 << 30).validate().is_err());
        let mut v = vol(10, 512, 8192);
        v.replicas = 8;
        assert!(v.validate().is_err());
    }

    #[test]
    fn replicas_stop_at_the_first_empty_slot() {
        let mut v = vol(32, 512, 8192);
        v.replicas = 2;
        let r = |n| Replica {
            node: NodeId(n),
            in_sync: true,
        };
        let vm = VolumeMap::from_parts(
            v,
            vec![NodeId(0), NodeId(1)],
            vec![r(1), r(2), r(2), Replica::EMPTY],
        );
        assert_eq!(vm.replicas(0).len(), 2);
        assert_eq!(vm.replicas(1), &[r(2)]);
        assert_eq!(vm.replicas(2), &[] as &[Replica]);
        assert_eq!(
            vm.holders(1).collect::<Vec<_>>(),
            vec![NodeId(1), NodeId(2)]
        );
    }

    #[test]
    fn reserved_and_duplicate_node_ids_are_refused() {
        assert_eq!(
            RoutingTable::new([Node::new(NodeId::NONE, 1)]),
            Err(RoutingError::ReservedNodeId(NodeId::NONE))
        );
        assert_eq!(
            RoutingTable::new([Node::new(NodeId(1), 1), Node::new(NodeId(1), 1)]),
            Err(RoutingError::DuplicateNode(NodeId(1)))
        );
    }
    #[test]
    fn moving_a_primary_swaps_with_a_replica_or_replaces_the_old_primary() {
        let nodes = (1..=3).map(|i| Node::new(NodeId(i), 1 << 40));
        let t = RoutingTable::new(nodes).unwrap();
        let mut v = Volume::new(VolumeId(1), "v", 64 << 20);
        v.page_size = 16 << 20;
        v.replicas = 1;
        let t = crate::plan_create_volume(&t, v).unwrap();
        let vm = t.volume(VolumeId(1)).unwrap();
        let p = vm.primary(0).unwrap();
        let r = vm.replicas(0)[0].node;
        let other = (1..=3).map(NodeId).find(|n| *n != p && *n != r).unwrap();

        // To the replica: roles swap, no copy needed.
        assert!(!t.page_move_copies(VolumeId(1), 0, r));
        let swapped = t.move_primary(VolumeId(1), 0, r).unwrap();
        assert_eq!(swapped.epoch(), t.epoch().next());
        let m = swapped.volume(VolumeId(1)).unwrap();
        assert_eq!(m.primary(0), Some(r));
        assert_eq!(m.replicas(0)[0].node, p);
        swapped.validate().unwrap();

        // To a node without a copy: it replaces the primary, the replica stays.
        assert!(t.page_move_copies(VolumeId(1), 0, other));
        let moved = t.move_primary(VolumeId(1), 0, other).unwrap();
        let m = moved.volume(VolumeId(1)).unwrap();
        assert_eq!(m.primary(0), Some(other));
        assert_eq!(m.replicas(0)[0].node, r);
        assert!(!m.holders(0).any(|n| n == p));
        moved.validate().unwrap();
        // Other pages are untouched.
        for page in 1..m.page_count() {
            assert_eq!(m.primary(page), vm.primary(page));
        }

        // Refusals leave nothing changed.
        assert!(matches!(
            t.move_primary(VolumeId(1), 0, p),
            Err(RoutingError::MoveRefused(_))
        ));
        assert!(t.move_primary(VolumeId(1), 99, r).is_err());
        assert!(t.move_primary(VolumeId(9), 0, r).is_err());
        assert_eq!(
            t.move_primary(VolumeId(1), 0, NodeId(7)),
            Err(RoutingError::UnknownNode(NodeId(7)))
        );
    }
}
