//! The reader's guesses (several small WRITEs read at once, each payload straight into a
//! buffer asked for before its header was read): random request streams, sent over a real
//! unix socket in random pieces, must reach the export exactly as sent, whatever the
//! guesses: mixed lengths, reads, trims, write-zeroes, flushes and refused writes among
//! small writes, each a wrong guess. Every guessed buffer is placed or dropped.

mod mem;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ferry_nbd::{ExportInfo, ServerConfig, serve_connection};
use mem::{Mem, One};
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const SIZE: u64 = 16 << 20;
/// Reads go to the last MiB, which no request writes: it holds `pattern` throughout.
const READ_AREA: u64 = SIZE - (1 << 20);

fn pattern(at: u64) -> u8 {
    (at.wrapping_mul(2_654_435_761) >> 13) as u8
}

#[derive(Clone, Debug)]
enum Req {
    Write(u32),
    Read,
    Trim,
    Zero,
    Flush,
    /// A WRITE past the end: refused, its payload skipped.
    Refused(u32),
}

fn req() -> impl Strategy<Value = Req> {
    prop_oneof![
        12 => Just(Req::Write(4096)),
        2 => prop::sample::select(vec![512u32, 8192, 65536, 131072]).prop_map(Req::Write),
        1 => Just(Req::Read),
        1 => Just(Req::Trim),
        1 => Just(Req::Zero),
        1 => Just(Req::Flush),
        1 => Just(Req::Refused(4096)),
    ]
}

fn header(cmd: u16, cookie: u64, off: u64, len: u32) -> Vec<u8> {
    let mut h = 0x2560_9513u32.to_be_bytes().to_vec();
    h.extend_from_slice(&0u16.to_be_bytes());
    h.extend_from_slice(&cmd.to_be_bytes());
    h.extend_from_slice(&cookie.to_be_bytes());
    h.extend_from_slice(&off.to_be_bytes());
    h.extend_from_slice(&len.to_be_bytes());
    h
}

/// What a reply must be: `Ok(Some(bytes))` for a read.
type Expect = Result<Option<Vec<u8>>, ()>;

/// The stream's bytes, what each cookie's reply must be, and the export's bytes after.
fn build(reqs: &[Req], seed: u64) -> (Vec<u8>, Vec<Expect>, Vec<u8>) {
    let mut model: Vec<u8> = (0..SIZE).map(pattern).collect();
    let mut stream = Vec::new();
    let mut expect = Vec::new();
    // Requests that change data get regions of their own: the outcome does not depend on
    // the order the server runs them in.
    let mut next_free = 0u64;
    let mut take = |len: u64| {
        let at = next_free;
        next_free += len.next_multiple_of(4096);
        assert!(next_free <= READ_AREA, "the stream fits the export");
        at
    };
    for (i, r) in reqs.iter().enumerate() {
        let cookie = i as u64;
        match r {
            Req::Write(len) => {
                let at = take(*len as u64);
                let data: Vec<u8> = (0..*len as u64).map(|k| pattern(k ^ seed ^ (cookie << 20))).collect();
                stream.extend(header(1, cookie, at, *len));
                stream.extend(&data);
                model[at as usize..at as usize + data.len()].copy_from_slice(&data);
                expect.push(Ok(None));
            }
            Req::Read => {
                let at = READ_AREA + (seed + cookie) % 255 * 4096;
                stream.extend(header(0, cookie, at, 4096));
                expect.push(Ok(Some(model[at as usize..at as usize + 4096].to_vec())));
            }
            Req::Trim | Req::Zero => {
                let at = take(4096);
                stream.extend(header(if matches!(r, Req::Trim) { 4 } else { 6 }, cookie, at, 4096));
                model[at as usize..at as usize + 4096].fill(0);
                expect.push(Ok(None));
            }
            Req::Flush => {
                stream.extend(header(3, cookie, 0, 0));
                expect.push(Ok(None));
            }
            Req::Refused(len) => {
                stream.extend(header(1, cookie, SIZE, *len));
                stream.extend(vec![0xee; *len as usize]);
                expect.push(Err(()));
            }
        }
    }
    stream.extend(header(2, u64::MAX, 0, 0)); // DISC
    (stream, expect, model)
}

