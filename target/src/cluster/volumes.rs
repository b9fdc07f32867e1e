//! One node's volumes, following the routing table.
//!
//! Every node exports every volume of the table. At start the lab opens the
//! configured volumes through [`NodeVolumes::open`]; from then on a task per node
//! ([`NodeVolumes::follow`]) watches the node's [`ClusterState`] and makes the
//! node's exports match each new table:
//!
//! - a new volume: its local store is opened (memory, or a sparse file
//!   `<data_dir>/node<i>/<name>.img`, created empty), registered with the node's
//!   [`NodeService`] (so peers reach its pages) and exported under its IQN;
//! - a volume whose size changed: the local store is re-opened at the new size
//!   (the same data: a file is grown or truncated, memory shares its chunks) and
//!   the export rebuilt. Sessions already logged in keep the device they logged in
//!   to, and with it the old capacity, until they log in again: that device raises
//!   CAPACITY DATA HAS CHANGED (SBC-3 §4.6) on every I_T nexus so initiators know
//!   to re-read the capacity and reconnect;
//! - a volume gone: it is no longer served to peers nor listed, and its files are
//!   removed. Sessions still logged in to it fail their I/O.
//!
//! What the table does not say about a volume (file or memory, thin or thick) is
//! kept beside it in the coordinator under [`OPTIONS_PREFIX`], written before the
//! volume enters the table, so every node opens it the same way.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use mosaic_coord::{CoordError, Coordinator, KeyRange};
use mosaic_routing::{NodeId, RoutingTable, VolumeId};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::link::Peers;
use super::state::ClusterState;
use super::store::{ClusterStore, IoStats, LocalVolume, NodeService};
use crate::config::{Backing, Config, ConfigError, Settings, SizeValue, VolumeConfig};
use crate::server::{build_export, Export, Exports, NodeIdentity};
use crate::store::BackingStore;

/// Coordinator prefix of each volume's options; the volume name follows.
pub const OPTIONS_PREFIX: &str = "/mosaic/volume-options/";

/// Where a volume's pages live on each node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackingKind {
    /// A sparse file under the node's data directory.
    File,
    /// Memory only.
    Memory,
}

impl From<BackingKind> for Backing {
    fn from(b: BackingKind) -> Backing {
        match b {
            BackingKind::File => Backing::File,
            BackingKind::Memory => Backing::Memory,
        }
    }
}

impl From<Backing> for BackingKind {
    fn from(b: Backing) -> BackingKind {
        match b {
            Backing::File => BackingKind::File,
            Backing::Memory => BackingKind::Memory,
        }
    }
}

/// What the routing table does not carry about a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeOptions {
    pub backing: BackingKind,
    /// Thin provisioned (UNMAP frees space) or fully provisioned.
    pub thin: bool,
}

impl Default for VolumeOptions {
    fn default() -> Self {
        VolumeOptions {
            backing: BackingKind::File,
            thin: true,
        }
    }
}

fn options_key(name: &str) -> String {
    format!("{OPTIONS_PREFIX}{name}")
}

/// Records `name`'s options (before the volume enters the table).
pub async fn put_options(
    coord: &dyn Coordinator,
    name: &str,
    options: &VolumeOptions,
) -> Result<(), CoordError> {
    let value = serde_json::to_vec(options).expect("options always serialise");
    coord
        .put(Bytes::from(options_key(name)), Bytes::from(value), None)
        .await?;
    Ok(())
}

/// `name`'s options; the defaults when none were recorded (or they are unreadable).
pub async fn get_options(coord: &dyn Coordinator, name: &str) -> Result<VolumeOptions, CoordError> {
    let got = coord.get(KeyRange::key(options_key(name))).await?;
    Ok(got
        .kvs
        .first()
        .and_then(|kv| serde_json::from_slice(&kv.value).ok())
        .unwrap_or_default())
}

/// Forgets `name`'s options (after the volume left the table).
pub async fn delete_options(coord: &dyn Coordinator, name: &str) -> Result<(), CoordError> {
    coord.delete(KeyRange::key(options_key(name))).await?;
    Ok(())
}

/// The IQN prefix of a lab's volumes: taken from a configured volume (settings keep
/// each volume's IQN, not the prefix), the default otherwise.
pub fn iqn_prefix(settings: &Settings) -> String {
    settings
        .volumes
        .iter()
        .find_map(|v| {
            v.iqn
                .strip_suffix(&v.name)
                .and_then(|p| p.strip_suffix(':'))
                .map(str::to_string)
        })
        .unwrap_or_else(|| crate::config::DEFAULT_IQN_PREFIX.to_string())
}

/// A volume of the table as a node exports it, validated by the same rules as a
/// configured volume (name, block size, size a multiple of the block size).
pub fn volume_config(
    iqn_prefix: &str,
    data_dir: &Path,
    name: &str,
    size: u64,
    block_size: u32,
    options: &VolumeOptions,
) -> Result<crate::config::Volume, ConfigError> {
    let config = Config {
        data_dir: data_dir.to_path_buf(),
        iqn_prefix: iqn_prefix.to_string(),
        volumes: vec![VolumeConfig {
            name: name.to_string(),
            size: SizeValue::Bytes(size),
            block_size,
            backing: options.backing.into(),
            path: None,
            chap: None,
            initiators: Vec::new(),
            thin: options.thin,
            read_only: false,
        }],
        ..Config::default()
    };
    let mut settings = config.validate()?;
    Ok(settings.volumes.remove(0))
}

