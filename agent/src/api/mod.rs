//! The control API: HTTP/1 with JSON bodies, on a unix socket (mode 0600) under the state
//! directory, and over TCP (`api.listen`, bearer token, optionally TLS: [`serve`]). The
//! `ferry` CLI and the dashboard (`dashboard/`) are its clients. Every route, body and
//! answer is in the OpenAPI document [`openapi`] builds from the handlers' annotations
//! (`GET /v1/openapi.json`, committed as docs/openapi.json); errors are [`ErrorBody`].

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use serde::{Deserialize, Serialize};

use crate::catalog::{CheckpointExport, Exports};
use crate::failover::Failover;

pub mod auth;
mod dashboard;
pub mod error;
mod failover;
mod metrics;
pub mod openapi;
pub mod samples;
pub mod serve;
pub mod tasks;
pub mod watch;

pub use error::{ApiError, ErrorBody};
use error::{Json, Path, Query};
pub use watch::{Alert, Severity};

use crate::checkpoint::CheckpointInfo;
use crate::error::AgentError;
use crate::protect::volumes::{VolumeStatus, Volumes};
use crate::protect::vpg::{PlanEdit, ProtectArgs, TailRecord, VpgStatus, Vpgs};
use crate::recover::replica::ReplicaStatus;
use crate::replication::shipper::{LinkStatus, Shipping};
pub use failover::CommitRequest;

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreateVpg {
    pub name: String,
    pub volumes: Vec<String>,
    pub journal_bytes: Option<u64>,
    /// Replicate to a recovery site.
    #[serde(default)]
    pub protect: Option<ProtectArgs>,
    /// Members, boot order, scripts and networks of a failover.
    #[serde(default)]
    pub plan: PlanEdit,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExportCheckpoint {
    /// A sequence number, a tag, or "latest".
    pub checkpoint: String,
}

/// One VPG in `ferry status`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VpgSummary {
    pub name: String,
    pub state: String,
    pub peer: Option<String>,
    pub priority: Option<String>,
    pub rpo_s: Option<f64>,
    pub rpo_target_s: Option<u64>,
    pub journal_fill_percent: f64,
    pub dirty_bytes: u64,
    pub link: Option<String>,
    pub throughput_bytes_per_s: Option<f64>,
    /// While initializing: (bytes read, bytes in all).
    pub initial: Option<(u64, u64)>,
}

