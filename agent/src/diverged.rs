//! Diverged writes kept for salvage: writes a site made after the checkpoint the other
//! site failed over to, never part of the recovery point, about to be overwritten by a
//! resync or thrown away by a rollback. Before that they are copied, bounded in size, into
//! `diverged/VPG/epoch-N/` of this agent: one sparse file per volume (the volume's size,
//! holding only the diverged regions at their offsets) and `diverged.json` listing the
//! regions. The catalogue serves each file read-only as `VPG@diverged-eN.VOLUME` (block
//! status shows the regions as data, the rest as holes) until an operator deletes the set.
//!
//! Kept by whichever part is about to lose them: a resolve (`failover::resolve`), or a site
//! demoted by reverse protection (`replication::receiver`).

use serde::{Deserialize, Serialize};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::clock::now_ms;
use crate::error::AgentError;

/// The most a site keeps of one split brain's or failover's diverged writes unless an
/// operator allows more.
pub const DIVERGED_BYTES_MAX_DEFAULT: u64 = 16 << 30;
/// A copy's step.
const CHUNK: u64 = 1 << 20;

/// One volume's diverged writes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct DivergedVolume {
    pub name: String,
    pub size_bytes: u64,
    /// The sparse copy: the diverged bytes at their offsets, holes elsewhere.
    #[schema(value_type = String)]
    pub file: PathBuf,
    /// Served read-only under this name.
    pub export: String,
    /// Its NBD URI at this agent (as listed).
    #[serde(default)]
    pub uri: String,
    /// (offset, length), sorted.
    pub regions: Vec<(u64, u64)>,
    pub bytes: u64,
}

/// What a site kept of one split brain or failover.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct DivergedSet {
    pub vpg: String,
    /// The epoch of the failover they diverged from.
    pub epoch: u64,
    /// Whose writes and why they were kept.
    pub origin: String,
    pub made_unix_ms: u64,
    pub bytes: u64,
    #[schema(value_type = String)]
    pub dir: PathBuf,
    pub volumes: Vec<DivergedVolume>,
}

/// One volume's diverged regions and where to read their bytes (blocking).
pub struct Source {
    pub name: String,
    pub size_bytes: u64,
    pub regions: Vec<(u64, u64)>,
    pub read: ReadAt,
}

/// Reads `buf.len()` bytes at an offset (blocking).
pub type ReadAt = Box<dyn Fn(u64, &mut [u8]) -> io::Result<()> + Send>;

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source")
            .field("name", &self.name)
            .field("regions", &self.regions.len())
            .finish_non_exhaustive()
    }
}

pub fn export_name(vpg: &str, epoch: u64, volume: &str) -> String {
    format!("{vpg}@diverged-e{epoch}.{volume}")
}

fn set_dir(root: &Path, vpg: &str, epoch: u64) -> PathBuf {
    root.join(vpg).join(format!("epoch-{epoch}"))
}

/// The store: `STATE_DIR/diverged`.
#[derive(Debug, Clone)]
pub struct Diverged {
    root: PathBuf,
}

fn meta_path(dir: &Path) -> PathBuf {
    dir.join("diverged.json")
}

impl Diverged {
    pub fn at(state_dir: &Path) -> Diverged {
        Diverged {
            root: state_dir.join("diverged"),
        }
    }

