//! The volumes of this agent: the registry (`volumes.json`), creating, adopting and deleting
//! volumes on the datastores, opening each at start-up (one that cannot be opened is kept
//! offline with the reason), and the NBD catalogue of them.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use ferry_nbd::{Catalog, Export};
use serde::Serialize;
use tracing::{error, info};

use crate::config::DatastoreConfig;
use crate::error::AgentError;
use crate::io::{BufPool, Engine};
use crate::meta::{self, Registry, STATE_FORMAT_VERSION, VolumeRecord};
use crate::protect::volume::{self, VOLUME_BYTES_MAX, Volume, largest_file_bytes};

/// A volume as the control API reports it.
#[derive(Clone, Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct VolumeStatus {
    #[serde(flatten)]
    pub record: VolumeRecord,
    /// "online", or why the volume cannot be served.
    pub state: String,
    /// Open NBD sessions and requests holding the volume.
    pub in_use: bool,
}

/// The catalogue of volumes, shared by the NBD server and the control API.
#[derive(Debug)]
pub struct Volumes {
    state_dir: PathBuf,
    datastores: Vec<DatastoreConfig>,
    direct_default: bool,
    default_export: Option<String>,
    inline_write_bytes_max: u32,
    engine: Arc<Engine>,
    pool: Arc<BufPool>,
    online: RwLock<BTreeMap<String, Arc<Volume>>>,
    /// Registered volumes that could not be opened, with the reason.
    offline: RwLock<BTreeMap<String, (VolumeRecord, String)>>,
    /// Serialises changes to the registry.
    change: tokio::sync::Mutex<()>,
    /// The registry file could not be read: changes are refused (they would overwrite it
    /// and lose the volumes it names), with this reason.
    frozen: Option<String>,
}

fn check_name(name: &str) -> Result<(), AgentError> {
    crate::meta::name_problem("volume", name).map_or(Ok(()), |why| Err(AgentError::BadRequest(why)))
}

#[derive(Debug)]
pub struct VolumesConfig {
    pub state_dir: PathBuf,
    pub datastores: Vec<DatastoreConfig>,
    pub direct_default: bool,
    pub default_export: Option<String>,
    pub inline_write_bytes_max: u32,
}

impl Volumes {
    fn check_frozen(&self) -> Result<(), AgentError> {
        match &self.frozen {
            Some(why) => Err(AgentError::Refused(why.clone())),
            None => Ok(()),
        }
    }

    /// Opens every registered volume; one that cannot be opened is kept offline, with the
    /// reason logged and shown by `ferry volume list`, and the others are served.
    pub fn load(cfg: VolumesConfig, engine: Arc<Engine>, pool: Arc<BufPool>) -> Result<Volumes, AgentError> {
        let (reg, frozen) = match meta::load(&cfg.state_dir) {
            Ok(reg) => (reg, None),
            Err(e @ AgentError::StateCorrupt { .. }) => {
                let why = format!(
                    "{e}. No volume is served and volume changes are refused until it is fixed (then restart the agent)"
                );
                meta::note_problem(why.clone());
                (Registry::default(), Some(why))
            }
            Err(e) => return Err(e),
        };
        let mut online = BTreeMap::new();
        let mut offline = BTreeMap::new();
        for record in reg.volumes {
            match Volume::open(record.clone(), engine.clone(), pool.clone(), cfg.inline_write_bytes_max) {
                Ok(v) => {
                    online.insert(record.name.clone(), Arc::new(v));
                }
                Err(e) => {
                    error!(volume = %record.name, error = %e, "volume is offline");
                    offline.insert(record.name.clone(), (record, e.to_string()));
                }
            }
        }
        info!(online = online.len(), offline = offline.len(), "volumes loaded");
        Ok(Volumes {
            state_dir: cfg.state_dir,
            datastores: cfg.datastores,
            direct_default: cfg.direct_default,
            default_export: cfg.default_export,
            inline_write_bytes_max: cfg.inline_write_bytes_max,
            engine,
            pool,
            online: RwLock::new(online),
            offline: RwLock::new(offline),
            change: tokio::sync::Mutex::new(()),
            frozen,
        })
    }

