//! Events: what an operator should hear about a VPG or a replica, kept in a bounded log
//! per object, published to the agent's live stream (the API's Server-Sent Events), counted
//! by kind (`/metrics`), and log lines kept to a bounded rate.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::clock::now_ms;

/// Events kept in memory per VPG or replica for `vpg show` and `replica show`.
pub const EVENTS_KEPT: usize = 200;

/// What an event is about, worked out from its words (events are written for people; the
/// kind sorts them for the dashboard and the metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The RPO against its target, and the throttle.
    Rpo,
    /// The link to the peer: sessions, refusals, pairing.
    Link,
    /// Initial, delta and reverse syncs.
    Sync,
    /// Failover tests, live failovers, commits, rollbacks, moves, reverse protection.
    Failover,
    SplitBrain,
    /// Diverged writes kept for salvage.
    Salvage,
    /// Journals, datastores and history: space and I/O.
    Storage,
    /// The failover plan and other settings.
    Settings,
    #[default]
    Other,
}

impl EventKind {
    pub const ALL: [EventKind; 9] = [
        EventKind::Rpo,
        EventKind::Link,
        EventKind::Sync,
        EventKind::Failover,
        EventKind::SplitBrain,
        EventKind::Salvage,
        EventKind::Storage,
        EventKind::Settings,
        EventKind::Other,
    ];

    pub fn name(self) -> &'static str {
        match self {
            EventKind::Rpo => "rpo",
            EventKind::Link => "link",
            EventKind::Sync => "sync",
            EventKind::Failover => "failover",
            EventKind::SplitBrain => "split_brain",
            EventKind::Salvage => "salvage",
            EventKind::Storage => "storage",
            EventKind::Settings => "settings",
            EventKind::Other => "other",
        }
    }

    /// The kind of an event's message; the first rule that matches decides.
    pub fn of(message: &str) -> EventKind {
        let m = message.to_lowercase();
        let has = |words: &[&str]| words.iter().any(|w| m.contains(w));
        if has(&["split brain"]) {
            EventKind::SplitBrain
        } else if has(&["salvage", "diverged"]) {
            EventKind::Salvage
        } else if has(&["plan changed", "settings changed"]) {
            EventKind::Settings
        } else if has(&[
            "failover",
            "commit",
            "rolled back",
            "rollback",
            "move",
            "reverse protection",
            "protected back",
        ]) {
            EventKind::Failover
        } else if has(&["rpo", "throttle"]) {
            EventKind::Rpo
        } else if has(&["sync", "checksum", "initial copy"]) {
            EventKind::Sync
        } else if has(&["journal", "datastore", "disk", "space", "history", "i/o"]) {
            EventKind::Storage
        } else if has(&[
            "link", "connect", "peer", "refused", "pairing", "session", "epoch", "fenced",
        ]) {
            EventKind::Link
        } else {
            EventKind::Other
        }
    }
}

/// Whether a message reports a problem or a state an operator must act on (an alert), or
/// only news.
pub fn is_alert(message: &str) -> bool {
    let m = message.to_lowercase();
    let over = [
        "back within",
        "error over",
        "resumed",
        "recovered",
        "is over",
        "below",
        "drained",
        " done",
    ];
    if over.iter().any(|w| m.contains(w)) {
        return false;
    }
    let bad = [
        "failed",
        "error",
        "refused",
        "split brain",
        "above its target",
        "not met",
        "full",
        "lost",
        "cannot",
        "stopped:",
        "gave up",
        "dropped",
        "behind",
        "live failover at",
        "throttled",
        "not kept",
        "fenced",
    ];
    bad.iter().any(|w| m.contains(w))
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Event {
    pub unix_ms: u64,
    pub message: String,
    #[serde(default)]
    pub kind: EventKind,
    /// A problem or a state to act on, not only news.
    #[serde(default)]
    pub alert: bool,
}

/// An event of a VPG or a replica, as the API lists and streams it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SourcedEvent {
    /// Counts up from 1 in each run of the agent (0: listed from a log, not streamed).
    #[serde(default)]
    pub id: u64,
    /// "vpg NAME" or "replica NAME".
    pub source: String,
    pub unix_ms: u64,
    pub message: String,
    #[serde(default)]
    pub kind: EventKind,
    #[serde(default)]
    pub alert: bool,
}

impl SourcedEvent {
    /// `e` of `source`, numbered `id` (0: listed from a log).
    pub fn of(id: u64, source: &str, e: &Event) -> SourcedEvent {
        SourcedEvent {
            id,
            source: source.to_string(),
            unix_ms: e.unix_ms,
            message: e.message.clone(),
            kind: e.kind,
            alert: e.alert,
        }
    }
}

/// The agent's live stream of events, and how many of each kind there were since the start.
#[derive(Debug)]
pub struct Hub {
    tx: tokio::sync::broadcast::Sender<SourcedEvent>,
    next_id: AtomicU64,
    counts: [AtomicU64; EventKind::ALL.len()],
}

/// Events a slow stream reader may fall behind by before it is told it missed some.
const STREAM_BACKLOG: usize = 1024;

