//! `ferry journal dump|check PATH`: read a journal ring file without an agent, in the manner
//! of raft-engine's ctl. `dump` prints the superblocks, cursors and every unacknowledged
//! record; `check` verifies every checksum and the cursors and fails on damage.

use std::fmt::Write as _;
use std::path::Path;

use ferry_journal::format::Kind;
use ferry_journal::{MemStorage, Ring, Stop, superblock_slots};

use ferry_agent::size::human;
use serde_json::json;

/// Outcome of reading a ring file: the report, and whether it is in good order.
#[derive(Debug)]
pub struct Report {
    pub text: String,
    pub clean: bool,
    /// The same, for `--json`.
    pub json: serde_json::Value,
}

/// Reads `path` and describes it; `records` lists each unacknowledged record.
pub fn inspect(path: &Path, records: bool) -> Result<Report, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut out = String::new();
    let slots = superblock_slots(&bytes);
    let mut clean = true;
    let mut j_slots = Vec::new();
    for (i, s) in slots.iter().enumerate() {
        j_slots.push(match s {
            Ok(sb) => json!({"slot": i, "generation": sb.generation, "acked_seq": sb.acked_seq,
                "acked_index": sb.acked_index, "acked_data": sb.acked_data}),
            Err(e) => json!({"slot": i, "damaged": e.to_string()}),
        });
        match s {
            Ok(sb) => writeln!(
                out,
                "superblock slot {i}: generation {}, acked seq {} (index {}, data {})",
                sb.generation, sb.acked_seq, sb.acked_index, sb.acked_data
            ),
            Err(e) => {
                clean = false;
                writeln!(out, "superblock slot {i}: DAMAGED: {e}")
            }
        }
        .expect("write to string");
    }
    let (ring, recovery) = Ring::open_with(MemStorage(bytes), false).map_err(|e| format!("{}: {e}", path.display()))?;
    let sb = ring.superblock();
    let g = sb.geometry;
    writeln!(
        out,
        "journal {}: format v1, ring id {:#018x}, {} index slots, {} data; in force: generation {}",
        path.display(),
        g.ring_id,
        g.index_slots,
        human(g.data_bytes),
        sb.generation
    )
    .expect("write to string");
    let (start, end) = ring.bounds();
    writeln!(
        out,
        "unacknowledged records: {} (sequence {}..{})",
        recovery.records,
        sb.acked_seq,
        sb.acked_seq + recovery.records
    )
    .expect("write to string");
    let mut j_holes = Vec::new();
    for h in &recovery.holes {
        j_holes.push(json!({"seq": h.seq, "index": h.index_pos, "why": h.why.to_string(),
            "damaged": h.damaged.as_ref().map(|e| json!({"kind": e.kind.name(), "volume": e.volume,
                "offset": e.offset, "length": e.length}))}));
        let what = match &h.damaged {
            Some(e) => {
                clean = false;
                format!(
                    "DAMAGED record ({} volume {} offset {} length {}): {}; the agent voids it and marks its range dirty",
                    e.kind.name(),
                    e.volume,
                    e.offset,
                    e.length,
                    h.why
                )
            }
            None => format!(
                "hole ({}): a reservation never committed, as a crash leaves it; the agent turns it into a void record",
                h.why
            ),
        };
        writeln!(out, "seq {} at index {}: {what}", h.seq, h.index_pos).expect("write to string");
    }
    let mut j_records = Vec::new();
    if records {
        for pos in start..end {
            j_records.push(match ring.read(pos) {
                None => json!({"seq": sb.acked_seq + (pos - start), "hole": true}),
                Some(r) if r.entry.kind == Kind::Checkpoint => json!({"seq": r.entry.seq, "kind": "checkpoint",
                    "tag": String::from_utf8_lossy(r.payload), "time_ns": r.entry.offset}),
                Some(r) => json!({"seq": r.entry.seq, "kind": r.entry.kind.name(), "volume": r.entry.volume,
                    "offset": r.entry.offset, "length": r.entry.length, "data": r.entry.data_pos}),
            });
            let Some(r) = ring.read(pos) else {
                writeln!(out, "  seq {:>10}  (hole)", sb.acked_seq + (pos - start)).expect("write to string");
                continue;
            };
            let e = r.entry;
            match e.kind {
                Kind::Checkpoint => writeln!(
                    out,
                    "  seq {:>10}  checkpoint    tag {:?}  time_ns {}",
                    e.seq,
                    String::from_utf8_lossy(r.payload),
                    e.offset
                ),
                k => writeln!(
                    out,
                    "  seq {:>10}  {:<12}  volume {}  offset {}  length {}  data {}",
                    e.seq,
                    k.name(),
                    e.volume,
                    e.offset,
                    e.length,
                    e.data_pos
                ),
            }
            .expect("write to string");
        }
    }
    let end_json = match &recovery.stopped_by {
        Stop::Empty => json!({"end": "empty"}),
        Stop::IndexFull => json!({"end": "index_full"}),
        Stop::PreviousLap => json!({"end": "previous_lap"}),
        Stop::Damaged(why) => json!({"end": "damaged", "why": why.to_string()}),
    };
    match &recovery.stopped_by {
        Stop::Empty => writeln!(out, "end: next slot never written"),
        Stop::IndexFull => writeln!(out, "end: every index slot holds an unacknowledged record"),
        Stop::PreviousLap => writeln!(out, "end: next slot holds the previous lap's record"),
        Stop::Damaged(why) => {
            clean = false;
            writeln!(
                out,
                "DAMAGED after sequence {}: {why}. The {} records before it are intact; recovery drops the rest",
                sb.acked_seq + recovery.records,
                recovery.records
            )
        }
    }
    .expect("write to string");
    let json = json!({
        "path": path.display().to_string(),
        "clean": clean,
        "superblocks": j_slots,
        "ring_id": format!("{:#018x}", g.ring_id),
        "index_slots": g.index_slots,
        "data_bytes": g.data_bytes,
        "generation": sb.generation,
        "acked_seq": sb.acked_seq,
        "unacknowledged_records": recovery.records,
        "holes": j_holes,
        "records": j_records,
        "stopped": end_json,
    });
    Ok(Report { text: out, clean, json })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_journal::Geometry;

    #[test]
    fn dump_lists_records_and_check_finds_damage() {
        let dir = std::env::temp_dir().join(format!("ferry-jtool-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vpg.ring");
        let g = Geometry {
            ring_id: 5,
            index_slots: 8,
            data_bytes: 32768,
        };
        let mut r = Ring::create(MemStorage(vec![0; g.file_bytes() as usize]), g).unwrap();
        r.append(Kind::Write, 2, 4096, 4096, &[7; 4096]).unwrap();
        r.append(Kind::Checkpoint, 0, 99, 7, b"nightly").unwrap();
        let mut bytes = r.into_storage().0;
        std::fs::write(&path, &bytes).unwrap();
        let rep = inspect(&path, true).unwrap();
        assert!(rep.clean, "{}", rep.text);
        assert!(rep.text.contains("unacknowledged records: 2"), "{}", rep.text);
        assert!(
            rep.text.contains("write         volume 2  offset 4096  length 4096"),
            "{}",
            rep.text
        );
        assert!(rep.text.contains("tag \"nightly\""), "{}", rep.text);

        let data = g.data_offset(0) as usize;
        bytes[data + 10] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let rep = inspect(&path, false).unwrap();
        assert!(
            !rep.clean
                && rep
                    .text
                    .contains("seq 0 at index 0: DAMAGED record (write volume 2 offset 4096"),
            "{}",
            rep.text
        );
        bytes[data + 10] ^= 1;
        bytes[data + 4096 + 2] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let rep = inspect(&path, false).unwrap();
        assert!(
            !rep.clean && rep.text.contains("DAMAGED after sequence 1"),
            "{}",
            rep.text
        );
        bytes[data + 4096 + 2] ^= 1;

        bytes[20] ^= 1;
        bytes[4096 + 20] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let err = inspect(&path, false).unwrap_err();
        assert!(err.contains("no valid superblock"), "{err}");
        std::fs::write(&path, b"not a journal").unwrap();
        assert!(inspect(&path, false).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
