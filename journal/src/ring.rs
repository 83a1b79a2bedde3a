//! The journal ring with one writer: reserve a record, fill its payload in place, commit it;
//! read records from any position; acknowledge a prefix, which frees its space and is
//! persisted in the superblock; and recovery on open, which finds the committed records
//! after the acknowledged ones.
//!
//! Order of a record on disk: the payload is filled first, then the entry is written, with
//! the payload's checksum in it. Recovery walks entries from the acknowledged position and
//! stops at the first one that is empty, torn, stale, misplaced, out of sequence, or whose
//! payload does not match its checksum: everything before it is the journal.
//!
//! Data placement, with `D` the data ring's size: a payload starts at the head when it fits
//! before the end of the ring; otherwise at the start of the next lap, and the tail is left
//! unused:
//!
//! ```text
//!  lap n     |acked .......... head|  free  |        a payload that fits: placed at head
//!  lap n     |  free   |acked ..... head|tail|       does not fit in `tail`: placed at the
//!  lap n+1   |new|                               start of lap n+1, `tail` skipped
//! ```
//!
//! Space is used from the acknowledged data position to the head; a reservation fails with
//! [`RingError::Full`] when its payload would pass the acknowledged position one lap on, or
//! when every index slot holds an unacknowledged entry.

use std::io;

use crate::format::{
    BLOCK_BYTES, ENTRY_BYTES, Entry, EntryError, Geometry, Kind, SUPERBLOCK_SLOT_BYTES, Superblock, SuperblockError,
};
use crate::storage::RingStorage;

#[derive(Debug, thiserror::Error)]
pub enum RingError {
    #[error("journal storage: {0}")]
    Io(#[from] io::Error),
    #[error(
        "no valid superblock (slot 0: {0}; slot 1: {1}); the file is not a ferry journal or both copies are damaged"
    )]
    NoSuperblock(SuperblockError, SuperblockError),
    #[error("journal file is {actual} bytes, its superblock describes {expected}")]
    Size { actual: u64, expected: u64 },
    #[error("journal full: no free {0}; the consumer must acknowledge records first")]
    Full(&'static str),
    #[error("record payload of {0} bytes exceeds the data ring")]
    TooLarge(u64),
    #[error("cannot acknowledge up to sequence {seq}: the journal holds {acked}..{head}")]
    BadAck { seq: u64, acked: u64, head: u64 },
}

/// A record reserved but not yet committed. Every reservation must be committed, in order:
/// recovery and readers see only the committed prefix.
#[must_use = "a reservation must be committed"]
#[derive(Debug)]
pub struct Reservation {
    entry: Entry,
    payload_bytes: u64,
}

impl Reservation {
    pub fn seq(&self) -> u64 {
        self.entry.seq
    }
}

/// A committed record and its payload, borrowed from the ring.
#[derive(Debug)]
pub struct Record<'a> {
    pub entry: Entry,
    pub payload: &'a [u8],
}

/// What recovery found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Unacknowledged committed records.
    pub records: u64,
    pub stopped_by: Stop,
    /// Holes found past the end of the valid records, with records after them (and, when
    /// repairing, turned into voids).
    pub holes: Vec<Hole>,
}

/// A slot that recovery found without a valid record, followed by valid records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hole {
    pub index_pos: u64,
    pub seq: u64,
    /// Why it is not a record.
    pub why: String,
    /// The entry, when it decodes but its payload or placement is wrong: the range it
    /// wrote must be treated as dirty. `None` for a slot never written this lap (a
    /// reservation whose datastore write was never issued) or an entry torn beyond reading.
    pub damaged: Option<Entry>,
}

/// Why the recovery scan stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// The next slot was never written.
    Empty,
    /// Every slot holds an unacknowledged record.
    IndexFull,
    /// The next slot holds the entry of one lap before: the normal end of a ring in use.
    PreviousLap,
    /// The next entry or its payload is torn, corrupt or inconsistent: after a crash, the
    /// record being written; otherwise damage.
    Damaged(String),
}

