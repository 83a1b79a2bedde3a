//! The replicas this agent keeps for its peers: one per VPG it receives, found under each
//! datastore's `replicas/` folder and loaded in the background at start-up; tombstones
//! (`replicas/deleted.json`) so a deleted replica's peer is refused rather than recreated;
//! and the aging task that ages every replica's history.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use ferry_proto::message::VpgSpec;
use serde::{Deserialize, Serialize};
use tracing::{error, info};

use crate::clock::now_ms;
use crate::config::DatastoreConfig;
use crate::error::AgentError;
use crate::meta::name_problem;
use crate::recover::replica::{PeerSeen, Replica, io_err};

/// The replicas this agent holds for its peers.
#[derive(Debug)]
pub struct Replicas {
    datastores: Vec<DatastoreConfig>,
    map: RwLock<BTreeMap<String, Arc<Replica>>>,
    /// VPGs whose replica the operator deleted here (by id): their streams are refused,
    /// so a reconnect cannot quietly make a new one. Kept in `deleted.json` beside the
    /// first datastore's replicas, the newest [`TOMBSTONES_MAX`].
    deleted: Mutex<Vec<Tombstone>>,
    /// Every replica on the datastores was opened.
    loaded: std::sync::atomic::AtomicBool,
    /// Held while a replica's files are made, so that two sessions cannot make the same
    /// one; `map` is only taken briefly inside it.
    creating: Mutex<()>,
    /// Replica folders that could not be opened, with the reason: never made anew over
    /// (their history may be all that is left of a VPG).
    damaged: Mutex<BTreeMap<PathBuf, String>>,
    /// Counts deletions: a session with a replica open learns of one at once.
    removals: tokio::sync::watch::Sender<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
struct Tombstone {
    id: u64,
    name: String,
    unix_ms: u64,
}

const TOMBSTONES_MAX: usize = 1024;

fn replicas_dir(ds: &DatastoreConfig) -> PathBuf {
    ds.path.join("replicas")
}

fn tombstones_path(ds: &DatastoreConfig) -> PathBuf {
    replicas_dir(ds).join("deleted.json")
}

impl Replicas {
    /// The replicas of these datastores, none loaded yet: [`Replicas::load_all`] opens
    /// them (off the start-up path: NBD serves volumes meanwhile).
    pub fn new(datastores: Vec<DatastoreConfig>) -> Arc<Replicas> {
        let deleted = match datastores
            .first()
            .map(|ds| crate::meta::fetch_noting::<Vec<Tombstone>>(&tombstones_path(ds), crate::meta::TOMBSTONES))
        {
            Some(Ok(Some(list))) => list,
            Some(Err(e)) => {
                crate::meta::note_problem(format!(
                    "{e}: the list of replicas deleted here is lost, so their protected sites could make them anew at their next connection; delete those VPGs at their protected sites"
                ));
                Vec::new()
            }
            _ => Vec::new(),
        };
        Arc::new(Replicas {
            datastores,
            map: RwLock::new(BTreeMap::new()),
            deleted: Mutex::new(deleted),
            loaded: std::sync::atomic::AtomicBool::new(false),
            creating: Mutex::new(()),
            damaged: Mutex::new(BTreeMap::new()),
            removals: tokio::sync::watch::Sender::new(0),
        })
    }

