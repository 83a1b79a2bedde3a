//! Protect: the protected site's side of a VPG. Owns the volumes and their datastore I/O,
//! the VPG registry (`vpgs.json`), capture of every write into the VPG's journal in one
//! order, the checkpoint ticker, the drain of dirty regions, the throttle and the RPO.
//! Knows nothing of links or peers: replication reads the journal through the consumer.

pub mod capture;
pub mod ordering;
pub mod state;
pub mod volume;
pub mod volumes;
pub mod vpg;
