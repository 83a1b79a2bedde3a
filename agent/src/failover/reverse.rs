//! Reverse protection: after a committed live failover, the VPG is protected from this
//! site back to the one it failed over from. The committed volumes become a VPG of this
//! agent with the VPG's lineage and its new epoch; at the other site (its next `Open`),
//! the fenced VPG of the older epoch is demoted: its journal goes, its volumes become the
//! replica's images (see `replication::receiver`), and a delta sync compares them region by
//! region, so only what differs travels.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::live::{LiveFailover, LivePhase, blocking};
use super::{Failover, step};
use crate::clock::now_ms;
use crate::error::AgentError;
use crate::meta::Lineage;
use crate::protect::vpg::{PlanEdit, ProtectArgs, VpgStatus};

/// What `ferry vpg reverse` asks for: where the VPG is protected to now (the site it
/// failed over from, which must accept this agent as a peer).
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReverseRequest {
    /// That site's replication address (HOST:PORT).
    pub peer: String,
    /// The pairing key file shared with it (absolute; the agent reads it).
    #[schema(value_type = String)]
    pub pairing_key: PathBuf,
    #[serde(default)]
    pub priority: Option<String>,
    #[serde(default)]
    pub rpo_s: Option<u64>,
    #[serde(default)]
    pub journal_bytes: Option<u64>,
}

impl Failover {
    /// Protects the committed VPG `vpg` back to `req.peer`. Refused unless a live failover
    /// of it was committed here, and once its VPG exists here.
    pub async fn reverse(
        self: &std::sync::Arc<Self>,
        vpg: &str,
        req: &ReverseRequest,
    ) -> Result<VpgStatus, AgentError> {
        self.wait_resumed().await;
        let _op = self.live_op.lock().await;
        let live = self.live_of(vpg).ok_or_else(|| {
            AgentError::Refused(format!(
                "no live failover of {vpg:?} was committed here: reverse protection follows `ferry failover live {vpg}` and `ferry failover commit {vpg}`"
            ))
        })?;
        let shown: LiveFailover = live.shown();
        if shown.phase != LivePhase::Committed {
            return Err(AgentError::Refused(format!(
                "the live failover of {vpg:?} is not committed yet (`ferry failover commit {vpg}` first)"
            )));
        }
        if self.vpgs.get(vpg).is_ok() {
            return Err(AgentError::Conflict(format!(
                "VPG {vpg:?} is protected from this site already (`ferry vpg show {vpg}`)"
            )));
        }
        let spec = live.replica.spec();
        let protect = ProtectArgs {
            peer: req.peer.clone(),
            pairing_key: req.pairing_key.clone(),
            recovery_datastore: None,
            priority: req.priority.clone(),
            rpo_s: req.rpo_s,
            history_s: Some(spec.history_secs),
            history_bytes_max: Some(spec.history_bytes_max),
            // The other site holds the volumes as they were: a delta sync sends only what
            // differs.
            preseeded: true,
            throttle_rpo_ms: None,
        };
        let volumes: Vec<String> = spec.volumes.iter().map(|v| v.name.clone()).collect();
        let st = self
            .vpgs
            .create_as(
                vpg,
                &volumes,
                req.journal_bytes,
                Some(&protect),
                &PlanEdit::from_plan(&spec.plan),
                Some((Lineage(spec.lineage), shown.epoch)),
            )
            .await?;
        // Captured from here on: what changed before is what the commit knew plus what the
        // switches recorded since (taken now, after the capture began).
        let known = self.changed_since_failover(&live).await;
        let how = match (&known, self.vpgs.get(vpg)) {
            (Ok(k), Ok(v)) => {
                let bytes: u64 = k.values().map(|r| crate::ranges::total(r)).sum();
                v.set_known_changed(k.clone());
                format!(
                    "a delta sync compares only the regions either site changed since the failover ({} changed here)",
                    crate::size::human(bytes)
                )
            }
            (Err(why), _) => format!(
                "a delta sync compares every region by checksum: the regions changed here since the failover are not known ({why})"
            ),
            (_, Err(e)) => e.to_string(),
        };
        live.update(|l| {
            l.steps.push(step(
                "reverse protection",
                true,
                format!(
                    "protected from this site to {} at epoch {}; {how}",
                    req.peer, shown.epoch
                ),
            ));
        });
        let l2 = live.clone();
        blocking(move || l2.save()).await?;
        live.replica.push_event(format!(
            "reverse protection: VPG {vpg:?} is protected from this site to {} (epoch {}) since {}; {how}",
            req.peer,
            shown.epoch,
            crate::size::utc(now_ms())
        ));
        Ok(st)
    }
}

/// What `ferry failover move` asks for.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MoveRequest {
    /// Default auto-commit at once (`commit_after_s` 0): a planned move needs no decision.
    #[serde(default = "auto_commit")]
    pub commit_policy: super::CommitPolicy,
    #[serde(default)]
    pub commit_after_s: Option<u64>,
    /// Protect back to the site moved from, once committed.
    #[serde(default)]
    pub reverse: Option<ReverseRequest>,
}

