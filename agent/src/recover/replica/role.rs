//! A replica's part in a live failover: the epoch the VPG runs at, whether it runs here
//! (a live failover, needing commit or committed) or must be handed back (rolled back),
//! what the protected site is to be told (fence, unfence) and its answer. The session
//! (`replication::receiver`) carries the messages; `failover` decides.

use super::*;

/// What the recovery site has to tell the protected site about a live failover.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToPeer {
    Fence {
        epoch: u64,
        shutdown: ferry_proto::message::Shutdown,
        reason: String,
    },
    Unfence {
        epoch: u64,
    },
}

/// Messages waiting for a session, and the protected site's answer to a fence.
#[derive(Debug, Default)]
pub(super) struct Role {
    to_peer: Mutex<Vec<ToPeer>>,
    /// (epoch, final sequence) of the last `Fenced` from the protected site.
    fenced: std::sync::OnceLock<tokio::sync::watch::Sender<Option<(u64, u64)>>>,
    /// The last refusal told (a refused site asks again now and then: told once).
    last_refusal: Mutex<Option<String>>,
}

impl Role {
    fn fenced(&self) -> &tokio::sync::watch::Sender<Option<(u64, u64)>> {
        self.fenced.get_or_init(|| tokio::sync::watch::Sender::new(None))
    }
}

impl Replica {
    /// A protected site opens this replica again with `spec`: the lineage must be the
    /// replica's (a replica made before lineages takes the first it is sent) and the epoch
    /// no older than the replica's. A newer epoch and the peer as seen now are recorded.
    /// Refusals and changes are events of the replica.
    pub fn admit(&self, spec: &VpgSpec, peer: &PeerSeen) -> Result<(), String> {
        let mut events = Vec::new();
        let result = {
            let mut meta = self.meta.lock().unwrap_or_else(|e| e.into_inner());
            let have = Lineage(meta.spec.lineage);
            let theirs = Lineage(spec.lineage);
            if have.is_known() && have != theirs {
                Err(format!(
                    "VPG {:?} from {} has lineage {theirs}, but this replica belongs to lineage {have}: it is another VPG of the same name. Delete this replica (`ferry replica delete {}`) to take the new VPG, or give the new VPG another name",
                    spec.name, peer.address, spec.name
                ))
            } else if let Some(why) = match crate::recover::state::answer_open(
                meta.spec.epoch,
                meta.runs_here,
                meta.unfence_due,
                spec.epoch,
            ) {
                crate::recover::state::OpenAnswer::Refuse => Some(format!(
                    "VPG {:?} from {} is at epoch {}, older than this replica's {}: that site was failed over from and must not replicate here (resolve it there)",
                    spec.name, peer.address, spec.epoch, meta.spec.epoch
                )),
                // It took the epoch from this site's fence: it is the site failed over from.
                crate::recover::state::OpenAnswer::Fence(e) => Some(format!(
                    "VPG {:?} runs at this site since a live failover (epoch {e}); {} is fenced at epoch {} and must not replicate here (protect the VPG back to it with `ferry vpg reverse {}`)",
                    spec.name, peer.address, spec.epoch, spec.name
                )),
                _ => None,
            } {
                Err(why)
            } else {
                let mut next = meta.clone();
                if !have.is_known() {
                    events.push(format!(
                        "lineage {theirs} recorded (the replica was made before lineages)"
                    ));
                }
                if spec.epoch > meta.spec.epoch {
                    events.push(format!("epoch {} → {}", meta.spec.epoch, spec.epoch));
                    crate::meta::note_epoch(&mut next.epochs, spec.epoch, self.durable_seq());
                }
                if let Some(before) = &meta.peer
                    && before.key_fingerprint != peer.key_fingerprint
                {
                    events.push(format!(
                        "the protected site now proves pairing key {} (was {})",
                        peer.key_fingerprint, before.key_fingerprint
                    ));
                }
                next.spec.lineage = spec.lineage;
                next.spec.epoch = next.spec.epoch.max(spec.epoch);
                next.spec.plan = spec.plan.clone();
                next.peer = Some(peer.clone());
                // A newer epoch than that of a rolled-back failover: it was taken. (At that
                // epoch itself the site may still be fenced: it is answered `Unfence`.)
                if next.unfence_due.is_some_and(|e| spec.epoch > e) {
                    next.unfence_due = None;
                }
                self.save_meta(&next).map_err(|e| e.to_string())?;
                *meta = next;
                Ok(())
            }
        };
        let mut last = self.role.last_refusal.lock().unwrap_or_else(|e| e.into_inner());
        match &result {
            Err(why) if last.as_ref() != Some(why) => {
                events.push(format!("refused: {why}"));
                *last = Some(why.clone());
            }
            Err(_) => {}
            Ok(()) => *last = None,
        }
        drop(last);
        for e in events {
            self.push_event(e);
        }
        result
    }

