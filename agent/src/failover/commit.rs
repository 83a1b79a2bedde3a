//! Committing a live failover: each overlay and the checkpoint view under it become a
//! plain volume of this agent, copied in the background while the volume is served.
//!
//! For each volume: a new volume of this agent is made (hidden behind the live export of
//! the same name); a first pass copies every block (zero runs are left sparse), later
//! passes copy the blocks written meanwhile, until few are left; the last pass runs under
//! the overlay's write lock (writes wait, reads go on: the longest pause a client sees),
//! and in it the export moves to the volume. The overlay is then deleted and the
//! checkpoint unpinned. The protected site is fenced for good (also after a shutdown-none
//! failover).
//!
//! A restart in the middle starts the copy again; the volume's file is emptied first.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::live::{CommitProgress, Live, LiveFailover, LivePhase, blocking, nothing_pending, overlay_dir};
use super::{Failover, step};
use crate::catalog::View;
use crate::catalog::overlay::{BLOCK, Overlay};
use crate::catalog::switch::Switch;
use crate::clock::now_ms;
use crate::error::AgentError;
use crate::recover::replica::ToPeer;
use crate::recover::state::Input as ReplicaInput;

/// Bytes read and written at a time by the copy.
const CHUNK: u64 = 1 << 20;
/// Later passes go on while more than this many blocks were written meanwhile.
const FEW_BLOCKS: usize = 256;
/// Passes before the last one at most (a client writing faster than the copy gets its
/// last pass under the lock anyway).
const PASSES_MAX: u32 = 8;

/// The copy's writeback goes in windows of this many bytes, at most [`WRITEBACK_AHEAD`]
/// of them under way: the kernel's dirty-page throttling would otherwise stall every
/// writer on the file system (the clients' included) once a copy of gigabytes had piled
/// up dirty pages.
const WRITEBACK_WINDOW: u64 = 8 << 20;
const WRITEBACK_AHEAD: usize = 16;

/// Starts the writeback of each window of the copy once it is written and waits for the
/// one [`WRITEBACK_AHEAD`] windows back: a copy holds few dirty pages at any time.
struct Writeback<'a> {
    file: &'a File,
    /// The window being written: (start, end).
    open: Option<(u64, u64)>,
    started: std::collections::VecDeque<(u64, u64)>,
}

