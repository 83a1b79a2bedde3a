//! The recovery site's side of the link: accepts paired agents on `replication.listen`,
//! opens the replicas they announce, writes their batches to history and acknowledges
//! what is durable.
//!
//! Batches are written as they come; before an acknowledgement the segments written are
//! synced, once for all the batches at hand: when the stream pauses ([`ACK_DELAY`]), and
//! under a steady stream every [`ACK_EVERY`] or [`ACK_BYTES`]. A batch that does not start where the replica's history ends, or
//! whose records do not decode, ends the connection without a byte of it written: the
//! protected site reconnects and resends from the last acknowledged record.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_proto::message::Message;
use ferry_proto::records;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::admission::{AcceptBackoff, Gate};
use crate::events::RateLimitedLog;
use crate::recover::replica::{PeerSeen, Replica, SessionHold};
use crate::recover::replicas::Replicas;
use crate::replication::link::{self, Frame, LinkError, LinkStats, Pace};

/// Plaintext bytes taken in before an acknowledgement at the latest.
pub const ACK_BYTES: usize = 16 << 20;
/// A pause this long in the stream syncs and acknowledges what came.
pub const ACK_DELAY: Duration = Duration::from_millis(2);
/// Under a steady stream, an acknowledgement at least this often.
pub const ACK_EVERY: Duration = Duration::from_millis(50);
/// A peer silent this long is dropped (it pings every few seconds).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often an idle session looks for replicas deleted under it.
const REMOVED_CHECK: Duration = Duration::from_millis(500);

/// Accepts peers until `stop`.
/// Peers still in their handshake wait at `gate` (bounded in all and per address), so
/// stalled handshakes cannot use up the descriptors; accept failures back off.
pub async fn run(
    listener: TcpListener,
    keys: Arc<Vec<[u8; 32]>>,
    replicas: Arc<Replicas>,
    gate: Arc<Gate>,
    stop: CancellationToken,
) {
    let refused = Arc::new(RateLimitedLog::new(Duration::from_secs(10)));
    let mut backoff = AcceptBackoff::default();
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => {
                    backoff.succeeded();
                    x
                }
                Err(e) => {
                    let wait = backoff.failed("replication", &e);
                    tokio::time::sleep(wait).await;
                    continue;
                }
            },
        };
        let Some(pass) = gate.enter(&peer.ip().to_string()) else {
            continue;
        };
        let (keys, replicas, stop, refused) = (keys.clone(), replicas.clone(), stop.clone(), refused.clone());
        tokio::spawn(async move {
            let stats = Arc::new(LinkStats::default());
            let accepted = link::accept(stream, &keys, Pace::new(0), stats).await;
            drop(pass);
            let (rd, wr, key) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    if let Some(suppressed) = refused.admit() {
                        warn!(%peer, error = %e, suppressed, "replication peer refused");
                    }
                    return;
                }
            };
            info!(%peer, "replication peer connected");
            let seen = PeerSeen {
                address: peer.to_string(),
                key_fingerprint: ferry_proto::pairing::fingerprint(&keys[key]),
                unix_ms: crate::clock::now_ms(),
            };
            match serve(rd, wr, &replicas, &seen, stop).await {
                Ok(()) => info!(%peer, "replication peer disconnected"),
                Err(e) => warn!(%peer, error = %e, "replication session ended"),
            }
        });
    }
}

