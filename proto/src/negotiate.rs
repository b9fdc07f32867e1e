//! Login and text negotiation (RFC 7143 §6.2, §13). Every key is declared once in
//! [`KEYS`] with its RFC type (list, numerical minimum or maximum, boolean AND or
//! OR, declarative), its range and default, who may send it, in which stages, and
//! whether it is leading-only or irrelevant to discovery sessions. One
//! [`Negotiator`] applies the rules to whatever arrives, for either role.
//!
//! Sans I/O: the login state machine feeds in the pairs [`crate::text`] parsed and
//! sends back what the negotiator returns. Answers follow RFC 7143 §6.2: an unknown
//! key gets `NotUnderstood`, a malformed or out-of-range value `Reject`, a key
//! irrelevant to the session `Irrelevant`; a key sent twice, a key from the wrong
//! side or in the wrong stage is a protocol error ([`NegotiationError`]).
//!
//! Decisions worth knowing:
//! - DataPDUInOrder and DataSequenceInOrder are boolean **OR** keys (RFC 7143
//!   §13.18, §13.19): with our default `Yes` the result is always `Yes`, so the
//!   data path only ever sees in-order Data-Out. Set the limits to `No` only once it
//!   can place data at any offset.
//! - IFMarker/OFMarker are obsolete (RFC 7143 §13.25): we answer `No`, the
//!   alternative the RFC allows, because older initiators still send them;
//!   IFMarkInt/OFMarkInt get the `Reject` the RFC requires.
//! - A leading-only key on a non-leading connection is answered `Irrelevant`: the
//!   session already settled it.
//! - FirstBurstLength is clamped to MaxBurstLength in [`SessionParams`], on both
//!   sides alike, so the two keys may be settled in any order.

use std::collections::HashSet;

use thiserror::Error;

use crate::text::{format_bool, parse_bool, parse_number, KeyValue};

/// Answer to a key the responder does not know (RFC 7143 §6.2).
pub const NOT_UNDERSTOOD: &str = "NotUnderstood";
/// Answer to a key that does not apply to this session (RFC 7143 §6.2).
pub const IRRELEVANT: &str = "Irrelevant";
/// Answer to an unacceptable or malformed value (RFC 7143 §6.2).
pub const REJECT: &str = "Reject";

/// Smallest MaxRecvDataSegmentLength, MaxBurstLength and FirstBurstLength
/// (RFC 7143 §13.12 to §13.14).
pub const MIN_DATA_LENGTH: u32 = 512;
/// Largest of those three: 2^24 - 1, what the 24-bit DataSegmentLength can say.
pub const MAX_DATA_LENGTH: u32 = (1 << 24) - 1;
/// Largest DefaultTime2Wait and DefaultTime2Retain, in seconds (RFC 7143 §13.15, §13.16).
pub const MAX_TIME2: u32 = 3600;
/// Largest iSCSI name, in bytes (RFC 7143 §4.2.7.1).
pub const MAX_NAME_LEN: usize = 223;
/// MaxRecvDataSegmentLength in force until a side declares its own (RFC 7143 §13.12).
pub const DEFAULT_MAX_RECV_DATA_SEGMENT_LENGTH: u32 = 8192;
/// The iSCSIProtocolLevel of RFC 7143 itself (RFC 7143 §13.24).
pub const ISCSI_PROTOCOL_LEVEL: u32 = 1;

/// Every key RFC 7143 §13 (and §12 for AuthMethod) defines. The discriminant
/// indexes [`KEYS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Key {
    HeaderDigest,
    DataDigest,
    AuthMethod,
    MaxConnections,
    SendTargets,
    TargetName,
    InitiatorName,
    TargetAlias,
    InitiatorAlias,
    TargetAddress,
    TargetPortalGroupTag,
    InitialR2T,
    ImmediateData,
    MaxRecvDataSegmentLength,
    MaxBurstLength,
    FirstBurstLength,
    DefaultTime2Wait,
    DefaultTime2Retain,
    MaxOutstandingR2T,
    DataPDUInOrder,
    DataSequenceInOrder,
    ErrorRecoveryLevel,
    SessionType,
    TaskReporter,
    IscsiProtocolLevel,
    NodeArchitecture,
    IFMarker,
    OFMarker,
    IFMarkInt,
    OFMarkInt,
}

impl Key {
    /// The key's declaration.
    pub fn spec(self) -> &'static KeySpec {
        &KEYS[self as usize]
    }

    /// The key's name on the wire.
    pub fn name(self) -> &'static str {
        self.spec().name
    }
}

/// How a key is negotiated (RFC 7143 §6.2.1, §6.2.2) and what values it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The offerer lists values in preference order; the answer is the first one
    /// the responder supports, or `Reject`.
    List { default: &'static str },
    /// A number; the result is the smaller of offer and responder's value.
    Min { min: u32, max: u32, default: u32 },
    /// A number; the result is the larger of offer and responder's value.
    Max { min: u32, max: u32, default: u32 },
    /// `Yes`/`No`; the result is `Yes` only if both say `Yes`.
    And { default: bool },
    /// `Yes`/`No`; the result is `Yes` if either says `Yes`.
    Or { default: bool },
    /// Text one side declares; not answered.
    DeclaredText { max_len: usize },
    /// A number one side declares; not answered.
    DeclaredNumber { min: u32, max: u32, default: u32 },
    /// SessionType: `Normal` or `Discovery`, declared by the initiator.
    DeclaredSessionType,
    /// Obsoleted by RFC 7143 §13.25; always answered with this constant.
    Obsolete { answer: &'static str },
    /// SendTargets (RFC 7143 §13.3): the caller builds the answer from its targets.
    SendTargets,
}

/// Who may send a key (the "Senders" line of RFC 7143 §13).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Senders {
    /// Only the initiator.
    Initiator,
    /// Only the target.
    Target,
    /// Either side.
    Both,
}

impl Senders {
    fn allows(self, role: Role) -> bool {
        matches!(
            (self, role),
            (Senders::Both, _)
                | (Senders::Initiator, Role::Initiator)
                | (Senders::Target, Role::Target)
        )
    }
}

/// Where a connection is in its life, which decides the keys it may negotiate
/// (RFC 7143 §6.3: the login stages, then full feature phase text requests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Stage {
    /// Login, CSG = 0: authentication keys and declarations.
    #[default]
    Security,
    /// Login, CSG = 1: operational keys and declarations.
    Operational,
    /// Full feature phase: Text requests (SendTargets, "ALL" keys).
    FullFeature,
}

const SEC: u8 = 1;
const OP: u8 = 2;
const FFP: u8 = 4;
const LOGIN: u8 = SEC | OP;
const ALL: u8 = SEC | OP | FFP;

/// One key's declaration: a row of RFC 7143 §13.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeySpec {
    /// Which key.
    pub key: Key,
    /// Its wire name.
    pub name: &'static str,
    /// How it is negotiated, its range and default.
    pub kind: Kind,
    /// Who may send it.
    pub senders: Senders,
    /// Stages it may be sent in (bit set of `SEC`, `OP`, `FFP`).
    stages: u8,
    /// "LO": only on the leading connection of a session.
    pub leading_only: bool,
    /// "Irrelevant when: SessionType=Discovery".
    pub discovery_irrelevant: bool,
}

impl KeySpec {
    /// `true` when the key may be sent in `stage`.
    pub fn allowed_in(&self, stage: Stage) -> bool {
        let bit = match stage {
            Stage::Security => SEC,
            Stage::Operational => OP,
            Stage::FullFeature => FFP,
        };
        self.stages & bit != 0
    }
}

const fn spec(
    key: Key,
    name: &'static str,
    kind: Kind,
    senders: Senders,
    stages: u8,
    leading_only: bool,
    discovery_irrelevant: bool,
) -> KeySpec {
    KeySpec {
        key,
        name,
        kind,
        senders,
        stages,
        leading_only,
        discovery_irrelevant,
    }
}

