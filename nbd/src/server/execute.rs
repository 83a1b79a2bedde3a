//! Running one request against the export and queueing its reply: the budget it holds,
//! clipping of block-status extents, replies written in batches.

use super::*;

/// One reply on its way to the writer; `_budget` returns to the connection once sent.
pub(super) struct Outgoing<B> {
    pub(super) head: Vec<u8>,
    pub(super) data: Option<B>,
    pub(super) _budget: Budget,
}

pub(super) async fn write_replies<W: AsyncWrite + Unpin, B: AsRef<[u8]>>(
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

pub(super) enum End {
    Disconnect,
    Eof,
    Shutdown,
    Failed(ConnectionError),
}

pub(super) struct Ctx<E> {
    pub(super) export: Arc<E>,
    pub(super) mode: ReplyMode,
}

/// Data an operation returns for its reply.
pub(super) enum Done<B> {
    Ack,
    Data(B),
    Extents(Vec<Extent>),
}

pub(super) async fn execute<E: Export>(
    ctx: &Ctx<E>,
    op: Op,
    payload: Option<E::Buf>,
) -> Result<Done<E::Buf>, ExportError> {
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
pub(super) fn clip_extents(extents: &mut Vec<Extent>, len: u64, mode: ReplyMode, max: usize) {
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
pub(super) struct InFlight<B> {
    pub(super) cookie: u64,
    pub(super) offset: u64,
    pub(super) op: Op,
    pub(super) payload: Option<B>,
    pub(super) budget: Budget,
}

pub(super) async fn run_op<E: Export>(
    ctx: Arc<Ctx<E>>,
    req: InFlight<E::Buf>,
    abandon: CancellationToken,
) -> Outgoing<E::Buf> {
    let InFlight {
        cookie,
        offset,
        op,
        payload,
        budget,
    } = req;
    let started = ctx.export.stats().map(|_| std::time::Instant::now());
    let result = tokio::select! {
        r = execute(&ctx, op, payload) => r,
        _ = abandon.cancelled() => Err(ExportError::new(Errno::ESHUTDOWN, "the agent is shutting down")),
    };
    if let (Some(stats), Some(t)) = (ctx.export.stats(), started) {
        stats.record(&op, result.is_err(), t.elapsed());
    }
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
