//! The I/O shell around the protocol core: runs negotiation and transmission for one
//! connection over any byte stream (TCP, unix socket, socket-activated fd).
//!
//! Transmission keeps many requests in flight inside the connection's one task: a reader
//! state machine (cancel-safe, fed by `read_buf`) decodes and checks each header, fills a
//! WRITE payload into the export's buffer, and adds the operation to a `FuturesUnordered`.
//! Large payloads, and every payload of an export that asks for it ([`Export::copy_once`]),
//! are read straight from the socket into their buffer, together with the next request's
//! header and nothing more (one vectored read, [`ReadNow`]), so no payload byte passes
//! through the request buffer. For small writes the reader also guesses that the next
//! requests are WRITEs of the same length: it asks the export for their buffers
//! ([`Export::speculative_buffer`]) and reads [payload | header | guessed payload | header
//! | …] in one go, so a stream of small writes costs one read per batch, not per request.
//! A guess that was wrong (the header says otherwise) costs a copy of the bytes that
//! landed in the guessed buffers back into the request buffer, and guessing pauses for a
//! while; unused buffers are dropped newest first. Each finished operation's reply goes to one writer
//! task, which sends every reply that is ready in one flush. Replies go out in completion
//! order. A byte budget per connection (`inflight_bytes_max`) stops the reader while
//! requests and unsent replies hold too much memory.
//!
//! Shutdown (the `shutdown` token), field by field:
//! - the reader stops taking requests at the next header;
//! - operations in flight run to completion for up to `shutdown_grace`, after which the
//!   ones still running are answered with ESHUTDOWN;
//! - the writer sends every reply, flushes and closes the stream.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::export::{Catalog, Export, ExportError, Extent, IoBuffer};
use crate::negotiate::{Negotiation, ReplyMode, Session, Step, greeting, option_reply};
use crate::option::{OPTION_DATA_BYTES_MAX, OptionError, decode_client_flags, decode_option_header};
use crate::reply;
use crate::request::{Checked, Limits, Op, RequestError, check, decode_request, header_bytes};
use crate::wire::{self, Errno, OptionReply};

/// Limits for every connection.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Largest READ or WRITE payload (advertised as the maximum block size).
    pub payload_bytes_max: u32,
    /// Payload and reply bytes one connection may have in flight; the reader waits above it.
    pub inflight_bytes_max: u32,
    /// Time a client has to finish option haggling.
    pub handshake_timeout: Duration,
    /// Time in-flight requests get to finish at shutdown before they fail with ESHUTDOWN.
    pub shutdown_grace: Duration,
    /// A budget shared by every connection of the server: payload and reply bytes in
    /// flight across all of them (a request takes from it as from its connection's).
    pub inflight_total: Option<Arc<Semaphore>>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            payload_bytes_max: 32 << 20,
            inflight_bytes_max: 128 << 20,
            handshake_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
            inflight_total: None,
        }
    }
}

/// A request's share of the in-flight budgets (its connection's and the server's); both
/// return when it is dropped, after its reply was sent.
#[derive(Debug)]
struct Budget {
    _connection: OwnedSemaphorePermit,
    _total: Option<OwnedSemaphorePermit>,
}

/// `cost` bytes of both budgets, if both have them now.
fn take_budget(connection: &Arc<Semaphore>, total: Option<&Arc<Semaphore>>, cost: u32) -> Option<Budget> {
    let c = connection.clone().try_acquire_many_owned(cost).ok()?;
    let t = match total {
        Some(t) => Some(t.clone().try_acquire_many_owned(cost).ok()?),
        None => None,
    };
    Some(Budget {
        _connection: c,
        _total: t,
    })
}

/// Waits until both budgets have had `cost` bytes free (then the caller tries again).
async fn budget_free(connection: &Arc<Semaphore>, total: Option<&Arc<Semaphore>>, cost: u32) {
    if let Ok(p) = connection.acquire_many(cost).await {
        drop(p);
    }
    if let Some(t) = total
        && let Ok(p) = t.acquire_many(cost).await
    {
        drop(p);
    }
}

/// Smallest budget one request is charged, so that even empty requests are bounded.
const REQUEST_COST_MIN_BYTES: u32 = 4096;
/// Most extents sent in one block status reply.
const EXTENTS_MAX: usize = 16 * 1024;
/// Size of the scratch buffer used to skip unwanted payload bytes.
const DISCARD_CHUNK_BYTES: usize = 64 * 1024;

