#![no_main]
//! `cargo +nightly fuzz run config`: see `regcache::fuzzing::config` for what must hold.
libfuzzer_sys::fuzz_target!(|data: &[u8]| regcache::fuzzing::config(data));
