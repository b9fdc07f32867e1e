//! The cluster's portals as initiators see them: every NIC portal of every node,
//! with its target portal group tag, and how many connections each carries. The
//! group portal uses it to answer a Normal login with a redirect (RFC 7143
//! §11.13.5, "Target moved temporarily") to the least-loaded portal.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use mosaic_routing::{NicPlanner, NicSlot, NodeId, RoutingTable};
use parking_lot::Mutex;

/// The vendor login key (RFC 7143 §13.5.4) naming the MPIO group a connection
/// belongs to; its value is any string the initiator picks for one multipath disk.
/// See docs/wire-formats.md.
pub const MPIO_GROUP_KEY: &str = "X-io.mosaic.MpioGroup";

/// One NIC portal of one node.
#[derive(Debug)]
pub struct PortalEntry {
    pub addr: SocketAddr,
    /// The node's target portal group tag (one group per node).
    pub tpgt: u16,
    /// The node it belongs to.
    pub node: u32,
    /// Connections open on it now.
    connections: AtomicUsize,
    /// Logins redirected to it whose connection has not arrived yet: counted so
    /// that a burst of logins spreads instead of all going to the same portal.
    pending: AtomicUsize,
}

/// Every portal of the cluster and its load.
#[derive(Debug, Default)]
pub struct PortalLoad {
    portals: Vec<PortalEntry>,
    /// The nodes and NICs (from the routing table), for MPIO group placement.
    layout: Option<RoutingTable>,
    /// Live connections of each MPIO group: the portals they are on, including
    /// logins redirected there that have not arrived yet.
    groups: Mutex<HashMap<String, Vec<SocketAddr>>>,
}

/// Counts one connection in its MPIO group for as long as it lives.
#[derive(Debug)]
pub struct GroupGuard {
    load: Arc<PortalLoad>,
    group: String,
    addr: SocketAddr,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        let mut g = self.load.groups.lock();
        if let Some(v) = g.get_mut(&self.group) {
            if let Some(i) = v.iter().position(|a| *a == self.addr) {
                v.swap_remove(i);
            }
            if v.is_empty() {
                g.remove(&self.group);
            }
        }
    }
}

