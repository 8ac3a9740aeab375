//! Groups and the lobby (PROTOCOL.md §6 "Groups").

mod support;

use support::{
    Client, Deliver, GroupInfo, LOBBY, Member, Message, Target, TestServer, befriend_offline, code, group_event, req,
};

fn members(client: &mut Client, group_id: u64) -> Vec<Member> {
    match client.call(req::group_members(group_id)) {
        Message::GroupMembers { group_id: actual, mut members } => {
            assert_eq!(actual, group_id);
            // The order of members is not specified.
            members.sort();
            members
        }
        other => panic!("expected GROUP_MEMBERS_RESULT, got {other:?}"),
    }
}

fn member(username: &str, online: bool, owner: bool) -> Member {
    Member { username: username.to_string(), online, owner }
}

fn groups(client: &mut Client) -> Vec<GroupInfo> {
    match client.call(req::group_list()) {
        Message::GroupList(mut groups) => {
            groups.sort_by_key(|group| group.group_id);
            groups
        }
        other => panic!("expected GROUP_LIST_RESULT, got {other:?}"),
    }
}

/// A `GROUP_EVENT` with its id and timestamp zeroed, to compare with [`anon`]ymised pushes.
fn event(group_id: u64, event: u8, username: &str, group_name: &str) -> Message {
    Message::GroupEvent {
        message_id: 0,
        timestamp_ms: 0,
        group_id,
        event,
        username: username.to_string(),
        group_name: group_name.to_string(),
    }
}

/// A pushed `GROUP_EVENT` with its id and timestamp zeroed (each is checked to be set).
fn anon(message: Message) -> Message {
    match message {
        Message::GroupEvent { message_id, timestamp_ms, group_id, event, username, group_name } => {
            assert!(message_id > 0 && timestamp_ms > 0, "GROUP_EVENT without id or time");
            Message::GroupEvent { message_id: 0, timestamp_ms: 0, group_id, event, username, group_name }
        }
        other => other,
    }
}

fn group_deliver(message: &Message, group_id: u64, from: &str, body: &str) -> u64 {
    let deliver = message.deliver();
    assert_eq!(
        (&deliver.to, deliver.from.as_str(), deliver.body.as_str()),
        (&Target::Group(group_id), from, body),
        "{deliver:?}"
    );
    deliver.message_id
}

#[test]
fn create_makes_the_creator_owner_and_first_member() {
    let server = TestServer::start();
    let mut alice = server.user("alice");
    let group_id = alice.call(req::group_create("climbers")).group_id();
    assert!(group_id > LOBBY);
    assert_eq!(members(&mut alice, group_id), [member("alice", true, true)]);
    let list = groups(&mut alice);
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!((list[0].group_id, list[0].name.as_str()), (LOBBY, "lobby"));
    assert_eq!(list[1], GroupInfo { group_id, name: "climbers".into(), owner: "alice".into(), members: 1 });
    let second = alice.call(req::group_create("climbers")).group_id();
    assert_ne!(second, group_id, "names need not be unique, ids must");
}

#[test]
fn group_names_are_1_to_64_characters() {
    let server = TestServer::start();
    let mut alice = server.user("alice");
    let cases = [
        ("empty", String::new(), Some(code::INVALID_ARGUMENT)),
        ("64 ASCII", "n".repeat(64), None),
        ("65 ASCII", "n".repeat(65), Some(code::INVALID_ARGUMENT)),
        ("64 two-byte characters", "\u{e9}".repeat(64), None),
        ("65 two-byte characters", "\u{e9}".repeat(65), Some(code::INVALID_ARGUMENT)),
    ];
    for (label, name, expected) in cases {
        let reply = alice.call(req::group_create(&name));
        match expected {
            None => assert!(matches!(reply, Message::GroupCreated { .. }), "{label}: {reply:?}"),
            Some(code) => assert_eq!(reply.error_code(), Some(code), "{label}: {reply:?}"),
        }
    }
}

