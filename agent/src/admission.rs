//! Admission of connections not yet trusted: NBD clients still negotiating, replication
//! peers still in their handshake. Each kind has a [`Gate`]: a bound on how many may wait
//! in all and per source (an IP address, or a unix peer's process), so that idle or
//! stalled connections from one place cannot lock everyone else out or use up the file
//! descriptors (DESIGN.md invariant 4). Refusals are logged at a bounded rate.
//!
//! The descriptor budget: at start-up the soft `RLIMIT_NOFILE` is raised to the hard one,
//! and the connection limits are checked against it with [`FD_RESERVE`] kept back for the
//! control socket, a paired peer, journals, datastores and history segments.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::warn;

use crate::events::RateLimitedLog;

/// Descriptors kept back from connection limits for the agent's own files and sockets.
pub const FD_RESERVE: u64 = 128;

/// How many connections may wait in all, and per source.
#[derive(Debug, Clone, Copy)]
pub struct GateLimits {
    pub total_max: usize,
    pub per_source_max: usize,
}

/// Connections of one kind waiting to be trusted.
#[derive(Debug)]
pub struct Gate {
    what: &'static str,
    limits: GateLimits,
    waiting: Mutex<(usize, HashMap<String, usize>)>,
    refused: RateLimitedLog,
}

/// A connection's place at a gate; leaving (drop) frees it.
#[derive(Debug)]
pub struct Pass {
    gate: Arc<Gate>,
    source: String,
}

impl Drop for Pass {
    fn drop(&mut self) {
        let mut w = self.gate.waiting.lock().unwrap_or_else(|e| e.into_inner());
        w.0 -= 1;
        if let Some(n) = w.1.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                w.1.remove(&self.source);
            }
        }
    }
}

impl Gate {
    /// `what` names the waiting connections in logs ("NBD negotiations").
    pub fn new(what: &'static str, limits: GateLimits) -> Arc<Gate> {
        Arc::new(Gate {
            what,
            limits,
            waiting: Mutex::new((0, HashMap::new())),
            refused: RateLimitedLog::new(Duration::from_secs(10)),
        })
    }

    /// A place for a connection from `source`, or `None` (refused, and logged at most once
    /// per 10 s with the count of those not logged).
    pub fn enter(self: &Arc<Self>, source: &str) -> Option<Pass> {
        let why = {
            let mut w = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
            let here = w.1.get(source).copied().unwrap_or(0);
            if w.0 >= self.limits.total_max {
                Some(format!("{} already wait in all", w.0))
            } else if here >= self.limits.per_source_max {
                Some(format!("{here} already wait from {source}"))
            } else {
                w.0 += 1;
                *w.1.entry(source.to_string()).or_default() += 1;
                None
            }
        };
        match why {
            None => Some(Pass {
                gate: self.clone(),
                source: source.to_string(),
            }),
            Some(why) => {
                if let Some(suppressed) = self.refused.admit() {
                    warn!(
                        source,
                        suppressed,
                        total_max = self.limits.total_max,
                        per_source_max = self.limits.per_source_max,
                        "connection refused: {why} ({})",
                        self.what
                    );
                }
                None
            }
        }
    }

    /// Connections waiting now (for tests and status).
    pub fn waiting(&self) -> usize {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner()).0
    }
}

/// The source of a unix-socket peer: its process, where the kernel tells it.
pub fn unix_source(s: &tokio::net::UnixStream) -> String {
    match s.peer_cred().ok().and_then(|c| c.pid()) {
        Some(pid) => format!("unix:pid {pid}"),
        None => "unix".into(),
    }
}

/// Raises the soft descriptor limit to the hard one; returns the limit in force.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

/// Backoff after a failed `accept` (EMFILE and friends): doubles from 10 ms to 1 s while
/// failures go on, so a descriptor shortage neither spins nor floods the log.
#[derive(Debug)]
pub struct AcceptBackoff {
    next: Duration,
    log: RateLimitedLog,
}

impl Default for AcceptBackoff {
    fn default() -> Self {
        AcceptBackoff {
            next: Duration::from_millis(10),
            log: RateLimitedLog::new(Duration::from_secs(10)),
        }
    }
}

impl AcceptBackoff {
    /// A failure: logs (at a bounded rate) and returns how long to wait.
    pub fn failed(&mut self, what: &str, e: &std::io::Error) -> Duration {
        if let Some(suppressed) = self.log.admit() {
            tracing::error!(error = %e, suppressed, "{what}: accept failed (out of descriptors? see limits.connections_max and `ulimit -n`)");
        }
        let wait = self.next;
        self.next = (self.next * 2).min(Duration::from_secs(1));
        wait
    }

    /// A success: the next failure starts from the shortest wait again.
    pub fn succeeded(&mut self) {
        self.next = Duration::from_millis(10);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gate_bounds_waiters_in_all_and_per_source_and_frees_on_drop() {
        let g = Gate::new(
            "test",
            GateLimits {
                total_max: 3,
                per_source_max: 2,
            },
        );
        let a1 = g.enter("a").expect("first from a");
        let a2 = g.enter("a").expect("second from a");
        assert!(g.enter("a").is_none(), "a third from a is over the per-source bound");
        let b1 = g.enter("b").expect("b has its own share");
        assert!(g.enter("c").is_none(), "over the total");
        drop(a1);
        assert_eq!(g.waiting(), 2);
        let c1 = g.enter("c").expect("room again");
        drop((a2, b1, c1));
        assert_eq!(g.waiting(), 0);
        assert!(
            g.waiting.lock().unwrap().1.is_empty(),
            "no source is remembered once gone"
        );
    }
}
