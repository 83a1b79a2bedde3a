//! Site-to-site wire format: pairing, the Noise handshake, sealed (AES-256-GCM) and compressed batches of journal records, acks. (Not yet built: see the replication issue.)
