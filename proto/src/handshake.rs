//! The site handshake: Noise `NNpsk0` (X25519, AES-GCM, SHA-256) keyed by the pairing key,
//! two messages, fresh ephemeral keys and so fresh session keys on every connection.
//!
//! ```text
//! initiator (the side that connects)          responder
//!   -> e, psk   payload Hello  "FYH1" min_version u16 max_version u16
//!   <- e, ee    payload Reply  "FYR1" status u8 version u16 max_version u16
//! ```
//!
//! Only a peer holding the same pairing key can produce or read either message: with
//! another key the responder cannot decrypt the first message's payload
//! ([`HandshakeError::WrongKey`]), and it sends nothing back. The versions are negotiated
//! inside the encrypted payloads: the responder picks the highest version both speak, or
//! refuses with its own range (status 1), and both sides then report the same clear error.
//! The session's two keys come from the Noise split and feed [`crate::batch`]'s sealer
//! and opener.

use snow::{Builder, HandshakeState};

pub const PATTERN: &str = "Noise_NNpsk0_25519_AESGCM_SHA256";
/// The replication protocol versions this agent speaks.
/// 2: a VPG's lineage travels in `Open` (see [`crate::message`]); 1 is refused with the
/// version error (no agent that speaks only 1 knows lineages).
/// 3: the failover plan travels in `Open` and `Settings`, and a live failover fences the
/// protected site (`Fence`, `Fenced`, `Unfence`); 2 is refused (it could not be fenced).
/// 4: a fenced site reports the writes a failover missed (`Diverged`: split brain); 3 is
/// refused (it would fence itself and say nothing of them).
pub const VERSIONS: (u16, u16) = (4, 4);
const HELLO_MAGIC: &[u8; 4] = b"FYH1";
const REPLY_MAGIC: &[u8; 4] = b"FYR1";
/// Noise's largest message.
pub const MESSAGE_BYTES_MAX: usize = 65535;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HandshakeError {
    #[error(
        "the peer's handshake does not open with our pairing key: it was paired with another key (or is not a ferry agent)"
    )]
    WrongKey,
    #[error("the peer sent a malformed handshake message ({0})")]
    Garbled(&'static str),
    #[error("no common protocol version: we speak {}..={}, the peer {}..={}; upgrade the older agent", ours.0, ours.1, theirs.0, theirs.1)]
    Version { ours: (u16, u16), theirs: (u16, u16) },
    #[error("noise: {0}")]
    Noise(String),
}

fn noise(e: snow::Error) -> HandshakeError {
    match e {
        snow::Error::Decrypt => HandshakeError::WrongKey,
        e => HandshakeError::Noise(e.to_string()),
    }
}

fn builder(psk: &[u8; 32]) -> Builder<'_> {
    Builder::new(PATTERN.parse().expect("a valid Noise pattern")).psk(0, psk)
}

/// What a finished handshake gives both sides.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionKeys {
    pub version: u16,
    /// Seals what the initiator sends.
    pub initiator_to_responder: [u8; 32],
    /// Seals what the responder sends.
    pub responder_to_initiator: [u8; 32],
}

impl std::fmt::Debug for SessionKeys {
    /// Without the keys.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionKeys")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

fn split(mut hs: HandshakeState, version: u16) -> SessionKeys {
    let (i2r, r2i) = hs.dangerously_get_raw_split();
    SessionKeys {
        version,
        initiator_to_responder: i2r,
        responder_to_initiator: r2i,
    }
}

/// The connecting side, between its first message and the reply.
pub struct Initiator {
    hs: HandshakeState,
    versions: (u16, u16),
}

impl std::fmt::Debug for Initiator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Initiator")
            .field("versions", &self.versions)
            .finish_non_exhaustive()
    }
}

/// Starts a handshake: the first message to send.
pub fn initiate(psk: &[u8; 32]) -> Result<(Initiator, Vec<u8>), HandshakeError> {
    initiate_with(psk, VERSIONS)
}

