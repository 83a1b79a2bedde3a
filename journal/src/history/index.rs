//! A history segment's index: written beside a segment (`SEQ.idx` beside `SEQ.seg`) once the
//! segment is closed and durable, so that a restart reads each segment's summary, not its
//! records, and a lookup reads one segment's entries on demand.
//!
//! Format v1 (integers little-endian):
//!
//! ```text
//! header, 128 bytes:
//!   0 magic u32 = "FYX1"  4 version u8 = 1  5 zero [3]  8 vpg u64  16 first_seq u64
//!  24 next_seq u64        32 segment_bytes u64          40 oldest_ms u64  48 newest_ms u64
//!  56 records u32         60 checkpoints u32            64 entries_crc u32
//!  68 summary_bytes u32 (header and checkpoints)        72 zero [52]
//! 124 crc32c u32 of bytes 0..124 and the checkpoints
//! checkpoints, back to back: seq u64, stamp u64 (the record's offset field), tag_len u16, tag
//! entries (records × 48 bytes), in sequence order, checkpoints not among them:
//!   0 seq u64  8 offset u64  16 length u64  24 data_pos u64  32 received_ms u64
//!  40 volume u32  44 kind u8  45 zero [3]
//! ```
//!
//! The summary (header and checkpoints) is checked when it is read at start; the entries
//! have a checksum of their own, checked when they are read. An index that fails either is
//! rebuilt by scanning its segment: the segment is the truth, the index a copy of it.

pub const INDEX_MAGIC: u32 = u32::from_le_bytes(*b"FYX1");
pub const INDEX_VERSION: u8 = 1;
pub const INDEX_HEADER_BYTES: usize = 128;
pub const ENTRY_BYTES: usize = 48;
/// A sanity bound on the summary (checkpoints of one segment).
pub const SUMMARY_BYTES_MAX: usize = 16 << 20;

/// A checkpoint record of the segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexCheckpoint {
    pub seq: u64,
    pub stamp: u64,
    pub tag: String,
}

/// One record of the segment (a write, a trim or a write-zeroes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    pub seq: u64,
    pub offset: u64,
    pub length: u64,
    pub data_pos: u64,
    pub received_ms: u64,
    pub volume: u32,
    pub kind: u8,
}

/// What a restart reads of a segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexSummary {
    pub vpg: u64,
    pub first_seq: u64,
    /// The sequence number after the segment's last batch.
    pub next_seq: u64,
    /// The segment's bytes the index covers (its whole batches).
    pub segment_bytes: u64,
    /// The oldest and newest `received_ms` of its entries (0 when it has none).
    pub oldest_ms: u64,
    pub newest_ms: u64,
    pub records: u32,
    pub entries_crc: u32,
    pub checkpoints: Vec<IndexCheckpoint>,
}

impl IndexSummary {
    /// Bytes of the header and the checkpoints: where the entries begin.
    pub fn summary_bytes(&self) -> usize {
        INDEX_HEADER_BYTES + self.checkpoints.iter().map(|c| 18 + c.tag.len()).sum::<usize>()
    }
}

fn u64_at(b: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"))
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"))
}

