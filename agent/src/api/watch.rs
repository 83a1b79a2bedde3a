//! What the operator watches: tasks (long operations, polled), alerts (conditions to act on
//! now), the performance samples of the last hour, and every failover test's report. One
//! loop observes the agent's state every second to see tasks start and end and
//! to take a sample every [`samples::SAMPLE_EVERY_S`] seconds.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde::{Deserialize, Serialize};

use super::error::{Json, Path, Query};
use super::samples::{self, Sample, Samples, VpgSample};
use super::tasks::{Ending, Running, Task, TaskKind};
use super::{Api, ApiError, ErrorBody};
use crate::clock::now_ms;
use crate::failover::{LivePhase, TestReport};
use crate::protect::state::VpgState;

const OBSERVE_EVERY: Duration = Duration::from_secs(1);

pub(super) fn routes(r: Router<Api>) -> Router<Api> {
    r.route("/v1/tasks", get(tasks_h))
        .route("/v1/tasks/{id}", get(task_h))
        .route("/v1/alerts", get(alerts_h))
        .route("/v1/samples", get(samples_h))
        .route("/v1/reports", get(reports_h))
}

/// What runs now, read from the VPGs' and live failovers' state.
fn running(api: &Api) -> Vec<Running> {
    let lives = api.failover.lives();
    let mut out = Vec::new();
    for v in api.vpgs.list() {
        let Some(p) = &v.protection else { continue };
        if let Some(done) = p.initial_done_bytes {
            out.push(Running {
                kind: TaskKind::InitialSync,
                vpg: v.name.clone(),
                done_bytes: done,
                total_bytes: p.initial_total_bytes,
                detail: "reading the volumes and sending every block".into(),
            });
        }
        if let Some(d) = &p.delta {
            let reverse = lives.iter().any(|l| l.vpg == v.name && l.phase == LivePhase::Committed);
            out.push(Running {
                kind: if reverse {
                    TaskKind::ReverseSync
                } else {
                    TaskKind::DeltaSync
                },
                vpg: v.name.clone(),
                done_bytes: d.compared_bytes,
                total_bytes: d.total_bytes,
                detail: format!(
                    "compared {} of {}: {} differ",
                    crate::size::human(d.compared_bytes),
                    crate::size::human(d.total_bytes),
                    crate::size::human(d.differing_bytes)
                ),
            });
        }
    }
    for l in &lives {
        if let (LivePhase::Committing, Some(c)) = (l.phase, &l.commit) {
            out.push(Running {
                kind: TaskKind::Commit,
                vpg: l.vpg.clone(),
                done_bytes: c.copied_bytes,
                total_bytes: c.total_bytes,
                detail: format!("copy pass {}", c.passes.max(1)),
            });
        }
        if l.moving && matches!(l.phase, LivePhase::NeedsCommit | LivePhase::Committing) {
            out.push(Running {
                kind: TaskKind::Move,
                vpg: l.vpg.clone(),
                done_bytes: 0,
                total_bytes: 0,
                detail: l.steps.last().map(|s| s.what.clone()).unwrap_or_default(),
            });
        }
    }
    out
}

/// How a task no longer running ended, from the state it left.
fn ending(api: &Api, t: &Task) -> Ending {
    match t.kind {
        TaskKind::InitialSync | TaskKind::DeltaSync | TaskKind::ReverseSync => {
            let Ok(v) = api.vpgs.get(&t.vpg) else {
                return Err("the VPG was deleted".into());
            };
            let st = v.status();
            match st.state_kind {
                Some(VpgState::Error | VpgState::SplitBrain | VpgState::Fenced) => Err(st.state),
                _ => Ok(format!("the VPG is {}", st.state)),
            }
        }
        TaskKind::Commit | TaskKind::Move => match api.failover.lives().into_iter().find(|l| l.vpg == t.vpg) {
            Some(l) if l.phase == LivePhase::Committed => Ok("committed".into()),
            Some(l) if l.phase == LivePhase::RolledBack => Err("rolled back".into()),
            Some(l) => Err(l
                .warnings
                .last()
                .cloned()
                .unwrap_or_else(|| "stopped before its commit (`ferry failover status` says why)".into())),
            None => Err("the live failover is no longer known here".into()),
        },
    }
}

