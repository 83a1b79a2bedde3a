//! Transmission-phase requests: the header decoder, and the check that turns a header into
//! an operation that can only be valid for the session's export (in range, aligned, flags
//! allowed, payload within bounds) or into the error reply the client gets.
//!
//! ```text
//! compact request, 28 bytes (+ payload for WRITE):
//!  0        4        6       8          16         24        28
//!  | magic  | flags  | type  | cookie   | offset   | len u32 |
//! extended request, 32 bytes (+ payload when flags has PAYLOAD_LEN):
//!  0        4        6       8          16         24        32
//!  | magic  | flags  | type  | cookie   | offset   | len u64 |
//! ```

use crate::export::{ExportInfo, ZeroMode};
use crate::negotiate::ReplyMode;
use crate::wire::{self, Command, Errno, cflags};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub command: Command,
    pub cookie: u64,
    pub offset: u64,
    pub length: u64,
}

/// A header that cannot be a request: the connection is dropped.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("bad request magic {found:#010x} (expected {expected:#010x}); client is out of step")]
    BadMagic { found: u32, expected: u32 },
}

/// Header length for the negotiated mode.
pub fn header_bytes(mode: ReplyMode) -> usize {
    if mode == ReplyMode::Extended {
        wire::EXTENDED_REQUEST_BYTES
    } else {
        wire::COMPACT_REQUEST_BYTES
    }
}

/// Decodes a request header of exactly [`header_bytes`] bytes.
pub fn decode_request(bytes: &[u8], mode: ReplyMode) -> Result<Request, RequestError> {
    assert_eq!(bytes.len(), header_bytes(mode), "caller reads exactly one header");
    let be32 = |r: std::ops::Range<usize>| u32::from_be_bytes(bytes[r].try_into().expect("4"));
    let be64 = |r: std::ops::Range<usize>| u64::from_be_bytes(bytes[r].try_into().expect("8"));
    let expected = if mode == ReplyMode::Extended {
        wire::EXTENDED_REQUEST_MAGIC
    } else {
        wire::REQUEST_MAGIC
    };
    let found = be32(0..4);
    if found != expected {
        return Err(RequestError::BadMagic { found, expected });
    }
    Ok(Request {
        flags: u16::from_be_bytes([bytes[4], bytes[5]]),
        command: Command(u16::from_be_bytes([bytes[6], bytes[7]])),
        cookie: be64(8..16),
        offset: be64(16..24),
        length: if mode == ReplyMode::Extended {
            be64(24..32)
        } else {
            be32(24..28) as u64
        },
    })
}

/// A checked operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Read { offset: u64, len: u32 },
    Write { offset: u64, len: u32, fua: bool },
    Flush,
    Trim { offset: u64, len: u64, fua: bool },
    WriteZeroes { offset: u64, len: u64, mode: ZeroMode },
    Cache { offset: u64, len: u64 },
    BlockStatus { offset: u64, len: u64, req_one: bool },
    Disc,
}

impl Op {
    /// The export range the operation touches, as `(offset, length)`; `(0, 0)` for none.
    pub fn range(&self) -> (u64, u64) {
        match *self {
            Op::Read { offset, len } | Op::Write { offset, len, .. } => (offset, len as u64),
            Op::Trim { offset, len, .. }
            | Op::WriteZeroes { offset, len, .. }
            | Op::Cache { offset, len }
            | Op::BlockStatus { offset, len, .. } => (offset, len),
            Op::Flush | Op::Disc => (0, 0),
        }
    }

    /// Whether the operation changes the export's contents.
    pub fn writes(&self) -> bool {
        matches!(self, Op::Write { .. } | Op::Trim { .. } | Op::WriteZeroes { .. })
    }
}

/// A request refused without touching the export.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub errno: Errno,
    pub message: String,
    /// Payload bytes that follow the header and must be read and dropped.
    pub discard_bytes: u64,
}

/// What to do with a decoded header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Checked {
    Op(Op),
    Refuse(Refusal),
    /// The client broke the protocol in a way that leaves the stream unreadable.
    Violation(String),
}

/// Facts about the session that a request is checked against.
#[derive(Clone, Copy, Debug)]
pub struct Limits<'a> {
    pub info: &'a ExportInfo,
    pub mode: ReplyMode,
    pub base_allocation: bool,
    pub payload_bytes_max: u32,
}

