//! The client side of the admin endpoint ([`super::admin`]): what `mosaic volume
//! ...`, `mosaic routing show` and `mosaic status` send, and their answers as
//! text for people. Blocking (ureq): the CLI makes one request and exits.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{json, Value};
use thiserror::Error;

/// How long connecting to the endpoint may take: it is local to the lab.
const CONNECT_LIMIT: Duration = Duration::from_secs(5);
/// How long one request may take: a change waits for every node to follow it
/// (the endpoint gives up after 15 s), so this leaves room for a loaded machine.
const REQUEST_LIMIT: Duration = Duration::from_secs(60);

/// Why an admin request failed.
#[derive(Debug, Error)]
pub enum ClientError {
    /// Nothing answered at the address.
    #[error(
        "cannot reach the admin endpoint at {addr} (is `mosaic lab` running with \
         --admin {addr}?): {reason}"
    )]
    Unreachable { addr: String, reason: String },
    /// The endpoint refused the request; the message is its own.
    #[error("{message} (HTTP {status})")]
    Refused { status: u16, message: String },
    /// The answer was not what the endpoint sends.
    #[error("unexpected answer from the admin endpoint: {0}")]
    Protocol(String),
}

/// A client of one lab's admin endpoint.
#[derive(Debug)]
pub struct AdminClient {
    addr: String,
    agent: ureq::Agent,
}

/// What `mosaic volume create` asks for.
#[derive(Debug, Clone, Default)]
pub struct CreateArgs {
    pub name: String,
    /// Bytes or with a K/M/G/T suffix.
    pub size: String,
    pub block_size: Option<u32>,
    pub page_size: Option<String>,
    pub replicas: Option<u8>,
    /// `file` or `memory`.
    pub backing: Option<String>,
}

/// `s` with every byte outside `[A-Za-z0-9._-]` percent-encoded (a path segment).
fn segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"._-".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A size for people: exact binary units when they fit, bytes otherwise.
pub fn human_size(bytes: u64) -> String {
    for (unit, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if bytes >= 1 << shift && bytes & ((1 << shift) - 1) == 0 {
            return format!("{} {unit}", bytes >> shift);
        }
    }
    for (unit, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if bytes >= 1 << shift {
            return format!("{:.2} {unit}", bytes as f64 / (1u64 << shift) as f64);
        }
    }
    format!("{bytes} B")
}

fn num(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or(0)
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or("-")
}

/// Left-aligned columns, two spaces apart.
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = widths[c]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A latency estimate in microseconds for people: "-" before any command.
fn human_latency(us: &Value) -> String {
    match us.as_f64() {
        None => "-".into(),
        Some(us) if us >= 10_000.0 => format!("{:.0} ms", us / 1000.0),
        Some(us) if us >= 1000.0 => format!("{:.1} ms", us / 1000.0),
        Some(us) => format!("{us:.0} us"),
    }
}

/// SCSI command latency per node: count, p50 and p99 of reads, writes and others
/// (estimates from the histograms, see `GET /metrics`).
fn latency_table(nodes: &[Value]) -> String {
    let mut header = vec!["LATENCY".to_string()];
    for op in ["READ", "WRITE", "OTHER"] {
        header.push(format!("{op}S"));
        header.push(format!("{op} P50"));
        header.push(format!("{op} P99"));
    }
    let mut rows = vec![header];
    for n in nodes {
        let mut row = vec![format!("node {}", num(n, "node"))];
        for op in ["read", "write", "other"] {
            let l = &n["latency"][op];
            row.push(num(l, "count").to_string());
            row.push(human_latency(&l["p50_us"]));
            row.push(human_latency(&l["p99_us"]));
        }
        rows.push(row);
    }
    table(&rows)
}

