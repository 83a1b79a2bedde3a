//! A VPG's state as one explicit machine. No I/O and no clock: [`step`] takes the state and
//! an input and returns the new state and the actions to take (persist it, raise an
//! event); [`shown`] reads the state an operator sees from the machine and the live
//! conditions, without changing anything.
//!
//! The machine holds what a VPG goes through and must remember across restarts (its sync
//! lifecycle and whether an operator paused it). The conditions that come and go by
//! themselves (the journal ran full, a datastore failed, the peer refused, the RPO passed
//! its target) are inputs to [`shown`], each owned where it arises.
//!
//! | from | input | to | actions |
//! |---|---|---|---|
//! | initializing | initial-read(seq) | initializing, read up to seq | – |
//! | initializing, read up to s | acked(a ≥ s) | in sync | persist, event |
//! | delta-sync | delta-compared | initializing (the differing regions are sent) | persist, event |
//! | not paused | pause | paused | persist, event |
//! | paused | resume | not paused | persist, event |
//! | any | fence(e ≥ epoch, why) | fenced at e | persist, event |
//! | fenced | unfence(e ≥ epoch) | not fenced, at e (split brain over: kept here) | persist, event |
//! | any | split-brain(e ≥ epoch, bytes, why) | fenced at e, split brain | persist, event |
//! | split brain at e | settle(e) | fenced at e, settled at e (its writes salvaged) | persist, event |
//!
//! Every other pair is refused with the reason (pausing a paused VPG, a delta comparison
//! ending when none runs, …), except acknowledgements, which are facts: one that changes
//! nothing is no transition.

use serde::{Deserialize, Serialize};

/// The states DESIGN.md names; what `vpg show` and `status` report as `state_kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum VpgState {
    Initializing,
    Protecting,
    BitmapSync,
    DeltaSync,
    Paused,
    Error,
    Testing,
    FailingOver,
    NeedsCommit,
    Fenced,
    SplitBrain,
}

impl VpgState {
    pub fn name(self) -> &'static str {
        match self {
            VpgState::Initializing => "initializing",
            VpgState::Protecting => "protecting",
            VpgState::BitmapSync => "bitmap-sync",
            VpgState::DeltaSync => "delta-sync",
            VpgState::Paused => "paused",
            VpgState::Error => "error",
            VpgState::Testing => "testing",
            VpgState::FailingOver => "failing-over",
            VpgState::NeedsCommit => "needs-commit",
            VpgState::Fenced => "fenced",
            VpgState::SplitBrain => "split-brain",
        }
    }
}

/// Where a VPG is in its sync lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SyncPhase {
    /// Every block is being read into the journal and shipped (a new VPG).
    Initializing,
    /// A pre-seeded replica's regions are being compared; only those that differ travel.
    DeltaSync,
    /// The recovery site holds every block; only writes travel.
    InSync,
}

/// The machine: what a VPG remembers across restarts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Lifecycle {
    pub sync: SyncPhase,
    pub paused: bool,
    /// During the initial sync, the journal's sequence once every block was read into
    /// it; the sync is done when the recovery site acknowledges it. Worked out again
    /// after a restart (a new journal starts its sequence again).
    #[serde(skip)]
    pub initial_end_seq: Option<u64>,
    /// The VPG runs at its recovery site since a live failover: writes here are refused
    /// with this reason (reads go on), and nothing more is captured. Survives restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fenced: Option<String>,
    /// The epoch taken from the recovery site by a fence or an unfence (0: the one the
    /// VPG was created with).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub epoch: u64,
    /// Fenced by a failover this site was not there for, after it had taken writes the
    /// recovery site never received: replication stops until an operator settles it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_brain: Option<SplitBrain>,
    /// The epoch of a split brain settled for the other site: this site's diverged writes
    /// were salvaged, and a resync from there may overwrite them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settled: Option<u64>,
    /// (epoch, the journal sequence at which it began here), the newest
    /// [`crate::meta::EPOCHS_KEPT`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub epochs: Vec<(u64, u64)>,
}

