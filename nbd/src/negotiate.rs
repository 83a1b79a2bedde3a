//! Option haggling as a state machine without I/O: fed one decoded option at a time, it
//! appends the option replies to an output buffer and says whether to go on, close, or
//! enter transmission with a chosen export.
//!
//! ```text
//! option reply (server → client), 20 bytes + data:
//!  0                   8           12            16           20
//!  +-------------------+-----------+-------------+------------+------
//!  | 0x3e889045565a9   | option u32| reply type  | length u32 | data
//!  +-------------------+-----------+-------------+------------+------
//! ```

use std::sync::Arc;

use crate::export::{Catalog, Export, ExportInfo};
use crate::option::{ClientFlags, ClientOption, OptionError, decode_option};
use crate::wire::{self, InfoCode, OptionCode, OptionReply, tflags};

/// Reply header format for the transmission phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyMode {
    Simple,
    Structured,
    Extended,
}

/// Everything the transmission phase needs, fixed at the end of negotiation.
#[derive(Debug)]
pub struct Session<E> {
    pub export: Arc<E>,
    pub name: String,
    pub mode: ReplyMode,
    /// `base:allocation` was selected (context id [`wire::BASE_ALLOCATION_ID`]).
    pub base_allocation: bool,
    pub transmission_flags: u16,
    pub payload_bytes_max: u32,
}

/// What the shell does after an option.
#[derive(Debug)]
pub enum Step<E> {
    Continue,
    /// Send the output, then close (ABORT, or EXPORT_NAME of an unknown export).
    Close,
    Transmission(Session<E>),
}

/// Negotiation state for one connection.
#[derive(Debug)]
pub struct Negotiation {
    no_zeroes: bool,
    structured: bool,
    extended: bool,
    /// Export name for which `base:allocation` was selected by SET_META_CONTEXT.
    meta_for: Option<String>,
    payload_bytes_max: u32,
}

/// The 18 bytes the server sends first.
pub fn greeting() -> [u8; 18] {
    let mut g = [0u8; 18];
    g[0..8].copy_from_slice(&wire::NBD_MAGIC.to_be_bytes());
    g[8..16].copy_from_slice(&wire::IHAVEOPT.to_be_bytes());
    g[16..18].copy_from_slice(&(wire::FLAG_FIXED_NEWSTYLE | wire::FLAG_NO_ZEROES).to_be_bytes());
    g
}

