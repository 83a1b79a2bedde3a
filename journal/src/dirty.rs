//! Per-volume dirty map file: the regions the journal does not hold (dirty bits) and the
//! extents that may have writes in flight (the activity log, in the manner of DRBD's).
//!
//! ```text
//! file offset
//! 0       header, bytes 0..64 of a 4 KiB block (one sector: written atomically)
//!           0 magic "FERRYDMP"   8 version u32 (1)   12 granularity u32 (bytes per dirty bit)
//!          16 volume_bytes u64   24 extent_bytes u32 (bytes per activity bit)
//!          28 flags u32 (bit 0: clean shutdown)      32 boot_id [16] (of the running system)
//!          48 settled_seq u64 (every record below it had its datastore I/O done and was
//!             synced, as of the last sync)           56 volume u32   60 crc32c u32 (0..60)
//! 4096    dirty bits: bit i (byte i/8, bit i%8) = bytes [i×granularity, (i+1)×granularity)
//!         of the volume; rounded up to 4 KiB
//! ...     activity bits: bit j = bytes [j×extent_bytes, (j+1)×extent_bytes); rounded up
//! ```
//!
//! Dirty bits are set in the mapped file before the datastore write they stand for is
//! issued, so a process crash never loses one. They are cleared only after the journal record
//! that replaced them (a drain record) was synced ([`DirtyMap::clear_later`] +
//! [`DirtyMap::apply_clears`]). Against power loss, the activity log is flushed *before* a
//! write to an extent not in it is issued; after an unclean stop on another boot, every
//! extent in the log is marked dirty. Extents leave the log at a sync when no write touched
//! them for a whole sync interval.
//!
//! The map's one lock is held across its flushes (the activity log's before a write, and a
//! sync's): what is flushed must be the bits as they stand, and a bit cleared by a sync
//! must not race a write marking it. It is a leaf: nothing else is taken under it.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Mutex, MutexGuard};

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::storage::RingStorage;

pub const MAP_MAGIC: [u8; 8] = *b"FERRYDMP";
pub const MAP_VERSION: u32 = 1;
const HEADER_BLOCK: u64 = 4096;
/// Default bytes per dirty bit.
pub const GRANULARITY_DEFAULT: u32 = 64 * 1024;
/// Default bytes per activity-log bit.
pub const EXTENT_DEFAULT: u32 = 4 << 20;

#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
struct RawHeader {
    magic: [u8; 8],
    version: U32,
    granularity: U32,
    volume_bytes: U64,
    extent_bytes: U32,
    flags: U32,
    boot_id: [u8; 16],
    settled_seq: U64,
    volume: U32,
    crc: U32,
}
const _: () = assert!(size_of::<RawHeader>() == 64);

/// The fixed shape of a map and its session fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapHeader {
    pub granularity: u32,
    pub volume_bytes: u64,
    pub extent_bytes: u32,
    pub clean: bool,
    pub boot_id: [u8; 16],
    pub settled_seq: u64,
    pub volume: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    #[error("not a ferry dirty map (magic {0:02x?})")]
    BadMagic([u8; 8]),
    #[error("dirty map format version {0}; this ferry reads version {MAP_VERSION}")]
    BadVersion(u32),
    #[error("dirty map header checksum mismatch (torn or corrupt)")]
    BadCrc,
    #[error("dirty map header is impossible: {0}")]
    BadShape(&'static str),
    #[error("dirty map file is {actual} bytes, its header needs {expected}")]
    Size { actual: u64, expected: u64 },
}

impl MapHeader {
    pub fn dirty_bits(&self) -> u64 {
        self.volume_bytes.div_ceil(self.granularity as u64)
    }
    pub fn extent_bits(&self) -> u64 {
        self.volume_bytes.div_ceil(self.extent_bytes as u64)
    }
    fn dirty_start(&self) -> u64 {
        HEADER_BLOCK
    }
    fn extent_start(&self) -> u64 {
        HEADER_BLOCK + self.dirty_bits().div_ceil(8).next_multiple_of(HEADER_BLOCK)
    }
    pub fn file_bytes(&self) -> u64 {
        self.extent_start() + self.extent_bits().div_ceil(8).next_multiple_of(HEADER_BLOCK)
    }

