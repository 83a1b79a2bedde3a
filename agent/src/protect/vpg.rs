//! VPGs on the protected site: their registry (`vpgs.json`), their journal and dirty maps
//! (`vpgs/NAME/journal.ring`, `vpgs/NAME/VOLUME.dirty`), and capture of every write of their
//! volumes in the order [`ferry_journal::capture`] lays down.
//!
//! Per VPG, two tasks run: every `journal.checkpoint_interval_s` a checkpoint marker is
//! appended, and every `journal.sync_interval_s` a sync makes journal, datastores and dirty
//! maps durable together (which lets the activity log forget idle extents, and bounds what a
//! power loss leaves to resynchronise); and the drain reads dirty regions back into the
//! journal after the journal ran full or after recovery.
//!
//! Overlapping writes are serialised in sequence order ([`Inflight`]): a write waits for
//! every earlier-sequenced write to an overlapping range to finish before it is issued, so
//! the datastore ends as the journal's order says. Non-overlapping writes never wait.
//!
//! Locks, in the order they may be taken: `Inflight`'s state → the capture's (its mode and
//! events, the journal's state, a dirty map's): a ticket and a journal reservation are
//! taken under the first so that ticket order and sequence order agree, and nothing under
//! it does I/O. Every other lock here (`members`, `ship`, `checkpoints`, `ack_progress`,
//! `datastore_error`, the event log) is a leaf, let go before anything else is taken; the
//! journal's consumer (an async mutex) is its owner's token while it is read. The only lock
//! held across I/O on the write path is a dirty map's, across its activity-log flush (see
//! `ferry_journal::dirty`: the bits and what is flushed must agree).

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use ferry_journal::dirty::{EXTENT_DEFAULT, MapHeader};
use ferry_journal::{
    Capture, CaptureRecovery, Consumer, DirtyMap, Geometry, Journal, JournalStats, Kind, MmapStorage, Mode,
};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::checkpoint::CheckpointInfo;
use crate::clock::{boot_id, now_ms, now_ns, random_u64};
use crate::config::CaptureConfig;
use crate::error::AgentError;
use crate::events::Event;
use crate::io::{BufPool, Engine};
use crate::protect::capture::{DatastoreError, HOLD_MAX, VpgCapture};
use crate::protect::volume::{Volume, Volumes};
use crate::size::human;

pub const VPG_FORMAT_VERSION: u32 = 1;
/// Checkpoints kept in memory per VPG for `vpg show`.
const CHECKPOINTS_KEPT: usize = 64;
/// Largest range the drain reads into one journal record.
const DRAIN_CHUNK_BYTES: u64 = 1 << 20;

/// One VPG as the registry keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VpgRecord {
    pub name: String,
    /// Its member volumes; volume ids in the journal are positions here, from 1.
    pub volumes: Vec<String>,
    pub journal_bytes: u64,
    pub ring_id: u64,
    pub created_unix_ms: u64,
    /// Replication to a recovery site; none: capture only.
    #[serde(default)]
    pub protection: Option<Protection>,
}

/// How a VPG is protected: where to, and its targets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Protection {
    /// The recovery-site agent's replication address (host:port).
    pub peer: String,
    /// The pairing key file shared with that agent.
    pub pairing_key: PathBuf,
    /// The recovery site's datastore for the replica; empty: its first.
    pub recovery_datastore: String,
    pub priority: Priority,
    /// RPO alert threshold.
    pub rpo_s: u64,
    /// History window at the recovery site.
    pub history_s: u64,
    /// History hard limit in bytes at the recovery site.
    pub history_bytes_max: u64,
    #[serde(default)]
    pub paused: bool,
    /// The recovery site was seeded with a copy of the volumes: a delta sync (checksums
    /// of regions compared, only differences sent) replaces the full initial sync.
    #[serde(default)]
    pub preseeded: bool,
    /// Writes are slowed (their replies held) while the actual RPO is above this and the
    /// link is up; 0: never (the RPO grows instead when writes outpace the link).
    #[serde(default)]
    pub throttle_rpo_ms: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    High,
    #[default]
    Medium,
    Low,
}

impl Priority {
    pub fn parse(s: &str) -> Result<Priority, String> {
        match s {
            "high" => Ok(Priority::High),
            "medium" => Ok(Priority::Medium),
            "low" => Ok(Priority::Low),
            _ => Err(format!("priority {s:?} must be high, medium or low")),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Medium => "medium",
            Priority::Low => "low",
        }
    }

    /// Index into `replication.priority_weights`.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// `ferry vpg create`'s protection options, as the control API takes them.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ProtectArgs {
    pub peer: String,
    pub pairing_key: PathBuf,
    #[serde(default)]
    pub recovery_datastore: Option<String>,
    #[serde(default)]
    pub priority: Option<String>,
    #[serde(default)]
    pub rpo_s: Option<u64>,
    #[serde(default)]
    pub history_s: Option<u64>,
    #[serde(default)]
    pub history_bytes_max: Option<u64>,
    #[serde(default)]
    pub preseeded: bool,
    #[serde(default)]
    pub throttle_rpo_ms: Option<u64>,
}

/// Default RPO alert threshold.
pub const RPO_DEFAULT_S: u64 = 300;
/// Default history window at the recovery site.
pub const HISTORY_DEFAULT_S: u64 = 3600;
/// Default history hard limit.
pub const HISTORY_BYTES_DEFAULT: u64 = 16 << 30;

impl ProtectArgs {
    fn check(&self) -> Result<Protection, AgentError> {
        let refuse = |m: String| Err(AgentError::Refused(m));
        let peer = self.peer.trim();
        match peer.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {}
            _ => {
                return refuse(format!(
                    "--peer {peer:?} must be HOST:PORT, the recovery agent's replication address"
                ));
            }
        }
        if !self.pairing_key.is_absolute() {
            return refuse(format!(
                "--peer-key {} must be an absolute path (the agent reads it, not the CLI)",
                self.pairing_key.display()
            ));
        }
        if let Err(e) = ferry_proto::pairing::read_key(&self.pairing_key) {
            return refuse(format!("--peer-key: {e}"));
        }
        let priority = Priority::parse(self.priority.as_deref().unwrap_or("medium")).map_err(AgentError::Refused)?;
        let rpo_s = self.rpo_s.unwrap_or(RPO_DEFAULT_S);
        let history_s = self.history_s.unwrap_or(HISTORY_DEFAULT_S);
        let history_bytes_max = self.history_bytes_max.unwrap_or(HISTORY_BYTES_DEFAULT);
        if rpo_s == 0 || history_s == 0 {
            return refuse("--rpo and --history must be at least one second".into());
        }
        if history_bytes_max < (64 << 20) {
            return refuse("--history-max-bytes must be at least 64M".into());
        }
        Ok(Protection {
            peer: peer.into(),
            pairing_key: self.pairing_key.clone(),
            recovery_datastore: self.recovery_datastore.clone().unwrap_or_default(),
            priority,
            rpo_s,
            history_s,
            history_bytes_max,
            paused: false,
            preseeded: self.preseeded,
            throttle_rpo_ms: self.throttle_rpo_ms.unwrap_or(0),
        })
    }
}

