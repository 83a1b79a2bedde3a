//! The ferry agent: volumes on datastores served over NBD, the control API, and the
//! `ferry` command line that drives them.

pub mod activation;
pub mod admission;
pub mod checkpoint;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod control;
pub mod daemon;
pub mod error;
pub mod events;
pub mod exports;
pub mod io;
pub mod journal_tool;
pub mod link;
pub mod meta;
pub mod receiver;
pub mod replica;
pub mod shipper;
pub mod size;
pub mod volume;
pub mod vpg;

pub use config::AgentConfig;
pub use daemon::run;
pub use error::AgentError;
