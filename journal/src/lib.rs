//! Journal: the per-VPG mmap'd ring of captured writes on the protected site, its crash recovery and the dirty-region bitmap it falls back to. (Not yet built: see the journal issue.)
