//! History segments as the replica holds them: each one's summary always in memory; its
//! records in memory only while it is written (until its index file is durable), and after
//! that in its index file (`SEQ.idx`, [`ferry_journal::history::index`]), read back on
//! demand through a cache of bounded size shared by every replica of the agent. So memory
//! grows with the segment count only by a summary each, and a restart reads summaries, not
//! records.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};

use ferry_journal::history::index::{self, IndexCheckpoint, IndexEntry, IndexSummary};
use ferry_journal::history::{self as segment, Scan};
use ferry_proto::records::RecordKind;

use tracing::{info, warn};

use super::index::VolumeIndex;
use super::{History, Rec, Replica, file_name, io_err, segment_name};
use crate::checkpoint::CheckpointInfo;
use crate::error::AgentError;

/// The cache's budget when the configuration does not set one.
const CACHE_BYTES_DEFAULT: usize = 256 << 20;

/// A segment is closed and a new one begun past this size (`replication.history_segment`).
static SEGMENT_BYTES: AtomicU64 = AtomicU64::new(64 << 20);

pub(super) fn segment_bytes() -> u64 {
    SEGMENT_BYTES.load(Ordering::Relaxed)
}

/// Sets the segment size and the index cache's budget (`replication.history_segment`,
/// `replication.history_index_cache`), for every replica of this agent.
pub fn set_tuning(segment: u64, cache_bytes: u64) {
    SEGMENT_BYTES.store(segment, Ordering::Relaxed);
    let mut c = cache();
    c.budget = cache_bytes as usize;
    c.shrink();
}

/// One segment of history.
#[derive(Debug)]
pub(super) struct Segment {
    pub path: PathBuf,
    pub file: Arc<File>,
    pub bytes: u64,
    pub first_seq: u64,
    /// The sequence number after its last batch.
    pub next_seq: u64,
    pub records: u64,
    /// The oldest and newest `received_ms` of its records (0 while it has none).
    pub oldest_ms: u64,
    pub newest_ms: u64,
    /// Its records, while its index file is not yet durable.
    pub mem: Option<Box<MemIndex>>,
    /// Its lookup while the cache holds it.
    pub cached: Mutex<Weak<Lookup>>,
}

/// A segment's records in memory: in sequence order, and by volume range.
#[derive(Debug, Default)]
pub(super) struct MemIndex {
    pub by_seq: Vec<Rec>,
    pub volumes: HashMap<u32, VolumeIndex>,
}

impl MemIndex {
    pub fn insert(&mut self, r: Rec) {
        self.volumes.entry(r.volume).or_default().insert(r);
        self.by_seq.push(r);
    }

    pub fn overlapping(&self, volume: u32, off: u64, len: u64, from: u64, below: u64, out: &mut Vec<Rec>) {
        if let Some(v) = self.volumes.get(&volume) {
            v.overlapping(off, len, from, below, out);
        }
    }
}

impl Segment {
    pub fn index_path(&self) -> PathBuf {
        self.path.with_extension("idx")
    }

    /// Counts `r` in (the caller put it in `mem`).
    pub fn note(&mut self, r: &Rec) {
        if self.records == 0 {
            self.oldest_ms = r.received_ms;
        }
        self.records += 1;
        self.newest_ms = self.newest_ms.max(r.received_ms);
    }

    /// The summary its index file starts with; `checkpoints` are those it holds.
    pub fn summary(&self, vpg: u64, checkpoints: Vec<IndexCheckpoint>) -> IndexSummary {
        IndexSummary {
            vpg,
            first_seq: self.first_seq,
            next_seq: self.next_seq,
            segment_bytes: self.bytes,
            oldest_ms: self.oldest_ms,
            newest_ms: self.newest_ms,
            records: 0,
            entries_crc: 0,
            checkpoints,
        }
    }
}

pub(super) fn rec_of(e: &IndexEntry, segment: u64) -> Option<Rec> {
    Some(Rec {
        seq: e.seq,
        kind: RecordKind::from_u8(e.kind)?,
        volume: e.volume,
        offset: e.offset,
        length: e.length,
        segment,
        data_pos: e.data_pos,
        received_ms: e.received_ms,
    })
}