impl<'a> Writeback<'a> {
    fn new(file: &'a File) -> Writeback<'a> {
        Writeback {
            file,
            open: None,
            started: std::collections::VecDeque::new(),
        }
    }

    fn range(&self, (start, end): (u64, u64), flags: libc::c_uint) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: a plain system call on a descriptor this struct borrows.
        let r = unsafe { libc::sync_file_range(self.file.as_raw_fd(), start as i64, (end - start) as i64, flags) };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    fn written(&mut self, off: u64, len: u64) -> std::io::Result<()> {
        let (start, end) = match self.open {
            Some((s, e)) if off >= s && off <= e + WRITEBACK_WINDOW => (s.min(off), e.max(off + len)),
            Some(w) => {
                self.start(w)?;
                (off, off + len)
            }
            None => (off, off + len),
        };
        self.open = Some((start, end));
        if end - start >= WRITEBACK_WINDOW {
            self.open = None;
            self.start((start, end))?;
        }
        Ok(())
    }

    fn start(&mut self, w: (u64, u64)) -> std::io::Result<()> {
        self.range(w, libc::SYNC_FILE_RANGE_WRITE)?;
        self.started.push_back(w);
        if self.started.len() > WRITEBACK_AHEAD {
            let old = self.started.pop_front().expect("non-empty");
            self.range(
                old,
                libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER,
            )?;
        }
        Ok(())
    }
}

/// Copies `blocks` (sorted block numbers) from the overlay to `out`, runs at a time;
/// bytes copied.
fn copy_blocks(o: &Overlay<View>, out: &File, blocks: &[u64], buf: &mut [u8]) -> std::io::Result<u64> {
    let mut wb = Writeback::new(out);
    let mut i = 0;
    let mut bytes = 0;
    while i < blocks.len() {
        let first = blocks[i];
        let mut n = 1;
        while i + n < blocks.len() && blocks[i + n] == first + n as u64 && (n as u64 + 1) * BLOCK <= CHUNK {
            n += 1;
        }
        let len = (n as u64 * BLOCK).min(o.info_size().saturating_sub(first * BLOCK)) as usize;
        o.read_at(first * BLOCK, &mut buf[..len])?;
        out.write_all_at(&buf[..len], first * BLOCK)?;
        wb.written(first * BLOCK, len as u64)?;
        bytes += len as u64;
        i += n;
    }
    Ok(bytes)
}

/// Threads of the first pass (reads of the view and writes overlap, as in
/// `qemu-img convert`'s parallel requests).
const COPIERS: usize = 2;

/// The first pass: every block, zero chunks left as holes (the file was emptied).
fn copy_all(o: &Overlay<View>, out: &File, progress: &Mutex<CommitProgress>) -> std::io::Result<()> {
    let size = o.info_size();
    let next = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..COPIERS)
            .map(|_| {
                s.spawn(|| -> std::io::Result<()> {
                    let mut buf = vec![0u8; CHUNK as usize];
                    let mut wb = Writeback::new(out);
                    loop {
                        let at = next.fetch_add(CHUNK, std::sync::atomic::Ordering::Relaxed);
                        if at >= size {
                            return Ok(());
                        }
                        let n = (size - at).min(CHUNK) as usize;
                        o.read_at(at, &mut buf[..n])?;
                        if buf[..n].iter().any(|&b| b != 0) {
                            out.write_all_at(&buf[..n], at)?;
                            wb.written(at, n as u64)?;
                        }
                        progress.lock().unwrap_or_else(|e| e.into_inner()).copied_bytes += n as u64;
                    }
                })
            })
            .collect();
        // (The scope joins every worker, whichever failed first.)
        workers
            .into_iter()
            .try_for_each(|w| w.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
    })
}

impl Overlay<View> {
    fn info_size(&self) -> u64 {
        ferry_nbd::Export::info(self).size_bytes
    }
}

impl Failover {
    /// Commits the live failover of `vpg`: its volumes become this agent's, copied in the
    /// background while served (`ferry failover status` shows the progress). Refused when
    /// nothing needs commit.
    pub async fn commit(self: &Arc<Self>, vpg: &str) -> Result<LiveFailover, AgentError> {
        self.commit_then(vpg, None).await
    }

    /// [`Failover::commit`], then (with `reverse`) reverse protection once it is done.
    pub async fn commit_then(
        self: &Arc<Self>,
        vpg: &str,
        reverse: Option<super::ReverseRequest>,
    ) -> Result<LiveFailover, AgentError> {
        self.wait_resumed().await;
        let _op = self.live_op.lock().await;
        let live = self
            .live_of(vpg)
            .filter(|l| l.shown().phase == LivePhase::NeedsCommit)
            .ok_or_else(|| nothing_pending(vpg, "commit"))?;
        *live.reverse_after.lock().unwrap_or_else(|e| e.into_inner()) = reverse.clone();
        live.timer.cancel();
        live.update(|l| {
            l.reverse_after = reverse;
            l.phase = LivePhase::Committing;
            l.commit = Some(CommitProgress {
                started_unix_ms: now_ms(),
                ..Default::default()
            });
        });
        let l2 = live.clone();
        blocking(move || l2.save()).await?;
        live.replica.push_event(
            "commit started: the volumes are copied into volumes of this agent while they are served".into(),
        );
        let me = self.clone();
        tokio::spawn(async move { me.materialize(live).await });
        Ok(self.live_of(vpg).map(|l| l.shown()).expect("present"))
    }

