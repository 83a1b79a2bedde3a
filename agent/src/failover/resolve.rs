//! Settling a split brain. Both sites took writes after a failover one of them was not
//! there for (see DESIGN.md); nothing settles it but an operator, and the side given up
//! keeps its writes for salvage ([`super::diverged`]) before anything overwrites them.
//!
//! `ferry vpg resolve VPG --keep peer` is run at the site whose writes are given up:
//! - at the old protected site (its VPG fenced in split brain): its writes the recovery site
//!   never received are kept, the split brain is settled for the other site, which learns
//!   of it at its next contact; reverse protection from there may then resync this site;
//! - at the site the VPG failed over to, before commit: the live failover's writes are kept
//!   and it is rolled back; the old protected site takes the epoch and writes again.
//!
//! `--keep here` names the side to keep from the other end: it says where to run the
//! resolve, since only the side given up can keep its own writes.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::Failover;
use super::live::{LivePhase, blocking};
use crate::diverged::{DIVERGED_BYTES_MAX_DEFAULT, DivergedSet, Source};
use crate::error::AgentError;
use crate::protect::state::Fencing;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Keep {
    /// This site's writes win.
    Here,
    /// The other site's writes win; this site's are kept for salvage.
    Peer,
}

/// What `ferry vpg resolve` asks for.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ResolveRequest {
    pub keep: Keep,
    /// The most to keep for salvage (default [`DIVERGED_BYTES_MAX_DEFAULT`]).
    #[serde(default)]
    pub salvage_max: Option<u64>,
    /// Give up the diverged writes without keeping them.
    #[serde(default)]
    pub discard: bool,
}

/// How a split brain was settled.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Resolved {
    pub vpg: String,
    pub epoch: u64,
    /// What happens next, in words.
    pub summary: String,
    /// What was kept of the writes given up.
    pub diverged: Option<DivergedSet>,
}

