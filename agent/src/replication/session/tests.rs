//! The session cores' rules, one at a time (the simulation in `sim` drives them together).

use ferry_proto::message::{Message, VolumeSpec, VpgSpec};

use super::protected::{self, JournalView, ProtectedSession};
use super::recovery::{self, RecoverySession};

/// A VPG of one 1 MiB volume (the simulation's too).
pub(super) fn spec(id: u64) -> VpgSpec {
    VpgSpec {
        id,
        name: "app".into(),
        epoch: 1,
        lineage: [7; 16],
        volumes: vec![VolumeSpec {
            name: "d".into(),
            size_bytes: 1 << 20,
        }],
        datastore: String::new(),
        history_secs: 60,
        history_bytes_max: 1 << 30,
        plan: Default::default(),
    }
}

/// A live failover's messages through both cores: the recovery site's fence reaches the
/// protected shell (whatever the VPG's phase), its answer comes back to the recovery
/// shell; a plan change is sent only while the VPG is open; an unfence goes through.
#[test]
fn a_fence_and_its_answer_cross_both_cores_and_settings_wait_for_open() {
    use ferry_proto::message::{Plan, Shutdown};
    let mut r = RecoverySession::new("p".into(), 0);
    let fence = r.on(
        0,
        recovery::Input::Fence {
            vpg: 1,
            epoch: 2,
            shutdown: Shutdown::Graceful,
            reason: "runs at B".into(),
            held_seq: 40,
            written: 0,
        },
    );
    let recovery::Action::Send(m) = &fence[0] else {
        panic!("{fence:?}")
    };
    // Announced, not open yet: the fence still applies (it may answer the Open).
    let mut p = announced("r");
    let plan = Plan {
        boot_delay_ms: 5,
        ..Default::default()
    };
    assert!(
        p.on(
            1,
            protected::Input::Settings {
                vpg: 1,
                plan: plan.clone()
            }
        )
        .is_empty(),
        "the Open carries the plan"
    );
    let a = p.on(
        1,
        protected::Input::Message {
            message: m.clone(),
            journal: None,
        },
    );
    assert_eq!(
        a,
        vec![protected::Action::Fence {
            vpg: 1,
            epoch: 2,
            shutdown: Shutdown::Graceful,
            reason: "runs at B".into(),
            missed: true,
            held_seq: 40,
            written: 0,
        }]
    );
    // A fence for a VPG not shipped here is ignored.
    let other = Message::Fence {
        vpg: 9,
        epoch: 2,
        shutdown: Shutdown::Force,
        reason: String::new(),
        held_seq: 0,
        written: 0,
    };
    assert!(
        p.on(
            1,
            protected::Input::Message {
                message: other,
                journal: None
            }
        )
        .is_empty()
    );
    let done = p.on(
        2,
        protected::Input::FenceDone {
            vpg: 1,
            epoch: 2,
            final_seq: 77,
            diverged: Some(5),
        },
    );
    let protected::Action::Send(answer) = &done[0] else {
        panic!("{done:?}")
    };
    // Split brain: the bytes written there that the failover missed follow the answer.
    let protected::Action::Send(diverged) = &done[1] else {
        panic!("{done:?}")
    };
    assert_eq!(
        r.on(3, recovery::Input::Message(diverged.clone())),
        vec![recovery::Action::Diverged {
            vpg: 1,
            epoch: 2,
            bytes: 5
        }]
    );
    // The recovery core passes the answer to its shell.
    assert_eq!(
        r.on(3, recovery::Input::Message(answer.clone())),
        vec![recovery::Action::Fenced {
            vpg: 1,
            epoch: 2,
            final_seq: 77
        }]
    );
    let unfence = r.on(4, recovery::Input::Unfence { vpg: 1, epoch: 2 });
    let recovery::Action::Send(u) = &unfence[0] else {
        panic!("{unfence:?}")
    };
    assert_eq!(
        p.on(
            5,
            protected::Input::Message {
                message: u.clone(),
                journal: None
            }
        ),
        vec![protected::Action::Unfence { vpg: 1, epoch: 2 }]
    );
    // Settings from a peer for a VPG it never opened break the protocol.
    let bad = r.on(6, recovery::Input::Message(Message::Settings { vpg: 1, plan }));
    assert!(ends_naming_peer(&bad, "p"), "{bad:?}");
}

fn ends_naming_peer(actions: &[impl std::fmt::Debug], peer: &str) -> bool {
    matches!(actions.last(), Some(a) if format!("{a:?}").starts_with("End(") && format!("{a:?}").contains(peer))
}

/// A protected session to `peer` that announced VPG 1.
fn announced(peer: &str) -> ProtectedSession {
    let mut p = ProtectedSession::new(peer.into(), 0);
    p.on(
        0,
        protected::Input::Announce {
            spec: spec(1),
            weight: 1.0,
        },
    );
    p
}

