//! The handshake and transmission checked byte by byte over a real socket, including what
//! no well-behaved client library will send: bad magics, unknown options, oversize
//! payloads, extended headers, DISC with requests in flight.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::Agent;

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;

struct Raw(UnixStream);

/// A compact request header followed by `payload`.
fn compact_request(flags: u16, cmd: u16, cookie: u64, offset: u64, len: u32, payload: &[u8]) -> Vec<u8> {
    let mut b = 0x2560_9513u32.to_be_bytes().to_vec();
    b.extend_from_slice(&flags.to_be_bytes());
    b.extend_from_slice(&cmd.to_be_bytes());
    b.extend_from_slice(&cookie.to_be_bytes());
    b.extend_from_slice(&offset.to_be_bytes());
    b.extend_from_slice(&len.to_be_bytes());
    b.extend_from_slice(payload);
    b
}

impl Raw {
    fn connect(a: &Agent) -> Raw {
        let s = UnixStream::connect(a.socket()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Raw(s)
    }
    fn read_n(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0; n];
        self.0.read_exact(&mut v).unwrap();
        v
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.read_n(2).try_into().unwrap())
    }
    fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.read_n(4).try_into().unwrap())
    }
    fn u64(&mut self) -> u64 {
        u64::from_be_bytes(self.read_n(8).try_into().unwrap())
    }
    fn send(&mut self, b: &[u8]) {
        self.0.write_all(b).unwrap();
    }
    /// Greeting checked, client flags sent.
    fn hello(a: &Agent, client_flags: u32) -> Raw {
        let mut r = Raw::connect(a);
        assert_eq!(r.u64(), NBDMAGIC);
        assert_eq!(r.u64(), IHAVEOPT);
        assert_eq!(r.u16(), 0b11, "FIXED_NEWSTYLE | NO_ZEROES");
        r.send(&client_flags.to_be_bytes());
        r
    }
    fn option(&mut self, code: u32, data: &[u8]) {
        let mut b = IHAVEOPT.to_be_bytes().to_vec();
        b.extend_from_slice(&code.to_be_bytes());
        b.extend_from_slice(&(data.len() as u32).to_be_bytes());
        b.extend_from_slice(data);
        self.send(&b);
    }
    /// (reply type, data) of one option reply to `code`.
    fn option_reply(&mut self, code: u32) -> (u32, Vec<u8>) {
        assert_eq!(self.u64(), REPLY_MAGIC);
        assert_eq!(self.u32(), code);
        let kind = self.u32();
        let len = self.u32() as usize;
        (kind, self.read_n(len))
    }
    fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.0.read(&mut b), Ok(0) | Err(_))
    }
    /// GO on `name`; returns (size, transmission flags) after the ACK.
    fn go(&mut self, name: &str) -> (u64, u16) {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&0u16.to_be_bytes());
        self.option(7, &d);
        let mut export = None;
        loop {
            let (kind, data) = self.option_reply(7);
            match kind {
                3 if data[..2] == [0, 0] => {
                    export = Some((
                        u64::from_be_bytes(data[2..10].try_into().unwrap()),
                        u16::from_be_bytes([data[10], data[11]]),
                    ))
                }
                3 => {}
                1 => return export.expect("INFO_EXPORT before ACK"),
                other => panic!("unexpected GO reply {other:#x}: {}", String::from_utf8_lossy(&data)),
            }
        }
    }
    fn request(&mut self, flags: u16, cmd: u16, cookie: u64, offset: u64, len: u32, payload: &[u8]) {
        self.send(&compact_request(flags, cmd, cookie, offset, len, payload));
    }
    /// A simple reply: (error, cookie).
    fn simple_reply(&mut self) -> (u32, u64) {
        assert_eq!(self.u32(), 0x6744_6698, "simple reply magic");
        (self.u32(), self.u64())
    }
}

