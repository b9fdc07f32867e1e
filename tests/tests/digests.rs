//! CRC32C header and data digests, checked with our own initiator (libiscsi, and so
//! qemu-img, has no data digests): negotiate both, move data that needs R2Ts, many
//! Data-Out PDUs and multi-PDU Data-In, and check every digest the target sends (the
//! initiator's framing verifies them); then a corrupted data digest.

use std::time::Duration;

use bytes::Bytes;
use mosaic_proto::digest;
use mosaic_proto::pdu::{self, Bhs, Pdu, ScsiCommand};
use mosaic_tests::initiator::{self, lun_field, Outcome};
use mosaic_tests::pattern;
use mosaic_tests::server::{Mosaic, Volume};

#[test]
fn header_and_data_digests_round_trip() {
    let server = Mosaic::start(&[Volume::memory("vol", "32M")]);
    let mut s = mosaic_tests::login(&server, "vol", |o| o.digests(true, true))
        .unwrap_or_else(|e| panic!("login with HeaderDigest=DataDigest=CRC32C,None: {e}"));
    assert!(
        s.negotiated.header_digest && s.negotiated.data_digest,
        "the target should agree to CRC32C for both digests; it answered {:?}",
        s.negotiated.keys
    );
    let (blocks, bs) = s.read_capacity().expect("READ CAPACITY(16)");
    assert!(blocks * bs as u64 >= 4 << 20, "volume too small");
    // Sizes: one block, one PDU of immediate data, several R2T bursts of Data-Out.
    for (i, len) in [512usize, 4096, 65_536, 1 << 20, 3 << 20]
        .into_iter()
        .enumerate()
    {
        let lba = (i as u64) * 8192;
        let data = pattern::bytes(100 + i as u64, len);
        s.write(lba, &data, bs)
            .unwrap_or_else(|e| panic!("WRITE of {len} bytes with digests: {e}"));
        let back = s
            .read(lba, (len / bs as usize) as u32, bs)
            .unwrap_or_else(|e| panic!("READ of {len} bytes with digests: {e}"));
        if let Some(d) = pattern::first_difference(&data, &back) {
            panic!("{len}-byte write/read with digests: {d}");
        }
    }
    s.ping().expect("NOP-Out/NOP-In with digests");
    s.logout().expect("logout with digests");
}

#[test]
fn header_digest_only_round_trip() {
    let server = Mosaic::start(&[Volume::memory("vol", "8M")]);
    let mut s = mosaic_tests::login(&server, "vol", |o| o.digests(true, false)).expect("login");
    assert!(s.negotiated.header_digest && !s.negotiated.data_digest);
    let data = pattern::bytes(7, 256 << 10);
    s.write(64, &data, 512).expect("write");
    assert_eq!(s.read(64, 512, 512).expect("read"), data);
}

/// A SCSI write whose immediate data carries a wrong data digest: the target must
/// answer with a Reject (reason "data digest error") or drop the connection, must not
/// write the bad data, and must keep serving.
#[test]
fn corrupted_data_digest_is_rejected_or_dropped() {
    let mut server = Mosaic::start(&[Volume::memory("vol", "8M")]);
    let mut s = mosaic_tests::login(&server, "vol", |o| o.digests(true, true)).expect("login");
    assert!(
        s.negotiated.data_digest,
        "target did not agree to DataDigest=CRC32C: {:?}",
        s.negotiated.keys
    );
    assert!(s.negotiated.immediate_data, "test needs ImmediateData=Yes");
    let before = pattern::bytes(11, 4096);
    s.write(0, &before, 512).expect("first write");

    let bad = pattern::bytes(12, 4096);
    let mut cdb = [0u8; 16];
    cdb[0] = 0x2a; // WRITE(10), LBA 0, 8 blocks
    cdb[8] = 8;
    let cmd = ScsiCommand {
        immediate: false,
        final_bit: true,
        read: false,
        write: true,
        attr: 1,
        lun: lun_field(server.lun()),
        itt: s.next_itt(),
        expected_data_transfer_length: 4096,
        cmd_sn: s.take_cmd_sn(),
        exp_stat_sn: s.exp_stat_sn(),
        cdb,
    };
    let wire = mosaic_proto::frame::encode(
        &Pdu::new(Bhs::ScsiCommand(cmd), Bytes::from(bad.clone())),
        &s.tx_limits(),
    )
    .to_bytes();
    let mut raw = wire.to_vec();
    let n = raw.len();
    // The data digest is the last 4 bytes: flip one bit.
    raw[n - 1] ^= 0x01;
    assert_ne!(
        digest::from_wire(raw[n - 4..].try_into().unwrap()),
        digest::crc32c(&bad)
    );
    s.send_raw(&raw).expect("send");
    let limits = mosaic_proto::frame::FrameLimits {
        header_digest: true,
        data_digest: true,
        max_recv_data_segment_length: initiator::OUR_MAX_RECV_DATA_SEGMENT_LENGTH,
    };
    let outcome = initiator::observe(s.stream(), limits, Duration::from_secs(5));
    match &outcome {
        Outcome::Closed => {}
        Outcome::Answered(pdus) => {
            let rejected = pdus.iter().any(|p| {
                matches!(p, Bhs::Reject(r) if r.reason == pdu::reject_reason::DATA_DIGEST_ERROR)
            });
            let good = pdus
                .iter()
                .any(|p| matches!(p, Bhs::ScsiResponse(r) if r.status == initiator::GOOD));
            assert!(
                rejected && !good,
                "expected a Reject (data digest error) and no GOOD status, got {pdus:?}"
            );
        }
        other => panic!("corrupted data digest: expected a Reject or a drop, got {other:?}"),
    }
    server.assert_alive("after a corrupted data digest");
    let mut s2 = mosaic_tests::login(&server, "vol", |o| o.digests(true, true)).expect("relogin");
    let now = s2.read(0, 8, 512).expect("read after");
    assert_eq!(now, before, "the write with the bad digest must not land");
}
