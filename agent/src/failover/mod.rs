//! Failover at the recovery site. A *failover test* brings up a checkpoint of a replica as
//! read-write exports over copy-on-write overlays (scratch files on the recovery
//! datastore, nothing copied), while replication goes on; its point is pinned, so aging
//! never passes it. Stopping it closes the exports, deletes the scratch and records a
//! report (checkpoint, times, result, note, steps). The replica, its history and the
//! protected site are never written.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::catalog::overlay::{Budget, Overlay};
use crate::catalog::{Exports, View};
use crate::checkpoint::CheckpointInfo;
use crate::clock::now_ms;
use crate::error::AgentError;
use crate::recover::replica::Replica;

pub mod commit;
pub mod live;
pub mod live_state;
pub mod plan;
pub mod resolve;
pub mod reverse;
#[cfg(test)]
mod sim;
pub mod verify;

pub use live::{CommitPolicy, LiveFailover, LivePhase, LiveRequest, ShutdownPolicy};
pub use reverse::{MoveRequest, ReverseRequest};

use verify::{Verify, VerifyState};

/// Scratch space of a test when none is given.
pub const SCRATCH_MAX_DEFAULT: u64 = 8 << 30;
/// Reports kept per VPG (the oldest go first).
pub const REPORTS_KEPT: usize = 100;

/// What `ferry failover test` asks for.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TestRequest {
    /// A sequence number, a tag, or "latest" (the default).
    #[serde(default)]
    pub checkpoint: String,
    /// The volumes to bring up (default: all of the VPG's).
    #[serde(default)]
    pub volumes: Vec<String>,
    /// Scratch space for the test's writes, in bytes (default [`SCRATCH_MAX_DEFAULT`]).
    #[serde(default)]
    pub scratch_max: Option<u64>,
    /// A command run once the exports are up (`sh -c`, with `FERRY_VPG`,
    /// `FERRY_OPERATION`, `FERRY_CHECKPOINT`, `FERRY_CHECKPOINT_TAG` and
    /// `FERRY_EXPORT_URIS`, "VOLUME=URI" separated by spaces): its exit code is the result.
    #[serde(default)]
    pub verify: Option<String>,
    /// End the test once the verification is done, with its result.
    #[serde(default)]
    pub stop_after: bool,
    /// The verification's time limit in seconds (default 300).
    #[serde(default)]
    pub verify_timeout_s: Option<u64>,
}

/// One step of an operation and how it went.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Step {
    pub what: String,
    pub ok: bool,
    pub detail: String,
    pub unix_ms: u64,
}

/// A test that runs.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TestRunning {
    pub vpg: String,
    pub checkpoint: CheckpointInfo,
    /// (volume, export name)
    pub exports: Vec<(String, String)>,
    pub started_unix_ms: u64,
    /// From the request to the exports answering.
    pub ready_after_ms: f64,
    pub scratch_max_bytes: u64,
    pub scratch_used_bytes: u64,
    pub steps: Vec<Step>,
    #[serde(default)]
    pub verify: Option<Verify>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Pass,
    Fail,
}

/// What `ferry failover stop` says.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StopRequest {
    pub result: Outcome,
    #[serde(default)]
    pub note: String,
}

/// A finished test, as `ferry failover report` lists it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TestReport {
    pub vpg: String,
    pub checkpoint: CheckpointInfo,
    pub started_unix_ms: u64,
    pub ready_after_ms: f64,
    pub stopped_unix_ms: u64,
    pub result: Outcome,
    pub note: String,
    pub volumes: Vec<String>,
    pub scratch_used_bytes: u64,
    pub steps: Vec<Step>,
    #[serde(default)]
    pub verify: Option<Verify>,
}

struct Running {
    /// Tells this test from a later one of the same VPG.
    id: u64,
    shown: TestRunning,
    replica: Arc<Replica>,
    overlays: Vec<(String, Arc<Overlay<View>>)>,
    budget: Arc<Budget>,
}

