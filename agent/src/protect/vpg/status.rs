//! What a VPG shows: its status (a read of its state, with no side effects), its journal's
//! tail for `ferry journal tail`.

use super::*;
use crate::protect::state::{Live, VpgState, shown};

/// The version of [`VpgStatus`]'s JSON. 2: `format`, `state_kind`, `lineage` and `epoch`
/// added (1 had none of them; `state` is the same text).
pub const STATUS_FORMAT_VERSION: u32 = 2;

/// VPG status as the control API reports it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VpgStatus {
    /// [`STATUS_FORMAT_VERSION`] (absent: 1).
    #[serde(default = "format_v1")]
    pub format: u32,
    pub name: String,
    /// The VPG's identity and generation.
    #[serde(default)]
    pub lineage: Lineage,
    #[serde(default)]
    pub epoch: u64,
    /// (epoch, the journal sequence at which it began here), as far as remembered.
    #[serde(default)]
    pub epochs: Vec<(u64, u64)>,
    /// The state machine's state (see [`crate::protect::state`]); `None` only from an
    /// agent of format 1.
    #[serde(default)]
    pub state_kind: Option<VpgState>,
    /// The state for a person, with its detail (`protecting (meeting SLA)`, the datastore
    /// error, …).
    pub state: String,
    pub volumes: Vec<VpgVolumeStatus>,
    pub journal: JournalStatus,
    pub last_checkpoint: Option<CheckpointInfo>,
    pub checkpoints: Vec<CheckpointInfo>,
    /// Members in boot order, scripts and networks of a failover.
    #[serde(default)]
    pub plan: Plan,
    pub events: Vec<Event>,
    /// Replication, for a protected VPG.
    #[serde(default)]
    pub protection: Option<ProtectionStatus>,
    /// A member's datastore I/O failed lately.
    #[serde(default)]
    pub datastore_error: Option<DatastoreError>,
}

