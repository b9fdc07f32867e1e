//! The properties the proto fuzz targets check (`fuzz/fuzz_targets/pdu_frame.rs`,
//! `cdb.rs`, the CDB half of `read_routing_table.rs`, and the negotiator half of
//! `login.rs`), run here by proptest so that CI
//! checks them too (STYLE.md item 10).
//!
//! The `check_*` functions are the single definition of each property: the fuzz
//! targets include this file with `#[path]` and call them on what libFuzzer
//! generates; the `props` module below calls them on what proptest generates. Only
//! `props` needs proptest, so it is compiled only as a test.

use bytes::BytesMut;
use mosaic_proto::digest::{self, DIGEST_LEN};
use mosaic_proto::frame::{self, FrameError, FrameLimits};
use mosaic_proto::negotiate::{
    Digest, Limits, Negotiator, SessionParams, SessionType, Stage, MAX_DATA_LENGTH, MIN_DATA_LENGTH,
};
use mosaic_proto::pdu::{pad_len, raw_ahs_len, raw_data_len, raw_opcode, BHS_LEN};
use mosaic_proto::scsi::opcode::READ_ROUTING_TABLE;
use mosaic_proto::scsi::sense::key;
use mosaic_proto::scsi::vendor::ReadRoutingTableCdb;
use mosaic_proto::scsi::{Asc, Cdb, CdbError, Sense};
use mosaic_proto::text::{self, KeyValue};

/// How many PDUs one input may frame before the check stops (bounds run time).
pub const MAX_PDUS_PER_INPUT: usize = 64;

/// Overwrites the header digest and the data digest of the first PDU in `bytes`
/// with the right CRC32C, where the bytes reach that far, so that generated inputs
/// get past the digest checks into the rest of the framing.
pub fn seal_digests(bytes: &mut [u8], limits: &FrameLimits) {
    let Some(raw) = bytes.get(..BHS_LEN) else {
        return;
    };
    let raw: [u8; BHS_LEN] = raw.try_into().expect("BHS_LEN bytes");
    let covered = BHS_LEN + raw_ahs_len(&raw);
    let mut at = covered;
    if limits.header_digest {
        if bytes.len() < covered + DIGEST_LEN {
            return;
        }
        let crc = digest::to_wire(digest::crc32c(&bytes[..covered]));
        bytes[covered..covered + DIGEST_LEN].copy_from_slice(&crc);
        at += DIGEST_LEN;
    }
    let dl = raw_data_len(&raw) as usize;
    let padded = dl + pad_len(dl);
    if limits.data_digest && dl > 0 && bytes.len() >= at + padded + DIGEST_LEN {
        let crc = digest::to_wire(digest::crc32c(&bytes[at..at + padded]));
        bytes[at + padded..at + padded + DIGEST_LEN].copy_from_slice(&crc);
    }
}

