//! The plaintext of a batch frame: a VPG's journal records, back to back, optionally
//! zstd-compressed as a whole before sealing. Format v1 (integers little-endian):
//!
//! ```text
//!  0 seq u64     8 offset u64    16 length u64    24 volume u32    28 data_bytes u32
//! 32 kind u8    33 zero [7]      40 data (data_bytes)              then the next record
//! ```
//!
//! | kind | offset | length | data |
//! |---|---|---|---|
//! | 1 write | byte offset in the volume | bytes written | the bytes (`length` of them) |
//! | 2 trim, 3 write-zeroes | byte offset | bytes | none |
//! | 4 checkpoint | its time, ns since the epoch | 0 | its tag (UTF-8, up to 256 bytes; empty: automatic) |
//!
//! Records are in sequence order, each inside the frame's range; voids of the journal are
//! not carried (the range still covers them). [`decode`] checks all of it and borrows the
//! data, so a frame is applied only when every record in it is well formed.

use crate::batch::BODY_BYTES_MAX;

pub const RECORD_HEADER_BYTES: usize = 40;
/// Longest checkpoint tag.
pub const TAG_BYTES_MAX: usize = 256;
/// Largest plaintext a compressed body may expand to.
pub const PLAIN_BYTES_MAX: usize = BODY_BYTES_MAX as usize;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    Write = 1,
    Trim = 2,
    WriteZeroes = 3,
    Checkpoint = 4,
}

impl RecordKind {
    pub fn from_u8(v: u8) -> Option<RecordKind> {
        Some(match v {
            1 => RecordKind::Write,
            2 => RecordKind::Trim,
            3 => RecordKind::WriteZeroes,
            4 => RecordKind::Checkpoint,
            _ => return None,
        })
    }
}

/// One record, its data borrowed from the plaintext (or from the journal, to encode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordRef<'a> {
    pub seq: u64,
    pub kind: RecordKind,
    pub volume: u32,
    pub offset: u64,
    pub length: u64,
    pub data: &'a [u8],
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("record {index} is cut off: {need} bytes needed, {have} left")]
    Truncated { index: usize, need: usize, have: usize },
    #[error("record {index} has unknown kind {kind}")]
    Kind { index: usize, kind: u8 },
    #[error("record {index} has reserved bytes set")]
    Reserved { index: usize },
    #[error("record {index} (seq {seq}) is outside the frame's range or out of order")]
    Order { index: usize, seq: u64 },
    #[error("record {index}: {why}")]
    Shape { index: usize, why: &'static str },
    #[error("compressed body: {0}")]
    Compression(String),
}

/// Appends `r` to a plaintext being built.
pub fn push(out: &mut Vec<u8>, r: &RecordRef<'_>) {
    let mut h = [0u8; RECORD_HEADER_BYTES];
    h[0..8].copy_from_slice(&r.seq.to_le_bytes());
    h[8..16].copy_from_slice(&r.offset.to_le_bytes());
    h[16..24].copy_from_slice(&r.length.to_le_bytes());
    h[24..28].copy_from_slice(&r.volume.to_le_bytes());
    h[28..32].copy_from_slice(&(r.data.len() as u32).to_le_bytes());
    h[32] = r.kind as u8;
    out.extend_from_slice(&h);
    out.extend_from_slice(r.data);
}

/// Bytes `r` takes in a plaintext.
pub fn encoded_bytes(r: &RecordRef<'_>) -> usize {
    RECORD_HEADER_BYTES + r.data.len()
}

/// The records of a plaintext whose frame covers `first_seq .. first_seq + count`.
pub fn decode(plain: &[u8], first_seq: u64, count: u32) -> Result<Vec<RecordRef<'_>>, RecordError> {
    let end_seq = first_seq.saturating_add(u64::from(count));
    let mut out = Vec::new();
    let mut rest = plain;
    let mut next_seq = first_seq;
    while !rest.is_empty() {
        let index = out.len();
        if rest.len() < RECORD_HEADER_BYTES {
            return Err(RecordError::Truncated {
                index,
                need: RECORD_HEADER_BYTES,
                have: rest.len(),
            });
        }
        let u64_at = |i: usize| u64::from_le_bytes(rest[i..i + 8].try_into().expect("8 bytes"));
        let u32_at = |i: usize| u32::from_le_bytes(rest[i..i + 4].try_into().expect("4 bytes"));
        let seq = u64_at(0);
        let (offset, length, volume) = (u64_at(8), u64_at(16), u32_at(24));
        let data_bytes = u32_at(28) as usize;
        let kind = RecordKind::from_u8(rest[32]).ok_or(RecordError::Kind { index, kind: rest[32] })?;
        if rest[33..RECORD_HEADER_BYTES].iter().any(|&b| b != 0) {
            return Err(RecordError::Reserved { index });
        }
        if seq < next_seq || seq >= end_seq {
            return Err(RecordError::Order { index, seq });
        }
        let need = RECORD_HEADER_BYTES + data_bytes;
        if rest.len() < need {
            return Err(RecordError::Truncated {
                index,
                need,
                have: rest.len(),
            });
        }
        let shape = |why| Err(RecordError::Shape { index, why });
        match kind {
            RecordKind::Write if data_bytes as u64 != length => return shape("a write's data is not its length"),
            RecordKind::Write if length == 0 => return shape("an empty write"),
            RecordKind::Trim | RecordKind::WriteZeroes if data_bytes != 0 => return shape("a trim carries data"),
            RecordKind::Trim | RecordKind::WriteZeroes if length == 0 => return shape("an empty range"),
            RecordKind::Checkpoint if data_bytes > TAG_BYTES_MAX || length != 0 || volume != 0 => {
                return shape("a checkpoint's tag is too long, or it names a range");
            }
            RecordKind::Checkpoint if std::str::from_utf8(&rest[RECORD_HEADER_BYTES..need]).is_err() => {
                return shape("a checkpoint's tag is not UTF-8");
            }
            RecordKind::Write | RecordKind::Trim | RecordKind::WriteZeroes if volume == 0 => {
                return shape("volume 0 does not exist");
            }
            RecordKind::Write | RecordKind::Trim | RecordKind::WriteZeroes if offset.checked_add(length).is_none() => {
                return shape("the range passes the end of the address space");
            }
            _ => {}
        }
        out.push(RecordRef {
            seq,
            kind,
            volume,
            offset,
            length,
            data: &rest[RECORD_HEADER_BYTES..need],
        });
        next_seq = seq + 1;
        rest = &rest[need..];
    }
    Ok(out)
}

