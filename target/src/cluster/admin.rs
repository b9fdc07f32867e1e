//! The lab's admin endpoint: a small HTTP/1.1 server (axum) with a JSON API for
//! volume management and status, and Prometheus metrics. `mosaic volume ...`,
//! `mosaic routing show` and `mosaic status` are its clients
//! ([`super::admin_client`]).
//!
//! | request | what |
//! | --- | --- |
//! | `GET /volumes` | every volume: id, name, IQN, size, geometry, backing |
//! | `POST /volumes` `{name, size, block_size?, page_size?, replicas?, backing?, thin?}` | create (201) |
//! | `POST /volumes/NAME/resize` `{size}` | grow or shrink |
//! | `DELETE /volumes/NAME` | delete |
//! | `GET /routing/NAME` | pages per node, a run-length map of the pages, the epoch |
//! | `POST /routing/NAME/move` `{pages: "FIRST[-LAST]", to}` | move those pages' primary to node `to` |
//! | `GET/POST /io-mode` `{mode: "forward" or "short-cut"}` | the cluster's I/O mode |
//! | `GET /status` | nodes, portals with connections, sessions, I/O counters |
//! | `GET /metrics` | Prometheus text format 0.0.4, every metric named `mosaic_*` |
//!
//! Sizes are bytes or strings with a K/M/G/T suffix ("64M"). Errors are
//! `{"error": "..."}` with 400 (bad request), 404 (unknown volume or path), 409
//! (name taken), 500 (a node failed to follow) or 503 (coordinator trouble).
//!
//! A change goes through the routing table ([`ClusterState::update`], compare and
//! set, the new volume's id one past the largest), and is answered once every node
//! has followed it (opened, resized or dropped the volume), so a client that sees
//! success can use the result at once on any node. Changes are serialised here, so
//! two requests for the same name cannot race between the options and the table.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use mosaic_coord::Coordinator;
use mosaic_routing::{
    plan_create_volume, plan_resize_volume, NodeId, RoutingTable, Volume, VolumeId, VolumeMap,
};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::info;

use super::lab::Lab;
use super::portals::PortalLoad;
use super::state::{ClusterState, StateError};
use super::store::{ClusterIoError, IoMode, IoStats};
use super::volumes::{
    delete_options, put_options, volume_config, BackingKind, NodeVolumes, VolumeOptions,
    VolumeStatus,
};
use crate::latency::{CommandClass, CommandLatency};
use crate::server::Target;

/// The admin endpoint's default address.
pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:3280";
/// How long a change waits for every node to follow it before answering 500: a
/// node opens a sparse file or a memory store in well under a second.
const FOLLOW_LIMIT: Duration = Duration::from_secs(15);
/// How often the nodes' progress is checked while waiting.
const FOLLOW_POLL: Duration = Duration::from_millis(20);

/// One node as the admin endpoint sees it.
#[derive(Debug)]
struct AdminNode {
    id: u32,
    state: Arc<ClusterState>,
    stats: Arc<IoStats>,
    volumes: Arc<NodeVolumes>,
    target: Option<Arc<Target>>,
    /// The node as the primary of its pages: page moves start there.
    service: Arc<super::store::NodeService>,
}

/// What the endpoint serves from.
#[derive(Debug)]
pub struct Admin {
    nodes: Vec<AdminNode>,
    group: Option<Arc<Target>>,
    portals: Arc<PortalLoad>,
    coord: Arc<dyn Coordinator>,
    /// Defaults of a new volume.
    page_size: u64,
    replicas: u8,
    /// One change at a time (see the module docs).
    changes: tokio::sync::Mutex<()>,
}

