//! An overlay: a copy-on-write scratch layer over a checkpoint view, which a failover test
//! writes to. What is written goes to a sparse scratch file, block by block ([`BLOCK`]);
//! reads take each block from the scratch file if it was written, else from the view. The
//! view, the replica and history are never written. Nothing is copied to start one, so a
//! test's exports are ready at once.
//!
//! The scratch space of a test (all its overlays) is bounded by a [`Budget`]: a write that
//! would pass it gets ENOSPC, and the first one tells the test (an event). Trims and zero
//! writes of whole blocks punch the scratch file and cost no budget.
//!
//! Writes take the overlay's write lock (a block's read-modify-write must not interleave
//! with another write to the same block); it is held across the scratch file's I/O, and
//! only writes wait on it. Reads take no lock.
//!
//! A live failover's overlay is *durable*: zeroes are written, never punched, so that the
//! scratch file alone tells which blocks were written (its data extents) and the overlay
//! can be opened again after a restart ([`Overlay::reopen`]). Its commit copies it out
//! while it is served: every write marks its blocks *dirty*, the copy takes the dirty
//! blocks pass after pass, and the last pass runs under the write lock, after which the
//! overlay is *sealed* (its writes answer [`SEALED`]: the caller writes to where the
//! volume went).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ferry_nbd::wire::Errno;
use ferry_nbd::{Export, ExportError, ExportInfo, ExportResult, Extent, ZeroMode};

use crate::io::{BufPool, IoBuf};

/// The overlay's unit: a write of part of a block reads the rest of it first.
pub const BLOCK: u64 = 4096;

/// A scratch file is cut down by this much at a time when it is deleted.
const TRUNCATE_STEP: u64 = 64 << 20;

/// What a write to a sealed overlay answers (its volume was committed elsewhere).
pub const SEALED: &str = "the overlay was sealed by its commit";

/// What an overlay lies over: read-only bytes (a checkpoint view).
pub trait Base: Send + Sync + 'static {
    /// Fills `buf` with the bytes at `offset` (blocking I/O).
    fn read_base(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
}

/// A test's scratch space: bytes written to its overlays, against a bound.
pub struct Budget {
    pub max_bytes: u64,
    used: AtomicU64,
    full_told: AtomicBool,
    /// Told once, at the first write refused for space.
    on_full: Box<dyn Fn(String) + Send + Sync>,
}

impl Budget {
    pub fn new(max_bytes: u64, on_full: Box<dyn Fn(String) + Send + Sync>) -> Arc<Budget> {
        Arc::new(Budget {
            max_bytes,
            used: AtomicU64::new(0),
            full_told: AtomicBool::new(false),
            on_full,
        })
    }

