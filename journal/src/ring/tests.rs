use super::*;
use crate::storage::{MemStorage, MmapStorage};

const RING: u64 = 0xfeed_f00d;

fn small() -> (Geometry, MemStorage) {
    let g = Geometry {
        ring_id: RING,
        index_slots: 16,
        data_bytes: 64 * 1024,
    };
    (g, MemStorage(vec![0xee; g.file_bytes() as usize]))
}

fn data(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| seed.wrapping_add(i as u8)).collect()
}

#[test]
fn append_read_reopen_and_ack() {
    let (g, s) = small();
    let mut r = Ring::create(s, g).unwrap();
    assert_eq!(r.append(Kind::Write, 1, 4096, 8192, &data(1, 8192)).unwrap(), 0);
    assert_eq!(r.append(Kind::Trim, 1, 0, 1 << 30, &[]).unwrap(), 1);
    assert_eq!(r.append(Kind::Checkpoint, 0, 1_700_000_000, 6, b"before").unwrap(), 2);
    assert_eq!(r.append(Kind::Write, 2, 0, 512, &data(9, 512)).unwrap(), 3);
    let rec = r.read(0).unwrap();
    assert_eq!(
        (rec.entry.volume, rec.entry.offset, rec.payload),
        (1, 4096, &data(1, 8192)[..])
    );
    assert_eq!(r.read(2).unwrap().payload, b"before");
    assert_eq!(
        r.read(3).unwrap().entry.data_pos,
        12288,
        "payloads start on 4 KiB boundaries"
    );

    let (mut r, rec) = Ring::open(r.into_storage()).unwrap();
    assert_eq!(
        rec,
        Recovery {
            records: 4,
            stopped_by: Stop::Empty,
            holes: vec![]
        }
    );
    r.ack(2).unwrap();
    let (mut r, rec) = Ring::open(r.into_storage()).unwrap();
    assert_eq!(rec.records, 2);
    assert_eq!(r.bounds(), (2, 4));
    assert_eq!(
        r.append(Kind::WriteZeroes, 1, 0, 4096, &[]).unwrap(),
        4,
        "sequence continues"
    );
    assert!(matches!(r.ack(9), Err(RingError::BadAck { .. })));
    assert!(matches!(r.ack(1), Err(RingError::BadAck { .. })));
}

#[test]
fn wraps_without_splitting_payloads_and_reports_full() {
    let (g, s) = small();
    let mut r = Ring::create(s, g).unwrap();
    let mut seq = 0;
    // Many laps of the 64 KiB data ring with 12 KiB payloads (which do not divide it).
    for lap in 0..40u8 {
        let mut last = 0;
        for i in 0..4u8 {
            last = r.append(Kind::Write, 0, 0, 12288, &data(lap ^ i, 12288)).unwrap();
            let rec = r.read(r.bounds().1 - 1).unwrap();
            let phys = rec.entry.data_pos % g.data_bytes;
            assert!(phys + 12288 <= g.data_bytes, "a payload never crosses the end");
            assert_eq!(rec.payload, &data(lap ^ i, 12288)[..]);
            seq += 1;
        }
        // 4 × 12 KiB fit; the fifth would pass the acknowledged position.
        assert!(matches!(
            r.append(Kind::Write, 0, 0, 32768, &data(0, 32768)),
            Err(RingError::Full("data space"))
        ));
        r.ack(last + 1).unwrap();
    }
    assert_eq!(r.acked_seq(), seq);
    // Index exhaustion: records without payload use only index slots.
    for _ in 0..16 {
        r.append(Kind::Trim, 0, 0, 4096, &[]).unwrap();
    }
    assert!(matches!(
        r.append(Kind::Trim, 0, 0, 4096, &[]),
        Err(RingError::Full("index slot"))
    ));
    assert!(matches!(
        r.append(Kind::Write, 0, 0, 1 << 20, &data(0, 1 << 20)),
        Err(RingError::TooLarge(_))
    ));
    // After many laps, recovery finds exactly the unacknowledged records.
    let (_, rec) = Ring::open(r.into_storage()).unwrap();
    assert_eq!(rec.records, 16);
}