/// The index of a segment: `summary` (its `records` and `entries_crc` are set from
/// `entries`) and the entries, in sequence order.
pub fn encode(summary: &IndexSummary, entries: &[IndexEntry]) -> Vec<u8> {
    let mut out = vec![0u8; INDEX_HEADER_BYTES];
    for c in &summary.checkpoints {
        let tag = &c.tag.as_bytes()[..c.tag.len().min(u16::MAX as usize)];
        out.extend_from_slice(&c.seq.to_le_bytes());
        out.extend_from_slice(&c.stamp.to_le_bytes());
        out.extend_from_slice(&(tag.len() as u16).to_le_bytes());
        out.extend_from_slice(tag);
    }
    let summary_bytes = out.len();
    for e in entries {
        out.extend_from_slice(&e.seq.to_le_bytes());
        out.extend_from_slice(&e.offset.to_le_bytes());
        out.extend_from_slice(&e.length.to_le_bytes());
        out.extend_from_slice(&e.data_pos.to_le_bytes());
        out.extend_from_slice(&e.received_ms.to_le_bytes());
        out.extend_from_slice(&e.volume.to_le_bytes());
        out.extend_from_slice(&[e.kind, 0, 0, 0]);
    }
    let entries_crc = crc32c::crc32c(&out[summary_bytes..]);
    let h = &mut out[..INDEX_HEADER_BYTES];
    h[0..4].copy_from_slice(&INDEX_MAGIC.to_le_bytes());
    h[4] = INDEX_VERSION;
    h[8..16].copy_from_slice(&summary.vpg.to_le_bytes());
    h[16..24].copy_from_slice(&summary.first_seq.to_le_bytes());
    h[24..32].copy_from_slice(&summary.next_seq.to_le_bytes());
    h[32..40].copy_from_slice(&summary.segment_bytes.to_le_bytes());
    h[40..48].copy_from_slice(&summary.oldest_ms.to_le_bytes());
    h[48..56].copy_from_slice(&summary.newest_ms.to_le_bytes());
    h[56..60].copy_from_slice(&(entries.len() as u32).to_le_bytes());
    h[60..64].copy_from_slice(&(summary.checkpoints.len() as u32).to_le_bytes());
    h[64..68].copy_from_slice(&entries_crc.to_le_bytes());
    h[68..72].copy_from_slice(&(summary_bytes as u32).to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&out[..124]), &out[INDEX_HEADER_BYTES..summary_bytes]);
    out[124..128].copy_from_slice(&crc.to_le_bytes());
    out
}

/// How many bytes the summary takes, from the first [`INDEX_HEADER_BYTES`] (or more).
pub fn summary_len(head: &[u8]) -> Result<usize, String> {
    if head.len() < INDEX_HEADER_BYTES {
        return Err(format!("{} bytes, shorter than an index header", head.len()));
    }
    if head[0..4] != INDEX_MAGIC.to_le_bytes() {
        return Err("not a ferry history index (bad magic)".into());
    }
    if head[4] != INDEX_VERSION {
        return Err(format!("index format version {}; this ferry reads version 1", head[4]));
    }
    let n = u32_at(head, 68) as usize;
    if !(INDEX_HEADER_BYTES..=SUMMARY_BYTES_MAX).contains(&n) {
        return Err(format!("index summary of {n} bytes is out of bounds"));
    }
    Ok(n)
}

/// Reads the summary back from the first [`summary_len`] bytes (or more).
pub fn decode_summary(b: &[u8]) -> Result<IndexSummary, String> {
    let n = summary_len(b)?;
    if b.len() < n {
        return Err(format!("{} bytes, shorter than the index summary ({n})", b.len()));
    }
    let crc = crc32c::crc32c_append(crc32c::crc32c(&b[..124]), &b[INDEX_HEADER_BYTES..n]);
    if crc != u32_at(b, 124) {
        return Err("index summary checksum mismatch".into());
    }
    let count = u32_at(b, 60) as usize;
    let mut checkpoints = Vec::with_capacity(count.min(n / 18));
    let mut pos = INDEX_HEADER_BYTES;
    for _ in 0..count {
        if pos + 18 > n {
            return Err("index checkpoints run past the summary".into());
        }
        let len = u16::from_le_bytes([b[pos + 16], b[pos + 17]]) as usize;
        if pos + 18 + len > n {
            return Err("an index checkpoint's tag runs past the summary".into());
        }
        checkpoints.push(IndexCheckpoint {
            seq: u64_at(b, pos),
            stamp: u64_at(b, pos + 8),
            tag: String::from_utf8_lossy(&b[pos + 18..pos + 18 + len]).into_owned(),
        });
        pos += 18 + len;
    }
    if pos != n {
        return Err("index summary holds stray bytes".into());
    }
    let s = IndexSummary {
        vpg: u64_at(b, 8),
        first_seq: u64_at(b, 16),
        next_seq: u64_at(b, 24),
        segment_bytes: u64_at(b, 32),
        oldest_ms: u64_at(b, 40),
        newest_ms: u64_at(b, 48),
        records: u32_at(b, 56),
        entries_crc: u32_at(b, 64),
        checkpoints,
    };
    if s.next_seq < s.first_seq {
        return Err(format!(
            "index ends (seq {}) before it begins ({})",
            s.next_seq, s.first_seq
        ));
    }
    Ok(s)
}