    pub fn used_bytes(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    fn take(&self, bytes: u64) -> bool {
        let mut cur = self.used.load(Ordering::Acquire);
        loop {
            if cur + bytes > self.max_bytes {
                if !self.full_told.swap(true, Ordering::AcqRel) {
                    (self.on_full)(format!(
                        "the test's scratch space is full ({} bytes): its writes get ENOSPC; history and the replica are untouched",
                        self.max_bytes
                    ));
                }
                return false;
            }
            match self
                .used
                .compare_exchange(cur, cur + bytes, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    fn give(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

impl std::fmt::Debug for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budget")
            .field("max_bytes", &self.max_bytes)
            .field("used", &self.used_bytes())
            .finish()
    }
}

/// Which blocks the scratch file holds, and which of those cost budget (written data, not
/// punched zeroes).
#[derive(Debug, Default)]
struct Map {
    present: Vec<u64>,
    counted: Vec<u64>,
    /// Written since the last [`Overlay::take_dirty`].
    dirty: Vec<u64>,
}

fn bit(v: &[u64], i: u64) -> bool {
    v[(i / 64) as usize] & (1 << (i % 64)) != 0
}

fn set(v: &mut [u64], i: u64, on: bool) {
    let w = &mut v[(i / 64) as usize];
    if on {
        *w |= 1 << (i % 64);
    } else {
        *w &= !(1 << (i % 64));
    }
}

/// One volume's overlay.
#[derive(Debug)]
pub struct Overlay<B: Base> {
    base: Arc<B>,
    scratch: Arc<File>,
    path: PathBuf,
    info: ExportInfo,
    pool: Arc<BufPool>,
    budget: Arc<Budget>,
    map: Arc<Mutex<Map>>,
    writing: tokio::sync::Mutex<()>,
    /// Stopped: every request fails (the test ended).
    closed: AtomicBool,
    /// Zeroes are written, not punched (see the module's notes).
    durable: bool,
    /// Committed: writes answer [`SEALED`].
    sealed: Arc<AtomicBool>,
}

impl<B: Base + std::fmt::Debug> Overlay<B> {
    /// An overlay over `base` with its scratch file at `path` (made sparse, of the
    /// export's size).
    pub fn create(
        base: Arc<B>,
        path: PathBuf,
        info: ExportInfo,
        pool: Arc<BufPool>,
        budget: Arc<Budget>,
    ) -> io::Result<Overlay<B>> {
        let scratch = File::options().create_new(true).read(true).write(true).open(&path)?;
        scratch.set_len(info.size_bytes)?;
        let words = info.size_bytes.div_ceil(BLOCK).div_ceil(64) as usize;
        Ok(Self::assemble(base, scratch, path, info, pool, budget, vec![0; words]))
    }

    /// An overlay with its scratch file open and the blocks it holds (`present`).
    fn assemble(
        base: Arc<B>,
        scratch: File,
        path: PathBuf,
        info: ExportInfo,
        pool: Arc<BufPool>,
        budget: Arc<Budget>,
        present: Vec<u64>,
    ) -> Overlay<B> {
        let words = present.len();
        Overlay {
            base,
            scratch: Arc::new(scratch),
            path,
            info,
            pool,
            budget,
            map: Arc::new(Mutex::new(Map {
                counted: present.clone(),
                present,
                dirty: vec![0; words],
            })),
            writing: tokio::sync::Mutex::new(()),
            closed: AtomicBool::new(false),
            durable: false,
            sealed: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Makes it durable: zeroes are written, never punched (a live failover's overlay).
    pub fn durable(mut self) -> Self {
        self.durable = true;
        self
    }

    /// A durable overlay's scratch file found again (after a restart): the blocks it holds
    /// are its data extents.
    pub fn reopen(
        base: Arc<B>,
        path: PathBuf,
        info: ExportInfo,
        pool: Arc<BufPool>,
        budget: Arc<Budget>,
    ) -> io::Result<Overlay<B>> {
        let scratch = File::options().read(true).write(true).open(&path)?;
        if scratch.metadata()?.len() != info.size_bytes {
            scratch.set_len(info.size_bytes)?;
        }
        let words = info.size_bytes.div_ceil(BLOCK).div_ceil(64) as usize;
        let mut present = vec![0u64; words];
        let mut at = 0u64;
        let mut held = 0u64;
        while at < info.size_bytes {
            let data = match rustix::fs::seek(&scratch, rustix::fs::SeekFrom::Data(at)) {
                Ok(d) => d,
                Err(rustix::io::Errno::NXIO) => break,
                Err(e) => return Err(e.into()),
            };
            let hole = rustix::fs::seek(&scratch, rustix::fs::SeekFrom::Hole(data))?.min(info.size_bytes);
            for b in data / BLOCK..hole.div_ceil(BLOCK) {
                set(&mut present, b, true);
                held += 1;
            }
            at = hole.max(data + 1);
        }
        if !budget.take(held * BLOCK) {
            return Err(io::Error::other(format!(
                "{}: its {} bytes pass the overlay's bound",
                path.display(),
                held * BLOCK
            )));
        }
        Ok(Self::assemble(base, scratch, path, info, pool, budget, present).durable())
    }

    /// Reads `buf.len()` bytes at `offset` as the overlay's clients see them (blocking).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        Self::read_blocking(&self.base, &self.scratch, &self.map, offset, buf)
    }

    /// Every region the overlay's clients wrote (whole blocks, merged): what it holds over
    /// its checkpoint.
    pub fn written_ranges(&self) -> Vec<(u64, u64)> {
        let m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (i, &w) in m.present.iter().enumerate() {
            let mut bits = w;
            while bits != 0 {
                let b = i as u64 * 64 + u64::from(bits.trailing_zeros());
                let (off, end) = (b * BLOCK, ((b + 1) * BLOCK).min(self.info.size_bytes));
                match out.last_mut() {
                    Some((o, l)) if *o + *l == off => *l = end - *o,
                    _ => out.push((off, end - off)),
                }
                bits &= bits - 1;
            }
        }
        out
    }

    /// The blocks written since the last call (and forgets them).
    pub fn take_dirty(&self) -> Vec<u64> {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for (i, w) in m.dirty.iter_mut().enumerate() {
            let mut bits = std::mem::take(w);
            while bits != 0 {
                let b = bits.trailing_zeros() as u64;
                out.push(i as u64 * 64 + b);
                bits &= bits - 1;
            }
        }
        out
    }

    /// Runs `last` under the write lock (no write is under way, none starts), then seals
    /// the overlay: writes that waited answer [`SEALED`]. `last`'s result.
    pub async fn seal_after<R: Send + 'static>(
        self: &Arc<Self>,
        last: impl FnOnce(&Overlay<B>) -> R + Send + 'static,
    ) -> Result<R, String> {
        let _w = self.writing.lock().await;
        let me = self.clone();
        let r = tokio::task::spawn_blocking(move || last(&me))
            .await
            .map_err(|e| e.to_string())?;
        self.sealed.store(true, Ordering::Release);
        Ok(r)
    }

    pub fn is_sealed(&self) -> bool {
        self.sealed.load(Ordering::Acquire)
    }

    /// The scratch file's path.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Ends the overlay: its requests fail from now on and its scratch file is deleted
    /// (its budget given back).
    pub fn close(&self) -> io::Result<()> {
        self.closed.store(true, Ordering::Release);
        let counted: u64 = {
            let m = self.map.lock().unwrap_or_else(|e| e.into_inner());
            m.counted.iter().map(|w| u64::from(w.count_ones())).sum()
        };
        self.budget.give(counted * BLOCK);
        // A large scratch file is cut down a step at a time before it is unlinked: one
        // unlink of gigabytes of extents is one long file-system transaction, which stalls
        // the writers of other files on the same datastore (a committed volume's clients).
        let mut len = self.scratch.metadata().map(|m| m.len()).unwrap_or(0);
        while len > TRUNCATE_STEP {
            len -= TRUNCATE_STEP;
            self.scratch.set_len(len)?;
        }
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Bytes of scratch this overlay's writes hold.
    pub fn scratch_bytes(&self) -> u64 {
        let m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        m.counted.iter().map(|w| u64::from(w.count_ones())).sum::<u64>() * BLOCK
    }

    fn check_open(&self) -> ExportResult<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(ExportError::new(
                Errno::ESHUTDOWN,
                "the failover test of this export was stopped",
            ));
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes at `offset`, block by block from the scratch file or the base.
    fn read_blocking(base: &B, scratch: &File, map: &Mutex<Map>, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let end = offset + buf.len() as u64;
        let mut at = offset;
        while at < end {
            // The run of blocks from `at` that share a source.
            let first = at / BLOCK;
            let in_scratch = bit(&map.lock().unwrap_or_else(|e| e.into_inner()).present, first);
            let mut run_end = ((first + 1) * BLOCK).min(end);
            while run_end < end {
                let b = run_end / BLOCK;
                if bit(&map.lock().unwrap_or_else(|e| e.into_inner()).present, b) != in_scratch {
                    break;
                }
                run_end = ((b + 1) * BLOCK).min(end);
            }
            let part = &mut buf[(at - offset) as usize..(run_end - offset) as usize];
            if in_scratch {
                scratch.read_exact_at(part, at)?;
            } else {
                base.read_base(at, part)?;
            }
            at = run_end;
        }
        Ok(())
    }

    /// Writes `data` at `offset` (None: zeroes), whole blocks at a time: the parts of the
    /// first and last blocks not written are read first. Whole blocks of zeroes are
    /// punched and cost no budget.
    async fn write_range(&self, offset: u64, len: u64, data: Option<Vec<u8>>) -> ExportResult<()> {
        self.check_open()?;
        let _w = self.writing.lock().await;
        if self.is_sealed() {
            return Err(ExportError::new(Errno::ESHUTDOWN, SEALED));
        }
        let (base, scratch, map, budget) = (
            self.base.clone(),
            self.scratch.clone(),
            self.map.clone(),
            self.budget.clone(),
        );
        let durable = self.durable;
        let res = tokio::task::spawn_blocking(move || -> Result<(), ExportError> {
            let start = offset / BLOCK * BLOCK;
            let end = (offset + len).div_ceil(BLOCK) * BLOCK;
            let blocks = start / BLOCK..end / BLOCK;
            // Data blocks not yet counted take budget first.
            let zero_whole =
                |b: u64| !durable && data.is_none() && b * BLOCK >= offset && (b + 1) * BLOCK <= offset + len;
            let new: u64 = {
                let m = map.lock().unwrap_or_else(|e| e.into_inner());
                blocks
                    .clone()
                    .filter(|&b| !zero_whole(b) && !bit(&m.counted, b))
                    .count() as u64
            };
            if new > 0 && !budget.take(new * BLOCK) {
                return Err(ExportError::new(
                    Errno::ENOSPC,
                    format!("the test's scratch space ({} bytes) is full", budget.max_bytes),
                ));
            }
            let io = |e: io::Error| ExportError::from_io("overlay scratch write", &e);
            let mut whole = vec![0u8; (end - start) as usize];
            // The edges not written keep what they read as.
            let head = offset - start;
            if head > 0 {
                Self::read_blocking(&base, &scratch, &map, start, &mut whole[..BLOCK as usize]).map_err(io)?;
            }
            let tail = end - (offset + len);
            if tail > 0 && (end - BLOCK >= start + BLOCK || head == 0) {
                let at = (end - BLOCK - start) as usize;
                Self::read_blocking(&base, &scratch, &map, end - BLOCK, &mut whole[at..]).map_err(io)?;
            }
            let body = &mut whole[head as usize..(head + len) as usize];
            match &data {
                Some(d) => body.copy_from_slice(d),
                None => body.fill(0),
            }
            let mut punched = Vec::new();
            for b in blocks.clone() {
                let at = b * BLOCK;
                let chunk = &whole[(at - start) as usize..(at - start + BLOCK) as usize];
                if zero_whole(b) {
                    rustix::fs::fallocate(
                        &*scratch,
                        rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
                        at,
                        BLOCK,
                    )
                    .map_err(|e| io(e.into()))?;
                    punched.push(b);
                } else {
                    scratch.write_all_at(chunk, at).map_err(io)?;
                }
            }
            let mut m = map.lock().unwrap_or_else(|e| e.into_inner());
            let mut freed = 0;
            for b in blocks {
                set(&mut m.present, b, true);
                set(&mut m.dirty, b, true);
                let was = bit(&m.counted, b);
                let now = !punched.contains(&b);
                if was && !now {
                    freed += 1;
                }
                set(&mut m.counted, b, now);
            }
            drop(m);
            budget.give(freed * BLOCK);
            Ok(())
        })
        .await;
        res.unwrap_or_else(|e| Err(ExportError::new(Errno::EIO, format!("overlay write failed: {e}"))))
    }
}

impl<B: Base + std::fmt::Debug> Export for Overlay<B> {
    type Buf = IoBuf;

    fn info(&self) -> &ExportInfo {
        &self.info
    }

    fn buffer(&self, len: usize) -> IoBuf {
        IoBuf::Plain(self.pool.take(len))
    }

    async fn read(&self, offset: u64, buf: IoBuf) -> ExportResult<IoBuf> {
        self.check_open()?;
        let (base, scratch, map) = (self.base.clone(), self.scratch.clone(), self.map.clone());
        super::read_off_reactor("overlay read", buf, move |b| {
            Self::read_blocking(&base, &scratch, &map, offset, b)
        })
        .await
    }

    async fn write(&self, offset: u64, buf: IoBuf, _fua: bool) -> ExportResult<()> {
        let data = buf.as_ref().to_vec();
        self.write_range(offset, data.len() as u64, Some(data)).await
    }

    async fn flush(&self) -> ExportResult<()> {
        self.check_open()?;
        let scratch = self.scratch.clone();
        tokio::task::spawn_blocking(move || scratch.sync_data())
            .await
            .map_err(|e| ExportError::new(Errno::EIO, e.to_string()))?
            .map_err(|e| ExportError::from_io("overlay flush", &e))
    }

    async fn trim(&self, offset: u64, len: u64, _fua: bool) -> ExportResult<()> {
        self.write_range(offset, len, None).await
    }

    async fn write_zeroes(&self, offset: u64, len: u64, _mode: ZeroMode) -> ExportResult<()> {
        self.write_range(offset, len, None).await
    }

    async fn cache(&self, _offset: u64, _len: u64) -> ExportResult<()> {
        Ok(())
    }

    async fn block_status(&self, offset: u64, len: u64, _extents_max: usize) -> ExportResult<Vec<Extent>> {
        let end = (offset + len).min(self.info.size_bytes);
        Ok(vec![Extent {
            length: end - offset,
            flags: 0,
        }])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A base of known bytes: byte i holds i % 251.
    #[derive(Debug)]
    struct Pattern;

    impl Base for Pattern {
        fn read_base(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
            for (i, b) in buf.iter_mut().enumerate() {
                *b = ((offset + i as u64) % 251) as u8;
            }
            Ok(())
        }
    }

    fn expected(size: usize) -> Vec<u8> {
        let mut v = vec![0; size];
        Pattern.read_base(0, &mut v).unwrap();
        v
    }

    #[tokio::test]
    async fn a_durable_overlay_reopens_from_its_scratch_file_and_its_dirty_blocks_are_taken_once() {
        let (o, _) = overlay(64 << 10, 1 << 20);
        let o = Arc::new(o.durable());
        write(&o, 100, &[0xaa; 10]).await.unwrap();
        // Zeroes over whole blocks are written (they must survive a reopen as zeroes).
        zeroes(&o, 8192, 8192).await;
        write(&o, 40960, &[0xbb; 4096]).await.unwrap();
        assert_eq!(o.take_dirty(), vec![0, 2, 3, 10]);
        assert!(o.take_dirty().is_empty(), "taken once");
        let before = read_all(&o).await;
        o.flush().await.unwrap();
        let again = Overlay::reopen(
            Arc::new(Pattern),
            o.path.clone(),
            ExportInfo::new(64 << 10),
            BufPool::new(1 << 20),
            Budget::new(1 << 20, Box::new(|_| {})),
        )
        .unwrap();
        assert_eq!(read_all(&again).await, before);
        assert_eq!(again.scratch_bytes(), 4 * BLOCK);
        // Sealed: a write answers SEALED, and what the last pass read stays.
        let n = o.seal_after(|o| o.take_dirty().len()).await.unwrap();
        assert_eq!(n, 0);
        let e = write(&o, 0, &[1; 512]).await.unwrap_err();
        assert_eq!((e.errno, e.message.as_str()), (Errno::ESHUTDOWN, SEALED));
        o.close().unwrap();
    }

    fn overlay(size: u64, budget: u64) -> (Overlay<Pattern>, Arc<std::sync::Mutex<Vec<String>>>) {
        let told = Arc::new(std::sync::Mutex::new(Vec::new()));
        let t = told.clone();
        let path = std::env::temp_dir().join(format!(
            "ferry-overlay-{}-{:x}",
            std::process::id(),
            crate::clock::now_ms() ^ (size << 20) ^ budget
        ));
        let _ = std::fs::remove_file(&path);
        let o = Overlay::create(
            Arc::new(Pattern),
            path,
            ExportInfo::new(size),
            BufPool::new(1 << 20),
            Budget::new(budget, Box::new(move |m| t.lock().unwrap().push(m))),
        )
        .unwrap();
        (o, told)
    }

    async fn read_all(o: &Overlay<Pattern>) -> Vec<u8> {
        let b = o.read(0, o.buffer(o.info.size_bytes as usize)).await.unwrap();
        b.as_ref().to_vec()
    }

    /// A write of zeroes that may trim.
    async fn zeroes(o: &Overlay<Pattern>, offset: u64, len: u64) {
        let mode = ZeroMode {
            may_trim: true,
            fast_only: false,
            fua: false,
        };
        o.write_zeroes(offset, len, mode).await.unwrap();
    }

    async fn write(o: &Overlay<Pattern>, offset: u64, data: &[u8]) -> ExportResult<()> {
        let mut b = o.buffer(data.len());
        b.as_mut().copy_from_slice(data);
        o.write(offset, b, false).await
    }

    #[tokio::test]
    async fn unwritten_blocks_read_from_the_base_and_written_ones_from_scratch() {
        let (o, _) = overlay(64 << 10, 1 << 20);
        assert_eq!(read_all(&o).await, expected(64 << 10));
        let mut want = expected(64 << 10);
        // Unaligned writes that start and end inside blocks, and one over a block edge.
        for (off, len, v) in [
            (100u64, 10usize, 0xaa),
            (4090, 12, 0xbb),
            (8192, 4096, 0xcc),
            (20_000, 9000, 0xdd),
        ] {
            write(&o, off, &vec![v; len]).await.unwrap();
            want[off as usize..off as usize + len].fill(v);
        }
        assert_eq!(read_all(&o).await, want);
        // Reads that start and end inside blocks too.
        let b = o.read(4000, o.buffer(300)).await.unwrap();
        assert_eq!(b.as_ref(), &want[4000..4300]);
        // Blocks touched: 0 and 1 (the first two writes), 2, and 4 to 7 (20000..29000): seven.
        assert_eq!(o.scratch_bytes(), 7 * BLOCK);
        o.close().unwrap();
        assert_eq!(o.budget.used_bytes(), 0, "closing gives the budget back");
        assert!(!o.path.exists(), "closing deletes the scratch file");
        assert_eq!(o.read(0, o.buffer(512)).await.unwrap_err().errno, Errno::ESHUTDOWN);
    }

    #[tokio::test]
    async fn zeroes_over_whole_blocks_are_punched_and_free_their_budget() {
        let (o, _) = overlay(64 << 10, 1 << 20);
        write(&o, 0, &vec![1; 16384]).await.unwrap();
        assert_eq!(o.budget.used_bytes(), 16384);
        // Zeroes from the middle of block 0 to the middle of block 3: blocks 1 and 2 are
        // punched (their budget freed), blocks 0 and 3 rewritten.
        zeroes(&o, 2048, 12288).await;
        let mut want = expected(64 << 10);
        want[..16384].fill(1);
        want[2048..14336].fill(0);
        assert_eq!(read_all(&o).await, want);
        assert_eq!(o.budget.used_bytes(), 2 * BLOCK);
        // A trim of an unwritten block reads as zeroes and costs nothing.
        o.trim(32768, 4096, false).await.unwrap();
        want[32768..36864].fill(0);
        assert_eq!(read_all(&o).await, want);
        assert_eq!(o.budget.used_bytes(), 2 * BLOCK);
        o.close().unwrap();
    }

    #[tokio::test]
    async fn past_the_bound_writes_get_enospc_once_told_and_nothing_changes() {
        let (o, told) = overlay(64 << 10, 3 * BLOCK);
        write(&o, 0, &vec![7; 8192]).await.unwrap();
        // Two new blocks would pass the bound of three: refused whole.
        let err = write(&o, 16384, &vec![8; 8192]).await.unwrap_err();
        assert_eq!(err.errno, Errno::ENOSPC);
        assert_eq!(write(&o, 40960, &vec![9; 8192]).await.unwrap_err().errno, Errno::ENOSPC);
        assert_eq!(told.lock().unwrap().len(), 1, "told once");
        // Rewriting blocks already held costs nothing more, and one more block fits.
        write(&o, 0, &vec![6; 8192]).await.unwrap();
        write(&o, 16384, &vec![5; 4096]).await.unwrap();
        let mut want = expected(64 << 10);
        want[..8192].fill(6);
        want[16384..20480].fill(5);
        assert_eq!(read_all(&o).await, want);
        o.close().unwrap();
    }
}
