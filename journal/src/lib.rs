//! Journal: the per-VPG ring of captured writes on the protected site, its crash recovery and
//! the dirty-region bitmap it falls back to. Built so far: the on-disk format ([`format`]);
//! the ring itself, recovery and the bitmap are the journal issue's remaining work.

pub mod format;