/// Frames PDUs from `input` under `limits` until it runs out, stops or fails.
///
/// Properties: never panics; "incomplete" consumes nothing and really is short of
/// the PDU's wire length; a PDU consumes exactly its wire length, carries exactly
/// the AHS and data the header announces, and re-encodes to as many bytes, which
/// decode back to the same PDU; a header digest error or an oversized segment
/// consumes nothing (the connection is dropped), a data digest error consumes the
/// PDU (the stream goes on).
pub fn check_frame(input: &[u8], limits: &FrameLimits) {
    let mut buf = BytesMut::from(input);
    for _ in 0..MAX_PDUS_PER_INPUT {
        let before = buf.len();
        let start = input.len() - before;
        let header: Option<[u8; BHS_LEN]> =
            buf.get(..BHS_LEN).map(|h| h.try_into().expect("BHS_LEN"));
        match frame::decode(&mut buf, limits) {
            Ok(None) => {
                assert_eq!(buf.len(), before, "an incomplete PDU consumed bytes");
                if let Some(h) = header {
                    assert!(
                        before < frame::wire_len(&h, limits),
                        "incomplete, yet all {before} bytes of the PDU are there"
                    );
                }
                return;
            }
            Ok(Some(pdu)) => {
                let h = header.expect("a PDU was decoded from fewer than 48 bytes");
                let consumed = before - buf.len();
                assert_eq!(consumed, frame::wire_len(&h, limits), "consumed length");
                assert_eq!(pdu.ahs.len(), raw_ahs_len(&h), "AHS length");
                assert_eq!(pdu.data.len(), raw_data_len(&h) as usize, "data length");
                assert!(raw_data_len(&h) <= limits.max_recv_data_segment_length);
                let ahs_at = start + BHS_LEN;
                assert_eq!(&pdu.ahs[..], &input[ahs_at..ahs_at + pdu.ahs.len()]);
                let hd = if limits.header_digest { DIGEST_LEN } else { 0 };
                let data_at = ahs_at + pdu.ahs.len() + hd;
                assert_eq!(&pdu.data[..], &input[data_at..data_at + pdu.data.len()]);
                assert_eq!(pdu.bhs.opcode(), raw_opcode(&h), "opcode");

                let enc = frame::encode(&pdu, limits).to_bytes();
                assert_eq!(enc.len(), consumed, "re-encoded length");
                let mut again = BytesMut::from(&enc[..]);
                assert_eq!(
                    frame::decode(&mut again, limits),
                    Ok(Some(pdu.clone())),
                    "re-encoding decodes to another PDU"
                );
                assert!(again.is_empty(), "re-encoding left bytes behind");
            }
            Err(FrameError::HeaderDigest { received, computed }) => {
                assert!(limits.header_digest, "header digest error without digests");
                assert_ne!(received, computed);
                assert_eq!(buf.len(), before, "a header digest error consumed bytes");
                return;
            }
            Err(FrameError::DataSegmentTooLong { header, len, max }) => {
                assert_eq!(max, limits.max_recv_data_segment_length);
                assert!(len > max, "{len} bytes refused under a limit of {max}");
                assert_eq!(Some(*header), header_of(input, start));
                assert_eq!(buf.len(), before, "an oversized segment consumed bytes");
                return;
            }
            Err(FrameError::DataDigest { header }) => {
                assert!(limits.data_digest, "data digest error without digests");
                let h = header_of(input, start).expect("whole BHS");
                assert_eq!(*header, h);
                assert!(
                    raw_data_len(&h) > 0,
                    "data digest error on an empty segment"
                );
                assert_eq!(before - buf.len(), frame::wire_len(&h, limits));
            }
        }
    }
}

fn header_of(input: &[u8], at: usize) -> Option<[u8; BHS_LEN]> {
    input.get(at..at + BHS_LEN)?.try_into().ok()
}

/// Decodes one CDB.
///
/// Properties: never panics; a decoded CDB reports the opcode it came from; bytes
/// past the opcode's CDB length do not change the outcome; TooShort is only for
/// fewer bytes than a real CDB length; an invalid field points inside the CDB at a
/// real bit, and its sense data survives the fixed format.
pub fn check_cdb(b: &[u8]) {
    let result = Cdb::decode(b);
    match result {
        Ok(cdb) => assert_eq!(cdb.opcode(), b[0], "{cdb:?}"),
        Err(CdbError::Empty) => assert!(b.is_empty()),
        Err(CdbError::TooShort { opcode, need, got }) => {
            assert_eq!(opcode, b[0]);
            assert_eq!(got, b.len());
            assert!(got < need);
            assert!([6, 10, 12, 16].contains(&need), "CDB length {need}");
        }
        Err(CdbError::InvalidField { byte, bit }) => {
            assert!(
                usize::from(byte) < b.len().min(16),
                "field pointer byte {byte}"
            );
            assert!(bit.is_none_or(|bit| bit < 8), "field pointer bit {bit:?}");
        }
    }
    if let Err(e) = result {
        let sense = e.sense();
        assert_eq!(Sense::parse_fixed(&sense.to_fixed()), Some(sense));
    }
    if !matches!(result, Err(CdbError::Empty | CdbError::TooShort { .. })) {
        let mut longer = b.to_vec();
        longer.extend_from_slice(&[0xff; 8]);
        assert_eq!(
            Cdb::decode(&longer),
            result,
            "trailing bytes changed the CDB"
        );
    }
}

/// The bytes of a READ ROUTING TABLE CDB (C5h, docs/wire-formats.md) that must be
/// zero: byte 1 and byte 14 (reserved); in the CONTROL byte only NACA (bit 2) is
/// refused.
const RRT_RESERVED: [usize; 2] = [1, 14];
const RRT_CONTROL: usize = 15;
const RRT_CONTROL_NACA: u8 = 0x04;