    pub fn encode(&self) -> [u8; 64] {
        let mut raw = RawHeader {
            magic: MAP_MAGIC,
            version: MAP_VERSION.into(),
            granularity: self.granularity.into(),
            volume_bytes: self.volume_bytes.into(),
            extent_bytes: self.extent_bytes.into(),
            flags: (self.clean as u32).into(),
            boot_id: self.boot_id,
            settled_seq: self.settled_seq.into(),
            volume: self.volume.into(),
            crc: 0.into(),
        };
        raw.crc = crc32c::crc32c(&raw.as_bytes()[..60]).into();
        let mut out = [0u8; 64];
        out.copy_from_slice(raw.as_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<MapHeader, MapError> {
        let Ok((raw, _)) = RawHeader::read_from_prefix(bytes) else {
            return Err(MapError::Size {
                actual: bytes.len() as u64,
                expected: 64,
            });
        };
        if raw.magic != MAP_MAGIC {
            return Err(MapError::BadMagic(raw.magic));
        }
        if raw.version.get() != MAP_VERSION {
            return Err(MapError::BadVersion(raw.version.get()));
        }
        if raw.crc.get() != crc32c::crc32c(&bytes[..60]) {
            return Err(MapError::BadCrc);
        }
        let h = MapHeader {
            granularity: raw.granularity.get(),
            volume_bytes: raw.volume_bytes.get(),
            extent_bytes: raw.extent_bytes.get(),
            clean: raw.flags.get() & 1 != 0,
            boot_id: raw.boot_id,
            settled_seq: raw.settled_seq.get(),
            volume: raw.volume.get(),
        };
        h.check()?;
        if raw.flags.get() & !1 != 0 {
            return Err(MapError::BadShape("unknown flags"));
        }
        Ok(h)
    }

    fn check(&self) -> Result<(), MapError> {
        if !self.granularity.is_power_of_two() || self.granularity < 512 {
            return Err(MapError::BadShape("granularity is not a power of two of at least 512"));
        }
        if !self.extent_bytes.is_power_of_two() || self.extent_bytes < self.granularity {
            return Err(MapError::BadShape(
                "extent is not a power of two of at least the granularity",
            ));
        }
        // 2^50 bytes = 1 PiB: far above any volume, low enough for bit arithmetic.
        if self.volume_bytes > 1 << 50 {
            return Err(MapError::BadShape("volume larger than 1 PiB"));
        }
        Ok(())
    }
}

/// What opening a map found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapRecovery {
    /// The previous agent stopped cleanly.
    pub was_clean: bool,
    /// The system was restarted since (a power loss or reboot, not only the agent).
    pub rebooted: bool,
    /// Activity extents turned into dirty regions (an unclean stop across a reboot).
    pub extents_marked: u64,
    /// `settled_seq` as last synced: records from here may not have reached the datastore.
    pub settled_seq: u64,
}

struct Inner<S> {
    storage: S,
    header: MapHeader,
    /// Dirty bits replaced by a journal record of this sequence: cleared once it is synced.
    pending_clear: BTreeMap<u64, u64>,
    /// Activity bits touched since the last [`DirtyMap::sync_begin`], and in the interval
    /// before it.
    touched: Vec<u64>,
    touched_before: Vec<u64>,
}

/// One volume's dirty map, shared by the volume's writers.
pub struct DirtyMap<S: RingStorage> {
    inner: Mutex<Inner<S>>,
}

impl<S: RingStorage> std::fmt::Debug for DirtyMap<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirtyMap").field("header", &self.lock().header).finish()
    }
}

fn get(bytes: &[u8], start: u64, bit: u64) -> bool {
    bytes[(start + bit / 8) as usize] & (1 << (bit % 8)) != 0
}

fn set(bytes: &mut [u8], start: u64, bit: u64, on: bool) {
    let b = &mut bytes[(start + bit / 8) as usize];
    if on {
        *b |= 1 << (bit % 8);
    } else {
        *b &= !(1 << (bit % 8));
    }
}

