//! Hot paths of the wire protocol: BHS decode and encode, CRC32C by segment size,
//! whole-PDU framing.

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mosaic_proto::frame::{self, FrameLimits};
use mosaic_proto::pdu::{Bhs, DataIn, Pdu, ScsiCommand, BHS_LEN};

fn bhs(c: &mut Criterion) {
    let cmd = Bhs::ScsiCommand(ScsiCommand {
        final_bit: true,
        read: true,
        itt: 7,
        expected_data_transfer_length: 4096,
        cmd_sn: 42,
        cdb: [0x28, 0, 0, 0, 0x10, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0],
        ..Default::default()
    });
    let raw: [u8; BHS_LEN] = cmd.encode(0, 0);
    c.bench_function("bhs_decode_scsi_command", |b| {
        b.iter(|| Bhs::decode(black_box(&raw)))
    });
    let din = Bhs::DataIn(DataIn {
        final_bit: true,
        status_present: true,
        itt: 7,
        data_sn: 3,
        ..Default::default()
    });
    c.bench_function("bhs_encode_data_in", |b| {
        b.iter(|| black_box(&din).encode(0, 4096))
    });
}

fn crc(c: &mut Criterion) {
    let mut g = c.benchmark_group("crc32c");
    for size in [48usize, 512, 4096, 65536, 262144] {
        let buf = vec![0xa5u8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &buf, |b, buf| {
            b.iter(|| mosaic_proto::digest::crc32c(black_box(buf)))
        });
    }
    g.finish();
}

fn framing(c: &mut Criterion) {
    let limits = FrameLimits {
        header_digest: true,
        data_digest: false,
        max_recv_data_segment_length: 262144,
    };
    let pdu = Pdu::new(
        Bhs::DataIn(DataIn {
            final_bit: true,
            ..Default::default()
        }),
        Bytes::from(vec![0u8; 4096]),
    );
    let wire = frame::encode(&pdu, &limits).to_bytes();
    c.bench_function("frame_decode_4k_data_in", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(&wire[..]);
            frame::decode(&mut buf, &limits).unwrap()
        })
    });
    c.bench_function("frame_encode_4k_data_in", |b| {
        b.iter(|| frame::encode(black_box(&pdu), &limits))
    });
}

criterion_group!(benches, bhs, crc, framing);
criterion_main!(benches);