/// What the shipper last knew about a protected VPG.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ShipState {
    /// The link: "connecting", "connected", or why it is down.
    pub link: String,
    /// Every record below this is durable at the recovery site.
    pub acked_seq: u64,
    /// When everything captured was last durable at the recovery site.
    pub caught_up_ms: u64,
    /// Bytes of records acknowledged (before compression).
    pub acked_bytes: u64,
    /// Bytes sent on the wire for this VPG (after compression and sealing).
    pub sent_bytes: u64,
    /// Acknowledged bytes per second, over the last few seconds.
    pub rate_bytes_per_s: f64,
    /// The recovery site refused the VPG, or it cannot be shipped: why.
    pub error: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct VpgRegistry {
    version: u32,
    vpgs: Vec<VpgRecord>,
}

/// A member volume as the VPG sees it.
#[derive(Debug, Clone)]
struct Member {
    name: String,
    file: Option<Arc<File>>,
}

pub struct Vpg {
    pub record: VpgRecord,
    dir: PathBuf,
    /// The write side: capture, ordering, events, datastore failures, the throttle's hold.
    pub cap: Arc<VpgCapture>,
    members: RwLock<BTreeMap<u32, Member>>,
    engine: Arc<Engine>,
    consumer: tokio::sync::Mutex<Option<Consumer<MmapStorage>>>,
    checkpoints: Mutex<VecDeque<CheckpointInfo>>,
    stop: CancellationToken,
    cfg: CaptureConfig,
    paused: std::sync::atomic::AtomicBool,
    pub ship: Mutex<ShipState>,
    /// The initial sync (every block of the volumes read into the journal) has finished.
    initial_done: std::sync::atomic::AtomicBool,
    /// The journal's sequence when the initial sync had read every block (0: not yet).
    initial_end_seq: std::sync::atomic::AtomicU64,
    /// The RPO was within its target at the last look.
    sla_met: std::sync::atomic::AtomicBool,
    /// When this agent opened the VPG; its RPO is only judged once the link was up, or
    /// [`SLA_GRACE`] after this (before, the recovery site's state is not known yet).
    opened_ms: u64,
    link_seen: std::sync::atomic::AtomicBool,
    /// A pre-seeded VPG whose regions are still being compared with the replica's.
    delta_pending: std::sync::atomic::AtomicBool,
    pub delta_progress: Mutex<DeltaProgress>,
    /// The throttle (see [`Protection::throttle_rpo_ms`]) holds writes now.
    behind: std::sync::atomic::AtomicBool,
    /// When `behind` was last worked out (ms since the epoch).
    behind_checked_ms: std::sync::atomic::AtomicU64,
    /// When the throttle last raised an event.
    throttle_event_ms: std::sync::atomic::AtomicU64,
    /// The recovery site's acknowledged sequence at the throttle's last look, and when it
    /// last moved (or nothing was waiting for it).
    ack_progress: Mutex<(u64, u64)>,
}

/// After a start, how long the RPO waits for the link before it is judged anyway.
const SLA_GRACE: Duration = Duration::from_secs(60);
/// How often the throttle works out again whether the recovery site is too far behind.
const BEHIND_CHECK_MS: u64 = 5;

/// How far a delta sync's comparison got.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DeltaProgress {
    pub compared_bytes: u64,
    pub differing_bytes: u64,
    pub total_bytes: u64,
}

impl std::fmt::Debug for Vpg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vpg").field("record", &self.record).finish()
    }
}

fn journal_path(dir: &Path) -> PathBuf {
    dir.join("journal.ring")
}

/// Present once a protected VPG's initial sync has finished.
fn initial_marker(dir: &Path) -> PathBuf {
    dir.join("initial-sync-done")
}

/// Present once a pre-seeded VPG's delta comparison has finished.
fn delta_marker(dir: &Path) -> PathBuf {
    dir.join("delta-compared")
}

fn map_path(dir: &Path, volume: &str) -> PathBuf {
    dir.join(format!("{volume}.dirty"))
}

/// Moves a damaged file aside (kept for inspection) and says where.
fn move_aside(path: &Path) -> String {
    if !path.exists() {
        return "missing".into();
    }
    let to = path.with_extension(format!("damaged-{}", now_ms()));
    match std::fs::rename(path, &to) {
        Ok(()) => format!("moved to {}", to.display()),
        Err(e) => format!("could not be moved aside: {e}"),
    }
}

fn create_map(path: &Path, header: MapHeader, all_dirty: bool) -> Result<DirtyMap<MmapStorage>, AgentError> {
    let storage = MmapStorage::create(path, header.file_bytes())
        .map_err(|e| AgentError::io("cannot create dirty map", path, e))?;
    DirtyMap::create(storage, header, all_dirty)
        .map_err(|e| AgentError::Refused(format!("cannot format dirty map {}: {e}", path.display())))
}