/// An error answered as `{"error": ...}` with its status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
    fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
    fn unknown_volume(name: &str) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, format!("no volume named {name:?}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

impl From<StateError> for ApiError {
    fn from(e: StateError) -> ApiError {
        use mosaic_routing::RoutingError as R;
        let status = match &e {
            StateError::Refused(_) | StateError::Routing(R::DuplicateVolume(_)) => {
                StatusCode::CONFLICT
            }
            StateError::Routing(R::UnknownVolume(_)) => StatusCode::NOT_FOUND,
            StateError::Routing(_) => StatusCode::BAD_REQUEST,
            StateError::Coord(_) | StateError::Contended(_) => StatusCode::SERVICE_UNAVAILABLE,
            StateError::Corrupt(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<mosaic_coord::CoordError> for ApiError {
    fn from(e: mosaic_coord::CoordError) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("coordinator: {e}"))
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// A size as a number of bytes or a string such as "64M".
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum SizeArg {
    Bytes(u64),
    Text(String),
}

impl SizeArg {
    fn bytes(&self, field: &str) -> ApiResult<u64> {
        match self {
            SizeArg::Bytes(b) => Ok(*b),
            SizeArg::Text(t) => {
                crate::config::parse_size(t).map_err(|m| ApiError::bad(format!("{field}: {m}")))
            }
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    name: String,
    size: SizeArg,
    block_size: Option<u32>,
    page_size: Option<SizeArg>,
    replicas: Option<u8>,
    backing: Option<BackingKind>,
    thin: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResizeRequest {
    size: SizeArg,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MoveRequest {
    /// "N" or "FIRST-LAST" (inclusive).
    pages: String,
    /// The node to become the primary.
    to: u32,
}

/// Parses "N" or "FIRST-LAST" against a volume of `count` pages.
fn page_range(text: &str, count: u64) -> ApiResult<std::ops::RangeInclusive<u64>> {
    let num = |t: &str| {
        t.trim()
            .parse::<u64>()
            .map_err(|_| ApiError::bad(format!("pages: {t:?} is not a page number")))
    };
    let (first, last) = match text.split_once('-') {
        Some((a, b)) => (num(a)?, num(b)?),
        None => {
            let n = num(text)?;
            (n, n)
        }
    };
    if first > last || last >= count {
        return Err(ApiError::bad(format!(
            "pages: {text:?} is not a range within the volume's {count} pages (0-{})",
            count.saturating_sub(1)
        )));
    }
    Ok(first..=last)
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> ApiResult<T> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("request body: {e}")))
}

impl Admin {
    /// The endpoint of a started lab.
    pub fn for_lab(lab: &Lab) -> Arc<Admin> {
        let targets = lab.targets();
        let mut nodes: Vec<AdminNode> = lab
            .states
            .iter()
            .map(|(&id, state)| AdminNode {
                id,
                state: state.clone(),
                stats: lab.stats[&id].clone(),
                volumes: lab.volumes[&id].clone(),
                service: lab.services[&id].clone(),
                target: targets
                    .iter()
                    .find(|(n, _)| *n == Some(id))
                    .map(|(_, t)| t.clone()),
            })
            .collect();
        nodes.sort_by_key(|n| n.id);
        Arc::new(Admin {
            nodes,
            group: targets
                .iter()
                .find(|(n, _)| n.is_none())
                .map(|(_, t)| t.clone()),
            portals: lab.portals.clone(),
            coord: lab.coord.clone(),
            page_size: lab.config.page_size,
            replicas: lab
                .config
                .replicas
                .min(lab.config.nodes.saturating_sub(1) as u8),
            changes: tokio::sync::Mutex::new(()),
        })
    }

    fn first(&self) -> &AdminNode {
        &self.nodes[0]
    }

    /// The latest table (read from the coordinator, so a change just made is seen).
    async fn table(&self) -> ApiResult<Arc<RoutingTable>> {
        Ok(self.first().state.refresh().await?)
    }

    /// Waits until every node reports `done` for volume `id`; a node's failure to
    /// follow ends the wait with its message.
    async fn wait_nodes(
        &self,
        id: VolumeId,
        done: impl Fn(&VolumeStatus) -> bool,
    ) -> ApiResult<()> {
        let deadline = tokio::time::Instant::now() + FOLLOW_LIMIT;
        loop {
            let mut pending = Vec::new();
            for n in &self.nodes {
                let s = n.volumes.status(id);
                if done(&s) {
                    continue;
                }
                if let VolumeStatus::Failed(e) = s {
                    return Err(ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("node {}: {e}", n.id),
                    ));
                }
                pending.push(n.id);
            }
            if pending.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!(
                        "the table changed but nodes {pending:?} did not follow within {FOLLOW_LIMIT:?}"
                    ),
                ));
            }
            tokio::time::sleep(FOLLOW_POLL).await;
        }
    }

    /// A volume's description, with what node 1 knows of its backing.
    fn describe(&self, map: &VolumeMap) -> Value {
        let v = map.volume();
        let opened = self
            .first()
            .volumes
            .list()
            .into_iter()
            .find(|(id, _)| *id == v.id)
            .map(|(_, c)| c);
        json!({
            "id": v.id.0,
            "name": v.name,
            "iqn": opened.as_ref().map(|c| c.iqn.clone())
                .unwrap_or_else(|| format!("{}:{}", self.first().volumes.iqn_prefix(), v.name)),
            "size": v.size_bytes(),
            "blocks": v.blocks,
            "block_size": v.block_size,
            "page_size": v.page_size,
            "pages": map.page_count(),
            "replicas": v.replicas,
            "backing": opened.as_ref().map(|c| match c.backing {
                crate::config::Backing::File => "file",
                crate::config::Backing::Memory => "memory",
            }),
            "thin": opened.as_ref().map(|c| c.thin),
        })
    }
}

async fn list_volumes(State(a): State<Arc<Admin>>) -> ApiResult<Json<Value>> {
    let t = a.table().await?;
    let vols: Vec<Value> = t.volumes().values().map(|m| a.describe(m)).collect();
    Ok(Json(json!({ "epoch": t.epoch().0, "volumes": vols })))
}

async fn create_volume(
    State(a): State<Arc<Admin>>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let req: CreateRequest = parse_body(&body)?;
    let size = req.size.bytes("size")?;
    let block_size = req.block_size.unwrap_or(512);
    let page_size = match &req.page_size {
        Some(p) => p.bytes("page_size")?,
        None => a.page_size,
    };
    let options = VolumeOptions {
        backing: req.backing.unwrap_or(BackingKind::File),
        thin: req.thin.unwrap_or(true),
    };
    // The same rules as a configured volume (name, block size, size).
    let node = &a.first().volumes;
    volume_config(
        node.iqn_prefix(),
        node.data_dir(),
        &req.name,
        size,
        block_size,
        &options,
    )
    .map_err(|e| ApiError::bad(e.to_string().replace("volumes[0].", "")))?;
    let volume = Volume {
        id: VolumeId(0),
        name: req.name.clone(),
        blocks: size / u64::from(block_size),
        block_size,
        page_size,
        replicas: req.replicas.unwrap_or(a.replicas),
    };
    volume
        .validate()
        .map_err(|e| ApiError::bad(e.to_string()))?;
    let _one_change = a.changes.lock().await;
    if a.table().await?.volume_by_name(&req.name).is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("a volume named {:?} exists", req.name),
        ));
    }
    put_options(a.coord.as_ref(), &req.name, &options).await?;
    let result = a
        .first()
        .state
        .update(|t| {
            if t.volume_by_name(&volume.name).is_some() {
                return Err(StateError::Refused(format!(
                    "a volume named {:?} exists",
                    volume.name
                )));
            }
            let mut v = volume.clone();
            v.id = VolumeId(t.volumes().keys().map(|id| id.0).max().unwrap_or(0) + 1);
            Ok(plan_create_volume(t, v)?)
        })
        .await;
    let table = match result {
        Ok(t) => t,
        Err(e) => {
            let _ = delete_options(a.coord.as_ref(), &req.name).await;
            return Err(e.into());
        }
    };
    let map = table
        .volume_by_name(&req.name)
        .expect("the volume is in the table it was created in");
    let id = map.volume().id;
    info!(volume = %req.name, id = id.0, size, "volume created");
    a.wait_nodes(id, |s| *s == VolumeStatus::Open(size)).await?;
    Ok((StatusCode::CREATED, Json(a.describe(map))))
}

