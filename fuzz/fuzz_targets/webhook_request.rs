//! cargo-fuzz target `webhook_request`: see `crates/transport/tests/fuzzing/targets.rs`.

#![no_main]

#[path = "../../crates/transport/tests/fuzzing/targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::webhook_request(data));
