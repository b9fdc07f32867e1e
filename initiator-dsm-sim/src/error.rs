//! The initiator's errors.

use std::net::SocketAddr;

use mosaic_proto::frame::FrameError;
use mosaic_proto::negotiate::NegotiationError;
use mosaic_proto::text::TextError;
use thiserror::Error;

use crate::scsi::Sense;

/// Why an initiator operation failed.
#[derive(Debug, Error)]
pub enum Error {
    /// A socket error.
    #[error("I/O error with {addr}: {source}")]
    Io {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// Nothing came from the target within the time limit.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The connection carrying the command went away (EOF, reset, a failed ping, a
    /// digest error): the command may be retried on a new connection.
    #[error("connection lost: {0}")]
    ConnectionLost(String),
    /// The session was logged out or closed by its owner.
    #[error("the session is closed")]
    SessionClosed,
    /// The login response carried a status other than success or redirect.
    #[error("login to {addr} failed: status class {class:#04x} detail {detail:#04x} ({})", login_status_text(*.class, *.detail))]
    LoginFailed {
        addr: SocketAddr,
        class: u8,
        detail: u8,
    },
    /// The target redirected the login and redirects were not followed (or looped).
    #[error("login redirected to {0}")]
    Redirected(String),
    /// CHAP failed on our side (the target's proof is wrong, or a key is missing).
    #[error("authentication: {0}")]
    Auth(String),
    /// Login or text negotiation broke the rules of RFC 7143 §6.
    #[error("negotiation: {0}")]
    Negotiation(#[from] NegotiationError),
    /// A text segment could not be parsed or built.
    #[error("text segment: {0}")]
    Text(#[from] TextError),
    /// Bytes from the target did not frame (bad digest, oversized segment).
    #[error("framing: {0}")]
    Frame(#[from] FrameError),
    /// The target rejected a PDU (RFC 7143 §11.17).
    #[error("the target rejected the PDU, reason {0:#04x}")]
    Reject(u8),
    /// The target did something this initiator does not accept.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The command ended with CHECK CONDITION.
    #[error("CHECK CONDITION: {0}")]
    Check(Sense),
    /// The command ended with a status other than GOOD or CHECK CONDITION.
    #[error("SCSI status {0:#04x}")]
    Status(u8),
    /// The caller asked for something impossible (bad LBA, length, argument).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// Multipath: no usable path.
    #[error("no path: {0}")]
    NoPath(String),
    /// A routing table from the target could not be decoded.
    #[error("routing table: {0}")]
    Routing(String),
}

impl Error {
    /// Whether a new connection (reconnect) may make the operation succeed.
    pub fn is_connection_loss(&self) -> bool {
        matches!(
            self,
            Error::ConnectionLost(_) | Error::Io { .. } | Error::Timeout(_) | Error::Frame(_)
        )
    }

    /// The sense data, when the error is a CHECK CONDITION.
    pub fn sense(&self) -> Option<&Sense> {
        match self {
            Error::Check(s) => Some(s),
            _ => None,
        }
    }
}

/// A short text for a login status (RFC 7143 §11.13.5).
pub fn login_status_text(class: u8, detail: u8) -> &'static str {
    match (class, detail) {
        (0x01, _) => "redirection",
        (0x02, 0x00) => "initiator error",
        (0x02, 0x01) => "authentication failure",
        (0x02, 0x02) => "authorization failure",
        (0x02, 0x03) => "target not found",
        (0x02, 0x04) => "target removed",
        (0x02, 0x05) => "unsupported version",
        (0x02, 0x06) => "too many connections",
        (0x02, 0x07) => "missing parameter",
        (0x02, 0x08) => "cannot include in session",
        (0x02, 0x09) => "session type not supported",
        (0x02, 0x0a) => "session does not exist",
        (0x02, 0x0b) => "invalid during login",
        (0x03, 0x00) => "target error",
        (0x03, 0x01) => "service unavailable",
        (0x03, 0x02) => "out of resources",
        _ => "unknown status",
    }
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;