async fn resize_volume(
    State(a): State<Arc<Admin>>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let req: ResizeRequest = parse_body(&body)?;
    let size = req.size.bytes("size")?;
    let _one_change = a.changes.lock().await;
    let t = a.table().await?;
    let map = t
        .volume_by_name(&name)
        .ok_or_else(|| ApiError::unknown_volume(&name))?;
    let v = map.volume().clone();
    let bs = u64::from(v.block_size);
    if size == 0 || size % bs != 0 {
        return Err(ApiError::bad(format!(
            "size: {size} bytes is not a positive multiple of the block size {bs}"
        )));
    }
    if size != v.size_bytes() {
        a.first()
            .state
            .update(|t| {
                let id = t
                    .volume_by_name(&name)
                    .map(|m| m.volume().id)
                    .ok_or_else(|| StateError::Refused(format!("volume {name:?} is gone")))?;
                Ok(plan_resize_volume(t, id, size / bs)?)
            })
            .await?;
        info!(volume = %name, size, "volume resized");
    }
    a.wait_nodes(v.id, |s| *s == VolumeStatus::Open(size))
        .await?;
    let t = a.table().await?;
    let map = t
        .volume(v.id)
        .ok_or_else(|| ApiError::unknown_volume(&name))?;
    Ok(Json(a.describe(map)))
}

