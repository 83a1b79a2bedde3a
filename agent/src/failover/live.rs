//! Live failover: the VPG brought up at this (the recovery) site for real, from a
//! checkpoint of its replica.
//!
//! 1. The protected site, if connected, applies the shutdown policy (graceful: writes in
//!    flight settle, a final checkpoint is taken and shipped; force: at once; none: it
//!    goes on writing) and is fenced at the new epoch: its reads go on, its writes get
//!    EPERM. One that cannot be reached is fenced when it reconnects (it opens the VPG at
//!    an older epoch and is answered with the fence).
//! 2. The epoch is raised here, and each volume is served under its production name over a
//!    durable copy-on-write overlay on the checkpoint, member by member in boot order, with
//!    the plan's scripts.
//! 3. It needs commit: `commit` makes the overlays plain volumes of this agent while they
//!    are served ([`super::commit`]); `rollback` closes them, deletes the overlays and
//!    hands the VPG back (the protected site takes the epoch, writes again, and its stream
//!    goes on where it stopped). A commit policy acts by itself at its time.
//!
//! The operation's state is `replicas/NAME/live-failover.json`, so a restart finds it again
//! (overlays reopened from their scratch files, timer re-armed, a commit started again).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{Failover, Step, plan, step};
use crate::catalog::View;
use crate::catalog::overlay::{Budget, Overlay};
use crate::catalog::switch::Switch;
use crate::checkpoint::CheckpointInfo;
use crate::clock::now_ms;
use crate::error::AgentError;
use crate::recover::replica::{Replica, ToPeer};
use crate::recover::state::Input as ReplicaInput;

/// The commit policy's time when none is given.
pub const COMMIT_AFTER_DEFAULT_S: u64 = 3600;
/// An event this long before a commit policy acts.
pub const WARN_BEFORE_MS: u64 = 600_000;
/// How long the protected site has to answer a fence.
pub const FENCE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long what the protected site still had to send may take to arrive.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

pub use super::live_state::*;

/// A live failover this agent runs.
pub(super) struct Live {
    pub(super) shown: Mutex<LiveFailover>,
    pub(super) replica: Arc<Replica>,
    /// (volume, its export) in boot order.
    pub(super) switches: Vec<(String, Arc<Switch>)>,
    pub(super) timer: CancellationToken,
    /// Reverse protection to start once the commit is done.
    pub(super) reverse_after: Mutex<Option<super::ReverseRequest>>,
    /// Once committed: what this site changed since the failover's checkpoint, by volume
    /// (the overlays' writes and the protected site's records after the checkpoint), the
    /// switches recording writes since; kept in memory (a restart forgets it: reverse
    /// protection then compares every region).
    pub(super) changed: Mutex<Option<(crate::ranges::ByName, u64)>>,
}

impl Live {
    pub(super) fn shown(&self) -> LiveFailover {
        let mut l = self.shown.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if l.phase == LivePhase::NeedsCommit {
            l.written_bytes = self
                .switches
                .iter()
                .filter_map(|(_, s)| s.overlay())
                .map(|o| o.scratch_bytes())
                .sum();
        }
        l.split_brain = self.replica.split_brain();
        l
    }

