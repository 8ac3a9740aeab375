//! Friend requests, the friend list and presence (PROTOCOL.md §6 "Friends", "Presence").

mod support;

use support::{Client, FriendList, Message, TestServer, code, friend_event, make_friends, presence_of, req};

/// Asserts `message` is a `FRIEND_EVENT` of `event` about `username`; returns its id.
#[track_caller]
fn assert_friend_event(message: &Message, event: u8, username: &str) -> u64 {
    match message {
        Message::FriendEvent { message_id, event: actual_event, username: actual_name, .. }
            if *actual_event == event && actual_name == username =>
        {
            *message_id
        }
        other => panic!("expected FRIEND_EVENT {event} about {username}, got {other:?}"),
    }
}

fn friend_list(client: &mut Client) -> FriendList {
    match client.call(req::friend_list()) {
        Message::FriendList(list) => list,
        other => panic!("expected FRIEND_LIST_RESULT, got {other:?}"),
    }
}

#[test]
fn a_request_reaches_every_connection_of_the_target() {
    let server = TestServer::start();
    server.register_all(&["alice", "bob"]);
    let mut alice = server.device("alice");
    let mut bob_phone = server.device("bob");
    let mut bob_laptop = server.device("bob");
    assert_eq!(alice.call(req::friend_request("bob")), Message::FriendRequestOk { outcome: 0 });
    let id = assert_friend_event(&bob_phone.push(), friend_event::ASKED, "alice");
    assert_eq!(assert_friend_event(&bob_laptop.push(), friend_event::ASKED, "alice"), id);
    alice.assert_quiet();
    assert_eq!(friend_list(&mut alice), FriendList { friends: vec![], incoming: vec![], outgoing: vec!["bob".into()] });
    assert_eq!(
        friend_list(&mut bob_phone),
        FriendList { friends: vec![], incoming: vec!["alice".into()], outgoing: vec![] }
    );
}

#[test]
fn a_request_to_an_offline_user_waits_for_their_login() {
    let server = TestServer::start();
    server.register_all(&["alice", "bob"]);
    let mut alice = server.device("alice");
    assert_eq!(alice.call(req::friend_request("bob")), Message::FriendRequestOk { outcome: 0 });
    let (mut bob, backlog) = server.login("bob");
    assert_eq!(backlog.len(), 1, "{backlog:?}");
    let id = assert_friend_event(&backlog[0], friend_event::ASKED, "alice");
    // Not acknowledged: pushed again at the next login, on any device.
    let (_, again) = server.login("bob");
    assert_eq!(again, backlog);
    bob.ack(id);
    let (_, after_ack) = server.login("bob");
    assert_eq!(after_ack, vec![]);
}

#[test]
fn request_errors() {
    let server = TestServer::start();
    server.register_all(&["alice", "bob", "carol"]);
    let mut alice = server.device("alice");
    let mut bob = server.device("bob");
    let mut carol = server.device("carol");
    make_friends(&mut alice, &mut carol);
    assert_eq!(alice.call(req::friend_request("bob")), Message::FriendRequestOk { outcome: 0 });
    assert_friend_event(&bob.push(), friend_event::ASKED, "alice");
    let cases = [
        ("yourself", req::friend_request("alice"), code::INVALID_ARGUMENT),
        ("unknown name", req::friend_request("nobody"), code::USER_NOT_FOUND),
        ("a friend", req::friend_request("carol"), code::ALREADY_FRIENDS),
        ("your own pending request", req::friend_request("bob"), code::REQUEST_PENDING),
    ];
    for (label, request, expected) in cases {
        let reply = alice.call(request);
        assert_eq!(reply.error_code(), Some(expected), "{label}: {reply:?}");
    }
    // The repeated request changed nothing and pushed nothing.
    bob.assert_quiet();
    carol.assert_quiet();
    assert_eq!(friend_list(&mut alice).outgoing, ["bob"]);
}

#[test]
fn crossing_requests_make_friends_at_once() {
    let server = TestServer::start();
    server.register_all(&["alice", "bob"]);
    let mut alice = server.device("alice");
    let mut bob = server.device("bob");
    assert_eq!(bob.call(req::friend_request("alice")), Message::FriendRequestOk { outcome: 0 });
    assert_friend_event(&alice.push(), friend_event::ASKED, "bob");
    assert_eq!(alice.call(req::friend_request("bob")), Message::FriendRequestOk { outcome: 1 });
    assert_friend_event(&bob.push(), friend_event::ACCEPTED, "alice");
    let both_friends =
        |name: &str| FriendList { friends: vec![(name.to_string(), true)], incoming: vec![], outgoing: vec![] };
    assert_eq!(friend_list(&mut alice), both_friends("bob"));
    assert_eq!(friend_list(&mut bob), both_friends("alice"));
}