    /// The commit's work (see the module's notes); the outcome goes into the failover.
    /// What the protected site wrote after the failover's checkpoint and this site
    /// received (never part of the recovery point): kept for salvage before the commit
    /// makes the checkpoint production and a reverse protection overwrites them there.
    async fn keep_unrecovered(&self, live: &Arc<Live>) {
        let shown = live.shown();
        let r = live.replica.clone();
        let regions = match r.regions_since(shown.checkpoint.seq + 1) {
            Ok(regions) => regions,
            Err(e) => {
                r.push_event(format!(
                    "the protected site's writes past the checkpoint could not be listed for salvage ({e})"
                ));
                return;
            }
        };
        if regions.is_empty() {
            return;
        }
        let below = r.durable_seq();
        let sources: Vec<crate::diverged::Source> = r
            .volumes()
            .into_iter()
            .filter_map(|(id, name, size)| {
                let regions = regions.get(&id)?.clone();
                let r = r.clone();
                Some(crate::diverged::Source {
                    name,
                    size_bytes: size,
                    regions,
                    read: Box::new(move |at, buf| r.read_at(id, at, buf, below)),
                })
            })
            .collect();
        let store = self.exports.diverged().clone();
        let (vpg, epoch, seq) = (shown.vpg.clone(), shown.epoch, shown.checkpoint.seq);
        let kept = blocking(move || {
            store.keep(
                &vpg,
                epoch,
                format!(
                    "writes the protected site made after checkpoint {seq} (the failover's point), received here but never part of the recovery point; kept when the failover was committed"
                ),
                sources,
                crate::diverged::DIVERGED_BYTES_MAX_DEFAULT,
            )
        })
        .await;
        live.event(match kept {
            Ok(set) => format!(
                "{} written at the protected site after the failover's checkpoint kept for salvage (`ferry vpg diverged {}`)",
                crate::size::human(set.bytes),
                set.vpg
            ),
            Err(e) => format!("the protected site's writes after the failover's checkpoint were not kept: {e}"),
        });
    }

    /// Reverse protection asked for with the commit; once it is done (or refused for good)
    /// it is no longer asked for after a restart.
    async fn reverse_after_commit(self: &Arc<Self>, live: &Arc<Live>, vpg: &str, req: &super::ReverseRequest) {
        match self.reverse(vpg, req).await {
            Ok(_) => {
                live.update(|l| l.reverse_after = None);
                let l2 = live.clone();
                let _ = blocking(move || l2.save()).await;
            }
            Err(e) => live.replica.push_event(format!(
                "reverse protection after the commit failed: {e} (`ferry vpg reverse {vpg}` tries again)"
            )),
        }
    }

