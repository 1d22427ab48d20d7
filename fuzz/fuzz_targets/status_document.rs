//! cargo-fuzz target `status_document`: see `crates/transport/tests/fuzzing/targets.rs`.

#![no_main]

#[path = "../../crates/transport/tests/fuzzing/targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::status_document(data));
