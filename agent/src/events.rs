//! Events: what an operator should hear about a VPG or a replica, kept in a bounded log
//! per object, and log lines kept to a bounded rate.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::clock::now_ms;

/// Events kept in memory per VPG or replica for `vpg show` and `replica show`.
pub const EVENTS_KEPT: usize = 200;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    pub unix_ms: u64,
    pub message: String,
}

/// The recent events of a VPG or a replica: at most [`EVENTS_KEPT`], a repeat of the last
/// one is not added.
#[derive(Debug, Default)]
pub struct EventLog(Mutex<VecDeque<Event>>);

impl EventLog {
    /// Adds an event unless it repeats the last one; says whether it was added.
    pub fn push(&self, message: String) -> bool {
        let mut ev = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if ev.back().is_some_and(|last| last.message == message) {
            return false;
        }
        if ev.len() == EVENTS_KEPT {
            ev.pop_front();
        }
        ev.push_back(Event {
            unix_ms: now_ms(),
            message,
        });
        true
    }

    pub fn list(&self) -> Vec<Event> {
        self.0
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
