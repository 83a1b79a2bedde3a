//! The protected site's side of the link: one link per peer address, carrying every VPG
//! protected to that peer.
//!
//! A link connects (exponential backoff with jitter, 0.5 s to 30 s), runs the handshake,
//! announces each VPG (`Open`), and learns where the recovery site's history ends. It then
//! reads each VPG's journal from there and sends batches, while the bytes sent and not yet
//! acknowledged stay under about half a second of what the link was measured to carry (at
//! least two batches, at most `replication.window_bytes`): a slow link then holds no
//! seconds of queued batches, which would all add to the RPO. Acknowledgements are cumulative and
//! carry the recovery site's durable sequence; only then is journal space released. A link
//! that breaks starts over: the journal is read again from its first unacknowledged record.
//!
//! Which VPG sends next: weighted fair queueing over the bytes sent. Each VPG has a virtual
//! time that grows by `bytes / weight` with each batch (weights by priority, 4:2:1 by
//! default); the VPG with data and the smallest virtual time goes next. A VPG that was idle
//! starts at the smallest virtual time of the busy ones, so it neither starves the others
//! nor is starved.
//!
//! Locks: `Shipping::links` → a link's `state`, both held briefly and never across I/O; a
//! VPG's ship state is a leaf.
//!
//! Where a write's bytes are copied here: from the mapped journal into the batch's
//! plaintext (once), compressed (zstd, adaptive: a batch it barely shrinks turns it off for
//! the next 15) and sealed into the frame.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferry_journal::{Consumer, Kind, MmapStorage};
use ferry_proto::batch::{BatchHeader, FLAG_ZSTD, FrameKind};
use ferry_proto::message::{Message, VolumeSpec, VpgSpec};
use ferry_proto::records::{self, RecordKind, RecordRef};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::clock::now_ms;
use crate::config::Replication;
use crate::protect::vpg::{Vpg, Vpgs};
use crate::replication::link::{self, Frame, LinkError, LinkStats, LinkWriter, Pace};

/// Between pings on an idle link.
const PING_EVERY: Duration = Duration::from_secs(5);
/// A peer that answers nothing for this long is dropped.
const PEER_TIMEOUT: Duration = Duration::from_secs(30);
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A batch that compression shrank by less than 10% makes the next ones go uncompressed;
/// one in this many tries again.
const COMPRESS_PROBE_EVERY: u32 = 16;
/// Acknowledged bytes after which journal space is released at once.
const RELEASE_BYTES: usize = 32 << 20;
/// Acknowledged journal space is released at least this often.
const RELEASE_EVERY: Duration = Duration::from_millis(100);
/// The link's in-flight bytes are bounded to about this much of its measured rate.
const WINDOW_TIME: Duration = Duration::from_millis(500);

/// A link's state, for `ferry status`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LinkStatus {
    pub peer: String,
    pub state: String,
    pub sent_bytes: u64,
    pub received_bytes: u64,
    pub connects: u64,
    pub vpgs: Vec<String>,
}

#[derive(Debug)]
struct LinkEntry {
    state: Mutex<LinkStatus>,
    stats: Arc<LinkStats>,
}

/// All the links of this agent.
#[derive(Debug)]
pub struct Shipping {
    vpgs: Arc<Vpgs>,
    cfg: Replication,
    pace: Arc<Pace>,
    links: Mutex<BTreeMap<(String, PathBuf), Arc<LinkEntry>>>,
    stop: CancellationToken,
}

impl Shipping {
    pub fn new(vpgs: Arc<Vpgs>, cfg: Replication, stop: CancellationToken) -> Arc<Shipping> {
        Arc::new(Shipping {
            vpgs,
            pace: Pace::new(cfg.bandwidth),
            cfg,
            links: Mutex::new(BTreeMap::new()),
            stop,
        })
    }

