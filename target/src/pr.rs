//! Persistent reservations (SPC-4 §5.13): registrations, the reservation, the
//! PERSISTENT RESERVE IN data (§6.15), PERSISTENT RESERVE OUT parameter lists
//! (§6.16) with iSCSI TransportIDs (§7.6.4.6), and which commands conflict with a
//! reservation (§5.13.1, Tables "SPC commands that are allowed in the presence of
//! various reservations" and the SBC-3 equivalent).
//!
//! Pure logic: no I/O, no clock, no locks. [`PrState`] is one logical unit's state;
//! the [`crate::device::Device`] holds it under a mutex, turns [`Effects`] into unit
//! attentions, and writes [`PrState::to_persisted`] to disk when APTPL is set.
//!
//! Identity: a registration belongs to an initiator port ("<name>,i,0x<ISID>"), or,
//! when registered through a format 00 TransportID (name only, SPEC_I_PT or REGISTER
//! AND MOVE), to every port of that initiator ([`Initiator::Device`]). Every device
//! has one target port, so ALL_TG_PT only changes what READ FULL STATUS reports.
//! Names are compared case-insensitively (iSCSI names are normalized to lower case,
//! RFC 3722 §6).

use mosaic_proto::scsi::sense::key;
use mosaic_proto::scsi::{Asc, Sense};
use serde::{Deserialize, Serialize};

use crate::device::Nexus;
use crate::ua::asc;

/// PERSISTENT RESERVE IN operation code (SPC-4 §6.15).
pub const PERSISTENT_RESERVE_IN: u8 = 0x5e;
/// PERSISTENT RESERVE OUT operation code (SPC-4 §6.16).
pub const PERSISTENT_RESERVE_OUT: u8 = 0x5f;

/// The most registrations one logical unit keeps. Bounds memory, the READ KEYS and
/// READ FULL STATUS data (each under 64 KiB here), and the APTPL file; a cluster has
/// a handful of nodes with a few paths each. Beyond it REGISTER fails with
/// INSUFFICIENT REGISTRATION RESOURCES (SPC-4 §6.16.2).
pub const MAX_REGISTRATIONS: usize = 128;
/// PROTOCOL IDENTIFIER of iSCSI (SPC-4 §7.6.1, Table 430).
pub const PROTOCOL_ISCSI: u8 = 0x5;
/// Longest iSCSI name (RFC 7143 §4.2.7.1: 223 bytes).
pub const MAX_ISCSI_NAME: usize = 223;
/// Fixed part of a PERSISTENT RESERVE OUT parameter list (SPC-4 §6.16.3, Table 185).
pub const PROUT_BASIC_LEN: usize = 24;

/// INVALID RELEASE OF PERSISTENT RESERVATION (SPC-4 Annex D).
pub const ASC_INVALID_RELEASE: Asc = Asc::new(0x26, 0x04);
/// INSUFFICIENT REGISTRATION RESOURCES (SPC-4 Annex D).
pub const ASC_INSUFFICIENT_REGISTRATION_RESOURCES: Asc = Asc::new(0x55, 0x04);

/// PERSISTENT RESERVE IN service actions (SPC-4 §6.15.1, Table 167).
pub mod prin {
    pub const READ_KEYS: u8 = 0x00;
    pub const READ_RESERVATION: u8 = 0x01;
    pub const REPORT_CAPABILITIES: u8 = 0x02;
    pub const READ_FULL_STATUS: u8 = 0x03;
}

/// PERSISTENT RESERVE OUT service actions (SPC-4 §6.16.2, Table 181).
pub mod prout {
    pub const REGISTER: u8 = 0x00;
    pub const RESERVE: u8 = 0x01;
    pub const RELEASE: u8 = 0x02;
    pub const CLEAR: u8 = 0x03;
    pub const PREEMPT: u8 = 0x04;
    pub const PREEMPT_AND_ABORT: u8 = 0x05;
    pub const REGISTER_AND_IGNORE_EXISTING_KEY: u8 = 0x06;
    pub const REGISTER_AND_MOVE: u8 = 0x07;
}

/// Persistent reservation types (SPC-4 §6.15.3.3, Table 172).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PrType {
    WriteExclusive,
    ExclusiveAccess,
    WriteExclusiveRegistrantsOnly,
    ExclusiveAccessRegistrantsOnly,
    WriteExclusiveAllRegistrants,
    ExclusiveAccessAllRegistrants,
}

impl PrType {
    /// Every type, in code order.
    pub const ALL: [PrType; 6] = [
        PrType::WriteExclusive,
        PrType::ExclusiveAccess,
        PrType::WriteExclusiveRegistrantsOnly,
        PrType::ExclusiveAccessRegistrantsOnly,
        PrType::WriteExclusiveAllRegistrants,
        PrType::ExclusiveAccessAllRegistrants,
    ];

    /// The TYPE field value.
    pub fn code(self) -> u8 {
        match self {
            PrType::WriteExclusive => 0x1,
            PrType::ExclusiveAccess => 0x3,
            PrType::WriteExclusiveRegistrantsOnly => 0x5,
            PrType::ExclusiveAccessRegistrantsOnly => 0x6,
            PrType::WriteExclusiveAllRegistrants => 0x7,
            PrType::ExclusiveAccessAllRegistrants => 0x8,
        }
    }

    pub fn from_code(code: u8) -> Option<PrType> {
        PrType::ALL.into_iter().find(|t| t.code() == code)
    }

    /// Every registrant is a reservation holder (SPC-4 §5.13.9).
    pub fn all_registrants(self) -> bool {
        matches!(
            self,
            PrType::WriteExclusiveAllRegistrants | PrType::ExclusiveAccessAllRegistrants
        )
    }

    /// Registrants-only or all-registrants: registered I_T nexuses get access.
    pub fn registrants_have_access(self) -> bool {
        !matches!(self, PrType::WriteExclusive | PrType::ExclusiveAccess)
    }

    /// Exclusive Access types: reads by others conflict too.
    pub fn exclusive_access(self) -> bool {
        matches!(
            self,
            PrType::ExclusiveAccess
                | PrType::ExclusiveAccessRegistrantsOnly
                | PrType::ExclusiveAccessAllRegistrants
        )
    }
}

/// Whom a registration or reservation belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Initiator {
    /// One initiator port: "<name>,i,0x<ISID>" in lower case (TransportID format 01,
    /// or the I_T nexus the command came on).
    Port(String),
    /// Every port of the initiator with this name, in lower case (format 00).
    Device(String),
}

impl Initiator {
    /// The initiator port of `nexus`.
    pub fn of(nexus: &Nexus) -> Initiator {
        Initiator::Port(nexus.initiator_port.to_ascii_lowercase())
    }

    /// Does this identify (a superset of) the I_T nexus `nexus`?
    pub fn matches(&self, nexus: &Nexus) -> bool {
        match self {
            Initiator::Port(p) => p.eq_ignore_ascii_case(&nexus.initiator_port),
            Initiator::Device(n) => n.eq_ignore_ascii_case(&nexus.initiator_name),
        }
    }

    /// Does it match the initiator port named `port` ("<name>,i,0x<ISID>")?
    pub fn matches_port(&self, port: &str) -> bool {
        match self {
            Initiator::Port(p) => p.eq_ignore_ascii_case(port),
            Initiator::Device(n) => port
                .split_once(",i,0x")
                .is_some_and(|(name, _)| name.eq_ignore_ascii_case(n)),
        }
    }

