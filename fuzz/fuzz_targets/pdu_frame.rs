//! Fuzz target `pdu_frame`: `mosaic_proto::frame::decode` over arbitrary bytes under
//! arbitrary digest and MaxRecvDataSegmentLength settings, re-encoding what decodes.
//! The properties are `check_frame` in proto/tests/fuzz_mirror.rs (also run by CI).
//!
//! Input: byte 0 picks the limits (bit 0 HeaderDigest, bit 1 DataDigest, bits 2-3
//! the MaxRecvDataSegmentLength source, bit 4 seals the first PDU's digests so the
//! rest of the framing is reached); bytes 1-3 a 24-bit limit; the rest is the stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mosaic_proto::frame::FrameLimits;
use mosaic_proto::pdu::MAX_DATA_SEGMENT_LEN;

#[allow(dead_code)]
#[path = "../../proto/tests/fuzz_mirror.rs"]
mod mirror;

fuzz_target!(
    init: seeds::write_if_asked(seeds::pdu_frame),
    |data: &[u8]| {
    let Some((head, stream)) = data.split_at_checked(4) else {
        return;
    };
    let flags = head[0];
    let max = match (flags >> 2) & 3 {
        0 => 8192,
        1 => u32::from_be_bytes([0, head[1], head[2], head[3]]),
        2 => u32::from(head[1]) * 4,
        _ => MAX_DATA_SEGMENT_LEN,
    };
    let limits = FrameLimits {
        header_digest: flags & 1 != 0,
        data_digest: flags & 2 != 0,
        max_recv_data_segment_length: max,
    };
    let mut bytes = stream.to_vec();
    if flags & 0x10 != 0 {
        mirror::seal_digests(&mut bytes, &limits);
    }
    mirror::check_frame(&bytes, &limits);
});

#[path = "../src/seeds.rs"]
mod seeds;