#[test]
fn accept_and_its_errors() {
    let server = TestServer::start();
    server.register_all(&["alice", "bob", "carol"]);
    let mut alice = server.device("alice");
    let mut bob = server.device("bob");
    assert_eq!(alice.call(req::friend_request("bob")), Message::FriendRequestOk { outcome: 0 });
    let cases = [
        ("alice accepts her own request", "alice", req::friend_accept("bob")),
        ("no request from carol", "bob", req::friend_accept("carol")),
        ("no such user", "bob", req::friend_accept("nobody")),
        ("decline with no request", "bob", req::friend_decline("carol")),
    ];
    for (label, sender, request) in cases {
        let client = if sender == "alice" { &mut alice } else { &mut bob };
        let reply = client.call(request);
        assert_eq!(reply.error_code(), Some(code::NO_SUCH_REQUEST), "{label}: {reply:?}");
    }
    assert_eq!(bob.call(req::friend_accept("alice")), Message::Ok);
    assert_friend_event(&alice.push(), friend_event::ACCEPTED, "bob");
    let reply = bob.call(req::friend_accept("alice"));
    assert_eq!(reply.error_code(), Some(code::NO_SUCH_REQUEST), "accepted twice: {reply:?}");
    assert_eq!(friend_list(&mut alice).friends, [("bob".to_string(), true)]);
}

#[test]
fn decline() {
    let server = TestServer::start();
    server.register_all(&["alice", "bob"]);
    let mut alice = server.device("alice");
    let mut bob = server.device("bob");
    assert_eq!(alice.call(req::friend_request("bob")), Message::FriendRequestOk { outcome: 0 });
    assert_friend_event(&bob.push(), friend_event::ASKED, "alice");
    assert_eq!(bob.call(req::friend_decline("alice")), Message::Ok);
    assert_friend_event(&alice.push(), friend_event::DECLINED, "bob");
    let empty = FriendList { friends: vec![], incoming: vec![], outgoing: vec![] };
    assert_eq!(friend_list(&mut alice), empty);
    assert_eq!(friend_list(&mut bob), empty);
    let reply = bob.call(req::friend_decline("alice"));
    assert_eq!(reply.error_code(), Some(code::NO_SUCH_REQUEST), "{reply:?}");
    // A declined request may be made again.
    assert_eq!(alice.call(req::friend_request("bob")), Message::FriendRequestOk { outcome: 0 });
}

#[test]
fn remove_ends_the_friendship_for_both() {
    let server = TestServer::start();
    server.register_all(&["alice", "bob"]);
    let mut alice = server.device("alice");
    let mut bob = server.device("bob");
    make_friends(&mut alice, &mut bob);
    assert_eq!(alice.call(req::friend_remove("bob")), Message::Ok);
    assert_friend_event(&bob.push(), friend_event::REMOVED, "alice");
    assert_eq!(friend_list(&mut alice).friends, []);
    assert_eq!(friend_list(&mut bob).friends, []);
    let reply = bob.call(req::send("alice", 1, "hello?"));
    assert_eq!(reply.error_code(), Some(code::NOT_FRIENDS), "{reply:?}");
    let reply = alice.call(req::friend_remove("bob"));
    assert_eq!(reply.error_code(), Some(code::NOT_FRIENDS), "removed twice: {reply:?}");
    // Not friends any more, so no presence either way.
    assert_eq!(bob.call(req::logout()), Message::Ok);
    alice.assert_quiet();
}

#[test]
fn remove_answers_alike_for_strangers_and_unknown_names() {
    let server = TestServer::start();
    server.register_all(&["alice", "bob"]);
    let mut alice = server.device("alice");
    let stranger = alice.call(req::friend_remove("bob"));
    let unknown = alice.call(req::friend_remove("nobody"));
    assert_eq!(stranger.error_code(), Some(code::NOT_FRIENDS), "{stranger:?}");
    assert_eq!(stranger.error_without_name("bob"), unknown.error_without_name("nobody"));
}

