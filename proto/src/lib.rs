//! Site-to-site wire format: pairing, the Noise handshake, sealed (AES-256-GCM) and
//! compressed batches of journal records, acks. Built so far: [`batch`], the sealed batch
//! frame (layout, nonce and associated data, replay/reorder/alteration rejection). The
//! handshake, compression and acks come with the replication issue.

pub mod batch;
