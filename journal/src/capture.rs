//! Capture: the order in which a VPG's writes reach the journal, the dirty maps and the
//! datastore, and the recovery rules that make that order crash-safe (DESIGN.md invariants
//! 1, 3 and 4). The agent drives it from the NBD write path; the power-loss property test at
//! the bottom drives the same calls against simulated storage.
//!
//! ## The write path
//!
//! 1. [`Capture::begin`] when the request's header arrives: the record is reserved (its
//!    sequence number is taken, so a write that started after another finished comes after
//!    it). A full journal does not block or fail: the write is *tracked* instead, and the VPG
//!    switches to dirty-region tracking.
//! 2. The payload is read from the socket into the record's slot in the ring.
//! 3. [`Pending::start`], after writes begun earlier to overlapping ranges have finished
//!    (the agent serialises overlaps, so the datastore ends as the journal's order says): the
//!    extents go into the activity log (flushed if new), then the record is committed (or,
//!    tracked, its range marked dirty).
//! 4. The datastore write is issued from the ring slot.
//! 5. [`Pending::finish`]: a failed datastore write marks its range dirty; the slot is
//!    released and the record becomes readable by the consumer once those before it are.
//!
//! So a write that reaches the datastore has, before it is issued: a committed record or a
//! dirty bit (in mapped memory, which a process crash keeps), and its extent flushed in the
//! activity log (which a power loss keeps).
//!
//! ## Recovery rules
//!
//! | # | found at start | rule |
//! |---|---|---|
//! | 1 | the maps say the agent stopped cleanly | nothing to repair; the journal's records are shipped as they are |
//! | 2 | unclean stop (kill -9), journal ends cleanly | records from the last synced settle mark on may not have reached the datastore: their ranges are marked dirty (they are still shipped; the drain then sends what the datastore holds) |
//! | 3 | a hole: a reservation never committed, records after it committed | the hole becomes a void record, the records after it are kept (a hole's datastore write was never issued: commit comes first) |
//! | 4 | the last entry torn (bad checksum) | it is cleared and the journal ends before it (its write was never issued, or rule 6 covers it) |
//! | 5 | a damaged record with good records after it | it becomes a void; its range is marked dirty; an event names it |
//! | 6 | unclean stop and a different boot (power loss) | every extent in the activity log is marked dirty, then rules 2 to 5 |
//! | 7 | a dirty map missing or unreadable | the agent makes a new one with the whole volume dirty, and says so |
//! | 8 | the journal unreadable (no valid superblock) | the agent moves it aside, makes a new one and marks every volume wholly dirty, and says so |
//!
//! ## Write outcomes
//!
//! | # | the datastore I/O | rule |
//! |---|---|---|
//! | 1 | succeeded | the record settles as committed and is shipped |
//! | 2 | failed (ENOSPC, EIO, a failed trim or zero) after the record was committed | [`Capture::finish`] revokes the record (a void, before it settles, so no consumer reads it) and marks its range dirty; a journaling VPG drains, so the range travels as the datastore holds it and no checkpoint is taken until it has: no checkpoint claims bytes the datastore does not hold |
//! | 3 | never issued (the request was abandoned before step 3) | the slot is dropped uncommitted: a void |
//!
//! A crash between a failed I/O and rule 2 is a crash with the write in flight: recovery
//! rule 2 below marks its range dirty and the drain sends what the datastore holds.
//!
//! After recovery a VPG with dirty regions starts in `Draining`: the drain reads the current
//! data of each dirty range from the datastore into a journal record, so the stream carries
//! it, then clears the bits once that record is synced.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::dirty::{DirtyMap, MapRecovery};
use crate::format::Kind;
use crate::journal::{Journal, Slot};
use crate::ring::{Recovery, RingError};
use crate::storage::RingStorage;

/// How a VPG captures writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Every write is a journal record.
    Journaling,
    /// The journal is full: writes only mark dirty regions.
    Tracking,
    /// Writes are journaled again and the dirty regions are being read into the journal.
    Draining,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Journaling => "journaling",
            Mode::Tracking => "bitmap-sync (tracking)",
            Mode::Draining => "bitmap-sync (draining)",
        }
    }
}

/// Something an operator should hear about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureEvent {
    pub mode: Mode,
    pub message: String,
}

/// Ring fill below which a tracking VPG starts draining.
pub const DRAIN_BELOW_FILL: f64 = 0.5;
const EVENTS_MAX: usize = 256;

