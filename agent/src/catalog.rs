//! Everything this agent serves over NBD: its volumes, and checkpoint views of the replicas
//! it holds for its peers (read-only, named `VPG@SEQ.VOLUME`).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use ferry_nbd::wire::Errno;
use ferry_nbd::{Catalog, Export, ExportError, ExportInfo, ExportResult, Extent, ZeroMode};
use serde::{Deserialize, Serialize};

use crate::checkpoint::CheckpointInfo;
use crate::error::AgentError;
use crate::io::{BufPool, IoBuf};
use crate::protect::volume::Volume;
use crate::protect::volumes::Volumes;
use crate::recover::replica::{Pin, Replica};
use crate::recover::replicas::Replicas;

/// One volume of a replica as it was at a checkpoint.
#[derive(Debug)]
pub struct View {
    replica: Arc<Replica>,
    volume: u32,
    info: ExportInfo,
    pool: Arc<BufPool>,
    _pin: Arc<Pin>,
}

fn read_only() -> ExportError {
    ExportError::new(Errno::EPERM, "a checkpoint export is read-only")
}

impl Export for View {
    type Buf = IoBuf;

    fn info(&self) -> &ExportInfo {
        &self.info
    }

    fn buffer(&self, len: usize) -> IoBuf {
        IoBuf::Plain(self.pool.take(len))
    }

    async fn read(&self, offset: u64, buf: IoBuf) -> ExportResult<IoBuf> {
        let Some(mut b) = buf.into_plain() else {
            return Err(ExportError::new(Errno::EIO, "internal: read into a write buffer"));
        };
        let (r, vol, below) = (self.replica.clone(), self.volume, self._pin.seq);
        let res = tokio::task::spawn_blocking(move || {
            let res = r.read_at(vol, offset, b.as_mut(), below);
            (res, b)
        })
        .await;
        match res {
            Ok((Ok(()), b)) => Ok(IoBuf::Plain(b)),
            Ok((Err(e), _)) => Err(ExportError::from_io("checkpoint read", &e)),
            Err(e) => Err(ExportError::new(Errno::EIO, format!("checkpoint read failed: {e}"))),
        }
    }

    async fn write(&self, _offset: u64, _buf: IoBuf, _fua: bool) -> ExportResult<()> {
        Err(read_only())
    }

    async fn flush(&self) -> ExportResult<()> {
        Ok(())
    }

    async fn trim(&self, _offset: u64, _len: u64, _fua: bool) -> ExportResult<()> {
        Err(read_only())
    }

    async fn write_zeroes(&self, _offset: u64, _len: u64, _mode: ZeroMode) -> ExportResult<()> {
        Err(read_only())
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

/// What the NBD server hands a connection: a volume or a checkpoint view.
#[derive(Debug)]
pub enum Served {
    Volume(Arc<Volume>),
    View(Arc<View>),
}

macro_rules! both {
    ($self:ident, $e:ident => $body:expr) => {
        match $self {
            Served::Volume($e) => $body,
            Served::View($e) => $body,
        }
    };
}

impl Export for Served {
    type Buf = IoBuf;

    fn info(&self) -> &ExportInfo {
        both!(self, e => e.info())
    }

    fn buffer(&self, len: usize) -> IoBuf {
        both!(self, e => e.buffer(len))
    }

    fn write_buffer(&self, offset: u64, len: usize) -> IoBuf {
        both!(self, e => e.write_buffer(offset, len))
    }

    fn speculative_buffer(&self, len: usize) -> Option<IoBuf> {
        both!(self, e => e.speculative_buffer(len))
    }

    fn place_buffer(&self, buf: IoBuf, offset: u64, filled: usize) -> IoBuf {
        both!(self, e => e.place_buffer(buf, offset, filled))
    }

    fn copy_once(&self) -> bool {
        both!(self, e => e.copy_once())
    }

    async fn read(&self, offset: u64, buf: IoBuf) -> ExportResult<IoBuf> {
        both!(self, e => e.read(offset, buf).await)
    }

    async fn write(&self, offset: u64, buf: IoBuf, fua: bool) -> ExportResult<()> {
        both!(self, e => e.write(offset, buf, fua).await)
    }

    async fn flush(&self) -> ExportResult<()> {
        both!(self, e => e.flush().await)
    }

    async fn trim(&self, offset: u64, len: u64, fua: bool) -> ExportResult<()> {
        both!(self, e => e.trim(offset, len, fua).await)
    }

    async fn write_zeroes(&self, offset: u64, len: u64, mode: ZeroMode) -> ExportResult<()> {
        both!(self, e => e.write_zeroes(offset, len, mode).await)
    }

    async fn cache(&self, offset: u64, len: u64) -> ExportResult<()> {
        both!(self, e => e.cache(offset, len).await)
    }

    async fn block_status(&self, offset: u64, len: u64, extents_max: usize) -> ExportResult<Vec<Extent>> {
        both!(self, e => e.block_status(offset, len, extents_max).await)
    }
}

/// A checkpoint export as the control API reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointExport {
    pub vpg: String,
    pub checkpoint: CheckpointInfo,
    /// (volume, export name)
    pub exports: Vec<(String, String)>,
}

/// One checkpoint export: its description and a view per volume.
type ViewSet = (CheckpointExport, Vec<Arc<View>>);

/// The catalogue: volumes first, then checkpoint views.
#[derive(Debug)]
pub struct Exports {
    volumes: Arc<Volumes>,
    replicas: Arc<Replicas>,
    pool: Arc<BufPool>,
    views: RwLock<BTreeMap<String, ViewSet>>,
}

impl Exports {
    pub fn new(volumes: Arc<Volumes>, replicas: Arc<Replicas>, pool: Arc<BufPool>) -> Arc<Exports> {
        Arc::new(Exports {
            volumes,
            replicas,
            pool,
            views: RwLock::new(BTreeMap::new()),
        })
    }

