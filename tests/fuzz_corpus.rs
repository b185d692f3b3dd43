//! Replays every committed fuzz input (the seed corpus and any saved crash inputs) through the fuzz
//! harness on stable, so `cargo test` keeps them passing without a fuzzer.

use std::fs;
use std::panic;
use std::path::Path;

use epoll_echo::fuzzing::echo_stream;

const DIRS: [&str; 2] = ["fuzz/corpus/echo_stream", "fuzz/regressions/echo_stream"];

#[test]
fn every_committed_fuzz_input_passes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut replayed = 0;
    for dir in DIRS {
        let Ok(entries) = fs::read_dir(root.join(dir)) else {
            continue;
        };
        let mut paths: Vec<_> = entries.map(|e| e.expect("corpus entry").path()).collect();
        paths.sort();
        for path in paths {
            let data = fs::read(&path).expect("readable corpus file");
            if panic::catch_unwind(|| echo_stream(&data)).is_err() {
                panic!("fuzz input {} fails", path.display());
            }
            replayed += 1;
        }
    }
    // The seed corpus is committed: finding none means the path or the checkout is wrong.
    assert!(replayed >= 20, "only {replayed} fuzz inputs found");
}
