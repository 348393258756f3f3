#![no_main]
//! `cargo +nightly fuzz run challenge`: see `regcache::fuzzing::challenge` for what must hold.
libfuzzer_sys::fuzz_target!(|data: &[u8]| regcache::fuzzing::challenge(data));