    /// The iSCSI TransportID (SPC-4 §7.6.4.6): format 01 for a port, 00 for a device.
    pub fn transport_id(&self) -> Vec<u8> {
        let (format, text) = match self {
            Initiator::Port(p) => (0x40, p.as_str()),
            Initiator::Device(n) => (0x00, n.as_str()),
        };
        // The name, its terminating NUL, padded to a multiple of four, and at least
        // 20 bytes of ADDITIONAL LENGTH (SPC-4 §7.6.4.6).
        let len = (text.len() + 1).next_multiple_of(4).max(20);
        let mut t = Vec::with_capacity(4 + len);
        t.push(format | PROTOCOL_ISCSI);
        t.push(0);
        t.extend_from_slice(&(len as u16).to_be_bytes());
        t.extend_from_slice(text.as_bytes());
        t.resize(4 + len, 0);
        t
    }
}

/// Parses one iSCSI TransportID at the start of `b` (SPC-4 §7.6.4.6). Returns the
/// initiator and the TransportID's length, or `None` if it is malformed: another
/// protocol, a reserved format, an ADDITIONAL LENGTH below 20 or not a multiple of
/// four, no NUL terminator, an empty or too long name, or a bad ISID.
pub fn parse_transport_id(b: &[u8]) -> Option<(Initiator, usize)> {
    let head = b.get(..4)?;
    if head[0] & 0x0f != PROTOCOL_ISCSI {
        return None;
    }
    let format = head[0] >> 6;
    let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
    if len < 20 || len % 4 != 0 {
        return None;
    }
    let body = b.get(4..4 + len)?;
    let nul = body.iter().position(|&c| c == 0)?;
    let text = std::str::from_utf8(&body[..nul]).ok()?.to_ascii_lowercase();
    let valid_name = |n: &str| {
        !n.is_empty() && n.len() <= MAX_ISCSI_NAME && n.bytes().all(|c| c.is_ascii_graphic())
    };
    let initiator = match format {
        0 if valid_name(&text) && !text.contains(",i,0x") => Initiator::Device(text),
        1 => {
            let (name, isid) = text.split_once(",i,0x")?;
            if !valid_name(name) || isid.is_empty() || isid.len() > 12 {
                return None;
            }
            let isid = u64::from_str_radix(isid, 16).ok()?;
            Initiator::Port(format!("{name},i,0x{isid:012x}"))
        }
        _ => return None,
    };
    Some((initiator, 4 + len))
}

/// One registration (SPC-4 §5.13.7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The reservation key; never zero.
    pub key: u64,
    /// Whose it is.
    pub initiator: Initiator,
    /// Registered with ALL_TG_PT = 1 (reported by READ FULL STATUS).
    pub all_tg_pt: bool,
    /// The relative target port it was made through.
    pub relative_port: u16,
}

/// The persistent reservation (SPC-4 §5.13.9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub ptype: PrType,
    /// The holder's registration identity; for all-registrants types every
    /// registrant holds it and this is who reserved.
    pub holder: Initiator,
}

/// What a successful PERSISTENT RESERVE OUT did besides its status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Effects {
    /// Unit attentions to establish, for every I_T nexus matching the initiator.
    pub unit_attentions: Vec<(Initiator, Asc)>,
    /// Registrations, reservation or APTPL changed: persist the state.
    pub changed: bool,
    /// PREEMPT AND ABORT: the task sets of these I_T nexuses must be aborted.
    pub abort: Vec<Initiator>,
}

/// Why a PERSISTENT RESERVE command fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrError {
    /// RESERVATION CONFLICT status.
    Conflict,
    /// CHECK CONDITION with this sense.
    Check(Sense),
}

impl PrError {
    fn cdb(byte: u16, bit: Option<u8>) -> PrError {
        PrError::Check(Sense::invalid_field_in_cdb(byte, bit))
    }
    fn param(byte: u16, bit: Option<u8>) -> PrError {
        PrError::Check(Sense::invalid_field_in_param(byte, bit))
    }
    fn length() -> PrError {
        PrError::Check(Sense::new(
            key::ILLEGAL_REQUEST,
            Asc::PARAMETER_LIST_LENGTH_ERROR,
        ))
    }
    fn resources() -> PrError {
        PrError::Check(Sense::new(
            key::ILLEGAL_REQUEST,
            ASC_INSUFFICIENT_REGISTRATION_RESOURCES,
        ))
    }
}

/// How a command is treated under a persistent reservation it does not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Allowed under every reservation type (INQUIRY, REPORT LUNS, TEST UNIT READY,
    /// READ CAPACITY, PERSISTENT RESERVE IN/OUT, ...).
    Always,
    /// Reads: allowed through Write Exclusive types, a conflict under Exclusive
    /// Access types unless registered for a registrants type.
    Read,
    /// Writes and state changes: a conflict unless registered for a registrants type.
    Write,
}

/// Classifies a CDB for the conflict check (SPC-4 §5.13.1 tables; SBC-3 §4.17). We
/// report ALLOW COMMANDS = 011b, so MODE SENSE, READ BUFFER, RECEIVE DIAGNOSTIC
/// RESULTS, RECEIVE COPY RESULTS and the REPORT SUPPORTED commands pass Write
/// Exclusive reservations like reads, and TEST UNIT READY passes every type.
pub fn classify(cdb: &[u8]) -> Access {
    let byte = |i: usize| cdb.get(i).copied().unwrap_or(0);
    match byte(0) {
        // TEST UNIT READY, REQUEST SENSE, INQUIRY, LOG SENSE, READ CAPACITY(10),
        // PRIN, PROUT (its own rules), RESERVE/RELEASE (the SPC-2 and CRH rules),
        // REPORT LUNS, MAINTENANCE IN (REPORT TARGET PORT GROUPS and friends),
        // READ MEDIA SERIAL NUMBER, and our READ ROUTING TABLE (C5h, metadata).
        0x00 | 0x03 | 0x12 | 0x4d | 0x25 | 0x5e | 0x5f | 0x16 | 0x17 | 0x56 | 0x57 | 0xa0
        | 0xa3 | 0xab | 0xc5 => Access::Always,
        // SERVICE ACTION IN(16): READ CAPACITY(16) always; GET LBA STATUS reads.
        0x9e if byte(1) & 0x1f == 0x10 => Access::Always,
        0x9e => Access::Read,
        // START STOP UNIT with START = 1 and POWER CONDITION = 0 (SBC-3 Table 13).
        0x1b if byte(4) & 0xf1 == 0x01 => Access::Always,
        // PREVENT ALLOW MEDIUM REMOVAL with PREVENT = 00b.
        0x1e if byte(4) & 0x03 == 0 => Access::Always,
        // READ(6/10/12/16), VERIFY(10/12/16), PRE-FETCH(10/16), READ DEFECT DATA,
        // MODE SENSE(6/10), READ BUFFER, RECEIVE DIAGNOSTIC RESULTS, RECEIVE COPY
        // RESULTS, READ LONG(10).
        0x08 | 0x28 | 0xa8 | 0x88 | 0x2f | 0xaf | 0x8f | 0x34 | 0x90 | 0x37 | 0xb7 | 0x1a
        | 0x5a | 0x3c | 0x1c | 0x84 | 0x3e => Access::Read,
        _ => Access::Write,
    }
}

/// One logical unit's persistent reservation state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrState {
    /// PRGENERATION (SPC-4 §6.15.2): bumped by every PROUT that changes registrations.
    pub generation: u32,
    /// In the order they were made.
    pub registrations: Vec<Registration>,
    pub reservation: Option<Reservation>,
    /// Activate Persist Through Power Loss: the last APTPL bit of a successful
    /// REGISTER, REGISTER AND IGNORE EXISTING KEY or REGISTER AND MOVE.
    pub aptpl: bool,
}

/// Parameters of PERSISTENT RESERVE OUT from the CDB (SPC-4 §6.16.1, Table 180).
#[derive(Debug, Clone, Copy)]
struct ProutCdb {
    service_action: u8,
    scope: u8,
    type_code: u8,
}

