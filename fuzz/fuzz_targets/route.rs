#![no_main]
//! `cargo +nightly fuzz run route`: see `regcache::fuzzing::route` for what must hold.
libfuzzer_sys::fuzz_target!(|data: &[u8]| regcache::fuzzing::route(data));