/// Counts one connection on a portal for as long as it lives.
#[derive(Debug)]
pub struct ConnectionGuard {
    load: Arc<PortalLoad>,
    index: Option<usize>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if let Some(i) = self.index {
            self.load.portals[i]
                .connections
                .fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl PortalLoad {
    /// The portals of a cluster: (address, tpgt, node) for each.
    pub fn new(portals: impl IntoIterator<Item = (SocketAddr, u16, u32)>) -> PortalLoad {
        PortalLoad {
            portals: portals
                .into_iter()
                .map(|(addr, tpgt, node)| PortalEntry {
                    addr,
                    tpgt,
                    node,
                    connections: AtomicUsize::new(0),
                    pending: AtomicUsize::new(0),
                })
                .collect(),
            layout: None,
            groups: Mutex::new(HashMap::new()),
        }
    }

    /// With the cluster's node and NIC layout, logins naming an MPIO group are
    /// placed with the routing crate's NIC planner.
    pub fn with_layout(mut self, table: RoutingTable) -> PortalLoad {
        self.layout = Some(table);
        self
    }

    /// Every portal with its tag, for SendTargets.
    pub fn list(&self) -> impl Iterator<Item = (SocketAddr, u16)> + '_ {
        self.portals.iter().map(|p| (p.addr, p.tpgt))
    }

    /// A connection arrived on `addr` (a local address of ours).
    pub fn connected(self: &Arc<Self>, addr: SocketAddr) -> ConnectionGuard {
        let index = self.portals.iter().position(|p| p.addr == addr);
        if let Some(i) = index {
            let p = &self.portals[i];
            p.connections.fetch_add(1, Ordering::Relaxed);
            // The redirected login (if any) has arrived.
            let _ = p
                .pending
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        }
        ConnectionGuard {
            load: self.clone(),
            index,
        }
    }

    /// Connections open on each portal now.
    pub fn connections(&self) -> Vec<(SocketAddr, u32, usize)> {
        self.portals
            .iter()
            .map(|p| (p.addr, p.node, p.connections.load(Ordering::Relaxed)))
            .collect()
    }

    /// Each MPIO group with the portals its live connections use, by group name.
    pub fn groups(&self) -> Vec<(String, Vec<SocketAddr>)> {
        let mut v: Vec<_> = self
            .groups
            .lock()
            .iter()
            .map(|(g, a)| (g.clone(), a.clone()))
            .collect();
        v.sort();
        v
    }

    /// A connection of MPIO group `group` is live on `addr` (the node portal it
    /// logged in at). The redirect that sent it there already counted it.
    pub fn join_group(self: &Arc<Self>, group: &str, addr: SocketAddr) -> GroupGuard {
        let mut g = self.groups.lock();
        let v = g.entry(group.to_string()).or_default();
        if !v.contains(&addr) {
            v.push(addr);
        }
        GroupGuard {
            load: self.clone(),
            group: group.to_string(),
            addr,
        }
    }

    /// The portal the next connection of MPIO group `group` should go to: a NIC
    /// the group does not use yet, on a node it does not use yet while there is
    /// one, and among those the least loaded, by the routing crate's NIC planner.
    /// Without a layout, or when every NIC is taken, the least-loaded portal.
    pub fn choose_for_group(&self, group: &str) -> Option<String> {
        let Some(table) = &self.layout else {
            return self.choose();
        };
        let mut planner = NicPlanner::from_table(table);
        let slot_of = |addr: SocketAddr| -> Option<NicSlot> {
            table.nodes().values().find_map(|n| {
                n.nics
                    .iter()
                    .find(|nic| nic.portals.contains(&addr))
                    .map(|nic| NicSlot {
                        node: n.id,
                        nic: nic.id,
                    })
            })
        };
        for p in &self.portals {
            let load = p.connections.load(Ordering::Relaxed) + p.pending.load(Ordering::Relaxed);
            if let Some(slot) = slot_of(p.addr) {
                let _ = planner.add_connections(slot, load as u32);
            }
        }
        let mut groups = self.groups.lock();
        let used: Vec<NicSlot> = groups
            .get(group)
            .map(|v| v.iter().filter_map(|a| slot_of(*a)).collect())
            .unwrap_or_default();
        let used_nodes: Vec<NodeId> = used.iter().map(|s| s.node).collect();
        let slot = planner
            .best_slot(&used, &used_nodes)
            .or_else(|| planner.best_slot(&used, &[]))?;
        let node = table.node(slot.node)?;
        let addr = *node
            .nics
            .iter()
            .find(|n| n.id == slot.nic)?
            .portals
            .first()?;
        let entry = self.portals.iter().find(|p| p.addr == addr)?;
        entry.pending.fetch_add(1, Ordering::Relaxed);
        groups.entry(group.to_string()).or_default().push(addr);
        Some(target_address(entry.addr, entry.tpgt))
    }

    /// The portal a new login should go to: the one with the fewest connections
    /// (counting logins already sent there), the first such in order on a tie.
    /// Returns the TargetAddress value (`ip:port,tpgt`).
    pub fn choose(&self) -> Option<String> {
        let best = self
            .portals
            .iter()
            .filter(|p| !p.addr.ip().is_unspecified())
            .min_by_key(|p| {
                p.connections.load(Ordering::Relaxed) + p.pending.load(Ordering::Relaxed)
            })?;
        best.pending.fetch_add(1, Ordering::Relaxed);
        Some(target_address(best.addr, best.tpgt))
    }
}

/// A TargetAddress value (RFC 7143 §13.8): `ip:port,tpgt`, IPv6 in brackets.
pub fn target_address(addr: SocketAddr, tpgt: u16) -> String {
    match addr {
        SocketAddr::V4(a) => format!("{}:{},{tpgt}", a.ip(), a.port()),
        SocketAddr::V6(a) => format!("[{}]:{},{tpgt}", a.ip(), a.port()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load() -> Arc<PortalLoad> {
        Arc::new(PortalLoad::new([
            ("127.0.1.1:3260".parse().unwrap(), 1, 1),
            ("127.0.1.2:3260".parse().unwrap(), 1, 1),
            ("127.0.2.1:3260".parse().unwrap(), 2, 2),
        ]))
    }

    #[test]
    fn a_burst_of_logins_spreads_over_every_portal() {
        let l = load();
        let mut got: Vec<String> = (0..3).map(|_| l.choose().unwrap()).collect();
        got.sort();
        assert_eq!(
            got,
            vec!["127.0.1.1:3260,1", "127.0.1.2:3260,1", "127.0.2.1:3260,2"]
        );
    }

    #[test]
    fn busy_portals_are_avoided_until_connections_close() {
        let l = load();
        let a = l.connected("127.0.1.1:3260".parse().unwrap());
        let _b = l.connected("127.0.1.2:3260".parse().unwrap());
        assert_eq!(l.choose().unwrap(), "127.0.2.1:3260,2");
        let _c = l.connected("127.0.2.1:3260".parse().unwrap());
        drop(a);
        assert_eq!(l.choose().unwrap(), "127.0.1.1:3260,1");
    }

    fn layout_load() -> Arc<PortalLoad> {
        use mosaic_routing::Node;
        let mut portals = Vec::new();
        let nodes: Vec<Node> = (1..=3u32)
            .map(|i| {
                let mut n = Node::new(NodeId(i), 1 << 40);
                for j in 1..=2u8 {
                    let a: SocketAddr = format!("127.0.{i}.{j}:3260").parse().unwrap();
                    portals.push((a, i as u16, i));
                    n = n.with_nic(10_000, vec![a]);
                }
                n
            })
            .collect();
        let table = RoutingTable::new(nodes).unwrap();
        Arc::new(PortalLoad::new(portals).with_layout(table))
    }

    fn node_of(addr: &str) -> &str {
        addr.split('.').nth(2).unwrap()
    }

    #[test]
    fn one_group_gets_distinct_nics_and_nodes_while_there_are_enough() {
        let l = layout_load();
        let picks: Vec<String> = (0..4)
            .map(|_| l.choose_for_group("disk-a").unwrap())
            .collect();
        let mut nics = picks.clone();
        nics.sort();
        nics.dedup();
        assert_eq!(nics.len(), 4, "distinct NICs: {picks:?}");
        let mut nodes: Vec<&str> = picks[..3].iter().map(|p| node_of(p)).collect();
        nodes.sort();
        nodes.dedup();
        assert_eq!(
            nodes.len(),
            3,
            "the first three on distinct nodes: {picks:?}"
        );
    }

    #[test]
    fn a_second_group_avoids_the_first_groups_nics() {
        let l = layout_load();
        let a: Vec<String> = (0..3)
            .map(|_| l.choose_for_group("disk-a").unwrap())
            .collect();
        let b: Vec<String> = (0..3)
            .map(|_| l.choose_for_group("disk-b").unwrap())
            .collect();
        for p in &b {
            assert!(
                !a.contains(p),
                "group b reused {p} of group a: a={a:?} b={b:?}"
            );
        }
    }

    #[test]
    fn a_closed_connection_frees_its_nic_for_the_group() {
        let l = layout_load();
        let first = l.choose_for_group("g").unwrap();
        let addr: SocketAddr = first.split(',').next().unwrap().parse().unwrap();
        let conn = l.connected(addr);
        let guard = l.join_group("g", addr);
        drop(guard);
        drop(conn);
        // The group's list still holds the redirect's entry until the connection
        // that used it ends: joining and leaving removed it.
        assert!(l.groups.lock().get("g").is_none());
    }

    #[test]
    fn ipv6_addresses_are_bracketed() {
        assert_eq!(
            target_address("[::1]:3260".parse().unwrap(), 3),
            "[::1]:3260,3"
        );
    }
}
