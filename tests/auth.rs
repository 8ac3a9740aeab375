//! REGISTER, SCRAM login (PROTOCOL.md §5), LOGOUT and several devices per user.

mod support;

use support::{ITERATIONS, Message, Request, TestServer, code, password_of, register_request, req, scram};

/// A `REGISTER` with chosen field sizes; the keys are filler bytes, which is all the server
/// can check at registration.
fn register_shaped(
    username: &str,
    salt_len: usize,
    iterations: u32,
    stored_key_len: usize,
    server_key_len: usize,
) -> Request {
    req::register(username, &vec![1; salt_len], iterations, &vec![2; stored_key_len], &vec![3; server_key_len])
}

/// Sends each `REGISTER` on one connection and checks each answer (`None` means `OK`).
fn check_register(cases: &[(&str, Request, Option<u16>)]) {
    let server = TestServer::start();
    let mut client = server.hello();
    for (label, request, expected) in cases {
        let reply = client.call(request.clone());
        match expected {
            None => assert_eq!(reply, Message::Ok, "{label}"),
            Some(code) => assert_eq!(reply.error_code(), Some(*code), "{label}: {reply:?}"),
        }
    }
    assert_eq!(client.call(req::ping()), Message::Pong);
}

#[test]
fn usernames() {
    let max = "a".repeat(32);
    let too_long = "a".repeat(33);
    check_register(&[
        ("plain", register_request("alice"), None),
        ("all allowed characters", register_request("A.b-c_9"), None),
        ("32 characters", register_request(&max), None),
        ("empty", register_request(""), Some(code::INVALID_USERNAME)),
        ("33 characters", register_request(&too_long), Some(code::INVALID_USERNAME)),
        ("space", register_request("bad name"), Some(code::INVALID_USERNAME)),
        ("bang", register_request("bob!"), Some(code::INVALID_USERNAME)),
        ("slash", register_request("a/b"), Some(code::INVALID_USERNAME)),
        ("at", register_request("a@b"), Some(code::INVALID_USERNAME)),
        ("non-ASCII letter", register_request("jos\u{e9}"), Some(code::INVALID_USERNAME)),
        ("NUL", register_request("a\0b"), Some(code::INVALID_USERNAME)),
        ("same name", register_request("alice"), Some(code::USERNAME_TAKEN)),
        ("other case", register_request("ALICE"), Some(code::USERNAME_TAKEN)),
        ("mixed case", register_request("aLiCe"), Some(code::USERNAME_TAKEN)),
        ("case of a dotted name", register_request("a.B-C_9"), Some(code::USERNAME_TAKEN)),
    ]);
}

#[test]
fn credential_shapes() {
    check_register(&[
        ("iterations below the minimum", register_shaped("u1", 16, 999, 32, 32), Some(code::WEAK_CREDENTIALS)),
        ("zero iterations", register_shaped("u2", 16, 0, 32, 32), Some(code::WEAK_CREDENTIALS)),
        ("iterations at the minimum", register_shaped("u3", 16, 1000, 32, 32), None),
        ("salt of 15 bytes", register_shaped("u4", 15, ITERATIONS, 32, 32), Some(code::WEAK_CREDENTIALS)),
        ("empty salt", register_shaped("u5", 0, ITERATIONS, 32, 32), Some(code::WEAK_CREDENTIALS)),
        ("salt of 65 bytes", register_shaped("u6", 65, ITERATIONS, 32, 32), Some(code::WEAK_CREDENTIALS)),
        ("salt of 16 bytes", register_shaped("u7", 16, ITERATIONS, 32, 32), None),
        ("salt of 64 bytes", register_shaped("u8", 64, ITERATIONS, 32, 32), None),
        ("stored key of 31 bytes", register_shaped("u9", 16, ITERATIONS, 31, 32), Some(code::WEAK_CREDENTIALS)),
        ("server key of 33 bytes", register_shaped("u10", 16, ITERATIONS, 32, 33), Some(code::WEAK_CREDENTIALS)),
        ("empty keys", register_shaped("u11", 16, ITERATIONS, 0, 0), Some(code::WEAK_CREDENTIALS)),
        // A refused registration stored nothing, so the name is still free.
        ("name of a refused registration", register_shaped("u1", 16, ITERATIONS, 32, 32), None),
    ]);
}

