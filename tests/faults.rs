//! Faults injected at chosen points of a batch (PROTOCOL.md §6: an answer only after its
//! transaction has committed). A failing write mid-batch, a failing COMMIT, and a crash just
//! before or just after COMMIT: each keeps exactly what it promises.
//!
//! The seams: the test installs SQLite triggers in the server's own database file (a write
//! that raises an error, or a deferred foreign key that makes the COMMIT itself fail), and the
//! server's test crash markers (`IM_SERVER_TEST_CRASH_MARKERS`, src/store/mod.rs).

mod support;

use std::time::Duration;
use support::*;

/// alice and bob, friends, logged in, with nothing waiting; carol registered.
fn alice_bob_and_carol(server: &TestServer) -> (Client, Client) {
    server.register("carol");
    alice_and_bob(server)
}

/// Opens the server's database beside it and runs `sql` (the server keeps running; WAL lets
/// both use the file).
fn install(server: &TestServer, sql: &str) {
    let db = rusqlite::Connection::open(server.db_path()).expect("open the database");
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    db.execute_batch(sql).expect("install the fault");
}

/// Writes every request in one write, so the server handles them in one batch, and returns
/// the answers in order.
fn one_batch(client: &mut Client, requests: &[Request]) -> Vec<Message> {
    let mut bytes = Vec::new();
    let mut ids = Vec::new();
    for request in requests {
        let id = client.next_id();
        bytes.extend(frame(request.opcode, id, &request.body));
        ids.push(id);
    }
    client.write_raw(&bytes);
    ids.into_iter().map(|id| client.response(id)).collect()
}

/// The ids and bodies of a direct conversation, oldest first.
fn conversation(client: &mut Client, peer: &str) -> Vec<(u64, String)> {
    let (items, next) = client.call(req::history(&Target::direct(peer), 0, 200)).history_page();
    assert_eq!(next, 0);
    items.into_iter().rev().map(|item| (item.message_id, item.body)).collect()
}

fn all_store_unavailable(answers: &[Message]) {
    for (n, answer) in answers.iter().enumerate() {
        assert_eq!(answer.error_code(), Some(code::STORE_UNAVAILABLE), "answer {n}: {answer:?}");
    }
}

#[test]
fn a_failed_write_mid_batch_rolls_back_the_whole_batch() {
    let server = TestServer::start();
    let (mut alice, mut bob) = alice_bob_and_carol(&server);
    install(
        &server,
        "CREATE TRIGGER injected_write_failure AFTER INSERT ON messages
         WHEN CAST(NEW.body AS TEXT) = 'WRITE-FAIL' BEGIN SELECT RAISE(ABORT, 'injected'); END;",
    );
    let answers = one_batch(
        &mut alice,
        &[
            req::send("bob", 1, "first"),
            req::send("bob", 2, "WRITE-FAIL"),
            req::send("bob", 3, "third"),
            req::group_create("rolled back"),
            req::friend_request("carol"),
        ],
    );
    // Every command of the batch wrote, so every answer waits for the commit that failed.
    all_store_unavailable(&answers);
    bob.assert_quiet();
    assert_eq!(conversation(&mut alice, "bob"), vec![]);
    let Message::GroupList(groups) = alice.call(req::group_list()) else { panic!("no group list") };
    assert_eq!(groups.len(), 1, "only the lobby: {groups:?}");
    let (_, carol_backlog) = server.login("carol");
    assert_eq!(carol_backlog, vec![], "the friend request was rolled back");

    // The next batch is served normally; a retry of a rolled-back message stores it once.
    let (id, _) = alice.call(req::send("bob", 1, "first")).sent();
    assert_eq!(bob.push().deliver().message_id, id);
    assert_eq!(conversation(&mut alice, "bob"), vec![(id, "first".to_string())]);
}