pub(super) fn entry_of(r: &Rec) -> IndexEntry {
    IndexEntry {
        seq: r.seq,
        offset: r.offset,
        length: r.length,
        data_pos: r.data_pos,
        received_ms: r.received_ms,
        volume: r.volume,
        kind: r.kind as u8,
    }
}

/// Writes a segment's index file whole (a temporary file, synced, renamed over): a crash
/// leaves the old state or the new one. The caller syncs the directory.
pub(super) fn write_index(path: &Path, summary: &IndexSummary, entries: &[IndexEntry]) -> io::Result<()> {
    let tmp = path.with_extension("idx.tmp");
    let bytes = index::encode(summary, entries);
    let f = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
    f.write_all_at(&bytes, 0)?;
    f.sync_data()?;
    std::fs::rename(&tmp, path)
}

/// Reads a segment's index summary (a small read at the file's start).
pub(super) fn read_summary(path: &Path) -> Result<IndexSummary, String> {
    let mut f = File::open(path).map_err(|e| e.to_string())?;
    let mut head = vec![0u8; 4096];
    let n = read_up_to(&mut f, &mut head).map_err(|e| e.to_string())?;
    head.truncate(n);
    let want = index::summary_len(&head)?;
    if want > head.len() {
        head.resize(want, 0);
        f.read_exact_at(&mut head[n..], n as u64).map_err(|e| e.to_string())?;
    }
    index::decode_summary(&head)
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// What a scan of a segment says for its index: the summary (checkpoints included) and the
/// entries.
pub(super) fn index_of_scan(vpg: u64, bytes: &[u8], s: &Scan) -> (IndexSummary, Vec<IndexEntry>) {
    let mut checkpoints = Vec::new();
    let mut entries = Vec::new();
    for f in &s.records {
        let r = f.record;
        if r.kind == RecordKind::Checkpoint as u8 {
            checkpoints.push(IndexCheckpoint {
                seq: r.seq,
                stamp: r.offset,
                tag: String::from_utf8_lossy(&bytes[f.data_pos as usize..][..r.data_bytes as usize]).into_owned(),
            });
        } else {
            entries.push(IndexEntry {
                seq: r.seq,
                offset: r.offset,
                length: r.length,
                data_pos: f.data_pos,
                received_ms: r.received_ms,
                volume: r.volume,
                kind: r.kind,
            });
        }
    }
    let received = entries.iter().map(|e| e.received_ms);
    let summary = IndexSummary {
        vpg,
        first_seq: s.header.first_seq,
        next_seq: s.next_seq,
        segment_bytes: s.valid_bytes,
        oldest_ms: received.clone().next().unwrap_or(0),
        newest_ms: received.max().unwrap_or(0),
        records: entries.len() as u32,
        entries_crc: 0,
        checkpoints,
    };
    (summary, entries)
}

/// A closed segment's records, in sequence order, from its index file; an index that fails
/// its checks is rebuilt from the segment (and written again).
pub(super) fn read_records(seg: &Path, vpg: u64, first_seq: u64) -> io::Result<Vec<Rec>> {
    let idx = seg.with_extension("idx");
    let from_index = std::fs::read(&idx).map_err(|e| e.to_string()).and_then(|b| {
        let s = index::decode_summary(&b)?;
        let n = s.summary_bytes();
        index::decode_entries(&s, &b[n.min(b.len())..])
    });
    let entries = match from_index {
        Ok(e) => e,
        Err(why) => {
            if !seg.exists() {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{} is gone", seg.display()),
                ));
            }
            tracing::warn!(index = %idx.display(), %why, "history index is rebuilt from its segment");
            let bytes = std::fs::read(seg)?;
            let s = segment::scan(&bytes).map_err(io::Error::other)?;
            let (summary, entries) = index_of_scan(vpg, &bytes, &s);
            if let Err(e) = write_index(&idx, &summary, &entries) {
                tracing::warn!(index = %idx.display(), error = %e, "cannot write a rebuilt history index");
            }
            entries
        }
    };
    Ok(entries.iter().filter_map(|e| rec_of(e, first_seq)).collect())
}

/// A closed segment's records by volume range, as the cache holds them.
#[derive(Debug, Default)]
pub(super) struct Lookup {
    volumes: HashMap<u32, VolumeIndex>,
    /// When it was last used (the cache's clock): the least recently used go first.
    used: AtomicU64,
}

