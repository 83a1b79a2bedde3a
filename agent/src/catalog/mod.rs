//! Everything this agent serves over NBD: its volumes, checkpoint views of the replicas it
//! holds for its peers (read-only, named `VPG@SEQ.VOLUME`, in [`view`]), and overlays:
//! copy-on-write scratch layers over a view that a failover test writes to (in
//! [`overlay`]), and files kept read-only (diverged writes, in [`file`]).

pub mod file;
pub mod overlay;
pub mod switch;
pub mod view;

pub use view::View;

use overlay::Overlay;
use switch::Switch;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use ferry_nbd::{Catalog, Export, ExportInfo, ExportResult, Extent, ZeroMode};
use serde::{Deserialize, Serialize};

use crate::checkpoint::CheckpointInfo;
use crate::error::AgentError;
use crate::io::{BufPool, IoBuf};
use crate::protect::volume::Volume;
use crate::protect::volumes::Volumes;
use crate::recover::replica::Replica;
use crate::recover::replicas::Replicas;

/// Fills a read's buffer with `fill` (blocking I/O, off the reactor): the buffer back, or
/// the error as an NBD error naming `what`.
pub(crate) async fn read_off_reactor(
    what: &'static str,
    buf: IoBuf,
    fill: impl FnOnce(&mut [u8]) -> std::io::Result<()> + Send + 'static,
) -> ExportResult<IoBuf> {
    let Some(mut b) = buf.into_plain() else {
        return Err(ferry_nbd::ExportError::new(
            ferry_nbd::wire::Errno::EIO,
            "internal: read into a write buffer",
        ));
    };
    let res = tokio::task::spawn_blocking(move || {
        let r = fill(b.as_mut());
        (r, b)
    })
    .await;
    match res {
        Ok((Ok(()), b)) => Ok(IoBuf::Plain(b)),
        Ok((Err(e), _)) => Err(ferry_nbd::ExportError::from_io(what, &e)),
        Err(e) => Err(ferry_nbd::ExportError::new(
            ferry_nbd::wire::Errno::EIO,
            format!("{what} failed: {e}"),
        )),
    }
}

/// What the NBD server hands a connection: a volume, a checkpoint view, or a test's
/// overlay on one.
#[derive(Debug)]
pub enum Served {
    Volume(Arc<Volume>),
    View(Arc<View>),
    Overlay(Arc<overlay::Overlay<View>>),
    Live(Arc<Switch>),
    File(Arc<file::FileExport>),
}

