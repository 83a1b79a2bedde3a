//! The agent's metadata files and the names in them. The volume registry is `volumes.json`,
//! replaced atomically
//! (write a temporary file, fsync it, rename it over the old one, fsync the directory), so a
//! crash at any point leaves either the old or the new registry, never a torn one.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::AgentError;

pub const STATE_FORMAT_VERSION: u32 = 1;
/// Longest name of a volume or VPG (a file name and, for volumes, an NBD export name).
pub const VOLUME_NAME_BYTES_MAX: usize = 64;

/// Why `name` cannot name a `what` (a volume, a VPG): it is also a file name and, for
/// volumes, an NBD export name. `None` if it can.
pub fn name_problem(what: &str, name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && name.len() <= VOLUME_NAME_BYTES_MAX
        && !name.starts_with(['.', '-'])
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    (!ok).then(|| {
        format!(
            "{what} name {name:?} must be 1 to {VOLUME_NAME_BYTES_MAX} letters, digits, '.', '_' or '-', not starting with '.' or '-'"
        )
    })
}

/// One volume as the registry keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VolumeRecord {
    pub name: String,
    pub datastore: String,
    /// The file or block device holding the volume's bytes.
    #[schema(value_type = String)]
    pub path: PathBuf,
    pub size_bytes: u64,
    #[serde(default)]
    pub direct: bool,
    #[serde(default)]
    pub read_only: bool,
    /// Adopted volumes sit on an existing file or device that deleting the volume keeps.
    #[serde(default)]
    pub adopted: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Registry {
    pub version: u32,
    pub volumes: Vec<VolumeRecord>,
}

pub fn registry_path(state_dir: &Path) -> PathBuf {
    state_dir.join("volumes.json")
}

/// Loads the registry; a missing file is an empty registry.
pub fn load(state_dir: &Path) -> Result<Registry, AgentError> {
    let path = registry_path(state_dir);
    let Some(reg) = fetch_noting::<Registry>(&path, VOLUMES)? else {
        return Ok(Registry {
            version: STATE_FORMAT_VERSION,
            volumes: vec![],
        });
    };
    if reg.version != STATE_FORMAT_VERSION {
        return Err(AgentError::StateCorrupt {
            path,
            why: format!(
                "format version {} is not {STATE_FORMAT_VERSION}, which this agent reads",
                reg.version
            ),
        });
    }
    Ok(reg)
}

/// Replaces the registry atomically.
pub fn save(state_dir: &Path, reg: &Registry) -> Result<(), AgentError> {
    store(state_dir, &registry_path(state_dir), VOLUMES, reg)
}

