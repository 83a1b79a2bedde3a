//! Control messages: the plaintext of control frames ([`crate::batch::FrameKind::Control`]),
//! encoded with postcard (the enum's variant index as a varint, then its fields in order;
//! integers as varints, strings as a varint length and UTF-8, fixed arrays as their bytes).
//! A new variant or field is a new protocol version ([`crate::handshake::VERSIONS`]);
//! [`decode`] refuses trailing bytes. Version 2 added [`VpgSpec::lineage`].
//!
//! ```text
//! protected site                          recovery site
//!   Open(VpgSpec)            ──►            (creates or loads the VPG's history and replica)
//!                            ◄──            Opened { vpg, next_seq }   or Refused
//!   batches from next_seq    ──►            (written durably to history)
//!                            ◄──            Ack { vpg, next_seq }      cumulative
//!   Remove { vpg }           ──►            Removed { vpg }  (history and replica deleted)
//!   Ping                     ──►            Pong   (either side, to keep the link alive)
//!   Resync { vpg, from_seq } ──►            Ack { vpg, from_seq }  (history lost acked records)
//!   SumsRequest { … }        ──►            Sums { … }  (delta sync of a pre-seeded replica)
//! ```

use serde::{Deserialize, Serialize};

/// Largest control message.
pub const MESSAGE_BYTES_MAX: usize = 1 << 20;

/// A protected volume as the recovery site must hold it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeSpec {
    pub name: String,
    pub size_bytes: u64,
}

/// A VPG as the protected site announces it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VpgSpec {
    pub id: u64,
    pub name: String,
    /// The VPG's generation: raised by every live failover and move. A site refuses a
    /// stream of an epoch older than the one it holds.
    pub epoch: u64,
    /// The VPG's identity, made at its creation: two sites exchange a VPG's stream only
    /// when their lineages match. (All zero in a replica made before version 2, which
    /// takes the first lineage it is sent.)
    #[serde(default)]
    pub lineage: [u8; 16],
    /// In journal order: the record's volume id is the position here, from 1.
    pub volumes: Vec<VolumeSpec>,
    /// The recovery datastore to hold its replica, by name; empty: the default.
    pub datastore: String,
    pub history_secs: u64,
    pub history_bytes_max: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    Open(VpgSpec),
    /// The recovery site holds every record below `next_seq` durably; send from there.
    Opened {
        vpg: u64,
        next_seq: u64,
    },
    /// Cumulative: every record below `next_seq` is durable at the recovery site.
    Ack {
        vpg: u64,
        next_seq: u64,
    },
    /// The recovery site will not take this VPG; `reason` says why and what to do.
    Refused {
        vpg: u64,
        reason: String,
    },
    Remove {
        vpg: u64,
    },
    Removed {
        vpg: u64,
    },
    Ping,
    Pong,
    /// The recovery site's history ended before records the protected site had already
    /// released (damage there): the stream continues at `from_seq`, and the protected site
    /// re-sends every block of the VPG (a full sync) before its next checkpoint.
    Resync {
        vpg: u64,
        from_seq: u64,
    },
    /// Delta sync: the checksums of `count` regions of `region_bytes` from `offset` of a
    /// volume, as the replica held them just before sequence `at_seq`.
    SumsRequest {
        vpg: u64,
        volume: u32,
        offset: u64,
        region_bytes: u32,
        count: u32,
        at_seq: u64,
    },
    /// The answer: SHA-256 of each region, first 16 bytes; empty when the replica no
    /// longer holds that point (the protected site then sends those regions whole).
    Sums {
        vpg: u64,
        volume: u32,
        offset: u64,
        sums: Vec<[u8; 16]>,
    },
}

/// A delta-sync region's checksum: SHA-256, first 16 bytes.
pub fn region_sum(bytes: &[u8]) -> [u8; 16] {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    d.as_ref()[..16].try_into().expect("SHA-256 has 32 bytes")
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MessageError {
    #[error("malformed control message: {0}")]
    Malformed(String),
    #[error("control message with {0} trailing bytes")]
    Trailing(usize),
    #[error("control message of {0} bytes exceeds {MESSAGE_BYTES_MAX}")]
    TooLong(usize),
}

pub fn encode(m: &Message) -> Vec<u8> {
    postcard::to_allocvec(m).expect("postcard encodes every message into a growing buffer")
}

pub fn decode(bytes: &[u8]) -> Result<Message, MessageError> {
    if bytes.len() > MESSAGE_BYTES_MAX {
        return Err(MessageError::TooLong(bytes.len()));
    }
    let (m, rest) = postcard::take_from_bytes(bytes).map_err(|e| MessageError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(MessageError::Trailing(rest.len()));
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// Version 2, byte for byte (postcard: variant index, then varints, length-prefixed
    /// strings and the lineage's 16 bytes as they are).
    #[test]
    fn golden_messages_v2() {
        let open = Message::Open(VpgSpec {
            id: 300,
            name: "app".into(),
            epoch: 1,
            lineage: [0x11; 16],
            volumes: vec![VolumeSpec {
                name: "d0".into(),
                size_bytes: 1 << 20,
            }],
            datastore: String::new(),
            history_secs: 3600,
            history_bytes_max: 0,
        });
        // Open, id 300, "app", epoch 1, the lineage, then volumes and the rest as in v1.
        let lineage = "11".repeat(16);
        assert_eq!(
            hex(&encode(&open)),
            format!("00ac0203617070{}{lineage}0102643080804000901c00", "01")
        );
        assert_eq!(
            hex(&encode(&Message::Ack {
                vpg: 300,
                next_seq: 129
            })),
            "02ac028101"
        );
        assert_eq!(hex(&encode(&Message::Pong)), "07");
        assert_eq!(hex(&encode(&Message::Resync { vpg: 1, from_seq: 2 })), "080102");
        let sums = Message::Sums {
            vpg: 1,
            volume: 2,
            offset: 3,
            sums: vec![[0xab; 16]],
        };
        assert_eq!(hex(&encode(&sums)), format!("0a01020301{}", "ab".repeat(16)));
        assert_eq!(decode(&encode(&sums)), Ok(sums));
        for m in [open, Message::Pong] {
            assert_eq!(decode(&encode(&m)), Ok(m));
        }
    }

    #[test]
    fn decode_refuses_garbage_and_trailing_bytes() {
        assert!(matches!(decode(&[]), Err(MessageError::Malformed(_))));
        assert!(matches!(decode(&[42]), Err(MessageError::Malformed(_))));
        assert_eq!(decode(&[7, 0]), Err(MessageError::Trailing(1)));
        // A string length past the end.
        assert!(matches!(decode(&[3, 1, 200, 1]), Err(MessageError::Malformed(_))));
    }
}
