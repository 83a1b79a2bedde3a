//! A replica's state as a machine: whether a protected site's session has it open, whether
//! applying aged history to its images fails (and when to try again), whether it was
//! deleted. One pure function takes the state and an input to the next state and what to
//! tell; another shows it. Nothing here does I/O.
//!
//! None of it is persisted on purpose: at start no session has the replica open, a failing
//! apply is found failing again by its first try, and a deleted replica has no files left.
//! What a replica must remember across restarts (its VPG, lineage, epoch, the peer, an
//! apply in progress) is in `replica.json`.

use serde::{Deserialize, Serialize};

/// Backoff between tries of a failed apply.
pub const APPLY_BACKOFF_MIN_MS: u64 = 1000;
pub const APPLY_BACKOFF_MAX_MS: u64 = 60_000;

/// A replica's state as shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ReplicaState {
    /// No protected site has it open (its link is down, or the VPG is not shipping).
    #[default]
    Waiting,
    /// A protected site streams its VPG to it.
    Receiving,
    /// A failover test of one of its checkpoints runs (replication goes on meanwhile).
    Testing,
    /// Applying aged history to the images fails; every checkpoint is still served from
    /// history, and the apply is retried with backoff.
    ApplyFailing,
    /// Deleted here: sessions let it go.
    Deleted,
    /// A live failover serves the VPG here from one of its checkpoints; it waits for a
    /// commit or a rollback.
    NeedsCommit,
    /// The VPG was failed over to this site and committed: its volumes are this agent's.
    FailedOver,
}

impl std::fmt::Display for ReplicaState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ReplicaState::Waiting => "waiting for its protected site",
            ReplicaState::Receiving => "receiving",
            ReplicaState::Testing => "testing (a failover test runs; replication goes on)",
            ReplicaState::ApplyFailing => "apply failing (retrying)",
            ReplicaState::Deleted => "deleted",
            ReplicaState::NeedsCommit => "needs commit (a live failover serves the VPG here)",
            ReplicaState::FailedOver => "failed over here (committed)",
        })
    }
}

/// The applying of aged history.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Apply {
    #[default]
    Ok,
    /// The last try failed with `why`; the next is due at `retry_at_ms`.
    Failing {
        why: String,
        retry_at_ms: u64,
        backoff_ms: u64,
    },
}

/// Everything the machine knows.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Life {
    /// Sessions that have the replica open.
    pub sessions: u32,
    pub apply: Apply,
    pub deleted: bool,
    /// A failover test of the replica runs.
    pub testing: bool,
    /// Where a live failover of the VPG stands here.
    pub live: LiveMark,
}

/// A live failover of the replica's VPG, as its state shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LiveMark {
    #[default]
    None,
    NeedsCommit,
    Committed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    SessionOpened,
    SessionClosed,
    /// An aging pass applied what was due.
    Applied,
    /// An aging pass failed at `now_ms`.
    ApplyFailed {
        why: String,
        now_ms: u64,
    },
    Delete,
    TestStarted,
    TestStopped,
    /// A live failover serves the VPG here (started, or found again after a restart).
    LiveStarted,
    LiveCommitted,
    LiveRolledBack,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Tell the operator (the replica's event log).
    Event(String),
}

/// What a recovery site answers a protected site that opens its VPG at `their_epoch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenAnswer {
    /// Take its stream.
    Admit,
    /// A failover of epoch `e` was rolled back: it takes `e`, writes again (unfenced if it
    /// was fenced) and its stream is taken.
    Unfence(u64),
    /// The VPG runs here at epoch `e` (a live failover): it fences itself, and its stream is
    /// refused. (It may hold writes this site never received: a split brain, which it
    /// reports.)
    Fence(u64),
    /// An epoch older than the replica's: refused.
    Refuse,
}

/// The answer to an open, from the replica's epoch, the epoch of a live failover that runs
/// the VPG here and that of one rolled back. A site at the epoch it took from this site's
/// fence is fenced again, not admitted: only one site writes in an epoch.
pub fn answer_open(
    replica_epoch: u64,
    runs_here: Option<u64>,
    unfence_due: Option<u64>,
    their_epoch: u64,
) -> OpenAnswer {
    match (runs_here, unfence_due) {
        (Some(e), _) if their_epoch <= e => OpenAnswer::Fence(e),
        (_, Some(e)) if their_epoch <= e => OpenAnswer::Unfence(e),
        _ if their_epoch < replica_epoch => OpenAnswer::Refuse,
        _ => OpenAnswer::Admit,
    }
}

