//! The CLI's client for the control API on the agent's unix socket.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach the ferry agent at {path}: {source}. Is `ferry agent` running? Point to its control socket with --control PATH or FERRY_CONTROL"
    )]
    Connect { path: PathBuf, source: std::io::Error },
    #[error("control API call failed: {0}")]
    Http(String),
    /// The agent refused the request; its message says why.
    #[error("{0}")]
    Agent(String),
}

#[derive(Debug)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: &Path) -> Self {
        Client {
            socket: socket.to_path_buf(),
        }
    }

    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<Option<T>, ClientError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|source| ClientError::Connect {
                path: self.socket.clone(),
                source,
            })?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        tokio::spawn(conn);
        let payload = match body {
            Some(b) => Bytes::from(serde_json::to_vec(b).expect("request serialises")),
            None => Bytes::new(),
        };
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "ferry")
            .header("content-type", "application/json")
            .body(Full::new(payload))
            .expect("request builds");
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?
            .to_bytes();
        if !status.is_success() {
            let msg = serde_json::from_slice::<ferry_agent::api::ErrorBody>(&bytes)
                .map(|e| e.error)
                .unwrap_or_else(|_| format!("agent answered {status}: {}", String::from_utf8_lossy(&bytes)));
            return Err(ClientError::Agent(msg));
        }
        if bytes.is_empty() {
            return Ok(None);
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ClientError::Http(format!("unreadable answer: {e}")))
    }
}
