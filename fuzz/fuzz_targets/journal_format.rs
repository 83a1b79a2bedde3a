//! The fuzz target of `checks/journal_format.rs` (the same check replays the seeds in
//! `tests/fuzz_seeds.rs`).
#![no_main]

#[path = "../checks/journal_format.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::run(data));
