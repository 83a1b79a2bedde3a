//! The replication link between two agents: one TCP connection, a Noise handshake from the
//! pairing key, then sealed frames both ways ([`ferry_proto::batch`]).
//!
//! ```text
//! handshake:  u16 length (big-endian) + Noise message, each way once
//! then:       frames (48-byte header + sealed body), each direction its own nonce counter
//! ```
//!
//! Every frame after the handshake is sealed, control messages included, so nothing but a
//! paired agent can inject, replay or reorder anything. A frame that fails to open ends
//! the connection: the protected side reconnects and resends from its last acknowledged
//! record, and nothing of the bad frame was used.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferry_proto::batch::{
    BatchError, BatchHeader, Direction, FLAG_ZSTD, FrameKind, HEADER_BYTES, Opener, Sealer, frame_bytes,
};
use ferry_proto::handshake::{self, HandshakeError, SessionKeys};
use ferry_proto::message::{self, Message};
use ferry_proto::records;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// How long a handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("handshake: {0}")]
    Handshake(#[from] HandshakeError),
    #[error("frame: {0}")]
    Frame(#[from] BatchError),
    #[error("the peer sent a bad frame: {0}")]
    Content(String),
    #[error("handshake timed out after {0:?}")]
    Timeout(Duration),
}

/// One frame as received and opened.
#[derive(Debug)]
pub enum Frame {
    Control(Message),
    /// A batch: its header and its (decompressed) records' plaintext.
    Batch(BatchHeader, Vec<u8>),
}

/// A bandwidth cap shared by everything a link sends (control frames included): a token
/// bucket holding at most a quarter second of bytes.
#[derive(Debug)]
pub struct Pace {
    bytes_per_s: u64,
    state: tokio::sync::Mutex<(f64, Instant)>,
}

impl Pace {
    pub fn new(bytes_per_s: u64) -> Arc<Pace> {
        Arc::new(Pace {
            bytes_per_s,
            state: tokio::sync::Mutex::new((0.0, Instant::now())),
        })
    }

    /// Waits until `bytes` may be sent (at once when there is no cap).
    pub async fn take(&self, bytes: usize) {
        if self.bytes_per_s == 0 {
            return;
        }
        let rate = self.bytes_per_s as f64;
        let mut st = self.state.lock().await;
        let now = Instant::now();
        let (tokens, last) = *st;
        let tokens = (tokens + now.duration_since(last).as_secs_f64() * rate).min(rate / 4.0) - bytes as f64;
        *st = (tokens, now);
        if tokens < 0.0 {
            // In debt: wait it off while holding the lock, so senders take turns.
            tokio::time::sleep(Duration::from_secs_f64(-tokens / rate)).await;
        }
    }
}

/// Counters of one link, for status.
#[derive(Debug, Default)]
pub struct LinkStats {
    pub sent_bytes: AtomicU64,
    pub received_bytes: AtomicU64,
}

async fn write_message(s: &mut TcpStream, m: &[u8]) -> io::Result<()> {
    let len = u16::try_from(m.len()).map_err(|_| io::Error::other("handshake message too long"))?;
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(m);
    s.write_all(&out).await
}

async fn read_message(s: &mut TcpStream) -> io::Result<Vec<u8>> {
    let len = s.read_u16().await? as usize;
    let mut m = vec![0u8; len];
    s.read_exact(&mut m).await?;
    Ok(m)
}

/// The sending half of a link.
#[derive(Debug)]
pub struct LinkWriter {
    wr: OwnedWriteHalf,
    sealer: Sealer,
    pace: Arc<Pace>,
    stats: Arc<LinkStats>,
}

/// The receiving half of a link.
#[derive(Debug)]
pub struct LinkReader {
    rd: BufReader<OwnedReadHalf>,
    opener: Opener,
    stats: Arc<LinkStats>,
}

fn halves(
    stream: TcpStream,
    keys: &SessionKeys,
    initiator: bool,
    pace: Arc<Pace>,
    stats: Arc<LinkStats>,
) -> (LinkReader, LinkWriter) {
    let _ = stream.set_nodelay(true);
    let (rd, wr) = stream.into_split();
    // The protected site initiates: its frames go to the recovery site.
    let (send, recv, send_dir, recv_dir) = if initiator {
        (
            &keys.initiator_to_responder,
            &keys.responder_to_initiator,
            Direction::ToRecovery,
            Direction::ToProtected,
        )
    } else {
        (
            &keys.responder_to_initiator,
            &keys.initiator_to_responder,
            Direction::ToProtected,
            Direction::ToRecovery,
        )
    };
    (
        LinkReader {
            rd: BufReader::with_capacity(1 << 20, rd),
            opener: Opener::new(recv, recv_dir),
            stats: stats.clone(),
        },
        LinkWriter {
            wr,
            sealer: Sealer::new(send, send_dir),
            pace,
            stats,
        },
    )
}

/// Connects to a peer and runs the handshake as the initiator.
pub async fn connect(
    addr: &str,
    key: &[u8; 32],
    pace: Arc<Pace>,
    stats: Arc<LinkStats>,
) -> Result<(LinkReader, LinkWriter), LinkError> {
    let work = async {
        let mut s = TcpStream::connect(addr).await?;
        let (init, hello) = handshake::initiate(key)?;
        write_message(&mut s, &hello).await?;
        let reply = match read_message(&mut s).await {
            Ok(r) => r,
            // A responder that cannot open our hello hangs up without a word.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(LinkError::Content(
                    "the peer closed the connection during the handshake: it holds another pairing key (see its log)"
                        .into(),
                ));
            }
            Err(e) => return Err(e.into()),
        };
        let keys = init.finish(&reply)?;
        Ok(halves(s, &keys, true, pace, stats))
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, work)
        .await
        .map_err(|_| LinkError::Timeout(HANDSHAKE_TIMEOUT))?
}

