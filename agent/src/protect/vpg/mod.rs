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
//! Overlapping writes are serialised in sequence order ([`Inflight`](crate::protect::ordering::Inflight)): a write waits for
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
use crate::meta::Lineage;
use crate::protect::capture::{DatastoreError, HOLD_MAX, VpgCapture};
use crate::protect::state::{Action, Input, Lifecycle, SyncPhase, step};
use crate::protect::volume::Volume;
use crate::protect::volumes::Volumes;
use crate::size::human;

mod registry;
mod settings;
mod status;
mod ticker;

pub use registry::Vpgs;
pub use settings::*;
pub use status::*;

pub const VPG_FORMAT_VERSION: u32 = 1;
/// Checkpoints kept in memory per VPG for `vpg show`.
const CHECKPOINTS_KEPT: usize = 64;
/// Largest range the drain reads into one journal record.
const DRAIN_CHUNK_BYTES: u64 = 1 << 20;

/// What the shipper last knew about a protected VPG.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
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

/// A member volume as the VPG sees it.
#[derive(Debug, Clone)]
struct Attached {
    name: String,
    file: Option<Arc<File>>,
}

pub struct Vpg {
    pub record: VpgRecord,
    dir: PathBuf,
    /// The write side: capture, ordering, events, datastore failures, the throttle's hold.
    pub cap: Arc<VpgCapture>,
    members: RwLock<BTreeMap<u32, Attached>>,
    engine: Arc<Engine>,
    consumer: tokio::sync::Mutex<Option<Consumer<MmapStorage>>>,
    checkpoints: Mutex<VecDeque<CheckpointInfo>>,
    stop: CancellationToken,
    cfg: CaptureConfig,
    /// The state machine ([`crate::protect::state`]): the sync phase and whether paused,
    /// persisted in `vpgs/NAME/state.json`.
    lifecycle: Mutex<Lifecycle>,
    pub ship: Mutex<ShipState>,
    /// The failover plan as last edited (`record.plan` is as the VPG was opened).
    plan: Mutex<Plan>,
    /// Its writes are held at a start until the recovery site confirms the epoch.
    pub(super) confirming: std::sync::atomic::AtomicBool,
    /// The RPO was within its target at the last look.
    sla_met: std::sync::atomic::AtomicBool,
    /// When this agent opened the VPG; its RPO is only judged once the link was up, or
    /// [`SLA_GRACE`] after this (before, the recovery site's state is not known yet).
    opened_ms: u64,
    link_seen: std::sync::atomic::AtomicBool,
    pub delta_progress: Mutex<DeltaProgress>,
    /// Reverse protection: the regions this site changed since the failover, by volume id
    /// (the delta sync compares nothing else with what the other site reports changed).
    known_changed: Mutex<Option<crate::ranges::ById>>,
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
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
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
fn state_path(dir: &Path) -> PathBuf {
    dir.join("state.json")
}

/// Writes the state machine's state (atomically: the old or the new, never a torn one).
fn save_lifecycle(dir: &Path, l: &Lifecycle) -> Result<(), AgentError> {
    crate::meta::store(dir, &state_path(dir), crate::meta::VPG_STATE, l)
}

/// The state machine's state as saved, or (a VPG from before it was saved) as the marker
/// files and the registry tell it, saved from now on.
fn load_lifecycle(dir: &Path, record: &VpgRecord) -> Result<Lifecycle, AgentError> {
    let path = state_path(dir);
    match crate::meta::fetch_noting::<Lifecycle>(&path, crate::meta::VPG_STATE)? {
        Some(l) => Ok(l),
        None => {
            let p = record.protection.as_ref();
            let sync = if p.is_some_and(|p| p.preseeded) && !delta_marker(dir).exists() {
                SyncPhase::DeltaSync
            } else if p.is_some() && !initial_marker(dir).exists() {
                SyncPhase::Initializing
            } else {
                SyncPhase::InSync
            };
            let l = Lifecycle {
                sync,
                paused: p.is_some_and(|p| p.paused),
                initial_end_seq: None,
                fenced: None,
                epoch: 0,
                split_brain: None,
                settled: None,
                epochs: Vec::new(),
            };
            save_lifecycle(dir, &l)?;
            Ok(l)
        }
    }
}

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
                    tested: String::new(),
                });
            }
        }
        *self.checkpoints.lock().unwrap_or_else(|e| e.into_inner()) = found;
    }

    /// The state machine as it stands.
    pub fn lifecycle(&self) -> Lifecycle {
        self.lifecycle.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Feeds the state machine: the transition is taken, persisted and told, or refused
    /// with the reason (nothing changes then).
    pub fn apply(&self, input: Input) -> Result<(), String> {
        self.transition(|l| step(l, input))
    }

    /// Takes the transition `to` gives from the state as it stands: persisted (when it
    /// says so), then told; or its refusal, with nothing changed.
    fn transition(
        &self,
        to: impl FnOnce(&Lifecycle) -> Result<(Lifecycle, Vec<Action>), String>,
    ) -> Result<(), String> {
        let actions = {
            let mut g = self.lifecycle.lock().unwrap_or_else(|e| e.into_inner());
            let (next, actions) = to(&g)?;
            if actions.contains(&Action::Persist)
                && let Err(e) = save_lifecycle(&self.dir, &next)
            {
                return Err(format!("cannot record the VPG's new state: {e}"));
            }
            *g = next;
            actions
        };
        for a in actions {
            if let Action::Event(e) = a {
                self.event(e);
            }
        }
        self.cap.wake_shipper();
        Ok(())
    }

    /// The VPG's generation: as created, or as a fence or an unfence from the recovery
    /// site raised it.
    pub fn epoch(&self) -> u64 {
        self.record
            .epoch
            .max(self.lifecycle.lock().unwrap_or_else(|e| e.into_inner()).epoch)
    }

    /// Why writes are refused (a live failover runs the VPG at its recovery site), if so.
    pub fn fenced(&self) -> Option<String> {
        self.lifecycle.lock().unwrap_or_else(|e| e.into_inner()).fenced.clone()
    }

    /// Takes the recovery site's word on a live failover into the state machine
    /// (persisted and told), or says why not. The volumes are the registry's to fence.
    pub(super) fn apply_fencing(&self, input: crate::protect::state::Fencing) -> Result<(), String> {
        let seq = self.journal_stats().next_seq;
        self.transition(|l| {
            let (mut next, actions) = crate::protect::state::fence_step(l, input)?;
            if next.epoch != l.epoch {
                crate::meta::note_epoch(&mut next.epochs, next.epoch, seq);
            }
            Ok((next, actions))
        })
    }

    /// The failover plan (members, boot order, scripts) as it stands.
    pub fn plan(&self) -> Plan {
        self.plan.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(super) fn set_plan(&self, plan: Plan) {
        *self.plan.lock().unwrap_or_else(|e| e.into_inner()) = plan;
        // The shipper tells the recovery site.
        self.cap.wake_shipper();
    }

    pub fn is_paused(&self) -> bool {
        self.lifecycle.lock().unwrap_or_else(|e| e.into_inner()).paused
    }

    /// The initial sync (every block read into the journal and held by the recovery site)
    /// is over, or was never needed.
    pub fn initial_done(&self) -> bool {
        self.lifecycle.lock().unwrap_or_else(|e| e.into_inner()).sync != SyncPhase::Initializing
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

    /// A pre-seeded VPG whose regions are still being compared with the replica's.
    pub fn delta_pending(&self) -> bool {
        self.lifecycle.lock().unwrap_or_else(|e| e.into_inner()).sync == SyncPhase::DeltaSync
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

    /// The regions written here that the recovery site never received, by volume id
    /// (sorted, merged): those of journal records not acknowledged (and at or past
    /// `from_seq`, where the recovery site's history ends), and (with `dirty`)
    /// dirty regions not drained into the journal yet, which may hold such writes (after
    /// a full journal, or an unclean stop). `None` while the journal's consumer is held (a
    /// link ships it, or `journal tail`).
    pub async fn unshipped_regions(&self, from_seq: u64, dirty: bool) -> Option<BTreeMap<u32, Vec<(u64, u64)>>> {
        let mut c = self
            .consumer
            .lock()
            .await
            .take()
            .or_else(|| self.cap.capture.journal().consumer())?;
        c.rewind();
        let mut out: BTreeMap<u32, Vec<(u64, u64)>> = BTreeMap::new();
        while let Some(r) = c.next_record() {
            if matches!(r.entry.kind, Kind::Write | Kind::Trim | Kind::WriteZeroes)
                && r.entry.length > 0
                && r.entry.seq >= from_seq
            {
                out.entry(r.entry.volume)
                    .or_default()
                    .push((r.entry.offset, r.entry.length));
            }
        }
        c.rewind();
        self.put_consumer(c).await;
        if dirty {
            for (id, r) in self.undrained_dirty() {
                out.entry(id).or_default().extend(r);
            }
        }
        for v in out.values_mut() {
            *v = crate::ranges::merge(std::mem::take(v));
        }
        out.retain(|_, v| !v.is_empty());
        Some(out)
    }

    /// What to copy for salvage of `regions` (by volume id): a source per member volume
    /// with regions, reading its file; and the names of those offline (not readable).
    pub fn salvage_sources(&self, regions: &crate::ranges::ById) -> (Vec<crate::diverged::Source>, Vec<String>) {
        let (mut sources, mut offline) = (Vec::new(), Vec::new());
        for (id, file, size) in self.member_files() {
            let Some(regions) = regions.get(&id).filter(|r| !r.is_empty()).cloned() else {
                continue;
            };
            let name = self.record.volumes.get(id as usize - 1).cloned().unwrap_or_default();
            match file {
                Some(file) => sources.push(crate::diverged::Source {
                    name,
                    size_bytes: size,
                    regions,
                    read: Box::new(move |at, buf| crate::io::read_full(&file, buf, at)),
                }),
                None => offline.push(name),
            }
        }
        (sources, offline)
    }

    /// Dirty regions not drained into the journal yet, by volume id.
    pub fn undrained_dirty(&self) -> BTreeMap<u32, Vec<(u64, u64)>> {
        let mut out: BTreeMap<u32, Vec<(u64, u64)>> = BTreeMap::new();
        for (&id, m) in self.cap.capture.maps() {
            let mut from = 0;
            while let Some((off, len)) = m.next_dirty(from, 64 << 20) {
                out.entry(id).or_default().push((off, len));
                from = off + len;
            }
        }
        out.retain(|_, v| !v.is_empty());
        out
    }

    /// Reverse protection knows what this site changed since the failover (by volume
    /// name): the delta sync reads no region that neither site changed.
    pub fn set_known_changed(&self, by_name: BTreeMap<String, Vec<(u64, u64)>>) {
        let by_id = self
            .record
            .volumes
            .iter()
            .enumerate()
            .map(|(i, n)| (i as u32 + 1, by_name.get(n).cloned().unwrap_or_default()))
            .collect();
        *self.known_changed.lock().unwrap_or_else(|e| e.into_inner()) = Some(by_id);
    }

    /// See [`Vpg::set_known_changed`].
    pub fn known_changed(&self) -> Option<BTreeMap<u32, Vec<(u64, u64)>>> {
        self.known_changed.lock().unwrap_or_else(|e| e.into_inner()).clone()
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
        self.apply(Input::DeltaCompared).map_err(io::Error::other)
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
            && self.initial_done()
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
        self.cap.wake_shipper();
        let info = CheckpointInfo {
            seq,
            unix_ms: now_ms(),
            tag: tag.into(),
            tested: String::new(),
        };
        let mut c = self.checkpoints.lock().unwrap_or_else(|e| e.into_inner());
        if c.len() == CHECKPOINTS_KEPT {
            c.pop_front();
        }
        c.push_back(info.clone());
        Ok(info)
    }
}
