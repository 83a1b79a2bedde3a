//! Long operations as tasks a client can poll: initial, delta and reverse syncs, a commit's
//! copy, and moves. A task is seen in the state the operations already keep (the VPGs'
//! sync progress, the live failovers' commit progress); this module gives each one an id
//! when it is first seen and remembers how it ended, for the newest [`FINISHED_KEPT`].
//!
//! [`Tasks::observe`] is pure: it takes what runs now and the time, so it is tested without
//! an agent.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// The header that names the task a request started: `ferry-task: /v1/tasks/ID`.
pub const TASK_HEADER: &str = "ferry-task";

/// The `ferry-task` header of task `id`.
pub fn header(id: u64) -> [(axum::http::HeaderName, String); 1] {
    [(
        axum::http::HeaderName::from_static(TASK_HEADER),
        format!("/v1/tasks/{id}"),
    )]
}

/// Finished tasks remembered (older ones are forgotten).
pub const FINISHED_KEPT: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// Every block of a new VPG's volumes sent to the recovery site.
    InitialSync,
    /// Regions compared by checksum after a cut too long for the journal, or for a
    /// preseeded VPG; only the differences are sent.
    DeltaSync,
    /// Reverse protection's first sync back to the site failed over from: only the regions
    /// either site changed since the failover.
    ReverseSync,
    /// A live failover's commit: the overlays' writes copied into the volumes.
    Commit,
    /// `failover move`: fence, drain, fail over, commit, and protect back.
    Move,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    Running,
    Done,
    Failed,
}

/// A task as the API answers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Task {
    pub id: u64,
    pub kind: TaskKind,
    pub vpg: String,
    pub state: TaskState,
    pub started_unix_ms: u64,
    pub ended_unix_ms: Option<u64>,
    /// Bytes done of `total_bytes` (read, compared or copied, as the kind goes).
    pub done_bytes: u64,
    pub total_bytes: u64,
    /// 0 to 100.
    pub percent: f64,
    /// Seconds left at the rate so far, while running.
    pub eta_s: Option<f64>,
    /// What it is doing now, or how it ended.
    pub detail: String,
}

impl Task {
    fn new(id: u64, kind: TaskKind, vpg: &str, now_ms: u64) -> Task {
        Task {
            id,
            kind,
            vpg: vpg.to_string(),
            state: TaskState::Running,
            started_unix_ms: now_ms,
            ended_unix_ms: None,
            done_bytes: 0,
            total_bytes: 0,
            percent: 0.0,
            eta_s: None,
            detail: "starting".into(),
        }
    }
}

/// What runs now, as the operations' state shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Running {
    pub kind: TaskKind,
    pub vpg: String,
    pub done_bytes: u64,
    pub total_bytes: u64,
    pub detail: String,
}

/// How a task that is no longer running ended: `Err(why)` if it failed.
pub type Ending = Result<String, String>;

#[derive(Debug, Default)]
pub struct Tasks {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    running: Vec<Task>,
    finished: VecDeque<Task>,
}

impl Tasks {
    /// A long operation just asked for: its task, running from `now_ms` (the one already
    /// running of that kind on that VPG, if there is one). The observation that follows
    /// updates it, or ends it if it already ended.
    pub fn begin(&self, now_ms: u64, kind: TaskKind, vpg: &str) -> u64 {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = g.running.iter().find(|t| t.kind == kind && t.vpg == vpg) {
            return t.id;
        }
        g.next_id += 1;
        let id = g.next_id;
        g.running.push(Task::new(id, kind, vpg, now_ms));
        id
    }

