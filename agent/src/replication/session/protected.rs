//! The protected site's side of a session, without I/O: which VPGs are announced and open,
//! where each one's stream stands (next to send, acknowledged), the batches in flight and
//! the window that bounds them, whose turn it is (weighted by priority), the delta sync's
//! requests, pings and the peer's silence.
//!
//! Rules it keeps:
//! - batches of a VPG go only once it is open, from where the recovery site said it holds
//!   everything, each starting where the last ended;
//! - an acknowledgement may not pass what was sent, nor go back: either ends the session
//!   (the peer broke the protocol); what it covers is released only after it arrives;
//! - bytes in flight stay within the window: about [`WINDOW_TIME`] of what the link
//!   carries, at least two batches;
//! - among VPGs with records ready, the one with the least weighted service goes next (a
//!   VPG that just became ready starts level with the busy ones).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use ferry_proto::message::{Message, Plan, Shutdown, VpgSpec};

use super::{Micros, name_of};

/// A ping after this long without sending anything.
pub const PING_EVERY: Micros = 5_000_000;
/// The session ends after this long without hearing from the peer.
pub const PEER_TIMEOUT: Micros = 30_000_000;
/// The window is about this much of the link's measured rate.
pub const WINDOW_TIME: Micros = 500_000;
/// Delta sync: bytes per compared region, regions per request, requests in flight.
pub const DELTA_REGION: u32 = 64 << 10;
pub const DELTA_REGIONS_PER_REQUEST: u32 = 1024;
pub const DELTA_REQUESTS_MAX: usize = 4;

/// Where a VPG's journal stands, as the shell reads it when the peer opens the VPG.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalView {
    /// The next record to be written.
    pub next_seq: u64,
    /// Records below this were released (acknowledged before).
    pub acked_seq: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Ship this VPG on this link (`weight` from its priority).
    Announce { spec: VpgSpec, weight: f64 },
    /// The VPG is no longer shipped here (deleted).
    Forget { vpg: u64 },
    /// A control message from the peer, with the journal of the VPG it names if any.
    Message {
        message: Message,
        journal: Option<JournalView>,
    },
    /// The shell sent a batch of `vpg` from `first_seq` to `end_seq` (as
    /// [`ProtectedSession::next_to_send`] said).
    Sent {
        vpg: u64,
        first_seq: u64,
        end_seq: u64,
        wire_bytes: u64,
        plain_bytes: u64,
    },
    /// A delta sync of `vpg` starts: compare these volumes (id, size) region by region.
    /// `known`: this site knows which regions changed since the failover the recovery
    /// site's images come from; regions unchanged there too are not compared.
    StartDelta {
        vpg: u64,
        volumes: Vec<(u32, u64)>,
        known: bool,
    },
    /// The VPG's failover plan changed: tell the recovery site (if the VPG is open; an
    /// `Open` carries it otherwise).
    Settings { vpg: u64, plan: Plan },
    /// [`Action::Fence`] done: every record of `vpg` that will be sent is below
    /// `final_seq`. `diverged`: split brain, with the bytes written here that the
    /// recovery site never received (`Some(0)`: settled here).
    FenceDone {
        vpg: u64,
        epoch: u64,
        final_seq: u64,
        diverged: Option<u64>,
    },
    /// Time passed.
    Tick,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// A live failover runs `vpg` at the recovery site at `epoch`: apply `shutdown`, fence
    /// its volumes with `reason`; answer with [`Input::FenceDone`].
    Fence {
        vpg: u64,
        epoch: u64,
        shutdown: Shutdown,
        reason: String,
        /// The answer to this session's `Open`: the failover happened without this site
        /// (whatever it wrote since the last record the recovery site took is not in it).
        missed: bool,
        /// The recovery site holds every record below this one.
        held_seq: u64,
        /// Bytes the recovery site wrote since the failover.
        written: u64,
    },
    /// The failover was rolled back: take `epoch` and take writes again.
    Unfence {
        vpg: u64,
        epoch: u64,
    },
    Send(Message),
    /// The recovery site holds `vpg` below `next_seq`: send from there. `resync` when it
    /// lost records this journal had released (every block is sent again, and no
    /// checkpoint from before).
    Resume {
        vpg: u64,
        next_seq: u64,
        resync: bool,
    },
    /// Shipping `vpg` cannot go on in this session: why (shown, with an event).
    /// `refused`: the recovery site said no and forgot the open, so the shell may open it
    /// again later (the refusal's cause may be settled there meanwhile).
    Halt {
        vpg: u64,
        why: String,
        refused: bool,
    },
    /// Records of `vpg` below `next_seq` are durable at the recovery site: `plain_bytes`
    /// of records left the window.
    Acked {
        vpg: u64,
        next_seq: u64,
        plain_bytes: u64,
    },
    /// Compare a delta sync's regions with these checksums (empty: the replica could not
    /// answer, all differ).
    Compare {
        vpg: u64,
        volume: u32,
        offset: u64,
        sums: Vec<[u8; 16]>,
    },
    /// Every region of `vpg` was compared.
    DeltaDone {
        vpg: u64,
    },
    /// End the session.
    End(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Opening,
    Open,
    Halted,
}