impl Stop {
    /// An end that a ring in good order has.
    pub fn is_clean(&self) -> bool {
        !matches!(self, Stop::Damaged(_))
    }
}

/// Both superblock slots of a ring file, decoded.
pub fn superblock_slots(bytes: &[u8]) -> [Result<Superblock, SuperblockError>; 2] {
    let slot = |i: u64| {
        let start = (i * SUPERBLOCK_SLOT_BYTES) as usize;
        Superblock::decode(bytes.get(start..start + SUPERBLOCK_SLOT_BYTES as usize).unwrap_or(&[]))
    };
    [slot(0), slot(1)]
}

/// Where the next record goes: the durable cursor and the heads. Shared by [`Ring`] and the
/// concurrent [`crate::Journal`], so both place records by the same rule.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Heads {
    /// The superblock last made durable.
    pub sb: Superblock,
    pub head_index: u64,
    pub head_data: u64,
    pub next_seq: u64,
}

impl Heads {
    fn geometry(&self) -> Geometry {
        self.sb.geometry
    }

    /// Where a payload of `padded_bytes` goes if the head is at `data`.
    pub fn place(&self, data: u64, padded_bytes: u64) -> u64 {
        let d = self.geometry().data_bytes;
        if padded_bytes > 0 && data % d + padded_bytes > d {
            data.next_multiple_of(d)
        } else {
            data
        }
    }

    /// Takes the next index slot, sequence number and payload space.
    pub fn reserve(&mut self, kind: Kind, volume: u32, offset: u64, length: u64) -> Result<Entry, RingError> {
        let g = self.geometry();
        let bytes = padded(kind.payload_bytes(length));
        if bytes > g.data_bytes {
            return Err(RingError::TooLarge(kind.payload_bytes(length)));
        }
        if self.head_index - self.sb.acked_index >= g.index_slots {
            return Err(RingError::Full("index slot"));
        }
        let at = self.place(self.head_data, bytes);
        if at + bytes - self.sb.acked_data > g.data_bytes {
            return Err(RingError::Full("data space"));
        }
        let entry = Entry {
            kind,
            seq: self.next_seq,
            index_pos: self.head_index,
            data_pos: at,
            offset,
            length,
            volume,
            payload_crc: 0,
        };
        self.head_index += 1;
        self.head_data = at + bytes;
        self.next_seq += 1;
        Ok(entry)
    }

    /// Bytes of the data ring in use (acknowledged position to head).
    pub fn data_used(&self) -> u64 {
        self.head_data - self.sb.acked_data
    }
}

#[derive(Debug)]
pub struct Ring<S: RingStorage> {
    storage: S,
    heads: Heads,
}

pub(crate) fn padded(bytes: u64) -> u64 {
    bytes.next_multiple_of(BLOCK_BYTES)
}

/// How far past a hole recovery looks for records committed after it: at least the number
/// of reservations that can be outstanding at once ([`crate::journal::OUTSTANDING_MAX`]).
pub const LOOKAHEAD_SLOTS: u64 = 65536;

impl<S: RingStorage> Ring<S> {
    fn geometry(&self) -> Geometry {
        self.heads.sb.geometry
    }

    /// Formats `storage` as an empty ring of `geometry`.
    pub fn create(mut storage: S, geometry: Geometry) -> Result<Ring<S>, RingError> {
        let actual = storage.bytes().len() as u64;
        if actual != geometry.file_bytes() {
            return Err(RingError::Size {
                actual,
                expected: geometry.file_bytes(),
            });
        }
        storage.bytes_mut()[..geometry.data_start() as usize].fill(0);
        let sb = Superblock {
            geometry,
            generation: 0,
            acked_seq: 0,
            acked_index: 0,
            acked_data: 0,
        };
        let mut ring = Ring {
            storage,
            heads: Heads {
                sb,
                head_index: 0,
                head_data: 0,
                next_seq: 0,
            },
        };
        // Both slots valid from the start: generation 0 in slot 0, then 1 in slot 1.
        ring.write_superblock(sb)?;
        ring.heads.sb.generation = 1;
        ring.write_superblock(ring.heads.sb)?;
        ring.storage.flush(0..geometry.data_start() as usize)?;
        Ok(ring)
    }

