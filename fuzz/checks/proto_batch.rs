//! Batch frames from arbitrary bytes: the header decoder and the opener answer with an
//! error or a frame, never a panic; a frame that opens was sealed by us (the fuzzer cannot
//! forge a tag), so only the seeds' frames may open.

use ferry_proto::batch::{BatchHeader, Direction, Opener, frame_bytes};

pub fn run(data: &[u8]) {
    let _ = BatchHeader::decode(data);
    if let Ok(Some(n)) = frame_bytes(data) {
        let frame = &data[..n.min(data.len())];
        let mut o = Opener::new(&[7; 32], Direction::ToRecovery);
        if let Ok((h, records)) = o.open(frame) {
            assert_eq!(records.len() + 16 + 48, frame.len());
            assert_eq!(BatchHeader::decode(frame).unwrap().0, h);
        }
    }
}
