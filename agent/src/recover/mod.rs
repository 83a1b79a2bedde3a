//! Recover: the recovery site's side of a VPG. Owns each replica (the volume image at the
//! oldest point in history), its history of writes and checkpoints with the index, aging
//! of history into the replica within the window and the hard limit, and the read-only
//! views of any checkpoint. Knows nothing of links: replication feeds it.

pub mod replica;
pub mod replicas;
pub mod state;
