//! Plans: every change of ownership as a list of moves and the next table
//! (epoch + 1). No plan ever drops the last copy of a page.
//!
//! - [`plan_node_failure`]: the failed node's primaries go to in-sync replicas,
//!   chosen by node load (CPU, memory, I/O figures passed in); its lost copies are
//!   rebuilt on the least-loaded eligible nodes. The next table is published at
//!   once; rebuilt replicas are marked out of sync until the target reports them
//!   done ([`RoutingTable::mark_in_sync`]).
//! - [`plan_node_added`], [`plan_node_drain`], [`plan_node_removed`],
//!   [`plan_rebalance`]: restore missing replicas, empty draining nodes, then move
//!   copies from nodes above their capacity share to nodes below it and swap
//!   primary roles to even out primaries. Every move serves that goal: a source
//!   gives only while it is at least a page above its share, a destination takes
//!   only while it is at least a page below, so neither overshoots and no page
//!   moves twice. These plans are carried
//!   out copy first: the target copies each moved page, then publishes `next`.
//! - [`plan_hot_pages`]: given per-page load, take hot primaries off the busiest
//!   node by swapping roles with a replica or by moving the page, within a move
//!   budget, each move lowering the busiest node's load.

use std::collections::BTreeMap;

use hashbrown::HashSet;

use crate::error::RoutingError;
use crate::model::{NodeId, NodeState, Replica, RoutingTable, VolumeId, VolumeMap};
use crate::placement::Cluster;

/// Share of a primary's load that a replica carries: replicas take the writes but
/// none of the reads; with a read/write mix around 1:1 that is half.
pub const REPLICA_LOAD_FRACTION: f64 = 0.5;

/// Smallest improvement that counts in the hot-page plan, so that rounding noise
/// does not produce moves.
const LOAD_EPSILON: f64 = 1e-9;

/// Load figures of one node, each a fraction of what the node can do (0.0 idle,
/// 1.0 saturated), as the target measures them.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct NodeLoad {
    /// CPU busy fraction.
    pub cpu: f64,
    /// Memory in use fraction.
    pub memory: f64,
    /// I/O utilisation (device busy time or bandwidth share).
    pub io: f64,
}

impl NodeLoad {
    /// One figure for comparing nodes: the most loaded resource, since that is the
    /// one that will limit the node.
    pub fn score(&self) -> f64 {
        self.cpu.max(self.memory).max(self.io).max(0.0)
    }
}

/// Load figures by node; a node without figures counts as the mean of the others.
pub type Loads = BTreeMap<NodeId, NodeLoad>;

/// One page of one volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PageRef {
    /// The volume.
    pub volume: VolumeId,
    /// The page number.
    pub page: u64,
}

/// What happens to one page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The primary failed; the in-sync replica on `to` becomes primary. No data moves.
    Promote {
        /// The failed primary.
        failed: NodeId,
        /// The replica that takes over.
        to: NodeId,
    },
    /// The primary failed and no copy survived: `to` becomes primary of an empty
    /// page (the page is also listed in [`Plan::lost`]).
    Recreate {
        /// The failed primary.
        failed: NodeId,
        /// The new primary.
        to: NodeId,
    },
    /// A new replica on `to`, built from the copy on `source`.
    Copy {
        /// Node to read the page from (the primary).
        source: NodeId,
        /// Node that receives the new replica.
        to: NodeId,
    },
    /// A copy moves: `to` receives the page from `from`, which then drops it. The
    /// copy keeps its role.
    Move {
        /// Node that gives the copy away.
        from: NodeId,
        /// Node that receives it.
        to: NodeId,
        /// True when the moved copy is the primary.
        primary: bool,
    },
    /// The in-sync replica on `to` becomes primary and the old primary `from`
    /// becomes a replica in its slot. No data moves.
    SwapRoles {
        /// The old primary.
        from: NodeId,
        /// The new primary.
        to: NodeId,
    },
}

/// One step of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Move {
    /// The page concerned.
    pub page: PageRef,
    /// What happens to it.
    pub action: Action,
}

