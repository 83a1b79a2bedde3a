//! The agent's one error enum: each variant names the operation that failed and the thing
//! it failed on, and its message says what to do.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot read config {path}: {why}")]
    Config { path: PathBuf, why: String },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "state file {path} is unreadable: {why}. Restore it from a backup, or move it away to start with no volumes"
    )]
    StateCorrupt { path: PathBuf, why: String },
    #[error("another ferry agent already uses state directory {0}; stop it first or choose another --state-dir")]
    StateDirBusy(PathBuf),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
    #[error("no datastore named {0:?}; `ferry volume create --datastore` takes one of the names in the agent's config")]
    NoDatastore(String),
    #[error("a volume named {0:?} already exists")]
    VolumeExists(String),
    #[error("no volume named {0:?}; `ferry volume list` shows the volumes")]
    NoVolume(String),
    #[error("no VPG named {0:?}; `ferry vpg list` shows the VPGs")]
    NoVpg(String),
    #[error("volume {0:?} is in use by NBD clients; disconnect them first, or pass --force")]
    VolumeInUse(String),
    #[error("invalid volume request: {0}")]
    BadRequest(String),
    /// A request the agent refuses, with a message that says why and what to do.
    #[error("{0}")]
    Refused(String),
    /// Refused because of something under way (another operation on the same object).
    #[error("{0}")]
    Conflict(String),
    #[error("datastore I/O engine: {0}")]
    Engine(std::io::Error),
}

impl AgentError {
    pub fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        AgentError::Io {
            what,
            path: path.into(),
            source,
        }
    }
}