    pub(super) async fn materialize(self: Arc<Self>, live: Arc<Live>) {
        let t0 = Instant::now();
        let vpg = live.shown().vpg;
        let total: u64 = live
            .switches
            .iter()
            .filter_map(|(_, s)| s.overlay())
            .map(|o| o.info_size())
            .sum();
        let progress = Arc::new(Mutex::new(CommitProgress {
            total_bytes: total,
            started_unix_ms: now_ms(),
            ..Default::default()
        }));
        self.keep_unrecovered(&live).await;
        // What changes from now on through the switches is recorded (with the overlays'
        // writes, what this site changed since the failover).
        let overlays: Vec<(String, Arc<crate::catalog::overlay::Overlay<crate::catalog::View>>)> = live
            .switches
            .iter()
            .filter_map(|(n, s)| {
                s.start_recording();
                Some((n.clone(), s.overlay()?))
            })
            .collect();
        let result = self.copy_out(&live, &progress).await;
        let p = {
            let mut p = progress.lock().unwrap_or_else(|e| e.into_inner()).clone();
            p.done_unix_ms = Some(now_ms());
            p.rate_bytes_per_s = total as f64 / t0.elapsed().as_secs_f64().max(1e-6);
            p
        };
        match result {
            Ok(()) => {
                // The protected site's records past the checkpoint, as far as they arrived
                // (what arrives later is added at the reverse protection).
                let upto = live.replica.durable_seq();
                // Not known (an index that cannot be read): the reverse protection then
                // compares every region.
                match live.replica.regions_since(live.shown().checkpoint.seq + 1) {
                    Ok(since) => {
                        let ids: std::collections::BTreeMap<String, u32> =
                            live.replica.volumes().into_iter().map(|(id, n, _)| (n, id)).collect();
                        let changed = overlays
                            .iter()
                            .map(|(n, o)| {
                                let mut r = o.written_ranges();
                                r.extend(ids.get(n).and_then(|id| since.get(id)).cloned().unwrap_or_default());
                                (n.clone(), crate::ranges::merge(r))
                            })
                            .collect();
                        *live.changed.lock().unwrap_or_else(|e| e.into_inner()) = Some((changed, upto));
                    }
                    Err(e) => live.replica.push_event(format!(
                        "the regions written past the checkpoint could not be listed ({e}); the reverse protection compares every region"
                    )),
                }
                let dir = overlay_dir(&live.replica);
                blocking(move || std::fs::remove_dir_all(dir)).await.ok();
                live.replica.change(ReplicaInput::LiveCommitted);
                // The protected site is fenced for good (it was not, after shutdown none).
                let epoch = live.shown().epoch;
                live.replica.tell_peer(ToPeer::Fence {
                    epoch,
                    shutdown: ferry_proto::message::Shutdown::Force,
                    reason: format!("VPG {vpg:?} was failed over to its recovery site and committed (epoch {epoch})"),
                });
                self.exports.replicas().nudge();
                live.update(|l| {
                    l.phase = LivePhase::Committed;
                    l.ended_unix_ms = Some(now_ms());
                    l.steps.push(step(
                        "committed",
                        true,
                        format!(
                            "{} copied in {:.1} s ({:.0} MiB/s); the longest pause a client saw was {:.1} ms",
                            crate::size::human(total),
                            t0.elapsed().as_secs_f64(),
                            p.rate_bytes_per_s / (1 << 20) as f64,
                            p.longest_pause_ms
                        ),
                    ));
                    l.commit = Some(p.clone());
                });
                let l2 = live.clone();
                if let Err(e) = blocking(move || l2.save()).await {
                    tracing::error!(vpg, error = %e, "cannot record the commit");
                }
                live.replica.push_event(format!(
                    "live failover committed: the VPG's volumes are volumes of this agent now ({:.0} MiB/s, longest pause {:.1} ms)",
                    p.rate_bytes_per_s / (1 << 20) as f64,
                    p.longest_pause_ms
                ));
                crate::failpoint::hit("commit:committed");
                let after = live.reverse_after.lock().unwrap_or_else(|e| e.into_inner()).take();
                if let Some(req) = after {
                    self.reverse_after_commit(&live, &vpg, &req).await;
                }
            }
            Err(e) => {
                // Still served from the overlays: the commit can be asked for again.
                live.update(|l| {
                    l.phase = LivePhase::NeedsCommit;
                    l.steps.push(step("commit", false, e.to_string()));
                    l.commit = Some(p);
                });
                let l2 = live.clone();
                let _ = blocking(move || l2.save()).await;
                live.replica.push_event(format!(
                    "the commit failed ({e}); the volumes are still served from the failover's overlays: fix it and commit again"
                ));
            }
        }
    }