/// The cache's clock.
static CLOCK: AtomicU64 = AtomicU64::new(0);

impl Lookup {
    pub fn of_records(records: Vec<Rec>) -> Lookup {
        let mut m = MemIndex::default();
        for r in records {
            m.volumes.entry(r.volume).or_default().insert(r);
        }
        Lookup::of_mem(m)
    }

    pub fn of_mem(m: MemIndex) -> Lookup {
        let mut volumes = m.volumes;
        for v in volumes.values_mut() {
            v.finish();
        }
        Lookup {
            volumes,
            used: AtomicU64::new(CLOCK.fetch_add(1, Ordering::Relaxed)),
        }
    }

    /// Records of `volume` overlapping `off .. off+len` with `from <= seq < below`.
    pub fn overlapping(&self, volume: u32, off: u64, len: u64, from: u64, below: u64, out: &mut Vec<Rec>) {
        self.used
            .store(CLOCK.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
        if let Some(v) = self.volumes.get(&volume) {
            v.overlapping(off, len, from, below, out);
        }
    }

    fn bytes(&self) -> usize {
        self.volumes.values().map(VolumeIndex::bytes).sum::<usize>() + 64
    }
}

/// A segment in the cache: (its replica's instance, see [`new_cache_id`], its first
/// sequence number). Not its path: a replica deleted and made again in the same directory
/// names its segments alike.
pub(super) type Key = (u64, u64);

static INSTANCES: AtomicU64 = AtomicU64::new(1);

/// A number for a replica opened now, never given before in this process.
pub(super) fn new_cache_id() -> u64 {
    INSTANCES.fetch_add(1, Ordering::Relaxed)
}

/// Closed segments' lookups by segment, least recently used first out, within a budget.
/// A segment keeps a weak handle to its lookup, so a read finds a cached one without this
/// cache's lock; only a miss takes it.
#[derive(Default)]
struct Cache {
    budget: usize,
    used: usize,
    map: HashMap<Key, (Arc<Lookup>, usize)>,
}

static CACHE: LazyLock<Mutex<Cache>> = LazyLock::new(|| {
    Mutex::new(Cache {
        budget: CACHE_BYTES_DEFAULT,
        ..Cache::default()
    })
});

fn cache() -> std::sync::MutexGuard<'static, Cache> {
    CACHE.lock().unwrap_or_else(|e| e.into_inner())
}

impl Cache {
    fn put(&mut self, key: Key, l: Arc<Lookup>) {
        let n = l.bytes();
        if let Some((_, old)) = self.map.insert(key, (l, n)) {
            self.used -= old;
        }
        self.used += n;
        self.shrink();
    }

    fn shrink(&mut self) {
        while self.used > self.budget && !self.map.is_empty() {
            let oldest = self
                .map
                .iter()
                .min_by_key(|(_, (l, _))| l.used.load(Ordering::Relaxed))
                .map(|(k, _)| *k)
                .expect("not empty");
            if let Some((_, n)) = self.map.remove(&oldest) {
                self.used -= n;
            }
        }
    }
}

/// Puts a segment's lookup in the cache (its index was just written: it is hot).
pub(super) fn cache_put(key: Key, l: Lookup) -> Arc<Lookup> {
    let l = Arc::new(l);
    cache().put(key, l.clone());
    l
}

/// Forgets a deleted segment.
pub(super) fn cache_forget(key: Key) {
    let mut c = cache();
    if let Some((_, n)) = c.map.remove(&key) {
        c.used -= n;
    }
}

/// Forgets every segment of a replica that is let go.
pub(super) fn cache_forget_replica(id: u64) {
    let mut c = cache();
    let gone: Vec<Key> = c.map.keys().filter(|k| k.0 == id).copied().collect();
    for k in gone {
        if let Some((_, n)) = c.map.remove(&k) {
            c.used -= n;
        }
    }
}

