//! The properties the target fuzz targets check (`fuzz/fuzz_targets/login.rs`,
//! `pr_params.rs`, `unmap_params.rs`, `xcopy_params.rs`, the device half of
//! `read_routing_table.rs`), run here by proptest so that CI checks them
//! too (STYLE.md item 10).
//!
//! The `check_*` functions are the single definition of each property: the fuzz
//! targets include this file with `#[path]` and call them on what libFuzzer
//! generates; the `props` module below calls them on what proptest generates. Only
//! `props` needs proptest, so it is compiled only as a test.

use std::collections::HashMap;

use bytes::Bytes;
use mosaic_proto::chap::{ChapConfig, Credentials, CHALLENGE_LEN};
use mosaic_proto::negotiate::{Limits, SessionType};
use mosaic_proto::pdu::{login_status, stage, LoginRequest, ISCSI_VERSION};
use mosaic_proto::scsi::opcode as op;
use mosaic_proto::scsi::sense::key;
use mosaic_proto::scsi::status;
use mosaic_proto::text;
use mosaic_target::device::{Device, Nexus};
use mosaic_target::login::{LoginStep, LoginTarget, TargetAccess, TargetLogin};
use mosaic_target::pr::{
    parse_transport_id, prin, prout, Initiator, PrError, PrState, MAX_REGISTRATIONS,
    PERSISTENT_RESERVE_OUT,
};
use mosaic_target::scsi::{LogicalUnit, LuConfig, LuOptions, ScsiRequest};
use mosaic_target::store::BackingStore;
use mosaic_target::xcopy::{
    chunks, parse_param_list, plan, ListIdUsage, ParamList, TargetGeometry, COPY_CHUNK_BYTES,
    MAX_COPY_BYTES, MAX_CSCD_DESCRIPTORS, MAX_SEGMENT_BYTES, MAX_SEGMENT_DESCRIPTORS,
};

// ---------------------------------------------------------------- login

/// A target anyone may log in to.
pub const OPEN_TARGET: &str = "iqn.2026-11.io.mosaic:open";
/// A target that requires one-way CHAP.
pub const CHAP_TARGET: &str = "iqn.2026-11.io.mosaic:chap";
/// A target only [`ALLOWED_INITIATOR`] may log in to.
pub const ACL_TARGET: &str = "iqn.2026-11.io.mosaic:acl";
pub const ALLOWED_INITIATOR: &str = "iqn.allowed";
/// CHAP user and secret of [`CHAP_TARGET`] (and of discovery when it needs CHAP).
pub const CHAP_USER: &str = "u";
pub const CHAP_SECRET: &str = "initiator-secret";
/// The CHAP identifier and challenge the login is seeded with.
pub const CHAP_SEED: (u8, [u8; CHALLENGE_LEN]) = (7, [0x5a; CHALLENGE_LEN]);

/// How the target under login is set up.
#[derive(Debug, Clone)]
pub struct LoginSetup {
    pub limits: Limits,
    /// Discovery sessions need CHAP too.
    pub discovery_chap: bool,
}

/// One Login Request and its data segment; `answer_chap` appends the right
/// CHAP_N/CHAP_R for the seeded challenge, so that generated logins can get past
/// authentication.
#[derive(Debug, Clone)]
pub struct LoginInput {
    pub req: LoginRequest,
    pub data: Vec<u8>,
    pub answer_chap: bool,
}

fn chap_config() -> ChapConfig {
    ChapConfig {
        initiator: Credentials {
            user: CHAP_USER.into(),
            secret: CHAP_SECRET.into(),
        },
        target: None,
    }
}

impl LoginSetup {
    pub fn target(&self) -> LoginTarget {
        let mut access = HashMap::new();
        access.insert(
            CHAP_TARGET.to_string(),
            TargetAccess {
                chap: Some(chap_config()),
                initiators: Vec::new(),
            },
        );
        access.insert(
            ACL_TARGET.to_string(),
            TargetAccess {
                chap: None,
                initiators: vec![ALLOWED_INITIATOR.into()],
            },
        );
        LoginTarget {
            target_names: vec![OPEN_TARGET.into(), CHAP_TARGET.into(), ACL_TARGET.into()],
            portal_group_tag: 1,
            limits: self.limits.clone(),
            discovery_chap: self.discovery_chap.then(chap_config),
            access,
            redirect: None,
        }
    }
}

/// The right CHAP answer to the seeded challenge, as text records.
pub fn chap_answer() -> Vec<u8> {
    let r = mosaic_proto::chap::response(CHAP_SEED.0, CHAP_SECRET.as_bytes(), &CHAP_SEED.1);
    let pairs = [
        ("CHAP_N", CHAP_USER.to_string()),
        ("CHAP_R", text::format_hex(&r)),
    ];
    text::encode(&pairs).expect("valid keys").to_vec()
}

