//! The recovery site's side of the link: accepts paired agents on `replication.listen`,
//! opens the replicas they announce, writes their batches to history and acknowledges
//! what is durable.
//!
//! The session's rules live in [`RecoverySession`] (no I/O): batches are written as they
//! come and synced, once for all the batches at hand, before their acknowledgement; a
//! batch that does not continue the replica's history ends the connection without a byte
//! of it written, and the protected site resends from the last acknowledged record. This
//! shell moves the frames, does the work the core asks for (open, append, sync, resync,
//! checksums, delete) and wakes on a frame, the core's deadline or a replica's deletion.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ferry_proto::batch::BatchHeader;
use ferry_proto::message::Message;
use ferry_proto::records;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::admission::{AcceptBackoff, Gate};
use crate::events::RateLimitedLog;
use crate::protect::vpg::Vpgs;
use crate::recover::replica::{PeerSeen, SessionHold, ToPeer};
use crate::recover::replicas::Replicas;
use crate::replication::link::{self, Frame, LinkError, LinkStats, Pace};
use crate::replication::session::recovery::{Action, Input, RecoverySession};
use crate::replication::session::{Micros, vpg_of};

/// Accepts peers until `stop`.
/// Peers still in their handshake wait at `gate` (bounded in all and per address), so
/// stalled handshakes cannot use up the descriptors; accept failures back off.
pub async fn run(
    listener: TcpListener,
    keys: Arc<Vec<[u8; 32]>>,
    replicas: Arc<Replicas>,
    vpgs: Arc<Vpgs>,
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
        let (keys, replicas, stop, refused, vpgs) = (
            keys.clone(),
            replicas.clone(),
            stop.clone(),
            refused.clone(),
            vpgs.clone(),
        );
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
            match serve(rd, wr, &replicas, &vpgs, &seen, stop).await {
                Ok(()) => info!(%peer, "replication peer disconnected"),
                Err(e) => warn!(%peer, error = %e, "replication session ended"),
            }
        });
    }
}

/// One session, until the peer leaves (Ok), breaks the protocol or the link fails (Err).
async fn serve(
    rd: link::LinkReader,
    mut wr: link::LinkWriter,
    replicas: &Arc<Replicas>,
    vpgs: &Arc<Vpgs>,
    seen: &PeerSeen,
    stop: CancellationToken,
) -> Result<(), LinkError> {
    let mut s = Shell {
        core: RecoverySession::new(seen.address.clone(), 0),
        start: tokio::time::Instant::now(),
        opened: BTreeMap::new(),
        replicas,
        vpgs,
        seen,
        batch: None,
    };
    let mut removals = replicas.removals();
    // Frames are read by a task of their own, so that waiting for one can time out.
    let (mut rx, _reader) = rd.into_channel();
    loop {
        let deadline = s.start + Duration::from_micros(s.core.deadline());
        let input = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep_until(deadline) => Input::Tick,
            r = removals.changed() => {
                if r.is_err() {
                    return Ok(());
                }
                s.end_removed(&mut wr).await?;
                s.deliver(&mut wr).await?;
                continue;
            }
            f = rx.recv() => match f {
                None => return Err(LinkError::Content("the link's reader ended".into())),
                Some(Err(LinkError::Io(e))) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Some(f) => match f? {
                    Frame::Control(m) => Input::Message(m),
                    Frame::Batch(h, plain) => {
                        // A deletion not seen yet is taken first: the batch is then dropped.
                        s.end_removed(&mut wr).await?;
                        let input = Input::Batch {
                            vpg: h.vpg,
                            first_seq: h.first_seq,
                            count: h.record_count,
                            plain_bytes: plain.len() as u64,
                        };
                        s.batch = Some((h, plain));
                        input
                    }
                },
            },
        };
        let actions = s.core.on(s.now(), input);
        s.act(actions, &mut wr).await?;
        s.batch = None;
    }
}

/// The shell's side of a session: the replicas it holds open and the batch at hand.
struct Shell<'a> {
    core: RecoverySession,
    start: tokio::time::Instant,
    /// Each held while open here, so that `ferry replica delete` knows the peer is connected.
    opened: BTreeMap<u64, SessionHold>,
    replicas: &'a Arc<Replicas>,
    vpgs: &'a Arc<Vpgs>,
    seen: &'a PeerSeen,
    batch: Option<(BatchHeader, Vec<u8>)>,
}

/// Runs blocking replica work off the reactor.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, LinkError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| LinkError::Content(e.to_string()))
}