/// The outcome of a plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The steps, in the order they were decided.
    pub moves: Vec<Move>,
    /// The table after the moves, epoch + 1.
    pub next: RoutingTable,
    /// Pages that had no in-sync copy left: their data is gone (a failure plan only).
    pub lost: Vec<PageRef>,
    /// Pages whose copies could not leave a draining node (no eligible node).
    pub stuck: Vec<PageRef>,
    /// Pages left with fewer replicas than their volume asks for.
    pub under_replicated: usize,
}

impl Plan {
    fn new(next: RoutingTable) -> Plan {
        Plan {
            moves: Vec::new(),
            next,
            lost: Vec::new(),
            stuck: Vec::new(),
            under_replicated: 0,
        }
    }

    /// Moves that copy page data between nodes (everything but role changes).
    pub fn data_moves(&self) -> usize {
        self.moves
            .iter()
            .filter(|m| {
                matches!(
                    m.action,
                    Action::Copy { .. } | Action::Move { .. } | Action::Recreate { .. }
                )
            })
            .count()
    }
}

fn remove_replica(vm: &mut VolumeMap, page: u64, node: NodeId) -> Option<Replica> {
    let slots = vm.slots_mut(page);
    let at = slots.iter().position(|s| s.node == node)?;
    let removed = slots[at];
    slots[at..].rotate_left(1);
    let last = slots.len() - 1;
    slots[last] = Replica::EMPTY;
    Some(removed)
}

fn add_replica(vm: &mut VolumeMap, page: u64, replica: Replica) -> bool {
    match vm
        .slots_mut(page)
        .iter_mut()
        .find(|s| s.node == NodeId::NONE)
    {
        Some(slot) => {
            *slot = replica;
            true
        }
        None => false,
    }
}

fn holders_idx(cl: &Cluster, vm: &VolumeMap, page: u64, out: &mut Vec<usize>) {
    out.clear();
    out.extend(vm.holders(page).map(|n| cl.idx(n)));
}