#[test]
fn greeting_flags_and_option_errors() {
    let a = Agent::start("raw-opt");
    a.create("v", "1M");
    // Without FIXED_NEWSTYLE the server hangs up.
    let mut r = Raw::hello(&a, 0);
    assert!(r.closed());
    // Unknown option: ERR_UNSUP with a message, and haggling goes on.
    let mut r = Raw::hello(&a, 3);
    r.option(0x4242, b"whatever");
    let (kind, msg) = r.option_reply(0x4242);
    assert_eq!(kind, (1 << 31) + 1);
    assert!(String::from_utf8_lossy(&msg).contains("not supported"));
    // STARTTLS is not offered.
    r.option(5, &[]);
    assert_eq!(r.option_reply(5).0, (1 << 31) + 1);
    // Malformed GO (name length past the end): ERR_INVALID.
    r.option(7, &[0, 0, 0, 200, b'v']);
    assert_eq!(r.option_reply(7).0, (1 << 31) + 3);
    // STRUCTURED_REPLY with data: ERR_INVALID.
    r.option(8, &[1]);
    assert_eq!(r.option_reply(8).0, (1 << 31) + 3);
    // Oversized option data is skipped, answered ERR_TOO_BIG, and the session continues.
    r.option(3, &vec![0u8; 200 * 1024]);
    assert_eq!(r.option_reply(3).0, (1 << 31) + 9);
    // GO for an unknown export: ERR_UNKNOWN; then a good GO works.
    let mut d = 4u32.to_be_bytes().to_vec();
    d.extend_from_slice(b"nope\0\0");
    r.option(7, &d);
    assert_eq!(r.option_reply(7).0, (1 << 31) + 6);
    let (size, flags) = r.go("v");
    assert_eq!(size, 1 << 20);
    assert_eq!(flags & 1, 1, "HAS_FLAGS");
    assert_ne!(flags & (1 << 8), 0, "CAN_MULTI_CONN");
    // A request's bad magic drops this connection only.
    r.send(&[0xde; 28]);
    assert!(r.closed());
    let mut other = Raw::hello(&a, 3);
    other.go("v");
    other.request(0, 0, 9, 0, 512, &[]);
    assert_eq!(other.simple_reply(), (0, 9));
    assert_eq!(other.read_n(512), vec![0; 512]);
    // Bad option magic: dropped.
    let mut r = Raw::hello(&a, 3);
    r.send(&[0u8; 16]);
    assert!(r.closed());
    assert!(a.wait_log("bad option magic"), "the reason is logged");
    assert!(a.wait_log("bad request magic"), "the reason is logged");
}

#[test]
fn export_name_with_and_without_zeroes() {
    let a = Agent::start("raw-en");
    a.create("v", "1M");
    for (flags, tail) in [(3u32, 0usize), (1, 124)] {
        let mut r = Raw::hello(&a, flags);
        r.option(1, b"v");
        assert_eq!(r.u64(), 1 << 20);
        let tflags = r.u16();
        assert_eq!(tflags & 1, 1);
        assert_eq!(r.read_n(tail), vec![0; tail]);
        // Transmission with simple replies works right after.
        r.request(0, 1, 5, 4096, 512, &[7; 512]);
        assert_eq!(r.simple_reply(), (0, 5));
    }
    // Unknown export via EXPORT_NAME: the server must hang up.
    let mut r = Raw::hello(&a, 3);
    r.option(1, b"missing");
    assert!(r.closed());
}

#[test]
fn oversize_and_bad_requests_keep_the_connection() {
    let a = Agent::start("raw-tx");
    a.create("v", "1M");
    let mut r = Raw::hello(&a, 3);
    r.go("v");
    // 40 MiB write (over the 32 MiB limit): payload consumed, EINVAL in simple mode.
    let big = vec![0x33u8; 40 << 20];
    r.request(0, 1, 1, 0, big.len() as u32, &big);
    assert_eq!(r.simple_reply(), (22, 1));
    // Out of range write: ENOSPC, payload consumed.
    r.request(0, 1, 2, 1 << 20, 512, &[1; 512]);
    assert_eq!(r.simple_reply(), (28, 2));
    // Unknown command: EINVAL.
    r.request(0, 77, 3, 0, 0, &[]);
    assert_eq!(r.simple_reply(), (22, 3));
    // Unknown flag on FLUSH: EINVAL.
    r.request(0x8000, 3, 4, 0, 0, &[]);
    assert_eq!(r.simple_reply(), (22, 4));
    // BLOCK_STATUS without a negotiated context: EINVAL.
    r.request(0, 7, 5, 0, 4096, &[]);
    assert_eq!(r.simple_reply(), (22, 5));
    // Still served.
    r.request(0, 1, 6, 0, 512, &[9; 512]);
    assert_eq!(r.simple_reply(), (0, 6));
    r.request(0, 0, 7, 0, 512, &[]);
    assert_eq!(r.simple_reply(), (0, 7));
    assert_eq!(r.read_n(512), vec![9; 512]);
}

#[test]
fn disc_with_requests_in_flight_answers_them_first() {
    let a = Agent::start("raw-disc");
    a.create("v", "4M");
    let mut r = Raw::hello(&a, 3);
    r.go("v");
    let mut burst = Vec::new();
    for i in 0..32u64 {
        burst.extend_from_slice(&compact_request(
            0,
            1,
            100 + i,
            i * 65536,
            65536,
            &vec![i as u8 + 1; 65536],
        ));
    }
    // DISC right behind the writes, in the same send.
    burst.extend_from_slice(&compact_request(0, 2, 0, 0, 0, &[]));
    r.send(&burst);
    let mut cookies: Vec<u64> = (0..32)
        .map(|_| r.simple_reply())
        .map(|(e, c)| {
            assert_eq!(e, 0);
            c
        })
        .collect();
    cookies.sort();
    assert_eq!(cookies, (100..132).collect::<Vec<_>>());
    assert!(r.closed(), "server closes after DISC");
    let mut check = Raw::hello(&a, 3);
    check.go("v");
    check.request(0, 0, 1, 31 * 65536, 65536, &[]);
    assert_eq!(check.simple_reply(), (0, 1));
    assert_eq!(check.read_n(65536), vec![32; 65536]);
}