#[derive(Debug)]
struct Delta {
    volumes: Vec<(u32, u64)>,
    index: usize,
    offset: u64,
    outstanding: usize,
    known: bool,
}

#[derive(Debug)]
struct Ship {
    name: String,
    phase: Phase,
    /// The next record to send.
    next_seq: u64,
    /// The highest acknowledgement this session.
    acked: u64,
    /// Batches in flight: (end seq, wire bytes, plaintext bytes).
    inflight: VecDeque<(u64, u64, u64)>,
    weight: f64,
    vtime: f64,
    was_ready: bool,
    delta: Option<Delta>,
}

/// One session's state at the protected site.
#[derive(Debug)]
pub struct ProtectedSession {
    peer: String,
    vpgs: BTreeMap<u64, Ship>,
    inflight_bytes: u64,
    /// Wire bytes acknowledged per second (smoothed), and the window it is measured over.
    ack_rate: Option<f64>,
    rate_window: (Micros, u64),
    last_heard: Micros,
    last_sent: Micros,
}

impl ProtectedSession {
    pub fn new(peer: String, now: Micros) -> ProtectedSession {
        ProtectedSession {
            peer,
            vpgs: BTreeMap::new(),
            inflight_bytes: 0,
            ack_rate: None,
            rate_window: (now, 0),
            last_heard: now,
            last_sent: now,
        }
    }

    pub fn is_announced(&self, vpg: u64) -> bool {
        self.vpgs.contains_key(&vpg)
    }

    pub fn announced(&self) -> Vec<u64> {
        self.vpgs.keys().copied().collect()
    }

    /// Open (taking batches), with the next record to send.
    pub fn open(&self) -> Vec<(u64, u64)> {
        self.vpgs
            .iter()
            .filter(|(_, s)| s.phase == Phase::Open)
            .map(|(&id, s)| (id, s.next_seq))
            .collect()
    }

    pub fn inflight_bytes(&self) -> u64 {
        self.inflight_bytes
    }

    /// When the shell must call again with [`Input::Tick`] at the latest.
    pub fn deadline(&self) -> Micros {
        (self.last_sent + PING_EVERY).min(self.last_heard + PEER_TIMEOUT)
    }

    /// Bytes that may be in flight: about [`WINDOW_TIME`] of the link's rate, at least two
    /// batches, at most `window_max`.
    pub fn window(&self, batch_bytes: u64, window_max: u64) -> u64 {
        let floor = 2 * batch_bytes;
        match self.ack_rate {
            None => (4 * batch_bytes).min(window_max),
            Some(r) => ((r * WINDOW_TIME as f64 / 1e6) as u64).clamp(floor, window_max.max(floor)),
        }
    }

    /// The VPG whose turn it is, with where its batch starts, among the open ones in
    /// `ready` (records ready to send, not paused); `None` when the window is full or none
    /// is ready.
    pub fn next_to_send(&mut self, ready: &BTreeSet<u64>, batch_bytes: u64, window_max: u64) -> Option<(u64, u64)> {
        if self.inflight_bytes + batch_bytes / 2 > self.window(batch_bytes, window_max) {
            return None;
        }
        let is_ready = |id: &u64, s: &Ship| s.phase == Phase::Open && ready.contains(id);
        let floor = self
            .vpgs
            .iter()
            .filter(|(id, s)| is_ready(id, s) && s.was_ready)
            .map(|(_, s)| s.vtime)
            .fold(f64::INFINITY, f64::min);
        for (id, s) in self.vpgs.iter_mut() {
            let now_ready = s.phase == Phase::Open && ready.contains(id);
            if now_ready && !s.was_ready && floor.is_finite() {
                s.vtime = s.vtime.max(floor);
            }
            s.was_ready = now_ready;
        }
        self.vpgs
            .iter()
            .filter(|(id, s)| is_ready(id, s))
            .min_by(|a, b| a.1.vtime.total_cmp(&b.1.vtime))
            .map(|(&id, s)| (id, s.next_seq))
    }

    fn broke(&self, what: String) -> Vec<Action> {
        vec![Action::End(format!("{} broke the protocol: {what}", self.peer))]
    }

    fn drop_inflight(&mut self, vpg: u64) {
        if let Some(s) = self.vpgs.get_mut(&vpg) {
            self.inflight_bytes -= s.inflight.drain(..).map(|x| x.1).sum::<u64>();
        }
    }

