//! Seed inputs for the fuzz targets, built with the crates' own encoders. A target
//! writes its seeds into `$MOSAIC_FUZZ_SEED_DIR` when that variable is set (see
//! README.md), then fuzzes as usual; without it nothing is written.
#![allow(dead_code)]

use bytes::Bytes;
use mosaic_proto::frame::{self, FrameLimits};
use mosaic_proto::pdu::{Bhs, LoginRequest, NopOut, Pdu, ScsiCommand, TextRequest};
use mosaic_proto::scsi::opcode as op;
use mosaic_target::pr::Initiator;

/// Writes `seeds()` as `seed-<n>` files into `$MOSAIC_FUZZ_SEED_DIR`, if set.
pub fn write_if_asked(seeds: fn() -> Vec<Vec<u8>>) {
    let Some(dir) = std::env::var_os("MOSAIC_FUZZ_SEED_DIR") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    std::fs::create_dir_all(&dir).expect("seed directory");
    for (i, s) in seeds().into_iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i}")), s).expect("seed file");
    }
}

fn login_text() -> Bytes {
    mosaic_proto::text::encode(&[
        ("InitiatorName", "iqn.allowed"),
        ("TargetName", "iqn.2026-11.io.mosaic:open"),
        ("SessionType", "Normal"),
        ("AuthMethod", "None"),
    ])
    .expect("valid text")
}

/// pdu_frame: a 4-byte settings prefix (see the target), then PDUs.
pub fn pdu_frame() -> Vec<Vec<u8>> {
    let pdus = vec![
        Pdu::new(
            Bhs::LoginRequest(LoginRequest {
                transit: true,
                csg: 0,
                nsg: 1,
                isid: 0x23d000001,
                itt: 1,
                ..Default::default()
            }),
            login_text(),
        ),
        Pdu::new(
            Bhs::ScsiCommand(ScsiCommand {
                final_bit: true,
                write: true,
                itt: 2,
                expected_data_transfer_length: 512,
                cdb: [op::WRITE_10, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0],
                ..Default::default()
            }),
            Bytes::from(vec![0xa5; 512]),
        ),
        Pdu {
            bhs: Bhs::TextRequest(TextRequest {
                final_bit: true,
                itt: 3,
                ttt: u32::MAX,
                ..Default::default()
            }),
            ahs: Bytes::from_static(&[0, 1, 2, 3]),
            data: Bytes::from_static(b"SendTargets=All\0"),
        },
        Pdu::new(Bhs::NopOut(NopOut::default()), Bytes::new()),
    ];
    let mut out = Vec::new();
    // flags: bit 0 HeaderDigest, bit 1 DataDigest, bits 2-3 = 0 (8192), bit 4 seal.
    for flags in [0x00u8, 0x03, 0x13] {
        let limits = FrameLimits {
            header_digest: flags & 1 != 0,
            data_digest: flags & 2 != 0,
            max_recv_data_segment_length: 8192,
        };
        let mut stream = vec![flags, 0, 0x20, 0];
        for p in &pdus {
            stream.extend_from_slice(&frame::encode(p, &limits).to_bytes());
            out.push({
                let mut one = vec![flags, 0, 0x20, 0];
                one.extend_from_slice(&frame::encode(p, &limits).to_bytes());
                one
            });
        }
        out.push(stream);
    }
    out
}

/// cdb: one CDB of each family we decode.
pub fn cdb() -> Vec<Vec<u8>> {
    vec![
        vec![op::TEST_UNIT_READY, 0, 0, 0, 0, 0],
        vec![op::INQUIRY, 1, 0x83, 0, 0xff, 0],
        vec![op::READ_10, 0, 0, 0, 0, 8, 0, 0, 4, 0],
        vec![op::WRITE_16, 8, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0],
        vec![op::UNMAP, 0, 0, 0, 0, 0, 0, 0, 24, 0],
        vec![
            op::WRITE_SAME_16,
            8,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            8,
            0,
            0,
        ],
        vec![
            op::COMPARE_AND_WRITE,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            4,
            0,
            0,
            0,
            1,
            0,
            0,
        ],
        vec![
            op::SERVICE_ACTION_IN_16,
            0x10,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            32,
            0,
            0,
        ],
        vec![
            op::MAINTENANCE_IN,
            0x0c,
            2,
            op::UNMAP,
            0,
            0,
            0,
            0,
            2,
            0,
            0,
            0,
        ],
        vec![op::REPORT_LUNS, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0],
        vec![op::MODE_SENSE_10, 0, 0x3f, 0, 0, 0, 0, 0x10, 0, 0],
    ]
}

/// pr_params: TransportIDs for the even-byte mode (PROUT sequences are built from
/// the structured choices, which start from any input).
pub fn pr_params() -> Vec<Vec<u8>> {
    let ids = [
        Initiator::Port("iqn.a,i,0x000000000001".into()),
        Initiator::Port("iqn.2026-11.io.mosaic:client,i,0x23d000001234".into()),
        Initiator::Device("iqn.b".into()),
    ];
    ids.iter()
        .map(|i| {
            let mut v = vec![0u8];
            v.extend_from_slice(&i.transport_id());
            v
        })
        .chain(std::iter::once(vec![1u8; 64]))
        .collect()
}

/// xcopy_params: mode 0 (length of the list), one 512-byte target of 16 blocks,
/// then a list of one E4h CSCD and one or two 02h segments.
pub fn xcopy_params() -> Vec<Vec<u8>> {
    let list = |segments: &[(u16, u64, u64)]| {
        let mut p = vec![0u8; 16];
        p[1] = 0x18; // LIST ID USAGE 11b
        p[3] = 32;
        p[8..12].copy_from_slice(&((segments.len() * 28) as u32).to_be_bytes());
        let mut c = vec![0u8; 32];
        c[0] = 0xe4;
        c[4] = 1;
        c[5] = 3; // NAA
        c[7] = 8;
        c[8..16].copy_from_slice(&0x6001_4050_0000_0001u64.to_be_bytes());
        c[30] = 0x02; // DISK BLOCK LENGTH 512
        p.extend(c);
        for &(blocks, src, dst) in segments {
            let mut g = vec![0u8; 28];
            g[0] = 0x02;
            g[3] = 24;
            g[10..12].copy_from_slice(&blocks.to_be_bytes());
            g[12..20].copy_from_slice(&src.to_be_bytes());
            g[20..28].copy_from_slice(&dst.to_be_bytes());
            p.extend(g);
        }
        p
    };
    [vec![(4, 0, 8)], vec![(4, 0, 2), (1, 15, 0)], vec![]]
        .iter()
        .map(|segs| {
            let mut v = vec![0u8, 0, 0, 0, 0, 1, 0x10];
            v.extend(list(segs));
            v
        })
        .collect()
}

/// read_routing_table: the CDBs an initiator sends to fetch a table in pieces,
/// and a few with a reserved byte or NACA set.
pub fn read_routing_table() -> Vec<Vec<u8>> {
    use mosaic_proto::scsi::vendor::ReadRoutingTableCdb;
    let mut v: Vec<Vec<u8>> = [(0u64, 4096u32), (0, 12), (12, 40), (50, 0), (u64::MAX, 16)]
        .iter()
        .map(|&(offset, alloc_len)| ReadRoutingTableCdb { offset, alloc_len }.encode().to_vec())
        .collect();
    for (at, bit) in [(1usize, 0x10u8), (14, 0x80), (15, 0x04)] {
        let mut c = ReadRoutingTableCdb {
            offset: 0,
            alloc_len: 64,
        }
        .encode()
        .to_vec();
        c[at] = bit;
        v.push(c);
    }
    v
}
