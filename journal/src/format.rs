//! On-disk format of a journal ring file, version 1: two superblock slots, an index ring of
//! fixed 64-byte entries (one per record), and a data ring of 4 KiB-aligned payloads.
//!
//! ```text
//! file offset
//! 0            +----------------------------------+
//!              | superblock slot 0         4 KiB  |  written alternately; of the two that
//! 4096         | superblock slot 1         4 KiB  |  decode, the higher generation wins
//! 8192         +----------------------------------+
//!              | index ring                       |  index_slots × 64-byte entries,
//!              |   entry for index position p     |  entry p at slot p % index_slots
//!              |   lives at 8192 + (p % n) × 64   |  (region rounded up to 4 KiB)
//! data_start   +----------------------------------+
//!              | data ring, data_bytes            |  payload of an entry at data_pos d
//!              |   (multiple of 4 KiB)            |  starts at data_start + d % data_bytes,
//!              |                                  |  on a 4 KiB boundary, and never wraps:
//!              +----------------------------------+  a payload that would cross the end
//!                                                    starts at the next lap instead.
//! ```
//!
//! Positions (`index_pos`, `data_pos`) are logical: they only grow, and the physical place is
//! the position modulo the ring's size. An entry carries its own index position and its
//! ring's id (as the seed of its checksum), so an entry that is stale (from an earlier lap),
//! misdirected (written to the wrong slot) or foreign (copied from another ring) is
//! recognised as such.
//!
//! Superblock (bytes 0..80 of its 4 KiB slot, the rest zero):
//!
//! ```text
//!  0 magic "FERRYJSB"   8 version u32   12 block_bytes u32 (4096)
//! 16 ring_id u64       24 index_slots u64   32 data_bytes u64   40 generation u64
//! 48 acked_seq u64 (records with seq < acked_seq are acknowledged)
//! 56 acked_index u64 (index position of the first unacknowledged entry)
//! 64 acked_data u64 (data position of the first unacknowledged payload)
//! 72 crc32c u32 over bytes 0..72      76 reserved u32 (zero)
//! ```
//!
//! Index entry (64 bytes, little-endian):
//!
//! ```text
//!  0 magic u32 "FJE1"   4 version u8   5 kind u8   6 flags u16 (zero)
//!  8 seq u64            16 index_pos u64          24 data_pos u64
//! 32 offset u64 (volume byte offset; checkpoints: unix time in ns)
//! 40 length u64 (bytes written, trimmed or zeroed; checkpoints: tag bytes)
//! 48 volume u32        52 payload_crc u32 (crc32c of the payload, 0 without one)
//! 56 reserved u32      60 entry_crc u32 (crc32c seeded with ring_id, over bytes 0..60)
//! ```
//!
//! Kinds: 1 write, 2 trim, 3 write-zeroes, 4 checkpoint, 5 void. Writes carry `length`
//! bytes of payload; checkpoints carry their tag (UTF-8, may be empty); trims and
//! write-zeroes carry none; a void holds `length` bytes of space without content (its
//! payload_crc is zero). A payload takes `length` rounded up to 4 KiB.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

pub const FORMAT_VERSION: u32 = 1;
pub const SUPERBLOCK_MAGIC: [u8; 8] = *b"FERRYJSB";
pub const ENTRY_MAGIC: u32 = u32::from_le_bytes(*b"FJE1");
/// Alignment of payloads in the data ring, and the unit of every region.
pub const BLOCK_BYTES: u64 = 4096;
pub const SUPERBLOCK_SLOT_BYTES: u64 = 4096;
pub const SUPERBLOCK_SLOTS: u64 = 2;
pub const INDEX_START: u64 = SUPERBLOCK_SLOT_BYTES * SUPERBLOCK_SLOTS;
pub const ENTRY_BYTES: u64 = 64;
/// Longest checkpoint tag.
pub const TAG_BYTES_MAX: usize = 256;

#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
struct RawSuperblock {
    magic: [u8; 8],
    version: U32,
    block_bytes: U32,
    ring_id: U64,
    index_slots: U64,
    data_bytes: U64,
    generation: U64,
    acked_seq: U64,
    acked_index: U64,
    acked_data: U64,
    crc: U32,
    reserved: U32,
}