    /// Copies the diverged regions of `sources` into a set for (`vpg`, `epoch`) (blocking).
    /// A set already kept for that epoch is kept as it is and returned (a resolve tried
    /// again). Refused, with nothing kept, past `max_bytes`.
    pub fn keep(
        &self,
        vpg: &str,
        epoch: u64,
        origin: String,
        sources: Vec<Source>,
        max_bytes: u64,
    ) -> Result<DivergedSet, AgentError> {
        let dir = set_dir(&self.root, vpg, epoch);
        if let Some(set) = crate::meta::fetch::<DivergedSet>(&meta_path(&dir), crate::meta::DIVERGED)? {
            return Ok(set.value);
        }
        let bytes: u64 = sources.iter().map(|s| crate::ranges::total(&s.regions)).sum();
        if bytes > max_bytes {
            return Err(AgentError::Refused(format!(
                "the diverged writes of {vpg:?} take {}, more than the {} kept for salvage: allow more with --salvage-max SIZE (on a datastore with the room), or give them up with --salvage-max 0 --discard",
                crate::size::human(bytes),
                crate::size::human(max_bytes)
            )));
        }
        let tmp = dir.with_extension("tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| AgentError::io("cannot create", &tmp, e))?;
        let mut volumes = Vec::new();
        let mut buf = vec![0u8; CHUNK as usize];
        for s in sources {
            let path = tmp.join(format!("{}.img", s.name));
            let f = std::fs::File::create(&path).map_err(|e| AgentError::io("cannot create", &path, e))?;
            f.set_len(s.size_bytes)
                .map_err(|e| AgentError::io("cannot size", &path, e))?;
            for &(off, len) in &s.regions {
                let mut at = off;
                while at < off + len {
                    let n = (off + len - at).min(CHUNK) as usize;
                    (s.read)(at, &mut buf[..n])
                        .map_err(|e| AgentError::io("cannot read the diverged writes of", PathBuf::from(&s.name), e))?;
                    f.write_all_at(&buf[..n], at)
                        .map_err(|e| AgentError::io("cannot write", &path, e))?;
                    at += n as u64;
                }
            }
            f.sync_all().map_err(|e| AgentError::io("cannot sync", &path, e))?;
            volumes.push(DivergedVolume {
                file: dir.join(format!("{}.img", s.name)),
                export: export_name(vpg, epoch, &s.name),
                uri: String::new(),
                bytes: crate::ranges::total(&s.regions),
                name: s.name,
                size_bytes: s.size_bytes,
                regions: s.regions,
            });
        }
        let set = DivergedSet {
            vpg: vpg.into(),
            epoch,
            origin,
            made_unix_ms: now_ms(),
            bytes,
            dir: dir.clone(),
            volumes,
        };
        crate::meta::store(&tmp, &meta_path(&tmp), crate::meta::DIVERGED, &set)?;
        std::fs::rename(&tmp, &dir).map_err(|e| AgentError::io("cannot rename", &tmp, e))?;
        if let Some(parent) = dir.parent()
            && let Ok(d) = std::fs::File::open(parent)
        {
            let _ = d.sync_all();
        }
        tracing::warn!(vpg, epoch, bytes, dir = %dir.display(), "diverged writes kept for salvage");
        Ok(set)
    }

    /// The sets of diverged writes kept here for `vpg` (every VPG's with `None`), oldest
    /// epoch first.
    pub fn list(&self, vpg: Option<&str>) -> Vec<DivergedSet> {
        let vpgs: Vec<PathBuf> = match vpg {
            Some(v) => vec![self.root.join(v)],
            None => std::fs::read_dir(&self.root)
                .map(|d| d.flatten().map(|e| e.path()).collect())
                .unwrap_or_default(),
        };
        let mut out = Vec::new();
        for d in vpgs {
            let Ok(entries) = std::fs::read_dir(&d) else { continue };
            for e in entries.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "tmp") {
                    continue;
                }
                match crate::meta::fetch::<DivergedSet>(&meta_path(&p), crate::meta::DIVERGED) {
                    Ok(Some(f)) => out.push(f.value),
                    Ok(None) => {}
                    Err(e) => tracing::warn!(dir = %p.display(), error = %e, "diverged writes unreadable"),
                }
            }
        }
        out.sort_by(|a, b| (a.vpg.as_str(), a.epoch).cmp(&(b.vpg.as_str(), b.epoch)));
        out
    }

    /// Deletes the sets of `vpg` (the one of `epoch`, or all): their exports end (open
    /// connections keep their file until they close) and their files go. What was deleted.
    pub fn delete(&self, vpg: &str, epoch: Option<u64>) -> Result<Vec<DivergedSet>, AgentError> {
        let sets: Vec<DivergedSet> = self
            .list(Some(vpg))
            .into_iter()
            .filter(|s| epoch.is_none_or(|e| e == s.epoch))
            .collect();
        if sets.is_empty() {
            return Err(AgentError::Refused(match epoch {
                Some(e) => {
                    format!("no diverged writes of {vpg:?} from epoch {e} are kept here (`ferry vpg diverged {vpg}`)")
                }
                None => format!("no diverged writes of {vpg:?} are kept here"),
            }));
        }
        for s in &sets {
            std::fs::remove_dir_all(&s.dir).map_err(|e| AgentError::io("cannot delete", &s.dir, e))?;
            tracing::info!(vpg, epoch = s.epoch, "diverged writes deleted");
        }
        Ok(sets)
    }

    /// The file and description of the export `name` (`VPG@diverged-eN.VOLUME`), if kept.
    pub fn lookup(&self, name: &str) -> Option<(PathBuf, String)> {
        let (vpg, rest) = name.split_once("@diverged-e")?;
        let (epoch, volume) = rest.split_once('.')?;
        let epoch: u64 = epoch.parse().ok()?;
        if vpg.contains('/') || volume.contains('/') || vpg.is_empty() || volume.is_empty() {
            return None;
        }
        let set: DivergedSet = crate::meta::fetch(&meta_path(&set_dir(&self.root, vpg, epoch)), crate::meta::DIVERGED)
            .ok()??
            .value;
        let v = set.volumes.into_iter().find(|v| v.name == volume)?;
        Some((
            v.file,
            format!(
                "diverged writes of VPG {vpg}, volume {volume}, epoch {epoch}: {} in {} region(s), read-only",
                crate::size::human(v.bytes),
                v.regions.len()
            ),
        ))
    }
}
