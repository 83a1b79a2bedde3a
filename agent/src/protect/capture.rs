//! Capture of a VPG's writes, as the NBD write path sees it: each write takes its place in
//! the order ([`crate::protect::ordering`]) and its journal record (or, journal full, its
//! dirty bits), then the datastore I/O is issued from the record's own memory, then its
//! outcome settles the record (see `ferry_journal::capture` for the rules). A failed
//! datastore I/O is kept here for the VPG's state; the throttle's hold is applied here.
//!
//! [`VpgCapture`] is the part of a VPG the write path needs, so volumes do not depend on
//! the rest of the VPG (its ticker, drain, shipping state and status).

use std::io;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ferry_journal::{Capture, Kind, MmapStorage, Mode, Pending};
use serde::{Deserialize, Serialize};
use tracing::{error, warn};

use crate::clock::now_ms;
use crate::events::EventLog;
use crate::io::{AlignedBuf, BufPool};
use crate::protect::ordering::{Inflight, Ticket};

/// Longest a write is held by the throttle: past it, it goes on (a stalled recovery site
/// must not stall the application for longer).
pub const HOLD_MAX: Duration = Duration::from_secs(10);

/// How long a datastore failure stays in a VPG's state after the last one.
const DATASTORE_ERROR_SHOWN: Duration = Duration::from_secs(60);

/// A member's datastore I/O failed (the client got the error; nothing of it was shipped).
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DatastoreError {
    pub message: String,
    pub first_unix_ms: u64,
    pub last_unix_ms: u64,
    pub failures: u64,
}

/// The write side of a VPG: its journal capture, the order of its writes in flight, its
/// event log, the last datastore failure, and the throttle's hold.
pub struct VpgCapture {
    pub name: String,
    pub capture: Capture<MmapStorage>,
    pub inflight: Arc<Inflight>,
    pool: Arc<BufPool>,
    pub events: EventLog,
    /// The last failure of a member's datastore I/O, shown in the state until
    /// [`DATASTORE_ERROR_SHOWN`] passed without another and the drain is over.
    datastore_error: Mutex<Option<DatastoreError>>,
    /// Milliseconds writes spent held by the throttle, summed over writes.
    pub held_ms: std::sync::atomic::AtomicU64,
    /// Whether the throttle holds writes now; set (once) by a VPG with a throttle.
    behind: OnceLock<Box<dyn Fn() -> bool + Send + Sync>>,
    /// Woken when records settle (or anything else a link waits for happens): the
    /// shipper's links wait on it instead of polling.
    ship_wake: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for VpgCapture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VpgCapture").field("name", &self.name).finish()
    }
}

/// A write of a VPG's volume on its way: the journal reservation (or the tracked write's
/// buffer), its place among writes in flight, and the VPG's capture (which keeps the mapped
/// journal alive). Fields drop in order: the slot settles before the ticket lets others go.
pub struct Captured {
    pending: Pending<MmapStorage>,
    volume: u32,
    spare: Option<AlignedBuf>,
    ticket: Ticket,
    cap: Arc<VpgCapture>,
}

impl std::fmt::Debug for Captured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Captured")
            .field("vpg", &self.cap.name)
            .field("pending", &self.pending)
            .finish()
    }
}

impl AsRef<[u8]> for Captured {
    fn as_ref(&self) -> &[u8] {
        match (&self.spare, self.pending.slot()) {
            (Some(b), _) => b.as_ref(),
            (None, Some(s)) => s.payload(),
            (None, None) => &[],
        }
    }
}

impl AsMut<[u8]> for Captured {
    fn as_mut(&mut self) -> &mut [u8] {
        match (&mut self.spare, self.pending.slot_mut()) {
            (Some(b), _) => b.as_mut(),
            (None, Some(s)) => s.payload_mut(),
            (None, None) => &mut [],
        }
    }
}