fn describe_volume(v: &Value) -> String {
    let replicas = num(v, "replicas");
    format!(
        "{}: {} ({} blocks of {} bytes), {} pages of {}, {} replica{} per page, {}\n  target {}",
        text(v, "name"),
        human_size(num(v, "size")),
        num(v, "blocks"),
        num(v, "block_size"),
        num(v, "pages"),
        human_size(num(v, "page_size")),
        replicas,
        if replicas == 1 { "" } else { "s" },
        match v["backing"].as_str() {
            Some(b) => format!("{b}-backed"),
            None => "backing unknown".into(),
        },
        text(v, "iqn"),
    )
}

impl AdminClient {
    /// A client of the endpoint at `addr` (`HOST:PORT`).
    pub fn new(addr: &str) -> AdminClient {
        AdminClient {
            addr: addr.to_string(),
            agent: ureq::AgentBuilder::new()
                .timeout_connect(CONNECT_LIMIT)
                .timeout(REQUEST_LIMIT)
                .build(),
        }
    }

    fn raw(&self, method: &str, path: &str, body: Option<&Value>) -> Result<String, ClientError> {
        let url = format!("http://{}{path}", self.addr);
        let req = self.agent.request(method, &url);
        let res = match body {
            Some(b) => req
                .set("Content-Type", "application/json")
                .send_string(&b.to_string()),
            None => req.call(),
        };
        match res {
            Ok(r) => r
                .into_string()
                .map_err(|e| ClientError::Protocol(e.to_string())),
            Err(ureq::Error::Status(status, r)) => {
                let body = r.into_string().unwrap_or_default();
                let message = serde_json::from_str::<Value>(&body)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(str::to_string))
                    .unwrap_or(body);
                Err(ClientError::Refused { status, message })
            }
            Err(ureq::Error::Transport(t)) => Err(ClientError::Unreachable {
                addr: self.addr.clone(),
                reason: t.to_string(),
            }),
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, ClientError> {
        let text = self.raw(method, path, body)?;
        serde_json::from_str(&text).map_err(|e| ClientError::Protocol(format!("{e}: {text}")))
    }

    /// `POST /volumes`.
    pub fn create(&self, a: &CreateArgs) -> Result<String, ClientError> {
        let mut body = json!({ "name": a.name, "size": a.size });
        if let Some(b) = a.block_size {
            body["block_size"] = json!(b);
        }
        if let Some(p) = &a.page_size {
            body["page_size"] = json!(p);
        }
        if let Some(r) = a.replicas {
            body["replicas"] = json!(r);
        }
        if let Some(b) = &a.backing {
            body["backing"] = json!(b);
        }
        let v = self.call("POST", "/volumes", Some(&body))?;
        Ok(format!("created volume {}\n", describe_volume(&v)))
    }

    /// `GET /volumes`.
    pub fn list(&self) -> Result<String, ClientError> {
        let v = self.call("GET", "/volumes", None)?;
        let vols = v["volumes"].as_array().cloned().unwrap_or_default();
        if vols.is_empty() {
            return Ok("no volumes\n".into());
        }
        let mut rows = vec![[
            "NAME", "ID", "SIZE", "BLOCK", "PAGE", "PAGES", "REPLICAS", "BACKING", "TARGET",
        ]
        .map(String::from)
        .to_vec()];
        for x in &vols {
            rows.push(vec![
                text(x, "name").to_string(),
                num(x, "id").to_string(),
                human_size(num(x, "size")),
                num(x, "block_size").to_string(),
                human_size(num(x, "page_size")),
                num(x, "pages").to_string(),
                num(x, "replicas").to_string(),
                text(x, "backing").to_string(),
                text(x, "iqn").to_string(),
            ]);
        }
        Ok(table(&rows))
    }

    /// `POST /volumes/NAME/resize`.
    pub fn resize(&self, name: &str, size: &str) -> Result<String, ClientError> {
        let v = self.call(
            "POST",
            &format!("/volumes/{}/resize", segment(name)),
            Some(&json!({ "size": size })),
        )?;
        Ok(format!(
            "resized volume {}\n  sessions logged in keep the old size until they log in again \
             (they get CAPACITY DATA HAS CHANGED)\n",
            describe_volume(&v)
        ))
    }

    /// `DELETE /volumes/NAME`.
    pub fn delete(&self, name: &str) -> Result<String, ClientError> {
        self.call("DELETE", &format!("/volumes/{}", segment(name)), None)?;
        Ok(format!("deleted volume {name}\n"))
    }

    /// `GET /routing/NAME`.
    pub fn routing(&self, name: &str) -> Result<String, ClientError> {
        let v = self.call("GET", &format!("/routing/{}", segment(name)), None)?;
        let replicas = num(&v, "replicas");
        let mut out = format!(
            "volume {} (id {}), routing epoch {}: {} in {} pages of {}, {} replica{} per page\n",
            text(&v, "volume"),
            num(&v, "id"),
            num(&v, "epoch"),
            human_size(num(&v, "size")),
            num(&v, "pages"),
            human_size(num(&v, "page_size")),
            replicas,
            if replicas == 1 { "" } else { "s" },
        );
        let mut rows = vec![["NODE", "PRIMARY PAGES", "REPLICA PAGES"]
            .map(String::from)
            .to_vec()];
        for n in v["nodes"].as_array().into_iter().flatten() {
            rows.push(vec![
                num(n, "node").to_string(),
                num(n, "primary_pages").to_string(),
                num(n, "replica_pages").to_string(),
            ]);
        }
        out.push_str(&table(&rows));
        let _ = writeln!(
            out,
            "map (PAGES:PRIMARY+REPLICAS): {}",
            v["map"].as_str().unwrap_or("")
        );
        Ok(out)
    }

    /// `POST /routing/NAME/move`.
    pub fn move_pages(&self, name: &str, pages: &str, to: u32) -> Result<String, ClientError> {
        let v = self.call(
            "POST",
            &format!("/routing/{}/move", segment(name)),
            Some(&json!({ "pages": pages, "to": to })),
        )?;
        Ok(format!(
            "moved the primary of {} page{} of {name} to node {to} ({} copied there), routing epoch {}\n",
            num(&v, "moved"),
            if num(&v, "moved") == 1 { "" } else { "s" },
            num(&v, "copied"),
            num(&v, "epoch"),
        ))
    }

    /// `POST /io-mode`, or `GET` without a mode.
    pub fn io_mode(&self, mode: Option<&str>) -> Result<String, ClientError> {
        let v = match mode {
            Some(m) => self.call("POST", "/io-mode", Some(&json!({ "mode": m })))?,
            None => self.call("GET", "/io-mode", None)?,
        };
        Ok(format!("I/O mode: {}\n", text(&v, "mode")))
    }

    /// `GET /status`.
    pub fn status(&self) -> Result<String, ClientError> {
        let v = self.call("GET", "/status", None)?;
        let mut out = format!(
            "routing epoch {}, I/O mode {}, {} volume{}\n",
            num(&v, "epoch"),
            text(&v, "io_mode"),
            num(&v, "volumes"),
            if num(&v, "volumes") == 1 { "" } else { "s" }
        );
        let nodes = v["nodes"].as_array().cloned().unwrap_or_default();
        let mut rows = vec![[
            "NODE",
            "STATE",
            "SESSIONS",
            "VOLUMES",
            "READS",
            "WRITES",
            "READ",
            "WRITTEN",
            "LOCAL",
            "FORWARDED",
            "REROUTED",
            "SHORT-CUT",
            "SERVED",
        ]
        .map(String::from)
        .to_vec()];
        for n in &nodes {
            let io = &n["io"];
            rows.push(vec![
                num(n, "node").to_string(),
                text(n, "state").to_string(),
                num(n, "sessions").to_string(),
                num(n, "volumes").to_string(),
                num(io, "reads").to_string(),
                num(io, "writes").to_string(),
                human_size(num(io, "read_bytes")),
                human_size(num(io, "written_bytes")),
                num(io, "local").to_string(),
                num(io, "forwarded").to_string(),
                num(io, "rerouted").to_string(),
                num(io, "shortcut").to_string(),
                num(io, "served").to_string(),
            ]);
        }
        out.push_str(&table(&rows));
        out.push('\n');
        out.push_str(&latency_table(&nodes));
        out.push('\n');
        let mut rows = vec![["PORTAL (NIC)", "NODE", "CONNECTIONS"]
            .map(String::from)
            .to_vec()];
        for n in &nodes {
            for p in n["portals"].as_array().into_iter().flatten() {
                rows.push(vec![
                    text(p, "addr").to_string(),
                    num(n, "node").to_string(),
                    num(p, "connections").to_string(),
                ]);
            }
        }
        out.push_str(&table(&rows));
        let groups = v["mpio_groups"].as_array().cloned().unwrap_or_default();
        if !groups.is_empty() {
            out.push('\n');
            let mut rows = vec![["MPIO GROUP", "NICS", "PORTALS"].map(String::from).to_vec()];
            for g in &groups {
                let portals: Vec<&str> = g["portals"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                rows.push(vec![
                    text(g, "group").to_string(),
                    portals.len().to_string(),
                    portals.join(" "),
                ]);
            }
            out.push_str(&table(&rows));
        }
        if let Some(g) = v["group_portal"].as_object() {
            let _ = writeln!(
                out,
                "group portal {}: {} session{} (discovery; logins are redirected)",
                g.get("addr").and_then(Value::as_str).unwrap_or("-"),
                g.get("sessions").and_then(Value::as_u64).unwrap_or(0),
                if g.get("sessions").and_then(Value::as_u64) == Some(1) {
                    ""
                } else {
                    "s"
                }
            );
        }
        Ok(out)
    }

    /// `GET /metrics`, as served.
    pub fn metrics(&self) -> Result<String, ClientError> {
        self.raw("GET", "/metrics", None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_in_binary_units() {
        assert_eq!(human_size(256 << 20), "256 MiB");
        assert_eq!(human_size(3 << 29), "1536 MiB", "exact rather than rounded");
        assert_eq!(human_size((3 << 29) + 1), "1.50 GiB");
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(0), "0 B");
    }

    #[test]
    fn latency_reads_in_microseconds_or_milliseconds() {
        assert_eq!(human_latency(&json!(null)), "-");
        assert_eq!(human_latency(&json!(87.4)), "87 us");
        assert_eq!(human_latency(&json!(1530.0)), "1.5 ms");
        assert_eq!(human_latency(&json!(25_000.0)), "25 ms");
        let nodes = vec![json!({
            "node": 2,
            "latency": {
                "read": { "count": 10, "p50_us": 150.0, "p99_us": 1900.0 },
                "write": { "count": 0, "p50_us": null, "p99_us": null },
                "other": { "count": 3, "p50_us": 12.0, "p99_us": 20.0 },
            }
        })];
        let t = latency_table(&nodes);
        let row: Vec<&str> = t.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(
            row,
            [
                "node", "2", "10", "150", "us", "1.9", "ms", "0", "-", "-", "3", "12", "us", "20",
                "us"
            ]
        );
    }

    #[test]
    fn path_segments_are_escaped() {
        assert_eq!(segment("lv-1.a"), "lv-1.a");
        assert_eq!(segment("a b/c"), "a%20b%2Fc");
    }

    #[test]
    fn an_unreachable_endpoint_says_where_it_looked() {
        // A port nothing listens on: bind one, note it, close it.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let err = AdminClient::new(&addr.to_string()).list().unwrap_err();
        assert!(matches!(err, ClientError::Unreachable { .. }), "{err:?}");
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }
}
