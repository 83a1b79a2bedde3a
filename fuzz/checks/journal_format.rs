//! Journal superblock and index-entry decoders fed arbitrary bytes (a corrupt or foreign
//! ring file): never a panic, and whatever decodes re-encodes to the same bytes.

use ferry_journal::format::{ENTRY_BYTES, Entry, Superblock};

pub fn run(data: &[u8]) {
    if let Ok(sb) = Superblock::decode(data) {
        assert_eq!(&sb.encode()[..], &data[..80]);
    }
    if data.len() >= 72 {
        let ring_id = u64::from_le_bytes(data[..8].try_into().unwrap());
        let pos = u64::from_le_bytes(data[64..72].try_into().unwrap());
        let bytes: [u8; ENTRY_BYTES as usize] = data[8..72].try_into().unwrap();
        if let Ok(e) = Entry::decode(&bytes, ring_id, pos) {
            assert_eq!(e.encode(ring_id), bytes);
        }
    }
}
