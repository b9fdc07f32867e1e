//! The inter-node link: TCP between the nodes of a cluster, carrying block requests
//! (read, write, flush, compare-and-write, unmap), short-cut requests and pings from
//! the node that received an iSCSI command to the node that owns the addressed page.
//!
//! Layers, bottom up:
//!
//! - **Codec** (no I/O): a frame is a fixed [`HEADER_LEN`]-byte header (magic,
//!   version, kind, request id, the sender's routing epoch, body length) followed by
//!   the body. [`parse_frame`] validates the header (magic, version, reserved bits,
//!   [`MAX_BODY_LEN`]) *before* it waits for or takes the body, so a bad peer cannot
//!   make us buffer more than the cap. [`Request::decode`] and [`Response::decode`]
//!   never panic; every length is checked against a named limit.
//! - **Server** ([`LinkServer`]): one reader per peer connection that checks the
//!   epoch of every request *before* handing it to the [`LocalService`], serves up to
//!   [`MAX_SERVING_PER_CONNECTION`] requests at once, and one writer task that sends
//!   the responses in completion order with vectored writes (header, then data).
//! - **Client** ([`LinkClient`]): one multiplexed connection per peer, request ids,
//!   a pending map of oneshot senders, at most [`MAX_IN_FLIGHT_PER_PEER`] calls in
//!   flight, a per-call timeout ([`CALL_TIMEOUT`]), lazy connect and reconnect.
//!   [`Peers`] maps node ids to addresses and clients created on demand.
//! - **Epoch retry** ([`call_with_refresh`]): a stale epoch on either side is
//!   answered with [`LinkError::StaleEpoch`]; the caller refreshes its routing table
//!   and retries, a bounded number of times.
//!
//! Wire format (all integers big-endian, like iSCSI):
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 4 | magic `MLNK` |
//! | 4 | 1 | version, [`VERSION`] |
//! | 5 | 1 | kind (see [`kind`]) |
//! | 6 | 2 | reserved, zero |
//! | 8 | 8 | request id (a response echoes it) |
//! | 16 | 8 | routing epoch (request: the sender's; response: the server's) |
//! | 24 | 4 | body length, at most [`MAX_BODY_LEN`] |
//! | 28 | 4 | reserved, zero |
//!
//! Delivery semantics: a call that fails with [`LinkError::Disconnected`] or
//! [`LinkError::Timeout`] may or may not have been executed by the peer. The link
//! never retries those by itself: writes are idempotent but COMPARE AND WRITE is not,
//! and the replay cache (ARCHITECTURE.md, "Sessions") is the layer that can tell.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use mosaic_proto::negotiate::{MAX_DATA_LENGTH, MIN_DATA_LENGTH};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, warn};

// ---------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------

/// First bytes of every frame: catches a peer that is not a Mosaic link (an iSCSI
/// initiator dialling the wrong port, a port scanner) before anything is buffered.
pub const MAGIC: [u8; 4] = *b"MLNK";

/// Wire format version. A node refuses frames of another version (and drops the
/// connection): nodes of one cluster run one version.
pub const VERSION: u8 = 1;

/// Length of the fixed frame header.
pub const HEADER_LEN: usize = 32;

/// Largest data payload of one request or response (read length, write data,
/// short-cut read length). 32 MiB is the target's largest SCSI transfer
/// (`scsi::MAX_TRANSFER_BYTES`), so even a command that falls on one page is one
/// link request; the forwarder splits by page, so real pieces are smaller.
pub const MAX_DATA_LEN: u32 = 32 << 20;

/// Largest frame body. A short-cut answer carries [`MAX_DATA_LEN`] bytes cut into
/// Data-In PDUs: at the smallest MaxRecvDataSegmentLength (512, RFC 7143 §13.12)
/// each 512 bytes gain a 48-byte BHS and two 4-byte digests, 11% more, under the
/// 1/8 allowed here; 64 KiB more covers the SCSI Response PDU with sense data and
/// the fixed fields of any body.
pub const MAX_BODY_LEN: u32 = MAX_DATA_LEN + MAX_DATA_LEN / 8 + (64 << 10);

/// Longest error message carried in [`WireError::Io`]: enough for an OS error and
/// a path, short enough that an error storm cannot fill the link.
pub const MAX_ERROR_MESSAGE_LEN: usize = 1024;

/// Calls a client lets be in flight to one peer; further calls wait for a slot.
/// Four sessions at the default queue depth of 64 can all have a command on the
/// same remote page at once; more than that is back-pressure that the CmdSN window
/// passes on to the initiators.
pub const MAX_IN_FLIGHT_PER_PEER: usize = 256;

/// Requests a server serves at once for one connection. Equal to the client's
/// [`MAX_IN_FLIGHT_PER_PEER`] so a well-behaved peer is never throttled by the
/// server; beyond it the reader stops reading and TCP pushes back on the sender.
pub const MAX_SERVING_PER_CONNECTION: usize = MAX_IN_FLIGHT_PER_PEER;

/// Frames the writer task gathers into one vectored write. Each frame is at most
/// three slices, so 64 frames stay well under Linux's IOV_MAX (1024).
pub const WRITE_BATCH: usize = 64;

/// Slices passed to one `writev`: three per frame of a full batch.
const MAX_IOVECS: usize = 3 * WRITE_BATCH;

/// Socket read granularity: one 4 KiB-read response costs one read call.
const READ_CHUNK: usize = 64 << 10;

/// Default deadline of one call, waiting for a slot and connecting included. Well
/// below the Linux SCSI command timeout (30 s) so the receiving node can still
/// answer the initiator itself, long enough for a 32 MiB write on a slow disk.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Default deadline of one TCP connect. A peer on the same network answers in
/// milliseconds; a dead one must not hold calls for the whole [`CALL_TIMEOUT`].
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Pause after a failed `accept` (out of file descriptors): retrying at once would
/// spin on the same error.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Attempts [`call_with_refresh`] callers should allow: one refresh normally
/// suffices; the others cover a second table change racing the retry.
pub const DEFAULT_REFRESH_ATTEMPTS: u32 = 3;

/// Frame kinds. Requests have the top bit clear, responses set.
pub mod kind {
    /// [`super::Request::Read`].
    pub const READ: u8 = 0x01;
    /// [`super::Request::Write`].
    pub const WRITE: u8 = 0x02;
    /// [`super::Request::Flush`].
    pub const FLUSH: u8 = 0x03;
    /// [`super::Request::CompareAndWrite`].
    pub const COMPARE_AND_WRITE: u8 = 0x04;
    /// [`super::Request::Unmap`].
    pub const UNMAP: u8 = 0x05;
    /// [`super::Request::ShortCut`].
    pub const SHORT_CUT: u8 = 0x06;
    /// [`super::Request::Ping`].
    pub const PING: u8 = 0x07;
    /// [`super::Request::PageCopy`].
    pub const PAGE_COPY: u8 = 0x08;
    /// [`super::Request::OrWrite`].
    pub const OR_WRITE: u8 = 0x09;
    /// [`super::Response::Data`].
    pub const DATA: u8 = 0x81;
    /// [`super::Response::Done`].
    pub const DONE: u8 = 0x82;
    /// [`super::Response::Miscompare`].
    pub const MISCOMPARE: u8 = 0x83;
    /// [`super::Response::Pdus`].
    pub const PDUS: u8 = 0x84;
    /// [`super::Response::Pong`].
    pub const PONG: u8 = 0x85;
    /// [`super::Response::Error`].
    pub const ERROR: u8 = 0x86;
}

/// Header field offsets.
mod off {
    pub const MAGIC: usize = 0;
    pub const VERSION: usize = 4;
    pub const KIND: usize = 5;
    pub const RESERVED1: usize = 6;
    pub const REQUEST_ID: usize = 8;
    pub const EPOCH: usize = 16;
    pub const BODY_LEN: usize = 24;
    pub const RESERVED2: usize = 28;
}

/// Write flag: FUA (SBC-4 §5.40, WRITE(16)).
const WRITE_FLAG_FUA: u8 = 0x01;
/// Write and unmap flag: the primary's copy to a replica (not to be replicated).
const FLAG_REPLICA: u8 = 0x02;
/// ConnState flag: HeaderDigest=CRC32C (RFC 7143 §13.1).
const STATE_FLAG_HEADER_DIGEST: u8 = 0x01;
/// ConnState flag: DataDigest=CRC32C (RFC 7143 §13.1).
const STATE_FLAG_DATA_DIGEST: u8 = 0x02;
/// Encoded size of [`ConnState`].
const CONN_STATE_LEN: usize = 41;