#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
struct RawEntry {
    magic: U32,
    version: u8,
    kind: u8,
    flags: U16,
    seq: U64,
    index_pos: U64,
    data_pos: U64,
    offset: U64,
    length: U64,
    volume: U32,
    payload_crc: U32,
    reserved: U32,
    entry_crc: U32,
}

const _: () = assert!(size_of::<RawSuperblock>() == 80);
const _: () = assert!(size_of::<RawEntry>() == ENTRY_BYTES as usize);

/// Shape of a ring file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub ring_id: u64,
    pub index_slots: u64,
    pub data_bytes: u64,
}

impl Geometry {
    /// Geometry for a data ring of `data_bytes` (rounded down to 4 KiB): one index slot per
    /// 4 KiB of data, so the index fills no sooner than the data for writes, plus a quarter
    /// more for records without payload (trims, zeroes, checkpoints).
    pub fn for_data_bytes(ring_id: u64, data_bytes: u64) -> Geometry {
        let data_bytes = data_bytes / BLOCK_BYTES * BLOCK_BYTES;
        let blocks = data_bytes / BLOCK_BYTES;
        Geometry {
            ring_id,
            index_slots: (blocks + blocks / 4).max(64),
            data_bytes,
        }
    }

    pub fn index_bytes(&self) -> u64 {
        (self.index_slots * ENTRY_BYTES).next_multiple_of(BLOCK_BYTES)
    }

    pub fn data_start(&self) -> u64 {
        INDEX_START + self.index_bytes()
    }

    pub fn file_bytes(&self) -> u64 {
        self.data_start() + self.data_bytes
    }

    /// File offset of the entry at `index_pos`.
    pub fn entry_offset(&self, index_pos: u64) -> u64 {
        INDEX_START + (index_pos % self.index_slots) * ENTRY_BYTES
    }

    /// File ranges holding data positions `[from, to)`: one, or two where the span wraps
    /// (the whole data ring at most).
    pub fn data_ranges(&self, from: u64, to: u64) -> impl Iterator<Item = std::ops::Range<usize>> {
        let len = to.saturating_sub(from).min(self.data_bytes);
        let start = if len == self.data_bytes {
            0
        } else {
            from % self.data_bytes
        };
        let first = start..(start + len).min(self.data_bytes);
        let second = 0..(start + len).saturating_sub(self.data_bytes);
        let base = self.data_start();
        [first, second]
            .into_iter()
            .filter(|r| !r.is_empty())
            .map(move |r| (base + r.start) as usize..(base + r.end) as usize)
    }

    /// File offset of the payload at `data_pos`.
    pub fn data_offset(&self, data_pos: u64) -> u64 {
        self.data_start() + data_pos % self.data_bytes
    }
}