/// Where one volume stands on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeStatus {
    /// Exported, at this size in bytes.
    Open(u64),
    /// The last attempt to open or resize it failed.
    Failed(String),
    /// Not open here.
    Absent,
}

/// Everything of a node that its volumes are built from.
#[derive(Debug)]
pub struct NodeParts {
    pub node: NodeId,
    /// The node's settings: its data directory is `<data_dir>/node<i>`.
    pub settings: Settings,
    pub identity: NodeIdentity,
    pub coord: Arc<dyn Coordinator>,
    pub state: Arc<ClusterState>,
    pub service: Arc<NodeService>,
    pub peers: Arc<Peers>,
    pub stats: Arc<IoStats>,
}

/// One volume open on this node.
#[derive(Debug, Clone)]
struct Opened {
    config: crate::config::Volume,
    local: Arc<LocalVolume>,
}

/// The volumes one node has open, kept in step with the routing table.
#[derive(Debug)]
pub struct NodeVolumes {
    parts: NodeParts,
    iqn_prefix: String,
    open: Mutex<HashMap<VolumeId, Opened>>,
    /// Why a volume could not be opened or resized here (until it can).
    failed: Mutex<HashMap<VolumeId, String>>,
}

impl NodeVolumes {
    pub fn new(parts: NodeParts) -> NodeVolumes {
        NodeVolumes {
            iqn_prefix: iqn_prefix(&parts.settings),
            parts,
            open: Mutex::new(HashMap::new()),
            failed: Mutex::new(HashMap::new()),
        }
    }

    /// This node's id.
    pub fn node(&self) -> NodeId {
        self.parts.node
    }

    /// The IQN prefix volumes are exported under.
    pub fn iqn_prefix(&self) -> &str {
        &self.iqn_prefix
    }

