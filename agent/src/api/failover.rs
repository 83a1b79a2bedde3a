//! The failover routes (see [`crate::failover`]).

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};

use super::error::{Json, Path, Query};
use super::tasks::{self, TaskKind};
use super::{Api, ApiError, ErrorBody};
use crate::diverged::DivergedSet;
use crate::failover::resolve::{ResolveRequest, Resolved};
use crate::failover::{
    LiveFailover, LiveRequest, MoveRequest, ReverseRequest, StopRequest, TestReport, TestRequest, TestRunning,
};
use crate::protect::vpg::VpgStatus;

pub(super) fn routes(r: Router<Api>) -> Router<Api> {
    r.route("/v1/failover/tests", get(running_h))
        .route("/v1/failover/{vpg}/test", post(test_h))
        .route("/v1/failover/{vpg}/stop", post(stop_h))
        .route("/v1/failover/{vpg}/reports", get(reports_h))
        .route("/v1/failover/live", get(lives_h))
        .route("/v1/failover/{vpg}/live", post(live_h))
        .route("/v1/failover/{vpg}/commit", post(commit_h))
        .route("/v1/failover/{vpg}/rollback", post(rollback_h))
        .route("/v1/failover/{vpg}/reverse", post(reverse_h))
        .route("/v1/failover/{vpg}/move", post(move_h))
        .route("/v1/failover/{vpg}/resolve", post(resolve_h))
        .route("/v1/failover/{vpg}/diverged", get(diverged_h).delete(diverged_delete_h))
}

/// Settles a split brain, run at the side given up.
#[utoipa::path(post, path = "/v1/failover/{vpg}/resolve", tag = "failover", request_body = ResolveRequest, params(("vpg" = String, Path, description = "the VPG's name")), responses((status = 200, body = Resolved), (status = "4XX", description = "refused, with why and what to do", body = ErrorBody)))]
pub(super) async fn resolve_h(
    State(api): State<Api>,
    Path(vpg): Path<String>,
    Json(req): Json<ResolveRequest>,
) -> Result<Json<Resolved>, ApiError> {
    Ok(Json(api.failover.resolve(&vpg, &req).await?))
}

/// Diverged writes kept for salvage.
#[utoipa::path(get, path = "/v1/failover/{vpg}/diverged", tag = "failover", params(("vpg" = String, Path, description = "the VPG's name")), responses((status = 200, body = [DivergedSet]), (status = "4XX", description = "refused, with why and what to do", body = ErrorBody)))]
pub(super) async fn diverged_h(State(api): State<Api>, Path(vpg): Path<String>) -> Json<Vec<DivergedSet>> {
    let f = api.failover.clone();
    Json(
        tokio::task::spawn_blocking(move || f.diverged(&vpg))
            .await
            .unwrap_or_default(),
    )
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct EpochQuery {
    /// Only this epoch's set (default: every set).
    pub(super) epoch: Option<u64>,
}

/// Deletes kept diverged writes (one epoch's, or all).
#[utoipa::path(delete, path = "/v1/failover/{vpg}/diverged", tag = "failover", params(("vpg" = String, Path, description = "the VPG's name"), EpochQuery), responses((status = 200, body = [DivergedSet]), (status = "4XX", description = "refused, with why and what to do", body = ErrorBody)))]
pub(super) async fn diverged_delete_h(
    State(api): State<Api>,
    Path(vpg): Path<String>,
    Query(q): Query<EpochQuery>,
) -> Result<Json<Vec<DivergedSet>>, ApiError> {
    let f = api.failover.clone();
    let sets = tokio::task::spawn_blocking(move || f.delete_diverged(&vpg, q.epoch))
        .await
        .map_err(|e| crate::error::AgentError::Refused(e.to_string()))??;
    Ok(Json(sets))
}

/// Moves the VPG to this (recovery) site: fence, drain, fail over, commit, protect back (a
/// task the `ferry-task` header names).
#[utoipa::path(post, path = "/v1/failover/{vpg}/move", tag = "failover", request_body = MoveRequest, params(("vpg" = String, Path, description = "the VPG's name")), responses((status = 201, body = LiveFailover), (status = "4XX", description = "refused, with why and what to do", body = ErrorBody)))]
pub(super) async fn move_h(
    State(api): State<Api>,
    Path(vpg): Path<String>,
    Json(req): Json<MoveRequest>,
) -> Result<(StatusCode, [(axum::http::HeaderName, String); 1], Json<LiveFailover>), ApiError> {
    let l = api.failover.move_vpg(&vpg, &req).await?;
    let task = api.tasks.begin(crate::clock::now_ms(), TaskKind::Move, &vpg);
    Ok((StatusCode::CREATED, tasks::header(task), Json(l)))
}

/// Protects a committed VPG back to the site it failed over from; its first sync is a task
/// the `ferry-task` header names.
#[utoipa::path(post, path = "/v1/failover/{vpg}/reverse", tag = "failover", request_body = ReverseRequest, params(("vpg" = String, Path, description = "the VPG's name")), responses((status = 201, body = VpgStatus), (status = "4XX", description = "refused, with why and what to do", body = ErrorBody)))]
pub(super) async fn reverse_h(
    State(api): State<Api>,
    Path(vpg): Path<String>,
    Json(req): Json<ReverseRequest>,
) -> Result<(StatusCode, [(axum::http::HeaderName, String); 1], Json<VpgStatus>), ApiError> {
    let v = api.failover.reverse(&vpg, &req).await?;
    let task = api.tasks.begin(crate::clock::now_ms(), TaskKind::ReverseSync, &vpg);
    Ok((StatusCode::CREATED, tasks::header(task), Json(v)))
}

/// Live failovers here.
#[utoipa::path(get, path = "/v1/failover/live", tag = "failover", responses((status = 200, body = [LiveFailover]), (status = "4XX", description = "refused, with why and what to do", body = ErrorBody)))]
pub(super) async fn lives_h(State(api): State<Api>) -> Json<Vec<LiveFailover>> {
    Json(api.failover.lives())
}

/// Starts a live failover at this recovery site.
#[utoipa::path(post, path = "/v1/failover/{vpg}/live", tag = "failover", request_body = LiveRequest, params(("vpg" = String, Path, description = "the VPG's name")), responses((status = 201, body = LiveFailover), (status = "4XX", description = "refused, with why and what to do", body = ErrorBody)))]
pub(super) async fn live_h(
    State(api): State<Api>,
    Path(vpg): Path<String>,
    Json(req): Json<LiveRequest>,
) -> Result<(StatusCode, Json<LiveFailover>), ApiError> {
    Ok((StatusCode::CREATED, Json(api.failover.start_live(&vpg, &req).await?)))
}

/// `ferry failover commit`: the body may ask for reverse protection once it is done.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct CommitRequest {
    #[serde(default)]
    pub reverse: Option<ReverseRequest>,
}

