//! The I/O shell around the protocol core: runs negotiation and transmission for one
//! connection over any byte stream (TCP, unix socket, socket-activated fd).
//!
//! Transmission keeps many requests in flight inside the connection's one task: a reader
//! state machine (cancel-safe, fed by `read_buf`) decodes and checks each header, fills a
//! WRITE payload into the export's buffer, and adds the operation to a `FuturesUnordered`.
//! Large payloads, and every payload of an export that asks for it ([`Export::copy_once`]),
//! are read straight from the socket into their buffer, together with the next request's
//! header and nothing more ([`ReadTwo`]: one vectored read per WRITE), so no payload byte
//! passes through the request buffer; each finished operation's reply goes to one writer
//! task, which sends every reply that is ready in one flush. Replies go out in completion
//! order. A byte budget per connection (`inflight_bytes_max`) stops the reader while
//! requests and unsent replies hold too much memory.
//!
//! Shutdown (the `shutdown` token), field by field:
//! - the reader stops taking requests at the next header;
//! - operations in flight run to completion for up to `shutdown_grace`, after which the
//!   ones still running are answered with ESHUTDOWN;
//! - the writer sends every reply, flushes and closes the stream.

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
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            payload_bytes_max: 32 << 20,
            inflight_bytes_max: 128 << 20,
            handshake_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
        }
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

/// A client connection the server can split into halves, with a read half that fills two
/// buffers with one read where the transport allows (a WRITE's payload and, after it, only
/// the next request's header: no payload byte lands in the request buffer, and a stream of
/// writes costs one read each).
pub trait Connection: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    type Reader: ReadTwo;
    type Writer: AsyncWrite + Unpin + Send + 'static;
    fn split_connection(self) -> (Self::Reader, Self::Writer);
}

/// Reads into `first`, then `second`, in one go.
pub trait ReadTwo: AsyncRead + Unpin + Send + 'static {
    fn read_two<'a>(
        &'a mut self,
        first: &'a mut [u8],
        second: &'a mut [u8],
    ) -> impl Future<Output = io::Result<usize>> + Send + 'a;
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

        impl ReadTwo for $rd {
            async fn read_two(&mut self, first: &mut [u8], second: &mut [u8]) -> io::Result<usize> {
                loop {
                    self.readable().await?;
                    let mut bufs = [io::IoSliceMut::new(first), io::IoSliceMut::new(second)];
                    match self.try_read_vectored(&mut bufs) {
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        r => return r,
                    }
                }
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

/// In-memory pipes (tests): no vectored read, the second buffer is left alone.
impl Connection for tokio::io::DuplexStream {
    type Reader = tokio::io::ReadHalf<tokio::io::DuplexStream>;
    type Writer = tokio::io::WriteHalf<tokio::io::DuplexStream>;
    fn split_connection(self) -> (Self::Reader, Self::Writer) {
        tokio::io::split(self)
    }
}

impl ReadTwo for tokio::io::ReadHalf<tokio::io::DuplexStream> {
    async fn read_two(&mut self, first: &mut [u8], _second: &mut [u8]) -> io::Result<usize> {
        self.read(first).await
    }
}

/// Serves one client until it disconnects, breaks the protocol, or `shutdown` fires.
/// `peer` names the client in logs.
pub async fn serve_connection<C, S>(
    mut stream: S,
    peer: &str,
    catalog: Arc<C>,
    cfg: Arc<ServerConfig>,
    shutdown: CancellationToken,
) -> Result<(), ConnectionError>
where
    C: Catalog,
    S: Connection,
{
    let negotiated = tokio::select! {
        r = tokio::time::timeout(cfg.handshake_timeout, negotiate(&mut stream, &*catalog, &cfg)) => {
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
    transmit(stream, session, &cfg, shutdown, peer).await
}

async fn negotiate<C: Catalog, S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    catalog: &C,
    cfg: &ServerConfig,
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
    _budget: OwnedSemaphorePermit,
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
    budget: OwnedSemaphorePermit,
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
    Discard {
        reply: Vec<u8>,
        left: u64,
        budget: OwnedSemaphorePermit,
    },
}

/// Bytes read from the socket at a time into the request buffer.
const READ_CHUNK_BYTES: usize = 256 * 1024;
/// A WRITE payload at least this large is read straight into its buffer: after one, the
/// reader takes only the next header into the request buffer.
const DIRECT_PAYLOAD_BYTES_MIN: usize = 64 * 1024;

/// Reads more of the stream: straight into a WRITE's buffer when nothing is buffered (so a
/// large payload is copied once, socket to buffer), else into the request buffer. Both
/// reads are cancel-safe: when another branch of the caller's select wins, nothing is lost.
///
/// `header_only` limits a read into the request buffer to one header: used after a large
/// WRITE, when the next request is likely another one whose payload should not pass
/// through the request buffer.
async fn read_more<R: ReadTwo, B: IoBuffer>(
    rd: &mut R,
    reading: &mut Reading<B>,
    inbuf: &mut bytes::BytesMut,
    header_only: Option<usize>,
) -> io::Result<usize> {
    if let Reading::Payload { req, filled } = reading
        && inbuf.is_empty()
    {
        let buf = req.payload.as_mut().expect("a WRITE carries its payload buffer");
        let room = buf.as_ref().len() - *filled;
        let Some(h) = header_only else {
            let n = rd.read(&mut buf.as_mut()[*filled..]).await?;
            *filled += n;
            return Ok(n);
        };
        // The rest of the payload and, behind it, at most the next header.
        let mut next = [0u8; 32];
        let n = rd.read_two(&mut buf.as_mut()[*filled..], &mut next[..h]).await?;
        *filled += n.min(room);
        if n > room {
            inbuf.extend_from_slice(&next[..n - room]);
        }
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
    let end = 'serve: loop {
        // Consume what is buffered, as far as the budget allows.
        loop {
            match &mut reading {
                Reading::Header => {
                    if inbuf.len() < n {
                        break;
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
                    let Ok(permit) = budget.clone().try_acquire_many_owned(cost) else {
                        wait_budget = Some(cost);
                        break;
                    };
                    wait_budget = None;
                    inbuf.advance(n);
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
                            let payload = match op {
                                Op::Write { len, .. } => Some(session.export.write_buffer(req.offset, len as usize)),
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
                                reading = Reading::Payload { req, filled: 0 };
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
                        break;
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
                        break;
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
        let want_bytes = wait_budget.is_none() && inbuf.len() < READ_CHUNK_BYTES;
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break End::Shutdown,
            Some(out) = inflight.next(), if !inflight.is_empty() => {
                let _ = tx.send(out);
            }
            p = budget.clone().acquire_many_owned(wait_budget.unwrap_or(0)), if wait_budget.is_some() => {
                drop(p); // Budget is free again: the header is retried above.
            }
            r = read_more(&mut rd, &mut reading, &mut inbuf, large_writes.then_some(n)), if want_bytes => match r {
                Ok(0) if matches!(reading, Reading::Header) && inbuf.is_empty() => break End::Eof,
                Ok(0) => break End::Failed(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
                Ok(_) => {}
                Err(e) => break End::Failed(e.into()),
            },
        }
    };
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
