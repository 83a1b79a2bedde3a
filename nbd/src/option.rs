//! Decoders for the option-haggling phase: the client's flags, each option's 16-byte header
//! and its data. One decoder per wire type; trailing bytes are rejected.
//!
//! ```text
//! option header (client → server), 16 bytes, big-endian:
//!  0               8           12          16
//!  +---------------+-----------+-----------+----------------
//!  | IHAVEOPT (u64)| option u32| length u32| data (length bytes)
//!  +---------------+-----------+-----------+----------------
//! INFO / GO data:          name_len u32 | name | n u16 | n × info code u16
//! LIST/SET_META_CONTEXT:   name_len u32 | name | n u32 | n × (len u32 | query)
//! ```

use crate::wire::{self, InfoCode, OptionCode};

/// Largest option data we read into memory; larger ones are skipped and refused.
pub const OPTION_DATA_BYTES_MAX: u32 = 64 * 1024;
/// Most INFO requests or context queries we accept in one option.
pub const QUERIES_MAX: usize = 128;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionHeader {
    pub code: OptionCode,
    pub length: u32,
}

/// Why the client's bytes are not a valid option exchange.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    /// A framing error: the connection cannot continue.
    #[error("client sent bad option magic {0:#018x}")]
    BadMagic(u64),
    #[error("client flags {0:#x} include unknown bits or lack FIXED_NEWSTYLE")]
    BadClientFlags(u32),
    /// The option's data is malformed; the option gets ERR_INVALID and haggling goes on.
    #[error("malformed {code:?} option: {why}")]
    Malformed { code: OptionCode, why: &'static str },
}

/// Client flags the server accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientFlags {
    pub no_zeroes: bool,
}

pub fn decode_client_flags(bytes: [u8; 4]) -> Result<ClientFlags, OptionError> {
    let flags = u32::from_be_bytes(bytes);
    let known = wire::CLIENT_FIXED_NEWSTYLE | wire::CLIENT_NO_ZEROES;
    if flags & !known != 0 || flags & wire::CLIENT_FIXED_NEWSTYLE == 0 {
        return Err(OptionError::BadClientFlags(flags));
    }
    Ok(ClientFlags {
        no_zeroes: flags & wire::CLIENT_NO_ZEROES != 0,
    })
}

pub fn decode_option_header(bytes: &[u8; wire::OPTION_HEADER_BYTES]) -> Result<OptionHeader, OptionError> {
    let magic = u64::from_be_bytes(bytes[0..8].try_into().expect("8 bytes"));
    if magic != wire::IHAVEOPT {
        return Err(OptionError::BadMagic(magic));
    }
    Ok(OptionHeader {
        code: OptionCode(u32::from_be_bytes(bytes[8..12].try_into().expect("4 bytes"))),
        length: u32::from_be_bytes(bytes[12..16].try_into().expect("4 bytes")),
    })
}

/// A decoded option. Strings borrow from the option's data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientOption<'a> {
    ExportName(&'a str),
    Abort,
    List,
    Info {
        name: &'a str,
        requests: Vec<InfoCode>,
    },
    Go {
        name: &'a str,
        requests: Vec<InfoCode>,
    },
    StructuredReply,
    ExtendedHeaders,
    ListMetaContext {
        name: &'a str,
        queries: Vec<&'a str>,
    },
    SetMetaContext {
        name: &'a str,
        queries: Vec<&'a str>,
    },
    /// Any option we do not implement (STARTTLS, PEEK_EXPORT, unknown codes).
    Unsupported(OptionCode),
}

struct Cursor<'a> {
    code: OptionCode,
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn err(&self, why: &'static str) -> OptionError {
        OptionError::Malformed { code: self.code, why }
    }
    fn take(&mut self, n: usize, why: &'static str) -> Result<&'a [u8], OptionError> {
        if self.rest.len() < n {
            return Err(self.err(why));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }
    fn u16(&mut self) -> Result<u16, OptionError> {
        Ok(u16::from_be_bytes(
            self.take(2, "truncated 16-bit field")?.try_into().expect("2"),
        ))
    }
    fn u32(&mut self) -> Result<u32, OptionError> {
        Ok(u32::from_be_bytes(
            self.take(4, "truncated 32-bit field")?.try_into().expect("4"),
        ))
    }
    fn string(&mut self, len: usize) -> Result<&'a str, OptionError> {
        if len > wire::STRING_BYTES_MAX {
            return Err(self.err("string longer than 4096 bytes"));
        }
        let raw = self.take(len, "string runs past the option's data")?;
        std::str::from_utf8(raw).map_err(|_| self.err("string is not UTF-8"))
    }
    fn sized_string(&mut self) -> Result<&'a str, OptionError> {
        let len = self.u32()? as usize;
        self.string(len)
    }
    fn end(&self) -> Result<(), OptionError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(self.err("trailing bytes after the option's fields"))
        }
    }
}