    pub fn replicas(&self) -> &Arc<Replicas> {
        &self.replicas
    }

    /// Exports every volume of replica `vpg` at `checkpoint` (a sequence number, a tag,
    /// or "latest"). Ready at once: nothing is copied.
    pub fn export(&self, vpg: &str, checkpoint: &str) -> Result<CheckpointExport, AgentError> {
        self.replicas.check_loaded()?;
        let r = self.replicas.get(vpg).ok_or_else(|| {
            AgentError::Refused(format!(
                "no replica of a VPG named {vpg:?} here; checkpoints are exported on the recovery site's agent (`ferry replica list` there)"
            ))
        })?;
        let cps = r.checkpoints();
        let cp = match checkpoint {
            "latest" | "" => cps.last(),
            s => match s.parse::<u64>() {
                Ok(seq) => cps.iter().find(|c| c.seq == seq),
                Err(_) => cps.iter().rev().find(|c| c.tag == s),
            },
        }
        .cloned()
        .ok_or_else(|| {
            AgentError::Refused(if cps.is_empty() {
                format!("replica {vpg:?} has no checkpoint yet (the first comes a few seconds after its initial sync)")
            } else {
                format!("replica {vpg:?} has no checkpoint {checkpoint:?}; `ferry checkpoint list {vpg}` shows them")
            })
        })?;
        let key = format!("{vpg}@{}", cp.seq);
        if let Some((e, _)) = self.views.read().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(e.clone());
        }
        let pin = Arc::new(r.pin(cp.seq)?);
        let mut views = Vec::new();
        let mut names = Vec::new();
        for (id, name, size) in r.volumes() {
            let mut info = ExportInfo::new(size);
            info.read_only = true;
            info.can_trim = false;
            info.can_fast_zero = false;
            info.description = format!("VPG {vpg}, volume {name}, checkpoint {} {}", cp.seq, cp.tag);
            views.push(Arc::new(View {
                replica: r.clone(),
                volume: id,
                info,
                pool: self.pool.clone(),
                _pin: pin.clone(),
            }));
            names.push((name.clone(), format!("{key}.{name}")));
        }
        let e = CheckpointExport {
            vpg: vpg.into(),
            checkpoint: cp,
            exports: names,
        };
        self.views
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, (e.clone(), views));
        tracing::info!(vpg, seq = e.checkpoint.seq, "checkpoint exported");
        Ok(e)
    }

    /// Ends the exports of `vpg` (all of them, or the one at `seq`); connections open on
    /// them keep their view until they close.
    pub fn unexport(&self, vpg: &str, seq: Option<u64>) -> usize {
        let mut v = self.views.write().unwrap_or_else(|e| e.into_inner());
        let before = v.len();
        v.retain(|_, (e, _)| !(e.vpg == vpg && seq.is_none_or(|s| s == e.checkpoint.seq)));
        before - v.len()
    }

    pub fn list(&self) -> Vec<CheckpointExport> {
        self.views
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|(e, _)| e.clone())
            .collect()
    }

    fn view(&self, name: &str) -> Option<Arc<View>> {
        // VPG names have no '@' and sequence numbers no '.'; volume names may have '.'.
        let (vpg, rest) = name.split_once('@')?;
        let (seq, vol) = rest.split_once('.')?;
        let views = self.views.read().unwrap_or_else(|e| e.into_inner());
        let (e, vs) = views.get(&format!("{vpg}@{seq}"))?;
        let i = e.exports.iter().position(|(v, _)| v == vol)?;
        vs.get(i).cloned()
    }
}

impl Catalog for Exports {
    type Export = Served;

    fn open(&self, name: &str) -> Option<Arc<Served>> {
        if let Some(v) = self.volumes.open(name) {
            return Some(Arc::new(Served::Volume(v)));
        }
        if name.contains('@') {
            return self.view(name).map(|v| Arc::new(Served::View(v)));
        }
        None
    }

    fn list(&self) -> Vec<(String, String)> {
        let mut out = Catalog::list(&*self.volumes);
        for (e, vs) in self.views.read().unwrap_or_else(|e| e.into_inner()).values() {
            for ((_, name), v) in e.exports.iter().zip(vs) {
                out.push((name.clone(), v.info.description.clone()));
            }
        }
        out
    }
}
