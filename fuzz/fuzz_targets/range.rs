#![no_main]
//! `cargo +nightly fuzz run range`: see `regcache::fuzzing::range` for what must hold.
libfuzzer_sys::fuzz_target!(|data: &[u8]| regcache::fuzzing::range(data));