fn initiate_with(psk: &[u8; 32], versions: (u16, u16)) -> Result<(Initiator, Vec<u8>), HandshakeError> {
    let mut hs = builder(psk).build_initiator().map_err(noise)?;
    let mut hello = HELLO_MAGIC.to_vec();
    hello.extend_from_slice(&versions.0.to_le_bytes());
    hello.extend_from_slice(&versions.1.to_le_bytes());
    let mut msg = vec![0u8; MESSAGE_BYTES_MAX];
    let n = hs.write_message(&hello, &mut msg).map_err(noise)?;
    msg.truncate(n);
    Ok((Initiator { hs, versions }, msg))
}

impl Initiator {
    /// Reads the responder's reply: the session's keys, or why there is no session.
    pub fn finish(mut self, reply: &[u8]) -> Result<SessionKeys, HandshakeError> {
        let mut payload = vec![0u8; MESSAGE_BYTES_MAX];
        let n = self.hs.read_message(reply, &mut payload).map_err(noise)?;
        let p = &payload[..n];
        if p.len() != 9 || &p[..4] != REPLY_MAGIC {
            return Err(HandshakeError::Garbled("reply"));
        }
        let (a, b) = (u16::from_le_bytes([p[5], p[6]]), u16::from_le_bytes([p[7], p[8]]));
        match p[4] {
            0 if (self.versions.0..=self.versions.1).contains(&a) => Ok(split(self.hs, a)),
            0 => Err(HandshakeError::Garbled("reply names a version we did not offer")),
            1 => Err(HandshakeError::Version {
                ours: self.versions,
                theirs: (a, b),
            }),
            _ => Err(HandshakeError::Garbled("reply status")),
        }
    }
}

/// The accepting side: reads the first message. `Err`: nothing to send back (another
/// key, or garbage), drop the connection. `Ok((reply, outcome))`: send `reply`; the
/// session starts if `outcome` is `Ok`.
#[allow(clippy::type_complexity)]
pub fn respond(psk: &[u8; 32], hello: &[u8]) -> Result<(Vec<u8>, Result<SessionKeys, HandshakeError>), HandshakeError> {
    respond_with(psk, hello, VERSIONS)
}