/// Moves the primary of each page of the range to node `to`, one page at a time,
/// each at its current primary (see `NodeService::move_page`); answers once every
/// node has followed the last change, with the routing view.
async fn move_pages(
    State(a): State<Arc<Admin>>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let req: MoveRequest = parse_body(&body)?;
    let _one_change = a.changes.lock().await;
    let t = a.table().await?;
    let map = t
        .volume_by_name(&name)
        .ok_or_else(|| ApiError::unknown_volume(&name))?;
    let id = map.volume().id;
    let to = NodeId(req.to);
    match t.node(to) {
        None => return Err(ApiError::bad(format!("to: no node {}", req.to))),
        Some(n) if n.state != mosaic_routing::NodeState::Active => {
            return Err(ApiError::bad(format!("to: node {} is not active", req.to)))
        }
        Some(_) => {}
    }
    let range = page_range(&req.pages, map.page_count())?;
    let (mut moved, mut copied) = (0u64, 0u64);
    for page in range {
        let t = a.table().await?;
        let map = t
            .volume(id)
            .ok_or_else(|| ApiError::unknown_volume(&name))?;
        let Some(primary) = map.primary(page) else {
            continue;
        };
        if primary == to {
            continue;
        }
        let node =
            a.nodes.iter().find(|n| n.id == primary.0).ok_or_else(|| {
                ApiError::bad(format!("page {page}: primary {primary} is not here"))
            })?;
        if t.page_move_copies(id, page, to) {
            copied += 1;
        }
        node.service
            .move_page(id.0, page, to)
            .await
            .map_err(|e| match e {
                ClusterIoError::State(s) => ApiError::from(s),
                other => ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("page {page}: {other}"),
                ),
            })?;
        moved += 1;
    }
    // Answer once every node routes by the new table.
    let epoch = a.table().await?.epoch();
    let deadline = tokio::time::Instant::now() + FOLLOW_LIMIT;
    while a.nodes.iter().any(|n| n.state.table().epoch() < epoch) {
        if tokio::time::Instant::now() >= deadline {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "pages moved but not every node reached epoch {} in time",
                    epoch.0
                ),
            ));
        }
        tokio::time::sleep(FOLLOW_POLL).await;
    }
    info!(volume = %name, moved, copied, to = req.to, "pages moved");
    let Json(mut view) = routing(State(a.clone()), Path(name)).await?;
    view["moved"] = json!(moved);
    view["copied"] = json!(copied);
    Ok(Json(view))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IoModeRequest {
    mode: String,
}