impl Captured {
    /// Waits for earlier overlapping writes, then commits the record (or marks the range
    /// dirty) and puts the extent in the activity log: the datastore I/O may be issued after.
    pub async fn start(&mut self) {
        self.cap.inflight.wait_earlier(&self.ticket).await;
        if let Err(e) = self.pending.start() {
            // The record is committed or the range marked (a process crash is covered);
            // only a power loss before the next sync could miss this write.
            error!(vpg = %self.cap.name, error = %e, "cannot flush the activity log");
        }
    }

    /// The datastore I/O is done, or failed with `failure`: then its record is revoked
    /// (never shipped), its range drained from the datastore before the next checkpoint,
    /// and the VPG shows the error (see `ferry_journal::capture`'s write outcomes).
    pub fn finish(self, failure: Option<&str>) {
        let Captured {
            pending, ticket, cap, ..
        } = self;
        cap.capture.finish(pending, failure);
        if let Some(why) = failure {
            cap.note_datastore_error(why);
        }
        drop(ticket);
        cap.wake_shipper();
    }
}

impl crate::io::Held for Captured {
    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send> {
        self
    }
}

impl Captured {
    /// This write back from an [`IoBuf`](crate::io::IoBuf); any other memory comes back
    /// as the error.
    pub fn from_io(buf: crate::io::IoBuf) -> Result<Box<Captured>, crate::io::IoBuf> {
        match buf {
            crate::io::IoBuf::Held(h) => Ok(h
                .into_any()
                .downcast::<Captured>()
                .expect("held memory is only ever a captured write")),
            plain => Err(plain),
        }
    }
}

impl VpgCapture {
    pub fn new(
        name: String,
        capture: Capture<MmapStorage>,
        pool: Arc<BufPool>,
        ship_wake: Arc<tokio::sync::Notify>,
    ) -> VpgCapture {
        VpgCapture {
            events: EventLog::new(format!("vpg {name}")),
            name,
            capture,
            inflight: Arc::new(Inflight::default()),
            pool,
            datastore_error: Mutex::new(None),
            held_ms: std::sync::atomic::AtomicU64::new(0),
            behind: OnceLock::new(),
            ship_wake,
        }
    }

    /// Tells the links waiting for work that there may be some (records settled, a
    /// checkpoint, a resume). Cheap when no link waits.
    pub fn wake_shipper(&self) {
        self.ship_wake.notify_waiters();
    }

    /// Sets the throttle's question (does the recovery site lag too far now?), asked while
    /// a write's reply is held.
    pub fn set_throttle(&self, behind: Box<dyn Fn() -> bool + Send + Sync>) {
        let _ = self.behind.set(behind);
    }

    /// Adds an event unless it repeats the last one; says whether it was added.
    pub fn push_event(&self, message: String) -> bool {
        self.events.push(message)
    }

    /// Moves the capture's events (journal full, drains, failed writes) to the VPG's log.
    pub fn collect_events(&self) {
        for e in self.capture.take_events() {
            let line = e.message.clone();
            if self.push_event(e.message) {
                warn!(vpg = %self.name, mode = e.mode.name(), "{line}");
            }
        }
    }

    /// Logs and records an event about this VPG.
    pub fn event(&self, message: String) {
        if self.push_event(message.clone()) {
            warn!(vpg = %self.name, "{message}");
        }
    }

    /// A member's datastore I/O failed: the state shows it, the capture's event is logged.
    fn note_datastore_error(&self, why: &str) {
        let now = now_ms();
        {
            let mut g = self.datastore_error.lock().unwrap_or_else(|e| e.into_inner());
            match &mut *g {
                Some(d) => {
                    d.failures += 1;
                    d.last_unix_ms = now;
                    d.message = why.to_string();
                }
                None => {
                    *g = Some(DatastoreError {
                        message: why.to_string(),
                        first_unix_ms: now,
                        last_unix_ms: now,
                        failures: 1,
                    })
                }
            }
        }
        self.collect_events();
    }