/// Error codes in a [`kind::ERROR`] body.
mod err_code {
    pub const STALE_EPOCH: u8 = 1;
    pub const NOT_OWNER: u8 = 2;
    pub const IO: u8 = 3;
    pub const UNSUPPORTED: u8 = 4;
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Why a frame was refused by the codec. Header errors (bad magic, version,
/// reserved bits, oversized body) lose the framing: the connection is dropped. Body
/// errors of a known kind are protocol violations too; an unknown kind with a good
/// header is answered with [`WireError::Unsupported`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The frame does not start with [`MAGIC`].
    #[error("bad magic {0:02x?}")]
    BadMagic([u8; 4]),
    /// The frame is of another wire format version.
    #[error("unsupported link version {0}")]
    BadVersion(u8),
    /// A reserved header field is not zero.
    #[error("reserved header bits set")]
    ReservedNotZero,
    /// The body is longer than [`MAX_BODY_LEN`].
    #[error("frame body of {len} bytes exceeds the limit of {max}")]
    BodyTooLong {
        /// Declared (or encoded) body length.
        len: u64,
        /// The limit.
        max: u32,
    },
    /// A data payload is longer than [`MAX_DATA_LEN`].
    #[error("data of {len} bytes exceeds the limit of {max}")]
    DataTooLong {
        /// Payload length.
        len: u64,
        /// The limit.
        max: u32,
    },
    /// The kind is not one this side understands.
    #[error("unknown frame kind {0:#04x}")]
    UnknownKind(u8),
    /// The body ends before a field.
    #[error("truncated body: {0}")]
    Truncated(&'static str),
    /// Bytes after the last field of a fixed-size body.
    #[error("{extra} trailing bytes in a frame of kind {kind:#04x}")]
    TrailingBytes {
        /// Frame kind.
        kind: u8,
        /// Surplus bytes.
        extra: usize,
    },
    /// A field has a value outside its range.
    #[error("invalid field: {0}")]
    InvalidField(&'static str),
}

/// An error of one link call.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The peer's routing epoch is not the one the request carried (older or
    /// newer): nothing was served. `current` is the peer's epoch; the caller
    /// refreshes its table and retries ([`call_with_refresh`]).
    #[error("stale routing epoch: the peer is at epoch {current}")]
    StaleEpoch {
        /// The epoch the peer is at.
        current: u64,
    },
    /// The peer does not own the addressed range at the request's epoch.
    #[error("the peer does not own the addressed range")]
    NotOwner,
    /// The peer does not implement this request.
    #[error("the peer does not support this request")]
    Unsupported,
    /// The connection broke (or was replaced) before the response arrived. The
    /// request may or may not have been executed.
    #[error("link disconnected")]
    Disconnected,
    /// No response within the call timeout. The request may or may not have been
    /// executed; a late response is dropped.
    #[error("link call timed out")]
    Timeout,
    /// A local socket error (typically the connect).
    #[error("link I/O error: {0}")]
    Io(#[from] io::Error),
    /// The peer broke the protocol: malformed frame, unexpected response kind or
    /// data length.
    #[error("link protocol error: {0}")]
    Protocol(String),
    /// The request cannot be encoded (a payload over a named limit): a caller bug,
    /// nothing was sent.
    #[error("request not sendable: {0}")]
    Invalid(FrameError),
    /// The peer failed the request with an I/O error of its own.
    #[error("remote error: {0}")]
    Remote(String),
    /// No address is known for this node.
    #[error("no address known for node {0}")]
    UnknownPeer(u32),
}

/// An error carried in a response ([`Response::Error`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// The request's epoch differs from the server's; `current` is the server's.
    StaleEpoch {
        /// The server's epoch.
        current: u64,
    },
    /// The server does not own the addressed range.
    NotOwner,
    /// The server's store failed; the message is for logs (at most
    /// [`MAX_ERROR_MESSAGE_LEN`] bytes on the wire).
    Io(String),
    /// The server does not implement the request kind.
    Unsupported,
}

impl From<WireError> for LinkError {
    fn from(e: WireError) -> LinkError {
        match e {
            WireError::StaleEpoch { current } => LinkError::StaleEpoch { current },
            WireError::NotOwner => LinkError::NotOwner,
            WireError::Io(m) => LinkError::Remote(m),
            WireError::Unsupported => LinkError::Unsupported,
        }
    }
}

// ---------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------

/// What the receiving node's connection knows about one task, handed to the owner
/// in short-cut mode so that it can build the final Data-In and SCSI Response PDUs
/// itself (RFC 7143 §11.7, §11.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConnState {
    /// Initiator task tag of the command.
    pub itt: u32,
    /// LUN of the command, as in its BHS.
    pub lun: u64,
    /// StatSN the SCSI Response must carry.
    pub stat_sn: u32,
    /// ExpCmdSN to report.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN to report.
    pub max_cmd_sn: u32,
    /// DataSN of the first Data-In PDU to build.
    pub data_sn: u32,
    /// The initiator's MaxRecvDataSegmentLength: bound of each Data-In segment
    /// (RFC 7143 §13.12; 512 to 2^24-1, checked on decode).
    pub max_recv_data_segment_length: u32,
    /// MaxBurstLength (RFC 7143 §13.13; 512 to 2^24-1, checked on decode).
    pub max_burst_length: u32,
    /// Whether PDUs carry a header digest.
    pub header_digest: bool,
    /// Whether PDUs carry a data digest.
    pub data_digest: bool,
    /// Expected Data Transfer Length of the command, for residual counts.
    pub expected_data_transfer_length: u32,
}

/// A request from one node to another. Offsets and lengths are in bytes of the
/// volume; the serving node maps them to its store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Read `len` bytes -> [`Response::Data`] of exactly `len` bytes.
    Read {
        /// Volume id.
        volume: u64,
        /// Byte offset.
        offset: u64,
        /// Bytes to read, at most [`MAX_DATA_LEN`].
        len: u32,
    },
    /// Write `data` -> [`Response::Done`].
    Write {
        /// Volume id.
        volume: u64,
        /// Byte offset.
        offset: u64,
        /// The data, at most [`MAX_DATA_LEN`] bytes.
        data: Bytes,
        /// Force unit access: durable before Done (SBC-4 §5.40).
        fua: bool,
        /// `false`: to the page's primary, which orders it against every other
        /// write to the range and copies it to the replicas before Done. `true`:
        /// the primary's copy to a replica, written as is.
        replica: bool,
    },
    /// Make earlier writes durable (SYNCHRONIZE CACHE) -> [`Response::Done`].
    Flush {
        /// Volume id.
        volume: u64,
    },
    /// Atomically compare and, if equal, write (SBC-4 §5.3) -> [`Response::Done`]
    /// or [`Response::Miscompare`].
    CompareAndWrite {
        /// Volume id.
        volume: u64,
        /// Byte offset.
        offset: u64,
        /// Expected current contents.
        compare: Bytes,
        /// Contents to write on a match.
        write: Bytes,
    },
    /// Deallocate a range (UNMAP, WRITE SAME with UNMAP) -> [`Response::Done`].
    Unmap {
        /// Volume id.
        volume: u64,
        /// Byte offset.
        offset: u64,
        /// Bytes to deallocate.
        len: u64,
        /// As for [`Request::Write`]: to the primary, or the primary's copy.
        replica: bool,
    },
    /// Read `len` bytes and build the final PDUs of the task described by
    /// `state` -> [`Response::Pdus`], written unchanged by the receiving node.
    ShortCut {
        /// Volume id.
        volume: u64,
        /// Byte offset.
        offset: u64,
        /// Bytes to read, at most [`MAX_DATA_LEN`].
        len: u32,
        /// The task's connection state.
        state: ConnState,
    },
    /// ORWRITE (SBC-4 §5.9) at the primary: the range becomes the bitwise OR of its
    /// contents and `data`, atomically against other writes -> [`Response::Done`].
    OrWrite {
        /// Volume id.
        volume: u64,
        /// Byte offset.
        offset: u64,
        /// The data to OR in, at most [`MAX_DATA_LEN`] bytes.
        data: Bytes,
    },
    /// Part of a page being moved to this node, sent by the page's primary while
    /// it holds the page against writes -> [`Response::Done`]. Written whatever
    /// the table says (the table names this node only once the copy is complete);
    /// refused by the page's current primary.
    PageCopy {
        /// Volume id.
        volume: u64,
        /// Byte offset.
        offset: u64,
        /// The data, at most [`MAX_DATA_LEN`] bytes.
        data: Bytes,
    },
    /// Liveness and round-trip measurement -> [`Response::Pong`]. Exempt from the
    /// epoch check: it serves nothing, and a node behind must still look alive.
    Ping,
}

/// A response to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// The data of a read.
    Data(Bytes),
    /// The request was executed.
    Done,
    /// COMPARE AND WRITE found a difference; `offset` is the byte offset of the
    /// first differing byte within the compared range (SBC-4 §5.3, the sense
    /// INFORMATION field is derived from it).
    Miscompare {
        /// Offset of the first differing byte.
        offset: u32,
    },
    /// Complete Data-In and SCSI Response PDUs of a short-cut task.
    Pdus(Bytes),
    /// Answer to a ping.
    Pong,
    /// The request failed or was refused.
    Error(WireError),
}

/// One encoded frame: the header and fixed fields, then up to two data payloads
/// (COMPARE AND WRITE has two) that are sent without copying.
#[derive(Debug, Clone)]
pub struct Encoded {
    head: Bytes,
    data: Bytes,
    data2: Bytes,
}

impl Encoded {
    /// Total length on the wire.
    pub fn len(&self) -> usize {
        self.head.len() + self.data.len() + self.data2.len()
    }

    /// Never true: a frame has at least its header.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The frame as one contiguous buffer (tests and tools; the link itself writes
    /// the parts with one vectored write).
    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(self.len());
        b.extend_from_slice(&self.head);
        b.extend_from_slice(&self.data);
        b.extend_from_slice(&self.data2);
        b.freeze()
    }

    fn push_into(self, chunks: &mut VecDeque<Bytes>) {
        for part in [self.head, self.data, self.data2] {
            if !part.is_empty() {
                chunks.push_back(part);
            }
        }
    }
}

/// A validated frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Frame kind ([`kind`]).
    pub kind: u8,
    /// Request id; a response echoes its request's.
    pub request_id: u64,
    /// The sender's routing epoch.
    pub epoch: u64,
    /// Length of the body that follows.
    pub body_len: u32,
}

impl Header {
    /// Decode and validate a header. Validation happens here, before the body is
    /// awaited: magic, version, reserved fields, [`MAX_BODY_LEN`].
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Header, FrameError> {
        let magic = [b[0], b[1], b[2], b[3]];
        if magic != MAGIC {
            return Err(FrameError::BadMagic(magic));
        }
        if b[off::VERSION] != VERSION {
            return Err(FrameError::BadVersion(b[off::VERSION]));
        }
        if b[off::RESERVED1] != 0
            || b[off::RESERVED1 + 1] != 0
            || b[off::RESERVED2..off::RESERVED2 + 4] != [0; 4]
        {
            return Err(FrameError::ReservedNotZero);
        }
        let body_len = be_u32(b, off::BODY_LEN);
        if body_len > MAX_BODY_LEN {
            return Err(FrameError::BodyTooLong {
                len: body_len.into(),
                max: MAX_BODY_LEN,
            });
        }
        Ok(Header {
            kind: b[off::KIND],
            request_id: be_u64(b, off::REQUEST_ID),
            epoch: be_u64(b, off::EPOCH),
            body_len,
        })
    }

    /// Write this header into the first [`HEADER_LEN`] bytes of `out`.
    fn write(&self, out: &mut [u8; HEADER_LEN]) {
        out[off::MAGIC..off::MAGIC + 4].copy_from_slice(&MAGIC);
        out[off::VERSION] = VERSION;
        out[off::KIND] = self.kind;
        out[off::RESERVED1..off::RESERVED1 + 2].fill(0);
        out[off::REQUEST_ID..off::REQUEST_ID + 8].copy_from_slice(&self.request_id.to_be_bytes());
        out[off::EPOCH..off::EPOCH + 8].copy_from_slice(&self.epoch.to_be_bytes());
        out[off::BODY_LEN..off::BODY_LEN + 4].copy_from_slice(&self.body_len.to_be_bytes());
        out[off::RESERVED2..off::RESERVED2 + 4].fill(0);
    }
}