/// The basic parameter list (SPC-4 §6.16.3, Table 185).
#[derive(Debug, Clone, Copy)]
struct BasicParams {
    key: u64,
    sa_key: u64,
    spec_i_pt: bool,
    all_tg_pt: bool,
    aptpl: bool,
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// LU_SCOPE, the only scope (SPC-4 §6.15.3.2).
const LU_SCOPE: u8 = 0;

impl PrState {
    /// The registration of `nexus`: its own port's, else its initiator's (format 00).
    pub fn registration_index(&self, nexus: &Nexus) -> Option<usize> {
        let port = Initiator::of(nexus);
        self.registrations
            .iter()
            .position(|r| r.initiator == port)
            .or_else(|| {
                self.registrations
                    .iter()
                    .position(|r| r.initiator.matches(nexus))
            })
    }

    /// Is `nexus` registered?
    pub fn is_registered(&self, nexus: &Nexus) -> bool {
        self.registration_index(nexus).is_some()
    }

    /// Is `nexus` a holder of the reservation (SPC-4 §5.13.9)?
    pub fn is_holder(&self, nexus: &Nexus) -> bool {
        match &self.reservation {
            None => false,
            Some(r) if r.ptype.all_registrants() => self.is_registered(nexus),
            Some(r) => self
                .registration_index(nexus)
                .is_some_and(|i| self.registrations[i].initiator == r.holder),
        }
    }

    /// Would `cdb` from `nexus` conflict with the persistent reservation?
    pub fn conflicts(&self, nexus: &Nexus, cdb: &[u8]) -> bool {
        let Some(res) = &self.reservation else {
            return false;
        };
        let access = classify(cdb);
        if access == Access::Always || self.is_holder(nexus) {
            return false;
        }
        if res.ptype.registrants_have_access() && self.is_registered(nexus) {
            return false;
        }
        access == Access::Write || res.ptype.exclusive_access()
    }

    /// The key of the holder of a reservation that is not all-registrants.
    fn holder_key(&self) -> Option<u64> {
        let r = self.reservation.as_ref()?;
        self.registrations
            .iter()
            .find(|reg| reg.initiator == r.holder)
            .map(|reg| reg.key)
    }

    /// UAs `asc` for every registrant other than registration `except`.
    fn others(&self, except: Option<usize>, asc: Asc) -> Vec<(Initiator, Asc)> {
        self.registrations
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != except)
            .map(|(_, r)| (r.initiator.clone(), asc))
            .collect()
    }

    /// Removes registration `idx` on behalf of registration `issuer` (REGISTER with
    /// key 0), with what that does to the reservation (SPC-4 §5.13.11, "Releasing"):
    /// the holder of a non-all-registrants reservation going
    /// away releases it, and for registrants-only types everyone else still
    /// registered learns RESERVATIONS RELEASED; an all-registrants reservation ends
    /// with its last registrant.
    fn unregister(&mut self, idx: usize, fx: &mut Effects) {
        let gone = self.registrations.remove(idx);
        if let Some(res) = self.reservation.clone() {
            if res.ptype.all_registrants() {
                if self.registrations.is_empty() {
                    self.reservation = None;
                }
            } else if res.holder == gone.initiator {
                self.reservation = None;
                if matches!(
                    res.ptype,
                    PrType::WriteExclusiveRegistrantsOnly | PrType::ExclusiveAccessRegistrantsOnly
                ) {
                    fx.unit_attentions
                        .extend(self.others(None, asc::RESERVATIONS_RELEASED));
                }
            }
        }
    }

    /// Executes PERSISTENT RESERVE OUT (SPC-4 §6.16) from `me`. `data` is the
    /// parameter list received; `can_persist` says whether APTPL can be honoured.
    pub fn persistent_reserve_out(
        &mut self,
        me: &Nexus,
        cdb: &[u8],
        data: &[u8],
        can_persist: bool,
    ) -> Result<Effects, PrError> {
        if cdb.len() < 10 {
            return Err(PrError::cdb(0, None));
        }
        let c = ProutCdb {
            service_action: cdb[1] & 0x1f,
            scope: cdb[2] >> 4,
            type_code: cdb[2] & 0x0f,
        };
        let param_len = be32(cdb, 5) as usize;
        if c.service_action > prout::REGISTER_AND_MOVE {
            return Err(PrError::cdb(1, Some(4)));
        }
        if param_len < PROUT_BASIC_LEN || data.len() < param_len {
            return Err(PrError::length());
        }
        let data = &data[..param_len];
        if c.service_action == prout::REGISTER_AND_MOVE {
            return self.register_and_move(me, data, can_persist);
        }
        let p = BasicParams {
            key: be64(data, 0),
            sa_key: be64(data, 8),
            spec_i_pt: data[20] & 0x08 != 0,
            all_tg_pt: data[20] & 0x04 != 0,
            aptpl: data[20] & 0x01 != 0,
        };
        // SPEC_I_PT only for REGISTER; then the TransportIDs follow (§6.16.3).
        if p.spec_i_pt {
            if c.service_action != prout::REGISTER {
                return Err(PrError::param(20, Some(3)));
            }
        } else if param_len != PROUT_BASIC_LEN {
            return Err(PrError::length());
        }
        let me_idx = self.registration_index(me);
        match c.service_action {
            prout::REGISTER | prout::REGISTER_AND_IGNORE_EXISTING_KEY => {
                if p.aptpl && !can_persist {
                    return Err(PrError::param(20, Some(0)));
                }
                let ignore = c.service_action == prout::REGISTER_AND_IGNORE_EXISTING_KEY;
                let mut fx = self.register(me, me_idx, &p, ignore, data)?;
                if self.aptpl != p.aptpl {
                    self.aptpl = p.aptpl;
                    fx.changed = true;
                }
                Ok(fx)
            }
            _ => {
                // Every other service action needs a registered I_T nexus whose key
                // the RESERVATION KEY field names (SPC-4 §5.13.x, Table 66 note).
                let Some(me_idx) = me_idx else {
                    return Err(PrError::Conflict);
                };
                if self.registrations[me_idx].key != p.key {
                    return Err(PrError::Conflict);
                }
                match c.service_action {
                    prout::RESERVE => self.reserve(me_idx, c),
                    prout::RELEASE => self.release(me, me_idx, c),
                    prout::CLEAR => Ok(self.clear(me_idx)),
                    _ => self.preempt(me_idx, c, p.sa_key),
                }
            }
        }
    }

    /// REGISTER and REGISTER AND IGNORE EXISTING KEY (SPC-4 §5.13.7, Tables 60-61).
    fn register(
        &mut self,
        me: &Nexus,
        me_idx: Option<usize>,
        p: &BasicParams,
        ignore: bool,
        data: &[u8],
    ) -> Result<Effects, PrError> {
        let mut fx = Effects::default();
        match me_idx {
            None => {
                if !ignore && p.key != 0 {
                    return Err(PrError::Conflict);
                }
                if p.sa_key == 0 {
                    // Unregistered and asked to unregister: nothing to do.
                    return Ok(fx);
                }
                let mut new = vec![Initiator::of(me)];
                if p.spec_i_pt {
                    new.extend(self.spec_i_pt(me, data)?);
                }
                if self.registrations.len() + new.len() > MAX_REGISTRATIONS {
                    return Err(PrError::resources());
                }
                for initiator in new {
                    self.registrations.push(Registration {
                        key: p.sa_key,
                        initiator,
                        all_tg_pt: p.all_tg_pt,
                        relative_port: me.relative_port,
                    });
                }
            }
            Some(i) => {
                if !ignore && p.key != self.registrations[i].key {
                    return Err(PrError::Conflict);
                }
                if p.spec_i_pt {
                    // SPEC_I_PT from a registered I_T nexus (SPC-4 §6.16.3).
                    return Err(PrError::param(20, Some(3)));
                }
                if p.sa_key == 0 {
                    self.unregister(i, &mut fx);
                } else {
                    self.registrations[i].key = p.sa_key;
                }
            }
        }
        self.generation = self.generation.wrapping_add(1);
        fx.changed = true;
        Ok(fx)
    }