/// The superblock: geometry and the consumer's durable cursor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Superblock {
    pub geometry: Geometry,
    pub generation: u64,
    pub acked_seq: u64,
    pub acked_index: u64,
    pub acked_data: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SuperblockError {
    #[error("not a ferry journal (magic {0:02x?})")]
    BadMagic([u8; 8]),
    #[error("journal format version {0}; this ferry reads version {FORMAT_VERSION}")]
    BadVersion(u32),
    #[error("superblock checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    BadCrc { stored: u32, computed: u32 },
    #[error("superblock geometry is impossible: {0}")]
    BadGeometry(&'static str),
    #[error("superblock slot is {0} bytes, shorter than a superblock")]
    Short(usize),
}

impl Superblock {
    /// The superblock after acknowledging up to `seq`, one generation on.
    pub fn advanced(&self, acked_seq: u64, acked_index: u64, acked_data: u64) -> Superblock {
        Superblock {
            generation: self.generation + 1,
            acked_seq,
            acked_index,
            acked_data,
            ..*self
        }
    }

    /// Where this superblock is written (slots alternate by generation) and the whole
    /// slot's bytes.
    pub fn slot_image(&self) -> (std::ops::Range<usize>, [u8; SUPERBLOCK_SLOT_BYTES as usize]) {
        let start = ((self.generation % SUPERBLOCK_SLOTS) * SUPERBLOCK_SLOT_BYTES) as usize;
        let mut slot = [0u8; SUPERBLOCK_SLOT_BYTES as usize];
        slot[..80].copy_from_slice(&self.encode());
        (start..start + SUPERBLOCK_SLOT_BYTES as usize, slot)
    }

    /// The 80 bytes that start a superblock slot.
    pub fn encode(&self) -> [u8; 80] {
        let g = &self.geometry;
        let mut raw = RawSuperblock {
            magic: SUPERBLOCK_MAGIC,
            version: FORMAT_VERSION.into(),
            block_bytes: (BLOCK_BYTES as u32).into(),
            ring_id: g.ring_id.into(),
            index_slots: g.index_slots.into(),
            data_bytes: g.data_bytes.into(),
            generation: self.generation.into(),
            acked_seq: self.acked_seq.into(),
            acked_index: self.acked_index.into(),
            acked_data: self.acked_data.into(),
            crc: 0.into(),
            reserved: 0.into(),
        };
        raw.crc = crc32c::crc32c(&raw.as_bytes()[..72]).into();
        let mut out = [0u8; 80];
        out.copy_from_slice(raw.as_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Superblock, SuperblockError> {
        let Ok((raw, _)) = RawSuperblock::read_from_prefix(bytes) else {
            return Err(SuperblockError::Short(bytes.len()));
        };
        if raw.magic != SUPERBLOCK_MAGIC {
            return Err(SuperblockError::BadMagic(raw.magic));
        }
        if raw.version.get() != FORMAT_VERSION {
            return Err(SuperblockError::BadVersion(raw.version.get()));
        }
        let computed = crc32c::crc32c(&bytes[..72]);
        if raw.crc.get() != computed {
            return Err(SuperblockError::BadCrc {
                stored: raw.crc.get(),
                computed,
            });
        }
        if raw.reserved.get() != 0 {
            return Err(SuperblockError::BadGeometry("reserved bytes are not zero"));
        }
        let geometry = Geometry {
            ring_id: raw.ring_id.get(),
            index_slots: raw.index_slots.get(),
            data_bytes: raw.data_bytes.get(),
        };
        if raw.block_bytes.get() as u64 != BLOCK_BYTES {
            return Err(SuperblockError::BadGeometry("block size is not 4096"));
        }
        if geometry.index_slots == 0 || geometry.data_bytes == 0 || !geometry.data_bytes.is_multiple_of(BLOCK_BYTES) {
            return Err(SuperblockError::BadGeometry(
                "empty ring or data ring not a multiple of 4 KiB",
            ));
        }
        // Cursors only grow, one record or byte at a time: 2^62 is out of reach, and
        // keeps every position sum below 2^64.
        if [raw.acked_seq.get(), raw.acked_index.get(), raw.acked_data.get()]
            .iter()
            .any(|&c| c > 1 << 62)
        {
            return Err(SuperblockError::BadGeometry("cursor beyond 2^62"));
        }
        if !raw.acked_data.get().is_multiple_of(BLOCK_BYTES) {
            return Err(SuperblockError::BadGeometry(
                "acknowledged data position is not 4 KiB-aligned",
            ));
        }
        // Far above any real ring (2^40 entries, 2^60 data bytes), and low enough that no
        // offset arithmetic on the geometry can overflow.
        if geometry.index_slots > 1 << 40 || geometry.data_bytes > 1 << 60 {
            return Err(SuperblockError::BadGeometry("ring larger than a file can be"));
        }
        Ok(Superblock {
            geometry,
            generation: raw.generation.get(),
            acked_seq: raw.acked_seq.get(),
            acked_index: raw.acked_index.get(),
            acked_data: raw.acked_data.get(),
        })
    }
}

/// What a record captured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Write = 1,
    Trim = 2,
    WriteZeroes = 3,
    Checkpoint = 4,
    /// A reservation that was never filled (its client went away, or the agent stopped
    /// before its payload arrived): it keeps its place in the sequence and carries nothing.
    /// `length` is the payload space it holds (zero when recovery writes it for a hole);
    /// the record after a void may start its payload anywhere past the void's end.
    Void = 5,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::Write,
            2 => Kind::Trim,
            3 => Kind::WriteZeroes,
            4 => Kind::Checkpoint,
            5 => Kind::Void,
            _ => return None,
        })
    }

    /// Payload bytes a record of this kind with this `length` carries.
    pub fn payload_bytes(self, length: u64) -> u64 {
        match self {
            Kind::Write | Kind::Checkpoint | Kind::Void => length,
            Kind::Trim | Kind::WriteZeroes => 0,
        }
    }

    /// Whether the payload is covered by the entry's payload checksum (a void's space
    /// holds whatever was there).
    pub fn checks_payload(self) -> bool {
        matches!(self, Kind::Write | Kind::Checkpoint)
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Write => "write",
            Kind::Trim => "trim",
            Kind::WriteZeroes => "write-zeroes",
            Kind::Checkpoint => "checkpoint",
            Kind::Void => "void",
        }
    }
}

