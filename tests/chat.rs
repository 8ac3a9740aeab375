//! Direct messages: SEND, delivery to every device, idempotent retries, offline delivery and
//! ACK, HISTORY paging and READ receipts (PROTOCOL.md §6).

mod support;

use std::time::{SystemTime, UNIX_EPOCH};

use support::{Deliver, Message, Target, TestServer, alice_and_bob, code, req};

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

#[test]
fn send_reaches_every_device_but_the_sending_one() {
    let server = TestServer::start();
    let (mut alice_phone, mut bob_phone) = alice_and_bob(&server);
    let mut alice_laptop = server.device("alice");
    let mut bob_laptop = server.device("bob");
    let before = now_ms();
    let (message_id, timestamp_ms) = alice_phone.call(req::send("bob", 7, "hi")).sent();
    assert!(
        (before.saturating_sub(5_000)..now_ms() + 5_000).contains(&timestamp_ms),
        "timestamp {timestamp_ms} is not now"
    );
    let expected = Message::Deliver(Deliver {
        message_id,
        timestamp_ms,
        from: "alice".into(),
        to: Target::direct("bob"),
        body: "hi".into(),
    });
    assert_eq!(bob_phone.push(), expected);
    assert_eq!(bob_laptop.push(), expected);
    assert_eq!(alice_laptop.push(), expected);
    alice_phone.assert_quiet();
    bob_phone.assert_quiet();
}

#[test]
fn send_errors() {
    let server = TestServer::start_with(&["--max-body", "100"]);
    server.register("carol");
    let (mut alice, mut bob) = alice_and_bob(&server);
    let hundred_bytes_of_two_byte_chars = "\u{e9}".repeat(50);
    let cases = [
        ("a stranger", req::send("carol", 1, "hi"), Some(code::NOT_FRIENDS)),
        ("an unknown name", req::send("nobody", 2, "hi"), Some(code::NOT_FRIENDS)),
        ("an empty body", req::send("bob", 3, ""), Some(code::INVALID_BODY)),
        ("101 bytes", req::send("bob", 4, &"x".repeat(101)), Some(code::INVALID_BODY)),
        ("100 bytes", req::send("bob", 5, &"x".repeat(100)), None),
        ("50 two-byte characters", req::send("bob", 6, &hundred_bytes_of_two_byte_chars), None),
        ("51 two-byte characters", req::send("bob", 7, &"\u{e9}".repeat(51)), Some(code::INVALID_BODY)),
    ];
    let mut delivered = Vec::new();
    for (label, request, expected) in cases {
        let reply = alice.call(request);
        match expected {
            Some(code) => assert_eq!(reply.error_code(), Some(code), "{label}: {reply:?}"),
            None => {
                let (message_id, _) = reply.sent();
                delivered.push(message_id);
            }
        }
    }
    let pushed: Vec<_> = bob.barrier().iter().map(|m| m.deliver().message_id).collect();
    assert_eq!(pushed, delivered);
    // A stranger and a name that does not exist get the same answer.
    let stranger = alice.call(req::send("carol", 8, "hi"));
    let unknown = alice.call(req::send("nobody", 9, "hi"));
    assert_eq!(stranger.error_without_name("carol"), unknown.error_without_name("nobody"));
}

#[test]
fn a_retry_returns_the_original_sent_and_stores_nothing() {
    let server = TestServer::start();
    let (mut alice, mut bob) = alice_and_bob(&server);
    let first = alice.call(req::send("bob", 42, "once"));
    assert_eq!(bob.push().deliver().message_id, first.sent().0);
    assert_eq!(alice.call(req::send("bob", 42, "once")), first);
    // From another device of the same sender too: the key is (sender, client_msg_id).
    let mut alice_laptop = server.device("alice");
    assert_eq!(alice_laptop.call(req::send("bob", 42, "once")), first);
    bob.assert_quiet();
    let (items, _) = bob.call(req::history(&Target::direct("alice"), 0, 10)).history_page();
    assert_eq!(items.len(), 1, "{items:?}");
    // Another sender with the same client_msg_id sends a message of its own.
    let (reply_id, _) = bob.call(req::send("alice", 42, "mine")).sent();
    assert!(reply_id > first.sent().0);
}

#[test]
fn the_dedup_window_holds_the_most_recent_messages() {
    let server = TestServer::start_with(&["--dedup-window", "2"]);
    let (mut alice, mut bob) = alice_and_bob(&server);
    let sent: Vec<_> = (1..=3).map(|client_msg_id| alice.call(req::send("bob", client_msg_id, "m"))).collect();
    assert_eq!(alice.call(req::send("bob", 3, "m")), sent[2]);
    assert_eq!(alice.call(req::send("bob", 2, "m")), sent[1]);
    // Message 1 has left the window: its retry is a new message.
    let (retried, _) = alice.call(req::send("bob", 1, "m")).sent();
    assert!(retried > sent[2].sent().0);
    assert_eq!(bob.barrier().len(), 4);
}

