//! Replays the command-stream fuzz corpus (`fuzz/corpus/command_stream/`) through the fuzz
//! target's own harness, so every input the fuzzer kept is checked by `cargo test` without
//! libFuzzer: no panic, every staged frame decodes, one response per request in order.

#[path = "../fuzz/command_harness.rs"]
mod command_harness;

use command_harness::Harness;
use std::path::Path;

#[test]
fn every_command_stream_corpus_input_replays_cleanly() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/command_stream");
    let mut inputs: Vec<_> = std::fs::read_dir(&dir)
        .expect("the corpus is in the repository")
        .map(|entry| entry.expect("a corpus entry").path())
        .collect();
    inputs.sort();
    assert!(inputs.len() > 100, "the corpus has only {} inputs", inputs.len());
    let db = tempfile::tempdir().expect("a temporary directory");
    let mut harness = Harness::new(db.path().join("corpus.db"));
    for input in &inputs {
        let data = std::fs::read(input).expect("a readable corpus input");
        harness.run(&data);
    }
}
