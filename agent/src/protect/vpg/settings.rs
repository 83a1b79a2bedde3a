//! A VPG's settings as the registry (`vpgs.json`) keeps them: volumes, protection (peer,
//! pairing key, priority, RPO target, history window and limit, throttle), and what
//! `ferry vpg create` accepts.

use super::*;

/// One VPG as the registry keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VpgRecord {
    pub name: String,
    /// Its member volumes; volume ids in the journal are positions here, from 1.
    pub volumes: Vec<String>,
    pub journal_bytes: u64,
    pub ring_id: u64,
    pub created_unix_ms: u64,
    /// The VPG's identity, made at creation (given at the next start to a VPG made before
    /// lineages were).
    #[serde(default)]
    pub lineage: Lineage,
    /// Its generation: raised by every live failover and move.
    #[serde(default = "first_epoch")]
    pub epoch: u64,
    /// Replication to a recovery site; none: capture only.
    #[serde(default)]
    pub protection: Option<Protection>,
}

fn first_epoch() -> u64 {
    1
}

/// How a VPG is protected: where to, and its targets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Protection {
    /// The recovery-site agent's replication address (host:port).
    pub peer: String,
    /// The pairing key file shared with that agent.
    pub pairing_key: PathBuf,
    /// The recovery site's datastore for the replica; empty: its first.
    pub recovery_datastore: String,
    pub priority: Priority,
    /// RPO alert threshold.
    pub rpo_s: u64,
    /// History window at the recovery site.
    pub history_s: u64,
    /// History hard limit in bytes at the recovery site.
    pub history_bytes_max: u64,
    #[serde(default)]
    pub paused: bool,
    /// The recovery site was seeded with a copy of the volumes: a delta sync (checksums
    /// of regions compared, only differences sent) replaces the full initial sync.
    #[serde(default)]
    pub preseeded: bool,
    /// Writes are slowed (their replies held) while the actual RPO is above this and the
    /// link is up; 0: never (the RPO grows instead when writes outpace the link).
    #[serde(default)]
    pub throttle_rpo_ms: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    High,
    #[default]
    Medium,
    Low,
}

impl Priority {
    pub fn parse(s: &str) -> Result<Priority, String> {
        match s {
            "high" => Ok(Priority::High),
            "medium" => Ok(Priority::Medium),
            "low" => Ok(Priority::Low),
            _ => Err(format!("priority {s:?} must be high, medium or low")),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Medium => "medium",
            Priority::Low => "low",
        }
    }

    /// Index into `replication.priority_weights`.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// `ferry vpg create`'s protection options, as the control API takes them.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ProtectArgs {
    pub peer: String,
    pub pairing_key: PathBuf,
    #[serde(default)]
    pub recovery_datastore: Option<String>,
    #[serde(default)]
    pub priority: Option<String>,
    #[serde(default)]
    pub rpo_s: Option<u64>,
    #[serde(default)]
    pub history_s: Option<u64>,
    #[serde(default)]
    pub history_bytes_max: Option<u64>,
    #[serde(default)]
    pub preseeded: bool,
    #[serde(default)]
    pub throttle_rpo_ms: Option<u64>,
}

/// Default RPO alert threshold.
pub const RPO_DEFAULT_S: u64 = 300;
/// Default history window at the recovery site.
pub const HISTORY_DEFAULT_S: u64 = 3600;
/// Default history hard limit.
pub const HISTORY_BYTES_DEFAULT: u64 = 16 << 30;

impl ProtectArgs {
    pub(super) fn check(&self) -> Result<Protection, AgentError> {
        let refuse = |m: String| Err(AgentError::Refused(m));
        let peer = self.peer.trim();
        match peer.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {}
            _ => {
                return refuse(format!(
                    "--peer {peer:?} must be HOST:PORT, the recovery agent's replication address"
                ));
            }
        }
        if !self.pairing_key.is_absolute() {
            return refuse(format!(
                "--peer-key {} must be an absolute path (the agent reads it, not the CLI)",
                self.pairing_key.display()
            ));
        }
        if let Err(e) = ferry_proto::pairing::read_key(&self.pairing_key) {
            return refuse(format!("--peer-key: {e}"));
        }
        let priority = Priority::parse(self.priority.as_deref().unwrap_or("medium")).map_err(AgentError::Refused)?;
        let rpo_s = self.rpo_s.unwrap_or(RPO_DEFAULT_S);
        let history_s = self.history_s.unwrap_or(HISTORY_DEFAULT_S);
        let history_bytes_max = self.history_bytes_max.unwrap_or(HISTORY_BYTES_DEFAULT);
        if rpo_s == 0 || history_s == 0 {
            return refuse("--rpo and --history must be at least one second".into());
        }
        if history_bytes_max < (64 << 20) {
            return refuse("--history-max-bytes must be at least 64M".into());
        }
        Ok(Protection {
            peer: peer.into(),
            pairing_key: self.pairing_key.clone(),
            recovery_datastore: self.recovery_datastore.clone().unwrap_or_default(),
            priority,
            rpo_s,
            history_s,
            history_bytes_max,
            paused: false,
            preseeded: self.preseeded,
            throttle_rpo_ms: self.throttle_rpo_ms.unwrap_or(0),
        })
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(super) struct VpgRegistry {
    pub(super) version: u32,
    pub(super) vpgs: Vec<VpgRecord>,
}