async fn serve(
    rd: link::LinkReader,
    mut wr: link::LinkWriter,
    replicas: &Arc<Replicas>,
    seen: &PeerSeen,
    stop: CancellationToken,
) -> Result<(), LinkError> {
    // Each held while open here, so that `ferry replica delete` knows the peer is connected.
    let mut opened: BTreeMap<u64, SessionHold> = BTreeMap::new();
    // Replicas written to since their last acknowledgement.
    let mut unacked: BTreeMap<u64, Arc<Replica>> = BTreeMap::new();
    let mut taken = 0usize;
    let mut last_ack = Instant::now();
    let mut last_heard = Instant::now();
    // Frames are read by a task of their own, so that waiting for one can time out.
    let (mut rx, _reader) = rd.into_channel();
    loop {
        end_removed(&mut opened, &mut unacked, &mut wr).await?;
        // With writes not yet acknowledged, wait for more only briefly: a pause in the
        // stream is the moment to sync them all and acknowledge.
        let wait = if unacked.is_empty() { REMOVED_CHECK } else { ACK_DELAY };
        let next = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            r = tokio::time::timeout(wait, rx.recv()) => r,
        };
        let frame = match next {
            Err(_) if !unacked.is_empty() => {
                ack_all(&mut unacked, &mut wr).await?;
                taken = 0;
                last_ack = Instant::now();
                continue;
            }
            Err(_) if last_heard.elapsed() < IDLE_TIMEOUT => continue,
            Err(_) => return Err(LinkError::Content(format!("the peer was silent for {IDLE_TIMEOUT:?}"))),
            Ok(None) => return Err(LinkError::Content("the link's reader ended".into())),
            Ok(Some(Err(LinkError::Io(e)))) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Some(r)) => r?,
        };
        last_heard = Instant::now();
        match frame {
            Frame::Control(Message::Open(spec)) => {
                let id = spec.id;
                let r = {
                    let (replicas, seen) = (replicas.clone(), seen.clone());
                    tokio::task::spawn_blocking(move || replicas.open(&spec, &seen))
                        .await
                        .map_err(|e| LinkError::Content(e.to_string()))?
                };
                match r {
                    Ok(r) => {
                        // Whole batches an earlier session wrote but had not acknowledged
                        // yet (its link broke) are made durable: the stream resumes after
                        // them, never in the middle of history.
                        let r2 = r.clone();
                        let next_seq = tokio::task::spawn_blocking(move || r2.sync())
                            .await
                            .map_err(|e| LinkError::Content(e.to_string()))??;
                        info!(vpg = %r.spec().name, next_seq, "replication of VPG resumes");
                        opened.insert(id, r.hold());
                        wr.send(id, &Message::Opened { vpg: id, next_seq }).await?;
                    }
                    Err(reason) => {
                        warn!(vpg = id, %reason, "VPG refused");
                        wr.send(id, &Message::Refused { vpg: id, reason }).await?;
                    }
                }
            }
            Frame::Control(Message::Ping) => wr.send(0, &Message::Pong).await?,
            Frame::Control(Message::Pong) => {}
            Frame::Control(Message::Remove { vpg }) => {
                opened.remove(&vpg);
                unacked.remove(&vpg);
                let gone = match replicas.by_id(vpg) {
                    Some(r) => replicas.remove(&r.spec().name, false).map_err(|e| e.to_string()),
                    None => Ok(()),
                };
                let m = match gone {
                    Ok(()) => Message::Removed { vpg },
                    Err(reason) => Message::Refused { vpg, reason },
                };
                wr.send(vpg, &m).await?;
            }
            Frame::Control(Message::Resync { vpg, from_seq }) => {
                let Some(r) = opened.get(&vpg).map(|h| h.replica().clone()) else {
                    return Err(LinkError::Content(format!(
                        "a resync for VPG {vpg:#x}, which was not opened"
                    )));
                };
                let next = r.next_seq();
                if from_seq < next {
                    return Err(LinkError::Content(format!(
                        "a resync of {} from seq {from_seq}, behind its history's end {next}",
                        r.spec().name
                    )));
                }
                let r2 = r.clone();
                let durable = tokio::task::spawn_blocking(move || {
                    r2.note_gap(next, from_seq);
                    r2.append(next, from_seq, &[])?;
                    r2.sync()
                })
                .await
                .map_err(|e| LinkError::Content(e.to_string()))??;
                wr.send(vpg, &Message::Ack { vpg, next_seq: durable }).await?;
            }
            Frame::Control(Message::SumsRequest {
                vpg,
                volume,
                offset,
                region_bytes,
                count,
                at_seq,
            }) => {
                let Some(r) = opened.get(&vpg).map(|h| h.replica().clone()) else {
                    return Err(LinkError::Content(format!(
                        "sums for VPG {vpg:#x}, which was not opened"
                    )));
                };
                let sums = tokio::task::spawn_blocking(move || r.sums(volume, offset, region_bytes, count, at_seq))
                    .await
                    .map_err(|e| LinkError::Content(e.to_string()))?
                    .unwrap_or_default();
                wr.send(
                    vpg,
                    &Message::Sums {
                        vpg,
                        volume,
                        offset,
                        sums,
                    },
                )
                .await?;
            }
            Frame::Control(other) => {
                return Err(LinkError::Content(format!("a protected site does not send {other:?}")));
            }
            Frame::Batch(h, plain) => {
                let Some(r) = opened.get(&h.vpg).map(|h| h.replica().clone()) else {
                    return Err(LinkError::Content(format!(
                        "a batch for VPG {:#x}, which was not opened",
                        h.vpg
                    )));
                };
                if r.is_removed() {
                    // Deleted since the last look: nothing more is written to it.
                    continue;
                }
                let next = r.next_seq();
                if h.first_seq != next {
                    return Err(LinkError::Content(format!(
                        "batch for {} starts at seq {}, history ends at {next}",
                        r.spec().name,
                        h.first_seq
                    )));
                }
                taken += plain.len();
                let r2 = r.clone();
                tokio::task::spawn_blocking(move || {
                    let recs = records::decode(&plain, h.first_seq, h.record_count)
                        .map_err(|e| LinkError::Content(e.to_string()))?;
                    let end = h.first_seq + u64::from(h.record_count);
                    r2.append(h.first_seq, end, &recs).map_err(LinkError::Io)
                })
                .await
                .map_err(|e| LinkError::Content(e.to_string()))??;
                debug!(vpg = %r.spec().name, first = h.first_seq, count = h.record_count, "batch written");
                unacked.insert(h.vpg, r);
            }
        }
        if !unacked.is_empty() && (taken >= ACK_BYTES || last_ack.elapsed() >= ACK_EVERY) {
            ack_all(&mut unacked, &mut wr).await?;
            taken = 0;
            last_ack = Instant::now();
        }
    }
}