/// The failover operations of this agent.
pub struct Failover {
    exports: Arc<Exports>,
    /// This agent's VPGs: reverse protection makes one of a committed failover.
    vpgs: Arc<crate::protect::vpg::Vpgs>,
    /// Held while a test starts or stops (across its file work: they are rare, and two at
    /// once on the same VPG would share its scratch folder). Taken before `tests`.
    op: Mutex<()>,
    tests: Mutex<BTreeMap<String, Running>>,
    next_id: std::sync::atomic::AtomicU64,
    /// The NBD URI of an export of this agent, by name.
    export_uri: Box<dyn Fn(&str) -> String + Send + Sync>,
    /// Live failovers, by VPG (those committed here stay).
    lives: Mutex<BTreeMap<String, Arc<live::Live>>>,
    /// Held while a live failover starts, commits or rolls back.
    live_op: tokio::sync::Mutex<()>,
    /// The live failovers the last run left were found again ([`Failover::resume_live`]):
    /// until then, operations on live failovers wait.
    resumed: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for Failover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Failover").finish_non_exhaustive()
    }
}

fn scratch_dir(r: &Replica) -> PathBuf {
    r.dir.join("scratch")
}

fn reports_path(r: &Replica) -> PathBuf {
    r.dir.join("failover-tests.json")
}

/// The replica marked as tested while a test starts: a start that fails undoes the mark
/// (`.1` is set once the test runs).
struct TestMark(Arc<Replica>, bool);

impl Drop for TestMark {
    fn drop(&mut self) {
        if !self.1 {
            self.0.change(crate::recover::state::Input::TestStopped);
        }
    }
}

pub(crate) fn step(what: &str, ok: bool, detail: String) -> Step {
    Step {
        what: what.into(),
        ok,
        detail,
        unix_ms: now_ms(),
    }
}

impl Failover {
    pub fn new(
        exports: Arc<Exports>,
        vpgs: Arc<crate::protect::vpg::Vpgs>,
        export_uri: Box<dyn Fn(&str) -> String + Send + Sync>,
    ) -> Arc<Failover> {
        Arc::new(Failover {
            exports,
            vpgs,
            op: Mutex::new(()),
            tests: Mutex::new(BTreeMap::new()),
            next_id: std::sync::atomic::AtomicU64::new(1),
            export_uri,
            lives: Mutex::new(BTreeMap::new()),
            live_op: tokio::sync::Mutex::new(()),
            resumed: tokio::sync::watch::Sender::new(false),
        })
    }

