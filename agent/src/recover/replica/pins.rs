//! Pins: points in history held by a checkpoint view (export) or a test; aging never
//! passes the oldest.

use super::*;

/// Checkpoint views' holds on history, and the apply's floor: the highest sequence an
/// apply may have reached. A pin below the floor is refused, and an apply never passes
/// the lowest pin; both are decided under this one lock, so neither can overtake the other.
#[derive(Debug, Default)]
pub(super) struct Pins {
    pub(super) held: BTreeMap<u64, usize>,
    pub(super) floor: u64,
}

/// A point held in history (see [`Replica::pin`]).
#[derive(Debug)]
pub struct Pin {
    replica: Arc<Replica>,
    pub seq: u64,
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut pins = self.replica.pins.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = pins.held.get_mut(&self.seq) {
            *n -= 1;
            if *n == 0 {
                pins.held.remove(&self.seq);
            }
        }
    }
}

impl Replica {
    /// Holds `seq`: nothing at or past it is applied until the pin is dropped.
    pub fn pin(self: &Arc<Self>, seq: u64) -> Result<Pin, AgentError> {
        let mut pins = self.pins.lock().unwrap_or_else(|e| e.into_inner());
        if seq < pins.floor {
            return Err(AgentError::Refused(format!(
                "seq {seq} is older than the oldest point still in history ({}); `ferry checkpoint list` shows what remains",
                pins.floor
            )));
        }
        *pins.held.entry(seq).or_default() += 1;
        Ok(Pin {
            replica: self.clone(),
            seq,
        })
    }

    /// Whether any point is held (a checkpoint view or a test uses this replica).
    pub fn is_pinned(&self) -> bool {
        !self.pins.lock().unwrap_or_else(|e| e.into_inner()).held.is_empty()
    }
}
