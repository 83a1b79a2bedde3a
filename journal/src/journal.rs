//! The journal ring shared by many writers and one consumer: the form the agent uses.
//!
//! Writers reserve a record ([`Journal::reserve`]: its sequence number, index slot and
//! payload space are taken at once, under a short lock), fill the payload in place through
//! the [`Slot`] from any thread, commit it (the entry is written with the payload's
//! checksum, without the lock) and release it when the datastore write issued from the same
//! memory has finished (dropping the slot). Records commit out of order; a slot dropped
//! without commit becomes a void record, so the sequence has no holes.
//!
//! The consumer ([`Consumer`]) sees the *settled* prefix: records released in order, whose
//! memory no writer and no datastore I/O touches any more. It acknowledges up to a sequence
//! number; only then is space reused, and the new cursor is durable before `ack` returns.
//! Memory that a reservation, a datastore write or the consumer reads is never handed out
//! again before the acknowledgement, so the map is shared without copies.
//!
//! Where a write's bytes are copied (protected site): once, by the kernel, from the client's
//! socket into the slot's payload in the mapped ring. The datastore write is issued from
//! that memory (io_uring or `pwritev2`), the checksum is computed over it, and the consumer
//! reads it in place. Nothing else copies it. One exception: the NBD server reads small
//! writes a batch at a time into slots reserved on a guess (the next request is a write of
//! the same length); when the guess is wrong, the bytes that landed in the guessed slots
//! are copied back into the server's request buffer, and a write among them is copied
//! from there into its own slot. A reservation that is dropped uncommitted while it is
//! still the newest is taken back whole (no void record).
//!
//! Page cache, for a mapped file: payloads the consumer acknowledged are dropped from the
//! page cache unwritten ([`RingStorage::discard`]), so the kernel does not spend disk
//! bandwidth and CPU writing back bytes nobody needs; a helper thread maps the pages ahead
//! of the head again ([`Journal::prefault`]), so the writers' stores do not fault.
//!
//! Locks, in the order they may be taken: `acking` (one acknowledgement at a time) →
//! `storage` → `state`. `storage` is held across msync: it is the flush token (a sync and
//! an acknowledgement's superblock write must not interleave); writers never take it, they
//! fill their slots through the mapping and take only `state`, briefly.

use std::collections::VecDeque;
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::format::{ENTRY_BYTES, Entry, Geometry, Kind};
use crate::ring::{Heads, Record, Recovery, Ring, RingError, padded};
use crate::storage::RingStorage;

/// Reservations that may be outstanding (reserved, not yet released) at once: as many 4 KiB
/// writes as one connection's default in-flight budget holds. Beyond it writes are tracked
/// as dirty regions. Recovery looks twice this far past a hole for records committed
/// after it.
pub const OUTSTANDING_MAX: u64 = crate::ring::LOOKAHEAD_SLOTS / 2;

/// Payload space ahead of the head that [`Journal::prefault`] keeps mapped: about 30 ms of
/// writes at 2 GB/s.
pub const PREFAULT_AHEAD_BYTES: u64 = 64 << 20;
/// Most bytes one [`Journal::prefault`] call maps.
const PREFAULT_STEP_BYTES: u64 = 4 << 20;

#[derive(Debug, Clone, Copy)]
struct Open {
    done: bool,
    data_pos: u64,
    /// The data head before this reservation (its payload may start later, at the next
    /// lap, when it did not fit before the end of this one).
    head_before: u64,
}

#[derive(Debug)]
struct State {
    heads: Heads,
    /// Index positions from `settled` to the head: released yet or not, and where their
    /// payload starts.
    open: VecDeque<Open>,
    settled: u64,
}

/// Counters for status displays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalStats {
    pub acked_seq: u64,
    /// Records below this sequence are settled (readable by the consumer).
    pub settled_seq: u64,
    /// The sequence the next record gets.
    pub next_seq: u64,
    pub data_used_bytes: u64,
    pub data_bytes: u64,
    pub index_used: u64,
    pub index_slots: u64,
}

impl JournalStats {
    /// Fraction of the ring in use (the larger of data and index use), 0.0 to 1.0.
    pub fn fill(&self) -> f64 {
        (self.data_used_bytes as f64 / self.data_bytes as f64).max(self.index_used as f64 / self.index_slots as f64)
    }
}