/// Why a connection ended other than by a clean close.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("socket error: {0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Option(#[from] OptionError),
    #[error("{0}")]
    Request(#[from] RequestError),
    #[error("protocol violation: {0}")]
    Violation(String),
    #[error("client did not finish negotiation within {0:?}")]
    HandshakeTimeout(Duration),
}

/// A client connection the server can split into halves, with a read half that reads
/// into several buffers at once where the transport allows ([`ReadNow`]).
pub trait Connection: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    type Reader: ReadNow;
    type Writer: AsyncWrite + Unpin + Send + 'static;
    fn split_connection(self) -> (Self::Reader, Self::Writer);
}

/// A read half that can wait for bytes, then take what is there into several buffers in
/// one vectored read without waiting.
pub trait ReadNow: AsyncRead + Unpin + Send + 'static {
    /// `false`: only [`AsyncRead`] works (in-memory pipes in tests).
    const VECTORED: bool;
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send + '_;
    /// Fills `bufs` in order from what is there now; `WouldBlock` if nothing is.
    fn try_read_vectored(&self, bufs: &mut [io::IoSliceMut<'_>]) -> io::Result<usize>;
}

macro_rules! socket_connection {
    ($stream:ty, $rd:ty, $wr:ty) => {
        impl Connection for $stream {
            type Reader = $rd;
            type Writer = $wr;
            fn split_connection(self) -> ($rd, $wr) {
                self.into_split()
            }
        }

        impl ReadNow for $rd {
            const VECTORED: bool = true;
            fn readable(&self) -> impl Future<Output = io::Result<()>> + Send + '_ {
                <$rd>::readable(self)
            }
            fn try_read_vectored(&self, bufs: &mut [io::IoSliceMut<'_>]) -> io::Result<usize> {
                <$rd>::try_read_vectored(self, bufs)
            }
        }
    };
}

socket_connection!(
    tokio::net::TcpStream,
    tokio::net::tcp::OwnedReadHalf,
    tokio::net::tcp::OwnedWriteHalf
);
socket_connection!(
    tokio::net::UnixStream,
    tokio::net::unix::OwnedReadHalf,
    tokio::net::unix::OwnedWriteHalf
);

/// In-memory pipes (tests): no vectored read.
impl Connection for tokio::io::DuplexStream {
    type Reader = tokio::io::ReadHalf<tokio::io::DuplexStream>;
    type Writer = tokio::io::WriteHalf<tokio::io::DuplexStream>;
    fn split_connection(self) -> (Self::Reader, Self::Writer) {
        tokio::io::split(self)
    }
}

impl ReadNow for tokio::io::ReadHalf<tokio::io::DuplexStream> {
    const VECTORED: bool = false;
    async fn readable(&self) -> io::Result<()> {
        Ok(())
    }
    fn try_read_vectored(&self, _: &mut [io::IoSliceMut<'_>]) -> io::Result<usize> {
        Err(io::ErrorKind::Unsupported.into())
    }
}

/// Serves one client until it disconnects, breaks the protocol, or `shutdown` fires.
/// `peer` names the client in logs.
pub async fn serve_connection<C, S>(
    stream: S,
    peer: &str,
    catalog: Arc<C>,
    cfg: Arc<ServerConfig>,
    shutdown: CancellationToken,
) -> Result<(), ConnectionError>
where
    C: Catalog,
    S: Connection,
{
    serve_admitted(stream, peer, catalog, cfg, shutdown, || Ok(())).await
}

/// [`serve_connection`], with the host's say between negotiation and transmission: when
/// the client picks its export, `admit` gives it a place among the established
/// connections (held until the connection ends) or says why not; then the client gets
/// `NBD_REP_ERR_POLICY` with that reason (or, after `NBD_OPT_EXPORT_NAME`, which has no
/// error reply, the connection is closed).
pub async fn serve_admitted<C, S, P>(
    mut stream: S,
    peer: &str,
    catalog: Arc<C>,
    cfg: Arc<ServerConfig>,
    shutdown: CancellationToken,
    admit: impl FnOnce() -> Result<P, String> + Send,
) -> Result<(), ConnectionError>
where
    C: Catalog,
    S: Connection,
    P: Send,
{
    let mut admit = Some(admit);
    let mut place = None;
    let negotiated = tokio::select! {
        r = tokio::time::timeout(cfg.handshake_timeout, negotiate(&mut stream, &*catalog, &cfg, &mut admit, &mut place)) => {
            r.map_err(|_| ConnectionError::HandshakeTimeout(cfg.handshake_timeout))?
        }
        _ = shutdown.cancelled() => return Ok(()),
    };
    let session = match negotiated {
        Ok(Some(s)) => s,
        Ok(None) => return Ok(()),
        // A client that hangs up while haggling (after ABORT, or after reading the list it
        // wanted) is a normal end, not a failure.
        Err(ConnectionError::Io(e))
            if matches!(
                e.kind(),
                io::ErrorKind::UnexpectedEof | io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ) =>
        {
            debug!(peer, error = %e, "client closed during negotiation");
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    info!(peer, export = %session.name, mode = ?session.mode, "client connected");
    let r = transmit(stream, session, &cfg, shutdown, peer).await;
    drop(place);
    r
}

async fn negotiate<C: Catalog, S: AsyncRead + AsyncWrite + Unpin, P, A: FnOnce() -> Result<P, String>>(
    s: &mut S,
    catalog: &C,
    cfg: &ServerConfig,
    admit: &mut Option<A>,
    place: &mut Option<P>,
) -> Result<Option<Session<C::Export>>, ConnectionError> {
    s.write_all(&greeting()).await?;
    let mut flags = [0u8; 4];
    s.read_exact(&mut flags).await?;
    let mut neg = Negotiation::new(decode_client_flags(flags)?, cfg.payload_bytes_max);
    let mut out = Vec::new();
    let mut data = Vec::new();
    loop {
        let mut head = [0u8; wire::OPTION_HEADER_BYTES];
        s.read_exact(&mut head).await?;
        let header = decode_option_header(&head)?;
        out.clear();
        if header.length > OPTION_DATA_BYTES_MAX {
            discard(s, header.length as u64).await?;
            let msg = format!("option data of {} bytes exceeds {OPTION_DATA_BYTES_MAX}", header.length);
            option_reply(&mut out, header.code, OptionReply::ERR_TOO_BIG, msg.as_bytes());
            s.write_all(&out).await?;
            continue;
        }
        data.resize(header.length as usize, 0);
        s.read_exact(&mut data).await?;
        let step = neg.on_option(header.code, &data, catalog, &mut out);
        if matches!(step, Step::Transmission(_))
            && let Some(admit) = admit.take()
        {
            match admit() {
                Ok(p) => *place = Some(p),
                Err(why) => {
                    out.clear();
                    if header.code != wire::OptionCode::EXPORT_NAME {
                        option_reply(&mut out, header.code, OptionReply::ERR_POLICY, why.as_bytes());
                        s.write_all(&out).await?;
                    }
                    s.flush().await?;
                    return Ok(None);
                }
            }
        }
        s.write_all(&out).await?;
        match step {
            Step::Continue => {}
            Step::Close => {
                s.flush().await?;
                return Ok(None);
            }
            Step::Transmission(session) => return Ok(Some(session)),
        }
    }
}

/// Reads and drops `n` bytes without allocating for them.
async fn discard<R: AsyncRead + Unpin>(r: &mut R, mut n: u64) -> io::Result<()> {
    let mut scratch = [0u8; DISCARD_CHUNK_BYTES];
    while n > 0 {
        let take = n.min(DISCARD_CHUNK_BYTES as u64) as usize;
        r.read_exact(&mut scratch[..take]).await?;
        n -= take as u64;
    }
    Ok(())
}

/// One reply on its way to the writer; `_budget` returns to the connection once sent.
struct Outgoing<B> {
    head: Vec<u8>,
    data: Option<B>,
    _budget: Budget,
}

async fn write_replies<W: AsyncWrite + Unpin, B: AsRef<[u8]>>(
    w: W,
    mut rx: mpsc::UnboundedReceiver<Outgoing<B>>,
) -> io::Result<()> {
    let mut w = BufWriter::with_capacity(256 * 1024, w);
    while let Some(mut next) = rx.recv().await {
        loop {
            w.write_all(&next.head).await?;
            if let Some(data) = &next.data {
                w.write_all(data.as_ref()).await?;
            }
            match rx.try_recv() {
                Ok(m) => next = m,
                Err(_) => break,
            }
        }
        w.flush().await?;
    }
    w.shutdown().await
}

enum End {
    Disconnect,
    Eof,
    Shutdown,
    Failed(ConnectionError),
}

struct Ctx<E> {
    export: Arc<E>,
    mode: ReplyMode,
}

/// Data an operation returns for its reply.
enum Done<B> {
    Ack,
    Data(B),
    Extents(Vec<Extent>),
}

async fn execute<E: Export>(ctx: &Ctx<E>, op: Op, payload: Option<E::Buf>) -> Result<Done<E::Buf>, ExportError> {
    let e = &ctx.export;
    match op {
        // Nothing to move; an OFFSET_DATA chunk cannot carry zero bytes, so this is a plain ack.
        Op::Read { len: 0, .. } | Op::Write { len: 0, .. } => Ok(Done::Ack),
        Op::Read { offset, len } => e.read(offset, e.buffer(len as usize)).await.map(Done::Data),
        Op::Write { offset, fua, .. } => e
            .write(offset, payload.expect("WRITE carries its payload"), fua)
            .await
            .map(|_| Done::Ack),
        Op::Flush => e.flush().await.map(|_| Done::Ack),
        Op::Trim { len: 0, .. } | Op::WriteZeroes { len: 0, .. } | Op::Cache { len: 0, .. } => Ok(Done::Ack),
        Op::Trim { offset, len, fua } => e.trim(offset, len, fua).await.map(|_| Done::Ack),
        Op::WriteZeroes { offset, len, mode } => e.write_zeroes(offset, len, mode).await.map(|_| Done::Ack),
        Op::Cache { offset, len } => e.cache(offset, len).await.map(|_| Done::Ack),
        Op::BlockStatus { offset, len, req_one } => {
            let max = if req_one { 1 } else { EXTENTS_MAX };
            let mut extents = e.block_status(offset, len, max).await?;
            clip_extents(&mut extents, len, ctx.mode, max);
            if extents.is_empty() {
                return Err(ExportError::new(Errno::EIO, "export reported no extents"));
            }
            Ok(Done::Extents(extents))
        }
        Op::Disc => unreachable!("DISC ends the reader loop"),
    }
}

/// Keeps extents within the request (the last may not run past it here), within 32 bits
/// for compact replies, and at most `max` of them.
fn clip_extents(extents: &mut Vec<Extent>, len: u64, mode: ReplyMode, max: usize) {
    let cap = if mode == ReplyMode::Extended {
        u64::MAX
    } else {
        u32::MAX as u64 & !0xfff
    };
    let mut covered = 0u64;
    let mut kept = 0;
    for i in 0..extents.len().min(max) {
        if covered >= len || extents[i].length == 0 {
            break;
        }
        let l = extents[i].length.min(len - covered).min(cap);
        extents[i].length = l;
        covered += l;
        kept = i + 1;
    }
    extents.truncate(kept);
}

/// One request handed to its task.
struct InFlight<B> {
    cookie: u64,
    offset: u64,
    op: Op,
    payload: Option<B>,
    budget: Budget,
}

async fn run_op<E: Export>(ctx: Arc<Ctx<E>>, req: InFlight<E::Buf>, abandon: CancellationToken) -> Outgoing<E::Buf> {
    let InFlight {
        cookie,
        offset,
        op,
        payload,
        budget,
    } = req;
    let result = tokio::select! {
        r = execute(&ctx, op, payload) => r,
        _ = abandon.cancelled() => Err(ExportError::new(Errno::ESHUTDOWN, "the agent is shutting down")),
    };
    let mut head = Vec::with_capacity(64);
    let mut data = None;
    match result {
        Ok(Done::Ack) => reply::done(&mut head, ctx.mode, cookie, offset),
        Ok(Done::Data(buf)) => {
            reply::read_data_head(&mut head, ctx.mode, cookie, offset, buf.as_ref().len() as u32);
            data = Some(buf);
        }
        Ok(Done::Extents(ext)) => {
            reply::block_status(&mut head, ctx.mode, cookie, offset, wire::BASE_ALLOCATION_ID, &ext)
        }
        Err(e) => {
            if e.errno == Errno::EIO {
                warn!(?op, error = %e, "request failed");
            } else {
                debug!(?op, error = %e, "request failed");
            }
            reply::error(&mut head, ctx.mode, cookie, offset, e.errno, &e.message);
        }
    }
    Outgoing {
        head,
        data,
        _budget: budget,
    }
}

/// Where the reader is within the client's byte stream.
enum Reading<B> {
    /// Between requests.
    Header,
    /// Reading a WRITE payload into the export's buffer.
    Payload { req: InFlight<B>, filled: usize },
    /// Skipping the payload of a refused request; its error reply goes out after.
    Discard { reply: Vec<u8>, left: u64, budget: Budget },
}

/// Replies handed to the writer task after which the reader yields once, so that the writer
/// sends them (see `transmit`).
const REPLY_BATCH: usize = 8;
/// Bytes read from the socket at a time into the request buffer.
const READ_CHUNK_BYTES: usize = 256 * 1024;
/// A WRITE payload at least this large is read straight into its buffer: after one, the
/// reader takes only the next header into the request buffer.
const DIRECT_PAYLOAD_BYTES_MIN: usize = 64 * 1024;

/// What follows the request buffer in the stream after a guessing read (see the module
/// docs), in order: header bytes, and payloads already in the buffers guessed for them.
enum Ahead<B> {
    Header(Vec<u8>),
    Payload { buf: B, filled: usize },
}

/// Most buffers guessed for one read.
const GUESS_DEPTH_MAX: usize = 16;
/// Requests without guessing after a wrong guess (guessing starts again at depth 1, so a
/// stream where other requests come every few writes still reads most writes in batches).
const GUESS_PAUSE_REQUESTS: u32 = 8;

/// The reader's guess about the next requests: WRITEs of `len` bytes, `depth` of them.
struct Guess {
    len: usize,
    depth: usize,
    pause: u32,
}

impl Guess {
    fn new() -> Guess {
        Guess {
            len: 0,
            depth: 1,
            pause: 0,
        }
    }

    /// A request came: a WRITE of `write_len` bytes, or something else (`None`).
    fn saw(&mut self, write_len: Option<usize>) {
        self.pause = self.pause.saturating_sub(1);
        match write_len {
            Some(l) if l > 0 && l < DIRECT_PAYLOAD_BYTES_MIN => self.len = l,
            _ => {}
        }
    }

    /// The buffers to read the next payloads into, if the export guesses along.
    fn buffers<E: Export>(&self, export: &E) -> Vec<E::Buf> {
        if self.len == 0 || self.pause > 0 {
            return Vec::new();
        }
        (0..self.depth)
            .map_while(|_| export.speculative_buffer(self.len))
            .collect()
    }

    /// A read filled `used` of `offered` guessed buffers (or reached them).
    fn read(&mut self, offered: usize, used: usize) {
        if offered == 0 {
            return;
        }
        self.depth = if used == offered {
            (self.depth * 2).min(GUESS_DEPTH_MAX)
        } else {
            (used + 1).min(GUESS_DEPTH_MAX)
        };
    }

    fn wrong(&mut self) {
        self.pause = GUESS_PAUSE_REQUESTS;
        self.depth = 1;
    }
}

/// Drops buffers newest first (an export may then take back the newest reservation
/// instead of leaving a gap).
fn drop_newest_first<B>(mut bufs: Vec<B>) {
    while let Some(b) = bufs.pop() {
        drop(b);
    }
}

/// A guess was wrong: every byte read ahead goes into the request buffer, in stream order,
/// and the guessed buffers are dropped.
fn spill<B: IoBuffer>(ahead: &mut VecDeque<Ahead<B>>, inbuf: &mut bytes::BytesMut) {
    let mut bufs = Vec::new();
    for a in ahead.drain(..) {
        match a {
            Ahead::Header(h) => inbuf.extend_from_slice(&h),
            Ahead::Payload { buf, filled } => {
                inbuf.extend_from_slice(&buf.as_ref()[..filled]);
                bufs.push(buf);
            }
        }
    }
    drop_newest_first(bufs);
}

/// Reads more of the stream: straight into a WRITE's buffer when nothing is buffered (so a
/// large payload is copied once, socket to buffer), else into the request buffer. Both
/// reads are cancel-safe: when another branch of the caller's select wins, nothing is lost
/// (guessed buffers are only held during a read that does not wait).
///
/// `header_only` limits a read into the request buffer to one header: used after a large
/// WRITE, when the next request is likely another one whose payload should not pass
/// through the request buffer, and for every request of a copy-once export. Then, on a
/// transport that reads vectored, the read also takes guessed payloads and their headers
/// (into `ahead`).
async fn read_more<R: ReadNow, E: Export>(
    rd: &mut R,
    reading: &mut Reading<E::Buf>,
    inbuf: &mut bytes::BytesMut,
    header_only: Option<usize>,
    guess: &mut Guess,
    ahead: &mut VecDeque<Ahead<E::Buf>>,
    export: &E,
) -> io::Result<usize> {
    let straight = inbuf.is_empty() && matches!(reading, Reading::Payload { .. } | Reading::Header);
    if let Some(h) = header_only
        && straight
        && R::VECTORED
    {
        loop {
            rd.readable().await?;
            let mut guessed = guess.buffers(export);
            let mut heads = [[0u8; 32]; GUESS_DEPTH_MAX + 1];
            let mut iov = Vec::with_capacity(2 + 2 * guessed.len());
            let mut room = 0;
            if let Reading::Payload { req, filled } = reading {
                let buf = req
                    .payload
                    .as_mut()
                    .expect("a WRITE carries its payload buffer")
                    .as_mut();
                room = buf.len() - *filled;
                iov.push(io::IoSliceMut::new(&mut buf[*filled..]));
            }
            let (first, rest) = heads.split_at_mut(1);
            iov.push(io::IoSliceMut::new(&mut first[0][..h]));
            for (b, head) in guessed.iter_mut().zip(rest.iter_mut()) {
                iov.push(io::IoSliceMut::new(b.as_mut()));
                iov.push(io::IoSliceMut::new(&mut head[..h]));
            }
            let got = rd.try_read_vectored(&mut iov);
            drop(iov);
            let n = match got {
                Ok(n) => n,
                Err(e) => {
                    drop_newest_first(guessed);
                    if e.kind() == io::ErrorKind::WouldBlock {
                        continue;
                    }
                    return Err(e);
                }
            };
            // Hand out the bytes in stream order.
            let mut left = n;
            if let Reading::Payload { filled, .. } = reading {
                let t = left.min(room);
                *filled += t;
                left -= t;
            }
            let t = left.min(h);
            inbuf.extend_from_slice(&heads[0][..t]);
            left -= t;
            let offered = guessed.len();
            let mut used = 0;
            while used < offered && left > 0 {
                let buf = guessed.remove(0);
                let t = left.min(buf.as_ref().len());
                left -= t;
                ahead.push_back(Ahead::Payload { buf, filled: t });
                used += 1;
                let t = left.min(h);
                if t > 0 {
                    ahead.push_back(Ahead::Header(heads[used][..t].to_vec()));
                    left -= t;
                }
            }
            drop_newest_first(guessed);
            guess.read(offered, used);
            return Ok(n);
        }
    }
    if let Reading::Payload { req, filled } = reading
        && inbuf.is_empty()
    {
        let buf = req.payload.as_mut().expect("a WRITE carries its payload buffer");
        let n = rd.read(&mut buf.as_mut()[*filled..]).await?;
        *filled += n;
        return Ok(n);
    }
    if inbuf.capacity() - inbuf.len() < READ_CHUNK_BYTES / 4 {
        inbuf.reserve(READ_CHUNK_BYTES);
    }
    match header_only {
        Some(n) if matches!(reading, Reading::Header) && inbuf.len() < n => {
            let want = n - inbuf.len();
            rd.read_buf(&mut bytes::BufMut::limit(&mut *inbuf, want)).await
        }
        _ => rd.read_buf(inbuf).await,
    }
}

async fn transmit<E: Export, S: Connection>(
    stream: S,
    session: Session<E>,
    cfg: &ServerConfig,
    shutdown: CancellationToken,
    peer: &str,
) -> Result<(), ConnectionError> {
    use bytes::Buf;
    use futures_util::StreamExt;
    use futures_util::stream::FuturesUnordered;

    let (mut rd, wr) = stream.split_connection();
    let (tx, rx) = mpsc::unbounded_channel::<Outgoing<E::Buf>>();
    let writer = tokio::spawn(write_replies(wr, rx));
    assert!(
        cfg.inflight_bytes_max >= cfg.payload_bytes_max,
        "one request must fit the in-flight budget"
    );
    let budget = Arc::new(Semaphore::new(cfg.inflight_bytes_max as usize));
    let abandon = CancellationToken::new();
    let ctx = Arc::new(Ctx {
        export: session.export.clone(),
        mode: session.mode,
    });
    let info = session.export.info().clone();
    let limits = Limits {
        info: &info,
        mode: session.mode,
        base_allocation: session.base_allocation,
        payload_bytes_max: session.payload_bytes_max,
    };
    let mode = session.mode;
    let n = header_bytes(mode);
    let copy_once = session.export.copy_once();
    // Operations run inside this task, not as tasks of their own: no spawn per request.
    let mut inflight = FuturesUnordered::new();
    let mut inbuf = bytes::BytesMut::with_capacity(READ_CHUNK_BYTES);
    let mut reading: Reading<E::Buf> = Reading::Header;
    // Budget a decoded header is waiting for.
    let mut wait_budget: Option<u32> = None;
    // The last WRITE was large, or the export wants every payload copied once: read the
    // next header alone (see `read_more`).
    let mut large_writes = copy_once;
    let mut guess = Guess::new();
    // Bytes a guessing read took beyond the request buffer (they come after it).
    let mut ahead: VecDeque<Ahead<E::Buf>> = VecDeque::new();
    // Replies handed to the writer since the reader last let it run.
    let mut unsent = 0usize;
    let end = 'serve: loop {
        // Consume what is buffered, as far as the budget allows.
        loop {
            match &mut reading {
                Reading::Header => {
                    if inbuf.len() < n {
                        match ahead.pop_front() {
                            Some(Ahead::Header(h)) => {
                                inbuf.extend_from_slice(&h);
                                continue;
                            }
                            Some(p) => {
                                // Not behind a whole header: cannot be its payload.
                                ahead.push_front(p);
                                spill(&mut ahead, &mut inbuf);
                                guess.wrong();
                                continue;
                            }
                            None => break,
                        }
                    }
                    let req = match decode_request(&inbuf[..n], mode) {
                        Ok(r) => r,
                        Err(e) => break 'serve End::Failed(e.into()),
                    };
                    let checked = check(&req, limits);
                    let cost = match &checked {
                        Checked::Op(Op::Read { len, .. } | Op::Write { len, .. }) => (*len).max(REQUEST_COST_MIN_BYTES),
                        _ => REQUEST_COST_MIN_BYTES,
                    };
                    let Some(permit) = take_budget(&budget, cfg.inflight_total.as_ref(), cost) else {
                        wait_budget = Some(cost);
                        break;
                    };
                    wait_budget = None;
                    inbuf.advance(n);
                    guess.saw(match &checked {
                        Checked::Op(Op::Write { len, .. }) => Some(*len as usize),
                        _ => None,
                    });
                    // A payload guessed for this header: kept if the header is a WRITE of
                    // that length, else its bytes are the stream's next ones.
                    let mut guessed = None;
                    if inbuf.is_empty() && matches!(ahead.front(), Some(Ahead::Payload { .. })) {
                        let fits = match (&checked, ahead.front()) {
                            (Checked::Op(Op::Write { len, .. }), Some(Ahead::Payload { buf, .. })) => {
                                buf.as_ref().len() == *len as usize
                            }
                            _ => false,
                        };
                        if fits {
                            let Some(Ahead::Payload { buf, filled }) = ahead.pop_front() else {
                                unreachable!()
                            };
                            guessed = Some((buf, filled));
                        } else {
                            spill(&mut ahead, &mut inbuf);
                            guess.wrong();
                        }
                    }
                    match checked {
                        Checked::Violation(why) => break 'serve End::Failed(ConnectionError::Violation(why)),
                        Checked::Op(Op::Disc) => break 'serve End::Disconnect,
                        Checked::Refuse(r) => {
                            debug!(peer, command = ?req.command, errno = ?r.errno, why = %r.message, "request refused");
                            let mut out = Vec::with_capacity(64);
                            reply::error(&mut out, mode, req.cookie, req.offset, r.errno, &r.message);
                            if r.discard_bytes > 0 {
                                reading = Reading::Discard {
                                    reply: out,
                                    left: r.discard_bytes,
                                    budget: permit,
                                };
                            } else {
                                let _ = tx.send(Outgoing {
                                    head: out,
                                    data: None,
                                    _budget: permit,
                                });
                            }
                        }
                        Checked::Op(op) => {
                            let mut filled = 0;
                            let payload = match (op, guessed) {
                                (Op::Write { .. }, Some((buf, f))) => {
                                    filled = f;
                                    Some(session.export.place_buffer(buf, req.offset, f))
                                }
                                (Op::Write { len, .. }, None) => {
                                    Some(session.export.write_buffer(req.offset, len as usize))
                                }
                                _ => None,
                            };
                            let req = InFlight {
                                cookie: req.cookie,
                                offset: req.offset,
                                op,
                                payload,
                                budget: permit,
                            };
                            if let Op::Write { len, .. } = op {
                                large_writes = len as usize >= DIRECT_PAYLOAD_BYTES_MIN;
                            }
                            large_writes |= copy_once;
                            if matches!(op, Op::Write { len, .. } if len > 0) {
                                reading = Reading::Payload { req, filled };
                            } else {
                                inflight.push(run_op(ctx.clone(), req, abandon.clone()));
                            }
                        }
                    }
                }
                Reading::Payload { req, filled } => {
                    let buf = req
                        .payload
                        .as_mut()
                        .expect("a WRITE carries its payload buffer")
                        .as_mut();
                    let take = inbuf.len().min(buf.len() - *filled);
                    buf[*filled..*filled + take].copy_from_slice(&inbuf[..take]);
                    inbuf.advance(take);
                    *filled += take;
                    if *filled < buf.len() {
                        if ahead.is_empty() {
                            break;
                        }
                        spill(&mut ahead, &mut inbuf);
                        guess.wrong();
                        continue;
                    }
                    let Reading::Payload { req, .. } = std::mem::replace(&mut reading, Reading::Header) else {
                        unreachable!()
                    };
                    inflight.push(run_op(ctx.clone(), req, abandon.clone()));
                }
                Reading::Discard { left, .. } => {
                    let take = (inbuf.len() as u64).min(*left);
                    inbuf.advance(take as usize);
                    *left -= take;
                    if *left > 0 {
                        if ahead.is_empty() {
                            break;
                        }
                        spill(&mut ahead, &mut inbuf);
                        continue;
                    }
                    let Reading::Discard { reply, budget, .. } = std::mem::replace(&mut reading, Reading::Header)
                    else {
                        unreachable!()
                    };
                    let _ = tx.send(Outgoing {
                        head: reply,
                        data: None,
                        _budget: budget,
                    });
                }
            }
        }
        // A payload read straight into its buffer may have completed it.
        if let Reading::Payload { req, filled } = &reading
            && *filled == req.payload.as_ref().map_or(0, |b| b.as_ref().len())
        {
            let Reading::Payload { req, .. } = std::mem::replace(&mut reading, Reading::Header) else {
                unreachable!()
            };
            inflight.push(run_op(ctx.clone(), req, abandon.clone()));
            continue;
        }
        let want_bytes = wait_budget.is_none() && inbuf.len() < READ_CHUNK_BYTES && ahead.is_empty();
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break End::Shutdown,
            Some(out) = inflight.next(), if !inflight.is_empty() => {
                let _ = tx.send(out);
                // A reader that always finds bytes never waits, and the writer task (woken
                // on this thread) would not run until it does: replies would pile up while
                // the client waits for them.
                unsent += 1;
                if unsent >= REPLY_BATCH {
                    unsent = 0;
                    tokio::task::yield_now().await;
                }
            }
            () = budget_free(&budget, cfg.inflight_total.as_ref(), wait_budget.unwrap_or(0)), if wait_budget.is_some() => {
                // Budget is free again: the header is retried above.
            }
            r = read_more(
                &mut rd,
                &mut reading,
                &mut inbuf,
                large_writes.then_some(n),
                &mut guess,
                &mut ahead,
                &*session.export,
            ), if want_bytes => match r {
                Ok(0) if matches!(reading, Reading::Header) && inbuf.is_empty() => break End::Eof,
                Ok(0) => break End::Failed(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
                Ok(_) => {}
                Err(e) => break End::Failed(e.into()),
            },
        }
    };
    // Guessed buffers still ahead when the connection ends go newest first too.
    drop_newest_first(ahead.into_iter().collect());
    // Every request read is answered before the connection closes: on DISC, EOF, errors
    // and shutdown alike; at shutdown, those still running after the grace period fail.
    let grace = cfg.shutdown_grace;
    let deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(grace).await
    };
    tokio::pin!(deadline);
    let mut abandoned = false;
    while !inflight.is_empty() {
        tokio::select! {
            Some(out) = inflight.next() => { let _ = tx.send(out); }
            _ = &mut deadline, if !abandoned => {
                warn!(peer, ?grace, "requests still running after the shutdown grace period; failing them with ESHUTDOWN");
                abandon.cancel();
                abandoned = true;
            }
        }
    }
    drop(tx);
    let written = writer.await.expect("writer task does not panic");
    match end {
        End::Failed(e) => Err(e),
        End::Disconnect | End::Eof | End::Shutdown => {
            if let Err(e) = written
                && !matches!(e.kind(), io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset)
            {
                return Err(e.into());
            }
            info!(peer, export = %session.name, "client disconnected");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extents_are_clipped_to_request_and_width() {
        let mut e = vec![Extent {
            length: 1 << 40,
            flags: 3,
        }];
        clip_extents(&mut e, 1 << 20, ReplyMode::Structured, 10);
        assert_eq!(
            e,
            vec![Extent {
                length: 1 << 20,
                flags: 3
            }]
        );

        let mut e = vec![
            Extent { length: 100, flags: 0 },
            Extent { length: 100, flags: 3 },
            Extent { length: 100, flags: 0 },
        ];
        clip_extents(&mut e, 150, ReplyMode::Extended, 10);
        assert_eq!(
            e,
            vec![Extent { length: 100, flags: 0 }, Extent { length: 50, flags: 3 }]
        );

        let mut e = vec![Extent { length: 100, flags: 0 }, Extent { length: 100, flags: 3 }];
        clip_extents(&mut e, 1000, ReplyMode::Extended, 1);
        assert_eq!(e.len(), 1);
    }
}
