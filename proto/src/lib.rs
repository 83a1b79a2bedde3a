//! Site-to-site wire format: [`pairing`] keys, the [`handshake`] (Noise `NNpsk0` from the
//! pairing key, version negotiation, session keys), sealed (AES-256-GCM) [`batch`] frames,
//! the journal [`records`] a batch carries (optionally zstd-compressed), and the control
//! [`message`]s (open a VPG, cumulative acks, remove, keep-alive). The link that carries
//! them lives in the agent.

pub mod batch;
pub mod handshake;
pub mod message;
pub mod pairing;
pub mod records;