#[test]
fn a_failed_commit_withdraws_every_answer_and_push_of_the_batch() {
    let server = TestServer::start();
    let (mut alice, mut bob) = alice_bob_and_carol(&server);
    // A deferred foreign key is checked at COMMIT: the insert succeeds, the COMMIT fails.
    install(
        &server,
        "CREATE TABLE injected (user_id INTEGER REFERENCES users(id) DEFERRABLE INITIALLY DEFERRED);
         CREATE TRIGGER injected_commit_failure AFTER INSERT ON messages
         WHEN CAST(NEW.body AS TEXT) = 'COMMIT-FAIL' BEGIN INSERT INTO injected VALUES (-1); END;",
    );
    let (before, _) = alice.call(req::send("bob", 1, "before")).sent();
    assert_eq!(bob.push().deliver().message_id, before);

    let answers = one_batch(
        &mut alice,
        &[
            req::send("bob", 2, "in the batch"),
            req::ping(),
            // A retry of a message committed before the batch writes nothing and depends on
            // nothing of it.
            req::send("bob", 1, "before"),
            req::send("bob", 3, "COMMIT-FAIL"),
            req::read("bob", before),
            req::friend_request("carol"),
            // A retry of a message of this very batch writes nothing, but its SENT must wait
            // for the commit of the original all the same.
            req::send("bob", 2, "in the batch"),
        ],
    );
    // PING and the retry of the committed message wrote nothing: their answers stand. Every
    // other answer is withdrawn.
    assert_eq!(answers[1], Message::Pong);
    assert_eq!(answers[2].sent().0, before);
    let withdrawn: Vec<Message> =
        answers.iter().enumerate().filter(|(n, _)| *n > 2 || *n == 0).map(|(_, a)| a.clone()).collect();
    all_store_unavailable(&withdrawn);
    // No push of the batch left, before or after the failed commit.
    bob.assert_quiet();
    alice.assert_quiet();
    assert_eq!(conversation(&mut bob, "alice"), vec![(before, "before".to_string())]);

    // The server goes on: the next batch commits, and the retried messages are stored once.
    let (again, _) = alice.call(req::send("bob", 2, "in the batch")).sent();
    assert!(again > before);
    assert_eq!(bob.push().deliver().message_id, again);
    assert_eq!(alice.call(req::send("bob", 2, "in the batch")).sent().0, again, "a retry is idempotent");
    assert_eq!(
        conversation(&mut bob, "alice"),
        vec![(before, "before".to_string()), (again, "in the batch".to_string())]
    );
}

/// Starts a server on a fresh directory with the crash markers on.
fn crashable() -> TestServer {
    let dir = tempfile::tempdir().expect("temporary directory");
    TestServer::start_in_with_env(dir, &[], &[("IM_SERVER_TEST_CRASH_MARKERS", "1")])
}

/// The server aborts after the batch's last write and before its COMMIT: no answer was sent,
/// and after a restart nothing of the batch is stored; what committed earlier is.
#[test]
fn a_crash_before_commit_keeps_nothing_of_the_batch() {
    let server = crashable();
    let (mut alice, mut bob) = alice_bob_and_carol(&server);
    let (kept, _) = alice.call(req::send("bob", 1, "committed earlier")).sent();
    assert_eq!(bob.push().deliver().message_id, kept);

    let mut bytes = frame(op::SEND, alice.next_id(), &req::send("bob", 2, "same batch").body);
    bytes.extend(frame(op::SEND, alice.next_id(), &req::send("bob", 3, "CRASH-BEFORE-COMMIT").body));
    alice.write_raw(&bytes);
    alice.assert_closed();
    let (status, dir) = server.wait_for_exit();
    assert!(!status.success(), "aborted: {status:?}");

    let server = TestServer::start_in(dir, &[]);
    let (mut bob, backlog) = server.login("bob");
    let pending: Vec<u64> = backlog.iter().filter_map(Message::item_id).collect();
    assert_eq!(pending, [kept], "bob had not acknowledged it; nothing of the crashed batch");
    assert_eq!(conversation(&mut bob, "alice"), vec![(kept, "committed earlier".to_string())]);
    let mut alice = server.device("alice");
    // The unacknowledged messages are simply sent again, and stored once.
    let (second, _) = alice.call(req::send("bob", 2, "same batch")).sent();
    assert!(second > kept);
    assert_eq!(conversation(&mut alice, "bob").len(), 2);
}

/// The server aborts right after COMMIT, before any answer is written: the client never got
/// SENT, yet the batch is durable; a retry after the restart gets the original SENT and
/// stores nothing twice.
#[test]
fn a_crash_after_commit_keeps_the_batch_and_retries_get_the_original_answer() {
    let server = crashable();
    let (mut alice, mut bob) = alice_bob_and_carol(&server);
    let mut bytes = frame(op::SEND, alice.next_id(), &req::send("bob", 2, "same batch").body);
    bytes.extend(frame(op::SEND, alice.next_id(), &req::send("bob", 3, "CRASH-AFTER-COMMIT").body));
    alice.write_raw(&bytes);
    alice.assert_closed();
    bob.assert_closed();
    let (status, dir) = server.wait_for_exit();
    assert!(!status.success(), "aborted: {status:?}");

    let server = TestServer::start_in(dir, &[]);
    let mut alice = server.device("alice");
    let stored = conversation(&mut alice, "bob");
    let bodies: Vec<&str> = stored.iter().map(|(_, body)| body.as_str()).collect();
    assert_eq!(bodies, ["same batch", "CRASH-AFTER-COMMIT"]);
    let retried: Vec<u64> = [req::send("bob", 2, "same batch"), req::send("bob", 3, "CRASH-AFTER-COMMIT")]
        .into_iter()
        .map(|request| alice.call(request).sent().0)
        .collect();
    assert_eq!(retried, stored.iter().map(|(id, _)| *id).collect::<Vec<_>>(), "the original SENTs");
    assert_eq!(conversation(&mut alice, "bob").len(), 2, "nothing stored twice");
    // bob never acknowledged them: his device gets both at its next login.
    let (_, backlog) = server.login("bob");
    let ids: Vec<u64> = backlog.iter().filter_map(Message::item_id).collect();
    assert_eq!(ids, retried);
}