    /// Opens a ring and recovers its committed, unacknowledged records. Holes (reservations
    /// never committed, followed by records that were) become void records, written to the
    /// ring and flushed.
    pub fn open(storage: S) -> Result<(Ring<S>, Recovery), RingError> {
        Self::open_with(storage, true)
    }

    /// Opens a ring; with `repair` false nothing is written (holes are only reported), for
    /// tools that inspect a file.
    pub fn open_with(storage: S, repair: bool) -> Result<(Ring<S>, Recovery), RingError> {
        let bytes = storage.bytes();
        let [slot0, slot1] = superblock_slots(bytes);
        let sb = match (slot0, slot1) {
            // Two valid slots: the newer wins (if they disagree on the geometry, the file
            // size check below catches a mismatch).
            (Ok(a), Ok(b)) => {
                if a.generation > b.generation {
                    a
                } else {
                    b
                }
            }
            (Ok(a), Err(_)) | (Err(_), Ok(a)) => a,
            (Err(a), Err(b)) => return Err(RingError::NoSuperblock(a, b)),
        };
        let actual = bytes.len() as u64;
        if actual < sb.geometry.file_bytes() {
            return Err(RingError::Size {
                actual,
                expected: sb.geometry.file_bytes(),
            });
        }
        let mut ring = Ring {
            storage,
            heads: Heads {
                sb,
                head_index: sb.acked_index,
                head_data: sb.acked_data,
                next_seq: sb.acked_seq,
            },
        };
        let recovery = ring.scan(repair)?;
        Ok((ring, recovery))
    }

    fn entry_bytes(&self, index_pos: u64) -> &[u8; ENTRY_BYTES as usize] {
        let off = self.geometry().entry_offset(index_pos) as usize;
        self.storage.bytes()[off..off + ENTRY_BYTES as usize]
            .try_into()
            .expect("64 bytes")
    }

    fn payload(&self, entry: &Entry) -> &[u8] {
        let off = self.geometry().data_offset(entry.data_pos) as usize;
        &self.storage.bytes()[off..off + entry.kind.payload_bytes(entry.length) as usize]
    }

    /// Checks the entry at `pos` as the record with sequence `seq` whose payload may start at
    /// `data` (exactly, or anywhere from there when `after_void`).
    fn check_entry(&self, pos: u64, seq: u64, data: u64, after_void: bool) -> Result<Entry, Stop> {
        let g = self.geometry();
        let acked = &self.heads.sb;
        let e = match Entry::decode(self.entry_bytes(pos), g.ring_id, pos) {
            Ok(e) => e,
            Err(EntryError::Empty) => return Err(Stop::Empty),
            Err(EntryError::Misplaced { found, expected }) if found.checked_add(g.index_slots) == Some(expected) => {
                return Err(Stop::PreviousLap);
            }
            Err(e) => return Err(Stop::Damaged(format!("entry at index position {pos}: {e}"))),
        };
        if e.seq != seq {
            return Err(Stop::Damaged(format!(
                "entry at index position {pos} has sequence {}, expected {seq}",
                e.seq
            )));
        }
        let bytes = padded(e.kind.payload_bytes(e.length));
        if bytes > g.data_bytes {
            return Err(Stop::Damaged(format!(
                "entry at index position {pos} has a payload larger than the ring"
            )));
        }
        let at = self.heads.place(data, bytes);
        let placed = if after_void {
            e.data_pos >= data && (bytes == 0 || e.data_pos % g.data_bytes + bytes <= g.data_bytes)
        } else {
            e.data_pos == at
        };
        if !placed {
            return Err(Stop::Damaged(format!(
                "entry at index position {pos} places its payload at {}, expected {at}",
                e.data_pos
            )));
        }
        if e.data_pos + bytes - acked.acked_data > g.data_bytes {
            return Err(Stop::Damaged(format!(
                "entry at index position {pos} overruns acknowledged data"
            )));
        }
        if e.kind.checks_payload() && bytes > 0 && crc32c::crc32c(self.payload(&e)) != e.payload_crc {
            return Err(Stop::Damaged(format!(
                "payload of sequence {seq} does not match its checksum (torn write)"
            )));
        }
        Ok(e)
    }

