//! libFuzzer entry point for the `method` target; the body is `warren_fuzz::method::run`
//! (tests/fuzz/src/method.rs), which says what it covers and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| warren_fuzz::method::run(data));
