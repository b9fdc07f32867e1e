//! Placement of a new volume's pages, and the node bookkeeping that every plan
//! shares ([`Cluster`]): dense node indices, failure domains, capacity and bytes in
//! use, and the choice of an eligible node for a copy of a page.
//!
//! Placement spreads pages over the active nodes in proportion to their free
//! capacity with a smooth weighted round robin (each pick adds every node's weight
//! to its credit, takes the eligible node with the most credit and charges it the
//! total weight). Neighbouring pages land on different nodes, so sequential I/O is
//! spread too, and the result depends only on the table and the volume.

use hashbrown::HashMap;

use crate::error::RoutingError;
use crate::model::{NodeId, NodeState, Replica, RoutingTable, Volume, VolumeId, VolumeMap};

/// Dense per-node view of a table used while planning.
#[derive(Debug, Clone)]
pub(crate) struct Cluster {
    /// Node id by dense index (ascending ids).
    pub ids: Vec<NodeId>,
    /// Dense index by node id.
    pub index: HashMap<NodeId, usize>,
    /// Failure domain number by dense index; a node without a domain has its own.
    pub domain: Vec<u32>,
    /// Capacity in bytes.
    pub capacity: Vec<u64>,
    /// Bytes of copies held (primaries and replicas).
    pub used: Vec<u64>,
    /// Bytes of primaries held.
    pub primary_used: Vec<u64>,
    /// Node state.
    pub state: Vec<NodeState>,
}

impl Cluster {
    /// Build the view, counting the bytes every node holds (one pass over all pages).
    pub fn new(table: &RoutingTable) -> Cluster {
        let n = table.nodes.len();
        let mut ids = Vec::with_capacity(n);
        let mut index = HashMap::with_capacity(n);
        let mut domain = Vec::with_capacity(n);
        let mut capacity = Vec::with_capacity(n);
        let mut state = Vec::with_capacity(n);
        let mut domains: HashMap<&str, u32> = HashMap::new();
        for (i, node) in table.nodes.values().enumerate() {
            ids.push(node.id);
            index.insert(node.id, i);
            let d = match &node.failure_domain {
                Some(name) => {
                    let next = domains.len() as u32;
                    *domains.entry(name.as_str()).or_insert(next)
                }
                // Its own domain: numbers from the top cannot meet named ones.
                None => u32::MAX - i as u32,
            };
            domain.push(d);
            capacity.push(node.capacity);
            state.push(node.state);
        }
        let mut cluster = Cluster {
            ids,
            index,
            domain,
            capacity,
            used: vec![0; n],
            primary_used: vec![0; n],
            state,
        };
        for vm in table.volumes.values() {
            cluster.count_volume(vm);
        }
        cluster
    }

    fn count_volume(&mut self, vm: &VolumeMap) {
        let full = vm.page_bytes(0);
        let last = vm.page_count().saturating_sub(1);
        for (page, primary) in vm.primaries.iter().enumerate() {
            let bytes = if page as u64 == last {
                vm.page_bytes(last)
            } else {
                full
            };
            if let Some(&i) = self.index.get(primary) {
                self.used[i] += bytes;
                self.primary_used[i] += bytes;
            }
            for r in vm.replicas(page as u64) {
                if let Some(&i) = self.index.get(&r.node) {
                    self.used[i] += bytes;
                }
            }
        }
    }