    pub fn on(&mut self, now: Micros, input: Input) -> Vec<Action> {
        let mut out = match input {
            Input::Announce { spec, weight } => {
                let id = spec.id;
                if self.vpgs.contains_key(&id) {
                    return vec![];
                }
                self.vpgs.insert(
                    id,
                    Ship {
                        name: spec.name.clone(),
                        phase: Phase::Opening,
                        next_seq: 0,
                        acked: 0,
                        inflight: VecDeque::new(),
                        weight: weight.max(f64::MIN_POSITIVE),
                        vtime: 0.0,
                        was_ready: false,
                        delta: None,
                    },
                );
                self.last_sent = now;
                vec![Action::Send(Message::Open(Box::new(spec)))]
            }
            Input::Forget { vpg } => {
                self.drop_inflight(vpg);
                self.vpgs.remove(&vpg);
                vec![]
            }
            Input::Message { message, journal } => {
                self.last_heard = now;
                self.on_message(now, message, journal)
            }
            Input::Sent {
                vpg,
                first_seq,
                end_seq,
                wire_bytes,
                plain_bytes,
            } => {
                let s = self
                    .vpgs
                    .get_mut(&vpg)
                    .expect("a batch is built only for an announced VPG");
                assert!(
                    s.phase == Phase::Open && first_seq == s.next_seq && end_seq > first_seq,
                    "batch {first_seq}..{end_seq} of VPG {vpg:#x} does not continue its stream at {}",
                    s.next_seq
                );
                s.next_seq = end_seq;
                s.inflight.push_back((end_seq, wire_bytes, plain_bytes));
                s.vtime += wire_bytes as f64 / s.weight;
                self.inflight_bytes += wire_bytes;
                self.last_sent = now;
                vec![]
            }
            Input::Settings { vpg, plan } => match self.vpgs.get(&vpg) {
                Some(s) if s.phase == Phase::Open => {
                    self.last_sent = now;
                    vec![Action::Send(Message::Settings { vpg, plan })]
                }
                _ => vec![],
            },
            Input::FenceDone {
                vpg,
                epoch,
                final_seq,
                diverged,
            } => {
                self.last_sent = now;
                let mut out = vec![Action::Send(Message::Fenced { vpg, epoch, final_seq })];
                if let Some(bytes) = diverged {
                    out.push(Action::Send(Message::Diverged { vpg, epoch, bytes }));
                }
                out
            }
            Input::StartDelta { vpg, volumes, known } => {
                if let Some(s) = self.vpgs.get_mut(&vpg) {
                    s.delta = Some(Delta {
                        volumes,
                        index: 0,
                        offset: 0,
                        outstanding: 0,
                        known,
                    });
                }
                vec![]
            }
            Input::Tick => {
                if now.saturating_sub(self.last_heard) >= PEER_TIMEOUT {
                    return vec![Action::End(format!(
                        "{} answered nothing for {} s",
                        self.peer,
                        PEER_TIMEOUT / 1_000_000
                    ))];
                }
                if now.saturating_sub(self.last_sent) >= PING_EVERY {
                    self.last_sent = now;
                    return vec![Action::Send(Message::Ping)];
                }
                vec![]
            }
        };
        if !matches!(out.last(), Some(Action::End(_))) {
            out.extend(self.delta_requests(now));
        }
        out
    }

