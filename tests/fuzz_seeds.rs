//! Every fuzz target's check replayed over its seed corpus (`fuzz/seeds/TARGET`) and, where
//! a fuzzing run left one, its corpus (`fuzz/corpus/TARGET`), as ordinary tests: a decoder
//! change that breaks on a known input fails here in seconds, without the fuzzing
//! toolchain. The timed fuzzing itself runs in `scripts/test.sh`.

use std::path::Path;

#[path = "../fuzz/checks/dirty_map.rs"]
#[allow(dead_code)]
mod dirty_map;
#[path = "../fuzz/checks/history_index.rs"]
#[allow(dead_code)]
mod history_index;
#[path = "../fuzz/checks/history_segment.rs"]
#[allow(dead_code)]
mod history_segment;
#[path = "../fuzz/checks/journal_format.rs"]
#[allow(dead_code)]
mod journal_format;
#[path = "../fuzz/checks/journal_recovery.rs"]
#[allow(dead_code)]
mod journal_recovery;
#[path = "../fuzz/checks/meta_envelope.rs"]
#[allow(dead_code)]
mod meta_envelope;
#[path = "../fuzz/checks/nbd_options.rs"]
#[allow(dead_code)]
mod nbd_options;
#[path = "../fuzz/checks/nbd_requests.rs"]
#[allow(dead_code)]
mod nbd_requests;
#[path = "../fuzz/checks/nbd_stream.rs"]
#[allow(dead_code)]
mod nbd_stream;
#[path = "../fuzz/checks/proto_batch.rs"]
#[allow(dead_code)]
mod proto_batch;
#[path = "../fuzz/checks/proto_handshake.rs"]
#[allow(dead_code)]
mod proto_handshake;
#[path = "../fuzz/checks/proto_payload.rs"]
#[allow(dead_code)]
mod proto_payload;

/// Runs `check` over every file of the target's seeds and corpus; says how many.
fn replay(target: &str, check: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut inputs = 0;
    for dir in ["seeds", "corpus"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for e in entries {
            let path = e.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let r = std::panic::catch_unwind(|| check(&data));
            assert!(r.is_ok(), "{target}: the check failed on {}", path.display());
            inputs += 1;
        }
    }
    assert!(inputs > 0, "{target} has no seeds in fuzz/seeds/{target}");
    eprintln!("{target}: {inputs} inputs replayed");
}

#[test]
fn dirty_map_seeds() {
    replay("dirty_map", dirty_map::run);
}

#[test]
fn history_index_seeds() {
    replay("history_index", history_index::run);
}

#[test]
fn history_segment_seeds() {
    replay("history_segment", history_segment::run);
}

#[test]
fn journal_format_seeds() {
    replay("journal_format", journal_format::run);
}

#[test]
fn journal_recovery_seeds() {
    replay("journal_recovery", journal_recovery::run);
}

#[test]
fn meta_envelope_seeds() {
    replay("meta_envelope", meta_envelope::run);
}

#[test]
fn nbd_options_seeds() {
    replay("nbd_options", nbd_options::run);
}

#[test]
fn nbd_requests_seeds() {
    replay("nbd_requests", nbd_requests::run);
}

#[test]
fn nbd_stream_seeds() {
    replay("nbd_stream", nbd_stream::run);
}

#[test]
fn proto_batch_seeds() {
    replay("proto_batch", proto_batch::run);
}

#[test]
fn proto_handshake_seeds() {
    replay("proto_handshake", proto_handshake::run);
}

#[test]
fn proto_payload_seeds() {
    replay("proto_payload", proto_payload::run);
}
