//! The Mosaic target node.

pub mod config;
pub mod scsi;
pub mod session;
pub mod store;