pub struct Capture<S: RingStorage> {
    journal: Arc<Journal<S>>,
    maps: BTreeMap<u32, Arc<DirtyMap<S>>>,
    mode: Mutex<Mode>,
    events: Mutex<VecDeque<CaptureEvent>>,
    /// The current bitmap-sync episode's drain was announced (one event per episode, not
    /// one per full-journal flap while draining).
    drain_announced: std::sync::atomic::AtomicBool,
    /// Where the drain goes on in each volume (so a large map is scanned once per pass,
    /// not once per range).
    drain_from: Mutex<BTreeMap<u32, u64>>,
    /// Tracked writes begun whose dirty bits are not marked yet: the drain does not call a
    /// bitmap-sync episode over while there are any.
    marking: Arc<std::sync::atomic::AtomicU64>,
}

impl<S: RingStorage> std::fmt::Debug for Capture<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture").field("mode", &self.mode()).finish()
    }
}

/// What recovery found and did, for the log and the operator.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CaptureRecovery {
    pub records: u64,
    pub voids: u64,
    pub damaged: Vec<String>,
    /// Records from the settle mark on whose ranges were marked dirty (rule 2).
    pub unsettled_marked: u64,
    /// Activity-log extents marked dirty after a reboot (rule 6).
    pub extents_marked: u64,
    pub was_clean: bool,
    pub rebooted: bool,
    /// Records naming a volume the VPG does not have.
    pub foreign: u64,
}

impl<S: RingStorage> Capture<S> {
    /// A VPG with a fresh journal and fresh maps: nothing to recover.
    pub fn new(journal: Arc<Journal<S>>, maps: BTreeMap<u32, Arc<DirtyMap<S>>>) -> Capture<S> {
        let dirty = maps.values().any(|m| m.dirty_bytes() > 0);
        Capture {
            journal,
            maps,
            mode: Mutex::new(if dirty { Mode::Draining } else { Mode::Journaling }),
            events: Mutex::new(VecDeque::new()),
            drain_announced: std::sync::atomic::AtomicBool::new(false),
            drain_from: Mutex::new(BTreeMap::new()),
            marking: Arc::default(),
        }
    }

    /// Applies the recovery rules to a journal and maps just opened (see the module docs).
    pub fn recover(
        journal: Arc<Journal<S>>,
        journal_recovery: &Recovery,
        maps: BTreeMap<u32, (Arc<DirtyMap<S>>, MapRecovery)>,
    ) -> (Capture<S>, CaptureRecovery) {
        let mut rep = CaptureRecovery {
            records: journal_recovery.records,
            voids: journal_recovery.holes.len() as u64,
            was_clean: maps.values().all(|(_, r)| r.was_clean),
            rebooted: maps.values().any(|(_, r)| r.rebooted),
            extents_marked: maps.values().map(|(_, r)| r.extents_marked).sum(),
            ..Default::default()
        };
        let settled = maps.values().map(|(_, r)| r.settled_seq).min().unwrap_or(0);
        let maps: BTreeMap<u32, Arc<DirtyMap<S>>> = maps.into_iter().map(|(v, (m, _))| (v, m)).collect();
        for h in &journal_recovery.holes {
            if let Some(e) = &h.damaged {
                rep.damaged.push(format!(
                    "sequence {} ({} of volume {} at {}, {} bytes): {}",
                    h.seq,
                    e.kind.name(),
                    e.volume,
                    e.offset,
                    e.length,
                    h.why
                ));
                if let Some(m) = maps.get(&e.volume) {
                    m.mark(e.offset, e.length);
                }
            }
        }
        if !rep.was_clean {
            let mut cons = journal.consumer().expect("no consumer before recovery ends");
            while let Some(r) = cons.next_record() {
                let e = r.entry;
                if !matches!(e.kind, Kind::Write | Kind::Trim | Kind::WriteZeroes) {
                    continue;
                }
                match maps.get(&e.volume) {
                    Some(m) if e.seq >= settled => {
                        m.mark(e.offset, e.length);
                        rep.unsettled_marked += 1;
                    }
                    Some(_) => {}
                    None => rep.foreign += 1,
                }
            }
        }
        let cap = Capture::new(journal, maps);
        if cap.mode() == Mode::Draining {
            cap.drain_announced.store(true, std::sync::atomic::Ordering::Relaxed);
            cap.event(format!(
                "recovered with {} dirty: draining it into the journal",
                crate::dirty::human_bytes(cap.dirty_bytes())
            ));
        }
        (cap, rep)
    }