    /// The TransportIDs of a REGISTER with SPEC_I_PT = 1 (SPC-4 §6.16.3): all are
    /// checked before any is registered; each must be new.
    fn spec_i_pt(&self, me: &Nexus, data: &[u8]) -> Result<Vec<Initiator>, PrError> {
        if data.len() < PROUT_BASIC_LEN + 4 {
            return Err(PrError::length());
        }
        let list_len = be32(data, PROUT_BASIC_LEN) as usize;
        let start = PROUT_BASIC_LEN + 4;
        let Some(list) = data.get(start..start + list_len) else {
            return Err(PrError::length());
        };
        let mut out: Vec<Initiator> = Vec::new();
        let mut at = 0;
        while at < list.len() {
            let Some((initiator, len)) = parse_transport_id(&list[at..]) else {
                return Err(PrError::param((start + at) as u16, None));
            };
            let already = self.registrations.iter().any(|r| r.initiator == initiator);
            if already {
                return Err(PrError::param((start + at) as u16, None));
            }
            // The issuing I_T nexus is registered anyway; duplicates collapse.
            if initiator != Initiator::of(me) && !out.contains(&initiator) {
                out.push(initiator);
            }
            at += len;
        }
        Ok(out)
    }

    /// RESERVE (SPC-4 §5.13.9).
    fn reserve(&mut self, me_idx: usize, c: ProutCdb) -> Result<Effects, PrError> {
        if c.scope != LU_SCOPE {
            return Err(PrError::cdb(2, Some(7)));
        }
        let Some(ptype) = PrType::from_code(c.type_code) else {
            return Err(PrError::cdb(2, Some(3)));
        };
        let me = &self.registrations[me_idx];
        match &self.reservation {
            None => {
                self.reservation = Some(Reservation {
                    ptype,
                    holder: me.initiator.clone(),
                });
                Ok(Effects {
                    changed: true,
                    ..Effects::default()
                })
            }
            Some(r) => {
                let holder = r.ptype.all_registrants() || r.holder == me.initiator;
                if holder && r.ptype == ptype {
                    Ok(Effects::default())
                } else {
                    Err(PrError::Conflict)
                }
            }
        }
    }

    /// RELEASE (SPC-4 §5.13.11, "Releasing").
    fn release(&mut self, me: &Nexus, me_idx: usize, c: ProutCdb) -> Result<Effects, PrError> {
        let Some(r) = self.reservation.clone() else {
            return Ok(Effects::default());
        };
        if !self.is_holder(me) {
            return Ok(Effects::default());
        }
        if c.scope != LU_SCOPE || c.type_code != r.ptype.code() {
            return Err(PrError::Check(Sense::new(
                key::ILLEGAL_REQUEST,
                ASC_INVALID_RELEASE,
            )));
        }
        self.reservation = None;
        let mut fx = Effects {
            changed: true,
            ..Effects::default()
        };
        if r.ptype.registrants_have_access() {
            fx.unit_attentions = self.others(Some(me_idx), asc::RESERVATIONS_RELEASED);
        }
        Ok(fx)
    }

    /// CLEAR (SPC-4 §5.13.11, "Clearing"): every registration and the reservation go;
    /// everyone else registered learns RESERVATIONS PREEMPTED.
    fn clear(&mut self, me_idx: usize) -> Effects {
        let unit_attentions = self.others(Some(me_idx), asc::RESERVATIONS_PREEMPTED);
        self.registrations.clear();
        self.reservation = None;
        self.generation = self.generation.wrapping_add(1);
        Effects {
            unit_attentions,
            changed: true,
            abort: Vec::new(),
        }
    }

    /// Removes every registration with `key` except `me_idx`'s; returns the removed.
    fn remove_key(&mut self, key: u64, me_idx: usize) -> Vec<Initiator> {
        let me = self.registrations[me_idx].initiator.clone();
        let mut removed = Vec::new();
        self.registrations.retain(|r| {
            if r.key == key && r.initiator != me {
                removed.push(r.initiator.clone());
                false
            } else {
                true
            }
        });
        removed
    }

    /// PREEMPT and PREEMPT AND ABORT (SPC-4 §5.13.11, "Preempting").
    fn preempt(&mut self, me_idx: usize, c: ProutCdb, sa_key: u64) -> Result<Effects, PrError> {
        let abort = c.service_action == prout::PREEMPT_AND_ABORT;
        let me = self.registrations[me_idx].initiator.clone();
        let new_type = || -> Result<PrType, PrError> {
            if c.scope != LU_SCOPE {
                return Err(PrError::cdb(2, Some(7)));
            }
            PrType::from_code(c.type_code).ok_or(PrError::cdb(2, Some(3)))
        };
        let mut fx = Effects {
            changed: true,
            ..Effects::default()
        };
        let removed = match self.reservation.clone() {
            // All registrants hold it: key 0 takes it over, any other key only
            // removes registrations.
            Some(r) if r.ptype.all_registrants() && sa_key == 0 => {
                let ptype = new_type()?;
                let removed: Vec<Initiator> = self
                    .registrations
                    .iter()
                    .filter(|reg| reg.initiator != me)
                    .map(|reg| reg.initiator.clone())
                    .collect();
                self.registrations.retain(|reg| reg.initiator == me);
                self.reservation = Some(Reservation { ptype, holder: me });
                removed
            }
            Some(r) if !r.ptype.all_registrants() && self.holder_key() == Some(sa_key) => {
                // Preempting the holder: its registrations go, we hold the new
                // reservation, and a changed type is a release for everyone left.
                let ptype = new_type()?;
                let removed = self.remove_key(sa_key, me_idx);
                self.reservation = Some(Reservation {
                    ptype,
                    holder: me.clone(),
                });
                if ptype != r.ptype {
                    let me_idx = self
                        .registrations
                        .iter()
                        .position(|reg| reg.initiator == me);
                    fx.unit_attentions
                        .extend(self.others(me_idx, asc::RESERVATIONS_RELEASED));
                }
                removed
            }
            _ => {
                // No reservation, or not the holder's key: remove registrations only.
                if sa_key == 0 {
                    return Err(PrError::param(8, None));
                }
                let removed = self.remove_key(sa_key, me_idx);
                if removed.is_empty() && !self.registrations.iter().any(|r| r.key == sa_key) {
                    return Err(PrError::Conflict);
                }
                removed
            }
        };
        fx.unit_attentions.extend(
            removed
                .iter()
                .map(|i| (i.clone(), asc::REGISTRATIONS_PREEMPTED)),
        );
        if abort {
            fx.abort = removed;
        }
        self.generation = self.generation.wrapping_add(1);
        Ok(fx)
    }