fn observe(api: &Api) -> Vec<Task> {
    let now = running(api);
    api.tasks.observe(now_ms(), now, |t| ending(api, t))
}

fn sample(api: &Api) -> Sample {
    let mut vpgs: Vec<VpgSample> = api
        .vpgs
        .list()
        .into_iter()
        .filter_map(|v| {
            let p = v.protection.as_ref()?;
            Some(VpgSample {
                vpg: v.name.clone(),
                rpo_s: Some(p.rpo_s),
                bytes_per_s: Some(p.ship.rate_bytes_per_s),
                history_bytes: None,
            })
        })
        .collect();
    for r in api.exports.replicas().all() {
        let st = r.status();
        vpgs.push(VpgSample {
            vpg: st.name,
            rpo_s: None,
            bytes_per_s: None,
            history_bytes: Some(st.history_bytes),
        });
    }
    Sample {
        unix_ms: now_ms(),
        vpgs,
    }
}

/// The observing loop, until the agent stops.
pub(super) async fn run(api: Api) {
    let mut tick = tokio::time::interval(OBSERVE_EVERY);
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = api.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let a = api.clone();
        let take_sample = n.is_multiple_of(samples::SAMPLE_EVERY_S / OBSERVE_EVERY.as_secs());
        n += 1;
        let _ = tokio::task::spawn_blocking(move || {
            observe(&a);
            if take_sample {
                a.samples.push(sample(&a));
            }
        })
        .await;
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct TaskQuery {
    /// Only this VPG's tasks.
    pub vpg: Option<String>,
}

/// Long operations, running and the newest 100 finished, newest first.
#[utoipa::path(get, path = "/v1/tasks", tag = "tasks", params(TaskQuery),
    responses((status = 200, body = [Task]), (status = "4XX", body = super::ErrorBody)))]
pub(super) async fn tasks_h(State(api): State<Api>, Query(q): Query<TaskQuery>) -> Json<Vec<Task>> {
    let a = api.clone();
    let mut all = tokio::task::spawn_blocking(move || observe(&a))
        .await
        .unwrap_or_default();
    if let Some(v) = q.vpg {
        all.retain(|t| t.vpg == v);
    }
    Json(all)
}

/// One task.
#[utoipa::path(get, path = "/v1/tasks/{id}", tag = "tasks", params(("id" = u64, Path, description = "the task's id")),
    responses((status = 200, body = Task), (status = "4XX", body = super::ErrorBody)))]
pub(super) async fn task_h(State(api): State<Api>, Path(id): Path<u64>) -> Result<Json<Task>, ApiError> {
    let a = api.clone();
    let all = tokio::task::spawn_blocking(move || observe(&a))
        .await
        .unwrap_or_default();
    all.into_iter()
        .find(|t| t.id == id)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no task {id} (finished tasks are kept for the newest 100)")))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Warning,
    Critical,
}

/// A condition to act on now.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Alert {
    pub severity: Severity,
    /// "vpg NAME", "replica NAME", "link PEER" or "agent".
    pub source: String,
    pub message: String,
}

