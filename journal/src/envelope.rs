//! The envelope of the agents' metadata files (registries, state, replica records): one
//! text line naming the kind of file, its format version, the body's CRC-32C and length,
//! then the body (JSON). A torn, cut, damaged or foreign file is told apart from a whole
//! one before its body is parsed. Pure functions on bytes (the agent reads and writes the
//! files); fuzzed as `meta_envelope`.

/// A kind of recovery-critical metadata file and the version this agent writes (and the
/// newest it reads).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetaKind {
    pub name: &'static str,
    pub version: u32,
}

/// The envelope's first line starts with this.
pub const META_MAGIC: &str = "ferry-meta";

/// Wraps a JSON body in the envelope: one line naming the kind, its version, the body's
/// CRC-32C and length, then the body.
///
/// ```text
/// ferry-meta volumes 1 crc32c=297bd0aa bytes=2
/// {}
/// ```
pub fn envelope(kind: MetaKind, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "{META_MAGIC} {} {} crc32c={:08x} bytes={}\n",
        kind.name,
        kind.version,
        crc32c::crc32c(body),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// Takes the envelope off: the version and the body, or why the bytes are not a whole
/// file of `kind`. A bare JSON file (written before the envelope) is version 0.
pub fn open_envelope(kind: MetaKind, bytes: &[u8]) -> Result<(u32, &[u8]), String> {
    if bytes.first() == Some(&b'{') {
        return Ok((0, bytes));
    }
    let nl = bytes
        .iter()
        .position(|&b| b == b'\n')
        .filter(|&n| n <= 200)
        .ok_or("no envelope line (truncated, or not a ferry metadata file)")?;
    let line = std::str::from_utf8(&bytes[..nl]).map_err(|_| "the envelope line is not text")?;
    let body = &bytes[nl + 1..];
    let f: Vec<&str> = line.split(' ').collect();
    let [magic, name, version, crc, len] = f[..] else {
        return Err(format!("malformed envelope line {line:?}"));
    };
    if magic != META_MAGIC {
        return Err(format!("not a ferry metadata file (starts {magic:?})"));
    }
    if name != kind.name {
        return Err(format!("holds {name:?} metadata, not {:?}", kind.name));
    }
    // Version 0 is the bare file of older agents; no envelope says 0.
    let version: u32 = version
        .parse()
        .ok()
        .filter(|&v| v > 0)
        .ok_or_else(|| format!("malformed version {version:?}"))?;
    if version > kind.version {
        return Err(format!(
            "written by a newer agent (format {version}; this one reads up to {}): upgrade this agent",
            kind.version
        ));
    }
    let crc = crc
        .strip_prefix("crc32c=")
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .ok_or_else(|| format!("malformed checksum {crc:?}"))?;
    let len: usize = len
        .strip_prefix("bytes=")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("malformed length {len:?}"))?;
    if body.len() != len {
        return Err(format!(
            "holds {} bytes after the envelope, not {len} (torn or cut)",
            body.len()
        ));
    }
    if crc32c::crc32c(body) != crc {
        return Err("checksum mismatch: the file is damaged".into());
    }
    Ok((version, body))
}
