//! The failover routes (see [`crate::failover`]).

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};

use super::error::{Json, Path, Query};
use super::{Api, ApiError};
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

async fn resolve_h(
    State(api): State<Api>,
    Path(vpg): Path<String>,
    Json(req): Json<ResolveRequest>,
) -> Result<Json<Resolved>, ApiError> {
    Ok(Json(api.failover.resolve(&vpg, &req).await?))
}

async fn diverged_h(State(api): State<Api>, Path(vpg): Path<String>) -> Json<Vec<DivergedSet>> {
    let f = api.failover.clone();
    Json(
        tokio::task::spawn_blocking(move || f.diverged(&vpg))
            .await
            .unwrap_or_default(),
    )
}

#[derive(Debug, serde::Deserialize)]
struct EpochQuery {
    epoch: Option<u64>,
}

async fn diverged_delete_h(
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

async fn move_h(
    State(api): State<Api>,
    Path(vpg): Path<String>,
    Json(req): Json<MoveRequest>,
) -> Result<(StatusCode, Json<LiveFailover>), ApiError> {
    Ok((StatusCode::CREATED, Json(api.failover.move_vpg(&vpg, &req).await?)))
}

async fn reverse_h(
    State(api): State<Api>,
    Path(vpg): Path<String>,
    Json(req): Json<ReverseRequest>,
) -> Result<(StatusCode, Json<VpgStatus>), ApiError> {
    Ok((StatusCode::CREATED, Json(api.failover.reverse(&vpg, &req).await?)))
}

async fn lives_h(State(api): State<Api>) -> Json<Vec<LiveFailover>> {
    Json(api.failover.lives())
}

async fn live_h(
    State(api): State<Api>,
    Path(vpg): Path<String>,
    Json(req): Json<LiveRequest>,
) -> Result<(StatusCode, Json<LiveFailover>), ApiError> {
    Ok((StatusCode::CREATED, Json(api.failover.start_live(&vpg, &req).await?)))
}

/// `ferry failover commit`: the body may ask for reverse protection once it is done.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct CommitRequest {
    #[serde(default)]
    pub reverse: Option<ReverseRequest>,
}

async fn commit_h(
    State(api): State<Api>,
    Path(vpg): Path<String>,
    Json(req): Json<CommitRequest>,
) -> Result<Json<LiveFailover>, ApiError> {
    Ok(Json(api.failover.commit_then(&vpg, req.reverse).await?))
}

async fn rollback_h(State(api): State<Api>, Path(vpg): Path<String>) -> Result<Json<LiveFailover>, ApiError> {
    Ok(Json(api.failover.rollback(&vpg).await?))
}

async fn running_h(State(api): State<Api>) -> Json<Vec<TestRunning>> {
    Json(api.failover.running())
}

async fn test_h(
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

async fn stop_h(
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

async fn reports_h(State(api): State<Api>, Path(vpg): Path<String>) -> Result<Json<Vec<TestReport>>, ApiError> {
    Ok(Json(api.failover.reports(&vpg)?))
}