#[test]
fn recovery_stops_at_a_torn_payload_or_a_stale_entry() {
    let (g, s) = small();
    let mut r = Ring::create(s, g).unwrap();
    for i in 0..3u8 {
        r.append(Kind::Write, 0, 8192 * i as u64, 4096, &data(i, 4096)).unwrap();
    }
    let second = r.read(1).unwrap().entry;
    let third = r.read(2).unwrap().entry;
    let mut s = r.into_storage();
    s.0[(g.data_offset(third.data_pos) + 100) as usize] ^= 1;
    let (r, rec) = Ring::open(s.clone()).unwrap();
    assert_eq!(rec.records, 2, "the last record is torn: the journal ends before it");
    assert!(
        matches!(&rec.stopped_by, Stop::Damaged(m) if m.contains("torn")),
        "{rec:?}"
    );
    assert_eq!(r.bounds(), (0, 2));

    // Recovery cleared the torn entry: the next open ends there cleanly.
    let (_, again) = Ring::open(r.into_storage()).unwrap();
    assert_eq!((again.records, again.stopped_by), (2, Stop::Empty));

    // A torn record with a good one after it: a void, and its range is reported.
    s.0[(g.data_offset(third.data_pos) + 100) as usize] ^= 1;
    s.0[(g.data_offset(second.data_pos) + 100) as usize] ^= 1;
    let (r, rec) = Ring::open(s).unwrap();
    assert_eq!(rec.records, 3);
    assert_eq!(rec.holes.len(), 1);
    assert_eq!(rec.holes[0].damaged, Some(second));
    assert!(rec.holes[0].why.contains("torn"), "{rec:?}");
    assert_eq!(r.read(1).unwrap().entry.kind, Kind::Void);
    assert_eq!(r.read(2).unwrap().payload, &data(2, 4096)[..]);

    // A full lap later, the slot after the head still holds last lap's entry.
    let (g, s) = small();
    let mut r = Ring::create(s, g).unwrap();
    for i in 0..20u64 {
        r.append(Kind::Trim, 0, i, 4096, &[]).unwrap();
        r.ack(i + 1).unwrap();
    }
    let (_, rec) = Ring::open(r.into_storage()).unwrap();
    assert_eq!(rec.records, 0);
    assert_eq!(rec.stopped_by, Stop::PreviousLap, "last lap's entry is the normal end");
    // An entry from any other lap, or another ring, is damage.
    let mut s = r_storage_with_foreign_entry();
    let (_, rec) = Ring::open(std::mem::replace(&mut s, MemStorage(Vec::new()))).unwrap();
    assert!(matches!(rec.stopped_by, Stop::Damaged(_)), "{rec:?}");
}

/// A ring whose first record's entry was written by another ring.
fn r_storage_with_foreign_entry() -> MemStorage {
    let (g, s) = small();
    let mut r = Ring::create(s, g).unwrap();
    r.append(Kind::Trim, 0, 0, 4096, &[]).unwrap();
    let mut s = r.into_storage();
    let foreign = Entry {
        kind: Kind::Trim,
        seq: 0,
        index_pos: 0,
        data_pos: 0,
        offset: 0,
        length: 4096,
        volume: 0,
        payload_crc: 0,
    };
    let off = g.entry_offset(0) as usize;
    s.0[off..off + 64].copy_from_slice(&foreign.encode(RING ^ 0xff));
    s
}

#[test]
fn a_damaged_superblock_falls_back_to_the_other_copy() {
    let (g, s) = small();
    let mut r = Ring::create(s, g).unwrap();
    for i in 0..4u8 {
        r.append(Kind::Write, 0, 0, 4096, &data(i, 4096)).unwrap();
    }
    r.ack(2).unwrap(); // generation 2, slot 0
    r.ack(3).unwrap(); // generation 3, slot 1
    let mut s = r.into_storage();
    s.0[SUPERBLOCK_SLOT_BYTES as usize + 50] ^= 1;
    let (r, rec) = Ring::open(s).unwrap();
    assert_eq!(r.acked_seq(), 2, "the older cursor: one record is replayed, none lost");
    assert_eq!(rec.records, 2);
    let mut s = r.into_storage();
    s.0[50] ^= 1;
    assert!(matches!(Ring::open(s), Err(RingError::NoSuperblock(..))));
    assert!(matches!(
        Ring::open(MemStorage(vec![0; 100])),
        Err(RingError::NoSuperblock(..))
    ));
}

