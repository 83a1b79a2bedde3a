//! The recovery site: per VPG, its history (received records, in segment files, durable
//! before they are acknowledged), its replica volumes (the oldest point still in history)
//! and the checkpoint views served over NBD.
//!
//! On the recovery datastore, `replicas/VPG/` holds:
//! - `replica.json`: the VPG as the protected site announced it, and `applied_seq` (the
//!   replica images hold every record below it) with `applying_until` (an apply in
//!   progress: on restart it is finished before anything is served);
//! - `history/SEQ.seg`: segments ([`ferry_journal::history`]), named by first sequence;
//! - `VOLUME.img`: the replica images, sparse, the size of the protected volumes.
//!
//! A checkpoint view at sequence `C` reads the replica and lays over it, in sequence order,
//! the history records in `applied_seq .. C` that overlap the read: no copy of the volume,
//! ready at once. While a view exists, its point is pinned: records at or past it are not
//! applied to the replica (history then grows past its window; the hard limit raises an
//! event). Reads hold the index's read lock, and a record leaves the index only after it
//! was written to the replica, so a read never misses a record that is being applied.
//!
//! Aging: every second, records older than the history window, or the oldest ones while
//! history is over its hard limit, are applied in sequence order; then the replica images
//! are synced, `applied_seq` is stored, and whole segments below it are deleted.
//!
//! Scale: memory does not grow with history beyond a summary per segment. A segment's
//! records are held in memory while it is written; once it is closed and durable its index
//! is written beside it (`history/SEQ.idx`), and lookups read it back through a cache of
//! bounded size ([`segments`]). A restart reads the summaries of the indexes and scans only
//! segments that have none (the one being written at a crash).
//!
//! ## Locks
//!
//! In the order they may be taken: `Replicas::creating` → `Replicas::map`;
//! `Replica::writer` → `Replica::hist` → the leaves (`meta`, `durable_seq`, `pins`,
//! `life`, `last_received_ms`, the event log), which are never held while another
//! lock is taken. Only two are held across I/O, each as the token of one writer: `writer`
//! (the history segments' appends, syncs and creation: the receiver's, and the apply's
//! look at the current segment) and `creating` (a replica's files being made). Reads of
//! checkpoints, the apply and status hold no lock across I/O: an apply that fails, or a
//! full disk, can slow the receiver but never block status, NBD or another replica.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use ferry_journal::history::{self, HistRecord, KIND_END, RECORD_HEADER_BYTES, SegmentHeader};
use ferry_proto::message::VpgSpec;
use ferry_proto::records::{RecordKind, RecordRef};
use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use crate::checkpoint::CheckpointInfo;
use crate::clock::now_ms;
use crate::error::AgentError;
use crate::events::{Event, EventLog};
use crate::meta::Lineage;
use crate::recover::state::{self, Life, ReplicaState};

mod aging;
mod delta;
mod index;
mod pins;
mod role;
mod segments;

pub use delta::{ChangedSinceFailover, changed_path};
pub use pins::Pin;
use pins::Pins;
pub use role::ToPeer;
use segments::Segment;
pub use segments::set_tuning as set_history_tuning;

/// Records longer than this are indexed apart (few: large writes, trims, zeroing).
const SMALL_BYTES_MAX: u64 = 1 << 20;

/// What `replica.json` holds.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReplicaMeta {
    /// The VPG as its protected site last announced it, with its lineage and epoch.
    pub spec: VpgSpec,
    pub applied_seq: u64,
    pub applying_until: u64,
    pub created_unix_ms: u64,
    /// The protected site as last seen.
    #[serde(default)]
    pub peer: Option<PeerSeen>,
    /// The VPG runs here since a live failover at this epoch (needing commit, or
    /// committed): a protected site of an older epoch is told to fence itself.
    #[serde(default)]
    pub runs_here: Option<u64>,
    /// A live failover at this epoch was rolled back: the protected site, at an older
    /// epoch, is told to take this one and write again.
    #[serde(default)]
    pub unfence_due: Option<u64>,
    /// Split brain: the protected site, fenced by a failover here that it was not there
    /// for, holds writes this site never received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_brain: Option<SplitBrainSeen>,
    /// (epoch, the history sequence at which it began here), the newest few.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub epochs: Vec<(u64, u64)>,
}