    pub(super) fn update<R>(&self, f: impl FnOnce(&mut LiveFailover) -> R) -> R {
        f(&mut self.shown.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Writes the state down (the next start finds it).
    pub(super) fn save(&self) -> Result<(), AgentError> {
        save(&self.replica, &self.shown())
    }

    pub(super) fn event(&self, m: String) {
        tracing::info!(vpg = %self.replica.spec().name, "{m}");
        self.replica.push_event(m);
    }
}

fn state_path(r: &Replica) -> std::path::PathBuf {
    r.dir.join("live-failover.json")
}

pub(super) fn save(r: &Replica, l: &LiveFailover) -> Result<(), AgentError> {
    crate::meta::store(&r.dir, &state_path(r), crate::meta::LIVE_FAILOVER, l)
}

/// The scratch folder of a live failover's overlays.
pub(super) fn overlay_dir(r: &Replica) -> std::path::PathBuf {
    r.live_overlay_dir()
}

fn budget(r: &Arc<Replica>) -> Arc<Budget> {
    let r = r.clone();
    // Bounded by the datastore's free space (ENOSPC from the file system), not by a quota.
    Budget::new(
        u64::MAX / 4,
        Box::new(move |m| r.push_event(format!("live failover: {m}"))),
    )
}

fn overlay_info(vpg: &str, name: &str, cp: &CheckpointInfo, size: u64) -> ferry_nbd::ExportInfo {
    let mut info = ferry_nbd::ExportInfo::new(size);
    info.can_fast_zero = false;
    info.description = format!("LIVE FAILOVER of VPG {vpg}, volume {name}, from checkpoint {}", cp.seq);
    info
}

/// Runs file work (unlinking gigabytes of scratch, fsyncs) off the reactor, whose threads
/// serve the clients' I/O.
pub(super) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(t) => t,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

fn in_words(ms: u64) -> String {
    let s = ms / 1000;
    if s >= 120 {
        format!("{} min", s / 60)
    } else {
        format!("{s} s")
    }
}

impl Failover {
    /// The live failovers this agent runs or ran (committed ones stay shown).
    pub fn lives(&self) -> Vec<LiveFailover> {
        self.lives
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            // (A failed-over replica deleted since: the VPG failed back and runs there.)
            .filter(|l| !l.replica.is_removed())
            .map(|l| l.shown())
            .collect()
    }

    pub(super) fn live_of(&self, vpg: &str) -> Option<Arc<Live>> {
        self.lives.lock().unwrap_or_else(|e| e.into_inner()).get(vpg).cloned()
    }

    /// Refuses an operation on `vpg` while a live failover of it needs commit, or after
    /// one was committed here.
    pub(super) fn check_no_live(&self, vpg: &str) -> Result<(), AgentError> {
        match self.live_of(vpg).map(|l| l.shown()) {
            Some(l) if matches!(l.phase, LivePhase::NeedsCommit | LivePhase::Committing) => {
                Err(AgentError::Conflict(format!(
                    "a live failover of {vpg:?} runs here ({}); commit or roll it back first (`ferry failover commit|rollback {vpg}`)",
                    phase_words(l.phase)
                )))
            }
            Some(l) if l.phase == LivePhase::Committed => Err(AgentError::Conflict(format!(
                "VPG {vpg:?} was failed over to this site and committed (epoch {}): its volumes are this agent's now",
                l.epoch
            ))),
            _ => Ok(()),
        }
    }

    /// Starts a live failover of `vpg` (see the module's notes). Refused, with nothing
    /// changed, for an unknown VPG or checkpoint, one still initializing, a test or
    /// another failover of it, a production name taken here, or a script missing here.
    /// Waits until the live failovers of the last run are found again (a start).
    pub(super) async fn wait_resumed(&self) {
        let mut rx = self.resumed.subscribe();
        let _ = rx.wait_for(|&r| r).await;
    }

    pub async fn start_live(self: &Arc<Self>, vpg: &str, req: &LiveRequest) -> Result<LiveFailover, AgentError> {
        self.wait_resumed().await;
        let t0 = Instant::now();
        let _op = self.live_op.lock().await;
        if self.tests.lock().unwrap_or_else(|e| e.into_inner()).contains_key(vpg) {
            return Err(AgentError::Conflict(format!(
                "a failover test of {vpg:?} runs; stop it first (`ferry failover stop {vpg} --result pass|fail`)"
            )));
        }
        self.check_no_live(vpg)?;
        let (r, asked) = self.exports.checkpoint_of(vpg, &req.checkpoint)?;
        let spec = r.spec();
        plan::check_scripts(&spec.plan)?;
        for v in &spec.volumes {
            if self.exports.name_taken(&v.name) {
                return Err(AgentError::Refused(format!(
                    "this agent already serves a volume named {:?}; a live failover serves the VPG's volumes under their production names: rename or delete that volume first",
                    v.name
                )));
            }
        }
        r.try_change(ReplicaInput::LiveStarted)
            .map_err(|why| AgentError::Conflict(format!("replica {vpg:?}: {why}")))?;
        let mut steps = Vec::new();
        let mut warnings = Vec::new();
        // 1. The epoch, then the protected site.
        let epoch = match r.raise_epoch() {
            Ok(e) => e,
            Err(e) => {
                r.change(ReplicaInput::LiveRolledBack);
                return Err(e);
            }
        };
        steps.push(step("epoch", true, format!("raised to {epoch}: the VPG runs here now")));
        let protected_site = self
            .fence_protected(&r, vpg, epoch, req.shutdown, &mut steps, &mut warnings)
            .await;
        crate::failpoint::hit("live:fenced");
        // 2. The checkpoint: "latest" is taken after the protected site's final one.
        let latest = matches!(req.checkpoint.as_str(), "" | "latest");
        let cp = if latest {
            self.exports.checkpoint_of(vpg, "latest").map(|x| x.1).unwrap_or(asked)
        } else {
            asked
        };
        let up = self.serve_live(&r, vpg, &cp, req.moving, &mut steps).await;
        let switches = match up {
            Ok(s) => s,
            Err(why) => {
                // Nothing stays served; the protected site is handed the VPG back.
                let handed = r.hand_back();
                self.exports.replicas().nudge();
                r.change(ReplicaInput::LiveRolledBack);
                steps.push(step(
                    "stopped",
                    false,
                    format!(
                        "{why}; the protected site {}",
                        if handed.is_ok() {
                            "is told to take writes again"
                        } else {
                            "could not be handed the VPG back"
                        }
                    ),
                ));
                let l = LiveFailover {
                    vpg: vpg.into(),
                    epoch,
                    checkpoint: cp,
                    shutdown: req.shutdown,
                    commit_policy: req.commit_policy,
                    commit_at_unix_ms: None,
                    started_unix_ms: now_ms(),
                    ready_after_ms: 0.0,
                    phase: LivePhase::RolledBack,
                    exports: vec![],
                    protected_site,
                    warnings,
                    steps,
                    commit: None,
                    ended_unix_ms: Some(now_ms()),
                    written_bytes: 0,
                    split_brain: None,
                    moving: req.moving,
                    reverse_after: None,
                };
                let _ = save(&r, &l);
                r.push_event(format!("live failover stopped: {why}"));
                return Err(AgentError::Refused(format!(
                    "{why}. Nothing stays served, and the protected site is handed the VPG back"
                )));
            }
        };
        let ready_after_ms = ms_since(t0);
        let commit_at_unix_ms = match req.commit_policy {
            CommitPolicy::None => None,
            _ => Some(now_ms() + req.commit_after_s.unwrap_or(COMMIT_AFTER_DEFAULT_S) * 1000),
        };
        if req.shutdown == ShutdownPolicy::None {
            warnings.push(
                "shutdown none: production goes on writing at the protected site; those writes are not part of this failover"
                    .into(),
            );
        }
        let shown = LiveFailover {
            vpg: vpg.into(),
            epoch,
            checkpoint: cp.clone(),
            shutdown: req.shutdown,
            commit_policy: req.commit_policy,
            commit_at_unix_ms,
            started_unix_ms: now_ms(),
            ready_after_ms,
            phase: LivePhase::NeedsCommit,
            exports: switches.iter().map(|(v, _)| (v.clone(), v.clone())).collect(),
            protected_site,
            warnings,
            steps,
            commit: None,
            ended_unix_ms: None,
            written_bytes: 0,
            split_brain: None,
            moving: req.moving,
            reverse_after: req.reverse_after.clone(),
        };
        let live = Arc::new(Live {
            shown: Mutex::new(shown),
            replica: r.clone(),
            switches,
            timer: CancellationToken::new(),
            reverse_after: Mutex::new(None),
            changed: Mutex::new(None),
        });
        let l2 = live.clone();
        blocking(move || l2.save()).await?;
        crate::failpoint::hit("live:served");
        live.event(format!(
            "LIVE FAILOVER at checkpoint {} (epoch {epoch}): {} volume(s) served under their production names in {ready_after_ms:.0} ms; it needs commit ({})",
            cp.seq,
            live.switches.len(),
            match commit_at_unix_ms {
                Some(at) => format!("{:?} at {}", req.commit_policy, crate::size::utc(at)),
                None => "`ferry failover commit` or `rollback`".into(),
            }
        ));
        self.lives
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(vpg.into(), live.clone());
        self.arm_timer(vpg, &live);
        Ok(live.shown())
    }

    /// Fences the protected site at `epoch` with `shutdown` and waits (bounded) for what
    /// it still had to send; what became of it.
    async fn fence_protected(
        &self,
        r: &Arc<Replica>,
        vpg: &str,
        epoch: u64,
        shutdown: ShutdownPolicy,
        steps: &mut Vec<Step>,
        warnings: &mut Vec<String>,
    ) -> String {
        if r.life().sessions == 0 {
            let m = format!(
                "not connected: it is fenced when it reconnects (it learns epoch {epoch} before it takes a write)"
            );
            steps.push(step("protected site", false, m.clone()));
            warnings.push(format!(
                "the protected site is not connected (a disaster?): what it wrote after the last checkpoint that arrived is not here; {m}"
            ));
            return m;
        }
        let mut answers = r.peer_fenced();
        r.tell_peer(ToPeer::Fence {
            epoch,
            shutdown: shutdown.wire(),
            reason: format!(
                "VPG {vpg:?} runs at its recovery site since a live failover (epoch {epoch}): use it there"
            ),
        });
        self.exports.replicas().nudge();
        // The answer, unless the time runs out or the protected site's session ends first
        // (it stopped: it learns the epoch when it comes back).
        let gone = async {
            while r.life().sessions > 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        let answered = tokio::select! {
            a = tokio::time::timeout(FENCE_TIMEOUT, answers.wait_for(|a| a.is_some_and(|(e, _)| e == epoch))) => {
                a.ok().and_then(|r| r.ok().map(|a| a.expect("waited for Some").1))
            }
            _ = gone => None,
        };
        let Some(final_seq) = answered else {
            let m = if r.life().sessions == 0 {
                "went away before it answered the fence: it is fenced when it reconnects".to_string()
            } else {
                format!(
                    "did not answer the fence in {} s: it is fenced when it reconnects",
                    FENCE_TIMEOUT.as_secs()
                )
            };
            steps.push(step("protected site", false, m.clone()));
            warnings.push(format!("the protected site {m}"));
            return m;
        };
        let what = match shutdown {
            ShutdownPolicy::None => "not fenced (shutdown none)".to_string(),
            ShutdownPolicy::Graceful => format!(
                "shut down gracefully and fenced; its final checkpoint is seq {}",
                final_seq.saturating_sub(1)
            ),
            ShutdownPolicy::Force => format!(
                "fenced at once (shutdown force); its final checkpoint is seq {}",
                final_seq.saturating_sub(1)
            ),
        };
        steps.push(step("protected site", true, what.clone()));
        // What it still had to send arrives (bounded).
        let t = Instant::now();
        while r.durable_seq() < final_seq && t.elapsed() < DRAIN_TIMEOUT {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let durable = r.durable_seq();
        if durable >= final_seq {
            steps.push(step(
                "drained",
                true,
                format!("history holds its stream to seq {final_seq} ({:.0} ms)", ms_since(t)),
            ));
        } else {
            let m = format!(
                "history holds its stream only to seq {durable} of {final_seq} after {} s: going on from what arrived",
                DRAIN_TIMEOUT.as_secs()
            );
            steps.push(step("drained", false, m.clone()));
            warnings.push(m);
        }
        what
    }

    /// Serves each volume of `r` at `cp` under its production name, over a durable
    /// overlay, member by member with the plan's scripts. The switches, or why not (then
    /// nothing is served).
    async fn serve_live(
        self: &Arc<Self>,
        r: &Arc<Replica>,
        vpg: &str,
        cp: &CheckpointInfo,
        moving: bool,
        steps: &mut Vec<Step>,
    ) -> Result<Vec<(String, Arc<Switch>)>, String> {
        let views = self.exports.views_at(r, cp).map_err(|e| e.to_string())?;
        let dir = overlay_dir(r);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| format!("cannot delete old overlays {}: {e}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let budget = budget(r);
        let mut switches = Vec::new();
        for (name, view) in views {
            let size = ferry_nbd::Export::info(&*view).size_bytes;
            let path = dir.join(format!("{name}.scratch"));
            match Overlay::create(
                view,
                path.clone(),
                overlay_info(vpg, &name, cp, size),
                self.exports.pool().clone(),
                budget.clone(),
            ) {
                Ok(o) => switches.push((name, Arc::new(Switch::new(Arc::new(o.durable()))))),
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(format!("cannot create overlay {}: {e}", path.display()));
                }
            }
        }
        steps.push(step(
            "overlays",
            true,
            format!("{} volume(s) over checkpoint {}", switches.len(), cp.seq),
        ));
        let spec = r.spec();
        let all: Vec<String> = spec.volumes.iter().map(|v| v.name.clone()).collect();
        let members = plan::members(&spec.plan, &all, &all);
        let (me, sw, vpg2, cp2, dir2) = (self.clone(), switches.clone(), vpg.to_string(), cp.clone(), dir.clone());
        let (brought, more) = tokio::task::spawn_blocking(move || {
            let mut more = Vec::new();
            let bring = plan::BringUp {
                vpg: &vpg2,
                operation: if moving { "move" } else { "live" },
                checkpoint: &cp2,
                plan: &spec.plan,
                log_dir: dir2,
                uri: &*me.export_uri,
            };
            let r = bring.run(
                &members,
                |m| {
                    sw.iter()
                        .filter(|(v, _)| m.volumes.contains(v))
                        .map(|(v, s)| {
                            me.exports.add_live(v.clone(), s.clone());
                            (v.clone(), v.clone())
                        })
                        .collect()
                },
                &mut more,
            );
            (r, more)
        })
        .await
        .map_err(|e| e.to_string())?;
        steps.extend(more);
        if let Err(why) = brought {
            self.take_down(&switches, dir).await;
            return Err(why);
        }
        Ok(switches)
    }

    /// Stops serving a live failover's volumes and deletes their overlays and `dir` (off
    /// the reactor: unlinking scratch files can take long). Clients get ESHUTDOWN.
    async fn take_down(&self, switches: &[(String, Arc<Switch>)], dir: std::path::PathBuf) {
        let overlays: Vec<_> = switches
            .iter()
            .filter_map(|(v, s)| {
                self.exports.remove_live(v);
                s.overlay()
            })
            .collect();
        blocking(move || {
            for o in overlays {
                let _ = o.close();
            }
            let _ = std::fs::remove_dir_all(&dir);
        })
        .await;
    }

    /// The commit policy's timer: an event 10 minutes before, then the action.
    pub(super) fn arm_timer(self: &Arc<Self>, vpg: &str, live: &Arc<Live>) {
        let l = live.shown();
        let (Some(at), policy) = (l.commit_at_unix_ms, l.commit_policy) else {
            return;
        };
        let what = if policy == CommitPolicy::AutoCommit {
            "commit"
        } else {
            "rollback"
        };
        live.event(format!(
            "commit timer started: automatic {what} at {} (in {})",
            crate::size::utc(at),
            in_words(at.saturating_sub(now_ms()))
        ));
        let (me, vpg, live) = (self.clone(), vpg.to_string(), live.clone());
        tokio::spawn(async move {
            let until = |at: u64| Duration::from_millis(at.saturating_sub(now_ms()));
            let warn_at = at.saturating_sub(WARN_BEFORE_MS);
            if warn_at > now_ms() {
                tokio::select! {
                    _ = live.timer.cancelled() => return,
                    _ = tokio::time::sleep(until(warn_at)) => {}
                }
                live.event(format!(
                    "automatic {what} in 10 minutes, at {} (`ferry failover commit|rollback {vpg}` decides now)",
                    crate::size::utc(at)
                ));
            }
            tokio::select! {
                _ = live.timer.cancelled() => return,
                _ = tokio::time::sleep(until(at)) => {}
            }
            live.event(format!("the commit timer ran out: automatic {what}"));
            let r = if policy == CommitPolicy::AutoCommit {
                me.commit(&vpg).await.map(|_| ())
            } else {
                me.rollback(&vpg).await.map(|_| ())
            };
            if let Err(e) = r {
                live.event(format!("automatic {what} failed: {e}"));
            }
        });
    }

    /// Rolls back the live failover of `vpg`: its exports close (clients get ESHUTDOWN),
    /// its overlays are deleted, and the protected site is told to take the epoch and
    /// write again; its stream goes on where it stopped.
    pub async fn rollback(self: &Arc<Self>, vpg: &str) -> Result<LiveFailover, AgentError> {
        self.wait_resumed().await;
        let _op = self.live_op.lock().await;
        let live = self
            .live_of(vpg)
            .filter(|l| l.shown().phase == LivePhase::NeedsCommit)
            .ok_or_else(|| nothing_pending(vpg, "roll back"))?;
        live.timer.cancel();
        self.take_down(&live.switches, overlay_dir(&live.replica)).await;
        let r = live.replica.clone();
        let epoch = blocking(move || r.hand_back()).await?;
        self.exports.replicas().nudge();
        live.replica.change(ReplicaInput::LiveRolledBack);
        live.update(|l| {
            l.phase = LivePhase::RolledBack;
            l.ended_unix_ms = Some(now_ms());
            l.steps.push(step(
                "rolled back",
                true,
                format!("exports closed, overlays deleted; the protected site takes epoch {epoch} and writes again"),
            ));
        });
        let l2 = live.clone();
        blocking(move || l2.save()).await?;
        live.event(format!(
            "live failover rolled back: the VPG runs at its protected site again (epoch {epoch}), and replication resumes where it stopped"
        ));
        self.lives.lock().unwrap_or_else(|e| e.into_inner()).remove(vpg);
        Ok(live.shown())
    }
}

pub(super) fn phase_words(p: LivePhase) -> &'static str {
    match p {
        LivePhase::NeedsCommit => "needs commit",
        LivePhase::Committing => "committing",
        LivePhase::Committed => "committed",
        LivePhase::RolledBack => "rolled back",
    }
}

pub(super) fn nothing_pending(vpg: &str, what: &str) -> AgentError {
    AgentError::Refused(format!(
        "nothing to {what}: no live failover of {vpg:?} needs commit here (`ferry failover live {vpg}` starts one)"
    ))
}

/// The last live failover recorded for `r`, if any.
pub(super) fn load(r: &Replica) -> Result<Option<LiveFailover>, AgentError> {
    crate::meta::fetch_noting(&state_path(r), crate::meta::LIVE_FAILOVER)
}

/// A durable overlay found again after a restart, over a fresh view of `cp`.
pub(super) fn reopen_switches(
    f: &Failover,
    r: &Arc<Replica>,
    l: &LiveFailover,
) -> Result<Vec<(String, Arc<Switch>)>, AgentError> {
    let views: Vec<(String, Arc<View>)> = f.exports.views_at(r, &l.checkpoint)?;
    let budget = budget(r);
    let dir = overlay_dir(r);
    let mut out = Vec::new();
    for (name, view) in views {
        let size = ferry_nbd::Export::info(&*view).size_bytes;
        let path = dir.join(format!("{name}.scratch"));
        if l.phase == LivePhase::Committing && !path.exists() && f.exports.volumes().get(&name).is_some() {
            // Committed before the restart: the volume serves itself.
            continue;
        }
        let o = Overlay::reopen(
            view,
            path.clone(),
            overlay_info(&l.vpg, &name, &l.checkpoint, size),
            f.exports.pool().clone(),
            budget.clone(),
        )
        .map_err(|e| AgentError::io("cannot open the live failover's overlay", &path, e))?;
        out.push((name, Arc::new(Switch::new(Arc::new(o)))));
    }
    Ok(out)
}