#[allow(clippy::type_complexity)]
fn respond_with(
    psk: &[u8; 32],
    hello: &[u8],
    ours: (u16, u16),
) -> Result<(Vec<u8>, Result<SessionKeys, HandshakeError>), HandshakeError> {
    if hello.len() > MESSAGE_BYTES_MAX {
        return Err(HandshakeError::Garbled("first message too long"));
    }
    let mut hs = builder(psk).build_responder().map_err(noise)?;
    let mut payload = vec![0u8; MESSAGE_BYTES_MAX];
    let n = hs.read_message(hello, &mut payload).map_err(noise)?;
    let p = &payload[..n];
    if p.len() != 8 || &p[..4] != HELLO_MAGIC {
        return Err(HandshakeError::Garbled("hello"));
    }
    let theirs = (u16::from_le_bytes([p[4], p[5]]), u16::from_le_bytes([p[6], p[7]]));
    let common = ours.1.min(theirs.1);
    let agreed = (common >= ours.0 && common >= theirs.0).then_some(common);
    let mut reply = REPLY_MAGIC.to_vec();
    match agreed {
        Some(v) => {
            reply.push(0);
            reply.extend_from_slice(&v.to_le_bytes());
            reply.extend_from_slice(&v.to_le_bytes());
        }
        None => {
            reply.push(1);
            reply.extend_from_slice(&ours.0.to_le_bytes());
            reply.extend_from_slice(&ours.1.to_le_bytes());
        }
    }
    let mut msg = vec![0u8; MESSAGE_BYTES_MAX];
    let n = hs.write_message(&reply, &mut msg).map_err(noise)?;
    msg.truncate(n);
    let outcome = match agreed {
        Some(v) => Ok(split(hs, v)),
        None => Err(HandshakeError::Version { ours, theirs }),
    };
    Ok((msg, outcome))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{BatchHeader, Direction, Opener, Sealer};

    const PSK: [u8; 32] = [0x5a; 32];

    #[test]
    fn paired_agents_agree_on_fresh_keys_that_seal_batches() {
        let (init, hello) = initiate(&PSK).unwrap();
        let (reply, outcome) = respond(&PSK, &hello).unwrap();
        let theirs = outcome.unwrap();
        let ours = init.finish(&reply).unwrap();
        assert_eq!(ours, theirs);
        assert_eq!(ours.version, VERSIONS.1);
        assert_ne!(ours.initiator_to_responder, ours.responder_to_initiator);
        // A batch sealed by one side opens on the other.
        let h = BatchHeader {
            kind: crate::batch::FrameKind::Batch,
            flags: 0,
            vpg: 1,
            epoch: 1,
            batch_seq: 0,
            first_seq: 0,
            record_count: 1,
        };
        let frame = Sealer::new(&ours.initiator_to_responder, Direction::ToRecovery)
            .seal(&h, b"records")
            .unwrap();
        let mut o = Opener::new(&theirs.initiator_to_responder, Direction::ToRecovery);
        assert_eq!(o.open(&frame).unwrap().1, b"records");
        // Every connection has keys of its own.
        let (init2, hello2) = initiate(&PSK).unwrap();
        let (reply2, _) = respond(&PSK, &hello2).unwrap();
        let again = init2.finish(&reply2).unwrap();
        assert_ne!(again.initiator_to_responder, ours.initiator_to_responder);
    }

    #[test]
    fn a_peer_with_another_key_gets_nothing() {
        let (init, hello) = initiate(&[1; 32]).unwrap();
        assert_eq!(respond(&PSK, &hello).unwrap_err(), HandshakeError::WrongKey);
        // The other way round: a reply made with another key.
        let (_, hello_ok) = initiate(&PSK).unwrap();
        let (reply, _) = respond(&PSK, &hello_ok).unwrap();
        assert_eq!(init.finish(&reply).unwrap_err(), HandshakeError::WrongKey);
        assert!(
            HandshakeError::WrongKey.to_string().contains("paired with another key"),
            "the log line says what is wrong"
        );
    }

    #[test]
    fn a_version_mismatch_is_the_same_clear_error_on_both_sides() {
        let (init, hello) = initiate_with(&PSK, (3, 4)).unwrap();
        let (reply, outcome) = respond_with(&PSK, &hello, (1, 2)).unwrap();
        let responder = outcome.unwrap_err();
        assert_eq!(
            responder,
            HandshakeError::Version {
                ours: (1, 2),
                theirs: (3, 4)
            }
        );
        let initiator = init.finish(&reply).unwrap_err();
        assert_eq!(
            initiator,
            HandshakeError::Version {
                ours: (3, 4),
                theirs: (1, 2)
            }
        );
        assert!(
            initiator.to_string().contains("we speak 3..=4, the peer 1..=2"),
            "{initiator}"
        );
        // Overlapping ranges agree on the highest common version.
        let (init, hello) = initiate_with(&PSK, (1, 3)).unwrap();
        let (reply, outcome) = respond_with(&PSK, &hello, (2, 5)).unwrap();
        assert_eq!(outcome.unwrap().version, 3);
        assert_eq!(init.finish(&reply).unwrap().version, 3);
    }

    /// Agents of versions 1 (before lineages), 2 (before fencing) and 3 (before split-brain
    /// reports) meet this one: both
    /// sides say which versions each speaks and which agent to upgrade.
    #[test]
    fn older_agents_get_a_clear_version_error() {
        for v in [1, 2, 3] {
            let (old, hello) = initiate_with(&PSK, (v, v)).unwrap();
            let (reply, outcome) = respond(&PSK, &hello).unwrap();
            let here = outcome.unwrap_err().to_string();
            assert!(
                here.contains(&format!("we speak 4..=4, the peer {v}..={v}; upgrade the older agent")),
                "{here}"
            );
            let there = old.finish(&reply).unwrap_err().to_string();
            assert!(
                there.contains(&format!("we speak {v}..={v}, the peer 4..=4")),
                "{there}"
            );
        }
    }

    #[test]
    fn garbage_is_an_error() {
        for junk in [&b""[..], b"FYH1", &[0u8; 48], &[0xff; 200]] {
            assert!(respond(&PSK, junk).is_err());
            let (init, _) = initiate(&PSK).unwrap();
            assert!(init.finish(junk).is_err());
        }
    }
}