#[test]
fn friend_list_is_sorted_with_online_state() {
    let server = TestServer::start();
    let names = ["alice", "zoe", "mia", "bea", "yan", "kai", "ada", "xia"];
    server.register_all(&names);
    let mut alice = server.device("alice");
    // Friends zoe (online), bea (offline), mia (online), made in that order.
    let mut online_friends = Vec::new();
    for friend in ["zoe", "bea", "mia"] {
        let mut other = server.device(friend);
        make_friends(&mut alice, &mut other);
        if friend == "bea" {
            other.kill();
            assert_eq!(alice.push(), presence_of("bea", false));
        } else {
            online_friends.push(other);
        }
    }
    // Incoming from yan and ada; outgoing to xia and kai.
    for asker in ["yan", "ada"] {
        let mut other = server.device(asker);
        assert_eq!(other.call(req::friend_request("alice")), Message::FriendRequestOk { outcome: 0 });
        assert_friend_event(&alice.push(), friend_event::ASKED, asker);
    }
    for target in ["xia", "kai"] {
        assert_eq!(alice.call(req::friend_request(target)), Message::FriendRequestOk { outcome: 0 });
    }
    assert_eq!(
        friend_list(&mut alice),
        FriendList {
            friends: vec![("bea".into(), false), ("mia".into(), true), ("zoe".into(), true)],
            incoming: vec!["ada".into(), "yan".into()],
            outgoing: vec!["kai".into(), "xia".into()],
        }
    );
}

#[test]
fn presence_follows_the_first_and_last_connection() {
    let server = TestServer::start();
    server.register_all(&["alice", "bob", "carol"]);
    let mut alice = server.device("alice");
    let mut carol = server.device("carol");
    {
        let mut bob = server.device("bob");
        make_friends(&mut alice, &mut bob);
        assert_eq!(bob.call(req::logout()), Message::Ok);
    }
    assert_eq!(alice.push(), presence_of("bob", false));

    let mut phone = server.device("bob");
    assert_eq!(alice.push(), presence_of("bob", true));
    let mut laptop = server.device("bob");
    // The second device changes nothing: never the same state twice in a row.
    alice.assert_quiet();
    assert_eq!(phone.call(req::logout()), Message::Ok);
    alice.assert_quiet();
    assert_eq!(laptop.call(req::logout()), Message::Ok);
    assert_eq!(alice.push(), presence_of("bob", false));
    alice.assert_quiet();
    // carol is not bob's friend and hears nothing of it.
    carol.assert_quiet();
}

#[test]
fn presence_goes_offline_when_a_socket_dies() {
    let server = TestServer::start();
    server.register_all(&["alice", "bob"]);
    let mut alice = server.device("alice");
    let mut bob = server.device("bob");
    make_friends(&mut alice, &mut bob);
    let bob_again = server.device("bob");
    alice.assert_quiet();
    bob.kill();
    alice.assert_quiet();
    // The last connection dropped without LOGOUT.
    bob_again.kill();
    assert_eq!(alice.push(), presence_of("bob", false));
    let _bob = server.device("bob");
    assert_eq!(alice.push(), presence_of("bob", true));
}

#[test]
fn answers_to_an_offline_requester_wait_for_their_login() {
    let server = TestServer::start();
    server.register_all(&["alice", "bob", "carol"]);
    let mut bob = server.device("bob");
    let mut carol = server.device("carol");
    {
        let mut alice = server.device("alice");
        for target in ["bob", "carol"] {
            assert_eq!(alice.call(req::friend_request(target)), Message::FriendRequestOk { outcome: 0 });
        }
        assert_eq!(alice.call(req::logout()), Message::Ok);
    }
    assert_friend_event(&bob.push(), friend_event::ASKED, "alice");
    assert_friend_event(&carol.push(), friend_event::ASKED, "alice");
    assert_eq!(bob.call(req::friend_accept("alice")), Message::Ok);
    assert_eq!(carol.call(req::friend_decline("alice")), Message::Ok);
    let (_, backlog) = server.login("alice");
    assert_eq!(backlog.len(), 2, "{backlog:?}");
    let accepted = assert_friend_event(&backlog[0], friend_event::ACCEPTED, "bob");
    let declined = assert_friend_event(&backlog[1], friend_event::DECLINED, "carol");
    assert!(accepted < declined);
}
