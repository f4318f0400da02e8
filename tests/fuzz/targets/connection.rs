//! libFuzzer entry point for the `connection` target; the body is `warren_fuzz::connection::run`
//! (tests/fuzz/src/connection.rs), which says what it covers and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| warren_fuzz::connection::run(data));
