//! libFuzzer entry point for the `table` target; the body is `warren_fuzz::table::run`
//! (tests/fuzz/src/table.rs), which says what it covers and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| warren_fuzz::table::run(data));