/// One index entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    pub seq: u64,
    pub index_pos: u64,
    pub data_pos: u64,
    pub offset: u64,
    pub length: u64,
    pub volume: u32,
    pub payload_crc: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    /// Never written (all zero): the normal end of a scan.
    #[error("empty slot")]
    Empty,
    #[error("bad entry magic {0:#010x}")]
    BadMagic(u32),
    #[error("entry format version {0}; this ferry reads version 1")]
    BadVersion(u8),
    #[error("unknown record kind {0}")]
    BadKind(u8),
    #[error("entry checksum mismatch: torn, corrupt, or from another ring")]
    BadCrc,
    #[error("entry for index position {found} found where {expected} belongs (stale or misdirected)")]
    Misplaced { found: u64, expected: u64 },
    #[error("entry fields are inconsistent: {0}")]
    Inconsistent(&'static str),
}

fn entry_crc(ring_id: u64, bytes: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&ring_id.to_le_bytes()), &bytes[..60])
}

impl Entry {
    pub fn encode(&self, ring_id: u64) -> [u8; ENTRY_BYTES as usize] {
        let mut raw = RawEntry {
            magic: ENTRY_MAGIC.into(),
            version: FORMAT_VERSION as u8,
            kind: self.kind as u8,
            flags: 0.into(),
            seq: self.seq.into(),
            index_pos: self.index_pos.into(),
            data_pos: self.data_pos.into(),
            offset: self.offset.into(),
            length: self.length.into(),
            volume: self.volume.into(),
            payload_crc: self.payload_crc.into(),
            reserved: 0.into(),
            entry_crc: 0.into(),
        };
        raw.entry_crc = entry_crc(ring_id, raw.as_bytes()).into();
        let mut out = [0u8; ENTRY_BYTES as usize];
        out.copy_from_slice(raw.as_bytes());
        out
    }

