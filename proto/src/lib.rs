//! Site-to-site wire format: pairing, the Noise handshake, sealed (AES-256-GCM) and
//! compressed batches of journal records, acks. Built so far: [`pairing`] keys,
//! [`handshake`] (Noise
//! `NNpsk0` from the pairing key, version negotiation, session keys) and [`batch`], the
//! sealed batch frame (layout, nonce and associated data, replay/reorder/alteration
//! rejection). Compression, acks and the link come with the replication issue.

pub mod batch;
pub mod handshake;
pub mod pairing;