/// Ends the stream of every replica deleted while open here: the peer is told why and
/// what to do, and the replica's files are let go.
async fn end_removed(
    opened: &mut BTreeMap<u64, SessionHold>,
    unacked: &mut BTreeMap<u64, Arc<Replica>>,
    wr: &mut link::LinkWriter,
) -> Result<(), LinkError> {
    let gone: Vec<u64> = opened
        .iter()
        .filter(|(_, h)| h.replica().is_removed())
        .map(|(&id, _)| id)
        .collect();
    for vpg in gone {
        let name = opened.remove(&vpg).map(|h| h.replica().spec().name).unwrap_or_default();
        unacked.remove(&vpg);
        warn!(vpg = %name, "replica deleted here while replicating: its stream ends");
        let reason = format!(
            "its replica was deleted at the recovery site while it was replicating (`ferry replica delete --force`); to protect the VPG again, delete it here (`ferry vpg delete {name}`) and create it anew"
        );
        wr.send(vpg, &Message::Refused { vpg, reason }).await?;
    }
    Ok(())
}

/// Syncs the history of every replica written since the last acknowledgement, then
/// acknowledges each: never an ack before the sync.
async fn ack_all(unacked: &mut BTreeMap<u64, Arc<Replica>>, wr: &mut link::LinkWriter) -> Result<(), LinkError> {
    for (vpg, r) in std::mem::take(unacked) {
        let next_seq = tokio::task::spawn_blocking(move || r.sync())
            .await
            .map_err(|e| LinkError::Content(e.to_string()))??;
        wr.send(vpg, &Message::Ack { vpg, next_seq }).await?;
    }
    Ok(())
}
