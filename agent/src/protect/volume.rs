//! Volumes: named disks on datastores, served as NBD exports. [`Volume`] carries out the
//! data operations through the I/O engine; [`Volumes`](crate::protect::volumes::Volumes) is the catalogue the NBD server and
//! the control API share, with the registry on disk kept in step.
//!
//! Copies on the write path: the NBD server reads the payload from the socket into the
//! buffer [`Volume`] hands out when the request's header arrives, and the datastore write
//! is issued from that same memory. For a volume in a VPG that memory is the write's slot in
//! the VPG's mapped journal ring ([`crate::protect::vpg`]), which the journal's consumer reads in
//! place; otherwise a pooled [`crate::io::AlignedBuf`]. There is no other copy.

use std::fs::{File, OpenOptions};
use std::io;
use std::num::NonZeroU64;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::sync::{Arc, RwLock};

use ferry_nbd::wire::Errno;
use ferry_nbd::{Export, ExportError, ExportInfo, ExportResult, Extent, ZeroMode};
use rustix::fs::{Advice, SeekFrom};
use tracing::error;

use crate::error::AgentError;
use crate::io::{BufPool, Engine, IoBuf};
use crate::meta::VolumeRecord;
use crate::protect::capture::Captured;

/// Longest volume name (it is also a file name and an NBD export name).
pub use crate::meta::VOLUME_NAME_BYTES_MAX;
/// Largest volume: 1 PiB (file offsets are signed 64-bit; a VPG's dirty map and a replica's
/// image grow with the volume, so the bound is set well inside that).
pub const VOLUME_BYTES_MAX: u64 = 1 << 50;
/// Zeroes written per step when a datastore cannot zero a range by itself.
const ZERO_CHUNK_BYTES: usize = 1 << 20;

pub struct Volume {
    pub record: VolumeRecord,
    file: Arc<File>,
    engine: Arc<Engine>,
    pool: Arc<BufPool>,
    pub(crate) info: ExportInfo,
    block_device: bool,
    /// Buffered writes to this file always go to a kernel worker (see `punts_buffered_writes`).
    punt_writes: bool,
    /// Such writes up to this size are done inline instead (`io.inline_write_bytes_max`).
    inline_write_bytes_max: usize,
    /// The VPG capturing this volume's writes, and the volume's id in it.
    member: RwLock<Option<(Arc<crate::protect::capture::VpgCapture>, u32)>>,
    /// Deleted (with `--force`, clients connected): every request of theirs fails.
    pub(crate) deleted: std::sync::atomic::AtomicBool,
    /// Writes are refused (reads served) while set: why, for the client's error.
    fence: std::sync::Mutex<Option<String>>,
    fenced: std::sync::atomic::AtomicBool,
    /// Writes wait while set (until the recovery site confirms the VPG's epoch at a start,
    /// or the wait's end).
    held: std::sync::atomic::AtomicBool,
    held_change: tokio::sync::Notify,
    /// What NBD clients asked of it (`/metrics`).
    pub(crate) stats: ferry_nbd::OpStats,
}

impl std::fmt::Debug for Volume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Volume").field("record", &self.record).finish()
    }
}

fn err(what: &str, e: io::Error) -> ExportError {
    ExportError::from_io(what, &e)
}