/// The table: every key, declared once, in [`Key`] order.
#[rustfmt::skip]
pub static KEYS: [KeySpec; 30] = {
    use Key as K;
    use Kind::*;
    use Senders::{Both, Initiator as I, Target as T};
    const DATA: (u32, u32) = (MIN_DATA_LENGTH, MAX_DATA_LENGTH);
    const MRDSL: Kind = DeclaredNumber { min: DATA.0, max: DATA.1, default: DEFAULT_MAX_RECV_DATA_SEGMENT_LENGTH };
    const NAME: Kind = DeclaredText { max_len: MAX_NAME_LEN };
    const TEXT: Kind = DeclaredText { max_len: 255 };
    //   key                       name                        kind                                                  senders stages  LO     discovery-irrelevant
    [
        // §13.1: CRC32C or None, per connection, login only.
        spec(K::HeaderDigest,         "HeaderDigest",             List { default: "None" },                             Both, OP,      false, false),
        spec(K::DataDigest,           "DataDigest",               List { default: "None" },                             Both, OP,      false, false),
        // §12.1: the security stage's main key.
        spec(K::AuthMethod,           "AuthMethod",               List { default: "None" },                             Both, SEC,     false, false),
        // §13.2.
        spec(K::MaxConnections,       "MaxConnections",           Min { min: 1, max: 65535, default: 1 },               Both, OP,      true,  true),
        // §13.3: full feature phase only; the caller answers it.
        spec(K::SendTargets,          "SendTargets",              SendTargets,                                          I,    FFP,     false, false),
        // §13.4 to §13.9: declarations.
        spec(K::TargetName,           "TargetName",               NAME,                                                 Both, LOGIN,   false, false),
        spec(K::InitiatorName,        "InitiatorName",            NAME,                                                 I,    LOGIN,   false, false),
        spec(K::TargetAlias,          "TargetAlias",              TEXT,                                                 T,    ALL,     false, false),
        spec(K::InitiatorAlias,       "InitiatorAlias",           TEXT,                                                 I,    ALL,     false, false),
        spec(K::TargetAddress,        "TargetAddress",            TEXT,                                                 T,    ALL,     false, false),
        spec(K::TargetPortalGroupTag, "TargetPortalGroupTag",     DeclaredNumber { min: 0, max: 65535, default: 0 },    T,    LOGIN,   false, false),
        // §13.10, §13.11.
        spec(K::InitialR2T,           "InitialR2T",               Or { default: true },                                 Both, OP,      true,  true),
        spec(K::ImmediateData,        "ImmediateData",            And { default: true },                                Both, OP,      true,  true),
        // §13.12: each direction declares what it can receive; renegotiable later.
        spec(K::MaxRecvDataSegmentLength, "MaxRecvDataSegmentLength", MRDSL,                                            Both, OP | FFP, false, false),
        // §13.13, §13.14.
        spec(K::MaxBurstLength,       "MaxBurstLength",           Min { min: DATA.0, max: DATA.1, default: 262144 },    Both, OP,      true,  true),
        spec(K::FirstBurstLength,     "FirstBurstLength",         Min { min: DATA.0, max: DATA.1, default: 65536 },     Both, OP,      true,  true),
        // §13.15, §13.16.
        spec(K::DefaultTime2Wait,     "DefaultTime2Wait",         Max { min: 0, max: MAX_TIME2, default: 2 },           Both, OP,      true,  false),
        spec(K::DefaultTime2Retain,   "DefaultTime2Retain",       Min { min: 0, max: MAX_TIME2, default: 20 },          Both, OP,      true,  false),
        // §13.17.
        spec(K::MaxOutstandingR2T,    "MaxOutstandingR2T",        Min { min: 1, max: 65535, default: 1 },               Both, OP,      true,  true),
        // §13.18, §13.19: OR, so one side asking for order gets it.
        spec(K::DataPDUInOrder,       "DataPDUInOrder",           Or { default: true },                                 Both, OP,      true,  true),
        spec(K::DataSequenceInOrder,  "DataSequenceInOrder",      Or { default: true },                                 Both, OP,      true,  true),
        // §13.20.
        spec(K::ErrorRecoveryLevel,   "ErrorRecoveryLevel",       Min { min: 0, max: 2, default: 0 },                   Both, OP,      true,  false),
        // §13.21: declared by the initiator in its first request.
        spec(K::SessionType,          "SessionType",              DeclaredSessionType,                                  I,    LOGIN,   true,  false),
        // §13.23.
        spec(K::TaskReporter,         "TaskReporter",             List { default: "RFC3720" },                          Both, OP,      true,  true),
        // §13.24 and RFC 7144 §2.1: 0 to 31; taken as 0 when not negotiated.
        spec(K::IscsiProtocolLevel,   "iSCSIProtocolLevel",       Min { min: 0, max: 31, default: 0 },                  Both, OP,      true,  true),
        // §13.26.
        spec(K::NodeArchitecture,     "X#NodeArchitecture",       TEXT,                                                 Both, ALL,     false, false),
        // §13.25: obsolete marker keys.
        spec(K::IFMarker,             "IFMarker",                 Obsolete { answer: "No" },                            Both, OP,      false, false),
        spec(K::OFMarker,             "OFMarker",                 Obsolete { answer: "No" },                            Both, OP,      false, false),
        spec(K::IFMarkInt,            "IFMarkInt",                Obsolete { answer: REJECT },                          Both, OP,      false, false),
        spec(K::OFMarkInt,            "OFMarkInt",                Obsolete { answer: REJECT },                          Both, OP,      false, false),
    ]
};

/// The declaration of the key named `name` (names are case sensitive, RFC 7143 §6.1).
pub fn lookup(name: &str) -> Option<&'static KeySpec> {
    KEYS.iter().find(|s| s.name == name)
}

/// Keys of the authentication exchange (RFC 7143 §12.1.3) that the negotiator
/// hands to the caller's authenticator instead of answering.
pub const AUTH_KEYS: &[&str] = &["CHAP_A", "CHAP_I", "CHAP_C", "CHAP_N", "CHAP_R"];

fn is_reserved(value: &str) -> bool {
    matches!(value, NOT_UNDERSTOOD | IRRELEVANT | REJECT)
}

/// Which end of the negotiation this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The initiator.
    Initiator,
    /// The target.
    Target,
}

impl Role {
    fn peer(self) -> Role {
        match self {
            Role::Initiator => Role::Target,
            Role::Target => Role::Initiator,
        }
    }
}

/// SessionType (RFC 7143 §13.21).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SessionType {
    /// A session that carries SCSI commands.
    #[default]
    Normal,
    /// A session only for SendTargets (RFC 7143 §4.3).
    Discovery,
}

impl SessionType {
    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionType::Normal => "Normal",
            SessionType::Discovery => "Discovery",
        }
    }
}

/// A digest algorithm for HeaderDigest and DataDigest (RFC 7143 §13.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Digest {
    /// No digest.
    None,
    /// CRC32C, implemented by [`crate::digest`].
    Crc32c,
}

impl Digest {
    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            Digest::None => "None",
            Digest::Crc32c => "CRC32C",
        }
    }
}

/// What this side supports and prefers. The target uses it as
/// [`TargetLimits`]; an initiator's preferences have the same shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest data segment this side can receive; declared to the peer (§13.12).
    pub max_recv_data_segment_length: u32,
    /// Largest solicited or Data-In burst we accept (§13.13).
    pub max_burst_length: u32,
    /// Largest unsolicited burst we accept (§13.14); clamped to `max_burst_length`.
    pub first_burst_length: u32,
    /// R2Ts we allow outstanding per task (§13.17).
    pub max_outstanding_r2t: u32,
    /// Connections per session we support (§13.2).
    pub max_connections: u32,
    /// Highest error recovery level implemented (§13.20); we implement 0.
    pub error_recovery_level: u32,
    /// Seconds to wait before reconnecting after a drop (§13.15).
    pub default_time2wait: u32,
    /// Seconds we can keep tasks for reassignment after a drop (§13.16).
    pub default_time2retain: u32,
    /// Whether we accept data in the SCSI Command PDU (§13.11).
    pub immediate_data: bool,
    /// `true` to require an R2T before any Data-Out (§13.10).
    pub initial_r2t: bool,
    /// `true` to require Data PDUs in offset order within a sequence (§13.18).
    pub data_pdu_in_order: bool,
    /// `true` to require sequences in offset order (§13.19).
    pub data_sequence_in_order: bool,
    /// Header digests we implement, most preferred first (§13.1).
    pub header_digests: Vec<Digest>,
    /// Data digests we implement, most preferred first (§13.1).
    pub data_digests: Vec<Digest>,
    /// Authentication methods allowed, most preferred first (§12.1); `"None"` to
    /// allow unauthenticated logins. CHAP itself is the caller's (see [`AUTH_KEYS`]).
    pub auth_methods: Vec<String>,
    /// Our alias, declared as TargetAlias or InitiatorAlias (§13.6, §13.7).
    pub alias: Option<String>,
    /// Vendor `X-` keys the caller understands: recorded as declarations in
    /// [`SessionParams::vendor`] instead of being answered `NotUnderstood`.
    pub vendor_keys: Vec<String>,
    /// Highest iSCSIProtocolLevel implemented (§13.24).
    pub iscsi_protocol_level: u32,
}

/// What the target supports and prefers.
pub type TargetLimits = Limits;

impl Default for Limits {
    /// RFC 7143 §13 defaults, with a 256 KiB receive segment, both digests and
    /// no authentication.
    fn default() -> Self {
        Limits {
            max_recv_data_segment_length: 262144,
            max_burst_length: 262144,
            first_burst_length: 65536,
            max_outstanding_r2t: 1,
            max_connections: 1,
            error_recovery_level: 0,
            default_time2wait: 2,
            default_time2retain: 20,
            immediate_data: true,
            initial_r2t: true,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            header_digests: vec![Digest::None, Digest::Crc32c],
            data_digests: vec![Digest::None, Digest::Crc32c],
            auth_methods: vec!["None".to_owned()],
            alias: None,
            vendor_keys: Vec::new(),
            iscsi_protocol_level: ISCSI_PROTOCOL_LEVEL,
        }
    }
}

impl Limits {
    /// The same limits pulled into the RFC ranges, with FirstBurstLength no larger
    /// than MaxBurstLength. The negotiator only ever uses sanitized limits.
    pub fn sanitized(mut self) -> Limits {
        let data = |v: u32| v.clamp(MIN_DATA_LENGTH, MAX_DATA_LENGTH);
        self.max_recv_data_segment_length = data(self.max_recv_data_segment_length);
        self.max_burst_length = data(self.max_burst_length);
        self.first_burst_length = data(self.first_burst_length).min(self.max_burst_length);
        self.max_outstanding_r2t = self.max_outstanding_r2t.clamp(1, 65535);
        self.max_connections = self.max_connections.clamp(1, 65535);
        self.error_recovery_level = self.error_recovery_level.min(2);
        self.default_time2wait = self.default_time2wait.min(MAX_TIME2);
        self.default_time2retain = self.default_time2retain.min(MAX_TIME2);
        self.iscsi_protocol_level = self.iscsi_protocol_level.min(31);
        self
    }
}

/// What the initiator says about itself in its first Login Request (§13.4, §13.5,
/// §13.21).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitiatorIdentity {
    /// Our iSCSI name.
    pub initiator_name: String,
    /// The target to log in to; `None` for a discovery session.
    pub target_name: Option<String>,
    /// Normal or Discovery.
    pub session_type: SessionType,
}

