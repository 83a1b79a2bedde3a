//! One session with the recovery site, the shell around [`ProtectedSession`]: it feeds the
//! core the peer's messages, the batches it sent and the time, and does what the core asks
//! (send, resume a VPG's journal from a point, halt it, release acknowledged space, compare
//! a delta sync's regions). It builds batches from the journal while the core's window
//! allows, and otherwise waits: for a frame, for the core's deadline, or for the VPGs'
//! wake-up (records settled, a checkpoint, a resume, a VPG created or deleted), never
//! polling.

use super::batch::{build_batch, cons_ack};
use super::*;
use crate::replication::session::protected::{self, Action, Input, JournalView, ProtectedSession};
use crate::replication::session::{Micros, vpg_of};

/// A graceful shutdown waits this long at most for writes in flight to settle.
const GRACEFUL_SETTLE: Duration = Duration::from_secs(10);
use ferry_proto::message::Shutdown;

/// After an idle spell, how long records may gather before the first batch is built.
const LINGER: Duration = Duration::from_millis(5);
/// A VPG the recovery site refused is opened again after this long.
const REOPEN_REFUSED: Duration = Duration::from_secs(10);

/// One VPG within a session: what the shell holds for it (the core holds the stream).
pub(super) struct Shipped {
    pub(super) vpg: Arc<Vpg>,
    /// None until the core resumes it (and while a batch is being built).
    pub(super) consumer: Option<Consumer<MmapStorage>>,
    /// A delta sync's volumes (id, file, size), while it runs.
    delta_files: Vec<(u32, Option<Arc<std::fs::File>>, u64)>,
    /// Acknowledged by the recovery site, journal space not yet released.
    release_to: u64,
    unreleased_bytes: usize,
    released_at: Instant,
    /// Batches still to send uncompressed (adaptive compression).
    uncompressed_left: u32,
    /// Checkpoints below this are not sent (they were taken before a resync).
    skip_checkpoints_below: u64,
    batch_seq: u64,
    rate_mark: (Instant, u64),
    /// The failover plan the recovery site was last sent.
    plan_sent: ferry_proto::message::Plan,
    /// When the recovery site refused it (it is opened again after [`REOPEN_REFUSED`]).
    refused_at: Option<Instant>,
}

pub(super) struct Session<'a> {
    pub(super) shipping: &'a Shipping,
    pub(super) vpgs: HashMap<u64, Shipped>,
    key: (String, PathBuf),
    core: ProtectedSession,
    /// The core's actions that wait for the next step (a delta sync's first requests).
    pending: Vec<Action>,
    start: tokio::time::Instant,
}

/// What one step of sending came to.
enum Sent {
    Batch,
    /// The window is full: only an acknowledgement (a frame) opens it.
    WindowFull,
    /// Nothing ready to send: records settling wake the link.
    Idle,
}

