//! What an export served: requests, bytes and errors by kind, and how long requests took,
//! counted with relaxed atomics (no lock on the data path) and read whenever asked.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::request::Op;

/// The kinds of request counted apart.
pub const KINDS: [&str; 7] = [
    "read",
    "write",
    "flush",
    "trim",
    "write_zeroes",
    "cache",
    "block_status",
];

/// The upper bounds of the latency histogram's buckets, in seconds (the last bucket is
/// everything above): 16 µs to 4 s, each four times the one before.
pub const LATENCY_BOUNDS_S: [f64; 10] = [
    16e-6, 64e-6, 256e-6, 1.024e-3, 4.096e-3, 16.384e-3, 65.536e-3, 262.144e-3, 1.048576, 4.194304,
];

#[derive(Debug, Default)]
struct Kind {
    requests: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
}

/// Counters of one export, shared by all its connections.
#[derive(Debug, Default)]
pub struct OpStats {
    kinds: [Kind; KINDS.len()],
    /// Requests per latency bucket (not cumulative), the last for those above every bound.
    buckets: [AtomicU64; LATENCY_BOUNDS_S.len() + 1],
    latency_ns_sum: AtomicU64,
}

/// A reading of one kind's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KindReading {
    pub kind: &'static str,
    pub requests: u64,
    pub bytes: u64,
    pub errors: u64,
}

/// A reading of the latency histogram: requests per bucket (not cumulative), each with its
/// upper bound, the last one infinite.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyReading {
    pub sum_s: f64,
    pub count: u64,
    pub buckets: Vec<(f64, u64)>,
}

fn kind_index(op: &Op) -> Option<usize> {
    Some(match op {
        Op::Read { .. } => 0,
        Op::Write { .. } => 1,
        Op::Flush => 2,
        Op::Trim { .. } => 3,
        Op::WriteZeroes { .. } => 4,
        Op::Cache { .. } => 5,
        Op::BlockStatus { .. } => 6,
        Op::Disc => return None,
    })
}

impl OpStats {
    /// Counts one request: `bytes` of data it carried or asked for (reads and writes; the
    /// range for the others), whether it failed, and how long it took.
    pub fn record(&self, op: &Op, failed: bool, took: Duration) {
        let Some(i) = kind_index(op) else {
            return;
        };
        let k = &self.kinds[i];
        k.requests.fetch_add(1, Ordering::Relaxed);
        k.bytes.fetch_add(op.range().1, Ordering::Relaxed);
        if failed {
            k.errors.fetch_add(1, Ordering::Relaxed);
        }
        let s = took.as_secs_f64();
        let b = LATENCY_BOUNDS_S
            .iter()
            .position(|&bound| s <= bound)
            .unwrap_or(LATENCY_BOUNDS_S.len());
        self.buckets[b].fetch_add(1, Ordering::Relaxed);
        self.latency_ns_sum
            .fetch_add(took.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
    }

    pub fn kinds(&self) -> Vec<KindReading> {
        KINDS
            .iter()
            .zip(&self.kinds)
            .map(|(kind, k)| KindReading {
                kind,
                requests: k.requests.load(Ordering::Relaxed),
                bytes: k.bytes.load(Ordering::Relaxed),
                errors: k.errors.load(Ordering::Relaxed),
            })
            .collect()
    }

    pub fn latency(&self) -> LatencyReading {
        let buckets: Vec<(f64, u64)> = self
            .buckets
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let bound = LATENCY_BOUNDS_S.get(i).copied().unwrap_or(f64::INFINITY);
                (bound, b.load(Ordering::Relaxed))
            })
            .collect();
        LatencyReading {
            sum_s: self.latency_ns_sum.load(Ordering::Relaxed) as f64 / 1e9,
            count: buckets.iter().map(|b| b.1).sum(),
            buckets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_land_in_their_kind_and_bucket() {
        let s = OpStats::default();
        let w = Op::Write {
            offset: 0,
            len: 4096,
            fua: false,
        };
        s.record(&w, false, Duration::from_micros(10));
        s.record(&w, true, Duration::from_micros(100));
        s.record(&Op::Flush, false, Duration::from_secs(10));
        s.record(&Op::Disc, false, Duration::ZERO);
        let k = s.kinds();
        assert_eq!(
            k[1],
            KindReading {
                kind: "write",
                requests: 2,
                bytes: 8192,
                errors: 1
            }
        );
        assert_eq!(k[2].requests, 1);
        let l = s.latency();
        assert_eq!(l.count, 3);
        assert_eq!(l.buckets[0], (16e-6, 1));
        assert_eq!(l.buckets[1], (64e-6, 0));
        assert_eq!(l.buckets[2], (256e-6, 1));
        assert_eq!(*l.buckets.last().unwrap(), (f64::INFINITY, 1));
        assert!((l.sum_s - 10.00011).abs() < 1e-9);
    }
}
