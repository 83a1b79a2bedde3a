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
    _file: File,
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
        Ok(MmapStorage { map, _file: file })
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
}
