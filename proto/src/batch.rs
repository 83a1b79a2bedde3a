//! Sealed batch frames: what carries a VPG's journal records over the replication link.
//!
//! Format v1, a fixed 48-byte header and a sealed body (integers little-endian):
//!
//! ```text
//!  0 magic u32 = "FYB1"    4 version u8 = 1    5 kind u8    6 flags u16
//!  8 vpg u64              16 epoch u64        24 batch_seq u64
//! 32 first_seq u64        40 record_count u32 44 body_bytes u32
//! 48 body: AES-256-GCM ciphertext of the plaintext, then its 16-byte tag (in body_bytes)
//! ```
//!
//! Kinds: 1, a batch of journal records (plaintext: [`crate::records`]; `first_seq` and
//! `record_count` give the range of sequence numbers it covers, voids included though not
//! carried); 2, a control message ([`crate::message`]; the range fields are zero). Flags:
//! bit 0, the plaintext is zstd-compressed (batches only); other bits are refused.
//! Every frame of a session, whatever its kind, takes the next nonce of its direction.
//!
//! The whole header is the associated data, so the VPG, its epoch, the batch's sequence
//! number and the range of records it carries are bound to the ciphertext: a changed header
//! byte fails authentication like a changed body byte.
//!
//! The nonce is never sent: 12 bytes, the sender's [`Direction`], three zero bytes, and a
//! counter of the frames sealed in this session in that direction (big-endian). The
//! [`Opener`] expects the next counter, so a replayed, reordered or dropped frame fails to
//! open, as does a frame reflected back to its sender. It returns the records only after
//! the tag checked: no byte of a rejected frame reaches the caller. A session's keys are
//! used for at most 2^32 frames (far below AES-GCM's limit for random-looking nonces; ours
//! are a counter, which never repeats under one key).

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

pub const MAGIC: u32 = u32::from_le_bytes(*b"FYB1");
pub const VERSION: u8 = 1;
/// Header flag: the plaintext is zstd-compressed.
pub const FLAG_ZSTD: u16 = 1;
const FLAGS_KNOWN: u16 = FLAG_ZSTD;
pub const HEADER_BYTES: usize = 48;
pub const TAG_BYTES: usize = 16;
/// Largest body a frame may carry (records and tag).
pub const BODY_BYTES_MAX: u32 = 64 << 20;
/// Frames one key seals before the session must be renewed.
pub const FRAMES_PER_SESSION_MAX: u64 = 1 << 32;

/// Which way a frame goes: part of the nonce, so a frame cannot be sent back to its sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    ToRecovery = 1,
    ToProtected = 2,
}

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    Batch = 1,
    Control = 2,
}

/// The header of a frame (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    pub kind: FrameKind,
    pub flags: u16,
    pub vpg: u64,
    pub epoch: u64,
    pub batch_seq: u64,
    /// Sequence number of the first record in the batch.
    pub first_seq: u64,
    pub record_count: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BatchError {
    #[error("not a ferry batch frame (magic {0:#010x})")]
    Magic(u32),
    #[error("batch frame version {0}, this agent speaks version {VERSION}")]
    Version(u8),
    #[error("unknown frame kind {0}")]
    Kind(u8),
    #[error("reserved header bits set ({0:#06x})")]
    Reserved(u16),
    #[error("frame body of {0} bytes is outside 16..={BODY_BYTES_MAX}")]
    BodySize(u32),
    #[error("frame truncated: {have} of {need} bytes")]
    Truncated { need: usize, have: usize },
    #[error(
        "frame {counter} of this session failed authentication (altered, replayed, reordered or sealed with another key); none of it is used"
    )]
    Rejected { counter: u64 },
    #[error("this session has sealed its {FRAMES_PER_SESSION_MAX} frames: reconnect for new keys")]
    SessionSpent,
}

impl BatchHeader {
    /// The header bytes of a frame whose body (records and tag) is `body_bytes` long.
    pub fn encode(&self, body_bytes: u32) -> [u8; HEADER_BYTES] {
        let mut h = [0u8; HEADER_BYTES];
        h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        h[4] = VERSION;
        h[5] = self.kind as u8;
        h[6..8].copy_from_slice(&self.flags.to_le_bytes());
        h[8..16].copy_from_slice(&self.vpg.to_le_bytes());
        h[16..24].copy_from_slice(&self.epoch.to_le_bytes());
        h[24..32].copy_from_slice(&self.batch_seq.to_le_bytes());
        h[32..40].copy_from_slice(&self.first_seq.to_le_bytes());
        h[40..44].copy_from_slice(&self.record_count.to_le_bytes());
        h[44..48].copy_from_slice(&body_bytes.to_le_bytes());
        h
    }