#[test]
fn extended_headers_round_trip() {
    let a = Agent::start("raw-ext");
    a.create("v", "2M");
    let mut r = Raw::hello(&a, 3);
    r.option(11, &[]);
    assert_eq!(r.option_reply(11).0, 1);
    // STRUCTURED_REPLY after extended headers: ERR_EXT_HEADER_REQD.
    r.option(8, &[]);
    assert_eq!(r.option_reply(8).0, (1 << 31) + 10);
    // SET_META_CONTEXT base:allocation for "v".
    let mut d = 1u32.to_be_bytes().to_vec();
    d.push(b'v');
    d.extend_from_slice(&1u32.to_be_bytes());
    d.extend_from_slice(&15u32.to_be_bytes());
    d.extend_from_slice(b"base:allocation");
    r.option(10, &d);
    let (kind, data) = r.option_reply(10);
    assert_eq!(kind, 4);
    let id = u32::from_be_bytes(data[..4].try_into().unwrap());
    assert_eq!(&data[4..], b"base:allocation");
    assert_eq!(r.option_reply(10).0, 1);
    r.go("v");
    let ext_req = |flags: u16, cmd: u16, cookie: u64, offset: u64, len: u64| {
        let mut b = 0x21e4_1c71u32.to_be_bytes().to_vec();
        b.extend_from_slice(&flags.to_be_bytes());
        b.extend_from_slice(&cmd.to_be_bytes());
        b.extend_from_slice(&cookie.to_be_bytes());
        b.extend_from_slice(&offset.to_be_bytes());
        b.extend_from_slice(&len.to_be_bytes());
        b
    };
    let mut w = ext_req(1 << 5, 1, 11, 1 << 20, 4096);
    w.extend_from_slice(&[0x77; 4096]);
    r.send(&w);
    // Extended reply: magic, flags, type, cookie, offset, length.
    let head = |r: &mut Raw| (r.u32(), r.u16(), r.u16(), r.u64(), r.u64(), r.u64());
    assert_eq!(head(&mut r), (0x6e8a_278c, 1, 0, 11, 1 << 20, 0));
    r.send(&ext_req(0, 0, 12, 1 << 20, 4096));
    assert_eq!(head(&mut r), (0x6e8a_278c, 1, 1, 12, 1 << 20, 8 + 4096));
    assert_eq!(r.u64(), 1 << 20);
    assert_eq!(r.read_n(4096), vec![0x77; 4096]);
    // Block status: extended chunk with 64-bit extents; a hole then the data.
    r.send(&ext_req(0, 7, 13, 0, 2 << 20));
    let (magic, flags, kind, cookie, _off, len) = head(&mut r);
    assert_eq!((magic, flags, kind, cookie), (0x6e8a_278c, 1, 6, 13));
    assert_eq!(r.u32(), id);
    let n = r.u32() as u64;
    assert_eq!(len, 8 + 16 * n);
    let ext: Vec<(u64, u64)> = (0..n).map(|_| (r.u64(), r.u64())).collect();
    assert_eq!(ext[0], (1 << 20, 3), "{ext:?}");
    assert_eq!(ext[1].1, 0, "{ext:?}");
    // An error in extended mode is an ERROR chunk with a message.
    r.send(&ext_req(0, 0, 14, 2 << 20, 512));
    let (_, flags, kind, cookie, _, len) = head(&mut r);
    assert_eq!((flags, kind, cookie), (1, 0x8001, 14));
    let body = r.read_n(len as usize);
    assert_eq!(u32::from_be_bytes(body[..4].try_into().unwrap()), 22);
    assert!(String::from_utf8_lossy(&body[6..]).contains("past the end"));
}

#[test]
fn thousands_of_requests_in_flight_are_all_answered() {
    // More requests at once than the io_uring has slots (512): the rest wait for a slot.
    let a = Agent::start("raw-many");
    a.create("v", "8M");
    let mut r = Raw::hello(&a, 3);
    r.go("v");
    let count = 3000u64;
    let mut burst = Vec::new();
    for i in 0..count {
        burst.extend_from_slice(&compact_request(0, 0, i, (i % 16384) * 512, 512, &[]));
    }
    r.send(&burst);
    let mut seen = vec![false; count as usize];
    for _ in 0..count {
        let (err, cookie) = r.simple_reply();
        assert_eq!(err, 0);
        assert_eq!(r.read_n(512), vec![0; 512]);
        assert!(
            !std::mem::replace(&mut seen[cookie as usize], true),
            "cookie {cookie} answered twice"
        );
    }
    assert!(seen.iter().all(|s| *s));
}