fn auto_commit() -> super::CommitPolicy {
    super::CommitPolicy::AutoCommit
}

impl Failover {
    /// What this site changed since the failover of `live` (committed here), by volume:
    /// the commit's knowledge, the protected site's records that arrived since, and what the
    /// switches recorded since. Or why not known.
    async fn changed_since_failover(&self, live: &super::live::Live) -> Result<crate::ranges::ByName, String> {
        let (mut base, upto) = live
            .changed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or("the agent restarted since the commit")?;
        let r = &live.replica;
        // The protected site's last records (it was fenced for good at the commit) must
        // all be here before they are counted.
        if r.life().sessions > 0 {
            let epoch = live.shown().epoch;
            let mut answers = r.peer_fenced();
            let fenced = tokio::time::timeout(
                super::live::FENCE_TIMEOUT,
                answers.wait_for(|a| a.is_some_and(|(e, _)| e >= epoch)),
            )
            .await
            .ok()
            .and_then(|a| a.ok().map(|a| a.expect("waited for Some").1))
            .ok_or("the protected site did not confirm its last write")?;
            let deadline = tokio::time::Instant::now() + super::live::DRAIN_TIMEOUT;
            while r.durable_seq() < fenced {
                if tokio::time::Instant::now() > deadline {
                    return Err("the protected site's last writes did not arrive".into());
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
        if !r.holds_since(upto) {
            return Err("history since the commit was applied to the replica and dropped".into());
        }
        let ids: std::collections::BTreeMap<u32, String> = r.volumes().into_iter().map(|(id, n, _)| (id, n)).collect();
        for (id, regions) in r.regions_since(upto).map_err(|e| e.to_string())? {
            if let Some(n) = ids.get(&id) {
                base.entry(n.clone()).or_default().extend(regions);
            }
        }
        for (name, s) in &live.switches {
            let recorded = s
                .take_recorded()
                .ok_or("more regions were written since the commit than are kept")?;
            base.entry(name.clone()).or_default().extend(recorded);
        }
        for v in base.values_mut() {
            *v = crate::ranges::merge(std::mem::take(v));
        }
        Ok(base)
    }

    /// A planned failover with no data loss: the protected site shuts down gracefully
    /// (fenced, final checkpoint), history drains to it, the VPG is served here at that
    /// checkpoint, committed (at once by default) and, if asked, protected back. If the
    /// protected site cannot be fenced or drained in time, the move is rolled back and
    /// says why.
    pub async fn move_vpg(
        self: &std::sync::Arc<Self>,
        vpg: &str,
        req: &MoveRequest,
    ) -> Result<LiveFailover, AgentError> {
        self.wait_resumed().await;
        let r = self.exports.replicas().get(vpg).ok_or_else(|| {
            AgentError::Refused(format!("no replica of a VPG named {vpg:?} here (`ferry replica list`)"))
        })?;
        if r.life().sessions == 0 {
            return Err(AgentError::Refused(format!(
                "a move needs the protected site of {vpg:?} connected (it is shut down gracefully and drained): it is not; in a disaster, `ferry failover live {vpg}` fails over without it"
            )));
        }
        let now = req.commit_policy == super::CommitPolicy::AutoCommit && req.commit_after_s.unwrap_or(0) == 0;
        let live_req = super::LiveRequest {
            checkpoint: "latest".into(),
            commit_policy: if now {
                super::CommitPolicy::None
            } else {
                req.commit_policy
            },
            commit_after_s: req.commit_after_s,
            shutdown: super::ShutdownPolicy::Graceful,
            moving: true,
            reverse_after: req.reverse.clone(),
        };
        let l = self.start_live(vpg, &live_req).await?;
        let failed: Vec<String> = l
            .steps
            .iter()
            .filter(|s| !s.ok && (s.what == "protected site" || s.what == "drained"))
            .map(|s| format!("{}: {}", s.what, s.detail))
            .collect();
        if !failed.is_empty() {
            let back = self.rollback(vpg).await;
            return Err(AgentError::Refused(format!(
                "the move of {vpg:?} was rolled back ({}), because {}",
                match back {
                    Ok(_) => "the protected site takes writes again".to_string(),
                    Err(e) => format!("and its rollback failed too: {e}"),
                },
                failed.join("; ")
            )));
        }
        if now {
            return self.commit_then(vpg, req.reverse.clone()).await;
        }
        if let Some(rev) = &req.reverse
            && let Some(live) = self.live_of(vpg)
        {
            *live.reverse_after.lock().unwrap_or_else(|e| e.into_inner()) = Some(rev.clone());
            live.update(|l| l.reverse_after = Some(rev.clone()));
            let l2 = live.clone();
            super::live::blocking(move || l2.save()).await?;
        }
        Ok(l)
    }
}