pub struct Journal<S: RingStorage> {
    geometry: Geometry,
    base: NonNull<u8>,
    len: usize,
    storage: Mutex<S>,
    state: Mutex<State>,
    acking: Mutex<()>,
    consumer_taken: AtomicBool,
    /// The storage faults on first stores, and the kernel takes `MADV_POPULATE_WRITE`.
    prefault_on: AtomicBool,
    /// Data position up to which [`Journal::prefault`] has mapped the pages.
    prefaulted: AtomicU64,
}

// SAFETY: the raw map is only written at ranges owned by one slot (reserved to it until
// released), by the entry/superblock writers under `acking`, and read by the consumer at
// settled, unacknowledged ranges; every hand-over goes through `state`'s lock.
unsafe impl<S: RingStorage + Send> Send for Journal<S> {}
unsafe impl<S: RingStorage + Send> Sync for Journal<S> {}

impl<S: RingStorage> std::fmt::Debug for Journal<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("geometry", &self.geometry).finish()
    }
}

impl<S: RingStorage> Journal<S> {
    /// Formats `storage` as an empty journal.
    pub fn create(storage: S, geometry: Geometry) -> Result<Arc<Journal<S>>, RingError> {
        Ok(Self::from_ring(Ring::create(storage, geometry)?))
    }

    /// Opens a journal and recovers its records (see [`Ring::open`]).
    pub fn open(storage: S) -> Result<(Arc<Journal<S>>, Recovery), RingError> {
        let (ring, recovery) = Ring::open(storage)?;
        Ok((Self::from_ring(ring), recovery))
    }

    fn from_ring(ring: Ring<S>) -> Arc<Journal<S>> {
        let (mut storage, heads) = ring.into_parts();
        let prefault_on = AtomicBool::new(storage.faults_on_first_store());
        let bytes = storage.bytes_mut();
        let len = bytes.len();
        let base = NonNull::new(bytes.as_mut_ptr()).expect("a slice pointer is not null");
        Arc::new(Journal {
            geometry: heads.sb.geometry,
            base,
            len,
            storage: Mutex::new(storage),
            state: Mutex::new(State {
                heads,
                open: VecDeque::new(),
                settled: heads.head_index,
            }),
            acking: Mutex::new(()),
            consumer_taken: AtomicBool::new(false),
            prefault_on,
            prefaulted: AtomicU64::new(0),
        })
    }

