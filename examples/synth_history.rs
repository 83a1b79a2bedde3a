//! Appends a synthetic history to a recovery site's replica, for `scripts/bench-history.sh`:
//! segments of `SEGMENT` bytes holding write records of `RECORD` bytes at random offsets of
//! volume 1, batches of 64 records each closed by its end mark, a checkpoint every
//! `CHECKPOINT` records, and each segment's index beside it. The records' data are holes
//! (zeros, with checksums that match), so a 100 GiB history costs little disk: one block
//! per record header.
//!
//!   cargo run --release --example synth_history -- HISTORY_DIR VPG_ID VOLUME_BYTES BYTES \
//!       [RECORD=65536] [SEGMENT=67108864] [CHECKPOINT=4096]
//!
//! It continues after the segments already in HISTORY_DIR (their next sequence number).

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use ferry_journal::history::index::{self, IndexCheckpoint, IndexEntry, IndexSummary};
use ferry_journal::history::{self, HistRecord, KIND_END, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES, SegmentHeader};

fn arg(args: &[String], i: usize, default: Option<u64>) -> u64 {
    match args.get(i) {
        Some(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("argument {i}: {v:?} is not a number")),
        None => default.unwrap_or_else(|| panic!("usage: see the example's docs")),
    }
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = PathBuf::from(args.first().expect("HISTORY_DIR"));
    let vpg = arg(&args, 1, None);
    let volume_bytes = arg(&args, 2, None);
    let total = arg(&args, 3, None);
    let record = arg(&args, 4, Some(65536));
    let segment = arg(&args, 5, Some(64 << 20));
    let checkpoint_every = arg(&args, 6, Some(4096));
    // Where the existing history ends.
    let mut next_seq = 0;
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    names.retain(|p| p.extension().is_some_and(|x| x == "seg"));
    names.sort();
    if let Some(last) = names.last() {
        let s = history::scan(&std::fs::read(last)?).map_err(std::io::Error::other)?;
        next_seq = s.next_seq;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64;
    let zeros = vec![0u8; record as usize];
    let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ next_seq;
    let mut written = 0u64;
    let (mut records, mut segments) = (0u64, 0u64);
    while written < total {
        let first_seq = next_seq;
        let path = dir.join(format!("{first_seq:020}.seg"));
        let f = OpenOptions::new().write(true).create_new(true).open(&path)?;
        f.write_all_at(
            &SegmentHeader {
                vpg,
                first_seq,
                created_ms: now,
            }
            .encode(),
            0,
        )?;
        let mut pos = SEGMENT_HEADER_BYTES as u64;
        let (mut entries, mut checkpoints) = (Vec::new(), Vec::new());
        while pos < segment && written < total {
            for _ in 0..64 {
                let seq = next_seq;
                next_seq += 1;
                if seq % checkpoint_every == checkpoint_every - 1 {
                    let tag = format!("synthetic {seq}");
                    let stamp = now * 1_000_000;
                    let r = HistRecord {
                        kind: 4,
                        seq,
                        offset: stamp,
                        length: 0,
                        volume: 0,
                        data_bytes: tag.len() as u32,
                        received_ms: now,
                    };
                    f.write_all_at(&r.header(tag.as_bytes()), pos)?;
                    f.write_all_at(tag.as_bytes(), pos + RECORD_HEADER_BYTES as u64)?;
                    pos += (RECORD_HEADER_BYTES + tag.len()) as u64;
                    checkpoints.push(IndexCheckpoint { seq, stamp, tag });
                    continue;
                }
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let offset = rng % (volume_bytes / record) * record;
                let r = HistRecord {
                    kind: 1,
                    seq,
                    offset,
                    length: record,
                    volume: 1,
                    data_bytes: record as u32,
                    received_ms: now,
                };
                f.write_all_at(&r.header(&zeros), pos)?;
                entries.push(IndexEntry {
                    seq,
                    offset,
                    length: record,
                    data_pos: pos + RECORD_HEADER_BYTES as u64,
                    received_ms: now,
                    volume: 1,
                    kind: 1,
                });
                pos += RECORD_HEADER_BYTES as u64 + record;
                written += record;
                records += 1;
            }
            let end = HistRecord {
                kind: KIND_END,
                seq: next_seq,
                offset: 0,
                length: 0,
                volume: 0,
                data_bytes: 0,
                received_ms: now,
            };
            f.write_all_at(&end.header(&[]), pos)?;
            pos += RECORD_HEADER_BYTES as u64;
        }
        f.set_len(pos)?;
        let summary = IndexSummary {
            vpg,
            first_seq,
            next_seq,
            segment_bytes: pos,
            oldest_ms: now,
            newest_ms: now,
            records: 0,
            entries_crc: 0,
            checkpoints,
        };
        std::fs::write(path.with_extension("idx"), index::encode(&summary, &entries))?;
        segments += 1;
    }
    println!("{segments} segments, {records} records, {written} bytes of data, seq {next_seq}");
    Ok(())
}