    /// Starts a failover test of `vpg`: each chosen volume served read-write as
    /// `VPG@test.VOLUME` over an overlay on the checkpoint. Refused (nothing changed) for an
    /// unknown VPG, checkpoint or volume, or while another test of the VPG runs.
    pub fn start_test(self: &Arc<Self>, vpg: &str, req: &TestRequest) -> Result<TestRunning, AgentError> {
        let t0 = Instant::now();
        if req.stop_after && req.verify.is_none() {
            return Err(AgentError::Refused(
                "--stop-after ends the test after its verification: give one with --verify CMD".into(),
            ));
        }
        let _op = self.op.lock().unwrap_or_else(|e| e.into_inner());
        self.check_no_live(vpg)?;
        let id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if self.tests.lock().unwrap_or_else(|e| e.into_inner()).contains_key(vpg) {
            return Err(AgentError::Conflict(format!(
                "a failover test of {vpg:?} runs already; stop it first (`ferry failover stop {vpg} --result pass|fail`)"
            )));
        }
        let (r, cp) = self.exports.checkpoint_of(vpg, &req.checkpoint)?;
        let vpg_plan = r.spec().plan;
        plan::check_scripts(&vpg_plan)?;
        let mut views = self.exports.views_at(&r, &cp)?;
        // The replica's state says a test runs (and refuses its deletion meanwhile).
        r.try_change(crate::recover::state::Input::TestStarted)
            .map_err(|why| AgentError::Conflict(format!("replica {vpg:?}: {why}")))?;
        let mut mark = TestMark(r.clone(), false);
        if !req.volumes.is_empty() {
            if let Some(v) = req.volumes.iter().find(|v| !views.iter().any(|(n, _)| n == *v)) {
                let have: Vec<&str> = views.iter().map(|(n, _)| n.as_str()).collect();
                return Err(AgentError::Refused(format!(
                    "VPG {vpg:?} has no volume {v:?}; its volumes are {}",
                    have.join(", ")
                )));
            }
            views.retain(|(n, _)| req.volumes.contains(n));
        }
        let scratch_max = req.scratch_max.unwrap_or(SCRATCH_MAX_DEFAULT);
        let mut steps = Vec::new();
        // Scratch left by a test that a restart interrupted goes first.
        let dir = scratch_dir(&r);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| AgentError::io("cannot delete old scratch", &dir, e))?;
            let msg = "the scratch of a failover test interrupted by a restart was deleted".to_string();
            r.push_event(msg.clone());
            steps.push(step("old scratch", true, msg));
        }
        std::fs::create_dir_all(&dir).map_err(|e| AgentError::io("cannot create scratch", &dir, e))?;
        let budget = {
            let r = r.clone();
            Budget::new(
                scratch_max,
                Box::new(move |m| r.push_event(format!("failover test: {m}"))),
            )
        };
        let mut overlays = Vec::new();
        for (name, view) in views {
            let mut info = ferry_nbd::ExportInfo::new(ferry_nbd::Export::info(&*view).size_bytes);
            info.can_fast_zero = false;
            info.description = format!("FAILOVER TEST of VPG {vpg}, volume {name}, checkpoint {}", cp.seq);
            let path = dir.join(format!("{name}.scratch"));
            match Overlay::create(view, path.clone(), info, self.exports.pool().clone(), budget.clone()) {
                Ok(o) => overlays.push((name.clone(), format!("{vpg}@test.{name}"), Arc::new(o))),
                Err(e) => {
                    // Nothing of the test stays behind.
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(AgentError::io("cannot create scratch file", &path, e));
                }
            }
        }
        // Member by member in boot order, with the plan's scripts.
        let all: Vec<String> = r.spec().volumes.iter().map(|v| v.name.clone()).collect();
        let chosen: Vec<String> = overlays.iter().map(|(v, _, _)| v.clone()).collect();
        let members = plan::members(&vpg_plan, &all, &chosen);
        let bring = plan::BringUp {
            vpg,
            operation: "test",
            checkpoint: &cp,
            plan: &vpg_plan,
            log_dir: dir.clone(),
            uri: &*self.export_uri,
        };
        let brought = bring.run(
            &members,
            |m| {
                overlays
                    .iter()
                    .filter(|(v, _, _)| m.volumes.contains(v))
                    .map(|(v, export, o)| {
                        self.exports.add_overlay(export.clone(), o.clone());
                        (v.clone(), export.clone())
                    })
                    .collect()
            },
            &mut steps,
        );
        if let Err(why) = brought {
            for (_, export, o) in &overlays {
                self.exports.remove_overlay(export);
                let _ = o.close();
            }
            let _ = std::fs::remove_dir_all(&dir);
            steps.push(step("stopped", false, why.clone()));
            let report = TestReport {
                vpg: vpg.into(),
                checkpoint: cp.clone(),
                started_unix_ms: now_ms(),
                ready_after_ms: 0.0,
                stopped_unix_ms: now_ms(),
                result: Outcome::Fail,
                note: "the operation stopped: a pre-script failed".into(),
                volumes: chosen,
                scratch_used_bytes: 0,
                steps,
                verify: None,
            };
            r.push_event(format!("failover test of checkpoint {} stopped: {why}", cp.seq));
            self.record(&r, report)?;
            return Err(AgentError::Refused(format!(
                "{why} (recorded: `ferry failover report {vpg}`)"
            )));
        }
        let ready_after_ms = t0.elapsed().as_secs_f64() * 1000.0;
        steps.push(step(
            "exports up",
            true,
            format!("{} volume(s) at checkpoint {}", overlays.len(), cp.seq),
        ));
        let shown = TestRunning {
            vpg: vpg.into(),
            checkpoint: cp.clone(),
            exports: overlays.iter().map(|(v, e, _)| (v.clone(), e.clone())).collect(),
            started_unix_ms: now_ms(),
            ready_after_ms,
            scratch_max_bytes: scratch_max,
            scratch_used_bytes: 0,
            steps,
            verify: req.verify.as_deref().map(Verify::running),
        };
        r.push_event(format!(
            "failover test started at checkpoint {} ({} volume(s), ready in {ready_after_ms:.0} ms); replication goes on",
            cp.seq,
            overlays.len()
        ));
        tracing::info!(vpg, seq = cp.seq, ready_ms = ready_after_ms, "failover test started");
        mark.1 = true;
        self.tests.lock().unwrap_or_else(|e| e.into_inner()).insert(
            vpg.into(),
            Running {
                id,
                shown: shown.clone(),
                replica: r,
                overlays: overlays.into_iter().map(|(_, e, o)| (e, o)).collect(),
                budget,
            },
        );
        if let Some(cmd) = &req.verify {
            self.spawn_verify(id, &shown, cmd.clone(), req);
        }
        Ok(shown)
    }

    /// Runs the test's verification on a thread of its own; its outcome goes into the test
    /// (and ends it, with `stop_after`).
    fn spawn_verify(self: &Arc<Self>, id: u64, t: &TestRunning, cmd: String, req: &TestRequest) {
        let uris: Vec<String> = t
            .exports
            .iter()
            .map(|(vol, name)| format!("{vol}={}", (self.export_uri)(name)))
            .collect();
        let env = vec![
            ("FERRY_VPG".to_string(), t.vpg.clone()),
            ("FERRY_OPERATION".to_string(), "test".to_string()),
            ("FERRY_CHECKPOINT".to_string(), t.checkpoint.seq.to_string()),
            ("FERRY_CHECKPOINT_TAG".to_string(), t.checkpoint.tag.clone()),
            ("FERRY_EXPORT_URIS".to_string(), uris.join(" ")),
        ];
        let timeout = std::time::Duration::from_secs(req.verify_timeout_s.unwrap_or(verify::VERIFY_TIMEOUT_DEFAULT_S));
        let (me, vpg, stop_after) = (self.clone(), t.vpg.clone(), req.stop_after);
        let log = match self.tests.lock().unwrap_or_else(|e| e.into_inner()).get(&vpg) {
            Some(r) => scratch_dir(&r.replica).join("verify.log"),
            None => return,
        };
        let spawned = std::thread::Builder::new().name("ferry-verify".into()).spawn(move || {
            let v = verify::run(&cmd, &env, &log, timeout);
            let passed = v.state == VerifyState::Passed;
            let detail = format!(
                "`{cmd}` {} in {:.1} s{}",
                match (v.timed_out, v.exit_code) {
                    (true, _) => "timed out".to_string(),
                    (false, Some(c)) => format!("exited {c}"),
                    (false, None) => "was killed".to_string(),
                },
                v.seconds,
                v.output_tail.lines().last().map_or(String::new(), |l| format!(": {l}"))
            );
            {
                let mut tests = me.tests.lock().unwrap_or_else(|e| e.into_inner());
                // Stopped meanwhile (by hand): the outcome has no test to go to.
                let Some(t) = tests.get_mut(&vpg).filter(|t| t.id == id) else {
                    return;
                };
                t.shown.steps.push(step("verify", passed, detail.clone()));
                t.shown.verify = Some(v);
            }
            if stop_after {
                let req = StopRequest {
                    result: if passed { Outcome::Pass } else { Outcome::Fail },
                    note: format!("verification: {detail}"),
                };
                if let Err(e) = me.stop(&vpg, Some(id), &req) {
                    tracing::warn!(vpg, error = %e, "cannot stop the test after its verification");
                }
            }
        });
        if let Err(e) = spawned {
            tracing::error!(vpg = %t.vpg, error = %e, "cannot start the verification");
        }
    }

    /// The tests that run.
    pub fn running(&self) -> Vec<TestRunning> {
        self.tests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|t| TestRunning {
                scratch_used_bytes: t.budget.used_bytes(),
                ..t.shown.clone()
            })
            .collect()
    }

    /// Stops the test of `vpg`: its exports end (their requests fail from now on), the
    /// scratch is deleted and the report recorded.
    pub fn stop_test(&self, vpg: &str, req: &StopRequest) -> Result<TestReport, AgentError> {
        self.stop(vpg, None, req)
    }

    /// Stops the test of `vpg` (only if it is test `only`, when given: a verification
    /// ends its own test, never a later one).
    fn stop(&self, vpg: &str, only: Option<u64>, req: &StopRequest) -> Result<TestReport, AgentError> {
        let _op = self.op.lock().unwrap_or_else(|e| e.into_inner());
        let t = {
            let mut tests = self.tests.lock().unwrap_or_else(|e| e.into_inner());
            match tests.get(vpg) {
                Some(t) if only.is_none_or(|id| id == t.id) => tests.remove(vpg),
                _ => None,
            }
        }
        .ok_or_else(|| {
            AgentError::Refused(format!(
                "no failover test of {vpg:?} runs here (`ferry failover test {vpg}` starts one)"
            ))
        })?;
        t.replica.change(crate::recover::state::Input::TestStopped);
        let used = t.budget.used_bytes();
        let mut steps = t.shown.steps.clone();
        for (export, o) in &t.overlays {
            self.exports.remove_overlay(export);
            if let Err(e) = o.close() {
                steps.push(step("delete scratch", false, format!("{export}: {e}")));
            }
        }
        let dir = scratch_dir(&t.replica);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            steps.push(step("delete scratch", false, format!("{}: {e}", dir.display())));
        }
        steps.push(step(
            "exports closed, scratch deleted",
            true,
            format!("{used} bytes of scratch were written"),
        ));
        let report = TestReport {
            vpg: vpg.into(),
            checkpoint: t.shown.checkpoint.clone(),
            started_unix_ms: t.shown.started_unix_ms,
            ready_after_ms: t.shown.ready_after_ms,
            stopped_unix_ms: now_ms(),
            result: req.result,
            note: req.note.clone(),
            volumes: t.shown.exports.iter().map(|(v, _)| v.clone()).collect(),
            scratch_used_bytes: used,
            steps,
            verify: t.shown.verify.clone(),
        };
        self.record(&t.replica, report.clone())?;
        t.replica.push_event(format!(
            "failover test of checkpoint {} stopped: {:?}{}",
            report.checkpoint.seq,
            report.result,
            if report.note.is_empty() {
                String::new()
            } else {
                format!(" ({})", report.note)
            }
        ));
        tracing::info!(vpg, result = ?report.result, "failover test stopped");
        Ok(report)
    }

    /// Adds `report` to the replica's reports (the oldest go past [`REPORTS_KEPT`]).
    fn record(&self, r: &Replica, report: TestReport) -> Result<(), AgentError> {
        let mut reports = self.reports(&report.vpg).unwrap_or_default();
        reports.push(report);
        let excess = reports.len().saturating_sub(REPORTS_KEPT);
        reports.drain(..excess);
        crate::meta::store(&r.dir, &reports_path(r), crate::meta::TEST_REPORTS, &reports)
    }

    /// Notes on each of `cps` its last failover test here ("pass at TIME").
    pub fn mark_tested(&self, vpg: &str, cps: &mut [CheckpointInfo]) {
        let reports = self.reports(vpg).unwrap_or_default();
        for cp in cps {
            if let Some(r) = reports.iter().rev().find(|r| r.checkpoint.seq == cp.seq) {
                cp.tested = format!(
                    "{} at {}",
                    if r.result == Outcome::Pass { "pass" } else { "fail" },
                    crate::size::utc(r.stopped_unix_ms)
                );
            }
        }
    }

    /// The recorded test reports of `vpg`, oldest first.
    pub fn reports(&self, vpg: &str) -> Result<Vec<TestReport>, AgentError> {
        let r = self.exports.replicas().get(vpg).ok_or_else(|| {
            AgentError::Refused(format!("no replica of a VPG named {vpg:?} here (`ferry replica list`)"))
        })?;
        Ok(crate::meta::fetch_noting(&reports_path(&r), crate::meta::TEST_REPORTS)?.unwrap_or_default())
    }
}
