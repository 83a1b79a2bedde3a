//! History segments: how the recovery site keeps the records it received, durably, before
//! it acknowledges them. A VPG's history is a run of segment files named by their first
//! sequence number; each holds whole batches, each batch closed by an end mark.
//!
//! Format v1 (integers little-endian):
//!
//! ```text
//! segment header, 64 bytes:
//!   0 magic u32 = "FYS1"   4 version u8 = 1   5 zero [3]   8 vpg u64   16 first_seq u64
//!  24 created_ms u64      32 zero [28]       60 crc32c u32 of bytes 0..60
//! then records, back to back:
//!   0 crc32c u32 of bytes 4..48 and the data     4 kind u8    5 zero [3]
//!   8 seq u64   16 offset u64   24 length u64   32 volume u32   36 data_bytes u32
//!  40 received_ms u64                           48 data (data_bytes)
//! ```
//!
//! Kinds 1–4 are those of the wire's records (write, trim, write-zeroes, checkpoint); kind 6 is a batch's end mark: its `seq` is the sequence number after the
//! batch (the range may end in voids that carry no record), and it has no data.
//!
//! [`scan`] reads a segment back: the records of every batch up to the last end mark that
//! checks; what follows (a batch torn by a crash, or damage) is cut off, and the scan says
//! where and why. A batch is acknowledged only after its end mark is durable, so a torn
//! tail never held acknowledged records.

pub mod index;

pub const SEGMENT_MAGIC: u32 = u32::from_le_bytes(*b"FYS1");
pub const SEGMENT_VERSION: u8 = 1;
pub const SEGMENT_HEADER_BYTES: usize = 64;
pub const RECORD_HEADER_BYTES: usize = 48;
/// Kind of a batch's end mark.
pub const KIND_END: u8 = 6;
/// Largest data one record may carry (a sanity bound for the scan).
pub const DATA_BYTES_MAX: u32 = 64 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    pub vpg: u64,
    pub first_seq: u64,
    pub created_ms: u64,
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_BYTES] {
        let mut h = [0u8; SEGMENT_HEADER_BYTES];
        h[0..4].copy_from_slice(&SEGMENT_MAGIC.to_le_bytes());
        h[4] = SEGMENT_VERSION;
        h[8..16].copy_from_slice(&self.vpg.to_le_bytes());
        h[16..24].copy_from_slice(&self.first_seq.to_le_bytes());
        h[24..32].copy_from_slice(&self.created_ms.to_le_bytes());
        let crc = crc32c::crc32c(&h[..60]);
        h[60..64].copy_from_slice(&crc.to_le_bytes());
        h
    }

    pub fn decode(b: &[u8]) -> Result<SegmentHeader, String> {
        if b.len() < SEGMENT_HEADER_BYTES {
            return Err(format!("{} bytes, shorter than a segment header", b.len()));
        }
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        if b[0..4] != SEGMENT_MAGIC.to_le_bytes() {
            return Err("not a ferry history segment (bad magic)".into());
        }
        if b[4] != SEGMENT_VERSION {
            return Err(format!("segment format version {}; this ferry reads version 1", b[4]));
        }
        if crc32c::crc32c(&b[..60]).to_le_bytes() != b[60..64] {
            return Err("segment header checksum mismatch".into());
        }
        Ok(SegmentHeader {
            vpg: u64_at(8),
            first_seq: u64_at(16),
            created_ms: u64_at(24),
        })
    }
}

/// One record's header fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistRecord {
    pub kind: u8,
    pub seq: u64,
    pub offset: u64,
    pub length: u64,
    pub volume: u32,
    pub data_bytes: u32,
    pub received_ms: u64,
}

impl HistRecord {
    /// Appends the record with its data to `out`.
    pub fn push(&self, data: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(&self.header(data));
        out.extend_from_slice(data);
    }

    /// The record's header, checksum included, for `data` to follow it.
    pub fn header(&self, data: &[u8]) -> [u8; RECORD_HEADER_BYTES] {
        debug_assert_eq!(data.len(), self.data_bytes as usize);
        let mut h = [0u8; RECORD_HEADER_BYTES];
        h[4] = self.kind;
        h[8..16].copy_from_slice(&self.seq.to_le_bytes());
        h[16..24].copy_from_slice(&self.offset.to_le_bytes());
        h[24..32].copy_from_slice(&self.length.to_le_bytes());
        h[32..36].copy_from_slice(&self.volume.to_le_bytes());
        h[36..40].copy_from_slice(&self.data_bytes.to_le_bytes());
        h[40..48].copy_from_slice(&self.received_ms.to_le_bytes());
        let crc = crc32c::crc32c_append(crc32c::crc32c(&h[4..]), data);
        h[0..4].copy_from_slice(&crc.to_le_bytes());
        h
    }
}

/// A record found by [`scan`], and where its data starts in the segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Found {
    pub record: HistRecord,
    pub data_pos: u64,
}

/// What [`scan`] found in a segment.
#[derive(Debug, PartialEq, Eq)]
pub struct Scan {
    pub header: SegmentHeader,
    /// Records of the whole batches (end marks not included), in order.
    pub records: Vec<Found>,
    /// The sequence number after the last whole batch (the header's first_seq if none).
    pub next_seq: u64,
    /// Bytes of the segment that hold whole batches: the rest is to be cut off.
    pub valid_bytes: u64,
    /// Why the scan stopped before the end of the bytes, if it did.
    pub cut: Option<String>,
}