/// A protected session with VPG 1 open from seq 10, and a batch 10..15 sent.
fn protected_with_batch_in_flight() -> ProtectedSession {
    let mut p = announced("10.0.0.2:7000");
    let a = p.on(
        1,
        protected::Input::Message {
            message: Message::Opened { vpg: 1, next_seq: 10 },
            journal: Some(JournalView {
                next_seq: 20,
                acked_seq: 10,
            }),
        },
    );
    assert_eq!(
        a,
        vec![protected::Action::Resume {
            vpg: 1,
            next_seq: 10,
            resync: false
        }]
    );
    p.on(
        2,
        protected::Input::Sent {
            vpg: 1,
            first_seq: 10,
            end_seq: 15,
            wire_bytes: 100,
            plain_bytes: 200,
        },
    );
    p
}

fn ack(p: &mut ProtectedSession, next_seq: u64) -> Vec<protected::Action> {
    p.on(
        3,
        protected::Input::Message {
            message: Message::Ack { vpg: 1, next_seq },
            journal: None,
        },
    )
}

#[test]
fn an_acknowledgement_releases_what_it_covers_and_empties_the_window() {
    let mut p = protected_with_batch_in_flight();
    assert_eq!(p.inflight_bytes(), 100);
    assert_eq!(
        ack(&mut p, 15),
        vec![protected::Action::Acked {
            vpg: 1,
            next_seq: 15,
            plain_bytes: 200
        }]
    );
    assert_eq!(p.inflight_bytes(), 0);
}

#[test]
fn an_acknowledgement_past_what_was_sent_ends_the_session_naming_the_peer() {
    let mut p = protected_with_batch_in_flight();
    assert!(ends_naming_peer(&ack(&mut p, 16), "10.0.0.2:7000"));
}

#[test]
fn an_acknowledgement_going_back_ends_the_session() {
    let mut p = protected_with_batch_in_flight();
    ack(&mut p, 12);
    assert!(ends_naming_peer(&ack(&mut p, 11), "10.0.0.2:7000"));
}

#[test]
fn a_recovery_site_ahead_of_the_journal_halts_the_vpg_and_one_behind_what_was_released_resyncs() {
    let mut p = announced("peer");
    let j = Some(JournalView {
        next_seq: 20,
        acked_seq: 10,
    });
    let a = p.on(
        1,
        protected::Input::Message {
            message: Message::Opened { vpg: 1, next_seq: 21 },
            journal: j,
        },
    );
    assert!(
        matches!(&a[..], [protected::Action::Halt { vpg: 1, why, refused: false }] if why.contains("another copy"))
    );

    let mut p = announced("peer");
    let a = p.on(
        1,
        protected::Input::Message {
            message: Message::Opened { vpg: 1, next_seq: 4 },
            journal: j,
        },
    );
    assert_eq!(
        a,
        vec![
            protected::Action::Send(Message::Resync { vpg: 1, from_seq: 10 }),
            protected::Action::Resume {
                vpg: 1,
                next_seq: 10,
                resync: true
            }
        ]
    );
}

#[test]
fn a_message_only_the_protected_site_sends_ends_the_session_there() {
    let mut p = ProtectedSession::new("peer".into(), 0);
    let a = p.on(
        0,
        protected::Input::Message {
            message: Message::Open(Box::new(spec(1))),
            journal: None,
        },
    );
    assert!(ends_naming_peer(&a, "peer"));
}

#[test]
fn pings_follow_silence_and_a_silent_peer_ends_the_session() {
    let mut p = ProtectedSession::new("peer".into(), 0);
    assert_eq!(p.deadline(), protected::PING_EVERY);
    assert_eq!(
        p.on(protected::PING_EVERY, protected::Input::Tick),
        vec![protected::Action::Send(Message::Ping)]
    );
    assert!(ends_naming_peer(
        &p.on(protected::PEER_TIMEOUT, protected::Input::Tick),
        "peer"
    ));
}

/// A recovery session with VPG 1 open from seq 10.
fn recovery_open() -> RecoverySession {
    let mut r = RecoverySession::new("10.0.0.1:51000".into(), 0);
    assert_eq!(
        r.on(0, recovery::Input::Message(Message::Open(Box::new(spec(1))))),
        vec![recovery::Action::Open(Box::new(spec(1)))]
    );
    assert_eq!(
        r.on(0, recovery::Input::Opened { vpg: 1, result: Ok(10) }),
        vec![recovery::Action::Send(Message::Opened { vpg: 1, next_seq: 10 })]
    );
    r
}

fn batch(first_seq: u64, count: u32) -> recovery::Input {
    recovery::Input::Batch {
        vpg: 1,
        first_seq,
        count,
        plain_bytes: 4096 * u64::from(count),
    }
}

