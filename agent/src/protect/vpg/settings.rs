//! A VPG's settings as the registry (`vpgs.json`) keeps them: volumes, protection (peer,
//! pairing key, priority, RPO target, history window and limit, throttle), and what
//! `ferry vpg create` accepts.

use super::*;

pub use ferry_proto::message::{Member, Plan};

/// One VPG as the registry keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
    /// How the recovery site brings it up: members in boot order, scripts, networks.
    #[serde(default)]
    pub plan: Plan,
}

/// Changes to a VPG's failover plan (`ferry vpg create` and `ferry vpg edit`): what is
/// given replaces what was; an empty string clears a script or network.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PlanEdit {
    #[serde(default)]
    pub members: Option<Vec<Member>>,
    #[serde(default)]
    pub boot_delay_ms: Option<u64>,
    #[serde(default)]
    pub pre_script: Option<String>,
    #[serde(default)]
    pub post_script: Option<String>,
    #[serde(default)]
    pub script_timeout_s: Option<u64>,
    #[serde(default)]
    pub test_network: Option<String>,
    #[serde(default)]
    pub failover_network: Option<String>,
}

/// A boot delay longer than this is surely a mistake.
pub const BOOT_DELAY_MAX_MS: u64 = 3_600_000;

impl PlanEdit {
    /// The edit that sets all of `p`.
    pub fn from_plan(p: &Plan) -> PlanEdit {
        PlanEdit {
            members: Some(p.members.clone()),
            boot_delay_ms: Some(p.boot_delay_ms),
            pre_script: Some(p.pre_script.clone()),
            post_script: Some(p.post_script.clone()),
            script_timeout_s: (p.script_timeout_s > 0).then_some(p.script_timeout_s),
            test_network: Some(p.test_network.clone()),
            failover_network: Some(p.failover_network.clone()),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_none()
            && self.boot_delay_ms.is_none()
            && self.pre_script.is_none()
            && self.post_script.is_none()
            && self.script_timeout_s.is_none()
            && self.test_network.is_none()
            && self.failover_network.is_none()
    }

    /// `plan` with these changes, checked against the VPG's `volumes`: members are named,
    /// each once, of the VPG's volumes, none of which is in two members.
    pub fn apply(&self, plan: &Plan, volumes: &[String]) -> Result<Plan, AgentError> {
        let refuse = |m: String| Err(AgentError::Refused(m));
        let mut next = plan.clone();
        if let Some(members) = &self.members {
            let mut names = std::collections::BTreeSet::new();
            let mut taken = std::collections::BTreeMap::new();
            for m in members {
                if m.name.is_empty() || m.name.contains(['=', ',', '/']) || m.volumes.is_empty() {
                    return refuse(format!(
                        "--member {:?}: give it as NAME=VOLUME[,VOLUME…] (a name without '=', ',' or '/', and at least one volume)",
                        m.name
                    ));
                }
                if !names.insert(m.name.as_str()) {
                    return refuse(format!("member {:?} is named twice", m.name));
                }
                for v in &m.volumes {
                    if !volumes.contains(v) {
                        return refuse(format!(
                            "member {:?}: {v:?} is not a volume of this VPG ({})",
                            m.name,
                            volumes.join(", ")
                        ));
                    }
                    if let Some(other) = taken.insert(v.as_str(), m.name.as_str()) {
                        return refuse(format!(
                            "volume {v:?} is in members {other:?} and {:?}; a volume starts with one member",
                            m.name
                        ));
                    }
                }
            }
            next.members = members.clone();
        }
        if let Some(d) = self.boot_delay_ms {
            if d > BOOT_DELAY_MAX_MS {
                return refuse(format!("--boot-delay {} s is over an hour", d / 1000));
            }
            next.boot_delay_ms = d;
        }
        if let Some(t) = self.script_timeout_s {
            if t == 0 {
                return refuse("--script-timeout must be at least one second".into());
            }
            next.script_timeout_s = t;
        }
        for (to, from) in [
            (&mut next.pre_script, &self.pre_script),
            (&mut next.post_script, &self.post_script),
            (&mut next.test_network, &self.test_network),
            (&mut next.failover_network, &self.failover_network),
        ] {
            if let Some(v) = from {
                if v.len() > 4096 || v.contains('\0') {
                    return refuse(format!("{v:?} is too long or holds a NUL byte"));
                }
                *to = v.trim().to_string();
            }
        }
        Ok(next)
    }
}

/// The members of `plan` in boot order, each with its volumes: those named, then each
/// volume of `volumes` in none as a member of its own (named after it).
pub fn boot_order(plan: &Plan, volumes: &[String]) -> Vec<Member> {
    let mut out: Vec<Member> = plan.members.clone();
    for v in volumes {
        if !out.iter().any(|m| m.volumes.contains(v)) {
            out.push(Member {
                name: v.clone(),
                volumes: vec![v.clone()],
            });
        }
    }
    out
}

fn first_epoch() -> u64 {
    1
}

/// How a VPG is protected: where to, and its targets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Protection {
    /// The recovery-site agent's replication address (host:port).
    pub peer: String,
    /// The pairing key file shared with that agent.
    #[schema(value_type = String)]
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

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProtectArgs {
    pub peer: String,
    #[schema(value_type = String)]
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

#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub(super) struct VpgRegistry {
    pub(super) version: u32,
    pub(super) vpgs: Vec<VpgRecord>,
}