/// A split brain as the site that took the VPG over sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SplitBrainSeen {
    /// The epoch of the failover here.
    pub epoch: u64,
    /// Written at the protected site and never received here.
    pub there_bytes: u64,
    pub since_unix_ms: u64,
}

/// A protected site as the recovery site saw it open a VPG: where from, and which pairing
/// key it proved it holds (by fingerprint), so the replica can later be shipped back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PeerSeen {
    pub address: String,
    pub key_fingerprint: String,
    pub unix_ms: u64,
}

/// A record in the history index.
#[derive(Clone, Copy, Debug)]
struct Rec {
    seq: u64,
    kind: RecordKind,
    volume: u32,
    offset: u64,
    length: u64,
    segment: u64,
    data_pos: u64,
    received_ms: u64,
}

/// The in-memory picture of history: each segment's summary (and the records of those
/// not yet indexed on disk), the checkpoints, and the applied point.
#[derive(Debug, Default)]
struct History {
    checkpoints: BTreeMap<u64, CheckpointInfo>,
    segments: BTreeMap<u64, Segment>,
    /// The sequence number after the last whole batch written (durable or not).
    next_seq: u64,
    /// Bytes of all segments.
    bytes: u64,
    /// Every record below it is in the replica images: lookups skip them.
    floor: u64,
    /// Records at or past `floor`.
    live: u64,
    /// When the oldest of them was received.
    oldest_ms: Option<u64>,
}

impl History {
    /// Segments that may hold records in `floor .. below`.
    fn live_segments(&self, below: u64) -> impl Iterator<Item = &Segment> {
        let floor = self.floor;
        self.segments
            .range(..below)
            .map(|(_, s)| s)
            .filter(move |s| s.next_seq > floor)
    }
}

/// The writer's current segment.
#[derive(Debug, Default)]
struct Writer {
    current: Option<u64>,
    /// Closed segments whose index is written once they are durable (by the next sync).
    closed: Vec<u64>,
    /// Segments written since the last sync (the current one and any just closed).
    unsynced: Vec<Arc<File>>,
    dir_unsynced: bool,
}

/// One VPG's replica at the recovery site.
pub struct Replica {
    pub(crate) dir: PathBuf,
    meta: Mutex<ReplicaMeta>,
    images: BTreeMap<u32, (String, Arc<File>)>,
    hist: RwLock<History>,
    writer: Mutex<Writer>,
    /// The sequence number below which everything is durable.
    durable_seq: Mutex<u64>,
    pins: Mutex<Pins>,
    events: EventLog,
    last_received_ms: Mutex<u64>,
    /// Its state machine ([`crate::recover::state`]): sessions, the apply, deleted.
    life: Mutex<Life>,
    /// What a live failover has for the protected site, and its answer.
    role: role::Role,
    /// Its segments' key in the index cache.
    cache_id: u64,
}

impl Drop for Replica {
    fn drop(&mut self) {
        segments::cache_forget_replica(self.cache_id);
    }
}

/// A replication session's hold on a replica (see [`Replica::in_session`]).
#[derive(Debug)]
pub struct SessionHold(Arc<Replica>);

impl SessionHold {
    pub fn replica(&self) -> &Arc<Replica> {
        &self.0
    }
}

impl Drop for SessionHold {
    fn drop(&mut self) {
        self.0.change(state::Input::SessionClosed);
    }
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// A replica as `ferry replica list` and the status show it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReplicaStatus {
    pub name: String,
    pub id: u64,
    /// The VPG's lineage (unknown: made before lineages, until its site opens it again).
    #[serde(default)]
    pub lineage: Lineage,
    #[serde(default)]
    pub epoch: u64,
    /// (epoch, the history sequence at which it began here).
    #[serde(default)]
    pub epochs: Vec<(u64, u64)>,
    /// The protected site as last seen.
    #[serde(default)]
    pub peer: Option<PeerSeen>,
    #[schema(value_type = String)]
    pub dir: PathBuf,
    pub volumes: Vec<String>,
    /// The size of its volumes.
    #[serde(default)]
    pub volume_bytes: u64,
    pub applied_seq: u64,
    pub durable_seq: u64,
    pub history_records: u64,
    pub history_bytes: u64,
    pub history_bytes_max: u64,
    pub history_secs: u64,
    pub oldest_point_ms: Option<u64>,
    pub last_received_ms: u64,
    pub checkpoints: Vec<CheckpointInfo>,
    pub pinned: Vec<u64>,
    pub events: Vec<Event>,
    /// Its state (absent from older agents' answers).
    #[serde(default)]
    pub state: ReplicaState,
    /// Both sites hold writes the other has not (see [`SplitBrainSeen`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_brain: Option<SplitBrainSeen>,
}

