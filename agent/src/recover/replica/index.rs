//! The history index of one volume within one segment: which records overlap a range, in
//! the manner of a log-structured merge tree. Records arrive in sequence order, so:
//! - new records are appended to a small unsorted stage; a full stage is sorted by
//!   (offset, seq) into a run, and a run at least half the size of the one before it is
//!   merged into it, so there are O(log n) runs and each record is copied O(log n) times,
//!   in streaming passes (a per-record tree insert was a quarter of the recovery agent's
//!   CPU at 50k writes/s);
//! - records never leave: a lookup skips those below the applied point it is given, and
//!   the whole index goes with its segment once every record in it is applied.

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
    /// Once finished: a bit per `1 << shift` bytes of the volume, set where a record lies,
    /// so a lookup passes by a segment that holds nothing near the range with one load
    /// (history is searched segment by segment). Empty: no filter.
    filter: Vec<u64>,
    shift: u32,
}

/// Bits of a finished index's filter: about four per record, within these bounds.
const FILTER_BITS_MIN: u64 = 1 << 12;
const FILTER_BITS_MAX: u64 = 1 << 20;

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
        if self.staged.len() >= STAGE {
            self.seal_stage();
        }
    }

    /// Sorts what is staged into one run with the others: for an index that takes no more
    /// records (a closed segment's), so lookups search runs only.
    pub(super) fn finish(&mut self) {
        if !self.staged.is_empty() {
            self.seal_stage();
        }
        while self.runs.len() > 1 {
            let b = self.runs.pop().expect("two runs");
            let a = self.runs.pop().expect("two runs");
            self.runs.push(merge(a, b));
        }
        for r in &mut self.runs {
            r.shrink_to_fit();
        }
        self.build_filter();
    }

    fn build_filter(&mut self) {
        let all = || self.runs.iter().flatten().chain(&self.big);
        let count = all().count() as u64;
        let Some(end) = all().map(|r| r.offset.saturating_add(r.length)).max() else {
            return;
        };
        let bits = (4 * count).clamp(FILTER_BITS_MIN, FILTER_BITS_MAX).next_power_of_two();
        let mut shift = 12;
        while (end >> shift) >= bits {
            shift += 1;
        }
        let mut filter = vec![0u64; bits as usize / 64];
        for r in all() {
            let (a, b) = (r.offset >> shift, (r.offset + r.length.max(1) - 1) >> shift);
            if b - a >= bits / 8 {
                return; // a record over much of the volume: the filter would pass everything
            }
            for c in a..=b {
                filter[(c / 64) as usize] |= 1 << (c % 64);
            }
        }
        self.filter = filter;
        self.shift = shift;
    }

    /// Whether the filter lets a lookup of `off .. off+len` pass by (nothing lies there).
    fn passes_by(&self, off: u64, len: u64) -> bool {
        if self.filter.is_empty() || len == 0 {
            return false;
        }
        let bits = self.filter.len() as u64 * 64;
        let (a, b) = (off >> self.shift, (off + len - 1) >> self.shift);
        if a >= bits {
            return true; // past the last record's end
        }
        !(a..=b.min(bits - 1)).any(|c| self.filter[(c / 64) as usize] & (1 << (c % 64)) != 0)
    }

    /// Bytes it holds (for the cache's budget).
    pub(super) fn bytes(&self) -> usize {
        let n: usize =
            self.runs.iter().map(Vec::capacity).sum::<usize>() + self.staged.capacity() + self.big.capacity();
        n * std::mem::size_of::<Rec>() + self.filter.capacity() * 8
    }

    /// Records overlapping `off .. off+len` with `from <= seq < below`, appended to `out`
    /// in no particular order.
    pub(super) fn overlapping(&self, off: u64, len: u64, from: u64, below: u64, out: &mut Vec<Rec>) {
        if self.passes_by(off, len) {
            return;
        }
        let end = off + len;
        let hit = |r: &Rec| r.seq >= from && r.seq < below && r.offset < end && r.offset + r.length > off;
        let start_key = (off.saturating_sub(SMALL_BYTES_MAX), 0);
        for run in &self.runs {
            let start = run.partition_point(|r| key(r) < start_key);
            out.extend(run[start..].iter().take_while(|r| r.offset < end).filter(|r| hit(r)));
        }
        out.extend(self.staged.iter().chain(&self.big).filter(|r| hit(r)));
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
            self.runs.push(merge(a, b));
        }
    }
}

/// Merges two sorted runs.
fn merge(a: Vec<Rec>, b: Vec<Rec>) -> Vec<Rec> {
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
        out.extend(next);
    }
    out
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
        /// Against a plain list: the same records overlap every range, whatever the applied
        /// point and the point of view, before and after the index is finished.
        #[test]
        fn index_answers_like_a_list(
            ops in proptest::collection::vec((0u64..64, 1u64..24, 0u8..4), 1..6000),
            probes in proptest::collection::vec((0u64..80, 1u64..40, 0u64..7000, 0u64..7000), 8),
        ) {
            let unit = 64 * 1024;
            let mut index = VolumeIndex::default();
            let mut list: Vec<Rec> = Vec::new();
            let check = |index: &VolumeIndex, list: &[Rec]| -> Result<(), TestCaseError> {
                for &(po, pl, a, b) in &probes {
                    let (o, l, from, below) = (po * unit / 2, pl * 4096, a.min(b), a.max(b));
                    let want: Vec<u64> = list.iter()
                        .filter(|r| r.seq >= from && r.seq < below && r.offset < o + l && r.offset + r.length > o)
                        .map(|r| r.seq).collect();
                    let mut got = Vec::new();
                    index.overlapping(o, l, from, below, &mut got);
                    let mut got: Vec<u64> = got.iter().map(|r| r.seq).collect();
                    got.sort_unstable();
                    prop_assert_eq!(got, want);
                }
                Ok(())
            };
            for (seq, &(off, len, op)) in ops.iter().enumerate() {
                // Mostly small writes; a few past SMALL_BYTES_MAX.
                let r = rec(seq as u64, off * unit, if op == 3 && len > 20 { 2 << 20 } else { len * 4096 });
                index.insert(r);
                list.push(r);
                if seq % 997 == 0 {
                    check(&index, &list)?;
                }
            }
            check(&index, &list)?;
            index.finish();
            prop_assert!(index.runs.len() <= 1 && index.staged.is_empty());
            check(&index, &list)?;
        }
    }
}