/// Runs `steps` through one connection's [`TargetLogin`] until it completes or fails.
///
/// Properties: never panics; every response echoes ITT, ISID, TSIH and CSG and
/// carries version 0; a failure has a failure status class and ends the login; a
/// response that moves on only does so when asked, to stage 1 or (completing) 3;
/// every response text parses back (see `check_answer_text`); a completed login
/// agrees on parameters within our limits, names a target we export, came through
/// CHAP if the target (or discovery) requires it, and passed the initiator ACL.
pub fn check_login(setup: &LoginSetup, steps: &[LoginInput]) {
    let mut l = TargetLogin::new(setup.target(), CHAP_SEED);
    let mut sent_chap_r = false;
    for s in steps {
        let mut data = s.data.clone();
        if s.answer_chap {
            if !data.is_empty() && data.last() != Some(&0) {
                data.push(0);
            }
            data.extend_from_slice(&chap_answer());
        }
        sent_chap_r |= data.windows(7).any(|w| w == b"CHAP_R=");
        let req = &s.req;
        let step = l.handle(req, &data);
        let r = match &step {
            LoginStep::Continue(r, _)
            | LoginStep::Complete(r, _, _)
            | LoginStep::Fail(r, _)
            | LoginStep::Redirect(r, _) => *r,
        };
        assert_eq!(r.itt, req.itt, "{step:?}");
        assert_eq!(r.isid, req.isid, "{step:?}");
        assert_eq!(r.tsih, req.tsih, "{step:?}");
        assert_eq!(r.csg, req.csg, "{step:?}");
        assert_eq!(
            (r.version_max, r.version_active),
            (ISCSI_VERSION, ISCSI_VERSION)
        );
        assert!(!r.continue_bit, "{step:?}");
        match step {
            LoginStep::Redirect(..) => panic!("redirected with no group portal: {step:?}"),
            LoginStep::Fail(r, _) => {
                assert!(
                    r.status_class == login_status::INITIATOR_ERROR.0
                        || r.status_class == login_status::TARGET_ERROR.0,
                    "{r:?}"
                );
                return;
            }
            LoginStep::Continue(r, body) => {
                assert_eq!((r.status_class, r.status_detail), login_status::SUCCESS);
                assert!(!(req.transit && req.continue_bit));
                if r.transit {
                    assert!(req.transit, "moved on unasked: {r:?}");
                    assert_eq!(r.nsg, req.nsg, "{r:?}");
                    assert_eq!(r.nsg, stage::LOGIN_OPERATIONAL_NEGOTIATION, "{r:?}");
                } else {
                    assert_eq!(r.nsg, 0, "{r:?}");
                }
                check_body(&body);
            }
            LoginStep::Complete(r, body, result) => {
                assert_eq!((r.status_class, r.status_detail), login_status::SUCCESS);
                assert!(r.transit && req.transit, "{r:?}");
                assert_eq!(r.nsg, stage::FULL_FEATURE_PHASE);
                assert_eq!(req.nsg, stage::FULL_FEATURE_PHASE);
                check_body(&body);
                assert_eq!(result.isid, req.isid);
                assert_eq!(result.cid, req.cid);
                assert_eq!(result.tsih, req.tsih);
                assert_eq!(result.params.session_type, result.session_type);
                mirror::check_params(&result.params, &setup.limits);
                let needs_chap = match result.session_type {
                    SessionType::Discovery => setup.discovery_chap,
                    SessionType::Normal => {
                        let name = result
                            .target_name
                            .as_deref()
                            .expect("Normal names a target");
                        assert!([OPEN_TARGET, CHAP_TARGET, ACL_TARGET].contains(&name));
                        if name == ACL_TARGET {
                            assert_eq!(result.initiator_name, ALLOWED_INITIATOR);
                        }
                        name == CHAP_TARGET
                    }
                };
                if needs_chap {
                    assert!(sent_chap_r, "logged in without CHAP: {result:?}");
                    assert_eq!(result.params.auth_method, "CHAP", "{result:?}");
                }
                return;
            }
        }
    }
}

fn check_body(body: &Bytes) {
    let pairs = text::parse_allow_duplicates(body)
        .unwrap_or_else(|e| panic!("response text {body:?} does not parse: {e}"));
    mirror::check_answer_text(&pairs, true);
}

/// The proto mirror's checks shared with the login (negotiated parameters, answer text).
#[allow(dead_code)]
#[path = "../../proto/tests/fuzz_mirror.rs"]
pub mod mirror;

// ---------------------------------------------------------------- PERSISTENT RESERVE OUT

/// The I_T nexuses the PR checks issue commands from: two ports of one initiator
/// (on two target ports), and a second initiator.
pub fn pr_nexuses() -> Vec<Nexus> {
    vec![
        Nexus::new("iqn.a", 1, "iqn.t", 1, 1),
        Nexus::new("iqn.a", 2, "iqn.t", 1, 2),
        Nexus::new("iqn.b", 1, "iqn.t", 1, 1),
        Nexus::new("iqn.c", 0x23d000001, "iqn.t", 1, 1),
    ]
}

/// One PERSISTENT RESERVE OUT, from nexus `nexus` (an index into [`pr_nexuses`]).
#[derive(Debug, Clone)]
pub struct PrOp {
    pub nexus: u8,
    pub cdb: Vec<u8>,
    pub data: Vec<u8>,
    pub can_persist: bool,
}

/// A PROUT CDB with a service action, scope and type, and a parameter list length.
pub fn prout_cdb(sa: u8, scope_type: u8, param_len: u32) -> Vec<u8> {
    let l = param_len.to_be_bytes();
    vec![
        PERSISTENT_RESERVE_OUT,
        sa,
        scope_type,
        0,
        0,
        l[0],
        l[1],
        l[2],
        l[3],
        0,
    ]
}