async fn io_mode(State(a): State<Arc<Admin>>) -> Json<Value> {
    Json(json!({ "mode": a.first().service.io_mode().to_string() }))
}

/// Switches every node between forward and short-cut; commands already running
/// finish in the mode they started in.
async fn set_io_mode(State(a): State<Arc<Admin>>, body: Bytes) -> ApiResult<Json<Value>> {
    let req: IoModeRequest = parse_body(&body)?;
    let mode: IoMode = req
        .mode
        .parse()
        .map_err(|m| ApiError::bad(format!("mode: {m}")))?;
    for n in &a.nodes {
        n.service.set_io_mode(mode);
    }
    info!(%mode, "I/O mode switched");
    Ok(Json(json!({ "mode": mode.to_string() })))
}

async fn delete_volume(
    State(a): State<Arc<Admin>>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let _one_change = a.changes.lock().await;
    let t = a.table().await?;
    let id = t
        .volume_by_name(&name)
        .map(|m| m.volume().id)
        .ok_or_else(|| ApiError::unknown_volume(&name))?;
    a.first().state.update(|t| Ok(t.delete_volume(id)?)).await?;
    delete_options(a.coord.as_ref(), &name).await?;
    // A later volume of the same name starts without reservations.
    super::pr::forget(a.coord.as_ref(), &name).await?;
    // ... and with the power-on mode parameters.
    super::mode::forget(a.coord.as_ref(), &name).await?;
    super::resets::forget(a.coord.as_ref(), id).await?;
    info!(volume = %name, "volume deleted");
    a.wait_nodes(id, |s| *s == VolumeStatus::Absent).await?;
    Ok(Json(json!({ "deleted": name, "id": id.0 })))
}

/// Runs of consecutive pages with the same primary and replicas.
fn runs(map: &VolumeMap) -> Vec<(u64, u64, u32, Vec<u32>)> {
    let mut out: Vec<(u64, u64, u32, Vec<u32>)> = Vec::new();
    for page in 0..map.page_count() {
        let primary = map.primary(page).map(|n| n.0).unwrap_or(0);
        let replicas: Vec<u32> = map.replicas(page).iter().map(|r| r.node.0).collect();
        match out.last_mut() {
            Some((_, last, p, r)) if *p == primary && *r == replicas && *last + 1 == page => {
                *last = page;
            }
            _ => out.push((page, page, primary, replicas)),
        }
    }
    out
}

/// The compact map: `FIRST[-LAST]:PRIMARY[+REPLICA...]` per run, space separated.
pub fn compact_map(map: &VolumeMap) -> String {
    runs(map)
        .iter()
        .map(|(first, last, p, r)| {
            let mut s = if first == last {
                format!("{first}:{p}")
            } else {
                format!("{first}-{last}:{p}")
            };
            for n in r {
                let _ = write!(s, "+{n}");
            }
            s
        })
        .collect::<Vec<_>>()
        .join(" ")
}