/// Indices of the set bits in `[from, nbits)` of the bitmap at `start`, a byte at a time
/// (zero bytes are skipped whole, so a mostly clean map is scanned quickly).
fn set_bits(bytes: &[u8], start: u64, from: u64, nbits: u64) -> impl Iterator<Item = u64> + '_ {
    (from / 8..nbits.div_ceil(8))
        .filter(move |&i| bytes[(start + i) as usize] != 0)
        .flat_map(move |i| {
            let b = bytes[(start + i) as usize];
            (0..8u64).filter(move |k| b & (1 << k) != 0).map(move |k| i * 8 + k)
        })
        .filter(move |&bit| bit >= from && bit < nbits)
}

/// Bits `[first, last]` of `unit` bytes that the byte range touches; `None` if empty.
fn bits(off: u64, len: u64, unit: u64) -> Option<std::ops::RangeInclusive<u64>> {
    (len > 0).then(|| off / unit..=(off + len - 1) / unit)
}

impl<S: RingStorage> DirtyMap<S> {
    fn lock(&self) -> MutexGuard<'_, Inner<S>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn new(storage: S, header: MapHeader) -> DirtyMap<S> {
        let words = header.extent_bits().div_ceil(64) as usize;
        DirtyMap {
            inner: Mutex::new(Inner {
                storage,
                header,
                pending_clear: BTreeMap::new(),
                touched: vec![0; words],
                touched_before: vec![0; words],
            }),
        }
    }

    /// Formats `storage` (of [`MapHeader::file_bytes`]) as a map; `all_dirty` marks every
    /// region (a volume whose history is unknown).
    pub fn create(mut storage: S, header: MapHeader, all_dirty: bool) -> Result<DirtyMap<S>, MapError> {
        header.check()?;
        let actual = storage.bytes().len() as u64;
        if actual != header.file_bytes() {
            return Err(MapError::Size {
                actual,
                expected: header.file_bytes(),
            });
        }
        let bytes = storage.bytes_mut();
        bytes.fill(0);
        if all_dirty {
            for bit in 0..header.dirty_bits() {
                set(bytes, header.dirty_start(), bit, true);
            }
        }
        bytes[..64].copy_from_slice(&header.encode());
        let len = bytes.len();
        storage.flush(0..len).map_err(|_| MapError::BadShape("cannot flush"))?;
        Ok(DirtyMap::new(storage, header))
    }

    /// Opens a map after the agent's start: an unclean stop across a reboot turns the
    /// activity log into dirty regions. The map is then marked in use by `boot_id`.
    pub fn open(mut storage: S, boot_id: [u8; 16]) -> Result<(DirtyMap<S>, MapRecovery), MapError> {
        let header = MapHeader::decode(storage.bytes())?;
        let actual = storage.bytes().len() as u64;
        if actual < header.file_bytes() {
            return Err(MapError::Size {
                actual,
                expected: header.file_bytes(),
            });
        }
        let rebooted = header.boot_id != boot_id;
        let mut marked = 0;
        if !header.clean && rebooted {
            let bytes = storage.bytes_mut();
            let per = (header.extent_bytes / header.granularity) as u64;
            for e in 0..header.extent_bits() {
                if get(bytes, header.extent_start(), e) {
                    marked += 1;
                    for bit in e * per..((e + 1) * per).min(header.dirty_bits()) {
                        set(bytes, header.dirty_start(), bit, true);
                    }
                }
            }
        }
        let rec = MapRecovery {
            was_clean: header.clean,
            rebooted,
            extents_marked: marked,
            settled_seq: header.settled_seq,
        };
        let map = DirtyMap::new(storage, header);
        {
            let mut inner = map.lock();
            let len = inner.storage.bytes().len();
            // Dirty bits first, then the header that says "in use".
            inner
                .storage
                .flush(0..len)
                .map_err(|_| MapError::BadShape("cannot flush"))?;
            let h = MapHeader {
                clean: false,
                boot_id,
                ..header
            };
            write_header(&mut inner, h).map_err(|_| MapError::BadShape("cannot flush"))?;
        }
        Ok((map, rec))
    }

    pub fn header(&self) -> MapHeader {
        self.lock().header
    }

    /// Puts the extents of a write in the activity log; if one was not there, the log is
    /// flushed before this returns. Call before the datastore I/O is issued.
    pub fn activate(&self, off: u64, len: u64) -> io::Result<()> {
        let mut inner = self.lock();
        let h = inner.header;
        let Some(range) = bits(off, len, h.extent_bytes as u64) else {
            return Ok(());
        };
        let mut new = false;
        for e in range.clone() {
            inner.touched[(e / 64) as usize] |= 1 << (e % 64);
            if !get(inner.storage.bytes(), h.extent_start(), e) {
                set(inner.storage.bytes_mut(), h.extent_start(), e, true);
                new = true;
            }
        }
        if new {
            let a = (h.extent_start() + range.start() / 8) as usize;
            let b = (h.extent_start() + range.end() / 8 + 1) as usize;
            inner.storage.flush(a..b)?;
        }
        Ok(())
    }

    /// Marks a range dirty (in the map's memory, which a process crash keeps).
    pub fn mark(&self, off: u64, len: u64) {
        let mut inner = self.lock();
        let h = inner.header;
        let Some(range) = bits(off, len.min(h.volume_bytes.saturating_sub(off)), h.granularity as u64) else {
            return;
        };
        for bit in range {
            set(inner.storage.bytes_mut(), h.dirty_start(), bit, true);
            inner.pending_clear.remove(&bit);
        }
    }

    /// Marks every region dirty.
    pub fn mark_all(&self) {
        let v = self.header().volume_bytes;
        self.mark(0, v);
    }

    /// Whether any byte of the range is dirty.
    pub fn is_dirty(&self, off: u64, len: u64) -> bool {
        let inner = self.lock();
        let h = inner.header;
        bits(off, len, h.granularity as u64)
            .is_some_and(|r| r.into_iter().any(|b| get(inner.storage.bytes(), h.dirty_start(), b)))
    }

    /// The next dirty range at or after `from` that is not already drained (pending clear),
    /// at most `max_bytes` long (whole granules, clipped to the volume).
    pub fn next_dirty(&self, from: u64, max_bytes: u64) -> Option<(u64, u64)> {
        let inner = self.lock();
        let h = inner.header;
        let g = h.granularity as u64;
        let bytes = inner.storage.bytes();
        let want = |b: u64| get(bytes, h.dirty_start(), b) && !inner.pending_clear.contains_key(&b);
        let first = set_bits(bytes, h.dirty_start(), from / g, h.dirty_bits())
            .find(|b| !inner.pending_clear.contains_key(b))?;
        let mut last = first;
        while last + 1 < h.dirty_bits() && (last + 2 - first) * g <= max_bytes.max(g) && want(last + 1) {
            last += 1;
        }
        let off = first * g;
        Some((off, ((last + 1) * g).min(h.volume_bytes) - off))
    }

    /// Bytes marked dirty and not yet drained.
    pub fn dirty_bytes(&self) -> u64 {
        let inner = self.lock();
        let h = inner.header;
        let bytes = inner.storage.bytes();
        let start = h.dirty_start() as usize;
        let set: u64 = bytes[start..start + h.dirty_bits().div_ceil(8) as usize]
            .iter()
            .map(|b| b.count_ones() as u64)
            .sum();
        let drained = inner
            .pending_clear
            .keys()
            .filter(|&&b| get(bytes, h.dirty_start(), b))
            .count() as u64;
        (set - drained) * h.granularity as u64
    }

    /// Every dirty range (whole granules, merged), drained or not: what a power loss now
    /// could leave to resynchronise.
    pub fn dirty_ranges(&self) -> Vec<(u64, u64)> {
        let inner = self.lock();
        let h = inner.header;
        let g = h.granularity as u64;
        let mut out: Vec<(u64, u64)> = Vec::new();
        for b in set_bits(inner.storage.bytes(), h.dirty_start(), 0, h.dirty_bits()) {
            let (off, end) = (b * g, ((b + 1) * g).min(h.volume_bytes));
            match out.last_mut() {
                Some((o, l)) if *o + *l == off => *l = end - *o,
                _ => out.push((off, end - off)),
            }
        }
        out
    }

    /// The range was drained into the journal record `seq`: its bits are cleared once that
    /// record is synced ([`DirtyMap::apply_clears`]), unless a write marks them again first.
    pub fn clear_later(&self, off: u64, len: u64, seq: u64) {
        let mut inner = self.lock();
        let h = inner.header;
        let g = h.granularity as u64;
        if let Some(range) = bits(off, len, g) {
            for bit in range {
                // Only granules the record covers whole.
                if bit * g >= off && ((bit + 1) * g).min(h.volume_bytes) <= off + len {
                    inner.pending_clear.insert(bit, seq);
                }
            }
        }
    }

    /// Starts a sync interval: the activity bits touched so far are the previous interval's.
    pub fn sync_begin(&self) {
        let mut inner = self.lock();
        let t = std::mem::take(&mut inner.touched);
        inner.touched = vec![0; t.len()];
        inner.touched_before = t;
    }

    /// Ends a sync whose journal records below `synced_seq` and datastore writes issued
    /// before [`DirtyMap::sync_begin`] are durable: clears drained bits, drops extents idle
    /// for a whole interval from the activity log, and records `synced_seq` in the header.
    pub fn sync_finish(&self, synced_seq: u64) -> io::Result<()> {
        let mut inner = self.lock();
        let h = inner.header;
        let done: Vec<u64> = inner
            .pending_clear
            .iter()
            .filter(|&(_, &seq)| seq < synced_seq)
            .map(|(&b, _)| b)
            .collect();
        for b in done {
            inner.pending_clear.remove(&b);
            set(inner.storage.bytes_mut(), h.dirty_start(), b, false);
        }
        for e in 0..h.extent_bits() {
            let w = (e / 64) as usize;
            let keep = (inner.touched[w] | inner.touched_before[w]) & (1 << (e % 64)) != 0;
            if !keep {
                set(inner.storage.bytes_mut(), h.extent_start(), e, false);
            }
        }
        let len = inner.storage.bytes().len();
        inner.storage.flush(HEADER_BLOCK as usize..len)?;
        let hdr = MapHeader {
            settled_seq: synced_seq,
            ..h
        };
        write_header(&mut inner, hdr)
    }

    /// Marks the map cleanly closed (the agent stops with everything synced).
    pub fn close_clean(&self) -> io::Result<()> {
        let mut inner = self.lock();
        let len = inner.storage.bytes().len();
        inner.storage.flush(HEADER_BLOCK as usize..len)?;
        let h = MapHeader {
            clean: true,
            ..inner.header
        };
        write_header(&mut inner, h)
    }

    /// Extents in the activity log (for status and tests).
    pub fn active_extents(&self) -> u64 {
        let inner = self.lock();
        let h = inner.header;
        (0..h.extent_bits())
            .filter(|&e| get(inner.storage.bytes(), h.extent_start(), e))
            .count() as u64
    }

    /// Runs `f` on the storage (tests take crash images this way).
    pub fn with_storage<R>(&self, f: impl FnOnce(&S) -> R) -> R {
        f(&self.lock().storage)
    }

    pub fn into_storage(self) -> S {
        self.inner.into_inner().unwrap_or_else(|e| e.into_inner()).storage
    }
}