/// Reads the entries back: `b` is what follows the summary.
pub fn decode_entries(s: &IndexSummary, b: &[u8]) -> Result<Vec<IndexEntry>, String> {
    let want = s.records as usize * ENTRY_BYTES;
    if b.len() != want {
        return Err(format!("index entries are {} bytes, expected {want}", b.len()));
    }
    if crc32c::crc32c(b) != s.entries_crc {
        return Err("index entries checksum mismatch".into());
    }
    let mut out = Vec::with_capacity(s.records as usize);
    let mut last = None;
    for e in b.chunks_exact(ENTRY_BYTES) {
        let x = IndexEntry {
            seq: u64_at(e, 0),
            offset: u64_at(e, 8),
            length: u64_at(e, 16),
            data_pos: u64_at(e, 24),
            received_ms: u64_at(e, 32),
            volume: u32_at(e, 40),
            kind: e[44],
        };
        let in_place = x.seq >= s.first_seq
            && x.seq < s.next_seq
            && last.is_none_or(|l| x.seq > l)
            && (1..=3).contains(&x.kind)
            && x.offset.checked_add(x.length).is_some();
        if !in_place {
            return Err(format!("index entry of seq {} is out of place", x.seq));
        }
        last = Some(x.seq);
        out.push(x);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (IndexSummary, Vec<IndexEntry>) {
        let e = |seq: u64, kind: u8| IndexEntry {
            seq,
            offset: seq * 4096,
            length: 4096,
            data_pos: 64 + seq * 100,
            received_ms: 1000 + seq,
            volume: 1,
            kind,
        };
        (
            IndexSummary {
                vpg: 7,
                first_seq: 10,
                next_seq: 20,
                segment_bytes: 4096,
                oldest_ms: 1010,
                newest_ms: 1015,
                records: 0,
                entries_crc: 0,
                checkpoints: vec![IndexCheckpoint {
                    seq: 13,
                    stamp: 5_000_000,
                    tag: "before upgrade".into(),
                }],
            },
            vec![e(10, 1), e(11, 2), e(15, 3)],
        )
    }

    #[test]
    fn an_index_reads_back_and_damage_is_found() {
        let (s, entries) = sample();
        let b = encode(&s, &entries);
        let n = summary_len(&b).unwrap();
        assert_eq!(n, s.summary_bytes());
        let got = decode_summary(&b[..n]).unwrap();
        assert_eq!(got.records, 3);
        assert_eq!(got.checkpoints, s.checkpoints);
        assert_eq!((got.first_seq, got.next_seq, got.oldest_ms), (10, 20, 1010));
        assert_eq!(decode_entries(&got, &b[n..]).unwrap(), entries);
        // A flipped bit in the summary, or in an entry.
        let mut bad = b.clone();
        bad[130] ^= 1;
        assert!(decode_summary(&bad).unwrap_err().contains("checksum"));
        let mut bad = b.clone();
        bad[n + 3] ^= 1;
        assert!(decode_entries(&got, &bad[n..]).unwrap_err().contains("checksum"));
        assert!(decode_entries(&got, &b[n..b.len() - 1]).is_err());
        assert!(summary_len(&b[..100]).is_err());
    }
}
