//! Byte ranges of a volume, as `(offset, length)`: the regions diverged writes and
//! resyncs are about.

/// Sorted, with overlapping and touching ranges merged, empty ones dropped.
pub fn merge(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.retain(|r| r.1 > 0);
    ranges.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (off, len) in ranges {
        let end = off.saturating_add(len);
        match out.last_mut() {
            Some((o, l)) if *o + *l >= off => *l = (*l).max(end - *o),
            _ => out.push((off, len)),
        }
    }
    out
}

/// The total length.
pub fn total(ranges: &[(u64, u64)]) -> u64 {
    ranges.iter().map(|r| r.1).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_overlaps_and_neighbours_and_sorts() {
        assert_eq!(
            merge(vec![(10, 5), (0, 4), (4, 2), (12, 10), (40, 0), (30, 1)]),
            vec![(0, 6), (10, 12), (30, 1)]
        );
        assert_eq!(total(&[(0, 6), (10, 12)]), 18);
        assert!(merge(vec![]).is_empty());
    }
}