async fn routing(State(a): State<Arc<Admin>>, Path(name): Path<String>) -> ApiResult<Json<Value>> {
    let t = a.table().await?;
    let map = t
        .volume_by_name(&name)
        .ok_or_else(|| ApiError::unknown_volume(&name))?;
    let mut per_node: BTreeMap<u32, (u64, u64)> = t.nodes().keys().map(|n| (n.0, (0, 0))).collect();
    for page in 0..map.page_count() {
        if let Some(p) = map.primary(page) {
            per_node.entry(p.0).or_default().0 += 1;
        }
        for r in map.replicas(page) {
            per_node.entry(r.node.0).or_default().1 += 1;
        }
    }
    let nodes: Vec<Value> = per_node
        .iter()
        .map(|(n, (p, r))| json!({ "node": n, "primary_pages": p, "replica_pages": r }))
        .collect();
    let runs: Vec<Value> = runs(map)
        .into_iter()
        .map(|(first, last, p, r)| json!({ "first": first, "last": last, "primary": p, "replicas": r }))
        .collect();
    let v = map.volume();
    Ok(Json(json!({
        "volume": v.name,
        "id": v.id.0,
        "epoch": t.epoch().0,
        "size": v.size_bytes(),
        "page_size": v.page_size,
        "pages": map.page_count(),
        "replicas": v.replicas,
        "nodes": nodes,
        "map": compact_map(map),
        "runs": runs,
    })))
}

fn io_json(s: &IoStats) -> Value {
    let g = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    json!({
        "reads": g(&s.reads),
        "writes": g(&s.writes),
        "read_bytes": g(&s.read_bytes),
        "written_bytes": g(&s.written_bytes),
        "local": g(&s.local),
        "forwarded": g(&s.forwarded),
        "rerouted": g(&s.rerouted),
        "shortcut": g(&s.shortcut),
        "shortcut_served": g(&s.shortcut_served),
        "served": g(&s.served),
    })
}

/// Per class of command: how many, and the estimated median and 99th percentile
/// in microseconds (`null` before the first command).
fn latency_json(l: &CommandLatency) -> Value {
    let classes: serde_json::Map<String, Value> = CommandClass::ALL
        .iter()
        .map(|&c| {
            let s = l.histogram(c).snapshot();
            let us = |q: f64| s.quantile(q).map(|d| d.as_secs_f64() * 1e6);
            (
                c.label().to_string(),
                json!({ "count": s.count(), "p50_us": us(0.5), "p99_us": us(0.99) }),
            )
        })
        .collect();
    Value::Object(classes)
}

