//! The history index of one volume: which records overlap a range, in the manner of a
//! log-structured merge tree. Records arrive in sequence order and leave in sequence order
//! (aging applies the oldest first), so:
//! - new records are appended to a small unsorted stage; a full stage is sorted by
//!   (offset, seq) into a run, and a run at least half the size of the one before it is
//!   merged into it, so there are O(log n) runs and each record is copied O(log n) times,
//!   in streaming passes (a per-record tree insert was a quarter of the recovery agent's
//!   CPU at 50k writes/s);
//! - removal raises a floor: records below it are dead, skipped by lookups and dropped by
//!   merges; when the dead outnumber the live, everything is merged once.

use super::{Rec, SMALL_BYTES_MAX};

/// Records staged before they are sorted into a run.
const STAGE: usize = 1024;

#[derive(Debug, Default)]
pub(super) struct VolumeIndex {
    /// Sorted by (offset, seq); each at most about twice the size of the next.
    runs: Vec<Vec<Rec>>,
    staged: Vec<Rec>,
    /// Records longer than [`SMALL_BYTES_MAX`] (few): kept apart so a lookup needs to look
    /// back only that far in the runs.
    big: Vec<Rec>,
    /// Every record of this volume below this sequence number was removed.
    floor: u64,
    /// Records in `runs` and `staged`, dead ones included.
    held: usize,
    live: usize,
}

fn key(r: &Rec) -> (u64, u64) {
    (r.offset, r.seq)
}

impl VolumeIndex {
    pub(super) fn insert(&mut self, r: Rec) {
        if r.length > SMALL_BYTES_MAX {
            self.big.push(r);
            return;
        }
        self.staged.push(r);
        self.held += 1;
        self.live += 1;
        if self.staged.len() >= STAGE {
            self.seal_stage();
        }
    }

    /// Removes `r`, which must be this volume's oldest record.
    pub(super) fn remove_oldest(&mut self, r: &Rec) {
        debug_assert!(r.seq >= self.floor, "records leave in sequence order");
        self.floor = r.seq + 1;
        if r.length > SMALL_BYTES_MAX {
            self.big.retain(|x| x.seq != r.seq);
            return;
        }
        self.live -= 1;
        if self.held - self.live > self.live.max(STAGE) {
            self.compact();
        }
    }

    /// Records overlapping `off .. off+len` with `seq < below`, in sequence order.
    pub(super) fn overlapping(&self, off: u64, len: u64, below: u64) -> Vec<Rec> {
        let end = off + len;
        let hit = |r: &Rec| r.seq >= self.floor && r.seq < below && r.offset < end && r.offset + r.length > off;
        let from = (off.saturating_sub(SMALL_BYTES_MAX), 0);
        let mut out: Vec<Rec> = Vec::new();
        for run in &self.runs {
            let start = run.partition_point(|r| key(r) < from);
            out.extend(run[start..].iter().take_while(|r| r.offset < end).filter(|r| hit(r)));
        }
        out.extend(self.staged.iter().chain(&self.big).filter(|r| hit(r)));
        out.sort_by_key(|r| r.seq);
        out
    }

    fn seal_stage(&mut self) {
        let mut run = std::mem::take(&mut self.staged);
        run.sort_unstable_by_key(key);
        self.runs.push(run);
        while let [.., a, b] = &self.runs[..]
            && a.len() <= 2 * b.len()
        {
            let b = self.runs.pop().expect("two runs");
            let a = self.runs.pop().expect("two runs");
            let merged = self.merge(a, b);
            self.runs.push(merged);
        }
    }

    /// Merges two sorted runs, dropping dead records.
    fn merge(&mut self, a: Vec<Rec>, b: Vec<Rec>) -> Vec<Rec> {
        let floor = self.floor;
        let mut out = Vec::with_capacity(a.len() + b.len());
        let (mut i, mut j) = (a.into_iter().peekable(), b.into_iter().peekable());
        loop {
            let next = match (i.peek(), j.peek()) {
                (Some(x), Some(y)) => {
                    if key(x) <= key(y) {
                        i.next()
                    } else {
                        j.next()
                    }
                }
                (Some(_), None) => i.next(),
                (None, Some(_)) => j.next(),
                (None, None) => break,
            };
            match next {
                Some(r) if r.seq >= floor => out.push(r),
                Some(_) => self.held -= 1,
                None => break,
            }
        }
        out
    }

    /// Merges every run and the stage into one, without the dead.
    fn compact(&mut self) {
        let floor = self.floor;
        let mut all: Vec<Rec> = std::mem::take(&mut self.runs).into_iter().flatten().collect();
        all.append(&mut self.staged);
        all.retain(|r| r.seq >= floor);
        all.sort_unstable_by_key(key);
        self.held = all.len();
        self.live = all.len();
        if !all.is_empty() {
            self.runs.push(all);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_proto::records::RecordKind;
    use proptest::prelude::*;

    fn rec(seq: u64, offset: u64, length: u64) -> Rec {
        Rec {
            seq,
            kind: RecordKind::Write,
            volume: 0,
            offset,
            length,
            segment: 0,
            data_pos: 0,
            received_ms: 0,
        }
    }

    proptest! {
        /// Against a plain list: the same records overlap every range, in the same order,
        /// while records come and go (in sequence order, as history does).
        #[test]
        fn index_answers_like_a_list(
            ops in proptest::collection::vec((0u64..64, 1u64..24, 0u8..4), 1..6000),
            probes in proptest::collection::vec((0u64..80, 1u64..40, 0u64..7000), 8),
        ) {
            let unit = 64 * 1024;
            let mut index = VolumeIndex::default();
            let mut list: std::collections::VecDeque<Rec> = Default::default();
            for (seq, &(off, len, op)) in ops.iter().enumerate() {
                // Mostly small writes; a few past SMALL_BYTES_MAX.
                let r = rec(seq as u64, off * unit, if op == 3 && len > 20 { 2 << 20 } else { len * 4096 });
                index.insert(r);
                list.push_back(r);
                if op == 0 && list.len() > 3 {
                    let old = list.pop_front().expect("not empty");
                    index.remove_oldest(&old);
                }
                if seq % 997 == 0 {
                    for &(po, pl, below) in &probes {
                        let (o, l) = (po * unit / 2, pl * 4096);
                        let want: Vec<u64> = list.iter()
                            .filter(|r| r.seq < below && r.offset < o + l && r.offset + r.length > o)
                            .map(|r| r.seq).collect();
                        let got: Vec<u64> = index.overlapping(o, l, below).iter().map(|r| r.seq).collect();
                        prop_assert_eq!(got, want);
                    }
                }
            }
            prop_assert!(index.held <= 2 * index.live.max(STAGE) + STAGE, "dead records are dropped");
        }
    }
}
