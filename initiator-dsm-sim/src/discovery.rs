//! Discovery: a Discovery session and SendTargets=All (RFC 7143 §4.3, Appendix C).

use std::net::SocketAddr;

use crate::conn::{Conn, ConnTimers};
use crate::error::{Error, Result};
use crate::login::{connect_and_login, parse_target_address, LoginConfig};

/// One portal of a target, with its portal group tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Portal {
    pub addr: SocketAddr,
    pub tpgt: u16,
}

/// A target and where it can be reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub name: String,
    pub portals: Vec<Portal>,
}

/// Parses a SendTargets answer: each TargetName followed by its TargetAddresses.
pub fn parse_send_targets(keys: &[(String, String)]) -> Result<Vec<Target>> {
    let mut out: Vec<Target> = Vec::new();
    for (k, v) in keys {
        match k.as_str() {
            "TargetName" => out.push(Target {
                name: v.clone(),
                portals: Vec::new(),
            }),
            "TargetAddress" => {
                let t = out
                    .last_mut()
                    .ok_or_else(|| Error::Protocol("TargetAddress before any TargetName".into()))?;
                let addr = parse_target_address(v)?;
                let tpgt = v
                    .rsplit_once(',')
                    .and_then(|(_, t)| t.parse().ok())
                    .unwrap_or(1);
                t.portals.push(Portal { addr, tpgt });
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Logs in a Discovery session at `addr`, asks SendTargets=All, logs out.
pub async fn send_targets(
    addr: SocketAddr,
    cfg: &LoginConfig,
    timers: ConnTimers,
) -> Result<Vec<Target>> {
    let mut cfg = cfg.clone();
    cfg.target_name = None;
    cfg.vendor_keys.clear();
    let l = connect_and_login(addr, &cfg, 0).await?;
    let conn = Conn::open(l, 0, timers);
    let keys = conn
        .text(&[("SendTargets".to_string(), "All".to_string())])
        .await?;
    // A failed logout does not make the answer wrong.
    if let Err(e) = conn.logout().await {
        tracing::debug!(error = %e, "discovery logout");
    }
    let mut targets = parse_send_targets(&keys)?;
    // A target that lists no address is reached at the portal we asked.
    for t in &mut targets {
        if t.portals.is_empty() {
            t.portals.push(Portal { addr, tpgt: 1 });
        }
    }
    Ok(targets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(k: &str, v: &str) -> (String, String) {
        (k.into(), v.into())
    }

    #[test]
    fn send_targets_groups_addresses_under_names() {
        let t = parse_send_targets(&[
            kv("TargetName", "iqn.a"),
            kv("TargetAddress", "127.0.1.1:3260,1"),
            kv("TargetAddress", "127.0.2.1:3260,2"),
            kv("TargetName", "iqn.b"),
        ])
        .unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].portals.len(), 2);
        assert_eq!(t[0].portals[1].tpgt, 2);
        assert!(t[1].portals.is_empty());
        assert!(parse_send_targets(&[kv("TargetAddress", "1.2.3.4:5,1")]).is_err());
        assert!(parse_send_targets(&[kv("TargetName", "x"), kv("TargetAddress", "junk")]).is_err());
    }
}