/// The largest size `file`'s filesystem lets a file have (found by trying sizes on it,
/// sparse, then putting it back to empty), in 4 KiB steps.
pub(crate) fn largest_file_bytes(file: &File) -> u64 {
    let (mut lo, mut hi) = (0u64, (i64::MAX as u64) >> 12);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if file.set_len(mid << 12).is_ok() {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    let _ = file.set_len(0);
    lo << 12
}

/// Size of an open file or block device.
pub(crate) fn size_of(file: &File) -> io::Result<u64> {
    let meta = file.metadata()?;
    if meta.file_type().is_block_device() {
        Ok(rustix::fs::seek(file, SeekFrom::End(0))?)
    } else {
        Ok(meta.len())
    }
}

impl Volume {
    pub(crate) fn open(
        record: VolumeRecord,
        engine: Arc<Engine>,
        pool: Arc<BufPool>,
        inline_max: u32,
    ) -> Result<Volume, AgentError> {
        let mut opts = OpenOptions::new();
        opts.read(true).write(!record.read_only);
        if record.direct {
            opts.custom_flags(libc::O_DIRECT);
        }
        let file = opts
            .open(&record.path)
            .map_err(|e| AgentError::io("cannot open volume file", &record.path, e))?;
        let block_device = file
            .metadata()
            .map_err(|e| AgentError::io("cannot stat", &record.path, e))?
            .file_type()
            .is_block_device();
        let actual = size_of(&file).map_err(|e| AgentError::io("cannot size", &record.path, e))?;
        if actual < record.size_bytes {
            return Err(AgentError::BadRequest(format!(
                "volume {:?}: {} holds {actual} bytes but the volume is {} bytes; it was truncated outside ferry",
                record.name,
                record.path.display(),
                record.size_bytes
            )));
        }
        let info = ExportInfo {
            size_bytes: record.size_bytes,
            read_only: record.read_only,
            description: format!("ferry volume {} on datastore {}", record.name, record.datastore),
            can_trim: true,
            can_fast_zero: true,
            block_bytes_min: if record.direct { 4096 } else { 512 },
            block_bytes_preferred: 4096,
            rotational: false,
        };
        let punt_writes = !record.direct && !block_device && crate::io::punts_buffered_writes(&file);
        Ok(Volume {
            record,
            file: Arc::new(file),
            engine,
            pool,
            info,
            block_device,
            punt_writes,
            inline_write_bytes_max: if punt_writes { inline_max as usize } else { 0 },
            member: RwLock::new(None),
            deleted: std::sync::atomic::AtomicBool::new(false),
            fence: std::sync::Mutex::new(None),
            fenced: std::sync::atomic::AtomicBool::new(false),
            held: std::sync::atomic::AtomicBool::new(false),
            held_change: tokio::sync::Notify::new(),
            stats: ferry_nbd::OpStats::default(),
        })
    }

    /// Fails requests of connections that outlived the volume's deletion.
    fn live(&self) -> ExportResult<()> {
        if self.deleted.load(std::sync::atomic::Ordering::Acquire) {
            return Err(ExportError::new(
                Errno::EIO,
                format!("volume {:?} was deleted", self.record.name),
            ));
        }
        Ok(())
    }

    /// Refuses writes from now on (reads go on), with `why` in each refusal.
    pub fn fence(&self, why: String) {
        *self.fence.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
        self.fenced.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Takes writes again.
    pub fn unfence(&self) {
        self.fenced.store(false, std::sync::atomic::Ordering::Release);
        *self.fence.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Why writes are refused, if they are.
    pub fn fenced(&self) -> Option<String> {
        if !self.fenced.load(std::sync::atomic::Ordering::Acquire) {
            return None;
        }
        self.fence.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Holds writes (they wait; reads go on) until [`Volume::release_writes`].
    pub fn hold_writes(&self) {
        self.held.store(true, std::sync::atomic::Ordering::Release);
    }

    pub fn release_writes(&self) {
        self.held.store(false, std::sync::atomic::Ordering::Release);
        self.held_change.notify_waiters();
    }

    /// Waits while writes are held.
    async fn unheld(&self) {
        while self.held.load(std::sync::atomic::Ordering::Acquire) {
            let changed = self.held_change.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if !self.held.load(std::sync::atomic::Ordering::Acquire) {
                break;
            }
            changed.await;
        }
    }

    /// [`Volume::live`], and not fenced.
    fn writable(&self) -> ExportResult<()> {
        self.live()?;
        match self.fenced() {
            None => Ok(()),
            Some(why) => Err(ExportError::new(
                Errno::EPERM,
                format!("volume {:?} takes no writes: {why}", self.record.name),
            )),
        }
    }

    pub fn file(&self) -> Arc<File> {
        self.file.clone()
    }

    /// Starts (`Some`) or stops capturing this volume's writes into a VPG.
    pub fn set_member(&self, m: Option<(Arc<crate::protect::capture::VpgCapture>, u32)>) {
        *self.member.write().unwrap_or_else(|e| e.into_inner()) = m;
    }

    pub fn member(&self) -> Option<(Arc<crate::protect::capture::VpgCapture>, u32)> {
        self.member.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Runs a trim or write-zeroes with its record captured first (when in a VPG).
    async fn captured_op<F, Fut>(&self, kind: ferry_journal::Kind, offset: u64, len: u64, op: F) -> ExportResult<()>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = ExportResult<()>>,
    {
        let Some((vpg, id)) = self.member() else {
            return op().await;
        };
        let mut c = vpg.begin(kind, id, offset, len);
        c.start().await;
        let r = op().await;
        c.finish(r.as_ref().err().map(|e| e.message.as_str()));
        r
    }

    async fn sync_if(&self, fua: bool) -> ExportResult<()> {
        if fua {
            self.engine.fdatasync(&self.file).await.map_err(|e| err("fdatasync", e))
        } else {
            Ok(())
        }
    }

    async fn write_zero_bytes(&self, offset: u64, len: u64) -> ExportResult<()> {
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(ZERO_CHUNK_BYTES as u64) as usize;
            let mut buf = self.pool.take(n);
            buf.as_mut().fill(0);
            self.engine
                .write(&self.file, offset + done, IoBuf::Plain(buf), false, self.punt_writes)
                .await
                .0
                .map_err(|e| err("write zeroes", e))?;
            done += n as u64;
        }
        Ok(())
    }

    async fn zero_range(&self, offset: u64, len: u64, mode: ZeroMode) -> ExportResult<()> {
        let bits = if mode.may_trim {
            libc::FALLOC_FL_PUNCH_HOLE
        } else {
            libc::FALLOC_FL_ZERO_RANGE
        };
        match self
            .engine
            .fallocate(&self.file, bits | libc::FALLOC_FL_KEEP_SIZE, offset, len)
            .await
        {
            Ok(()) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EOPNOTSUPP) | Some(libc::ENODEV) | Some(libc::EINVAL)
                ) =>
            {
                if mode.fast_only {
                    return Err(ExportError::new(
                        Errno::ENOTSUP,
                        "datastore cannot zero this range quickly",
                    ));
                }
                self.write_zero_bytes(offset, len).await
            }
            Err(e) => Err(err("write zeroes", e)),
        }
    }

    /// Allocation map from `lseek(SEEK_DATA/SEEK_HOLE)`.
    fn extents(&self, offset: u64, len: u64, max: usize) -> io::Result<Vec<Extent>> {
        if self.block_device {
            return Ok(vec![Extent { length: len, flags: 0 }]);
        }
        crate::io::file_extents(&self.file, offset, len, max)
    }
}

impl Export for Volume {
    type Buf = IoBuf;

    fn stats(&self) -> Option<&ferry_nbd::OpStats> {
        Some(&self.stats)
    }

    fn info(&self) -> &ExportInfo {
        &self.info
    }

    fn buffer(&self, len: usize) -> IoBuf {
        IoBuf::Plain(self.pool.take(len))
    }

    fn write_buffer(&self, offset: u64, len: usize) -> IoBuf {
        match self.member() {
            Some((vpg, id)) => IoBuf::Held(vpg.begin(ferry_journal::Kind::Write, id, offset, len as u64)),
            None => IoBuf::Plain(self.pool.take(len)),
        }
    }

    fn speculative_buffer(&self, len: usize) -> Option<IoBuf> {
        let (vpg, id) = self.member()?;
        vpg.speculate(id, len as u64).map(|c| IoBuf::Held(c))
    }

    fn place_buffer(&self, buf: IoBuf, offset: u64, filled: usize) -> IoBuf {
        match (Captured::from_io(buf), self.member()) {
            (Ok(c), Some((vpg, _))) => IoBuf::Held(vpg.place(c, offset, filled)),
            (Ok(c), None) => IoBuf::Held(c),
            (Err(buf), _) => buf,
        }
    }

    fn copy_once(&self) -> bool {
        self.member().is_some()
    }

    async fn read(&self, offset: u64, buf: IoBuf) -> ExportResult<IoBuf> {
        self.live()?;
        let buf = match buf {
            IoBuf::Plain(b) => b,
            IoBuf::Held(c) => {
                // Reads are given plain buffers; a captured one here is a bug upstream.
                error!(?c, "read into a captured write buffer");
                return Err(ExportError::new(Errno::EIO, "internal: read into a write buffer"));
            }
        };
        self.engine
            .read(&self.file, offset, buf)
            .await
            .map(IoBuf::Plain)
            .map_err(|e| err("read", e))
    }

    async fn write(&self, offset: u64, buf: IoBuf, fua: bool) -> ExportResult<()> {
        self.unheld().await;
        self.writable()?;
        let buf = match Captured::from_io(buf) {
            Ok(mut c) => {
                c.start().await;
                IoBuf::Held(c)
            }
            Err(plain) => plain,
        };
        let (r, back) = if buf.len() <= self.inline_write_bytes_max {
            (
                crate::io::write_inline(&self.file, offset, buf.as_ref(), fua),
                Some(buf),
            )
        } else {
            self.engine.write(&self.file, offset, buf, fua, self.punt_writes).await
        };
        if let Some(Ok(c)) = back.map(Captured::from_io) {
            c.finish(r.as_ref().err().map(|e| e.to_string()).as_deref());
            if let Some((vpg, _)) = self.member() {
                vpg.hold_while_behind().await;
            }
        }
        r.map_err(|e| err("write", e))
    }

    async fn flush(&self) -> ExportResult<()> {
        self.live()?;
        if let Some((vpg, _)) = self.member() {
            vpg.flush_journal().await.map_err(|e| err("journal sync", e))?;
        }
        self.engine.fdatasync(&self.file).await.map_err(|e| err("fdatasync", e))
    }

    async fn trim(&self, offset: u64, len: u64, fua: bool) -> ExportResult<()> {
        self.unheld().await;
        self.writable()?;
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        self.captured_op(ferry_journal::Kind::Trim, offset, len, || async {
            match self.engine.fallocate(&self.file, mode, offset, len).await {
                // Trim is a hint; a datastore that cannot punch holes keeps the data.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP) | Some(libc::ENODEV)) => Ok(()),
                r => r.map_err(|e| err("trim", e)),
            }
        })
        .await?;
        self.sync_if(fua).await
    }

    async fn write_zeroes(&self, offset: u64, len: u64, mode: ZeroMode) -> ExportResult<()> {
        self.unheld().await;
        self.writable()?;
        self.captured_op(ferry_journal::Kind::WriteZeroes, offset, len, || {
            self.zero_range(offset, len, mode)
        })
        .await?;
        self.sync_if(mode.fua).await
    }

    async fn cache(&self, offset: u64, len: u64) -> ExportResult<()> {
        self.live()?;
        rustix::fs::fadvise(&*self.file, offset, NonZeroU64::new(len), Advice::WillNeed)
            .map_err(|e| err("cache", e.into()))
    }

    async fn block_status(&self, offset: u64, len: u64, extents_max: usize) -> ExportResult<Vec<Extent>> {
        self.live()?;
        self.extents(offset, len, extents_max)
            .map_err(|e| err("block status", e))
    }
}