/// The plan for a failed node: promote an in-sync replica for every page whose
/// primary it was (the candidate whose node has the lowest projected load), then
/// rebuild the lost copies on the least-loaded eligible nodes. The failed node's
/// last reported load (or, without figures, the survivors' mean) is spread evenly
/// over its primary pages to project the load each takeover adds.
pub fn plan_node_failure(
    table: &RoutingTable,
    failed: NodeId,
    loads: &Loads,
) -> Result<Plan, RoutingError> {
    let node = table
        .node(failed)
        .ok_or(RoutingError::UnknownNode(failed))?;
    if node.state == NodeState::Failed {
        return Err(RoutingError::NodeFailed(failed));
    }
    let mut cl = Cluster::new(table);
    let f = cl.idx(failed);
    cl.state[f] = NodeState::Failed;

    let mut next = table.clone();
    next.epoch = next.epoch.next();
    if let Some(n) = next.nodes.get_mut(&failed) {
        n.state = NodeState::Failed;
    }

    // Projected load per node: its figure plus what this plan gives it.
    let known: Vec<f64> = (0..cl.len())
        .filter(|&i| i != f)
        .filter_map(|i| loads.get(&cl.ids[i]).map(NodeLoad::score))
        .collect();
    let mean = if known.is_empty() {
        0.0
    } else {
        known.iter().sum::<f64>() / known.len() as f64
    };
    let mut projected: Vec<f64> = cl
        .ids
        .iter()
        .map(|id| loads.get(id).map_or(mean, NodeLoad::score))
        .collect();
    let lost_primaries: usize = table
        .volumes
        .values()
        .map(|vm| vm.primaries.iter().filter(|&&p| p == failed).count())
        .sum();
    let failed_load = loads.get(&failed).map_or(mean, NodeLoad::score);
    // Without any figure every takeover still counts, so that pages spread.
    let share = if failed_load > 0.0 {
        failed_load / lost_primaries.max(1) as f64
    } else {
        1.0 / lost_primaries.max(1) as f64
    };

    let mut plan = Plan::new(RoutingTable::default());
    let mut holders = Vec::new();
    for (&vid, vm) in next.volumes.iter_mut() {
        for page in 0..vm.page_count() {
            let was_primary = vm.primaries[page as usize] == failed;
            let was_replica = !was_primary && vm.replicas(page).iter().any(|r| r.node == failed);
            if !was_primary && !was_replica {
                continue;
            }
            let pref = PageRef { volume: vid, page };
            let bytes = vm.page_bytes(page);
            if was_primary {
                let replicas = vm.replicas(page);
                let best_in_sync = replicas
                    .iter()
                    .filter(|r| r.in_sync)
                    .min_by(|a, b| {
                        let (x, y) = (projected[cl.idx(a.node)], projected[cl.idx(b.node)]);
                        x.total_cmp(&y)
                    })
                    .map(|r| r.node);
                let chosen = match best_in_sync {
                    Some(n) => Some(n),
                    None => {
                        // Only rebuilding replicas (or none) survive: the data is gone.
                        plan.lost.push(pref);
                        replicas.first().map(|r| r.node)
                    }
                };
                let to = match chosen {
                    Some(to) => {
                        remove_replica(vm, page, to);
                        plan.moves.push(Move {
                            page: pref,
                            action: Action::Promote { failed, to },
                        });
                        to
                    }
                    None => {
                        // An active node if there is one, else any live node:
                        // a draining node still serves.
                        let i = cl
                            .pick(&[], bytes, |i| projected[i])
                            .or_else(|| {
                                (0..cl.len())
                                    .filter(|&i| cl.state[i] != NodeState::Failed)
                                    .min_by(|&a, &b| projected[a].total_cmp(&projected[b]))
                            })
                            .ok_or(RoutingError::NotEnoughNodes {
                                needed: 1,
                                available: 0,
                            })?;
                        cl.used[i] += bytes;
                        plan.moves.push(Move {
                            page: pref,
                            action: Action::Recreate {
                                failed,
                                to: cl.ids[i],
                            },
                        });
                        cl.ids[i]
                    }
                };
                vm.set_primary(page, to);
                let t = cl.idx(to);
                cl.primary_used[t] += bytes;
                projected[t] += share;
            } else {
                remove_replica(vm, page, failed);
            }
            // Rebuild the missing replicas of this page.
            let primary = vm.primaries[page as usize];
            while vm.replicas(page).len() < usize::from(vm.volume.replicas) {
                holders_idx(&cl, vm, page, &mut holders);
                match cl.pick(&holders, bytes, |i| projected[i]) {
                    Some(q) => {
                        cl.used[q] += bytes;
                        projected[q] += share * REPLICA_LOAD_FRACTION;
                        add_replica(
                            vm,
                            page,
                            Replica {
                                node: cl.ids[q],
                                in_sync: false,
                            },
                        );
                        plan.moves.push(Move {
                            page: pref,
                            action: Action::Copy {
                                source: primary,
                                to: cl.ids[q],
                            },
                        });
                    }
                    None => {
                        plan.under_replicated += 1;
                        break;
                    }
                }
            }
        }
    }
    plan.next = next;
    Ok(plan)
}

/// The plan for a new node: add it (active) and rebalance towards it.
pub fn plan_node_added(
    table: &RoutingTable,
    node: crate::model::Node,
) -> Result<Plan, RoutingError> {
    let mut next = table.clone();
    let mut node = node;
    node.state = NodeState::Active;
    next.insert_node(node)?;
    Ok(rebalance(next))
}

/// The plan for draining a node: it stops receiving pages and every copy it holds
/// moves to the other nodes (as far as there is an eligible node; the rest is
/// listed in [`Plan::stuck`]).
pub fn plan_node_drain(table: &RoutingTable, node: NodeId) -> Result<Plan, RoutingError> {
    let mut next = table.clone();
    let n = next
        .nodes
        .get_mut(&node)
        .ok_or(RoutingError::UnknownNode(node))?;
    if n.state == NodeState::Failed {
        return Err(RoutingError::NodeFailed(node));
    }
    n.state = NodeState::Draining;
    Ok(rebalance(next))
}

/// The plan for removing a node: a failed node (which holds nothing) leaves the
/// table at once; a live one is drained and leaves the table in the same plan
/// when nothing is stuck on it, else it stays draining.
pub fn plan_node_removed(table: &RoutingTable, node: NodeId) -> Result<Plan, RoutingError> {
    let state = table
        .node(node)
        .ok_or(RoutingError::UnknownNode(node))?
        .state;
    let mut plan = if state == NodeState::Failed {
        let mut next = table.clone();
        next.epoch = next.epoch.next();
        Plan::new(next)
    } else {
        plan_node_drain(table, node)?
    };
    if plan.stuck.is_empty() {
        plan.next.nodes.remove(&node);
    }
    Ok(plan)
}