    /// REGISTER AND MOVE (SPC-4 §5.13.8, §6.16.4): the holder hands its reservation
    /// to the I_T nexus named by a TransportID, registering it if needed.
    fn register_and_move(
        &mut self,
        me: &Nexus,
        data: &[u8],
        can_persist: bool,
    ) -> Result<Effects, PrError> {
        let key = be64(data, 0);
        let sa_key = be64(data, 8);
        let unreg = data[17] & 0x02 != 0;
        let aptpl = data[17] & 0x01 != 0;
        let rtpi = u16::from_be_bytes([data[18], data[19]]);
        let tid_len = be32(data, 20) as usize;
        let Some(tid) = data.get(PROUT_BASIC_LEN..PROUT_BASIC_LEN + tid_len) else {
            return Err(PrError::length());
        };
        let Some(me_idx) = self.registration_index(me) else {
            return Err(PrError::Conflict);
        };
        if self.registrations[me_idx].key != key {
            return Err(PrError::Conflict);
        }
        let Some(res) = self.reservation.clone() else {
            return Err(PrError::Conflict);
        };
        if res.ptype.all_registrants() || !self.is_holder(me) {
            return Err(PrError::Conflict);
        }
        if sa_key == 0 {
            return Err(PrError::param(8, None));
        }
        if aptpl && !can_persist {
            return Err(PrError::param(17, Some(0)));
        }
        if rtpi != me.relative_port {
            return Err(PrError::param(18, None));
        }
        let Some((dest, _)) = parse_transport_id(tid) else {
            return Err(PrError::param(PROUT_BASIC_LEN as u16, None));
        };
        if dest.matches(me) {
            return Err(PrError::param(PROUT_BASIC_LEN as u16, None));
        }
        if !self.registrations.iter().any(|r| r.initiator == dest) {
            if self.registrations.len() >= MAX_REGISTRATIONS {
                return Err(PrError::resources());
            }
            self.registrations.push(Registration {
                key: sa_key,
                initiator: dest.clone(),
                all_tg_pt: false,
                relative_port: rtpi,
            });
        }
        self.reservation = Some(Reservation {
            ptype: res.ptype,
            holder: dest,
        });
        if unreg {
            self.registrations.remove(me_idx);
        }
        self.aptpl = aptpl;
        self.generation = self.generation.wrapping_add(1);
        Ok(Effects {
            changed: true,
            ..Effects::default()
        })
    }

    /// Builds the PERSISTENT RESERVE IN data (SPC-4 §6.15), not cut to the
    /// allocation length. `can_persist` is PTPL_C.
    pub fn persistent_reserve_in(&self, cdb: &[u8], can_persist: bool) -> Result<Vec<u8>, Sense> {
        let sa = cdb.get(1).copied().unwrap_or(0) & 0x1f;
        let mut d = Vec::new();
        match sa {
            prin::READ_KEYS => {
                d.extend_from_slice(&self.generation.to_be_bytes());
                let keys = 8 * self.registrations.len() as u32;
                d.extend_from_slice(&keys.to_be_bytes());
                for r in &self.registrations {
                    d.extend_from_slice(&r.key.to_be_bytes());
                }
            }
            prin::READ_RESERVATION => {
                d.extend_from_slice(&self.generation.to_be_bytes());
                match &self.reservation {
                    None => d.extend_from_slice(&0u32.to_be_bytes()),
                    Some(r) => {
                        d.extend_from_slice(&16u32.to_be_bytes());
                        // All-registrants reservations report key 0 (§6.15.3.1).
                        let key = if r.ptype.all_registrants() {
                            0
                        } else {
                            self.holder_key().unwrap_or(0)
                        };
                        d.extend_from_slice(&key.to_be_bytes());
                        d.extend_from_slice(&[0; 4]); // obsolete
                        d.push(0);
                        d.push((LU_SCOPE << 4) | r.ptype.code());
                        d.extend_from_slice(&[0; 2]); // obsolete
                    }
                }
            }
            prin::REPORT_CAPABILITIES => {
                // §6.15.4, Table 174: CRH, SIP_C, ATP_C, PTPL_C; TMV, ALLOW COMMANDS
                // 011b, PTPL_A; every type in the mask.
                d.extend_from_slice(&8u16.to_be_bytes());
                d.push(0x10 | 0x08 | 0x04 | u8::from(can_persist));
                d.push(0x80 | (0b011 << 4) | u8::from(self.aptpl));
                d.push(0x80 | 0x40 | 0x20 | 0x08 | 0x02);
                d.push(0x01);
                d.extend_from_slice(&[0; 2]);
            }
            prin::READ_FULL_STATUS => {
                d.extend_from_slice(&self.generation.to_be_bytes());
                d.extend_from_slice(&[0; 4]);
                for r in &self.registrations {
                    let holder = match &self.reservation {
                        Some(res) => res.ptype.all_registrants() || res.holder == r.initiator,
                        None => false,
                    };
                    let tid = r.initiator.transport_id();
                    d.extend_from_slice(&r.key.to_be_bytes());
                    d.extend_from_slice(&[0; 4]);
                    d.push((u8::from(r.all_tg_pt) << 1) | u8::from(holder));
                    d.push(match (&self.reservation, holder) {
                        (Some(res), true) => (LU_SCOPE << 4) | res.ptype.code(),
                        _ => 0,
                    });
                    d.extend_from_slice(&[0; 4]);
                    let rtpi = if r.all_tg_pt { 0 } else { r.relative_port };
                    d.extend_from_slice(&rtpi.to_be_bytes());
                    d.extend_from_slice(&(tid.len() as u32).to_be_bytes());
                    d.extend_from_slice(&tid);
                }
                let additional = (d.len() - 8) as u32;
                d[4..8].copy_from_slice(&additional.to_be_bytes());
            }
            _ => return Err(Sense::invalid_field_in_cdb(1, Some(4))),
        }
        Ok(d)
    }

    /// The state as stored in the APTPL file.
    pub fn to_persisted(&self) -> Persisted {
        let who = |i: &Initiator| match i {
            Initiator::Port(p) => (p.clone(), true),
            Initiator::Device(n) => (n.clone(), false),
        };
        Persisted {
            version: PERSISTED_VERSION,
            generation: self.generation,
            registration: self
                .registrations
                .iter()
                .map(|r| {
                    let (initiator, port) = who(&r.initiator);
                    PersistedRegistration {
                        key: format!("{:#018x}", r.key),
                        initiator,
                        port,
                        all_tg_pt: r.all_tg_pt,
                        relative_port: r.relative_port,
                    }
                })
                .collect(),
            reservation: self.reservation.as_ref().map(|r| {
                let (holder, port) = who(&r.holder);
                PersistedReservation {
                    type_code: r.ptype.code(),
                    holder,
                    port,
                }
            }),
        }
    }

    /// Restores a stored state (APTPL is on, or it would not have been stored).
    pub fn from_persisted(p: &Persisted) -> Result<PrState, String> {
        if p.version != PERSISTED_VERSION {
            return Err(format!("unknown version {}", p.version));
        }
        let who = |name: &str, port: bool| {
            let name = name.to_ascii_lowercase();
            if port {
                Initiator::Port(name)
            } else {
                Initiator::Device(name)
            }
        };
        let mut registrations = Vec::new();
        for r in &p.registration {
            let hex = r.key.trim_start_matches("0x");
            let key = u64::from_str_radix(hex, 16)
                .map_err(|e| format!("registration key {:?}: {e}", r.key))?;
            if key == 0 {
                return Err("registration key 0".into());
            }
            registrations.push(Registration {
                key,
                initiator: who(&r.initiator, r.port),
                all_tg_pt: r.all_tg_pt,
                relative_port: r.relative_port,
            });
        }
        if registrations.len() > MAX_REGISTRATIONS {
            return Err(format!("{} registrations", registrations.len()));
        }
        let reservation = match &p.reservation {
            None => None,
            Some(r) => Some(Reservation {
                ptype: PrType::from_code(r.type_code)
                    .ok_or_else(|| format!("reservation type {}", r.type_code))?,
                holder: who(&r.holder, r.port),
            }),
        };
        Ok(PrState {
            generation: p.generation,
            registrations,
            reservation,
            aptpl: true,
        })
    }
}

/// Format version of [`Persisted`].
pub const PERSISTED_VERSION: u32 = 1;