/// zstd at `level` (1..=19; higher is smaller and slower).
pub fn compress(plain: &[u8], level: i32) -> Vec<u8> {
    // One compression context per thread and level, kept: making one per batch cost the
    // protected agent's shipper about as much as compressing a small batch.
    thread_local! {
        static CCTX: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
            const { std::cell::RefCell::new(None) };
    }
    CCTX.with(|c| {
        let mut c = c.borrow_mut();
        if c.as_ref().is_none_or(|(l, _)| *l != level) {
            let made = zstd::bulk::Compressor::new(level).expect("zstd makes a compression context");
            *c = Some((level, made));
        }
        let (_, cctx) = c.as_mut().expect("made above");
        cctx.compress(plain)
            .expect("zstd compresses any input into a growing buffer")
    })
}

/// The plaintext of a compressed body: one zstd frame that states its size (as
/// [`compress`] writes it), refused past [`PLAIN_BYTES_MAX`]; exactly that much is
/// allocated.
pub fn decompress(body: &[u8]) -> Result<Vec<u8>, RecordError> {
    let bad = |why: String| RecordError::Compression(why);
    let size = match zstd::zstd_safe::get_frame_content_size(body) {
        Ok(Some(n)) if n <= PLAIN_BYTES_MAX as u64 => n as usize,
        Ok(Some(n)) => return Err(bad(format!("it states {n} bytes, more than {PLAIN_BYTES_MAX}"))),
        Ok(None) => return Err(bad("it does not state its size".into())),
        Err(_) => return Err(bad("not a zstd frame".into())),
    };
    // One decompression context per thread, kept (as for compression).
    thread_local! {
        static DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    let plain = DCTX.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = Some(zstd::bulk::Decompressor::new().map_err(|e| bad(e.to_string()))?);
        }
        d.as_mut()
            .expect("made above")
            .decompress(body, size)
            .map_err(|e| bad(e.to_string()))
    })?;
    if plain.len() != size {
        return Err(bad(format!("{} bytes where it stated {size}", plain.len())));
    }
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    fn sample() -> Vec<u8> {
        let mut p = Vec::new();
        let data = [0xab; 8];
        for r in [
            RecordRef {
                seq: 10,
                kind: RecordKind::Write,
                volume: 1,
                offset: 4096,
                length: 8,
                data: &data,
            },
            RecordRef {
                seq: 12,
                kind: RecordKind::Checkpoint,
                volume: 0,
                offset: 1_700_000_000_000_000_000,
                length: 0,
                data: b"tag",
            },
        ] {
            push(&mut p, &r);
        }
        p
    }

    /// Format v1, byte for byte (the expected bytes were made with Python's `struct.pack`,
    /// format `<QQQIIB7x`).
    #[test]
    fn golden_records_v1() {
        let p = sample();
        assert_eq!(
            hex(&p),
            "0a000000000000000010000000000000080000000000000001000000080000000100000000000000abababababababab\
             0c0000000000000000002a36fe9c9717000000000000000000000000030000000400000000000000746167"
        );
        let r = decode(&p, 10, 3).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].seq, r[0].data), (10, &[0xab; 8][..]));
        assert_eq!((r[1].kind, r[1].data), (RecordKind::Checkpoint, &b"tag"[..]));
    }

    #[test]
    fn decode_refuses_what_does_not_fit_the_frame() {
        let p = sample();
        assert_eq!(decode(&p, 11, 3), Err(RecordError::Order { index: 0, seq: 10 }));
        assert_eq!(decode(&p, 10, 2), Err(RecordError::Order { index: 1, seq: 12 }));
        assert!(matches!(
            decode(&p[..p.len() - 1], 10, 3),
            Err(RecordError::Truncated { index: 1, .. })
        ));
        let mut bad = p.clone();
        bad[32] = 9;
        assert_eq!(decode(&bad, 10, 3), Err(RecordError::Kind { index: 0, kind: 9 }));
        let mut bad = p.clone();
        bad[39] = 1;
        assert_eq!(decode(&bad, 10, 3), Err(RecordError::Reserved { index: 0 }));
        let mut bad = p.clone();
        bad[16] = 7; // length 7 with 8 data bytes
        assert!(matches!(decode(&bad, 10, 3), Err(RecordError::Shape { index: 0, .. })));
        // Two records with one seq.
        let mut twice = p[..48].to_vec();
        twice.extend_from_slice(&p[..48]);
        assert_eq!(decode(&twice, 10, 3), Err(RecordError::Order { index: 1, seq: 10 }));
        assert_eq!(decode(&[], 10, 3), Ok(vec![]));
    }

    #[test]
    fn compression_round_trips_and_refuses_garbage() {
        let mut p = sample();
        p.extend(std::iter::repeat_n(0u8, 1 << 16));
        let c = compress(&p, 3);
        assert!(c.len() < p.len() / 10);
        assert_eq!(decompress(&c).unwrap(), p);
        assert!(decompress(b"not zstd at all").is_err());
    }
}