/// Commits a live failover; the copy goes on in the background, a task the `ferry-task`
/// header names.
#[utoipa::path(post, path = "/v1/failover/{vpg}/commit", tag = "failover", request_body = CommitRequest, params(("vpg" = String, Path, description = "the VPG's name")), responses((status = 200, body = LiveFailover), (status = "4XX", description = "refused, with why and what to do", body = ErrorBody)))]
pub(super) async fn commit_h(
    State(api): State<Api>,
    Path(vpg): Path<String>,
    Json(req): Json<CommitRequest>,
) -> Result<([(axum::http::HeaderName, String); 1], Json<LiveFailover>), ApiError> {
    let l = api.failover.commit_then(&vpg, req.reverse).await?;
    let task = api.tasks.begin(crate::clock::now_ms(), TaskKind::Commit, &vpg);
    Ok((tasks::header(task), Json(l)))
}

/// Rolls a live failover back.
#[utoipa::path(post, path = "/v1/failover/{vpg}/rollback", tag = "failover", params(("vpg" = String, Path, description = "the VPG's name")), responses((status = 200, body = LiveFailover), (status = "4XX", description = "refused, with why and what to do", body = ErrorBody)))]
pub(super) async fn rollback_h(
    State(api): State<Api>,
    Path(vpg): Path<String>,
) -> Result<Json<LiveFailover>, ApiError> {
    Ok(Json(api.failover.rollback(&vpg).await?))
}

/// Failover tests that run here.
#[utoipa::path(get, path = "/v1/failover/tests", tag = "failover", responses((status = 200, body = [TestRunning]), (status = "4XX", description = "refused, with why and what to do", body = ErrorBody)))]
pub(super) async fn running_h(State(api): State<Api>) -> Json<Vec<TestRunning>> {
    Json(api.failover.running())
}

/// Starts a failover test of a checkpoint.
#[utoipa::path(post, path = "/v1/failover/{vpg}/test", tag = "failover", request_body = TestRequest, params(("vpg" = String, Path, description = "the VPG's name")), responses((status = 201, body = TestRunning), (status = "4XX", description = "refused, with why and what to do", body = ErrorBody)))]
pub(super) async fn test_h(
    State(api): State<Api>,
    Path(vpg): Path<String>,
    Json(req): Json<TestRequest>,
) -> Result<(StatusCode, Json<TestRunning>), ApiError> {
    let f = api.failover.clone();
    let t = tokio::task::spawn_blocking(move || f.start_test(&vpg, &req))
        .await
        .map_err(|e| crate::error::AgentError::Refused(e.to_string()))??;
    Ok((StatusCode::CREATED, Json(t)))
}

/// Stops a failover test and records its report.
#[utoipa::path(post, path = "/v1/failover/{vpg}/stop", tag = "failover", request_body = StopRequest, params(("vpg" = String, Path, description = "the VPG's name")), responses((status = 200, body = TestReport), (status = "4XX", description = "refused, with why and what to do", body = ErrorBody)))]
pub(super) async fn stop_h(
    State(api): State<Api>,
    Path(vpg): Path<String>,
    Json(req): Json<StopRequest>,
) -> Result<Json<TestReport>, ApiError> {
    let f = api.failover.clone();
    let r = tokio::task::spawn_blocking(move || f.stop_test(&vpg, &req))
        .await
        .map_err(|e| crate::error::AgentError::Refused(e.to_string()))??;
    Ok(Json(r))
}

/// A VPG's failover test reports.
#[utoipa::path(get, path = "/v1/failover/{vpg}/reports", tag = "failover", params(("vpg" = String, Path, description = "the VPG's name")), responses((status = 200, body = [TestReport]), (status = "4XX", description = "refused, with why and what to do", body = ErrorBody)))]
pub(super) async fn reports_h(
    State(api): State<Api>,
    Path(vpg): Path<String>,
) -> Result<Json<Vec<TestReport>>, ApiError> {
    Ok(Json(api.failover.reports(&vpg)?))
}