    pub fn journal(&self) -> &Arc<Journal<S>> {
        &self.journal
    }

    pub fn map(&self, volume: u32) -> Option<&Arc<DirtyMap<S>>> {
        self.maps.get(&volume)
    }

    pub fn maps(&self) -> &BTreeMap<u32, Arc<DirtyMap<S>>> {
        &self.maps
    }

    fn mode_lock(&self) -> MutexGuard<'_, Mode> {
        self.mode.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn mode(&self) -> Mode {
        *self.mode_lock()
    }

    fn event(&self, message: String) {
        let mut ev = self.events.lock().unwrap_or_else(|e| e.into_inner());
        if ev.back().is_some_and(|last| last.message == message) {
            return; // the same thing again: once is enough until something else happens
        }
        if ev.len() == EVENTS_MAX {
            ev.pop_front();
        }
        ev.push_back(CaptureEvent {
            mode: self.mode(),
            message,
        });
    }

    /// Events raised since the last call (oldest first; at most 256 are kept).
    pub fn take_events(&self) -> Vec<CaptureEvent> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect()
    }

    fn switch(&self, to: Mode, why: String) {
        self.switch_quietly(to, Some(why));
    }

    /// Changes mode; raises an event only with `why`.
    fn switch_quietly(&self, to: Mode, why: Option<String>) {
        let mut m = self.mode_lock();
        if *m == to {
            return;
        }
        *m = to;
        drop(m);
        if let Some(why) = why {
            self.event(why);
        }
    }

    /// Bytes marked dirty and not yet drained, over all volumes.
    pub fn dirty_bytes(&self) -> u64 {
        self.maps.values().map(|m| m.dirty_bytes()).sum()
    }

    /// Step 1 for a write whose offset is not known yet (its header has not been read: the
    /// caller guesses that a write of `length` bytes comes next). Only while journaling and
    /// only if the journal has room; never switches modes or raises events. The offset is
    /// set with [`Pending::place`] once known.
    pub fn speculate(&self, volume: u32, length: u64) -> Option<Pending<S>> {
        if self.mode() != Mode::Journaling {
            return None;
        }
        let slot = self.journal.reserve(Kind::Write, volume, 0, length).ok()?;
        Some(Pending {
            slot: Some(slot),
            map: self.maps[&volume].clone(),
            offset: 0,
            length,
            started: false,
            marking: None,
        })
    }

    /// Step 1 of the write path for a write, trim or write-zeroes: reserve the record, or
    /// track the write if the journal cannot take it. `volume` must be one of the VPG's.
    pub fn begin(&self, kind: Kind, volume: u32, offset: u64, length: u64) -> Pending<S> {
        let map = self.maps[&volume].clone();
        let slot = if self.mode() == Mode::Tracking {
            None
        } else {
            match self.journal.reserve(kind, volume, offset, length) {
                Ok(s) => Some(s),
                Err(RingError::Full(_)) if self.mode() == Mode::Draining => {
                    // The episode goes on: the drain resumes when there is room again.
                    self.switch_quietly(Mode::Tracking, None);
                    None
                }
                Err(e @ RingError::Full(_)) => {
                    let st = self.journal.stats();
                    self.switch(
                        Mode::Tracking,
                        format!(
                            "journal full ({e}; {} of {} in use, {} records unacknowledged): tracking dirty regions until the consumer catches up",
                            crate::dirty::human_bytes(st.data_used_bytes),
                            crate::dirty::human_bytes(st.data_bytes),
                            st.index_used
                        ),
                    );
                    None
                }
                Err(e) => {
                    // Worded without the write's details, so a stream of them is one event.
                    // The region is read back into the journal in pieces by the drain;
                    // until then no checkpoint is consistent, so the VPG drains.
                    self.event(format!(
                        "a write cannot be journaled whole ({e}): tracked as a dirty region and read back in pieces"
                    ));
                    if self.mode() == Mode::Journaling {
                        self.switch_quietly(Mode::Draining, None);
                    }
                    None
                }
            }
        };
        let marking = slot.is_none().then(|| {
            self.marking.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            self.marking.clone()
        });
        Pending {
            slot,
            map,
            offset,
            length,
            started: false,
            marking,
        }
    }

    /// Step 5 of the write path: the datastore I/O finished, or failed with `failure`
    /// (ENOSPC, EIO, a failed trim or zero). A failed write's record is revoked before it
    /// settles, so it is never shipped; its range is marked dirty and the VPG drains, so
    /// the region travels as the datastore holds it, before the next checkpoint (outcome
    /// row 2 in the module docs).
    pub fn finish(&self, p: Pending<S>, failure: Option<&str>) {
        let Some(why) = failure else { return };
        if !p.started {
            return; // never committed: dropping the slot voids it
        }
        let mut p = p;
        let kind = p.slot.as_ref().map(|s| s.entry().kind);
        if let Some(s) = &mut p.slot {
            s.revoke();
        }
        p.map.mark(p.offset, p.length);
        let volume = p.map.header().volume;
        drop(p);
        self.event(format!(
            "{} to volume {volume} failed at the datastore ({why}): not shipped; the region is read back from the datastore before the next checkpoint",
            kind.map_or("a tracked write", |k| k.name())
        ));
        if self.mode() == Mode::Journaling {
            self.drain_announced.store(true, std::sync::atomic::Ordering::Relaxed);
            self.switch_quietly(Mode::Draining, None);
        }
    }

    /// Appends a checkpoint marker: a point in the VPG's one sequence. Refused while dirty
    /// regions are pending, when the stream alone would not be consistent at that point.
    pub fn checkpoint(&self, time_ns: u64, tag: &str) -> Result<u64, CheckpointError> {
        if self.mode() != Mode::Journaling {
            return Err(CheckpointError::NotJournaling(self.mode()));
        }
        if tag.len() > crate::format::TAG_BYTES_MAX {
            return Err(CheckpointError::TagTooLong(tag.len()));
        }
        let slot = self
            .journal
            .append(Kind::Checkpoint, 0, time_ns, tag.len() as u64, tag.as_bytes())
            .map_err(CheckpointError::Journal)?;
        Ok(slot.seq())
    }

    /// Marks every block of every volume dirty and drains them all into the journal (a
    /// full sync, when the recovery site lost what the journal had already released).
    pub fn resync_all(&self, why: String) {
        for m in self.maps.values() {
            m.mark_all();
        }
        self.drain_marked(why);
    }

    /// Drains the dirty regions marked so far (e.g. by a delta sync's comparison) into the
    /// journal before the next checkpoint.
    pub fn drain_marked(&self, why: String) {
        self.drain_from.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.drain_announced.store(true, std::sync::atomic::Ordering::Relaxed);
        self.switch(Mode::Draining, why);
    }

    /// The next dirty range to drain (volume, offset, length), switching a tracking VPG to
    /// draining once the journal has room, and a draining VPG back to journaling when
    /// nothing is left.
    pub fn drain_next(&self, max_bytes: u64) -> Option<(u32, u64, u64)> {
        match self.mode() {
            Mode::Journaling => return None,
            Mode::Tracking => {
                let st = self.journal.stats();
                if st.fill() >= DRAIN_BELOW_FILL {
                    return None;
                }
                use std::sync::atomic::Ordering::Relaxed;
                let first = !self.drain_announced.swap(true, Relaxed);
                self.switch_quietly(
                    Mode::Draining,
                    first.then(|| {
                        format!(
                            "journal below {:.0}% full: draining {} of dirty regions",
                            DRAIN_BELOW_FILL * 100.0,
                            crate::dirty::human_bytes(self.dirty_bytes())
                        )
                    }),
                );
            }
            Mode::Draining => {}
        }
        // A quarter of the ring at most, so a drained range always fits once it has room.
        let max_bytes = max_bytes.min(self.journal.geometry().data_bytes / 4);
        let mut from = self.drain_from.lock().unwrap_or_else(|e| e.into_inner());
        for (&v, m) in &self.maps {
            let at = from.get(&v).copied().unwrap_or(0);
            let next = m
                .next_dirty(at, max_bytes)
                .or_else(|| (at > 0).then(|| m.next_dirty(0, max_bytes)).flatten());
            if let Some((off, len)) = next {
                from.insert(v, off + len);
                return Some((v, off, len));
            }
        }
        if self.marking.load(std::sync::atomic::Ordering::Acquire) > 0 {
            // A tracked write is about to mark its range: not over yet.
            return None;
        }
        self.drain_announced.store(false, std::sync::atomic::Ordering::Relaxed);
        self.switch(
            Mode::Journaling,
            "dirty regions drained: every write is journaled again".into(),
        );
        None
    }

    /// Reserves the record a drained range is read into (after earlier writes to the range
    /// finished). A full journal switches back to tracking.
    pub fn drain_reserve(&self, volume: u32, offset: u64, length: u64) -> Option<Slot<S>> {
        match self.journal.reserve(Kind::Write, volume, offset, length) {
            Ok(s) => Some(s),
            Err(_) => {
                // Expected while the consumer catches up: no event, the episode goes on.
                self.switch_quietly(Mode::Tracking, None);
                None
            }
        }
    }

    /// Commits a drained range's record (its payload read from the datastore); its dirty
    /// bits clear once the record is synced.
    pub fn drain_commit(&self, mut slot: Slot<S>) {
        slot.commit();
        let e = *slot.entry();
        self.maps[&e.volume].clear_later(e.offset, e.length, e.seq);
    }

    /// Starts a sync: afterwards wait until [`Capture::sync_ready`], make the datastores
    /// durable (writes tracked before this call included), then [`Capture::sync_finish`].
    pub fn sync_begin(&self) -> SyncPoint {
        for m in self.maps.values() {
            m.sync_begin();
        }
        SyncPoint {
            seq: self.journal.stats().next_seq,
        }
    }

    /// Every record reserved before the sync point has finished.
    pub fn sync_ready(&self, p: SyncPoint) -> bool {
        self.journal.stats().settled_seq >= p.seq
    }

    pub fn sync_finish(&self, p: SyncPoint) -> io::Result<()> {
        self.journal.sync()?;
        for m in self.maps.values() {
            m.sync_finish(p.seq)?;
        }
        Ok(())
    }

    /// A clean stop: call with nothing in flight, after a last sync.
    pub fn close_clean(&self) -> io::Result<()> {
        self.journal.sync()?;
        for m in self.maps.values() {
            m.close_clean()?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncPoint {
    pub seq: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(
        "the VPG is in {}: a checkpoint now would not be consistent; retry once it is journaling again",
        .0.name()
    )]
    NotJournaling(Mode),
    #[error("checkpoint tag is {0} bytes; at most 256")]
    TagTooLong(usize),
    #[error("journal: {0}")]
    Journal(RingError),
}

/// A write between [`Capture::begin`] and [`Pending::finish`].
pub struct Pending<S: RingStorage> {
    slot: Option<Slot<S>>,
    map: Arc<DirtyMap<S>>,
    offset: u64,
    length: u64,
    started: bool,
    /// A tracked write's share of [`Capture`]'s count of unmarked writes.
    marking: Option<Arc<std::sync::atomic::AtomicU64>>,
}

impl<S: RingStorage> Drop for Pending<S> {
    fn drop(&mut self) {
        if let Some(m) = self.marking.take() {
            m.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        }
    }
}

impl<S: RingStorage> std::fmt::Debug for Pending<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("slot", &self.slot)
            .field("offset", &self.offset)
            .field("length", &self.length)
            .finish()
    }
}