    /// The datastore failure to show, if any (read-only: [`VpgCapture::expire_datastore_error`]
    /// clears one that is over).
    pub fn datastore_error(&self) -> Option<DatastoreError> {
        self.datastore_error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Clears a datastore failure that is over (none for a while, and the drain done),
    /// with an event; from the ticker.
    pub fn expire_datastore_error(&self) {
        let drained = self.capture.mode() == Mode::Journaling;
        let over = {
            let mut g = self.datastore_error.lock().unwrap_or_else(|e| e.into_inner());
            let quiet = g
                .as_ref()
                .is_some_and(|d| now_ms().saturating_sub(d.last_unix_ms) >= DATASTORE_ERROR_SHOWN.as_millis() as u64);
            if quiet && drained { g.take() } else { None }
        };
        if let Some(d) = over {
            self.event(format!(
                "datastore error over: no failure for {} s after {} failed I/O(s) (last: {}), and every failed region was read back",
                DATASTORE_ERROR_SHOWN.as_secs(),
                d.failures,
                d.message
            ));
        }
    }

    /// Holds a write's reply while the throttle says the recovery site is too far behind
    /// (the write itself is done and captured, so shipping goes on meanwhile); at most
    /// [`HOLD_MAX`]. Without a throttle set, returns at once.
    pub async fn hold_while_behind(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let Some(behind) = self.behind.get() else { return };
        let mut held: Option<Instant> = None;
        while behind() {
            let t0 = *held.get_or_insert_with(Instant::now);
            if t0.elapsed() >= HOLD_MAX {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if let Some(t0) = held {
            self.held_ms.fetch_add(t0.elapsed().as_millis() as u64, Relaxed);
        }
    }

    /// Starts capturing a write (at its header): reserves its record and its turn.
    pub fn begin(self: &Arc<Self>, kind: Kind, volume: u32, offset: u64, len: u64) -> Box<Captured> {
        let (ticket, pending) = self
            .inflight
            .register(volume, offset, len, || self.capture.begin(kind, volume, offset, len));
        let spare = (kind == Kind::Write && !pending.is_journaled()).then(|| self.pool.take(len as usize));
        if !pending.is_journaled() {
            self.collect_events();
        }
        Box::new(Captured {
            pending,
            volume,
            spare,
            ticket,
            cap: self.clone(),
        })
    }

    /// Reserves a record for a write of `len` bytes that may come next on a connection,
    /// before its header is read (the NBD server guesses, see `ferry_nbd`'s server docs):
    /// its sequence number is taken now, its range at [`VpgCapture::place`]. `None` unless
    /// journaling with room to spare.
    pub fn speculate(self: &Arc<Self>, volume: u32, len: u64) -> Option<Box<Captured>> {
        let (ticket, pending) = self.inflight.register_unplaced(|| self.capture.speculate(volume, len));
        Some(Box::new(Captured {
            pending: pending?,
            volume,
            spare: None,
            ticket,
            cap: self.clone(),
        }))
    }

    /// The guessed write came, at `offset`, with `filled` bytes of its payload already in
    /// `c`. If its early place in the order no longer holds (see `Inflight::place`), the
    /// write takes a new one, and those bytes are copied to its new record.
    pub fn place(self: &Arc<Self>, mut c: Box<Captured>, offset: u64, filled: usize) -> Box<Captured> {
        let len = c.pending.length();
        if self.inflight.place(&mut c.ticket, c.volume, offset, len) {
            c.pending.place(offset);
            return c;
        }
        let mut fresh = self.begin(Kind::Write, c.volume, offset, len);
        let (to, from): (&mut [u8], &[u8]) = ((*fresh).as_mut(), (*c).as_ref());
        to[..filled].copy_from_slice(&from[..filled]);
        fresh
    }

    /// Makes the journal durable (for an NBD flush; the datastore is synced by the caller).
    pub async fn flush_journal(self: &Arc<Self>) -> io::Result<()> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.capture.journal().sync())
            .await
            .map_err(|e| io::Error::other(e.to_string()))?
    }
}