/// A PROUT parameter list (SPC-4 §6.16.3, or §6.16.4 for REGISTER AND MOVE) from
/// its fields and TransportIDs.
pub fn prout_params(sa: u8, key: u64, sa_key: u64, flags: u8, rtpi: u16, tids: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 24];
    p[0..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sa_key.to_be_bytes());
    if sa == prout::REGISTER_AND_MOVE {
        p[17] = flags;
        p[18..20].copy_from_slice(&rtpi.to_be_bytes());
        p[20..24].copy_from_slice(&(tids.len() as u32).to_be_bytes());
    } else {
        p[20] = flags;
        if !tids.is_empty() {
            p.extend_from_slice(&(tids.len() as u32).to_be_bytes());
        }
    }
    p.extend_from_slice(tids);
    p
}

/// Parses one TransportID.
///
/// Properties: never panics; what parses is a whole, word-aligned TransportID of
/// at least 24 bytes inside the input, names a lower-case initiator, and the
/// initiator's own TransportID parses back to it.
pub fn check_transport_id(b: &[u8]) {
    let Some((initiator, len)) = parse_transport_id(b) else {
        return;
    };
    assert!(len >= 24 && len <= b.len() && len % 4 == 0, "length {len}");
    let (Initiator::Port(name) | Initiator::Device(name)) = &initiator;
    assert_eq!(name, &name.to_ascii_lowercase());
    let again = initiator.transport_id();
    assert_eq!(
        parse_transport_id(&again),
        Some((initiator, again.len())),
        "TransportID round trip"
    );
}

/// Runs `ops` against one PR state.
///
/// Properties: never panics; a failed PROUT changes nothing; one that reports no
/// change changed no registration, reservation or APTPL; afterwards there are at
/// most MAX_REGISTRATIONS registrations, no key 0, no initiator registered twice,
/// a reservation has a registered holder (or, all-registrants, a registrant); the
/// state survives the APTPL file format; PERSISTENT RESERVE IN answers every
/// service action with consistent lengths.
pub fn check_prout(ops: &[PrOp]) {
    let nexuses = pr_nexuses();
    let mut s = PrState::default();
    for op in ops {
        let me = &nexuses[usize::from(op.nexus) % nexuses.len()];
        let before = s.clone();
        match s.persistent_reserve_out(me, &op.cdb, &op.data, op.can_persist) {
            Ok(fx) => {
                if !fx.changed {
                    assert_eq!(
                        (&s.registrations, &s.reservation, s.aptpl),
                        (&before.registrations, &before.reservation, before.aptpl),
                        "changed without saying so: {op:?}"
                    );
                }
            }
            Err(e) => {
                assert_eq!(s, before, "failed with {e:?} yet changed the state: {op:?}");
                if let PrError::Check(sense) = e {
                    assert_eq!(sense.key, key::ILLEGAL_REQUEST, "{sense:?}");
                }
            }
        }
        check_pr_invariants(&s);
    }
}

