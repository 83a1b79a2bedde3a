//! The performance the dashboard graphs: every [`SAMPLE_EVERY_S`] seconds, each protected
//! VPG's actual RPO and the bytes per second the recovery site acknowledged, and each
//! replica's history, kept for the last hour in a ring of fixed size.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

pub const SAMPLE_EVERY_S: u64 = 10;
/// An hour of samples.
pub const SAMPLES_KEPT: usize = 360;

/// One VPG at one time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VpgSample {
    pub vpg: String,
    /// Actual RPO (protected VPGs).
    pub rpo_s: Option<f64>,
    /// Bytes per second acknowledged by the recovery site (protected VPGs).
    pub bytes_per_s: Option<f64>,
    /// History bytes held (replicas at this recovery site).
    pub history_bytes: Option<u64>,
}

/// Everything at one time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Sample {
    pub unix_ms: u64,
    pub vpgs: Vec<VpgSample>,
}

/// The samples of the last hour, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Samples {
    pub every_s: u64,
    pub samples: Vec<Sample>,
}

#[derive(Debug, Default)]
pub struct Ring(Mutex<VecDeque<Sample>>);

impl Ring {
    pub fn push(&self, s: Sample) {
        let mut r = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if r.len() == SAMPLES_KEPT {
            r.pop_front();
        }
        r.push_back(s);
    }

    pub fn all(&self) -> Samples {
        Samples {
            every_s: SAMPLE_EVERY_S,
            samples: self
                .0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .cloned()
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_last_hour() {
        let r = Ring::default();
        for i in 0..(SAMPLES_KEPT as u64 + 5) {
            r.push(Sample {
                unix_ms: i,
                vpgs: vec![],
            });
        }
        let all = r.all();
        assert_eq!(all.samples.len(), SAMPLES_KEPT);
        assert_eq!(all.samples[0].unix_ms, 5);
    }
}