fn be_u32(b: &[u8; HEADER_LEN], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be_u64(b: &[u8; HEADER_LEN], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// Take one complete frame off the front of `buf`. `Ok(None)`: more bytes are
/// needed (not an error; `buf` is grown to hold the announced body). The header is
/// validated as soon as its [`HEADER_LEN`] bytes are in, before the body. The body
/// is split off without copying.
pub fn parse_frame(buf: &mut BytesMut) -> Result<Option<(Header, Bytes)>, FrameError> {
    let Some(head) = buf.get(..HEADER_LEN) else {
        // A stranger (an initiator on the wrong port) is told off at its first
        // four bytes, not after a header's worth.
        if let Some(m) = buf.get(..MAGIC.len()) {
            if m != MAGIC {
                return Err(FrameError::BadMagic([m[0], m[1], m[2], m[3]]));
            }
        }
        return Ok(None);
    };
    let Ok(head) = <&[u8; HEADER_LEN]>::try_from(head) else {
        return Ok(None);
    };
    let header = Header::decode(head)?;
    let total = HEADER_LEN + header.body_len as usize;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    buf.advance(HEADER_LEN);
    let body = buf.split_to(header.body_len as usize).freeze();
    Ok(Some((header, body)))
}

/// Start a frame: header placeholder, then the caller appends the fixed fields.
fn frame_head(fixed_len: usize) -> BytesMut {
    let mut head = BytesMut::with_capacity(HEADER_LEN + fixed_len);
    head.put_bytes(0, HEADER_LEN);
    head
}

/// Finish a frame: check the body length and fill in the header.
fn finish(
    mut head: BytesMut,
    kind: u8,
    request_id: u64,
    epoch: u64,
    data: Bytes,
    data2: Bytes,
) -> Result<Encoded, FrameError> {
    let body_len = (head.len() - HEADER_LEN) as u64 + data.len() as u64 + data2.len() as u64;
    if body_len > u64::from(MAX_BODY_LEN) {
        return Err(FrameError::BodyTooLong {
            len: body_len,
            max: MAX_BODY_LEN,
        });
    }
    let header = Header {
        kind,
        request_id,
        epoch,
        body_len: body_len as u32,
    };
    if let Some(h) = head.get_mut(..HEADER_LEN) {
        if let Ok(h) = <&mut [u8; HEADER_LEN]>::try_from(h) {
            header.write(h);
        }
    }
    Ok(Encoded {
        head: head.freeze(),
        data,
        data2,
    })
}

fn check_data_len(len: usize) -> Result<(), FrameError> {
    if len as u64 > u64::from(MAX_DATA_LEN) {
        return Err(FrameError::DataTooLong {
            len: len as u64,
            max: MAX_DATA_LEN,
        });
    }
    Ok(())
}

fn check_segment_len(v: u32, what: &'static str) -> Result<(), FrameError> {
    if (MIN_DATA_LENGTH..=MAX_DATA_LENGTH).contains(&v) {
        Ok(())
    } else {
        Err(FrameError::InvalidField(what))
    }
}

fn get_u8(b: &mut Bytes, what: &'static str) -> Result<u8, FrameError> {
    if b.remaining() < 1 {
        return Err(FrameError::Truncated(what));
    }
    Ok(b.get_u8())
}

fn get_u16(b: &mut Bytes, what: &'static str) -> Result<u16, FrameError> {
    if b.remaining() < 2 {
        return Err(FrameError::Truncated(what));
    }
    Ok(b.get_u16())
}

fn get_u32(b: &mut Bytes, what: &'static str) -> Result<u32, FrameError> {
    if b.remaining() < 4 {
        return Err(FrameError::Truncated(what));
    }
    Ok(b.get_u32())
}

fn get_u64(b: &mut Bytes, what: &'static str) -> Result<u64, FrameError> {
    if b.remaining() < 8 {
        return Err(FrameError::Truncated(what));
    }
    Ok(b.get_u64())
}

impl ConnState {
    fn put(&self, out: &mut BytesMut) {
        out.put_u32(self.itt);
        out.put_u64(self.lun);
        out.put_u32(self.stat_sn);
        out.put_u32(self.exp_cmd_sn);
        out.put_u32(self.max_cmd_sn);
        out.put_u32(self.data_sn);
        out.put_u32(self.max_recv_data_segment_length);
        out.put_u32(self.max_burst_length);
        out.put_u32(self.expected_data_transfer_length);
        let mut flags = 0;
        if self.header_digest {
            flags |= STATE_FLAG_HEADER_DIGEST;
        }
        if self.data_digest {
            flags |= STATE_FLAG_DATA_DIGEST;
        }
        out.put_u8(flags);
    }

    fn get(b: &mut Bytes) -> Result<ConnState, FrameError> {
        let s = ConnState {
            itt: get_u32(b, "itt")?,
            lun: get_u64(b, "lun")?,
            stat_sn: get_u32(b, "stat_sn")?,
            exp_cmd_sn: get_u32(b, "exp_cmd_sn")?,
            max_cmd_sn: get_u32(b, "max_cmd_sn")?,
            data_sn: get_u32(b, "data_sn")?,
            max_recv_data_segment_length: get_u32(b, "max_recv_data_segment_length")?,
            max_burst_length: get_u32(b, "max_burst_length")?,
            expected_data_transfer_length: get_u32(b, "expected_data_transfer_length")?,
            header_digest: false,
            data_digest: false,
        };
        let flags = get_u8(b, "state flags")?;
        if flags & !(STATE_FLAG_HEADER_DIGEST | STATE_FLAG_DATA_DIGEST) != 0 {
            return Err(FrameError::InvalidField("state flags"));
        }
        let s = ConnState {
            header_digest: flags & STATE_FLAG_HEADER_DIGEST != 0,
            data_digest: flags & STATE_FLAG_DATA_DIGEST != 0,
            ..s
        };
        s.validate()?;
        Ok(s)
    }

    /// Segment sizes within RFC 7143 ranges: an owner building PDUs with a zero
    /// segment length would never finish.
    fn validate(&self) -> Result<(), FrameError> {
        check_segment_len(
            self.max_recv_data_segment_length,
            "max_recv_data_segment_length",
        )?;
        check_segment_len(self.max_burst_length, "max_burst_length")
    }
}

/// `bit` when `on`, else 0.
fn flag(on: bool, bit: u8) -> u8 {
    if on {
        bit
    } else {
        0
    }
}

impl Request {
    /// The frame kind of this request.
    pub fn kind(&self) -> u8 {
        match self {
            Request::Read { .. } => kind::READ,
            Request::Write { .. } => kind::WRITE,
            Request::Flush { .. } => kind::FLUSH,
            Request::CompareAndWrite { .. } => kind::COMPARE_AND_WRITE,
            Request::Unmap { .. } => kind::UNMAP,
            Request::ShortCut { .. } => kind::SHORT_CUT,
            Request::Ping => kind::PING,
            Request::PageCopy { .. } => kind::PAGE_COPY,
            Request::OrWrite { .. } => kind::OR_WRITE,
        }
    }

    /// Encode as a frame. Refuses what the receiver would refuse (payloads over
    /// [`MAX_DATA_LEN`], segment lengths out of range), so nothing invalid is sent.
    pub fn encode(&self, request_id: u64, epoch: u64) -> Result<Encoded, FrameError> {
        let k = self.kind();
        let none = Bytes::new;
        match self {
            Request::Read {
                volume,
                offset,
                len,
            } => {
                check_data_len(*len as usize)?;
                let mut h = frame_head(20);
                h.put_u64(*volume);
                h.put_u64(*offset);
                h.put_u32(*len);
                finish(h, k, request_id, epoch, none(), none())
            }
            Request::Write {
                volume,
                offset,
                data,
                fua,
                replica,
            } => {
                check_data_len(data.len())?;
                let mut h = frame_head(17);
                h.put_u64(*volume);
                h.put_u64(*offset);
                h.put_u8(flag(*fua, WRITE_FLAG_FUA) | flag(*replica, FLAG_REPLICA));
                finish(h, k, request_id, epoch, data.clone(), none())
            }
            Request::Flush { volume } => {
                let mut h = frame_head(8);
                h.put_u64(*volume);
                finish(h, k, request_id, epoch, none(), none())
            }
            Request::CompareAndWrite {
                volume,
                offset,
                compare,
                write,
            } => {
                check_data_len(compare.len())?;
                check_data_len(write.len())?;
                let mut h = frame_head(20);
                h.put_u64(*volume);
                h.put_u64(*offset);
                h.put_u32(compare.len() as u32);
                finish(h, k, request_id, epoch, compare.clone(), write.clone())
            }
            Request::Unmap {
                volume,
                offset,
                len,
                replica,
            } => {
                let mut h = frame_head(25);
                h.put_u64(*volume);
                h.put_u64(*offset);
                h.put_u64(*len);
                h.put_u8(flag(*replica, FLAG_REPLICA));
                finish(h, k, request_id, epoch, none(), none())
            }
            Request::ShortCut {
                volume,
                offset,
                len,
                state,
            } => {
                check_data_len(*len as usize)?;
                state.validate()?;
                let mut h = frame_head(20 + CONN_STATE_LEN);
                h.put_u64(*volume);
                h.put_u64(*offset);
                h.put_u32(*len);
                state.put(&mut h);
                finish(h, k, request_id, epoch, none(), none())
            }
            Request::PageCopy {
                volume,
                offset,
                data,
            }
            | Request::OrWrite {
                volume,
                offset,
                data,
            } => {
                check_data_len(data.len())?;
                let mut h = frame_head(16);
                h.put_u64(*volume);
                h.put_u64(*offset);
                finish(h, k, request_id, epoch, data.clone(), none())
            }
            Request::Ping => finish(frame_head(0), k, request_id, epoch, none(), none()),
        }
    }

    /// Decode the body of a request frame. Never panics; an unknown kind is
    /// [`FrameError::UnknownKind`] (answered with [`WireError::Unsupported`]).
    pub fn decode(kind: u8, mut body: Bytes) -> Result<Request, FrameError> {
        let b = &mut body;
        let req = match kind {
            kind::READ => {
                let volume = get_u64(b, "volume")?;
                let offset = get_u64(b, "offset")?;
                let len = get_u32(b, "len")?;
                check_data_len(len as usize)?;
                Request::Read {
                    volume,
                    offset,
                    len,
                }
            }
            kind::WRITE => {
                let volume = get_u64(b, "volume")?;
                let offset = get_u64(b, "offset")?;
                let flags = get_u8(b, "write flags")?;
                if flags & !(WRITE_FLAG_FUA | FLAG_REPLICA) != 0 {
                    return Err(FrameError::InvalidField("write flags"));
                }
                let data = std::mem::take(b);
                check_data_len(data.len())?;
                Request::Write {
                    volume,
                    offset,
                    data,
                    fua: flags & WRITE_FLAG_FUA != 0,
                    replica: flags & FLAG_REPLICA != 0,
                }
            }
            kind::FLUSH => Request::Flush {
                volume: get_u64(b, "volume")?,
            },
            kind::COMPARE_AND_WRITE => {
                let volume = get_u64(b, "volume")?;
                let offset = get_u64(b, "offset")?;
                let compare_len = get_u32(b, "compare_len")? as usize;
                if compare_len > b.len() {
                    return Err(FrameError::Truncated("compare data"));
                }
                let compare = b.split_to(compare_len);
                let write = std::mem::take(b);
                check_data_len(compare.len())?;
                check_data_len(write.len())?;
                Request::CompareAndWrite {
                    volume,
                    offset,
                    compare,
                    write,
                }
            }
            kind::UNMAP => {
                let volume = get_u64(b, "volume")?;
                let offset = get_u64(b, "offset")?;
                let len = get_u64(b, "len")?;
                let flags = get_u8(b, "unmap flags")?;
                if flags & !FLAG_REPLICA != 0 {
                    return Err(FrameError::InvalidField("unmap flags"));
                }
                Request::Unmap {
                    volume,
                    offset,
                    len,
                    replica: flags & FLAG_REPLICA != 0,
                }
            }
            kind::SHORT_CUT => {
                let volume = get_u64(b, "volume")?;
                let offset = get_u64(b, "offset")?;
                let len = get_u32(b, "len")?;
                check_data_len(len as usize)?;
                let state = ConnState::get(b)?;
                Request::ShortCut {
                    volume,
                    offset,
                    len,
                    state,
                }
            }
            kind::PING => Request::Ping,
            kind::PAGE_COPY | kind::OR_WRITE => {
                let volume = get_u64(b, "volume")?;
                let offset = get_u64(b, "offset")?;
                let data = std::mem::take(b);
                check_data_len(data.len())?;
                if kind == kind::PAGE_COPY {
                    Request::PageCopy {
                        volume,
                        offset,
                        data,
                    }
                } else {
                    Request::OrWrite {
                        volume,
                        offset,
                        data,
                    }
                }
            }
            other => return Err(FrameError::UnknownKind(other)),
        };
        if !body.is_empty() {
            return Err(FrameError::TrailingBytes {
                kind,
                extra: body.len(),
            });
        }
        Ok(req)
    }
}

/// Cut `s` to at most `max` bytes at a character boundary.
fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl Response {
    /// The frame kind of this response.
    pub fn kind(&self) -> u8 {
        match self {
            Response::Data(_) => kind::DATA,
            Response::Done => kind::DONE,
            Response::Miscompare { .. } => kind::MISCOMPARE,
            Response::Pdus(_) => kind::PDUS,
            Response::Pong => kind::PONG,
            Response::Error(_) => kind::ERROR,
        }
    }

    /// Encode as a frame. An [`WireError::Io`] message is cut to
    /// [`MAX_ERROR_MESSAGE_LEN`] bytes; data over the limits is refused.
    pub fn encode(&self, request_id: u64, epoch: u64) -> Result<Encoded, FrameError> {
        let k = self.kind();
        let none = Bytes::new;
        match self {
            Response::Data(d) => {
                check_data_len(d.len())?;
                finish(frame_head(0), k, request_id, epoch, d.clone(), none())
            }
            Response::Pdus(p) => finish(frame_head(0), k, request_id, epoch, p.clone(), none()),
            Response::Done => finish(frame_head(0), k, request_id, epoch, none(), none()),
            Response::Pong => finish(frame_head(0), k, request_id, epoch, none(), none()),
            Response::Miscompare { offset } => {
                let mut h = frame_head(4);
                h.put_u32(*offset);
                finish(h, k, request_id, epoch, none(), none())
            }
            Response::Error(e) => {
                let mut h = frame_head(11);
                match e {
                    WireError::StaleEpoch { current } => {
                        h.put_u8(err_code::STALE_EPOCH);
                        h.put_u64(*current);
                    }
                    WireError::NotOwner => h.put_u8(err_code::NOT_OWNER),
                    WireError::Io(m) => {
                        let m = truncate_utf8(m, MAX_ERROR_MESSAGE_LEN);
                        h.put_u8(err_code::IO);
                        h.put_u16(m.len() as u16);
                        h.extend_from_slice(m.as_bytes());
                    }
                    WireError::Unsupported => h.put_u8(err_code::UNSUPPORTED),
                }
                finish(h, k, request_id, epoch, none(), none())
            }
        }
    }

    /// Decode the body of a response frame. Never panics.
    pub fn decode(kind: u8, mut body: Bytes) -> Result<Response, FrameError> {
        let b = &mut body;
        let resp = match kind {
            kind::DATA => {
                let d = std::mem::take(b);
                check_data_len(d.len())?;
                Response::Data(d)
            }
            kind::PDUS => Response::Pdus(std::mem::take(b)),
            kind::DONE => Response::Done,
            kind::PONG => Response::Pong,
            kind::MISCOMPARE => Response::Miscompare {
                offset: get_u32(b, "miscompare offset")?,
            },
            kind::ERROR => Response::Error(match get_u8(b, "error code")? {
                err_code::STALE_EPOCH => WireError::StaleEpoch {
                    current: get_u64(b, "current epoch")?,
                },
                err_code::NOT_OWNER => WireError::NotOwner,
                err_code::IO => {
                    let len = get_u16(b, "message length")? as usize;
                    if len > MAX_ERROR_MESSAGE_LEN {
                        return Err(FrameError::InvalidField("error message length"));
                    }
                    if len > b.len() {
                        return Err(FrameError::Truncated("error message"));
                    }
                    let m = b.split_to(len);
                    let m = std::str::from_utf8(&m)
                        .map_err(|_| FrameError::InvalidField("error message utf-8"))?;
                    WireError::Io(m.to_owned())
                }
                err_code::UNSUPPORTED => WireError::Unsupported,
                _ => return Err(FrameError::InvalidField("error code")),
            }),
            other => return Err(FrameError::UnknownKind(other)),
        };
        if !body.is_empty() {
            return Err(FrameError::TrailingBytes {
                kind,
                extra: body.len(),
            });
        }
        Ok(resp)
    }
}

// ---------------------------------------------------------------------------
// Socket helpers
// ---------------------------------------------------------------------------

/// Why reading a frame failed: the connection is dropped either way.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Read the next frame. `Ok(None)` is a clean end of stream between frames.
/// Cancel-safe: partial input stays in `buf`.
async fn read_frame(
    r: &mut OwnedReadHalf,
    buf: &mut BytesMut,
) -> Result<Option<(Header, Bytes)>, ReadError> {
    loop {
        if let Some(frame) = parse_frame(buf)? {
            return Ok(Some(frame));
        }
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(READ_CHUNK);
        }
        if r.read_buf(buf).await? == 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "EOF inside a frame").into());
        }
    }
}