/// Rebalance the table as it is: restore missing replicas, empty draining nodes,
/// even out copies and primaries by capacity share.
pub fn plan_rebalance(table: &RoutingTable) -> Plan {
    rebalance(table.clone())
}

/// Bytes every active node should hold to match `total` split by capacity.
fn targets(cl: &Cluster, total: u64) -> Vec<f64> {
    let cap: f64 = (0..cl.len())
        .filter(|&i| cl.is_active(i))
        .map(|i| cl.capacity[i] as f64)
        .sum();
    (0..cl.len())
        .map(|i| {
            if cl.is_active(i) && cap > 0.0 {
                total as f64 * cl.capacity[i] as f64 / cap
            } else {
                0.0
            }
        })
        .collect()
}

fn rebalance(mut next: RoutingTable) -> Plan {
    next.epoch = next.epoch.next();
    let mut cl = Cluster::new(&next);
    let mut plan = Plan::new(RoutingTable::default());
    let mut moved: HashSet<PageRef> = HashSet::new();
    let mut holders = Vec::new();
    let fill = |cl: &Cluster, i: usize| -> f64 {
        if cl.capacity[i] == 0 {
            f64::INFINITY
        } else {
            cl.used[i] as f64 / cl.capacity[i] as f64
        }
    };

    // 1. Restore missing replicas and empty draining nodes.
    for (&vid, vm) in next.volumes.iter_mut() {
        for page in 0..vm.page_count() {
            let pref = PageRef { volume: vid, page };
            let bytes = vm.page_bytes(page);
            // Copies on draining nodes move, keeping their role.
            let leaving: Vec<NodeId> = vm
                .holders(page)
                .filter(|&n| cl.state[cl.idx(n)] == NodeState::Draining)
                .collect();
            for from in leaving {
                holders_idx(&cl, vm, page, &mut holders);
                let others: Vec<usize> = holders
                    .iter()
                    .copied()
                    .filter(|&h| cl.ids[h] != from)
                    .collect();
                let Some(q) = cl.pick(&others, bytes, |i| fill(&cl, i)) else {
                    plan.stuck.push(pref);
                    continue;
                };
                let to = cl.ids[q];
                let primary = vm.primaries[page as usize] == from;
                let fi = cl.idx(from);
                cl.used[fi] -= bytes;
                cl.used[q] += bytes;
                if primary {
                    vm.set_primary(page, to);
                    cl.primary_used[fi] -= bytes;
                    cl.primary_used[q] += bytes;
                } else if let Some(slot) = vm.slots_mut(page).iter_mut().find(|s| s.node == from) {
                    slot.node = to;
                    slot.in_sync = true;
                }
                moved.insert(pref);
                plan.moves.push(Move {
                    page: pref,
                    action: Action::Move { from, to, primary },
                });
            }
            while vm.replicas(page).len() < usize::from(vm.volume.replicas) {
                holders_idx(&cl, vm, page, &mut holders);
                let Some(q) = cl.pick(&holders, bytes, |i| fill(&cl, i)) else {
                    plan.under_replicated += 1;
                    break;
                };
                cl.used[q] += bytes;
                add_replica(
                    vm,
                    page,
                    Replica {
                        node: cl.ids[q],
                        in_sync: true,
                    },
                );
                moved.insert(pref);
                plan.moves.push(Move {
                    page: pref,
                    action: Action::Copy {
                        source: vm.primaries[page as usize],
                        to: cl.ids[q],
                    },
                });
            }
        }
    }

    // 2. Even out bytes held by capacity share.
    let total: u64 = (0..cl.len())
        .filter(|&i| cl.is_active(i))
        .map(|i| cl.used[i])
        .sum();
    let target = targets(&cl, total);
    let mut dev: Vec<f64> = (0..cl.len())
        .map(|i| {
            if cl.is_active(i) {
                cl.used[i] as f64 - target[i]
            } else {
                0.0
            }
        })
        .collect();
    let mut sources: Vec<usize> = (0..cl.len()).filter(|&i| dev[i] > 0.0).collect();
    sources.sort_by(|&a, &b| dev[b].total_cmp(&dev[a]).then(a.cmp(&b)));
    if !sources.is_empty() && (0..cl.len()).any(|i| dev[i] < 0.0) {
        // Copies held by each source, collected in one pass.
        let is_source: Vec<bool> = (0..cl.len()).map(|i| sources.contains(&i)).collect();
        let vids: Vec<VolumeId> = next.volumes.keys().copied().collect();
        let mut lists: Vec<Vec<(u32, u64)>> = vec![Vec::new(); cl.len()];
        for (v, vm) in next.volumes.values().enumerate() {
            for page in 0..vm.page_count() {
                for n in vm.holders(page) {
                    let i = cl.idx(n);
                    if is_source[i] {
                        lists[i].push((v as u32, page));
                    }
                }
            }
        }
        let mut vms: Vec<&mut VolumeMap> = next.volumes.values_mut().collect();
        for &a in &sources {
            let from = cl.ids[a];
            for &(v, page) in &lists[a] {
                let vm = &mut *vms[v as usize];
                let bytes = vm.page_bytes(page);
                if dev[a] < bytes as f64 {
                    continue;
                }
                let pref = PageRef {
                    volume: vids[v as usize],
                    page,
                };
                if moved.contains(&pref) {
                    continue;
                }
                holders_idx(&cl, vm, page, &mut holders);
                let others: Vec<usize> = holders.iter().copied().filter(|&h| h != a).collect();
                let domains_before = cl.distinct_domains(&holders);
                let mut best: Option<usize> = None;
                for b in 0..cl.len() {
                    if !cl.is_active(b)
                        || -dev[b] < bytes as f64
                        || holders.contains(&b)
                        || cl.free(b) < bytes
                    {
                        continue;
                    }
                    let mut after = others.clone();
                    after.push(b);
                    if cl.distinct_domains(&after) < domains_before {
                        continue;
                    }
                    if best.iter().all(|&x| dev[b] < dev[x]) {
                        best = Some(b);
                    }
                }
                let Some(b) = best else { continue };
                let to = cl.ids[b];
                let primary = vm.primaries[page as usize] == from;
                if primary {
                    vm.set_primary(page, to);
                    cl.primary_used[a] -= bytes;
                    cl.primary_used[b] += bytes;
                } else if let Some(slot) = vm.slots_mut(page).iter_mut().find(|s| s.node == from) {
                    slot.node = to;
                    slot.in_sync = true;
                }
                cl.used[a] -= bytes;
                cl.used[b] += bytes;
                dev[a] -= bytes as f64;
                dev[b] += bytes as f64;
                moved.insert(pref);
                plan.moves.push(Move {
                    page: pref,
                    action: Action::Move { from, to, primary },
                });
            }
        }
    }

    // 3. Even out primaries by swapping roles with in-sync replicas.
    let ptotal: u64 = (0..cl.len())
        .filter(|&i| cl.is_active(i))
        .map(|i| cl.primary_used[i])
        .sum();
    let ptarget = targets(&cl, ptotal);
    let mut pdev: Vec<f64> = (0..cl.len())
        .map(|i| {
            if cl.is_active(i) {
                cl.primary_used[i] as f64 - ptarget[i]
            } else {
                0.0
            }
        })
        .collect();
    let mut psources: Vec<usize> = (0..cl.len()).filter(|&i| pdev[i] > 0.0).collect();
    psources.sort_by(|&a, &b| pdev[b].total_cmp(&pdev[a]).then(a.cmp(&b)));
    for &a in &psources {
        let from = cl.ids[a];
        for (&vid, vm) in next.volumes.iter_mut() {
            for page in 0..vm.page_count() {
                if vm.primaries[page as usize] != from {
                    continue;
                }
                let bytes = vm.page_bytes(page);
                if pdev[a] < bytes as f64 {
                    continue;
                }
                let pref = PageRef { volume: vid, page };
                if moved.contains(&pref) {
                    continue;
                }
                let best = vm
                    .replicas(page)
                    .iter()
                    .filter(|r| r.in_sync)
                    .map(|r| cl.idx(r.node))
                    .filter(|&b| cl.is_active(b) && -pdev[b] >= bytes as f64)
                    .min_by(|&x, &y| pdev[x].total_cmp(&pdev[y]));
                let Some(b) = best else { continue };
                let to = cl.ids[b];
                vm.set_primary(page, to);
                if let Some(slot) = vm.slots_mut(page).iter_mut().find(|s| s.node == to) {
                    slot.node = from;
                }
                pdev[a] -= bytes as f64;
                pdev[b] += bytes as f64;
                cl.primary_used[a] -= bytes;
                cl.primary_used[b] += bytes;
                moved.insert(pref);
                plan.moves.push(Move {
                    page: pref,
                    action: Action::SwapRoles { from, to },
                });
            }
        }
    }
    plan.next = next;
    plan
}