#[test]
fn the_minimum_iterations_follow_the_flag() {
    let server = TestServer::start_with(&["--min-kdf-iterations", "5000"]);
    let mut client = server.hello();
    let reply = client.call(register_request("alice"));
    assert_eq!(reply.error_code(), Some(code::WEAK_CREDENTIALS), "4096 < 5000: {reply:?}");
    assert_eq!(client.call(register_shaped("alice", 16, 5000, 32, 32)), Message::Ok);
}

#[test]
fn register_then_login() {
    let server = TestServer::start();
    let mut client = server.hello();
    assert_eq!(client.call(register_request("alice")), Message::Ok);
    // REGISTER does not log in.
    let reply = client.call(req::friend_list());
    assert_eq!(reply.error_code(), Some(code::NOT_AUTHENTICATED), "{reply:?}");
    // try_login checks the ServerSignature.
    assert_eq!(client.try_login("alice", &password_of("alice")), Ok("alice".to_string()));
    assert_eq!(client.sync(), vec![]);
    let reply = client.call(req::friend_list());
    assert!(matches!(reply, Message::FriendList(_)), "{reply:?}");
}

#[test]
fn login_in_another_case_returns_the_registered_name() {
    let server = TestServer::start();
    server.register("Alice");
    let mut client = server.hello();
    assert_eq!(client.try_login("aLICE", &password_of("Alice")), Ok("Alice".to_string()));
}

/// The exact AuthMessage of PROTOCOL.md §5, built by hand field by field, gives a proof the
/// server accepts and a ServerSignature that verifies.
#[test]
fn auth_message_bytes() {
    let server = TestServer::start();
    server.register("alice");
    let mut client = server.hello();
    let client_nonce: Vec<u8> = (0..32).collect();
    let Message::LoginChallenge { salt, iterations, nonce } = client.call(req::login_start("alice", &client_nonce))
    else {
        panic!("no challenge");
    };
    assert_eq!(salt, support::salt_of("alice"));
    assert_eq!(iterations, ITERATIONS);
    assert_eq!(&nonce[..32], &client_nonce[..]);
    assert_eq!(nonce.len(), 32 + 24);

    let mut auth_message = vec![0, 5];
    auth_message.extend_from_slice(b"alice");
    auth_message.extend_from_slice(&[0, 32]);
    auth_message.extend_from_slice(&client_nonce);
    auth_message.extend_from_slice(&[0, 16]);
    auth_message.extend_from_slice(&salt);
    auth_message.extend_from_slice(&ITERATIONS.to_be_bytes());
    auth_message.extend_from_slice(&[0, 56]);
    auth_message.extend_from_slice(&nonce);
    assert_eq!(auth_message, scram::auth_message("alice", &client_nonce, &salt, iterations, &nonce));

    let keys = scram::Keys::derive(&password_of("alice"), &salt, iterations);
    let proof = scram::client_proof(&keys, &auth_message);
    let reply = client.call(req::login_finish(&proof));
    assert_eq!(
        reply,
        Message::LoginOk {
            server_signature: scram::server_signature(&keys, &auth_message).to_vec(),
            username: "alice".to_string(),
        }
    );
}

#[test]
fn server_nonces_are_fresh() {
    let server = TestServer::start();
    server.register("alice");
    let mut client = server.hello();
    let mut server_parts = Vec::new();
    for _ in 0..3 {
        let Message::LoginChallenge { nonce, .. } = client.call(req::login_start("alice", &[9; 16])) else {
            panic!("no challenge");
        };
        server_parts.push(nonce[16..].to_vec());
        // Abandon this login with a wrong proof so that a new LOGIN_START is legal.
        let reply = client.call(req::login_finish(&[0; 32]));
        assert_eq!(reply.error_code(), Some(code::AUTH_FAILED));
    }
    assert_ne!(server_parts[0], server_parts[1]);
    assert_ne!(server_parts[1], server_parts[2]);
}

#[test]
fn wrong_password_and_unknown_user_fail_alike() {
    let server = TestServer::start();
    server.register("alice");
    let mut client = server.hello();
    let wrong_password = client.try_login("alice", "not the password").unwrap_err();
    assert_eq!(wrong_password.error_code(), Some(code::AUTH_FAILED), "{wrong_password:?}");

    // An unknown user gets a challenge shaped like a real one; any proof then fails.
    let Message::LoginChallenge { salt, iterations, nonce } = client.call(req::login_start("nobody", &[5; 16])) else {
        panic!("unknown user got no challenge");
    };
    assert_eq!((salt.len(), iterations, nonce.len()), (16, 600_000, 16 + 24));
    let unknown_user = client.call(req::login_finish(&[0x55; 32]));
    assert_eq!(unknown_user.error_without_name("nobody"), wrong_password.error_without_name("alice"));
}

