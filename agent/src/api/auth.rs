//! The bearer token that every request over TCP carries (`Authorization: Bearer TOKEN`).
//! It lives in a file of mode 0600 (`ferry api token` writes a new one); the agent reads
//! it again when the file changes, so a new token works without a restart.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use crate::events::RateLimitedLog;

/// A new token: 32 random bytes, hex.
pub fn new_token() -> Result<String, std::io::Error> {
    let mut b = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .map_err(|_| std::io::Error::other("the system's random source failed"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Writes a new token to `path` (mode 0600, replaced whole), and answers it.
pub fn write_token_file(path: &Path) -> Result<String, std::io::Error> {
    let token = new_token()?;
    let tmp = path.with_extension("token.new");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(format!("{token}\n").as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(token)
}

/// Where the agent reads its token, and which requests failed.
#[derive(Debug)]
pub struct Tokens {
    path: PathBuf,
    /// (modification time in ns, inode, token) as last read.
    cached: Mutex<Option<(i64, u64, String)>>,
    failures: RateLimitedLog,
}

impl Tokens {
    /// The token file at `path`, made if missing.
    pub fn open(path: PathBuf) -> Result<Tokens, std::io::Error> {
        if !path.exists() {
            write_token_file(&path)?;
            tracing::info!(file = %path.display(), "API token made; clients send it as `Authorization: Bearer TOKEN`");
        }
        let t = Tokens {
            path,
            cached: Mutex::new(None),
            failures: RateLimitedLog::new(Duration::from_secs(10)),
        };
        t.current()?;
        Ok(t)
    }

    fn current(&self) -> Result<String, std::io::Error> {
        let md = std::fs::metadata(&self.path)?;
        let stamp = (md.mtime() * 1_000_000_000 + md.mtime_nsec(), md.ino());
        let mut c = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((m, i, t)) = c.as_ref()
            && (*m, *i) == stamp
        {
            return Ok(t.clone());
        }
        let t = std::fs::read_to_string(&self.path)?.trim().to_string();
        if t.len() < 16 {
            return Err(std::io::Error::other(format!(
                "the API token in {} is shorter than 16 characters; `ferry api token` writes a new one",
                self.path.display()
            )));
        }
        *c = Some((stamp.0, stamp.1, t.clone()));
        Ok(t)
    }

    /// Whether `header` (the Authorization header's value) carries the token.
    pub fn admits(&self, header: Option<&HeaderValue>) -> bool {
        let Ok(token) = self.current() else {
            return false;
        };
        let given = header
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .unwrap_or("");
        // Compared in time that does not depend on where they differ.
        given.len() == token.len() && given.bytes().zip(token.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

/// The peer of a TCP connection, put in each request's extensions.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// Whether a path is served without the token: the dashboard's page and assets, which hold
/// no data (the page asks for the token and sends it with every call).
fn open_path(path: &str) -> bool {
    path == "/" || path == "/ui" || path.starts_with("/ui/")
}

/// The middleware of the TCP listener: 401 without the right token.
pub async fn require_token(State(tokens): State<Arc<Tokens>>, req: Request, next: Next) -> Response {
    if open_path(req.uri().path()) || tokens.admits(req.headers().get(header::AUTHORIZATION)) {
        return next.run(req).await;
    }
    let peer = req
        .extensions()
        .get::<Peer>()
        .map(|p| p.0.to_string())
        .unwrap_or_default();
    let had = req.headers().contains_key(header::AUTHORIZATION);
    if let Some(suppressed) = tokens.failures.admit() {
        tracing::warn!(
            %peer,
            path = req.uri().path(),
            token = if had { "wrong" } else { "missing" },
            suppressed,
            "API request refused: bad bearer token"
        );
    }
    let mut r = ApiError::new(
        StatusCode::UNAUTHORIZED,
        if had {
            "the bearer token is wrong"
        } else {
            "this API needs a bearer token"
        },
        format!(
            "send `Authorization: Bearer TOKEN` with the token in {} on the agent's host (`ferry api token` writes a new one)",
            tokens.path.display()
        ),
    )
    .into_response();
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"ferry\""),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_file_is_private_and_its_token_admits() {
        let dir = std::env::temp_dir().join(format!("ferry-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("api.token");
        let _ = std::fs::remove_file(&p);
        let t = Tokens::open(p.clone()).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        let tok = std::fs::read_to_string(&p).unwrap().trim().to_string();
        assert_eq!(tok.len(), 64);
        let h = |s: &str| HeaderValue::from_str(s).unwrap();
        assert!(t.admits(Some(&h(&format!("Bearer {tok}")))));
        assert!(!t.admits(Some(&h(&format!("Bearer {}x", tok)))));
        assert!(!t.admits(Some(&h("Bearer "))));
        assert!(!t.admits(None));
        // A new token replaces the old at once.
        let new = write_token_file(&p).unwrap();
        assert!(t.admits(Some(&h(&format!("Bearer {new}")))));
        assert!(!t.admits(Some(&h(&format!("Bearer {tok}")))));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
