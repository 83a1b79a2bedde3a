//! Reading requests off the socket: payloads read straight into the export's buffers,
//! and the guessed next write whose buffer is taken before its header arrives.

use super::execute::InFlight;
use super::*;

/// Where the reader is within the client's byte stream.
pub(super) enum Reading<B> {
    /// Between requests.
    Header,
    /// Reading a WRITE payload into the export's buffer.
    Payload { req: InFlight<B>, filled: usize },
    /// Skipping the payload of a refused request; its error reply goes out after.
    Discard { reply: Vec<u8>, left: u64, budget: Budget },
}

/// Replies handed to the writer task after which the reader yields once, so that the writer
/// sends them (see `transmit`).
pub(super) const REPLY_BATCH: usize = 8;
/// Bytes read from the socket at a time into the request buffer.
pub(super) const READ_CHUNK_BYTES: usize = 256 * 1024;
/// A WRITE payload at least this large is read straight into its buffer: after one, the
/// reader takes only the next header into the request buffer.
pub(super) const DIRECT_PAYLOAD_BYTES_MIN: usize = 64 * 1024;

/// What follows the request buffer in the stream after a guessing read (see the module
/// docs), in order: header bytes, and payloads already in the buffers guessed for them.
pub(super) enum Ahead<B> {
    Header(Vec<u8>),
    Payload { buf: B, filled: usize },
}

/// Most buffers guessed for one read.
pub(super) const GUESS_DEPTH_MAX: usize = 16;
/// Requests without guessing after a wrong guess (guessing starts again at depth 1, so a
/// stream where other requests come every few writes still reads most writes in batches).
pub(super) const GUESS_PAUSE_REQUESTS: u32 = 8;

/// The reader's guess about the next requests: WRITEs of `len` bytes, `depth` of them.
pub(super) struct Guess {
    pub(super) len: usize,
    pub(super) depth: usize,
    pub(super) pause: u32,
}

impl Guess {
    pub(super) fn new() -> Guess {
        Guess {
            len: 0,
            depth: 1,
            pause: 0,
        }
    }

    /// A request came: a WRITE of `write_len` bytes, or something else (`None`).
    pub(super) fn saw(&mut self, write_len: Option<usize>) {
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

    pub(super) fn wrong(&mut self) {
        self.pause = GUESS_PAUSE_REQUESTS;
        self.depth = 1;
    }
}

/// Drops buffers newest first (an export may then take back the newest reservation
/// instead of leaving a gap).
pub(super) fn drop_newest_first<B>(mut bufs: Vec<B>) {
    while let Some(b) = bufs.pop() {
        drop(b);
    }
}

/// A guess was wrong: every byte read ahead goes into the request buffer, in stream order,
/// and the guessed buffers are dropped.
pub(super) fn spill<B: IoBuffer>(ahead: &mut VecDeque<Ahead<B>>, inbuf: &mut bytes::BytesMut) {
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
pub(super) async fn read_more<R: ReadNow, E: Export>(
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
