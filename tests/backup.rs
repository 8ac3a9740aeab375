//! `im-server backup` (README, "Backup and restore"): a consistent copy taken while the server
//! is under load holds every message acknowledged before the backup started, and restores by
//! starting a server on it.

mod support;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use support::*;

fn run_backup(db: &std::path::Path, to: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_im-server"))
        .arg("backup")
        .arg("--db")
        .arg(db)
        .arg("--to")
        .arg(to)
        .output()
        .expect("run im-server backup")
}

#[test]
fn a_backup_under_load_holds_everything_acknowledged_before_it_and_restores() {
    let server = TestServer::start();
    server.register_all(&["alice", "bob"]);
    let mut alice = server.device("alice");
    let mut bob = server.device("bob");
    make_friends(&mut alice, &mut bob);
    drop(bob);
    assert_eq!(alice.push(), presence_of("bob", false));

    // alice sends without pause from a thread of her own, recording every SENT.
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (acknowledged, stop) = (Arc::clone(&acknowledged), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let batch: Vec<Request> = (n..n + 100).map(|k| req::send("bob", k + 1, &format!("m{k}"))).collect();
                let ids: Vec<u64> = alice.pipeline(&batch).iter().map(|r| r.sent().0).collect();
                acknowledged.lock().unwrap().extend(ids);
                n += 100;
            }
        })
    };
    while acknowledged.lock().unwrap().len() < 2000 {
        std::thread::yield_now();
    }
    let before: Vec<u64> = acknowledged.lock().unwrap().clone();
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("im.db");
    let output = run_backup(&server.db_path(), &copy);
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("integrity ok"), "{stdout}");
    let after = acknowledged.lock().unwrap().len();
    assert!(after > before.len(), "the server kept serving during the backup");

    // A target that exists is refused, and left alone.
    let again = run_backup(&server.db_path(), &copy);
    assert!(!again.status.success());

    // Restore: a server on the copy. bob's device never acknowledged: its backlog is exactly
    // the copy's messages, every one acknowledged before the backup among them.
    let restored = TestServer::start_in(dir, &["--device-backlog-cap", "1000000"]);
    let (_, backlog) = restored.login("bob");
    let ids: Vec<u64> = backlog.iter().filter_map(Message::item_id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    let missing: Vec<&u64> = before.iter().filter(|id| ids.binary_search(id).is_err()).collect();
    assert!(missing.is_empty(), "{} acknowledged messages missing from the backup", missing.len());
}
