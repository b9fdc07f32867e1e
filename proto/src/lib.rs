//! The iSCSI wire protocol (RFC 7143), shared by Mosaic's target and initiator.
//!
//! Nothing here touches a socket, a file or the clock: callers feed bytes in and
//! get typed values out, so every part can be tested and fuzzed in isolation.
//!
//! - [`pdu`]: the 48-byte basic header segment of every PDU, decoded at fixed offsets
//!   into typed headers, and encoded back.
//! - [`frame`]: check-then-parse framing of whole PDUs (AHS, padding, digests).
//! - [`chap`]: CHAP (MD5) authentication, one-way and mutual (RFC 7143 §12.1.3).
//! - [`digest`]: CRC32C header and data digests.
//! - [`serial`]: RFC 1982 serial-number arithmetic for CmdSN, StatSN, DataSN.
//! - [`text`]: login and text key=value segments.
//! - [`negotiate`]: the table of RFC 7143 §13 keys and the one negotiator that applies them.
//! - [`scsi`]: SCSI CDB decoding and sense-data building.

pub mod chap;
pub mod digest;
pub mod frame;
pub mod negotiate;
pub mod pdu;
pub mod scsi;
pub mod serial;
pub mod text;