    fn scan(&mut self, repair: bool) -> Result<Recovery, RingError> {
        let g = self.geometry();
        let sb = self.heads.sb;
        let (mut pos, mut seq, mut data) = (sb.acked_index, sb.acked_seq, sb.acked_data);
        let mut after_void = false;
        let mut holes = Vec::new();
        let stopped_by = loop {
            if pos - sb.acked_index >= g.index_slots {
                break Stop::IndexFull;
            }
            let stop = match self.check_entry(pos, seq, data, after_void) {
                Ok(e) => {
                    after_void = e.kind == Kind::Void;
                    data = e.data_pos + padded(e.kind.payload_bytes(e.length));
                    pos += 1;
                    seq += 1;
                    continue;
                }
                Err(stop) => stop,
            };
            // A hole: records reserved after it may have been committed (they commit out of
            // order). Look for the first one; the slots between become voids.
            let room = g.index_slots - (pos - sb.acked_index);
            let found =
                (1..LOOKAHEAD_SLOTS.min(room)).find(|&k| self.check_entry(pos + k, seq + k, data, true).is_ok());
            let Some(k) = found else { break stop };
            for p in pos..pos + k {
                let why = match self.check_entry(p, seq + (p - pos), data, true) {
                    Err(Stop::Damaged(m)) => m,
                    Err(Stop::Empty) => "never written".into(),
                    Err(Stop::PreviousLap) => "holds the previous lap's entry: never written".into(),
                    _ => "out of place".into(),
                };
                holes.push(Hole {
                    index_pos: p,
                    seq: seq + (p - pos),
                    why,
                    damaged: Entry::decode(self.entry_bytes(p), g.ring_id, p)
                        .ok()
                        .filter(|e| e.kind != Kind::Void),
                });
                if repair {
                    let void = Entry {
                        kind: Kind::Void,
                        seq: seq + (p - pos),
                        index_pos: p,
                        data_pos: data,
                        offset: 0,
                        length: 0,
                        volume: 0,
                        payload_crc: 0,
                    };
                    self.write_entry(&void);
                }
            }
            pos += k;
            seq += k;
            after_void = true;
        };
        // The record being written when the agent stopped, torn: cleared, so the file reads
        // clean and the next record is written over it.
        let torn_tail = matches!(stopped_by, Stop::Damaged(_)) && pos - sb.acked_index < g.index_slots;
        if repair && torn_tail {
            let off = g.entry_offset(pos) as usize;
            self.storage.bytes_mut()[off..off + ENTRY_BYTES as usize].fill(0);
        }
        if repair && (!holes.is_empty() || torn_tail) {
            self.sync()?;
        }
        self.heads.head_index = pos;
        self.heads.head_data = data;
        self.heads.next_seq = seq;
        Ok(Recovery {
            records: pos - sb.acked_index,
            stopped_by,
            holes,
        })
    }

    fn write_entry(&mut self, e: &Entry) {
        let bytes = e.encode(self.geometry().ring_id);
        let off = self.geometry().entry_offset(e.index_pos) as usize;
        self.storage.bytes_mut()[off..off + ENTRY_BYTES as usize].copy_from_slice(&bytes);
    }

    /// Reserves the next record; fill its payload with [`Ring::payload_mut`], then commit it.
    pub fn reserve(&mut self, kind: Kind, volume: u32, offset: u64, length: u64) -> Result<Reservation, RingError> {
        let entry = self.heads.reserve(kind, volume, offset, length)?;
        Ok(Reservation {
            entry,
            payload_bytes: kind.payload_bytes(length),
        })
    }