impl<'a> Session<'a> {
    pub(super) fn new(shipping: &'a Shipping, key: &(String, PathBuf)) -> Session<'a> {
        Session {
            shipping,
            vpgs: HashMap::new(),
            key: key.clone(),
            core: ProtectedSession::new(key.0.clone(), 0),
            pending: Vec::new(),
            start: tokio::time::Instant::now(),
        }
    }

    fn now(&self) -> Micros {
        self.start.elapsed().as_micros() as Micros
    }

    pub(super) async fn run(
        &mut self,
        wr: &mut LinkWriter,
        rx: &mut mpsc::Receiver<Result<Frame, LinkError>>,
    ) -> Result<(), LinkError> {
        let wake = self.shipping.vpgs.ship_wake();
        loop {
            // Armed before looking for work, so a wake-up meanwhile is not missed.
            let woken = wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.shipping.stop.is_cancelled() || !self.shipping.wanted(&self.key) {
                return Ok(());
            }
            self.announce(wr).await?;
            self.release_due().await?;
            let idle = loop {
                // Frames that came meanwhile first: acknowledgements open the window.
                while let Ok(f) = rx.try_recv() {
                    self.on_frame(f?, wr).await?;
                }
                match self.send_next(wr).await? {
                    Sent::Batch => {}
                    Sent::WindowFull => break false,
                    Sent::Idle => break true,
                }
            };
            let deadline = self.start + Duration::from_micros(self.core.deadline());
            let deadline = match self.release_deadline() {
                Some(r) => deadline.min(r),
                None => deadline,
            };
            tokio::select! {
                _ = self.shipping.stop.cancelled() => return Ok(()),
                f = rx.recv() => match f {
                    Some(f) => self.on_frame(f?, wr).await?,
                    None => return Err(LinkError::Content("the link's reader ended".into())),
                },
                _ = tokio::time::sleep_until(deadline) => {
                    let actions = self.core.on(self.now(), Input::Tick);
                    self.act(actions, wr).await?;
                }
                _ = &mut woken, if idle => {
                    // Records began to settle: let a few more gather before the batch is
                    // built, rather than one batch (and one acknowledgement) per write.
                    tokio::select! {
                        _ = self.shipping.stop.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(LINGER) => {}
                    }
                }
            }
        }
    }

    /// When acknowledged journal space is due for release, if any waits.
    fn release_deadline(&self) -> Option<tokio::time::Instant> {
        self.vpgs
            .values()
            .filter(|sv| sv.unreleased_bytes > 0)
            .map(|sv| tokio::time::Instant::from_std(sv.released_at + RELEASE_EVERY))
            .min()
    }

    /// Announces each VPG of this peer not yet announced; forgets deleted ones.
    async fn announce(&mut self, wr: &mut LinkWriter) -> Result<(), LinkError> {
        let now = self.shipping.vpgs_for(&self.key);
        let live: Vec<u64> = now.iter().map(|v| v.record.ring_id).collect();
        let gone: Vec<u64> = self.vpgs.keys().copied().filter(|id| !live.contains(id)).collect();
        for id in gone {
            self.vpgs.remove(&id);
            self.core.on(self.now(), Input::Forget { vpg: id });
        }
        for v in now {
            let id = v.record.ring_id;
            // Refused a while ago: asked again (what it was refused for may be settled at the
            // recovery site by now: a split brain resolved, a replica deleted).
            if self
                .vpgs
                .get(&id)
                .is_some_and(|sv| sv.refused_at.is_some_and(|t| t.elapsed() >= REOPEN_REFUSED))
            {
                self.vpgs.remove(&id);
                self.core.on(self.now(), Input::Forget { vpg: id });
            }
            if let Some(sv) = self.vpgs.get_mut(&id) {
                let plan = sv.vpg.plan();
                if plan != sv.plan_sent {
                    sv.plan_sent = plan.clone();
                    let actions = self.core.on(self.now(), Input::Settings { vpg: id, plan });
                    self.act(actions, wr).await?;
                }
                continue;
            }
            let weight =
                f64::from(self.shipping.cfg.weights[v.record.protection.as_ref().expect("protected").priority.index()]);
            v.ship_update(|s| s.link = "connected: opening".into());
            let spec = self.shipping.spec_of(&v);
            self.vpgs.insert(
                id,
                Shipped {
                    vpg: v,
                    consumer: None,
                    delta_files: Vec::new(),
                    skip_checkpoints_below: 0,
                    uncompressed_left: 0,
                    release_to: 0,
                    unreleased_bytes: 0,
                    released_at: Instant::now(),
                    batch_seq: 0,
                    rate_mark: (Instant::now(), 0),
                    plan_sent: spec.plan.clone(),
                    refused_at: None,
                },
            );
            let actions = self.core.on(self.now(), Input::Announce { spec, weight });
            self.act(actions, wr).await?;
        }
        Ok(())
    }

    async fn on_frame(&mut self, f: Frame, wr: &mut LinkWriter) -> Result<(), LinkError> {
        let message = match f {
            Frame::Control(m) => m,
            Frame::Batch(..) => return Err(LinkError::Content("a recovery site does not send batches".into())),
        };
        let journal = match &message {
            Message::Opened { vpg, .. } => self.vpgs.get(vpg).map(|sv| {
                let st = sv.vpg.journal_stats();
                JournalView {
                    next_seq: st.next_seq,
                    acked_seq: st.acked_seq,
                }
            }),
            _ => None,
        };
        let actions = self.core.on(self.now(), Input::Message { message, journal });
        self.act(actions, wr).await
    }

    /// Does what the core asked, in order.
    async fn act(&mut self, actions: Vec<Action>, wr: &mut LinkWriter) -> Result<(), LinkError> {
        for a in actions {
            match a {
                Action::Send(m) => wr.send(vpg_of(&m), &m).await?,
                Action::Resume { vpg, next_seq, resync } => {
                    if let Some(sv) = self.vpgs.get(&vpg) {
                        self.shipping.vpgs.confirmed(&sv.vpg);
                    }
                    self.resume(vpg, next_seq, resync).await?
                }
                Action::Halt { vpg, why, refused } => {
                    if let Some(sv) = self.vpgs.get_mut(&vpg) {
                        if refused {
                            sv.refused_at = Some(Instant::now());
                        }
                        self.shipping.vpgs.confirmed(&sv.vpg);
                        // Told once (a refused VPG is asked again now and then).
                        if sv.vpg.ship_update(|s| s.error.as_ref() != Some(&why)) {
                            sv.vpg.event(why.clone());
                        }
                        sv.vpg.ship_update(|s| s.error = Some(why));
                        sv.delta_files.clear();
                        // What was in flight is read again from the journal if the VPG is
                        // ever accepted.
                        if let Some(c) = sv.consumer.take() {
                            sv.vpg.put_consumer(c).await;
                        }
                    }
                }
                Action::Acked {
                    vpg,
                    next_seq,
                    plain_bytes,
                } => self.acked(vpg, next_seq, plain_bytes as usize),
                Action::Compare {
                    vpg,
                    volume,
                    offset,
                    sums,
                } => {
                    let Some(sv) = self.vpgs.get(&vpg) else { continue };
                    let Some((_, file, size)) = sv.delta_files.iter().find(|v| v.0 == volume).cloned() else {
                        continue;
                    };
                    let vpg2 = sv.vpg.clone();
                    let known = vpg2
                        .known_changed()
                        .map(|k| k.get(&volume).cloned().unwrap_or_default());
                    tokio::task::spawn_blocking(move || {
                        compare_regions(&vpg2, volume, file, size, offset, &sums, known)
                    })
                    .await
                    .map_err(|e| LinkError::Content(e.to_string()))?;
                }
                Action::DeltaDone { vpg } => {
                    let Some(sv) = self.vpgs.get_mut(&vpg) else { continue };
                    sv.delta_files.clear();
                    sv.vpg.finish_delta().await.map_err(LinkError::Io)?;
                    sv.skip_checkpoints_below = sv.vpg.journal_stats().next_seq;
                    info!(vpg = %sv.vpg.record.name, "delta sync comparison finished");
                }
                Action::Fence {
                    vpg,
                    epoch,
                    shutdown,
                    reason,
                    missed,
                    held_seq,
                    written,
                } => {
                    let Some(sv) = self.vpgs.get(&vpg) else { continue };
                    let v = sv.vpg.clone();
                    let diverged = if missed {
                        self.split_brain(&v, epoch, &reason, held_seq, written).await
                    } else {
                        None
                    };
                    let final_seq = if diverged.is_some() {
                        v.journal_stats().next_seq
                    } else {
                        self.fence(&v, epoch, shutdown, reason).await
                    };
                    self.shipping.vpgs.confirmed(&v);
                    let actions = self.core.on(
                        self.now(),
                        Input::FenceDone {
                            vpg,
                            epoch,
                            final_seq,
                            diverged,
                        },
                    );
                    Box::pin(self.act(actions, wr)).await?;
                }
                Action::Unfence { vpg, epoch } => {
                    let Some(sv) = self.vpgs.get(&vpg) else { continue };
                    let v = sv.vpg.clone();
                    match self
                        .shipping
                        .vpgs
                        .fencing(&v, crate::protect::state::Fencing::Unfence { epoch })
                    {
                        Ok(()) => info!(vpg = %v.record.name, epoch, "unfenced: the failover was rolled back"),
                        Err(why) => warn!(vpg = %v.record.name, epoch, %why, "unfence refused"),
                    }
                    self.shipping.vpgs.confirmed(&v);
                }
                Action::End(why) => return Err(LinkError::Content(why)),
            }
        }
        Ok(())
    }

    /// A failover at the recovery site that this site was not there for (the fence
    /// answers its `Open`): if it holds writes the recovery site never received (journal
    /// records from `held_seq` on), both sites took writes: split brain. It is fenced as
    /// split brain (nothing overwritten, replication stopped), or stays so; the bytes are
    /// reported (0 once settled for the other site). `None`: no split brain, a plain fence
    /// follows. (Dirty regions alone are no proof of a write: after an unclean stop they
    /// are marked wider than what was written. They are kept for salvage if this site is
    /// resynced; see `replication::receiver`.)
    async fn split_brain(&self, v: &Arc<Vpg>, epoch: u64, reason: &str, held_seq: u64, there: u64) -> Option<u64> {
        use crate::protect::state::{MissedFence, on_missed_fence};
        let l = v.lifecycle();
        // The scan is skipped where the state alone decides.
        let bytes = match on_missed_fence(&l, epoch, 1) {
            MissedFence::SplitBrain(_) => v
                .unshipped_regions(held_seq, false)
                .await?
                .values()
                .map(|r| crate::ranges::total(r))
                .sum(),
            _ => 0,
        };
        let bytes = match on_missed_fence(&l, epoch, bytes) {
            MissedFence::Report(b) => return Some(b),
            MissedFence::Stands | MissedFence::Fence => return None,
            MissedFence::SplitBrain(b) => b,
        };
        let why = reason.to_string();
        match self.shipping.vpgs.fencing(
            v,
            crate::protect::state::Fencing::SplitBrain {
                epoch,
                bytes,
                from_seq: held_seq,
                there_bytes: there,
                why,
            },
        ) {
            Ok(()) => {
                warn!(vpg = %v.record.name, epoch, bytes, "split brain: the recovery site took the VPG over while this site held writes it never received; both sides keep their writes until `ferry vpg resolve`");
                Some(bytes)
            }
            Err(why) => {
                warn!(vpg = %v.record.name, epoch, %why, "split brain not recorded");
                None
            }
        }
    }

    /// A live failover at the recovery site: applies the shutdown policy to `v` and fences
    /// it; the sequence below which everything it will send lies.
    async fn fence(&self, v: &Arc<Vpg>, epoch: u64, shutdown: Shutdown, reason: String) -> u64 {
        let name = v.record.name.clone();
        // Fenced already (a refused VPG opened again): the answer stands.
        if v.fenced().is_some() && v.epoch() >= epoch {
            return v.journal_stats().next_seq;
        }
        if shutdown == Shutdown::None {
            let msg = format!(
                "live failover to {} at epoch {epoch} with shutdown none: production goes on writing here, and those writes are not part of the failover",
                self.key.0
            );
            warn!(vpg = %name, "{msg}");
            v.event(msg);
            return v.journal_stats().next_seq;
        }
        if let Err(why) = self
            .shipping
            .vpgs
            .fencing(v, crate::protect::state::Fencing::Fence { epoch, why: reason })
        {
            warn!(vpg = %name, epoch, %why, "fence refused");
        }
        if shutdown == Shutdown::Graceful {
            // Writes that got past the fence settle (bounded) before the final checkpoint.
            let until = Instant::now() + GRACEFUL_SETTLE;
            while Instant::now() < until {
                let st = v.journal_stats();
                if st.settled_seq >= st.next_seq {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        crate::failpoint::hit("fence:fenced");
        // A final checkpoint (after a forced fence, of what was acknowledged by then).
        match v.checkpoint("before failover") {
            Ok(cp) => {
                info!(vpg = %name, seq = cp.seq, "final checkpoint before the failover");
                cp.seq + 1
            }
            Err(e) => {
                warn!(vpg = %name, error = %e, "no final checkpoint before the failover");
                v.journal_stats().next_seq
            }
        }
    }

    /// The recovery site holds `vpg` below `next_seq`: read its journal from there (after
    /// marking every block for a resync), and start a pending delta sync.
    async fn resume(&mut self, vpg: u64, next_seq: u64, resync: bool) -> Result<(), LinkError> {
        let Some(sv) = self.vpgs.get_mut(&vpg) else {
            return Ok(());
        };
        let Some(mut cons) = sv.vpg.take_consumer().await else {
            sv.vpg
                .ship_update(|s| s.error = Some("the journal's consumer is held by `ferry journal tail`".into()));
            return Ok(());
        };
        if resync {
            // Damage at the recovery site took records this journal released: send every
            // block again, and no checkpoint from before the resync.
            let why = format!(
                "the recovery site lost acknowledged history (the journal had released the records below seq {next_seq}): resynchronising every block"
            );
            if let Err(e) = sv.vpg.resync_all(why).await {
                sv.vpg.put_consumer(cons).await;
                return Err(LinkError::Io(e));
            }
            sv.skip_checkpoints_below = sv.vpg.journal_stats().next_seq;
        }
        cons.rewind();
        let (cons, r) = tokio::task::spawn_blocking(move || {
            let r = cons_ack(&mut cons, next_seq);
            (cons, r)
        })
        .await
        .map_err(|e| LinkError::Content(e.to_string()))?;
        if let Err(e) = r {
            warn!(vpg = %sv.vpg.record.name, error = %e, "cannot release journal space");
        }
        sv.consumer = Some(cons);
        let mut start_delta = None;
        let sv_known = sv.vpg.known_changed().is_some();
        if sv.vpg.delta_pending() {
            let volumes = sv.vpg.member_files();
            let total = volumes.iter().map(|v| v.2).sum();
            *sv.vpg.delta_progress.lock().unwrap_or_else(|e| e.into_inner()) = crate::protect::vpg::DeltaProgress {
                total_bytes: total,
                ..Default::default()
            };
            start_delta = Some(volumes.iter().map(|v| (v.0, v.2)).collect());
            sv.delta_files = volumes;
            // Checkpoints from before the comparison ends are not whole.
            sv.skip_checkpoints_below = u64::MAX;
        }
        info!(vpg = %sv.vpg.record.name, next_seq, "shipping resumes");
        sv.vpg.ship_update(|s| {
            s.link = "connected".into();
            s.error = None;
            s.acked_seq = s.acked_seq.max(next_seq);
        });
        if let Some(volumes) = start_delta {
            let known = sv_known;
            let actions = self.core.on(self.now(), Input::StartDelta { vpg, volumes, known });
            // Only requests come of it, which are sent as the next step's actions.
            for a in &actions {
                assert!(matches!(a, Action::Send(_) | Action::DeltaDone { .. }), "{a:?}");
            }
            self.pending.extend(actions);
        }
        Ok(())
    }

    /// Records of `vpg` below `next_seq` are durable at the recovery site.
    fn acked(&mut self, vpg: u64, next_seq: u64, plain: usize) {
        let Some(sv) = self.vpgs.get_mut(&vpg) else { return };
        sv.release_to = sv.release_to.max(next_seq);
        sv.unreleased_bytes += plain;
        let caught_up = next_seq >= sv.vpg.journal_stats().next_seq;
        let (t0, b0) = sv.rate_mark;
        let el = t0.elapsed().as_secs_f64();
        sv.vpg.ship_update(|s| {
            s.acked_seq = s.acked_seq.max(next_seq);
            s.acked_bytes += plain as u64;
            if caught_up {
                s.caught_up_ms = now_ms();
            }
            if el >= 2.0 {
                s.rate_bytes_per_s = (s.acked_bytes - b0) as f64 / el;
            }
        });
        if el >= 2.0 {
            sv.rate_mark = (Instant::now(), sv.vpg.ship_update(|s| s.acked_bytes));
        }
        sv.vpg.note_initial_sync();
    }

    /// Releases the journal space of acknowledged records, a few times a second or every
    /// [`RELEASE_BYTES`] (each release syncs the journal's superblock and drops pages).
    async fn release_due(&mut self) -> Result<(), LinkError> {
        for sv in self.vpgs.values_mut() {
            let due = sv.unreleased_bytes >= RELEASE_BYTES
                || (sv.unreleased_bytes > 0 && sv.released_at.elapsed() >= RELEASE_EVERY)
                || (sv.release_to > 0 && sv.vpg.journal_stats().fill() > 0.5);
            if !due || sv.release_to <= sv.vpg.journal_stats().acked_seq {
                if due {
                    sv.unreleased_bytes = 0;
                }
                continue;
            }
            let Some(mut cons) = sv.consumer.take() else {
                // Released when the VPG resumes.
                sv.unreleased_bytes = 0;
                continue;
            };
            let to = sv.release_to;
            let (cons, r) = tokio::task::spawn_blocking(move || {
                let r = cons_ack(&mut cons, to);
                (cons, r)
            })
            .await
            .map_err(|e| LinkError::Content(e.to_string()))?;
            sv.consumer = Some(cons);
            sv.unreleased_bytes = 0;
            sv.released_at = Instant::now();
            if let Err(e) = r {
                warn!(vpg = %sv.vpg.record.name, error = %e, "cannot release journal space");
            }
        }
        Ok(())
    }

    /// Sends one batch of the VPG whose turn it is (the core chooses, within its window).
    async fn send_next(&mut self, wr: &mut LinkWriter) -> Result<Sent, LinkError> {
        let pending = std::mem::take(&mut self.pending);
        self.act(pending, wr).await?;
        let cfg = &self.shipping.cfg;
        let ready: std::collections::BTreeSet<u64> = self
            .core
            .open()
            .into_iter()
            .filter(|(id, next)| {
                self.vpgs.get(id).is_some_and(|s| {
                    s.consumer.is_some() && !s.vpg.is_paused() && s.vpg.journal_stats().settled_seq > *next
                })
            })
            .map(|(id, _)| id)
            .collect();
        if ready.is_empty() {
            return Ok(Sent::Idle);
        }
        let Some((id, from)) = self
            .core
            .next_to_send(&ready, cfg.batch_bytes as u64, cfg.window_bytes as u64)
        else {
            return Ok(Sent::WindowFull);
        };
        let sv = self.vpgs.get_mut(&id).expect("chosen among the ready");
        let mut cons = sv.consumer.take().expect("ready");
        // Adaptive: after a batch that compression barely shrank, the next ones go as they
        // are, and every COMPRESS_PROBE_EVERY-th tries again.
        let level = if sv.uncompressed_left > 0 {
            sv.uncompressed_left -= 1;
            0
        } else {
            cfg.compression_level
        };
        let (batch_bytes, skip) = (cfg.batch_bytes, sv.skip_checkpoints_below);
        let (cons, built) = tokio::task::spawn_blocking(move || {
            let b = build_batch(&mut cons, from, batch_bytes, level, skip);
            (cons, b)
        })
        .await
        .map_err(|e| LinkError::Content(e.to_string()))?;
        sv.consumer = Some(cons);
        let Some(b) = built else { return Ok(Sent::Idle) };
        if level > 0 && b.body.len() * 10 > b.plain_bytes * 9 {
            sv.uncompressed_left = COMPRESS_PROBE_EVERY - 1;
        }
        for why in &b.skipped {
            sv.vpg.event(why.clone());
        }
        let header = BatchHeader {
            kind: FrameKind::Batch,
            flags: if b.compressed { FLAG_ZSTD } else { 0 },
            vpg: id,
            epoch: sv.vpg.epoch(),
            batch_seq: sv.batch_seq,
            first_seq: b.first_seq,
            record_count: (b.end_seq - b.first_seq) as u32,
        };
        wr.send_batch(&header, &b.body).await?;
        let wire = b.body.len() + 64;
        debug!(vpg = %sv.vpg.record.name, first = b.first_seq, end = b.end_seq, plain = b.plain_bytes, wire, "batch sent");
        sv.batch_seq += 1;
        sv.vpg.ship_update(|s| s.sent_bytes += wire as u64);
        let now = self.now();
        self.core.on(
            now,
            Input::Sent {
                vpg: id,
                first_seq: b.first_seq,
                end_seq: b.end_seq,
                wire_bytes: wire as u64,
                plain_bytes: b.plain_bytes as u64,
            },
        );
        Ok(Sent::Batch)
    }
}

/// Compares one answer's regions with the local volume; marks those that differ (all of
/// them when the replica could not answer, or the volume is offline).
fn compare_regions(
    vpg: &Vpg,
    volume: u32,
    file: Option<Arc<std::fs::File>>,
    size: u64,
    offset: u64,
    sums: &[[u8; 16]],
    known: Option<Vec<(u64, u64)>>,
) {
    let region = u64::from(protected::DELTA_REGION);
    let mut buf = vec![0u8; protected::DELTA_REGION as usize];
    let (mut compared, mut differing) = (0u64, 0u64);
    for i in 0..u64::from(protected::DELTA_REGIONS_PER_REQUEST) {
        let off = offset + i * region;
        if off >= size {
            break;
        }
        let n = (size - off).min(region);
        let same = match (sums.get(i as usize), &file) {
            // Unchanged there since the failover: the same unless this site changed it
            // (nothing read). Only answered so when this site knows what it changed.
            (Some(theirs), _) if *theirs == ferry_proto::message::UNCHANGED_SUM => {
                known.as_ref().is_some_and(|k| !crate::ranges::overlaps(k, off, n))
            }
            (Some(theirs), Some(f)) => crate::io::read_once(f, &mut buf[..n as usize], off)
                .is_ok_and(|()| ferry_proto::message::region_sum(&buf[..n as usize]) == *theirs),
            _ => false,
        };
        if !same {
            vpg.mark_differing(volume, off, n);
            differing += n;
        }
        compared += n;
    }
    let mut p = vpg.delta_progress.lock().unwrap_or_else(|e| e.into_inner());
    p.compared_bytes += compared;
    p.differing_bytes += differing;
}