/// Reads a segment's bytes back (see the module docs). Errors only on a bad header.
pub fn scan(bytes: &[u8]) -> Result<Scan, String> {
    let header = SegmentHeader::decode(bytes)?;
    let mut records = Vec::new();
    let mut pending = Vec::new();
    let mut pos = SEGMENT_HEADER_BYTES;
    let mut valid = pos;
    let mut next_seq = header.first_seq;
    let mut last_seq: Option<u64> = None;
    let cut = loop {
        let rest = &bytes[pos..];
        if rest.is_empty() {
            break (!pending.is_empty()).then(|| "a batch without its end mark (torn by a crash)".to_string());
        }
        if rest.len() < RECORD_HEADER_BYTES {
            break Some(format!("{} stray bytes at {pos}", rest.len()));
        }
        let u64_at = |i: usize| u64::from_le_bytes(rest[i..i + 8].try_into().expect("8 bytes"));
        let u32_at = |i: usize| u32::from_le_bytes(rest[i..i + 4].try_into().expect("4 bytes"));
        let data_bytes = u32_at(36);
        if data_bytes > DATA_BYTES_MAX || rest.len() < RECORD_HEADER_BYTES + data_bytes as usize {
            break Some(format!("record at {pos} runs past the end of the segment"));
        }
        let end = RECORD_HEADER_BYTES + data_bytes as usize;
        if crc32c::crc32c(&rest[4..end]) != u32_at(0) {
            break Some(format!("record at {pos} fails its checksum (torn or damaged)"));
        }
        let r = HistRecord {
            kind: rest[4],
            seq: u64_at(8),
            offset: u64_at(16),
            length: u64_at(24),
            volume: u32_at(32),
            data_bytes,
            received_ms: u64_at(40),
        };
        let in_order = r.seq >= next_seq && last_seq.is_none_or(|l| r.seq > l);
        if !in_order || !((1..=4).contains(&r.kind) || r.kind == KIND_END) {
            break Some(format!(
                "record at {pos} (kind {}, seq {}) is out of place",
                r.kind, r.seq
            ));
        }
        pos += end;
        if r.kind == KIND_END {
            records.append(&mut pending);
            next_seq = r.seq;
            last_seq = Some(r.seq - 1);
            valid = pos;
        } else {
            last_seq = Some(r.seq);
            pending.push(Found {
                record: r,
                data_pos: (pos - data_bytes as usize) as u64,
            });
        }
    };
    Ok(Scan {
        header,
        records,
        next_seq,
        valid_bytes: valid as u64,
        cut,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(kind: u8, seq: u64, data: &[u8]) -> (HistRecord, Vec<u8>) {
        (
            HistRecord {
                kind,
                seq,
                offset: 4096 * seq,
                length: if kind == KIND_END { 0 } else { data.len().max(1) as u64 },
                volume: u32::from(kind != KIND_END),
                data_bytes: data.len() as u32,
                received_ms: 1000 + seq,
            },
            data.to_vec(),
        )
    }

    fn segment(recs: &[(HistRecord, Vec<u8>)]) -> Vec<u8> {
        let mut b = SegmentHeader {
            vpg: 9,
            first_seq: 5,
            created_ms: 77,
        }
        .encode()
        .to_vec();
        for (r, d) in recs {
            r.push(d, &mut b);
        }
        b
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// Format v1, byte for byte: a header and one record (the expected bytes, checksums
    /// included, were made with Python's `struct.pack` and a bitwise CRC-32C).
    #[test]
    fn golden_segment_v1() {
        let b = segment(&[rec(1, 5, b"ab")]);
        assert_eq!(
            hex(&b[..32]),
            "4659533101000000090000000000000005000000000000004d00000000000000"
        );
        assert_eq!(hex(&b[60..64]), GOLDEN_HEADER_CRC);
        assert_eq!(
            hex(&b[64..]),
            "4377406301000000050000000000000000500000000000000200000000000000\
             0100000002000000ed030000000000006162"
        );
    }

    const GOLDEN_HEADER_CRC: &str = "bce98f48";

    #[test]
    fn whole_batches_are_kept_and_a_torn_tail_is_cut() {
        let mut recs = vec![rec(1, 5, b"abc"), rec(4, 6, b"tag"), rec(KIND_END, 8, b"")];
        let whole = segment(&recs);
        recs.push(rec(1, 8, b"zz"));
        let torn = segment(&recs);
        for (bytes, cut) in [(&whole, false), (&torn, true)] {
            let s = scan(bytes).unwrap();
            assert_eq!(s.records.len(), 2);
            assert_eq!(s.next_seq, 8);
            assert_eq!(s.valid_bytes, whole.len() as u64);
            assert_eq!(s.cut.is_some(), cut);
            assert_eq!(&bytes[s.records[0].data_pos as usize..][..3], b"abc");
        }
        // A flipped data byte: the batch it is in is cut.
        let mut bad = whole.clone();
        bad[64 + 48] ^= 1;
        let s = scan(&bad).unwrap();
        assert_eq!((s.records.len(), s.next_seq, s.valid_bytes), (0, 5, 64));
        assert!(s.cut.unwrap().contains("checksum"));
        // Out of order.
        let s = scan(&segment(&[rec(1, 7, b"a"), rec(1, 6, b"b")])).unwrap();
        assert!(s.cut.unwrap().contains("out of place"));
        assert!(scan(&whole[..63]).is_err());
        assert!(scan(b"not a segment at all, but long enough to hold a header: 64 bytes...").is_err());
    }
}