    fn on_message(&mut self, now: Micros, m: Message, journal: Option<JournalView>) -> Vec<Action> {
        match m {
            Message::Opened { vpg, next_seq } => {
                let Some(s) = self.vpgs.get_mut(&vpg) else {
                    return vec![];
                };
                if s.phase != Phase::Opening {
                    return self.broke(format!("Opened for VPG {vpg:#x}, which was not being opened"));
                }
                let j = journal.expect("the shell reads the journal of a VPG it announced");
                if next_seq > j.next_seq {
                    s.phase = Phase::Halted;
                    return vec![Action::Halt {
                        vpg,
                        why: format!(
                            "the recovery site holds records up to seq {next_seq}, past this journal's end ({}): it holds another copy of this VPG; delete that replica there (`ferry replica delete {}`)",
                            j.next_seq, s.name
                        ),
                        refused: false,
                    }];
                }
                s.phase = Phase::Open;
                let resync = next_seq < j.acked_seq;
                let from = if resync { j.acked_seq } else { next_seq };
                s.next_seq = from;
                s.acked = from;
                let mut out = Vec::new();
                if resync {
                    out.push(Action::Send(Message::Resync { vpg, from_seq: from }));
                }
                out.push(Action::Resume {
                    vpg,
                    next_seq: from,
                    resync,
                });
                out
            }
            Message::Ack { vpg, next_seq } => {
                let Some(s) = self.vpgs.get_mut(&vpg) else {
                    return vec![];
                };
                if s.phase != Phase::Open {
                    return vec![];
                }
                if next_seq > s.next_seq {
                    let sent = s.next_seq;
                    return self.broke(format!(
                        "an acknowledgement of VPG {vpg:#x} up to seq {next_seq}, past what was sent ({sent})"
                    ));
                }
                if next_seq < s.acked {
                    let acked = s.acked;
                    return self.broke(format!(
                        "acknowledgements of VPG {vpg:#x} out of order ({next_seq} after {acked})"
                    ));
                }
                s.acked = next_seq;
                let (mut plain, mut wire) = (0, 0);
                while s.inflight.front().is_some_and(|x| x.0 <= next_seq) {
                    let (_, w, p) = s.inflight.pop_front().expect("front");
                    wire += w;
                    plain += p;
                }
                self.inflight_bytes -= wire;
                self.note_acked(now, wire);
                vec![Action::Acked {
                    vpg,
                    next_seq,
                    plain_bytes: plain,
                }]
            }
            // Whatever the VPG's phase here: a fence answers an `Open` too.
            Message::Fence {
                vpg,
                epoch,
                shutdown,
                reason,
                held_seq,
                written,
            } => {
                let Some(s) = self.vpgs.get(&vpg) else {
                    return vec![];
                };
                vec![Action::Fence {
                    vpg,
                    epoch,
                    shutdown,
                    reason,
                    missed: s.phase == Phase::Opening,
                    held_seq,
                    written,
                }]
            }
            Message::Unfence { vpg, epoch } => {
                if !self.vpgs.contains_key(&vpg) {
                    return vec![];
                }
                vec![Action::Unfence { vpg, epoch }]
            }
            Message::Refused { vpg, reason } => {
                if !self.vpgs.contains_key(&vpg) {
                    return vec![];
                }
                self.drop_inflight(vpg);
                let s = self.vpgs.get_mut(&vpg).expect("present");
                s.phase = Phase::Halted;
                s.delta = None;
                vec![Action::Halt {
                    vpg,
                    why: format!("the recovery site refused it: {reason}"),
                    refused: true,
                }]
            }
            Message::Sums {
                vpg,
                volume,
                offset,
                sums,
            } => {
                let Some(s) = self.vpgs.get_mut(&vpg) else {
                    return vec![];
                };
                // Answers still on their way when the VPG was refused.
                if s.phase == Phase::Halted {
                    return vec![];
                }
                let Some(d) = s.delta.as_mut() else {
                    return self.broke(format!("checksums for VPG {vpg:#x}, which were not asked for"));
                };
                if d.outstanding == 0 || !d.volumes.iter().any(|v| v.0 == volume) {
                    return self.broke(format!("checksums for VPG {vpg:#x} volume {volume}, not asked for"));
                }
                d.outstanding -= 1;
                vec![Action::Compare {
                    vpg,
                    volume,
                    offset,
                    sums,
                }]
            }
            Message::Pong | Message::Removed { .. } => vec![],
            other => self.broke(format!("a recovery site does not send {}", name_of(&other))),
        }
    }

    /// The delta syncs' next requests, and the end of those that got every answer.
    fn delta_requests(&mut self, now: Micros) -> Vec<Action> {
        let mut out = Vec::new();
        for (&id, s) in self.vpgs.iter_mut() {
            if s.phase != Phase::Open {
                continue;
            }
            let Some(d) = s.delta.as_mut() else { continue };
            while d.outstanding < DELTA_REQUESTS_MAX && d.index < d.volumes.len() {
                let (volume, size) = d.volumes[d.index];
                if d.offset >= size {
                    d.index += 1;
                    d.offset = 0;
                    continue;
                }
                out.push(Action::Send(Message::SumsRequest {
                    vpg: id,
                    volume,
                    offset: d.offset,
                    region_bytes: DELTA_REGION,
                    count: DELTA_REGIONS_PER_REQUEST,
                    at_seq: 0,
                    unchanged_ok: d.known,
                }));
                d.offset += u64::from(DELTA_REGION) * u64::from(DELTA_REGIONS_PER_REQUEST);
                d.outstanding += 1;
            }
            if d.index >= d.volumes.len() && d.outstanding == 0 {
                s.delta = None;
                out.push(Action::DeltaDone { vpg: id });
            }
        }
        if out.iter().any(|a| matches!(a, Action::Send(_))) {
            self.last_sent = now;
        }
        out
    }

    /// Counts acknowledged wire bytes into the link's rate.
    fn note_acked(&mut self, now: Micros, wire: u64) {
        let (since, bytes) = &mut self.rate_window;
        *bytes += wire;
        let el = now.saturating_sub(*since);
        if el >= 250_000 {
            let rate = *bytes as f64 * 1e6 / el as f64;
            self.ack_rate = Some(self.ack_rate.map_or(rate, |r| 0.7 * r + 0.3 * rate));
            self.rate_window = (now, 0);
        }
    }
}