impl Shell<'_> {
    fn now(&self) -> Micros {
        self.start.elapsed().as_micros() as Micros
    }

    /// Does what the core asked, feeding back the results, until nothing is left.
    async fn act(&mut self, actions: Vec<Action>, wr: &mut link::LinkWriter) -> Result<(), LinkError> {
        let mut work: std::collections::VecDeque<Action> = actions.into();
        while let Some(a) = work.pop_front() {
            let result = match a {
                Action::Send(m) => {
                    wr.send(vpg_of(&m), &m).await?;
                    None
                }
                Action::Open(spec) => {
                    let (id, their_epoch) = (spec.id, spec.epoch);
                    // The VPG was protected from here, failed over and is protected back
                    // now (reverse protection): this site becomes its recovery site.
                    let demoted = self.demote(&spec).await;
                    let (replicas, seen) = (self.replicas.clone(), self.seen.clone());
                    let r = match demoted {
                        Ok(()) => blocking(move || replicas.open(&spec, &seen)).await?,
                        Err(why) => Err(why),
                    };
                    let result = match r {
                        Ok(r) => {
                            // Whole batches an earlier session wrote but had not acknowledged
                            // yet (its link broke) are made durable: the stream resumes after
                            // them, never in the middle of history.
                            let r2 = r.clone();
                            let next_seq = blocking(move || r2.sync()).await??;
                            info!(vpg = %r.spec().name, next_seq, "replication of VPG resumes");
                            self.opened.insert(id, r.hold());
                            Ok(next_seq)
                        }
                        Err(reason) => {
                            warn!(vpg = id, %reason, "VPG refused");
                            Err(reason)
                        }
                    };
                    // A live failover runs the VPG here: the protected site fences itself;
                    // one rolled back: it takes the epoch and writes again.
                    if let Some(r) = self.replicas.by_id(id) {
                        if let Some((epoch, reason)) = r.fence_answer(their_epoch) {
                            warn!(vpg = %r.spec().name, their_epoch, epoch, "protected site of an older epoch: fenced");
                            work.extend(self.core.on(
                                self.now(),
                                Input::Fence {
                                    vpg: id,
                                    epoch,
                                    shutdown: ferry_proto::message::Shutdown::Force,
                                    reason,
                                    held_seq: r.durable_seq(),
                                    written: r.written_since_failover(),
                                },
                            ));
                        } else if let Some(epoch) = r.unfence_answer(their_epoch) {
                            info!(vpg = %r.spec().name, epoch, "the protected site takes the epoch of a rolled-back failover");
                            work.extend(self.core.on(self.now(), Input::Unfence { vpg: id, epoch }));
                        }
                    }
                    Some(Input::Opened { vpg: id, result })
                }
                Action::Append { vpg } => {
                    let (h, plain) = self.batch.take().expect("the core appends the batch at hand");
                    let r = self.opened.get(&vpg).expect("an open VPG").replica().clone();
                    let end = h.first_seq + u64::from(h.record_count);
                    blocking(move || {
                        let recs = records::decode(&plain, h.first_seq, h.record_count)
                            .map_err(|e| LinkError::Content(e.to_string()))?;
                        r.append(h.first_seq, end, &recs).map_err(LinkError::Io)
                    })
                    .await??;
                    debug!(vpg, first = h.first_seq, count = h.record_count, "batch written");
                    None
                }
                Action::Drop { vpg } => {
                    debug!(vpg, "batch for a deleted replica dropped");
                    None
                }
                Action::Sync { vpg } => {
                    let durable = match self.opened.get(&vpg).map(|h| h.replica().clone()) {
                        Some(r) => blocking(move || r.sync()).await??,
                        None => 0,
                    };
                    Some(Input::Synced { vpg, durable })
                }
                Action::Resync { vpg, from_seq } => {
                    let r = self.opened.get(&vpg).expect("an open VPG").replica().clone();
                    let durable = blocking(move || {
                        let next = r.next_seq();
                        r.note_gap(next, from_seq);
                        r.append(next, from_seq, &[])?;
                        r.sync()
                    })
                    .await??;
                    Some(Input::Resynced { vpg, durable })
                }
                Action::Sums {
                    vpg,
                    volume,
                    offset,
                    region_bytes,
                    count,
                    at_seq,
                    unchanged_ok,
                } => {
                    let r = self.opened.get(&vpg).expect("an open VPG").replica().clone();
                    let sums = blocking(move || r.sums(volume, offset, region_bytes, count, at_seq, unchanged_ok))
                        .await?
                        .unwrap_or_default();
                    let m = Message::Sums {
                        vpg,
                        volume,
                        offset,
                        sums,
                    };
                    wr.send(vpg, &m).await?;
                    None
                }
                Action::Remove { vpg } => {
                    self.opened.remove(&vpg);
                    let result = match self.replicas.by_id(vpg) {
                        Some(r) => self.replicas.remove(&r.spec().name, false).map_err(|e| e.to_string()),
                        None => Ok(()),
                    };
                    Some(Input::RemoveDone { vpg, result })
                }
                Action::Fenced { vpg, epoch, final_seq } => {
                    if let Some(r) = self.replicas.by_id(vpg) {
                        info!(vpg = %r.spec().name, epoch, final_seq, "the protected site fenced the VPG");
                        r.note_peer_fenced(epoch, final_seq);
                    }
                    None
                }
                Action::Diverged { vpg, epoch, bytes } => {
                    if let Some(r) = self.replicas.by_id(vpg) {
                        warn!(vpg = %r.spec().name, epoch, bytes, "the protected site reports split brain");
                        if let Err(e) = blocking(move || r.note_diverged(epoch, bytes)).await? {
                            warn!(vpg, error = %e, "cannot record the split brain");
                        }
                    }
                    None
                }
                Action::Settings { vpg, plan } => {
                    if let Some(h) = self.opened.get(&vpg) {
                        let r = h.replica().clone();
                        if let Err(e) = blocking(move || r.set_plan(plan)).await? {
                            warn!(vpg, error = %e, "cannot record the VPG's failover plan");
                        }
                    }
                    None
                }
                Action::End(why) => return Err(LinkError::Content(why)),
            };
            if let Some(input) = result {
                let now = self.now();
                work.extend(self.core.on(now, input));
            }
        }
        Ok(())
    }

    /// A VPG of this agent with `spec`'s lineage and an older epoch, fenced (it failed over
    /// to the peer, which now protects it back here): its journal goes and its volumes
    /// become the replica's images. Refused (the peer is told why) if it was never fenced:
    /// it took writes after the failover, so both sites hold writes the other has not.
    /// Keeps what `v` holds that its peer may not (journal records not acknowledged, dirty
    /// regions not drained) for salvage before a resync overwrites it.
    async fn keep_unshipped(
        &self,
        v: &Arc<crate::protect::vpg::Vpg>,
        epoch: u64,
        regions: &crate::ranges::ById,
    ) -> Result<(), String> {
        let (sources, _offline) = v.salvage_sources(regions);
        if sources.is_empty() {
            return Ok(());
        }
        let store = self.vpgs.diverged();
        let name = v.record.name.clone();
        let set = blocking(move || {
            store.keep(
                &name,
                epoch,
                "regions of this site that its peer may not hold (unacknowledged journal records; dirty regions after a full journal or an unclean stop), kept before reverse protection resynced them".into(),
                sources,
                crate::diverged::DIVERGED_BYTES_MAX_DEFAULT,
            )
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        v.event(format!(
            "{} of regions the peer may not hold kept for salvage before the resync (`ferry vpg diverged {}`)",
            crate::size::human(set.bytes),
            set.vpg
        ));
        Ok(())
    }

    async fn demote(&self, spec: &ferry_proto::message::VpgSpec) -> Result<(), String> {
        let Ok(v) = self.vpgs.get(&spec.name) else {
            return Ok(());
        };
        if v.record.lineage.0 != spec.lineage {
            return Err(format!(
                "this site protects another VPG named {:?} (lineage {}); give one of them another name",
                spec.name, v.record.lineage
            ));
        }
        // Fenced at the peer's epoch (or an older one): it yielded the VPG to the peer.
        match v.fenced() {
            Some(_) if v.epoch() <= spec.epoch => {}
            Some(_) => {
                return Err(format!(
                    "VPG {:?} was fenced here at epoch {}, newer than the peer's {}: the peer is behind",
                    spec.name,
                    v.epoch(),
                    spec.epoch
                ));
            }
            None => {
                return Err(format!(
                    "VPG {:?} takes writes here at epoch {} while the peer protects it at epoch {}: both sites may hold writes the other never received (split brain); nothing was overwritten. This site learns the peer's epoch from the replica it holds there (it is fenced, or reports the split brain); then `ferry vpg resolve` settles it",
                    spec.name,
                    v.epoch(),
                    spec.epoch
                ));
            }
        }
        let life = v.lifecycle();
        if let Some(b) = &life.split_brain {
            return Err(format!(
                "split brain since epoch {}: this site holds {} of writes its peer never received; nothing was overwritten. Settle it first: `ferry vpg resolve {} --keep here|peer`",
                b.epoch,
                crate::size::human(b.bytes),
                spec.name
            ));
        }
        // Writes here the peer may not hold would be overwritten by the resync: unless an
        // operator settled a split brain for the peer (they were salvaged then), what the
        // journal holds unacknowledged and the dirty regions (after a full journal or an
        // unclean stop) are kept for salvage first. (Writes the peer never received after
        // its failover were found when it fenced this site: a split brain, refused above.)
        // One scan of the journal serves both: what is kept for salvage, and what this
        // site changed since the failover (the rest of its volumes is the failover's
        // checkpoint: the delta sync compares only what either site changed).
        let scanned = v.unshipped_regions(0, true).await;
        if life.settled.is_none_or(|e| e < spec.epoch) {
            let regions = scanned.clone().unwrap_or_else(|| v.undrained_dirty());
            self.keep_unshipped(&v, spec.epoch, &regions).await?;
        }
        // Unknown while the journal is read elsewhere with records unacknowledged (every
        // region is compared then).
        let unshipped = match scanned {
            Some(r) => Some(r),
            // The journal is read by this site's own session to the peer: with nothing
            // unacknowledged in it, only the dirty regions can hold writes the peer lacks.
            None => {
                let st = v.journal_stats();
                (st.next_seq <= st.acked_seq.max(v.ship_update(|s| s.acked_seq))).then(|| v.undrained_dirty())
            }
        };
        let changed = unshipped.map(|by_id| {
            let regions = by_id
                .into_iter()
                .filter_map(|(id, r)| Some((v.record.volumes.get(id as usize - 1)?.clone(), r)))
                .collect();
            crate::recover::replica::ChangedSinceFailover {
                epoch: spec.epoch,
                regions,
            }
        });
        let dir = self.replicas.dir_for(spec)?;
        let names: Vec<String> = v.record.volumes.clone();
        for vol in &spec.volumes {
            if !names.contains(&vol.name) {
                return Err(format!("VPG {:?} has no volume {:?} here", spec.name, vol.name));
            }
        }
        drop(v);
        // A replica here of this VPG from before (it failed over here from the peer and was
        // committed, then failed back): its history ended with that failover, and the
        // stream starts anew from the images.
        if let Some(old) = self.replicas.get(&spec.name) {
            if old.spec().lineage != spec.lineage || old.runs_here().is_none() {
                return Err(format!(
                    "this site holds a replica named {:?} of another VPG; delete it (`ferry replica delete {}`) first",
                    spec.name, spec.name
                ));
            }
            let (replicas, name) = (self.replicas.clone(), spec.name.clone());
            blocking(move || replicas.remove(&name, false))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
        }
        self.vpgs.delete(&spec.name).await.map_err(|e| e.to_string())?;
        let volumes = self.vpgs.volumes();
        for vol in &spec.volumes {
            let to = dir.join(format!("{}.img", vol.name));
            volumes.hand_over(&vol.name, &to).await.map_err(|e| e.to_string())?;
        }
        if let Some(c) = changed {
            let path = crate::recover::replica::changed_path(&dir);
            blocking(move || crate::meta::store(&dir, &path, crate::meta::CHANGED, &c))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
        }
        warn!(
            vpg = %spec.name,
            epoch = spec.epoch,
            "VPG protected back from its peer (reverse protection): this site is its recovery site now; its volumes became the replica's images"
        );
        Ok(())
    }

    /// Sends what the replicas open here have for the protected site (a live failover's
    /// fence, a rollback's unfence).
    async fn deliver(&mut self, wr: &mut link::LinkWriter) -> Result<(), LinkError> {
        let open: Vec<(u64, Arc<crate::recover::replica::Replica>)> =
            self.opened.iter().map(|(&id, h)| (id, h.replica().clone())).collect();
        for (vpg, r) in open {
            for m in r.take_for_peer() {
                let input = match m {
                    ToPeer::Fence {
                        epoch,
                        shutdown,
                        reason,
                    } => Input::Fence {
                        vpg,
                        epoch,
                        shutdown,
                        reason,
                        held_seq: r.durable_seq(),
                        written: r.written_since_failover(),
                    },
                    ToPeer::Unfence { epoch } => Input::Unfence { vpg, epoch },
                };
                let actions = self.core.on(self.now(), input);
                self.act(actions, wr).await?;
            }
        }
        Ok(())
    }

    /// Ends the stream of every replica deleted while open here: the peer is told why and
    /// what to do, and the replica's files are let go.
    async fn end_removed(&mut self, wr: &mut link::LinkWriter) -> Result<(), LinkError> {
        let gone: Vec<u64> = self
            .opened
            .iter()
            .filter(|(_, h)| h.replica().is_removed())
            .map(|(&id, _)| id)
            .collect();
        for vpg in gone {
            let name = self
                .opened
                .remove(&vpg)
                .map(|h| h.replica().spec().name)
                .unwrap_or_default();
            warn!(vpg = %name, "replica deleted here while replicating: its stream ends");
            let actions = self.core.on(self.now(), Input::Removed { vpg, name });
            self.act(actions, wr).await?;
        }
        Ok(())
    }
}
