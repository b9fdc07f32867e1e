//! The Mosaic target node.
//!
//! - [`config`]: the TOML config and CLI flags, validated with errors that name the field.
//! - [`server`]: volumes, portal listeners, accepting connections, shutdown.
//! - [`conn`]: one connection: the reader state machine and the writer task.
//! - [`device`]: the nexus-aware layer over a logical unit (unit attentions,
//!   reservations, resets).
//! - [`latency`]: SCSI command latency histograms (log-spaced buckets, lock-free).
//! - [`pr`]: persistent reservations (pure logic: registrations, PRIN/PROUT data,
//!   TransportIDs, conflict rules).
//! - [`ua`]: unit attention queues per I_T nexus.
//! - [`xcopy`]: EXTENDED COPY and RECEIVE COPY RESULTS (parameter lists, limits,
//!   copy results, the registry of volumes a copy can reach).
//! - [`login`]: the target side of login (pure logic over the proto negotiator).
//! - [`session`]: the CmdSN window, TSIH assignment and session reinstatement.
//! - [`scsi`]: the SCSI block device (logical unit) that executes CDBs.
//! - [`store`]: backing stores (sparse file, memory).

pub mod cluster;
pub mod config;
pub mod conn;
pub mod device;
pub mod latency;
pub mod login;
pub mod pr;
pub mod scsi;
pub mod server;
pub mod session;
pub mod store;
pub mod ua;
pub mod xcopy;