async fn status(State(a): State<Arc<Admin>>) -> ApiResult<Json<Value>> {
    let t = a.table().await?;
    let conns = a.portals.connections();
    let nodes: Vec<Value> = a
        .nodes
        .iter()
        .map(|n| {
            let state = t
                .node(mosaic_routing::NodeId(n.id))
                .map(|x| format!("{:?}", x.state).to_lowercase())
                .unwrap_or_else(|| "unknown".into());
            let portals: Vec<Value> = conns
                .iter()
                .filter(|(_, node, _)| *node == n.id)
                .map(|(addr, _, c)| json!({ "addr": addr.to_string(), "connections": c }))
                .collect();
            json!({
                "node": n.id,
                "state": state,
                "epoch": n.state.table().epoch().0,
                "sessions": n.target.as_ref().map(|t| t.registry.len()).unwrap_or(0),
                "portals": portals,
                "volumes": n.volumes.list().len(),
                "io": io_json(&n.stats),
                "latency": n.target.as_ref().map(|t| latency_json(&t.latency)),
            })
        })
        .collect();
    let group = a.group.as_ref().map(|g| {
        json!({
            "addr": g.bound.first().map(|a| a.to_string()),
            "sessions": g.registry.len(),
        })
    });
    let groups: Vec<Value> = a
        .portals
        .groups()
        .into_iter()
        .map(|(g, addrs)| {
            json!({
                "group": g,
                "portals": addrs.iter().map(|x| x.to_string()).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(Json(json!({
        "epoch": t.epoch().0,
        "io_mode": a.first().service.io_mode().to_string(),
        "mpio_groups": groups,
        "volumes": t.volumes().len(),
        "nodes": nodes,
        "group_portal": group,
    })))
}

/// Writes one metric family in Prometheus text format.
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, v) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {v}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    }
}

/// A label value with `\`, `"` and newlines escaped (Prometheus text format).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The metrics as Prometheus text.
pub fn render_metrics(a: &Admin) -> String {
    let mut out = String::new();
    let table = a.first().state.table();
    let per_node = |f: &dyn Fn(&AdminNode) -> u64| -> Vec<(String, u64)> {
        a.nodes
            .iter()
            .map(|n| (format!("node=\"{}\"", n.id), f(n)))
            .collect()
    };
    let c = |f: fn(&IoStats) -> &std::sync::atomic::AtomicU64| {
        per_node(&|n: &AdminNode| f(&n.stats).load(Ordering::Relaxed))
    };
    family(
        &mut out,
        "mosaic_routing_epoch",
        "gauge",
        "Epoch of the routing table.",
        &[(String::new(), table.epoch().0)],
    );
    family(
        &mut out,
        "mosaic_volumes",
        "gauge",
        "Volumes in the routing table.",
        &[(String::new(), table.volumes().len() as u64)],
    );
    family(
        &mut out,
        "mosaic_node_read_commands_total",
        "counter",
        "Reads of a volume through the node.",
        &c(|s| &s.reads),
    );
    family(
        &mut out,
        "mosaic_node_write_commands_total",
        "counter",
        "Writes of a volume through the node.",
        &c(|s| &s.writes),
    );
    family(
        &mut out,
        "mosaic_node_read_bytes_total",
        "counter",
        "Bytes read through the node.",
        &c(|s| &s.read_bytes),
    );
    family(
        &mut out,
        "mosaic_node_written_bytes_total",
        "counter",
        "Bytes written through the node.",
        &c(|s| &s.written_bytes),
    );
    family(
        &mut out,
        "mosaic_node_local_pieces_total",
        "counter",
        "Page pieces served from the node's own store.",
        &c(|s| &s.local),
    );
    family(
        &mut out,
        "mosaic_node_forwarded_pieces_total",
        "counter",
        "Page pieces sent to the peer that holds them.",
        &c(|s| &s.forwarded),
    );
    family(
        &mut out,
        "mosaic_node_rerouted_pieces_total",
        "counter",
        "Page pieces routed again after a peer reported another epoch.",
        &c(|s| &s.rerouted),
    );
    family(
        &mut out,
        "mosaic_node_shortcut_reads_total",
        "counter",
        "Reads whose final PDUs the page's owner built (short-cut mode).",
        &c(|s| &s.shortcut),
    );
    family(
        &mut out,
        "mosaic_node_shortcut_served_total",
        "counter",
        "Short-cut reads the node built for a peer's connection.",
        &c(|s| &s.shortcut_served),
    );
    family(
        &mut out,
        "mosaic_node_served_requests_total",
        "counter",
        "Link requests served for peers.",
        &c(|s| &s.served),
    );
    family(
        &mut out,
        "mosaic_node_sessions",
        "gauge",
        "iSCSI sessions logged in at the node.",
        &per_node(&|n: &AdminNode| {
            n.target
                .as_ref()
                .map(|t| t.registry.len() as u64)
                .unwrap_or(0)
        }),
    );
    let conns: Vec<(String, u64)> = a
        .portals
        .connections()
        .into_iter()
        .map(|(addr, node, n)| {
            (
                format!("node=\"{node}\",portal=\"{}\"", label(&addr.to_string())),
                n as u64,
            )
        })
        .collect();
    family(
        &mut out,
        "mosaic_portal_connections",
        "gauge",
        "Connections open on each NIC portal.",
        &conns,
    );
    let mut pages = Vec::new();
    for map in table.volumes().values() {
        let mut count: BTreeMap<u32, u64> = table.nodes().keys().map(|n| (n.0, 0)).collect();
        for p in map.primaries() {
            *count.entry(p.0).or_default() += 1;
        }
        for (node, n) in count {
            pages.push((
                format!("volume=\"{}\",node=\"{node}\"", label(&map.volume().name)),
                n,
            ));
        }
    }
    family(
        &mut out,
        "mosaic_volume_primary_pages",
        "gauge",
        "Pages of each volume whose primary is the node.",
        &pages,
    );
    let name = "mosaic_node_scsi_command_latency_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} SCSI commands answered by the node, from the command with its \
         data until the response is queued, by op (read, write, other)."
    );
    let _ = writeln!(out, "# TYPE {name} histogram");
    for n in &a.nodes {
        let Some(t) = &n.target else { continue };
        for c in CommandClass::ALL {
            let labels = format!("node=\"{}\",op=\"{}\"", n.id, c.label());
            t.latency
                .histogram(c)
                .snapshot()
                .write_prometheus(&mut out, name, &labels);
        }
    }
    out
}

