//! Property tests of the routing crate: table invariants under placement and any
//! sequence of failures, additions and drains; minimality of every plan; the
//! wire format and the dm-switch export round-trip and reject corruption.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use mosaic_routing::dmswitch::{self, DmPath};
use mosaic_routing::nic::NicPlanner;
use mosaic_routing::plan::{
    plan_hot_pages, plan_node_added, plan_node_drain, plan_node_failure, Action, Loads, NodeLoad,
    PageLoad, PageRef, Plan,
};
use mosaic_routing::wire;
use mosaic_routing::{
    plan_create_volume, Node, NodeId, NodeState, RoutingTable, Volume, VolumeId, VolumeMap,
};
use proptest::prelude::*;

const GIB: u64 = 1 << 30;
const PAGE: u64 = 4096;

#[derive(Debug, Clone)]
struct Setup {
    capacities: Vec<u64>,
    domains: Option<Vec<u8>>,
    volumes: Vec<(u64, u8)>, // (pages, replicas)
}

fn setup() -> impl Strategy<Value = Setup> {
    (2usize..8).prop_flat_map(|n| {
        (
            prop::collection::vec(1u64..4, n),
            prop::option::of(prop::collection::vec(0u8..3, n)),
            prop::collection::vec((1u64..48, 0u8..3), 1..3),
        )
            .prop_map(|(caps, domains, volumes)| Setup {
                capacities: caps.into_iter().map(|c| c * GIB).collect(),
                domains,
                volumes,
            })
    })
}

fn node(id: u32, capacity: u64, domain: Option<u8>) -> Node {
    let mut n = Node::new(NodeId(id), capacity).with_nic(
        10_000,
        vec![SocketAddr::from(([127, 0, 0, 1], 3260 + id as u16))],
    );
    if let Some(d) = domain {
        n = n.with_domain(format!("rack{d}"));
    }
    n
}

fn build(s: &Setup) -> RoutingTable {
    let nodes = s
        .capacities
        .iter()
        .enumerate()
        .map(|(i, &c)| node(i as u32, c, s.domains.as_ref().map(|d| d[i])));
    let mut t = RoutingTable::new(nodes).unwrap();
    for (k, &(pages, replicas)) in s.volumes.iter().enumerate() {
        let replicas = replicas.min(s.capacities.len() as u8 - 1);
        let v = Volume {
            id: VolumeId(k as u64 + 1),
            name: format!("vol{k}"),
            blocks: pages * 8 - (k as u64 % 3),
            block_size: 512,
            page_size: PAGE,
            replicas,
        };
        t = plan_create_volume(&t, v).unwrap();
    }
    t
}

fn active(t: &RoutingTable) -> usize {
    t.active_nodes().count()
}

fn all_pages(t: &RoutingTable) -> Vec<(VolumeId, u64)> {
    t.volumes()
        .iter()
        .flat_map(|(&v, vm)| (0..vm.page_count()).map(move |p| (v, p)))
        .collect()
}

/// Every change of a page's primary is explained by a move, and the new primary
/// holds the data (an in-sync replica before, a moved copy) unless the page is
/// reported lost.
fn check_primaries_explained(before: &RoutingTable, plan: &Plan) {
    for (v, p) in all_pages(before) {
        let old = before.volume(v).unwrap();
        let new = plan.next.volume(v).unwrap();
        let (a, b) = (old.primary(p).unwrap(), new.primary(p).unwrap());
        if a == b {
            continue;
        }
        let pref = PageRef { volume: v, page: p };
        let in_sync_before = old.replicas(p).iter().any(|r| r.node == b && r.in_sync);
        let explained = plan.moves.iter().any(|m| {
            m.page == pref
                && match m.action {
                    Action::Promote { to, .. } | Action::SwapRoles { to, .. } => {
                        to == b && (in_sync_before || plan.lost.contains(&pref))
                    }
                    Action::Move { from, to, primary } => primary && from == a && to == b,
                    Action::Recreate { to, .. } => to == b && plan.lost.contains(&pref),
                    Action::Copy { .. } => false,
                }
        });
        assert!(explained, "{v} page {p}: primary {a} -> {b} not explained");
    }
}

fn copies(vm: &VolumeMap, p: u64) -> usize {
    vm.holders(p).count()
}