/// Sends the stream, checks every reply and the export's bytes; returns how many buffers
/// the server asked for on a guess, and how many of those it used.
async fn run(reqs: Vec<Req>, pieces: Vec<usize>, seed: u64) -> Result<(usize, usize), TestCaseError> {
    tokio::time::timeout(Duration::from_secs(10), exchange(reqs, pieces, seed))
        .await
        .map_err(|_| TestCaseError::fail("no end within 10 s: the server lost its place in the stream"))?
}

async fn exchange(reqs: Vec<Req>, pieces: Vec<usize>, seed: u64) -> Result<(usize, usize), TestCaseError> {
    let (stream, expect, model) = build(&reqs, seed);
    let mem = Mem::new(ExportInfo::new(SIZE), (0..SIZE).map(pattern).collect());
    let live = mem.live.clone();
    let catalog = Arc::new(One(mem.clone()));
    let (mut client, server) = tokio::net::UnixStream::pair().unwrap();
    let task = tokio::spawn(serve_connection(
        server,
        "test",
        catalog,
        Arc::new(ServerConfig::default()),
        CancellationToken::new(),
    ));
    mem::handshake(&mut client).await.unwrap();

    let (mut rd, mut wr) = client.into_split();
    let sender = tokio::spawn(async move {
        // In pieces, with pauses: the server's reads end anywhere, guesses run dry.
        let mut at = 0;
        for (k, p) in pieces.iter().cycle().enumerate() {
            if at >= stream.len() {
                break;
            }
            let end = (at + p).min(stream.len());
            wr.write_all(&stream[at..end]).await.unwrap();
            at = end;
            if k % 3 == 0 {
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        }
        wr
    });
    let mut got: Vec<Option<Expect>> = vec![None; expect.len()];
    for _ in 0..expect.len() {
        let mut head = [0u8; 16];
        rd.read_exact(&mut head).await.unwrap();
        prop_assert_eq!(&head[..4], &0x6744_6698u32.to_be_bytes());
        let errno = u32::from_be_bytes(head[4..8].try_into().unwrap());
        let cookie = u64::from_be_bytes(head[8..16].try_into().unwrap()) as usize;
        prop_assert!(cookie < expect.len() && got[cookie].is_none(), "cookie {} once", cookie);
        got[cookie] = Some(if errno != 0 {
            Err(())
        } else if let Ok(Some(want)) = &expect[cookie] {
            let mut data = vec![0; want.len()];
            rd.read_exact(&mut data).await.unwrap();
            Ok(Some(data))
        } else {
            Ok(None)
        });
    }
    let _wr = sender.await.unwrap();
    task.await
        .unwrap()
        .map_err(|e| TestCaseError::fail(format!("server: {e}")))?;
    for (i, (g, e)) in got.iter().zip(&expect).enumerate() {
        prop_assert_eq!(g.as_ref(), Some(e), "reply to request {} ({:?})", i, reqs[i]);
    }
    let data = mem.data.lock().unwrap();
    let first = data.iter().zip(&model).position(|(a, b)| a != b);
    prop_assert_eq!(first, None, "the export holds what was sent");
    prop_assert_eq!(live.load(Ordering::SeqCst), 0, "every buffer dropped once");
    let (guessed, placed) = (mem.guessed.load(Ordering::SeqCst), mem.placed.load(Ordering::SeqCst));
    prop_assert!(placed <= guessed);
    Ok((guessed, placed))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, max_shrink_iters: 16, ..ProptestConfig::default() })]
    #[test]
    fn random_streams_reach_the_export_as_sent(
        reqs in prop::collection::vec(req(), 1..160),
        pieces in prop::collection::vec(1usize..20_000, 1..8),
        seed in any::<u64>(),
    ) {
        runtime().block_on(run(reqs, pieces, seed))?;
    }
}

/// A long run of small writes is read with guesses, and a wrong guess is survived: the
/// property test above would pass without any guessing at all.
#[test]
fn small_writes_are_guessed_and_wrong_guesses_recovered() {
    let mut reqs = vec![Req::Write(4096); 300];
    for i in (20..300).step_by(41) {
        reqs[i] = Req::Read;
        reqs[i + 3] = Req::Write(8192);
    }
    // Sent whole: the server finds many requests at a time.
    let (guessed, placed) = runtime().block_on(run(reqs, vec![1 << 20], 7)).unwrap();
    assert!(
        placed >= 100,
        "most small writes land in guessed buffers: {placed} of {guessed}"
    );
    assert!(
        placed < guessed,
        "wrong and unused guesses were dropped: {placed} of {guessed}"
    );
}