/// Both sites took writes after a failover that one of them was not there for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SplitBrain {
    /// The epoch the other site took.
    pub epoch: u64,
    /// Written here and never received there, when it was found.
    pub bytes: u64,
    /// The other site holds this site's records below this sequence.
    #[serde(default)]
    pub from_seq: u64,
    /// Written at the other site since its failover, as it said.
    #[serde(default)]
    pub there_bytes: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Lifecycle {
    /// A VPG just created: `protected` (it has a recovery site), `preseeded` (the recovery
    /// site's replica was seeded out of band, so a delta sync replaces the initial one).
    pub fn new(protected: bool, preseeded: bool) -> Lifecycle {
        Lifecycle {
            sync: match (protected, preseeded) {
                (false, _) => SyncPhase::InSync,
                (true, false) => SyncPhase::Initializing,
                (true, true) => SyncPhase::DeltaSync,
            },
            paused: false,
            initial_end_seq: None,
            fenced: None,
            epoch: 0,
            split_brain: None,
            settled: None,
            epochs: Vec::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    /// Every block was read into the journal; its next sequence is `next_seq`.
    InitialRead {
        next_seq: u64,
    },
    /// The recovery site holds every record below `acked_seq`.
    Acked {
        acked_seq: u64,
    },
    /// The delta sync's comparison is over (the differing regions are being sent).
    DeltaCompared,
    Pause,
    Resume,
}

/// The recovery site's word on a live failover (an input of its own: it carries a reason).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fencing {
    /// The VPG now runs at the recovery site at `epoch`.
    Fence { epoch: u64, why: String },
    /// The failover was rolled back: writes are taken again, at `epoch`.
    Unfence { epoch: u64 },
    /// A fence from a failover this site was not there for, while it holds `bytes` of
    /// writes the recovery site never received.
    SplitBrain {
        epoch: u64,
        bytes: u64,
        from_seq: u64,
        there_bytes: u64,
        why: String,
    },
    /// An operator kept the other site's side: this site's diverged writes were salvaged.
    Settle { epoch: u64 },
}

/// What a fence at `epoch` that answers this site's open (the failover happened without
/// it) does, given the bytes of writes here at or past what the recovery site holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissedFence {
    /// Fenced already at that epoch or a newer one: the answer stands.
    Stands,
    /// No write the recovery site lacks: a plain fence.
    Fence,
    /// Writes here it never received, while it took the VPG over: split brain.
    SplitBrain(u64),
    /// Reported before: the bytes of the split brain, or 0 once settled for the other site.
    Report(u64),
}

pub fn on_missed_fence(state: &Lifecycle, epoch: u64, unshipped_bytes: u64) -> MissedFence {
    if let Some(b) = state.split_brain.as_ref().filter(|b| b.epoch == epoch) {
        return MissedFence::Report(b.bytes);
    }
    if state.settled == Some(epoch) {
        return MissedFence::Report(0);
    }
    if state.fenced.is_some() && state.epoch >= epoch {
        return MissedFence::Stands;
    }
    if unshipped_bytes > 0 {
        MissedFence::SplitBrain(unshipped_bytes)
    } else {
        MissedFence::Fence
    }
}