/// `ReadRoutingTableCdb::decode` never panics; it accepts exactly the CDBs that
/// start with C5h, have 16 bytes, zero reserved bytes and NACA clear, and then
/// reads BUFFER OFFSET (bytes 2-9) and ALLOCATION LENGTH (bytes 10-13) big-endian;
/// its encoding decodes to the same value; a refusal is ILLEGAL REQUEST, INVALID
/// FIELD IN CDB with a field pointer inside the CDB; trailing bytes change nothing.
/// The generic `Cdb::decode` keeps its own properties ([`check_cdb`]) on the same
/// bytes.
pub fn check_read_routing_table_cdb(b: &[u8]) {
    check_cdb(b);
    let result = ReadRoutingTableCdb::decode(b);
    let valid = b.first() == Some(&READ_ROUTING_TABLE)
        && b.len() >= 16
        && RRT_RESERVED.iter().all(|&i| b[i] == 0)
        && b[RRT_CONTROL] & RRT_CONTROL_NACA == 0;
    match result {
        Ok(c) => {
            assert!(valid, "accepted {b:02x?}");
            let offset = u64::from_be_bytes(b[2..10].try_into().expect("8 bytes"));
            let alloc = u32::from_be_bytes(b[10..14].try_into().expect("4 bytes"));
            assert_eq!((c.offset, c.alloc_len), (offset, alloc));
            let again = c.encode();
            assert_eq!(&again[..14], &b[..14], "encoding of {c:?}");
            assert_eq!(ReadRoutingTableCdb::decode(&again), Ok(c));
        }
        Err(e) => {
            assert!(!valid, "refused {b:02x?}: {e:?}");
            let sense = e.sense();
            assert_eq!(sense.key, key::ILLEGAL_REQUEST);
            assert_eq!(sense.asc, Asc::INVALID_FIELD_IN_CDB);
            if let CdbError::InvalidField { byte, bit } = e {
                assert!(usize::from(byte) < 16, "field pointer byte {byte}");
                assert!(bit.is_none_or(|bit| bit < 8), "field pointer bit {bit:?}");
            }
        }
    }
    if b.len() >= 16 {
        let mut longer = b.to_vec();
        longer.extend_from_slice(&[0xff; 8]);
        assert_eq!(ReadRoutingTableCdb::decode(&longer), result);
    }
}

/// One round of a negotiation driven straight into the target's [`Negotiator`].
#[derive(Debug, Clone)]
pub struct NegotiationRound {
    pub stage: Stage,
    pub keys: Vec<KeyValue>,
    /// Call `finish_stage` after answering.
    pub finish: bool,
}

/// Drives a target negotiator with `limits` through `rounds` until one fails.
///
/// Properties: never panics; every answer encodes as text and parses back without
/// a repeated key; the agreed values stay within the RFC 7143 ranges and within
/// what we offer (see [`check_params`]).
pub fn check_negotiator(
    limits: &Limits,
    session_type: SessionType,
    leading: bool,
    rounds: &[NegotiationRound],
) {
    let mut n = Negotiator::target(limits.clone());
    n.set_session_type(session_type);
    n.set_leading(leading);
    for round in rounds {
        // Only what `text::parse` lets through reaches a negotiator.
        if text::encode(&round.keys).is_err() {
            return;
        }
        n.set_stage(round.stage);
        let Ok(mut answer) = n.respond(&round.keys) else {
            return;
        };
        answer.extend(n.target_declarations());
        let _ = n.take_auth_keys();
        let _ = n.take_send_targets();
        // Strict: the Reject-then-declare repeat is fixed (eb24a37).
        check_answer_text(&answer, false);
        check_params(n.params(), limits);
        if round.finish && n.finish_stage().is_err() {
            return;
        }
    }
}

/// Our answer must encode as text, and parse back without a key sent twice (RFC
/// 7143 §6.2: a key is negotiated or declared once; our initiator refuses a
/// repeat).
///
/// `tolerate_known_repeat` accepts one former issue (an invalid value for a key we
/// also declare, answered `Reject` and declared again in the same answer), fixed in
/// eb24a37; the checks now pass `false`, and
/// `props::reject_then_declare_does_not_repeat_the_key` keeps it fixed.
pub fn check_answer_text(answer: &[KeyValue], tolerate_known_repeat: bool) {
    let body =
        text::encode(answer).unwrap_or_else(|e| panic!("answer {answer:?} does not encode: {e}"));
    let pairs = text::parse_allow_duplicates(&body)
        .unwrap_or_else(|e| panic!("answer {answer:?} does not parse: {e}"));
    for (i, (k, v)) in pairs.iter().enumerate() {
        let earlier: Vec<&KeyValue> = pairs[..i].iter().filter(|(e, _)| e == k).collect();
        let known = tolerate_known_repeat
            && v != mosaic_proto::negotiate::REJECT
            && earlier.len() == 1
            && earlier[0].1 == mosaic_proto::negotiate::REJECT;
        assert!(
            earlier.is_empty() || known,
            "answer {answer:?} sends {k} twice"
        );
    }
}