impl Failover {
    pub async fn resolve(self: &Arc<Self>, vpg: &str, req: &ResolveRequest) -> Result<Resolved, AgentError> {
        self.wait_resumed().await;
        let max = req.salvage_max.unwrap_or(DIVERGED_BYTES_MAX_DEFAULT);
        if let Ok(v) = self.vpgs.get(vpg)
            && let Some(sb) = v.lifecycle().split_brain
        {
            if req.keep == Keep::Here {
                return Err(AgentError::Refused(format!(
                    "to keep this site's writes, the live failover of {vpg:?} (epoch {}) must be undone at the site it runs at: run `ferry vpg resolve {vpg} --keep peer` there (its writes are kept for salvage, it rolls back, and this site is unfenced)",
                    sb.epoch
                )));
            }
            let regions = v.unshipped_regions(sb.from_seq, true).await.ok_or_else(|| {
                AgentError::Refused(format!(
                    "the journal of {vpg:?} is being read (by `ferry journal tail`?): stop that and try again"
                ))
            })?;
            let (sources, offline) = v.salvage_sources(&regions);
            if let Some(name) = offline.first() {
                return Err(AgentError::Refused(format!(
                    "volume {name:?} is offline: its diverged writes cannot be read; bring it back (`ferry volume list`) and try again"
                )));
            }
            let diverged = self
                .keep_given_up(
                    vpg,
                    sb.epoch,
                    format!(
                        "this site's writes after the failover of epoch {} that the other site never received (split brain settled for it)",
                        sb.epoch
                    ),
                    sources,
                    max,
                    req.discard,
                )
                .await?;
            self.vpgs
                .fencing(&v, Fencing::Settle { epoch: sb.epoch })
                .map_err(AgentError::Refused)?;
            return Ok(Resolved {
                vpg: vpg.into(),
                epoch: sb.epoch,
                summary: format!(
                    "split brain settled for the other site: {}; this site stays fenced. There, protect the VPG back here (`ferry vpg reverse {vpg}`), which resyncs this site from it",
                    kept_words(&diverged)
                ),
                diverged,
            });
        }
        let replica = self.exports.replicas().get(vpg);
        let Some(sb) = replica.as_ref().and_then(|r| r.split_brain()) else {
            return Err(AgentError::Refused(format!(
                "no split brain of {vpg:?} here (`ferry vpg show {vpg}` or `ferry replica list` show its state)"
            )));
        };
        if req.keep == Keep::Here {
            return Err(AgentError::Refused(format!(
                "to keep this site's writes, the other site gives its own up: run `ferry vpg resolve {vpg} --keep peer` there (they are kept for salvage there); then protect the VPG back with `ferry vpg reverse {vpg}` here"
            )));
        }
        let live = self
            .live_of(vpg)
            .filter(|l| l.shown().phase == LivePhase::NeedsCommit)
            .ok_or_else(|| {
                AgentError::Refused(format!(
                    "the live failover of {vpg:?} (epoch {}) was committed here: its volumes are production now and are not undone. Keep this site instead: run `ferry vpg resolve {vpg} --keep peer` at the other site",
                    sb.epoch
                ))
            })?;
        let mut sources = Vec::new();
        for (name, s) in &live.switches {
            let Some(o) = s.overlay() else { continue };
            let regions = o.written_ranges();
            if regions.is_empty() {
                continue;
            }
            sources.push(Source {
                name: name.clone(),
                size_bytes: ferry_nbd::Export::info(&*o).size_bytes,
                regions,
                read: Box::new(move |at, buf| o.read_at(at, buf)),
            });
        }
        let diverged = self
            .keep_given_up(
                vpg,
                sb.epoch,
                format!(
                    "this site's writes during the live failover of epoch {}, given up for the other site's (split brain)",
                    sb.epoch
                ),
                sources,
                max,
                req.discard,
            )
            .await?;
        let r = replica.expect("a split brain is a replica's");
        blocking(move || r.clear_split_brain()).await?;
        self.rollback(vpg).await?;
        Ok(Resolved {
            vpg: vpg.into(),
            epoch: sb.epoch,
            summary: format!(
                "split brain settled for the other site: {}; the live failover was rolled back and the other site takes the epoch and writes again",
                kept_words(&diverged)
            ),
            diverged,
        })
    }

    async fn keep_given_up(
        self: &Arc<Self>,
        vpg: &str,
        epoch: u64,
        origin: String,
        sources: Vec<Source>,
        max: u64,
        discard: bool,
    ) -> Result<Option<DivergedSet>, AgentError> {
        if discard {
            return Ok(None);
        }
        let (d, vpg) = (self.exports.diverged().clone(), vpg.to_string());
        let mut set = blocking(move || d.keep(&vpg, epoch, origin, sources, max)).await?;
        self.with_uris(&mut set);
        Ok(Some(set))
    }

    fn with_uris(&self, set: &mut DivergedSet) {
        for v in &mut set.volumes {
            v.uri = (self.export_uri)(&v.export);
        }
    }

    /// The diverged writes of `vpg` kept here (blocking).
    pub fn diverged(&self, vpg: &str) -> Vec<DivergedSet> {
        let mut sets = self.exports.diverged().list(Some(vpg));
        for s in &mut sets {
            self.with_uris(s);
        }
        sets
    }

    /// Deletes the diverged writes of `vpg` kept here (of one epoch, or all; blocking).
    pub fn delete_diverged(&self, vpg: &str, epoch: Option<u64>) -> Result<Vec<DivergedSet>, AgentError> {
        self.exports.diverged().delete(vpg, epoch)
    }
}

fn kept_words(d: &Option<DivergedSet>) -> String {
    match d {
        Some(d) => format!(
            "{} of this site's diverged writes kept in {} (`ferry vpg diverged {}`)",
            crate::size::human(d.bytes),
            d.dir.display(),
            d.vpg
        ),
        None => "this site's diverged writes were given up (--discard)".into(),
    }
}