/// Appends one option reply.
pub fn option_reply(out: &mut Vec<u8>, option: OptionCode, reply: OptionReply, data: &[u8]) {
    out.extend_from_slice(&wire::OPTION_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.0.to_be_bytes());
    out.extend_from_slice(&reply.0.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
}

fn error_reply(out: &mut Vec<u8>, option: OptionCode, reply: OptionReply, message: &str) {
    option_reply(out, option, reply, message.as_bytes());
}

impl Negotiation {
    pub fn new(flags: ClientFlags, payload_bytes_max: u32) -> Self {
        Self {
            no_zeroes: flags.no_zeroes,
            structured: false,
            extended: false,
            meta_for: None,
            payload_bytes_max,
        }
    }

    fn mode(&self) -> ReplyMode {
        if self.extended {
            ReplyMode::Extended
        } else if self.structured {
            ReplyMode::Structured
        } else {
            ReplyMode::Simple
        }
    }

    /// Transmission flags for an export under what has been negotiated so far.
    pub fn transmission_flags(&self, info: &ExportInfo) -> u16 {
        let mut f = tflags::HAS_FLAGS | tflags::SEND_FLUSH | tflags::SEND_FUA | tflags::SEND_CACHE
            // Every connection to an export shares one file; a FLUSH on any of them makes every
            // completed write durable, which is what CAN_MULTI_CONN promises.
            | tflags::CAN_MULTI_CONN;
        if info.read_only {
            f |= tflags::READ_ONLY;
        } else {
            f |= tflags::SEND_WRITE_ZEROES;
            if info.can_trim {
                f |= tflags::SEND_TRIM;
            }
            if info.can_fast_zero {
                f |= tflags::SEND_FAST_ZERO;
            }
        }
        if self.structured || self.extended {
            f |= tflags::SEND_DF;
        }
        if info.rotational {
            f |= tflags::ROTATIONAL;
        }
        f
    }

    fn session<E: Export>(&self, export: Arc<E>, name: &str) -> Session<E> {
        let transmission_flags = self.transmission_flags(export.info());
        Session {
            name: name.to_string(),
            mode: self.mode(),
            base_allocation: self.meta_for.as_deref() == Some(name),
            transmission_flags,
            payload_bytes_max: self.payload_bytes_max,
            export,
        }
    }

    /// Handles one option whose header and data have been read.
    pub fn on_option<C: Catalog>(
        &mut self,
        code: OptionCode,
        data: &[u8],
        catalog: &C,
        out: &mut Vec<u8>,
    ) -> Step<C::Export> {
        let option = match decode_option(code, data) {
            Ok(o) => o,
            Err(e @ OptionError::Malformed { .. }) => {
                error_reply(out, code, OptionReply::ERR_INVALID, &e.to_string());
                return Step::Continue;
            }
            Err(e) => unreachable!("decode_option returns only Malformed, got {e}"),
        };
        match option {
            ClientOption::Abort => {
                option_reply(out, code, OptionReply::ACK, &[]);
                Step::Close
            }
            ClientOption::ExportName(name) => {
                if self.extended {
                    // A client that negotiated extended headers must use GO; all we can do is close.
                    return Step::Close;
                }
                let Some(export) = catalog.open(name) else {
                    return Step::Close;
                };
                let session = self.session(export, name);
                out.extend_from_slice(&session.export.info().size_bytes.to_be_bytes());
                out.extend_from_slice(&session.transmission_flags.to_be_bytes());
                if !self.no_zeroes {
                    out.extend_from_slice(&[0u8; 124]);
                }
                Step::Transmission(session)
            }
            ClientOption::List => {
                for (name, description) in catalog.list() {
                    let mut d = (name.len() as u32).to_be_bytes().to_vec();
                    d.extend_from_slice(name.as_bytes());
                    d.extend_from_slice(&description.as_bytes()[..description.len().min(wire::STRING_BYTES_MAX)]);
                    option_reply(out, code, OptionReply::SERVER, &d);
                }
                option_reply(out, code, OptionReply::ACK, &[]);
                Step::Continue
            }
            ClientOption::StructuredReply => {
                if self.extended {
                    error_reply(
                        out,
                        code,
                        OptionReply::ERR_EXT_HEADER_REQD,
                        "extended headers already negotiated",
                    );
                } else {
                    self.structured = true;
                    option_reply(out, code, OptionReply::ACK, &[]);
                }
                Step::Continue
            }
            ClientOption::ExtendedHeaders => {
                self.extended = true;
                option_reply(out, code, OptionReply::ACK, &[]);
                Step::Continue
            }
            ClientOption::Info { name, requests } | ClientOption::Go { name, requests } => {
                let Some(export) = catalog.open(name) else {
                    error_reply(
                        out,
                        code,
                        OptionReply::ERR_UNKNOWN,
                        &format!("no export named {name:?}; NBD_OPT_LIST shows the exports"),
                    );
                    return Step::Continue;
                };
                self.info_replies(out, code, name, &export, &requests);
                option_reply(out, code, OptionReply::ACK, &[]);
                if code == OptionCode::GO {
                    Step::Transmission(self.session(export, name))
                } else {
                    Step::Continue
                }
            }
            ClientOption::ListMetaContext { name, queries } | ClientOption::SetMetaContext { name, queries } => {
                let set = code == OptionCode::SET_META_CONTEXT;
                if !self.structured && !self.extended {
                    error_reply(
                        out,
                        code,
                        OptionReply::ERR_INVALID,
                        "negotiate structured replies before metadata contexts",
                    );
                    return Step::Continue;
                }
                if catalog.open(name).is_none() {
                    error_reply(
                        out,
                        code,
                        OptionReply::ERR_UNKNOWN,
                        &format!("no export named {name:?}"),
                    );
                    return Step::Continue;
                }
                // An empty LIST query list means "all contexts"; "base:" names the namespace.
                let wanted = if queries.is_empty() {
                    !set
                } else {
                    queries
                        .iter()
                        .any(|q| *q == wire::BASE_ALLOCATION || (!set && *q == "base:"))
                };
                if set {
                    self.meta_for = wanted.then(|| name.to_string());
                }
                if wanted {
                    let id = if set { wire::BASE_ALLOCATION_ID } else { 0 };
                    let mut d = id.to_be_bytes().to_vec();
                    d.extend_from_slice(wire::BASE_ALLOCATION.as_bytes());
                    option_reply(out, code, OptionReply::META_CONTEXT, &d);
                }
                option_reply(out, code, OptionReply::ACK, &[]);
                Step::Continue
            }
            ClientOption::Unsupported(c) => {
                error_reply(
                    out,
                    code,
                    OptionReply::ERR_UNSUP,
                    &format!("option {c:?} is not supported by ferry"),
                );
                Step::Continue
            }
        }
    }

    fn info_replies<E: Export>(
        &self,
        out: &mut Vec<u8>,
        code: OptionCode,
        name: &str,
        export: &Arc<E>,
        requests: &[InfoCode],
    ) {
        let info = export.info();
        let mut d = InfoCode::EXPORT.0.to_be_bytes().to_vec();
        d.extend_from_slice(&info.size_bytes.to_be_bytes());
        d.extend_from_slice(&self.transmission_flags(info).to_be_bytes());
        option_reply(out, code, OptionReply::INFO, &d);

        // Block sizes are always sent: a client that did not ask is still told the rules
        // that unaligned requests will be held to.
        let mut d = InfoCode::BLOCK_SIZE.0.to_be_bytes().to_vec();
        d.extend_from_slice(&info.block_bytes_min.to_be_bytes());
        d.extend_from_slice(&info.block_bytes_preferred.to_be_bytes());
        d.extend_from_slice(&self.payload_bytes_max.to_be_bytes());
        option_reply(out, code, OptionReply::INFO, &d);

        for r in requests {
            match *r {
                InfoCode::NAME => {
                    let mut d = InfoCode::NAME.0.to_be_bytes().to_vec();
                    d.extend_from_slice(name.as_bytes());
                    option_reply(out, code, OptionReply::INFO, &d);
                }
                InfoCode::DESCRIPTION if !info.description.is_empty() => {
                    let mut d = InfoCode::DESCRIPTION.0.to_be_bytes().to_vec();
                    let desc = info.description.as_bytes();
                    d.extend_from_slice(&desc[..desc.len().min(wire::STRING_BYTES_MAX)]);
                    option_reply(out, code, OptionReply::INFO, &d);
                }
                // EXPORT and BLOCK_SIZE were sent; unknown requests are ignored, as the spec says.
                _ => {}
            }
        }
    }
}
