//! Byte ranges of a volume, as `(offset, length)`: the regions diverged writes and
//! resyncs are about.

/// A volume's regions by volume name.
pub type ByName = std::collections::BTreeMap<String, Vec<(u64, u64)>>;
/// A VPG's volumes' regions by volume id (journal order, from 1).
pub type ById = std::collections::BTreeMap<u32, Vec<(u64, u64)>>;

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

/// Whether sorted, merged `ranges` touch `[offset, offset + len)`.
pub fn overlaps(ranges: &[(u64, u64)], offset: u64, len: u64) -> bool {
    let end = offset + len;
    // The first range ending past `offset`.
    let i = ranges.partition_point(|&(o, l)| o + l <= offset);
    ranges.get(i).is_some_and(|&(o, _)| o < end)
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
        let r = [(0, 6), (10, 12)];
        assert!(overlaps(&r, 5, 1) && overlaps(&r, 8, 3) && overlaps(&r, 21, 10));
        assert!(!overlaps(&r, 6, 4) && !overlaps(&r, 22, 5));
        assert!(merge(vec![]).is_empty());
    }
}
