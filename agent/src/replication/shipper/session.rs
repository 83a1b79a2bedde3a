//! One session with the recovery site: announcing the VPGs, sending batches within the
//! window by VPG priority, taking acknowledgements, releasing journal space; and the delta
//! sync of a pre-seeded replica (regions compared by checksum, only those that differ sent).

use super::batch::{build_batch, cons_ack};
use super::*;

/// One VPG within a session.
pub(super) struct Shipped {
    pub(super) vpg: Arc<Vpg>,
    /// None until `Opened` (and while a batch is being built).
    pub(super) consumer: Option<Consumer<MmapStorage>>,
    pub(super) opened: bool,
    /// The next sequence number to send.
    pub(super) next_seq: u64,
    /// Batches sent, not yet acknowledged: (end seq, wire bytes, plaintext bytes).
    pub(super) inflight: VecDeque<(u64, usize, usize)>,
    pub(super) vtime: f64,
    /// A delta sync's comparison, while it runs.
    pub(super) delta: Option<Delta>,
    /// Acknowledged by the recovery site, journal space not yet released.
    pub(super) release_to: u64,
    pub(super) unreleased_bytes: usize,
    pub(super) released_at: Instant,
    /// Batches still to send uncompressed (adaptive compression).
    pub(super) uncompressed_left: u32,
    /// Checkpoints below this are not sent (they were taken before a resync).
    pub(super) skip_checkpoints_below: u64,
    /// Had records ready at the last choice.
    pub(super) was_ready: bool,
    pub(super) weight: f64,
    pub(super) batch_seq: u64,
    pub(super) rate_mark: (Instant, u64),
}

pub(super) struct Session<'a> {
    pub(super) shipping: &'a Shipping,
    pub(super) vpgs: HashMap<u64, Shipped>,
    pub(super) inflight_bytes: usize,
    /// Wire bytes acknowledged per second (smoothed), and since when it was measured.
    pub(super) ack_rate: Option<f64>,
    pub(super) rate_window: (Instant, usize),
    pub(super) last_heard: Instant,
    pub(super) last_sent: Instant,
}

