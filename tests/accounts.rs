//! A user's own account (PROTOCOL.md §5): changing the password and deleting the account, each
//! with a fresh proof of the password.

mod support;

use support::*;

const NEW_PASSWORD: &str = "a brand new password";

/// A PASSWORD_CHANGE to `password` with `proof`.
fn change_to(password: &str, proof: &[u8], iterations: u32) -> Request {
    let salt = [0x5a; 16];
    let keys = scram::Keys::derive(password, &salt, iterations);
    req::password_change(proof, &salt, iterations, &keys.stored_key, &keys.server_key)
}

#[test]
fn a_password_change_ends_the_other_sessions_and_only_the_new_password_logs_in() {
    let server = TestServer::start();
    server.register("alice");
    let (mut laptop, _) = server.login_device("alice", 1);
    let (mut phone, _) = server.login_device("alice", 2);
    let proof = laptop.fresh_proof(&password_of("alice"));
    assert_eq!(laptop.call(change_to(NEW_PASSWORD, &proof, ITERATIONS)), Message::Ok);
    phone.assert_error_and_close(code::CREDENTIALS_CHANGED);
    assert_eq!(laptop.call(req::ping()), Message::Pong, "the changing session goes on");

    let mut old = server.hello();
    assert_eq!(old.try_login("alice", &password_of("alice")).unwrap_err().error_code(), Some(code::AUTH_FAILED));
    let mut new = server.hello();
    assert_eq!(new.try_login("alice", NEW_PASSWORD).unwrap(), "alice");
}

#[test]
fn a_password_change_needs_a_fresh_right_proof_and_a_strong_verifier() {
    let server = TestServer::start();
    let mut alice = server.user("alice");
    // No challenge yet.
    assert_eq!(alice.call(change_to(NEW_PASSWORD, &[0; 32], ITERATIONS)).error_code(), Some(code::INVALID_STATE));
    // A wrong password.
    let wrong = alice.fresh_proof("not the password");
    assert_eq!(alice.call(change_to(NEW_PASSWORD, &wrong, ITERATIONS)).error_code(), Some(code::AUTH_FAILED));
    // A right proof is good once.
    let proof = alice.fresh_proof(&password_of("alice"));
    assert_eq!(alice.call(change_to(NEW_PASSWORD, &proof, 10)).error_code(), Some(code::WEAK_CREDENTIALS));
    assert_eq!(alice.call(change_to(NEW_PASSWORD, &proof, ITERATIONS)).error_code(), Some(code::INVALID_STATE));
    // Nothing changed.
    assert_eq!(server.hello().try_login("alice", &password_of("alice")).unwrap(), "alice");
    // Not before login.
    let mut stranger = server.hello();
    assert_eq!(stranger.call(req::reauth_start(&[7; 24])).error_code(), Some(code::NOT_AUTHENTICATED));
}

#[test]
fn a_deleted_account_leaves_its_friends_and_groups_and_its_messages_stay_under_a_marked_name() {
    let server = TestServer::start();
    let (mut alice, mut bob) = alice_and_bob(&server);
    let group = bob.call(req::group_create("climbing")).group_id();
    assert_eq!(bob.call(req::group_invite(group, "alice")), Message::Ok);
    let joined = alice.push();
    assert!(matches!(joined, Message::GroupEvent { .. }), "{joined:?}");
    alice.ack(u64::MAX);
    let (sent, _) = alice.call(req::send("bob", 1, "bye for now")).sent();
    bob.push();
    let (mut phone, _) = server.login_device("alice", 2);

    let proof = alice.fresh_proof(&password_of("alice"));
    assert_eq!(alice.call(req::account_delete(&proof)), Message::Ok);
    alice.assert_closed();
    // The phone gets its own items of the deletion (friend removed, group left), then the error.
    phone.assert_items_then_error_and_close(code::ACCOUNT_DELETED);
    let told: Vec<Message> = (0..2).map(|_| bob.push()).collect();
    assert!(
        told.iter().any(
            |m| matches!(m, Message::FriendEvent { event: friend_event::REMOVED, username, .. } if username == "alice")
        ),
        "{told:?}"
    );
    assert!(
        told.iter().any(
            |m| matches!(m, Message::GroupEvent { username, group_id, .. } if username == "alice" && *group_id == group)
        ),
        "{told:?}"
    );

    // Bob's conversation is still there, under the marked name.
    let (page, _) = bob.call(req::history(&Target::direct("alice"), 0, 50)).history_page();
    let message = page.iter().find(|m| m.message_id == sent).expect("the message stays in bob's history");
    assert_eq!(message.sender, "alice (deleted)");
    // The account cannot log in, and its name is reserved during the cooling period.
    let mut again = server.hello();
    assert_eq!(again.try_login("alice", &password_of("alice")).unwrap_err().error_code(), Some(code::AUTH_FAILED));
    assert_eq!(again.call(register_request("alice")).error_code(), Some(code::USERNAME_TAKEN));
    assert_eq!(bob.call(req::friend_request("alice")).error_code(), Some(code::USER_NOT_FOUND));
}

#[test]
fn a_deleted_name_can_be_registered_again_after_the_cooling_period() {
    let server = TestServer::start_with(&["--name-cooling-days", "0"]);
    let mut alice = server.user("alice");
    let proof = alice.fresh_proof(&password_of("alice"));
    assert_eq!(alice.call(req::account_delete(&proof)), Message::Ok);
    alice.assert_closed();
    server.register("alice");
    let mut new_alice = server.device("alice");
    assert_eq!(new_alice.call(req::ping()), Message::Pong);
}
