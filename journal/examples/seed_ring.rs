//! Writes a small ring with a few records to the path given: a seed for the recovery fuzzer.

use ferry_journal::{Geometry, Kind, MemStorage, Ring};

fn main() {
    let path = std::env::args().nth(1).expect("usage: seed_ring PATH");
    let g = Geometry {
        ring_id: 7,
        index_slots: 8,
        data_bytes: 16384,
    };
    let mut r = Ring::create(MemStorage(vec![0; g.file_bytes() as usize]), g).expect("create");
    r.append(Kind::Write, 1, 0, 4096, &[0xab; 4096]).expect("append");
    r.append(Kind::Checkpoint, 0, 1, 3, b"tag").expect("append");
    r.append(Kind::Trim, 1, 4096, 8192, &[]).expect("append");
    r.ack(1).expect("ack");
    r.append(Kind::Write, 2, 512, 512, &[0x5a; 512]).expect("append");
    std::fs::write(path, r.into_storage().0).expect("write seed");
}