/// Fencing's transition: the new state and what to do, or why it is refused (an epoch
/// older than the one held: a stale message).
pub fn fence_step(state: &Lifecycle, input: Fencing) -> Result<(Lifecycle, Vec<Action>), String> {
    let mut next = state.clone();
    let (epoch, event) = match input {
        Fencing::Fence { epoch, why } => {
            let event = format!("fenced at epoch {epoch}: {why}. Reads go on; writes are refused");
            next.fenced = Some(why);
            (epoch, event)
        }
        Fencing::Unfence { epoch } => {
            if state.fenced.is_none() {
                next.epoch = state.epoch.max(epoch);
                return Ok((
                    next.clone(),
                    if next == *state { vec![] } else { vec![Action::Persist] },
                ));
            }
            next.fenced = None;
            next.split_brain = None;
            (
                epoch,
                format!(
                    "unfenced at epoch {epoch}: the failover was rolled back; writes are taken and replication resumes"
                ),
            )
        }
        Fencing::SplitBrain {
            epoch,
            bytes,
            from_seq,
            there_bytes,
            why,
        } => {
            let event = format!(
                "split brain since epoch {epoch}: {} written here, {} there (the recovery site took the VPG over; it never received these writes); replication stops and nothing is overwritten. Writes here are refused ({why}). Settle it with `ferry vpg resolve VPG --keep here|peer`",
                crate::size::human(bytes),
                crate::size::human(there_bytes)
            );
            next.fenced = Some(why);
            next.split_brain = Some(SplitBrain {
                epoch,
                bytes,
                from_seq,
                there_bytes,
            });
            next.settled = None;
            (epoch, event)
        }
        Fencing::Settle { epoch } => {
            if state.split_brain.as_ref().map(|b| b.epoch) != Some(epoch) {
                return Err(format!("there is no split brain at epoch {epoch} here"));
            }
            next.split_brain = None;
            next.settled = Some(epoch);
            (
                epoch,
                format!(
                    "split brain of epoch {epoch} settled for the other site: this site's diverged writes were salvaged (`ferry vpg diverged`), and a resync from there may overwrite them"
                ),
            )
        }
    };
    if epoch < state.epoch {
        return Err(format!("epoch {epoch} is older than this VPG's {}", state.epoch));
    }
    next.epoch = epoch;
    Ok((next, vec![Action::Persist, Action::Event(event)]))
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Write the new state to disk.
    Persist,
    /// Tell the operator.
    Event(String),
}

/// The transition function: the new state and what to do, or why `input` is refused.
pub fn step(state: &Lifecycle, input: Input) -> Result<(Lifecycle, Vec<Action>), String> {
    let mut next = state.clone();
    let mut actions = Vec::new();
    match input {
        Input::InitialRead { next_seq } => {
            if state.sync != SyncPhase::Initializing {
                return Err("the initial sync is over: nothing more to read".into());
            }
            if state.initial_end_seq.is_some() {
                return Err("the initial sync has already read every block".into());
            }
            next.initial_end_seq = Some(next_seq.max(1));
        }
        Input::Acked { acked_seq } => match (state.sync, state.initial_end_seq) {
            (SyncPhase::Initializing, Some(end)) if acked_seq >= end => {
                next.sync = SyncPhase::InSync;
                next.initial_end_seq = None;
                actions.push(Action::Persist);
                actions.push(Action::Event(
                    "initial sync done: the recovery site holds every block; from now on only writes are shipped"
                        .into(),
                ));
            }
            _ => {}
        },
        Input::DeltaCompared => {
            if state.sync != SyncPhase::DeltaSync {
                return Err("no delta sync is running".into());
            }
            // What differs is read into the journal now: the sync ends, as an initial one
            // does, when the recovery site holds it.
            next.sync = SyncPhase::Initializing;
            next.initial_end_seq = None;
            actions.push(Action::Persist);
        }
        Input::Pause => {
            if state.paused {
                return Err("it is already paused (`ferry vpg resume` resumes it)".into());
            }
            next.paused = true;
            actions.push(Action::Persist);
            actions.push(Action::Event(
                "paused: nothing is shipped until `ferry vpg resume`".into(),
            ));
        }
        Input::Resume => {
            if !state.paused {
                return Err("it is not paused".into());
            }
            next.paused = false;
            actions.push(Action::Persist);
            actions.push(Action::Event("resumed".into()));
        }
    }
    Ok((next, actions))
}