pub(crate) fn io_err<'a>(what: &'static str, path: &'a Path) -> impl Fn(io::Error) -> AgentError + 'a {
    move |e| AgentError::io(what, path, e)
}

fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}.seg")
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

impl Replica {
    pub(crate) fn meta_path(dir: &Path) -> PathBuf {
        dir.join("replica.json")
    }

    fn history_dir(&self) -> PathBuf {
        self.dir.join("history")
    }

    pub fn push_event(&self, message: String) {
        if self.events.push(message.clone()) {
            warn!(replica = %self.dir.display(), "{message}");
        }
    }

    fn save_meta(&self, meta: &ReplicaMeta) -> Result<(), AgentError> {
        crate::meta::store(&self.dir, &Self::meta_path(&self.dir), crate::meta::REPLICA, meta)
    }

    /// Makes a new replica for `spec` in `dir`.
    /// Whether `dir` holds a replica's metadata (or its previous copy).
    pub(crate) fn has_meta(dir: &Path) -> bool {
        let p = Self::meta_path(dir);
        p.exists() || p.with_extension("json.prev").exists()
    }

    pub(crate) fn create(dir: &Path, spec: &VpgSpec, peer: &PeerSeen) -> Result<Arc<Replica>, AgentError> {
        std::fs::create_dir_all(dir.join("history")).map_err(io_err("cannot create", dir))?;
        let meta = ReplicaMeta {
            spec: spec.clone(),
            applied_seq: 0,
            applying_until: 0,
            created_unix_ms: now_ms(),
            peer: Some(peer.clone()),
            runs_here: None,
            unfence_due: None,
            split_brain: None,
            epochs: Vec::new(),
        };
        crate::meta::store(dir, &Self::meta_path(dir), crate::meta::REPLICA, &meta)?;
        Self::open(dir)
    }

