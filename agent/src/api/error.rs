//! Every error the API answers is JSON, `{"error": …, "hint": …}`, with the HTTP status
//! that fits: the agent's own errors, bodies and paths that do not parse, and routes or
//! methods that do not exist.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::AgentError;

/// An error answered by the API.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
    /// What to do about it, where there is something to do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// An error with its status, answered as [`ErrorBody`].
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
}

impl ApiError {
    pub fn new(status: StatusCode, error: impl Into<String>, hint: impl Into<String>) -> ApiError {
        ApiError {
            status,
            body: ErrorBody {
                error: error.into(),
                hint: Some(hint.into()),
            },
        }
    }

    pub fn not_found(error: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            error,
            "GET /v1/openapi.json lists the API's paths",
        )
    }
}

impl From<AgentError> for ApiError {
    fn from(e: AgentError) -> Self {
        let (status, hint) = match &e {
            AgentError::NoVolume(_) => (StatusCode::NOT_FOUND, Some("GET /v1/volumes lists the volumes".into())),
            AgentError::NoVpg(_) => (StatusCode::NOT_FOUND, Some("GET /v1/vpgs lists the VPGs".into())),
            AgentError::NoDatastore(_) => (
                StatusCode::NOT_FOUND,
                Some("the datastores are the [[datastore]] tables of the agent's config, and \"default\"".into()),
            ),
            AgentError::VolumeExists(_) => (StatusCode::CONFLICT, Some("choose another name".into())),
            AgentError::VolumeInUse(_) | AgentError::Conflict(_) => (StatusCode::CONFLICT, None),
            AgentError::BadRequest(_) | AgentError::Refused(_) | AgentError::Config { .. } => {
                (StatusCode::BAD_REQUEST, None)
            }
            AgentError::Io { source, .. } | AgentError::Engine(source) => io_status(source),
            _ => (
                StatusCode::INTERNAL_SERVER_ERROR,
                Some("the agent's log has the details".into()),
            ),
        };
        let error = e.to_string();
        // The agent's messages end in what to do after "; " where there is something.
        let hint = hint.or_else(|| error.split_once("; ").map(|(_, h)| h.to_string()));
        ApiError {
            status,
            body: ErrorBody { error, hint },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body)).into_response()
    }
}

/// The status of an I/O error: what the request named may not exist, be allowed, fit or
/// make sense; only the rest is the agent's own failure.
fn io_status(e: &std::io::Error) -> (StatusCode, Option<String>) {
    use std::io::ErrorKind as K;
    match (e.kind(), e.raw_os_error()) {
        (K::NotFound, _) => (StatusCode::NOT_FOUND, Some("check the path or name".into())),
        (K::PermissionDenied, _) => (
            StatusCode::FORBIDDEN,
            Some("the agent's user may not use it; check its owner and mode".into()),
        ),
        (K::AlreadyExists, _) => (StatusCode::CONFLICT, Some("choose another name or path".into())),
        (_, Some(libc::ENOSPC)) | (K::StorageFull, _) => (
            StatusCode::INSUFFICIENT_STORAGE,
            Some("free space on the datastore, or use another".into()),
        ),
        (_, Some(libc::EFBIG | libc::EINVAL | libc::ENAMETOOLONG | libc::ENOTDIR | libc::EISDIR | libc::ENXIO)) => {
            (StatusCode::BAD_REQUEST, None)
        }
        _ => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Some("the agent's log has the details".into()),
        ),
    }
}

const SCHEMA_HINT: &str = "GET /v1/openapi.json gives the schema of every body and parameter";

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let status = match r {
            JsonRejection::MissingJsonContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            JsonRejection::JsonSyntaxError(_) | JsonRejection::BytesRejection(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        ApiError::new(status, r.body_text(), SCHEMA_HINT)
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, r.body_text(), SCHEMA_HINT)
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, r.body_text(), SCHEMA_HINT)
    }
}

/// `axum::Json` whose rejection is an [`ApiError`].
#[derive(Debug)]
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let axum::Json(v) = axum::Json::<T>::from_request(req, state).await?;
        Ok(Json(v))
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// `axum::extract::Path` whose rejection is an [`ApiError`].
#[derive(Debug)]
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Path(v) = axum::extract::Path::<T>::from_request_parts(parts, state).await?;
        Ok(Path(v))
    }
}

/// `axum::extract::Query` whose rejection is an [`ApiError`].
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Query(v) = axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(Query(v))
    }
}

/// The answer to a path no route has.
pub async fn no_route(req: Request) -> ApiError {
    ApiError::not_found(format!("no such path: {} {}", req.method(), req.uri().path()))
}

/// Turns axum's bodiless 405 into JSON, keeping its `Allow` header.
pub async fn json_method_not_allowed(req: Request, next: axum::middleware::Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let resp = next.run(req).await;
    if resp.status() != StatusCode::METHOD_NOT_ALLOWED {
        return resp;
    }
    let allow = resp.headers().get(header::ALLOW).cloned();
    let mut out = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{path} does not take {method}"),
        match allow.as_ref().and_then(|a| a.to_str().ok()) {
            Some(a) => format!("it takes {a}"),
            None => "GET /v1/openapi.json lists the methods of each path".into(),
        },
    )
    .into_response();
    if let Some(a) = allow {
        out.headers_mut().insert(header::ALLOW, a);
    }
    out
}