/// The APTPL file's contents (TOML). Keys are hex strings: TOML integers are i64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Persisted {
    pub version: u32,
    pub generation: u32,
    #[serde(default)]
    pub registration: Vec<PersistedRegistration>,
    pub reservation: Option<PersistedReservation>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistedRegistration {
    pub key: String,
    pub initiator: String,
    /// `initiator` is a port ("<name>,i,0x<ISID>"), not a whole initiator.
    pub port: bool,
    pub all_tg_pt: bool,
    pub relative_port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistedReservation {
    pub type_code: u8,
    pub holder: String,
    pub port: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nexus(name: &str, isid: u64) -> Nexus {
        Nexus::new(name, isid, "iqn.t", 1, 1)
    }

    fn prout_cdb(sa: u8, ptype: u8, len: u32) -> [u8; 10] {
        let l = len.to_be_bytes();
        [0x5f, sa, ptype, 0, 0, l[0], l[1], l[2], l[3], 0]
    }

    fn params(key: u64, sa_key: u64, flags: u8) -> Vec<u8> {
        let mut p = vec![0u8; 24];
        p[0..8].copy_from_slice(&key.to_be_bytes());
        p[8..16].copy_from_slice(&sa_key.to_be_bytes());
        p[20] = flags;
        p
    }

    fn out(
        s: &mut PrState,
        me: &Nexus,
        sa: u8,
        ptype: u8,
        key: u64,
        sa_key: u64,
    ) -> Result<Effects, PrError> {
        let p = params(key, sa_key, 0);
        s.persistent_reserve_out(me, &prout_cdb(sa, ptype, 24), &p, false)
    }

    fn register(s: &mut PrState, me: &Nexus, key: u64) {
        out(s, me, prout::REGISTER_AND_IGNORE_EXISTING_KEY, 0, 0, key).unwrap();
    }

    fn read(s: &PrState, sa: u8) -> Vec<u8> {
        s.persistent_reserve_in(&[0x5e, sa, 0, 0, 0, 0, 0, 0x40, 0, 0], true)
            .unwrap()
    }

    const WE: u8 = 1;
    const EA: u8 = 3;
    const WERO: u8 = 5;
    const EARO: u8 = 6;
    const WEAR: u8 = 7;
    const EAAR: u8 = 8;
    const READ10: [u8; 10] = [0x28, 0, 0, 0, 0, 1, 0, 0, 1, 0];
    const WRITE10: [u8; 10] = [0x2a, 0, 0, 0, 0, 1, 0, 0, 1, 0];
    const TUR: [u8; 6] = [0; 6];

    #[test]
    fn register_then_reregister_with_wrong_key_conflicts() {
        let mut s = PrState::default();
        let a = nexus("iqn.a", 1);
        register(&mut s, &a, 0xaa);
        assert_eq!(s.generation, 1);
        // REGISTER from a registered nexus with RESERVATION KEY 0 (not its key).
        assert_eq!(
            out(&mut s, &a, prout::REGISTER, 0, 0, 0xab),
            Err(PrError::Conflict)
        );
        // Unregister with the right key.
        out(&mut s, &a, prout::REGISTER, 0, 0xaa, 0).unwrap();
        assert!(s.registrations.is_empty());
        assert_eq!(s.generation, 2);
    }

    #[test]
    fn register_unregistered_with_nonzero_key_conflicts() {
        let mut s = PrState::default();
        let a = nexus("iqn.a", 1);
        assert_eq!(
            out(&mut s, &a, prout::REGISTER, 0, 5, 6),
            Err(PrError::Conflict)
        );
        // SA key 0 from an unregistered nexus is a no-op without a generation bump.
        out(&mut s, &a, prout::REGISTER, 0, 0, 0).unwrap();
        assert_eq!(s.generation, 0);
    }

    #[test]
    fn reserve_needs_registration_and_matching_key() {
        let mut s = PrState::default();
        let a = nexus("iqn.a", 1);
        assert_eq!(
            out(&mut s, &a, prout::RESERVE, WE, 1, 0),
            Err(PrError::Conflict)
        );
        register(&mut s, &a, 1);
        assert_eq!(
            out(&mut s, &a, prout::RESERVE, WE, 2, 0),
            Err(PrError::Conflict)
        );
        assert!(matches!(
            out(&mut s, &a, prout::RESERVE, 2, 1, 0),
            Err(PrError::Check(_))
        ));
        out(&mut s, &a, prout::RESERVE, WE, 1, 0).unwrap();
        // Same type again: fine; another type: conflict.
        out(&mut s, &a, prout::RESERVE, WE, 1, 0).unwrap();
        assert_eq!(
            out(&mut s, &a, prout::RESERVE, EA, 1, 0),
            Err(PrError::Conflict)
        );
        // RESERVE does not bump the generation.
        assert_eq!(s.generation, 1);
    }

    /// libiscsi's ProutReserve.Access* matrix: (type, registered i2 reads,
    /// registered i2 writes, unregistered i2 reads, unregistered i2 writes).
    #[test]
    fn access_matrix_matches_spc4() {
        let cases = [
            (WE, true, false, true, false),
            (EA, false, false, false, false),
            (WERO, true, true, true, false),
            (EARO, true, true, false, false),
            (WEAR, true, true, true, false),
            (EAAR, true, true, false, false),
        ];
        for (t, rr, rw, ur, uw) in cases {
            let mut s = PrState::default();
            let (a, b) = (nexus("iqn.a", 1), nexus("iqn.b", 2));
            register(&mut s, &a, 1);
            register(&mut s, &b, 2);
            out(&mut s, &a, prout::RESERVE, t, 1, 0).unwrap();
            assert!(!s.conflicts(&a, &READ10) && !s.conflicts(&a, &WRITE10));
            assert_eq!(!s.conflicts(&b, &READ10), rr, "type {t} registered read");
            assert_eq!(!s.conflicts(&b, &WRITE10), rw, "type {t} registered write");
            assert!(!s.conflicts(&b, &TUR));
            out(&mut s, &b, prout::REGISTER, 0, 2, 0).unwrap();
            assert_eq!(!s.conflicts(&b, &READ10), ur, "type {t} unregistered read");
            assert_eq!(
                !s.conflicts(&b, &WRITE10),
                uw,
                "type {t} unregistered write"
            );
        }
    }

    #[test]
    fn holder_unregistering_releases_and_registrants_only_tells_others() {
        for (t, ua) in [(EA, false), (WE, false), (EARO, true), (WERO, true)] {
            let mut s = PrState::default();
            let (a, b) = (nexus("iqn.a", 1), nexus("iqn.b", 2));
            register(&mut s, &a, 1);
            register(&mut s, &b, 2);
            out(&mut s, &a, prout::RESERVE, t, 1, 0).unwrap();
            let fx = out(&mut s, &a, prout::REGISTER, 0, 1, 0).unwrap();
            assert_eq!(s.reservation, None);
            let expected = if ua {
                vec![(Initiator::of(&b), asc::RESERVATIONS_RELEASED)]
            } else {
                vec![]
            };
            assert_eq!(fx.unit_attentions, expected, "type {t}");
        }
    }

    #[test]
    fn all_registrants_reservation_survives_until_last_registrant() {
        let mut s = PrState::default();
        let (a, b) = (nexus("iqn.a", 1), nexus("iqn.b", 2));
        register(&mut s, &a, 1);
        register(&mut s, &b, 2);
        out(&mut s, &a, prout::RESERVE, EAAR, 1, 0).unwrap();
        assert!(s.is_holder(&b));
        out(&mut s, &a, prout::REGISTER, 0, 1, 0).unwrap();
        let rr = read(&s, prin::READ_RESERVATION);
        assert_eq!(be32(&rr, 4), 16);
        assert_eq!(be64(&rr, 8), 0, "all-registrants reservations report key 0");
        assert_eq!(rr[21], EAAR);
        // b releases it: nobody else registered, so no unit attention.
        let fx = out(&mut s, &b, prout::RELEASE, EAAR, 2, 0).unwrap();
        assert!(fx.unit_attentions.is_empty());
        assert_eq!(s.reservation, None);
    }

    #[test]
    fn release_by_non_holder_is_a_noop_and_wrong_type_is_invalid_release() {
        let mut s = PrState::default();
        let (a, b) = (nexus("iqn.a", 1), nexus("iqn.b", 2));
        register(&mut s, &a, 1);
        register(&mut s, &b, 2);
        out(&mut s, &a, prout::RESERVE, WE, 1, 0).unwrap();
        out(&mut s, &b, prout::RELEASE, WE, 2, 0).unwrap();
        assert!(s.reservation.is_some());
        let err = out(&mut s, &a, prout::RELEASE, EA, 1, 0).unwrap_err();
        assert_eq!(
            err,
            PrError::Check(Sense::new(key::ILLEGAL_REQUEST, ASC_INVALID_RELEASE))
        );
        out(&mut s, &a, prout::RELEASE, WE, 1, 0).unwrap();
        assert_eq!(s.reservation, None);
    }

    #[test]
    fn release_of_registrants_only_tells_other_registrants() {
        let mut s = PrState::default();
        let (a, b) = (nexus("iqn.a", 1), nexus("iqn.b", 2));
        register(&mut s, &a, 1);
        register(&mut s, &b, 2);
        out(&mut s, &a, prout::RESERVE, WERO, 1, 0).unwrap();
        let fx = out(&mut s, &a, prout::RELEASE, WERO, 1, 0).unwrap();
        assert_eq!(
            fx.unit_attentions,
            vec![(Initiator::of(&b), asc::RESERVATIONS_RELEASED)]
        );
    }

    #[test]
    fn clear_removes_everything_and_preempts_others() {
        let mut s = PrState::default();
        let (a, b) = (nexus("iqn.a", 1), nexus("iqn.b", 2));
        register(&mut s, &a, 1);
        register(&mut s, &b, 2);
        out(&mut s, &a, prout::RESERVE, EA, 1, 0).unwrap();
        let g = s.generation;
        let fx = out(&mut s, &a, prout::CLEAR, 0, 1, 0).unwrap();
        assert_eq!(
            fx.unit_attentions,
            vec![(Initiator::of(&b), asc::RESERVATIONS_PREEMPTED)]
        );
        assert!(s.registrations.is_empty() && s.reservation.is_none());
        assert_eq!(s.generation, g + 1);
    }

    #[test]
    fn preempt_without_reservation_removes_registrations() {
        let mut s = PrState::default();
        let (a, b) = (nexus("iqn.a", 1), nexus("iqn.b", 2));
        register(&mut s, &a, 1);
        register(&mut s, &b, 2);
        let g = s.generation;
        let fx = out(&mut s, &b, prout::PREEMPT, EA, 2, 1).unwrap();
        assert_eq!(
            fx.unit_attentions,
            vec![(Initiator::of(&a), asc::REGISTRATIONS_PREEMPTED)]
        );
        assert_eq!(s.registrations.len(), 1);
        assert_eq!(s.registrations[0].key, 2);
        assert_eq!(s.generation, g + 1);
        assert_eq!(s.reservation, None);
        // Nobody has key 7: conflict. Key 0 without reservation: invalid.
        assert_eq!(
            out(&mut s, &b, prout::PREEMPT, EA, 2, 7),
            Err(PrError::Conflict)
        );
        assert!(matches!(
            out(&mut s, &b, prout::PREEMPT, EA, 2, 0),
            Err(PrError::Check(_))
        ));
    }

    #[test]
    fn preempting_the_holder_takes_the_reservation() {
        let mut s = PrState::default();
        let (a, b, c) = (nexus("iqn.a", 1), nexus("iqn.b", 2), nexus("iqn.c", 3));
        register(&mut s, &a, 1);
        register(&mut s, &b, 2);
        register(&mut s, &c, 3);
        out(&mut s, &a, prout::RESERVE, WERO, 1, 0).unwrap();
        let fx = out(&mut s, &b, prout::PREEMPT_AND_ABORT, EA, 2, 1).unwrap();
        assert!(s.is_holder(&b));
        assert_eq!(
            s.reservation.as_ref().unwrap().ptype,
            PrType::ExclusiveAccess
        );
        assert!(!s.is_registered(&a));
        assert!(fx
            .unit_attentions
            .contains(&(Initiator::of(&a), asc::REGISTRATIONS_PREEMPTED)));
        // The type changed: c, still registered, learns of the release.
        assert!(fx
            .unit_attentions
            .contains(&(Initiator::of(&c), asc::RESERVATIONS_RELEASED)));
        assert_eq!(fx.abort, vec![Initiator::of(&a)]);
    }

    #[test]
    fn preempt_all_registrants_with_key_zero() {
        let mut s = PrState::default();
        let (a, b) = (nexus("iqn.a", 1), nexus("iqn.b", 2));
        register(&mut s, &a, 1);
        register(&mut s, &b, 2);
        out(&mut s, &a, prout::RESERVE, WEAR, 1, 0).unwrap();
        out(&mut s, &b, prout::PREEMPT, WE, 2, 0).unwrap();
        assert_eq!(s.registrations.len(), 1);
        assert!(s.is_holder(&b));
        assert_eq!(
            s.reservation.as_ref().unwrap().ptype,
            PrType::WriteExclusive
        );
    }

    #[test]
    fn read_keys_and_full_status_layout() {
        let mut s = PrState::default();
        let (a, b) = (nexus("iqn.a", 0x23d000001), nexus("iqn.b", 2));
        register(&mut s, &a, 0x1111);
        let p = params(0, 0x2222, 0x04);
        s.persistent_reserve_out(&b, &prout_cdb(prout::REGISTER, 0, 24), &p, false)
            .unwrap();
        out(&mut s, &a, prout::RESERVE, WE, 0x1111, 0).unwrap();
        let k = read(&s, prin::READ_KEYS);
        assert_eq!(be32(&k, 0), 2);
        assert_eq!(be32(&k, 4), 16);
        assert_eq!((be64(&k, 8), be64(&k, 16)), (0x1111, 0x2222));
        let f = read(&s, prin::READ_FULL_STATUS);
        assert_eq!(be32(&f, 4) as usize, f.len() - 8);
        // First descriptor: a, holder of WE, through relative port 1.
        assert_eq!(be64(&f, 8), 0x1111);
        assert_eq!(f[20], 0x01);
        assert_eq!(f[21], WE);
        assert_eq!(u16::from_be_bytes([f[26], f[27]]), 1);
        let tid_len = be32(&f, 28) as usize;
        let (who, len) = parse_transport_id(&f[32..]).unwrap();
        assert_eq!((who, len), (Initiator::of(&a), tid_len));
        assert_eq!(f[32], 0x45, "format 01, iSCSI");
        // Second: b with ALL_TG_PT, not a holder, relative port 0.
        let d2 = 32 + tid_len;
        assert_eq!(be64(&f, d2), 0x2222);
        assert_eq!(f[d2 + 12], 0x02);
        assert_eq!(u16::from_be_bytes([f[d2 + 18], f[d2 + 19]]), 0);
    }

    #[test]
    fn report_capabilities_fields() {
        let s = PrState::default();
        let c = read(&s, prin::REPORT_CAPABILITIES);
        assert_eq!(c.len(), 8);
        assert_eq!(u16::from_be_bytes([c[0], c[1]]), 8);
        assert_eq!(c[2], 0x1d, "CRH SIP_C ATP_C PTPL_C");
        assert_eq!(c[3] & 0x70, 0x30, "ALLOW COMMANDS 011b");
        assert_eq!((c[4], c[5]), (0xea, 0x01));
    }

    #[test]
    fn prin_unknown_service_action_is_invalid_field() {
        let s = PrState::default();
        for sa in 4..0x20 {
            assert!(s
                .persistent_reserve_in(&[0x5e, sa, 0, 0, 0, 0, 0, 0, 8, 0], true)
                .is_err());
        }
    }

    #[test]
    fn transport_ids_round_trip_and_normalize() {
        let p = Initiator::Port("iqn.1993-08.org.debian:01:abc,i,0x00023d000001".into());
        let t = p.transport_id();
        assert_eq!(t.len() % 4, 0);
        assert_eq!(parse_transport_id(&t), Some((p.clone(), t.len())));
        let d = Initiator::Device("iqn.x".into());
        let t = d.transport_id();
        assert_eq!(t.len(), 24, "padded to an additional length of 20");
        assert_eq!(parse_transport_id(&t), Some((d, 24)));
        // Upper case and a short ISID normalize to our port name.
        let mut t = vec![0x45, 0, 0, 24];
        t.extend_from_slice(b"IQN.X,i,0x1F\0");
        t.resize(28, 0);
        assert_eq!(
            parse_transport_id(&t),
            Some((Initiator::Port("iqn.x,i,0x00000000001f".into()), 28))
        );
    }

    #[test]
    fn malformed_transport_ids_are_refused() {
        let good = Initiator::Device("iqn.x".into()).transport_id();
        let mut fc = good.clone();
        fc[0] = 0x00; // FC protocol
        let mut odd = good.clone();
        odd[3] = 21;
        let mut no_nul = good.clone();
        for b in &mut no_nul[4..] {
            *b = b'a';
        }
        let mut reserved_format = good.clone();
        reserved_format[0] = 0x85;
        for t in [&fc, &odd, &no_nul, &reserved_format, &good[..10].to_vec()] {
            assert_eq!(parse_transport_id(t), None, "{t:?}");
        }
    }

    #[test]
    fn spec_i_pt_registers_listed_initiators() {
        let mut s = PrState::default();
        let a = nexus("iqn.a", 1);
        let b_port = Initiator::Port("iqn.b,i,0x000000000002".into());
        let c_dev = Initiator::Device("iqn.c".into());
        let mut tids = b_port.transport_id();
        tids.extend(c_dev.transport_id());
        let mut p = params(0, 9, 0x08);
        p.extend_from_slice(&(tids.len() as u32).to_be_bytes());
        p.extend_from_slice(&tids);
        let len = p.len() as u32;
        s.persistent_reserve_out(&a, &prout_cdb(prout::REGISTER, 0, len), &p, false)
            .unwrap();
        assert_eq!(s.registrations.len(), 3);
        assert!(s.is_registered(&nexus("iqn.b", 2)));
        assert!(!s.is_registered(&nexus("iqn.b", 3)));
        assert!(
            s.is_registered(&nexus("iqn.c", 77)),
            "format 00 covers every port"
        );
        // SPEC_I_PT with REGISTER AND IGNORE is invalid.
        let r = s.persistent_reserve_out(
            &nexus("iqn.d", 1),
            &prout_cdb(prout::REGISTER_AND_IGNORE_EXISTING_KEY, 0, len),
            &p,
            false,
        );
        assert!(matches!(r, Err(PrError::Check(_))));
    }

    #[test]
    fn parameter_list_length_must_be_24() {
        let mut s = PrState::default();
        let a = nexus("iqn.a", 1);
        let p = params(0, 1, 0);
        let r = s.persistent_reserve_out(&a, &prout_cdb(prout::REGISTER, 0, 20), &p, false);
        assert_eq!(r, Err(PrError::length()));
        let mut long = p.clone();
        long.extend_from_slice(&[0; 4]);
        let r = s.persistent_reserve_out(&a, &prout_cdb(prout::REGISTER, 0, 28), &long, false);
        assert_eq!(r, Err(PrError::length()));
    }

    #[test]
    fn aptpl_needs_persistence() {
        let mut s = PrState::default();
        let a = nexus("iqn.a", 1);
        let p = params(0, 1, 0x01);
        let cdb = prout_cdb(prout::REGISTER, 0, 24);
        assert!(s.persistent_reserve_out(&a, &cdb, &p, false).is_err());
        let fx = s.persistent_reserve_out(&a, &cdb, &p, true).unwrap();
        assert!(fx.changed && s.aptpl);
        assert_eq!(read(&s, prin::REPORT_CAPABILITIES)[3] & 0x01, 1, "PTPL_A");
    }

    #[test]
    fn register_and_move_hands_over_the_reservation() {
        let mut s = PrState::default();
        let (a, b) = (nexus("iqn.a", 1), nexus("iqn.b", 2));
        register(&mut s, &a, 1);
        out(&mut s, &a, prout::RESERVE, EA, 1, 0).unwrap();
        let tid = Initiator::of(&b).transport_id();
        let mut p = params(1, 0x77, 0);
        p[17] = 0x02; // UNREG
        p[18..20].copy_from_slice(&1u16.to_be_bytes());
        p[20..24].copy_from_slice(&(tid.len() as u32).to_be_bytes());
        p.extend_from_slice(&tid);
        let cdb = prout_cdb(prout::REGISTER_AND_MOVE, EA, p.len() as u32);
        s.persistent_reserve_out(&a, &cdb, &p, false).unwrap();
        assert!(s.is_holder(&b));
        assert!(!s.is_registered(&a));
        assert_eq!(s.registrations[0].key, 0x77);
        // b cannot move it to itself.
        let mut p2 = params(0x77, 5, 0);
        p2[18..20].copy_from_slice(&1u16.to_be_bytes());
        p2[20..24].copy_from_slice(&(tid.len() as u32).to_be_bytes());
        p2.extend_from_slice(&tid);
        let r = s.persistent_reserve_out(&b, &cdb, &p2, false);
        assert!(matches!(r, Err(PrError::Check(_))));
        // A non-holder cannot move it.
        register(&mut s, &a, 3);
        let mut p3 = params(3, 5, 0);
        p3[18..20].copy_from_slice(&1u16.to_be_bytes());
        p3[20..24].copy_from_slice(&(tid.len() as u32).to_be_bytes());
        p3.extend_from_slice(&tid);
        assert_eq!(
            s.persistent_reserve_out(&a, &cdb, &p3, false),
            Err(PrError::Conflict)
        );
    }

    #[test]
    fn persisted_state_round_trips_through_toml() {
        let mut s = PrState::default();
        let (a, b) = (nexus("iqn.a", 1), nexus("iqn.b", 2));
        let p = params(0, u64::MAX, 0x01);
        s.persistent_reserve_out(&a, &prout_cdb(prout::REGISTER, 0, 24), &p, true)
            .unwrap();
        register(&mut s, &b, 2);
        out(&mut s, &a, prout::RESERVE, WERO, u64::MAX, 0).unwrap();
        s.aptpl = true;
        let text = toml::to_string(&s.to_persisted()).unwrap();
        let back: Persisted = toml::from_str(&text).unwrap();
        assert_eq!(PrState::from_persisted(&back).unwrap(), s);
    }

    #[test]
    fn commands_are_classified_per_spc4_tables() {
        assert_eq!(classify(&[0x12]), Access::Always);
        assert_eq!(classify(&[0xa0]), Access::Always);
        assert_eq!(classify(&[0x9e, 0x10]), Access::Always);
        assert_eq!(classify(&[0x9e, 0x12]), Access::Read);
        assert_eq!(classify(&[0x1b, 0, 0, 0, 0x01, 0]), Access::Always);
        assert_eq!(classify(&[0x1b, 0, 0, 0, 0x00, 0]), Access::Write);
        assert_eq!(classify(&[0x1e, 0, 0, 0, 0x01, 0]), Access::Write);
        assert_eq!(classify(&[0x1a]), Access::Read);
        assert_eq!(classify(&[0x35]), Access::Write, "SYNCHRONIZE CACHE");
        assert_eq!(classify(&[0x42]), Access::Write, "UNMAP");
        assert_eq!(classify(&[0x89]), Access::Write, "COMPARE AND WRITE");
    }
}
