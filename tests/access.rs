//! A user who is neither friend nor member is refused everywhere, with the same answer whether
//! the person or group asked about exists or not (PROTOCOL.md §4 codes 19 and 21).

mod support;

use support::{Message, Request, Target, TestServer, code, make_friends, req};

/// A group id no one has created.
const NO_GROUP: u64 = 987_654_321;

#[test]
fn a_stranger_is_refused_everywhere_alike() {
    let server = TestServer::start();
    server.register_all(&["alice", "bob", "mallory"]);
    let mut alice = server.device("alice");
    let mut bob = server.device("bob");
    make_friends(&mut alice, &mut bob);
    let (message_id, _) = alice.call(req::send("bob", 1, "secret")).sent();
    assert_eq!(bob.push().deliver().message_id, message_id);
    let group_id = alice.call(req::group_create("private")).group_id();
    assert_eq!(alice.call(req::group_invite(group_id, "bob")), Message::Ok);
    alice.barrier();
    bob.barrier();

    let mut mallory = server.device("mallory");
    // Each case: the request about something that exists, the same about something that does
    // not, the text that differs between them, and the expected code.
    let by_name = |make: &dyn Fn(&str) -> Request| (make("alice"), make("ghost"), ("alice", "ghost"));
    let group = group_id.to_string();
    let no_group = NO_GROUP.to_string();
    let by_group =
        |make: &dyn Fn(u64) -> Request| (make(group_id), make(NO_GROUP), (group.as_str(), no_group.as_str()));
    let cases = [
        ("SEND", by_name(&|name| req::send(name, 9, "hi")), code::NOT_FRIENDS),
        ("READ", by_name(&|name| req::read(name, message_id)), code::NOT_FRIENDS),
        ("FRIEND_REMOVE", by_name(&req::friend_remove), code::NOT_FRIENDS),
        ("HISTORY direct", by_name(&|name| req::history(&Target::direct(name), 0, 10)), code::FORBIDDEN),
        ("HISTORY group", by_group(&|id| req::history(&Target::Group(id), 0, 10)), code::FORBIDDEN),
        ("GROUP_SEND", by_group(&|id| req::group_send(id, 9, "hi")), code::FORBIDDEN),
        ("GROUP_INVITE", by_group(&|id| req::group_invite(id, "mallory")), code::FORBIDDEN),
        ("GROUP_MEMBERS", by_group(&req::group_members), code::FORBIDDEN),
        ("GROUP_LEAVE", by_group(&req::group_leave), code::FORBIDDEN),
    ];
    for (label, (existing, missing, (existing_text, missing_text)), expected) in cases {
        let existing_reply = mallory.call(existing);
        let missing_reply = mallory.call(missing);
        assert_eq!(existing_reply.error_code(), Some(expected), "{label}: {existing_reply:?}");
        assert_eq!(
            existing_reply.error_without_name(existing_text),
            missing_reply.error_without_name(missing_text),
            "{label}: the answers tell the two apart"
        );
    }
    // Nothing reached the participants, and mallory got nothing either.
    alice.assert_quiet();
    bob.assert_quiet();
    mallory.assert_quiet();
    // Nothing was stored: the conversation and the group are as they were.
    let (items, _) = bob.call(req::history(&Target::direct("alice"), 0, 10)).history_page();
    assert_eq!(items.len(), 1);
    let (items, _) = bob.call(req::history(&Target::Group(group_id), 0, 10)).history_page();
    assert_eq!(items, vec![]);
}

#[test]
fn a_user_never_befriended_cannot_read_a_conversation_with_them() {
    let server = TestServer::start();
    server.register_all(&["alice", "bob"]);
    let mut alice = server.device("alice");
    let stranger = alice.call(req::history(&Target::direct("bob"), 0, 10));
    let unknown = alice.call(req::history(&Target::direct("ghost"), 0, 10));
    assert_eq!(stranger.error_code(), Some(code::FORBIDDEN), "{stranger:?}");
    assert_eq!(stranger.error_without_name("bob"), unknown.error_without_name("ghost"));
}

#[test]
fn a_stranger_cannot_answer_or_see_requests_addressed_to_someone_else() {
    let server = TestServer::start();
    server.register_all(&["alice", "bob", "mallory"]);
    let mut alice = server.device("alice");
    let mut bob = server.device("bob");
    assert_eq!(alice.call(req::friend_request("bob")), Message::FriendRequestOk { outcome: 0 });
    bob.barrier();
    let mut mallory = server.device("mallory");
    for (label, existing, missing) in [
        ("FRIEND_ACCEPT", req::friend_accept("alice"), req::friend_accept("ghost")),
        ("FRIEND_DECLINE", req::friend_decline("alice"), req::friend_decline("ghost")),
    ] {
        let existing_reply = mallory.call(existing);
        let missing_reply = mallory.call(missing);
        assert_eq!(existing_reply.error_code(), Some(code::NO_SUCH_REQUEST), "{label}: {existing_reply:?}");
        assert_eq!(existing_reply.error_without_name("alice"), missing_reply.error_without_name("ghost"), "{label}");
    }
    // Mallory's lists show nothing of alice's and bob's request, nor of their groups.
    match mallory.call(req::friend_list()) {
        Message::FriendList(list) => {
            assert!(list.friends.is_empty() && list.incoming.is_empty() && list.outgoing.is_empty(), "{list:?}")
        }
        other => panic!("{other:?}"),
    }
    let private = alice.call(req::group_create("private")).group_id();
    match mallory.call(req::group_list()) {
        Message::GroupList(groups) => assert!(groups.iter().all(|g| g.group_id != private), "{groups:?}"),
        other => panic!("{other:?}"),
    }
    // Acknowledging "everything" moves only mallory's own cursors: bob still gets the request.
    assert_eq!(mallory.call(req::ack(u64::MAX)), Message::Ok);
    alice.assert_quiet();
    drop(bob);
    let (_bob, backlog) = server.login("bob");
    assert!(
        backlog.iter().any(|m| matches!(m, Message::FriendEvent { event: 1, username, .. } if username == "alice")),
        "{backlog:?}"
    );
}
