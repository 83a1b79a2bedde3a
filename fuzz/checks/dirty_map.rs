//! Dirty map files fed arbitrary bytes (a corrupt or foreign map): the header decoder and
//! opening a map (which may turn the activity log into dirty regions) give an error or a
//! map whose queries answer, never a panic; a decoded header re-encodes to the same bytes.

use ferry_journal::{DirtyMap, MapHeader, MemStorage};

pub fn run(data: &[u8]) {
    if let Ok(h) = MapHeader::decode(data) {
        assert_eq!(&h.encode()[..], &data[..64]);
    }
    // Two boots: the file's own (no activity-log replay) and another one (replay).
    for boot in [[0u8; 16], [0xff; 16]] {
        if let Ok((map, rec)) = DirtyMap::open(MemStorage(data.to_vec()), boot) {
            let h = map.header();
            let ranges = map.dirty_ranges();
            assert!(ranges.iter().all(|&(o, l)| l > 0 && o + l <= h.volume_bytes));
            if let Some((o, l)) = map.next_dirty(0, 1 << 20) {
                assert!(map.is_dirty(o, l));
            }
            assert!(rec.extents_marked <= h.extent_bits());
        }
    }
}
