//! Recovery over an arbitrary ring file: opening it must give an error or a ring whose
//! recovered records can all be read back, never a panic.

use ferry_journal::{MemStorage, Ring};

pub fn run(data: &[u8]) {
    if let Ok((ring, recovery)) = Ring::open(MemStorage(data.to_vec())) {
        let (start, end) = ring.bounds();
        assert_eq!(end - start, recovery.records);
        for pos in start..end {
            let rec = ring.read(pos).expect("a recovered record reads back");
            assert_eq!(rec.payload.len() as u64, rec.entry.kind.payload_bytes(rec.entry.length));
        }
    }
}
