//! Hot pieces of the NBD data path: decoding and checking a request header, encoding the
//! replies that go out per request.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ferry_nbd::ExportInfo;
use ferry_nbd::negotiate::ReplyMode;
use ferry_nbd::request::{Limits, check, decode_request};
use ferry_nbd::wire::Errno;
use ferry_nbd::{Extent, reply};
use std::hint::black_box;

fn header(extended: bool) -> Vec<u8> {
    let mut b = if extended { 0x21e4_1c71u32 } else { 0x2560_9513u32 }
        .to_be_bytes()
        .to_vec();
    b.extend_from_slice(&1u16.to_be_bytes());
    b.extend_from_slice(&1u16.to_be_bytes());
    b.extend_from_slice(&42u64.to_be_bytes());
    b.extend_from_slice(&(1u64 << 20).to_be_bytes());
    if extended {
        b.extend_from_slice(&4096u64.to_be_bytes());
    } else {
        b.extend_from_slice(&4096u32.to_be_bytes());
    }
    b
}

fn bench(c: &mut Criterion) {
    let info = ExportInfo::new(1 << 40);
    let mut g = c.benchmark_group("request");
    g.throughput(Throughput::Elements(1));
    for (name, mode) in [("compact", ReplyMode::Structured), ("extended", ReplyMode::Extended)] {
        let h = header(mode == ReplyMode::Extended);
        let lim = Limits {
            info: &info,
            mode,
            base_allocation: true,
            payload_bytes_max: 32 << 20,
        };
        g.bench_function(format!("decode+check/{name}"), |b| {
            b.iter(|| {
                let r = decode_request(black_box(&h), mode).unwrap();
                black_box(check(&r, lim))
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("reply");
    g.throughput(Throughput::Elements(1));
    let mut out = Vec::with_capacity(256);
    for (name, mode) in [
        ("simple", ReplyMode::Simple),
        ("structured", ReplyMode::Structured),
        ("extended", ReplyMode::Extended),
    ] {
        g.bench_function(format!("done/{name}"), |b| {
            b.iter(|| {
                out.clear();
                reply::done(&mut out, mode, black_box(7), 4096);
                black_box(out.len())
            })
        });
        g.bench_function(format!("read_head/{name}"), |b| {
            b.iter(|| {
                out.clear();
                reply::read_data_head(&mut out, mode, black_box(7), 4096, 4096);
                black_box(out.len())
            })
        });
    }
    g.bench_function("error/extended", |b| {
        b.iter(|| {
            out.clear();
            reply::error(
                &mut out,
                ReplyMode::Extended,
                7,
                0,
                Errno::EINVAL,
                black_box("range is past the end"),
            );
            black_box(out.len())
        })
    });
    let extents: Vec<Extent> = (0..64)
        .map(|i| Extent {
            length: 65536,
            flags: (i % 2) * 3,
        })
        .collect();
    g.bench_function("block_status_64/structured", |b| {
        b.iter(|| {
            out.clear();
            reply::block_status(&mut out, ReplyMode::Structured, 7, 0, 1, black_box(&extents));
            black_box(out.len())
        })
    });
    g.finish();

    // What /metrics costs each request: two clock readings and the counters (relaxed
    // atomics) of its volume, next to the reply encoding above.
    let mut g = c.benchmark_group("request_stats");
    let stats = ferry_nbd::OpStats::default();
    let op = ferry_nbd::request::Op::Write {
        offset: 0,
        len: 4096,
        fua: false,
    };
    g.bench_function("clock+record/write", |b| {
        b.iter(|| {
            let t = std::time::Instant::now();
            stats.record(black_box(&op), false, t.elapsed());
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
