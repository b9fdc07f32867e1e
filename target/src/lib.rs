//! The Mosaic target node.
//!
//! - [`config`]: the TOML config and CLI flags, validated with errors that name the field.
//! - [`server`]: portal listeners, accepting connections, shutdown.
//! - [`conn`]: one connection: the reader state machine and the writer task.
//! - [`login`]: the target side of login (pure logic over the proto negotiator).
//! - [`session`]: sessions, TSIH assignment, reinstatement, the CmdSN window.
//! - [`scsi`]: the SCSI block device (logical unit) that executes CDBs.
//! - [`store`]: backing stores (sparse file, memory).

pub mod scsi;
pub mod store;
