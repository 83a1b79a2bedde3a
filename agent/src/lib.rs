//! The ferry agent: volumes on datastores served over NBD, protected in VPGs and replicated
//! to a recovery site, and the control API that drives it.

pub mod activation;
pub mod admission;
pub mod api;
pub mod catalog;
pub mod checkpoint;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod error;
pub mod events;
pub mod io;
pub mod meta;
pub mod protect;
pub mod recover;
pub mod replication;
pub mod size;

pub use config::AgentConfig;
pub use daemon::run;
pub use error::AgentError;
