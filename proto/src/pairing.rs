//! Pairing keys: 32 random bytes that two agents share; the handshake's pre-shared key.
//!
//! On disk: 64 lowercase hex digits and a newline (easy to copy between hosts), in a file
//! of mode 0600. A key file others can read is refused: whoever reads it can replicate to
//! or from the agent.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use ring::rand::{SecureRandom, SystemRandom};

pub const KEY_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum PairingError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{0} exists; pass --force to replace it (the peer then needs the new key too)")]
    Exists(String),
    #[error("{path} is readable by others (mode {mode:o}): run `chmod 600 {path}`")]
    Exposed { path: String, mode: u32 },
    #[error("{0} is not a pairing key: it must hold 64 hex digits (made by `ferry pair`)")]
    Malformed(String),
    #[error("the system's random source failed")]
    Random,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PairingError + '_ {
    move |source| PairingError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// A key's fingerprint, to name it without showing it: the first 8 bytes of SHA-256 over a
/// domain tag and the key, in hex (16 digits).
pub fn fingerprint(key: &[u8; KEY_BYTES]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"ferry pairing key fingerprint v1\0");
    ctx.update(key);
    ctx.finish().as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// 16 random bytes (a VPG's lineage id).
pub fn random_id() -> Result<[u8; 16], PairingError> {
    let mut id = [0u8; 16];
    SystemRandom::new().fill(&mut id).map_err(|_| PairingError::Random)?;
    Ok(id)
}

/// A new random key.
pub fn new_key() -> Result<[u8; KEY_BYTES], PairingError> {
    let mut k = [0u8; KEY_BYTES];
    SystemRandom::new().fill(&mut k).map_err(|_| PairingError::Random)?;
    Ok(k)
}

/// Writes `key` to `path` with mode 0600; an existing file is kept unless `replace`.
pub fn write_key(path: &Path, key: &[u8; KEY_BYTES], replace: bool) -> Result<(), PairingError> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).mode(0o600);
    if replace {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    let mut f = opts.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            PairingError::Exists(path.display().to_string())
        } else {
            io(path)(e)
        }
    })?;
    // A replaced file keeps its old mode: set it.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(io(path))?;
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    f.write_all(format!("{hex}\n").as_bytes()).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

/// Reads a key file written by [`write_key`].
pub fn read_key(path: &Path) -> Result<[u8; KEY_BYTES], PairingError> {
    let shown = path.display().to_string();
    let mode = std::fs::metadata(path).map_err(io(path))?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(PairingError::Exposed { path: shown, mode });
    }
    let text = std::fs::read_to_string(path).map_err(|_| PairingError::Malformed(shown.clone()))?;
    let hex = text.trim();
    if hex.len() != 2 * KEY_BYTES || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Err(PairingError::Malformed(shown));
    }
    let mut key = [0u8; KEY_BYTES];
    for (i, b) in key.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| PairingError::Malformed(shown.clone()))?;
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_private_and_refuse_to_be_exposed_or_overwritten() {
        let dir = std::env::temp_dir().join(format!("ferry-pairing-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pair.key");
        let key = new_key().unwrap();
        assert_ne!(key, new_key().unwrap(), "random");
        write_key(&path, &key, false).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len(), 65);
        assert_eq!(read_key(&path).unwrap(), key);

        assert!(matches!(write_key(&path, &key, false), Err(PairingError::Exists(_))));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_key(&path).unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
        // Replacing sets the mode again.
        let other = new_key().unwrap();
        write_key(&path, &other, true).unwrap();
        assert_eq!(read_key(&path).unwrap(), other);

        std::fs::write(&path, "not hex\n").unwrap();
        assert!(matches!(read_key(&path), Err(PairingError::Malformed(_))));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