/// Write `chunks` out with as few `writev` calls as the socket allows.
async fn write_chunks(w: &mut OwnedWriteHalf, chunks: &mut VecDeque<Bytes>) -> io::Result<()> {
    while !chunks.is_empty() {
        let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
        let mut n = 0;
        for (slot, c) in slices.iter_mut().zip(chunks.iter()) {
            *slot = IoSlice::new(c);
            n += 1;
        }
        let mut written = w.write_vectored(&slices[..n]).await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while written > 0 {
            let Some(front) = chunks.front_mut() else {
                break;
            };
            if front.len() <= written {
                written -= front.len();
                chunks.pop_front();
            } else {
                front.advance(written);
                written = 0;
            }
        }
    }
    Ok(())
}

/// The writer task of a connection: the only owner of the write half. Gathers up
/// to [`WRITE_BATCH`] queued frames per vectored write. Ends when every sender is
/// gone (then shuts the write side down) or on a write error.
async fn writer_loop(mut w: OwnedWriteHalf, mut rx: mpsc::Receiver<Encoded>) -> io::Result<()> {
    let mut chunks = VecDeque::with_capacity(MAX_IOVECS);
    while let Some(first) = rx.recv().await {
        first.push_into(&mut chunks);
        for _ in 1..WRITE_BATCH {
            match rx.try_recv() {
                Ok(f) => f.push_into(&mut chunks),
                Err(_) => break,
            }
        }
        write_chunks(&mut w, &mut chunks).await?;
    }
    w.shutdown().await
}

/// Aborts a task when dropped: tasks of a connection die with it.
#[derive(Debug)]
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Resolves once shutdown is signalled (or its sender is gone).
async fn shutdown_signalled(rx: &mut watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------

/// The future returned by [`LocalService::serve`].
pub type ServeFuture<'a> = Pin<Box<dyn Future<Output = Response> + Send + 'a>>;

/// What a node serves to its peers: its local store and PDU builder. Object safe:
/// nodes hold an `Arc<dyn LocalService>`.
pub trait LocalService: Send + Sync + 'static {
    /// The node's current routing epoch. The server compares every request's
    /// epoch with it before calling [`LocalService::serve`].
    fn epoch(&self) -> u64;

    /// Execute one request whose epoch matched. The epoch may move on while this
    /// runs: the service re-checks page ownership itself and answers
    /// [`WireError::NotOwner`] for a page it lost. [`Request::Ping`] never reaches
    /// here. [`Request::ShortCut`] is answered with the complete PDUs.
    fn serve(&self, req: Request) -> ServeFuture<'_>;
}

/// Counters of a [`LinkServer`], for metrics and tests.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Requests handed to the service.
    pub served: AtomicU64,
    /// Requests refused for a stale epoch (either side behind).
    pub refused_stale: AtomicU64,
    /// Requests of a kind this node does not know.
    pub unsupported: AtomicU64,
    /// Connections dropped for a protocol violation.
    pub protocol_errors: AtomicU64,
}

/// Accepts peer connections and serves their requests from a [`LocalService`].
///
/// Epoch rule: a request whose epoch differs from `service.epoch()` is answered
/// with `StaleEpoch { current }` and not served. If the sender is behind, it
/// refreshes its table and retries. If the receiver is behind (request epoch
/// newer), it must not serve either: its view may hand out a page it already lost;
/// the sender sees `current` older than its own epoch and retries after the
/// receiver has caught up through its watch (the refresh closure of
/// [`call_with_refresh`] decides how long to wait).
pub struct LinkServer {
    listener: TcpListener,
    service: Arc<dyn LocalService>,
    stats: Arc<ServerStats>,
}

impl fmt::Debug for LinkServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkServer")
            .field("local_addr", &self.listener.local_addr().ok())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl LinkServer {
    /// Bind the listening socket (port 0 picks a free port; see
    /// [`LinkServer::local_addr`]).
    pub async fn bind(
        addr: impl ToSocketAddrs,
        service: Arc<dyn LocalService>,
    ) -> io::Result<LinkServer> {
        Ok(LinkServer {
            listener: TcpListener::bind(addr).await?,
            service,
            stats: Arc::default(),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The server's counters (shared; stay readable after `run` took the server).
    pub fn stats(&self) -> Arc<ServerStats> {
        self.stats.clone()
    }

    /// Accept and serve until `shutdown` turns true (or its sender is dropped).
    /// Shutdown closes the listener and every connection at once; requests in
    /// flight are abandoned and their callers get [`LinkError::Disconnected`], as
    /// after a crash: peers must already cope with that.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> io::Result<()> {
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                _ = shutdown_signalled(&mut shutdown) => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        self.stats.connections.fetch_add(1, Ordering::Relaxed);
                        debug!(%peer, "link connection accepted");
                        conns.spawn(serve_connection(
                            stream,
                            peer,
                            self.service.clone(),
                            self.stats.clone(),
                        ));
                    }
                    Err(e) => {
                        warn!(error = %e, "link accept failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        drop(self.listener);
        conns.shutdown().await;
        Ok(())
    }
}

/// Serve one peer connection: read, check, dispatch; the writer task sends the
/// responses in completion order.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    service: Arc<dyn LocalService>,
    stats: Arc<ServerStats>,
) {
    if let Err(e) = stream.set_nodelay(true) {
        debug!(%peer, error = %e, "set_nodelay failed");
    }
    let (mut r, w) = stream.into_split();
    // Bounded by the serving limit: a slow socket stops the serving tasks, which
    // hold their permits, which stops the reader.
    let (tx, rx) = mpsc::channel::<Encoded>(MAX_SERVING_PER_CONNECTION);
    let writer = AbortOnDrop(tokio::spawn(async move {
        if let Err(e) = writer_loop(w, rx).await {
            debug!(%peer, error = %e, "link write failed");
        }
    }));
    let permits = Arc::new(Semaphore::new(MAX_SERVING_PER_CONNECTION));
    let mut tasks: JoinSet<()> = JoinSet::new();
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    loop {
        while tasks.try_join_next().is_some() {}
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let frame = tokio::select! {
            f = read_frame(&mut r, &mut buf) => f,
            _ = tx.closed() => break,
        };
        let (header, body) = match frame {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(ReadError::Io(e)) => {
                debug!(%peer, error = %e, "link read failed");
                break;
            }
            Err(ReadError::Frame(e)) => {
                stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                warn!(%peer, error = %e, "bad link frame: connection dropped");
                break;
            }
        };
        let id = header.request_id;
        let req = match Request::decode(header.kind, body) {
            Ok(req) => req,
            Err(FrameError::UnknownKind(k)) => {
                stats.unsupported.fetch_add(1, Ordering::Relaxed);
                debug!(%peer, kind = k, "unsupported link request");
                if !reply(
                    &tx,
                    id,
                    service.epoch(),
                    Response::Error(WireError::Unsupported),
                )
                .await
                {
                    break;
                }
                continue;
            }
            Err(e) => {
                stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                warn!(%peer, error = %e, "malformed link request: connection dropped");
                break;
            }
        };
        let current = service.epoch();
        if req == Request::Ping {
            if !reply(&tx, id, current, Response::Pong).await {
                break;
            }
            continue;
        }
        if header.epoch != current {
            stats.refused_stale.fetch_add(1, Ordering::Relaxed);
            debug!(%peer, theirs = header.epoch, ours = current, "stale epoch refused");
            let stale = Response::Error(WireError::StaleEpoch { current });
            if !reply(&tx, id, current, stale).await {
                break;
            }
            continue;
        }
        stats.served.fetch_add(1, Ordering::Relaxed);
        let service = service.clone();
        let tx = tx.clone();
        tasks.spawn(async move {
            let resp = service.serve(req).await;
            reply(&tx, id, service.epoch(), resp).await;
            drop(permit);
        });
    }
    // Dropping `tasks` aborts requests still being served; dropping the last
    // sender lets the writer flush what is queued and close.
    drop(tasks);
    drop(tx);
    drop(writer);
}

/// Queue a response for the writer. False when the writer is gone.
async fn reply(tx: &mpsc::Sender<Encoded>, id: u64, epoch: u64, resp: Response) -> bool {
    let frame = match resp.encode(id, epoch) {
        Ok(f) => f,
        Err(e) => {
            warn!(error = %e, "link response not encodable");
            let err = Response::Error(WireError::Io(format!("response not encodable: {e}")));
            match err.encode(id, epoch) {
                Ok(f) => f,
                Err(_) => return false,
            }
        }
    };
    tx.send(frame).await.is_ok()
}

// ---------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------

/// Settings of a [`LinkClient`].
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// Deadline of one call (waiting for a slot and connecting included).
    pub call_timeout: Duration,
    /// Deadline of one TCP connect.
    pub connect_timeout: Duration,
    /// Calls in flight to one peer.
    pub max_in_flight: usize,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            call_timeout: CALL_TIMEOUT,
            connect_timeout: CONNECT_TIMEOUT,
            max_in_flight: MAX_IN_FLIGHT_PER_PEER,
        }
    }
}