/// Runs the handshake as the responder with the first of `keys` that opens the peer's
/// hello; returns the halves and that key's index.
pub async fn accept(
    mut s: TcpStream,
    keys: &[[u8; 32]],
    pace: Arc<Pace>,
    stats: Arc<LinkStats>,
) -> Result<(LinkReader, LinkWriter, usize), LinkError> {
    let work = async {
        let hello = read_message(&mut s).await?;
        let mut last = HandshakeError::WrongKey;
        for (i, key) in keys.iter().enumerate() {
            match handshake::respond(key, &hello) {
                Ok((reply, outcome)) => {
                    write_message(&mut s, &reply).await?;
                    let keys = outcome?;
                    let (r, w) = halves(s, &keys, false, pace, stats);
                    return Ok((r, w, i));
                }
                Err(HandshakeError::WrongKey) => continue,
                Err(e) => {
                    last = e;
                    break;
                }
            }
        }
        Err(last.into())
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, work)
        .await
        .map_err(|_| LinkError::Timeout(HANDSHAKE_TIMEOUT))?
}

impl LinkWriter {
    async fn send_frame(&mut self, header: &BatchHeader, plain: &[u8]) -> Result<(), LinkError> {
        let frame = self.sealer.seal(header, plain)?;
        self.pace.take(frame.len()).await;
        self.wr.write_all(&frame).await?;
        self.stats.sent_bytes.fetch_add(frame.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    pub async fn send(&mut self, vpg: u64, m: &Message) -> Result<(), LinkError> {
        let h = BatchHeader {
            kind: FrameKind::Control,
            flags: 0,
            vpg,
            epoch: 0,
            batch_seq: 0,
            first_seq: 0,
            record_count: 0,
        };
        self.send_frame(&h, &message::encode(m)).await
    }

    /// Sends a batch whose body is ready (compressed or not, as `header.flags` says).
    pub async fn send_batch(&mut self, header: &BatchHeader, body: &[u8]) -> Result<(), LinkError> {
        self.send_frame(header, body).await
    }
}

impl LinkReader {
    /// The next frame, opened (and decompressed). EOF is an `UnexpectedEof` I/O error.
    pub async fn recv(&mut self) -> Result<Frame, LinkError> {
        let mut head = [0u8; HEADER_BYTES];
        self.rd.read_exact(&mut head).await?;
        let n = frame_bytes(&head)?.expect("a whole header is at hand");
        let mut frame = vec![0u8; n];
        frame[..HEADER_BYTES].copy_from_slice(&head);
        self.rd.read_exact(&mut frame[HEADER_BYTES..]).await?;
        self.stats.received_bytes.fetch_add(n as u64, Ordering::Relaxed);
        let (h, plain) = self.opener.open(&frame)?;
        match h.kind {
            FrameKind::Control => message::decode(&plain)
                .map(Frame::Control)
                .map_err(|e| LinkError::Content(e.to_string())),
            FrameKind::Batch if h.flags & FLAG_ZSTD != 0 => {
                let plain = records::decompress(&plain).map_err(|e| LinkError::Content(e.to_string()))?;
                Ok(Frame::Batch(h, plain))
            }
            FrameKind::Batch => Ok(Frame::Batch(h, plain)),
        }
    }

    /// Reads frames on a task of its own into a channel (so that waiting for the next one
    /// can time out without losing a partly read frame); the task ends after the first
    /// error, which it passes on, or when the receiver is dropped. Abort it on drop of the
    /// returned guard.
    pub fn into_channel(mut self) -> (tokio::sync::mpsc::Receiver<Result<Frame, LinkError>>, ReaderTask) {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let task = tokio::spawn(async move {
            loop {
                let f = self.recv().await;
                let end = f.is_err();
                if tx.send(f).await.is_err() || end {
                    return;
                }
            }
        });
        (rx, ReaderTask(task))
    }
}

/// The task of [`LinkReader::into_channel`]; aborted when dropped.
#[derive(Debug)]
pub struct ReaderTask(tokio::task::JoinHandle<()>);

impl Drop for ReaderTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}