/// What agreed session parameters must satisfy whatever the initiator sent:
/// RFC 7143 §13 ranges, FirstBurstLength within MaxBurstLength, no digest and no
/// ErrorRecoveryLevel we did not offer (a target must not agree to what it does not
/// implement).
pub fn check_params(p: &SessionParams, limits: &Limits) {
    let limits = limits.clone().sanitized();
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
    if p.header_digest {
        assert!(limits.header_digests.contains(&Digest::Crc32c), "{p:?}");
    }
    if p.data_digest {
        assert!(limits.data_digests.contains(&Digest::Crc32c), "{p:?}");
    }
    assert!(
        p.error_recovery_level <= limits.error_recovery_level,
        "{p:?}"
    );
    assert!(p.max_connections <= limits.max_connections, "{p:?}");
}

/// Keys worth sending: every RFC 7143 key, the CHAP keys, and two that are not keys.
pub fn key_names() -> Vec<&'static str> {
    let mut keys: Vec<&'static str> = mosaic_proto::negotiate::KEYS
        .iter()
        .map(|k| k.name)
        .collect();
    keys.extend_from_slice(mosaic_proto::negotiate::AUTH_KEYS);
    keys.extend_from_slice(&["X-com.example.Vendor", "X#NodeArchitecture"]);
    keys
}

/// Values worth sending: each key type's edge values and the reserved words.
pub const VALUES: &[&str] = &[
    "None",
    "CRC32C",
    "CRC32C,None",
    "None,CRC32C",
    "Yes",
    "No",
    "0",
    "1",
    "2",
    "3",
    "511",
    "512",
    "8192",
    "65536",
    "262144",
    "16777215",
    "16777216",
    "4294967296",
    "0x10000",
    "0b",
    "CHAP",
    "CHAP,None",
    "None,CHAP",
    "5",
    "Discovery",
    "Normal",
    "iqn.2026-11.io.mosaic:open",
    "iqn.2026-11.io.mosaic:chap",
    "iqn.allowed",
    "All",
    "Reject",
    "Irrelevant",
    "NotUnderstood",
    "",
    "SessionType=Normal",
];

/// Target limits for a fuzz or proptest case, from a few choices.
pub fn limits_from(digests: bool, erl: u32, small_burst: bool) -> Limits {
    let mut l = Limits::default();
    if !digests {
        l.header_digests = vec![Digest::None];
        l.data_digests = vec![Digest::None];
    }
    l.error_recovery_level = erl;
    if small_burst {
        l.max_burst_length = 4096;
        l.first_burst_length = 8192;
        l.max_recv_data_segment_length = 512;
    }
    l
}

