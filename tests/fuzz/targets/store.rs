//! libFuzzer entry point for the `store` target; the body is `warren_fuzz::store::run`
//! (tests/fuzz/src/store.rs), which says what it covers and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| warren_fuzz::store::run(data));