pub(super) fn alerts(api: &Api) -> Vec<Alert> {
    let mut out = Vec::new();
    let mut add = |severity, source: String, message: String| {
        out.push(Alert {
            severity,
            source,
            message,
        })
    };
    for v in api.vpgs.list() {
        let src = format!("vpg {}", v.name);
        match v.state_kind {
            Some(VpgState::SplitBrain | VpgState::Error) => add(Severity::Critical, src.clone(), v.state.clone()),
            Some(VpgState::Fenced) => add(Severity::Warning, src.clone(), v.state.clone()),
            _ => {}
        }
        if let Some(p) = &v.protection
            && !p.meeting_sla
            && !p.settings.paused
        {
            add(
                Severity::Warning,
                src.clone(),
                format!("RPO {:.0} s is above its target of {} s", p.rpo_s, p.settings.rpo_s),
            );
        }
        if v.journal.fill_percent >= 90.0 {
            add(
                Severity::Warning,
                src.clone(),
                format!("journal {:.0}% full", v.journal.fill_percent),
            );
        }
        if let Some(e) = &v.datastore_error {
            add(Severity::Critical, src, format!("datastore I/O failing: {}", e.message));
        }
    }
    for l in api.failover.lives() {
        if l.phase == LivePhase::NeedsCommit {
            add(
                Severity::Critical,
                format!("vpg {}", l.vpg),
                "LIVE FAILOVER: it runs here and needs commit or rollback".into(),
            );
        }
        if let Some(words) = l.split_brain_words() {
            add(Severity::Critical, format!("vpg {}", l.vpg), words);
        }
    }
    for r in api.exports.replicas().all() {
        let st = r.status();
        if let Some(sb) = &st.split_brain {
            add(
                Severity::Critical,
                format!("replica {}", st.name),
                format!(
                    "split brain since epoch {}: {} written at the protected site and never received here; settle it with `ferry vpg resolve {} --keep here|peer`",
                    sb.epoch,
                    crate::size::human(sb.there_bytes),
                    st.name
                ),
            );
        }
    }
    for k in api.shipping.links() {
        if k.state != "connected" && k.state != "connecting" {
            add(Severity::Warning, format!("link {}", k.peer), k.state.clone());
        }
    }
    for m in crate::meta::problems() {
        add(Severity::Warning, "agent".into(), m);
    }
    out
}

/// Conditions to act on now (RPO above target, split brain, a live failover that needs
/// commit, links down, failing datastores, damaged metadata), worst first.
#[utoipa::path(get, path = "/v1/alerts", tag = "status", responses((status = 200, body = [Alert]), (status = "4XX", description = "refused, with why and what to do", body = ErrorBody)))]
pub(super) async fn alerts_h(State(api): State<Api>) -> Json<Vec<Alert>> {
    let mut a = tokio::task::spawn_blocking(move || alerts(&api))
        .await
        .unwrap_or_default();
    a.sort_by_key(|x| x.severity != Severity::Critical);
    Json(a)
}

/// RPO and throughput per VPG (and history per replica) every 10 s over the last hour, and
/// now.
#[utoipa::path(get, path = "/v1/samples", tag = "status", responses((status = 200, body = Samples), (status = "4XX", description = "refused, with why and what to do", body = ErrorBody)))]
pub(super) async fn samples_h(State(api): State<Api>) -> Json<Samples> {
    let a = api.clone();
    let now = tokio::task::spawn_blocking(move || sample(&a)).await.ok();
    let mut all = api.samples.all();
    // The newest point is now (it is not kept: the ring takes one every 10 s).
    all.samples.extend(now);
    Json(all)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ReportQuery {
    /// Only this VPG's reports.
    pub vpg: Option<String>,
}

/// Failover test reports of every replica here (the recovery site), newest first.
#[utoipa::path(get, path = "/v1/reports", tag = "failover", params(ReportQuery),
    responses((status = 200, body = [TestReport]), (status = "4XX", body = super::ErrorBody)))]
pub(super) async fn reports_h(State(api): State<Api>, Query(q): Query<ReportQuery>) -> Json<Vec<TestReport>> {
    let mut out: Vec<TestReport> = api
        .exports
        .replicas()
        .all()
        .iter()
        .map(|r| r.spec().name)
        .filter(|name| q.vpg.as_ref().is_none_or(|v| v == name))
        .flat_map(|name| api.failover.reports(&name).unwrap_or_default())
        .collect();
    out.sort_by_key(|r| std::cmp::Reverse(r.started_unix_ms));
    Json(out)
}