/// Decodes one option's data.
pub fn decode_option(code: OptionCode, data: &[u8]) -> Result<ClientOption<'_>, OptionError> {
    let mut c = Cursor { code, rest: data };
    let option = match code {
        OptionCode::EXPORT_NAME => {
            let name = c.string(data.len())?;
            ClientOption::ExportName(name)
        }
        // The spec asks servers to ignore data sent with ABORT.
        OptionCode::ABORT => return Ok(ClientOption::Abort),
        OptionCode::LIST => ClientOption::List,
        OptionCode::STRUCTURED_REPLY => ClientOption::StructuredReply,
        OptionCode::EXTENDED_HEADERS => ClientOption::ExtendedHeaders,
        OptionCode::INFO | OptionCode::GO => {
            let name = c.sized_string()?;
            let n = c.u16()? as usize;
            if n > QUERIES_MAX {
                return Err(c.err("too many information requests"));
            }
            let mut requests = Vec::with_capacity(n);
            for _ in 0..n {
                requests.push(InfoCode(c.u16()?));
            }
            if code == OptionCode::INFO {
                ClientOption::Info { name, requests }
            } else {
                ClientOption::Go { name, requests }
            }
        }
        OptionCode::LIST_META_CONTEXT | OptionCode::SET_META_CONTEXT => {
            let name = c.sized_string()?;
            let n = c.u32()? as usize;
            if n > QUERIES_MAX {
                return Err(c.err("too many metadata context queries"));
            }
            let mut queries = Vec::with_capacity(n);
            for _ in 0..n {
                queries.push(c.sized_string()?);
            }
            if code == OptionCode::LIST_META_CONTEXT {
                ClientOption::ListMetaContext { name, queries }
            } else {
                ClientOption::SetMetaContext { name, queries }
            }
        }
        other => return Ok(ClientOption::Unsupported(other)),
    };
    c.end()?;
    Ok(option)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn go(name: &str, infos: &[u16]) -> Vec<u8> {
        let mut v = (name.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(name.as_bytes());
        v.extend_from_slice(&(infos.len() as u16).to_be_bytes());
        for i in infos {
            v.extend_from_slice(&i.to_be_bytes());
        }
        v
    }

    #[test]
    fn go_decodes_name_and_requests() {
        let data = go("disk0", &[3, 1]);
        let opt = decode_option(OptionCode::GO, &data).unwrap();
        assert_eq!(
            opt,
            ClientOption::Go {
                name: "disk0",
                requests: vec![InfoCode::BLOCK_SIZE, InfoCode::NAME]
            }
        );
    }

    #[test]
    fn go_rejects_truncated_and_trailing() {
        let data = go("disk0", &[3]);
        assert!(matches!(
            decode_option(OptionCode::GO, &data[..data.len() - 1]),
            Err(OptionError::Malformed { .. })
        ));
        let mut long = data.clone();
        long.push(0);
        assert!(matches!(
            decode_option(OptionCode::GO, &long),
            Err(OptionError::Malformed { .. })
        ));
        // Name length pointing past the end.
        let mut bad = data;
        bad[3] = 200;
        assert!(decode_option(OptionCode::GO, &bad).is_err());
    }

    #[test]
    fn no_data_options_reject_data_but_abort_ignores_it() {
        assert!(decode_option(OptionCode::STRUCTURED_REPLY, &[1]).is_err());
        assert!(decode_option(OptionCode::LIST, &[1]).is_err());
        assert!(decode_option(OptionCode::EXTENDED_HEADERS, &[0]).is_err());
        assert_eq!(decode_option(OptionCode::ABORT, &[1, 2]).unwrap(), ClientOption::Abort);
    }

    #[test]
    fn meta_context_queries_decode() {
        let mut v = 1u32.to_be_bytes().to_vec();
        v.push(b'x');
        v.extend_from_slice(&1u32.to_be_bytes());
        v.extend_from_slice(&15u32.to_be_bytes());
        v.extend_from_slice(b"base:allocation");
        let opt = decode_option(OptionCode::SET_META_CONTEXT, &v).unwrap();
        assert_eq!(
            opt,
            ClientOption::SetMetaContext {
                name: "x",
                queries: vec!["base:allocation"]
            }
        );
    }

    #[test]
    fn unknown_option_survives_with_its_code() {
        assert_eq!(
            decode_option(OptionCode(0x4242), &[1, 2, 3]).unwrap(),
            ClientOption::Unsupported(OptionCode(0x4242))
        );
    }

    #[test]
    fn header_magic_checked_and_client_flags() {
        let mut h = [0u8; 16];
        assert_eq!(decode_option_header(&h), Err(OptionError::BadMagic(0)));
        h[..8].copy_from_slice(&wire::IHAVEOPT.to_be_bytes());
        h[11] = 7;
        h[15] = 9;
        assert_eq!(
            decode_option_header(&h).unwrap(),
            OptionHeader {
                code: OptionCode::GO,
                length: 9
            }
        );
        assert!(decode_client_flags([0, 0, 0, 0]).is_err());
        assert!(decode_client_flags([0, 0, 0, 7]).is_err());
        assert_eq!(
            decode_client_flags([0, 0, 0, 3]).unwrap(),
            ClientFlags { no_zeroes: true }
        );
    }
}
