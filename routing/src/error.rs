//! The error of the routing layer: one enum for the table, routing and the plans.
//! The wire format, the dm-switch export and the NIC planner have their own enums
//! next to their code.

use crate::model::{NodeId, VolumeId};

/// Why a routing-table operation or plan was refused. None of these leave a table
/// half changed: every operation works on a copy and returns it only on success.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoutingError {
    /// The table has no volume with this id.
    #[error("unknown volume {0}")]
    UnknownVolume(VolumeId),
    /// The table has no node with this id.
    #[error("unknown node {0}")]
    UnknownNode(NodeId),
    /// A node with this id is already in the table.
    #[error("node {0} already exists")]
    DuplicateNode(NodeId),
    /// A volume with this id (or name) is already in the table.
    #[error("volume {0} already exists")]
    DuplicateVolume(VolumeId),
    /// The node id is reserved (`NodeId::NONE` marks an empty replica slot).
    #[error("node id {0} is reserved")]
    ReservedNodeId(NodeId),
    /// An extent reaches past the end of the volume (or has zero length).
    #[error("extent lba {lba} + {blocks} blocks is outside the volume of {volume_blocks} blocks")]
    OutOfRange {
        /// First block of the extent.
        lba: u64,
        /// Length of the extent in blocks.
        blocks: u64,
        /// Size of the volume in blocks.
        volume_blocks: u64,
    },
    /// The volume's geometry is not usable (sizes not powers of two, too many
    /// replicas, zero size...). The text says which rule was broken.
    #[error("invalid volume: {0}")]
    InvalidVolume(&'static str),
    /// Not enough active nodes to hold the requested number of copies of a page.
    #[error("{needed} distinct active nodes needed, {available} available")]
    NotEnoughNodes {
        /// Copies per page (primary plus replicas).
        needed: usize,
        /// Active nodes in the table.
        available: usize,
    },
    /// The active nodes do not have room for the copies of the volume.
    #[error("not enough free capacity: {needed} bytes needed, {free} free")]
    InsufficientCapacity {
        /// Bytes of all copies to place.
        needed: u128,
        /// Free bytes over the active nodes.
        free: u128,
    },
    /// The operation needs an active node and this one is draining or failed.
    #[error("node {0} is not active")]
    NodeNotActive(NodeId),
    /// The operation needs a node that is still alive and this one failed.
    #[error("node {0} has failed")]
    NodeFailed(NodeId),
    /// A page move was asked that cannot be made: the text says why.
    #[error("page move refused: {0}")]
    MoveRefused(&'static str),
    /// The table itself is inconsistent (after deserialisation): the text says how.
    #[error("inconsistent table: {0}")]
    Inconsistent(String),
}
