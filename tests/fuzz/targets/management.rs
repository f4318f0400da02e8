//! libFuzzer entry point for the `management` target; the body is `warren_fuzz::management::run`
//! (tests/fuzz/src/management.rs), which says what it covers and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| warren_fuzz::management::run(data));
