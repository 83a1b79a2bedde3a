//! Where a ring's bytes live. All of the ring's file I/O goes through [`RingStorage`], so
//! tests can use memory, and a simulated storage can drop what was not flushed.

use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Range;
use std::path::Path;

/// The bytes of a ring file, mapped or in memory.
pub trait RingStorage {
    fn bytes(&self) -> &[u8];
    fn bytes_mut(&mut self) -> &mut [u8];
    /// Makes `range` durable (msync for a mapped file).
    fn flush(&mut self, range: Range<usize>) -> io::Result<()>;
    /// Says that nobody reads `range` again (payloads the consumer acknowledged). A mapped
    /// file drops those pages, dirty or not, so the kernel never writes them back; they
    /// read as zeros after, and their blocks stay allocated.
    fn discard(&mut self, _range: Range<usize>) {}
    /// The bytes are a file mapping whose first store to a page faults (allocating and
    /// zeroing it): worth faulting ahead of the writers, see [`crate::Journal::prefault`].
    fn faults_on_first_store(&self) -> bool {
        false
    }
}

/// A plain in-memory ring, for tests.
#[derive(Debug, Clone)]
pub struct MemStorage(pub Vec<u8>);

impl RingStorage for MemStorage {
    fn bytes(&self) -> &[u8] {
        &self.0
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
    fn flush(&mut self, _: Range<usize>) -> io::Result<()> {
        Ok(())
    }
}

/// A ring file mapped into memory. The file is fully allocated first (`fallocate`), so a
/// full filesystem is an error at creation, never a SIGBUS on a later store to the map.
#[derive(Debug)]
pub struct MmapStorage {
    map: memmap2::MmapMut,
    file: File,
    /// The filesystem zeroes ranges (`FALLOC_FL_ZERO_RANGE`); cleared at its first refusal.
    zero_range: bool,
}

impl MmapStorage {
    /// Creates (or resizes) `path` to `bytes`, allocates every block and maps it.
    pub fn create(path: &Path, bytes: u64) -> io::Result<MmapStorage> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        file.set_len(bytes)?;
        rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, bytes)?;
        file.sync_all()?;
        Self::map(file)
    }

    /// Maps an existing ring file.
    pub fn open(path: &Path) -> io::Result<MmapStorage> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Self::map(file)
    }

    fn map(file: File) -> io::Result<MmapStorage> {
        // SAFETY: the agent holds its state directory's lock, so no other process of ours
        // maps or truncates this file while the map lives; the file is fully allocated.
        let map = unsafe { memmap2::MmapMut::map_mut(&file)? };
        // No readahead on faults: the ring's free space is mapped ahead of the writers
        // (`Journal::prefault`) over extents that acknowledgements made unwritten, and a
        // fault's readahead zeroed large folios far past what was asked, again and again
        // (half of the protected agent's CPU at 1M writes went to that memset).
        // A hint: where it is refused, faults read ahead as before.
        let _ = map.advise(memmap2::Advice::Random);
        Ok(MmapStorage {
            map,
            file,
            zero_range: true,
        })
    }
}

impl RingStorage for MmapStorage {
    fn bytes(&self) -> &[u8] {
        &self.map
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.map
    }
    fn flush(&mut self, range: Range<usize>) -> io::Result<()> {
        self.map.flush_range(range.start, range.len())
    }
    /// `FALLOC_FL_ZERO_RANGE`: the pages leave the page cache without being written and the
    /// extents become unwritten (still allocated, so a later store cannot hit ENOSPC). A
    /// filesystem without it keeps the pages: they are written back as before.
    fn discard(&mut self, range: Range<usize>) {
        use rustix::fs::FallocateFlags as F;
        if !self.zero_range || range.is_empty() {
            return;
        }
        let r = rustix::fs::fallocate(
            &self.file,
            F::ZERO_RANGE | F::KEEP_SIZE,
            range.start as u64,
            range.len() as u64,
        );
        if r.is_err() {
            self.zero_range = false;
        }
    }
    fn faults_on_first_store(&self) -> bool {
        true
    }
}

/// Storage that forgets, for crash tests: what the ring sees (`volatile`) and what would be
/// on disk after a power loss (`durable`). A flush copies its pages to `durable`. A crash
/// decides, for every page that differs from what was last flushed and from a seeded
/// generator, whether the kernel had written it back whole, not at all, or torn at a
/// 512-byte sector. (Pages are compared rather than tracked, so writes through a pointer
/// taken once count too; tests use it from one thread.)
#[derive(Debug, Clone)]
pub struct SimStorage {
    volatile: Vec<u8>,
    durable: Vec<u8>,
}

const SIM_PAGE_BYTES: usize = 4096;
const SIM_SECTOR_BYTES: usize = 512;

impl SimStorage {
    pub fn new(bytes: usize) -> SimStorage {
        SimStorage {
            volatile: vec![0; bytes],
            durable: vec![0; bytes],
        }
    }

    /// The storage as a power loss now would leave it, chosen by `seed`.
    pub fn crash(&self, seed: u64) -> SimStorage {
        let mut rng = seed ^ 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            // splitmix64: small, seedable, good enough to pick outcomes.
            rng = rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = rng;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let mut disk = self.durable.clone();
        for page in 0..disk.len().div_ceil(SIM_PAGE_BYTES) {
            let range = page * SIM_PAGE_BYTES..((page + 1) * SIM_PAGE_BYTES).min(disk.len());
            if disk[range.clone()] == self.volatile[range.clone()] {
                continue;
            }
            match next() % 3 {
                0 => {}
                1 => disk[range.clone()].copy_from_slice(&self.volatile[range]),
                _ => {
                    // Torn: some sectors new, the rest old.
                    for sector in range.clone().step_by(SIM_SECTOR_BYTES) {
                        let s = sector..(sector + SIM_SECTOR_BYTES).min(range.end);
                        if next() % 2 == 0 {
                            disk[s.clone()].copy_from_slice(&self.volatile[s]);
                        }
                    }
                }
            }
        }
        SimStorage {
            volatile: disk.clone(),
            durable: disk,
        }
    }

    /// The storage as a process crash (kill -9) leaves it: everything written is kept, the
    /// kernel has it.
    pub fn kill(&self) -> SimStorage {
        SimStorage {
            volatile: self.volatile.clone(),
            durable: self.volatile.clone(),
        }
    }
}

impl RingStorage for SimStorage {
    fn bytes(&self) -> &[u8] {
        &self.volatile
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.volatile
    }
    fn flush(&mut self, range: Range<usize>) -> io::Result<()> {
        let start = range.start / SIM_PAGE_BYTES * SIM_PAGE_BYTES;
        let end = (range.end.div_ceil(SIM_PAGE_BYTES) * SIM_PAGE_BYTES).min(self.volatile.len());
        self.durable[start..end].copy_from_slice(&self.volatile[start..end]);
        Ok(())
    }
    /// Zeros in memory; on disk the old bytes stay until a flush, and a crash may leave
    /// either, or a torn mix (as a real filesystem may before its metadata is durable).
    fn discard(&mut self, range: Range<usize>) {
        self.volatile[range].fill(0);
    }
}
