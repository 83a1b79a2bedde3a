//! A VPG's background work: the checkpoint ticker and the sync (journal, datastores and
//! dirty maps durable together), the SLA and initial-sync notes, the drain of dirty
//! regions into the journal, the journal's prefault thread, and the final sync at shutdown.

use super::*;

impl Vpg {
    /// One sync: every write begun before it, with its journal record and dirty bits, is
    /// durable after it.
    pub(super) async fn sync_once(self: &Arc<Self>) -> io::Result<()> {
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
    pub(super) async fn run_ticker(self: Arc<Self>) {
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
    pub(super) fn note_sla(&self) {
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

    /// The initial sync: once every block was read into the journal (the first drain is
    /// over), the state machine learns up to where; then each acknowledgement is a fact it
    /// takes (the sync ends when the recovery site holds that point).
    pub fn note_initial_sync(&self) {
        let l = self.lifecycle();
        if l.sync != SyncPhase::Initializing || self.record.protection.is_none() {
            return;
        }
        if l.initial_end_seq.is_none() {
            if self.cap.capture.mode() != Mode::Journaling {
                return;
            }
            let next_seq = self.journal_stats().next_seq;
            if let Err(why) = self.apply(Input::InitialRead { next_seq }) {
                warn!(vpg = %self.record.name, "{why}");
            }
        }
        let acked_seq = self.ship.lock().unwrap_or_else(|e| e.into_inner()).acked_seq;
        if let Err(why) = self.apply(Input::Acked { acked_seq }) {
            warn!(vpg = %self.record.name, "{why}");
        }
    }

    /// Reads dirty regions back into the journal whenever there are some and room.
    pub(super) async fn run_drain(self: Arc<Self>) {
        loop {
            if self.stop.is_cancelled() {
                return;
            }
            // Not while the recovery site has not confirmed the epoch at a start, nor once
            // fenced: what is drained would pass for writes this site took (a split brain)
            // where it may only be what an unclean stop marked to be safe.
            if self.confirming.load(std::sync::atomic::Ordering::Acquire) || self.fenced().is_some() {
                tokio::select! {
                    _ = self.stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
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
                let r = crate::io::read_once(&file, slot.payload_mut(), offset);
                (r, slot)
            })
            .await;
            match read {
                Ok((Ok(()), slot)) => {
                    self.cap.capture.drain_commit(slot);
                    self.cap.wake_shipper();
                }
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

    /// Last sync and a clean mark, at shutdown (nothing is in flight any more).
    pub(super) async fn close(self: &Arc<Self>) {
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

/// Keeps the journal's next pages mapped ahead of the writers ([`Journal::prefault`]) on a
/// thread of its own, off the request path, until the VPG stops. It polls: every
/// millisecond while writes move the head, backing off to every 50 ms when idle.
pub(super) fn spawn_prefaulter(vpg: &Vpg) {
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