    /// Opens every replica found on the datastores (reading each one's history to index
    /// it), then marks them loaded.
    pub fn load_all(&self) {
        let t0 = std::time::Instant::now();
        for ds in &self.datastores {
            let root = replicas_dir(ds);
            let Ok(entries) = std::fs::read_dir(&root) else {
                continue;
            };
            for e in entries.flatten() {
                let dir = e.path();
                if !Replica::has_meta(&dir) {
                    continue;
                }
                match Replica::open(&dir) {
                    Ok(r) => {
                        let name = r.spec().name;
                        info!(replica = %name, dir = %dir.display(), next_seq = r.next_seq(), "replica loaded");
                        self.map.write().unwrap_or_else(|e| e.into_inner()).insert(name, r);
                    }
                    Err(e) => {
                        let why = format!(
                            "replica {} cannot be opened: {e}. It is not served, and its protected site is refused until it is fixed (restore the file, then restart the agent) or the folder is moved away (the VPG then syncs anew)",
                            dir.display()
                        );
                        crate::meta::note_problem(why.clone());
                        self.damaged.lock().unwrap_or_else(|e| e.into_inner()).insert(dir, why);
                    }
                }
            }
        }
        self.loaded.store(true, std::sync::atomic::Ordering::Release);
        info!(
            replicas = self.all().len(),
            elapsed_ms = t0.elapsed().as_millis() as u64,
            "replicas loaded"
        );
    }

    /// Refused while the replicas are still being loaded after a start.
    pub fn check_loaded(&self) -> Result<(), AgentError> {
        if self.loaded.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(());
        }
        Err(AgentError::Refused(
            "this agent is still loading the history of the replicas it holds (after its start); retry in a few seconds".into(),
        ))
    }

