//! History segments from arbitrary bytes (a damaged recovery datastore): the scan answers
//! with an error or the whole batches it found, never a panic, and what it keeps lies
//! inside the bytes and in sequence order.

use ferry_journal::history::scan;

pub fn run(data: &[u8]) {
    if let Ok(s) = scan(data) {
        assert!(s.valid_bytes as usize <= data.len());
        let mut last = None;
        for f in &s.records {
            assert!(f.data_pos as usize + f.record.data_bytes as usize <= s.valid_bytes as usize);
            assert!(last.is_none_or(|l| f.record.seq > l));
            assert!(f.record.seq < s.next_seq);
            last = Some(f.record.seq);
        }
    }
}