/// The process's one hub (an agent is one process; its VPGs and replicas all publish here).
pub fn hub() -> &'static Hub {
    static HUB: OnceLock<Hub> = OnceLock::new();
    HUB.get_or_init(|| Hub {
        tx: tokio::sync::broadcast::channel(STREAM_BACKLOG).0,
        next_id: AtomicU64::new(1),
        counts: Default::default(),
    })
}

impl Hub {
    fn publish(&self, source: &str, e: &Event) {
        // `ALL` lists the kinds in their declaration order, so a kind is its own index.
        self.counts[e.kind as usize].fetch_add(1, Ordering::Relaxed);
        let _ = self.tx.send(SourcedEvent::of(
            self.next_id.fetch_add(1, Ordering::Relaxed),
            source,
            e,
        ));
    }

    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<SourcedEvent> {
        self.tx.subscribe()
    }

    /// Events of each kind since the start.
    pub fn counts(&self) -> Vec<(EventKind, u64)> {
        EventKind::ALL
            .iter()
            .zip(&self.counts)
            .map(|(k, c)| (*k, c.load(Ordering::Relaxed)))
            .collect()
    }
}

/// The recent events of a VPG or a replica: at most [`EVENTS_KEPT`], a repeat of the last
/// one is not added.
#[derive(Debug)]
pub struct EventLog {
    /// "vpg NAME" or "replica NAME".
    source: String,
    events: Mutex<VecDeque<Event>>,
}

impl EventLog {
    pub fn new(source: String) -> EventLog {
        EventLog {
            source,
            events: Mutex::new(VecDeque::new()),
        }
    }

    /// Adds an event unless it repeats the last one; says whether it was added.
    pub fn push(&self, message: String) -> bool {
        let mut ev = self.events.lock().unwrap_or_else(|e| e.into_inner());
        if ev.back().is_some_and(|last| last.message == message) {
            return false;
        }
        if ev.len() == EVENTS_KEPT {
            ev.pop_front();
        }
        let e = Event {
            unix_ms: now_ms(),
            kind: EventKind::of(&message),
            alert: is_alert(&message),
            message,
        };
        hub().publish(&self.source, &e);
        ev.push_back(e);
        true
    }

    pub fn list(&self) -> Vec<Event> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

/// Logs a refused handshake (or any repeated failure) at most once per `every`, with how
/// many were suppressed.
#[derive(Debug)]
pub struct RateLimitedLog {
    every: Duration,
    state: std::sync::Mutex<(Option<Instant>, u64)>,
}

impl RateLimitedLog {
    pub fn new(every: Duration) -> RateLimitedLog {
        RateLimitedLog {
            every,
            state: std::sync::Mutex::new((None, 0)),
        }
    }

    /// `Some(suppressed)` when this one should be logged.
    pub fn admit(&self) -> Option<u64> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match st.0 {
            Some(t) if now.duration_since(t) < self.every => {
                st.1 += 1;
                None
            }
            _ => {
                let suppressed = st.1;
                *st = (Some(now), 0);
                Some(suppressed)
            }
        }
    }
}

#[cfg(test)]
mod kind_tests {
    use super::{EventKind, is_alert};

    #[test]
    fn all_lists_the_kinds_in_their_declaration_order() {
        for (i, k) in EventKind::ALL.iter().enumerate() {
            assert_eq!(*k as usize, i, "{k:?}");
        }
    }

    #[test]
    fn messages_of_the_agent_get_their_kind_and_alert() {
        let cases = [
            ("RPO back within its target: 1.2 s (target 30 s)", EventKind::Rpo, false),
            ("RPO 45.0 s above its target of 30 s", EventKind::Rpo, true),
            (
                "journal below 50% full: draining 32.0 MiB of dirty regions",
                EventKind::Storage,
                false,
            ),
            (
                "journal full: writes are tracked as dirty regions",
                EventKind::Storage,
                true,
            ),
            (
                "initial sync done: the recovery site holds every block",
                EventKind::Sync,
                false,
            ),
            (
                "LIVE FAILOVER at checkpoint 12 (epoch 2): 2 volume(s) served",
                EventKind::Failover,
                true,
            ),
            (
                "live failover rolled back: the VPG runs at its protected site again",
                EventKind::Failover,
                false,
            ),
            (
                "split brain since epoch 2: 1.0 MiB written here, 1.0 MiB there",
                EventKind::SplitBrain,
                true,
            ),
            (
                "1.0 MiB written at the protected site after the failover's checkpoint kept for salvage",
                EventKind::Salvage,
                false,
            ),
            (
                "refused: the pairing key is not one this site accepts",
                EventKind::Link,
                true,
            ),
            (
                "failover plan changed (`ferry vpg show` lists it)",
                EventKind::Settings,
                false,
            ),
            (
                "the failover plan changed at the protected site",
                EventKind::Settings,
                false,
            ),
            ("lineage 0123 recorded", EventKind::Other, false),
        ];
        for (m, kind, alert) in cases {
            assert_eq!((EventKind::of(m), is_alert(m)), (kind, alert), "{m}");
        }
    }
}