async fn metrics(State(a): State<Arc<Admin>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render_metrics(&a),
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no such path (see GET /volumes, /status, /metrics)",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this path",
    )
}

/// The endpoint's routes.
pub fn router(admin: Arc<Admin>) -> Router {
    Router::new()
        .route("/volumes", get(list_volumes).post(create_volume))
        .route("/volumes/{name}", delete(delete_volume))
        .route("/volumes/{name}/resize", post(resize_volume))
        .route("/routing/{name}", get(routing))
        .route("/routing/{name}/move", post(move_pages))
        .route("/io-mode", get(io_mode).post(set_io_mode))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(admin)
}

/// Serves the endpoint on `listener` until `shutdown` turns `true`.
pub async fn serve(
    admin: Arc<Admin>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    info!("admin endpoint on http://{}", listener.local_addr()?);
    axum::serve(listener, router(admin))
        .with_graceful_shutdown(async move {
            while !*shutdown.borrow_and_update() {
                if shutdown.changed().await.is_err() {
                    return;
                }
            }
        })
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_ranges_are_checked_against_the_volume() {
        assert_eq!(page_range("3", 16).unwrap(), 3..=3);
        assert_eq!(page_range(" 0 - 15 ", 16).unwrap(), 0..=15);
        for bad in ["16", "5-4", "0-16", "x", "1-", "-1", ""] {
            let e = page_range(bad, 16).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad:?}");
            assert!(e.message.starts_with("pages:"), "{bad:?}: {}", e.message);
        }
    }

    #[test]
    fn io_modes_parse_and_print_back() {
        for m in [IoMode::Forward, IoMode::ShortCut] {
            assert_eq!(m.to_string().parse::<IoMode>(), Ok(m));
        }
        assert!("sideways".parse::<IoMode>().is_err());
    }
    use mosaic_routing::{Node, NodeId};

    fn table() -> RoutingTable {
        let t = RoutingTable::new((1..=3).map(|i| Node::new(NodeId(i), 1 << 40))).unwrap();
        let mut v = Volume::new(VolumeId(1), "v", 256 << 20);
        v.page_size = 16 << 20;
        plan_create_volume(&t, v).unwrap()
    }

    #[test]
    fn the_compact_map_covers_every_page_once() {
        let t = table();
        let map = t.volume_by_name("v").unwrap();
        let text = compact_map(map);
        let mut covered = 0;
        for run in text.split(' ') {
            let (pages, owners) = run.split_once(':').unwrap();
            let (first, last) = match pages.split_once('-') {
                Some((a, b)) => (a.parse::<u64>().unwrap(), b.parse::<u64>().unwrap()),
                None => (pages.parse().unwrap(), pages.parse().unwrap()),
            };
            assert_eq!(first, covered, "runs are in order without gaps: {text}");
            let primary: u32 = owners.split('+').next().unwrap().parse().unwrap();
            for p in first..=last {
                assert_eq!(map.primary(p), Some(NodeId(primary)), "page {p} in {text}");
            }
            covered = last + 1;
        }
        assert_eq!(covered, map.page_count());
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