type Reply = Result<Response, LinkError>;

/// The pending map of one connection. `None` once the connection is closed: late
/// registrations fail at once instead of waiting for a timeout.
#[derive(Debug, Default)]
struct Pending {
    map: Mutex<Option<HashMap<u64, oneshot::Sender<Reply>>>>,
}

impl Pending {
    fn open() -> Pending {
        Pending {
            map: Mutex::new(Some(HashMap::new())),
        }
    }

    fn is_open(&self) -> bool {
        self.map.lock().is_some()
    }

    fn register(&self, id: u64, tx: oneshot::Sender<Reply>) -> bool {
        match self.map.lock().as_mut() {
            Some(m) => {
                m.insert(id, tx);
                true
            }
            None => false,
        }
    }

    fn take(&self, id: u64) -> Option<oneshot::Sender<Reply>> {
        self.map.lock().as_mut().and_then(|m| m.remove(&id))
    }

    fn len(&self) -> usize {
        self.map.lock().as_ref().map_or(0, HashMap::len)
    }

    /// Close: every waiting call gets [`LinkError::Disconnected`].
    fn close(&self) {
        let waiting = self.map.lock().take();
        for (_, tx) in waiting.into_iter().flatten() {
            let _ = tx.send(Err(LinkError::Disconnected));
        }
    }
}

/// Removes a call's pending entry when the call ends early (timeout, cancel).
struct PendingGuard<'a> {
    pending: &'a Pending,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.pending.take(self.id);
    }
}

/// One live connection to a peer.
#[derive(Debug)]
struct ClientConn {
    tx: mpsc::Sender<Encoded>,
    pending: Arc<Pending>,
    _reader: AbortOnDrop,
    _writer: AbortOnDrop,
}

impl ClientConn {
    fn start(stream: TcpStream, peer: SocketAddr, max_in_flight: usize) -> ClientConn {
        if let Err(e) = stream.set_nodelay(true) {
            debug!(%peer, error = %e, "set_nodelay failed");
        }
        let (r, w) = stream.into_split();
        let pending = Arc::new(Pending::open());
        // Each call in flight queues one frame: room for all of them.
        let (tx, rx) = mpsc::channel::<Encoded>(max_in_flight);
        let p = pending.clone();
        let writer = AbortOnDrop(tokio::spawn(async move {
            if let Err(e) = writer_loop(w, rx).await {
                debug!(%peer, error = %e, "link write failed");
            }
            p.close();
        }));
        let p = pending.clone();
        let reader = AbortOnDrop(tokio::spawn(client_reader(r, p, peer)));
        ClientConn {
            tx,
            pending,
            _reader: reader,
            _writer: writer,
        }
    }
}

/// Route responses to their calls until the connection ends; then fail the rest.
async fn client_reader(mut r: OwnedReadHalf, pending: Arc<Pending>, peer: SocketAddr) {
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    loop {
        match read_frame(&mut r, &mut buf).await {
            Ok(Some((header, body))) => {
                let resp = Response::decode(header.kind, body)
                    .map_err(|e| LinkError::Protocol(format!("bad response: {e}")));
                match pending.take(header.request_id) {
                    Some(tx) => {
                        let _ = tx.send(resp);
                    }
                    // A response after its call timed out.
                    None => debug!(%peer, id = header.request_id, "late link response dropped"),
                }
            }
            Ok(None) => break,
            Err(e) => {
                warn!(%peer, error = %e, "link connection lost");
                break;
            }
        }
    }
    pending.close();
}

struct ClientInner {
    addr: SocketAddr,
    config: LinkConfig,
    in_flight: Semaphore,
    /// The size of `in_flight`.
    in_flight_limit: usize,
    next_id: AtomicU64,
    /// The current connection; replaced when found closed.
    conn: Mutex<Option<Arc<ClientConn>>>,
    /// Serialises connecting, so a burst of calls makes one connection.
    connecting: tokio::sync::Mutex<()>,
}

/// A multiplexed client of one peer's [`LinkServer`]. Cheap to clone (shared).
/// Connects lazily and reconnects after the connection broke; calls that were in
/// flight on the broken connection fail with [`LinkError::Disconnected`].
#[derive(Clone)]
pub struct LinkClient {
    inner: Arc<ClientInner>,
}

impl fmt::Debug for LinkClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkClient")
            .field("addr", &self.inner.addr)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// What a request expects back, checked before the caller sees the response.
#[derive(Clone, Copy)]
enum Expect {
    Data(u32),
    Done,
    DoneOrMiscompare,
    Pdus,
    Pong,
}

impl Expect {
    fn of(req: &Request) -> Expect {
        match req {
            Request::Read { len, .. } => Expect::Data(*len),
            Request::Write { .. }
            | Request::Flush { .. }
            | Request::Unmap { .. }
            | Request::PageCopy { .. }
            | Request::OrWrite { .. } => Expect::Done,
            Request::CompareAndWrite { .. } => Expect::DoneOrMiscompare,
            Request::ShortCut { .. } => Expect::Pdus,
            Request::Ping => Expect::Pong,
        }
    }

    fn check(self, resp: Response) -> Result<Response, LinkError> {
        let ok = match (&resp, self) {
            (Response::Error(e), _) => return Err(e.clone().into()),
            (Response::Data(d), Expect::Data(len)) => {
                if d.len() != len as usize {
                    return Err(LinkError::Protocol(format!(
                        "read of {len} bytes answered with {}",
                        d.len()
                    )));
                }
                true
            }
            (Response::Done, Expect::Done | Expect::DoneOrMiscompare) => true,
            (Response::Miscompare { .. }, Expect::DoneOrMiscompare) => true,
            (Response::Pdus(_), Expect::Pdus) => true,
            (Response::Pong, Expect::Pong) => true,
            _ => false,
        };
        if ok {
            Ok(resp)
        } else {
            Err(LinkError::Protocol(format!(
                "unexpected response kind {:#04x}",
                resp.kind()
            )))
        }
    }
}

