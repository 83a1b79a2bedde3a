//! What a frame opens to, from arbitrary bytes: the record decoder, the zstd decompressor
//! and the control-message decoder answer with an error or a value, never a panic, and a
//! decoded value encodes back to the same bytes.

use ferry_proto::{message, records};

pub fn run(data: &[u8]) {
    if data.len() < 12 {
        return;
    }
    let first = u64::from_le_bytes(data[..8].try_into().unwrap());
    let count = u32::from_le_bytes(data[8..12].try_into().unwrap());
    let body = &data[12..];
    if let Ok(rs) = records::decode(body, first, count) {
        let mut again = Vec::new();
        for r in &rs {
            records::push(&mut again, r);
        }
        assert_eq!(again, body);
    }
    if let Ok(plain) = records::decompress(body) {
        assert!(plain.len() <= records::PLAIN_BYTES_MAX);
        let _ = records::decode(&plain, first, count);
    }
    if let Ok(m) = message::decode(body) {
        let _ = message::encode(&m);
    }
}