    /// Maps the next pages of free payload space ahead of the head, up to
    /// [`PREFAULT_AHEAD_BYTES`] (at most 4 MiB a call), so that the writers' stores into
    /// their slots find them mapped and writable: the page fault, with its allocation and
    /// zeroing, happens on the caller's thread instead of a writer's. Run it from a helper
    /// thread, again while it returns `true`. Only free space is touched (never a page that
    /// holds a record, nor one an acknowledgement is still discarding), and mapping a page
    /// does not change its bytes, so it races with nobody.
    pub fn prefault(&self) -> bool {
        if !self.prefault_on.load(Ordering::Relaxed) {
            return false;
        }
        let (head, free_end) = {
            let st = self.state();
            (st.heads.head_data, st.heads.sb.acked_data + self.geometry.data_bytes)
        };
        let from = self.prefaulted.load(Ordering::Relaxed).max(head);
        let to = free_end
            .min(head + PREFAULT_AHEAD_BYTES)
            .min(from + PREFAULT_STEP_BYTES);
        if from >= to {
            return false;
        }
        for r in self.geometry.data_ranges(from, to) {
            let ptr = self.ptr(r.start as u64, r.len());
            // SAFETY: a page-aligned range inside the map (data positions and the data
            // ring's start are 4 KiB-aligned); populating changes no byte.
            let done = unsafe { rustix::mm::madvise(ptr.cast(), r.len(), rustix::mm::Advice::LinuxPopulateWrite) };
            if done.is_err() {
                // A kernel before 5.14: the writers fault, as without this.
                self.prefault_on.store(false, Ordering::Relaxed);
                return false;
            }
        }
        self.prefaulted.store(to, Ordering::Relaxed);
        true
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    fn ptr(&self, off: u64, len: usize) -> *mut u8 {
        assert!(off as usize + len <= self.len, "journal access out of the map");
        // SAFETY: in bounds of the map, checked above.
        unsafe { self.base.as_ptr().add(off as usize) }
    }

    fn write_bytes(&self, off: u64, bytes: &[u8]) {
        // SAFETY: in bounds; the caller owns the range (see the type's SAFETY note).
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr(off, bytes.len()), bytes.len()) }
    }

    fn read_entry(&self, index_pos: u64) -> [u8; ENTRY_BYTES as usize] {
        let mut out = [0u8; ENTRY_BYTES as usize];
        let src = self.ptr(self.geometry.entry_offset(index_pos), out.len());
        // SAFETY: in bounds; the entry of a settled record is no longer written.
        unsafe { std::ptr::copy_nonoverlapping(src, out.as_mut_ptr(), out.len()) };
        out
    }

    fn write_entry(&self, e: &Entry) {
        self.write_bytes(
            self.geometry.entry_offset(e.index_pos),
            &e.encode(self.geometry.ring_id),
        );
    }

    /// Reserves the next record: its sequence number is taken now, so a write reserved after
    /// another completed comes after it.
    pub fn reserve(self: &Arc<Self>, kind: Kind, volume: u32, offset: u64, length: u64) -> Result<Slot<S>, RingError> {
        let mut st = self.state();
        if st.open.len() as u64 >= OUTSTANDING_MAX {
            return Err(RingError::Full("outstanding reservations"));
        }
        let head_before = st.heads.head_data;
        let entry = st.heads.reserve(kind, volume, offset, length)?;
        st.open.push_back(Open {
            done: false,
            data_pos: entry.data_pos,
            head_before,
        });
        drop(st);
        Ok(Slot {
            journal: self.clone(),
            entry,
            committed: false,
        })
    }

    /// Reserves, fills and commits a record whose payload is at hand (checkpoints, and
    /// records without payload); it settles when the returned slot is dropped.
    pub fn append(
        self: &Arc<Self>,
        kind: Kind,
        volume: u32,
        offset: u64,
        length: u64,
        payload: &[u8],
    ) -> Result<Slot<S>, RingError> {
        assert_eq!(
            payload.len() as u64,
            kind.payload_bytes(length),
            "payload must match the record"
        );
        let mut slot = self.reserve(kind, volume, offset, length)?;
        slot.payload_mut().copy_from_slice(payload);
        slot.commit();
        Ok(slot)
    }

    /// Undoes the newest reservation, if `entry` is it. The data head goes back to where
    /// it was before the reservation, so the next payload goes where recovery expects it
    /// (right after the last one, when it fits before the lap's end), but not behind the
    /// acknowledged position: where the reservation skipped the end of a lap, an
    /// acknowledgement may already have moved that position to its payload's start (it
    /// was the first unacknowledged payload), and recovery then expects the next one there.
    fn take_back(&self, entry: &Entry) -> bool {
        let mut st = self.state();
        if entry.index_pos + 1 != st.heads.head_index {
            return false;
        }
        let open = st.open.pop_back().expect("the newest reservation is open");
        debug_assert_eq!(open.data_pos, entry.data_pos);
        st.heads.head_index -= 1;
        st.heads.next_seq -= 1;
        st.heads.head_data = open.head_before.max(st.heads.sb.acked_data);
        true
    }

    fn release(&self, index_pos: u64) {
        let mut st = self.state();
        let i = (index_pos - st.settled) as usize;
        st.open[i].done = true;
        while st.open.front().is_some_and(|o| o.done) {
            st.open.pop_front();
            st.settled += 1;
        }
    }

    pub fn stats(&self) -> JournalStats {
        let st = self.state();
        let h = &st.heads;
        let seq_of = |index: u64| h.sb.acked_seq + (index - h.sb.acked_index);
        JournalStats {
            acked_seq: h.sb.acked_seq,
            settled_seq: seq_of(st.settled),
            next_seq: h.next_seq,
            data_used_bytes: h.data_used(),
            data_bytes: self.geometry.data_bytes,
            index_used: h.head_index - h.sb.acked_index,
            index_slots: self.geometry.index_slots,
        }
    }

    /// Makes every committed record durable (msync of the whole map: only dirty pages are
    /// written).
    pub fn sync(&self) -> io::Result<()> {
        let mut s = self.storage.lock().unwrap_or_else(|e| e.into_inner());
        s.flush(0..self.len)
    }

    /// Runs `f` on the storage (tests take crash images this way).
    pub fn with_storage<R>(&self, f: impl FnOnce(&S) -> R) -> R {
        f(&self.storage.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The one consumer; `None` if it was taken and not dropped.
    pub fn consumer(self: &Arc<Self>) -> Option<Consumer<S>> {
        if self.consumer_taken.swap(true, Ordering::AcqRel) {
            return None;
        }
        let next = self.state().heads.sb.acked_index;
        Some(Consumer {
            journal: self.clone(),
            next,
        })
    }

    /// Acknowledges every record below `seq`: durable before it returns, space reused after.
    fn ack(&self, seq: u64) -> Result<(), RingError> {
        let _one = self.acking.lock().unwrap_or_else(|e| e.into_inner());
        let (before, sb) = {
            let st = self.state();
            let h = &st.heads;
            let settled_seq = h.sb.acked_seq + (st.settled - h.sb.acked_index);
            if seq < h.sb.acked_seq || seq > settled_seq {
                return Err(RingError::BadAck {
                    seq,
                    acked: h.sb.acked_seq,
                    head: settled_seq,
                });
            }
            let index = h.sb.acked_index + (seq - h.sb.acked_seq);
            let data = if index < st.settled {
                Entry::decode(&self.read_entry(index), self.geometry.ring_id, index)
                    .map_err(|e| io::Error::other(format!("journal entry {index} damaged in memory: {e}")))?
                    .data_pos
            } else {
                st.open.front().map_or(h.head_data, |o| o.data_pos)
            };
            (h.sb.acked_data, h.sb.advanced(seq, index, data))
        };
        let (range, image) = sb.slot_image();
        self.write_bytes(range.start as u64, &image);
        let mut storage = self.storage.lock().unwrap_or_else(|e| e.into_inner());
        storage.flush(range)?;
        // The freed payloads are dropped before writers may reserve them again.
        for r in self.geometry.data_ranges(before, sb.acked_data) {
            storage.discard(r);
        }
        drop(storage);
        self.state().heads.sb = sb;
        Ok(())
    }

    /// The settled record at `index_pos`.
    fn read(&self, index_pos: u64) -> Option<Record<'_>> {
        {
            let st = self.state();
            if index_pos < st.heads.sb.acked_index || index_pos >= st.settled {
                return None;
            }
        }
        let entry = Entry::decode(&self.read_entry(index_pos), self.geometry.ring_id, index_pos).ok()?;
        let len = entry.kind.payload_bytes(entry.length) as usize;
        let ptr = self.ptr(self.geometry.data_offset(entry.data_pos), len);
        // SAFETY: a settled, unacknowledged record's payload is written by no one until the
        // consumer acknowledges it, which needs `&mut Consumer` (so this borrow has ended).
        let payload = unsafe { std::slice::from_raw_parts(ptr, len) };
        Some(Record { entry, payload })
    }
}