impl LinkClient {
    /// A client of `addr` that connects on its first call.
    pub fn new(addr: SocketAddr, config: LinkConfig) -> LinkClient {
        let max = config.max_in_flight.clamp(1, Semaphore::MAX_PERMITS);
        LinkClient {
            inner: Arc::new(ClientInner {
                addr,
                in_flight: Semaphore::new(max),
                in_flight_limit: max,
                config,
                next_id: AtomicU64::new(1),
                conn: Mutex::new(None),
                connecting: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// A client of `addr`, connected now (an unreachable peer is an error here).
    pub async fn connect(addr: SocketAddr, config: LinkConfig) -> Result<LinkClient, LinkError> {
        let c = LinkClient::new(addr, config);
        c.connection().await?;
        Ok(c)
    }

    /// The peer's address.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// Send `req` stamped with the caller's routing `epoch` and wait for its
    /// response. Error responses become errors ([`LinkError::StaleEpoch`],
    /// [`LinkError::NotOwner`], [`LinkError::Remote`], [`LinkError::Unsupported`]);
    /// a response of the wrong kind, or a read answered with the wrong length, is
    /// [`LinkError::Protocol`]. The whole call is bounded by the call timeout.
    pub async fn call(&self, epoch: u64, req: Request) -> Result<Response, LinkError> {
        let expect = Expect::of(&req);
        match tokio::time::timeout(self.inner.config.call_timeout, self.call_inner(epoch, req))
            .await
        {
            Ok(r) => expect.check(r?),
            Err(_) => Err(LinkError::Timeout),
        }
    }

    /// Round-trip time of a ping (liveness; not subject to the epoch check).
    pub async fn ping(&self, epoch: u64) -> Result<Duration, LinkError> {
        let start = Instant::now();
        self.call(epoch, Request::Ping).await?;
        Ok(start.elapsed())
    }

    async fn call_inner(&self, epoch: u64, req: Request) -> Result<Response, LinkError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = req.encode(id, epoch).map_err(LinkError::Invalid)?;
        let _slot = self
            .inner
            .in_flight
            .acquire()
            .await
            .map_err(|_| LinkError::Disconnected)?;
        let conn = self.connection().await?;
        let (tx, rx) = oneshot::channel();
        if !conn.pending.register(id, tx) {
            return Err(LinkError::Disconnected);
        }
        let _guard = PendingGuard {
            pending: &conn.pending,
            id,
        };
        if conn.tx.send(frame).await.is_err() {
            return Err(LinkError::Disconnected);
        }
        rx.await.map_err(|_| LinkError::Disconnected)?
    }

    /// The open connection, made (again) if there is none.
    async fn connection(&self) -> Result<Arc<ClientConn>, LinkError> {
        if let Some(c) = self.open_conn() {
            return Ok(c);
        }
        let _connecting = self.inner.connecting.lock().await;
        if let Some(c) = self.open_conn() {
            return Ok(c);
        }
        let addr = self.inner.addr;
        let stream =
            tokio::time::timeout(self.inner.config.connect_timeout, TcpStream::connect(addr))
                .await
                .map_err(|_| LinkError::Timeout)??;
        debug!(peer = %addr, "link connected");
        let conn = Arc::new(ClientConn::start(stream, addr, self.inner.in_flight_limit));
        *self.inner.conn.lock() = Some(conn.clone());
        Ok(conn)
    }

    fn open_conn(&self) -> Option<Arc<ClientConn>> {
        let mut slot = self.inner.conn.lock();
        match slot.as_ref() {
            Some(c) if c.pending.is_open() => Some(c.clone()),
            Some(_) => {
                *slot = None;
                None
            }
            None => None,
        }
    }

    /// Calls waiting for a response on the current connection.
    pub fn pending_calls(&self) -> usize {
        self.inner
            .conn
            .lock()
            .as_ref()
            .map_or(0, |c| c.pending.len())
    }
}

/// The link clients of one node: node id -> address -> client, created on demand.
#[derive(Debug)]
pub struct Peers {
    config: LinkConfig,
    peers: Mutex<HashMap<u32, PeerEntry>>,
}

#[derive(Debug)]
struct PeerEntry {
    addr: SocketAddr,
    client: Option<LinkClient>,
}

impl Peers {
    /// An empty registry; clients get `config`.
    pub fn new(config: LinkConfig) -> Peers {
        Peers {
            config,
            peers: Mutex::new(HashMap::new()),
        }
    }

    /// Record (or change) the link address of `node`. A changed address drops the
    /// old client: calls still in flight on it finish or fail on their own.
    pub fn set_address(&self, node: u32, addr: SocketAddr) {
        let mut peers = self.peers.lock();
        match peers.get_mut(&node) {
            Some(e) if e.addr == addr => {}
            _ => {
                peers.insert(node, PeerEntry { addr, client: None });
            }
        }
    }

    /// Forget `node` (it left the cluster).
    pub fn remove(&self, node: u32) {
        self.peers.lock().remove(&node);
    }

    /// The recorded address of `node`.
    pub fn address(&self, node: u32) -> Option<SocketAddr> {
        self.peers.lock().get(&node).map(|e| e.addr)
    }

    /// The client of `node`, created on first use (it connects on its first call).
    pub fn client(&self, node: u32) -> Result<LinkClient, LinkError> {
        let mut peers = self.peers.lock();
        let entry = peers.get_mut(&node).ok_or(LinkError::UnknownPeer(node))?;
        let addr = entry.addr;
        Ok(entry
            .client
            .get_or_insert_with(|| LinkClient::new(addr, self.config.clone()))
            .clone())
    }

    /// [`LinkClient::call`] on the client of `node`.
    pub async fn call(&self, node: u32, epoch: u64, req: Request) -> Result<Response, LinkError> {
        self.client(node)?.call(epoch, req).await
    }
}

/// Run `attempt` and, when it fails with [`LinkError::StaleEpoch`], let `refresh`
/// bring the caller's routing table up to date and try again, at most
/// `max_attempts` attempts in all (at least one; [`DEFAULT_REFRESH_ATTEMPTS`] is a
/// good value). Any other outcome is returned as is.
///
/// `attempt` must look the route up afresh each time (owner node and epoch), since
/// the refresh may have moved the page. `refresh` gets the peer's `current` epoch:
/// when it is newer than the caller's, the caller's table is behind (fetch it);
/// when it is older, the peer is behind and will catch up through its watch (wait
/// a little, or re-check the owner). An error from `refresh` ends the retries.
pub async fn call_with_refresh<T, A, AF, R, RF>(
    max_attempts: u32,
    mut attempt: A,
    mut refresh: R,
) -> Result<T, LinkError>
where
    A: FnMut() -> AF,
    AF: Future<Output = Result<T, LinkError>>,
    R: FnMut(u64) -> RF,
    RF: Future<Output = Result<(), LinkError>>,
{
    let mut tries = 1;
    loop {
        match attempt().await {
            Err(LinkError::StaleEpoch { current }) if tries < max_attempts => {
                refresh(current).await?;
                tries += 1;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::atomic::AtomicUsize;
    use tokio::sync::Notify;

    const VOL: u64 = 9;
    /// A volume whose reads never finish, for hang and disconnect scenarios.
    const HANG_VOL: u64 = 666;
    /// A volume whose reads wait until `barrier` requests are in the service.
    const BARRIER_VOL: u64 = 77;

    /// An in-memory volume store serving the link, counting what it serves.
    struct MemService {
        epoch: AtomicU64,
        calls: AtomicUsize,
        data: Mutex<Vec<u8>>,
        barrier: usize,
        arrived: AtomicUsize,
        all_arrived: Notify,
        hang: Notify,
    }

    impl MemService {
        fn new(epoch: u64) -> Arc<MemService> {
            MemService::with_barrier(epoch, 0)
        }

        fn with_barrier(epoch: u64, barrier: usize) -> Arc<MemService> {
            Arc::new(MemService {
                epoch: AtomicU64::new(epoch),
                calls: AtomicUsize::new(0),
                data: Mutex::new(vec![0; 1 << 20]),
                barrier,
                arrived: AtomicUsize::new(0),
                all_arrived: Notify::new(),
                hang: Notify::new(),
            })
        }

        fn range(&self, offset: u64, len: usize) -> Option<std::ops::Range<usize>> {
            let start = usize::try_from(offset).ok()?;
            let end = start.checked_add(len)?;
            (end <= self.data.lock().len()).then_some(start..end)
        }

        async fn handle(&self, req: Request) -> Response {
            let out_of_range = || Response::Error(WireError::Io("out of range".into()));
            match req {
                Request::Read {
                    volume: HANG_VOL, ..
                } => {
                    self.hang.notified().await;
                    Response::Done
                }
                Request::Read {
                    volume: BARRIER_VOL,
                    offset,
                    len,
                } => {
                    let n = self.arrived.fetch_add(1, Ordering::SeqCst) + 1;
                    if n == self.barrier {
                        self.all_arrived.notify_waiters();
                    } else {
                        let wait = self.all_arrived.notified();
                        tokio::pin!(wait);
                        wait.as_mut().enable();
                        if self.arrived.load(Ordering::SeqCst) < self.barrier {
                            wait.await;
                        }
                    }
                    // Answer in reverse order of offset: the last request first.
                    let delay = (self.barrier as u64).saturating_sub(offset) * 3;
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    Response::Data(Bytes::from(vec![offset as u8; len as usize]))
                }
                Request::Read {
                    volume: VOL,
                    offset,
                    len,
                } => match self.range(offset, len as usize) {
                    Some(r) => Response::Data(Bytes::copy_from_slice(&self.data.lock()[r])),
                    None => out_of_range(),
                },
                Request::Write {
                    volume: VOL,
                    offset,
                    data,
                    ..
                } => match self.range(offset, data.len()) {
                    Some(r) => {
                        self.data.lock()[r].copy_from_slice(&data);
                        Response::Done
                    }
                    None => out_of_range(),
                },
                Request::Flush { volume: VOL } => Response::Done,
                Request::CompareAndWrite {
                    volume: VOL,
                    offset,
                    compare,
                    write,
                } => {
                    let Some(r) = self.range(offset, compare.len()) else {
                        return out_of_range();
                    };
                    if compare.len() != write.len() {
                        return Response::Error(WireError::Io("length mismatch".into()));
                    }
                    let mut d = self.data.lock();
                    match d[r.clone()]
                        .iter()
                        .zip(compare.iter())
                        .position(|(a, b)| a != b)
                    {
                        Some(at) => Response::Miscompare { offset: at as u32 },
                        None => {
                            d[r].copy_from_slice(&write);
                            Response::Done
                        }
                    }
                }
                Request::Unmap {
                    volume: VOL,
                    offset,
                    len,
                    ..
                } => match self.range(offset, len as usize) {
                    Some(r) => {
                        self.data.lock()[r].fill(0);
                        Response::Done
                    }
                    None => out_of_range(),
                },
                Request::ShortCut {
                    volume: VOL,
                    offset,
                    len,
                    state,
                } => {
                    // A stand-in for the PDU builder: the ITT and StatSN it was
                    // given, then the data.
                    let Some(r) = self.range(offset, len as usize) else {
                        return out_of_range();
                    };
                    let mut p = BytesMut::new();
                    p.put_u32(state.itt);
                    p.put_u32(state.stat_sn);
                    p.extend_from_slice(&self.data.lock()[r]);
                    Response::Pdus(p.freeze())
                }
                _ => Response::Error(WireError::NotOwner),
            }
        }
    }

    impl LocalService for MemService {
        fn epoch(&self) -> u64 {
            self.epoch.load(Ordering::SeqCst)
        }

        fn serve(&self, req: Request) -> ServeFuture<'_> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Box::pin(self.handle(req))
        }
    }

    /// A running server on 127.0.0.1:0 that stops when dropped or `stop`ped.
    struct Running {
        addr: SocketAddr,
        stats: Arc<ServerStats>,
        shutdown: watch::Sender<bool>,
        task: JoinHandle<io::Result<()>>,
    }

    impl Running {
        async fn start(service: Arc<MemService>) -> Running {
            Running::start_at("127.0.0.1:0".parse().unwrap(), service).await
        }

        async fn start_at(addr: SocketAddr, service: Arc<MemService>) -> Running {
            let server = LinkServer::bind(addr, service).await.unwrap();
            let addr = server.local_addr().unwrap();
            let stats = server.stats();
            let (shutdown, rx) = watch::channel(false);
            let task = tokio::spawn(server.run(rx));
            Running {
                addr,
                stats,
                shutdown,
                task,
            }
        }

        async fn stop(self) {
            self.shutdown.send(true).unwrap();
            self.task.await.unwrap().unwrap();
        }
    }

    fn quick() -> LinkConfig {
        LinkConfig {
            call_timeout: Duration::from_secs(5),
            ..LinkConfig::default()
        }
    }

    fn state() -> ConnState {
        ConnState {
            itt: 0x1234_5678,
            lun: 0x0001_0000_0000_0000,
            stat_sn: 42,
            exp_cmd_sn: 7,
            max_cmd_sn: 70,
            data_sn: 3,
            max_recv_data_segment_length: 8192,
            max_burst_length: 1 << 20,
            header_digest: true,
            data_digest: false,
            expected_data_transfer_length: 4096,
        }
    }

    #[tokio::test]
    async fn read_write_roundtrip_over_loopback() {
        let svc = MemService::new(5);
        let server = Running::start(svc.clone()).await;
        let c = LinkClient::connect(server.addr, quick()).await.unwrap();

        let data = Bytes::from((0..4096u32).map(|i| (i * 7) as u8).collect::<Vec<_>>());
        let w = Request::Write {
            volume: VOL,
            offset: 8192,
            data: data.clone(),
            fua: true,
            replica: false,
        };
        assert_eq!(c.call(5, w).await.unwrap(), Response::Done);
        let r = Request::Read {
            volume: VOL,
            offset: 8192,
            len: 4096,
        };
        assert_eq!(c.call(5, r).await.unwrap(), Response::Data(data.clone()));
        assert_eq!(
            c.call(5, Request::Flush { volume: VOL }).await.unwrap(),
            Response::Done
        );

        // COMPARE AND WRITE: a match writes, a mismatch reports the first offset.
        let cw = |compare: Bytes| Request::CompareAndWrite {
            volume: VOL,
            offset: 8192,
            compare,
            write: Bytes::from(vec![0xee; 512]),
        };
        let mut wrong = data.slice(..512).to_vec();
        wrong[100] ^= 1;
        assert_eq!(
            c.call(5, cw(Bytes::from(wrong))).await.unwrap(),
            Response::Miscompare { offset: 100 }
        );
        assert_eq!(
            c.call(5, cw(data.slice(..512))).await.unwrap(),
            Response::Done
        );
        let r = Request::Read {
            volume: VOL,
            offset: 8192,
            len: 1024,
        };
        let Response::Data(got) = c.call(5, r).await.unwrap() else {
            panic!("not data")
        };
        assert_eq!(&got[..512], &[0xee; 512][..]);
        assert_eq!(&got[512..], &data[512..1024]);

        // UNMAP zeroes (this store has LBPRZ semantics).
        let u = Request::Unmap {
            volume: VOL,
            offset: 8192,
            len: 4096,
            replica: true,
        };
        assert_eq!(c.call(5, u).await.unwrap(), Response::Done);
        let r = Request::Read {
            volume: VOL,
            offset: 8192,
            len: 4096,
        };
        assert_eq!(
            c.call(5, r).await.unwrap(),
            Response::Data(Bytes::from(vec![0; 4096]))
        );

        // Short-cut: the state reaches the owner's PDU builder intact.
        let s = Request::ShortCut {
            volume: VOL,
            offset: 0,
            len: 16,
            state: state(),
        };
        let Response::Pdus(p) = c.call(5, s).await.unwrap() else {
            panic!("not pdus")
        };
        assert_eq!(&p[..4], &0x1234_5678u32.to_be_bytes());
        assert_eq!(&p[4..8], &42u32.to_be_bytes());
        assert_eq!(p.len(), 8 + 16);

        // Error responses become errors.
        let err = c.call(5, Request::Flush { volume: 1 }).await.unwrap_err();
        assert!(matches!(err, LinkError::NotOwner), "{err:?}");
        let r = Request::Read {
            volume: VOL,
            offset: 1 << 40,
            len: 1,
        };
        let err = c.call(5, r).await.unwrap_err();
        assert!(
            matches!(err, LinkError::Remote(ref m) if m == "out of range"),
            "{err:?}"
        );

        assert!(c.ping(5).await.unwrap() < Duration::from_secs(5));
        assert_eq!(server.stats.connections.load(Ordering::SeqCst), 1);
        assert_eq!(c.pending_calls(), 0);
        server.stop().await;
    }

    #[tokio::test]
    async fn stale_epoch_is_refused_without_serving() {
        let svc = MemService::new(7);
        let server = Running::start(svc.clone()).await;
        let c = LinkClient::new(server.addr, quick());
        let write = || Request::Write {
            volume: VOL,
            offset: 0,
            data: Bytes::from_static(b"must not land"),
            fua: false,
            replica: false,
        };
        // Sender behind.
        let err = c.call(6, write()).await.unwrap_err();
        assert!(
            matches!(err, LinkError::StaleEpoch { current: 7 }),
            "{err:?}"
        );
        // Receiver behind: refused as well.
        let err = c.call(8, write()).await.unwrap_err();
        assert!(
            matches!(err, LinkError::StaleEpoch { current: 7 }),
            "{err:?}"
        );
        assert_eq!(
            svc.calls.load(Ordering::SeqCst),
            0,
            "the service was called"
        );
        assert_eq!(&svc.data.lock()[..13], &[0; 13]);
        assert_eq!(server.stats.refused_stale.load(Ordering::SeqCst), 2);
        // A ping is liveness, not service: answered whatever the epoch.
        c.ping(1).await.unwrap();
        assert_eq!(svc.calls.load(Ordering::SeqCst), 0);

        // The retry pattern: refresh to the peer's epoch, then it is served once.
        let epoch = AtomicU64::new(3);
        let refreshes = AtomicUsize::new(0);
        let r = call_with_refresh(
            DEFAULT_REFRESH_ATTEMPTS,
            || c.call(epoch.load(Ordering::SeqCst), write()),
            |current| {
                refreshes.fetch_add(1, Ordering::SeqCst);
                epoch.store(current, Ordering::SeqCst);
                async { Ok(()) }
            },
        )
        .await;
        assert_eq!(r.unwrap(), Response::Done);
        assert_eq!(refreshes.load(Ordering::SeqCst), 1);
        assert_eq!(svc.calls.load(Ordering::SeqCst), 1);

        // A refresh that does not help: bounded attempts, still never served.
        let refreshes = AtomicUsize::new(0);
        let r = call_with_refresh(
            DEFAULT_REFRESH_ATTEMPTS,
            || c.call(2, write()),
            |_| {
                refreshes.fetch_add(1, Ordering::SeqCst);
                async { Ok(()) }
            },
        )
        .await;
        assert!(matches!(r, Err(LinkError::StaleEpoch { current: 7 })));
        assert_eq!(
            refreshes.load(Ordering::SeqCst),
            DEFAULT_REFRESH_ATTEMPTS as usize - 1
        );
        assert_eq!(svc.calls.load(Ordering::SeqCst), 1);
        server.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_calls_are_multiplexed() {
        const N: usize = 32;
        let svc = MemService::with_barrier(1, N);
        let server = Running::start(svc.clone()).await;
        let peers = Arc::new(Peers::new(quick()));
        peers.set_address(2, server.addr);
        let mut calls = JoinSet::new();
        for i in 0..N as u64 {
            let peers = peers.clone();
            calls.spawn(async move {
                let r = Request::Read {
                    volume: BARRIER_VOL,
                    offset: i,
                    len: 100 + i as u32,
                };
                (i, peers.call(2, 1, r).await, Instant::now())
            });
        }
        let mut done = Vec::new();
        while let Some(j) = calls.join_next().await {
            let (i, resp, at) = j.unwrap();
            // Each call gets its own answer, whatever the order they came back in.
            assert_eq!(
                resp.unwrap(),
                Response::Data(Bytes::from(vec![i as u8; 100 + i as usize]))
            );
            done.push((at, i));
        }
        // All N were inside the service at once (the barrier), over one connection.
        assert_eq!(svc.arrived.load(Ordering::SeqCst), N);
        assert_eq!(server.stats.connections.load(Ordering::SeqCst), 1);
        // The last request was answered before the first.
        done.sort();
        let order: Vec<u64> = done.iter().map(|d| d.1).collect();
        let pos = |i| order.iter().position(|&x| x == i).unwrap();
        assert!(pos(N as u64 - 1) < pos(0), "order {order:?}");
        server.stop().await;
    }

    #[tokio::test]
    async fn peer_restart_reconnects() {
        let svc = MemService::new(1);
        let server = Running::start(svc.clone()).await;
        let addr = server.addr;
        let c = LinkClient::new(addr, quick());
        c.ping(1).await.unwrap();

        // A call in flight when the peer goes down fails with Disconnected.
        let hung = tokio::spawn({
            let c = c.clone();
            async move {
                let r = Request::Read {
                    volume: HANG_VOL,
                    offset: 0,
                    len: 1,
                };
                c.call(1, r).await
            }
        });
        while svc.calls.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        server.stop().await;
        let err = hung.await.unwrap().unwrap_err();
        assert!(matches!(err, LinkError::Disconnected), "{err:?}");
        assert_eq!(c.pending_calls(), 0);
        // While it is down, calls fail fast.
        let err = c.ping(1).await.unwrap_err();
        assert!(matches!(err, LinkError::Io(_)), "{err:?}");

        // The peer comes back on the same address: the next call reconnects.
        let svc2 = MemService::new(1);
        let server = Running::start_at(addr, svc2.clone()).await;
        let w = Request::Write {
            volume: VOL,
            offset: 0,
            data: Bytes::from_static(b"after restart"),
            fua: false,
            replica: false,
        };
        assert_eq!(c.call(1, w).await.unwrap(), Response::Done);
        assert_eq!(&svc2.data.lock()[..13], b"after restart");
        assert_eq!(server.stats.connections.load(Ordering::SeqCst), 1);
        server.stop().await;
    }

    fn raw_header(kind: u8, id: u64, epoch: u64, body_len: u32) -> [u8; HEADER_LEN] {
        let mut h = [0; HEADER_LEN];
        Header {
            kind,
            request_id: id,
            epoch,
            body_len,
        }
        .write(&mut h);
        h
    }

    /// Read until EOF (or reset); returns the bytes received.
    async fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got))
            .await
            .expect("the server did not close the connection");
        got
    }

    #[tokio::test]
    async fn oversized_frame_is_refused_and_connection_closed() {
        let svc = MemService::new(1);
        let server = Running::start(svc.clone()).await;
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        // Only the header: the server must refuse it without waiting for a body.
        s.write_all(&raw_header(kind::WRITE, 1, 1, MAX_BODY_LEN + 1))
            .await
            .unwrap();
        let got = read_to_close(&mut s).await;
        assert!(got.is_empty(), "no answer expected, got {got:?}");
        assert_eq!(svc.calls.load(Ordering::SeqCst), 0);
        assert_eq!(server.stats.protocol_errors.load(Ordering::SeqCst), 1);

        // An unknown kind with a sound header is answered, and the link goes on.
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        let mut frame = raw_header(0x3f, 99, 1, 3).to_vec();
        frame.extend_from_slice(b"abc");
        frame.extend_from_slice(&Request::Ping.encode(100, 1).unwrap().to_bytes());
        s.write_all(&frame).await.unwrap();
        let mut buf = BytesMut::new();
        let (mut r, _w) = s.into_split();
        let (h, body) = read_frame(&mut r, &mut buf).await.unwrap().unwrap();
        assert_eq!(h.request_id, 99);
        assert_eq!(
            Response::decode(h.kind, body).unwrap(),
            Response::Error(WireError::Unsupported)
        );
        let (h, body) = read_frame(&mut r, &mut buf).await.unwrap().unwrap();
        assert_eq!(
            (h.request_id, Response::decode(h.kind, body).unwrap()),
            (100, Response::Pong)
        );

        // A bad magic closes the connection too; the server keeps serving others.
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        assert!(read_to_close(&mut s).await.is_empty());
        LinkClient::new(server.addr, quick()).ping(1).await.unwrap();
        assert_eq!(svc.calls.load(Ordering::SeqCst), 0);
        server.stop().await;
    }

    #[tokio::test]
    async fn oversized_request_is_not_sent() {
        let c = LinkClient::new("127.0.0.1:9".parse().unwrap(), quick());
        let r = Request::Read {
            volume: VOL,
            offset: 0,
            len: MAX_DATA_LEN + 1,
        };
        let err = c.call(1, r).await.unwrap_err();
        assert!(
            matches!(err, LinkError::Invalid(FrameError::DataTooLong { .. })),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn timeout_when_peer_hangs() {
        // A peer that accepts and reads but never answers.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sink = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut b = vec![0; 4096];
            while s.read(&mut b).await.unwrap_or(0) > 0 {}
        });
        let config = LinkConfig {
            call_timeout: Duration::from_millis(200),
            ..LinkConfig::default()
        };
        let c = LinkClient::new(addr, config);
        let start = Instant::now();
        let err = c.ping(1).await.unwrap_err();
        assert!(matches!(err, LinkError::Timeout), "{err:?}");
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(200) && took < Duration::from_secs(3),
            "{took:?}"
        );
        // The timed-out call left nothing behind in the pending map.
        assert_eq!(c.pending_calls(), 0);
        sink.abort();
    }

    #[tokio::test]
    async fn hung_request_times_out_and_connection_stays_usable() {
        let svc = MemService::new(1);
        let server = Running::start(svc.clone()).await;
        let config = LinkConfig {
            call_timeout: Duration::from_millis(200),
            ..LinkConfig::default()
        };
        let c = LinkClient::new(server.addr, config);
        let r = Request::Read {
            volume: HANG_VOL,
            offset: 0,
            len: 1,
        };
        let err = c.call(1, r).await.unwrap_err();
        assert!(matches!(err, LinkError::Timeout), "{err:?}");
        // The late answer (released now) is dropped; other calls are unaffected.
        svc.hang.notify_waiters();
        c.ping(1).await.unwrap();
        assert_eq!(c.pending_calls(), 0);
        assert_eq!(server.stats.connections.load(Ordering::SeqCst), 1);
        server.stop().await;
    }

    #[test]
    fn peers_registry_creates_clients_on_demand() {
        let peers = Peers::new(LinkConfig::default());
        assert!(matches!(peers.client(3), Err(LinkError::UnknownPeer(3))));
        let a: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:4001".parse().unwrap();
        peers.set_address(3, a);
        let c1 = peers.client(3).unwrap();
        let c2 = peers.client(3).unwrap();
        assert!(Arc::ptr_eq(&c1.inner, &c2.inner));
        peers.set_address(3, a);
        assert!(Arc::ptr_eq(&c1.inner, &peers.client(3).unwrap().inner));
        peers.set_address(3, b);
        let c3 = peers.client(3).unwrap();
        assert_eq!(c3.addr(), b);
        assert!(!Arc::ptr_eq(&c1.inner, &c3.inner));
        peers.remove(3);
        assert_eq!(peers.address(3), None);
    }

    #[test]
    fn header_is_validated_before_the_body() {
        // A wrong magic is caught from the first four bytes on.
        assert_eq!(
            parse_frame(&mut BytesMut::from(&b"GET "[..])),
            Err(FrameError::BadMagic(*b"GET "))
        );
        assert_eq!(parse_frame(&mut BytesMut::from(&b"MLN"[..])), Ok(None));
        let mut buf = BytesMut::from(&raw_header(kind::READ, 1, 1, MAX_BODY_LEN + 1)[..]);
        assert!(matches!(
            parse_frame(&mut buf),
            Err(FrameError::BodyTooLong { .. })
        ));
        let mut h = raw_header(kind::READ, 1, 1, 0);
        h[off::VERSION] = 2;
        assert_eq!(
            parse_frame(&mut BytesMut::from(&h[..])),
            Err(FrameError::BadVersion(2))
        );
        let mut h = raw_header(kind::READ, 1, 1, 0);
        h[off::RESERVED2 + 3] = 1;
        assert_eq!(
            parse_frame(&mut BytesMut::from(&h[..])),
            Err(FrameError::ReservedNotZero)
        );
        // A partial frame is "need more", not an error, and is left in place.
        let full = Request::Write {
            volume: 1,
            offset: 2,
            data: Bytes::from_static(b"hello"),
            fua: false,
            replica: false,
        }
        .encode(5, 6)
        .unwrap()
        .to_bytes();
        let mut buf = BytesMut::from(&full[..full.len() - 1]);
        assert_eq!(parse_frame(&mut buf), Ok(None));
        assert_eq!(buf.len(), full.len() - 1);
        buf.extend_from_slice(&full[full.len() - 1..]);
        let (h, body) = parse_frame(&mut buf).unwrap().unwrap();
        assert_eq!((h.kind, h.request_id, h.epoch), (kind::WRITE, 5, 6));
        assert!(buf.is_empty());
        assert_eq!(
            Request::decode(h.kind, body).unwrap(),
            Request::Write {
                volume: 1,
                offset: 2,
                data: Bytes::from_static(b"hello"),
                fua: false,
                replica: false,
            }
        );
    }

    #[test]
    fn short_cut_state_with_zero_segment_length_is_refused() {
        let bad = ConnState {
            max_recv_data_segment_length: 0,
            ..state()
        };
        let r = Request::ShortCut {
            volume: 1,
            offset: 0,
            len: 1,
            state: bad,
        };
        assert_eq!(
            r.encode(1, 1).unwrap_err(),
            FrameError::InvalidField("max_recv_data_segment_length")
        );
    }

    #[test]
    fn long_error_messages_are_cut_at_a_char_boundary() {
        let msg = "é".repeat(MAX_ERROR_MESSAGE_LEN);
        let enc = Response::Error(WireError::Io(msg)).encode(1, 1).unwrap();
        let mut buf = BytesMut::from(&enc.to_bytes()[..]);
        let (h, body) = parse_frame(&mut buf).unwrap().unwrap();
        let Response::Error(WireError::Io(m)) = Response::decode(h.kind, body).unwrap() else {
            panic!("not an io error")
        };
        assert_eq!(m.len(), MAX_ERROR_MESSAGE_LEN);
        assert!(m.chars().all(|c| c == 'é'));
    }

    #[test]
    fn data_limit_covers_the_largest_scsi_transfer() {
        assert!(u64::from(MAX_DATA_LEN) >= crate::scsi::MAX_TRANSFER_BYTES);
    }

    fn arb_bytes(max: usize) -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
    }

    fn arb_state() -> impl Strategy<Value = ConnState> {
        (
            any::<(u32, u64, u32, u32, u32, u32)>(),
            MIN_DATA_LENGTH..=MAX_DATA_LENGTH,
            MIN_DATA_LENGTH..=MAX_DATA_LENGTH,
            any::<(bool, bool, u32)>(),
        )
            .prop_map(
                |((itt, lun, s, e, m, d), mrdsl, mbl, (hd, dd, edtl))| ConnState {
                    itt,
                    lun,
                    stat_sn: s,
                    exp_cmd_sn: e,
                    max_cmd_sn: m,
                    data_sn: d,
                    max_recv_data_segment_length: mrdsl,
                    max_burst_length: mbl,
                    header_digest: hd,
                    data_digest: dd,
                    expected_data_transfer_length: edtl,
                },
            )
    }

    fn arb_request() -> impl Strategy<Value = Request> {
        let len = 0..=MAX_DATA_LEN;
        prop_oneof![
            (any::<u64>(), any::<u64>(), len.clone()).prop_map(|(volume, offset, len)| {
                Request::Read {
                    volume,
                    offset,
                    len,
                }
            }),
            (
                any::<u64>(),
                any::<u64>(),
                arb_bytes(64),
                any::<bool>(),
                any::<bool>()
            )
                .prop_map(|(volume, offset, data, fua, replica)| Request::Write {
                    volume,
                    offset,
                    data,
                    fua,
                    replica
                }),
            any::<u64>().prop_map(|volume| Request::Flush { volume }),
            (any::<u64>(), any::<u64>(), arb_bytes(64), arb_bytes(64)).prop_map(
                |(volume, offset, compare, write)| Request::CompareAndWrite {
                    volume,
                    offset,
                    compare,
                    write
                }
            ),
            any::<(u64, u64, u64, bool)>().prop_map(|(volume, offset, len, replica)| {
                Request::Unmap {
                    volume,
                    offset,
                    len,
                    replica,
                }
            }),
            (any::<u64>(), any::<u64>(), len, arb_state()).prop_map(
                |(volume, offset, len, state)| Request::ShortCut {
                    volume,
                    offset,
                    len,
                    state
                }
            ),
            (any::<u64>(), any::<u64>(), arb_bytes(64)).prop_map(|(volume, offset, data)| {
                Request::PageCopy {
                    volume,
                    offset,
                    data,
                }
            }),
            (any::<u64>(), any::<u64>(), arb_bytes(64)).prop_map(|(volume, offset, data)| {
                Request::OrWrite {
                    volume,
                    offset,
                    data,
                }
            }),
            Just(Request::Ping),
        ]
    }

    fn arb_response() -> impl Strategy<Value = Response> {
        prop_oneof![
            arb_bytes(64).prop_map(Response::Data),
            Just(Response::Done),
            any::<u32>().prop_map(|offset| Response::Miscompare { offset }),
            arb_bytes(64).prop_map(Response::Pdus),
            Just(Response::Pong),
            any::<u64>().prop_map(|current| Response::Error(WireError::StaleEpoch { current })),
            Just(Response::Error(WireError::NotOwner)),
            ".{0,40}".prop_map(|m| Response::Error(WireError::Io(m))),
            Just(Response::Error(WireError::Unsupported)),
        ]
    }

    const KINDS: [u8; 13] = [
        kind::READ,
        kind::WRITE,
        kind::FLUSH,
        kind::COMPARE_AND_WRITE,
        kind::UNMAP,
        kind::SHORT_CUT,
        kind::PING,
        kind::DATA,
        kind::DONE,
        kind::MISCOMPARE,
        kind::PDUS,
        kind::PONG,
        kind::ERROR,
    ];

    proptest! {
        #[test]
        fn garbage_bytes_do_not_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            // As a stream of frames.
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some((h, body))) = parse_frame(&mut buf) {
                let _ = Request::decode(h.kind, body.clone());
                let _ = Response::decode(h.kind, body);
            }
            // As the body of every kind.
            for k in KINDS {
                let _ = Request::decode(k, Bytes::from(bytes.clone()));
                let _ = Response::decode(k, Bytes::from(bytes.clone()));
            }
        }

