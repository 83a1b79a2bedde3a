//! The recovery site's side of a session, without I/O: fed the peer's frames, the results
//! of the work it asked for and the time, it returns what to send and what to do.
//!
//! Rules it keeps:
//! - a VPG's batches are taken only once it was opened, each starting exactly where the
//!   last one ended (a gap or an overlap ends the session: the protected site reconnects
//!   and resends from what was acknowledged);
//! - an acknowledgement follows the sync of what it covers, never precedes it: batches are
//!   written as they come, and synced and acknowledged together when the stream pauses
//!   ([`ACK_DELAY`]), and under a steady stream every [`ACK_EVERY`] or [`ACK_BYTES`];
//! - a peer silent for [`IDLE_TIMEOUT`] is dropped.

use std::collections::{BTreeMap, BTreeSet};

use ferry_proto::message::{Message, Plan, Shutdown, VpgSpec};

use super::Micros;

/// Plaintext bytes taken in before an acknowledgement at the latest.
pub const ACK_BYTES: u64 = 16 << 20;
/// A pause this long in the stream syncs and acknowledges what came.
pub const ACK_DELAY: Micros = 2_000;
/// Under a steady stream, an acknowledgement at least this often.
pub const ACK_EVERY: Micros = 50_000;
/// A peer silent this long is dropped (it pings every few seconds).
pub const IDLE_TIMEOUT: Micros = 60_000_000;

/// What the peer sent, or what the shell did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A control message from the peer.
    Message(Message),
    /// A batch's header from the peer (the shell holds its bytes).
    Batch {
        vpg: u64,
        first_seq: u64,
        count: u32,
        plain_bytes: u64,
    },
    /// [`Action::Open`] done: the replica holds every record below `next_seq`, or is
    /// refused with the reason.
    Opened { vpg: u64, result: Result<u64, String> },
    /// [`Action::Sync`] done for `vpg`: every record below `durable` is durable.
    Synced { vpg: u64, durable: u64 },
    /// [`Action::Resync`] done: history now continues at `durable`.
    Resynced { vpg: u64, durable: u64 },
    /// The replica of VPG `name` was deleted here while open (by an operator).
    Removed { vpg: u64, name: String },
    /// [`Action::Remove`] done (the peer asked for it).
    RemoveDone { vpg: u64, result: Result<(), String> },
    /// A live failover of `vpg` here: ask the protected site to fence it (sent whether or
    /// not the VPG is open in this session: it also answers an `Open` of an older epoch).
    Fence {
        vpg: u64,
        epoch: u64,
        shutdown: Shutdown,
        reason: String,
        held_seq: u64,
        written: u64,
    },
    /// A live failover of `vpg` was rolled back: the protected site takes `epoch` and
    /// writes again.
    Unfence { vpg: u64, epoch: u64 },
    /// Time passed (the shell wakes at [`RecoverySession::deadline`]).
    Tick,
}