/// Payload that follows the header, as the client framed it.
pub fn payload_bytes(req: &Request, mode: ReplyMode) -> u64 {
    // A WRITE always carries its data: qemu (10.0) sends extended WRITEs without
    // PAYLOAD_LEN, so the flag is not required for them.
    if req.command == Command::WRITE || (mode == ReplyMode::Extended && req.flags & cflags::PAYLOAD_LEN != 0) {
        req.length
    } else {
        0
    }
}

fn allowed_flags(cmd: Command, mode: ReplyMode) -> u16 {
    let ext = if mode == ReplyMode::Extended {
        cflags::PAYLOAD_LEN
    } else {
        0
    };
    match cmd {
        Command::READ => {
            if mode == ReplyMode::Simple {
                0
            } else {
                cflags::DF
            }
        }
        Command::WRITE => cflags::FUA | ext,
        Command::TRIM => cflags::FUA,
        Command::WRITE_ZEROES => cflags::FUA | cflags::NO_HOLE | cflags::FAST_ZERO,
        Command::BLOCK_STATUS => cflags::REQ_ONE,
        _ => 0,
    }
}

/// Checks a request against the session; see [`Checked`].
pub fn check(req: &Request, lim: Limits<'_>) -> Checked {
    let payload = payload_bytes(req, lim.mode);
    let refuse = |errno: Errno, message: String| {
        Checked::Refuse(Refusal {
            errno,
            message,
            discard_bytes: payload,
        })
    };
    if lim.mode == ReplyMode::Extended && payload > lim.payload_bytes_max as u64 && payload > u32::MAX as u64 {
        return Checked::Violation(format!("payload of {payload} bytes exceeds any payload limit"));
    }
    let info = lim.info;
    let bad_flags = req.flags & !allowed_flags(req.command, lim.mode);
    if bad_flags != 0 {
        return refuse(
            Errno::EINVAL,
            format!("flags {bad_flags:#x} are not valid on {:?}", req.command),
        );
    }
    let fua = req.flags & cflags::FUA != 0;
    let (offset, len) = (req.offset, req.length);
    let end = offset.checked_add(len);
    let in_range = end.is_some_and(|e| e <= info.size_bytes);
    let align = info.block_bytes_min as u64;
    let aligned = offset % align == 0 && len % align == 0;
    let writes = matches!(req.command, Command::WRITE | Command::TRIM | Command::WRITE_ZEROES);
    if writes && info.read_only {
        return refuse(Errno::EPERM, "export is read-only".into());
    }
    let needs_range = matches!(
        req.command,
        Command::READ | Command::WRITE | Command::TRIM | Command::WRITE_ZEROES | Command::CACHE | Command::BLOCK_STATUS
    );
    // Oversize first: it is the more useful answer for a huge request near the start.
    let too_big = |len: u64| len > lim.payload_bytes_max as u64;
    let overflow = if lim.mode == ReplyMode::Simple {
        Errno::EINVAL
    } else {
        Errno::EOVERFLOW
    };
    if matches!(req.command, Command::READ | Command::WRITE) && too_big(len) {
        return refuse(
            overflow,
            format!(
                "{:?} of {len} bytes exceeds the {} byte limit",
                req.command, lim.payload_bytes_max
            ),
        );
    }
    if needs_range {
        if !in_range {
            let errno = if writes { Errno::ENOSPC } else { Errno::EINVAL };
            return refuse(
                errno,
                format!(
                    "range {offset}+{len} is past the end of the export ({} bytes)",
                    info.size_bytes
                ),
            );
        }
        if !aligned && req.command != Command::BLOCK_STATUS {
            return refuse(
                Errno::EINVAL,
                format!("range {offset}+{len} is not aligned to {align} bytes"),
            );
        }
    }
    let too_big = |len: u64| len > lim.payload_bytes_max as u64;
    let overflow = if lim.mode == ReplyMode::Simple {
        Errno::EINVAL
    } else {
        Errno::EOVERFLOW
    };
    let op = match req.command {
        Command::READ => {
            if too_big(len) {
                return refuse(
                    overflow,
                    format!("read of {len} bytes exceeds the {} byte limit", lim.payload_bytes_max),
                );
            }
            Op::Read {
                offset,
                len: len as u32,
            }
        }
        Command::WRITE => {
            if too_big(len) {
                return refuse(
                    overflow,
                    format!("write of {len} bytes exceeds the {} byte limit", lim.payload_bytes_max),
                );
            }
            Op::Write {
                offset,
                len: len as u32,
                fua,
            }
        }
        Command::FLUSH => Op::Flush,
        Command::TRIM => Op::Trim { offset, len, fua },
        Command::WRITE_ZEROES => {
            let fast_only = req.flags & cflags::FAST_ZERO != 0;
            let may_trim = req.flags & cflags::NO_HOLE == 0;
            Op::WriteZeroes {
                offset,
                len,
                mode: ZeroMode {
                    may_trim,
                    fast_only,
                    fua,
                },
            }
        }
        Command::CACHE => Op::Cache { offset, len },
        Command::BLOCK_STATUS => {
            if !lim.base_allocation {
                return refuse(
                    Errno::EINVAL,
                    "no metadata context was negotiated (SET_META_CONTEXT base:allocation)".into(),
                );
            }
            if len == 0 {
                return refuse(Errno::EINVAL, "block status of zero bytes".into());
            }
            Op::BlockStatus {
                offset,
                len,
                req_one: req.flags & cflags::REQ_ONE != 0,
            }
        }
        Command::DISC => Op::Disc,
        other => return refuse(Errno::EINVAL, format!("command {other:?} is not supported")),
    };
    if payload != 0 && !matches!(op, Op::Write { .. }) {
        return refuse(Errno::EINVAL, format!("{:?} takes no payload", req.command));
    }
    Checked::Op(op)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> ExportInfo {
        ExportInfo::new(1 << 20)
    }

    fn lim(info: &ExportInfo, mode: ReplyMode) -> Limits<'_> {
        Limits {
            info,
            mode,
            base_allocation: true,
            payload_bytes_max: 1 << 16,
        }
    }

    fn req(command: Command, flags: u16, offset: u64, length: u64) -> Request {
        Request {
            flags,
            command,
            cookie: 7,
            offset,
            length,
        }
    }

    fn encode(r: &Request, mode: ReplyMode) -> Vec<u8> {
        let ext = mode == ReplyMode::Extended;
        let magic = if ext {
            wire::EXTENDED_REQUEST_MAGIC
        } else {
            wire::REQUEST_MAGIC
        };
        let mut v = magic.to_be_bytes().to_vec();
        v.extend_from_slice(&r.flags.to_be_bytes());
        v.extend_from_slice(&r.command.0.to_be_bytes());
        v.extend_from_slice(&r.cookie.to_be_bytes());
        v.extend_from_slice(&r.offset.to_be_bytes());
        if ext {
            v.extend_from_slice(&r.length.to_be_bytes())
        } else {
            v.extend_from_slice(&(r.length as u32).to_be_bytes())
        }
        v
    }

    #[test]
    fn decode_round_trips_both_header_kinds() {
        for mode in [ReplyMode::Simple, ReplyMode::Extended] {
            let r = req(Command::WRITE, 1, 4096, 512);
            assert_eq!(decode_request(&encode(&r, mode), mode).unwrap(), r);
        }
    }

    #[test]
    fn wrong_magic_is_an_error() {
        let r = req(Command::READ, 0, 0, 512);
        let bytes = encode(&r, ReplyMode::Simple);
        let mut ext = bytes.clone();
        ext.extend_from_slice(&[0; 4]);
        assert!(matches!(
            decode_request(&ext, ReplyMode::Extended),
            Err(RequestError::BadMagic { .. })
        ));
    }

    #[test]
    fn accepts_valid_requests() {
        let i = info();
        let l = lim(&i, ReplyMode::Structured);
        assert_eq!(
            check(&req(Command::READ, cflags::DF, 0, 4096), l),
            Checked::Op(Op::Read { offset: 0, len: 4096 })
        );
        assert_eq!(
            check(&req(Command::WRITE, cflags::FUA, 512, 512), l),
            Checked::Op(Op::Write {
                offset: 512,
                len: 512,
                fua: true
            })
        );
        assert!(matches!(
            check(
                &req(Command::WRITE_ZEROES, cflags::NO_HOLE | cflags::FAST_ZERO, 0, 1 << 20),
                l
            ),
            Checked::Op(Op::WriteZeroes { .. })
        ));
        assert_eq!(check(&req(Command::DISC, 0, 0, 0), l), Checked::Op(Op::Disc));
    }

    fn refused(c: Checked) -> Refusal {
        match c {
            Checked::Refuse(r) => r,
            other => panic!("expected refusal, got {other:?}"),
        }
    }

    #[test]
    fn rejects_out_of_range_unaligned_oversize_and_bad_flags() {
        let i = info();
        let l = lim(&i, ReplyMode::Structured);
        assert_eq!(
            refused(check(&req(Command::READ, 0, (1 << 20) - 512, 1024), l)).errno,
            Errno::EINVAL
        );
        let w = refused(check(&req(Command::WRITE, 0, 1 << 20, 512), l));
        assert_eq!((w.errno, w.discard_bytes), (Errno::ENOSPC, 512));
        assert_eq!(
            refused(check(&req(Command::READ, 0, u64::MAX - 10, 512), l)).errno,
            Errno::EINVAL
        );
        assert_eq!(refused(check(&req(Command::READ, 0, 1, 512), l)).errno, Errno::EINVAL);
        assert_eq!(
            refused(check(&req(Command::READ, 0, 0, 1 << 17), l)).errno,
            Errno::EOVERFLOW
        );
        let big = refused(check(&req(Command::WRITE, 0, 0, 1 << 17), l));
        assert_eq!((big.errno, big.discard_bytes), (Errno::EOVERFLOW, 1 << 17));
        assert_eq!(
            refused(check(&req(Command::READ, cflags::FUA, 0, 512), l)).errno,
            Errno::EINVAL
        );
        assert_eq!(
            refused(check(&req(Command::FLUSH, 0x8000, 0, 0), l)).errno,
            Errno::EINVAL
        );
        assert_eq!(refused(check(&req(Command(99), 0, 0, 0), l)).errno, Errno::EINVAL);
        assert_eq!(
            refused(check(
                &req(Command::READ, cflags::DF, 0, 512),
                lim(&i, ReplyMode::Simple)
            ))
            .errno,
            Errno::EINVAL
        );
        assert_eq!(
            refused(check(&req(Command::READ, 0, 0, 1 << 17), lim(&i, ReplyMode::Simple))).errno,
            Errno::EINVAL
        );
    }

    #[test]
    fn read_only_and_block_status_rules() {
        let mut i = info();
        i.read_only = true;
        let l = lim(&i, ReplyMode::Structured);
        assert_eq!(refused(check(&req(Command::TRIM, 0, 0, 512), l)).errno, Errno::EPERM);
        assert_eq!(
            refused(check(&req(Command::BLOCK_STATUS, 0, 0, 0), l)).errno,
            Errno::EINVAL
        );
        let no_ctx = Limits {
            base_allocation: false,
            ..l
        };
        assert_eq!(
            refused(check(&req(Command::BLOCK_STATUS, 0, 0, 512), no_ctx)).errno,
            Errno::EINVAL
        );
        assert!(matches!(
            check(&req(Command::BLOCK_STATUS, cflags::REQ_ONE, 0, 3), l),
            Checked::Op(Op::BlockStatus { req_one: true, .. })
        ));
    }

    #[test]
    fn extended_payload_rules() {
        let i = info();
        let l = lim(&i, ReplyMode::Extended);
        let r = refused(check(&req(Command::FLUSH, cflags::PAYLOAD_LEN, 0, 8), l));
        assert_eq!((r.errno, r.discard_bytes), (Errno::EINVAL, 8));
        assert!(matches!(
            check(&req(Command::WRITE, cflags::PAYLOAD_LEN, 0, 1 << 40), l),
            Checked::Violation(_)
        ));
        assert_eq!(
            check(&req(Command::WRITE, 0, 0, 512), l),
            Checked::Op(Op::Write {
                offset: 0,
                len: 512,
                fua: false
            })
        );
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the header, an accepted operation lies inside the export, is aligned,
        /// fits the payload limit, and never writes a read-only export.
        #[test]
        fn accepted_requests_are_in_bounds(
            flags in any::<u16>(),
            command in 0u16..12,
            offset in prop_oneof![any::<u64>(), 0u64..(1 << 21)],
            length in prop_oneof![any::<u64>(), 0u64..(1 << 21)],
            read_only in any::<bool>(),
            extended in any::<bool>(),
        ) {
            let info = ExportInfo { read_only, ..ExportInfo::new(1 << 20) };
            let mode = if extended { ReplyMode::Extended } else { ReplyMode::Structured };
            let length = if extended { length } else { length & 0xffff_ffff };
            let req = Request { flags, command: Command(command), cookie: 1, offset, length };
            let lim = Limits { info: &info, mode, base_allocation: true, payload_bytes_max: 1 << 16 };
            if let Checked::Op(op) = check(&req, lim) {
                let (off, len) = op.range();
                if matches!(op, Op::Read { .. } | Op::Write { .. }) {
                    prop_assert!(len <= 1 << 16);
                }
                prop_assert!(off.checked_add(len).is_some_and(|e| e <= info.size_bytes));
                if !matches!(op, Op::BlockStatus { .. }) {
                    prop_assert!(off % 512 == 0 && len % 512 == 0);
                }
                prop_assert!(!(read_only && op.writes()), "read-only export accepted {:?}", op);
            }
        }
    }
}