#[test]
fn mapped_file_round_trip() {
    let path = std::env::temp_dir().join(format!("ferry-journal-{}.ring", std::process::id()));
    let g = Geometry::for_data_bytes(RING, 1 << 20);
    let mut r = Ring::create(MmapStorage::create(&path, g.file_bytes()).unwrap(), g).unwrap();
    r.append(Kind::Write, 3, 8192, 4096, &data(7, 4096)).unwrap();
    r.sync().unwrap();
    drop(r);
    let (r, rec) = Ring::open(MmapStorage::open(&path).unwrap()).unwrap();
    assert_eq!(rec.records, 1);
    assert_eq!(r.read(0).unwrap().payload, &data(7, 4096)[..]);
    std::fs::remove_file(&path).unwrap();
}

mod crash {
    use super::*;
    use crate::storage::SimStorage;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Write {
            blocks: u64,
            byte: u8,
        },
        Trim,
        Sync,
        /// Acknowledge up to a fraction (in 1/8) of what was appended since the last ack.
        Ack(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (1u64..5, any::<u8>()).prop_map(|(blocks, byte)| Op::Write { blocks, byte }),
            1 => Just(Op::Trim),
            2 => Just(Op::Sync),
            2 => (0u8..=8).prop_map(Op::Ack),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: crate::proptest_cases(3000), ..ProptestConfig::default() })]

        /// A power loss at any point, with the kernel having written back any subset of
        /// the unflushed pages, some of them torn: recovery finds the acknowledged cursor
        /// that was made durable, every record committed before the last sync, and only
        /// records whose payload is exactly what was appended, in sequence. The failing
        /// seed is part of proptest's report.
        #[test]
        fn power_loss_keeps_synced_records_and_only_true_ones(ops in prop::collection::vec(op(), 1..80), seed in any::<u64>()) {
            let g = Geometry { ring_id: RING, index_slots: 12, data_bytes: 48 * 1024 };
            let mut ring = Ring::create(SimStorage::new(g.file_bytes() as usize), g).unwrap();
            let mut payloads: Vec<Vec<u8>> = Vec::new(); // by sequence
            let (mut synced, mut acked) = (0u64, 0u64);
            for op in ops {
                match op {
                    Op::Write { blocks, byte } => {
                        let p = data(byte, (blocks * 4096 - 512) as usize);
                        if ring.append(Kind::Write, 1, blocks, p.len() as u64, &p).is_ok() {
                            payloads.push(p);
                        }
                    }
                    Op::Trim => {
                        if ring.append(Kind::Trim, 1, 0, 4096, &[]).is_ok() {
                            payloads.push(Vec::new());
                        }
                    }
                    Op::Sync => {
                        ring.sync().unwrap();
                        synced = payloads.len() as u64;
                    }
                    Op::Ack(eighths) => {
                        let to = acked + (payloads.len() as u64 - acked) * eighths as u64 / 8;
                        ring.ack(to).unwrap();
                        acked = to;
                    }
                }
            }
            let disk = ring.into_storage().crash(seed);
            let (r, rec) = Ring::open(disk).unwrap();
            prop_assert_eq!(r.acked_seq(), acked);
            prop_assert!(acked + rec.records >= synced, "synced records lost: {:?}", rec);
            let (start, end) = r.bounds();
            for (i, pos) in (start..end).enumerate() {
                let got = r.read(pos).unwrap();
                prop_assert_eq!(got.entry.seq, acked + i as u64);
                if got.entry.kind != Kind::Void {
                    prop_assert_eq!(got.payload, &payloads[got.entry.seq as usize][..]);
                }
            }
            // Only records never synced can be holes.
            for h in &rec.holes {
                prop_assert!(h.seq >= synced, "synced record {} became a hole: {:?}", h.seq, h);
            }
        }
    }
}
