//! Mosaic's partitioned routing table: pure logic, no I/O, no clock.
//!
//! Every volume is cut into fixed-size pages (a power of two, 16 MiB by default);
//! every page has a primary node that serves it and ordered replicas that see its
//! writes. The [`RoutingTable`] holds all of it with a monotonically increasing
//! [`Epoch`]; every change of ownership is a new table made by a plan.
//!
//! - [`model`]: nodes (NICs, portals, capacity, failure domain, state), volumes,
//!   page maps, the table.
//! - [`route`]: LBA -> owner in constant time, extent split into per-page pieces.
//! - [`placement`]: a new volume's pages spread over the nodes by free capacity.
//! - [`plan`]: node failure (takeover by load), node added, drained and removed
//!   (minimal rebalancing), hot-page balancing; each returns moves and the next
//!   table.
//! - [`nic`]: spreading an initiator's MPIO group over distinct NICs and nodes, and
//!   re-planning after a loss.
//! - [`wire`]: the table in the compact, checksummed format that initiators fetch
//!   over SCSI (docs/wire-formats.md).
//! - [`dmswitch`]: the table as a Linux device-mapper switch table and its
//!   `set_region_mappings` messages (docs/dm-switch.md).

pub mod dmswitch;
pub mod error;
pub mod model;
pub mod nic;
pub mod placement;
pub mod plan;
pub mod route;
pub mod wire;

pub use error::RoutingError;
pub use model::{
    Epoch, Nic, NicId, Node, NodeId, NodeState, Replica, RoutingTable, Volume, VolumeId, VolumeMap,
    DEFAULT_PAGE_SIZE,
};
pub use nic::{NicError, NicPlanner, NicSlot, Reassignment};
pub use placement::{plan_create_volume, plan_resize_volume};
pub use plan::{
    plan_hot_pages, plan_node_added, plan_node_drain, plan_node_failure, plan_node_removed,
    plan_rebalance, Action, Loads, Move, NodeLoad, PageLoad, PageRef, Plan,
};
pub use route::{Piece, Split};
