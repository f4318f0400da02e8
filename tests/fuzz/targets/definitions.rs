//! libFuzzer entry point for the `definitions` target; the body is `warren_fuzz::definitions::run`
//! (tests/fuzz/src/definitions.rs), which says what it covers and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| warren_fuzz::definitions::run(data));
