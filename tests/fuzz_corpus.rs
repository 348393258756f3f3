//! Replays every fuzz target's committed corpus and crash reproducers (`fuzz/corpus/<target>/`,
//! `fuzz/regressions/<target>/`) through its body on stable, so a fixed crash stays fixed and
//! `cargo test` exercises the targets without nightly or cargo-fuzz. Fuzzing itself:
//! `cargo +nightly fuzz run <target>` (see BENCHMARKS.md, "Fuzzing", for what has been run).

use std::path::Path;

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 5] = [
    ("route", regcache::fuzzing::route),
    ("range", regcache::fuzzing::range),
    ("challenge", regcache::fuzzing::challenge),
    ("manifest", regcache::fuzzing::manifest),
    ("config", regcache::fuzzing::config),
];

#[test]
fn every_corpus_input_and_reproducer_passes_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut seen = 0;
    for (name, target) in TARGETS {
        let mut inputs = 0;
        for dir in ["corpus", "regressions"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir).join(name)) else {
                continue;
            };
            for e in entries.flatten() {
                let data = std::fs::read(e.path()).unwrap();
                let path = e.path();
                let ok = std::panic::catch_unwind(|| target(&data));
                assert!(ok.is_ok(), "fuzz target {name} fails on {}", path.display());
                inputs += 1;
            }
        }
        assert!(inputs > 0, "fuzz target {name} has no committed corpus");
        seen += inputs;
    }
    println!("replayed {seen} fuzz inputs");
}