#[test]
fn message_ids_increase_across_messages_groups_and_friend_events() {
    let server = TestServer::start();
    server.register("carol");
    let (mut alice, mut bob) = alice_and_bob(&server);
    let mut ids = vec![alice.call(req::send("bob", 1, "a")).sent().0];
    ids.push(bob.call(req::group_send(support::LOBBY, 1, "b")).sent().0);
    assert_eq!(alice.call(req::friend_request("carol")), Message::FriendRequestOk { outcome: 0 });
    let (_, carol_backlog) = server.login("carol");
    let friend_event = carol_backlog
        .iter()
        .find(|item| matches!(item, Message::FriendEvent { .. }))
        .expect("friend request in carol's backlog");
    ids.push(friend_event.message_id().unwrap());
    ids.push(bob.call(req::send("alice", 2, "c")).sent().0);
    assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "{ids:?}");
}

#[test]
fn ten_thousand_offline_messages_arrive_in_order_exactly_once() {
    const COUNT: usize = 10_000;
    // Above the count: this test is about a long backlog, not about the cap (see sync_gap.rs).
    let server = TestServer::start_with(&["--device-backlog-cap", "20000"]);
    let (mut alice, bob) = alice_and_bob(&server);
    assert_eq!(bob.username.as_deref(), Some("bob"));
    drop(bob);
    assert_eq!(alice.push(), support::presence_of("bob", false));
    let requests: Vec<_> = (0..COUNT).map(|n| req::send("bob", n as u64 + 1, &format!("message {n}"))).collect();
    let sent: Vec<u64> = alice.pipeline(&requests).iter().map(|reply| reply.sent().0).collect();
    assert!(sent.windows(2).all(|pair| pair[0] < pair[1]));

    let (mut bob, backlog) = server.login("bob");
    assert_eq!(backlog.len(), COUNT);
    for (n, (message, id)) in backlog.iter().zip(&sent).enumerate() {
        let deliver = message.deliver();
        assert_eq!((deliver.message_id, deliver.body.as_str()), (*id, format!("message {n}").as_str()));
    }
    bob.ack(*sent.last().unwrap());
    let (_, after_ack) = server.login("bob");
    assert_eq!(after_ack, vec![]);
    // A user's own messages are never pushed back at login.
    let (_, alice_backlog) = server.login("alice");
    assert_eq!(alice_backlog, vec![]);
}

#[test]
fn unacknowledged_messages_are_pushed_again() {
    let server = TestServer::start();
    let (mut alice, bob) = alice_and_bob(&server);
    bob.kill();
    assert_eq!(alice.push(), support::presence_of("bob", false));
    let ids: Vec<u64> = (1..=3).map(|n| alice.call(req::send("bob", n, &format!("m{n}"))).sent().0).collect();
    let (mut bob, backlog) = server.login("bob");
    let pushed: Vec<_> = backlog.iter().map(|m| m.deliver().message_id).collect();
    assert_eq!(pushed, ids);
    bob.ack(ids[0]);
    bob.kill();
    let (_, backlog) = server.login("bob");
    let pushed: Vec<_> = backlog.iter().map(|m| m.deliver().message_id).collect();
    assert_eq!(pushed, &ids[1..]);
}

#[test]
fn live_messages_also_wait_for_an_ack() {
    let server = TestServer::start();
    let (mut alice, mut bob) = alice_and_bob(&server);
    let (id, _) = alice.call(req::send("bob", 1, "live")).sent();
    assert_eq!(bob.push().deliver().message_id, id);
    // Received live but not acknowledged: a later login gets it again.
    let (mut laptop, backlog) = server.login("bob");
    assert_eq!(backlog.len(), 1);
    assert_eq!(backlog[0].deliver().message_id, id);
    // An ACK from any device counts for all of them.
    laptop.ack(id);
    let (_, backlog) = server.login("bob");
    assert_eq!(backlog, vec![]);
}

#[test]
fn ack_never_moves_backwards() {
    let server = TestServer::start();
    let (mut alice, mut bob) = alice_and_bob(&server);
    let ids: Vec<u64> = (1..=3).map(|n| alice.call(req::send("bob", n, "m")).sent().0).collect();
    bob.ack(ids[2]);
    bob.ack(ids[0]);
    let (_, backlog) = server.login("bob");
    assert_eq!(backlog, vec![]);
}