/// The values the two sides agreed on, starting from the RFC 7143 §13 defaults.
/// Both sides of a negotiation end with equal `SessionParams`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionParams {
    /// Normal or Discovery (§13.21).
    pub session_type: SessionType,
    /// HeaderDigest=CRC32C on this connection (§13.1).
    pub header_digest: bool,
    /// DataDigest=CRC32C on this connection (§13.1).
    pub data_digest: bool,
    /// What the initiator declared it can receive: the most a target may send.
    pub max_recv_data_segment_length_initiator: u32,
    /// What the target declared it can receive: the most an initiator may send.
    pub max_recv_data_segment_length_target: u32,
    /// §13.13.
    pub max_burst_length: u32,
    /// §13.14, never more than `max_burst_length`.
    pub first_burst_length: u32,
    /// §13.10.
    pub initial_r2t: bool,
    /// §13.11.
    pub immediate_data: bool,
    /// §13.17.
    pub max_outstanding_r2t: u32,
    /// §13.2.
    pub max_connections: u32,
    /// §13.15, seconds.
    pub default_time2wait: u32,
    /// §13.16, seconds.
    pub default_time2retain: u32,
    /// §13.20.
    pub error_recovery_level: u32,
    /// §13.18.
    pub data_pdu_in_order: bool,
    /// §13.19.
    pub data_sequence_in_order: bool,
    /// The AuthMethod agreed in the security stage (§12.1); "None" by default.
    pub auth_method: String,
    /// §13.23.
    pub task_reporter: String,
    /// §13.24.
    pub iscsi_protocol_level: u32,
    /// §13.5.
    pub initiator_name: Option<String>,
    /// §13.7.
    pub initiator_alias: Option<String>,
    /// §13.4.
    pub target_name: Option<String>,
    /// §13.6.
    pub target_alias: Option<String>,
    /// §13.8: a target's redirection address, if it sent one.
    pub target_address: Option<String>,
    /// §13.9: the tag the target declared, as seen by an initiator.
    pub target_portal_group_tag: Option<u16>,
    /// §13.26: the peer's X#NodeArchitecture.
    pub peer_node_architecture: Option<String>,
    /// Vendor keys named in [`Limits::vendor_keys`] that the peer declared.
    pub vendor: Vec<KeyValue>,
}

impl Default for SessionParams {
    fn default() -> Self {
        SessionParams {
            session_type: SessionType::Normal,
            header_digest: false,
            data_digest: false,
            max_recv_data_segment_length_initiator: DEFAULT_MAX_RECV_DATA_SEGMENT_LENGTH,
            max_recv_data_segment_length_target: DEFAULT_MAX_RECV_DATA_SEGMENT_LENGTH,
            max_burst_length: 262144,
            first_burst_length: 65536,
            initial_r2t: true,
            immediate_data: true,
            max_outstanding_r2t: 1,
            max_connections: 1,
            default_time2wait: 2,
            default_time2retain: 20,
            error_recovery_level: 0,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            auth_method: "None".to_owned(),
            task_reporter: "RFC3720".to_owned(),
            iscsi_protocol_level: 0,
            initiator_name: None,
            initiator_alias: None,
            target_name: None,
            target_alias: None,
            target_address: None,
            target_portal_group_tag: None,
            peer_node_architecture: None,
            vendor: Vec::new(),
        }
    }
}