/// The next state and what to tell, or why the input is refused (nothing changes then).
pub fn step(life: &Life, input: Input) -> Result<(Life, Vec<Action>), String> {
    let mut next = life.clone();
    let mut out = Vec::new();
    match input {
        Input::SessionOpened => {
            if life.deleted {
                return Err("the replica was deleted".into());
            }
            next.sessions += 1;
        }
        Input::SessionClosed => {
            if life.sessions == 0 {
                return Err("no session has the replica open".into());
            }
            next.sessions -= 1;
        }
        Input::Applied => {
            if matches!(life.apply, Apply::Failing { .. }) {
                out.push(Action::Event("history applies to the replica again".into()));
            }
            next.apply = Apply::Ok;
        }
        Input::ApplyFailed { why, now_ms } => {
            let backoff_ms = match &life.apply {
                Apply::Ok => {
                    out.push(Action::Event(format!(
                        "applying history to the replica failed ({why}); every checkpoint is still served from history, and the apply is retried with backoff (up to {} s): free space on the recovery datastore",
                        APPLY_BACKOFF_MAX_MS / 1000
                    )));
                    APPLY_BACKOFF_MIN_MS
                }
                Apply::Failing { backoff_ms, .. } => (backoff_ms * 2).min(APPLY_BACKOFF_MAX_MS),
            };
            next.apply = Apply::Failing {
                why,
                retry_at_ms: now_ms + backoff_ms,
                backoff_ms,
            };
        }
        Input::Delete => {
            if life.deleted {
                return Err("the replica was deleted already".into());
            }
            if life.testing {
                return Err("a failover test of the replica runs; stop it first (`ferry failover stop`)".into());
            }
            if life.live == LiveMark::NeedsCommit {
                return Err(
                    "a live failover serves the VPG from it; commit or roll it back first (`ferry failover commit|rollback`)"
                        .into(),
                );
            }
            next.deleted = true;
        }
        Input::TestStarted => {
            if life.deleted {
                return Err("the replica was deleted".into());
            }
            if life.testing {
                return Err("a failover test of the replica runs already".into());
            }
            next.testing = true;
        }
        Input::TestStopped => {
            if !life.testing {
                return Err("no failover test of the replica runs".into());
            }
            next.testing = false;
        }
        Input::LiveStarted => {
            if life.deleted {
                return Err("the replica was deleted".into());
            }
            if life.live == LiveMark::NeedsCommit {
                return Err("a live failover of the VPG needs commit or rollback already".into());
            }
            next.live = LiveMark::NeedsCommit;
        }
        Input::LiveCommitted | Input::LiveRolledBack => {
            if life.live != LiveMark::NeedsCommit {
                return Err("no live failover of the VPG needs commit or rollback".into());
            }
            next.live = if input == Input::LiveCommitted {
                LiveMark::Committed
            } else {
                LiveMark::None
            };
        }
    }
    Ok((next, out))
}

/// Whether an aging pass may run at `now_ms` (not while a failed one waits for its retry,
/// nor once deleted).
pub fn apply_due(life: &Life, now_ms: u64) -> bool {
    !life.deleted
        && match &life.apply {
            Apply::Ok => true,
            Apply::Failing { retry_at_ms, .. } => now_ms >= *retry_at_ms,
        }
}