/// What the shell is to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send a control message.
    Send(Message),
    /// Open (or make) the replica of `spec`; answer with [`Input::Opened`].
    Open(Box<VpgSpec>),
    /// Append the batch just given to `vpg`'s history (written, not yet synced).
    Append { vpg: u64 },
    /// The batch just given is for a replica deleted here: drop it.
    Drop { vpg: u64 },
    /// Sync `vpg`'s history; answer with [`Input::Synced`].
    Sync { vpg: u64 },
    /// History lost records the peer had released: continue it at `from_seq`, noting the
    /// gap; answer with [`Input::Resynced`].
    Resync { vpg: u64, from_seq: u64 },
    /// Work out and send the checksums a delta sync asks for.
    Sums {
        vpg: u64,
        volume: u32,
        offset: u64,
        region_bytes: u32,
        count: u32,
        at_seq: u64,
        unchanged_ok: bool,
    },
    /// Delete the replica (the protected site deleted its VPG); answer with
    /// [`Input::RemoveDone`].
    Remove { vpg: u64 },
    /// The protected site fenced `vpg` at `epoch`: it sends nothing at or past
    /// `final_seq`.
    Fenced { vpg: u64, epoch: u64, final_seq: u64 },
    /// Split brain: the protected site, fenced at `epoch`, holds `bytes` of writes this
    /// site never received (0: no longer; they were salvaged there).
    Diverged { vpg: u64, epoch: u64, bytes: u64 },
    /// The VPG's failover plan changed at the protected site: keep it.
    Settings { vpg: u64, plan: Plan },
    /// End the session: the peer broke the protocol or went silent.
    End(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Vpg {
    /// Open asked for, its answer not in yet.
    Opening,
    /// Taking batches from `next_seq`; records below `acked` were acknowledged.
    Open { next_seq: u64, acked: u64 },
    /// Its replica is gone (deleted here, or at the peer's request): batches still on
    /// their way are dropped.
    Gone,
}

/// One session's state at the recovery site.
#[derive(Debug)]
pub struct RecoverySession {
    peer: String,
    vpgs: BTreeMap<u64, Vpg>,
    /// Written since their last acknowledgement.
    unacked: BTreeSet<u64>,
    /// Syncs asked for and not answered yet (one at a time per VPG: a VPG written to
    /// meanwhile stays in `unacked` for the next).
    syncing: BTreeSet<u64>,
    taken: u64,
    last_heard: Micros,
    last_ack: Micros,
}

impl RecoverySession {
    pub fn new(peer: String, now: Micros) -> RecoverySession {
        RecoverySession {
            peer,
            vpgs: BTreeMap::new(),
            unacked: BTreeSet::new(),
            syncing: BTreeSet::new(),
            taken: 0,
            last_heard: now,
            last_ack: now,
        }
    }

    /// The VPGs open in this session.
    pub fn open_vpgs(&self) -> Vec<u64> {
        self.vpgs
            .iter()
            .filter(|(_, v)| matches!(v, Vpg::Open { .. }))
            .map(|(&id, _)| id)
            .collect()
    }

    /// Where the batches of `vpg` must continue, if it is open.
    pub fn next_seq(&self, vpg: u64) -> Option<u64> {
        match self.vpgs.get(&vpg) {
            Some(Vpg::Open { next_seq, .. }) => Some(*next_seq),
            _ => None,
        }
    }

    /// When the shell must call again with [`Input::Tick`] at the latest.
    pub fn deadline(&self) -> Micros {
        let idle = self.last_heard + IDLE_TIMEOUT;
        if self.unacked.iter().all(|v| self.syncing.contains(v)) {
            idle
        } else {
            idle.min(self.last_heard + ACK_DELAY)
        }
    }

    fn broke(&self, what: String) -> Vec<Action> {
        vec![Action::End(format!("{} broke the protocol: {what}", self.peer))]
    }

    /// Syncs everything written since the last acknowledgement (but for VPGs whose sync
    /// is under way: theirs follows when it is done).
    fn sync_all(&mut self, now: Micros) -> Vec<Action> {
        self.taken = 0;
        self.last_ack = now;
        let due: Vec<u64> = self.unacked.difference(&self.syncing).copied().collect();
        for vpg in &due {
            self.unacked.remove(vpg);
            self.syncing.insert(*vpg);
        }
        due.into_iter().map(|vpg| Action::Sync { vpg }).collect()
    }

    pub fn on(&mut self, now: Micros, input: Input) -> Vec<Action> {
        match input {
            Input::Message(m) => {
                self.last_heard = now;
                self.on_message(m)
            }
            Input::Batch {
                vpg,
                first_seq,
                count,
                plain_bytes,
            } => {
                self.last_heard = now;
                let Some(v) = self.vpgs.get_mut(&vpg) else {
                    return self.broke(format!("a batch for VPG {vpg:#x}, which was not opened"));
                };
                let next_seq = match v {
                    Vpg::Open { next_seq, .. } => next_seq,
                    Vpg::Gone => return vec![Action::Drop { vpg }],
                    Vpg::Opening => return self.broke(format!("a batch for VPG {vpg:#x} before its Opened")),
                };
                if first_seq != *next_seq {
                    let expected = *next_seq;
                    return self.broke(format!(
                        "a batch for VPG {vpg:#x} starts at seq {first_seq}, its history ends at {expected}"
                    ));
                }
                if count == 0 {
                    return self.broke(format!("an empty batch for VPG {vpg:#x}"));
                }
                *next_seq = first_seq + u64::from(count);
                self.unacked.insert(vpg);
                self.taken += plain_bytes;
                let mut out = vec![Action::Append { vpg }];
                if self.taken >= ACK_BYTES || now.saturating_sub(self.last_ack) >= ACK_EVERY {
                    out.extend(self.sync_all(now));
                }
                out
            }
            Input::Opened { vpg, result } => {
                if self.vpgs.get(&vpg) != Some(&Vpg::Opening) {
                    return self.broke(format!("internal: an open of VPG {vpg:#x} that was not asked for"));
                }
                match result {
                    Ok(next_seq) => {
                        self.vpgs.insert(
                            vpg,
                            Vpg::Open {
                                next_seq,
                                acked: next_seq,
                            },
                        );
                        vec![Action::Send(Message::Opened { vpg, next_seq })]
                    }
                    Err(reason) => {
                        self.vpgs.remove(&vpg);
                        vec![Action::Send(Message::Refused { vpg, reason })]
                    }
                }
            }
            Input::Synced { vpg, durable } => {
                self.syncing.remove(&vpg);
                match self.vpgs.get_mut(&vpg) {
                    Some(Vpg::Open { next_seq, acked }) => {
                        assert!(
                            durable <= *next_seq,
                            "a sync of VPG {vpg:#x} claims {durable}, past what was written ({next_seq})"
                        );
                        if durable <= *acked {
                            return vec![];
                        }
                        *acked = durable;
                        vec![Action::Send(Message::Ack { vpg, next_seq: durable })]
                    }
                    // Removed or refused since: nothing to acknowledge.
                    _ => vec![],
                }
            }
            Input::Resynced { vpg, durable } => {
                if let Some(Vpg::Open { next_seq, acked }) = self.vpgs.get_mut(&vpg) {
                    *next_seq = durable;
                    *acked = durable;
                    vec![Action::Send(Message::Ack { vpg, next_seq: durable })]
                } else {
                    vec![]
                }
            }
            Input::Removed { vpg, name } => {
                if !matches!(self.vpgs.get(&vpg), Some(Vpg::Open { .. } | Vpg::Opening)) {
                    return vec![];
                }
                self.vpgs.insert(vpg, Vpg::Gone);
                self.unacked.remove(&vpg);
                vec![Action::Send(Message::Refused {
                    vpg,
                    reason: format!(
                        "its replica was deleted at the recovery site while it was replicating (`ferry replica delete --force`); to protect the VPG again, delete it here (`ferry vpg delete {name}`) and create it anew"
                    ),
                })]
            }
            Input::RemoveDone { vpg, result } => vec![Action::Send(match result {
                Ok(()) => Message::Removed { vpg },
                Err(reason) => Message::Refused { vpg, reason },
            })],
            Input::Fence {
                vpg,
                epoch,
                shutdown,
                reason,
                held_seq,
                written,
            } => vec![Action::Send(Message::Fence {
                vpg,
                epoch,
                shutdown,
                reason,
                held_seq,
                written,
            })],
            Input::Unfence { vpg, epoch } => vec![Action::Send(Message::Unfence { vpg, epoch })],
            Input::Tick => {
                if now.saturating_sub(self.last_heard) >= IDLE_TIMEOUT {
                    return vec![Action::End(format!(
                        "{} was silent for {} s",
                        self.peer,
                        IDLE_TIMEOUT / 1_000_000
                    ))];
                }
                if !self.unacked.is_empty() && now.saturating_sub(self.last_heard) >= ACK_DELAY {
                    return self.sync_all(now);
                }
                vec![]
            }
        }
    }

    fn on_message(&mut self, m: Message) -> Vec<Action> {
        match m {
            Message::Open(spec) => {
                if matches!(self.vpgs.get(&spec.id), Some(Vpg::Opening | Vpg::Open { .. })) {
                    return self.broke(format!("VPG {:?} opened twice", spec.name));
                }
                self.vpgs.insert(spec.id, Vpg::Opening);
                vec![Action::Open(spec)]
            }
            Message::Ping => vec![Action::Send(Message::Pong)],
            Message::Settings { vpg, plan } => match self.vpgs.get(&vpg) {
                Some(Vpg::Open { .. }) => vec![Action::Settings { vpg, plan }],
                Some(Vpg::Gone) => vec![],
                _ => self.broke(format!("settings for VPG {vpg:#x}, which was not opened")),
            },
            // Answers a fence this side asked for; the shell matches it with the failover.
            Message::Fenced { vpg, epoch, final_seq } => vec![Action::Fenced { vpg, epoch, final_seq }],
            Message::Diverged { vpg, epoch, bytes } => vec![Action::Diverged { vpg, epoch, bytes }],
            Message::Pong => vec![],
            Message::Remove { vpg } => {
                if self.vpgs.contains_key(&vpg) {
                    self.vpgs.insert(vpg, Vpg::Gone);
                }
                self.unacked.remove(&vpg);
                vec![Action::Remove { vpg }]
            }
            Message::Resync { vpg, from_seq } => match self.vpgs.get(&vpg) {
                // Sent before the peer heard that the replica is gone.
                Some(Vpg::Gone) => vec![],
                Some(Vpg::Open { next_seq, .. }) if from_seq >= *next_seq => {
                    vec![Action::Resync { vpg, from_seq }]
                }
                Some(Vpg::Open { next_seq, .. }) => {
                    let n = *next_seq;
                    self.broke(format!(
                        "a resync of VPG {vpg:#x} from seq {from_seq}, behind its history's end {n}"
                    ))
                }
                _ => self.broke(format!("a resync for VPG {vpg:#x}, which was not opened")),
            },
            Message::SumsRequest {
                vpg,
                volume,
                offset,
                region_bytes,
                count,
                at_seq,
                unchanged_ok,
            } => {
                match self.vpgs.get(&vpg) {
                    Some(Vpg::Open { .. }) => {}
                    // Asked before the peer heard that the replica is gone.
                    Some(Vpg::Gone) => return vec![],
                    _ => return self.broke(format!("sums for VPG {vpg:#x}, which was not opened")),
                }
                if region_bytes == 0 || count == 0 || u64::from(region_bytes) * u64::from(count) > 1 << 30 {
                    return self.broke(format!("sums asked for {count} regions of {region_bytes} bytes"));
                }
                vec![Action::Sums {
                    vpg,
                    volume,
                    offset,
                    region_bytes,
                    count,
                    at_seq,
                    unchanged_ok,
                }]
            }
            other => self.broke(format!("a protected site does not send {}", super::name_of(&other))),
        }
    }
}
