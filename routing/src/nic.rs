//! Connection-to-NIC balancing for MPIO groups (mission idea 3).
//!
//! An initiator names the multipath group its connections belong to (a vendor
//! login key). The planner gives each connection of a group a (node, NIC) so that
//! the group's connections land on distinct NICs, and on distinct nodes when the
//! group asks for it, while the load over all NICs stays even: each pick takes the
//! NIC with the fewest connections per Gbit/s of link speed. After a node or NIC
//! is lost only the connections that were on it move, each to the best NIC that
//! keeps its group distinct (the target redirects them at their next login).

use std::collections::BTreeMap;

use crate::model::{NicId, NodeId, NodeState, RoutingTable, VolumeId};

/// Where one connection goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NicSlot {
    /// The node.
    pub node: NodeId,
    /// The NIC on that node.
    pub nic: NicId,
}

/// One connection that has to move after a loss.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reassignment {
    /// The group it belongs to.
    pub group: String,
    /// Its index inside the group.
    pub connection: usize,
    /// Where it was.
    pub from: NicSlot,
    /// Where it goes; `None` when no NIC is left at all.
    pub to: Option<NicSlot>,
    /// False when the group could not be kept on distinct NICs (or nodes).
    pub distinct: bool,
}

/// Why a group could not be placed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NicError {
    /// Fewer usable NICs (or nodes) than connections asked for.
    #[error("{asked} distinct {what} asked for, {available} available")]
    NotEnough {
        /// "NICs" or "nodes".
        what: &'static str,
        /// Connections asked for.
        asked: usize,
        /// Distinct NICs or nodes usable.
        available: usize,
    },
    /// The planner knows no such node or NIC.
    #[error("unknown NIC {0:?}")]
    UnknownNic(NicSlot),
}

#[derive(Debug, Clone)]
struct NicState {
    slot: NicSlot,
    speed_mbps: u32,
    connections: u32,
    up: bool,
}

#[derive(Debug, Clone)]
struct Group {
    volume: VolumeId,
    distinct_nodes: bool,
    connections: Vec<Option<NicSlot>>,
}

/// The NIC planner: the NICs of the live nodes with their connection counts, and
/// the MPIO groups placed on them.
#[derive(Debug, Clone, Default)]
pub struct NicPlanner {
    nics: Vec<NicState>,
    groups: BTreeMap<String, Group>,
}

impl NicPlanner {
    /// A planner over the NICs of the table's active nodes, with no connections.
    pub fn from_table(table: &RoutingTable) -> NicPlanner {
        let mut nics = Vec::new();
        for node in table.nodes().values() {
            if node.state != NodeState::Active {
                continue;
            }
            for nic in &node.nics {
                nics.push(NicState {
                    slot: NicSlot {
                        node: node.id,
                        nic: nic.id,
                    },
                    speed_mbps: nic.speed_mbps.max(1),
                    connections: 0,
                    up: true,
                });
            }
        }
        NicPlanner {
            nics,
            groups: BTreeMap::new(),
        }
    }

    fn find(&self, slot: NicSlot) -> Option<usize> {
        self.nics.iter().position(|n| n.slot == slot)
    }

    /// Count connections that are not part of any group (single-path logins).
    pub fn add_connections(&mut self, slot: NicSlot, count: u32) -> Result<(), NicError> {
        let i = self.find(slot).ok_or(NicError::UnknownNic(slot))?;
        self.nics[i].connections += count;
        Ok(())
    }

    /// Connections currently on a NIC.
    pub fn connections(&self, slot: NicSlot) -> Option<u32> {
        self.find(slot).map(|i| self.nics[i].connections)
    }

    /// The placement of a group's connections.
    pub fn group(&self, name: &str) -> Option<Vec<Option<NicSlot>>> {
        self.groups.get(name).map(|g| g.connections.clone())
    }

    /// Best NIC for one more connection that must avoid `used_nics` (and
    /// `used_nodes` when not empty): the fewest connections per unit of speed, then
    /// the fewest connections, then the lowest (node, NIC).
    fn best(&self, used_nics: &[NicSlot], used_nodes: &[NodeId]) -> Option<usize> {
        let mut best: Option<usize> = None;
        for (i, n) in self.nics.iter().enumerate() {
            if !n.up || used_nics.contains(&n.slot) || used_nodes.contains(&n.slot.node) {
                continue;
            }
            let better = match best {
                None => true,
                Some(b) => {
                    let m = &self.nics[b];
                    // (c+1)/s < (c'+1)/s' without division.
                    let lhs = u64::from(n.connections + 1) * u64::from(m.speed_mbps);
                    let rhs = u64::from(m.connections + 1) * u64::from(n.speed_mbps);
                    lhs < rhs || (lhs == rhs && n.connections < m.connections)
                }
            };
            if better {
                best = Some(i);
            }
        }
        best
    }

