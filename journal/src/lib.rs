//! Journal: the per-VPG ring of captured writes on the protected site, its crash recovery and
//! the dirty-region maps it falls back to.
//!
//! - [`format`]: the ring file's bytes (superblocks, 64-byte index entries, 4 KiB-aligned
//!   payloads), with golden tests.
//! - [`ring`]: one writer; recovery scan (used on open, and by `ferry journal dump|check`).
//! - [`journal`]: many writers filling slots in place, one consumer, acknowledgements.
//! - [`dirty`]: per-volume dirty bits and activity log.
//! - [`capture`]: the write path's order and the recovery rules, with the power-loss
//!   property test.
//! - [`history`]: the recovery site's history segments (whole batches, end marks, scan).
//! - [`storage`]: memory, mapped file, or simulated (crash by seed) storage.

pub mod capture;
pub mod dirty;
pub mod envelope;
pub mod format;
pub mod history;
pub mod journal;
pub mod ring;
pub mod storage;

pub use capture::{Capture, CaptureEvent, CaptureRecovery, CheckpointError, Mode, Pending, SyncPoint};
pub use dirty::{DirtyMap, MapError, MapHeader, MapRecovery};
pub use format::{Geometry, Kind};
pub use journal::{Consumer, Journal, JournalStats, OUTSTANDING_MAX, Slot};
pub use ring::{Hole, Record, Recovery, Reservation, Ring, RingError, Stop, superblock_slots};
pub use storage::{MemStorage, MmapStorage, RingStorage, SimStorage};

/// Cases for a property test: `default`, or `PROPTEST_CASES` from the environment to run
/// many more (a soak).
#[cfg(test)]
pub(crate) fn proptest_cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