fn check_pr_invariants(s: &PrState) {
    assert!(s.registrations.len() <= MAX_REGISTRATIONS);
    for (i, r) in s.registrations.iter().enumerate() {
        assert_ne!(r.key, 0, "{s:?}");
        assert!(
            !s.registrations[..i]
                .iter()
                .any(|o| o.initiator == r.initiator),
            "registered twice: {s:?}"
        );
    }
    if let Some(res) = &s.reservation {
        if res.ptype.all_registrants() {
            assert!(!s.registrations.is_empty(), "{s:?}");
        } else {
            assert!(
                s.registrations.iter().any(|r| r.initiator == res.holder),
                "holder not registered: {s:?}"
            );
        }
    }
    let back = PrState::from_persisted(&s.to_persisted()).expect("restores");
    assert_eq!(
        back,
        PrState {
            aptpl: true,
            ..s.clone()
        }
    );
    for sa in [
        prin::READ_KEYS,
        prin::READ_RESERVATION,
        prin::REPORT_CAPABILITIES,
        prin::READ_FULL_STATUS,
    ] {
        let d = s
            .persistent_reserve_in(&[0x5e, sa, 0, 0, 0, 0, 0, 0xff, 0xff, 0], true)
            .expect("implemented service action");
        match sa {
            prin::READ_KEYS => assert_eq!(d.len(), 8 + 8 * s.registrations.len()),
            prin::READ_FULL_STATUS => {
                let additional = u32::from_be_bytes([d[4], d[5], d[6], d[7]]) as usize;
                assert_eq!(additional, d.len() - 8);
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------- UNMAP

/// Blocks of the logical unit the UNMAP check runs on.
pub const UNMAP_BLOCKS: u64 = 16;
/// Its block size.
pub const UNMAP_BS: u32 = 512;

/// One UNMAP with the parameter list it carries.
#[derive(Debug, Clone)]
pub struct UnmapInput {
    pub thin: bool,
    pub read_only: bool,
    /// Byte 1 of the CDB (ANCHOR is bit 0).
    pub byte1: u8,
    /// PARAMETER LIST LENGTH.
    pub param_len: u16,
    pub data_out: Vec<u8>,
}

/// An UNMAP parameter list from its descriptors (SBC-3 §5.28.2).
pub fn unmap_list(descriptors: &[(u64, u32)]) -> Vec<u8> {
    let dl = (descriptors.len() * 16) as u16;
    let mut p = Vec::new();
    p.extend_from_slice(&(dl + 6).to_be_bytes());
    p.extend_from_slice(&dl.to_be_bytes());
    p.extend_from_slice(&[0; 4]);
    for (lba, n) in descriptors {
        p.extend_from_slice(&lba.to_be_bytes());
        p.extend_from_slice(&n.to_be_bytes());
        p.extend_from_slice(&[0; 4]);
    }
    p
}

fn lu_cfg() -> LuConfig {
    LuConfig {
        name: "fuzz".into(),
        block_size: UNMAP_BS,
        serial: "FUZZ-0001".into(),
        naa_id: LuConfig::naa_id_for("fuzz"),
        vendor: "MOSAIC".into(),
        product: "Mosaic volume".into(),
        revision: "0.1".into(),
        target_name: "iqn.2026-11.io.mosaic:fuzz".into(),
        relative_port: 1,
        tpg: 1,
    }
}

thread_local! {
    static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
}

fn cmd(cdb: Vec<u8>, data_out: Vec<u8>, expected_len: u32) -> ScsiRequest {
    ScsiRequest {
        cdb: Bytes::from(cdb),
        lun: 0,
        data_out: Bytes::from(data_out),
        expected_len,
    }
}

/// Executes one UNMAP on a small unit whose every block holds a pattern.
///
/// Properties: never panics; the status is GOOD or CHECK CONDITION; a thick or
/// read-only unit refuses it; a refused UNMAP deallocates nothing (the whole list is
/// checked first); a GOOD one zeroes exactly the blocks its descriptors name
/// (SBC-3 §5.28: the descriptors within UNMAP BLOCK DESCRIPTOR DATA LENGTH and the
/// list received; a truncated last descriptor is ignored) and leaves every other
/// block as it was.
pub fn check_unmap(u: &UnmapInput) {
    let opts = LuOptions {
        thin: u.thin,
        read_only: u.read_only,
    };
    let store = BackingStore::memory(UNMAP_BLOCKS * u64::from(UNMAP_BS));
    let lu = LogicalUnit::with_options(lu_cfg(), store, opts).expect("unit");
    let total = (UNMAP_BLOCKS * u64::from(UNMAP_BS)) as usize;
    let pattern: Vec<u8> = (0..total)
        .map(|i| 1 + (i / UNMAP_BS as usize) as u8)
        .collect();
    let len = (UNMAP_BLOCKS as u16).to_be_bytes();
    let write = vec![op::WRITE_10, 0, 0, 0, 0, 0, 0, len[0], len[1], 0];
    let read = vec![op::READ_10, 0, 0, 0, 0, 0, 0, len[0], len[1], 0];
    let pl = u.param_len.to_be_bytes();
    let unmap = vec![op::UNMAP, u.byte1, 0, 0, 0, 0, 0, pl[0], pl[1], 0];
    let (result, after) = RT.with(|rt| {
        rt.block_on(async {
            if !u.read_only {
                let w = lu.execute(cmd(write, pattern.clone(), total as u32)).await;
                assert_eq!(w.status, status::GOOD, "{w:?}");
            }
            let r = lu
                .execute(cmd(unmap, u.data_out.clone(), u32::from(u.param_len)))
                .await;
            let after = lu.execute(cmd(read, Vec::new(), total as u32)).await;
            assert_eq!(after.status, status::GOOD, "{after:?}");
            (r, after.data_in)
        })
    });
    assert!(
        result.status == status::GOOD || result.status == status::CHECK_CONDITION,
        "{result:?}"
    );
    if !u.thin || u.read_only {
        assert_eq!(result.status, status::CHECK_CONDITION, "{u:?}");
    }
    if u.read_only {
        return;
    }
    if result.status != status::GOOD {
        assert_eq!(
            &after[..],
            &pattern[..],
            "a refused UNMAP deallocated blocks"
        );
        return;
    }
    let list = &u.data_out[..u.data_out.len().min(usize::from(u.param_len))];
    let mut unmapped = vec![false; UNMAP_BLOCKS as usize];
    if u.param_len > 0 {
        assert!(list.len() >= 8, "GOOD on a list without its header: {u:?}");
        let dl = usize::from(u16::from_be_bytes([list[2], list[3]]));
        for d in list[8..8 + dl.min(list.len() - 8)].chunks_exact(16) {
            let lba = u64::from_be_bytes(d[0..8].try_into().expect("8 bytes"));
            let n = u64::from(u32::from_be_bytes(d[8..12].try_into().expect("4 bytes")));
            assert!(
                lba.checked_add(n).is_some_and(|end| end <= UNMAP_BLOCKS),
                "GOOD with a range past the end: {lba}+{n}"
            );
            for b in lba..lba + n {
                unmapped[b as usize] = true;
            }
        }
    }
    for (b, gone) in unmapped.iter().enumerate() {
        let at = b * UNMAP_BS as usize..(b + 1) * UNMAP_BS as usize;
        if *gone {
            assert!(after[at].iter().all(|&x| x == 0), "block {b} not zeroed");
        } else {
            assert_eq!(&after[at.clone()], &pattern[at], "block {b} changed");
        }
    }
}

// ---------------------------------------------------------------- EXTENDED COPY

/// Encodes a parameter list (SPC-4 §6.4.3: header, E4h CSCD descriptors, 02h segment
/// descriptors), laid out in order as [`parse_param_list`] reports the offsets.
pub fn encode_param_list(l: &ParamList) -> Vec<u8> {
    let mut p = vec![0u8; 16];
    p[0] = l.list_id;
    p[1] = match l.usage {
        ListIdUsage::Hold => 0b00,
        ListIdUsage::Discard => 0b10,
        ListIdUsage::None => 0b11,
    } << 3;
    p[2..4].copy_from_slice(&((l.cscds.len() * 32) as u16).to_be_bytes());
    p[8..12].copy_from_slice(&((l.segments.len() * 28) as u32).to_be_bytes());
    for c in &l.cscds {
        let mut d = [0u8; 32];
        d[0] = 0xe4;
        d[1] = if c.nul { 0x20 } else { 0 };
        d[4] = c.designator.code_set;
        d[5] = (c.designator.association << 4) | c.designator.designator_type;
        d[7] = c.designator.id.len() as u8;
        d[8..8 + c.designator.id.len()].copy_from_slice(&c.designator.id);
        d[29..32].copy_from_slice(&c.block_len.to_be_bytes()[1..]);
        p.extend_from_slice(&d);
    }
    for g in &l.segments {
        let mut d = [0u8; 28];
        d[0] = 0x02;
        d[1] = if g.dc { 0x02 } else { 0 };
        d[2..4].copy_from_slice(&24u16.to_be_bytes());
        d[4..6].copy_from_slice(&g.src.to_be_bytes());
        d[6..8].copy_from_slice(&g.dst.to_be_bytes());
        d[10..12].copy_from_slice(&g.blocks.to_be_bytes());
        d[12..20].copy_from_slice(&g.src_lba.to_be_bytes());
        d[20..28].copy_from_slice(&g.dst_lba.to_be_bytes());
        p.extend_from_slice(&d);
    }
    p
}

/// Parses an EXTENDED COPY(LID1) parameter list, plans it against `targets` (the
/// resolution of each CSCD descriptor) and cuts each step into chunks.
///
/// Properties: never panics; a parsed list keeps within the descriptor limits,
/// reports offsets inside the list, and re-encodes to a list that parses to the same
/// value; an error's sense data survives the fixed format and a parameter-list
/// field pointer points inside the list; a plan has one step per segment, each
/// inside both volumes, of whole blocks at both ends, within MAXIMUM SEGMENT
/// LENGTH, and all within the total limit; the chunks of a step cover it exactly,
/// each at most COPY_CHUNK_BYTES, and run backwards exactly when a copy within one
/// volume overlaps forwards (as memmove).
pub fn check_xcopy(data: &[u8], param_len: u32, targets: &[Option<TargetGeometry>]) {
    let used = data.len().min(param_len as usize);
    let list = match parse_param_list(data, param_len) {
        Ok(None) => {
            assert_eq!(param_len, 0);
            return;
        }
        Ok(Some(list)) => list,
        Err(e) => {
            let sense = e.sense();
            assert_eq!(
                mosaic_proto::scsi::Sense::parse_fixed(&sense.to_fixed()),
                Some(sense)
            );
            if let Some(fp) = sense.field_pointer {
                if !fp.in_cdb {
                    assert!(
                        usize::from(fp.byte) < used.max(16),
                        "{e:?} points past {used}"
                    );
                }
            }
            return;
        }
    };
    assert!(list.cscds.len() <= usize::from(MAX_CSCD_DESCRIPTORS));
    assert!(list.segments.len() <= usize::from(MAX_SEGMENT_DESCRIPTORS));
    for c in &list.cscds {
        assert!(c.offset >= 16 && c.offset + 32 <= used, "{c:?}");
        assert!(c.designator.id.len() <= 20 && c.block_len < 1 << 24);
    }
    for g in &list.segments {
        assert!(g.offset >= 16 && g.offset + 28 <= used, "{g:?}");
    }
    if list.usage == ListIdUsage::None {
        assert_eq!(list.list_id, 0);
    }
    let again = encode_param_list(&list);
    assert_eq!(
        parse_param_list(&again, again.len() as u32),
        Ok(Some(list.clone())),
        "re-encoded list parses to another value"
    );
    let Ok(steps) = plan(&list, targets) else {
        return;
    };
    assert_eq!(steps.len(), list.segments.len());
    let mut total = 0u64;
    for st in &steps {
        let geo = |i: usize| targets[i].expect("resolved");
        let (s, d) = (geo(st.src), geo(st.dst));
        for (lba, g) in [(st.src_lba, s), (st.dst_lba, d)] {
            assert_eq!(st.bytes % u64::from(g.block_size), 0, "{st:?}");
            let end = lba.checked_add(st.bytes / u64::from(g.block_size));
            assert!(end.is_some_and(|e| e <= g.num_blocks), "{st:?} past {g:?}");
        }
        assert!(st.bytes <= MAX_SEGMENT_BYTES);
        total += st.bytes;
        for same in [false, true] {
            let c = chunks(st, same, s.block_size);
            let mut sorted = c.clone();
            sorted.sort();
            let mut at = 0;
            for (off, len) in &sorted {
                assert_eq!(*off, at, "chunks of {st:?} leave a gap or overlap");
                assert!(*len > 0 && *len <= COPY_CHUNK_BYTES);
                at += len;
            }
            assert_eq!(at, st.bytes);
            let bs = u64::from(s.block_size);
            let (src, dst) = (st.src_lba * bs, st.dst_lba * bs);
            let backwards = same && dst > src && dst < src + st.bytes;
            if c.len() > 1 {
                assert_eq!(c[0].0 > c[1].0, backwards, "chunk order of {st:?}");
            }
        }
    }
    assert!(total <= MAX_COPY_BYTES);
}

// ---------------------------------------------------------------- READ ROUTING TABLE

/// READ ROUTING TABLE (C5h, docs/wire-formats.md) through a stand-alone device (a
/// one-node table of a 16-block volume), as a session sends it: the answer is GOOD
/// exactly when the CDB decodes, and then it is the piece of the whole encoding at
/// BUFFER OFFSET, at most ALLOCATION LENGTH bytes, clipped at the end (an offset at
/// or past the end gives nothing); otherwise CHECK CONDITION, ILLEGAL REQUEST,
/// with no data. The whole encoding is the answer to offset 0 and the largest
/// allocation length, and starts like every table encoding does.
pub fn check_read_routing_table(cdb: &[u8]) {
    use mosaic_proto::scsi::vendor::ReadRoutingTableCdb;
    let store = BackingStore::memory(UNMAP_BLOCKS * u64::from(UNMAP_BS));
    let lu = LogicalUnit::with_options(lu_cfg(), store, LuOptions::default()).expect("unit");
    let device = Device::new(lu);
    let nexus = Nexus::new("iqn.fuzz", 1, "iqn.2026-11.io.mosaic:fuzz", 1, 1);
    let everything = ReadRoutingTableCdb {
        offset: 0,
        alloc_len: u32::MAX,
    }
    .encode()
    .to_vec();
    let expected_len = cdb
        .get(10..14)
        .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")))
        .unwrap_or(0);
    let (whole, r) = RT.with(|rt| {
        rt.block_on(async {
            let whole = device
                .execute(&nexus, cmd(everything, Vec::new(), u32::MAX))
                .await;
            let r = device
                .execute(&nexus, cmd(cdb.to_vec(), Vec::new(), expected_len))
                .await;
            (whole, r)
        })
    });
    assert_eq!(whole.status, status::GOOD, "{whole:?}");
    let whole = whole.data_in;
    assert!(!whole.is_empty(), "a one-node table encodes to nothing");
    match ReadRoutingTableCdb::decode(cdb) {
        Ok(c) => {
            assert_eq!(r.status, status::GOOD, "{c:?}: {r:?}");
            let start = usize::try_from(c.offset)
                .unwrap_or(usize::MAX)
                .min(whole.len());
            let end = start.saturating_add(c.alloc_len as usize).min(whole.len());
            assert_eq!(&r.data_in[..], &whole[start..end], "{c:?}");
        }
        Err(e) => {
            assert_eq!(r.status, status::CHECK_CONDITION, "{e:?}: {r:?}");
            assert!(r.data_in.is_empty());
            let sense =
                mosaic_proto::scsi::Sense::parse_fixed(&r.sense).expect("fixed-format sense");
            assert_eq!(sense.key, key::ILLEGAL_REQUEST, "{e:?}");
        }
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use mosaic_proto::negotiate::KEYS;
    use mosaic_target::pr::PrType;
    use proptest::prelude::*;

    fn pair() -> impl Strategy<Value = (String, String)> {
        let mut keys: Vec<String> = KEYS.iter().map(|k| k.name.to_string()).collect();
        keys.extend(["CHAP_A", "CHAP_N", "CHAP_R", "X-a.b"].map(String::from));
        (
            prop::sample::select(keys),
            prop_oneof![
                4 => prop::sample::select(mirror::VALUES).prop_map(String::from),
                1 => "[ -~]{0,12}",
            ],
        )
    }

    fn login_input() -> impl Strategy<Value = LoginInput> {
        let leading = proptest::collection::vec(pair(), 0..6).prop_map(|mut v| {
            v.insert(0, ("InitiatorName".into(), ALLOWED_INITIATOR.into()));
            v
        });
        (
            (any::<bool>(), any::<bool>(), 0..4u8, 0..4u8, 0..2u8),
            (
                prop::sample::select(vec![1u64, 2]),
                0..2u16,
                any::<u32>(),
                0..2u16,
            ),
            prop_oneof![
                3 => leading,
                3 => proptest::collection::vec(pair(), 0..8),
            ],
            prop::sample::select(vec![OPEN_TARGET, CHAP_TARGET, ACL_TARGET]),
            any::<bool>(),
            any::<bool>(),
            proptest::collection::vec(any::<u8>(), 0..3),
        )
            .prop_map(
                |(
                    (t, c, csg, nsg, vmin),
                    (isid, tsih, itt, cid),
                    mut pairs,
                    tn,
                    with_tn,
                    chap,
                    junk,
                )| {
                    if with_tn {
                        pairs.push(("TargetName".into(), tn.into()));
                    }
                    let mut data = Vec::new();
                    for (k, v) in &pairs {
                        data.extend_from_slice(format!("{k}={v}").as_bytes());
                        data.push(0);
                    }
                    data.extend_from_slice(&junk);
                    LoginInput {
                        req: LoginRequest {
                            transit: t,
                            continue_bit: c,
                            csg,
                            nsg,
                            version_min: vmin,
                            isid,
                            tsih,
                            itt,
                            cid,
                            ..Default::default()
                        },
                        data,
                        answer_chap: chap,
                    }
                },
            )
    }

    fn pr_op() -> impl Strategy<Value = PrOp> {
        let tid = prop_oneof![
            (0..4usize).prop_map(|i| Initiator::of(&pr_nexuses()[i]).transport_id()),
            prop::sample::select(vec!["iqn.a", "iqn.b", "iqn.d"])
                .prop_map(|n| Initiator::Device(n.into()).transport_id()),
            proptest::collection::vec(any::<u8>(), 0..30),
        ];
        (
            0..4u8,
            0..9u8,
            prop_oneof![
                Just(0u8),
                prop::sample::select(PrType::ALL.iter().map(|t| t.code()).collect::<Vec<_>>()),
                any::<u8>()
            ],
            (
                prop::sample::select(vec![0u64, 1, 2, 3]),
                prop::sample::select(vec![0u64, 1, 2, 3]),
            ),
            prop_oneof![
                Just(0u8),
                Just(0x01),
                Just(0x04),
                Just(0x08),
                Just(0x02),
                any::<u8>()
            ],
            0..3u16,
            proptest::collection::vec(tid, 0..3),
            (any::<bool>(), 0..4u8),
        )
            .prop_map(
                |(nexus, sa, ptype, (key, sa_key), flags, rtpi, tids, (can_persist, len_fix))| {
                    let tids: Vec<u8> = tids.concat();
                    let data = prout_params(sa, key, sa_key, flags, rtpi, &tids);
                    let len = match len_fix {
                        0 => 24,
                        1 => data.len() as u32 + 4,
                        _ => data.len() as u32,
                    };
                    PrOp {
                        nexus,
                        cdb: prout_cdb(sa, ptype, len),
                        data,
                        can_persist,
                    }
                },
            )
    }

    fn unmap_input() -> impl Strategy<Value = UnmapInput> {
        let descriptor = (
            prop_oneof![3 => 0..UNMAP_BLOCKS + 2, 1 => any::<u64>()],
            prop_oneof![3 => 0..5u32, 1 => any::<u32>()],
        );
        (
            prop_oneof![6 => Just((true, false)), 1 => Just((false, false)), 1 => Just((true, true))],
            prop_oneof![4 => Just(0u8), 1 => any::<u8>()],
            proptest::collection::vec(descriptor, 0..5),
            prop_oneof![Just(0usize), Just(1), Just(8), Just(40)],
            prop_oneof![3 => Just(None), 1 => any::<u16>().prop_map(Some)],
            any::<u16>(),
            0..3u8,
        )
            .prop_map(
                |((thin, read_only), byte1, ds, cut, dl_override, plen, plen_kind)| {
                    let mut data_out = unmap_list(&ds);
                    if let Some(dl) = dl_override {
                        data_out[2..4].copy_from_slice(&dl.to_be_bytes());
                    }
                    let full = data_out.len();
                    data_out.truncate(full.saturating_sub(cut % (full + 1)));
                    let param_len = match plen_kind {
                        0 => full as u16,
                        1 => data_out.len() as u16,
                        _ => plen,
                    };
                    UnmapInput {
                        thin,
                        read_only,
                        byte1,
                        param_len,
                        data_out,
                    }
                },
            )
    }

    fn xcopy_list() -> impl Strategy<Value = Vec<u8>> {
        let cscd = (
            any::<bool>(),
            0..3u8,
            proptest::collection::vec(any::<u8>(), 0..22),
            prop_oneof![Just(512u32), Just(4096), any::<u32>()],
            any::<u8>(),
        )
            .prop_map(|(nul, dtype, id, bl, pdt)| {
                let mut d = vec![0u8; 32];
                d[0] = 0xe4;
                d[1] = if nul { 0x20 } else { 0 } | if pdt < 16 { pdt & 0x1f } else { 0 };
                d[4] = 1;
                d[5] = dtype;
                d[7] = id.len() as u8;
                let n = id.len().min(20);
                d[8..8 + n].copy_from_slice(&id[..n]);
                d[29..32].copy_from_slice(&bl.to_be_bytes()[1..]);
                d
            });
        let seg = (
            any::<bool>(),
            0..4u16,
            0..4u16,
            prop_oneof![0..9u16, any::<u16>()],
            prop_oneof![0..20u64, any::<u64>()],
            prop_oneof![0..20u64, any::<u64>()],
        )
            .prop_map(|(dc, src, dst, blocks, sl, dl)| {
                let mut d = vec![0u8; 28];
                d[0] = 2;
                d[1] = if dc { 2 } else { 0 };
                d[2..4].copy_from_slice(&24u16.to_be_bytes());
                d[4..6].copy_from_slice(&src.to_be_bytes());
                d[6..8].copy_from_slice(&dst.to_be_bytes());
                d[10..12].copy_from_slice(&blocks.to_be_bytes());
                d[12..20].copy_from_slice(&sl.to_be_bytes());
                d[20..28].copy_from_slice(&dl.to_be_bytes());
                d
            });
        (
            any::<u8>(),
            prop_oneof![Just(0u8), Just(0x10), Just(0x18), any::<u8>()],
            proptest::collection::vec(cscd, 0..4),
            proptest::collection::vec(seg, 0..4),
            any::<prop::sample::Index>(),
            any::<prop::sample::Index>(),
            0..4u8,
        )
            .prop_map(|(id, usage, cs, ss, flip, cut, damage)| {
                let mut p = vec![0u8; 16];
                p[0] = id;
                p[1] = usage;
                p[2..4].copy_from_slice(&((cs.len() * 32) as u16).to_be_bytes());
                p[8..12].copy_from_slice(&((ss.len() * 28) as u32).to_be_bytes());
                p.extend(cs.concat());
                p.extend(ss.concat());
                match damage {
                    1 => {
                        let i = flip.index(p.len());
                        p[i] ^= 0x41;
                    }
                    2 => p.truncate(cut.index(p.len() + 1)),
                    _ => {}
                }
                p
            })
    }

    fn geometry() -> impl Strategy<Value = Option<TargetGeometry>> {
        proptest::option::weighted(
            0.8,
            (
                prop::sample::select(vec![512u32, 4096]),
                prop_oneof![1..40u64, any::<u64>()],
            )
                .prop_map(|(block_size, num_blocks)| TargetGeometry {
                    block_size,
                    num_blocks,
                }),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Mirrors fuzz target `xcopy_params`.
        #[test]
        fn xcopy_param_lists(p in xcopy_list(), len_kind in 0..3u8, len: u32,
                             targets in proptest::collection::vec(geometry(), 0..5)) {
            let param_len = match len_kind { 0 => p.len() as u32, 1 => len, _ => 0 };
            check_xcopy(&p, param_len, &targets);
        }

        /// Mirrors fuzz target `login`.
        #[test]
        fn login_sequences(digests: bool, erl in 0..3u32, small: bool, discovery_chap: bool,
                           steps in proptest::collection::vec(login_input(), 1..6)) {
            let setup = LoginSetup { limits: mirror::limits_from(digests, erl, small), discovery_chap };
            check_login(&setup, &steps);
        }

        /// Mirrors the TransportID half of fuzz target `pr_params`.
        #[test]
        fn transport_ids(b in proptest::collection::vec(any::<u8>(), 0..40),
                         name in "[a-zA-Z0-9.:,-]{0,30}", isid: u64, port: bool) {
            check_transport_id(&b);
            let i = if port {
                Initiator::Port(format!("{},i,0x{:012x}", name.to_ascii_lowercase(), isid & 0xffff_ffff_ffff))
            } else {
                Initiator::Device(name.to_ascii_lowercase())
            };
            check_transport_id(&i.transport_id());
        }

        /// Mirrors fuzz target `pr_params`.
        #[test]
        fn prout_sequences(ops in proptest::collection::vec(pr_op(), 1..12)) {
            check_prout(&ops);
        }

        /// Mirrors fuzz target `unmap_params`.
        #[test]
        fn unmap_lists(u in unmap_input()) {
            check_unmap(&u);
        }

        /// Mirrors fuzz target `read_routing_table` (its device half) on C5h CDBs,
        /// mostly well formed, with any offset and allocation length.
        #[test]
        fn read_routing_table_through_a_device(
            offset in prop_oneof![0..256u64, any::<u64>()],
            alloc in prop_oneof![0..300u32, any::<u32>()],
            len in 14usize..20,
            poke in prop::option::of((prop::sample::select(vec![1usize, 14, 15]), 1..=255u8)),
        ) {
            let mut b = mosaic_proto::scsi::vendor::ReadRoutingTableCdb { offset, alloc_len: alloc }
                .encode()
                .to_vec();
            if let Some((at, v)) = poke {
                b[at] = v;
            }
            b.resize(len, 0);
            check_read_routing_table(&b);
        }
    }

    #[test]
    fn a_full_login_reaches_the_checks_for_completion() {
        // The property's Complete branch must be reachable: CHAP target, answered.
        let kv = |pairs: &[(&str, &str)]| text::encode(pairs).unwrap().to_vec();
        let setup = LoginSetup {
            limits: Limits::default(),
            discovery_chap: false,
        };
        let req = |csg, nsg, transit| LoginRequest {
            transit,
            csg,
            nsg,
            isid: 1,
            itt: 1,
            ..Default::default()
        };
        let steps = vec![
            LoginInput {
                req: req(0, 1, false),
                data: kv(&[
                    ("InitiatorName", "iqn.x"),
                    ("TargetName", CHAP_TARGET),
                    ("AuthMethod", "CHAP"),
                ]),
                answer_chap: false,
            },
            LoginInput {
                req: req(0, 1, false),
                data: kv(&[("CHAP_A", "5")]),
                answer_chap: false,
            },
            LoginInput {
                req: req(0, 1, true),
                data: Vec::new(),
                answer_chap: true,
            },
            LoginInput {
                req: req(1, 3, true),
                data: Vec::new(),
                answer_chap: false,
            },
        ];
        let mut l = TargetLogin::new(setup.target(), CHAP_SEED);
        let mut last = None;
        for s in &steps {
            let mut data = s.data.clone();
            if s.answer_chap {
                data.extend_from_slice(&chap_answer());
            }
            last = Some(l.handle(&s.req, &data));
        }
        assert!(matches!(last, Some(LoginStep::Complete(..))), "{last:?}");
        check_login(&setup, &steps);
    }

    #[test]
    fn an_xcopy_reaches_the_plan_checks() {
        let mut p = vec![0u8; 16];
        p[1] = 0x18;
        p[3] = 32;
        p[11] = 28;
        let mut c = vec![0u8; 32];
        c[0] = 0xe4;
        c[7] = 4;
        c[30] = 0x02; // block length 512
        p.extend(c);
        let mut g = vec![0u8; 28];
        g[0] = 2;
        g[3] = 24;
        g[11] = 4;
        g[27] = 8;
        p.extend(g);
        let list = parse_param_list(&p, p.len() as u32).unwrap().unwrap();
        let geo = Some(TargetGeometry {
            block_size: 512,
            num_blocks: 16,
        });
        assert_eq!(plan(&list, &[geo]).unwrap().len(), 1);
        check_xcopy(&p, p.len() as u32, &[geo]);
    }

    #[test]
    fn a_good_unmap_reaches_the_range_checks() {
        let u = UnmapInput {
            thin: true,
            read_only: false,
            byte1: 0,
            param_len: 24,
            data_out: unmap_list(&[(2, 3)]),
        };
        check_unmap(&u);
    }
}