    /// Takes what runs at `now_ms`: new tasks get an id, running ones their progress, and
    /// those gone end as `ending` says. Answers every task known, newest first.
    pub fn observe(&self, now_ms: u64, now: Vec<Running>, ending: impl Fn(&Task) -> Ending) -> Vec<Task> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let inner = &mut *g;
        let mut still = Vec::with_capacity(now.len());
        for r in now {
            let known = inner.running.iter().position(|t| t.kind == r.kind && t.vpg == r.vpg);
            let mut t = match known {
                Some(i) => inner.running.swap_remove(i),
                None => {
                    inner.next_id += 1;
                    Task::new(inner.next_id, r.kind, &r.vpg, now_ms)
                }
            };
            t.done_bytes = r.done_bytes;
            t.total_bytes = r.total_bytes;
            t.percent = if r.total_bytes == 0 {
                0.0
            } else {
                (100.0 * r.done_bytes as f64 / r.total_bytes as f64).min(100.0)
            };
            let elapsed_s = now_ms.saturating_sub(t.started_unix_ms) as f64 / 1000.0;
            t.eta_s = (t.done_bytes > 0 && elapsed_s > 1.0 && r.total_bytes >= t.done_bytes).then(|| {
                let rate = t.done_bytes as f64 / elapsed_s;
                (r.total_bytes - t.done_bytes) as f64 / rate
            });
            t.detail = r.detail;
            still.push(t);
        }
        for mut t in std::mem::take(&mut inner.running) {
            t.ended_unix_ms = Some(now_ms);
            t.eta_s = None;
            match ending(&t) {
                Ok(detail) => {
                    t.state = TaskState::Done;
                    t.done_bytes = t.total_bytes;
                    t.percent = 100.0;
                    t.detail = detail;
                }
                Err(why) => {
                    t.state = TaskState::Failed;
                    t.detail = why;
                }
            }
            if inner.finished.len() == FINISHED_KEPT {
                inner.finished.pop_back();
            }
            inner.finished.push_front(t);
        }
        inner.running = still;
        let mut all: Vec<Task> = inner.running.iter().chain(inner.finished.iter()).cloned().collect();
        all.sort_by_key(|t| std::cmp::Reverse(t.id));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(kind: TaskKind, vpg: &str, done: u64, total: u64) -> Running {
        Running {
            kind,
            vpg: vpg.into(),
            done_bytes: done,
            total_bytes: total,
            detail: "copying".into(),
        }
    }

    #[test]
    fn a_task_keeps_its_id_while_it_runs_and_is_remembered_when_it_ends() {
        let t = Tasks::default();
        let a = t.observe(1000, vec![run(TaskKind::InitialSync, "g", 0, 100)], |_| {
            Ok("done".into())
        });
        assert_eq!((a.len(), a[0].id, a[0].state), (1, 1, TaskState::Running));
        let b = t.observe(3000, vec![run(TaskKind::InitialSync, "g", 50, 100)], |_| {
            Ok("done".into())
        });
        assert_eq!((b[0].id, b[0].percent), (1, 50.0));
        // 50 bytes in 2 s: 50 more take 2 s.
        assert_eq!(b[0].eta_s, Some(2.0));
        let c = t.observe(4000, vec![run(TaskKind::Commit, "h", 1, 10)], |_| {
            Ok("protecting".into())
        });
        assert_eq!(c.len(), 2);
        assert_eq!((c[0].id, c[0].kind), (2, TaskKind::Commit));
        assert_eq!(
            (c[1].state, c[1].percent, c[1].ended_unix_ms, c[1].detail.as_str()),
            (TaskState::Done, 100.0, Some(4000), "protecting")
        );
        let d = t.observe(5000, vec![], |_| Err("the VPG was deleted".into()));
        assert_eq!((d[0].state, d[0].percent), (TaskState::Failed, 10.0));
        // The same kind on the same VPG again is a new task.
        let e = t.observe(6000, vec![run(TaskKind::InitialSync, "g", 0, 100)], |_| {
            Ok(String::new())
        });
        assert_eq!(e[0].id, 3);
    }

    #[test]
    fn a_task_begun_by_a_request_is_the_one_observed_or_ends_if_it_is_already_over() {
        let t = Tasks::default();
        let id = t.begin(100, TaskKind::Commit, "g");
        assert_eq!(t.begin(150, TaskKind::Commit, "g"), id);
        let seen = t.observe(1000, vec![run(TaskKind::Commit, "g", 5, 10)], |_| Ok(String::new()));
        assert_eq!((seen[0].id, seen[0].started_unix_ms, seen[0].percent), (id, 100, 50.0));
        // Over before it was ever observed running: it ends at the next observation.
        let quick = t.begin(2000, TaskKind::InitialSync, "h");
        let seen = t.observe(2500, vec![run(TaskKind::Commit, "g", 5, 10)], |_| {
            Ok("protecting".into())
        });
        let q = seen.iter().find(|x| x.id == quick).unwrap();
        assert_eq!((q.state, q.detail.as_str()), (TaskState::Done, "protecting"));
    }

    #[test]
    fn finished_tasks_are_bounded() {
        let t = Tasks::default();
        for i in 0..(FINISHED_KEPT as u64 + 20) {
            t.observe(i * 2, vec![run(TaskKind::DeltaSync, "g", 0, 1)], |_| Ok(String::new()));
            t.observe(i * 2 + 1, vec![], |_| Ok(String::new()));
        }
        let all = t.observe(10_000, vec![], |_| Ok(String::new()));
        assert_eq!(all.len(), FINISHED_KEPT);
        assert_eq!(all[0].id, FINISHED_KEPT as u64 + 20);
    }
}