/// Load of one page as measured by the target (I/O per second, bytes per second:
/// any unit, the same for all pages).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PageLoad {
    /// The page.
    pub page: PageRef,
    /// Its load; pages not listed count as zero.
    pub load: f64,
}

/// The hot-page plan: at most `budget` moves, each taking one hot primary off the
/// currently busiest node, either by swapping roles with an in-sync replica on a
/// less busy node (no data moves) or by moving the page to the least busy node
/// that has room and no copy of it. A move is made only when it lowers the busiest
/// node's load without lifting the receiver to that level; of the candidates the
/// one leaving the lower peak wins, a swap before a move on a tie.
pub fn plan_hot_pages(table: &RoutingTable, loads: &[PageLoad], budget: usize) -> Plan {
    let mut next = table.clone();
    next.epoch = next.epoch.next();
    let mut cl = Cluster::new(table);
    let mut plan = Plan::new(RoutingTable::default());
    let mut node_load = vec![0.0f64; cl.len()];
    // Hot pages by their primary's index.
    let mut on: Vec<Vec<PageLoad>> = vec![Vec::new(); cl.len()];
    for pl in loads {
        let Some(vm) = next.volumes.get(&pl.page.volume) else {
            continue;
        };
        let Some(p) = vm.primary(pl.page.page) else {
            continue;
        };
        // Zero, negative and NaN loads carry nothing to move.
        if pl.load.is_nan() || pl.load <= 0.0 {
            continue;
        }
        let i = cl.idx(p);
        node_load[i] += pl.load;
        on[i].push(*pl);
    }
    for list in &mut on {
        list.sort_by(|a, b| b.load.total_cmp(&a.load).then(a.page.cmp(&b.page)));
    }
    let mut holders = Vec::new();
    while plan.moves.len() < budget {
        let Some(h) = (0..cl.len())
            .filter(|&i| cl.state[i] != NodeState::Failed)
            .max_by(|&a, &b| node_load[a].total_cmp(&node_load[b]).then(b.cmp(&a)))
        else {
            break;
        };
        let peak = node_load[h];
        // (resulting peak, is_move, index in on[h], destination)
        let mut best: Option<(f64, bool, usize, usize)> = None;
        for (k, pl) in on[h].iter().enumerate() {
            let vm = &next.volumes[&pl.page.volume];
            let page = pl.page.page;
            let l = pl.load;
            let mut consider = |dest: usize, is_move: bool| {
                let result = (peak - l).max(node_load[dest] + l);
                if result < peak - LOAD_EPSILON
                    && best.iter().all(|&(r, m, _, _)| (result, is_move) < (r, m))
                {
                    best = Some((result, is_move, k, dest));
                }
            };
            for r in vm.replicas(page) {
                let d = cl.idx(r.node);
                if r.in_sync && cl.is_active(d) {
                    consider(d, false);
                }
            }
            holders_idx(&cl, vm, page, &mut holders);
            let bytes = vm.page_bytes(page);
            if let Some(d) = cl.pick(&holders, bytes, |i| node_load[i]) {
                consider(d, true);
            }
        }
        let Some((_, is_move, k, d)) = best else {
            break;
        };
        let pl = on[h].remove(k);
        let from = cl.ids[h];
        let to = cl.ids[d];
        let vm = next
            .volumes
            .get_mut(&pl.page.volume)
            .expect("hot page volume exists");
        let page = pl.page.page;
        let bytes = vm.page_bytes(page);
        vm.set_primary(page, to);
        if is_move {
            cl.used[h] -= bytes;
            cl.used[d] += bytes;
            plan.moves.push(Move {
                page: pl.page,
                action: Action::Move {
                    from,
                    to,
                    primary: true,
                },
            });
        } else {
            if let Some(slot) = vm.slots_mut(page).iter_mut().find(|s| s.node == to) {
                slot.node = from;
            }
            plan.moves.push(Move {
                page: pl.page,
                action: Action::SwapRoles { from, to },
            });
        }
        node_load[h] -= pl.load;
        node_load[d] += pl.load;
        let at = on[d].partition_point(|x| x.load > pl.load);
        on[d].insert(at, pl);
    }
    plan.next = next;
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Node, Volume};
    use crate::placement::plan_create_volume;

    const GIB: u64 = 1 << 30;

    fn cluster(nodes: u32, pages: u64, replicas: u8) -> RoutingTable {
        let t = RoutingTable::new((0..nodes).map(|i| Node::new(NodeId(i), GIB))).unwrap();
        let v = Volume {
            id: VolumeId(1),
            name: "v".into(),
            blocks: pages * 8,
            block_size: 512,
            page_size: 4096,
            replicas,
        };
        plan_create_volume(&t, v).unwrap()
    }

    fn count_primaries(t: &RoutingTable, n: NodeId) -> usize {
        t.volumes
            .values()
            .map(|vm| vm.primaries().iter().filter(|&&p| p == n).count())
            .sum()
    }

    #[test]
    fn failure_promotes_replicas_and_rebuilds_copies() {
        let t = cluster(4, 100, 1);
        let lost_primaries = count_primaries(&t, NodeId(2));
        let plan = plan_node_failure(&t, NodeId(2), &Loads::new()).unwrap();
        plan.next.validate().unwrap();
        assert_eq!(plan.next.epoch(), t.epoch().next());
        assert!(plan.lost.is_empty());
        assert_eq!(plan.under_replicated, 0);
        let promotions = plan
            .moves
            .iter()
            .filter(|m| matches!(m.action, Action::Promote { .. }))
            .count();
        assert_eq!(promotions, lost_primaries);
        assert_eq!(count_primaries(&plan.next, NodeId(2)), 0);
        let vm = plan.next.volume(VolumeId(1)).unwrap();
        for p in 0..100 {
            assert_eq!(vm.replicas(p).len(), 1);
        }
        // Without figures the takeovers spread over the three survivors.
        for n in [0, 1, 3] {
            let gained = plan
                .moves
                .iter()
                .filter(|m| {
                    m.action
                        == Action::Promote {
                            failed: NodeId(2),
                            to: NodeId(n),
                        }
                })
                .count();
            assert!(gained > 0, "node {n} took nothing over");
        }
    }

    #[test]
    fn failure_takeover_prefers_the_least_loaded_node() {
        let t = cluster(3, 60, 2);
        let mut loads = Loads::new();
        loads.insert(
            NodeId(0),
            NodeLoad {
                cpu: 0.9,
                memory: 0.2,
                io: 0.5,
            },
        );
        loads.insert(
            NodeId(1),
            NodeLoad {
                cpu: 0.1,
                memory: 0.1,
                io: 0.1,
            },
        );
        loads.insert(
            NodeId(2),
            NodeLoad {
                cpu: 0.05,
                memory: 0.0,
                io: 0.05,
            },
        );
        let plan = plan_node_failure(&t, NodeId(2), &loads).unwrap();
        // Node 1 starts at 0.1, node 0 at 0.9; the failed node carried 0.05 in all,
        // so node 1 stays below node 0 throughout and takes everything over.
        assert_eq!(
            count_primaries(&plan.next, NodeId(0)),
            count_primaries(&t, NodeId(0))
        );
        // Only two nodes remain: one replica per page is missing.
        assert_eq!(plan.under_replicated, 60);
        plan.next.validate().unwrap();
    }

    #[test]
    fn failure_with_only_rebuilding_replicas_reports_lost_pages() {
        let t = cluster(3, 10, 1);
        let p1 = plan_node_failure(&t, NodeId(0), &Loads::new()).unwrap();
        // The replacement replicas are still rebuilding when their primary fails.
        let vm = p1.next.volume(VolumeId(1)).unwrap();
        let victim = (0..10)
            .find(|&p| vm.replicas(p).iter().any(|r| !r.in_sync))
            .unwrap();
        let primary = vm.primary(victim).unwrap();
        let p2 = plan_node_failure(&p1.next, primary, &Loads::new()).unwrap();
        assert!(p2.lost.contains(&PageRef {
            volume: VolumeId(1),
            page: victim
        }));
        p2.next.validate().unwrap();
    }

    #[test]
    fn failing_twice_or_an_unknown_node_is_refused() {
        let t = cluster(3, 10, 1);
        let p = plan_node_failure(&t, NodeId(0), &Loads::new()).unwrap();
        assert_eq!(
            plan_node_failure(&p.next, NodeId(0), &Loads::new()).unwrap_err(),
            RoutingError::NodeFailed(NodeId(0))
        );
        assert!(plan_node_failure(&t, NodeId(9), &Loads::new()).is_err());
    }

    #[test]
    fn added_node_receives_its_share_and_nothing_moves_twice() {
        let t = cluster(3, 300, 1);
        let plan = plan_node_added(&t, Node::new(NodeId(3), GIB)).unwrap();
        plan.next.validate().unwrap();
        let used = plan.next.used_bytes();
        // 600 copies of 4 KiB over four equal nodes: 150 each.
        for (n, u) in &used {
            assert_eq!(*u, 150 * 4096, "node {n}");
        }
        // Only the copies the new node needs move: 150 of them.
        assert_eq!(plan.data_moves(), 150);
        let mut pages: Vec<_> = plan.moves.iter().map(|m| m.page).collect();
        pages.sort();
        pages.dedup();
        assert_eq!(pages.len(), plan.moves.len());
        // Primaries are even too (within a page).
        for n in 0..4 {
            let p = count_primaries(&plan.next, NodeId(n));
            assert!((74..=76).contains(&p), "node {n} has {p} primaries");
        }
    }

    #[test]
    fn balanced_table_needs_no_moves() {
        let t = cluster(4, 400, 1);
        let plan = plan_rebalance(&t);
        assert!(
            plan.moves.is_empty(),
            "{:?}",
            &plan.moves[..plan.moves.len().min(5)]
        );
    }

    #[test]
    fn drain_empties_the_node_and_remove_deletes_it() {
        let t = cluster(4, 100, 1);
        let plan = plan_node_drain(&t, NodeId(1)).unwrap();
        plan.next.validate().unwrap();
        assert!(plan.stuck.is_empty());
        assert_eq!(plan.next.used_bytes()[&NodeId(1)], 0);
        assert_eq!(
            plan.next.node(NodeId(1)).unwrap().state,
            NodeState::Draining
        );
        let removed = plan_node_removed(&t, NodeId(1)).unwrap();
        assert!(removed.next.node(NodeId(1)).is_none());
        removed.next.validate().unwrap();
    }

    #[test]
    fn drain_that_cannot_place_copies_keeps_them() {
        let t = cluster(2, 10, 1);
        let plan = plan_node_removed(&t, NodeId(0)).unwrap();
        assert_eq!(plan.stuck.len(), 10);
        assert!(plan.next.node(NodeId(0)).is_some());
        plan.next.validate().unwrap();
        assert_eq!(plan.next.used_bytes()[&NodeId(0)], 10 * 4096);
    }

    #[test]
    fn hot_pages_leave_the_busiest_node() {
        let t = cluster(4, 40, 1);
        let vm = t.volume(VolumeId(1)).unwrap();
        let hot: Vec<PageLoad> = (0..40)
            .filter(|&p| vm.primary(p) == Some(NodeId(0)))
            .map(|p| PageLoad {
                page: PageRef {
                    volume: VolumeId(1),
                    page: p,
                },
                load: 10.0,
            })
            .collect();
        assert_eq!(hot.len(), 10);
        let plan = plan_hot_pages(&t, &hot, 100);
        plan.next.validate().unwrap();
        // 100 units over four nodes: the busiest ends at 30 (three hot pages).
        let on0 = hot
            .iter()
            .filter(|pl| {
                plan.next.volume(VolumeId(1)).unwrap().primary(pl.page.page) == Some(NodeId(0))
            })
            .count();
        assert_eq!(on0, 3);
        assert_eq!(plan.moves.len(), 7);
        let limited = plan_hot_pages(&t, &hot, 2);
        assert_eq!(limited.moves.len(), 2);
    }
}
