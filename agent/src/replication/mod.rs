//! Replication: moving a VPG's stream between sites. Owns the link (framing, pacing,
//! sealing through `ferry_proto`), the shipper (protected side: scheduling batches by VPG
//! priority, delta sync), and the receiver (recovery side: feeding history, acknowledging).
//! Reads the journal from `protect` and writes history into `recover`.

pub mod link;
pub mod receiver;
pub mod session;
pub mod shipper;
