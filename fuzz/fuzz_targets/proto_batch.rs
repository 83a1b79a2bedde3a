//! The fuzz target of `checks/proto_batch.rs` (the same check replays the seeds in
//! `tests/fuzz_seeds.rs`).
#![no_main]

#[path = "../checks/proto_batch.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::run(data));