fn format_v1() -> u32 {
    1
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProtectionStatus {
    pub settings: Protection,
    pub ship: ShipState,
    pub rpo_s: f64,
    pub meeting_sla: bool,
    /// While initializing: bytes read of the volumes' total.
    pub initial_done_bytes: Option<u64>,
    pub initial_total_bytes: u64,
    /// While initializing: bytes read per second since the VPG was created, and the
    /// seconds left at that rate.
    #[serde(default)]
    pub initial_rate_bytes_per_s: Option<f64>,
    #[serde(default)]
    pub initial_eta_s: Option<f64>,
    /// While a delta sync compares regions.
    #[serde(default)]
    pub delta: Option<DeltaProgress>,
    /// Milliseconds writes were held by the throttle, summed over writes, since the agent
    /// started.
    #[serde(default)]
    pub throttle_held_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VpgVolumeStatus {
    pub name: String,
    pub id: u32,
    pub attached: bool,
    pub dirty_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JournalStatus {
    #[schema(value_type = String)]
    pub path: PathBuf,
    pub size_bytes: u64,
    pub used_bytes: u64,
    pub records: u64,
    pub acked_seq: u64,
    pub settled_seq: u64,
    pub next_seq: u64,
    pub fill_percent: f64,
}

/// One record as `ferry journal tail` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TailRecord {
    pub seq: u64,
    pub kind: String,
    pub volume: String,
    pub offset: u64,
    pub length: u64,
    pub crc: u32,
    /// Checkpoint tag.
    pub tag: Option<String>,
}

impl Vpg {
    pub fn status(&self) -> VpgStatus {
        let st: JournalStats = self.cap.capture.journal().stats();
        let members = self.members.read().unwrap_or_else(|e| e.into_inner());
        let checkpoints: Vec<CheckpointInfo> = self
            .checkpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect();
        let now = now_ms();
        let protection = self.record.protection.as_ref().map(|p| {
            let rpo_s = self.rpo_s(now);
            let total: u64 = self.cap.capture.maps().values().map(|m| m.header().volume_bytes).sum();
            let initializing = !self.initial_done();
            // Progress: the share read into the journal, times the share of the journal's
            // records the recovery site holds.
            let (acked, next) = (
                self.ship.lock().unwrap_or_else(|e| e.into_inner()).acked_seq,
                self.journal_stats().next_seq.max(1),
            );
            let initial_done = initializing.then(|| {
                let read = total.saturating_sub(self.cap.capture.dirty_bytes());
                (read as f64 * (acked.min(next) as f64 / next as f64)) as u64
            });
            let elapsed_s = now.saturating_sub(self.record.created_unix_ms) as f64 / 1000.0;
            let initial_rate = initial_done.filter(|_| elapsed_s > 0.5).map(|d| d as f64 / elapsed_s);
            ProtectionStatus {
                settings: Protection {
                    paused: self.is_paused(),
                    ..p.clone()
                },
                ship: self.ship.lock().unwrap_or_else(|e| e.into_inner()).clone(),
                rpo_s,
                meeting_sla: rpo_s <= p.rpo_s as f64,
                initial_done_bytes: initial_done,
                initial_total_bytes: total,
                initial_rate_bytes_per_s: initial_rate,
                initial_eta_s: initial_rate
                    .filter(|&r| r > 0.0)
                    .zip(initial_done)
                    .map(|(r, d)| total.saturating_sub(d) as f64 / r),
                delta: self
                    .delta_pending()
                    .then(|| self.delta_progress.lock().unwrap_or_else(|e| e.into_inner()).clone()),
                throttle_held_ms: self.cap.held_ms.load(std::sync::atomic::Ordering::Relaxed),
            }
        });
        let datastore_error = self.cap.datastore_error();
        let mode = self.cap.capture.mode();
        let live = Live {
            protected: protection.is_some(),
            bitmap_sync: mode != Mode::Journaling,
            datastore_error: datastore_error.is_some(),
            peer_error: protection.as_ref().is_some_and(|p| p.ship.error.is_some()),
            meeting_sla: protection.as_ref().is_some_and(|p| p.meeting_sla),
        };
        let state_kind = shown(&self.lifecycle(), &live);
        let fenced = self.fenced();
        let state = match (state_kind, &datastore_error) {
            (VpgState::SplitBrain, _) => {
                let b = self.lifecycle().split_brain.unwrap_or_default();
                format!(
                    "split brain since epoch {}: {} written here, {} there (the recovery site ran the VPG and never received these writes). Writes are refused here and replication stops; nothing was overwritten. Settle it with `ferry vpg resolve {} --keep here|peer`",
                    b.epoch,
                    human(b.bytes),
                    human(b.there_bytes),
                    self.record.name
                )
            }
            (VpgState::Fenced, _) => format!(
                "fenced at epoch {}: {}",
                self.epoch(),
                fenced.as_deref().unwrap_or("the VPG runs at its recovery site")
            ),
            (VpgState::Error, Some(d)) => format!(
                "error: datastore I/O failed ({}; {} time(s), last {} s ago): those writes were refused to the client and not shipped",
                d.message,
                d.failures,
                now.saturating_sub(d.last_unix_ms) / 1000
            ),
            (VpgState::Protecting | VpgState::BitmapSync, _) if !live.protected => mode.name().into(),
            (VpgState::BitmapSync, _) => mode.name().into(),
            (VpgState::Protecting, _) if live.meeting_sla => "protecting (meeting SLA)".into(),
            (VpgState::Protecting, _) => "protecting (not meeting SLA)".into(),
            (kind, _) => kind.name().into(),
        };
        VpgStatus {
            format: STATUS_FORMAT_VERSION,
            name: self.record.name.clone(),
            lineage: self.record.lineage,
            epoch: self.epoch(),
            epochs: self.lifecycle().epochs,
            plan: self.plan(),
            state_kind: Some(state_kind),
            state,
            volumes: self
                .record
                .volumes
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let id = i as u32 + 1;
                    VpgVolumeStatus {
                        name: v.clone(),
                        id,
                        attached: members.get(&id).is_some_and(|m| m.file.is_some()),
                        dirty_bytes: self.cap.capture.map(id).map_or(0, |m| m.dirty_bytes()),
                    }
                })
                .collect(),
            journal: JournalStatus {
                path: journal_path(&self.dir),
                size_bytes: st.data_bytes,
                used_bytes: st.data_used_bytes,
                records: st.next_seq - st.acked_seq,
                acked_seq: st.acked_seq,
                settled_seq: st.settled_seq,
                next_seq: st.next_seq,
                fill_percent: (st.fill() * 1000.0).round() / 10.0,
            },
            last_checkpoint: checkpoints.last().cloned(),
            checkpoints,
            events: self.cap.events.list(),
            protection,
            datastore_error,
        }
    }

    /// Reads the next settled records for `ferry journal tail`; `ack` acknowledges them
    /// (frees their space); `rewind` starts from the first unacknowledged record. Runs on
    /// the blocking pool: an acknowledgement waits for the disk.
    pub async fn tail(
        &self,
        max: usize,
        ack: bool,
        rewind: bool,
        last_only: bool,
    ) -> Result<Vec<TailRecord>, AgentError> {
        let mut guard = self.consumer.lock().await;
        if guard.is_none() {
            *guard = self.cap.capture.journal().consumer();
        }
        let Some(mut cons) = guard.take() else {
            return Err(AgentError::Refused(format!(
                "VPG {:?}: the journal's consumer is busy (a protected VPG's journal is read by its shipper)",
                self.record.name
            )));
        };
        let volumes = self.record.volumes.clone();
        let (cons, result) = tokio::task::spawn_blocking(move || {
            let r = read_records(&mut cons, &volumes, max, ack, rewind, last_only);
            (cons, r)
        })
        .await
        .map_err(|e| AgentError::Refused(format!("journal read failed: {e}")))?;
        *guard = Some(cons);
        result
    }
}

fn read_records(
    cons: &mut Consumer<MmapStorage>,
    volumes: &[String],
    max: usize,
    ack: bool,
    rewind: bool,
    last_only: bool,
) -> Result<Vec<TailRecord>, AgentError> {
    if rewind {
        cons.rewind();
    }
    let describe = |e: &ferry_journal::format::Entry, tag: Option<String>| TailRecord {
        seq: e.seq,
        kind: e.kind.name().into(),
        volume: match e.kind {
            Kind::Checkpoint | Kind::Void => String::new(),
            _ => volumes
                .get((e.volume as usize).wrapping_sub(1))
                .cloned()
                .unwrap_or_else(|| format!("#{}", e.volume)),
        },
        offset: e.offset,
        length: e.length,
        crc: e.payload_crc,
        tag,
    };
    let mut out = Vec::new();
    // With `last_only`, every record is read (as a shipper would) but only the last one is
    // described.
    let mut last = None;
    for _ in 0..max {
        let Some(r) = cons.next_record() else { break };
        let tag = (r.entry.kind == Kind::Checkpoint).then(|| String::from_utf8_lossy(r.payload).into_owned());
        if last_only {
            last = Some((r.entry, tag));
        } else {
            out.push(describe(&r.entry, tag));
        }
    }
    if let Some((e, tag)) = last {
        out.push(describe(&e, tag));
    }
    if ack && let Some(last) = out.last() {
        cons.ack(last.seq + 1)
            .map_err(|e| AgentError::Refused(format!("cannot acknowledge: {e}")))?;
    }
    Ok(out)
}