/// Why a negotiation cannot go on. All are fatal to the login (the target answers
/// with a Login reject, initiator error; an initiator drops the connection) or,
/// in full feature phase, to the text exchange.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum NegotiationError {
    /// A key came twice in one negotiation (RFC 7143 §6.2).
    #[error("key {key} sent twice in one negotiation")]
    DuplicateKey { key: String },
    /// A value that cannot simply be answered `Reject`: a bad iSCSI name or
    /// session type, or a reserved constant offered as a value.
    #[error("invalid value {value:?} for {key}")]
    InvalidValue { key: String, value: String },
    /// A key the login needs never came: InitiatorName, or TargetName in a
    /// Normal session (RFC 7143 §13.4, §13.5).
    #[error("required key {key} missing")]
    MissingKey { key: &'static str },
    /// We offered a key and the stage ended without the answer RFC 7143 §6.2.2
    /// requires.
    #[error("no answer to our offer of {key}")]
    MissingResponse { key: &'static str },
    /// The answer to our offer breaks the result function: not from our list,
    /// above our offer for a minimum key, `No` to our `Yes` for an OR key...
    #[error("answer {value:?} to our {key} offer breaks the negotiation rules")]
    InvalidResponse { key: &'static str, value: String },
    /// The key may only be sent by the other role (the "Senders" of RFC 7143 §13).
    #[error("key {key} may not be sent by the {sender:?}")]
    WrongSender { key: &'static str, sender: Role },
    /// The key may not be negotiated in this stage (RFC 7143 §6.3, §13 "Use").
    #[error("key {key} may not be negotiated in the {stage:?} stage")]
    WrongStage { key: &'static str, stage: Stage },
    /// No value both sides accept, and the default is not acceptable to us either
    /// (for AuthMethod: authentication is required and the peer offers none we allow).
    #[error("no acceptable value for {key}")]
    NoAcceptableValue { key: &'static str },
}

/// An offer of ours waiting for the peer's answer.
#[derive(Debug, Clone)]
struct Pending {
    key: Key,
    offered: String,
    /// `false` when the offer alone decides the result (AND with `No`, OR with
    /// `Yes`), so the peer may stay silent (RFC 7143 §6.2.2).
    required: bool,
}

/// The negotiation state of one connection's login (and later its text
/// exchanges), for either role.
#[derive(Debug)]
pub struct Negotiator {
    role: Role,
    limits: Limits,
    stage: Stage,
    leading: bool,
    identity: Option<InitiatorIdentity>,
    params: SessionParams,
    /// FirstBurstLength as negotiated, before the clamp to MaxBurstLength.
    first_burst_raw: u32,
    /// Keys received in this negotiation, to catch repeats.
    seen: HashSet<String>,
    /// Keys we sent (offers and declarations), never sent twice.
    offered: HashSet<Key>,
    pending: Vec<Pending>,
    /// Answers and declarations to send with our next PDU.
    outgoing: Vec<KeyValue>,
    auth_keys: Vec<KeyValue>,
    send_targets: Option<String>,
    /// Keys in the last answer: not declared again in the same PDU.
    answered_now: HashSet<String>,
}

impl Negotiator {
    /// A negotiator for `role` with our `limits`, in the security stage of a
    /// leading connection's login.
    pub fn new(role: Role, limits: Limits) -> Self {
        Negotiator {
            role,
            limits: limits.sanitized(),
            stage: Stage::Security,
            leading: true,
            identity: None,
            params: SessionParams::default(),
            first_burst_raw: 65536,
            seen: HashSet::new(),
            offered: HashSet::new(),
            pending: Vec::new(),
            outgoing: Vec::new(),
            auth_keys: Vec::new(),
            send_targets: None,
            answered_now: HashSet::new(),
        }
    }

    /// A target-side negotiator.
    pub fn target(limits: TargetLimits) -> Self {
        Self::new(Role::Target, limits)
    }

    /// An initiator-side negotiator that introduces itself as `identity`.
    pub fn initiator(limits: Limits, identity: InitiatorIdentity) -> Self {
        let mut n = Self::new(Role::Initiator, limits);
        n.params.session_type = identity.session_type;
        n.identity = Some(identity);
        n
    }

    /// This side's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The agreed values so far.
    pub fn params(&self) -> &SessionParams {
        &self.params
    }

    /// The current stage.
    pub fn stage(&self) -> Stage {
        self.stage
    }

    /// Move to another stage (the login's CSG, or full feature phase). Entering
    /// full feature phase starts a fresh negotiation: keys may be sent again.
    pub fn set_stage(&mut self, stage: Stage) {
        if stage == Stage::FullFeature && self.stage != Stage::FullFeature {
            self.begin_text_negotiation();
        }
        self.stage = stage;
    }

    /// Whether this is the leading connection of its session (TSIH 0 in the
    /// first Login Request). Leading-only keys are `Irrelevant` on the others.
    pub fn set_leading(&mut self, leading: bool) {
        self.leading = leading;
    }

    /// Set the session type when the caller learned it elsewhere (for a
    /// non-leading connection, from the session it joins).
    pub fn set_session_type(&mut self, session_type: SessionType) {
        self.params.session_type = session_type;
    }

    /// Start a new full feature phase text negotiation (a new Text Request
    /// sequence): forget which keys were seen and what was pending.
    pub fn begin_text_negotiation(&mut self) {
        self.seen.clear();
        self.pending.clear();
        self.offered.retain(|k| {
            matches!(
                k,
                Key::MaxRecvDataSegmentLength | Key::TargetAlias | Key::InitiatorAlias
            )
        });
    }

    /// Answer the peer's pairs: offers get answers (in the order received, then
    /// any declaration of ours they call for), answers to our own offers are
    /// checked and recorded. Used by the target for each Login/Text Request, and
    /// inside [`absorb_response`](Self::absorb_response) by the initiator.
    pub fn respond(&mut self, received: &[KeyValue]) -> Result<Vec<KeyValue>, NegotiationError> {
        for (k, _) in received {
            if !self.seen.insert(k.clone()) {
                return Err(NegotiationError::DuplicateKey { key: k.clone() });
            }
        }
        // Keys others depend on go first: SessionType decides relevance,
        // InitialR2T and ImmediateData decide whether FirstBurstLength matters,
        // MaxBurstLength bounds FirstBurstLength.
        let rank = |k: &str| match lookup(k).map(|s| s.key) {
            Some(Key::SessionType) => 0,
            Some(Key::InitialR2T | Key::ImmediateData) => 1,
            Some(Key::MaxBurstLength) => 2,
            Some(Key::FirstBurstLength) => 3,
            _ => 4,
        };
        let mut order: Vec<usize> = (0..received.len()).collect();
        order.sort_by_key(|&i| rank(&received[i].0));
        let mut answers: Vec<Option<KeyValue>> = vec![None; received.len()];
        for i in order {
            let (k, v) = &received[i];
            answers[i] = self.handle(k, v)?.map(|a| (k.clone(), a));
        }
        let mut out: Vec<KeyValue> = answers.into_iter().flatten().collect();
        out.append(&mut self.outgoing);
        self.answered_now = out.iter().map(|(k, _)| k.clone()).collect();
        Ok(out)
    }

    /// Initiator side: take in a Login/Text Response. Answers to our offers are
    /// checked against what we offered; offers the target made are answered in
    /// the next [`initiator_offer`](Self::initiator_offer).
    pub fn absorb_response(&mut self, received: &[KeyValue]) -> Result<(), NegotiationError> {
        let answers = self.respond(received)?;
        self.outgoing.extend(answers);
        Ok(())
    }

    /// Initiator side: the pairs for our next Login/Text Request. Any answers
    /// owed to the target come first; then, once per login, our identity; in the
    /// security stage AuthMethod; in the operational stage the digests, our
    /// MaxRecvDataSegmentLength and every key where we want other than the
    /// default. Each key is offered once.
    pub fn initiator_offer(&mut self) -> Vec<KeyValue> {
        let mut out = std::mem::take(&mut self.outgoing);
        if self.stage != Stage::FullFeature {
            if let Some(id) = self.identity.clone() {
                self.declare_text(&mut out, Key::InitiatorName, &id.initiator_name);
                if let Some(alias) = self.limits.alias.clone() {
                    self.declare_text(&mut out, Key::InitiatorAlias, &alias);
                }
                if !self.offered.contains(&Key::SessionType) {
                    self.offered.insert(Key::SessionType);
                    out.push((
                        Key::SessionType.name().into(),
                        id.session_type.as_str().into(),
                    ));
                }
                if let Some(target) = &id.target_name {
                    self.declare_text(&mut out, Key::TargetName, target);
                }
            }
        }
        self.offer_keys(&mut out, false);
        out
    }

    /// Target side: what the target should add to its next Login/Text Response
    /// on its own: its alias, in the operational stage its
    /// MaxRecvDataSegmentLength, and offers of every key whose default it cannot
    /// honour that the initiator has not raised (e.g. MaxBurstLength below
    /// 262144, ImmediateData=No). Each is sent once; call it with every
    /// response. TargetPortalGroupTag is the caller's to add.
    pub fn target_declarations(&mut self) -> Vec<KeyValue> {
        let mut out = std::mem::take(&mut self.outgoing);
        if let Some(alias) = self.limits.alias.clone() {
            self.declare_text(&mut out, Key::TargetAlias, &alias);
        }
        self.offer_keys(&mut out, true);
        out
    }

    /// End the current stage: every offer whose answer is required must have
    /// been answered.
    pub fn finish_stage(&mut self) -> Result<(), NegotiationError> {
        if let Some(p) = self.pending.iter().find(|p| p.required) {
            return Err(NegotiationError::MissingResponse { key: p.key.name() });
        }
        self.pending.clear();
        Ok(())
    }

    /// Target side: check that the initiator named itself, and the target in a
    /// Normal session (RFC 7143 §13.4, §13.5); call after the first Login Request.
    pub fn check_login_keys(&self) -> Result<(), NegotiationError> {
        if self.params.initiator_name.is_none() {
            return Err(NegotiationError::MissingKey {
                key: Key::InitiatorName.name(),
            });
        }
        if self.params.session_type == SessionType::Normal && self.params.target_name.is_none() {
            return Err(NegotiationError::MissingKey {
                key: Key::TargetName.name(),
            });
        }
        Ok(())
    }

    /// Authentication keys (CHAP_*) received in the security stage, for the
    /// caller's authenticator; taking them empties the queue.
    pub fn take_auth_keys(&mut self) -> Vec<KeyValue> {
        std::mem::take(&mut self.auth_keys)
    }

    /// The value of a SendTargets request received in full feature phase, for
    /// the caller to answer (RFC 7143 §13.3); taking it clears it.
    pub fn take_send_targets(&mut self) -> Option<String> {
        self.send_targets.take()
    }

    /// Handle one received pair; the answer to send, if any.
    fn handle(&mut self, key: &str, value: &str) -> Result<Option<String>, NegotiationError> {
        let Some(spec) = lookup(key) else {
            return Ok(self.handle_unknown(key, value));
        };
        if !spec.allowed_in(self.stage) {
            return Err(NegotiationError::WrongStage {
                key: spec.name,
                stage: self.stage,
            });
        }
        if let Some(i) = self.pending.iter().position(|p| p.key == spec.key) {
            let pending = self.pending.remove(i);
            self.absorb_answer(spec, &pending.offered, value)?;
            return Ok(None);
        }
        if is_reserved(value) && self.offered.contains(&spec.key) {
            // A peer may answer a declaration of ours with NotUnderstood or
            // Irrelevant; nothing changes.
            return Ok(None);
        }
        let sender = self.role.peer();
        if !spec.senders.allows(sender) {
            return Err(NegotiationError::WrongSender {
                key: spec.name,
                sender,
            });
        }
        if is_reserved(value) {
            // A reserved constant is never an offer.
            return Err(NegotiationError::InvalidValue {
                key: key.to_owned(),
                value: value.to_owned(),
            });
        }
        let negotiated = matches!(
            spec.kind,
            Kind::List { .. }
                | Kind::Min { .. }
                | Kind::Max { .. }
                | Kind::And { .. }
                | Kind::Or { .. }
        );
        if negotiated && spec.leading_only && !self.leading {
            return Ok(Some(IRRELEVANT.into()));
        }
        if spec.discovery_irrelevant && self.params.session_type == SessionType::Discovery {
            return Ok(Some(IRRELEVANT.into()));
        }
        self.answer_offer(spec, value)
    }

    fn handle_unknown(&mut self, key: &str, value: &str) -> Option<String> {
        if self.limits.vendor_keys.iter().any(|k| k == key) {
            self.params.vendor.push((key.to_owned(), value.to_owned()));
            return None;
        }
        if self.stage == Stage::Security && AUTH_KEYS.contains(&key) {
            self.auth_keys.push((key.to_owned(), value.to_owned()));
            return None;
        }
        if is_reserved(value) {
            // Never answer an answer.
            return None;
        }
        Some(NOT_UNDERSTOOD.into())
    }

    /// Answer an offer (or record a declaration) from the peer.
    fn answer_offer(
        &mut self,
        spec: &KeySpec,
        value: &str,
    ) -> Result<Option<String>, NegotiationError> {
        let key = spec.key;
        let reject = |n: &Self| {
            if n.default_acceptable(key) {
                Ok(Some(REJECT.to_owned()))
            } else {
                Err(NegotiationError::NoAcceptableValue { key: spec.name })
            }
        };
        match spec.kind {
            Kind::List { .. } => {
                let ours = self.local_list(key);
                let pick = value
                    .split(',')
                    .filter(|v| !v.is_empty())
                    .find(|v| ours.iter().any(|o| o == v));
                match pick {
                    Some(v) => {
                        self.store_list(key, v);
                        Ok(Some(v.to_owned()))
                    }
                    None => reject(self),
                }
            }
            Kind::Min { min, max, .. } | Kind::Max { min, max, .. } => {
                let n = match parse_number(value) {
                    Ok(n) if n >= min as u64 && n <= max as u64 => n as u32,
                    _ => return reject(self),
                };
                if key == Key::FirstBurstLength && self.first_burst_irrelevant() {
                    return Ok(Some(IRRELEVANT.into()));
                }
                let ours = self.local_number(key);
                let result = if matches!(spec.kind, Kind::Min { .. }) {
                    n.min(ours)
                } else {
                    n.max(ours)
                };
                self.store_number(key, result, self.role.peer());
                Ok(Some(result.to_string()))
            }
            Kind::And { .. } | Kind::Or { .. } => {
                let Ok(theirs) = parse_bool(value) else {
                    return reject(self);
                };
                let ours = self.local_bool(key);
                let result = if matches!(spec.kind, Kind::And { .. }) {
                    theirs && ours
                } else {
                    theirs || ours
                };
                self.store_bool(key, result);
                Ok(Some(format_bool(result).into()))
            }
            Kind::DeclaredNumber { min, max, .. } => match parse_number(value) {
                Ok(n) if n >= min as u64 && n <= max as u64 => {
                    self.store_number(key, n as u32, self.role.peer());
                    if key == Key::MaxRecvDataSegmentLength {
                        // Declarative per direction: answer with our own (§13.12).
                        let mut ours = Vec::new();
                        self.declare_number(
                            &mut ours,
                            key,
                            self.limits.max_recv_data_segment_length,
                        );
                        self.outgoing.extend(ours);
                    }
                    Ok(None)
                }
                _ => Ok(Some(REJECT.into())),
            },
            Kind::DeclaredText { max_len } => {
                if value.is_empty() || value.len() > max_len {
                    return Err(NegotiationError::InvalidValue {
                        key: spec.name.to_owned(),
                        value: value.to_owned(),
                    });
                }
                self.store_text(key, value);
                Ok(None)
            }
            Kind::DeclaredSessionType => {
                self.params.session_type = match value {
                    "Normal" => SessionType::Normal,
                    "Discovery" => SessionType::Discovery,
                    _ => {
                        return Err(NegotiationError::InvalidValue {
                            key: spec.name.to_owned(),
                            value: value.to_owned(),
                        })
                    }
                };
                Ok(None)
            }
            Kind::Obsolete { answer } => Ok(Some(answer.into())),
            Kind::SendTargets => {
                self.send_targets = Some(value.to_owned());
                Ok(None)
            }
        }
    }

    /// Check and record the peer's answer to our offer of `offered`.
    fn absorb_answer(
        &mut self,
        spec: &KeySpec,
        offered: &str,
        answer: &str,
    ) -> Result<(), NegotiationError> {
        let key = spec.key;
        let bad = || NegotiationError::InvalidResponse {
            key: spec.name,
            value: answer.to_owned(),
        };
        if is_reserved(answer) {
            // The default stands (or, for an optional answer, our offer did).
            return if self.default_acceptable(key) {
                Ok(())
            } else {
                Err(NegotiationError::NoAcceptableValue { key: spec.name })
            };
        }
        match spec.kind {
            Kind::List { .. } => {
                if !offered.split(',').any(|o| o == answer) {
                    return Err(bad());
                }
                self.store_list(key, answer);
            }
            Kind::Min { min, max, .. } | Kind::Max { min, max, .. } => {
                let ours = parse_number(offered).map_err(|_| bad())?;
                let n = parse_number(answer).map_err(|_| bad())?;
                let is_min = matches!(spec.kind, Kind::Min { .. });
                let within = if is_min { n <= ours } else { n >= ours };
                if n < min as u64 || n > max as u64 || !within {
                    return Err(bad());
                }
                self.store_number(key, n as u32, self.role.peer());
            }
            Kind::And { .. } | Kind::Or { .. } => {
                let ours = parse_bool(offered).map_err(|_| bad())?;
                let theirs = parse_bool(answer).map_err(|_| bad())?;
                let is_and = matches!(spec.kind, Kind::And { .. });
                // AND: our No decides; OR: our Yes decides.
                if (is_and && !ours && theirs) || (!is_and && ours && !theirs) {
                    return Err(bad());
                }
                self.store_bool(key, theirs);
            }
            _ => return Err(bad()),
        }
        Ok(())
    }

    /// Offer keys for the current stage. `must_only`: only those whose default we
    /// cannot honour (the target); otherwise every key where we want other than
    /// the default (the initiator).
    fn offer_keys(&mut self, out: &mut Vec<KeyValue>, must_only: bool) {
        if self.stage == Stage::Operational {
            self.declare_number(
                out,
                Key::MaxRecvDataSegmentLength,
                self.limits.max_recv_data_segment_length,
            );
        }
        if self.stage == Stage::FullFeature {
            return;
        }
        for spec in KEYS.iter() {
            let key = spec.key;
            if !spec.allowed_in(self.stage)
                || !spec.senders.allows(self.role)
                || self.offered.contains(&key)
                || self.seen.contains(spec.name)
                || (spec.leading_only && !self.leading)
                || (spec.discovery_irrelevant && self.params.session_type == SessionType::Discovery)
                || (key == Key::FirstBurstLength && self.first_burst_irrelevant())
            {
                continue;
            }
            let wanted = if must_only {
                !self.default_acceptable(key)
            } else {
                self.wants_non_default(spec)
            };
            if !wanted {
                continue;
            }
            let (value, required) = match spec.kind {
                Kind::List { .. } => (self.local_list(key).join(","), true),
                Kind::Min { .. } | Kind::Max { .. } => (self.local_number(key).to_string(), true),
                Kind::And { .. } | Kind::Or { .. } => {
                    let ours = self.local_bool(key);
                    let decides = matches!(spec.kind, Kind::And { .. }) != ours;
                    if decides {
                        self.store_bool(key, ours);
                    }
                    (format_bool(ours).to_owned(), !decides)
                }
                _ => continue,
            };
            if value.is_empty() {
                continue;
            }
            self.offered.insert(key);
            self.pending.push(Pending {
                key,
                offered: value.clone(),
                required,
            });
            out.push((spec.name.to_owned(), value));
        }
    }

    /// Initiator policy: offer what differs from the default; the digests and
    /// AuthMethod always (targets expect them), TaskReporter and
    /// iSCSIProtocolLevel only when asked.
    fn wants_non_default(&self, spec: &KeySpec) -> bool {
        let key = spec.key;
        match spec.kind {
            Kind::List { default } => match key {
                Key::TaskReporter => self.local_list(key) != [default],
                _ => true,
            },
            Kind::Min { default, .. } | Kind::Max { default, .. } => {
                key != Key::IscsiProtocolLevel && self.local_number(key) != default
            }
            Kind::And { default } | Kind::Or { default } => self.local_bool(key) != default,
            _ => false,
        }
    }

    /// Whether the RFC default of `key` is something we can live with if the
    /// key is never agreed.
    fn default_acceptable(&self, key: Key) -> bool {
        if key == Key::FirstBurstLength && self.first_burst_irrelevant() {
            return true;
        }
        match key.spec().kind {
            Kind::List { default } => self.local_list(key).iter().any(|v| v == default),
            Kind::Min { default, .. } => self.local_number(key) >= default,
            Kind::Max { default, .. } => self.local_number(key) <= default,
            Kind::And { default } => !default || self.local_bool(key),
            Kind::Or { default } => default || !self.local_bool(key),
            _ => true,
        }
    }

    /// FirstBurstLength is irrelevant with InitialR2T=Yes and ImmediateData=No
    /// (RFC 7143 §13.14): no unsolicited data can be sent.
    fn first_burst_irrelevant(&self) -> bool {
        self.params.initial_r2t && !self.params.immediate_data
    }

    fn declare_text(&mut self, out: &mut Vec<KeyValue>, key: Key, value: &str) {
        if self.answered_now.contains(key.name()) {
            return;
        }
        if self.offered.insert(key) {
            self.store_text(key, value);
            out.push((key.name().to_owned(), value.to_owned()));
        }
    }

    fn declare_number(&mut self, out: &mut Vec<KeyValue>, key: Key, value: u32) {
        // A key answered in this very response (e.g. `Reject` to the peer's value)
        // is declared with the next one: a key may appear once per PDU.
        if self.answered_now.contains(key.name()) {
            return;
        }
        if self.offered.insert(key) {
            self.store_number(key, value, self.role);
            out.push((key.name().to_owned(), value.to_string()));
        }
    }

    fn local_list(&self, key: Key) -> Vec<String> {
        let digests = |d: &[Digest]| d.iter().map(|d| d.as_str().to_owned()).collect();
        match key {
            Key::HeaderDigest => digests(&self.limits.header_digests),
            Key::DataDigest => digests(&self.limits.data_digests),
            Key::AuthMethod => self.limits.auth_methods.clone(),
            // Only the original task reporting is implemented.
            Key::TaskReporter => vec!["RFC3720".to_owned()],
            _ => Vec::new(),
        }
    }

    fn local_number(&self, key: Key) -> u32 {
        let l = &self.limits;
        match key {
            Key::MaxConnections => l.max_connections,
            Key::MaxBurstLength => l.max_burst_length,
            Key::FirstBurstLength => l.first_burst_length,
            Key::DefaultTime2Wait => l.default_time2wait,
            Key::DefaultTime2Retain => l.default_time2retain,
            Key::MaxOutstandingR2T => l.max_outstanding_r2t,
            Key::ErrorRecoveryLevel => l.error_recovery_level,
            Key::IscsiProtocolLevel => l.iscsi_protocol_level,
            Key::MaxRecvDataSegmentLength => l.max_recv_data_segment_length,
            _ => 0,
        }
    }

    fn local_bool(&self, key: Key) -> bool {
        let l = &self.limits;
        match key {
            Key::InitialR2T => l.initial_r2t,
            Key::ImmediateData => l.immediate_data,
            Key::DataPDUInOrder => l.data_pdu_in_order,
            Key::DataSequenceInOrder => l.data_sequence_in_order,
            _ => false,
        }
    }

    fn store_list(&mut self, key: Key, value: &str) {
        let p = &mut self.params;
        match key {
            Key::HeaderDigest => p.header_digest = value == Digest::Crc32c.as_str(),
            Key::DataDigest => p.data_digest = value == Digest::Crc32c.as_str(),
            Key::AuthMethod => p.auth_method = value.to_owned(),
            Key::TaskReporter => p.task_reporter = value.to_owned(),
            _ => {}
        }
    }

    fn store_bool(&mut self, key: Key, value: bool) {
        let p = &mut self.params;
        match key {
            Key::InitialR2T => p.initial_r2t = value,
            Key::ImmediateData => p.immediate_data = value,
            Key::DataPDUInOrder => p.data_pdu_in_order = value,
            Key::DataSequenceInOrder => p.data_sequence_in_order = value,
            _ => {}
        }
    }

    /// Record a number; `by` is who declared it (for MaxRecvDataSegmentLength).
    fn store_number(&mut self, key: Key, value: u32, by: Role) {
        let p = &mut self.params;
        match key {
            Key::MaxConnections => p.max_connections = value,
            Key::MaxBurstLength => p.max_burst_length = value,
            Key::FirstBurstLength => self.first_burst_raw = value,
            Key::DefaultTime2Wait => p.default_time2wait = value,
            Key::DefaultTime2Retain => p.default_time2retain = value,
            Key::MaxOutstandingR2T => p.max_outstanding_r2t = value,
            Key::ErrorRecoveryLevel => p.error_recovery_level = value,
            Key::IscsiProtocolLevel => p.iscsi_protocol_level = value,
            Key::TargetPortalGroupTag => p.target_portal_group_tag = u16::try_from(value).ok(),
            Key::MaxRecvDataSegmentLength => match by {
                Role::Initiator => p.max_recv_data_segment_length_initiator = value,
                Role::Target => p.max_recv_data_segment_length_target = value,
            },
            _ => {}
        }
        // FirstBurstLength must not exceed MaxBurstLength (RFC 7143 §13.14).
        self.params.first_burst_length = self.first_burst_raw.min(self.params.max_burst_length);
    }

    fn store_text(&mut self, key: Key, value: &str) {
        let p = &mut self.params;
        let slot = match key {
            Key::InitiatorName => &mut p.initiator_name,
            Key::InitiatorAlias => &mut p.initiator_alias,
            Key::TargetName => &mut p.target_name,
            Key::TargetAlias => &mut p.target_alias,
            Key::TargetAddress => &mut p.target_address,
            Key::NodeArchitecture => &mut p.peer_node_architecture,
            _ => return,
        };
        *slot = Some(value.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn kv(k: &str, v: &str) -> KeyValue {
        (k.to_owned(), v.to_owned())
    }

    fn answer<'a>(resp: &'a [KeyValue], key: &str) -> Option<&'a str> {
        resp.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// A target past the security stage of a Normal session.
    fn operational_target(limits: Limits) -> Negotiator {
        let mut t = Negotiator::target(limits);
        t.respond(&[
            kv("InitiatorName", "iqn.1994-05.com.redhat:i"),
            kv("SessionType", "Normal"),
            kv("TargetName", "iqn.2024-01.io.mosaic:vol"),
            kv("AuthMethod", "None"),
        ])
        .unwrap();
        t.finish_stage().unwrap();
        t.set_stage(Stage::Operational);
        t
    }

    #[test]
    fn table_is_in_key_order_and_names_are_unique() {
        for (i, s) in KEYS.iter().enumerate() {
            assert_eq!(s.key as usize, i, "{}", s.name);
            assert_eq!(lookup(s.name).map(|x| x.key), Some(s.key));
        }
    }

    #[test]
    fn header_digest_list_picks_first_supported() {
        let mut t = operational_target(Limits {
            header_digests: vec![Digest::None, Digest::Crc32c],
            ..Limits::default()
        });
        let r = t
            .respond(&[
                kv("HeaderDigest", "X-Fancy,CRC32C,None"),
                kv("DataDigest", "None,CRC32C"),
            ])
            .unwrap();
        assert_eq!(answer(&r, "HeaderDigest"), Some("CRC32C"));
        assert_eq!(answer(&r, "DataDigest"), Some("None"));
        assert!(t.params().header_digest);
        assert!(!t.params().data_digest);
    }

    #[test]
    fn digest_we_do_not_implement_is_never_agreed() {
        let mut t = operational_target(Limits {
            data_digests: vec![Digest::None],
            ..Limits::default()
        });
        let r = t.respond(&[kv("DataDigest", "CRC32C")]).unwrap();
        assert_eq!(answer(&r, "DataDigest"), Some(REJECT));
        assert!(!t.params().data_digest);
    }

    #[test]
    fn required_digest_not_offered_fails_the_login() {
        let mut t = operational_target(Limits {
            header_digests: vec![Digest::Crc32c],
            ..Limits::default()
        });
        assert_eq!(
            t.respond(&[kv("HeaderDigest", "None")]),
            Err(NegotiationError::NoAcceptableValue {
                key: "HeaderDigest"
            })
        );
    }

    #[test]
    fn target_offers_required_digest_the_initiator_did_not_raise() {
        let mut t = operational_target(Limits {
            header_digests: vec![Digest::Crc32c],
            ..Limits::default()
        });
        let d = t.target_declarations();
        assert_eq!(answer(&d, "HeaderDigest"), Some("CRC32C"));
        assert_eq!(
            t.finish_stage(),
            Err(NegotiationError::MissingResponse {
                key: "HeaderDigest"
            })
        );
        t.respond(&[kv("HeaderDigest", "CRC32C")]).unwrap();
        assert!(t.params().header_digest);
        t.finish_stage().unwrap();
    }

    #[test]
    fn first_burst_clamped_to_max_burst() {
        let mut t = operational_target(Limits::default());
        let r = t
            .respond(&[
                kv("FirstBurstLength", "65536"),
                kv("MaxBurstLength", "16384"),
            ])
            .unwrap();
        // Answers keep the request's order.
        assert_eq!(r[0], kv("FirstBurstLength", "65536"));
        assert_eq!(r[1], kv("MaxBurstLength", "16384"));
        assert_eq!(t.params().max_burst_length, 16384);
        assert_eq!(t.params().first_burst_length, 16384);
    }

    #[test]
    fn first_burst_irrelevant_when_initial_r2t_and_no_immediate_data() {
        let mut t = operational_target(Limits::default());
        let r = t
            .respond(&[
                kv("FirstBurstLength", "4096"),
                kv("InitialR2T", "Yes"),
                kv("ImmediateData", "No"),
            ])
            .unwrap();
        assert_eq!(answer(&r, "FirstBurstLength"), Some(IRRELEVANT));
        assert_eq!(t.params().first_burst_length, 65536);
    }

    #[test]
    fn result_functions_min_max_and_or() {
        let mut t = operational_target(Limits {
            max_burst_length: 131072,
            first_burst_length: 65536,
            default_time2wait: 5,
            default_time2retain: 10,
            immediate_data: false,
            initial_r2t: false,
            max_outstanding_r2t: 8,
            ..Limits::default()
        });
        let r = t
            .respond(&[
                kv("MaxBurstLength", "262144"),
                kv("DefaultTime2Wait", "2"),
                kv("DefaultTime2Retain", "0"),
                kv("ImmediateData", "Yes"),
                kv("InitialR2T", "No"),
                kv("MaxOutstandingR2T", "0x2"),
                kv("DataPDUInOrder", "No"),
                kv("ErrorRecoveryLevel", "2"),
            ])
            .unwrap();
        assert_eq!(
            r,
            vec![
                kv("MaxBurstLength", "131072"),
                kv("DefaultTime2Wait", "5"),
                kv("DefaultTime2Retain", "0"),
                kv("ImmediateData", "No"),
                kv("InitialR2T", "No"),
                kv("MaxOutstandingR2T", "2"),
                kv("DataPDUInOrder", "Yes"),
                kv("ErrorRecoveryLevel", "0"),
            ]
        );
        let p = t.params();
        assert_eq!(
            (
                p.max_burst_length,
                p.default_time2wait,
                p.default_time2retain
            ),
            (131072, 5, 0)
        );
        assert!(!p.immediate_data && !p.initial_r2t && p.data_pdu_in_order);
        assert_eq!((p.max_outstanding_r2t, p.error_recovery_level), (2, 0));
    }

    #[test]
    fn unknown_key_not_understood() {
        let mut t = operational_target(Limits::default());
        let r = t
            .respond(&[
                kv("FancyKey", "1"),
                kv("X-com.example.Thing", "y"),
                kv("X#Other", "z"),
            ])
            .unwrap();
        assert_eq!(
            r,
            vec![
                kv("FancyKey", NOT_UNDERSTOOD),
                kv("X-com.example.Thing", NOT_UNDERSTOOD),
                kv("X#Other", NOT_UNDERSTOOD),
            ]
        );
    }

    #[test]
    fn vendor_key_named_in_limits_is_recorded_not_answered() {
        let mut t = operational_target(Limits {
            vendor_keys: vec!["X-io.mosaic.MpioGroup".into()],
            ..Limits::default()
        });
        let r = t.respond(&[kv("X-io.mosaic.MpioGroup", "g1")]).unwrap();
        assert!(r.is_empty());
        assert_eq!(t.params().vendor, vec![kv("X-io.mosaic.MpioGroup", "g1")]);
    }

    #[test]
    fn discovery_session_operational_keys_irrelevant() {
        let mut t = Negotiator::target(Limits::default());
        t.respond(&[kv("InitiatorName", "iqn.x"), kv("SessionType", "Discovery")])
            .unwrap();
        t.check_login_keys().unwrap();
        t.set_stage(Stage::Operational);
        let r = t
            .respond(&[
                kv("MaxBurstLength", "65536"),
                kv("ImmediateData", "No"),
                kv("MaxConnections", "4"),
                kv("HeaderDigest", "CRC32C,None"),
                kv("DefaultTime2Wait", "3"),
            ])
            .unwrap();
        assert_eq!(answer(&r, "MaxBurstLength"), Some(IRRELEVANT));
        assert_eq!(answer(&r, "ImmediateData"), Some(IRRELEVANT));
        assert_eq!(answer(&r, "MaxConnections"), Some(IRRELEVANT));
        assert_eq!(answer(&r, "HeaderDigest"), Some("CRC32C"));
        assert_eq!(answer(&r, "DefaultTime2Wait"), Some("3"));
        assert_eq!(t.params().max_burst_length, 262144);
        assert!(t.params().immediate_data);
    }

    #[test]
    fn out_of_range_value_rejected() {
        let mut t = operational_target(Limits::default());
        let r = t
            .respond(&[
                kv("MaxBurstLength", "511"),
                kv("DefaultTime2Wait", "3601"),
                kv("ErrorRecoveryLevel", "3"),
                kv("MaxOutstandingR2T", "0"),
                kv("MaxRecvDataSegmentLength", "16777216"),
            ])
            .unwrap();
        for k in [
            "MaxBurstLength",
            "DefaultTime2Wait",
            "ErrorRecoveryLevel",
            "MaxOutstandingR2T",
            "MaxRecvDataSegmentLength",
        ] {
            assert_eq!(answer(&r, k), Some(REJECT), "{k}");
        }
        assert_eq!(t.params(), operational_target(Limits::default()).params());
    }

    #[test]
    fn malformed_value_rejected() {
        let mut t = operational_target(Limits::default());
        let r = t
            .respond(&[
                kv("MaxBurstLength", "lots"),
                kv("ImmediateData", "yes"),
                kv("HeaderDigest", ""),
            ])
            .unwrap();
        assert_eq!(answer(&r, "MaxBurstLength"), Some(REJECT));
        assert_eq!(answer(&r, "ImmediateData"), Some(REJECT));
        assert_eq!(answer(&r, "HeaderDigest"), Some(REJECT));
    }

    #[test]
    fn rejecting_a_key_whose_default_we_cannot_honour_fails() {
        let mut t = operational_target(Limits {
            max_burst_length: 65536,
            ..Limits::default()
        });
        assert_eq!(
            t.respond(&[kv("MaxBurstLength", "100")]),
            Err(NegotiationError::NoAcceptableValue {
                key: "MaxBurstLength"
            })
        );
    }

    #[test]
    fn duplicate_key_across_pdus_is_protocol_error() {
        let mut t = operational_target(Limits::default());
        t.respond(&[kv("MaxBurstLength", "65536")]).unwrap();
        assert_eq!(
            t.respond(&[kv("MaxBurstLength", "65536")]),
            Err(NegotiationError::DuplicateKey {
                key: "MaxBurstLength".into()
            })
        );
        let mut t = operational_target(Limits::default());
        assert!(matches!(
            t.respond(&[kv("Foo", "1"), kv("Foo", "2")]),
            Err(NegotiationError::DuplicateKey { .. })
        ));
    }

    #[test]
    fn full_feature_text_negotiation_starts_afresh() {
        let mut t = operational_target(Limits::default());
        t.respond(&[kv("MaxRecvDataSegmentLength", "65536")])
            .unwrap();
        t.set_stage(Stage::FullFeature);
        let r = t
            .respond(&[kv("MaxRecvDataSegmentLength", "32768")])
            .unwrap();
        assert!(r.is_empty());
        assert_eq!(t.params().max_recv_data_segment_length_initiator, 32768);
        assert_eq!(
            t.respond(&[kv("ImmediateData", "No")]),
            Err(NegotiationError::WrongStage {
                key: "ImmediateData",
                stage: Stage::FullFeature
            })
        );
    }

    #[test]
    fn key_from_wrong_sender_is_protocol_error() {
        let mut t = operational_target(Limits::default());
        assert_eq!(
            t.respond(&[kv("TargetAlias", "me")]),
            Err(NegotiationError::WrongSender {
                key: "TargetAlias",
                sender: Role::Initiator
            })
        );
        let mut i = Negotiator::initiator(Limits::default(), identity(SessionType::Normal));
        assert!(matches!(
            i.absorb_response(&[kv("InitiatorName", "iqn.y")]),
            Err(NegotiationError::WrongSender { .. })
        ));
    }

    #[test]
    fn operational_key_in_security_stage_is_protocol_error() {
        let mut t = Negotiator::target(Limits::default());
        assert_eq!(
            t.respond(&[kv("InitiatorName", "iqn.x"), kv("HeaderDigest", "None")]),
            Err(NegotiationError::WrongStage {
                key: "HeaderDigest",
                stage: Stage::Security
            })
        );
        let mut t = Negotiator::target(Limits::default());
        t.set_stage(Stage::Operational);
        assert!(matches!(
            t.respond(&[kv("AuthMethod", "None")]),
            Err(NegotiationError::WrongStage { .. })
        ));
    }

    #[test]
    fn leading_only_key_on_non_leading_connection_irrelevant() {
        let mut t = operational_target(Limits::default());
        t.set_leading(false);
        let r = t
            .respond(&[kv("MaxBurstLength", "65536"), kv("HeaderDigest", "None")])
            .unwrap();
        assert_eq!(answer(&r, "MaxBurstLength"), Some(IRRELEVANT));
        assert_eq!(answer(&r, "HeaderDigest"), Some("None"));
        assert_eq!(t.params().max_burst_length, 262144);
    }

    #[test]
    fn max_recv_data_segment_length_is_declarative_per_direction() {
        let mut t = operational_target(Limits {
            max_recv_data_segment_length: 131072,
            ..Limits::default()
        });
        let r = t
            .respond(&[kv("MaxRecvDataSegmentLength", "65536")])
            .unwrap();
        assert_eq!(r, vec![kv("MaxRecvDataSegmentLength", "131072")]);
        assert_eq!(t.params().max_recv_data_segment_length_initiator, 65536);
        assert_eq!(t.params().max_recv_data_segment_length_target, 131072);
        // Declared once only.
        assert!(t.target_declarations().is_empty());
    }

    #[test]
    fn target_declares_max_recv_data_segment_length_even_unasked() {
        let mut t = operational_target(Limits::default());
        let d = t.target_declarations();
        assert_eq!(d, vec![kv("MaxRecvDataSegmentLength", "262144")]);
        assert!(t.target_declarations().is_empty());
    }

    #[test]
    fn target_offers_keys_whose_default_it_cannot_honour() {
        let mut t = operational_target(Limits {
            max_burst_length: 65536,
            first_burst_length: 8192,
            immediate_data: false,
            default_time2retain: 0,
            initial_r2t: false,
            ..Limits::default()
        });
        t.respond(&[kv("MaxBurstLength", "32768")]).unwrap();
        let d = t.target_declarations();
        // No FirstBurstLength: with ImmediateData=No and InitialR2T at its
        // default Yes it is irrelevant.
        assert_eq!(
            d,
            vec![
                kv("MaxRecvDataSegmentLength", "262144"),
                kv("ImmediateData", "No"),
                kv("DefaultTime2Retain", "0"),
            ]
        );
        // ImmediateData=No decides the AND alone: no answer needed.
        assert!(!t.params().immediate_data);
        assert_eq!(
            t.finish_stage(),
            Err(NegotiationError::MissingResponse {
                key: "DefaultTime2Retain"
            })
        );
        t.respond(&[kv("DefaultTime2Retain", "0")]).unwrap();
        t.finish_stage().unwrap();

        let mut t = operational_target(Limits {
            first_burst_length: 8192,
            ..Limits::default()
        });
        let d = t.target_declarations();
        assert_eq!(answer(&d, "FirstBurstLength"), Some("8192"));
        assert_eq!(
            t.respond(&[kv("FirstBurstLength", "16384")]),
            Err(NegotiationError::InvalidResponse {
                key: "FirstBurstLength",
                value: "16384".into()
            })
        );
    }

    #[test]
    fn obsolete_marker_keys_answered_no_and_markint_reject() {
        let mut t = operational_target(Limits::default());
        let r = t
            .respond(&[
                kv("IFMarker", "Yes"),
                kv("OFMarker", "No"),
                kv("IFMarkInt", "2048~8192"),
                kv("OFMarkInt", "1"),
            ])
            .unwrap();
        assert_eq!(
            r,
            vec![
                kv("IFMarker", "No"),
                kv("OFMarker", "No"),
                kv("IFMarkInt", REJECT),
                kv("OFMarkInt", REJECT)
            ]
        );
    }

    #[test]
    fn reserved_constant_as_offer_is_invalid() {
        let mut t = operational_target(Limits::default());
        assert!(matches!(
            t.respond(&[kv("MaxBurstLength", REJECT)]),
            Err(NegotiationError::InvalidValue { .. })
        ));
        // An unknown key carrying one is an answer to something: ignored.
        let mut t = operational_target(Limits::default());
        assert_eq!(t.respond(&[kv("X-Foo", NOT_UNDERSTOOD)]).unwrap(), vec![]);
    }

    #[test]
    fn missing_initiator_or_target_name_is_missing_key() {
        let mut t = Negotiator::target(Limits::default());
        t.respond(&[kv("SessionType", "Normal")]).unwrap();
        assert_eq!(
            t.check_login_keys(),
            Err(NegotiationError::MissingKey {
                key: "InitiatorName"
            })
        );
        t.respond(&[kv("InitiatorName", "iqn.x")]).unwrap();
        assert_eq!(
            t.check_login_keys(),
            Err(NegotiationError::MissingKey { key: "TargetName" })
        );
    }

    #[test]
    fn bad_session_type_or_name_is_invalid_value() {
        let mut t = Negotiator::target(Limits::default());
        assert!(matches!(
            t.respond(&[kv("SessionType", "Weird")]),
            Err(NegotiationError::InvalidValue { .. })
        ));
        let mut t = Negotiator::target(Limits::default());
        let long = format!("iqn.{}", "a".repeat(MAX_NAME_LEN));
        assert!(matches!(
            t.respond(&[kv("InitiatorName", &long)]),
            Err(NegotiationError::InvalidValue { .. })
        ));
    }

    #[test]
    fn auth_method_none_agreed_and_chap_required_refuses_none() {
        let mut t = Negotiator::target(Limits::default());
        let r = t.respond(&[kv("AuthMethod", "CHAP,None")]).unwrap();
        assert_eq!(r, vec![kv("AuthMethod", "None")]);
        let mut t = Negotiator::target(Limits {
            auth_methods: vec!["CHAP".into()],
            ..Limits::default()
        });
        assert_eq!(
            t.respond(&[kv("AuthMethod", "None")]),
            Err(NegotiationError::NoAcceptableValue { key: "AuthMethod" })
        );
    }

    #[test]
    fn chap_keys_handed_to_the_caller_in_security_stage() {
        let mut t = Negotiator::target(Limits {
            auth_methods: vec!["CHAP".into(), "None".into()],
            ..Limits::default()
        });
        let r = t
            .respond(&[kv("AuthMethod", "CHAP"), kv("CHAP_A", "5")])
            .unwrap();
        assert_eq!(r, vec![kv("AuthMethod", "CHAP")]);
        assert_eq!(t.take_auth_keys(), vec![kv("CHAP_A", "5")]);
        assert_eq!(t.params().auth_method, "CHAP");
    }

    #[test]
    fn send_targets_recorded_for_the_caller_in_full_feature() {
        let mut t = Negotiator::target(Limits::default());
        assert!(matches!(
            t.respond(&[kv("SendTargets", "All")]),
            Err(NegotiationError::WrongStage { .. })
        ));
        let mut t = Negotiator::target(Limits::default());
        t.set_stage(Stage::FullFeature);
        assert!(t.respond(&[kv("SendTargets", "All")]).unwrap().is_empty());
        assert_eq!(t.take_send_targets().as_deref(), Some("All"));
    }

    fn identity(session_type: SessionType) -> InitiatorIdentity {
        InitiatorIdentity {
            initiator_name: "iqn.2024-01.io.mosaic:init".into(),
            target_name: (session_type == SessionType::Normal)
                .then(|| "iqn.2024-01.io.mosaic:vol".into()),
            session_type,
        }
    }

    #[test]
    fn initiator_offers_identity_then_operational_keys() {
        let mut i = Negotiator::initiator(
            Limits {
                max_burst_length: 1 << 20,
                immediate_data: true,
                initial_r2t: false,
                ..Limits::default()
            },
            identity(SessionType::Normal),
        );
        let o = i.initiator_offer();
        assert_eq!(
            o,
            vec![
                kv("InitiatorName", "iqn.2024-01.io.mosaic:init"),
                kv("SessionType", "Normal"),
                kv("TargetName", "iqn.2024-01.io.mosaic:vol"),
                kv("AuthMethod", "None"),
            ]
        );
        i.absorb_response(&[kv("AuthMethod", "None")]).unwrap();
        i.finish_stage().unwrap();
        i.set_stage(Stage::Operational);
        let o = i.initiator_offer();
        assert_eq!(
            o,
            vec![
                kv("MaxRecvDataSegmentLength", "262144"),
                kv("HeaderDigest", "None,CRC32C"),
                kv("DataDigest", "None,CRC32C"),
                kv("InitialR2T", "No"),
                kv("MaxBurstLength", "1048576"),
            ]
        );
        assert!(i.initiator_offer().is_empty());
    }

    #[test]
    fn initiator_rejects_answers_outside_its_offer() {
        let cases = [
            ("HeaderDigest", "CRC32C,None", "X-Other"),
            ("MaxBurstLength", "65536", "131072"),
            ("DefaultTime2Wait", "5", "4"),
            ("InitialR2T", "Yes", "No"),
            ("ImmediateData", "No", "Yes"),
            ("MaxBurstLength", "65536", "0x"),
        ];
        for (key, offered, ans) in cases {
            let mut i = Negotiator::initiator(Limits::default(), identity(SessionType::Normal));
            i.set_stage(Stage::Operational);
            let spec = lookup(key).unwrap();
            i.offered.insert(spec.key);
            i.pending.push(Pending {
                key: spec.key,
                offered: offered.into(),
                required: true,
            });
            assert_eq!(
                i.absorb_response(&[kv(key, ans)]),
                Err(NegotiationError::InvalidResponse {
                    key: spec.name,
                    value: ans.into()
                }),
                "{key}={ans} after {offered}"
            );
        }
    }

    #[test]
    fn initiator_answers_target_offers_in_its_next_request() {
        let mut i = Negotiator::initiator(Limits::default(), identity(SessionType::Normal));
        i.set_stage(Stage::Operational);
        let _ = i.initiator_offer();
        i.absorb_response(&[
            kv("MaxRecvDataSegmentLength", "65536"),
            kv("ImmediateData", "No"),
        ])
        .unwrap();
        assert_eq!(i.params().max_recv_data_segment_length_target, 65536);
        assert_eq!(i.initiator_offer(), vec![kv("ImmediateData", "No")]);
        assert!(!i.params().immediate_data);
    }

    /// Run a whole login between `ini` and `tgt`: both stages, PDU by PDU.
    fn login(ini: &mut Negotiator, tgt: &mut Negotiator) -> Result<(), NegotiationError> {
        for stage in [Stage::Security, Stage::Operational] {
            ini.set_stage(stage);
            tgt.set_stage(stage);
            let mut request = ini.initiator_offer();
            let mut rounds = 0;
            while !request.is_empty() {
                rounds += 1;
                assert!(rounds < 10, "negotiation does not converge");
                let mut response = tgt.respond(&request)?;
                response.extend(tgt.target_declarations());
                ini.absorb_response(&response)?;
                request = ini.initiator_offer();
            }
            if stage == Stage::Security {
                tgt.check_login_keys()?;
            }
            ini.finish_stage()?;
            tgt.finish_stage()?;
        }
        Ok(())
    }

    #[test]
    fn default_login_agrees_on_defaults_plus_declarations() {
        let mut i = Negotiator::initiator(Limits::default(), identity(SessionType::Normal));
        let mut t = Negotiator::target(Limits::default());
        login(&mut i, &mut t).unwrap();
        assert_eq!(i.params(), t.params());
        let p = t.params();
        assert_eq!(p.max_recv_data_segment_length_initiator, 262144);
        assert_eq!(p.max_recv_data_segment_length_target, 262144);
        assert_eq!(
            p.initiator_name.as_deref(),
            Some("iqn.2024-01.io.mosaic:init")
        );
        assert!(!p.header_digest);
    }

    fn digest_list() -> impl Strategy<Value = Vec<Digest>> {
        prop_oneof![
            Just(vec![Digest::None]),
            Just(vec![Digest::Crc32c]),
            Just(vec![Digest::None, Digest::Crc32c]),
            Just(vec![Digest::Crc32c, Digest::None]),
        ]
    }

    prop_compose! {
        fn limits()(
            mrdsl in 0u32..20_000_000, mbl in 0u32..20_000_000, fbl in 0u32..20_000_000,
            r2t in 0u32..70_000, conns in 0u32..70_000, erl in 0u32..4,
            t2w in 0u32..4000, t2r in 0u32..4000,
            bools in any::<[bool; 4]>(),
            hd in digest_list(), dd in digest_list(),
            alias in proptest::option::of("[a-z]{1,8}"),
        ) -> Limits {
            Limits {
                max_recv_data_segment_length: mrdsl,
                max_burst_length: mbl,
                first_burst_length: fbl,
                max_outstanding_r2t: r2t,
                max_connections: conns,
                error_recovery_level: erl,
                default_time2wait: t2w,
                default_time2retain: t2r,
                immediate_data: bools[0],
                initial_r2t: bools[1],
                data_pdu_in_order: bools[2],
                data_sequence_in_order: bools[3],
                header_digests: hd,
                data_digests: dd,
                alias,
                ..Limits::default()
            }
        }
    }

    fn assert_in_rfc_ranges(p: &SessionParams) {
        let data = MIN_DATA_LENGTH..=MAX_DATA_LENGTH;
        assert!(
            data.contains(&p.max_recv_data_segment_length_initiator),
            "{p:?}"
        );
        assert!(
            data.contains(&p.max_recv_data_segment_length_target),
            "{p:?}"
        );
        assert!(data.contains(&p.max_burst_length), "{p:?}");
        assert!(data.contains(&p.first_burst_length), "{p:?}");
        assert!(p.first_burst_length <= p.max_burst_length, "{p:?}");
        assert!((1..=65535).contains(&p.max_outstanding_r2t), "{p:?}");
        assert!((1..=65535).contains(&p.max_connections), "{p:?}");
        assert!(p.error_recovery_level <= 2, "{p:?}");
        assert!(
            p.default_time2wait <= MAX_TIME2 && p.default_time2retain <= MAX_TIME2,
            "{p:?}"
        );
        assert!(p.iscsi_protocol_level <= 31, "{p:?}");
    }

    fn any_pair() -> impl Strategy<Value = KeyValue> {
        let names: Vec<&'static str> = KEYS
            .iter()
            .map(|s| s.name)
            .chain(["CHAP_A", "X-Foo", "Bogus"])
            .collect();
        let key = prop_oneof![
            4 => proptest::sample::select(names).prop_map(str::to_owned),
            1 => "[A-Za-z][A-Za-z0-9]{0,10}",
        ];
        let value = prop_oneof![
            (0u64..40_000_000).prop_map(|n| n.to_string()),
            (0u64..70_000).prop_map(|n| format!("0x{n:x}")),
            proptest::sample::select(vec![
                "Yes",
                "No",
                "None",
                "CRC32C",
                "CRC32C,None",
                "Normal",
                "Discovery",
                "Reject",
                "Irrelevant",
                "NotUnderstood",
                "",
                "All",
                "RFC3720",
                "CHAP",
            ])
            .prop_map(str::to_owned),
            "[ -~]{0,20}",
        ];
        (key, value)
    }

    fn any_stage() -> impl Strategy<Value = Stage> {
        prop_oneof![
            Just(Stage::Security),
            Just(Stage::Operational),
            Just(Stage::FullFeature)
        ]
    }

    proptest! {
        #[test]
        fn negotiator_never_panics_and_stays_in_rfc_ranges(
            lim in limits(),
            stage in any_stage(),
            leading in any::<bool>(),
            as_initiator in any::<bool>(),
            pdus in proptest::collection::vec(proptest::collection::vec(any_pair(), 0..12), 1..4),
        ) {
            let mut n = if as_initiator {
                Negotiator::initiator(lim, identity(SessionType::Normal))
            } else {
                Negotiator::target(lim)
            };
            n.set_stage(stage);
            n.set_leading(leading);
            for pdu in &pdus {
                let _ = if as_initiator {
                    let _ = n.initiator_offer();
                    n.absorb_response(pdu).map(|_| Vec::new())
                } else {
                    let r = n.respond(pdu);
                    let _ = n.target_declarations();
                    r
                };
                assert_in_rfc_ranges(n.params());
            }
        }

        #[test]
        fn initiator_and_target_agree_on_every_value(
            ini_limits in limits(),
            tgt_limits in limits(),
            discovery in any::<bool>(),
        ) {
            let common = |a: &[Digest], b: &[Digest]| a.iter().any(|d| b.contains(d));
            prop_assume!(common(&ini_limits.header_digests, &tgt_limits.header_digests));
            prop_assume!(common(&ini_limits.data_digests, &tgt_limits.data_digests));
            let st = if discovery { SessionType::Discovery } else { SessionType::Normal };
            let (il, tl) = (ini_limits.clone().sanitized(), tgt_limits.clone().sanitized());
            let mut i = Negotiator::initiator(ini_limits, identity(st));
            let mut t = Negotiator::target(tgt_limits);
            login(&mut i, &mut t).unwrap();
            prop_assert_eq!(i.params(), t.params());
            let p = t.params();
            assert_in_rfc_ranges(p);
            prop_assert_eq!(p.session_type, st);
            prop_assert_eq!(p.max_recv_data_segment_length_initiator, il.max_recv_data_segment_length);
            prop_assert_eq!(p.max_recv_data_segment_length_target, tl.max_recv_data_segment_length);
            // Never more than either side can take.
            if !discovery {
                prop_assert!(p.max_burst_length <= il.max_burst_length.min(tl.max_burst_length));
                prop_assert!(!p.immediate_data || (il.immediate_data && tl.immediate_data));
                prop_assert!(p.data_pdu_in_order || !(il.data_pdu_in_order || tl.data_pdu_in_order));
                prop_assert!(p.max_outstanding_r2t <= il.max_outstanding_r2t.min(tl.max_outstanding_r2t));
            }
            prop_assert!(p.error_recovery_level <= il.error_recovery_level.min(tl.error_recovery_level));
            prop_assert!(!p.header_digest || (il.header_digests.contains(&Digest::Crc32c) && tl.header_digests.contains(&Digest::Crc32c)));
            prop_assert!(p.header_digest || (il.header_digests.contains(&Digest::None) && tl.header_digests.contains(&Digest::None)));
        }
    }
}
