//! A live failover as it is asked for, recorded (`replicas/NAME/live-failover.json`) and
//! shown: its policies, phase, steps and commit progress. The operation itself is in
//! [`super::live`] and [`super::commit`].

use serde::{Deserialize, Serialize};

use ferry_proto::message::Shutdown;

use super::Step;
use crate::checkpoint::CheckpointInfo;

/// What happens when a live failover's commit timer runs out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum CommitPolicy {
    /// Nothing: it waits for `commit` or `rollback`.
    #[default]
    None,
    AutoCommit,
    AutoRollback,
}

impl CommitPolicy {
    pub fn parse(s: &str) -> Result<CommitPolicy, String> {
        match s {
            "none" => Ok(CommitPolicy::None),
            "auto-commit" => Ok(CommitPolicy::AutoCommit),
            "auto-rollback" => Ok(CommitPolicy::AutoRollback),
            _ => Err(format!(
                "commit policy {s:?} must be none, auto-commit or auto-rollback"
            )),
        }
    }
}

/// The shutdown policy as the API names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ShutdownPolicy {
    None,
    #[default]
    Graceful,
    Force,
}

impl ShutdownPolicy {
    pub fn parse(s: &str) -> Result<ShutdownPolicy, String> {
        match s {
            "none" => Ok(ShutdownPolicy::None),
            "graceful" => Ok(ShutdownPolicy::Graceful),
            "force" => Ok(ShutdownPolicy::Force),
            _ => Err(format!("shutdown policy {s:?} must be none, graceful or force")),
        }
    }

    pub(super) fn wire(self) -> Shutdown {
        match self {
            ShutdownPolicy::None => Shutdown::None,
            ShutdownPolicy::Graceful => Shutdown::Graceful,
            ShutdownPolicy::Force => Shutdown::Force,
        }
    }
}

/// What `ferry failover live` asks for.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LiveRequest {
    /// A sequence number, a tag, a time, or "latest" (the default: after a graceful
    /// shutdown, its final checkpoint).
    #[serde(default)]
    pub checkpoint: String,
    #[serde(default)]
    pub commit_policy: CommitPolicy,
    /// When the commit policy acts, in seconds from the start (default 60 minutes).
    #[serde(default)]
    pub commit_after_s: Option<u64>,
    #[serde(default)]
    pub shutdown: ShutdownPolicy,
    /// Part of a move: the scripts see `FERRY_OPERATION=move`.
    #[serde(skip)]
    pub moving: bool,
    /// A move's reverse protection, made once it is committed (recorded with the failover,
    /// so that a restart goes on to it).
    #[serde(skip)]
    pub reverse_after: Option<super::ReverseRequest>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum LivePhase {
    NeedsCommit,
    Committing,
    Committed,
    RolledBack,
}

/// A commit's copying, as it goes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CommitProgress {
    pub total_bytes: u64,
    pub copied_bytes: u64,
    /// Copy passes over the blocks written meanwhile (the last one under the write lock).
    pub passes: u32,
    /// The longest time a client's write waited (the last pass), in milliseconds.
    pub longest_pause_ms: f64,
    pub started_unix_ms: u64,
    #[serde(default)]
    pub done_unix_ms: Option<u64>,
    /// Bytes of the volumes per second of copying.
    #[serde(default)]
    pub rate_bytes_per_s: f64,
}

/// A live failover as `ferry failover status` and the status show it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LiveFailover {
    pub vpg: String,
    /// The epoch the VPG runs at here.
    pub epoch: u64,
    pub checkpoint: CheckpointInfo,
    pub shutdown: ShutdownPolicy,
    pub commit_policy: CommitPolicy,
    /// When the commit policy acts (none: never by itself).
    pub commit_at_unix_ms: Option<u64>,
    pub started_unix_ms: u64,
    /// From the request to every volume served.
    pub ready_after_ms: f64,
    pub phase: LivePhase,
    /// (volume, export name): the production names.
    pub exports: Vec<(String, String)>,
    /// What became of the protected site.
    pub protected_site: String,
    pub warnings: Vec<String>,
    pub steps: Vec<Step>,
    #[serde(default)]
    pub commit: Option<CommitProgress>,
    #[serde(default)]
    pub ended_unix_ms: Option<u64>,
    /// Written here since the failover (its overlays, while it needs commit).
    #[serde(default)]
    pub written_bytes: u64,
    /// Split brain: the old protected site holds writes this site never received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_brain: Option<crate::recover::replica::SplitBrainSeen>,
    /// A move (`ferry failover move`): after a restart it goes on to its end (a commit at
    /// once, then the reverse protection asked for).
    #[serde(default)]
    pub moving: bool,
    /// Reverse protection to start once the commit is done (kept across a restart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reverse_after: Option<super::ReverseRequest>,
}

impl LiveFailover {
    /// "split brain since epoch N: X written here, Y there", if there is one.
    pub fn split_brain_words(&self) -> Option<String> {
        self.split_brain.as_ref().map(|b| {
            format!(
                "split brain since epoch {}: {} written here, {} there (the old protected site; never received here). Replication stops; settle it with `ferry vpg resolve {} --keep here|peer`",
                b.epoch,
                crate::size::human(self.written_bytes),
                crate::size::human(b.there_bytes),
                self.vpg
            )
        })
    }
}