impl Session<'_> {
    pub(super) async fn run(
        &mut self,
        key: &(String, PathBuf),
        wr: &mut LinkWriter,
        rx: &mut mpsc::Receiver<Result<Frame, LinkError>>,
    ) -> Result<(), LinkError> {
        let cfg = self.shipping.cfg.clone();
        loop {
            if self.shipping.stop.is_cancelled() || !self.shipping.wanted(key) {
                return Ok(());
            }
            self.announce(key, wr).await?;
            while let Ok(f) = rx.try_recv() {
                self.on_frame(f?, wr).await?;
            }
            self.release_due().await?;
            self.delta_step(wr).await?;
            let sent = if self.inflight_bytes + cfg.batch_bytes / 2 <= self.window(&cfg) {
                self.send_next(wr, &cfg).await?
            } else {
                false
            };
            if self.last_heard.elapsed() > PEER_TIMEOUT {
                return Err(LinkError::Content(format!(
                    "the peer answered nothing for {PEER_TIMEOUT:?}"
                )));
            }
            if self.last_sent.elapsed() > PING_EVERY {
                wr.send(0, &Message::Ping).await?;
                self.last_sent = Instant::now();
            }
            if !sent {
                tokio::select! {
                    _ = self.shipping.stop.cancelled() => return Ok(()),
                    f = rx.recv() => match f {
                        Some(f) => self.on_frame(f?, wr).await?,
                        None => return Err(LinkError::Content("the link's reader ended".into())),
                    },
                    _ = tokio::time::sleep(Duration::from_millis(5)) => {}
                }
            }
        }
    }

    /// Sends `Open` for each VPG of this peer not yet announced; forgets deleted ones.
    async fn announce(&mut self, key: &(String, PathBuf), wr: &mut LinkWriter) -> Result<(), LinkError> {
        let now = self.shipping.vpgs_for(key);
        let live: Vec<u64> = now.iter().map(|v| v.record.ring_id).collect();
        let gone: Vec<u64> = self.vpgs.keys().copied().filter(|id| !live.contains(id)).collect();
        for id in gone {
            if let Some(sv) = self.vpgs.remove(&id) {
                self.inflight_bytes -= sv.inflight.iter().map(|x| x.1).sum::<usize>();
            }
        }
        for v in now {
            let id = v.record.ring_id;
            if self.vpgs.contains_key(&id) {
                continue;
            }
            let weight =
                f64::from(self.shipping.cfg.weights[v.record.protection.as_ref().expect("protected").priority.index()]);
            wr.send(id, &Message::Open(self.shipping.spec_of(&v))).await?;
            self.last_sent = Instant::now();
            v.ship_update(|s| s.link = "connected: opening".into());
            self.vpgs.insert(
                id,
                Shipped {
                    vpg: v,
                    consumer: None,
                    opened: false,
                    next_seq: 0,
                    inflight: VecDeque::new(),
                    vtime: 0.0,
                    skip_checkpoints_below: 0,
                    uncompressed_left: 0,
                    delta: None,
                    release_to: 0,
                    unreleased_bytes: 0,
                    released_at: Instant::now(),
                    was_ready: false,
                    weight,
                    batch_seq: 0,
                    rate_mark: (Instant::now(), 0),
                },
            );
        }
        Ok(())
    }

    async fn on_frame(&mut self, f: Frame, wr: &mut LinkWriter) -> Result<(), LinkError> {
        self.last_heard = Instant::now();
        match f {
            Frame::Control(Message::Opened { vpg, next_seq }) => {
                let Some(sv) = self.vpgs.get_mut(&vpg) else {
                    return Ok(());
                };
                let Some(mut cons) = sv.vpg.take_consumer().await else {
                    sv.vpg.ship_update(|s| {
                        s.error = Some("the journal's consumer is held by `ferry journal tail`".into())
                    });
                    return Ok(());
                };
                let st = sv.vpg.journal_stats();
                if next_seq > st.next_seq {
                    let why = format!(
                        "the recovery site holds records up to seq {next_seq}, past this journal's end ({}): it holds another copy of this VPG; delete that replica there (`ferry replica delete {}`)",
                        st.next_seq, sv.vpg.record.name
                    );
                    sv.vpg.event(why.clone());
                    sv.vpg.ship_update(|s| s.error = Some(why));
                    sv.vpg.put_consumer(cons).await;
                    return Ok(());
                }
                let mut next_seq = next_seq;
                if next_seq < st.acked_seq {
                    // Damage at the recovery site took records this journal released: send
                    // every block again, and no checkpoint from before the resync.
                    let why = format!(
                        "the recovery site lost acknowledged history (it holds records below seq {next_seq}, the journal had released those below {}): resynchronising every block",
                        st.acked_seq
                    );
                    if let Err(e) = sv.vpg.resync_all(why).await {
                        sv.vpg.put_consumer(cons).await;
                        return Err(LinkError::Io(e));
                    }
                    sv.skip_checkpoints_below = sv.vpg.journal_stats().next_seq;
                    wr.send(
                        vpg,
                        &Message::Resync {
                            vpg,
                            from_seq: st.acked_seq,
                        },
                    )
                    .await?;
                    next_seq = st.acked_seq;
                }
                cons.rewind();
                let cons = tokio::task::spawn_blocking(move || {
                    let r = cons_ack(&mut cons, next_seq);
                    (cons, r)
                })
                .await
                .map_err(|e| LinkError::Content(e.to_string()))?;
                let (cons, r) = cons;
                if let Err(e) = r {
                    warn!(vpg = %sv.vpg.record.name, error = %e, "cannot release journal space");
                }
                sv.consumer = Some(cons);
                sv.opened = true;
                sv.next_seq = next_seq;
                if sv.vpg.delta_pending() {
                    let volumes = sv.vpg.member_files();
                    let total = volumes.iter().map(|v| v.2).sum();
                    *sv.vpg.delta_progress.lock().unwrap_or_else(|e| e.into_inner()) =
                        crate::protect::vpg::DeltaProgress {
                            total_bytes: total,
                            ..Default::default()
                        };
                    sv.delta = Some(Delta {
                        volumes,
                        index: 0,
                        offset: 0,
                        outstanding: 0,
                    });
                    // Checkpoints from before the comparison ends are not whole.
                    sv.skip_checkpoints_below = u64::MAX;
                }
                info!(vpg = %sv.vpg.record.name, next_seq, "shipping resumes");
                sv.vpg.ship_update(|s| {
                    s.link = "connected".into();
                    s.error = None;
                    s.acked_seq = s.acked_seq.max(next_seq);
                });
            }
            Frame::Control(Message::Ack { vpg, next_seq }) => {
                let Some(sv) = self.vpgs.get_mut(&vpg) else {
                    return Ok(());
                };
                let (mut plain, mut acked_wire) = (0, 0);
                while sv.inflight.front().is_some_and(|x| x.0 <= next_seq) {
                    let (_, wire, p) = sv.inflight.pop_front().expect("front");
                    self.inflight_bytes -= wire;
                    acked_wire += wire;
                    plain += p;
                }
                sv.release_to = sv.release_to.max(next_seq);
                sv.unreleased_bytes += plain;
                let caught_up = next_seq >= sv.vpg.journal_stats().next_seq;
                let (t0, b0) = sv.rate_mark;
                let el = t0.elapsed().as_secs_f64();
                sv.vpg.ship_update(|s| {
                    s.acked_seq = s.acked_seq.max(next_seq);
                    s.acked_bytes += plain as u64;
                    if caught_up {
                        s.caught_up_ms = now_ms();
                    }
                    if el >= 2.0 {
                        s.rate_bytes_per_s = (s.acked_bytes - b0) as f64 / el;
                    }
                });
                if el >= 2.0 {
                    sv.rate_mark = (Instant::now(), sv.vpg.ship_update(|s| s.acked_bytes));
                }
                sv.vpg.note_initial_sync();
                self.note_acked(acked_wire);
            }
            Frame::Control(Message::Refused { vpg, reason }) => {
                if let Some(sv) = self.vpgs.get_mut(&vpg) {
                    let why = format!("the recovery site refused it: {reason}");
                    sv.vpg.event(why.clone());
                    sv.vpg.ship_update(|s| s.error = Some(why));
                    // Nothing more is sent for it in this session; what was in flight is
                    // read again from the journal if it is ever accepted.
                    sv.opened = false;
                    sv.delta = None;
                    self.inflight_bytes -= sv.inflight.drain(..).map(|x| x.1).sum::<usize>();
                    if let Some(c) = sv.consumer.take() {
                        sv.vpg.put_consumer(c).await;
                    }
                }
            }
            Frame::Control(Message::Sums {
                vpg,
                volume,
                offset,
                sums,
            }) => {
                let Some(sv) = self.vpgs.get_mut(&vpg) else {
                    return Ok(());
                };
                let Some(d) = sv.delta.as_mut() else { return Ok(()) };
                d.outstanding = d.outstanding.saturating_sub(1);
                let Some((_, file, size)) = d.volumes.iter().find(|v| v.0 == volume).cloned() else {
                    return Ok(());
                };
                let vpg2 = sv.vpg.clone();
                tokio::task::spawn_blocking(move || compare_regions(&vpg2, volume, file, size, offset, &sums))
                    .await
                    .map_err(|e| LinkError::Content(e.to_string()))?;
            }
            Frame::Control(Message::Pong | Message::Removed { .. }) => {}
            Frame::Control(m) => return Err(LinkError::Content(format!("a recovery site does not send {m:?}"))),
            Frame::Batch(..) => return Err(LinkError::Content("a recovery site does not send batches".into())),
        }
        Ok(())
    }

    /// Bytes that may be in flight: about [`WINDOW_TIME`] of what the link carries (so a
    /// slow link does not queue seconds of batches, which would all be RPO), at least two
    /// batches, at most `replication.window_bytes`.
    fn window(&self, cfg: &Replication) -> usize {
        let floor = 2 * cfg.batch_bytes;
        match self.ack_rate {
            None => (4 * cfg.batch_bytes).min(cfg.window_bytes),
            Some(r) => ((r * WINDOW_TIME.as_secs_f64()) as usize).clamp(floor, cfg.window_bytes.max(floor)),
        }
    }

    /// Counts acknowledged wire bytes into the link's rate.
    fn note_acked(&mut self, wire: usize) {
        let (since, bytes) = &mut self.rate_window;
        *bytes += wire;
        let el = since.elapsed().as_secs_f64();
        if el >= 0.25 {
            let now = *bytes as f64 / el;
            self.ack_rate = Some(self.ack_rate.map_or(now, |r| 0.7 * r + 0.3 * now));
            self.rate_window = (Instant::now(), 0);
        }
    }

    /// Releases the journal space of acknowledged records, a few times a second or every
    /// [`RELEASE_BYTES`] (each release syncs the journal's superblock and drops pages).
    async fn release_due(&mut self) -> Result<(), LinkError> {
        for sv in self.vpgs.values_mut() {
            let due = sv.unreleased_bytes >= RELEASE_BYTES
                || (sv.unreleased_bytes > 0 && sv.released_at.elapsed() >= RELEASE_EVERY)
                || (sv.release_to > 0 && sv.vpg.journal_stats().fill() > 0.5);
            if !due || sv.release_to <= sv.vpg.journal_stats().acked_seq {
                continue;
            }
            let Some(mut cons) = sv.consumer.take() else { continue };
            let to = sv.release_to;
            let (cons, r) = tokio::task::spawn_blocking(move || {
                let r = cons_ack(&mut cons, to);
                (cons, r)
            })
            .await
            .map_err(|e| LinkError::Content(e.to_string()))?;
            sv.consumer = Some(cons);
            sv.unreleased_bytes = 0;
            sv.released_at = Instant::now();
            if let Err(e) = r {
                warn!(vpg = %sv.vpg.record.name, error = %e, "cannot release journal space");
            }
        }
        Ok(())
    }

    /// Sends one batch of the VPG whose turn it is; false when none has records ready.
    async fn send_next(&mut self, wr: &mut LinkWriter, cfg: &Replication) -> Result<bool, LinkError> {
        let ready = |s: &Shipped| {
            s.opened && s.consumer.is_some() && !s.vpg.is_paused() && s.vpg.journal_stats().settled_seq > s.next_seq
        };
        let ready: Vec<u64> = self.vpgs.iter().filter(|(_, s)| ready(s)).map(|(id, _)| *id).collect();
        // A VPG that just became ready starts level with those already busy.
        let floor = ready
            .iter()
            .map(|id| &self.vpgs[id])
            .filter(|s| s.was_ready)
            .map(|s| s.vtime)
            .fold(f64::INFINITY, f64::min);
        for (id, s) in self.vpgs.iter_mut() {
            let now_ready = ready.contains(id);
            if now_ready && !s.was_ready && floor.is_finite() {
                s.vtime = s.vtime.max(floor);
            }
            s.was_ready = now_ready;
        }
        let Some(id) = ready
            .iter()
            .copied()
            .min_by(|a, b| self.vpgs[a].vtime.total_cmp(&self.vpgs[b].vtime))
        else {
            return Ok(false);
        };
        let sv = self.vpgs.get_mut(&id).expect("chosen");
        let mut cons = sv.consumer.take().expect("ready");
        // Adaptive: after a batch that compression barely shrank, the next ones go as they
        // are, and every COMPRESS_PROBE_EVERY-th tries again.
        let level = if sv.uncompressed_left > 0 {
            sv.uncompressed_left -= 1;
            0
        } else {
            cfg.compression_level
        };
        let (batch_bytes, from, skip) = (cfg.batch_bytes, sv.next_seq, sv.skip_checkpoints_below);
        let (cons, built) = tokio::task::spawn_blocking(move || {
            let b = build_batch(&mut cons, from, batch_bytes, level, skip);
            (cons, b)
        })
        .await
        .map_err(|e| LinkError::Content(e.to_string()))?;
        sv.consumer = Some(cons);
        let Some(b) = built else { return Ok(false) };
        if level > 0 && b.body.len() * 10 > b.plain_bytes * 9 {
            sv.uncompressed_left = COMPRESS_PROBE_EVERY - 1;
        }
        for why in &b.skipped {
            sv.vpg.event(why.clone());
        }
        let header = BatchHeader {
            kind: FrameKind::Batch,
            flags: if b.compressed { FLAG_ZSTD } else { 0 },
            vpg: id,
            epoch: sv.vpg.record.epoch,
            batch_seq: sv.batch_seq,
            first_seq: b.first_seq,
            record_count: (b.end_seq - b.first_seq) as u32,
        };
        wr.send_batch(&header, &b.body).await?;
        let wire = b.body.len() + 64;
        debug!(vpg = %sv.vpg.record.name, first = b.first_seq, end = b.end_seq, plain = b.plain_bytes, wire, "batch sent");
        sv.batch_seq += 1;
        sv.next_seq = b.end_seq;
        sv.inflight.push_back((b.end_seq, wire, b.plain_bytes));
        sv.vtime += wire as f64 / sv.weight;
        sv.vpg.ship_update(|s| s.sent_bytes += wire as u64);
        self.inflight_bytes += wire;
        self.last_sent = Instant::now();
        Ok(true)
    }
}

