//! Mosaic's Rust iSCSI initiator, its multipath disk (DSM) with path selectors, a
//! workload generator and benchmark, and a discrete-event simulator of path
//! selection on large clusters.
//!
//! - [`login`], [`conn`], [`session`], [`discovery`]: the async initiator (tokio),
//!   built on `mosaic_proto`; nothing is shared with the target's state machines.
//! - [`scsi`]: the CDBs we send and the pages we parse.

pub mod admin;
pub mod bench;
pub mod conn;
pub mod discovery;
pub mod error;
pub mod login;
pub mod mpio;
pub mod scsi;
pub mod selector;
pub mod session;
pub mod sim;
pub mod workload;

pub use error::{Error, Result};