/// VPG status as the control API reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VpgStatus {
    pub name: String,
    pub state: String,
    pub volumes: Vec<VpgVolumeStatus>,
    pub journal: JournalStatus,
    pub last_checkpoint: Option<CheckpointInfo>,
    pub checkpoints: Vec<CheckpointInfo>,
    pub events: Vec<Event>,
    /// Replication, for a protected VPG.
    #[serde(default)]
    pub protection: Option<ProtectionStatus>,
    /// A member's datastore I/O failed lately.
    #[serde(default)]
    pub datastore_error: Option<DatastoreError>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProtectionStatus {
    pub settings: Protection,
    pub ship: ShipState,
    pub rpo_s: f64,
    pub meeting_sla: bool,
    /// While initializing: bytes read of the volumes' total.
    pub initial_done_bytes: Option<u64>,
    pub initial_total_bytes: u64,
    /// While initializing: bytes read per second since the VPG was created, and the
    /// seconds left at that rate.
    #[serde(default)]
    pub initial_rate_bytes_per_s: Option<f64>,
    #[serde(default)]
    pub initial_eta_s: Option<f64>,
    /// While a delta sync compares regions.
    #[serde(default)]
    pub delta: Option<DeltaProgress>,
    /// Milliseconds writes were held by the throttle, summed over writes, since the agent
    /// started.
    #[serde(default)]
    pub throttle_held_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VpgVolumeStatus {
    pub name: String,
    pub id: u32,
    pub attached: bool,
    pub dirty_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JournalStatus {
    pub path: PathBuf,
    pub size_bytes: u64,
    pub used_bytes: u64,
    pub records: u64,
    pub acked_seq: u64,
    pub settled_seq: u64,
    pub next_seq: u64,
    pub fill_percent: f64,
}

/// One record as `ferry journal tail` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TailRecord {
    pub seq: u64,
    pub kind: String,
    pub volume: String,
    pub offset: u64,
    pub length: u64,
    pub crc: u32,
    /// Checkpoint tag.
    pub tag: Option<String>,
}

impl Vpg {
    /// The checkpoints still in the journal (after a restart).
    fn reload_checkpoints(&self) {
        let Some(mut cons) = self.cap.capture.journal().consumer() else {
            return;
        };
        let mut found = VecDeque::new();
        while let Some(r) = cons.next_record() {
            if r.entry.kind == Kind::Checkpoint {
                if found.len() == CHECKPOINTS_KEPT {
                    found.pop_front();
                }
                found.push_back(CheckpointInfo {
                    seq: r.entry.seq,
                    unix_ms: r.entry.offset / 1_000_000,
                    tag: String::from_utf8_lossy(r.payload).into_owned(),
                });
            }
        }
        *self.checkpoints.lock().unwrap_or_else(|e| e.into_inner()) = found;
    }

    /// Moves the capture's events into the VPG's log (and the agent's).
    pub fn is_paused(&self) -> bool {
        self.paused.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn journal_stats(&self) -> JournalStats {
        self.cap.capture.journal().stats()
    }

    pub fn stopped(&self) -> &CancellationToken {
        &self.stop
    }

    /// Takes the journal's consumer (the shipper holds it while its link is up).
    pub async fn take_consumer(&self) -> Option<Consumer<MmapStorage>> {
        let mut g = self.consumer.lock().await;
        g.take().or_else(|| self.cap.capture.journal().consumer())
    }

    pub async fn put_consumer(&self, c: Consumer<MmapStorage>) {
        *self.consumer.lock().await = Some(c);
    }

    pub fn ship_update<R>(&self, f: impl FnOnce(&mut ShipState) -> R) -> R {
        f(&mut self.ship.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn delta_pending(&self) -> bool {
        self.delta_pending.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The member volumes: (id, its file if online, its size).
    pub fn member_files(&self) -> Vec<(u32, Option<Arc<File>>, u64)> {
        let members = self.members.read().unwrap_or_else(|e| e.into_inner());
        self.cap
            .capture
            .maps()
            .iter()
            .map(|(&id, m)| {
                (
                    id,
                    members.get(&id).and_then(|x| x.file.clone()),
                    m.header().volume_bytes,
                )
            })
            .collect()
    }

    /// Delta sync: a region that differs from the replica's is marked dirty (sent later).
    pub fn mark_differing(&self, volume: u32, offset: u64, len: u64) {
        if let Some(m) = self.cap.capture.map(volume) {
            m.mark(offset, len);
        }
    }

    /// Delta sync: the comparison is over; the differing regions are drained and
    /// checkpoints resume after them.
    pub async fn finish_delta(self: &Arc<Self>) -> io::Result<()> {
        let p = self.delta_progress.lock().unwrap_or_else(|e| e.into_inner()).clone();
        self.cap.capture.drain_marked(format!(
            "delta sync compared {}: {} differ from the pre-seeded replica and are being sent",
            human(p.compared_bytes),
            human(p.differing_bytes)
        ));
        self.cap.collect_events();
        self.sync_once().await?;
        std::fs::write(delta_marker(&self.dir), b"")?;
        self.delta_pending.store(false, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Starts a full sync (every block read into the journal again) and makes the dirty
    /// bits durable before returning, so a crash cannot forget it.
    pub async fn resync_all(self: &Arc<Self>, why: String) -> io::Result<()> {
        self.cap.capture.resync_all(why);
        self.cap.collect_events();
        self.sync_once().await
    }

    /// Logs and records an event about this VPG.
    pub fn event(&self, message: String) {
        self.cap.event(message)
    }

    /// Works out whether the throttle holds writes now: it is set, the link is up, the VPG
    /// is journaling (not paused, syncing or tracking dirty regions), the actual RPO is
    /// above it, and the recovery site is making progress (one that acknowledged nothing
    /// for [`HOLD_MAX`] while writes waited must not stall the application: writes go on).
    fn note_behind(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let now = now_ms();
        let Some(p) = &self.record.protection else { return false };
        if p.throttle_rpo_ms == 0 {
            return false;
        }
        let (link_up, acked) = {
            let ship = self.ship.lock().unwrap_or_else(|e| e.into_inner());
            (ship.link == "connected", ship.acked_seq)
        };
        let stalled = {
            let mut g = self.ack_progress.lock().unwrap_or_else(|e| e.into_inner());
            if acked != g.0 || acked >= self.journal_stats().next_seq {
                *g = (acked, now);
            }
            now.saturating_sub(g.1) >= HOLD_MAX.as_millis() as u64
        };
        let over = link_up
            && !self.is_paused()
            && self.initial_done.load(Relaxed)
            && !self.delta_pending()
            && self.cap.capture.mode() == Mode::Journaling
            && self.rpo_s(now) * 1000.0 > p.throttle_rpo_ms as f64;
        let behind = over && !stalled;
        let was = self.behind.swap(behind, Relaxed);
        if behind && !was && now.saturating_sub(self.throttle_event_ms.load(Relaxed)) >= 60_000 {
            self.throttle_event_ms.store(now, Relaxed);
            self.event(format!(
                "writes throttled: the RPO passed the throttle of {:.1} s, so writes wait for the recovery site to catch up (`ferry vpg show` sums the time held)",
                p.throttle_rpo_ms as f64 / 1000.0
            ));
        }
        if over && stalled && was {
            self.event(format!(
                "throttle let go: the recovery site acknowledged nothing for {} s while writes waited; they go on at full speed until it moves again",
                HOLD_MAX.as_secs()
            ));
        }
        behind
    }

    /// Whether the throttle holds writes: worked out again by one caller every
    /// [`BEHIND_CHECK_MS`], the last answer for the others.
    fn behind_now(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let checked = self.behind_checked_ms.load(Relaxed);
        let now = now_ms();
        if now.saturating_sub(checked) >= BEHIND_CHECK_MS
            && self
                .behind_checked_ms
                .compare_exchange(checked, now, Relaxed, Relaxed)
                .is_ok()
        {
            self.note_behind()
        } else {
            self.behind.load(Relaxed)
        }
    }

    /// The actual RPO in seconds: 0 while everything captured is durable at the recovery
    /// site, else the age of the newest point it holds (its newest checkpoint, or the last
    /// moment it had everything).
    pub fn rpo_s(&self, now: u64) -> f64 {
        let st = self.journal_stats();
        let ship = self.ship.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if ship.acked_seq >= st.next_seq && self.cap.capture.mode() == Mode::Journaling {
            return 0.0;
        }
        let newest_ckpt = self
            .checkpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .rev()
            .find(|c| c.seq < ship.acked_seq)
            .map_or(0, |c| c.unix_ms);
        let since = newest_ckpt.max(ship.caught_up_ms).max(self.record.created_unix_ms);
        now.saturating_sub(since) as f64 / 1000.0
    }

    pub fn checkpoint(&self, tag: &str) -> Result<CheckpointInfo, AgentError> {
        if self.delta_pending() {
            return Err(AgentError::Refused(format!(
                "VPG {:?} is comparing its volumes with the pre-seeded replica (delta sync); checkpoints resume when it is done",
                self.record.name
            )));
        }
        let seq = self
            .cap
            .capture
            .checkpoint(now_ns(), tag)
            .map_err(|e| AgentError::Refused(format!("VPG {:?}: {e}", self.record.name)))?;
        let info = CheckpointInfo {
            seq,
            unix_ms: now_ms(),
            tag: tag.into(),
        };
        let mut c = self.checkpoints.lock().unwrap_or_else(|e| e.into_inner());
        if c.len() == CHECKPOINTS_KEPT {
            c.pop_front();
        }
        c.push_back(info.clone());
        Ok(info)
    }

    /// One sync: every write begun before it, with its journal record and dirty bits, is
    /// durable after it.
    async fn sync_once(self: &Arc<Self>) -> io::Result<()> {
        let (point, before) = {
            let st = self.cap.inflight.lock();
            (self.cap.capture.sync_begin(), st.next)
        };
        self.cap.inflight.wait_before(before).await;
        while !self.cap.capture.sync_ready(point) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let files: Vec<Arc<File>> = self
            .members
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter_map(|m| m.file.clone())
            .collect();
        for f in files {
            self.engine.fdatasync(&f).await?;
        }
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.cap.capture.sync_finish(point))
            .await
            .map_err(|e| io::Error::other(e.to_string()))?
    }

    /// Checkpoints and syncs, each at its interval, until stopped.
    async fn run_ticker(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.cfg.checkpoint_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sync = tokio::time::interval(self.cfg.sync_interval);
        sync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        sync.tick().await;
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = sync.tick() => {
                    if let Err(e) = self.sync_once().await {
                        error!(vpg = %self.record.name, error = %e, "journal sync failed");
                        self.cap.push_event(format!("journal sync failed: {e}"));
                    }
                    self.cap.collect_events();
                    continue;
                }
                _ = tick.tick() => {}
            }
            let idle = {
                let last = self
                    .checkpoints
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .back()
                    .map(|c| c.seq);
                last.is_some_and(|seq| seq + 1 == self.cap.capture.journal().stats().next_seq)
            };
            self.note_initial_sync();
            self.note_sla();
            self.cap.expire_datastore_error();
            if self.cap.capture.mode() == Mode::Journaling
                && !idle
                && !self.delta_pending()
                && let Err(e) = self.checkpoint("")
            {
                warn!(vpg = %self.record.name, error = %e, "automatic checkpoint skipped");
            }
            self.cap.collect_events();
        }
    }

    /// Raises an event when the actual RPO crosses the VPG's target, either way.
    fn note_sla(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let Some(p) = &self.record.protection else { return };
        if self.is_paused() {
            return;
        }
        let now = now_ms();
        if self.ship.lock().unwrap_or_else(|e| e.into_inner()).link == "connected" {
            self.link_seen.store(true, Relaxed);
        }
        if !self.link_seen.load(Relaxed) && now.saturating_sub(self.opened_ms) < SLA_GRACE.as_millis() as u64 {
            return; // just started: what the recovery site holds is not known yet
        }
        let rpo = self.rpo_s(now);
        let met = rpo <= p.rpo_s as f64;
        if self.sla_met.swap(met, Relaxed) != met {
            self.event(if met {
                format!("RPO back within its target: {rpo:.1} s (target {} s)", p.rpo_s)
            } else {
                format!(
                    "not meeting SLA: RPO {rpo:.1} s exceeds the target {} s (link: {})",
                    p.rpo_s,
                    self.ship.lock().unwrap_or_else(|e| e.into_inner()).link
                )
            });
        }
    }

    /// A protected VPG whose first drain finished has all its blocks in the journal.
    fn note_initial_sync(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        if self.initial_done.load(Relaxed) {
            return;
        }
        // First every block is read into the journal; then the recovery site must hold
        // every record up to that point.
        if self.initial_end_seq.load(Relaxed) == 0 {
            if self.cap.capture.mode() != Mode::Journaling {
                return;
            }
            self.initial_end_seq
                .store(self.journal_stats().next_seq.max(1), Relaxed);
        }
        let acked = self.ship.lock().unwrap_or_else(|e| e.into_inner()).acked_seq;
        if acked < self.initial_end_seq.load(Relaxed) || self.initial_done.swap(true, Relaxed) {
            return;
        }
        if let Err(e) = std::fs::write(initial_marker(&self.dir), b"") {
            warn!(vpg = %self.record.name, error = %e, "cannot record the initial sync's end");
        }
        self.event(
            "initial sync done: the recovery site holds every block; from now on only writes are shipped".into(),
        );
    }

    /// Reads dirty regions back into the journal whenever there are some and room.
    async fn run_drain(self: Arc<Self>) {
        loop {
            if self.stop.is_cancelled() {
                return;
            }
            let step = self.cap.capture.drain_next(DRAIN_CHUNK_BYTES);
            self.cap.collect_events();
            let Some((volume, offset, len)) = step else {
                tokio::select! {
                    _ = self.stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            };
            let file = self
                .members
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(&volume)
                .and_then(|m| m.file.clone());
            let Some(file) = file else {
                // An offline member: its regions wait until it is back.
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            };
            let (ticket, slot) = self.cap.inflight.register(volume, offset, len, || {
                self.cap.capture.drain_reserve(volume, offset, len)
            });
            let Some(mut slot) = slot else {
                drop(ticket);
                self.cap.collect_events();
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            self.cap.inflight.wait_earlier(&ticket).await;
            let read = tokio::task::spawn_blocking(move || {
                let r = read_once(&file, slot.payload_mut(), offset);
                (r, slot)
            })
            .await;
            match read {
                Ok((Ok(()), slot)) => self.cap.capture.drain_commit(slot),
                Ok((Err(e), _slot)) => {
                    // The slot becomes a void; the bits stay, the drain retries later.
                    error!(vpg = %self.record.name, volume, offset, error = %e, "drain read failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => error!(vpg = %self.record.name, error = %e, "drain task failed"),
            }
            drop(ticket);
        }
    }

    pub fn status(&self) -> VpgStatus {
        let st: JournalStats = self.cap.capture.journal().stats();
        let members = self.members.read().unwrap_or_else(|e| e.into_inner());
        let checkpoints: Vec<CheckpointInfo> = self
            .checkpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect();
        let now = now_ms();
        self.note_initial_sync();
        let protection = self.record.protection.as_ref().map(|p| {
            let rpo_s = self.rpo_s(now);
            let total: u64 = self.cap.capture.maps().values().map(|m| m.header().volume_bytes).sum();
            let initializing = !self.initial_done.load(std::sync::atomic::Ordering::Relaxed);
            // Progress: the share read into the journal, times the share of the journal's
            // records the recovery site holds.
            let (acked, next) = (
                self.ship.lock().unwrap_or_else(|e| e.into_inner()).acked_seq,
                self.journal_stats().next_seq.max(1),
            );
            let initial_done = initializing.then(|| {
                let read = total.saturating_sub(self.cap.capture.dirty_bytes());
                (read as f64 * (acked.min(next) as f64 / next as f64)) as u64
            });
            let elapsed_s = now.saturating_sub(self.record.created_unix_ms) as f64 / 1000.0;
            let initial_rate = initial_done.filter(|_| elapsed_s > 0.5).map(|d| d as f64 / elapsed_s);
            ProtectionStatus {
                settings: Protection {
                    paused: self.is_paused(),
                    ..p.clone()
                },
                ship: self.ship.lock().unwrap_or_else(|e| e.into_inner()).clone(),
                rpo_s,
                meeting_sla: rpo_s <= p.rpo_s as f64,
                initial_done_bytes: initial_done,
                initial_total_bytes: total,
                initial_rate_bytes_per_s: initial_rate,
                initial_eta_s: initial_rate
                    .filter(|&r| r > 0.0)
                    .zip(initial_done)
                    .map(|(r, d)| total.saturating_sub(d) as f64 / r),
                delta: self
                    .delta_pending()
                    .then(|| self.delta_progress.lock().unwrap_or_else(|e| e.into_inner()).clone()),
                throttle_held_ms: self.cap.held_ms.load(std::sync::atomic::Ordering::Relaxed),
            }
        });
        let datastore_error = self.cap.datastore_error();
        let state = match &datastore_error {
            Some(d) => format!(
                "error: datastore I/O failed ({}; {} time(s), last {} s ago): those writes were refused to the client and not shipped",
                d.message,
                d.failures,
                now.saturating_sub(d.last_unix_ms) / 1000
            ),
            None => match &protection {
                None => self.cap.capture.mode().name().to_string(),
                Some(_) if self.is_paused() => "paused".into(),
                Some(p) if p.ship.error.is_some() => "error".into(),
                Some(_) if self.delta_pending() => "delta-sync".into(),
                Some(p) if p.initial_done_bytes.is_some() => "initializing".into(),
                Some(_) if self.cap.capture.mode() != Mode::Journaling => self.cap.capture.mode().name().into(),
                Some(p) if p.meeting_sla => "protecting (meeting SLA)".into(),
                Some(_) => "protecting (not meeting SLA)".into(),
            },
        };
        VpgStatus {
            name: self.record.name.clone(),
            state,
            volumes: self
                .record
                .volumes
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let id = i as u32 + 1;
                    VpgVolumeStatus {
                        name: v.clone(),
                        id,
                        attached: members.get(&id).is_some_and(|m| m.file.is_some()),
                        dirty_bytes: self.cap.capture.map(id).map_or(0, |m| m.dirty_bytes()),
                    }
                })
                .collect(),
            journal: JournalStatus {
                path: journal_path(&self.dir),
                size_bytes: st.data_bytes,
                used_bytes: st.data_used_bytes,
                records: st.next_seq - st.acked_seq,
                acked_seq: st.acked_seq,
                settled_seq: st.settled_seq,
                next_seq: st.next_seq,
                fill_percent: (st.fill() * 1000.0).round() / 10.0,
            },
            last_checkpoint: checkpoints.last().cloned(),
            checkpoints,
            events: self.cap.events.list(),
            protection,
            datastore_error,
        }
    }

    /// Reads the next settled records for `ferry journal tail`; `ack` acknowledges them
    /// (frees their space); `rewind` starts from the first unacknowledged record. Runs on
    /// the blocking pool: an acknowledgement waits for the disk.
    pub async fn tail(
        &self,
        max: usize,
        ack: bool,
        rewind: bool,
        last_only: bool,
    ) -> Result<Vec<TailRecord>, AgentError> {
        let mut guard = self.consumer.lock().await;
        if guard.is_none() {
            *guard = self.cap.capture.journal().consumer();
        }
        let Some(mut cons) = guard.take() else {
            return Err(AgentError::Refused(format!(
                "VPG {:?}: the journal's consumer is busy (a protected VPG's journal is read by its shipper)",
                self.record.name
            )));
        };
        let volumes = self.record.volumes.clone();
        let (cons, result) = tokio::task::spawn_blocking(move || {
            let r = read_records(&mut cons, &volumes, max, ack, rewind, last_only);
            (cons, r)
        })
        .await
        .map_err(|e| AgentError::Refused(format!("journal read failed: {e}")))?;
        *guard = Some(cons);
        result
    }

    /// Last sync and a clean mark, at shutdown (nothing is in flight any more).
    async fn close(self: &Arc<Self>) {
        self.stop.cancel();
        if let Err(e) = self.sync_once().await {
            error!(vpg = %self.record.name, error = %e, "final journal sync failed; recovery will run at the next start");
            return;
        }
        if let Err(e) = self.cap.capture.close_clean() {
            error!(vpg = %self.record.name, error = %e, "cannot mark the journal cleanly closed");
        }
    }
}

/// Reads a region that is read once (the drain, a delta sync's comparison) and keeps it out
/// of the page cache. (Pages read in large folios by readahead also make later small writes
/// to them slow on ext4: every 4 KiB write walks the whole folio.) Readahead puts them in
/// folios of up to 2 MiB, which are dropped only whole: the aligned span behind the read is
/// dropped, where the folios are complete.
pub fn read_once(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    const FOLIO_MAX: u64 = 2 << 20;
    let r = std::os::unix::fs::FileExt::read_exact_at(file, buf, offset);
    let to = (offset + buf.len() as u64) & !(FOLIO_MAX - 1);
    let from = (offset & !(FOLIO_MAX - 1)).saturating_sub(FOLIO_MAX);
    if let Some(span) = std::num::NonZeroU64::new(to.saturating_sub(from)) {
        let _ = rustix::fs::fadvise(file, from, Some(span), rustix::fs::Advice::DontNeed);
    }
    r
}

/// Keeps the journal's next pages mapped ahead of the writers ([`Journal::prefault`]) on a
/// thread of its own, off the request path, until the VPG stops. It polls: every
/// millisecond while writes move the head, backing off to every 50 ms when idle.
fn spawn_prefaulter(vpg: &Vpg) {
    let journal = vpg.cap.capture.journal().clone();
    let stop = vpg.stop.clone();
    let spawned = std::thread::Builder::new()
        .name("ferry-prefault".into())
        .spawn(move || {
            let mut idle = Duration::from_millis(1);
            while !stop.is_cancelled() {
                if journal.prefault() {
                    idle = Duration::from_millis(1);
                    continue;
                }
                std::thread::sleep(idle);
                idle = (idle * 2).min(Duration::from_millis(50));
            }
        });
    if let Err(e) = spawned {
        // Writers fault the pages in themselves: slower, nothing else changes.
        warn!(vpg = %vpg.record.name, error = %e, "cannot start the journal's prefault thread");
    }
}

/// The VPGs of this agent.
pub struct Vpgs {
    state_dir: PathBuf,
    volumes: Arc<Volumes>,
    engine: Arc<Engine>,
    pool: Arc<BufPool>,
    cfg: CaptureConfig,
    vpgs: RwLock<BTreeMap<String, Arc<Vpg>>>,
    change: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Vpgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vpgs").finish()
    }
}

fn registry_path(state_dir: &Path) -> PathBuf {
    state_dir.join("vpgs.json")
}

fn check_vpg_name(name: &str) -> Result<(), AgentError> {
    crate::meta::name_problem("VPG", name).map_or(Ok(()), |why| Err(AgentError::Refused(why)))
}

impl Vpgs {
    /// Opens every registered VPG, recovering its journal and maps, and attaches its
    /// volumes.
    pub fn load(
        state_dir: &Path,
        volumes: Arc<Volumes>,
        engine: Arc<Engine>,
        pool: Arc<BufPool>,
        cfg: CaptureConfig,
    ) -> Result<Arc<Vpgs>, AgentError> {
        let path = registry_path(state_dir);
        let reg: VpgRegistry = match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| AgentError::StateCorrupt {
                path: path.clone(),
                why: e.to_string(),
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => VpgRegistry {
                version: VPG_FORMAT_VERSION,
                vpgs: vec![],
            },
            Err(e) => return Err(AgentError::io("cannot read", path, e)),
        };
        if reg.version != VPG_FORMAT_VERSION {
            return Err(AgentError::StateCorrupt {
                path,
                why: format!("format version {} is not {VPG_FORMAT_VERSION}", reg.version),
            });
        }
        let me = Arc::new(Vpgs {
            state_dir: state_dir.into(),
            volumes,
            engine,
            pool,
            cfg,
            vpgs: RwLock::new(BTreeMap::new()),
            change: tokio::sync::Mutex::new(()),
        });
        for record in reg.vpgs {
            let name = record.name.clone();
            match me.open(record) {
                Ok(v) => {
                    me.vpgs.write().unwrap_or_else(|e| e.into_inner()).insert(name, v);
                }
                Err(e) => {
                    error!(vpg = %name, error = %e, "VPG cannot be opened; its volumes are served without capture")
                }
            }
        }
        Ok(me)
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.state_dir.join("vpgs").join(name)
    }

    fn save(&self, list: &[VpgRecord]) -> Result<(), AgentError> {
        let reg = VpgRegistry {
            version: VPG_FORMAT_VERSION,
            vpgs: list.to_vec(),
        };
        let text = serde_json::to_string_pretty(&reg).expect("registry serialises");
        crate::meta::write_atomic(&self.state_dir, &registry_path(&self.state_dir), text.as_bytes())
    }

    fn records(&self) -> Vec<VpgRecord> {
        self.vpgs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|v| {
                let mut r = v.record.clone();
                if let Some(p) = &mut r.protection {
                    p.paused = v.is_paused();
                }
                r
            })
            .collect()
    }

    fn map_header(&self, volume_bytes: u64, id: u32) -> MapHeader {
        MapHeader {
            granularity: self.cfg.dirty_granularity,
            volume_bytes,
            extent_bytes: EXTENT_DEFAULT.max(self.cfg.dirty_granularity),
            clean: false,
            boot_id: boot_id(),
            settled_seq: 0,
            volume: id,
        }
    }

    fn volume_bytes(&self, name: &str) -> Option<u64> {
        self.volumes
            .list()
            .into_iter()
            .find(|v| v.record.name == name)
            .map(|v| v.record.size_bytes)
    }

    /// Opens a registered VPG: recovery by the rules in `ferry_journal::capture`.
    fn open(self: &Arc<Self>, record: VpgRecord) -> Result<Arc<Vpg>, AgentError> {
        let dir = self.dir(&record.name);
        let jpath = journal_path(&dir);
        let mut notes = Vec::new();
        let opened = MmapStorage::open(&jpath)
            .map_err(|e| e.to_string())
            .and_then(|s| Journal::open(s).map_err(|e| e.to_string()));
        let (journal, jrec, journal_lost) = match opened {
            Ok((j, r)) => (j, r, false),
            Err(why) => {
                // Rule 8: the journal is unreadable.
                let moved = move_aside(&jpath);
                notes.push(format!(
                    "journal {} unreadable ({why}; {moved}): a new one was made and every volume is marked wholly dirty",
                    jpath.display()
                ));
                let g = Geometry::for_data_bytes(record.ring_id, record.journal_bytes);
                let s = MmapStorage::create(&jpath, g.file_bytes())
                    .map_err(|e| AgentError::io("cannot create journal", &jpath, e))?;
                let j =
                    Journal::create(s, g).map_err(|e| AgentError::Refused(format!("cannot format journal: {e}")))?;
                (
                    j,
                    ferry_journal::Recovery {
                        records: 0,
                        stopped_by: ferry_journal::Stop::Empty,
                        holes: vec![],
                    },
                    true,
                )
            }
        };
        let boot = boot_id();
        let mut maps = BTreeMap::new();
        for (i, vol) in record.volumes.iter().enumerate() {
            let id = i as u32 + 1;
            let path = map_path(&dir, vol);
            let opened = MmapStorage::open(&path)
                .map_err(|e| e.to_string())
                .and_then(|s| DirtyMap::open(s, boot).map_err(|e| e.to_string()));
            let (map, rec) = match opened {
                Ok((m, r)) => (m, r),
                Err(why) => {
                    // Rule 7: a map is unreadable.
                    let moved = move_aside(&path);
                    notes.push(format!(
                        "dirty map of volume {vol:?} unreadable ({why}; {moved}): the whole volume is marked dirty"
                    ));
                    let bytes = self.volume_bytes(vol).unwrap_or(0);
                    let m = create_map(&path, self.map_header(bytes, id), true)?;
                    let rec = ferry_journal::MapRecovery {
                        was_clean: false,
                        rebooted: false,
                        extents_marked: 0,
                        settled_seq: 0,
                    };
                    (m, rec)
                }
            };
            if journal_lost {
                map.mark_all();
            }
            maps.insert(id, (Arc::new(map), rec));
        }
        let (capture, rep) = Capture::recover(journal, &jrec, maps);
        let vpg = self.runtime(record, dir, capture);
        vpg.reload_checkpoints();
        log_recovery(&vpg, &jrec, &rep);
        for n in notes {
            error!(vpg = %vpg.record.name, "{n}");
            vpg.cap.push_event(n);
        }
        vpg.cap.collect_events();
        self.attach_all(&vpg);
        Ok(vpg)
    }

    fn runtime(self: &Arc<Self>, record: VpgRecord, dir: PathBuf, capture: Capture<MmapStorage>) -> Arc<Vpg> {
        let record_name = record.name.clone();
        let vpg = Arc::new(Vpg {
            members: RwLock::new(
                record
                    .volumes
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        (
                            i as u32 + 1,
                            Member {
                                name: v.clone(),
                                file: None,
                            },
                        )
                    })
                    .collect(),
            ),
            record,
            dir,
            cap: Arc::new(VpgCapture::new(record_name, capture, self.pool.clone())),
            engine: self.engine.clone(),
            consumer: tokio::sync::Mutex::new(None),
            checkpoints: Mutex::new(VecDeque::new()),
            stop: CancellationToken::new(),
            cfg: self.cfg.clone(),
            paused: std::sync::atomic::AtomicBool::new(false),
            ship: Mutex::new(ShipState::default()),
            initial_done: std::sync::atomic::AtomicBool::new(false),
            initial_end_seq: std::sync::atomic::AtomicU64::new(0),
            sla_met: std::sync::atomic::AtomicBool::new(true),
            opened_ms: now_ms(),
            link_seen: std::sync::atomic::AtomicBool::new(false),
            delta_pending: std::sync::atomic::AtomicBool::new(false),
            behind: std::sync::atomic::AtomicBool::new(false),
            behind_checked_ms: std::sync::atomic::AtomicU64::new(0),
            throttle_event_ms: std::sync::atomic::AtomicU64::new(0),
            ack_progress: Mutex::new((0, 0)),
            delta_progress: Mutex::new(DeltaProgress::default()),
        });
        // A journal with nothing unacknowledged: the recovery site held every captured
        // write when it was opened, so the RPO starts from now, not from creation.
        let st = vpg.journal_stats();
        if st.acked_seq >= st.next_seq && vpg.cap.capture.mode() == Mode::Journaling {
            vpg.ship_update(|s| s.caught_up_ms = now_ms());
        }
        let delta = vpg.record.protection.as_ref().is_some_and(|p| p.preseeded) && !delta_marker(&vpg.dir).exists();
        vpg.delta_pending.store(delta, std::sync::atomic::Ordering::Relaxed);
        let paused = vpg.record.protection.as_ref().is_some_and(|p| p.paused);
        vpg.paused.store(paused, std::sync::atomic::Ordering::Relaxed);
        vpg.initial_done.store(
            vpg.record.protection.is_none() || initial_marker(&vpg.dir).exists(),
            std::sync::atomic::Ordering::Relaxed,
        );
        if vpg.record.protection.as_ref().is_some_and(|p| p.throttle_rpo_ms > 0) {
            let weak = Arc::downgrade(&vpg);
            vpg.cap
                .set_throttle(Box::new(move || weak.upgrade().is_some_and(|v| v.behind_now())));
        }
        tokio::spawn(vpg.clone().run_ticker());
        tokio::spawn(vpg.clone().run_drain());
        spawn_prefaulter(&vpg);
        vpg
    }

    /// Connects each member volume that is online to the VPG: its writes are captured from
    /// now on.
    fn attach_all(&self, vpg: &Arc<Vpg>) {
        let mut members = vpg.members.write().unwrap_or_else(|e| e.into_inner());
        for (&id, m) in members.iter_mut() {
            match self.volumes.get(&m.name) {
                Some(v) => {
                    m.file = Some(v.file());
                    v.set_member(Some((vpg.cap.clone(), id)));
                }
                None => {
                    let msg = format!(
                        "volume {:?} is offline: its writes are not captured until it is back",
                        m.name
                    );
                    warn!(vpg = %vpg.record.name, "{msg}");
                    vpg.cap.push_event(msg);
                }
            }
        }
    }

    pub fn get(&self, name: &str) -> Result<Arc<Vpg>, AgentError> {
        self.vpgs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| AgentError::NoVpg(name.into()))
    }

    fn all(&self) -> Vec<Arc<Vpg>> {
        self.vpgs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub fn list(&self) -> Vec<VpgStatus> {
        self.all().iter().map(|v| v.status()).collect()
    }

    /// The VPGs replicated to a recovery site.
    pub fn protected(&self) -> Vec<Arc<Vpg>> {
        self.all()
            .into_iter()
            .filter(|v| v.record.protection.is_some())
            .collect()
    }

    /// Pauses or resumes shipping (capture goes on; the journal fills, then dirty tracking
    /// takes over).
    pub async fn set_paused(&self, name: &str, paused: bool) -> Result<VpgStatus, AgentError> {
        let _g = self.change.lock().await;
        let vpg = self.get(name)?;
        if vpg.record.protection.is_none() {
            return Err(AgentError::Refused(format!(
                "VPG {name:?} is not replicated (create it with --peer to protect it)"
            )));
        }
        vpg.paused.store(paused, std::sync::atomic::Ordering::Relaxed);
        self.save(&self.records())?;
        vpg.event(if paused {
            "paused: nothing is shipped until `ferry vpg resume`".into()
        } else {
            "resumed".into()
        });
        Ok(vpg.status())
    }

    /// The VPG a volume is in, if any.
    pub fn vpg_of(&self, volume: &str) -> Option<String> {
        self.records()
            .into_iter()
            .find(|r| r.volumes.iter().any(|v| v == volume))
            .map(|r| r.name)
    }

    pub async fn create(
        self: &Arc<Self>,
        name: &str,
        volumes: &[String],
        journal_bytes: Option<u64>,
        protect: Option<&ProtectArgs>,
    ) -> Result<VpgStatus, AgentError> {
        check_vpg_name(name)?;
        let protection = protect.map(|p| p.check()).transpose()?;
        let _g = self.change.lock().await;
        if self.vpgs.read().unwrap_or_else(|e| e.into_inner()).contains_key(name) {
            return Err(AgentError::Refused(format!("a VPG named {name:?} already exists")));
        }
        if volumes.is_empty() {
            return Err(AgentError::Refused("a VPG needs at least one --volume".into()));
        }
        let mut seen = std::collections::BTreeSet::new();
        let mut vols: Vec<Arc<Volume>> = Vec::new();
        for v in volumes {
            if !seen.insert(v) {
                return Err(AgentError::Refused(format!("volume {v:?} is named twice")));
            }
            if let Some(other) = self.vpg_of(v) {
                return Err(AgentError::Refused(format!(
                    "volume {v:?} is already in VPG {other:?}; a volume belongs to at most one VPG"
                )));
            }
            let vol = self.volumes.get(v).ok_or_else(|| AgentError::NoVolume(v.clone()))?;
            if vol.record.read_only {
                return Err(AgentError::Refused(format!(
                    "volume {v:?} is read-only: there is nothing to capture"
                )));
            }
            vols.push(vol);
        }
        let journal_bytes = journal_bytes.unwrap_or(self.cfg.journal_bytes_default);
        if journal_bytes < (1 << 20) {
            return Err(AgentError::Refused(format!(
                "--journal-size {} is too small; at least 1M",
                human(journal_bytes)
            )));
        }
        let record = VpgRecord {
            name: name.into(),
            volumes: volumes.to_vec(),
            journal_bytes,
            ring_id: random_u64(),
            created_unix_ms: now_ms(),
            protection,
        };
        let dir = self.dir(name);
        let made = (|| -> Result<Capture<MmapStorage>, AgentError> {
            std::fs::create_dir_all(&dir).map_err(|e| AgentError::io("cannot create VPG directory", &dir, e))?;
            let g = Geometry::for_data_bytes(record.ring_id, journal_bytes);
            let jpath = journal_path(&dir);
            let s = MmapStorage::create(&jpath, g.file_bytes()).map_err(|e| {
                AgentError::io(
                    "cannot create the journal (is the state directory's filesystem full?)",
                    &jpath,
                    e,
                )
            })?;
            let journal =
                Journal::create(s, g).map_err(|e| AgentError::Refused(format!("cannot format journal: {e}")))?;
            let mut maps = BTreeMap::new();
            for (i, v) in vols.iter().enumerate() {
                let id = i as u32 + 1;
                // A protected VPG starts with every block dirty: the drain reads them all
                // into the journal (the initial sync), while new writes are captured.
                let m = create_map(
                    &map_path(&dir, &v.record.name),
                    self.map_header(v.record.size_bytes, id),
                    record.protection.as_ref().is_some_and(|p| !p.preseeded),
                )?;
                maps.insert(id, Arc::new(m));
            }
            Ok(Capture::new(journal, maps))
        })();
        let capture = match made {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let mut list = self.records();
        list.push(record.clone());
        if let Err(e) = self.save(&list) {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        let vpg = self.runtime(record, dir, capture);
        self.attach_all(&vpg);
        vpg.cap.push_event(format!(
            "created with {} volume(s) and a {} journal; capture starts now",
            volumes.len(),
            human(journal_bytes)
        ));
        if let Some(p) = &vpg.record.protection {
            vpg.cap.push_event(format!(
                "protected to {} (priority {}); initial sync of {} begins",
                p.peer,
                p.priority.name(),
                human(vpg.cap.capture.dirty_bytes())
            ));
        }
        info!(vpg = %name, volumes = ?volumes, journal_bytes, "VPG created");
        self.vpgs
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.into(), vpg.clone());
        Ok(vpg.status())
    }

    /// Deletes a VPG here; returns its record, so the caller can ask the recovery site to
    /// delete the replica too.
    pub async fn delete(&self, name: &str) -> Result<VpgRecord, AgentError> {
        let _g = self.change.lock().await;
        let vpg = self.get(name)?;
        let record = vpg.record.clone();
        let list: Vec<VpgRecord> = self.records().into_iter().filter(|r| r.name != name).collect();
        self.save(&list)?;
        self.vpgs.write().unwrap_or_else(|e| e.into_inner()).remove(name);
        for m in vpg.members.read().unwrap_or_else(|e| e.into_inner()).values() {
            if let Some(v) = self.volumes.get(&m.name) {
                v.set_member(None);
            }
        }
        vpg.stop.cancel();
        let dir = vpg.dir.clone();
        drop(vpg);
        std::fs::remove_dir_all(&dir)
            .map_err(|e| AgentError::io("VPG removed, but cannot delete its directory", &dir, e))?;
        info!(vpg = %name, "VPG deleted");
        Ok(record)
    }

    /// Final sync and clean mark of every VPG (at shutdown, after the NBD sessions ended).
    pub async fn close_all(&self) {
        for v in self.all() {
            v.close().await;
        }
    }
}

fn read_records(
    cons: &mut Consumer<MmapStorage>,
    volumes: &[String],
    max: usize,
    ack: bool,
    rewind: bool,
    last_only: bool,
) -> Result<Vec<TailRecord>, AgentError> {
    if rewind {
        cons.rewind();
    }
    let describe = |e: &ferry_journal::format::Entry, tag: Option<String>| TailRecord {
        seq: e.seq,
        kind: e.kind.name().into(),
        volume: match e.kind {
            Kind::Checkpoint | Kind::Void => String::new(),
            _ => volumes
                .get((e.volume as usize).wrapping_sub(1))
                .cloned()
                .unwrap_or_else(|| format!("#{}", e.volume)),
        },
        offset: e.offset,
        length: e.length,
        crc: e.payload_crc,
        tag,
    };
    let mut out = Vec::new();
    // With `last_only`, every record is read (as a shipper would) but only the last one is
    // described.
    let mut last = None;
    for _ in 0..max {
        let Some(r) = cons.next_record() else { break };
        let tag = (r.entry.kind == Kind::Checkpoint).then(|| String::from_utf8_lossy(r.payload).into_owned());
        if last_only {
            last = Some((r.entry, tag));
        } else {
            out.push(describe(&r.entry, tag));
        }
    }
    if let Some((e, tag)) = last {
        out.push(describe(&e, tag));
    }
    if ack && let Some(last) = out.last() {
        cons.ack(last.seq + 1)
            .map_err(|e| AgentError::Refused(format!("cannot acknowledge: {e}")))?;
    }
    Ok(out)
}

fn log_recovery(vpg: &Vpg, jrec: &ferry_journal::Recovery, rep: &CaptureRecovery) {
    let name = &vpg.record.name;
    if rep.was_clean {
        info!(vpg = %name, records = rep.records, "journal opened after a clean stop");
        return;
    }
    let msg = format!(
        "recovered after an unclean stop{}: {} unacknowledged record(s), {} hole(s) made void, {} record(s) after the last sync marked dirty, {} activity extent(s) marked dirty; journal ended: {:?}",
        if rep.rebooted {
            " across a reboot (power loss)"
        } else {
            ""
        },
        rep.records,
        rep.voids,
        rep.unsettled_marked,
        rep.extents_marked,
        jrec.stopped_by
    );
    warn!(vpg = %name, "{msg}");
    vpg.cap.push_event(msg);
    for d in &rep.damaged {
        let m = format!("damaged journal record voided and its range marked dirty: {d}");
        error!(vpg = %name, "{m}");
        vpg.cap.push_event(m);
    }
    if rep.foreign > 0 {
        vpg.cap.push_event(format!(
            "{} record(s) name a volume this VPG does not have; skipped",
            rep.foreign
        ));
    }
}