/// Replaces `path` (in `dir`) with `bytes`: temporary file, fsync, rename, fsync of `dir`.
pub fn write_atomic(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), AgentError> {
    let tmp = with_suffix(path, ".tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| AgentError::io("cannot write", path, e))
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

pub use ferry_journal::envelope::{META_MAGIC, MetaKind, envelope, open_envelope};

/// `volumes.json`: the volume registry.
pub const VOLUMES: MetaKind = MetaKind {
    name: "volumes",
    version: 1,
};
/// `vpgs.json`: the VPG registry.
pub const VPGS: MetaKind = MetaKind {
    name: "vpgs",
    version: 1,
};
/// `vpgs/NAME/state.json`: a VPG's state machine.
pub const VPG_STATE: MetaKind = MetaKind {
    name: "vpg-state",
    version: 1,
};
/// `replicas/NAME/replica.json`: a replica's VPG, progress and protected site.
pub const REPLICA: MetaKind = MetaKind {
    name: "replica",
    version: 1,
};
/// `replicas/deleted.json`: replicas deleted by an operator.
pub const TOMBSTONES: MetaKind = MetaKind {
    name: "tombstones",
    version: 1,
};

/// `replicas/NAME/failover-tests.json`: a VPG's failover test reports at this site.
pub const TEST_REPORTS: MetaKind = MetaKind {
    name: "test-reports",
    version: 1,
};

/// `replicas/NAME/live-failover.json`: a live failover of the VPG at this site.
pub const LIVE_FAILOVER: MetaKind = MetaKind {
    name: "live-failover",
    version: 1,
};

/// Epochs remembered with the sequence at which each began (a VPG's at its protected site,
/// a replica's at its recovery site).
pub const EPOCHS_KEPT: usize = 16;

/// Records that `epoch` began at stream sequence `seq` (the newest [`EPOCHS_KEPT`]).
pub fn note_epoch(epochs: &mut Vec<(u64, u64)>, epoch: u64, seq: u64) {
    if epochs.last().is_some_and(|e| e.0 >= epoch) {
        return;
    }
    epochs.push((epoch, seq));
    if epochs.len() > EPOCHS_KEPT {
        epochs.remove(0);
    }
}

/// `diverged/VPG/epoch-N/diverged.json`: diverged writes kept for salvage.
pub const DIVERGED: MetaKind = MetaKind {
    name: "diverged",
    version: 1,
};

/// `replicas/NAME/changed.json`: what a demoted site changed since a failover.
pub const CHANGED: MetaKind = MetaKind {
    name: "changed",
    version: 1,
};

/// Writes `value` as a metadata file of `kind`: enveloped, atomically, keeping the copy
/// it replaces as `PATH.prev` (read when the file itself is damaged or gone).
pub fn store<T: Serialize>(dir: &Path, path: &Path, kind: MetaKind, value: &T) -> Result<(), AgentError> {
    let body = serde_json::to_vec_pretty(value).expect("metadata serialises");
    let bytes = envelope(kind, &body);
    let tmp = with_suffix(path, ".tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        match std::fs::rename(path, with_suffix(path, ".prev")) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| AgentError::io("cannot write", path, e))
}

/// A metadata file as read.
#[derive(Debug)]
pub struct Fetched<T> {
    pub value: T,
    /// The file was damaged or missing and its previous copy was read: why, for the log and
    /// the operator.
    pub fell_back: Option<String>,
}

/// Reads a metadata file of `kind`: `None` if neither it nor its previous copy exists. A
/// damaged file falls back to its previous copy; with both damaged the error names the
/// file, what is wrong and what to do.
pub fn fetch<T: DeserializeOwned>(path: &Path, kind: MetaKind) -> Result<Option<Fetched<T>>, AgentError> {
    let parse = |p: &Path| -> Result<Option<T>, String> {
        let bytes = match std::fs::read(p) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        let (_, body) = open_envelope(kind, &bytes)?;
        serde_json::from_slice(body).map(Some).map_err(|e| e.to_string())
    };
    let prev = with_suffix(path, ".prev");
    match parse(path) {
        Ok(Some(value)) => Ok(Some(Fetched { value, fell_back: None })),
        first => {
            let why = match &first {
                Err(w) => w.clone(),
                _ => "missing".to_string(),
            };
            match parse(&prev) {
                Ok(Some(value)) => Ok(Some(Fetched {
                    value,
                    fell_back: Some(format!(
                        "{} is {why}; its previous copy {} was read instead (the next change rewrites it)",
                        path.display(),
                        prev.display()
                    )),
                })),
                Ok(None) if first.is_ok() => Ok(None),
                Ok(None) => Err(AgentError::StateCorrupt {
                    path: path.into(),
                    why: format!("{why}, and there is no previous copy"),
                }),
                Err(prev_why) => Err(AgentError::StateCorrupt {
                    path: path.into(),
                    why: format!("{why}; its previous copy {} is {prev_why} too", prev.display()),
                }),
            }
        }
    }
}

/// Problems with metadata files found since the agent started (damaged files, copies fallen
/// back to), for the log and `ferry status`; the newest [`PROBLEMS_KEPT`].
static PROBLEMS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
pub const PROBLEMS_KEPT: usize = 64;

/// Records a metadata problem (and logs it).
pub fn note_problem(message: String) {
    tracing::error!("{message}");
    let mut p = PROBLEMS.lock().unwrap_or_else(|e| e.into_inner());
    if p.len() == PROBLEMS_KEPT {
        p.remove(0);
    }
    p.push(message);
}

pub fn problems() -> Vec<String> {
    PROBLEMS.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// [`fetch`], with a fall-back to the previous copy noted as a problem.
pub fn fetch_noting<T: DeserializeOwned>(path: &Path, kind: MetaKind) -> Result<Option<T>, AgentError> {
    Ok(fetch(path, kind)?.map(|f| {
        if let Some(why) = f.fell_back {
            note_problem(why);
        }
        f.value
    }))
}

/// A VPG's lineage: its identity, 128 random bits made at creation, kept by both sites.
/// Written as 32 hex digits; all zero means not known (made before lineages were).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, utoipa::ToSchema)]
#[schema(value_type = String, pattern = "^[0-9a-f]{32}$")]
pub struct Lineage(pub [u8; 16]);

impl Lineage {
    /// A new random lineage.
    pub fn new() -> Result<Lineage, AgentError> {
        ferry_proto::pairing::random_id()
            .map(Lineage)
            .map_err(|e| AgentError::Refused(format!("cannot make a lineage id: {e}")))
    }

    pub fn is_known(&self) -> bool {
        self.0 != [0; 16]
    }
}

impl std::fmt::Display for Lineage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl std::str::FromStr for Lineage {
    type Err = String;
    fn from_str(s: &str) -> Result<Lineage, String> {
        let bad = || format!("{s:?} is not a lineage id (32 hex digits)");
        if s.len() != 32 || !s.is_ascii() {
            return Err(bad());
        }
        let mut out = [0u8; 16];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Lineage(out))
    }
}

impl Serialize for Lineage {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Lineage {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Lineage, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption_is_reported() {
        let dir = std::env::temp_dir().join(format!("ferry-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(load(&dir).unwrap().volumes.is_empty());
        let reg = Registry {
            version: STATE_FORMAT_VERSION,
            volumes: vec![VolumeRecord {
                name: "a".into(),
                datastore: "default".into(),
                path: "/x".into(),
                size_bytes: 4096,
                direct: false,
                read_only: false,
                adopted: false,
            }],
        };
        save(&dir, &reg).unwrap();
        assert_eq!(load(&dir).unwrap(), reg);
        std::fs::write(registry_path(&dir), "{not json").unwrap();
        assert!(matches!(load(&dir), Err(AgentError::StateCorrupt { .. })));
        std::fs::write(registry_path(&dir), r#"{"version":9,"volumes":[]}"#).unwrap();
        let err = load(&dir).unwrap_err().to_string();
        assert!(err.contains("version 9"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_lineage_is_written_as_32_hex_digits_and_read_back() {
        let l = Lineage([0xab; 16]);
        let text = serde_json::to_string(&l).unwrap();
        assert_eq!(text, format!("\"{}\"", "ab".repeat(16)));
        assert_eq!(serde_json::from_str::<Lineage>(&text).unwrap(), l);
        for bad in ["", "ab", &"zz".repeat(16), &"é".repeat(16)] {
            assert!(bad.parse::<Lineage>().is_err(), "{bad:?}");
        }
        assert!(!Lineage::default().is_known());
        assert_ne!(Lineage::new().unwrap(), Lineage::new().unwrap());
    }

    fn tmp(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("ferry-meta-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// The envelope, byte for byte: a registry with no volumes (its CRC-32C worked out
    /// apart, by a bitwise Castagnoli CRC in Python).
    #[test]
    fn golden_envelope_v1() {
        let reg = Registry {
            version: 1,
            volumes: vec![],
        };
        let body = serde_json::to_vec_pretty(&reg).unwrap();
        let bytes = envelope(VOLUMES, &body);
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert_eq!(
            text,
            "ferry-meta volumes 1 crc32c=536fb3ac bytes=35\n{\n  \"version\": 1,\n  \"volumes\": []\n}"
        );
        assert_eq!(open_envelope(VOLUMES, &bytes), Ok((1, &body[..])));
    }

    #[test]
    fn a_damaged_envelope_says_what_is_wrong() {
        let good = envelope(VPGS, b"{}");
        let why = |b: &[u8], k| open_envelope(k, b).unwrap_err();
        assert!(why(&good, VOLUMES).contains("holds \"vpgs\" metadata"));
        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() = b']';
        assert!(why(&flipped, VPGS).contains("checksum mismatch"));
        assert!(why(&good[..good.len() - 1], VPGS).contains("torn or cut"));
        let newer = envelope(
            MetaKind {
                name: "vpgs",
                version: 9,
            },
            b"{}",
        );
        assert!(why(&newer, VPGS).contains("newer agent"));
        assert!(why(b"", VPGS).contains("no envelope line"));
        assert!(why(b"garbage\n{}", VPGS).contains("malformed envelope line"));
        // A file from before the envelope is read as version 0.
        assert_eq!(open_envelope(VPGS, b"{\"a\":1}"), Ok((0, &b"{\"a\":1}"[..])));
    }

    #[test]
    fn a_damaged_file_falls_back_to_its_previous_copy_and_both_damaged_is_named() {
        let d = tmp("fallback");
        let p = d.join("volumes.json");
        let reg = |n: &str| Registry {
            version: 1,
            volumes: vec![VolumeRecord {
                name: n.into(),
                datastore: "ds".into(),
                path: "/x".into(),
                size_bytes: 1,
                direct: false,
                read_only: false,
                adopted: false,
            }],
        };
        assert!(fetch::<Registry>(&p, VOLUMES).unwrap().is_none(), "nothing yet");
        store(&d, &p, VOLUMES, &reg("a")).unwrap();
        store(&d, &p, VOLUMES, &reg("b")).unwrap();
        let f = fetch::<Registry>(&p, VOLUMES).unwrap().unwrap();
        assert_eq!((f.value, f.fell_back), (reg("b"), None));
        // Damage the file: the previous copy is read, and the fall-back says so.
        let mut bytes = std::fs::read(&p).unwrap();
        let n = bytes.len();
        bytes[n - 3] ^= 1;
        std::fs::write(&p, &bytes).unwrap();
        let f = fetch::<Registry>(&p, VOLUMES).unwrap().unwrap();
        assert_eq!(f.value, reg("a"));
        assert!(f.fell_back.unwrap().contains("checksum mismatch"));
        // Gone altogether (a crash between the two renames of a store): the previous copy.
        std::fs::remove_file(&p).unwrap();
        let f = fetch::<Registry>(&p, VOLUMES).unwrap().unwrap();
        assert_eq!(f.value, reg("a"));
        // Both damaged: the error names the file, both reasons and what to do.
        std::fs::write(&p, b"ferry-meta volumes 1 crc32c=00000000 bytes=2\n{}").unwrap();
        std::fs::write(d.join("volumes.json.prev"), b"").unwrap();
        let e = fetch::<Registry>(&p, VOLUMES).unwrap_err().to_string();
        assert!(e.contains("volumes.json is unreadable: checksum mismatch"), "{e}");
        assert!(e.contains("previous copy") && e.contains("no envelope line"), "{e}");
        assert!(e.contains("Restore it from a backup"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
