//! Fuzzes the whole command layer through the shared harness (`../command_harness.rs`, whose
//! doc gives the input layout and the invariants checked).
//!
//! The database is replaced every `INPUTS_PER_DATABASE` inputs.

#![no_main]

#[path = "../command_harness.rs"]
mod command_harness;

use command_harness::Harness;
use libfuzzer_sys::fuzz_target;
use std::cell::{Cell, RefCell};
use std::path::PathBuf;

/// Inputs run against one database before it is replaced by a fresh one. Every input logs in,
/// and a login reads all of the user's groups, so a database that fuzzing has filled with
/// thousands of groups would make each input slower than the last.
const INPUTS_PER_DATABASE: u64 = 5_000;

thread_local! {
    static HARNESS: RefCell<Option<Harness>> = const { RefCell::new(None) };
    static INPUTS: Cell<u64> = const { Cell::new(0) };
}

fuzz_target!(|data: &[u8]| {
    let n = INPUTS.with(|c| c.replace(c.get() + 1));
    HARNESS.with(|cell| {
        let mut slot = cell.borrow_mut();
        if n.is_multiple_of(INPUTS_PER_DATABASE) {
            // Drop the old harness, which closes and removes its database.
            *slot = None;
        }
        slot.get_or_insert_with(|| Harness::new(database_path())).run(data);
    });
});

fn database_path() -> PathBuf {
    std::env::temp_dir().join(format!("im-fuzz-command-stream-{}.db", std::process::id()))
}