/// The state as shown: deleted over a failing apply over testing over receiving.
pub fn shown(life: &Life) -> ReplicaState {
    if life.deleted {
        ReplicaState::Deleted
    } else if matches!(life.apply, Apply::Failing { .. }) {
        ReplicaState::ApplyFailing
    } else if life.live == LiveMark::NeedsCommit {
        ReplicaState::NeedsCommit
    } else if life.live == LiveMark::Committed {
        ReplicaState::FailedOver
    } else if life.testing {
        ReplicaState::Testing
    } else if life.sessions > 0 {
        ReplicaState::Receiving
    } else {
        ReplicaState::Waiting
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_failover_needs_commit_until_committed_or_rolled_back_and_holds_off_deletion() {
        let (l, _) = step(&Life::default(), Input::LiveStarted).unwrap();
        assert_eq!(shown(&l), ReplicaState::NeedsCommit);
        assert!(step(&l, Input::LiveStarted).is_err(), "one at a time");
        assert!(step(&l, Input::Delete).unwrap_err().contains("commit or roll it back"));
        let (back, _) = step(&l, Input::LiveRolledBack).unwrap();
        assert_eq!(shown(&back), ReplicaState::Waiting);
        assert!(step(&back, Input::LiveCommitted).is_err(), "nothing pending");
        let (done, _) = step(&l, Input::LiveCommitted).unwrap();
        assert_eq!(shown(&done), ReplicaState::FailedOver);
        step(&done, Input::Delete).unwrap();
    }

    fn failing(backoff_ms: u64, retry_at_ms: u64) -> Life {
        Life {
            apply: Apply::Failing {
                why: "ENOSPC".into(),
                retry_at_ms,
                backoff_ms,
            },
            ..Life::default()
        }
    }

    #[test]
    fn a_session_opens_and_closes_and_the_replica_shows_receiving_meanwhile() {
        let (open, out) = step(&Life::default(), Input::SessionOpened).unwrap();
        assert_eq!((open.sessions, out), (1, vec![]));
        assert_eq!(shown(&open), ReplicaState::Receiving);
        let (closed, _) = step(&open, Input::SessionClosed).unwrap();
        assert_eq!(shown(&closed), ReplicaState::Waiting);
    }

    #[test]
    fn closing_a_session_that_was_never_opened_is_refused() {
        assert!(step(&Life::default(), Input::SessionClosed).is_err());
    }

    #[test]
    fn a_deleted_replica_refuses_sessions_and_a_second_delete() {
        let (gone, _) = step(&Life::default(), Input::Delete).unwrap();
        assert_eq!(shown(&gone), ReplicaState::Deleted);
        assert!(step(&gone, Input::SessionOpened).is_err());
        assert!(step(&gone, Input::Delete).is_err());
        assert!(!apply_due(&gone, 0));
    }

    #[test]
    fn a_session_open_at_the_delete_still_closes() {
        let (open, _) = step(&Life::default(), Input::SessionOpened).unwrap();
        let (gone, _) = step(&open, Input::Delete).unwrap();
        let (closed, _) = step(&gone, Input::SessionClosed).unwrap();
        assert_eq!((closed.sessions, shown(&closed)), (0, ReplicaState::Deleted));
    }

    #[test]
    fn a_test_starts_and_stops_once_and_a_tested_replica_cannot_be_deleted() {
        let (open, _) = step(&Life::default(), Input::SessionOpened).unwrap();
        let (testing, _) = step(&open, Input::TestStarted).unwrap();
        assert_eq!(shown(&testing), ReplicaState::Testing);
        assert!(step(&testing, Input::TestStarted).is_err(), "one test at a time");
        assert!(step(&testing, Input::Delete).is_err());
        let (done, _) = step(&testing, Input::TestStopped).unwrap();
        assert_eq!(shown(&done), ReplicaState::Receiving);
        assert!(step(&done, Input::TestStopped).is_err());
        let (gone, _) = step(&done, Input::Delete).unwrap();
        assert!(step(&gone, Input::TestStarted).is_err());
    }

    #[test]
    fn a_first_apply_failure_tells_once_and_waits_the_least_backoff() {
        let fail = || Input::ApplyFailed {
            why: "ENOSPC".into(),
            now_ms: 10_000,
        };
        let (f, out) = step(&Life::default(), fail()).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(f, failing(APPLY_BACKOFF_MIN_MS, 10_000 + APPLY_BACKOFF_MIN_MS));
        assert_eq!(shown(&f), ReplicaState::ApplyFailing);
        assert!(!apply_due(&f, 10_999) && apply_due(&f, 11_000));
        // Failing again: silent, the wait doubles.
        let (f2, out) = step(&f, fail()).unwrap();
        assert_eq!(out, vec![]);
        assert_eq!(f2, failing(2 * APPLY_BACKOFF_MIN_MS, 10_000 + 2 * APPLY_BACKOFF_MIN_MS));
    }

    #[test]
    fn the_backoff_stops_at_its_most() {
        let (f, _) = step(
            &failing(APPLY_BACKOFF_MAX_MS, 0),
            Input::ApplyFailed {
                why: "ENOSPC".into(),
                now_ms: 5,
            },
        )
        .unwrap();
        assert_eq!(f, failing(APPLY_BACKOFF_MAX_MS, 5 + APPLY_BACKOFF_MAX_MS));
    }

    #[test]
    fn an_apply_that_succeeds_after_failures_tells_and_one_that_always_did_does_not() {
        let (ok, out) = step(&failing(4000, 0), Input::Applied).unwrap();
        assert_eq!((ok.apply, out.len()), (Apply::Ok, 1));
        let (ok, out) = step(&Life::default(), Input::Applied).unwrap();
        assert_eq!((ok.apply, out), (Apply::Ok, vec![]));
    }
}