#[test]
fn any_member_may_invite_a_friend_and_members_hear_of_it() {
    let server = TestServer::start();
    server.register_all(&["alice", "bob", "carol", "dave", "erin"]);
    let mut alice = server.device("alice");
    befriend_offline(&server, &mut alice, &["bob"]);
    let mut bob = server.device("bob");
    befriend_offline(&server, &mut bob, &["carol"]);
    let mut carol = server.device("carol");
    befriend_offline(&server, &mut carol, &["dave"]);
    let mut erin = server.device("erin");
    for client in [&mut alice, &mut bob, &mut carol] {
        client.barrier();
    }
    let group_id = alice.call(req::group_create("g")).group_id();

    // The inviting connection has its OK; every other member's connection gets the event.
    assert_eq!(alice.call(req::group_invite(group_id, "bob")), Message::Ok);
    let joined_bob = event(group_id, group_event::JOINED, "bob", "g");
    assert_eq!(anon(bob.push()), joined_bob);
    alice.assert_quiet();

    // bob is no owner, and may invite his friend.
    assert_eq!(bob.call(req::group_invite(group_id, "carol")), Message::Ok);
    let joined_carol = event(group_id, group_event::JOINED, "carol", "g");
    for client in [&mut alice, &mut carol] {
        assert_eq!(anon(client.push()), joined_carol);
    }
    // dave is offline: he joins all the same, and finds the event of it at his next login.
    assert_eq!(carol.call(req::group_invite(group_id, "dave")), Message::Ok);
    let joined_dave = event(group_id, group_event::JOINED, "dave", "g");
    for client in [&mut alice, &mut bob] {
        assert_eq!(anon(client.push()), joined_dave);
    }
    erin.assert_quiet();

    assert_eq!(
        members(&mut bob, group_id),
        [
            member("alice", true, true),
            member("bob", true, false),
            member("carol", true, false),
            member("dave", false, false),
        ]
    );
    let (_, dave_backlog) = server.login("dave");
    let dave_backlog: Vec<Message> = dave_backlog.into_iter().map(anon).collect();
    assert_eq!(dave_backlog, [joined_dave]);
    let cases = [
        ("an unknown name", req::group_invite(group_id, "nobody"), code::NOT_FRIENDS),
        ("a stranger", req::group_invite(group_id, "erin"), code::NOT_FRIENDS),
        ("a member", req::group_invite(group_id, "bob"), code::ALREADY_MEMBER),
        ("the lobby", req::group_invite(LOBBY, "bob"), code::ALREADY_MEMBER),
    ];
    for (label, request, expected) in cases {
        let reply = alice.call(request);
        assert_eq!(reply.error_code(), Some(expected), "{label}: {reply:?}");
    }
    // A stranger and an unknown name get the same answer.
    let stranger = alice.call(req::group_invite(group_id, "erin"));
    let unknown = alice.call(req::group_invite(group_id, "nobody"));
    assert_eq!(stranger.error_without_name("erin"), unknown.error_without_name("nobody"));
}

#[test]
fn an_invitee_starts_at_the_newest_message() {
    let server = TestServer::start();
    server.register_all(&["alice", "bob"]);
    let mut alice = server.device("alice");
    befriend_offline(&server, &mut alice, &["bob"]);
    let group_id = alice.call(req::group_create("g")).group_id();
    let (before, _) = alice.call(req::group_send(group_id, 1, "before")).sent();
    assert_eq!(alice.call(req::group_invite(group_id, "bob")), Message::Ok);
    let (after, _) = alice.call(req::group_send(group_id, 2, "after")).sent();
    let (mut bob, backlog) = server.login("bob");
    assert_eq!(backlog.len(), 2, "{backlog:?}");
    assert_eq!(anon(backlog[0].clone()), event(group_id, group_event::JOINED, "bob", "g"));
    assert_eq!(group_deliver(&backlog[1], group_id, "alice", "after"), after);
    // The older message is in the history.
    let (items, _) = bob.call(req::history(&Target::Group(group_id), 0, 10)).history_page();
    assert_eq!(items.iter().map(|item| item.message_id).collect::<Vec<_>>(), [after, before]);
    // ACK covers group items too.
    bob.ack(after);
    let (_, backlog) = server.login("bob");
    assert_eq!(backlog, vec![]);
}