    /// Decodes the entry stored for `expected_index_pos` in the ring `ring_id`.
    pub fn decode(
        bytes: &[u8; ENTRY_BYTES as usize],
        ring_id: u64,
        expected_index_pos: u64,
    ) -> Result<Entry, EntryError> {
        if bytes.iter().all(|b| *b == 0) {
            return Err(EntryError::Empty);
        }
        let raw = RawEntry::read_from_bytes(bytes).expect("64 bytes");
        if raw.magic.get() != ENTRY_MAGIC {
            return Err(EntryError::BadMagic(raw.magic.get()));
        }
        if raw.version as u32 != FORMAT_VERSION {
            return Err(EntryError::BadVersion(raw.version));
        }
        if raw.entry_crc.get() != entry_crc(ring_id, bytes) {
            return Err(EntryError::BadCrc);
        }
        let kind = Kind::from_u8(raw.kind).ok_or(EntryError::BadKind(raw.kind))?;
        if raw.index_pos.get() != expected_index_pos {
            return Err(EntryError::Misplaced {
                found: raw.index_pos.get(),
                expected: expected_index_pos,
            });
        }
        if raw.flags.get() != 0 || raw.reserved.get() != 0 {
            return Err(EntryError::Inconsistent("reserved bits set"));
        }
        if !raw.data_pos.get().is_multiple_of(BLOCK_BYTES) {
            return Err(EntryError::Inconsistent("payload not 4 KiB-aligned"));
        }
        if kind == Kind::Checkpoint && raw.length.get() > TAG_BYTES_MAX as u64 {
            return Err(EntryError::Inconsistent("checkpoint tag too long"));
        }
        if !kind.checks_payload() && raw.payload_crc.get() != 0 {
            return Err(EntryError::Inconsistent("payload checksum without a payload"));
        }
        Ok(Entry {
            kind,
            seq: raw.seq.get(),
            index_pos: raw.index_pos.get(),
            data_pos: raw.data_pos.get(),
            offset: raw.offset.get(),
            length: raw.length.get(),
            volume: raw.volume.get(),
            payload_crc: raw.payload_crc.get(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RING: u64 = 0x0123_4567_89ab_cdef;

    fn entry() -> Entry {
        Entry {
            kind: Kind::Write,
            seq: 42,
            index_pos: 7,
            data_pos: 8192,
            offset: 1 << 20,
            length: 4096,
            volume: 3,
            payload_crc: crc32c::crc32c(&[0xab; 4096]),
        }
    }

    /// Version 1 entry bytes; a change here is a format change and needs a new version.
    const GOLDEN_ENTRY: &str = "46 4a 45 31 01 01 00 00 2a 00 00 00 00 00 00 00 07 00 00 00 00 00 00 00 \
         00 20 00 00 00 00 00 00 00 00 10 00 00 00 00 00 00 10 00 00 00 00 00 00 03 00 00 00";

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn data_ranges_split_where_a_span_wraps() {
        let g = Geometry {
            ring_id: 1,
            index_slots: 64,
            data_bytes: 16 * BLOCK_BYTES,
        };
        let (b, d) = (g.data_start() as usize, g.data_bytes);
        let ranges = |from, to| g.data_ranges(from, to).collect::<Vec<_>>();
        assert_eq!(ranges(4096, 4096), vec![], "empty");
        assert_eq!(ranges(8192, 4096), vec![], "backwards is empty");
        assert_eq!(ranges(4096, 12288), vec![b + 4096..b + 12288]);
        // A later lap maps to the same place.
        assert_eq!(ranges(d + 4096, d + 12288), vec![b + 4096..b + 12288]);
        // Across the end: the tail of the ring, then its start.
        assert_eq!(
            ranges(d - 4096, d + 8192),
            vec![b + d as usize - 4096..b + d as usize, b..b + 8192]
        );
        // A whole lap or more: the whole data ring, once.
        assert_eq!(ranges(8192, 8192 + d), vec![b..b + d as usize]);
        assert_eq!(ranges(0, 3 * d), vec![b..b + d as usize]);
    }

    #[test]
    fn golden_entry_v1() {
        let bytes = entry().encode(RING);
        assert_eq!(
            hex(&bytes[..52]),
            GOLDEN_ENTRY.split_whitespace().collect::<Vec<_>>().join(" ")
        );
        assert_eq!(Entry::decode(&bytes, RING, 7), Ok(entry()));
    }

    /// Every kind's code byte (offset 5), and a void's layout: no payload checksum.
    #[test]
    fn golden_kinds_v1() {
        for (kind, code) in [
            (Kind::Write, 1u8),
            (Kind::Trim, 2),
            (Kind::WriteZeroes, 3),
            (Kind::Checkpoint, 4),
            (Kind::Void, 5),
        ] {
            let e = Entry {
                kind,
                length: if kind == Kind::Checkpoint { 6 } else { 4096 },
                payload_crc: if kind.checks_payload() { 9 } else { 0 },
                ..entry()
            };
            let bytes = e.encode(RING);
            assert_eq!(bytes[5], code, "{kind:?}");
            assert_eq!(Entry::decode(&bytes, RING, 7), Ok(e));
        }
        let void = Entry {
            kind: Kind::Void,
            payload_crc: 0,
            ..entry()
        };
        assert_eq!(
            hex(&void.encode(RING)[..56]),
            "46 4a 45 31 01 05 00 00 2a 00 00 00 00 00 00 00 07 00 00 00 00 00 00 00 \
             00 20 00 00 00 00 00 00 00 00 10 00 00 00 00 00 00 10 00 00 00 00 00 00 03 00 00 00 \
             00 00 00 00"
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        );
        let bad = Entry {
            kind: Kind::Void,
            payload_crc: 5,
            ..entry()
        };
        assert!(
            Entry::decode(&bad.encode(RING), RING, 7).is_err(),
            "a void carries no checksum"
        );
    }

    #[test]
    fn golden_superblock_v1() {
        let sb = Superblock {
            geometry: Geometry::for_data_bytes(RING, 1 << 20),
            generation: 5,
            acked_seq: 9,
            acked_index: 8,
            acked_data: 4096,
        };
        let bytes = sb.encode();
        assert_eq!(&bytes[..8], b"FERRYJSB");
        assert_eq!(hex(&bytes[8..16]), "01 00 00 00 00 10 00 00");
        assert_eq!(
            &bytes[24..32],
            &320u64.to_le_bytes(),
            "256 data blocks → 320 index slots"
        );
        assert_eq!(Superblock::decode(&bytes), Ok(sb));
    }

    #[test]
    fn entries_reject_torn_stale_foreign_and_corrupt() {
        let good = entry().encode(RING);
        assert_eq!(Entry::decode(&[0; 64], RING, 7), Err(EntryError::Empty));
        assert_eq!(
            Entry::decode(&good, RING, 7 + 320),
            Err(EntryError::Misplaced {
                found: 7,
                expected: 327
            })
        );
        assert_eq!(
            Entry::decode(&good, RING ^ 1, 7),
            Err(EntryError::BadCrc),
            "another ring's entry"
        );
        for i in 0..64 {
            let mut bad = good;
            bad[i] ^= 0x10;
            assert!(Entry::decode(&bad, RING, 7).is_err(), "flip in byte {i} must be caught");
        }
        let mut torn = good;
        torn[32..].fill(0);
        assert!(Entry::decode(&torn, RING, 7).is_err());
    }

    #[test]
    fn superblocks_reject_bad_input() {
        let sb = Superblock {
            geometry: Geometry::for_data_bytes(RING, 1 << 20),
            generation: 1,
            acked_seq: 0,
            acked_index: 0,
            acked_data: 0,
        };
        let good = sb.encode();
        assert!(matches!(
            Superblock::decode(&good[..40]),
            Err(SuperblockError::Short(40))
        ));
        let mut v = good;
        v[8] = 2;
        assert_eq!(Superblock::decode(&v), Err(SuperblockError::BadVersion(2)));
        let mut c = good;
        c[50] ^= 1;
        assert!(matches!(Superblock::decode(&c), Err(SuperblockError::BadCrc { .. })));
        assert!(matches!(
            Superblock::decode(&[0x55; 80]),
            Err(SuperblockError::BadMagic(_))
        ));
        // Found by fuzzing: an unaligned cursor would place (and void) records off the
        // 4 KiB grid.
        let unaligned = Superblock { acked_data: 4104, ..sb };
        assert!(matches!(
            Superblock::decode(&unaligned.encode()),
            Err(SuperblockError::BadGeometry(m)) if m.contains("aligned")
        ));
        let huge = Superblock {
            geometry: Geometry {
                ring_id: RING,
                index_slots: 1 << 41,
                data_bytes: 4096,
            },
            ..sb
        };
        assert!(matches!(
            Superblock::decode(&huge.encode()),
            Err(SuperblockError::BadGeometry(_))
        ));
        // Found by the journal_format fuzz target: reserved bytes must be zero.
        let mut r = good;
        r[76] = 0x4a;
        assert!(matches!(Superblock::decode(&r), Err(SuperblockError::BadGeometry(_))));
    }

    #[test]
    fn geometry_places_entries_and_payloads() {
        let g = Geometry::for_data_bytes(RING, 1 << 20);
        assert_eq!(g.index_slots, 320);
        assert_eq!(g.index_bytes(), 20480);
        assert_eq!(g.data_start(), 8192 + 20480);
        assert_eq!(g.entry_offset(321), 8192 + 64);
        assert_eq!(
            g.data_offset((1 << 20) + 4096),
            g.data_start() + 4096,
            "second lap wraps"
        );
    }
}