    pub fn links(&self) -> Vec<LinkStatus> {
        self.links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|l| {
                let mut s = l.state.lock().unwrap_or_else(|e| e.into_inner()).clone();
                s.sent_bytes = l.stats.sent_bytes.load(std::sync::atomic::Ordering::Relaxed);
                s.received_bytes = l.stats.received_bytes.load(std::sync::atomic::Ordering::Relaxed);
                s
            })
            .collect()
    }

    /// Starts a link for every peer a protected VPG names, once a second, until stopped.
    pub async fn run(self: Arc<Self>) {
        loop {
            let mut wanted: BTreeMap<(String, PathBuf), Vec<String>> = BTreeMap::new();
            for v in self.vpgs.protected() {
                let p = v.record.protection.clone().expect("protected");
                wanted
                    .entry((p.peer, p.pairing_key))
                    .or_default()
                    .push(v.record.name.clone());
            }
            {
                let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
                links.retain(|k, _| wanted.contains_key(k));
                for (key, names) in wanted {
                    if let Some(l) = links.get(&key) {
                        l.state.lock().unwrap_or_else(|e| e.into_inner()).vpgs = names;
                        continue;
                    }
                    let entry = Arc::new(LinkEntry {
                        state: Mutex::new(LinkStatus {
                            peer: key.0.clone(),
                            state: "connecting".into(),
                            sent_bytes: 0,
                            received_bytes: 0,
                            connects: 0,
                            vpgs: names,
                        }),
                        stats: Arc::new(LinkStats::default()),
                    });
                    links.insert(key.clone(), entry.clone());
                    tokio::spawn(self.clone().run_link(key, entry));
                }
            }
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    fn wanted(&self, key: &(String, PathBuf)) -> bool {
        self.links.lock().unwrap_or_else(|e| e.into_inner()).contains_key(key)
    }

    /// The VPGs protected to this peer.
    fn vpgs_for(&self, key: &(String, PathBuf)) -> Vec<Arc<Vpg>> {
        self.vpgs
            .protected()
            .into_iter()
            .filter(|v| {
                let p = v.record.protection.as_ref().expect("protected");
                p.peer == key.0 && p.pairing_key == key.1
            })
            .collect()
    }

    fn spec_of(&self, v: &Vpg) -> VpgSpec {
        let p = v.record.protection.as_ref().expect("protected");
        VpgSpec {
            id: v.record.ring_id,
            name: v.record.name.clone(),
            epoch: 1,
            // Sizes as the VPG's dirty maps know them: right even while a volume is offline.
            volumes: v
                .record
                .volumes
                .iter()
                .zip(v.member_files())
                .map(|(name, (_, _, size_bytes))| VolumeSpec {
                    name: name.clone(),
                    size_bytes,
                })
                .collect(),
            datastore: p.recovery_datastore.clone(),
            history_secs: p.history_s,
            history_bytes_max: p.history_bytes_max,
        }
    }

    async fn run_link(self: Arc<Self>, key: (String, PathBuf), entry: Arc<LinkEntry>) {
        let set = |s: String| {
            entry.state.lock().unwrap_or_else(|e| e.into_inner()).state = s;
        };
        let mut backoff = BACKOFF_MIN;
        let mut last_logged = String::new();
        while !self.stop.is_cancelled() && self.wanted(&key) {
            let attempt = async {
                let psk = ferry_proto::pairing::read_key(&key.1).map_err(|e| LinkError::Content(e.to_string()))?;
                link::connect(&key.0, &psk, self.pace.clone(), entry.stats.clone()).await
            };
            let started = Instant::now();
            let why = match attempt.await {
                Ok((rd, wr)) => {
                    info!(peer = %key.0, "replication link up");
                    set("connected".into());
                    entry.state.lock().unwrap_or_else(|e| e.into_inner()).connects += 1;
                    last_logged.clear();
                    let r = self.session(&key, rd, wr).await;
                    for v in self.vpgs_for(&key) {
                        v.ship_update(|s| s.link = "down".into());
                    }
                    match r {
                        Ok(()) => return,
                        Err(e) => e.to_string(),
                    }
                }
                Err(e) => e.to_string(),
            };
            if started.elapsed() > Duration::from_secs(10) {
                backoff = BACKOFF_MIN;
            }
            let state = format!("down: {why}");
            if state != last_logged {
                warn!(peer = %key.0, error = %why, retry_in = ?backoff, "replication link down");
                last_logged = state.clone();
            }
            for v in self.vpgs_for(&key) {
                v.ship_update(|s| s.link = state.clone());
            }
            set(state);
            let jitter = backoff.mul_f64(0.5 + rand_unit() * 0.5);
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(jitter) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// One connected session, until the link breaks (an error) or the agent stops (Ok).
    async fn session(
        &self,
        key: &(String, PathBuf),
        rd: link::LinkReader,
        mut wr: LinkWriter,
    ) -> Result<(), LinkError> {
        let (mut rx, reader) = rd.into_channel();
        let mut s = Session {
            shipping: self,
            vpgs: HashMap::new(),
            inflight_bytes: 0,
            ack_rate: None,
            rate_window: (Instant::now(), 0),
            last_heard: Instant::now(),
            last_sent: Instant::now(),
        };
        let r = s.run(key, &mut wr, &mut rx).await;
        drop(reader);
        for (_, sv) in s.vpgs.drain() {
            if let Some(c) = sv.consumer {
                sv.vpg.put_consumer(c).await;
            }
        }
        r
    }
}

/// Asks the recovery site to delete a VPG's replica (when the VPG is deleted here), on a
/// connection of its own; waits up to 10 s for the answer.
pub async fn remove_remote(p: &crate::protect::vpg::Protection, id: u64) -> Result<(), String> {
    let psk = ferry_proto::pairing::read_key(&p.pairing_key).map_err(|e| e.to_string())?;
    let work = async {
        let (mut rd, mut wr) = link::connect(&p.peer, &psk, Pace::new(0), Arc::new(LinkStats::default()))
            .await
            .map_err(|e| e.to_string())?;
        wr.send(id, &Message::Remove { vpg: id })
            .await
            .map_err(|e| e.to_string())?;
        loop {
            match rd.recv().await.map_err(|e| e.to_string())? {
                Frame::Control(Message::Removed { vpg }) if vpg == id => return Ok(()),
                Frame::Control(Message::Refused { vpg, reason }) if vpg == id => return Err(reason),
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .map_err(|_| "the recovery site did not answer within 10 s".to_string())?
}

/// A little randomness for jitter, without a dependency.
fn rand_unit() -> f64 {
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    f64::from(n % 1000) / 1000.0
}

/// One VPG within a session.
struct Shipped {
    vpg: Arc<Vpg>,
    /// None until `Opened` (and while a batch is being built).
    consumer: Option<Consumer<MmapStorage>>,
    opened: bool,
    /// The next sequence number to send.
    next_seq: u64,
    /// Batches sent, not yet acknowledged: (end seq, wire bytes, plaintext bytes).
    inflight: VecDeque<(u64, usize, usize)>,
    vtime: f64,
    /// A delta sync's comparison, while it runs.
    delta: Option<Delta>,
    /// Acknowledged by the recovery site, journal space not yet released.
    release_to: u64,
    unreleased_bytes: usize,
    released_at: Instant,
    /// Batches still to send uncompressed (adaptive compression).
    uncompressed_left: u32,
    /// Checkpoints below this are not sent (they were taken before a resync).
    skip_checkpoints_below: u64,
    /// Had records ready at the last choice.
    was_ready: bool,
    weight: f64,
    batch_seq: u64,
    rate_mark: (Instant, u64),
}

/// Where a delta sync's comparison stands: the next region to ask for, requests in flight.
struct Delta {
    volumes: Vec<(u32, Option<Arc<std::fs::File>>, u64)>,
    index: usize,
    offset: u64,
    outstanding: usize,
}

/// Bytes per compared region, regions per request, requests in flight.
const DELTA_REGION: u32 = 1 << 20;
const DELTA_REGIONS_PER_REQUEST: u32 = 64;
const DELTA_REQUESTS_MAX: usize = 4;

struct Session<'a> {
    shipping: &'a Shipping,
    vpgs: HashMap<u64, Shipped>,
    inflight_bytes: usize,
    /// Wire bytes acknowledged per second (smoothed), and since when it was measured.
    ack_rate: Option<f64>,
    rate_window: (Instant, usize),
    last_heard: Instant,
    last_sent: Instant,
}

impl Session<'_> {
    async fn run(
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
            epoch: 1,
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

fn cons_ack(cons: &mut Consumer<MmapStorage>, next_seq: u64) -> Result<(), String> {
    let acked = cons.journal().stats().acked_seq;
    if next_seq <= acked {
        return Ok(());
    }
    cons.ack(next_seq).map_err(|e| e.to_string())
}

struct Built {
    first_seq: u64,
    end_seq: u64,
    body: Vec<u8>,
    plain_bytes: usize,
    compressed: bool,
    /// Events: tagged checkpoints left out.
    skipped: Vec<String>,
}

/// Reads settled records from `from` on into one batch of about `max_bytes`.
fn build_batch(
    cons: &mut Consumer<MmapStorage>,
    from: u64,
    max_bytes: usize,
    level: i32,
    skip_checkpoints_below: u64,
) -> Option<Built> {
    let mut plain = Vec::with_capacity(max_bytes + (1 << 20));
    let mut end = from;
    let mut skipped = Vec::new();
    while plain.len() < max_bytes {
        let Some(r) = cons.next_record() else { break };
        let e = r.entry;
        if e.seq < from {
            continue;
        }
        end = e.seq + 1;
        fn rec<'a>(e: &ferry_journal::format::Entry, kind: RecordKind, data: &'a [u8]) -> RecordRef<'a> {
            RecordRef {
                seq: e.seq,
                kind,
                volume: e.volume,
                offset: e.offset,
                length: e.length,
                data,
            }
        }
        match e.kind {
            Kind::Write => {
                let data = &r.payload[..e.length as usize];
                // Zeroes are not sent: a write of zeroes travels as write-zeroes.
                if data.iter().all(|&b| b == 0) {
                    records::push(&mut plain, &rec(&e, RecordKind::WriteZeroes, &[]));
                } else {
                    records::push(&mut plain, &rec(&e, RecordKind::Write, data));
                }
            }
            Kind::Trim => records::push(&mut plain, &rec(&e, RecordKind::Trim, &[])),
            Kind::WriteZeroes => records::push(&mut plain, &rec(&e, RecordKind::WriteZeroes, &[])),
            Kind::Checkpoint if e.seq < skip_checkpoints_below => {
                if !r.payload.is_empty() {
                    skipped.push(format!(
                        "checkpoint {:?} (seq {}) was taken before the resync and is not kept at the recovery site",
                        String::from_utf8_lossy(r.payload),
                        e.seq
                    ));
                }
            }
            Kind::Checkpoint => records::push(
                &mut plain,
                &RecordRef {
                    seq: e.seq,
                    kind: RecordKind::Checkpoint,
                    volume: 0,
                    offset: e.offset,
                    length: 0,
                    data: r.payload,
                },
            ),
            Kind::Void => {}
        }
    }
    if end == from {
        return None;
    }
    // The batch covers from..end, voids included (they carry no record).
    let first_seq = from;
    let plain_bytes = plain.len();
    if level > 0 && plain_bytes > 0 {
        let c = records::compress(&plain, level);
        if c.len() < plain_bytes {
            return Some(Built {
                first_seq,
                end_seq: end,
                body: c,
                plain_bytes,
                compressed: true,
                skipped,
            });
        }
    }
    Some(Built {
        first_seq,
        end_seq: end,
        body: plain,
        plain_bytes,
        compressed: false,
        skipped,
    })
}
