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

use std::collections::{BTreeMap, HashMap};
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

mod batch;
mod session;

use session::Session;

const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A batch that compression shrank by less than 10% makes the next ones go uncompressed;
/// one in this many tries again.
const COMPRESS_PROBE_EVERY: u32 = 16;
/// Acknowledged bytes after which journal space is released at once.
const RELEASE_BYTES: usize = 32 << 20;
/// Acknowledged journal space is released at least this often.
const RELEASE_EVERY: Duration = Duration::from_millis(100);

/// A link's state, for `ferry status`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
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
            epoch: v.epoch(),
            lineage: v.record.lineage.0,
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
            plan: v.plan(),
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
        let mut s = Session::new(self, key);
        let r = s.run(&mut wr, &mut rx).await;
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