    /// Decodes a header; returns it with the body's length.
    pub fn decode(h: &[u8]) -> Result<(BatchHeader, u32), BatchError> {
        if h.len() < HEADER_BYTES {
            return Err(BatchError::Truncated {
                need: HEADER_BYTES,
                have: h.len(),
            });
        }
        let u32_at = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().expect("8 bytes"));
        if u32_at(0) != MAGIC {
            return Err(BatchError::Magic(u32_at(0)));
        }
        if h[4] != VERSION {
            return Err(BatchError::Version(h[4]));
        }
        let kind = match h[5] {
            1 => FrameKind::Batch,
            2 => FrameKind::Control,
            k => return Err(BatchError::Kind(k)),
        };
        let flags = u16::from_le_bytes([h[6], h[7]]);
        let allowed = if kind == FrameKind::Batch { FLAGS_KNOWN } else { 0 };
        if flags & !allowed != 0 {
            return Err(BatchError::Reserved(flags));
        }
        let body = u32_at(44);
        if !(TAG_BYTES as u32..=BODY_BYTES_MAX).contains(&body) {
            return Err(BatchError::BodySize(body));
        }
        Ok((
            BatchHeader {
                kind,
                flags,
                vpg: u64_at(8),
                epoch: u64_at(16),
                batch_seq: u64_at(24),
                first_seq: u64_at(32),
                record_count: u32_at(40),
            },
            body,
        ))
    }
}

/// The whole frame's length, from its first [`HEADER_BYTES`] bytes (to cut frames out of
/// a stream); `Ok(None)` while fewer bytes are at hand.
pub fn frame_bytes(prefix: &[u8]) -> Result<Option<usize>, BatchError> {
    if prefix.len() < HEADER_BYTES {
        return Ok(None);
    }
    let (_, body) = BatchHeader::decode(prefix)?;
    Ok(Some(HEADER_BYTES + body as usize))
}

fn key(secret: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, secret).expect("a 32-byte key fits AES-256"))
}

