//! The fuzz target of `checks/meta_envelope.rs` (the same check replays the seeds in
//! `tests/fuzz_seeds.rs`).
#![no_main]

#[path = "../checks/meta_envelope.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::run(data));
