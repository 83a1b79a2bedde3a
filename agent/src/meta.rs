//! The agent's metadata files and the names in them. The volume registry is `volumes.json`,
//! replaced atomically
//! (write a temporary file, fsync it, rename it over the old one, fsync the directory), so a
//! crash at any point leaves either the old or the new registry, never a torn one.

use std::io::Write;
use std::path::{Path, PathBuf};

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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub name: String,
    pub datastore: String,
    /// The file or block device holding the volume's bytes.
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

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Registry {
                version: STATE_FORMAT_VERSION,
                volumes: vec![],
            });
        }
        Err(e) => return Err(AgentError::io("cannot read", path, e)),
    };
    let reg: Registry = serde_json::from_str(&text).map_err(|e| AgentError::StateCorrupt {
        path: path.clone(),
        why: e.to_string(),
    })?;
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
    let text = serde_json::to_string_pretty(reg).expect("registry serialises");
    write_atomic(state_dir, &registry_path(state_dir), text.as_bytes())
}

/// Replaces `path` (in `dir`) with `bytes`: temporary file, fsync, rename, fsync of `dir`.
pub fn write_atomic(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), AgentError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| AgentError::io("cannot write", path, e))
}

/// A VPG's lineage: its identity, 128 random bits made at creation, kept by both sites.
/// Written as 32 hex digits; all zero means not known (made before lineages were).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
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
}
