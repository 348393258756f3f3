#![no_main]
//! `cargo +nightly fuzz run manifest`: see `regcache::fuzzing::manifest` for what must hold.
libfuzzer_sys::fuzz_target!(|data: &[u8]| regcache::fuzzing::manifest(data));
