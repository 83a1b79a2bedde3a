//! History segment indexes from arbitrary bytes (a damaged recovery datastore): the summary
//! and the entries decode to an error or to what lies inside the bytes, in sequence order
//! within the segment's range, never a panic.

use ferry_journal::history::index::{decode_entries, decode_summary, summary_len};

pub fn run(data: &[u8]) {
    let Ok(n) = summary_len(data) else { return };
    let Ok(s) = decode_summary(data) else { return };
    assert!(n <= data.len());
    assert!(s.first_seq <= s.next_seq);
    if let Ok(entries) = decode_entries(&s, &data[n..]) {
        assert_eq!(entries.len(), s.records as usize);
        let mut last = None;
        for e in &entries {
            assert!(e.seq >= s.first_seq && e.seq < s.next_seq);
            assert!(last.is_none_or(|l| e.seq > l));
            last = Some(e.seq);
        }
    }
}
