//! Reply encoders for the transmission phase. Each appends bytes to a buffer; a read's data
//! follows the header that [`read_data_head`] writes, straight from the export's buffer.
//!
//! ```text
//! simple reply, 16 bytes:      | 0x67446698 | error u32 | cookie u64 |
//! structured chunk, 20 bytes:  | 0x668e33ef | flags u16 | type u16 | cookie u64 | length u32 |
//! extended chunk, 32 bytes:    | 0x6e8a278c | flags u16 | type u16 | cookie u64 | offset u64 | length u64 |
//! ```

use crate::export::Extent;
use crate::negotiate::ReplyMode;
use crate::wire::{self, ChunkType, Errno};

fn chunk_head(out: &mut Vec<u8>, mode: ReplyMode, flags: u16, kind: ChunkType, cookie: u64, offset: u64, len: u64) {
    match mode {
        ReplyMode::Simple => {
            unreachable!("chunks are only sent after STRUCTURED_REPLY or EXTENDED_HEADERS")
        }
        ReplyMode::Structured => {
            out.extend_from_slice(&wire::STRUCTURED_REPLY_MAGIC.to_be_bytes());
            out.extend_from_slice(&flags.to_be_bytes());
            out.extend_from_slice(&kind.0.to_be_bytes());
            out.extend_from_slice(&cookie.to_be_bytes());
            let len32 = u32::try_from(len).expect("structured chunk payloads are bounded by the payload limit");
            out.extend_from_slice(&len32.to_be_bytes());
        }
        ReplyMode::Extended => {
            out.extend_from_slice(&wire::EXTENDED_REPLY_MAGIC.to_be_bytes());
            out.extend_from_slice(&flags.to_be_bytes());
            out.extend_from_slice(&kind.0.to_be_bytes());
            out.extend_from_slice(&cookie.to_be_bytes());
            out.extend_from_slice(&offset.to_be_bytes());
            out.extend_from_slice(&len.to_be_bytes());
        }
    }
}

/// Success without data. `offset` is the request's (extended headers echo it).
pub fn done(out: &mut Vec<u8>, mode: ReplyMode, cookie: u64, offset: u64) {
    match mode {
        ReplyMode::Simple => simple(out, cookie, Errno::OK),
        _ => chunk_head(out, mode, wire::REPLY_FLAG_DONE, ChunkType::NONE, cookie, offset, 0),
    }
}

fn simple(out: &mut Vec<u8>, cookie: u64, errno: Errno) {
    out.extend_from_slice(&wire::SIMPLE_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&errno.0.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
}

/// A failed request; structured modes carry the message for the human at the client.
pub fn error(out: &mut Vec<u8>, mode: ReplyMode, cookie: u64, offset: u64, errno: Errno, message: &str) {
    assert_ne!(errno, Errno::OK, "an error reply needs an error");
    match mode {
        ReplyMode::Simple => simple(out, cookie, errno),
        _ => {
            let msg = &message.as_bytes()[..message.len().min(wire::STRING_BYTES_MAX)];
            chunk_head(
                out,
                mode,
                wire::REPLY_FLAG_DONE,
                ChunkType::ERROR,
                cookie,
                offset,
                6 + msg.len() as u64,
            );
            out.extend_from_slice(&errno.0.to_be_bytes());
            out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
            out.extend_from_slice(msg);
        }
    }
}

/// The header that precedes `len` bytes of read data (one chunk, so DF always holds).
pub fn read_data_head(out: &mut Vec<u8>, mode: ReplyMode, cookie: u64, offset: u64, len: u32) {
    match mode {
        ReplyMode::Simple => simple(out, cookie, Errno::OK),
        _ => {
            chunk_head(
                out,
                mode,
                wire::REPLY_FLAG_DONE,
                ChunkType::OFFSET_DATA,
                cookie,
                offset,
                8 + len as u64,
            );
            out.extend_from_slice(&offset.to_be_bytes());
        }
    }
}

/// One `base:allocation` status chunk, final.
pub fn block_status(out: &mut Vec<u8>, mode: ReplyMode, cookie: u64, offset: u64, context_id: u32, extents: &[Extent]) {
    assert!(!extents.is_empty(), "a block status reply has at least one extent");
    match mode {
        ReplyMode::Simple => {
            unreachable!("block status needs a negotiated context, which needs structured replies")
        }
        ReplyMode::Structured => {
            let len = 4 + 8 * extents.len() as u64;
            chunk_head(
                out,
                mode,
                wire::REPLY_FLAG_DONE,
                ChunkType::BLOCK_STATUS,
                cookie,
                offset,
                len,
            );
            out.extend_from_slice(&context_id.to_be_bytes());
            for e in extents {
                let l = u32::try_from(e.length).expect("compact extents are clipped to 32 bits");
                out.extend_from_slice(&l.to_be_bytes());
                out.extend_from_slice(&e.flags.to_be_bytes());
            }
        }
        ReplyMode::Extended => {
            let len = 8 + 16 * extents.len() as u64;
            chunk_head(
                out,
                mode,
                wire::REPLY_FLAG_DONE,
                ChunkType::BLOCK_STATUS_EXT,
                cookie,
                offset,
                len,
            );
            out.extend_from_slice(&context_id.to_be_bytes());
            out.extend_from_slice(&(extents.len() as u32).to_be_bytes());
            for e in extents {
                out.extend_from_slice(&e.length.to_be_bytes());
                out.extend_from_slice(&(e.flags as u64).to_be_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_simple_and_structured_bytes() {
        let mut v = Vec::new();
        done(&mut v, ReplyMode::Simple, 0x0102030405060708, 0);
        assert_eq!(v, [0x67, 0x44, 0x66, 0x98, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]);

        let mut v = Vec::new();
        read_data_head(&mut v, ReplyMode::Structured, 9, 4096, 512);
        let mut want = vec![0x66, 0x8e, 0x33, 0xef, 0, 1, 0, 1];
        want.extend_from_slice(&9u64.to_be_bytes());
        want.extend_from_slice(&520u32.to_be_bytes());
        want.extend_from_slice(&4096u64.to_be_bytes());
        assert_eq!(v, want);
    }

    #[test]
    fn golden_extended_error_and_status() {
        let mut v = Vec::new();
        error(&mut v, ReplyMode::Extended, 1, 512, Errno::EINVAL, "no");
        let mut want = vec![0x6e, 0x8a, 0x27, 0x8c, 0, 1, 0x80, 1];
        want.extend_from_slice(&1u64.to_be_bytes());
        want.extend_from_slice(&512u64.to_be_bytes());
        want.extend_from_slice(&8u64.to_be_bytes());
        want.extend_from_slice(&22u32.to_be_bytes());
        want.extend_from_slice(&[0, 2, b'n', b'o']);
        assert_eq!(v, want);

        let mut v = Vec::new();
        block_status(
            &mut v,
            ReplyMode::Extended,
            1,
            0,
            1,
            &[Extent {
                length: 1 << 33,
                flags: 3,
            }],
        );
        assert_eq!(v.len(), 32 + 8 + 16);
        assert_eq!(&v[32..40], &[0, 0, 0, 1, 0, 0, 0, 1]);
        assert_eq!(&v[40..48], &(1u64 << 33).to_be_bytes());
    }
}