    /// The folders of the replicas on disk (loaded or not), found without reading them.
    pub fn dirs_on_disk(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for ds in &self.datastores {
            if let Ok(rd) = std::fs::read_dir(replicas_dir(ds)) {
                out.extend(rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
            }
        }
        out
    }

    pub fn get(&self, name: &str) -> Option<Arc<Replica>> {
        self.map.read().unwrap_or_else(|e| e.into_inner()).get(name).cloned()
    }

    pub fn all(&self) -> Vec<Arc<Replica>> {
        self.map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// The replica for `spec`: the one already here (same id), or a new one. Refuses a
    /// name held by another VPG, or a spec that changed its volumes.
    /// The replica of `spec`, made if new, as `peer` opens it (see [`Replica::admit`]).
    pub fn open(&self, spec: &VpgSpec, peer: &PeerSeen) -> Result<Arc<Replica>, String> {
        if let Some(why) = name_problem("VPG", &spec.name) {
            return Err(why);
        }
        for v in &spec.volumes {
            if let Some(why) = name_problem("volume", &v.name) {
                return Err(why);
            }
        }
        if spec.volumes.is_empty() {
            return Err("a VPG needs at least one volume".into());
        }
        if let Some(t) = self
            .deleted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|t| t.id == spec.id)
        {
            return Err(format!(
                "its replica was deleted at the recovery site ({}, `ferry replica delete {}`); to protect the VPG again, delete it here (`ferry vpg delete {}`) and create it anew",
                crate::size::utc(t.unix_ms),
                t.name,
                t.name
            ));
        }
        let _one = self.creating.lock().unwrap_or_else(|e| e.into_inner());
        let existing = self.get(&spec.name);
        if let Some(r) = existing {
            let have = r.spec();
            if have.id != spec.id {
                return Err(format!(
                    "the recovery site already holds a replica of another VPG named {:?} (id {:#x}); remove it there with `ferry replica delete {}` first",
                    spec.name, have.id, spec.name
                ));
            }
            if have.volumes != spec.volumes {
                return Err(format!(
                    "VPG {:?} changed its volumes since its replica was made; delete and re-create the VPG",
                    spec.name
                ));
            }
            r.admit(spec, peer)?;
            return Ok(r.clone());
        }
        let dir = self.dir_for(spec)?;
        if let Some(why) = self.damaged.lock().unwrap_or_else(|e| e.into_inner()).get(&dir) {
            return Err(why.clone());
        }
        if Replica::has_meta(&dir) {
            return Err(format!(
                "{} holds a replica this agent did not load; restart the agent, or move the folder away to sync the VPG anew",
                dir.display()
            ));
        }
        let r = Replica::create(&dir, spec, peer).map_err(|e| e.to_string())?;
        info!(replica = %spec.name, dir = %dir.display(), "replica created");
        self.map
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(spec.name.clone(), r.clone());
        Ok(r)
    }

    /// Where the replica of `spec` lives (or would): its datastore's `replicas/NAME`.
    pub fn dir_for(&self, spec: &VpgSpec) -> Result<PathBuf, String> {
        let ds = if spec.datastore.is_empty() {
            self.datastores.first()
        } else {
            self.datastores.iter().find(|d| d.name == spec.datastore)
        }
        .ok_or_else(|| format!("the recovery site has no datastore named {:?}", spec.datastore))?;
        Ok(replicas_dir(ds).join(&spec.name))
    }

    /// Deletes a replica (its views' pins must be gone). A session writing to it ends its
    /// stream and lets its files go. `by_operator`: the protected site is refused this VPG
    /// from now on (a tombstone), rather than its replica being made anew at reconnect.
    pub fn remove(&self, name: &str, by_operator: bool) -> Result<(), AgentError> {
        let r = {
            let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
            let Some(r) = map.get(name) else {
                return Err(AgentError::Refused(format!("no replica named {name:?} here")));
            };
            if r.life().testing {
                return Err(AgentError::Refused(format!(
                    "a failover test of replica {name:?} runs; stop it first (`ferry failover stop {name} --result pass|fail`)"
                )));
            }
            if r.life().live == crate::recover::state::LiveMark::NeedsCommit {
                return Err(AgentError::Refused(format!(
                    "a live failover serves VPG {name:?} from this replica; commit or roll it back first (`ferry failover commit|rollback {name}`)"
                )));
            }
            if r.is_pinned() {
                return Err(AgentError::Refused(format!(
                    "replica {name:?} has checkpoint exports; stop them first (`ferry checkpoint unexport {name}`)"
                )));
            }
            let r = r.clone();
            r.change(crate::recover::state::Input::Delete);
            map.remove(name);
            r
        };
        self.removals.send_modify(|n| *n += 1);
        if by_operator {
            self.bury(r.spec().id, name)?;
        }
        std::fs::remove_dir_all(&r.dir).map_err(|e| AgentError::io("cannot delete replica", &r.dir, e))?;
        info!(replica = %name, by_operator, "replica deleted");
        Ok(())
    }

    /// Records a tombstone for VPG `id` (durably, before its replica goes).
    fn bury(&self, id: u64, name: &str) -> Result<(), AgentError> {
        let Some(ds) = self.datastores.first() else {
            return Ok(());
        };
        let list = {
            let mut d = self.deleted.lock().unwrap_or_else(|e| e.into_inner());
            d.retain(|t| t.id != id);
            d.push(Tombstone {
                id,
                name: name.into(),
                unix_ms: now_ms(),
            });
            let excess = d.len().saturating_sub(TOMBSTONES_MAX);
            d.drain(..excess);
            d.clone()
        };
        let dir = replicas_dir(ds);
        std::fs::create_dir_all(&dir).map_err(io_err("cannot create", &dir))?;
        crate::meta::store(&dir, &tombstones_path(ds), crate::meta::TOMBSTONES, &list)
    }

    /// Changes whenever a replica is deleted or has a message for its protected site
    /// (sessions wait on it).
    pub fn removals(&self) -> tokio::sync::watch::Receiver<u64> {
        self.removals.subscribe()
    }

    /// Wakes the sessions: a replica has a message for its protected site
    /// ([`Replica::tell_peer`]).
    pub fn nudge(&self) {
        self.removals.send_modify(|n| *n += 1);
    }

    pub fn by_id(&self, id: u64) -> Option<Arc<Replica>> {
        self.map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .find(|r| r.spec().id == id)
            .cloned()
    }

    /// Ages every replica's history once a second until `stop`.
    pub async fn run_aging(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            for r in self.all() {
                if let Err(e) = tokio::task::spawn_blocking(move || r.age_or_wait(now_ms())).await {
                    error!(error = %e, "history aging task failed");
                }
            }
        }
    }
}