/// The stage a login stage number stands for.
pub fn stage_from(n: u8) -> Stage {
    match n % 3 {
        0 => Stage::Security,
        1 => Stage::Operational,
        _ => Stage::FullFeature,
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use bytes::Bytes;
    use mosaic_proto::pdu::{
        Bhs, DataOut, LoginRequest, NopOut, Pdu, ScsiCommand, TextRequest, MAX_DATA_SEGMENT_LEN,
    };
    use mosaic_proto::scsi::opcode as op;
    use proptest::prelude::*;

    fn limits() -> impl Strategy<Value = FrameLimits> {
        (
            any::<bool>(),
            any::<bool>(),
            prop_oneof![
                Just(0u32),
                Just(8192),
                0..70_000u32,
                Just(MAX_DATA_SEGMENT_LEN)
            ],
        )
            .prop_map(|(h, d, m)| FrameLimits {
                header_digest: h,
                data_digest: d,
                max_recv_data_segment_length: m,
            })
    }

    fn bhs() -> impl Strategy<Value = Bhs> {
        prop_oneof![
            (any::<u32>(), any::<u32>()).prop_map(|(itt, cmd_sn)| Bhs::NopOut(NopOut {
                itt,
                cmd_sn,
                ..Default::default()
            })),
            (any::<u32>(), any::<[u8; 16]>(), any::<u32>()).prop_map(|(itt, cdb, edtl)| {
                Bhs::ScsiCommand(ScsiCommand {
                    final_bit: true,
                    write: true,
                    itt,
                    cdb,
                    expected_data_transfer_length: edtl,
                    ..Default::default()
                })
            }),
            (any::<bool>(), any::<u8>(), any::<u64>()).prop_map(|(t, csg, isid)| {
                Bhs::LoginRequest(LoginRequest {
                    transit: t,
                    csg: csg & 3,
                    nsg: 3,
                    isid: isid & 0xffff_ffff_ffff,
                    ..Default::default()
                })
            }),
            any::<u32>().prop_map(|itt| Bhs::TextRequest(TextRequest {
                final_bit: true,
                itt,
                ttt: u32::MAX,
                ..Default::default()
            })),
            (any::<u32>(), any::<u32>()).prop_map(|(off, sn)| Bhs::DataOut(DataOut {
                buffer_offset: off,
                data_sn: sn,
                ..Default::default()
            })),
        ]
    }

    /// A stream of valid PDUs (AHS of whole words), encoded under `limits`, then
    /// possibly cut short or with one byte flipped.
    fn stream() -> impl Strategy<Value = (FrameLimits, Vec<u8>)> {
        (
            limits(),
            proptest::collection::vec(
                (
                    bhs(),
                    proptest::collection::vec(any::<u8>(), 0..3),
                    proptest::collection::vec(any::<u8>(), 0..600),
                ),
                1..4,
            ),
            any::<prop::sample::Index>(),
            any::<prop::sample::Index>(),
            0..3u8,
        )
            .prop_map(|(limits, pdus, cut, flip, damage)| {
                let mut out = Vec::new();
                for (bhs, ahs_words, data) in pdus {
                    let pdu = Pdu {
                        bhs,
                        ahs: Bytes::from(vec![0x11; ahs_words.len() * 4]),
                        data: Bytes::from(data),
                    };
                    out.extend_from_slice(&frame::encode(&pdu, &limits).to_bytes());
                }
                match damage {
                    1 => out.truncate(cut.index(out.len() + 1)),
                    2 => {
                        let i = flip.index(out.len());
                        out[i] ^= 0x5a;
                    }
                    _ => {}
                }
                (limits, out)
            })
    }

    fn round() -> impl Strategy<Value = NegotiationRound> {
        let keys = key_names();
        let pair = (
            prop_oneof![
                4 => prop::sample::select(keys).prop_map(String::from),
                1 => "[A-Za-z][A-Za-z0-9.:_-]{0,8}",
            ],
            prop_oneof![
                4 => prop::sample::select(VALUES).prop_map(String::from),
                1 => "[ -~]{0,20}",
            ],
        );
        (0..3u8, proptest::collection::vec(pair, 0..8), any::<bool>()).prop_map(
            |(stage, keys, finish)| NegotiationRound {
                stage: stage_from(stage),
                keys,
                finish,
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Mirrors fuzz target `pdu_frame` on arbitrary bytes.
        #[test]
        fn frame_arbitrary_bytes(limits in limits(), seal: bool,
                                 mut bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            if seal {
                seal_digests(&mut bytes, &limits);
            }
            check_frame(&bytes, &limits);
        }

        /// Mirrors fuzz target `pdu_frame` on streams of real PDUs, whole, cut or damaged.
        #[test]
        fn frame_encoded_streams((limits, bytes) in stream()) {
            check_frame(&bytes, &limits);
        }

        /// Mirrors fuzz target `cdb`.
        #[test]
        fn cdb_arbitrary_bytes(b in proptest::collection::vec(any::<u8>(), 0..24)) {
            check_cdb(&b);
        }

        /// Mirrors fuzz target `cdb` on CDBs that start with an opcode we decode.
        #[test]
        fn cdb_known_opcodes(
            op in prop::sample::select(vec![
                op::TEST_UNIT_READY, op::REQUEST_SENSE, op::READ_6, op::WRITE_6,
                op::INQUIRY, op::MODE_SENSE_6, op::READ_CAPACITY_10, op::READ_10,
                op::WRITE_10, op::SYNCHRONIZE_CACHE_10, op::MODE_SENSE_10, op::READ_12,
                op::WRITE_12, op::REPORT_LUNS, op::READ_16, op::WRITE_16,
                op::SYNCHRONIZE_CACHE_16, op::SERVICE_ACTION_IN_16, op::MODE_SELECT_6,
                op::MODE_SELECT_10, op::START_STOP_UNIT, op::PREVENT_ALLOW_MEDIUM_REMOVAL,
                op::VERIFY_10, op::VERIFY_12, op::VERIFY_16, op::WRITE_AND_VERIFY_10,
                op::WRITE_AND_VERIFY_12, op::WRITE_AND_VERIFY_16, op::PRE_FETCH_10,
                op::PRE_FETCH_16, op::ORWRITE_16, op::COMPARE_AND_WRITE,
                op::WRITE_ATOMIC_16, op::WRITE_SAME_10, op::WRITE_SAME_16, op::UNMAP,
                op::MAINTENANCE_IN,
            ]),
            rest in proptest::collection::vec(any::<u8>(), 0..20),
        ) {
            let mut b = vec![op];
            b.extend_from_slice(&rest);
            check_cdb(&b);
        }

        /// Mirrors fuzz target `read_routing_table` (its CDB half) on arbitrary bytes.
        #[test]
        fn read_routing_table_arbitrary_bytes(b in proptest::collection::vec(any::<u8>(), 0..24)) {
            check_read_routing_table_cdb(&b);
        }

        /// Mirrors fuzz target `read_routing_table` on C5h CDBs, mostly well formed:
        /// reserved bytes and CONTROL zero, or one of them set.
        #[test]
        fn read_routing_table_cdbs(
            offset: u64, alloc: u32, len in 14usize..20,
            poke in prop::option::of((prop::sample::select(vec![1usize, 14, 15]), 1..=255u8)),
        ) {
            let mut b = ReadRoutingTableCdb { offset, alloc_len: alloc }.encode().to_vec();
            if let Some((at, v)) = poke {
                b[at] = v;
            }
            b.resize(len, 0);
            check_read_routing_table_cdb(&b);
        }

        /// Mirrors the negotiator half of fuzz target `login`.
        #[test]
        fn negotiator_answers_within_limits(
            digests: bool, erl in 0..3u32, small: bool, discovery: bool, leading: bool,
            rounds in proptest::collection::vec(round(), 1..5),
        ) {
            let st = if discovery { SessionType::Discovery } else { SessionType::Normal };
            check_negotiator(&limits_from(digests, erl, small), st, leading, &rounds);
        }
    }

    /// Found by `negotiator_answers_within_limits`: an invalid value for
    /// MaxRecvDataSegmentLength is answered `Reject`, and the target's own
    /// declaration of the key follows in the same answer, so the key is sent twice
    /// (RFC 7143 §6.2) and our own `text::parse` refuses the response. Ignored until
    /// the negotiator is fixed; then drop `tolerate_known_repeat`.
    #[test]
    fn reject_then_declare_does_not_repeat_the_key() {
        let mut n = Negotiator::target(limits_from(false, 0, false));
        n.set_leading(false);
        n.set_stage(Stage::Operational);
        let mut answer = n
            .respond(&[("MaxRecvDataSegmentLength".into(), "0b".into())])
            .expect("answered");
        answer.extend(n.target_declarations());
        check_answer_text(&answer, false);
    }

    #[test]
    fn answer_text_check_catches_a_repeat() {
        let twice = vec![("A".to_string(), "1".to_string()), ("A".into(), "2".into())];
        assert!(std::panic::catch_unwind(|| check_answer_text(&twice, true)).is_err());
        let known = vec![
            ("MaxRecvDataSegmentLength".to_string(), "Reject".to_string()),
            ("MaxRecvDataSegmentLength".into(), "262144".into()),
        ];
        check_answer_text(&known, true);
        assert!(std::panic::catch_unwind(|| check_answer_text(&known, false)).is_err());
    }

    #[test]
    fn sealed_stream_of_one_pdu_decodes() {
        // The check itself must see a PDU get through: a sealed, valid PDU.
        let limits = FrameLimits {
            header_digest: true,
            data_digest: true,
            max_recv_data_segment_length: 8192,
        };
        let pdu = Pdu::new(
            Bhs::TextRequest(TextRequest::default()),
            Bytes::from_static(b"a=b\0x"),
        );
        let mut bytes = frame::encode(&pdu, &limits).to_bytes().to_vec();
        bytes[60] ^= 1; // inside the data: the data digest no longer matches
        seal_digests(&mut bytes, &limits);
        let mut buf = BytesMut::from(&bytes[..]);
        assert!(matches!(frame::decode(&mut buf, &limits), Ok(Some(_))));
        check_frame(&bytes, &limits);
    }
}
