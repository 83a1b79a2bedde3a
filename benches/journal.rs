//! Journal ring hot paths: appending 4 KiB and 1 MiB records (copy into the ring, checksum,
//! entry) with the single-writer ring and with the shared journal the agent uses (reserve a
//! slot, fill it, commit, release; a consumer acknowledging when full), and the recovery
//! scan over a ring full of records. In memory, so these measure
//! the ring's own work; the mmap'd file adds page faults and writeback. The scan figure
//! includes copying the 64 MiB ring it opens each time.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ferry_journal::{Geometry, Journal, Kind, MemStorage, Ring};
use std::hint::black_box;

fn bench(c: &mut Criterion) {
    let g = Geometry::for_data_bytes(1, 256 << 20);
    let mut g_append = c.benchmark_group("journal_append");
    for size in [4096usize, 1 << 20] {
        let payload = vec![0x5au8; size];
        let mut ring = Ring::create(MemStorage(vec![0; g.file_bytes() as usize]), g).unwrap();
        g_append.throughput(Throughput::Bytes(size as u64));
        g_append.bench_function(format!("{size}B"), |b| {
            b.iter(|| {
                let seq = match ring.append(Kind::Write, 1, 0, size as u64, black_box(&payload)) {
                    Ok(s) => s,
                    Err(_) => {
                        // Full: acknowledge everything, as a consumer keeping up would.
                        let head = ring.acked_seq() + (ring.bounds().1 - ring.bounds().0);
                        ring.ack(head).unwrap();
                        ring.append(Kind::Write, 1, 0, size as u64, &payload).unwrap()
                    }
                };
                black_box(seq)
            })
        });
    }
    g_append.finish();

    let mut g_slot = c.benchmark_group("journal_slot");
    for size in [4096usize, 1 << 20] {
        let journal = Journal::create(MemStorage(vec![0; g.file_bytes() as usize]), g).unwrap();
        let mut consumer = journal.consumer().unwrap();
        g_slot.throughput(Throughput::Bytes(size as u64));
        g_slot.bench_function(format!("{size}B"), |b| {
            b.iter(|| {
                let mut slot = match journal.reserve(Kind::Write, 1, 0, size as u64) {
                    Ok(s) => s,
                    Err(_) => {
                        let mut last = 0;
                        while let Some(r) = consumer.next_record() {
                            last = r.entry.seq;
                        }
                        consumer.ack(last + 1).unwrap();
                        journal.reserve(Kind::Write, 1, 0, size as u64).unwrap()
                    }
                };
                slot.payload_mut().fill(0x5a); // stands in for the socket read
                slot.commit();
                black_box(slot.seq())
            })
        });
    }
    g_slot.finish();

    let mut g_scan = c.benchmark_group("journal_recovery");
    let g = Geometry::for_data_bytes(1, 64 << 20);
    let mut ring = Ring::create(MemStorage(vec![0; g.file_bytes() as usize]), g).unwrap();
    let payload = vec![0xa5u8; 4096];
    let mut n = 0u64;
    while ring.append(Kind::Write, 1, n * 4096, 4096, &payload).is_ok() {
        n += 1;
    }
    let storage = ring.into_storage();
    g_scan.throughput(Throughput::Elements(n));
    g_scan.bench_function(format!("scan_{n}_records_of_4KiB"), |b| {
        b.iter(|| {
            let (_, rec) = Ring::open(storage.clone()).unwrap();
            assert_eq!(rec.records, n);
            black_box(rec.records)
        })
    });
    g_scan.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
