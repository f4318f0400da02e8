//! libFuzzer entry point for the `frame` target; the body is `warren_fuzz::frame::run`
//! (tests/fuzz/src/frame.rs), which says what it covers and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| warren_fuzz::frame::run(data));