#[derive(Debug, Clone)]
enum Op {
    Fail(usize),
    Add(u64),
    Drain(usize),
    Sync,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0usize..16).prop_map(Op::Fail),
        2 => (1u64..4).prop_map(Op::Add),
        2 => (0usize..16).prop_map(Op::Drain),
        2 => Just(Op::Sync),
    ]
}

fn targets(t: &RoutingTable) -> BTreeMap<NodeId, (f64, u64)> {
    let used = t.used_bytes();
    let act: Vec<&Node> = t.active_nodes().collect();
    let cap: f64 = act.iter().map(|n| n.capacity as f64).sum();
    let total: f64 = act.iter().map(|n| used[&n.id] as f64).sum();
    act.iter()
        .map(|n| (n.id, (total * n.capacity as f64 / cap, used[&n.id])))
        .collect()
}

fn check_rebalance_minimal(plan: &Plan) {
    // No page is touched twice.
    let mut pages: Vec<PageRef> = plan.moves.iter().map(|m| m.page).collect();
    pages.sort();
    let n = pages.len();
    pages.dedup();
    assert_eq!(pages.len(), n, "a page moved twice");
    // Moves between active nodes go from above the share to below it and never
    // overshoot.
    let t = targets(&plan.next);
    for m in &plan.moves {
        if let Action::Move { from, to, .. } = m.action {
            if let Some(&(target, used)) = t.get(&from) {
                assert!(used as f64 >= target - 1e-6, "{from} gave below its share");
                let (tt, tu) = t[&to];
                assert!(tu as f64 <= tt + 1e-6, "{to} took above its share");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn placement_gives_every_page_one_primary_and_distinct_replicas(s in setup()) {
        let t = build(&s);
        t.validate().unwrap();
        let domains = s.domains.as_ref().map(|d| {
            let mut x = d.clone();
            x.sort();
            x.dedup();
            x.len()
        });
        for vm in t.volumes().values() {
            let want = usize::from(vm.volume().replicas);
            for p in 0..vm.page_count() {
                prop_assert_eq!(vm.replicas(p).len(), want);
                let holders: Vec<NodeId> = vm.holders(p).collect();
                // Distinct failure domains whenever there are enough of them.
                if let (Some(d), Some(doms)) = (&s.domains, domains) {
                    if doms >= holders.len() {
                        let mut hd: Vec<u8> = holders.iter().map(|h| d[h.0 as usize]).collect();
                        hd.sort();
                        hd.dedup();
                        prop_assert_eq!(hd.len(), holders.len());
                    }
                }
            }
        }
    }

    #[test]
    fn extent_split_covers_the_extent_with_the_owners(
        s in setup(), lba in 0u64..400, len in 1u64..200,
    ) {
        let t = build(&s);
        let vm = t.volume(VolumeId(1)).unwrap();
        let blocks = vm.volume().blocks;
        match t.split_extent(VolumeId(1), lba, len) {
            Ok(split) => {
                prop_assert!(lba + len <= blocks);
                let mut next = lba;
                for piece in split {
                    prop_assert_eq!(piece.lba, next);
                    prop_assert_eq!(piece.offset, next - lba);
                    prop_assert!(piece.blocks >= 1 && piece.blocks <= 8);
                    prop_assert_eq!(piece.lba / 8, (piece.lba + piece.blocks - 1) / 8);
                    prop_assert_eq!(Some(piece.owner), t.owner(VolumeId(1), piece.lba));
                    prop_assert_eq!(piece.replicas, vm.replicas(piece.page));
                    next += piece.blocks;
                }
                prop_assert_eq!(next, lba + len);
            }
            Err(_) => prop_assert!(lba + len > blocks),
        }
    }

    #[test]
    fn no_page_is_lost_and_replicas_come_back(s in setup(), ops in prop::collection::vec(op(), 1..8)) {
        let mut t = build(&s);
        let mut next_id = s.capacities.len() as u32;
        for op in ops {
            let alive: Vec<NodeId> = t.nodes().values().filter(|n| n.is_alive()).map(|n| n.id).collect();
            let plan = match op {
                Op::Sync => { t = t.mark_all_in_sync(); continue; }
                Op::Fail(k) => {
                    if alive.len() <= 1 { continue; }
                    let victim = alive[k % alive.len()];
                    let before = t.clone();
                    let plan = plan_node_failure(&t, victim, &Loads::new()).unwrap();
                    // Minimal: only pages with a copy on the victim are touched;
                    // one promotion per lost primary, one copy per lost copy at most.
                    let mut lost_copies = 0;
                    let mut lost_primaries = 0;
                    let mut missing = 0;
                    for (v, p) in all_pages(&before) {
                        let vm = before.volume(v).unwrap();
                        if vm.holders(p).any(|h| h == victim) {
                            lost_copies += 1;
                            lost_primaries += usize::from(vm.primary(p) == Some(victim));
                            missing += usize::from(vm.volume().replicas) + 1 - copies(vm, p);
                            // A page is lost only when no in-sync replica survived.
                            let survivor = vm.replicas(p).iter().any(|r| r.node != victim && r.in_sync);
                            let pref = PageRef { volume: v, page: p };
                            if vm.primary(p) == Some(victim) {
                                prop_assert_eq!(plan.lost.contains(&pref), !survivor);
                            } else {
                                prop_assert!(!plan.lost.contains(&pref));
                            }
                        } else {
                            let untouched = PageRef { volume: v, page: p };
                            prop_assert!(plan.moves.iter().all(|m| m.page != untouched));
                        }
                    }
                    let promotions = plan.moves.iter().filter(|m| matches!(m.action, Action::Promote { .. } | Action::Recreate { .. })).count();
                    prop_assert_eq!(promotions, lost_primaries);
                    let rebuilt = plan.moves.iter().filter(|m| matches!(m.action, Action::Copy { .. })).count();
                    prop_assert!(rebuilt <= lost_copies + missing);
                    check_primaries_explained(&before, &plan);
                    plan
                }
                Op::Add(c) => {
                    let id = NodeId(next_id);
                    next_id += 1;
                    let before = t.clone();
                    let plan = plan_node_added(&t, node(id.0, c * GIB, None)).unwrap();
                    check_primaries_explained(&before, &plan);
                    check_rebalance_minimal(&plan);
                    plan
                }
                Op::Drain(k) => {
                    let act: Vec<NodeId> = t.active_nodes().map(|n| n.id).collect();
                    if act.len() <= 1 { continue; }
                    let victim = act[k % act.len()];
                    let before = t.clone();
                    let plan = plan_node_drain(&t, victim).unwrap();
                    check_primaries_explained(&before, &plan);
                    check_rebalance_minimal(&plan);
                    // Nothing stays on the drained node unless it had nowhere to go.
                    let left = plan.next.used_bytes()[&victim];
                    prop_assert_eq!(left == 0, plan.stuck.is_empty());
                    // No copy is dropped by a drain.
                    for (v, p) in all_pages(&before) {
                        prop_assert!(copies(plan.next.volume(v).unwrap(), p) >= copies(before.volume(v).unwrap(), p));
                    }
                    plan
                }
            };
            plan.next.validate().unwrap();
            prop_assert_eq!(plan.next.epoch(), t.epoch().next());
            // Replica counts are restored when enough active nodes remain.
            let need = plan.next.volumes().values().map(|vm| vm.volume().copies()).max().unwrap_or(1);
            if active(&plan.next) >= need {
                prop_assert_eq!(plan.under_replicated, 0);
                for vm in plan.next.volumes().values() {
                    for p in 0..vm.page_count() {
                        prop_assert_eq!(copies(vm, p), vm.volume().copies());
                    }
                }
            }
            t = plan.next;
        }
    }

    #[test]
    fn hot_page_moves_each_lower_the_peak(
        s in setup(),
        loads in prop::collection::vec((0u64..48, 1u32..100), 1..40),
        budget in 0usize..20,
    ) {
        let t = build(&s);
        let vm = t.volume(VolumeId(1)).unwrap();
        let mut page_loads: BTreeMap<u64, f64> = BTreeMap::new();
        for (p, l) in loads {
            if p < vm.page_count() {
                *page_loads.entry(p).or_default() += f64::from(l);
            }
        }
        let list: Vec<PageLoad> = page_loads.iter().map(|(&p, &l)| PageLoad { page: PageRef { volume: VolumeId(1), page: p }, load: l }).collect();
        let plan = plan_hot_pages(&t, &list, budget);
        plan.next.validate().unwrap();
        prop_assert!(plan.moves.len() <= budget);
        // Replay: each move takes a page off a busiest node and lowers that peak.
        let mut node_load: BTreeMap<NodeId, f64> = t.nodes().keys().map(|&n| (n, 0.0)).collect();
        for (&p, &l) in &page_loads {
            *node_load.get_mut(&vm.primary(p).unwrap()).unwrap() += l;
        }
        for m in &plan.moves {
            let (from, to) = match m.action {
                Action::SwapRoles { from, to } => (from, to),
                Action::Move { from, to, primary: true } => (from, to),
                other => panic!("unexpected {other:?}"),
            };
            let peak = node_load.values().cloned().fold(0.0, f64::max);
            prop_assert!((node_load[&from] - peak).abs() < 1e-9);
            let l = page_loads[&m.page.page];
            *node_load.get_mut(&from).unwrap() -= l;
            *node_load.get_mut(&to).unwrap() += l;
            prop_assert!(node_load[&from].max(node_load[&to]) < peak);
        }
    }

    #[test]
    fn wire_round_trips_and_rejects_corruption(
        s in setup(), flip in any::<prop::sample::Index>(), bit in 0u8..8, cut in any::<prop::sample::Index>(),
    ) {
        let t = build(&s);
        for (&v, vm) in t.volumes() {
            let bytes = wire::encode(&t, v).unwrap();
            let w = wire::decode(&bytes).unwrap();
            prop_assert_eq!(w.epoch, t.epoch());
            prop_assert_eq!(w.volume, v);
            for lba in 0..vm.volume().blocks {
                prop_assert_eq!(w.owner_id(lba), vm.owner(lba));
            }
            let mut bad = bytes.clone();
            let i = flip.index(bad.len());
            bad[i] ^= 1 << bit;
            prop_assert!(wire::decode(&bad).is_err());
            let n = cut.index(bytes.len());
            prop_assert!(wire::decode(&bytes[..n]).is_err());
        }
    }

    #[test]
    fn wire_decoder_never_panics_on_garbage(mut bytes in prop::collection::vec(any::<u8>(), 0..300), fix in any::<bool>()) {
        if fix && bytes.len() >= 64 {
            // Make it pass the outer checks so that the body parser is exercised.
            bytes[..4].copy_from_slice(b"MRTB");
            bytes[4] = 1;
            bytes[5] = 0;
            let len = bytes.len() as u32;
            bytes[8..12].copy_from_slice(&len.to_be_bytes());
            let body = bytes.len() - 4;
            let crc = crc32c_of(&bytes[..body]);
            bytes[body..].copy_from_slice(&crc.to_be_bytes());
        }
        let _ = wire::decode(&bytes);
    }

    #[test]
    fn dm_switch_output_parses_back_to_the_owners(
        nodes in 1u32..7,
        runs in prop::collection::vec((0u32..7, 1usize..40, 0usize..4), 1..60),
    ) {
        // Owners from runs, some of them repeated patterns.
        let mut owners: Vec<u32> = Vec::new();
        for (n, len, pattern) in runs {
            for k in 0..len {
                owners.push(if pattern == 0 { n % nodes } else { (n + (k % (pattern + 1)) as u32) % nodes });
            }
        }
        let table = RoutingTable::new((0..nodes).map(|i| Node::new(NodeId(i), 1 << 50))).unwrap();
        let v = Volume { id: VolumeId(1), name: "v".into(), blocks: owners.len() as u64 * 16, block_size: 512, page_size: 8192, replicas: 0 };
        let t = plan_create_volume(&table, v).unwrap();
        let vm = set_owners(&t, &owners);
        let paths: Vec<DmPath> = (0..nodes).rev().map(|i| DmPath { node: NodeId(i), device: format!("/dev/mapper/n{i}"), offset: 0 }).collect();
        let line = dmswitch::table_line(&vm, &paths).unwrap();
        let msgs = dmswitch::set_region_mappings(&vm, &paths).unwrap();
        let parsed = dmswitch::parse(&line, &msgs).unwrap();
        prop_assert_eq!(parsed.region_size, 16);
        prop_assert_eq!(parsed.regions.len(), owners.len());
        for (r, &path) in parsed.regions.iter().enumerate() {
            prop_assert_eq!(paths[path as usize].node, NodeId(owners[r]));
        }
    }

    #[test]
    fn nic_groups_stay_distinct_after_a_node_loss(
        nodes in 2u32..6, nics in 1u8..4, groups in prop::collection::vec((1usize..4, any::<bool>()), 1..20), victim in 0u32..6,
    ) {
        let t = RoutingTable::new((0..nodes).map(|i| {
            let mut n = Node::new(NodeId(i), GIB);
            for k in 0..nics { n = n.with_nic(10_000 * (u32::from(k) + 1), vec![]); }
            n
        })).unwrap();
        let mut p = NicPlanner::from_table(&t);
        let mut placed = BTreeMap::new();
        for (g, &(k, dn)) in groups.iter().enumerate() {
            let name = format!("g{g}");
            if let Ok(a) = p.assign(&name, VolumeId(1), k, dn) {
                let mut nics_used = a.clone();
                nics_used.sort();
                nics_used.dedup();
                prop_assert_eq!(nics_used.len(), k);
                if dn {
                    let mut ns: Vec<_> = a.iter().map(|s| s.node).collect();
                    ns.sort();
                    ns.dedup();
                    prop_assert_eq!(ns.len(), k);
                }
                placed.insert(name, (a, dn));
            }
        }
        let victim = NodeId(victim % nodes);
        let moves = p.fail_node(victim);
        let expected: usize = placed.values().map(|(a, _)| a.iter().filter(|s| s.node == victim).count()).sum();
        prop_assert_eq!(moves.len(), expected);
        for (name, (old, dn)) in &placed {
            let new: Vec<_> = p.group(name).unwrap().into_iter().flatten().collect();
            prop_assert_eq!(new.len(), old.len());
            for (o, n) in old.iter().zip(&new) {
                prop_assert_ne!(n.node, victim);
                if o.node != victim { prop_assert_eq!(o, n); }
            }
            let mut ns: Vec<_> = new.iter().map(|s| s.node).collect();
            ns.sort();
            ns.dedup();
            let left = nodes as usize - 1;
            if *dn && old.len() <= left {
                prop_assert_eq!(ns.len(), old.len());
            }
            let mut distinct_nics = new.clone();
            distinct_nics.sort();
            distinct_nics.dedup();
            if old.len() <= left * usize::from(nics) {
                prop_assert_eq!(distinct_nics.len(), new.len());
            }
        }
    }

    #[test]
    fn failure_takeover_follows_node_load(s in setup(), figures in prop::collection::vec(0u32..100, 8)) {
        let t = build(&s);
        let loads: Loads = t.nodes().keys().enumerate().map(|(i, &n)| (n, NodeLoad { cpu: f64::from(figures[i]) / 100.0, memory: 0.0, io: 0.0 })).collect();
        let victim = NodeId(0);
        let plan = plan_node_failure(&t, victim, &loads).unwrap();
        // Each promotion picks an in-sync replica; none picks a node whose
        // starting load is above every other candidate's projected load.
        for m in &plan.moves {
            if let Action::Promote { to, .. } = m.action {
                let vm = t.volume(m.page.volume).unwrap();
                prop_assert!(vm.replicas(m.page.page).iter().any(|r| r.node == to && r.in_sync));
            }
        }
        prop_assert_eq!(plan.next.node(victim).unwrap().state, NodeState::Failed);
    }
}

fn crc32c_of(b: &[u8]) -> u32 {
    // The same CRC32C (Castagnoli) the format uses, bit by bit, as an independent
    // check of the implementation.
    let mut crc = !0u32;
    for &byte in b {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A copy of the volume's map with the given owners (through the public API:
/// serialise, edit, deserialise, validate).
fn set_owners(t: &RoutingTable, owners: &[u32]) -> VolumeMap {
    let mut json: serde_json::Value = serde_json::to_value(t).unwrap();
    let prim = &mut json["volumes"]["1"]["primaries"];
    *prim = serde_json::Value::Array(owners.iter().map(|&o| o.into()).collect());
    let t2: RoutingTable = serde_json::from_value(json).unwrap();
    t2.validate().unwrap();
    t2.volume(VolumeId(1)).unwrap().clone()
}
