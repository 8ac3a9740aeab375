//! Promises of PROTOCOL.md that once had no test able to fail (found by applying one realistic
//! bug at a time and running the suite, issue 15): each test here names the bug it catches.

mod support;

use support::*;

/// Catches: the retry window rebuilt at start keeping each sender's oldest 256 sends instead
/// of the newest. After 300 sends and a restart, retrying any of the newest 256 returns the
/// original `SENT` and stores nothing.
#[test]
fn retries_after_a_restart_find_the_newest_256_sends() {
    let server = TestServer::start();
    let (mut alice, _bob) = alice_and_bob(&server);
    let sends: Vec<Request> = (1..=300).map(|n| req::send("bob", n, &format!("m{n}"))).collect();
    let sent: Vec<Message> = alice.pipeline(&sends);
    drop(alice);
    let (status, dir) = server.terminate();
    assert!(status.success());

    let server = TestServer::start_in(dir, &[]);
    let mut alice = server.device("alice");
    let retries: Vec<Request> = (45..=300).map(|n| req::send("bob", n, &format!("m{n}"))).collect();
    assert_eq!(alice.pipeline(&retries), sent[44..].to_vec(), "the original SENTs");
    let (items, _) = alice.call(req::history(&Target::direct("bob"), 0, 1)).history_page();
    assert_eq!(items[0].message_id, sent[299].sent().0, "nothing new was stored");
}

/// Catches: the offline-queue count off by one after an ACK. With `--max-offline 5` full,
/// acknowledging exactly two makes room for exactly two.
#[test]
fn acknowledging_k_messages_makes_room_for_exactly_k() {
    let server = TestServer::start_with(&["--max-offline", "5"]);
    let (mut alice, bob) = alice_and_bob(&server);
    drop(bob);
    assert_eq!(alice.push(), presence_of("bob", false));
    let ids: Vec<u64> = (0..5).map(|n| alice.call(req::send("bob", n, "q")).sent().0).collect();
    assert_eq!(alice.call(req::send("bob", 5, "full")).error_code(), Some(code::RECIPIENT_QUEUE_FULL));

    let (mut bob, backlog) = server.login("bob");
    assert_eq!(backlog.len(), 5);
    bob.ack(ids[1]);
    for n in 6..8 {
        assert!(matches!(alice.call(req::send("bob", n, "fits")), Message::Sent { .. }), "message {n}");
    }
    assert_eq!(alice.call(req::send("bob", 8, "full again")).error_code(), Some(code::RECIPIENT_QUEUE_FULL));
}

/// Catches: a READ at or below the stored position pushed or stored again (the check that
/// it moved forward skipped). A second READ of the same id is answered OK and pushes nothing;
/// a READ of a conversation without messages stores and pushes nothing.
#[test]
fn a_read_that_does_not_move_forward_pushes_nothing() {
    let server = TestServer::start();
    let (mut alice, mut bob) = alice_and_bob(&server);
    assert_eq!(bob.call(req::read("alice", 5)), Message::Ok, "nothing to read yet");
    alice.assert_quiet();
    let (id, _) = alice.call(req::send("bob", 1, "read me")).sent();
    bob.push();
    assert_eq!(bob.call(req::read("alice", id)), Message::Ok);
    assert!(matches!(alice.push(), Message::ReadReceipt { up_to_message_id, .. } if up_to_message_id == id));
    assert_eq!(bob.call(req::read("alice", id)), Message::Ok);
    assert_eq!(bob.call(req::read("alice", id - 1)), Message::Ok);
    alice.assert_quiet();
}

/// Catches: a sender's other devices getting no copy when no recipient is online.
#[test]
fn a_senders_other_devices_get_a_copy_when_the_recipient_is_offline() {
    let server = TestServer::start();
    let (mut phone, bob) = alice_and_bob(&server);
    drop(bob);
    assert_eq!(phone.push(), presence_of("bob", false));
    let (_, backlog) = server.login_device("alice", 2);
    assert!(backlog.iter().all(|m| m.item_id().is_none() || matches!(m, Message::FriendEvent { .. })));
    let (mut laptop, _) = server.login_device("alice", 2);
    let (id, _) = phone.call(req::send("bob", 1, "from the phone")).sent();
    let copy = laptop.push();
    let deliver = copy.deliver();
    assert_eq!((deliver.message_id, deliver.from.as_str(), &deliver.to), (id, "alice", &Target::direct("bob")));
    phone.assert_quiet();
}

/// Catches: a live item during a backlog pushed after `SYNC_DONE` (or before older items).
/// PROTOCOL.md §6: items that happen while the backlog is pushed are part of it.
#[test]
fn a_live_item_during_a_backlog_comes_before_sync_done_in_its_place() {
    const BACKLOG: u64 = 3000;
    let server = TestServer::start();
    let (mut alice, bob) = alice_and_bob(&server);
    drop(bob);
    assert_eq!(alice.push(), presence_of("bob", false));
    // 3000 × 4 KB: more than socket buffers take, so bob is still syncing when alice writes.
    let body = "q".repeat(4000);
    let sends: Vec<Request> = (0..BACKLOG).map(|n| req::send("bob", n + 1, &body)).collect();
    let mut expected: Vec<u64> = alice.pipeline(&sends).iter().map(|r| r.sent().0).collect();
    let mut bob = server.hello();
    bob.login("bob");
    assert_eq!(bob.push().item_id(), Some(expected[0]), "the backlog has started");
    let (live, _) = alice.call(req::send("bob", 99_999, "live")).sent();
    expected.push(live);
    let mut got = vec![expected[0]];
    let count = loop {
        match bob.push() {
            Message::SyncDone { count } => break count,
            message => got.push(message.item_id().expect("an item")),
        }
    };
    assert_eq!(got, expected, "every item once, in id order, the live one last");
    assert_eq!(count as usize, expected.len());
    bob.assert_quiet();
}

/// Catches: a zero limit read as "none allowed" instead of "unlimited" (`--max-sessions 0`,
/// `--register-limit 0`, as im-bench runs the server).
#[test]
fn zero_limits_mean_unlimited() {
    let server = TestServer::start_with(&["--max-sessions", "0", "--register-limit", "0", "--limit-loopback"]);
    let mut client = server.hello();
    for n in 0..12 {
        assert_eq!(client.call(register_request(&format!("user{n}"))), Message::Ok, "registration {n}");
    }
    let sessions: Vec<Client> = (0..12).map(|_| server.device("user0")).collect();
    assert_eq!(sessions.len(), 12);
}