        #[test]
        fn garbage_after_a_sound_header_does_not_panic(
            k in any::<u8>(),
            body in proptest::collection::vec(any::<u8>(), 0..128),
        ) {
            let mut frame = raw_header(k, 1, 2, body.len() as u32).to_vec();
            frame.extend_from_slice(&body);
            let mut buf = BytesMut::from(&frame[..]);
            let (h, b) = parse_frame(&mut buf).unwrap().unwrap();
            prop_assert_eq!(b.len(), body.len());
            let _ = Request::decode(h.kind, b.clone());
            let _ = Response::decode(h.kind, b);
        }

        #[test]
        fn request_roundtrip(req in arb_request(), id in any::<u64>(), epoch in any::<u64>()) {
            let enc = req.encode(id, epoch).unwrap();
            let wire = enc.to_bytes();
            prop_assert_eq!(wire.len(), enc.len());
            let mut buf = BytesMut::from(&wire[..]);
            let (h, body) = parse_frame(&mut buf).unwrap().unwrap();
            prop_assert!(buf.is_empty());
            prop_assert_eq!((h.request_id, h.epoch, h.kind), (id, epoch, req.kind()));
            prop_assert_eq!(Request::decode(h.kind, body).unwrap(), req);
        }

        #[test]
        fn response_roundtrip(resp in arb_response(), id in any::<u64>(), epoch in any::<u64>()) {
            let wire = resp.encode(id, epoch).unwrap().to_bytes();
            let mut buf = BytesMut::from(&wire[..]);
            let (h, body) = parse_frame(&mut buf).unwrap().unwrap();
            prop_assert_eq!((h.request_id, h.epoch), (id, epoch));
            prop_assert_eq!(Response::decode(h.kind, body).unwrap(), resp);
        }
    }
}
