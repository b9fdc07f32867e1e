//! SCSI command layer shared by target and initiator: no I/O.
//!
//! - [`opcode`]: named operation codes, service actions, VPD and mode page codes
//!   (SPC-4, SBC-3).
//! - [`status`]: SCSI status codes carried in the iSCSI SCSI Response (SAM-5 §5.3).
//! - [`cdb`]: decoding command descriptor blocks into a typed [`cdb::Cdb`], checking
//!   the fields a device server must reject; never panics on any input.
//! - [`sense`]: fixed-format sense data (SPC-4 §4.5.3) with named sense keys and
//!   additional sense codes.
//! - [`vendor`]: Mosaic's vendor-specific commands (READ ROUTING TABLE), both ends.

pub mod cdb;
pub mod opcode;
pub mod sense;
pub mod status;
pub mod vendor;

pub use cdb::{
    Cdb, CdbError, ModeSelectCdb, ModeSenseCdb, PreFetchCdb, ReportOpcodesCdb, RwCdb, StartStopCdb,
    VerifyCdb, WriteSameCdb,
};
pub use sense::{Asc, Sense};