/// Where a delta sync's comparison stands: the next region to ask for, requests in flight.
pub(super) struct Delta {
    volumes: Vec<(u32, Option<Arc<std::fs::File>>, u64)>,
    index: usize,
    offset: u64,
    outstanding: usize,
}

/// Bytes per compared region, regions per request, requests in flight.
const DELTA_REGION: u32 = 1 << 20;
const DELTA_REGIONS_PER_REQUEST: u32 = 64;
const DELTA_REQUESTS_MAX: usize = 4;

impl Session<'_> {
    /// Asks for the next regions' checksums of each VPG in a delta sync, and ends the
    /// comparison once every answer came.
    async fn delta_step(&mut self, wr: &mut LinkWriter) -> Result<(), LinkError> {
        for (&id, sv) in self.vpgs.iter_mut() {
            let Some(d) = sv.delta.as_mut() else { continue };
            while d.outstanding < DELTA_REQUESTS_MAX && d.index < d.volumes.len() {
                let (volume, _, size) = d.volumes[d.index];
                if d.offset >= size {
                    d.index += 1;
                    d.offset = 0;
                    continue;
                }
                wr.send(
                    id,
                    &Message::SumsRequest {
                        vpg: id,
                        volume,
                        offset: d.offset,
                        region_bytes: DELTA_REGION,
                        count: DELTA_REGIONS_PER_REQUEST,
                        at_seq: 0,
                    },
                )
                .await?;
                d.offset += u64::from(DELTA_REGION) * u64::from(DELTA_REGIONS_PER_REQUEST);
                d.outstanding += 1;
            }
            if d.index >= d.volumes.len() && d.outstanding == 0 {
                sv.delta = None;
                sv.vpg.finish_delta().await.map_err(LinkError::Io)?;
                sv.skip_checkpoints_below = sv.vpg.journal_stats().next_seq;
                info!(vpg = %sv.vpg.record.name, "delta sync comparison finished");
            }
        }
        Ok(())
    }
}

/// Compares one answer's regions with the local volume; marks those that differ (all of
/// them when the replica could not answer, or the volume is offline).
fn compare_regions(
    vpg: &Vpg,
    volume: u32,
    file: Option<Arc<std::fs::File>>,
    size: u64,
    offset: u64,
    sums: &[[u8; 16]],
) {
    let region = u64::from(DELTA_REGION);
    let mut buf = vec![0u8; DELTA_REGION as usize];
    let (mut compared, mut differing) = (0u64, 0u64);
    for i in 0..u64::from(DELTA_REGIONS_PER_REQUEST) {
        let off = offset + i * region;
        if off >= size {
            break;
        }
        let n = (size - off).min(region);
        let same = match (&file, sums.get(i as usize)) {
            (Some(f), Some(theirs)) => crate::io::read_once(f, &mut buf[..n as usize], off)
                .is_ok_and(|()| ferry_proto::message::region_sum(&buf[..n as usize]) == *theirs),
            _ => false,
        };
        if !same {
            vpg.mark_differing(volume, off, n);
            differing += n;
        }
        compared += n;
    }
    let mut p = vpg.delta_progress.lock().unwrap_or_else(|e| e.into_inner());
    p.compared_bytes += compared;
    p.differing_bytes += differing;
}
