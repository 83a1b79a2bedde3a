//! NBD protocol server (fixed newstyle, structured replies, extended headers,
//! `base:allocation`), in front of any [`Catalog`] of exports. Knows nothing of replication.
//!
//! The protocol core ([`option`], [`negotiate`], [`request`], [`reply`]) does no I/O and is
//! fuzzable; [`server`] is the tokio shell that feeds it from a socket.

pub mod export;
pub mod negotiate;
pub mod option;
pub mod reply;
pub mod request;
pub mod server;
pub mod stats;
pub mod wire;

pub use export::{Catalog, Export, ExportError, ExportInfo, ExportResult, Extent, IoBuffer, ZeroMode};
pub use server::{Connection, ConnectionError, ReadNow, ServerConfig, serve_admitted, serve_connection};
pub use stats::OpStats;
