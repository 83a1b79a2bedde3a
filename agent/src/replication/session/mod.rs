//! Site sessions without I/O: the protected side ([`protected`]) and the recovery side
//! ([`recovery`]) of one link, each a state machine fed the peer's messages, the results of
//! the work it asked for and the time (in [`Micros`] since any fixed start), returning what
//! to send and what to do. The shells (`shipper`, `receiver`) only move bytes, do the
//! work asked for and wake on notifications and the session's deadline. The same
//! machines run in the seeded two-site simulation (`tests` here).
//!
//! Input from the peer that breaks the protocol (an acknowledgement past what was sent, a
//! batch out of order, a message the other side never sends) ends the session with an
//! error naming the peer; a broken invariant of our own is an `assert!`.

pub mod protected;
pub mod recovery;

#[cfg(test)]
pub(crate) mod sim;
#[cfg(test)]
mod tests;

use ferry_proto::message::Message;

/// Microseconds on a clock the shell chooses (monotonic in the agent, simulated in tests).
pub type Micros = u64;

/// A message's kind, for errors (its contents may be large or sensitive).
pub fn name_of(m: &Message) -> &'static str {
    match m {
        Message::Open(_) => "Open",
        Message::Opened { .. } => "Opened",
        Message::Ack { .. } => "Ack",
        Message::Refused { .. } => "Refused",
        Message::Remove { .. } => "Remove",
        Message::Removed { .. } => "Removed",
        Message::Ping => "Ping",
        Message::Pong => "Pong",
        Message::Resync { .. } => "Resync",
        Message::SumsRequest { .. } => "SumsRequest",
        Message::Sums { .. } => "Sums",
        Message::Settings { .. } => "Settings",
        Message::Fence { .. } => "Fence",
        Message::Fenced { .. } => "Fenced",
        Message::Unfence { .. } => "Unfence",
        Message::Diverged { .. } => "Diverged",
    }
}

/// The VPG a message is about (0 for the link's own: pings), which the frame carries.
pub fn vpg_of(m: &Message) -> u64 {
    match m {
        Message::Open(spec) => spec.id,
        Message::Opened { vpg, .. }
        | Message::Ack { vpg, .. }
        | Message::Refused { vpg, .. }
        | Message::Remove { vpg }
        | Message::Removed { vpg }
        | Message::Resync { vpg, .. }
        | Message::SumsRequest { vpg, .. }
        | Message::Sums { vpg, .. }
        | Message::Settings { vpg, .. }
        | Message::Fence { vpg, .. }
        | Message::Fenced { vpg, .. }
        | Message::Unfence { vpg, .. }
        | Message::Diverged { vpg, .. } => *vpg,
        Message::Ping | Message::Pong => 0,
    }
}