#[test]
fn batches_are_written_then_synced_when_the_stream_pauses_and_only_then_acknowledged() {
    let mut r = recovery_open();
    assert_eq!(r.on(100, batch(10, 5)), vec![recovery::Action::Append { vpg: 1 }]);
    assert_eq!(r.on(200, batch(15, 5)), vec![recovery::Action::Append { vpg: 1 }]);
    assert_eq!(r.deadline(), 200 + recovery::ACK_DELAY);
    assert_eq!(
        r.on(r.deadline(), recovery::Input::Tick),
        vec![recovery::Action::Sync { vpg: 1 }]
    );
    // More comes while the sync runs: no second sync of the same VPG meanwhile.
    assert_eq!(r.on(2300, batch(20, 1)), vec![recovery::Action::Append { vpg: 1 }]);
    assert_eq!(r.on(4400, recovery::Input::Tick), vec![]);
    // The sync covered what was written when it began: that is what is acknowledged.
    assert_eq!(
        r.on(4500, recovery::Input::Synced { vpg: 1, durable: 20 }),
        vec![recovery::Action::Send(Message::Ack { vpg: 1, next_seq: 20 })]
    );
    assert_eq!(
        r.on(4600, recovery::Input::Tick),
        vec![recovery::Action::Sync { vpg: 1 }]
    );
}

#[test]
fn a_batch_with_a_gap_or_an_overlap_ends_the_session_naming_the_peer() {
    let mut r = recovery_open();
    assert!(ends_naming_peer(&r.on(1, batch(11, 1)), "10.0.0.1:51000"));
    let mut r = recovery_open();
    r.on(1, batch(10, 2));
    assert!(ends_naming_peer(&r.on(2, batch(11, 1)), "10.0.0.1:51000"));
}

#[test]
fn a_batch_for_a_vpg_not_opened_ends_the_session() {
    let mut r = RecoverySession::new("peer".into(), 0);
    assert!(ends_naming_peer(&r.on(1, batch(0, 1)), "peer"));
}

#[test]
fn a_replica_deleted_here_refuses_its_stream_and_drops_batches_on_their_way() {
    let mut r = recovery_open();
    let a = r.on(
        1,
        recovery::Input::Removed {
            vpg: 1,
            name: "app".into(),
        },
    );
    assert!(
        matches!(&a[..], [recovery::Action::Send(Message::Refused { vpg: 1, reason })] if reason.contains("deleted"))
    );
    assert_eq!(r.on(2, batch(10, 1)), vec![recovery::Action::Drop { vpg: 1 }]);
    assert_eq!(r.open_vpgs(), Vec::<u64>::new());
}

#[test]
fn a_message_only_the_recovery_site_sends_ends_the_session_there() {
    let mut r = RecoverySession::new("peer".into(), 0);
    let a = r.on(0, recovery::Input::Message(Message::Ack { vpg: 1, next_seq: 1 }));
    assert!(ends_naming_peer(&a, "peer"));
}

#[test]
fn requests_that_crossed_a_refusal_are_let_go_on_both_sides() {
    // Recovery side: the replica was deleted here; the peer's delta sync and resync
    // requests sent before it heard so are ignored, not taken for a broken protocol.
    let mut r = recovery_open();
    r.on(
        1,
        recovery::Input::Removed {
            vpg: 1,
            name: "app".into(),
        },
    );
    let sums = Message::SumsRequest {
        vpg: 1,
        volume: 1,
        offset: 0,
        region_bytes: 1 << 20,
        count: 4,
        at_seq: 0,
        unchanged_ok: true,
    };
    assert_eq!(r.on(2, recovery::Input::Message(sums)), vec![]);
    assert_eq!(
        r.on(3, recovery::Input::Message(Message::Resync { vpg: 1, from_seq: 20 })),
        vec![]
    );
    // Protected side: checksums that arrive after the refusal.
    let mut p = protected_with_batch_in_flight();
    p.on(
        4,
        protected::Input::Message {
            message: Message::Refused {
                vpg: 1,
                reason: "gone".into(),
            },
            journal: None,
        },
    );
    let late = Message::Sums {
        vpg: 1,
        volume: 1,
        offset: 0,
        sums: vec![[0; 16]],
    };
    assert_eq!(
        p.on(
            5,
            protected::Input::Message {
                message: late,
                journal: None
            }
        ),
        vec![]
    );
    assert_eq!(p.inflight_bytes(), 0, "what was in flight left the window");
}

/// A fence answering this session's `Open` (the VPG not open yet) is one the protected
/// site missed: the failover happened without it. One reaching an open VPG is a live
/// failover it takes part in.
#[test]
fn a_fence_is_missed_only_when_it_answers_the_open() {
    use ferry_proto::message::Shutdown;
    let fence = |held_seq| protected::Input::Message {
        message: Message::Fence {
            vpg: 1,
            epoch: 2,
            shutdown: Shutdown::Force,
            reason: String::new(),
            held_seq,
            written: 0,
        },
        journal: None,
    };
    let mut opening = announced("r");
    assert!(matches!(
        &opening.on(1, fence(12))[..],
        [protected::Action::Fence {
            missed: true,
            held_seq: 12,
            ..
        }]
    ));
    let mut open = protected_with_batch_in_flight();
    assert!(matches!(
        &open.on(1, fence(12))[..],
        [protected::Action::Fence { missed: false, .. }]
    ));
}