/// A reserved record. Fill the payload, [`Slot::commit`], issue the datastore write from
/// [`Slot::payload`]; dropping the slot releases it (uncommitted: as a void record).
pub struct Slot<S: RingStorage> {
    journal: Arc<Journal<S>>,
    entry: Entry,
    committed: bool,
}

impl<S: RingStorage> std::fmt::Debug for Slot<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("entry", &self.entry)
            .field("committed", &self.committed)
            .finish()
    }
}

// SAFETY: the slot's payload range is its own until it is dropped (see `Journal`).
unsafe impl<S: RingStorage + Send> Send for Slot<S> {}
unsafe impl<S: RingStorage + Send> Sync for Slot<S> {}

impl<S: RingStorage> Slot<S> {
    pub fn seq(&self) -> u64 {
        self.entry.seq
    }

    pub fn entry(&self) -> &Entry {
        &self.entry
    }

    fn payload_ptr(&self) -> (*mut u8, usize) {
        let len = self.entry.kind.payload_bytes(self.entry.length) as usize;
        (
            self.journal
                .ptr(self.journal.geometry.data_offset(self.entry.data_pos), len),
            len,
        )
    }

    /// The payload in the ring (4 KiB-aligned).
    pub fn payload(&self) -> &[u8] {
        let (ptr, len) = self.payload_ptr();
        // SAFETY: the range is reserved to this slot until it is dropped.
        unsafe { std::slice::from_raw_parts(ptr, len) }
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let (ptr, len) = self.payload_ptr();
        // SAFETY: as above; `&mut self` makes this the only view.
        unsafe { std::slice::from_raw_parts_mut(ptr, len) }
    }

