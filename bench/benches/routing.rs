//! Hot paths of the routing table: owner lookup and extent split on a 1M-page
//! volume, wire encode and decode (throughput in bytes of encoding), the failure
//! plan for 64 nodes and 1M pages, the NIC plan for 1,000 connections, and the
//! dm-switch export.

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use mosaic_routing::dmswitch::{self, DmPath};
use mosaic_routing::nic::NicPlanner;
use mosaic_routing::plan::{plan_node_failure, Loads, NodeLoad};
use mosaic_routing::wire;
use mosaic_routing::{plan_create_volume, Node, NodeId, RoutingTable, Volume, VolumeId};

const PAGES: u64 = 1 << 20;
const NODES: u32 = 64;

/// 64 nodes, one volume of 1M pages of 64 KiB (4 KiB blocks), two replicas.
fn big_table() -> RoutingTable {
    let nodes = (0..NODES).map(|i| {
        Node::new(NodeId(i), 1 << 40)
            .with_domain(format!("rack{}", i % 8))
            .with_nic(
                25_000,
                vec![([10, 0, (i / 250) as u8, (i % 250) as u8], 3260).into()],
            )
            .with_nic(
                25_000,
                vec![([10, 1, (i / 250) as u8, (i % 250) as u8], 3260).into()],
            )
    });
    let t = RoutingTable::new(nodes).unwrap();
    let v = Volume {
        id: VolumeId(1),
        name: "bench".into(),
        blocks: PAGES * 16,
        block_size: 4096,
        page_size: 64 << 10,
        replicas: 2,
    };
    plan_create_volume(&t, v).unwrap()
}

fn routing(c: &mut Criterion) {
    let table = big_table();
    let vm = table.volume(VolumeId(1)).unwrap();
    let blocks = vm.volume().blocks;
    // Pseudo-random LBAs so the lookup is not served from one cache line.
    let lbas: Vec<u64> = (0..4096u64)
        .map(|i| (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 11) % blocks)
        .collect();
    let mut k = 0;
    c.bench_function("lookup_owner_1m_pages", |b| {
        b.iter(|| {
            k = (k + 1) & 4095;
            table.owner(VolumeId(1), black_box(lbas[k]))
        })
    });
    c.bench_function("lookup_owner_volume_map_1m_pages", |b| {
        b.iter(|| {
            k = (k + 1) & 4095;
            vm.owner(black_box(lbas[k]))
        })
    });
    c.bench_function("split_extent_1mib_over_pages", |b| {
        // 1 MiB I/O (256 blocks of 4 KiB) crossing 16 or 17 pages of 64 KiB.
        b.iter(|| {
            k = (k + 1) & 4095;
            let lba = lbas[k].min(blocks - 256);
            table
                .split_extent(VolumeId(1), black_box(lba), 256)
                .unwrap()
                .map(|p| p.owner.0 as u64 + p.blocks)
                .sum::<u64>()
        })
    });

    let encoded = wire::encode(&table, VolumeId(1)).unwrap();
    let mut g = c.benchmark_group("wire_1m_pages");
    g.throughput(Throughput::Bytes(encoded.len() as u64));
    g.sample_size(20);
    g.bench_function("encode", |b| {
        b.iter(|| wire::encode(black_box(&table), VolumeId(1)).unwrap())
    });
    g.bench_function("decode", |b| {
        b.iter(|| wire::decode(black_box(&encoded)).unwrap())
    });
    g.finish();

    let mut g = c.benchmark_group("plans");
    g.sample_size(10);
    let loads: Loads = (0..NODES)
        .map(|i| {
            let f = f64::from(i % 10) / 10.0;
            (
                NodeId(i),
                NodeLoad {
                    cpu: f,
                    memory: 0.3,
                    io: f / 2.0,
                },
            )
        })
        .collect();
    g.bench_function("failure_plan_64_nodes_1m_pages", |b| {
        b.iter(|| plan_node_failure(black_box(&table), NodeId(17), &loads).unwrap())
    });
    g.bench_function("nic_plan_1000_connections", |b| {
        b.iter_batched(
            || NicPlanner::from_table(&table),
            |mut p| {
                // 250 MPIO groups of 4 connections on distinct nodes, then a node loss.
                for g in 0..250 {
                    p.assign(&format!("iqn.2024-01.host:{g}"), VolumeId(1), 4, true)
                        .unwrap();
                }
                p.fail_node(NodeId(5))
            },
            BatchSize::SmallInput,
        )
    });
    let paths: Vec<DmPath> = (0..NODES)
        .map(|i| DmPath {
            node: NodeId(i),
            device: format!("/dev/mapper/mosaic-n{i}"),
            offset: 0,
        })
        .collect();
    g.bench_function("dm_switch_messages_1m_pages", |b| {
        b.iter(|| dmswitch::set_region_mappings(black_box(vm), &paths).unwrap())
    });
    g.finish();
}

criterion_group!(benches, routing);
criterion_main!(benches);
