//! Volumes: named disks on datastores, served as NBD exports. [`Volume`] carries out the
//! data operations through the I/O engine; [`Volumes`] is the catalogue the NBD server and
//! the control API share, with the registry on disk kept in step.
//!
//! Copies on the write path: the NBD server reads the payload from the socket into the
//! buffer [`Volume`] hands out when the request's header arrives, and the datastore write
//! is issued from that same memory. For a volume in a VPG that memory is the write's slot in
//! the VPG's mapped journal ring ([`crate::protect::vpg`]), which the journal's consumer reads in
//! place; otherwise a pooled [`crate::io::AlignedBuf`]. There is no other copy.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::num::NonZeroU64;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use ferry_nbd::wire::{Errno, STATE_HOLE, STATE_ZERO};
use ferry_nbd::{Catalog, Export, ExportError, ExportInfo, ExportResult, Extent, ZeroMode};
use rustix::fs::{Advice, SeekFrom};
use serde::Serialize;
use tracing::{error, info};

use crate::config::DatastoreConfig;
use crate::error::AgentError;
use crate::io::{BufPool, Engine, IoBuf};
use crate::meta::{self, Registry, STATE_FORMAT_VERSION, VolumeRecord};
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
    info: ExportInfo,
    block_device: bool,
    /// Buffered writes to this file always go to a kernel worker (see `punts_buffered_writes`).
    punt_writes: bool,
    /// Such writes up to this size are done inline instead (`io.inline_write_bytes_max`).
    inline_write_bytes_max: usize,
    /// The VPG capturing this volume's writes, and the volume's id in it.
    member: RwLock<Option<(Arc<crate::protect::capture::VpgCapture>, u32)>>,
    /// Deleted (with `--force`, clients connected): every request of theirs fails.
    deleted: std::sync::atomic::AtomicBool,
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
fn largest_file_bytes(file: &File) -> u64 {
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
fn size_of(file: &File) -> io::Result<u64> {
    let meta = file.metadata()?;
    if meta.file_type().is_block_device() {
        Ok(rustix::fs::seek(file, SeekFrom::End(0))?)
    } else {
        Ok(meta.len())
    }
}

impl Volume {
    fn open(
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
        let end = offset + len;
        if self.block_device {
            return Ok(vec![Extent { length: len, flags: 0 }]);
        }
        let mut out = Vec::new();
        let mut pos = offset;
        while pos < end && out.len() < max {
            let data = match rustix::fs::seek(&*self.file, SeekFrom::Data(pos)) {
                Ok(d) => d,
                Err(rustix::io::Errno::NXIO) => end,
                Err(e) => return Err(e.into()),
            };
            if data > pos {
                let stop = data.min(end);
                out.push(Extent {
                    length: stop - pos,
                    flags: STATE_HOLE | STATE_ZERO,
                });
                pos = stop;
                continue;
            }
            let hole = rustix::fs::seek(&*self.file, SeekFrom::Hole(pos))?;
            let stop = hole.min(end).max(pos + 1);
            out.push(Extent {
                length: stop - pos,
                flags: 0,
            });
            pos = stop;
        }
        Ok(out)
    }
}

impl Export for Volume {
    type Buf = IoBuf;

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
        self.live()?;
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
        self.live()?;
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
        self.live()?;
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

/// A volume as the control API reports it.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct VolumeStatus {
    #[serde(flatten)]
    pub record: VolumeRecord,
    /// "online", or why the volume cannot be served.
    pub state: String,
    /// Open NBD sessions and requests holding the volume.
    pub in_use: bool,
}

/// The catalogue of volumes, shared by the NBD server and the control API.
#[derive(Debug)]
pub struct Volumes {
    state_dir: PathBuf,
    datastores: Vec<DatastoreConfig>,
    direct_default: bool,
    default_export: Option<String>,
    inline_write_bytes_max: u32,
    engine: Arc<Engine>,
    pool: Arc<BufPool>,
    online: RwLock<BTreeMap<String, Arc<Volume>>>,
    /// Registered volumes that could not be opened, with the reason.
    offline: RwLock<BTreeMap<String, (VolumeRecord, String)>>,
    /// Serialises changes to the registry.
    change: tokio::sync::Mutex<()>,
}

fn check_name(name: &str) -> Result<(), AgentError> {
    crate::meta::name_problem("volume", name).map_or(Ok(()), |why| Err(AgentError::BadRequest(why)))
}

#[derive(Debug)]
pub struct VolumesConfig {
    pub state_dir: PathBuf,
    pub datastores: Vec<DatastoreConfig>,
    pub direct_default: bool,
    pub default_export: Option<String>,
    pub inline_write_bytes_max: u32,
}

impl Volumes {
    /// Opens every registered volume; one that cannot be opened is kept offline, with the
    /// reason logged and shown by `ferry volume list`, and the others are served.
    pub fn load(cfg: VolumesConfig, engine: Arc<Engine>, pool: Arc<BufPool>) -> Result<Volumes, AgentError> {
        let reg = meta::load(&cfg.state_dir)?;
        let mut online = BTreeMap::new();
        let mut offline = BTreeMap::new();
        for record in reg.volumes {
            match Volume::open(record.clone(), engine.clone(), pool.clone(), cfg.inline_write_bytes_max) {
                Ok(v) => {
                    online.insert(record.name.clone(), Arc::new(v));
                }
                Err(e) => {
                    error!(volume = %record.name, error = %e, "volume is offline");
                    offline.insert(record.name.clone(), (record, e.to_string()));
                }
            }
        }
        info!(online = online.len(), offline = offline.len(), "volumes loaded");
        Ok(Volumes {
            state_dir: cfg.state_dir,
            datastores: cfg.datastores,
            direct_default: cfg.direct_default,
            default_export: cfg.default_export,
            inline_write_bytes_max: cfg.inline_write_bytes_max,
            engine,
            pool,
            online: RwLock::new(online),
            offline: RwLock::new(offline),
            change: tokio::sync::Mutex::new(()),
        })
    }

    fn records(&self) -> Vec<VolumeRecord> {
        let mut all: Vec<VolumeRecord> = self
            .online
            .read()
            .expect("lock")
            .values()
            .map(|v| v.record.clone())
            .collect();
        all.extend(self.offline.read().expect("lock").values().map(|(r, _)| r.clone()));
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    fn exists(&self, name: &str) -> bool {
        self.online.read().expect("lock").contains_key(name) || self.offline.read().expect("lock").contains_key(name)
    }

    fn save(&self, extra: Option<&VolumeRecord>, without: Option<&str>) -> Result<(), AgentError> {
        let mut volumes: Vec<VolumeRecord> = self
            .records()
            .into_iter()
            .filter(|r| Some(r.name.as_str()) != without)
            .collect();
        volumes.extend(extra.cloned());
        meta::save(
            &self.state_dir,
            &Registry {
                version: STATE_FORMAT_VERSION,
                volumes,
            },
        )
    }

    pub fn list(&self) -> Vec<VolumeStatus> {
        let mut out: Vec<VolumeStatus> = self
            .online
            .read()
            .expect("lock")
            .values()
            .map(|v| VolumeStatus {
                record: v.record.clone(),
                state: "online".into(),
                in_use: Arc::strong_count(v) > 1,
            })
            .collect();
        out.extend(
            self.offline
                .read()
                .expect("lock")
                .values()
                .map(|(r, why)| VolumeStatus {
                    record: r.clone(),
                    state: format!("offline: {why}"),
                    in_use: false,
                }),
        );
        out.sort_by(|a, b| a.record.name.cmp(&b.record.name));
        out
    }

    fn datastore(&self, name: Option<&str>) -> Result<&DatastoreConfig, AgentError> {
        match name {
            Some(n) => self
                .datastores
                .iter()
                .find(|d| d.name == n)
                .ok_or_else(|| AgentError::NoDatastore(n.into())),
            None => Ok(&self.datastores[0]),
        }
    }

    fn check_size(size: u64, direct: bool) -> Result<(), AgentError> {
        let align = if direct { 4096 } else { 512 };
        if size == 0 || !size.is_multiple_of(align) {
            return Err(AgentError::BadRequest(format!(
                "size {size} must be a non-zero multiple of {align} bytes"
            )));
        }
        if size > VOLUME_BYTES_MAX {
            return Err(AgentError::BadRequest(format!(
                "size {} is over the largest volume ferry serves, {} ({VOLUME_BYTES_MAX} bytes)",
                crate::size::human(size),
                crate::size::human(VOLUME_BYTES_MAX)
            )));
        }
        Ok(())
    }

    fn register(&self, record: VolumeRecord) -> Result<VolumeStatus, AgentError> {
        let vol = Volume::open(
            record.clone(),
            self.engine.clone(),
            self.pool.clone(),
            self.inline_write_bytes_max,
        )?;
        self.save(Some(&record), None)?;
        self.online
            .write()
            .expect("lock")
            .insert(record.name.clone(), Arc::new(vol));
        info!(volume = %record.name, path = %record.path.display(), size_bytes = record.size_bytes, "volume added");
        Ok(VolumeStatus {
            record,
            state: "online".into(),
            in_use: false,
        })
    }

    /// Creates a volume: a new sparse file in a directory datastore, or the whole of a
    /// block-device datastore.
    pub async fn create(
        &self,
        name: &str,
        size: Option<u64>,
        datastore: Option<&str>,
        direct: Option<bool>,
    ) -> Result<VolumeStatus, AgentError> {
        check_name(name)?;
        let _g = self.change.lock().await;
        if self.exists(name) {
            return Err(AgentError::VolumeExists(name.into()));
        }
        let ds = self.datastore(datastore)?;
        let direct = direct.unwrap_or(self.direct_default);
        let meta = std::fs::metadata(&ds.path);
        let is_device = meta.as_ref().is_ok_and(|m| m.file_type().is_block_device());
        let (path, size_bytes) = if is_device {
            if let Some(other) = self.records().into_iter().find(|r| r.path == ds.path) {
                return Err(AgentError::BadRequest(format!(
                    "datastore {:?} is a block device and already holds volume {:?}",
                    ds.name, other.name
                )));
            }
            let f = File::open(&ds.path).map_err(|e| AgentError::io("cannot open datastore", &ds.path, e))?;
            let dev = size_of(&f).map_err(|e| AgentError::io("cannot size", &ds.path, e))?;
            let size = size.unwrap_or(dev);
            if size > dev {
                return Err(AgentError::BadRequest(format!(
                    "size {size} exceeds block device {} ({dev} bytes)",
                    ds.path.display()
                )));
            }
            (ds.path.clone(), size)
        } else {
            let size = size.ok_or_else(|| {
                AgentError::BadRequest("--size is required for a volume in a directory datastore".into())
            })?;
            Self::check_size(size, direct)?;
            std::fs::create_dir_all(&ds.path)
                .map_err(|e| AgentError::io("cannot create datastore directory", &ds.path, e))?;
            let path = ds.path.join(format!("{name}.img"));
            let f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(|e| {
                    if e.kind() == io::ErrorKind::AlreadyExists {
                        AgentError::BadRequest(format!(
                            "{} already exists; adopt it with `ferry volume adopt {name} {}` or remove it",
                            path.display(),
                            path.display()
                        ))
                    } else {
                        AgentError::io("cannot create volume file", &path, e)
                    }
                })?;
            // Nothing is left behind when the file cannot take the size.
            let sized = f
                .set_len(size)
                .map_err(|e| match e.raw_os_error() {
                    Some(libc::EFBIG) | Some(libc::EINVAL) => {
                        let largest = largest_file_bytes(&f);
                        AgentError::BadRequest(format!(
                            "size {} is more than datastore {:?} can hold in one file; the largest is {} ({largest} bytes)",
                            crate::size::human(size),
                            ds.name,
                            crate::size::human(largest),
                        ))
                    }
                    Some(libc::ENOSPC) => AgentError::BadRequest(format!(
                        "datastore {:?} has no room for a volume of {}: {e}",
                        ds.name,
                        crate::size::human(size)
                    )),
                    _ => AgentError::io("cannot size volume file", &path, e),
                })
                .and_then(|()| {
                    f.sync_all()
                        .map_err(|e| AgentError::io("cannot sync volume file", &path, e))
                });
            if let Err(e) = sized {
                drop(f);
                let _ = std::fs::remove_file(&path);
                return Err(e);
            }
            (path, size)
        };
        Self::check_size(size_bytes, direct)?;
        let record = VolumeRecord {
            name: name.into(),
            datastore: ds.name.clone(),
            path,
            size_bytes,
            direct,
            read_only: false,
            adopted: false,
        };
        let made_file = !is_device;
        self.register(record.clone()).inspect_err(|_| {
            if made_file {
                let _ = std::fs::remove_file(&record.path);
            }
        })
    }

    /// Serves an existing file or block device as a volume; deleting the volume keeps it.
    pub async fn adopt(
        &self,
        name: &str,
        path: &Path,
        read_only: bool,
        direct: Option<bool>,
    ) -> Result<VolumeStatus, AgentError> {
        check_name(name)?;
        let _g = self.change.lock().await;
        if self.exists(name) {
            return Err(AgentError::VolumeExists(name.into()));
        }
        let path = std::fs::canonicalize(path).map_err(|e| AgentError::io("cannot find", path, e))?;
        if let Some(what) = self.agent_owned(&path) {
            return Err(AgentError::BadRequest(format!(
                "{} is {what}, which the agent itself owns: serving it as a volume would let writes destroy it",
                path.display()
            )));
        }
        if let Some(other) = self.records().into_iter().find(|r| r.path == path) {
            return Err(AgentError::BadRequest(format!(
                "{} is already volume {:?}",
                path.display(),
                other.name
            )));
        }
        let f = File::open(&path).map_err(|e| AgentError::io("cannot open", &path, e))?;
        let size_bytes = size_of(&f).map_err(|e| AgentError::io("cannot size", &path, e))?;
        let direct = direct.unwrap_or(self.direct_default);
        Self::check_size(size_bytes, direct)?;
        let record = VolumeRecord {
            name: name.into(),
            datastore: "adopted".into(),
            path,
            size_bytes,
            direct,
            read_only,
            adopted: true,
        };
        self.register(record)
    }

    /// What of the agent's own `path` is (in its state directory: VPGs' journals and dirty
    /// maps, the registries; a datastore's replicas: history and images), if it is.
    fn agent_owned(&self, path: &Path) -> Option<&'static str> {
        let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        for ds in &self.datastores {
            if path.starts_with(canon(&ds.path).join("replicas")) {
                return Some("part of a replica held for a peer (history or image)");
            }
        }
        let state = canon(&self.state_dir);
        if path.starts_with(state.join("vpgs")) {
            return Some("a VPG's journal or dirty map");
        }
        let own = ["volumes.json", "vpgs.json", "agent.lock"];
        if path.parent() == Some(state.as_path())
            && path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| own.contains(&n) || n.ends_with(".tmp"))
        {
            return Some("one of the agent's registries");
        }
        None
    }

    /// Removes a volume (and its file, unless adopted or a block device).
    pub async fn delete(&self, name: &str, force: bool) -> Result<(), AgentError> {
        let _g = self.change.lock().await;
        let online = self.online.read().expect("lock").get(name).cloned();
        let record = match (&online, self.offline.read().expect("lock").get(name)) {
            (Some(v), _) => v.record.clone(),
            (None, Some((r, _))) => r.clone(),
            (None, None) => return Err(AgentError::NoVolume(name.into())),
        };
        if let Some((vpg, _)) = online.as_ref().and_then(|v| v.member()) {
            return Err(AgentError::BadRequest(format!(
                "volume {name:?} is in VPG {:?}; delete the VPG first (`ferry vpg delete {}`)",
                vpg.name, vpg.name
            )));
        }
        if let Some(v) = &online
            && Arc::strong_count(v) > 2
            && !force
        {
            return Err(AgentError::VolumeInUse(name.into()));
        }
        self.save(None, Some(name))?;
        if let Some(v) = online {
            v.deleted.store(true, std::sync::atomic::Ordering::Release);
        }
        self.online.write().expect("lock").remove(name);
        self.offline.write().expect("lock").remove(name);
        let is_device = std::fs::metadata(&record.path).is_ok_and(|m| m.file_type().is_block_device());
        if !record.adopted
            && !is_device
            && let Err(e) = std::fs::remove_file(&record.path)
            && e.kind() != io::ErrorKind::NotFound
        {
            return Err(AgentError::io(
                "volume removed, but cannot delete its file",
                &record.path,
                e,
            ));
        }
        info!(volume = %name, "volume deleted");
        Ok(())
    }

    /// The online volume called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Volume>> {
        self.online.read().expect("lock").get(name).cloned()
    }

    /// fdatasync of every online volume (at shutdown).
    pub async fn flush_all(&self) {
        let vols: Vec<Arc<Volume>> = self.online.read().expect("lock").values().cloned().collect();
        for v in vols {
            if !v.record.read_only
                && let Err(e) = v.flush().await
            {
                error!(volume = %v.record.name, error = %e, "flush at shutdown failed");
            }
        }
    }
}

impl Catalog for Volumes {
    type Export = Volume;

    fn open(&self, name: &str) -> Option<Arc<Volume>> {
        let online = self.online.read().expect("lock");
        if name.is_empty() {
            return match &self.default_export {
                Some(d) => online.get(d).cloned(),
                None if online.len() == 1 => online.values().next().cloned(),
                None => None,
            };
        }
        online.get(name).cloned()
    }

    fn list(&self) -> Vec<(String, String)> {
        self.online
            .read()
            .expect("lock")
            .values()
            .map(|v| (v.record.name.clone(), v.info.description.clone()))
            .collect()
    }
}