#[test]
fn history_pages_newest_first() {
    let server = TestServer::start();
    let (mut alice, mut bob) = alice_and_bob(&server);
    let mut sent = Vec::new();
    for n in 0..25u64 {
        let (sender, peer, name) = if n % 3 == 0 { (&mut bob, "alice", "bob") } else { (&mut alice, "bob", "alice") };
        let body = format!("message {n}");
        let (message_id, timestamp_ms) = sender.call(req::send(peer, n + 1, &body)).sent();
        sent.push(support::HistoryItem { message_id, timestamp_ms, sender: name.to_string(), body });
    }
    sent.reverse();

    let mut pages = Vec::new();
    let mut before = 0;
    loop {
        let (items, next_before) = alice.call(req::history(&Target::direct("bob"), before, 10)).history_page();
        pages.push(items);
        if next_before == 0 {
            break;
        }
        assert!(pages.len() < 5, "paging does not end");
        before = next_before;
    }
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [10, 10, 5]);
    assert_eq!(pages.concat(), sent);
    // Both participants read the same conversation; limit 200 is allowed.
    let (items, next_before) = bob.call(req::history(&Target::direct("alice"), 0, 200)).history_page();
    assert_eq!((items, next_before), (sent.clone(), 0));
    // before_message_id is exclusive.
    let (items, _) = bob.call(req::history(&Target::direct("alice"), sent[3].message_id, 2)).history_page();
    assert_eq!(items, &sent[4..6]);
}

#[test]
fn history_limit_must_be_1_to_200() {
    let server = TestServer::start();
    let (mut alice, _bob) = alice_and_bob(&server);
    for limit in [0u16, 201, u16::MAX] {
        let reply = alice.call(req::history(&Target::direct("bob"), 0, limit));
        assert_eq!(reply.error_code(), Some(code::INVALID_ARGUMENT), "{limit}: {reply:?}");
    }
    let reply = alice.call(req::history(&Target::direct("bob"), 0, 1));
    assert_eq!(reply.history_page(), (vec![], 0));
}

#[test]
fn history_outlives_the_friendship() {
    let server = TestServer::start();
    let (mut alice, mut bob) = alice_and_bob(&server);
    let (id, _) = alice.call(req::send("bob", 1, "remember me")).sent();
    assert_eq!(alice.call(req::friend_remove("bob")), Message::Ok);
    let (items, _) = bob.call(req::history(&Target::direct("alice"), 0, 10)).history_page();
    assert_eq!(items.iter().map(|i| i.message_id).collect::<Vec<_>>(), [id]);
}

#[test]
fn read_receipts() {
    let server = TestServer::start();
    let (mut alice_phone, mut bob) = alice_and_bob(&server);
    let mut alice_laptop = server.device("alice");
    let (id, _) = alice_phone.call(req::send("bob", 1, "did you read this?")).sent();
    assert_eq!(alice_laptop.push().deliver().message_id, id);
    assert_eq!(bob.push().deliver().message_id, id);
    assert_eq!(bob.call(req::read("alice", id)), Message::Ok);
    for alice in [&mut alice_phone, &mut alice_laptop] {
        let receipt = alice.push();
        assert!(
            matches!(&receipt, Message::ReadReceipt { reader, peer, up_to_message_id, .. }
                if reader == "bob" && peer == "alice" && *up_to_message_id == id),
            "{receipt:?}"
        );
    }
}

#[test]
fn read_is_for_friends_only() {
    let server = TestServer::start();
    server.register("carol");
    let (mut alice, _bob) = alice_and_bob(&server);
    let stranger = alice.call(req::read("carol", 1));
    let unknown = alice.call(req::read("nobody", 1));
    assert_eq!(stranger.error_code(), Some(code::NOT_FRIENDS), "{stranger:?}");
    assert_eq!(stranger.error_without_name("carol"), unknown.error_without_name("nobody"));
}

#[test]
fn a_live_message_during_the_backlog_keeps_id_order_exactly_once() {
    const BACKLOG: usize = 3000;
    let server = TestServer::start();
    let (mut alice, bob) = alice_and_bob(&server);
    bob.kill();
    assert_eq!(alice.push(), support::presence_of("bob", false));
    let requests: Vec<_> =
        (0..BACKLOG).map(|n| req::send("bob", n as u64 + 1, &format!("queued {n:04} {}", "x".repeat(200)))).collect();
    let mut expected: Vec<u64> = alice.pipeline(&requests).iter().map(|r| r.sent().0).collect();

    // bob logs in but reads nothing yet, so his backlog backs up in the server.
    let mut bob = server.hello();
    bob.login("bob");
    assert_eq!(alice.push(), support::presence_of("bob", true));
    let (live, _) = alice.call(req::send("bob", 1_000_000, "live")).sent();
    expected.push(live);

    let mut pushed = Vec::new();
    let count = loop {
        match bob.push() {
            Message::SyncDone { count } => break count as usize,
            item => pushed.push(item.deliver().message_id),
        }
    };
    assert!(count == BACKLOG || count == BACKLOG + 1, "SYNC_DONE({count})");
    pushed.extend(bob.barrier().iter().map(|item| item.deliver().message_id));
    assert_eq!(pushed, expected);
}