#[test]
fn leaving_a_group() {
    let server = TestServer::start();
    server.register_all(&["alice", "bob", "carol"]);
    let mut alice = server.device("alice");
    befriend_offline(&server, &mut alice, &["bob", "carol"]);
    let mut bob = server.device("bob");
    let mut bob_laptop = server.device("bob");
    let mut carol = server.device("carol");
    let group_id = alice.call(req::group_create("g")).group_id();
    for name in ["bob", "carol"] {
        assert_eq!(alice.call(req::group_invite(group_id, name)), Message::Ok);
    }
    for client in [&mut alice, &mut bob, &mut bob_laptop, &mut carol] {
        client.barrier();
    }

    // The leaving connection has its OK; the others, bob's other connection too, the event.
    assert_eq!(bob.call(req::group_leave(group_id)), Message::Ok);
    let left_bob = event(group_id, group_event::LEFT, "bob", "g");
    for client in [&mut alice, &mut bob_laptop, &mut carol] {
        assert_eq!(anon(client.push()), left_bob);
    }
    bob.assert_quiet();
    let cases = [
        ("GROUP_SEND", req::group_send(group_id, 1, "hi")),
        ("HISTORY", req::history(&Target::Group(group_id), 0, 10)),
        ("GROUP_MEMBERS", req::group_members(group_id)),
        ("GROUP_INVITE", req::group_invite(group_id, "bob")),
        ("GROUP_LEAVE again", req::group_leave(group_id)),
    ];
    for (label, request) in cases {
        let reply = bob.call(request);
        assert_eq!(reply.error_code(), Some(code::FORBIDDEN), "{label}: {reply:?}");
    }
    assert_eq!(groups(&mut bob).len(), 1, "bob is left with the lobby");

    // The owner may leave; the group keeps its recorded owner.
    assert_eq!(alice.call(req::group_leave(group_id)), Message::Ok);
    let left_alice = event(group_id, group_event::LEFT, "alice", "g");
    assert_eq!(anon(carol.push()), left_alice);
    alice.assert_quiet();
    bob.assert_quiet();
    assert_eq!(members(&mut carol, group_id), [member("carol", true, false)]);
    let carol_groups = groups(&mut carol);
    assert_eq!(carol_groups[1], GroupInfo { group_id, name: "g".into(), owner: "alice".into(), members: 1 });
    // Nobody is pushed messages of a group they left.
    let (message_id, _) = carol.call(req::group_send(group_id, 1, "alone")).sent();
    assert!(message_id > 0);
    alice.assert_quiet();
    bob.assert_quiet();
}

#[test]
fn group_send_reaches_every_connection_of_every_member_but_the_sender() {
    let server = TestServer::start_with(&["--max-body", "10"]);
    server.register_all(&["alice", "bob", "carol"]);
    let mut alice_phone = server.device("alice");
    befriend_offline(&server, &mut alice_phone, &["bob"]);
    let mut alice_laptop = server.device("alice");
    let mut bob = server.device("bob");
    let mut carol = server.device("carol");
    let group_id = alice_phone.call(req::group_create("g")).group_id();
    assert_eq!(alice_phone.call(req::group_invite(group_id, "bob")), Message::Ok);
    for client in [&mut alice_phone, &mut alice_laptop, &mut bob] {
        client.barrier();
    }

    let sent = alice_phone.call(req::group_send(group_id, 5, "hello all"));
    let (message_id, timestamp_ms) = sent.sent();
    let expected = Message::Deliver(Deliver {
        message_id,
        timestamp_ms,
        from: "alice".into(),
        to: Target::Group(group_id),
        body: "hello all".into(),
    });
    assert_eq!(alice_laptop.push(), expected);
    assert_eq!(bob.push(), expected);
    alice_phone.assert_quiet();
    carol.assert_quiet();

    // A retry is answered with the original SENT and pushes nothing.
    assert_eq!(alice_phone.call(req::group_send(group_id, 5, "hello all")), sent);
    let cases = [
        ("empty body", req::group_send(group_id, 6, ""), code::INVALID_BODY),
        ("11 bytes", req::group_send(group_id, 7, "hello world"), code::INVALID_BODY),
    ];
    for (label, request, expected) in cases {
        let reply = bob.call(request);
        assert_eq!(reply.error_code(), Some(expected), "{label}: {reply:?}");
    }
    let reply = carol.call(req::group_send(group_id, 1, "let me in"));
    assert_eq!(reply.error_code(), Some(code::FORBIDDEN), "{reply:?}");
    for client in [&mut alice_phone, &mut alice_laptop, &mut bob, &mut carol] {
        client.assert_quiet();
    }
}