    /// Opens a replica: its images, and its history rebuilt from the segments (a torn tail
    /// is cut off); finishes an apply that a crash interrupted.
    pub(crate) fn open(dir: &Path) -> Result<Arc<Replica>, AgentError> {
        let mp = Self::meta_path(dir);
        let meta: ReplicaMeta = crate::meta::fetch(&mp, crate::meta::REPLICA)?
            .map(|f| {
                if let Some(why) = f.fell_back {
                    crate::meta::note_problem(why);
                }
                f.value
            })
            .ok_or_else(|| AgentError::StateCorrupt {
                path: mp.clone(),
                why: "missing".into(),
            })?;
        let mut images = BTreeMap::new();
        for (i, v) in meta.spec.volumes.iter().enumerate() {
            let p = dir.join(format!("{}.img", v.name));
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&p)
                .map_err(io_err("cannot open replica image", &p))?;
            if f.metadata().map_err(io_err("cannot stat", &p))?.len() != v.size_bytes {
                f.set_len(v.size_bytes)
                    .map_err(io_err("cannot size replica image", &p))?;
            }
            images.insert(i as u32 + 1, (v.name.clone(), Arc::new(f)));
        }
        let r = Replica {
            dir: dir.to_path_buf(),
            meta: Mutex::new(meta.clone()),
            images,
            hist: RwLock::new(History::default()),
            writer: Mutex::new(Writer::default()),
            durable_seq: Mutex::new(0),
            pins: Mutex::new(Pins {
                held: BTreeMap::new(),
                floor: meta.applying_until.max(meta.applied_seq),
            }),
            events: EventLog::new(format!("replica {}", meta.spec.name)),
            last_received_ms: Mutex::new(0),
            life: Mutex::new(Life::default()),
            role: role::Role::default(),
            cache_id: segments::new_cache_id(),
        };
        r.load_history(meta.applied_seq)?;
        if meta.applying_until > meta.applied_seq {
            // Finished by the first aging pass (the floor keeps views off the span; reads
            // lay the history still indexed over the images, so they are right meanwhile).
            info!(replica = %dir.display(), until = meta.applying_until, "an interrupted apply is finished by the first aging pass");
        }
        Ok(Arc::new(r))
    }

    /// A replication session has it open (the protected site is connected).
    pub fn in_session(&self) -> bool {
        self.life().sessions > 0
    }

    /// Counts a session holding it until the hold is dropped.
    pub fn hold(self: &Arc<Self>) -> SessionHold {
        self.change(state::Input::SessionOpened);
        SessionHold(self.clone())
    }

    /// It was deleted: a session must stop writing to it and let it go.
    pub fn is_removed(&self) -> bool {
        self.life().deleted
    }

    /// Where the next batch must start.
    pub fn next_seq(&self) -> u64 {
        self.hist.read().unwrap_or_else(|e| e.into_inner()).next_seq
    }

    pub fn durable_seq(&self) -> u64 {
        *self.durable_seq.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes one batch covering `first_seq .. end_seq` to history (not yet durable: see
    /// [`Replica::sync`]). The caller checked `first_seq == next_seq()`.
    pub fn append(&self, first_seq: u64, end_seq: u64, recs: &[RecordRef<'_>]) -> io::Result<()> {
        let now = now_ms();
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let seg_first = match w.current {
            Some(s)
                if self
                    .hist
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .segments
                    .get(&s)
                    .is_some_and(|g| g.bytes < segments::segment_bytes() && g.mem.is_some()) =>
            {
                s
            }
            _ => self.new_segment(&mut w, first_seq, now)?,
        };
        let (file, base) = {
            let h = self.hist.read().unwrap_or_else(|e| e.into_inner());
            let g = &h.segments[&seg_first];
            (g.file.clone(), g.bytes)
        };
        // Headers here, data where it was decoded: one vectored write, no copy.
        let mut headers = Vec::with_capacity(recs.len() + 1);
        let mut placed = Vec::with_capacity(recs.len());
        let mut at = base;
        for r in recs {
            let hr = HistRecord {
                kind: r.kind as u8,
                seq: r.seq,
                offset: r.offset,
                length: r.length,
                volume: r.volume,
                data_bytes: r.data.len() as u32,
                received_ms: now,
            };
            headers.push(hr.header(r.data));
            at += RECORD_HEADER_BYTES as u64;
            placed.push((r, at));
            at += r.data.len() as u64;
        }
        headers.push(
            HistRecord {
                kind: KIND_END,
                seq: end_seq,
                offset: 0,
                length: 0,
                volume: 0,
                data_bytes: 0,
                received_ms: now,
            }
            .header(&[]),
        );
        let written = at + RECORD_HEADER_BYTES as u64 - base;
        let mut parts: Vec<&[u8]> = Vec::with_capacity(2 * recs.len() + 1);
        for (h, r) in headers.iter().zip(recs) {
            parts.push(h);
            if !r.data.is_empty() {
                parts.push(r.data);
            }
        }
        parts.push(headers.last().expect("end mark"));
        crate::io::pwritev_all(&file, &parts, base)?;
        if !w.unsynced.iter().any(|f| Arc::ptr_eq(f, &file)) {
            w.unsynced.push(file);
        }
        let mut h = self.hist.write().unwrap_or_else(|e| e.into_inner());
        for (r, data_pos) in placed {
            if r.kind == RecordKind::Checkpoint {
                h.checkpoints.insert(
                    r.seq,
                    CheckpointInfo {
                        seq: r.seq,
                        unix_ms: r.offset / 1_000_000,
                        tag: String::from_utf8_lossy(r.data).into_owned(),
                        tested: String::new(),
                    },
                );
                continue;
            }
            let rec = Rec {
                seq: r.seq,
                kind: r.kind,
                volume: r.volume,
                offset: r.offset,
                length: r.length,
                segment: seg_first,
                data_pos,
                received_ms: now,
            };
            h.live += 1;
            h.oldest_ms.get_or_insert(now);
            let g = h.segments.get_mut(&seg_first).expect("current segment");
            g.note(&rec);
            g.mem.get_or_insert_default().insert(rec);
        }
        let g = h.segments.get_mut(&seg_first).expect("current segment");
        g.bytes += written;
        g.next_seq = end_seq;
        h.bytes += written;
        h.next_seq = end_seq;
        drop(h);
        *self.last_received_ms.lock().unwrap_or_else(|e| e.into_inner()) = now;
        Ok(())
    }

    fn new_segment(&self, w: &mut Writer, first_seq: u64, now: u64) -> io::Result<u64> {
        let path = self.history_dir().join(segment_name(first_seq));
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        let vpg = self.meta.lock().unwrap_or_else(|e| e.into_inner()).spec.id;
        let header = SegmentHeader {
            vpg,
            first_seq,
            created_ms: now,
        }
        .encode();
        f.write_all_at(&header, 0)?;
        let file = Arc::new(f);
        w.unsynced.push(file.clone());
        w.dir_unsynced = true;
        w.closed.extend(w.current.take());
        w.current = Some(first_seq);
        let mut h = self.hist.write().unwrap_or_else(|e| e.into_inner());
        h.bytes += header.len() as u64;
        h.segments.insert(
            first_seq,
            Segment {
                path,
                file,
                bytes: header.len() as u64,
                first_seq,
                next_seq: first_seq,
                records: 0,
                oldest_ms: 0,
                newest_ms: 0,
                mem: Some(Box::default()),
                cached: Mutex::default(),
            },
        );
        Ok(first_seq)
    }

    /// Records that the records `from .. to` are lost (the protected site re-sends every
    /// block after them).
    pub fn note_gap(&self, from: u64, to: u64) {
        self.push_event(format!(
            "records {from}..{to} were lost here after they were acknowledged; the protected site re-sends every block, and the next checkpoint is whole again"
        ));
    }

    /// Makes every batch appended so far durable; returns the sequence number below which
    /// all is durable (what may be acknowledged).
    pub fn sync(&self) -> io::Result<u64> {
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let upto = self.next_seq();
        for f in w.unsynced.drain(..) {
            f.sync_data()?;
        }
        for first in std::mem::take(&mut w.closed) {
            self.write_index(first);
            w.dir_unsynced = true;
        }
        if std::mem::take(&mut w.dir_unsynced) {
            File::open(self.history_dir())?.sync_all()?;
        }
        *self.durable_seq.lock().unwrap_or_else(|e| e.into_inner()) = upto;
        Ok(upto)
    }

    /// Writes the index of a closed, durable segment, and lets its records go from memory
    /// to the cache. On failure (a full disk) they stay in memory, and a restart scans the
    /// segment: nothing is lost, only memory is spent.
    fn write_index(&self, first: u64) {
        let vpg = self.spec().id;
        let job = {
            let h = self.hist.read().unwrap_or_else(|e| e.into_inner());
            h.segments.get(&first).and_then(|g| {
                let m = g.mem.as_ref()?;
                let checkpoints = h
                    .checkpoints
                    .range(g.first_seq..g.next_seq)
                    .map(|(_, c)| history::index::IndexCheckpoint {
                        seq: c.seq,
                        stamp: c.unix_ms * 1_000_000,
                        tag: c.tag.clone(),
                    })
                    .collect();
                let entries: Vec<_> = m.by_seq.iter().map(segments::entry_of).collect();
                Some((g.path.clone(), g.summary(vpg, checkpoints), entries))
            })
        };
        let Some((path, summary, entries)) = job else { return };
        let idx = path.with_extension("idx");
        if let Err(e) = segments::write_index(&idx, &summary, &entries) {
            self.push_event(format!(
                "cannot write history index {} ({e}); its records stay in memory until a restart",
                idx.display()
            ));
            return;
        }
        let mem = {
            let mut h = self.hist.write().unwrap_or_else(|e| e.into_inner());
            h.segments.get_mut(&first).and_then(|g| g.mem.take())
        };
        if let Some(m) = mem {
            let l = segments::cache_put((self.cache_id, first), segments::Lookup::of_mem(*m));
            let h = self.hist.read().unwrap_or_else(|e| e.into_inner());
            if let Some(g) = h.segments.get(&first) {
                *g.cached.lock().unwrap_or_else(|e| e.into_inner()) = Arc::downgrade(&l);
            }
        }
    }

    /// Checkpoints still in history (not older than the replica).
    pub fn checkpoints(&self) -> Vec<CheckpointInfo> {
        let applied = self.pins.lock().unwrap_or_else(|e| e.into_inner()).floor;
        let durable = self.durable_seq();
        let h = self.hist.read().unwrap_or_else(|e| e.into_inner());
        h.checkpoints.range(applied..durable).map(|(_, c)| c.clone()).collect()
    }

    pub fn status(&self) -> ReplicaStatus {
        let m = self.meta.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let (records, bytes, oldest) = {
            let h = self.hist.read().unwrap_or_else(|e| e.into_inner());
            (h.live, h.bytes, h.oldest_ms)
        };
        ReplicaStatus {
            name: m.spec.name.clone(),
            id: m.spec.id,
            lineage: Lineage(m.spec.lineage),
            epoch: m.spec.epoch,
            epochs: m.epochs.clone(),
            peer: m.peer.clone(),
            dir: self.dir.clone(),
            volumes: m.spec.volumes.iter().map(|v| v.name.clone()).collect(),
            volume_bytes: m.spec.volumes.iter().map(|v| v.size_bytes).sum(),
            applied_seq: m.applied_seq,
            durable_seq: self.durable_seq(),
            history_records: records,
            history_bytes: bytes,
            history_bytes_max: m.spec.history_bytes_max,
            history_secs: m.spec.history_secs,
            oldest_point_ms: oldest,
            last_received_ms: *self.last_received_ms.lock().unwrap_or_else(|e| e.into_inner()),
            checkpoints: self.checkpoints(),
            pinned: self
                .pins
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .held
                .keys()
                .copied()
                .collect(),
            events: self.events.list(),
            state: state::shown(&self.life()),
            split_brain: m.split_brain.clone(),
        }
    }

    /// Reads `buf.len()` bytes of volume `volume` at `offset` as they were just before
    /// sequence `below` (a checkpoint's point, held by a pin or checked after).
    ///
    /// The records to lay over the image, and their segments' files, are taken under the
    /// index's lock; the reads happen after it is let go. That is exact: an image read
    /// after the snapshot holds at most records that are in it too (records are applied in
    /// order and never at or past a pinned point), and laying them all over again, in order,
    /// gives the same bytes; a segment deleted meanwhile stays readable through its file.
    pub fn read_at(&self, volume: u32, offset: u64, buf: &mut [u8], below: u64) -> io::Result<()> {
        let Some((_, img)) = self.images.get(&volume) else {
            return Err(io::Error::other(format!("no volume {volume} in this replica")));
        };
        let len = buf.len() as u64;
        // Records of segments in memory or in the cache are found under the lock; the
        // indexes of the others (path, first sequence) are read once it is let go.
        let mut over = Vec::new();
        let (floor, unread, files) = {
            let h = self.hist.read().unwrap_or_else(|e| e.into_inner());
            let mut unread = Vec::new();
            let mut files = HashMap::new();
            for g in h.live_segments(below) {
                files.insert(g.first_seq, g.file.clone());
                if let Some(m) = &g.mem {
                    m.overlapping(volume, offset, len, h.floor, below, &mut over);
                } else if let Some(l) = g.cached.lock().unwrap_or_else(|e| e.into_inner()).upgrade() {
                    l.overlapping(volume, offset, len, h.floor, below, &mut over);
                } else {
                    unread.push((g.path.clone(), g.first_seq));
                }
            }
            (h.floor, unread, files)
        };
        // Indexes are read before the image: a segment deleted meanwhile was applied to it
        // whole, so the image read after holds its records.
        let vpg = if unread.is_empty() { 0 } else { self.spec().id };
        for (path, first_seq) in unread {
            match segments::lookup((self.cache_id, first_seq), &path, vpg) {
                Ok(l) => {
                    l.overlapping(volume, offset, len, floor, below, &mut over);
                    let h = self.hist.read().unwrap_or_else(|e| e.into_inner());
                    if let Some(g) = h.segments.get(&first_seq) {
                        *g.cached.lock().unwrap_or_else(|e| e.into_inner()) = Arc::downgrade(&l);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        over.sort_unstable_by_key(|r| r.seq);
        crate::io::read_full(img, buf, offset)?;
        for r in over {
            let from = r.offset.max(offset);
            let to = (r.offset + r.length).min(offset + len);
            let dst = &mut buf[(from - offset) as usize..(to - offset) as usize];
            match r.kind {
                RecordKind::Write => {
                    let seg = files
                        .get(&r.segment)
                        .ok_or_else(|| io::Error::other("history segment missing"))?;
                    seg.read_exact_at(dst, r.data_pos + (from - r.offset))?;
                }
                RecordKind::Trim | RecordKind::WriteZeroes => dst.fill(0),
                RecordKind::Checkpoint => {}
            }
        }
        Ok(())
    }

    pub fn volumes(&self) -> Vec<(u32, String, u64)> {
        let spec = self.spec();
        spec.volumes
            .iter()
            .enumerate()
            .map(|(i, v)| (i as u32 + 1, v.name.clone(), v.size_bytes))
            .collect()
    }
}