    async fn copy_out(&self, live: &Arc<Live>, progress: &Arc<Mutex<CommitProgress>>) -> Result<(), AgentError> {
        let spec = live.replica.spec();
        let datastore = (!spec.datastore.is_empty()).then_some(spec.datastore.as_str());
        for (name, switch) in &live.switches {
            let Some(o) = switch.overlay() else {
                continue; // moved before a restart
            };
            let size = o.info_size();
            let volumes = self.exports.volumes();
            let vol = match volumes.get(name) {
                // Made by a commit that a restart interrupted.
                Some(v) if v.record.size_bytes == size => v,
                Some(v) => {
                    return Err(AgentError::Refused(format!(
                        "volume {name:?} of this agent has {} bytes, not the {size} of the failed-over volume",
                        v.record.size_bytes
                    )));
                }
                None => {
                    volumes.create(name, Some(size), datastore, Some(false)).await?;
                    volumes.get(name).ok_or_else(|| AgentError::NoVolume(name.clone()))?
                }
            };
            let path = vol.record.path.clone();
            let out = Arc::new(
                File::options()
                    .write(true)
                    .open(&path)
                    .map_err(|e| AgentError::io("cannot open the new volume", &path, e))?,
            );
            // Empty: a fresh copy writes no zeroes.
            rustix::fs::fallocate(
                &*out,
                rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
                0,
                size,
            )
            .map_err(|e| AgentError::io("cannot empty the new volume", &path, e.into()))?;
            let (o2, out2, p2) = (o.clone(), out.clone(), progress.clone());
            let io = |e: std::io::Error| AgentError::io("commit copy", &path, e);
            tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                o2.take_dirty();
                copy_all(&o2, &out2, &p2)?;
                let mut buf = vec![0u8; CHUNK as usize];
                for _ in 0..PASSES_MAX {
                    let d = o2.take_dirty();
                    p2.lock().unwrap_or_else(|e| e.into_inner()).passes += 1;
                    let few = d.len() <= FEW_BLOCKS;
                    copy_blocks(&o2, &out2, &d, &mut buf)?;
                    if few {
                        break;
                    }
                }
                out2.sync_all()
            })
            .await
            .map_err(|e| AgentError::Refused(e.to_string()))?
            .map_err(io)?;
            // The last pass, under the write lock; the export moves to the volume in it.
            let (out3, sw, v) = (out.clone(), switch.clone(), vol.clone());
            let last = o
                .seal_after(move |o| -> std::io::Result<f64> {
                    let t = Instant::now();
                    let d = o.take_dirty();
                    let mut buf = vec![0u8; CHUNK as usize];
                    copy_blocks(o, &out3, &d, &mut buf)?;
                    out3.sync_all()?;
                    sw.move_to(v);
                    Ok(t.elapsed().as_secs_f64() * 1000.0)
                })
                .await
                .map_err(AgentError::Refused)?
                .map_err(io)?;
            {
                let mut p = progress.lock().unwrap_or_else(|e| e.into_inner());
                p.passes += 1;
                p.longest_pause_ms = p.longest_pause_ms.max(last);
            }
            self.exports.remove_live(name);
            let o2 = o.clone();
            blocking(move || o2.close()).await.ok();
            tracing::info!(vpg = %spec.name, volume = %name, pause_ms = last, "volume committed");
            live.update(|l| l.commit = Some(progress.lock().unwrap_or_else(|e| e.into_inner()).clone()));
        }
        Ok(())
    }

    /// After a start: finds the live failovers the last run left (needing commit, or in
    /// the middle of a commit) and serves them again; a commit goes on.
    pub async fn resume_live(self: Arc<Self>) {
        // The replicas load off the start-up path.
        while self.exports.replicas().check_loaded().is_err() {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        for r in self.exports.replicas().all() {
            let l = match super::live::load(&r) {
                Ok(Some(l)) => l,
                Ok(None) => {
                    // The epoch was raised (and the protected site maybe fenced), but the
                    // agent stopped before the failover served anything: undone.
                    if r.runs_here().is_some() {
                        let r2 = r.clone();
                        match blocking(move || r2.hand_back()).await {
                            Ok(epoch) => r.push_event(format!(
                                "a live failover stopped before it served anything (the agent stopped): undone; the protected site takes epoch {epoch} and writes again"
                            )),
                            Err(e) => tracing::error!(replica = %r.dir.display(), error = %e, "cannot undo an interrupted live failover"),
                        }
                        self.exports.replicas().nudge();
                    }
                    continue;
                }
                Err(e) => {
                    tracing::error!(replica = %r.dir.display(), error = %e, "cannot read the live failover's state");
                    continue;
                }
            };
            match l.phase {
                LivePhase::RolledBack => continue,
                LivePhase::Committed => {
                    r.change(ReplicaInput::LiveStarted);
                    r.change(ReplicaInput::LiveCommitted);
                    let (vpg, after) = (l.vpg.clone(), l.reverse_after.clone());
                    let live = self.keep(&r, l, vec![]);
                    // Committed, its reverse protection not made yet (a stop between the
                    // two): it is made now.
                    if let Some(req) = after
                        && self.vpgs.get(&vpg).is_err()
                    {
                        let me = self.clone();
                        tokio::spawn(async move { me.reverse_after_commit(&live, &vpg, &req).await });
                    }
                    continue;
                }
                LivePhase::NeedsCommit | LivePhase::Committing => {}
            }
            let switches = match super::live::reopen_switches(&self, &r, &l) {
                Ok(s) => s,
                Err(e) => {
                    let m = format!(
                        "the live failover of {:?} cannot be served again after the restart: {e}",
                        l.vpg
                    );
                    tracing::error!("{m}");
                    r.push_event(m);
                    continue;
                }
            };
            for (v, s) in &switches {
                self.exports.add_live(v.clone(), s.clone());
            }
            for (v, _) in &l.exports {
                self.exports.unreserve(v);
            }
            r.change(ReplicaInput::LiveStarted);
            let committing = l.phase == LivePhase::Committing;
            // A move that stopped before its commit goes on to it (a move commits at once
            // unless it was given a commit policy).
            let move_on = l.moving && l.phase == LivePhase::NeedsCommit && l.commit_policy == super::CommitPolicy::None;
            let after = l.reverse_after.clone();
            let live = self.keep(&r, l, switches);
            *live.reverse_after.lock().unwrap_or_else(|e| e.into_inner()) = after.clone();
            live.replica.push_event(format!(
                "live failover served again after the restart ({})",
                if committing {
                    "its commit starts again"
                } else {
                    "it needs commit"
                }
            ));
            if committing {
                tokio::spawn(self.clone().materialize(live));
            } else if move_on {
                let (me, vpg) = (self.clone(), live.shown().vpg);
                tokio::spawn(async move {
                    if let Err(e) = me.commit_then(&vpg, after).await {
                        tracing::error!(vpg, error = %e, "the interrupted move's commit did not start");
                    }
                });
            } else {
                let vpg = live.shown().vpg;
                self.arm_timer(&vpg, &live);
            }
        }
        // Whatever could not be served again is no longer held back.
        self.exports.unreserve_all();
        self.resumed.send_replace(true);
    }

    /// Before NBD serves anything at a start: the production names of the live failovers
    /// the last run left are held back (no client may write to a volume a commit had not
    /// finished) until [`Failover::resume_live`] serves them again.
    pub fn hold_names_on_start(&self) {
        for dir in self.exports.replicas().dirs_on_disk() {
            let path = dir.join("live-failover.json");
            if let Ok(Some(l)) = crate::meta::fetch_noting::<LiveFailover>(&path, crate::meta::LIVE_FAILOVER)
                && matches!(l.phase, LivePhase::NeedsCommit | LivePhase::Committing)
            {
                for (v, _) in &l.exports {
                    self.exports.reserve(v);
                }
            }
        }
    }

    fn keep(
        &self,
        r: &Arc<crate::recover::replica::Replica>,
        l: LiveFailover,
        switches: Vec<(String, Arc<Switch>)>,
    ) -> Arc<Live> {
        let vpg = l.vpg.clone();
        let live = Arc::new(Live {
            shown: Mutex::new(l),
            replica: r.clone(),
            switches,
            timer: tokio_util::sync::CancellationToken::new(),
            reverse_after: Mutex::new(None),
            changed: Mutex::new(None),
        });
        self.lives
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(vpg, live.clone());
        live
    }
}
