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

mod execute;
mod reading;

use execute::*;
use reading::*;

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
mod tests;
