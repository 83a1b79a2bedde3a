//! Control messages: the plaintext of control frames ([`crate::batch::FrameKind::Control`]),
//! encoded with postcard (the enum's variant index as a varint, then its fields in order;
//! integers as varints, strings as a varint length and UTF-8, fixed arrays as their bytes).
//! A new variant or field is a new protocol version ([`crate::handshake::VERSIONS`]);
//! [`decode`] refuses trailing bytes. Version 2 added [`VpgSpec::lineage`]; version 3
//! [`VpgSpec::plan`] and the messages of a live failover (`Settings`, `Fence`, `Fenced`,
//! `Unfence`); version 4 `Diverged` (split brain).
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
//!   Settings { vpg, plan }   ──►            (the failover plan changed: `ferry vpg edit`)
//!                            ◄──            Fence { vpg, epoch, shutdown, reason }
//!   Fenced { vpg, epoch, final_seq } ──►    (a live failover: writes there stop)
//!                            ◄──            Unfence { vpg, epoch }  (rolled back: resume)
//!   Diverged { vpg, epoch, bytes } ──►     (split brain: writes there the failover missed)
//! ```

use serde::{Deserialize, Serialize};

/// Largest control message.
pub const MESSAGE_BYTES_MAX: usize = 1 << 20;

/// A protected volume as the recovery site must hold it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct VolumeSpec {
    pub name: String,
    pub size_bytes: u64,
}

/// A VPG as the protected site announces it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
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
    /// How the recovery site brings the VPG up (members, boot order, scripts): it acts on
    /// it when the protected site is gone. Version 3.
    #[serde(default)]
    pub plan: Plan,
}

/// Volumes that start together (a VM, an application), in boot order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct Member {
    pub name: String,
    pub volumes: Vec<String>,
}

/// What a failover runs at the recovery site, set at the protected site.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct Plan {
    /// In boot order; a volume in none is a member of its own, after these.
    pub members: Vec<Member>,
    /// Between one member's start and the next.
    pub boot_delay_ms: u64,
    /// Commands run once per member before and after it starts (empty: none).
    pub pre_script: String,
    pub post_script: String,
    /// A script's time limit; 0: the default (5 minutes).
    pub script_timeout_s: u64,
    /// Passed to the scripts, for the operator's own re-IP or port-group logic.
    pub test_network: String,
    pub failover_network: String,
}

/// What a live failover does to the protected site's writes before it is fenced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub enum Shutdown {
    /// Production keeps writing there (not fenced; its writes are not in the failover).
    None,
    /// Writes in flight finish and are shipped, a final checkpoint is taken, then fenced.
    #[default]
    Graceful,
    /// Fenced at once.
    Force,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    Open(Box<VpgSpec>),
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
    /// volume, as the replica held them just before sequence `at_seq`. With
    /// `unchanged_ok` (version 4), a region the replica knows unchanged since the failover
    /// its images came from is answered [`UNCHANGED_SUM`] without being read.
    SumsRequest {
        vpg: u64,
        volume: u32,
        offset: u64,
        region_bytes: u32,
        count: u32,
        at_seq: u64,
        unchanged_ok: bool,
    },
    /// The answer: SHA-256 of each region, first 16 bytes; empty when the replica no
    /// longer holds that point (the protected site then sends those regions whole).
    Sums {
        vpg: u64,
        volume: u32,
        offset: u64,
        sums: Vec<[u8; 16]>,
    },
    /// The VPG's failover plan changed (version 3).
    Settings {
        vpg: u64,
        plan: Plan,
    },
    /// The VPG now runs at the recovery site at `epoch` (a live failover): apply
    /// `shutdown`, fence the VPG's volumes (reads go on, writes are refused with `reason`),
    /// take the epoch, and answer `Fenced`. Also the answer to an `Open` of an older epoch
    /// (with `Shutdown::Force`). Version 4: `held_seq`, the recovery site holds every
    /// record below it (what the protected site wrote from there on never reached it);
    /// `written`, bytes written at the recovery site since the failover (as far as known).
    Fence {
        vpg: u64,
        epoch: u64,
        shutdown: Shutdown,
        reason: String,
        held_seq: u64,
        written: u64,
    },
    /// Done: every record the protected site will send of this VPG is below `final_seq`
    /// (a graceful shutdown's final checkpoint included).
    Fenced {
        vpg: u64,
        epoch: u64,
        final_seq: u64,
    },
    /// The failover was rolled back: take `epoch`, take writes again, and go on shipping.
    Unfence {
        vpg: u64,
        epoch: u64,
    },
    /// Split brain (version 4): fenced at `epoch` by a failover it was not there for, the
    /// protected site holds `bytes` of writes the recovery site never received (or, with 0,
    /// no longer: an operator kept the recovery site's side and the writes were salvaged).
    Diverged {
        vpg: u64,
        epoch: u64,
        bytes: u64,
    },
}

/// A region's answer in [`Message::Sums`] meaning "unchanged here since the failover":
/// not read, and equal there unless that site changed it. (A SHA-256 prefix of all ones is
/// a 2^-128 chance.)
pub const UNCHANGED_SUM: [u8; 16] = [0xff; 16];

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

    /// Version 4, byte for byte (postcard: variant index, then varints, length-prefixed
    /// strings and the lineage's 16 bytes as they are).
    #[test]
    fn golden_messages_v4() {
        let open = Message::Open(Box::new(VpgSpec {
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
            plan: Plan {
                members: vec![Member {
                    name: "db".into(),
                    volumes: vec!["d0".into()],
                }],
                boot_delay_ms: 10_000,
                pre_script: "/p".into(),
                post_script: String::new(),
                script_timeout_s: 300,
                test_network: "t".into(),
                failover_network: String::new(),
            },
        }));
        // Open, id 300, "app", epoch 1, the lineage, then volumes and the rest as in v1,
        // then the plan: one member "db" of "d0", 10000 ms, "/p", "", 300, "t", "".
        let lineage = "11".repeat(16);
        assert_eq!(
            hex(&encode(&open)),
            format!(
                "00ac0203617070{}{lineage}0102643080804000901c00{}",
                "01",
                "0102646201026430904e022f7000ac020174 00".replace(' ', "")
            )
        );
        let fence = Message::Fence {
            vpg: 1,
            epoch: 2,
            shutdown: Shutdown::Force,
            reason: "r".into(),
            held_seq: 300,
            written: 5,
        };
        assert_eq!(hex(&encode(&fence)), "0c0102020172ac0205");
        assert_eq!(
            hex(&encode(&Message::Fenced {
                vpg: 1,
                epoch: 2,
                final_seq: 300
            })),
            "0d0102ac02"
        );
        assert_eq!(hex(&encode(&Message::Unfence { vpg: 1, epoch: 3 })), "0e0103");
        assert_eq!(
            hex(&encode(&Message::Diverged {
                vpg: 1,
                epoch: 2,
                bytes: 300
            })),
            "0f0102ac02"
        );
        assert_eq!(decode(&encode(&fence)), Ok(fence));
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
