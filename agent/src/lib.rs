//! The ferry agent: one per host. It protects its own volumes (capture into a VPG's
//! journal, shipped to the recovery site) and keeps replicas for its peer (history of
//! checkpoints, aged into a replica image), serves both over NBD, and is driven through the
//! control API. The `ferry` binary (CLI) is a client of this library.
//!
//! ```text
//!                 daemon            wires everything together; runs the agent
//!                   │
//!                  api              control routes and their request/response types
//!                   │
//!               failover            failover tests (overlays on checkpoints, reports)
//!                   │
//!                catalog            what NBD exports: volumes, checkpoint views, overlays
//!                   │
//!              replication          session cores (no I/O) and their simulation, link,
//!                │                  shipper (protected side), receiver (recovery side)
//!                ╱      ╲
//!          protect      recover     protect: volumes, VPGs, capture, ordering, ticker, drain
//!                ╲      ╱           recover: replicas, history and its index, aging, pins
//!                   │
//!   foundation: clock, events, checkpoint, config, meta (metadata files), io (datastore
//!               I/O), admission (connection limits), activation (systemd), size, error
//!                   │
//!   crates:     ferry_journal (ring, capture rules, dirty maps, history format)
//!               ferry_proto (pairing, handshake, sealed batches, messages)
//!               ferry_nbd (the NBD server, no replication knowledge)
//! ```
//!
//! Arrows point down only: a module uses the ones below it, never one beside or above it
//! (`protect` and `recover` do not know each other, nor replication). `tests/layout.rs`
//! checks this, that no sibling modules import each other in a circle, and that no source
//! file passes 800 lines.

pub mod activation;
pub mod admission;
pub mod api;
pub mod catalog;
pub mod checkpoint;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod diverged;
pub mod error;
pub mod events;
pub mod failover;
pub mod failpoint;
pub mod io;
pub mod meta;
pub mod protect;
pub mod ranges;
pub mod recover;
pub mod replication;
pub mod size;

pub use config::AgentConfig;
pub use daemon::run;
pub use error::AgentError;