impl VpgSummary {
    pub fn of(v: &VpgStatus) -> VpgSummary {
        let p = v.protection.as_ref();
        VpgSummary {
            name: v.name.clone(),
            state: v.state.clone(),
            peer: p.map(|p| p.settings.peer.clone()),
            priority: p.map(|p| p.settings.priority.name().to_string()),
            rpo_s: p.map(|p| p.rpo_s),
            rpo_target_s: p.map(|p| p.settings.rpo_s),
            journal_fill_percent: v.journal.fill_percent,
            dirty_bytes: v.volumes.iter().map(|x| x.dirty_bytes).sum(),
            link: p.map(|p| p.ship.error.clone().unwrap_or_else(|| p.ship.link.clone())),
            throughput_bytes_per_s: p.map(|p| p.ship.rate_bytes_per_s),
            initial: p.and_then(|p| p.initial_done_bytes.map(|d| (d, p.initial_total_bytes))),
        }
    }
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TagCheckpoint {
    pub tag: String,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReadJournal {
    pub max: usize,
    #[serde(default)]
    pub ack: bool,
    #[serde(default)]
    pub rewind: bool,
    /// Answer only the last record read (a consumer that wants progress, not contents).
    #[serde(default)]
    pub last_only: bool,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreateVolume {
    pub name: String,
    pub size_bytes: Option<u64>,
    pub datastore: Option<String>,
    pub direct: Option<bool>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AdoptVolume {
    pub name: String,
    #[schema(value_type = String)]
    pub path: PathBuf,
    #[serde(default)]
    pub read_only: bool,
    pub direct: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AgentStatus {
    pub version: String,
    #[schema(value_type = String)]
    pub state_dir: PathBuf,
    pub io_engine: String,
    pub nbd_listen: Vec<String>,
    /// Where this agent accepts its peers as a recovery site, if it does.
    #[serde(default)]
    pub replication_listen: Option<String>,
    pub volumes: usize,
    #[serde(default)]
    pub vpgs: Vec<VpgSummary>,
    #[serde(default)]
    pub links: Vec<LinkStatus>,
    /// Replicas held here for peers.
    #[serde(default)]
    pub replicas: Vec<ReplicaStatus>,
    /// The API and dashboard over TCP (`api.listen`), if served.
    #[serde(default)]
    pub api_listen: Option<String>,
    /// The replicas' history is still being loaded after the start.
    #[serde(default)]
    pub replicas_loading: bool,
    /// Damaged or missing metadata found since the start: which file, what was done, what
    /// to do.
    #[serde(default)]
    pub metadata_problems: Vec<String>,
    /// Failover tests that run here.
    #[serde(default)]
    pub failover_tests: Vec<crate::failover::TestRunning>,
    /// Live failovers here: needing commit, committing, or committed.
    #[serde(default)]
    pub live_failovers: Vec<crate::failover::LiveFailover>,
    /// The dashboard's indicators.
    #[serde(default)]
    pub summary: Summary,
}

/// This site at a glance: the VPGs it protects and the replicas it holds for peers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Summary {
    /// VPGs protected from here plus replicas held here.
    pub vpgs: usize,
    /// Their volumes.
    pub volumes_protected: usize,
    /// The size of those volumes.
    pub data_protected_bytes: u64,
    /// The mean actual RPO of the VPGs protected from here (none: no such VPG).
    pub average_rpo_s: Option<f64>,
    /// VPGs protected from here meeting their RPO target, and not.
    pub meeting_sla: usize,
    pub not_meeting_sla: usize,
    /// VPGs and replicas in error, split brain or fenced.
    pub in_error: usize,
    /// Replicas held here for peers (their RPO is known at their protected site).
    #[serde(default)]
    pub held_here: usize,
}

impl Summary {
    pub fn of(vpgs: &[VpgStatus], volumes: &[VolumeStatus], replicas: &[ReplicaStatus]) -> Summary {
        use crate::protect::state::VpgState;
        let mut s = Summary::default();
        let mut rpo_sum = 0.0;
        for v in vpgs {
            if matches!(
                v.state_kind,
                Some(VpgState::Error | VpgState::SplitBrain | VpgState::Fenced)
            ) {
                s.in_error += 1;
            }
            let Some(p) = &v.protection else { continue };
            s.vpgs += 1;
            s.volumes_protected += v.volumes.len();
            s.data_protected_bytes += v
                .volumes
                .iter()
                .filter_map(|m| volumes.iter().find(|x| x.record.name == m.name))
                .map(|x| x.record.size_bytes)
                .sum::<u64>();
            rpo_sum += p.rpo_s;
            if p.meeting_sla {
                s.meeting_sla += 1;
            } else {
                s.not_meeting_sla += 1;
            }
        }
        let protected_here = s.vpgs;
        if protected_here > 0 {
            s.average_rpo_s = Some(rpo_sum / protected_here as f64);
        }
        for r in replicas {
            s.vpgs += 1;
            if r.split_brain.is_none() {
                s.held_here += 1;
            }
            s.volumes_protected += r.volumes.len();
            s.data_protected_bytes += r.volume_bytes;
            if r.split_brain.is_some() {
                s.in_error += 1;
            }
        }
        s
    }
}

#[derive(Clone)]
pub(crate) struct Api {
    failover: Arc<Failover>,
    volumes: Arc<Volumes>,
    vpgs: Arc<Vpgs>,
    exports: Arc<Exports>,
    shipping: Arc<Shipping>,
    status: AgentStatus,
    shutdown: tokio_util::sync::CancellationToken,
    tasks: Arc<tasks::Tasks>,
    samples: Arc<samples::Ring>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct DeleteQuery {
    /// Even with NBD clients connected (volumes) or the protected site replicating now
    /// (replicas).
    #[serde(default)]
    force: bool,
}

pub fn router(
    volumes: Arc<Volumes>,
    vpgs: Arc<Vpgs>,
    exports: Arc<Exports>,
    shipping: Arc<Shipping>,
    failover: Arc<Failover>,
    status: AgentStatus,
    shutdown: tokio_util::sync::CancellationToken,
) -> Router {
    let api = Api {
        failover,
        volumes,
        vpgs,
        exports,
        shipping,
        status,
        shutdown,
        tasks: Arc::default(),
        samples: Arc::default(),
    };
    tokio::spawn(watch::run(api.clone()));
    dashboard::routes(watch::routes(failover::routes(Router::new())))
        .route("/v1/status", get(status_h))
        .route("/v1/volumes", get(list_h).post(create_h))
        .route("/v1/volumes/adopt", post(adopt_h))
        .route("/v1/volumes/{name}", delete(delete_h))
        .route("/v1/vpgs", get(vpg_list_h).post(vpg_create_h))
        .route(
            "/v1/vpgs/{name}",
            get(vpg_show_h).delete(vpg_delete_h).patch(vpg_edit_h),
        )
        .route("/v1/vpgs/{name}/checkpoints", post(checkpoint_h))
        .route("/v1/vpgs/{name}/journal/read", post(journal_read_h))
        .route("/v1/vpgs/{name}/pause", post(pause_h))
        .route("/v1/vpgs/{name}/resume", post(resume_h))
        .route("/v1/checkpoints/{name}", get(checkpoint_list_h))
        .route("/v1/replicas", get(replica_list_h))
        .route("/v1/replicas/{name}", get(replica_show_h).delete(replica_delete_h))
        .route("/v1/replicas/{name}/exports", post(export_h).delete(unexport_h))
        .route("/v1/exports", get(export_list_h))
        .route("/v1/events", get(events_h))
        .route("/v1/events/stream", get(events_stream_h))
        .route("/metrics", get(metrics::metrics_h))
        .route("/v1/openapi.json", get(openapi::openapi_h))
        .fallback(error::no_route)
        .layer(axum::middleware::from_fn(error::json_method_not_allowed))
        .with_state(api)
}

/// Every VPG of this site.
#[utoipa::path(get, path = "/v1/vpgs", tag = "vpgs", responses((status = 200, body = [VpgStatus]), (status = "4XX", description = "refused, with why and what to do", body = ErrorBody)))]
async fn vpg_list_h(State(api): State<Api>) -> Json<Vec<VpgStatus>> {
    Json(api.vpgs.list())
}

/// Groups volumes into a VPG, protected to a recovery site if asked (its first sync is a
/// task: the `ferry-task` header names it).
#[utoipa::path(post, path = "/v1/vpgs", tag = "vpgs", request_body = CreateVpg, responses((status = 201, body = VpgStatus), (status = "4XX", description = "refused, with why and what to do", body = ErrorBody)))]
async fn vpg_create_h(
    State(api): State<Api>,
    Json(req): Json<CreateVpg>,
) -> Result<
    (
        StatusCode,
        Option<[(axum::http::HeaderName, String); 1]>,
        Json<VpgStatus>,
    ),
    ApiError,
> {
    let v = api
        .vpgs
        .create(
            &req.name,
            &req.volumes,
            req.journal_bytes,
            req.protect.as_ref(),
            &req.plan,
        )
        .await?;
    // A protected VPG starts with its first sync: a task to poll.
    let task = req.protect.as_ref().map(|p| {
        let kind = if p.preseeded {
            tasks::TaskKind::DeltaSync
        } else {
            tasks::TaskKind::InitialSync
        };
        tasks::header(api.tasks.begin(crate::clock::now_ms(), kind, &v.name))
    });
    Ok((StatusCode::CREATED, task, Json(v)))
}

/// One VPG.
#[utoipa::path(get, path = "/v1/vpgs/{name}", tag = "vpgs", params(("name" = String, Path, description = "the VPG's name")), responses((status = 200, body = VpgStatus), (status = "4XX", description = "refused, with why and what to do", body = ErrorBody)))]
async fn vpg_show_h(State(api): State<Api>, Path(name): Path<String>) -> Result<Json<VpgStatus>, ApiError> {
    Ok(Json(api.vpgs.get(&name)?.status()))
}

/// Edits a VPG's failover plan (members, boot order, scripts, networks).
#[utoipa::path(patch, path = "/v1/vpgs/{name}", tag = "vpgs", request_body = PlanEdit, params(("name" = String, Path, description = "the VPG's name")), responses((status = 200, body = VpgStatus), (status = "4XX", description = "refused, with why and what to do", body = ErrorBody)))]
async fn vpg_edit_h(
    State(api): State<Api>,
    Path(name): Path<String>,
    Json(req): Json<PlanEdit>,
) -> Result<Json<VpgStatus>, ApiError> {
    Ok(Json(api.vpgs.edit(&name, &req).await?))
}

/// Deletes a VPG (and its replica at the recovery site, if reachable).
#[utoipa::path(delete, path = "/v1/vpgs/{name}", tag = "vpgs", params(("name" = String, Path, description = "the VPG's name")), responses((status = 204, description = "deleted"), (status = "4XX", description = "refused, with why and what to do", body = ErrorBody)))]
async fn vpg_delete_h(State(api): State<Api>, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    let record = api.vpgs.delete(&name).await?;
    if let Some(p) = &record.protection {
        // The recovery site's replica goes too, if it can be reached (the peer may take
        // its 10 s to answer; other VPG changes do not wait for it).
        crate::replication::shipper::remove_remote(p, record.ring_id).await.map_err(|why| {
            AgentError::Refused(format!(
                "VPG {name:?} is deleted here, but its replica at {} was not: {why}. Delete it there with `ferry replica delete {name}`",
                p.peer
            ))
        })?;
        tracing::info!(vpg = %name, peer = %p.peer, "replica at the recovery site deleted");
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Tags a checkpoint now.
#[utoipa::path(post, path = "/v1/vpgs/{name}/checkpoints", tag = "checkpoints", request_body = TagCheckpoint, params(("name" = String, Path, description = "the VPG's name")), responses((status = 201, body = CheckpointInfo), (status = "4XX", description = "refused, with why and what to do", body = ErrorBody)))]
async fn checkpoint_h(
    State(api): State<Api>,
    Path(name): Path<String>,
    Json(req): Json<TagCheckpoint>,
) -> Result<(StatusCode, Json<CheckpointInfo>), ApiError> {
    if let Some(why) = crate::checkpoint::tag_problem(&req.tag) {
        return Err(AgentError::BadRequest(why).into());
    }
    Ok((StatusCode::CREATED, Json(api.vpgs.get(&name)?.checkpoint(&req.tag)?)))
}

/// Reads the VPG's journal records (a local consumer).
#[utoipa::path(post, path = "/v1/vpgs/{name}/journal/read", tag = "vpgs", request_body = ReadJournal, params(("name" = String, Path, description = "the VPG's name")), responses((status = 200, body = [TailRecord]), (status = "4XX", description = "refused, with why and what to do", body = ErrorBody)))]
async fn journal_read_h(
    State(api): State<Api>,
    Path(name): Path<String>,
    Json(req): Json<ReadJournal>,
) -> Result<Json<Vec<TailRecord>>, ApiError> {
    let max = req.max.clamp(1, 100_000);
    Ok(Json(
        api.vpgs
            .get(&name)?
            .tail(max, req.ack, req.rewind, req.last_only)
            .await?,
    ))
}

/// The agent: listeners, VPGs, links, replicas, tests and live failovers.
#[utoipa::path(get, path = "/v1/status", tag = "status", responses((status = 200, body = AgentStatus), (status = "4XX", description = "refused, with why and what to do", body = ErrorBody)))]
async fn status_h(State(api): State<Api>) -> Json<AgentStatus> {
    let mut s = api.status.clone();
    let volumes = api.volumes.list();
    let vpgs = api.vpgs.list();
    s.volumes = volumes.len();
    s.vpgs = vpgs.iter().map(VpgSummary::of).collect();
    s.links = api.shipping.links();
    s.replicas = api.exports.replicas().all().iter().map(|r| r.status()).collect();
    s.summary = Summary::of(&vpgs, &volumes, &s.replicas);
    s.replicas_loading = api.exports.replicas().check_loaded().is_err();
    s.metadata_problems = crate::meta::problems();
    s.failover_tests = api.failover.running();
    s.live_failovers = api.failover.lives();
    Json(s)
}

/// Every volume.
#[utoipa::path(get, path = "/v1/volumes", tag = "volumes", responses((status = 200, body = [VolumeStatus]), (status = "4XX", description = "refused, with why and what to do", body = ErrorBody)))]
async fn list_h(State(api): State<Api>) -> Json<Vec<VolumeStatus>> {
    Json(api.volumes.list())
}

/// Creates a volume on a datastore.
#[utoipa::path(post, path = "/v1/volumes", tag = "volumes", request_body = CreateVolume, responses((status = 201, body = VolumeStatus), (status = "4XX", description = "refused, with why and what to do", body = ErrorBody)))]
async fn create_h(
    State(api): State<Api>,
    Json(req): Json<CreateVolume>,
) -> Result<(StatusCode, Json<VolumeStatus>), ApiError> {
    let v = api
        .volumes
        .create(&req.name, req.size_bytes, req.datastore.as_deref(), req.direct)
        .await?;
    Ok((StatusCode::CREATED, Json(v)))
}

/// Serves an existing file or block device as a volume.
#[utoipa::path(post, path = "/v1/volumes/adopt", tag = "volumes", request_body = AdoptVolume, responses((status = 201, body = VolumeStatus), (status = "4XX", description = "refused, with why and what to do", body = ErrorBody)))]
async fn adopt_h(
    State(api): State<Api>,
    Json(req): Json<AdoptVolume>,
) -> Result<(StatusCode, Json<VolumeStatus>), ApiError> {
    let v = api
        .volumes
        .adopt(&req.name, &req.path, req.read_only, req.direct)
        .await?;
    Ok((StatusCode::CREATED, Json(v)))
}

/// Deletes a volume (its file stays unless it was created here).
#[utoipa::path(delete, path = "/v1/volumes/{name}", tag = "volumes", params(("name" = String, Path, description = "the volume's name"), DeleteQuery), responses((status = 204, description = "deleted"), (status = "4XX", description = "refused, with why and what to do", body = ErrorBody)))]
async fn delete_h(
    State(api): State<Api>,
    Path(name): Path<String>,
    Query(q): Query<DeleteQuery>,
) -> Result<StatusCode, ApiError> {
    api.volumes.delete(&name, q.force).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Pauses a VPG's replication (writes are still captured).
#[utoipa::path(post, path = "/v1/vpgs/{name}/pause", tag = "vpgs", params(("name" = String, Path, description = "the VPG's name")), responses((status = 200, body = VpgStatus), (status = "4XX", description = "refused, with why and what to do", body = ErrorBody)))]
async fn pause_h(State(api): State<Api>, Path(name): Path<String>) -> Result<Json<VpgStatus>, ApiError> {
    Ok(Json(api.vpgs.set_paused(&name, true).await?))
}

/// Resumes a paused VPG.
#[utoipa::path(post, path = "/v1/vpgs/{name}/resume", tag = "vpgs", params(("name" = String, Path, description = "the VPG's name")), responses((status = 200, body = VpgStatus), (status = "4XX", description = "refused, with why and what to do", body = ErrorBody)))]
async fn resume_h(State(api): State<Api>, Path(name): Path<String>) -> Result<Json<VpgStatus>, ApiError> {
    Ok(Json(api.vpgs.set_paused(&name, false).await?))
}

/// A VPG's checkpoints: at a recovery site those its replica holds, at the protected site those in the journal.
#[utoipa::path(get, path = "/v1/checkpoints/{name}", tag = "checkpoints", params(("name" = String, Path, description = "the VPG's name")), responses((status = 200, body = [CheckpointInfo]), (status = "4XX", description = "refused, with why and what to do", body = ErrorBody)))]
async fn checkpoint_list_h(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<Json<Vec<CheckpointInfo>>, ApiError> {
    if let Some(r) = api.exports.replicas().get(&name) {
        let mut cps = r.checkpoints();
        api.failover.mark_tested(&name, &mut cps);
        return Ok(Json(cps));
    }
    if api.vpgs.get(&name).is_err() {
        api.exports.replicas().check_loaded()?;
    }
    Ok(Json(api.vpgs.get(&name)?.status().checkpoints))
}

/// Replicas held here for peers.
#[utoipa::path(get, path = "/v1/replicas", tag = "replicas", responses((status = 200, body = [ReplicaStatus]), (status = "4XX", description = "refused, with why and what to do", body = ErrorBody)))]
async fn replica_list_h(State(api): State<Api>) -> Json<Vec<ReplicaStatus>> {
    Json(api.exports.replicas().all().iter().map(|r| r.status()).collect())
}

fn no_replica(name: &str) -> AgentError {
    AgentError::Refused(format!(
        "no replica named {name:?} on this agent; `ferry replica list` shows the replicas it holds"
    ))
}

/// One replica.
#[utoipa::path(get, path = "/v1/replicas/{name}", tag = "replicas", params(("name" = String, Path, description = "the replica's (VPG's) name")), responses((status = 200, body = ReplicaStatus), (status = "4XX", description = "refused, with why and what to do", body = ErrorBody)))]
async fn replica_show_h(State(api): State<Api>, Path(name): Path<String>) -> Result<Json<ReplicaStatus>, ApiError> {
    api.exports.replicas().check_loaded()?;
    let r = api.exports.replicas().get(&name).ok_or_else(|| no_replica(&name))?;
    Ok(Json(r.status()))
}

/// Deletes a replica and its history.
#[utoipa::path(delete, path = "/v1/replicas/{name}", tag = "replicas", params(("name" = String, Path, description = "the replica's (VPG's) name"), DeleteQuery), responses((status = 204, description = "deleted"), (status = "4XX", description = "refused, with why and what to do", body = ErrorBody)))]
async fn replica_delete_h(
    State(api): State<Api>,
    Path(name): Path<String>,
    Query(q): Query<DeleteQuery>,
) -> Result<StatusCode, ApiError> {
    let replicas = api.exports.replicas().clone();
    replicas.check_loaded()?;
    if let Some(r) = replicas.get(&name)
        && r.in_session()
        && !q.force
    {
        return Err(AgentError::Refused(format!(
            "the protected site is replicating VPG {name:?} here right now; delete the VPG there (`ferry vpg delete {name}`, which deletes this replica too), or pass --force: its stream ends and it shows the VPG in error"
        ))
        .into());
    }
    api.exports.unexport(&name, None);
    tokio::task::spawn_blocking(move || replicas.remove(&name, true))
        .await
        .map_err(|e| AgentError::Refused(e.to_string()))??;
    Ok(StatusCode::NO_CONTENT)
}

/// Serves a checkpoint of a replica read-only over NBD.
#[utoipa::path(post, path = "/v1/replicas/{name}/exports", tag = "checkpoints", request_body = ExportCheckpoint, params(("name" = String, Path, description = "the replica's (VPG's) name")), responses((status = 201, body = CheckpointExport), (status = "4XX", description = "refused, with why and what to do", body = ErrorBody)))]
async fn export_h(
    State(api): State<Api>,
    Path(name): Path<String>,
    Json(req): Json<ExportCheckpoint>,
) -> Result<(StatusCode, Json<CheckpointExport>), ApiError> {
    Ok((StatusCode::CREATED, Json(api.exports.export(&name, &req.checkpoint)?)))
}

/// Stops serving a replica's checkpoint exports; answers how many.
#[utoipa::path(delete, path = "/v1/replicas/{name}/exports", tag = "checkpoints", params(("name" = String, Path, description = "the replica's (VPG's) name")), responses((status = 200, body = usize, content_type = "application/json"), (status = "4XX", description = "refused, with why and what to do", body = ErrorBody)))]
async fn unexport_h(State(api): State<Api>, Path(name): Path<String>) -> Result<Json<usize>, ApiError> {
    Ok(Json(api.exports.unexport(&name, None)))
}

/// Checkpoint exports served now.
#[utoipa::path(get, path = "/v1/exports", tag = "checkpoints", responses((status = 200, body = [CheckpointExport]), (status = "4XX", description = "refused, with why and what to do", body = ErrorBody)))]
async fn export_list_h(State(api): State<Api>) -> Json<Vec<CheckpointExport>> {
    Json(api.exports.list())
}

pub use crate::events::SourcedEvent;

/// Every VPG's and replica's recent events, oldest first.
#[utoipa::path(get, path = "/v1/events", tag = "events", responses((status = 200, body = [SourcedEvent]), (status = "4XX", description = "refused, with why and what to do", body = ErrorBody)))]
async fn events_h(State(api): State<Api>) -> Json<Vec<SourcedEvent>> {
    let mut out = Vec::new();
    for v in api.vpgs.list() {
        let source = format!("vpg {}", v.name);
        out.extend(v.events.iter().map(|e| SourcedEvent::of(0, &source, e)));
    }
    for r in api.exports.replicas().all() {
        let st = r.status();
        let source = format!("replica {}", st.name);
        out.extend(st.events.iter().map(|e| SourcedEvent::of(0, &source, e)));
    }
    out.sort_by_key(|e| e.unix_ms);
    Json(out)
}

#[utoipa::path(get, path = "/v1/events/stream", tag = "events",
    responses((status = 200, description = "`event: event` with a SourcedEvent as JSON data, `event: lagged` with how many were missed", content_type = "text/event-stream", body = String), (status = "4XX", description = "refused, with why and what to do", body = ErrorBody)))]
/// New events as Server-Sent Events (`event: event`, data: a [`SourcedEvent`]) until the
/// client goes or the agent stops; a reader that falls more than 1024 events behind gets an
/// `event: lagged` with how many it missed.
async fn events_stream_h(
    State(api): State<Api>,
) -> axum::response::sse::Sse<
    impl futures_util::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>,
> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use tokio::sync::broadcast::error::RecvError;
    let rx = crate::events::hub().subscribe();
    let stream = futures_util::stream::unfold((rx, api.shutdown), |(mut rx, stop)| async move {
        let ev = tokio::select! {
            _ = stop.cancelled() => return None,
            r = rx.recv() => match r {
                Ok(e) => Event::default()
                    .event("event")
                    .id(e.id.to_string())
                    .json_data(&e)
                    .unwrap_or_else(|_| Event::default().comment("unencodable event")),
                Err(RecvError::Lagged(n)) => Event::default().event("lagged").data(n.to_string()),
                Err(RecvError::Closed) => return None,
            },
        };
        Some((Ok(ev), (rx, stop)))
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(15)))
}
