//! The fuzz target of `checks/history_index.rs` (the same check replays the seeds in
//! `tests/fuzz_seeds.rs`).
#![no_main]

#[path = "../checks/history_index.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::run(data));