/// A closed segment's lookup, from the cache or read from its index file (no lock of the
/// replica is held: the caller let them go). NotFound: the segment was applied and
/// deleted meanwhile.
pub(super) fn lookup(key: Key, seg: &Path, vpg: u64) -> io::Result<Arc<Lookup>> {
    let first_seq = key.1;
    if let Some(l) = cache().map.get(&key).map(|e| e.0.clone()) {
        return Ok(l);
    }
    let l = Arc::new(Lookup::of_records(read_records(seg, vpg, first_seq)?));
    cache().put(key, l.clone());
    Ok(l)
}

impl Replica {
    /// Rebuilds the picture of history: each segment's summary from its index file, or,
    /// for a segment without a sound one, from a scan of the segment (a torn tail is cut
    /// off, and later segments are set aside); the index is then written.
    pub(super) fn load_history(&self, applied_seq: u64) -> Result<(), AgentError> {
        let hd = self.history_dir();
        std::fs::create_dir_all(&hd).map_err(io_err("cannot create", &hd))?;
        let mut names: Vec<PathBuf> = std::fs::read_dir(&hd)
            .map_err(io_err("cannot list", &hd))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "seg"))
            .collect();
        names.sort();
        for p in std::fs::read_dir(&hd)
            .map_err(io_err("cannot list", &hd))?
            .filter_map(|e| e.ok().map(|e| e.path()))
        {
            let ext = p.extension().and_then(|x| x.to_str()).unwrap_or("");
            let stray = ext == "tmp" || ext == "idx" && !p.with_extension("seg").exists();
            if stray {
                let _ = std::fs::remove_file(&p);
            }
        }
        let vpg = self.spec().id;
        let mut h = History {
            next_seq: applied_seq,
            floor: applied_seq,
            ..History::default()
        };
        let mut broken = false;
        let mut scanned = 0usize;
        for path in names {
            if broken {
                let aside = path.with_extension("seg.after-damage");
                warn!(segment = %path.display(), "segment after a damaged one is set aside");
                let _ = std::fs::rename(&path, &aside);
                let _ = std::fs::remove_file(path.with_extension("idx"));
                continue;
            }
            let idx = path.with_extension("idx");
            let mut mem = None;
            let len = std::fs::metadata(&path).map_err(io_err("cannot stat", &path))?.len();
            let sound = read_summary(&idx).and_then(|s| {
                if s.vpg == vpg && s.segment_bytes <= len && segment_name(s.first_seq) == file_name(&path) {
                    Ok(s)
                } else {
                    Err("it does not match its segment".into())
                }
            });
            let summary = match sound {
                Ok(s) => s,
                Err(why) => {
                    if idx.exists() {
                        warn!(index = %idx.display(), %why, "history index is rebuilt from its segment");
                    }
                    scanned += 1;
                    match self.scan_segment(&path, vpg)? {
                        Some((s, entries, cut)) => {
                            broken |= cut;
                            if let Err(e) = write_index(&idx, &s, &entries) {
                                self.push_event(format!(
                                    "cannot write history index {} ({e}); its records stay in memory until a restart",
                                    idx.display()
                                ));
                                let mut m = MemIndex::default();
                                for e in &entries {
                                    m.insert(rec_of(e, s.first_seq).expect("kinds checked by the scan"));
                                }
                                mem = Some(Box::new(m));
                            }
                            s
                        }
                        None => {
                            broken = true;
                            continue;
                        }
                    }
                }
            };
            let file = Arc::new(
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .map_err(io_err("cannot open", &path))?,
            );
            for c in summary.checkpoints.iter().filter(|c| c.seq >= applied_seq) {
                h.checkpoints.insert(
                    c.seq,
                    CheckpointInfo {
                        seq: c.seq,
                        unix_ms: c.stamp / 1_000_000,
                        tag: c.tag.clone(),
                        tested: String::new(),
                    },
                );
            }
            h.next_seq = h.next_seq.max(summary.next_seq);
            h.bytes += summary.segment_bytes;
            h.segments.insert(
                summary.first_seq,
                Segment {
                    path,
                    file,
                    bytes: summary.segment_bytes,
                    first_seq: summary.first_seq,
                    next_seq: summary.next_seq,
                    records: u64::from(summary.records),
                    oldest_ms: summary.oldest_ms,
                    newest_ms: summary.newest_ms,
                    mem,
                    cached: Mutex::default(),
                },
            );
        }
        // The records still to apply: whole segments at or past the applied point, and
        // those of the one it falls in.
        let mut live = 0;
        let mut oldest = None;
        for s in h.segments.values().filter(|s| s.next_seq > applied_seq) {
            if s.first_seq >= applied_seq {
                live += s.records;
                if oldest.is_none() && s.records > 0 {
                    oldest = Some(s.oldest_ms);
                }
            } else {
                let recs =
                    read_records(&s.path, vpg, s.first_seq).map_err(io_err("cannot read history index", &s.path))?;
                let mut rest = recs.iter().filter(|r| r.seq >= applied_seq).peekable();
                if oldest.is_none() {
                    oldest = rest.peek().map(|r| r.received_ms);
                }
                live += rest.count() as u64;
            }
        }
        h.live = live;
        h.oldest_ms = oldest;
        info!(replica = %self.dir.display(), segments = h.segments.len(), scanned, records = live, "history loaded");
        *self.durable_seq.lock().unwrap_or_else(|e| e.into_inner()) = h.next_seq;
        *self.hist.write().unwrap_or_else(|e| e.into_inner()) = h;
        if scanned > 0 {
            File::open(&hd)
                .and_then(|d| d.sync_all())
                .map_err(io_err("cannot sync", &hd))?;
        }
        Ok(())
    }

    /// Scans a segment that has no sound index: cuts a torn tail off; returns what its index
    /// is to hold.
    /// `None`: unreadable, set aside. The flag: it was cut (later segments are set aside).
    #[allow(clippy::type_complexity)]
    fn scan_segment(&self, path: &Path, vpg: u64) -> Result<Option<(IndexSummary, Vec<IndexEntry>, bool)>, AgentError> {
        let bytes = std::fs::read(path).map_err(io_err("cannot read", path))?;
        let s = match segment::scan(&bytes) {
            Ok(s) => s,
            Err(why) => {
                self.push_event(format!(
                    "history segment {} is unreadable ({why}); it and later ones are set aside",
                    path.display()
                ));
                let _ = std::fs::rename(path, path.with_extension("seg.damaged"));
                let _ = std::fs::remove_file(path.with_extension("idx"));
                return Ok(None);
            }
        };
        if let Some(why) = &s.cut {
            self.push_event(format!(
                "history segment {}: {why}; cut at byte {} (records from seq {} on are asked for again)",
                path.display(),
                s.valid_bytes,
                s.next_seq
            ));
            let f = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(io_err("cannot open", path))?;
            f.set_len(s.valid_bytes).map_err(io_err("cannot cut", path))?;
            f.sync_all().map_err(io_err("cannot sync", path))?;
        }
        let (summary, entries) = index_of_scan(vpg, &bytes, &s);
        Ok(Some((summary, entries, s.cut.is_some())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64) -> Rec {
        Rec {
            seq,
            kind: RecordKind::Write,
            volume: 1,
            offset: seq * 4096,
            length: 4096,
            segment: 0,
            data_pos: 0,
            received_ms: 0,
        }
    }

    #[test]
    fn the_cache_keeps_to_its_budget() {
        let mut c = Cache {
            budget: 3 * 1024 * std::mem::size_of::<Rec>(),
            ..Cache::default()
        };
        for i in 0..10u64 {
            let l = Lookup::of_records((i * 1000..i * 1000 + 1000).map(rec).collect());
            c.put((1, i), Arc::new(l));
            assert!(c.used <= c.budget, "{} > {}", c.used, c.budget);
        }
        assert!(c.map.contains_key(&(1, 9)) && !c.map.contains_key(&(1, 0)));
    }

    #[test]
    fn a_replica_opened_again_never_finds_the_lookups_of_the_one_before() {
        // Two openings of the same directory: their segments' keys differ, and letting
        // the first go forgets its lookups and only those.
        let (old, new) = (new_cache_id(), new_cache_id());
        assert_ne!(old, new);
        cache_put((old, 0), Lookup::of_records(vec![rec(1)]));
        cache_put((new, 0), Lookup::of_records(vec![rec(2)]));
        cache_forget_replica(old);
        let c = cache();
        assert!(!c.map.contains_key(&(old, 0)) && c.map.contains_key(&(new, 0)));
    }
}
