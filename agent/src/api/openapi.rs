//! The OpenAPI 3 document of the API, generated from the handlers and types (utoipa),
//! served at `/v1/openapi.json` and committed as `docs/openapi.json` (a test keeps the two
//! equal).

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::failover as f;
use super::watch as w;
use super::*;

#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "ferry agent API",
        description = "The control API of a ferry agent: volumes, VPGs, checkpoints, replicas, failover tests, live failovers, moves, reverse protection, split-brain resolution, tasks, alerts, events and metrics. Over the unix socket no token is needed; over TCP (`api.listen`) every request but the dashboard's assets carries `Authorization: Bearer TOKEN` (`ferry api token`)."
    ),
    paths(
        status_h, w::alerts_h, w::samples_h, metrics::metrics_h,
        list_h, create_h, adopt_h, delete_h,
        vpg_list_h, vpg_create_h, vpg_show_h, vpg_edit_h, vpg_delete_h, pause_h, resume_h, journal_read_h,
        checkpoint_h, checkpoint_list_h, export_h, unexport_h, export_list_h,
        replica_list_h, replica_show_h, replica_delete_h,
        f::running_h, f::test_h, f::stop_h, f::reports_h, w::reports_h,
        f::lives_h, f::live_h, f::commit_h, f::rollback_h, f::move_h, f::reverse_h, f::resolve_h,
        f::diverged_h, f::diverged_delete_h,
        w::tasks_h, w::task_h,
        events_h, events_stream_h,
        openapi_h,
    ),
    components(schemas(ErrorBody)),
    modifiers(&Bearer),
    security(("bearer" = [])),
    tags(
        (name = "status", description = "The agent at a glance"),
        (name = "volumes"), (name = "vpgs"), (name = "checkpoints"), (name = "replicas"),
        (name = "failover", description = "Tests, live failovers, commit, rollback, move, reverse protection, split brain"),
        (name = "tasks", description = "Long operations and their progress"),
        (name = "events"),
    )
)]
pub struct ApiDoc;

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let c = api.components.get_or_insert_with(Default::default);
        c.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

/// The document as served and committed (pretty JSON, a newline at the end).
pub fn document() -> String {
    let mut s = ApiDoc::openapi().to_pretty_json().unwrap_or_default();
    s.push('\n');
    s
}

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "status", responses((status = 200, description = "OpenAPI 3", content_type = "application/json", body = Object), (status = "4XX", description = "refused, with why and what to do", body = ErrorBody)))]
pub(super) async fn openapi_h() -> impl axum::response::IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], document())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_committed_document_is_the_generated_one() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json");
        let now = super::document();
        if std::env::var_os("FERRY_BLESS").is_some() {
            std::fs::write(path, &now).unwrap();
        }
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == now,
            "docs/openapi.json differs from the API's code: write it again with `FERRY_BLESS=1 cargo test -p ferry-agent --lib openapi`"
        );
        let doc: serde_json::Value = serde_json::from_str(&now).unwrap();
        assert_eq!(doc["openapi"].as_str().map(|v| v.starts_with("3.")), Some(true));
    }
}