#[test]
fn fan_out_to_a_hundred_members_some_offline() {
    let server = TestServer::start();
    let names: Vec<String> = (0..100).map(|n| format!("user{n:02}")).collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    server.register_all(&name_refs);
    let mut owner = server.device(&names[0]);
    befriend_offline(&server, &mut owner, &name_refs[1..]);
    let group_id = owner.call(req::group_create("hundred")).group_id();
    let invites: Vec<_> = names[1..].iter().map(|name| req::group_invite(group_id, name)).collect();
    assert!(owner.pipeline(&invites).iter().all(|reply| *reply == Message::Ok));
    owner.assert_quiet();

    // Members 1-69 are online, 70-99 offline. Member k's backlog holds the joins from its own
    // on: every later join is an item of the group for it.
    let joins_seen_by = |k: usize, backlog: &[Message]| {
        let joined: Vec<Message> = backlog.iter().cloned().map(anon).collect();
        let expected: Vec<Message> =
            names[k..].iter().map(|name| event(group_id, group_event::JOINED, name, "hundred")).collect();
        assert_eq!(joined, expected, "{}", names[k]);
    };
    let mut online: Vec<Client> = Vec::new();
    for (k, name) in names.iter().enumerate().take(70).skip(1) {
        let (client, backlog) = server.login(name);
        joins_seen_by(k, &backlog);
        online.push(client);
    }
    let (message_id, _) = owner.call(req::group_send(group_id, 1, "to all")).sent();
    for client in &mut online {
        assert_eq!(group_deliver(&client.push(), group_id, "user00", "to all"), message_id);
    }
    let all = members(&mut owner, group_id);
    assert_eq!(all.len(), 100);
    assert_eq!(all.iter().filter(|member| member.online).count(), 70);
    for (k, name) in names.iter().enumerate().skip(70) {
        let (_, backlog) = server.login(name);
        let (message, joins) = backlog.split_last().expect("a backlog");
        joins_seen_by(k, joins);
        assert_eq!(group_deliver(message, group_id, "user00", "to all"), message_id);
    }
    // The owner, friend of all, hears only of their comings and goings.
    let pushes = owner.barrier();
    assert!(pushes.iter().all(|push| matches!(push, Message::Presence { .. })), "{pushes:?}");
}

#[test]
fn the_lobby_holds_everyone() {
    let server = TestServer::start();
    server.register_all(&["alice", "bob", "carol"]);
    let mut alice = server.device("alice");
    let mut bob = server.device("bob");
    // The lobby's owner flag is not specified: compare names and online state only.
    let lobby: Vec<_> = members(&mut alice, LOBBY).into_iter().map(|member| (member.username, member.online)).collect();
    assert_eq!(lobby, [("alice".to_string(), true), ("bob".to_string(), true), ("carol".to_string(), false)]);
    let (message_id, _) = alice.call(req::group_send(LOBBY, 1, "hello, lobby")).sent();
    assert_eq!(group_deliver(&bob.push(), LOBBY, "alice", "hello, lobby"), message_id);
    alice.assert_quiet();
    let (_, backlog) = server.login("carol");
    assert_eq!(backlog.len(), 1);
    assert_eq!(group_deliver(&backlog[0], LOBBY, "alice", "hello, lobby"), message_id);
    // A user registered later is in the lobby too and may read its history.
    server.register("dave");
    let (mut dave, _) = server.login("dave");
    assert_eq!(members(&mut dave, LOBBY).len(), 4);
    let (items, _) = dave.call(req::history(&Target::Group(LOBBY), 0, 10)).history_page();
    assert_eq!(items.len(), 1);
}