macro_rules! both {
    ($self:ident, $e:ident => $body:expr) => {
        match $self {
            Served::Volume($e) => $body,
            Served::View($e) => $body,
            Served::Overlay($e) => $body,
            Served::Live($e) => $body,
            Served::File($e) => $body,
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

    fn stats(&self) -> Option<&ferry_nbd::OpStats> {
        both!(self, e => e.stats())
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
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
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
    /// Failover tests' overlays, by export name.
    overlays: RwLock<BTreeMap<String, Arc<Overlay<View>>>>,
    /// Live failovers' volumes, by production name (found before this agent's volumes).
    live: RwLock<BTreeMap<String, Arc<Switch>>>,
    /// Diverged writes kept for salvage, served read-only as `VPG@diverged-eN.VOLUME`.
    diverged: crate::diverged::Diverged,
    /// Names not served for now (a live failover not yet found again after a start).
    reserved: RwLock<std::collections::BTreeSet<String>>,
}

impl Exports {
    pub fn new(
        volumes: Arc<Volumes>,
        replicas: Arc<Replicas>,
        pool: Arc<BufPool>,
        diverged: crate::diverged::Diverged,
    ) -> Arc<Exports> {
        Arc::new(Exports {
            volumes,
            replicas,
            pool,
            views: RwLock::new(BTreeMap::new()),
            overlays: RwLock::new(BTreeMap::new()),
            live: RwLock::new(BTreeMap::new()),
            diverged,
            reserved: RwLock::new(std::collections::BTreeSet::new()),
        })
    }

    /// Serves nothing under `name` until [`Exports::unreserve`].
    pub fn reserve(&self, name: &str) {
        self.reserved
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.into());
    }

    pub fn unreserve(&self, name: &str) {
        self.reserved.write().unwrap_or_else(|e| e.into_inner()).remove(name);
    }

    pub fn unreserve_all(&self) {
        self.reserved.write().unwrap_or_else(|e| e.into_inner()).clear();
    }

    pub fn volumes(&self) -> &Arc<Volumes> {
        &self.volumes
    }

    /// Serves a live failover's volume under its production name `name`.
    pub fn add_live(&self, name: String, s: Arc<Switch>) {
        self.live.write().unwrap_or_else(|e| e.into_inner()).insert(name, s);
    }

    /// Stops serving the live failover's volume `name` (new connections then find this
    /// agent's volume of that name, if it has one).
    pub fn remove_live(&self, name: &str) -> Option<Arc<Switch>> {
        self.live.write().unwrap_or_else(|e| e.into_inner()).remove(name)
    }

    /// Whether `name` is taken by a volume of this agent or a live failover.
    pub fn name_taken(&self, name: &str) -> bool {
        self.live.read().unwrap_or_else(|e| e.into_inner()).contains_key(name) || self.volumes.get(name).is_some()
    }

    pub fn replicas(&self) -> &Arc<Replicas> {
        &self.replicas
    }

    /// The replica of `vpg` and its checkpoint `checkpoint` (a sequence number, a tag, or
    /// "latest"), or why not.
    pub fn checkpoint_of(&self, vpg: &str, checkpoint: &str) -> Result<(Arc<Replica>, CheckpointInfo), AgentError> {
        self.replicas.check_loaded()?;
        let r = self.replicas.get(vpg).ok_or_else(|| {
            AgentError::Refused(format!(
                "no replica of a VPG named {vpg:?} here; checkpoints are exported on the recovery site's agent (`ferry replica list` there)"
            ))
        })?;
        let cps = r.checkpoints();
        let at = crate::size::parse_utc(checkpoint);
        if let (Some(t), Some(oldest)) = (at, cps.first())
            && t < oldest.unix_ms
        {
            return Err(AgentError::Refused(format!(
                "replica {vpg:?} holds nothing as old as {}: its oldest checkpoint is {} at {}",
                crate::size::utc(t),
                oldest.seq,
                crate::size::utc(oldest.unix_ms)
            )));
        }
        let cp = match checkpoint {
            "latest" | "" => cps.last(),
            s => match (s.parse::<u64>(), at) {
                (Ok(seq), _) => cps.iter().find(|c| c.seq == seq),
                // The newest checkpoint at or before the time.
                (_, Some(t)) => cps.iter().rev().find(|c| c.unix_ms <= t),
                _ => cps.iter().rev().find(|c| c.tag == s),
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
        Ok((r, cp))
    }

    /// A read-only view of each volume of replica `r` at `cp` (the point pinned while any
    /// of them lives), with the volume's name.
    pub fn views_at(&self, r: &Arc<Replica>, cp: &CheckpointInfo) -> Result<Vec<(String, Arc<View>)>, AgentError> {
        let pin = Arc::new(r.pin(cp.seq)?);
        let vpg = r.spec().name;
        Ok(r.volumes()
            .into_iter()
            .map(|(id, name, size)| {
                let mut info = ExportInfo::new(size);
                info.read_only = true;
                info.can_trim = false;
                info.can_fast_zero = false;
                info.description = format!("VPG {vpg}, volume {name}, checkpoint {} {}", cp.seq, cp.tag);
                let view = Arc::new(View {
                    replica: r.clone(),
                    volume: id,
                    info,
                    pool: self.pool.clone(),
                    _pin: pin.clone(),
                });
                (name, view)
            })
            .collect())
    }

    pub fn pool(&self) -> &Arc<BufPool> {
        &self.pool
    }

    /// Exports every volume of replica `vpg` at `checkpoint` (a sequence number, a tag,
    /// or "latest"). Ready at once: nothing is copied.
    pub fn export(&self, vpg: &str, checkpoint: &str) -> Result<CheckpointExport, AgentError> {
        let (r, cp) = self.checkpoint_of(vpg, checkpoint)?;
        let key = format!("{vpg}@{}", cp.seq);
        if let Some((e, _)) = self.views.read().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(e.clone());
        }
        let (names, views): (Vec<_>, Vec<_>) = self
            .views_at(&r, &cp)?
            .into_iter()
            .map(|(name, v)| ((name.clone(), format!("{key}.{name}")), v))
            .unzip();
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

    /// Serves `overlay` under `name` (a failover test's export).
    pub fn add_overlay(&self, name: String, overlay: Arc<Overlay<View>>) {
        self.overlays
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name, overlay);
    }

    /// Diverged writes kept here.
    pub fn diverged(&self) -> &crate::diverged::Diverged {
        &self.diverged
    }

    /// Stops serving the overlay `name`.
    pub fn remove_overlay(&self, name: &str) -> Option<Arc<Overlay<View>>> {
        self.overlays.write().unwrap_or_else(|e| e.into_inner()).remove(name)
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
        if self.reserved.read().unwrap_or_else(|e| e.into_inner()).contains(name) {
            return None;
        }
        if let Some(s) = self.live.read().unwrap_or_else(|e| e.into_inner()).get(name) {
            return Some(Arc::new(Served::Live(s.clone())));
        }
        if let Some(v) = self.volumes.open(name) {
            return Some(Arc::new(Served::Volume(v)));
        }
        if name.contains('@') {
            if let Some(o) = self.overlays.read().unwrap_or_else(|e| e.into_inner()).get(name) {
                return Some(Arc::new(Served::Overlay(o.clone())));
            }
            if let Some((path, description)) = self.diverged.lookup(name) {
                return match std::fs::File::open(&path)
                    .and_then(|f| file::FileExport::new(f, description, self.pool.clone()))
                {
                    Ok(f) => Some(Arc::new(Served::File(Arc::new(f)))),
                    Err(e) => {
                        tracing::warn!(file = %path.display(), error = %e, "cannot serve diverged writes");
                        None
                    }
                };
            }
            return self.view(name).map(|v| Arc::new(Served::View(v)));
        }
        None
    }

    fn list(&self) -> Vec<(String, String)> {
        let live = self.live.read().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<(String, String)> = Catalog::list(&*self.volumes)
            .into_iter()
            .filter(|(n, _)| !live.contains_key(n))
            .collect();
        for (name, s) in live.iter() {
            out.push((name.clone(), s.info().description.clone()));
        }
        drop(live);
        for (e, vs) in self.views.read().unwrap_or_else(|e| e.into_inner()).values() {
            for ((_, name), v) in e.exports.iter().zip(vs) {
                out.push((name.clone(), v.info.description.clone()));
            }
        }
        for (name, o) in self.overlays.read().unwrap_or_else(|e| e.into_inner()).iter() {
            out.push((name.clone(), o.info().description.clone()));
        }
        for set in self.diverged.list(None) {
            for v in set.volumes {
                if let Some((_, d)) = self.diverged.lookup(&v.export) {
                    out.push((v.export, d));
                }
            }
        }
        out
    }
}