    /// The reserved payload's bytes in the ring, to fill in place.
    pub fn payload_mut(&mut self, r: &Reservation) -> &mut [u8] {
        let off = self.geometry().data_offset(r.entry.data_pos) as usize;
        &mut self.storage.bytes_mut()[off..off + r.payload_bytes as usize]
    }

    /// Writes the record's entry; from now on readers and recovery see it.
    pub fn commit(&mut self, mut r: Reservation) -> u64 {
        if r.entry.kind.checks_payload() && r.payload_bytes > 0 {
            let off = self.geometry().data_offset(r.entry.data_pos) as usize;
            r.entry.payload_crc = crc32c::crc32c(&self.storage.bytes()[off..off + r.payload_bytes as usize]);
        }
        self.write_entry(&r.entry);
        r.entry.seq
    }

    /// Appends a whole record (reserve, copy, commit).
    pub fn append(
        &mut self,
        kind: Kind,
        volume: u32,
        offset: u64,
        length: u64,
        payload: &[u8],
    ) -> Result<u64, RingError> {
        assert_eq!(
            payload.len() as u64,
            kind.payload_bytes(length),
            "payload must match the record"
        );
        let r = self.reserve(kind, volume, offset, length)?;
        self.payload_mut(&r).copy_from_slice(payload);
        Ok(self.commit(r))
    }

    /// Makes every committed record durable.
    pub fn sync(&mut self) -> io::Result<()> {
        let len = self.storage.bytes().len();
        self.storage.flush(0..len)
    }

    /// The committed record at `index_pos`, if it is in the journal.
    pub fn read(&self, index_pos: u64) -> Option<Record<'_>> {
        if index_pos < self.heads.sb.acked_index || index_pos >= self.heads.head_index {
            return None;
        }
        let entry = Entry::decode(self.entry_bytes(index_pos), self.geometry().ring_id, index_pos).ok()?;
        Some(Record {
            payload: self.payload(&entry),
            entry,
        })
    }

    /// Index position of the first unacknowledged record, and one past the last reserved.
    pub fn bounds(&self) -> (u64, u64) {
        (self.heads.sb.acked_index, self.heads.head_index)
    }

    /// The superblock in force.
    pub fn superblock(&self) -> Superblock {
        self.heads.sb
    }

    pub fn acked_seq(&self) -> u64 {
        self.heads.sb.acked_seq
    }

    /// Acknowledges every record with a sequence below `seq`: their space is freed and the
    /// new cursor is made durable before this returns.
    pub fn ack(&mut self, seq: u64) -> Result<(), RingError> {
        let h = self.heads;
        let (acked, head) = (h.sb.acked_seq, h.next_seq);
        if seq < acked || seq > head {
            return Err(RingError::BadAck { seq, acked, head });
        }
        let index = h.sb.acked_index + (seq - acked);
        let data = if index < h.head_index {
            match Entry::decode(self.entry_bytes(index), self.geometry().ring_id, index) {
                Ok(e) => e.data_pos,
                // Reserved but not committed: its payload position is not written down yet.
                Err(_) => return Err(RingError::BadAck { seq, acked, head }),
            }
        } else {
            h.head_data
        };
        let sb = h.sb.advanced(seq, index, data.min(h.head_data));
        self.write_superblock(sb)?;
        self.heads.sb = sb;
        Ok(())
    }

    fn write_superblock(&mut self, sb: Superblock) -> io::Result<()> {
        let (range, bytes) = sb.slot_image();
        self.storage.bytes_mut()[range.clone()].copy_from_slice(&bytes);
        self.storage.flush(range)
    }

    pub(crate) fn into_parts(self) -> (S, Heads) {
        (self.storage, self.heads)
    }

    pub fn into_storage(self) -> S {
        self.storage
    }
}

#[cfg(test)]
mod tests;
