//! The cluster's portals as initiators see them: every NIC portal of every node,
//! with its target portal group tag, and how many connections each carries. The
//! group portal uses it to answer a Normal login with a redirect (RFC 7143
//! §11.13.5, "Target moved temporarily") to the least-loaded portal.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

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
        }
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

    #[test]
    fn ipv6_addresses_are_bracketed() {
        assert_eq!(
            target_address("[::1]:3260".parse().unwrap(), 3),
            "[::1]:3260,3"
        );
    }
}