    /// The NIC one more connection should use, given the NICs (and, to keep nodes
    /// distinct, the nodes) its MPIO group already uses: the up NIC with the fewest
    /// connections per unit of link speed among those allowed. For connections that
    /// arrive one at a time (logins at a group portal); [`NicPlanner::assign`]
    /// places a whole group with the same rule.
    pub fn best_slot(&self, used_nics: &[NicSlot], used_nodes: &[NodeId]) -> Option<NicSlot> {
        self.best(used_nics, used_nodes).map(|i| self.nics[i].slot)
    }

    /// Place (or grow) the MPIO group `name` to `k` connections to `volume`, each on
    /// a distinct NIC and, with `distinct_nodes`, on a distinct node. Connections
    /// already placed stay where they are. Returns the placement of all `k`.
    pub fn assign(
        &mut self,
        name: &str,
        volume: VolumeId,
        k: usize,
        distinct_nodes: bool,
    ) -> Result<Vec<NicSlot>, NicError> {
        let up: Vec<&NicState> = self.nics.iter().filter(|n| n.up).collect();
        if k > up.len() {
            return Err(NicError::NotEnough {
                what: "NICs",
                asked: k,
                available: up.len(),
            });
        }
        if distinct_nodes {
            let mut nodes: Vec<NodeId> = up.iter().map(|n| n.slot.node).collect();
            nodes.dedup();
            if k > nodes.len() {
                return Err(NicError::NotEnough {
                    what: "nodes",
                    asked: k,
                    available: nodes.len(),
                });
            }
        }
        let mut group = self.groups.remove(name).unwrap_or(Group {
            volume,
            distinct_nodes,
            connections: Vec::new(),
        });
        group.volume = volume;
        group.distinct_nodes = distinct_nodes;
        let mut used_nics: Vec<NicSlot> = group.connections.iter().flatten().copied().collect();
        let mut used_nodes: Vec<NodeId> = if distinct_nodes {
            used_nics.iter().map(|s| s.node).collect()
        } else {
            Vec::new()
        };
        // A shrinking group releases its last connections.
        while group.connections.len() > k {
            if let Some(Some(slot)) = group.connections.pop() {
                if let Some(i) = self.find(slot) {
                    self.nics[i].connections -= 1;
                }
            }
        }
        while group.connections.len() < k {
            let Some(i) = self.best(&used_nics, &used_nodes) else {
                // Earlier placements of this group block the rest: put them back.
                self.groups.insert(name.to_owned(), group);
                return Err(NicError::NotEnough {
                    what: if distinct_nodes { "nodes" } else { "NICs" },
                    asked: k,
                    available: used_nics.len(),
                });
            };
            let slot = self.nics[i].slot;
            self.nics[i].connections += 1;
            used_nics.push(slot);
            if distinct_nodes {
                used_nodes.push(slot.node);
            }
            group.connections.push(Some(slot));
        }
        let placed = group.connections.iter().flatten().copied().collect();
        self.groups.insert(name.to_owned(), group);
        Ok(placed)
    }

    /// Forget a group and free its NICs.
    pub fn release(&mut self, name: &str) {
        if let Some(g) = self.groups.remove(name) {
            for slot in g.connections.into_iter().flatten() {
                if let Some(i) = self.find(slot) {
                    self.nics[i].connections -= 1;
                }
            }
        }
    }

    /// A node is lost: all its NICs go down and their connections move.
    pub fn fail_node(&mut self, node: NodeId) -> Vec<Reassignment> {
        for n in self.nics.iter_mut().filter(|n| n.slot.node == node) {
            n.up = false;
        }
        self.replan()
    }

    /// One NIC is lost: its connections move.
    pub fn fail_nic(&mut self, slot: NicSlot) -> Result<Vec<Reassignment>, NicError> {
        let i = self.find(slot).ok_or(NicError::UnknownNic(slot))?;
        self.nics[i].up = false;
        Ok(self.replan())
    }

    /// A NIC (or a node's NICs) is back; nothing moves, new picks may use it.
    pub fn restore(&mut self, node: NodeId, nic: Option<NicId>) {
        for n in self.nics.iter_mut() {
            if n.slot.node == node && nic.is_none_or_eq(n.slot.nic) {
                n.up = true;
            }
        }
    }