/// `10.0 GiB`, `12 B`: sizes for messages.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

fn write_header<S: RingStorage>(inner: &mut Inner<S>, h: MapHeader) -> io::Result<()> {
    inner.storage.bytes_mut()[..64].copy_from_slice(&h.encode());
    inner.header = h;
    inner.storage.flush(0..64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{MemStorage, SimStorage};

    fn header() -> MapHeader {
        MapHeader {
            granularity: 4096,
            volume_bytes: 1 << 20,
            extent_bytes: 65536,
            clean: false,
            boot_id: [1; 16],
            settled_seq: 0,
            volume: 3,
        }
    }

    #[test]
    fn golden_header_v1() {
        let h = MapHeader {
            granularity: 65536,
            volume_bytes: 1 << 30,
            extent_bytes: 4 << 20,
            clean: true,
            boot_id: *b"0123456789abcdef",
            settled_seq: 77,
            volume: 2,
        };
        let hex: String = h.encode().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "4645525259444d50010000000000010000000040000000000000400001000000\
             30313233343536373839616263646566\
             4d0000000000000002000000e41abd45"
                .replace(char::is_whitespace, "")
        );
        assert_eq!(MapHeader::decode(&h.encode()).unwrap(), h);
        assert_eq!(h.file_bytes(), 4096 + 4096 + 4096);
    }

    #[test]
    fn headers_reject_bad_input() {
        let good = header().encode();
        let mut b = good;
        b[0] ^= 1;
        assert!(matches!(MapHeader::decode(&b), Err(MapError::BadMagic(_))));
        let mut b = good;
        b[20] ^= 1;
        assert_eq!(MapHeader::decode(&b), Err(MapError::BadCrc));
        assert!(matches!(MapHeader::decode(&good[..10]), Err(MapError::Size { .. })));
        let bad = MapHeader {
            granularity: 3000,
            ..header()
        };
        assert!(matches!(MapHeader::decode(&bad.encode()), Err(MapError::BadShape(_))));
    }

    #[test]
    fn marks_drains_and_clears_only_after_the_sync() {
        let h = header();
        let m = DirtyMap::create(MemStorage(vec![0; h.file_bytes() as usize]), h, false).unwrap();
        m.mark(4096 + 100, 9000); // granules 1..=3
        m.mark(65536 * 3, 4096);
        assert_eq!(m.dirty_bytes(), 4 * 4096);
        assert_eq!(m.next_dirty(0, 1 << 20), Some((4096, 3 * 4096)));
        assert_eq!(m.next_dirty(0, 8192), Some((4096, 8192)));
        m.clear_later(4096, 3 * 4096, 10);
        assert_eq!(
            m.next_dirty(0, 1 << 20),
            Some((65536 * 3, 4096)),
            "drained: not offered again"
        );
        m.mark(8192, 1); // written again before the sync: stays dirty
        m.sync_begin();
        m.sync_finish(11).unwrap();
        assert_eq!(m.dirty_ranges(), vec![(8192, 4096), (65536 * 3, 4096)]);
        assert_eq!(m.header().settled_seq, 11);
    }

    #[test]
    fn activity_log_is_flushed_before_the_write_and_marks_dirty_after_a_power_loss() {
        let h = header();
        let m = DirtyMap::create(SimStorage::new(h.file_bytes() as usize), h, false).unwrap();
        m.activate(65536 * 5 + 10, 100).unwrap();
        m.activate(65536 * 5, 65537).unwrap(); // extents 5 and 6
        assert_eq!(m.active_extents(), 2);
        // Power loss: nothing else was flushed, the log was.
        let disk = m.into_storage().crash(1);
        let (m, rec) = DirtyMap::open(disk, [2; 16]).unwrap();
        assert!(!rec.was_clean && rec.rebooted);
        assert_eq!(rec.extents_marked, 2);
        assert_eq!(m.dirty_ranges(), vec![(65536 * 5, 2 * 65536)]);
        // The same boot (kill -9): the log is not needed, the journal has it all.
        let disk = m.into_storage().kill();
        let (m, rec) = DirtyMap::open(disk, [2; 16]).unwrap();
        assert_eq!((rec.rebooted, rec.extents_marked), (false, 0));
        // Extents idle for a whole interval leave the log.
        m.sync_begin();
        m.activate(0, 4096).unwrap();
        m.sync_finish(0).unwrap();
        assert_eq!(
            m.active_extents(),
            1,
            "extent 0 was touched this interval; 5 and 6 were not"
        );
        m.close_clean().unwrap();
        let (_, rec) = DirtyMap::open(m.into_storage().crash(9), [3; 16]).unwrap();
        assert!(
            rec.was_clean && rec.extents_marked == 0,
            "a clean stop needs no resync: {rec:?}"
        );
    }
}
