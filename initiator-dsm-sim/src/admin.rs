//! A minimal HTTP/1.1 client for the lab's admin endpoint (target/src/cluster/
//! admin.rs): the Prometheus counters at `GET /metrics` (to cross-check what the
//! initiator believes about owners with what the nodes counted) and page moves at
//! `POST /routing/{volume}/move` (to change the table during a run).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::{Error, Result};

/// Longest answer we read.
const MAX_RESPONSE: usize = 16 << 20;

/// Sends one request and returns (status, body).
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    timeout: Duration,
) -> Result<(u16, String)> {
    let io = |source| Error::Io { addr, source };
    let fut = async {
        let mut s = TcpStream::connect(addr).await.map_err(io)?;
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.map_err(io)?;
        let mut buf = Vec::new();
        (&mut s)
            .take(MAX_RESPONSE as u64)
            .read_to_end(&mut buf)
            .await
            .map_err(io)?;
        parse_response(&buf)
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| Error::Timeout(format!("{method} {path} at {addr}")))?
}

fn parse_response(buf: &[u8]) -> Result<(u16, String)> {
    let text = String::from_utf8_lossy(buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| Error::Protocol("HTTP response without a header end".into()))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            Error::Protocol(format!("bad HTTP status line {:?}", head.lines().next()))
        })?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}

/// Sums of every Prometheus counter by metric name (labels summed over).
pub fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (name_labels, value) = match line.rsplit_once(' ') {
            Some(x) => x,
            None => continue,
        };
        let name = name_labels.split('{').next().unwrap_or(name_labels);
        if let Ok(v) = value.trim().parse::<f64>() {
            *out.entry(name.to_string()).or_insert(0.0) += v;
        }
    }
    out
}

/// The node counters that say where page pieces were served.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TargetCounters {
    /// Pieces served by the node the command arrived at (it owns them).
    pub local: f64,
    /// Pieces the receiving node forwarded to the owner.
    pub forwarded: f64,
    /// Reads of a page owned elsewhere answered by the owner through the receiving
    /// node (`--io-mode short-cut`): not local either.
    pub shortcut: f64,
}

impl TargetCounters {
    /// `self - before`.
    pub fn since(&self, before: &TargetCounters) -> TargetCounters {
        TargetCounters {
            local: self.local - before.local,
            forwarded: self.forwarded - before.forwarded,
            shortcut: self.shortcut - before.shortcut,
        }
    }

    /// Share of pieces served locally (0..=1).
    pub fn local_share(&self) -> Option<f64> {
        let all = self.local + self.forwarded + self.shortcut;
        (all > 0.0).then(|| self.local / all)
    }
}

/// Reads the lab's local, forwarded and short-cut counters.
pub async fn target_counters(admin: SocketAddr) -> Result<TargetCounters> {
    let (status, body) = request(admin, "GET", "/metrics", "", Duration::from_secs(10)).await?;
    if status != 200 {
        return Err(Error::Protocol(format!("GET /metrics answered {status}")));
    }
    let m = parse_metrics(&body);
    Ok(TargetCounters {
        local: m
            .get("mosaic_node_local_pieces_total")
            .copied()
            .unwrap_or(0.0),
        forwarded: m
            .get("mosaic_node_forwarded_pieces_total")
            .copied()
            .unwrap_or(0.0),
        shortcut: m
            .get("mosaic_node_shortcut_reads_total")
            .copied()
            .unwrap_or(0.0),
    })
}

/// Moves pages `first..=last` of `volume` to node `to`.
pub async fn move_pages(
    admin: SocketAddr,
    volume: &str,
    first: u64,
    last: u64,
    to: u32,
) -> Result<()> {
    let body = format!("{{\"pages\":\"{first}-{last}\",\"to\":{to}}}");
    let (status, text) = request(
        admin,
        "POST",
        &format!("/routing/{volume}/move"),
        &body,
        Duration::from_secs(60),
    )
    .await?;
    if !(200..300).contains(&status) {
        return Err(Error::Protocol(format!(
            "moving pages {first}-{last} of {volume} to node {to}: HTTP {status}: {}",
            text.trim()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_summed_over_labels() {
        let m = parse_metrics(
            "# HELP x y\n# TYPE x counter\nmosaic_node_local_pieces_total{node=\"1\"} 5\nmosaic_node_local_pieces_total{node=\"2\"} 7\nmosaic_epoch 3\nbad line\n",
        );
        assert_eq!(m["mosaic_node_local_pieces_total"], 12.0);
        assert_eq!(m["mosaic_epoch"], 3.0);
    }

    #[test]
    fn responses_plain_and_chunked() {
        let (s, b) = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi").unwrap();
        assert_eq!((s, b.as_str()), (200, "hi"));
        let (s, b) = parse_response(
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((s, b.as_str()), (404, "abcde"));
        assert!(parse_response(b"garbage").is_err());
    }
}
