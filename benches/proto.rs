//! Replication link costs: sealing and opening a batch frame (AES-256-GCM with `ring`, the
//! header as associated data) of 64 KiB and 1 MiB, and one handshake (Noise NNpsk0: two
//! X25519 key exchanges per side). Throughput is per payload byte; the time per GB is
//! 1 GB divided by it.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ferry_proto::batch::{BatchHeader, Direction, Opener, Sealer};
use ferry_proto::handshake::{initiate, respond};
use std::hint::black_box;

fn bench(c: &mut Criterion) {
    let key = [3u8; 32];
    let h = BatchHeader {
        kind: ferry_proto::batch::FrameKind::Batch,
        flags: 0,
        vpg: 1,
        epoch: 1,
        batch_seq: 0,
        first_seq: 0,
        record_count: 16,
    };
    let mut g = c.benchmark_group("batch");
    for size in [64usize << 10, 1 << 20] {
        let records = vec![0x5au8; size];
        g.throughput(Throughput::Bytes(size as u64));
        // The counter goes up with every batch, as on a link (far from its 2^32 limit).
        let mut sealer = Sealer::new(&key, Direction::ToRecovery);
        g.bench_function(format!("seal_{size}B"), |b| {
            b.iter(|| black_box(sealer.seal(&h, black_box(&records)).unwrap()))
        });
        let mut s = Sealer::new(&key, Direction::ToRecovery);
        let frame = s.seal(&h, &records).unwrap();
        g.bench_function(format!("open_{size}B"), |b| {
            b.iter(|| {
                let mut o = Opener::new(&key, Direction::ToRecovery);
                black_box(o.open(black_box(&frame)).unwrap())
            })
        });
    }
    g.finish();
    c.bench_function("handshake", |b| {
        b.iter(|| {
            let (init, hello) = initiate(&key).unwrap();
            let (reply, keys) = respond(&key, &hello).unwrap();
            black_box((init.finish(&reply).unwrap(), keys.unwrap()))
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