    /// Sets the volume offset the record is for: a reservation made before its write's
    /// offset was known (a guess, see the agent's volume docs). Before `commit`.
    pub fn set_offset(&mut self, offset: u64) {
        assert!(!self.committed, "a committed record's offset is fixed");
        self.entry.offset = offset;
    }

    /// Writes the record's entry (with its payload checksum): from now on recovery finds it.
    /// Call it before the datastore write is issued.
    pub fn commit(&mut self) {
        if self.committed {
            return;
        }
        if self.entry.kind.checks_payload() {
            self.entry.payload_crc = crc32c::crc32c(self.payload());
        }
        self.journal.write_entry(&self.entry);
        self.committed = true;
    }

    pub fn is_committed(&self) -> bool {
        self.committed
    }

    /// Takes a committed record back before it settles: its entry becomes a void, so no
    /// consumer ever reads it (a record settles, and becomes readable, only when its slot
    /// is dropped). For a write whose datastore I/O failed: the journal must not claim
    /// bytes the datastore does not hold.
    pub fn revoke(&mut self) {
        let void = self.void();
        self.journal.write_entry(&void);
        self.entry = void;
        self.committed = true;
    }

    /// The record as a void: same place and space, nothing to apply.
    fn void(&self) -> Entry {
        Entry {
            kind: Kind::Void,
            length: padded(self.entry.kind.payload_bytes(self.entry.length)),
            offset: 0,
            volume: 0,
            payload_crc: 0,
            ..self.entry
        }
    }
}

impl<S: RingStorage> Drop for Slot<S> {
    /// Releases the slot. Uncommitted, it is taken back if it is still the newest
    /// reservation (nothing of it was written: its sequence number, index slot and payload
    /// space go to the next one), else it becomes a void record, so the sequence keeps no
    /// hole.
    fn drop(&mut self) {
        if !self.committed && self.journal.take_back(&self.entry) {
            return;
        }
        if !self.committed {
            self.journal.write_entry(&self.void());
        }
        self.journal.release(self.entry.index_pos);
    }
}

/// Reads settled records in order and acknowledges them.
#[derive(Debug)]
pub struct Consumer<S: RingStorage> {
    journal: Arc<Journal<S>>,
    next: u64,
}

impl<S: RingStorage> Consumer<S> {
    /// The next settled record, if there is one.
    pub fn next_record(&mut self) -> Option<Record<'_>> {
        let r = self.journal.read(self.next)?;
        self.next += 1;
        Some(r)
    }

    /// Acknowledges every record with a sequence below `seq`.
    pub fn ack(&mut self, seq: u64) -> Result<(), RingError> {
        self.journal.ack(seq)?;
        let acked_index = self.journal.state().heads.sb.acked_index;
        self.next = self.next.max(acked_index);
        Ok(())
    }

    /// Starts reading again at the first unacknowledged record (a shipper's reconnect).
    pub fn rewind(&mut self) {
        self.next = self.journal.state().heads.sb.acked_index;
    }

    pub fn journal(&self) -> &Arc<Journal<S>> {
        &self.journal
    }
}

impl<S: RingStorage> Drop for Consumer<S> {
    fn drop(&mut self) {
        self.journal.consumer_taken.store(false, Ordering::Release);
    }
}

/// The superblock a journal would write next; for tests.
#[cfg(test)]
fn superblock<S: RingStorage>(j: &Journal<S>) -> crate::format::Superblock {
    j.state().heads.sb
}

#[cfg(test)]
mod tests;