    fn records(&self) -> Vec<VolumeRecord> {
        let mut all: Vec<VolumeRecord> = self
            .online
            .read()
            .expect("lock")
            .values()
            .map(|v| v.record.clone())
            .collect();
        all.extend(self.offline.read().expect("lock").values().map(|(r, _)| r.clone()));
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    fn exists(&self, name: &str) -> bool {
        self.online.read().expect("lock").contains_key(name) || self.offline.read().expect("lock").contains_key(name)
    }

    fn save(&self, extra: Option<&VolumeRecord>, without: Option<&str>) -> Result<(), AgentError> {
        let mut volumes: Vec<VolumeRecord> = self
            .records()
            .into_iter()
            .filter(|r| Some(r.name.as_str()) != without)
            .collect();
        volumes.extend(extra.cloned());
        meta::save(
            &self.state_dir,
            &Registry {
                version: STATE_FORMAT_VERSION,
                volumes,
            },
        )
    }

    pub fn list(&self) -> Vec<VolumeStatus> {
        let mut out: Vec<VolumeStatus> = self
            .online
            .read()
            .expect("lock")
            .values()
            .map(|v| VolumeStatus {
                record: v.record.clone(),
                state: "online".into(),
                in_use: Arc::strong_count(v) > 1,
            })
            .collect();
        out.extend(
            self.offline
                .read()
                .expect("lock")
                .values()
                .map(|(r, why)| VolumeStatus {
                    record: r.clone(),
                    state: format!("offline: {why}"),
                    in_use: false,
                }),
        );
        out.sort_by(|a, b| a.record.name.cmp(&b.record.name));
        out
    }

    fn datastore(&self, name: Option<&str>) -> Result<&DatastoreConfig, AgentError> {
        match name {
            Some(n) => self
                .datastores
                .iter()
                .find(|d| d.name == n)
                .ok_or_else(|| AgentError::NoDatastore(n.into())),
            None => Ok(&self.datastores[0]),
        }
    }

    fn check_size(size: u64, direct: bool) -> Result<(), AgentError> {
        let align = if direct { 4096 } else { 512 };
        if size == 0 || !size.is_multiple_of(align) {
            return Err(AgentError::BadRequest(format!(
                "size {size} must be a non-zero multiple of {align} bytes"
            )));
        }
        if size > VOLUME_BYTES_MAX {
            return Err(AgentError::BadRequest(format!(
                "size {} is over the largest volume ferry serves, {} ({VOLUME_BYTES_MAX} bytes)",
                crate::size::human(size),
                crate::size::human(VOLUME_BYTES_MAX)
            )));
        }
        Ok(())
    }

    fn register(&self, record: VolumeRecord) -> Result<VolumeStatus, AgentError> {
        let vol = Volume::open(
            record.clone(),
            self.engine.clone(),
            self.pool.clone(),
            self.inline_write_bytes_max,
        )?;
        self.save(Some(&record), None)?;
        self.online
            .write()
            .expect("lock")
            .insert(record.name.clone(), Arc::new(vol));
        info!(volume = %record.name, path = %record.path.display(), size_bytes = record.size_bytes, "volume added");
        Ok(VolumeStatus {
            record,
            state: "online".into(),
            in_use: false,
        })
    }

    /// Creates a volume: a new sparse file in a directory datastore, or the whole of a
    /// block-device datastore.
    pub async fn create(
        &self,
        name: &str,
        size: Option<u64>,
        datastore: Option<&str>,
        direct: Option<bool>,
    ) -> Result<VolumeStatus, AgentError> {
        check_name(name)?;
        let _g = self.change.lock().await;
        self.check_frozen()?;
        if self.exists(name) {
            return Err(AgentError::VolumeExists(name.into()));
        }
        let ds = self.datastore(datastore)?;
        let direct = direct.unwrap_or(self.direct_default);
        let meta = std::fs::metadata(&ds.path);
        let is_device = meta.as_ref().is_ok_and(|m| m.file_type().is_block_device());
        let (path, size_bytes) = if is_device {
            if let Some(other) = self.records().into_iter().find(|r| r.path == ds.path) {
                return Err(AgentError::BadRequest(format!(
                    "datastore {:?} is a block device and already holds volume {:?}",
                    ds.name, other.name
                )));
            }
            let f = File::open(&ds.path).map_err(|e| AgentError::io("cannot open datastore", &ds.path, e))?;
            let dev = volume::size_of(&f).map_err(|e| AgentError::io("cannot size", &ds.path, e))?;
            let size = size.unwrap_or(dev);
            if size > dev {
                return Err(AgentError::BadRequest(format!(
                    "size {size} exceeds block device {} ({dev} bytes)",
                    ds.path.display()
                )));
            }
            (ds.path.clone(), size)
        } else {
            let size = size.ok_or_else(|| {
                AgentError::BadRequest("--size is required for a volume in a directory datastore".into())
            })?;
            Self::check_size(size, direct)?;
            std::fs::create_dir_all(&ds.path)
                .map_err(|e| AgentError::io("cannot create datastore directory", &ds.path, e))?;
            let path = ds.path.join(format!("{name}.img"));
            let f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(|e| {
                    if e.kind() == io::ErrorKind::AlreadyExists {
                        AgentError::BadRequest(format!(
                            "{} already exists; adopt it with `ferry volume adopt {name} {}` or remove it",
                            path.display(),
                            path.display()
                        ))
                    } else {
                        AgentError::io("cannot create volume file", &path, e)
                    }
                })?;
            // Nothing is left behind when the file cannot take the size.
            let sized = f
                .set_len(size)
                .map_err(|e| match e.raw_os_error() {
                    Some(libc::EFBIG) | Some(libc::EINVAL) => {
                        let largest = largest_file_bytes(&f);
                        AgentError::BadRequest(format!(
                            "size {} is more than datastore {:?} can hold in one file; the largest is {} ({largest} bytes)",
                            crate::size::human(size),
                            ds.name,
                            crate::size::human(largest),
                        ))
                    }
                    Some(libc::ENOSPC) => AgentError::BadRequest(format!(
                        "datastore {:?} has no room for a volume of {}: {e}",
                        ds.name,
                        crate::size::human(size)
                    )),
                    _ => AgentError::io("cannot size volume file", &path, e),
                })
                .and_then(|()| {
                    f.sync_all()
                        .map_err(|e| AgentError::io("cannot sync volume file", &path, e))
                });
            if let Err(e) = sized {
                drop(f);
                let _ = std::fs::remove_file(&path);
                return Err(e);
            }
            (path, size)
        };
        Self::check_size(size_bytes, direct)?;
        let record = VolumeRecord {
            name: name.into(),
            datastore: ds.name.clone(),
            path,
            size_bytes,
            direct,
            read_only: false,
            adopted: false,
        };
        let made_file = !is_device;
        self.register(record.clone()).inspect_err(|_| {
            if made_file {
                let _ = std::fs::remove_file(&record.path);
            }
        })
    }

    /// Serves an existing file or block device as a volume; deleting the volume keeps it.
    pub async fn adopt(
        &self,
        name: &str,
        path: &Path,
        read_only: bool,
        direct: Option<bool>,
    ) -> Result<VolumeStatus, AgentError> {
        check_name(name)?;
        let _g = self.change.lock().await;
        self.check_frozen()?;
        if self.exists(name) {
            return Err(AgentError::VolumeExists(name.into()));
        }
        let path = std::fs::canonicalize(path).map_err(|e| AgentError::io("cannot find", path, e))?;
        if let Some(what) = self.agent_owned(&path) {
            return Err(AgentError::BadRequest(format!(
                "{} is {what}, which the agent itself owns: serving it as a volume would let writes destroy it",
                path.display()
            )));
        }
        if let Some(other) = self.records().into_iter().find(|r| r.path == path) {
            return Err(AgentError::BadRequest(format!(
                "{} is already volume {:?}",
                path.display(),
                other.name
            )));
        }
        let f = File::open(&path).map_err(|e| AgentError::io("cannot open", &path, e))?;
        let size_bytes = volume::size_of(&f).map_err(|e| AgentError::io("cannot size", &path, e))?;
        let direct = direct.unwrap_or(self.direct_default);
        Self::check_size(size_bytes, direct)?;
        let record = VolumeRecord {
            name: name.into(),
            datastore: "adopted".into(),
            path,
            size_bytes,
            direct,
            read_only,
            adopted: true,
        };
        self.register(record)
    }

    /// What of the agent's own `path` is (in its state directory: VPGs' journals and dirty
    /// maps, the registries; a datastore's replicas: history and images), if it is.
    fn agent_owned(&self, path: &Path) -> Option<&'static str> {
        let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        for ds in &self.datastores {
            if path.starts_with(canon(&ds.path).join("replicas")) {
                return Some("part of a replica held for a peer (history or image)");
            }
        }
        let state = canon(&self.state_dir);
        if path.starts_with(state.join("vpgs")) {
            return Some("a VPG's journal or dirty map");
        }
        let own = ["volumes.json", "vpgs.json", "agent.lock"];
        if path.parent() == Some(state.as_path())
            && path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| own.contains(&n) || n.ends_with(".tmp"))
        {
            return Some("one of the agent's registries");
        }
        None
    }

    /// A volume (online, if it is) and its record, if it is in no VPG.
    fn outside_vpgs(&self, name: &str) -> Result<(Option<Arc<Volume>>, VolumeRecord), AgentError> {
        let online = self.online.read().expect("lock").get(name).cloned();
        let record = match (&online, self.offline.read().expect("lock").get(name)) {
            (Some(v), _) => v.record.clone(),
            (None, Some((r, _))) => r.clone(),
            (None, None) => return Err(AgentError::NoVolume(name.into())),
        };
        if let Some((vpg, _)) = online.as_ref().and_then(|v| v.member()) {
            return Err(AgentError::BadRequest(format!(
                "volume {name:?} is in VPG {:?}; delete the VPG first (`ferry vpg delete {}`)",
                vpg.name, vpg.name
            )));
        }
        Ok((online, record))
    }

    /// No longer a volume here: connections still open on it fail from now on.
    fn forget(&self, name: &str, online: Option<Arc<Volume>>) {
        if let Some(v) = online {
            v.deleted.store(true, std::sync::atomic::Ordering::Release);
        }
        self.online.write().expect("lock").remove(name);
        self.offline.write().expect("lock").remove(name);
    }

    /// Hands a volume's file over to `to` (renamed there; the same file system): it is no
    /// longer a volume of this agent, and connections still open on it fail from now on.
    /// A reversed VPG's volumes become its replica's images this way. Refused for a volume
    /// in a VPG, an adopted file and a block device (they are not the agent's to move).
    pub async fn hand_over(&self, name: &str, to: &Path) -> Result<(), AgentError> {
        let _g = self.change.lock().await;
        self.check_frozen()?;
        let (online, record) = self.outside_vpgs(name)?;
        let is_device = std::fs::metadata(&record.path).is_ok_and(|m| m.file_type().is_block_device());
        if record.adopted || is_device {
            return Err(AgentError::BadRequest(format!(
                "volume {name:?} is {}: it cannot become a replica's image; copy it there by hand",
                if is_device { "a block device" } else { "an adopted file" }
            )));
        }
        if let Some(dir) = to.parent() {
            std::fs::create_dir_all(dir).map_err(|e| AgentError::io("cannot create", dir, e))?;
        }
        std::fs::rename(&record.path, to)
            .map_err(|e| AgentError::io("cannot move the volume's file", &record.path, e))?;
        if let Err(e) = self.save(None, Some(name)) {
            // Put back: nothing changed.
            let _ = std::fs::rename(to, &record.path);
            return Err(e);
        }
        self.forget(name, online);
        info!(volume = %name, to = %to.display(), "volume handed over");
        Ok(())
    }

    /// Removes a volume (and its file, unless adopted or a block device).
    pub async fn delete(&self, name: &str, force: bool) -> Result<(), AgentError> {
        let _g = self.change.lock().await;
        self.check_frozen()?;
        let (online, record) = self.outside_vpgs(name)?;
        if let Some(v) = &online
            && Arc::strong_count(v) > 2
            && !force
        {
            return Err(AgentError::VolumeInUse(name.into()));
        }
        self.save(None, Some(name))?;
        self.forget(name, online);
        let is_device = std::fs::metadata(&record.path).is_ok_and(|m| m.file_type().is_block_device());
        if !record.adopted
            && !is_device
            && let Err(e) = std::fs::remove_file(&record.path)
            && e.kind() != io::ErrorKind::NotFound
        {
            return Err(AgentError::io(
                "volume removed, but cannot delete its file",
                &record.path,
                e,
            ));
        }
        info!(volume = %name, "volume deleted");
        Ok(())
    }

    /// Every online volume.
    pub fn list_online(&self) -> Vec<Arc<Volume>> {
        self.online.read().expect("lock").values().cloned().collect()
    }

    /// The online volume called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Volume>> {
        self.online.read().expect("lock").get(name).cloned()
    }

    /// fdatasync of every online volume (at shutdown).
    pub async fn flush_all(&self) {
        let vols: Vec<Arc<Volume>> = self.online.read().expect("lock").values().cloned().collect();
        for v in vols {
            if !v.record.read_only
                && let Err(e) = v.flush().await
            {
                error!(volume = %v.record.name, error = %e, "flush at shutdown failed");
            }
        }
    }
}

impl Catalog for Volumes {
    type Export = Volume;

    fn open(&self, name: &str) -> Option<Arc<Volume>> {
        let online = self.online.read().expect("lock");
        if name.is_empty() {
            return match &self.default_export {
                Some(d) => online.get(d).cloned(),
                None if online.len() == 1 => online.values().next().cloned(),
                None => None,
            };
        }
        online.get(name).cloned()
    }

    fn list(&self) -> Vec<(String, String)> {
        self.online
            .read()
            .expect("lock")
            .values()
            .map(|v| (v.record.name.clone(), v.info.description.clone()))
            .collect()
    }
}
