//! Replication link costs: sealing and opening a batch frame (AES-256-GCM with `ring`, the
//! header as associated data) of 64 KiB and 1 MiB; compressing and decompressing a 4 MiB
//! batch of records (zstd level 1, as shipped by default) of incompressible data and of
//! text-like data; and one handshake (Noise NNpsk0: two X25519 key exchanges per side).
//! Throughput is per payload byte; the time per GB is 1 GB divided by it.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ferry_proto::batch::{BatchHeader, Direction, Opener, Sealer};
use ferry_proto::handshake::{initiate, respond};
use ferry_proto::records::{self, RecordKind, RecordRef};
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

    // A 4 MiB batch of 4 KiB writes: random bytes (what fio writes), and text-like bytes
    // (words from a small vocabulary, about what logs and databases hold).
    let mut g = c.benchmark_group("compress");
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let random: Vec<u8> = (0..4 << 20).map(|_| next() as u8).collect();
    let words = [
        "ferry ",
        "journal ",
        "replica ",
        "checkpoint ",
        "2026-11-27 ",
        "INFO ",
        "write ",
        "42 ",
    ];
    let mut text = Vec::with_capacity(4 << 20);
    while text.len() < 4 << 20 {
        text.extend_from_slice(words[(next() % 8) as usize].as_bytes());
    }
    text.truncate(4 << 20);
    for (name, data) in [("random", &random), ("text", &text)] {
        let mut plain = Vec::new();
        for (i, chunk) in data.chunks(4096).enumerate() {
            records::push(
                &mut plain,
                &RecordRef {
                    seq: i as u64,
                    kind: RecordKind::Write,
                    volume: 1,
                    offset: i as u64 * 4096,
                    length: 4096,
                    data: chunk,
                },
            );
        }
        g.throughput(Throughput::Bytes(plain.len() as u64));
        g.bench_function(format!("zstd1_{name}_4MiB"), |b| {
            b.iter(|| black_box(records::compress(black_box(&plain), 1)))
        });
        let packed = records::compress(&plain, 1);
        eprintln!("{name}: {} -> {} bytes", plain.len(), packed.len());
        g.bench_function(format!("unzstd_{name}_4MiB"), |b| {
            b.iter(|| black_box(records::decompress(black_box(&packed)).unwrap()))
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