    /// Where a live failover's overlays are kept (the writes made here since it began).
    pub fn live_overlay_dir(&self) -> PathBuf {
        self.dir.join("live")
    }

    /// Bytes written here since the live failover began (what its overlays hold on disk;
    /// 0 once committed or without one).
    pub fn written_since_failover(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::read_dir(self.live_overlay_dir())
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.blocks() * 512)
                    .sum()
            })
            .unwrap_or(0)
    }

    /// The protected site as last seen.
    pub fn peer(&self) -> Option<PeerSeen> {
        self.meta.lock().unwrap_or_else(|e| e.into_inner()).peer.clone()
    }

    pub fn spec(&self) -> VpgSpec {
        self.meta.lock().unwrap_or_else(|e| e.into_inner()).spec.clone()
    }

    /// A live failover here: the epoch is raised, and from now on the VPG runs here (a
    /// protected site of an older epoch is told to fence itself). The new epoch.
    pub fn raise_epoch(&self) -> Result<u64, AgentError> {
        let mut meta = self.meta.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = meta.clone();
        next.spec.epoch += 1;
        crate::meta::note_epoch(&mut next.epochs, next.spec.epoch, self.durable_seq());
        next.runs_here = Some(next.spec.epoch);
        next.unfence_due = None;
        self.save_meta(&next)?;
        *meta = next;
        Ok(meta.spec.epoch)
    }

    /// The live failover was rolled back: the VPG runs at its protected site again, which
    /// is told (now, or when it next connects) to take the epoch and write again.
    pub fn hand_back(&self) -> Result<u64, AgentError> {
        let epoch = {
            let mut meta = self.meta.lock().unwrap_or_else(|e| e.into_inner());
            // A new epoch for the site handed back to: the one of the rolled-back
            // failover had a writer here (one writer per epoch).
            let mut next = meta.clone();
            next.spec.epoch += 1;
            crate::meta::note_epoch(&mut next.epochs, next.spec.epoch, self.durable_seq());
            next.runs_here = None;
            next.unfence_due = Some(next.spec.epoch);
            self.save_meta(&next)?;
            *meta = next;
            meta.spec.epoch
        };
        let mut q = self.role.to_peer.lock().unwrap_or_else(|e| e.into_inner());
        q.retain(|m| !matches!(m, ToPeer::Fence { .. }));
        q.push(ToPeer::Unfence { epoch });
        Ok(epoch)
    }

    /// The epoch of the live failover that runs the VPG here, if one does.
    pub fn runs_here(&self) -> Option<u64> {
        self.meta.lock().unwrap_or_else(|e| e.into_inner()).runs_here
    }

    /// What to answer a protected site that opens the VPG at `their_epoch`: a fence (the
    /// VPG runs here at a newer epoch), with its reason.
    pub fn fence_answer(&self, their_epoch: u64) -> Option<(u64, String)> {
        let meta = self.meta.lock().unwrap_or_else(|e| e.into_inner());
        let crate::recover::state::OpenAnswer::Fence(e) =
            crate::recover::state::answer_open(meta.spec.epoch, meta.runs_here, meta.unfence_due, their_epoch)
        else {
            return None;
        };
        Some({
            (
                e,
                format!(
                    "VPG {:?} runs at its recovery site since a live failover (epoch {e}); this site was fenced so that the two never both write",
                    meta.spec.name
                ),
            )
        })
    }

    /// The epoch a protected site at `their_epoch` is to take (a rolled-back failover):
    /// also told to one already at it, which may have been fenced at it and not heard of
    /// the rollback (an unfence of a site not fenced changes nothing).
    pub fn unfence_answer(&self, their_epoch: u64) -> Option<u64> {
        let meta = self.meta.lock().unwrap_or_else(|e| e.into_inner());
        match crate::recover::state::answer_open(meta.spec.epoch, meta.runs_here, meta.unfence_due, their_epoch) {
            crate::recover::state::OpenAnswer::Unfence(e) => Some(e),
            _ => None,
        }
    }

    /// Queues a message for the protected site (the session delivers it; see
    /// [`crate::recover::replicas::Replicas::nudge`]).
    pub fn tell_peer(&self, m: ToPeer) {
        self.role.to_peer.lock().unwrap_or_else(|e| e.into_inner()).push(m);
    }

    /// The messages waiting for the protected site.
    pub fn take_for_peer(&self) -> Vec<ToPeer> {
        std::mem::take(&mut *self.role.to_peer.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The protected site fenced the VPG at `epoch`: it sends nothing at or past
    /// `final_seq`.
    pub fn note_peer_fenced(&self, epoch: u64, final_seq: u64) {
        if self.role.fenced().send_replace(Some((epoch, final_seq))) == Some((epoch, final_seq)) {
            return;
        }
        self.push_event(format!(
            "the protected site fenced the VPG at epoch {epoch}; its stream ends before seq {final_seq}"
        ));
    }

    /// Watches the protected site's answers to fences.
    pub fn peer_fenced(&self) -> tokio::sync::watch::Receiver<Option<(u64, u64)>> {
        self.role.fenced().subscribe()
    }

    /// The protected site reports split brain (`bytes` > 0: writes there this site never
    /// received, made while the VPG was taken over here) or that it settled it for this
    /// site (0: its writes salvaged there). Recorded and told; replication stays stopped
    /// (the protected site's epoch is older) until an operator settles it.
    pub fn note_diverged(&self, epoch: u64, bytes: u64) -> Result<(), AgentError> {
        let mut meta = self.meta.lock().unwrap_or_else(|e| e.into_inner());
        let seen = meta.split_brain.as_ref().map(|b| (b.epoch, b.there_bytes));
        let next_sb = (bytes > 0).then(|| SplitBrainSeen {
            epoch,
            there_bytes: bytes,
            since_unix_ms: meta
                .split_brain
                .as_ref()
                .filter(|b| b.epoch == epoch)
                .map_or_else(now_ms, |b| b.since_unix_ms),
        });
        if seen == next_sb.as_ref().map(|b| (b.epoch, b.there_bytes)) {
            return Ok(());
        }
        let mut next = meta.clone();
        next.split_brain = next_sb;
        self.save_meta(&next)?;
        *meta = next;
        let name = meta.spec.name.clone();
        drop(meta);
        self.push_event(if bytes > 0 {
            format!(
                "split brain since epoch {epoch}: the protected site wrote {} that never reached this site while the VPG ran here; replication stops and nothing is overwritten. Settle it with `ferry vpg resolve {name} --keep here|peer`",
                crate::size::human(bytes)
            )
        } else {
            format!(
                "split brain of epoch {epoch} settled at the protected site for this one: its diverged writes were salvaged there"
            )
        });
        Ok(())
    }

    /// Forgets a split brain settled here (for either side).
    pub fn clear_split_brain(&self) -> Result<(), AgentError> {
        let mut meta = self.meta.lock().unwrap_or_else(|e| e.into_inner());
        if meta.split_brain.is_none() {
            return Ok(());
        }
        let mut next = meta.clone();
        next.split_brain = None;
        self.save_meta(&next)?;
        *meta = next;
        Ok(())
    }

    pub fn split_brain(&self) -> Option<SplitBrainSeen> {
        self.meta.lock().unwrap_or_else(|e| e.into_inner()).split_brain.clone()
    }

    /// The failover plan changed at the protected site.
    pub fn set_plan(&self, plan: ferry_proto::message::Plan) -> Result<(), AgentError> {
        let mut meta = self.meta.lock().unwrap_or_else(|e| e.into_inner());
        if meta.spec.plan == plan {
            return Ok(());
        }
        let mut next = meta.clone();
        next.spec.plan = plan;
        self.save_meta(&next)?;
        *meta = next;
        drop(meta);
        self.push_event("the failover plan changed at the protected site".into());
        Ok(())
    }
}