fn nonce(dir: Direction, counter: u64) -> Nonce {
    let mut n = [0u8; NONCE_LEN];
    n[0] = dir as u8;
    n[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// One direction of a session: its key, and the frames sealed or opened so far.
struct Half {
    key: LessSafeKey,
    dir: Direction,
    counter: u64,
}

impl Half {
    fn new(secret: &[u8; 32], dir: Direction) -> Half {
        Half {
            key: key(secret),
            dir,
            counter: 0,
        }
    }
}

impl std::fmt::Debug for Half {
    /// Without the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Half")
            .field("dir", &self.dir)
            .field("counter", &self.counter)
            .finish_non_exhaustive()
    }
}

/// Seals the frames one side sends in one session.
#[derive(Debug)]
pub struct Sealer(Half);

impl Sealer {
    /// `secret`: this direction's session key (from the handshake).
    pub fn new(secret: &[u8; 32], dir: Direction) -> Sealer {
        Sealer(Half::new(secret, dir))
    }

    /// The frame for `records` (encrypted in place after the header).
    pub fn seal(&mut self, header: &BatchHeader, records: &[u8]) -> Result<Vec<u8>, BatchError> {
        if self.0.counter >= FRAMES_PER_SESSION_MAX {
            return Err(BatchError::SessionSpent);
        }
        let body = records.len() + TAG_BYTES;
        if body > BODY_BYTES_MAX as usize {
            return Err(BatchError::BodySize(u32::try_from(body).unwrap_or(u32::MAX)));
        }
        let head = header.encode(body as u32);
        let mut frame = Vec::with_capacity(HEADER_BYTES + body);
        frame.extend_from_slice(&head);
        frame.extend_from_slice(records);
        let tag = self
            .0
            .key
            .seal_in_place_separate_tag(
                nonce(self.0.dir, self.0.counter),
                Aad::from(&head),
                &mut frame[HEADER_BYTES..],
            )
            .expect("AES-GCM seals any length below its limit");
        frame.extend_from_slice(tag.as_ref());
        self.0.counter += 1;
        Ok(frame)
    }
}

/// Opens the frames the peer sends in one session, in order.
#[derive(Debug)]
pub struct Opener(Half);

impl Opener {
    /// `secret`: the key of the direction the frames come from; `dir`: that direction.
    pub fn new(secret: &[u8; 32], dir: Direction) -> Opener {
        Opener(Half::new(secret, dir))
    }

    /// Checks and decrypts the next frame (exactly one whole frame). On any error nothing
    /// of the frame is returned, and the session should end: the peer reconnects and
    /// resends from its last acknowledged record.
    pub fn open(&mut self, frame: &[u8]) -> Result<(BatchHeader, Vec<u8>), BatchError> {
        let (header, body) = BatchHeader::decode(frame)?;
        let need = HEADER_BYTES + body as usize;
        if frame.len() != need {
            return Err(BatchError::Truncated {
                need,
                have: frame.len(),
            });
        }
        if self.0.counter >= FRAMES_PER_SESSION_MAX {
            return Err(BatchError::SessionSpent);
        }
        let mut body = frame[HEADER_BYTES..].to_vec();
        let plain = self
            .0
            .key
            .open_in_place(
                nonce(self.0.dir, self.0.counter),
                Aad::from(&frame[..HEADER_BYTES]),
                &mut body,
            )
            .map_err(|_| BatchError::Rejected {
                counter: self.0.counter,
            })?
            .len();
        body.truncate(plain);
        self.0.counter += 1;
        Ok((header, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];

    fn header(batch_seq: u64) -> BatchHeader {
        BatchHeader {
            kind: FrameKind::Batch,
            flags: 0,
            vpg: 0x0102_0304_0506_0708,
            epoch: 3,
            batch_seq,
            first_seq: 1000 + batch_seq * 10,
            record_count: 10,
        }
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// Format v1, byte for byte: the header, and a sealed frame under a known key (AES-GCM
    /// with a counter nonce is deterministic), so any change to the layout, the nonce or
    /// the associated data shows here.
    #[test]
    fn golden_batch_frame_v1() {
        let h = header(2);
        assert_eq!(
            hex(&h.encode(21)),
            "46594231010100000807060504030201\
             03000000000000000200000000000000\
             fc030000000000000a00000015000000"
        );
        let frame = Sealer::new(&KEY, Direction::ToRecovery).seal(&h, b"hello").unwrap();
        assert_eq!(frame.len(), HEADER_BYTES + 5 + TAG_BYTES);
        assert_eq!(hex(&frame[HEADER_BYTES..]), GOLDEN_BODY);
        assert_eq!(BatchHeader::decode(&frame), Ok((h, 21)));
    }

    /// The same frame's body from an independent AES-GCM (Python's `cryptography`): key
    /// 32 × 0x07, nonce 01 000000 0000000000000000, the header above as associated data.
    const GOLDEN_BODY: &str = "e785d2ea8582aee6738ed3c2b961f2ade2f153fdf4";

    #[test]
    fn frames_open_in_order_and_nothing_else_opens() {
        let mut s = Sealer::new(&KEY, Direction::ToRecovery);
        let frames: Vec<Vec<u8>> = (0..4).map(|i| s.seal(&header(i), &[i as u8; 300]).unwrap()).collect();

        // In order: all open, records intact.
        let mut o = Opener::new(&KEY, Direction::ToRecovery);
        for (i, f) in frames.iter().enumerate() {
            assert_eq!(o.open(f), Ok((header(i as u64), vec![i as u8; 300])));
        }

        // Replayed.
        let mut o = Opener::new(&KEY, Direction::ToRecovery);
        o.open(&frames[0]).unwrap();
        assert_eq!(o.open(&frames[0]), Err(BatchError::Rejected { counter: 1 }));
        // Reordered, or one dropped.
        let mut o = Opener::new(&KEY, Direction::ToRecovery);
        assert_eq!(o.open(&frames[1]), Err(BatchError::Rejected { counter: 0 }));
        // Reflected back to its sender, or opened with another key.
        assert!(Opener::new(&KEY, Direction::ToProtected).open(&frames[0]).is_err());
        assert!(Opener::new(&[8; 32], Direction::ToRecovery).open(&frames[0]).is_err());
        // Truncated, or extended.
        let f = &frames[0];
        let mut o = Opener::new(&KEY, Direction::ToRecovery);
        assert!(matches!(o.open(&f[..f.len() - 1]), Err(BatchError::Truncated { .. })));
        let mut longer = f.clone();
        longer.push(0);
        assert!(matches!(o.open(&longer), Err(BatchError::Truncated { .. })));
        // Any one byte changed, header or body: rejected, or refused as a header.
        for i in 0..f.len() {
            let mut bad = f.clone();
            bad[i] ^= 0x01;
            let mut o = Opener::new(&KEY, Direction::ToRecovery);
            assert!(o.open(&bad).is_err(), "byte {i} flipped");
        }
    }

    #[test]
    fn headers_refuse_what_they_do_not_know() {
        let good = header(1).encode(64);
        let with = |i: usize, v: u8| {
            let mut h = good;
            h[i] = v;
            BatchHeader::decode(&h)
        };
        assert!(matches!(with(0, b'X'), Err(BatchError::Magic(_))));
        assert_eq!(with(4, 2), Err(BatchError::Version(2)));
        assert_eq!(with(5, 9), Err(BatchError::Kind(9)));
        assert_eq!(with(6, 2), Err(BatchError::Reserved(2)));
        assert_eq!(with(6, 1).map(|(h, _)| h.flags), Ok(FLAG_ZSTD));
        let control = BatchHeader {
            kind: FrameKind::Control,
            flags: 0,
            ..header(0)
        };
        let mut compressed_control = control.encode(64);
        compressed_control[6] = 1;
        assert_eq!(BatchHeader::decode(&compressed_control), Err(BatchError::Reserved(1)));
        assert_eq!(BatchHeader::decode(&control.encode(64)), Ok((control, 64)));
        assert_eq!(
            BatchHeader::decode(&header(1).encode(15)),
            Err(BatchError::BodySize(15))
        );
        assert_eq!(
            BatchHeader::decode(&header(1).encode(BODY_BYTES_MAX + 1)),
            Err(BatchError::BodySize(BODY_BYTES_MAX + 1))
        );
        assert_eq!(frame_bytes(&good[..47]), Ok(None));
        assert_eq!(frame_bytes(&good), Ok(Some(HEADER_BYTES + 64)));
    }
}
