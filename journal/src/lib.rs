//! Journal: the per-VPG ring of captured writes on the protected site, its crash recovery and
//! the dirty-region bitmap it falls back to. Built so far: the on-disk format ([`format`]),
//! storage behind a trait ([`storage`]) and the single-writer ring with recovery ([`ring`]).
//! Still to come (the journal issue): concurrent capture from the NBD write path, the
//! crash-ordering rules with simulated power loss, the dirty bitmap, and the operator tools.

pub mod format;
pub mod journal;
pub mod ring;
pub mod storage;

pub use format::{Geometry, Kind};
pub use journal::{Consumer, Journal, JournalStats, OUTSTANDING_MAX, Slot};
pub use ring::{Hole, Record, Recovery, Reservation, Ring, RingError, Stop, superblock_slots};
pub use storage::{MemStorage, MmapStorage, RingStorage, SimStorage};
