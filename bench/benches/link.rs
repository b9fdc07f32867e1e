//! Inter-node link round trips over loopback: a ping, one 4 KiB read at a time
//! (latency), and 32 reads of 4 KiB in flight on one connection (multiplexing).
//! The service answers from memory, so this measures the link alone: codec, the
//! pending map, the writer tasks and the loopback socket.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mosaic_target::cluster::link::{
    LinkClient, LinkConfig, LinkServer, LocalService, Request, Response, ServeFuture,
};
use tokio::sync::watch;
use tokio::task::JoinSet;

const BLOCK: u32 = 4096;
const IN_FLIGHT: usize = 32;

/// Serves every read from one shared buffer (no copy, no store).
struct Fixed(Bytes);

impl LocalService for Fixed {
    fn epoch(&self) -> u64 {
        1
    }

    fn serve(&self, req: Request) -> ServeFuture<'_> {
        let data = self.0.clone();
        Box::pin(async move {
            match req {
                Request::Read { len, .. } => Response::Data(data.slice(..len as usize)),
                _ => Response::Done,
            }
        })
    }
}

fn link(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (client, _shutdown) = rt.block_on(async {
        let service = Arc::new(Fixed(Bytes::from(vec![0xab; BLOCK as usize])));
        let server = LinkServer::bind("127.0.0.1:0", service).await.unwrap();
        let addr = server.local_addr().unwrap();
        let (tx, rx) = watch::channel(false);
        tokio::spawn(server.run(rx));
        let client = LinkClient::connect(addr, LinkConfig::default())
            .await
            .unwrap();
        (client, tx)
    });
    let read = Request::Read {
        volume: 1,
        offset: 0,
        len: BLOCK,
    };

    let mut g = c.benchmark_group("link");
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("ping_round_trip", |b| {
        b.iter(|| rt.block_on(client.ping(1)).unwrap())
    });
    g.throughput(Throughput::Bytes(BLOCK.into()));
    g.bench_function("read_4k_round_trip", |b| {
        b.iter(|| rt.block_on(client.call(1, read.clone())).unwrap())
    });
    g.throughput(Throughput::Bytes(u64::from(BLOCK) * IN_FLIGHT as u64));
    g.bench_function("read_4k_x32_in_flight", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut calls = JoinSet::new();
                for _ in 0..IN_FLIGHT {
                    let client = client.clone();
                    let read = read.clone();
                    calls.spawn(async move { client.call(1, read).await });
                }
                while let Some(r) = calls.join_next().await {
                    r.unwrap().unwrap();
                }
            })
        })
    });
    g.finish();
}

criterion_group!(benches, link);
criterion_main!(benches);