impl<S: RingStorage> Pending<S> {
    /// The journal slot (its payload is where the write's data goes); `None` when tracked.
    pub fn slot(&self) -> Option<&Slot<S>> {
        self.slot.as_ref()
    }

    pub fn slot_mut(&mut self) -> Option<&mut Slot<S>> {
        self.slot.as_mut()
    }

    pub fn is_journaled(&self) -> bool {
        self.slot.is_some()
    }

    /// Bytes the write covers.
    pub fn length(&self) -> u64 {
        self.length
    }

    /// The write of a reservation from [`Capture::speculate`] is at `offset`.
    pub fn place(&mut self, offset: u64) {
        assert!(!self.started, "placed before it starts");
        self.offset = offset;
        if let Some(s) = &mut self.slot {
            s.set_offset(offset);
        }
    }

    /// Step 3: right before the datastore I/O. An error flushing the activity log is
    /// returned after the record is committed or the range marked (a process crash is
    /// still covered); the caller logs it and goes on with the write.
    pub fn start(&mut self) -> io::Result<()> {
        self.started = true;
        let al = self.map.activate(self.offset, self.length);
        match &mut self.slot {
            Some(s) => s.commit(),
            None => self.map.mark(self.offset, self.length),
        }
        if let Some(m) = self.marking.take() {
            m.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        }
        al
    }
}

#[cfg(test)]
mod tests;