    /// The node's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.parts.settings.data_dir
    }

    fn image_path(&self, name: &str) -> PathBuf {
        self.data_dir().join(format!("{name}.img"))
    }

    fn reservations_path(&self, name: &str) -> PathBuf {
        self.data_dir().join(format!("{name}.pr.toml"))
    }

    /// The volumes open here, by id.
    pub fn list(&self) -> Vec<(VolumeId, crate::config::Volume)> {
        let mut v: Vec<_> = self
            .open
            .lock()
            .iter()
            .map(|(id, o)| (*id, o.config.clone()))
            .collect();
        v.sort_by_key(|(id, _)| *id);
        v
    }

    /// Where volume `id` stands here.
    pub fn status(&self, id: VolumeId) -> VolumeStatus {
        if let Some(o) = self.open.lock().get(&id) {
            return VolumeStatus::Open(o.config.size);
        }
        match self.failed.lock().get(&id) {
            Some(e) => VolumeStatus::Failed(e.clone()),
            None => VolumeStatus::Absent,
        }
    }

    /// Opens volume `id` as configured by `v` and returns its export (which the
    /// caller adds to the node's exports). `fresh`: a volume just created, whose
    /// file from an earlier volume of the same name (if any) is discarded.
    pub fn open(&self, v: &crate::config::Volume, id: VolumeId, fresh: bool) -> Result<Export> {
        let node = self.parts.node.0;
        let store = match v.backing {
            Backing::File => {
                let dir = self.data_dir();
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating data directory {}", dir.display()))?;
                let path = self.image_path(&v.name);
                if fresh {
                    remove_if_present(&path)?;
                    remove_if_present(&self.reservations_path(&v.name))?;
                }
                BackingStore::open_file(&path, v.size)
                    .with_context(|| format!("node {node}: opening {}", path.display()))?
            }
            Backing::Memory => BackingStore::memory(v.size),
        };
        let local = Arc::new(LocalVolume::new(id, store));
        let export = self.export(v, id, local.clone())?;
        self.open.lock().insert(
            id,
            Opened {
                config: v.clone(),
                local,
            },
        );
        self.failed.lock().remove(&id);
        Ok(export)
    }

    /// Serves `local` to peers and builds the export of `v` over the cluster store.
    fn export(
        &self,
        v: &crate::config::Volume,
        id: VolumeId,
        local: Arc<LocalVolume>,
    ) -> Result<Export> {
        let p = &self.parts;
        p.service.add_volume(local.clone());
        let store = BackingStore::Cluster(Arc::new(ClusterStore::new(
            id,
            v.size,
            local,
            p.service.clone(),
            p.peers.clone(),
        )));
        let export = build_export(&p.settings, v, store, p.identity)
            .with_context(|| format!("node {}: volume {}", p.node.0, v.name))?;
        // RTPG and READ ROUTING TABLE answer from the cluster's table; routing
        // changes raise ASYMMETRIC ACCESS STATE CHANGED on the device's nexuses.
        super::view::attach(&export.device, p.state.clone(), id, p.node);
        // Reservations are the cluster's: every node follows the volume's key.
        super::pr::attach(&export.device, p.coord.clone(), &v.name);
        // So are the mode parameters MODE SELECT changes (WCE, SWP).
        super::mode::attach(&export.device, p.coord.clone(), &v.name);
        Ok(export)
    }

    /// Re-opens volume `id` at `size` bytes and replaces its export; the old
    /// device raises CAPACITY DATA HAS CHANGED for the sessions still on it.
    fn resize(&self, id: VolumeId, size: u64, exports: &Exports) -> Result<()> {
        let Some(mut o) = self.open.lock().get(&id).cloned() else {
            anyhow::bail!("volume {} is not open", id.0);
        };
        let store = o
            .local
            .store
            .resized(size)
            .with_context(|| format!("resizing {} to {size} bytes", o.config.name))?;
        let local = Arc::new(LocalVolume::new(id, store));
        o.config.size = size;
        let export = self.export(&o.config, id, local.clone())?;
        let old = exports.get(&o.config.iqn);
        exports.insert(export);
        if let Some(old) = old {
            old.device
                .raise_all(crate::ua::asc::CAPACITY_DATA_HAS_CHANGED);
        }
        info!(
            node = self.parts.node.0,
            volume = %o.config.name,
            size,
            "volume resized"
        );
        self.open.lock().insert(
            id,
            Opened {
                config: o.config,
                local,
            },
        );
        self.failed.lock().remove(&id);
        Ok(())
    }

    /// Stops serving and exporting volume `id` and removes its files.
    fn remove(&self, id: VolumeId, exports: &Exports) {
        self.failed.lock().remove(&id);
        let Some(o) = self.open.lock().remove(&id) else {
            return;
        };
        self.parts.service.remove_volume(id);
        exports.remove(&o.config.iqn);
        if o.config.backing == Backing::File {
            if let Err(e) = remove_if_present(&self.image_path(&o.config.name)) {
                warn!("{e:#}");
            }
        }
        if let Err(e) = remove_if_present(&self.reservations_path(&o.config.name)) {
            warn!("{e:#}");
        }
        info!(node = self.parts.node.0, volume = %o.config.name, "volume deleted");
    }

    /// Makes this node's volumes and `exports` match `table`.
    pub async fn reconcile(&self, table: &RoutingTable, exports: &Exports) {
        let node = self.parts.node.0;
        let gone: Vec<VolumeId> = self
            .open
            .lock()
            .keys()
            .filter(|id| table.volume(**id).is_none())
            .copied()
            .collect();
        for id in gone {
            self.remove(id, exports);
        }
        for (id, map) in table.volumes() {
            let v = map.volume();
            let size = v.size_bytes();
            let open_size = self.open.lock().get(id).map(|o| o.config.size);
            let result = match open_size {
                Some(s) if s == size => continue,
                Some(_) => self.resize(*id, size, exports),
                None => {
                    self.open_new(*id, &v.name, size, v.block_size, exports)
                        .await
                }
            };
            if let Err(e) = result {
                warn!(node, volume = %v.name, "following the routing table: {e:#}");
                self.failed.lock().insert(*id, format!("{e:#}"));
            }
        }
    }

    /// Opens a volume that appeared in the table and exports it.
    async fn open_new(
        &self,
        id: VolumeId,
        name: &str,
        size: u64,
        block_size: u32,
        exports: &Exports,
    ) -> Result<()> {
        let options = get_options(self.parts.coord.as_ref(), name)
            .await
            .context("reading the volume's options")?;
        let config = volume_config(
            &self.iqn_prefix,
            self.data_dir(),
            name,
            size,
            block_size,
            &options,
        )?;
        let export = self.open(&config, id, true)?;
        exports.insert(export);
        info!(node = self.parts.node.0, volume = %name, size, "volume created");
        Ok(())
    }

    /// Follows the node's routing table from now on, keeping `exports` in step.
    pub fn follow(self: &Arc<Self>, exports: Arc<Exports>) -> JoinHandle<()> {
        let me = self.clone();
        let mut rx = self.parts.state.subscribe();
        tokio::spawn(async move {
            loop {
                let table = rx.borrow_and_update().clone();
                me.reconcile(&table, &exports).await;
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
    }
}

fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_volume_of_the_table_is_validated_like_a_configured_one() {
        let dir = Path::new("/tmp/x");
        let opts = VolumeOptions::default();
        let v = volume_config("iqn.2026-11.io.mosaic", dir, "lv2", 1 << 20, 512, &opts).unwrap();
        assert_eq!(v.iqn, "iqn.2026-11.io.mosaic:lv2");
        assert_eq!(v.backing, Backing::File);
        assert!(volume_config("p", dir, "Bad Name", 1 << 20, 512, &opts).is_err());
        assert!(volume_config("p", dir, "ok", 1000, 512, &opts).is_err());
        assert!(volume_config("p", dir, "ok", 1 << 20, 1024, &opts).is_err());
    }
}