/// What comes and goes by itself, read when the state is shown.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Live {
    /// The VPG has a recovery site (a local-only VPG only captures).
    pub protected: bool,
    /// The journal ran full and writes are tracked as dirty regions (or being drained).
    pub bitmap_sync: bool,
    /// A member's datastore I/O failed recently.
    pub datastore_error: bool,
    /// The recovery site refused the VPG, or it cannot be shipped.
    pub peer_error: bool,
    /// The actual RPO is within its target.
    pub meeting_sla: bool,
}

/// The state an operator sees, most pressing first: a datastore failure, a paused VPG, a
/// peer's refusal, the sync phases, dirty-region tracking, then protecting.
pub fn shown(state: &Lifecycle, live: &Live) -> VpgState {
    if state.split_brain.is_some() {
        return VpgState::SplitBrain;
    }
    if state.fenced.is_some() {
        return VpgState::Fenced;
    }
    if live.datastore_error {
        return VpgState::Error;
    }
    if !live.protected {
        return if live.bitmap_sync {
            VpgState::BitmapSync
        } else {
            VpgState::Protecting
        };
    }
    if state.paused {
        return VpgState::Paused;
    }
    if live.peer_error {
        return VpgState::Error;
    }
    match state.sync {
        SyncPhase::DeltaSync => VpgState::DeltaSync,
        SyncPhase::Initializing => VpgState::Initializing,
        SyncPhase::InSync if live.bitmap_sync => VpgState::BitmapSync,
        SyncPhase::InSync => VpgState::Protecting,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(sync: SyncPhase, paused: bool, end: Option<u64>) -> Lifecycle {
        Lifecycle {
            sync,
            paused,
            initial_end_seq: end,
            fenced: None,
            epoch: 0,
            split_brain: None,
            settled: None,
            epochs: Vec::new(),
        }
    }

    #[test]
    fn split_brain_fences_stays_until_settled_or_unfenced() {
        let s = at(SyncPhase::InSync, false, None);
        let (b, a) = fence_step(
            &s,
            Fencing::SplitBrain {
                epoch: 2,
                bytes: 3 << 20,
                from_seq: 7,
                there_bytes: 1 << 20,
                why: "runs at B".into(),
            },
        )
        .unwrap();
        assert_eq!(b.fenced.as_deref(), Some("runs at B"));
        assert_eq!(
            b.split_brain,
            Some(SplitBrain {
                epoch: 2,
                from_seq: 7,
                bytes: 3 << 20,
                there_bytes: 1 << 20
            })
        );
        assert!(
            events(&a)[0].starts_with("split brain since epoch 2: 3.0 MiB written here, 1.0 MiB there"),
            "{a:?}"
        );
        assert_eq!(shown(&b, &Live::default()), VpgState::SplitBrain);
        // Settling another epoch's split brain is refused.
        assert!(fence_step(&b, Fencing::Settle { epoch: 3 }).is_err());
        let (k, _) = fence_step(&b, Fencing::Settle { epoch: 2 }).unwrap();
        assert_eq!(
            (k.split_brain.clone(), k.settled, k.fenced.is_some()),
            (None, Some(2), true)
        );
        assert_eq!(shown(&k, &Live::default()), VpgState::Fenced);
        assert!(fence_step(&k, Fencing::Settle { epoch: 2 }).is_err());
        // Kept here instead: the other site rolled back and unfenced this one.
        let (u, _) = fence_step(&b, Fencing::Unfence { epoch: 2 }).unwrap();
        assert_eq!((u.split_brain, u.fenced), (None, None));
    }

    #[test]
    fn fencing_persists_tells_and_never_goes_back_an_epoch() {
        let s = at(SyncPhase::InSync, false, None);
        let (f, a) = fence_step(
            &s,
            Fencing::Fence {
                epoch: 2,
                why: "runs at B".into(),
            },
        )
        .unwrap();
        assert_eq!((f.fenced.as_deref(), f.epoch), (Some("runs at B"), 2));
        assert_eq!(a[0], Action::Persist);
        assert!(events(&a)[0].starts_with("fenced at epoch 2: runs at B"));
        assert_eq!(shown(&f, &Live::default()), VpgState::Fenced);
        // A stale fence or unfence (an older epoch) is refused and changes nothing.
        assert!(fence_step(&f, Fencing::Unfence { epoch: 1 }).is_err());
        assert!(
            fence_step(
                &f,
                Fencing::Fence {
                    epoch: 1,
                    why: String::new()
                }
            )
            .is_err()
        );
        let (u, a) = fence_step(&f, Fencing::Unfence { epoch: 3 }).unwrap();
        assert_eq!((u.fenced.clone(), u.epoch), (None, 3));
        assert!(events(&a)[0].starts_with("unfenced at epoch 3"));
        // An unfence of a VPG that is not fenced takes the epoch, silently.
        let (u2, a) = fence_step(&u, Fencing::Unfence { epoch: 4 }).unwrap();
        assert_eq!((u2.epoch, a), (4, vec![Action::Persist]));
        let (_, a) = fence_step(&u2, Fencing::Unfence { epoch: 4 }).unwrap();
        assert!(a.is_empty(), "nothing new: nothing to persist");
    }

    fn events(a: &[Action]) -> Vec<&str> {
        a.iter()
            .filter_map(|a| match a {
                Action::Event(e) => Some(e.as_str()),
                Action::Persist => None,
            })
            .collect()
    }

    #[test]
    fn a_new_vpg_starts_where_its_recovery_site_stands() {
        assert_eq!(Lifecycle::new(false, false).sync, SyncPhase::InSync);
        assert_eq!(Lifecycle::new(true, false).sync, SyncPhase::Initializing);
        assert_eq!(Lifecycle::new(true, true).sync, SyncPhase::DeltaSync);
    }

    #[test]
    fn the_initial_sync_ends_when_what_was_read_is_acknowledged() {
        let s = at(SyncPhase::Initializing, false, None);
        let (s, a) = step(&s, Input::InitialRead { next_seq: 40 }).unwrap();
        assert_eq!((s.initial_end_seq, a.len()), (Some(40), 0));
        let (same, a) = step(&s, Input::Acked { acked_seq: 39 }).unwrap();
        assert_eq!((&same, a.len()), (&s, 0), "not yet: one record is missing");
        let (done, a) = step(&s, Input::Acked { acked_seq: 40 }).unwrap();
        assert_eq!(done, at(SyncPhase::InSync, false, None));
        assert_eq!(a[0], Action::Persist);
        assert!(events(&a)[0].starts_with("initial sync done"));
    }

    #[test]
    fn an_empty_journal_needs_one_record_acknowledged() {
        let s = at(SyncPhase::Initializing, false, None);
        let (s, _) = step(&s, Input::InitialRead { next_seq: 0 }).unwrap();
        assert_eq!(s.initial_end_seq, Some(1));
    }

    #[test]
    fn the_initial_sync_goes_on_while_paused() {
        let s = at(SyncPhase::Initializing, true, Some(5));
        let (s, _) = step(&s, Input::Acked { acked_seq: 5 }).unwrap();
        assert_eq!(s, at(SyncPhase::InSync, true, None));
    }

    #[test]
    fn a_delta_comparison_ends_like_an_initial_sync_once_the_differences_are_held() {
        let (s, a) = step(&at(SyncPhase::DeltaSync, false, None), Input::DeltaCompared).unwrap();
        assert_eq!(s.sync, SyncPhase::Initializing);
        assert_eq!(a, vec![Action::Persist], "the capture's drain tells what differs");
        let (s, _) = step(&s, Input::InitialRead { next_seq: 7 }).unwrap();
        let (s, _) = step(&s, Input::Acked { acked_seq: 7 }).unwrap();
        assert_eq!(s.sync, SyncPhase::InSync);
    }

    #[test]
    fn pause_and_resume_each_persist_and_tell() {
        for sync in [SyncPhase::Initializing, SyncPhase::DeltaSync, SyncPhase::InSync] {
            let (p, a) = step(&at(sync, false, None), Input::Pause).unwrap();
            assert_eq!((p.paused, p.sync), (true, sync));
            assert_eq!(a[0], Action::Persist);
            assert!(events(&a)[0].starts_with("paused"));
            let (r, a) = step(&p, Input::Resume).unwrap();
            assert_eq!((r.paused, r.sync), (false, sync));
            assert_eq!(events(&a), vec!["resumed"]);
        }
    }

    #[test]
    fn acknowledgements_outside_the_initial_sync_change_nothing() {
        for s in [
            at(SyncPhase::InSync, false, None),
            at(SyncPhase::DeltaSync, true, None),
            at(SyncPhase::Initializing, false, None), // nothing read yet
        ] {
            let (same, a) = step(&s, Input::Acked { acked_seq: u64::MAX }).unwrap();
            assert_eq!((same, a), (s, vec![]));
        }
    }

    #[test]
    fn refused_transitions_say_why() {
        let refused = [
            (
                at(SyncPhase::InSync, false, None),
                Input::InitialRead { next_seq: 3 },
                "initial sync is over",
            ),
            (
                at(SyncPhase::DeltaSync, false, None),
                Input::InitialRead { next_seq: 3 },
                "initial sync is over",
            ),
            (
                at(SyncPhase::Initializing, false, Some(3)),
                Input::InitialRead { next_seq: 9 },
                "already read",
            ),
            (
                at(SyncPhase::InSync, false, None),
                Input::DeltaCompared,
                "no delta sync",
            ),
            (
                at(SyncPhase::Initializing, false, None),
                Input::DeltaCompared,
                "no delta sync",
            ),
            (at(SyncPhase::InSync, true, None), Input::Pause, "already paused"),
            (at(SyncPhase::InSync, false, None), Input::Resume, "not paused"),
        ];
        for (s, input, why) in refused {
            let e = step(&s, input).unwrap_err();
            assert!(e.contains(why), "{s:?} + {input:?}: {e}");
        }
    }

    #[test]
    fn the_state_shown_puts_the_most_pressing_first() {
        let live = |f: fn(&mut Live)| {
            let mut l = Live {
                protected: true,
                meeting_sla: true,
                ..Live::default()
            };
            f(&mut l);
            l
        };
        let in_sync = at(SyncPhase::InSync, false, None);
        assert_eq!(shown(&in_sync, &live(|_| {})), VpgState::Protecting);
        assert_eq!(shown(&in_sync, &live(|l| l.meeting_sla = false)), VpgState::Protecting);
        assert_eq!(shown(&in_sync, &live(|l| l.bitmap_sync = true)), VpgState::BitmapSync);
        assert_eq!(shown(&in_sync, &live(|l| l.peer_error = true)), VpgState::Error);
        let paused = at(SyncPhase::InSync, true, None);
        assert_eq!(shown(&paused, &live(|l| l.peer_error = true)), VpgState::Paused);
        assert_eq!(shown(&paused, &live(|l| l.datastore_error = true)), VpgState::Error);
        let init = at(SyncPhase::Initializing, false, None);
        assert_eq!(shown(&init, &live(|l| l.bitmap_sync = true)), VpgState::Initializing);
        assert_eq!(
            shown(&at(SyncPhase::DeltaSync, false, None), &live(|_| {})),
            VpgState::DeltaSync
        );
        let local = Live::default();
        assert_eq!(shown(&init, &local), VpgState::Protecting, "a local VPG only captures");
        assert_eq!(
            shown(
                &init,
                &Live {
                    bitmap_sync: true,
                    ..local
                }
            ),
            VpgState::BitmapSync
        );
    }

    #[test]
    fn the_state_persists_without_the_sequence_of_this_run() {
        let s = at(SyncPhase::Initializing, true, Some(12));
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(text, r#"{"sync":"initializing","paused":true}"#);
        let back: Lifecycle = serde_json::from_str(&text).unwrap();
        assert_eq!(back, at(SyncPhase::Initializing, true, None));
    }
}