    /// Move every connection that sits on a NIC that is down, and nothing else.
    fn replan(&mut self) -> Vec<Reassignment> {
        let mut out = Vec::new();
        let names: Vec<String> = self.groups.keys().cloned().collect();
        for name in names {
            let mut group = self.groups.remove(&name).expect("group listed");
            for c in 0..group.connections.len() {
                let Some(from) = group.connections[c] else {
                    continue;
                };
                let fi = self.find(from).expect("placed on a known NIC");
                if self.nics[fi].up {
                    continue;
                }
                self.nics[fi].connections -= 1;
                let others: Vec<NicSlot> = group
                    .connections
                    .iter()
                    .enumerate()
                    .filter(|&(j, _)| j != c)
                    .filter_map(|(_, s)| *s)
                    .collect();
                let other_nodes: Vec<NodeId> = if group.distinct_nodes {
                    others.iter().map(|s| s.node).collect()
                } else {
                    Vec::new()
                };
                let (to, distinct) = match self.best(&others, &other_nodes) {
                    Some(i) => (Some(i), true),
                    None => match self.best(&others, &[]) {
                        Some(i) => (Some(i), false),
                        None => (self.best(&[], &[]), false),
                    },
                };
                let to = to.map(|i| {
                    self.nics[i].connections += 1;
                    self.nics[i].slot
                });
                group.connections[c] = to;
                out.push(Reassignment {
                    group: name.clone(),
                    connection: c,
                    from,
                    to,
                    distinct,
                });
            }
            self.groups.insert(name, group);
        }
        out
    }
}

trait OptionEq<T> {
    fn is_none_or_eq(&self, v: T) -> bool;
}

impl<T: PartialEq> OptionEq<T> for Option<T> {
    fn is_none_or_eq(&self, v: T) -> bool {
        match self {
            None => true,
            Some(x) => *x == v,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Node;
    use std::net::SocketAddr;

    fn planner(nodes: u32, nics: u32) -> NicPlanner {
        let t = RoutingTable::new((0..nodes).map(|i| {
            let mut n = Node::new(NodeId(i), 1 << 30);
            for k in 0..nics {
                n = n.with_nic(
                    10_000,
                    vec![SocketAddr::from(([127, 0, i as u8, k as u8], 3260))],
                );
            }
            n
        }))
        .unwrap();
        NicPlanner::from_table(&t)
    }

    #[test]
    fn group_lands_on_distinct_nics_and_nodes() {
        let mut p = planner(3, 2);
        let a = p.assign("g1", VolumeId(1), 3, true).unwrap();
        let mut nodes: Vec<_> = a.iter().map(|s| s.node).collect();
        nodes.sort();
        nodes.dedup();
        assert_eq!(nodes.len(), 3);
        let b = p.assign("g2", VolumeId(1), 3, true).unwrap();
        // The second group takes the NICs the first one left idle.
        for s in &b {
            assert!(!a.contains(s));
        }
        assert!(p.assign("g3", VolumeId(1), 4, true).is_err());
        assert_eq!(p.assign("g3", VolumeId(1), 6, false).unwrap().len(), 6);
        assert!(p.assign("g4", VolumeId(1), 7, false).is_err());
    }

    #[test]
    fn faster_nics_take_more_connections() {
        let t = RoutingTable::new([Node::new(NodeId(0), 1)
            .with_nic(10_000, vec![])
            .with_nic(40_000, vec![])])
        .unwrap();
        let mut p = NicPlanner::from_table(&t);
        for g in 0..10 {
            p.assign(&format!("g{g}"), VolumeId(1), 1, false).unwrap();
        }
        let slot = |nic| NicSlot {
            node: NodeId(0),
            nic: NicId(nic),
        };
        assert_eq!(p.connections(slot(0)), Some(2));
        assert_eq!(p.connections(slot(1)), Some(8));
    }

    #[test]
    fn node_loss_moves_only_its_connections_and_keeps_groups_distinct() {
        let mut p = planner(4, 2);
        for g in 0..8 {
            p.assign(&format!("g{g}"), VolumeId(1), 3, true).unwrap();
        }
        let before: BTreeMap<String, _> = (0..8)
            .map(|g| (format!("g{g}"), p.group(&format!("g{g}")).unwrap()))
            .collect();
        let moves = p.fail_node(NodeId(1));
        for m in &moves {
            assert_eq!(m.from.node, NodeId(1));
            assert!(m.distinct);
            assert_ne!(m.to.unwrap().node, NodeId(1));
        }
        let on_node1: usize = before
            .values()
            .map(|g| g.iter().flatten().filter(|s| s.node == NodeId(1)).count())
            .sum();
        assert_eq!(moves.len(), on_node1);
        for (name, old) in &before {
            let new = p.group(name).unwrap();
            let mut nodes: Vec<_> = new.iter().flatten().map(|s| s.node).collect();
            nodes.sort();
            nodes.dedup();
            assert_eq!(nodes.len(), 3, "{name} lost distinctness");
            for (o, n) in old.iter().zip(&new) {
                if o.unwrap().node != NodeId(1) {
                    assert_eq!(o, n);
                }
            }
        }
    }

    #[test]
    fn when_too_few_nodes_remain_the_group_shares_but_keeps_running() {
        let mut p = planner(2, 2);
        p.assign("g", VolumeId(1), 2, true).unwrap();
        let moves = p.fail_node(NodeId(0));
        assert_eq!(moves.len(), 1);
        assert!(!moves[0].distinct);
        let g = p.group("g").unwrap();
        // Still on distinct NICs of the one node left.
        assert_ne!(g[0], g[1]);
    }
}