    /// Dense index of a node id that is known to be in the table.
    #[inline]
    pub fn idx(&self, id: NodeId) -> usize {
        self.index[&id]
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Free bytes of a node.
    pub fn free(&self, i: usize) -> u64 {
        self.capacity[i].saturating_sub(self.used[i])
    }

    /// True for a node that may receive copies.
    pub fn is_active(&self, i: usize) -> bool {
        self.state[i] == NodeState::Active
    }

    /// The eligible node with the lowest `score` for a new copy of a page whose
    /// other copies are on `holders` (dense indices): active, not a holder, with
    /// room for `bytes`; nodes outside the holders' failure domains come first.
    /// Ties go to the lower node id, so the choice is deterministic.
    pub fn pick<S: PartialOrd>(
        &self,
        holders: &[usize],
        bytes: u64,
        mut score: impl FnMut(usize) -> S,
    ) -> Option<usize> {
        let mut best: Option<(bool, S, usize)> = None;
        for i in 0..self.len() {
            if !self.is_active(i) || holders.contains(&i) || self.free(i) < bytes {
                continue;
            }
            let shares_domain = holders.iter().any(|&h| self.domain[h] == self.domain[i]);
            let s = score(i);
            let better = match &best {
                None => true,
                Some((bd, bs, _)) => (shares_domain, &s) < (*bd, bs),
            };
            if better {
                best = Some((shares_domain, s, i));
            }
        }
        best.map(|(_, _, i)| i)
    }

    /// Number of distinct failure domains among the nodes.
    pub fn distinct_domains(&self, nodes: &[usize]) -> usize {
        let mut seen: Vec<u32> = nodes.iter().map(|&i| self.domain[i]).collect();
        seen.sort_unstable();
        seen.dedup();
        seen.len()
    }
}

/// Place a new volume: every page gets a primary and `volume.replicas` replicas on
/// distinct active nodes, in proportion to free capacity, replicas in other
/// failure domains than the page's other copies when there are such nodes.
/// Returns the next table (epoch + 1). Deterministic for the same input.
pub fn plan_create_volume(
    table: &RoutingTable,
    volume: Volume,
) -> Result<RoutingTable, RoutingError> {
    volume.validate()?;
    if table.volumes.contains_key(&volume.id) {
        return Err(RoutingError::DuplicateVolume(volume.id));
    }
    if let Some(other) = table.volume_by_name(&volume.name) {
        return Err(RoutingError::DuplicateVolume(other.volume.id));
    }
    let mut cluster = Cluster::new(table);
    let map = place(&mut cluster, &volume, 0, None)?;
    let mut next = table.clone();
    next.volumes.insert(volume.id, map);
    next.epoch = next.epoch.next();
    Ok(next)
}

/// Grow or shrink a volume to `blocks`. Existing pages keep their owners; new
/// pages are placed as for a new volume; pages past the new end are dropped.
/// Returns the next table (epoch + 1).
pub fn plan_resize_volume(
    table: &RoutingTable,
    volume: VolumeId,
    blocks: u64,
) -> Result<RoutingTable, RoutingError> {
    let old = table
        .volume(volume)
        .ok_or(RoutingError::UnknownVolume(volume))?;
    let mut geometry = old.volume.clone();
    geometry.blocks = blocks;
    geometry.validate()?;
    let old_pages = old.page_count();
    let new_pages = geometry.page_count();
    let r = usize::from(geometry.replicas);
    let mut cluster = Cluster::new(table);
    let map = if new_pages <= old_pages {
        let keep = new_pages as usize;
        VolumeMap::from_parts(
            geometry,
            old.primaries[..keep].to_vec(),
            old.replicas[..keep * r].to_vec(),
        )
    } else {
        // The old last page may have been partial: its bytes grow in place.
        place(&mut cluster, &geometry, old_pages, Some(old))?
    };
    let mut next = table.clone();
    next.volumes.insert(volume, map);
    next.epoch = next.epoch.next();
    Ok(next)
}

/// Place pages `first..` of `volume`, copying pages before `first` from `old`.
fn place(
    cluster: &mut Cluster,
    volume: &Volume,
    first: u64,
    old: Option<&VolumeMap>,
) -> Result<VolumeMap, RoutingError> {
    let copies = volume.copies();
    let active: Vec<usize> = (0..cluster.len())
        .filter(|&i| cluster.is_active(i))
        .collect();
    if active.len() < copies {
        return Err(RoutingError::NotEnoughNodes {
            needed: copies,
            available: active.len(),
        });
    }
    let pages = volume.page_count();
    let page_blocks = volume.page_blocks();
    let page_bytes = |p: u64| {
        let len = page_blocks.min(volume.blocks - p * page_blocks);
        len * u64::from(volume.block_size)
    };
    let needed: u128 = (first..pages)
        .map(|p| u128::from(page_bytes(p)))
        .sum::<u128>()
        * copies as u128;
    let free: u128 = active.iter().map(|&i| u128::from(cluster.free(i))).sum();
    if needed > free {
        return Err(RoutingError::InsufficientCapacity { needed, free });
    }

    let r = usize::from(volume.replicas);
    let mut primaries = Vec::with_capacity(pages as usize);
    let mut replicas = Vec::with_capacity(pages as usize * r);
    if let Some(old) = old {
        primaries.extend_from_slice(&old.primaries[..first as usize]);
        replicas.extend_from_slice(&old.replicas[..first as usize * r]);
    }

    // Smooth weighted round robin, one credit line for primaries and one for
    // replicas so that both are spread in proportion to free capacity.
    let weight: Vec<i128> = (0..cluster.len())
        .map(|i| {
            if cluster.is_active(i) {
                i128::from(cluster.free(i))
            } else {
                0
            }
        })
        .collect();
    let total: i128 = weight.iter().sum::<i128>().max(1);
    let n = cluster.len();
    let mut credit_p = vec![0i128; n];
    // One credit line per primary node: the replicas of each node's pages spread
    // over all the other nodes (by capacity), so that a failed node's work is
    // taken over by many nodes, not by one neighbour.
    let mut credit_r = vec![0i128; n * n];
    // And one line over all replicas, so that each node's replica total follows
    // its capacity closely too.
    let mut credit_all = vec![0i128; n];
    let mut holders: Vec<usize> = Vec::with_capacity(copies);

    for page in first..pages {
        let bytes = page_bytes(page);
        holders.clear();
        for &i in &active {
            credit_p[i] += weight[i];
        }
        let p = cluster
            .pick(&holders, bytes, |i| std::cmp::Reverse(credit_p[i]))
            .ok_or(RoutingError::InsufficientCapacity { needed, free })?;
        credit_p[p] -= total;
        cluster.used[p] += bytes;
        cluster.primary_used[p] += bytes;
        holders.push(p);
        primaries.push(cluster.ids[p]);
        let line = &mut credit_r[p * n..(p + 1) * n];
        for _ in 0..r {
            for &i in &active {
                line[i] += weight[i];
                credit_all[i] += weight[i];
            }
            let q = cluster
                .pick(&holders, bytes, |i| {
                    std::cmp::Reverse(line[i] + credit_all[i])
                })
                .ok_or(RoutingError::InsufficientCapacity { needed, free })?;
            line[q] -= total;
            credit_all[q] -= total;
            cluster.used[q] += bytes;
            holders.push(q);
            replicas.push(Replica {
                node: cluster.ids[q],
                in_sync: true,
            });
        }
    }
    Ok(VolumeMap::from_parts(volume.clone(), primaries, replicas))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Node;

    const GIB: u64 = 1 << 30;

    fn volume(id: u64, pages: u64, replicas: u8) -> Volume {
        Volume {
            id: VolumeId(id),
            name: format!("vol{id}"),
            blocks: pages * 8,
            block_size: 512,
            page_size: 4096,
            replicas,
        }
    }

    #[test]
    fn equal_nodes_get_equal_shares_and_replicas_elsewhere() {
        let table = RoutingTable::new((0..4).map(|i| Node::new(NodeId(i), GIB))).unwrap();
        let next = plan_create_volume(&table, volume(1, 400, 1)).unwrap();
        assert_eq!(next.epoch(), table.epoch().next());
        next.validate().unwrap();
        let vm = next.volume(VolumeId(1)).unwrap();
        let mut count = [0u32; 4];
        for p in 0..400 {
            let primary = vm.primary(p).unwrap();
            count[primary.0 as usize] += 1;
            assert_eq!(vm.replicas(p).len(), 1);
            assert_ne!(vm.replicas(p)[0].node, primary);
        }
        assert_eq!(count, [100; 4]);
        // Neighbouring pages are on different nodes.
        assert_ne!(vm.primary(0), vm.primary(1));
    }

    #[test]
    fn shares_follow_free_capacity() {
        let nodes = [Node::new(NodeId(0), GIB), Node::new(NodeId(1), 3 * GIB)];
        let table = RoutingTable::new(nodes).unwrap();
        let next = plan_create_volume(&table, volume(1, 400, 0)).unwrap();
        let vm = next.volume(VolumeId(1)).unwrap();
        let on1 = vm.primaries().iter().filter(|&&n| n == NodeId(1)).count();
        assert_eq!(on1, 300);
    }

    #[test]
    fn replicas_go_to_other_failure_domains() {
        let nodes = [
            Node::new(NodeId(0), GIB).with_domain("a"),
            Node::new(NodeId(1), GIB).with_domain("a"),
            Node::new(NodeId(2), GIB).with_domain("b"),
            Node::new(NodeId(3), GIB).with_domain("b"),
        ];
        let table = RoutingTable::new(nodes).unwrap();
        let next = plan_create_volume(&table, volume(1, 64, 1)).unwrap();
        let vm = next.volume(VolumeId(1)).unwrap();
        for p in 0..64 {
            let a = vm.primary(p).unwrap().0 / 2;
            let b = vm.replicas(p)[0].node.0 / 2;
            assert_ne!(a, b, "page {p} has both copies in one domain");
        }
    }

    #[test]
    fn placement_is_deterministic() {
        let table =
            RoutingTable::new((0..5).map(|i| Node::new(NodeId(i), GIB + u64::from(i)))).unwrap();
        let a = plan_create_volume(&table, volume(1, 300, 2)).unwrap();
        let b = plan_create_volume(&table, volume(1, 300, 2)).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn too_few_nodes_or_too_little_room_is_refused() {
        let table = RoutingTable::new((0..2).map(|i| Node::new(NodeId(i), 4096 * 10))).unwrap();
        assert_eq!(
            plan_create_volume(&table, volume(1, 4, 2)),
            Err(RoutingError::NotEnoughNodes {
                needed: 3,
                available: 2
            })
        );
        assert!(matches!(
            plan_create_volume(&table, volume(1, 11, 1)),
            Err(RoutingError::InsufficientCapacity { .. })
        ));
        assert!(plan_create_volume(&table, volume(1, 10, 1)).is_ok());
    }

    #[test]
    fn duplicate_volume_is_refused() {
        let table = RoutingTable::new((0..2).map(|i| Node::new(NodeId(i), GIB))).unwrap();
        let next = plan_create_volume(&table, volume(1, 4, 1)).unwrap();
        assert!(plan_create_volume(&next, volume(1, 4, 1)).is_err());
        let mut same_name = volume(2, 4, 1);
        same_name.name = "vol1".into();
        assert!(plan_create_volume(&next, same_name).is_err());
    }

    #[test]
    fn resize_keeps_old_pages_and_places_new_ones() {
        let table = RoutingTable::new((0..3).map(|i| Node::new(NodeId(i), GIB))).unwrap();
        let t1 = plan_create_volume(&table, volume(1, 10, 1)).unwrap();
        let t2 = plan_resize_volume(&t1, VolumeId(1), 20 * 8).unwrap();
        t2.validate().unwrap();
        let (a, b) = (
            t1.volume(VolumeId(1)).unwrap(),
            t2.volume(VolumeId(1)).unwrap(),
        );
        assert_eq!(b.page_count(), 20);
        assert_eq!(&b.primaries()[..10], a.primaries());
        let t3 = plan_resize_volume(&t2, VolumeId(1), 5 * 8 - 3).unwrap();
        t3.validate().unwrap();
        assert_eq!(t3.volume(VolumeId(1)).unwrap().page_count(), 5);
    }
}