#[test]
fn fake_salt_is_stable_per_name_and_case_insensitive() {
    let server = TestServer::start();
    let mut client = server.hello();
    let mut salt_for = |name: &str| match client.login_with_junk_proof(name) {
        (Message::LoginChallenge { salt, .. }, failed) => {
            assert_eq!(failed.error_code(), Some(code::AUTH_FAILED), "{failed:?}");
            salt
        }
        (other, _) => panic!("{other:?}"),
    };
    let first = salt_for("ghost");
    assert_eq!(salt_for("ghost"), first);
    assert_eq!(salt_for("GHOST"), first);
    assert_ne!(salt_for("phantom"), first);
}

#[test]
fn failed_login_returns_to_unauthenticated() {
    let server = TestServer::start();
    server.register("alice");
    let mut client = server.hello();
    assert!(client.try_login("alice", "wrong").is_err());
    let reply = client.call(req::login_finish(&[0; 32]));
    assert_eq!(reply.error_code(), Some(code::INVALID_STATE), "{reply:?}");
    let reply = client.call(req::friend_list());
    assert_eq!(reply.error_code(), Some(code::NOT_AUTHENTICATED), "{reply:?}");
    client.login("alice");
    assert_eq!(client.sync(), vec![]);
}

#[test]
fn fifth_failed_login_closes_the_connection() {
    let server = TestServer::start();
    server.register("alice");
    let mut client = server.hello();
    for attempt in 1..=4 {
        let reply = client.try_login("alice", "wrong").unwrap_err();
        assert_eq!(reply.error_code(), Some(code::AUTH_FAILED), "attempt {attempt}");
    }
    let reply = client.try_login("alice", "wrong").unwrap_err();
    assert_eq!(reply.error_code(), Some(code::TOO_MANY_ATTEMPTS), "{reply:?}");
    client.assert_closed();
    // The limit is per connection: a new one logs in.
    let (_, backlog) = server.login("alice");
    assert_eq!(backlog, vec![]);
}

#[test]
fn failures_of_unknown_users_count_too() {
    let server = TestServer::start();
    let mut client = server.hello();
    for attempt in 1..=4 {
        let (_, reply) = client.login_with_junk_proof(&format!("ghost{attempt}"));
        assert_eq!(reply.error_code(), Some(code::AUTH_FAILED), "attempt {attempt}");
    }
    let (_, reply) = client.login_with_junk_proof("ghost5");
    assert_eq!(reply.error_code(), Some(code::TOO_MANY_ATTEMPTS), "{reply:?}");
    client.assert_closed();
}

#[test]
fn logout_returns_to_unauthenticated() {
    let server = TestServer::start();
    let mut client = server.user("alice");
    assert_eq!(client.call(req::logout()), Message::Ok);
    let reply = client.call(req::friend_list());
    assert_eq!(reply.error_code(), Some(code::NOT_AUTHENTICATED), "{reply:?}");
    let reply = client.call(req::logout());
    assert_eq!(reply.error_code(), Some(code::NOT_AUTHENTICATED), "{reply:?}");
    // Unauthenticated, not AwaitHello: REGISTER and LOGIN work without a new HELLO.
    assert_eq!(client.call(register_request("bob")), Message::Ok);
    client.login("bob");
    assert_eq!(client.sync(), vec![]);
}

#[test]
fn one_user_on_two_connections() {
    let server = TestServer::start();
    let mut phone = server.user("alice");
    let mut laptop = server.device("alice");
    assert!(matches!(phone.call(req::friend_list()), Message::FriendList(_)));
    assert!(matches!(laptop.call(req::friend_list()), Message::FriendList(_)));
    // LOGOUT ends the login of its own connection only.
    assert_eq!(phone.call(req::logout()), Message::Ok);
    let reply = phone.call(req::friend_list());
    assert_eq!(reply.error_code(), Some(code::NOT_AUTHENTICATED));
    assert!(matches!(laptop.call(req::friend_list()), Message::FriendList(_)));
}
