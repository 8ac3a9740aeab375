//! HELLO, PING and the connection state machine of PROTOCOL.md §2.

mod support;

use support::{Body, HelloOk, Message, Request, TestServer, code, register_request, req};

#[test]
fn hello_ok_reports_the_defaults() {
    let server = TestServer::start();
    let mut client = server.connect();
    assert_eq!(
        client.hello(),
        HelloOk {
            version: 2,
            server: format!("im-server {}", env!("CARGO_PKG_VERSION")),
            max_frame: 65_536,
            max_frame_before_login: 4096,
            max_body: 4096,
            idle_timeout_secs: 120,
            login_timeout_secs: 10,
            min_kdf_iterations: 1000,
        }
    );
}

#[test]
fn hello_ok_reports_the_configured_limits() {
    let server = TestServer::start_with(&[
        "--max-frame",
        "10000",
        "--max-body",
        "100",
        "--idle-timeout",
        "30",
        "--login-timeout",
        "7",
        "--min-kdf-iterations",
        "5000",
    ]);
    let hello = server.connect().hello();
    assert_eq!(
        (
            hello.max_frame,
            hello.max_frame_before_login,
            hello.max_body,
            hello.idle_timeout_secs,
            hello.login_timeout_secs,
            hello.min_kdf_iterations
        ),
        (10_000, 4096, 100, 30, 7, 5000)
    );
}

/// The byte-by-byte exchange of PROTOCOL.md §7.
#[test]
fn spec_example_hello_and_ping_bytes() {
    let server = TestServer::start_with(&["--min-kdf-iterations", "100000"]);
    let mut client = server.connect();
    client.write_raw(&[0, 0, 0, 7, 0x01, 0, 0, 0, 1, 0, 2]);
    let mut expected = vec![0, 0, 0, 0x30, 0x81, 0, 0, 0, 1, 0, 2, 0, 0x0F];
    expected.extend_from_slice(b"im-server 0.2.0");
    expected.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0x10, 0, 0, 0, 0x10, 0, 0, 0, 0, 0x78]);
    expected.extend_from_slice(&[0, 0, 0, 0x0A, 0, 0x01, 0x86, 0xA0]);
    let frame = client.read_frame();
    assert_eq!(support::frame(frame.opcode, frame.request_id, &frame.body), expected);

    client.write_raw(&[0, 0, 0, 5, 0x02, 0, 0, 0, 2]);
    let frame = client.read_frame();
    assert_eq!(support::frame(frame.opcode, frame.request_id, &frame.body), [0, 0, 0, 5, 0x82, 0, 0, 0, 2]);
}

#[test]
fn wrong_protocol_version_is_refused_and_closed() {
    for version in [0u16, 1, 3, 0xFFFF] {
        let server = TestServer::start();
        let mut client = server.connect();
        let reply = client.call(req::hello(version));
        assert_eq!(reply.error_code(), Some(code::UNSUPPORTED_VERSION), "{version}");
        client.assert_closed();
    }
}

#[test]
fn ping_works_before_hello() {
    let server = TestServer::start();
    let mut client = server.connect();
    assert_eq!(client.call(req::ping()), Message::Pong);
    client.hello();
    assert_eq!(client.call(req::ping()), Message::Pong);
}

/// Sends each request on one connection in the given state and checks each answer; afterwards
/// the connection must still answer `PING`.
fn check_state(client: &mut support::Client, cases: &[(&str, Request, Option<u16>)]) {
    for (name, request, expected) in cases {
        let reply = client.call(request.clone());
        assert_eq!(reply.error_code(), *expected, "{name} (opcode 0x{:02X}): {reply:?}", request.opcode);
    }
    assert_eq!(client.call(req::ping()), Message::Pong);
}

fn messaging_requests() -> Vec<(&'static str, Request)> {
    vec![
        ("FRIEND_REQUEST", req::friend_request("bob")),
        ("FRIEND_ACCEPT", req::friend_accept("bob")),
        ("FRIEND_DECLINE", req::friend_decline("bob")),
        ("FRIEND_REMOVE", req::friend_remove("bob")),
        ("FRIEND_LIST", req::friend_list()),
        ("SEND", req::send("bob", 1, "hi")),
        ("ACK", req::ack(1)),
        ("HISTORY", req::history(&support::Target::direct("bob"), 0, 10)),
        ("READ", req::read("bob", 1)),
        ("GROUP_CREATE", req::group_create("g")),
        ("GROUP_INVITE", req::group_invite(1, "bob")),
        ("GROUP_LEAVE", req::group_leave(2)),
        ("GROUP_MEMBERS", req::group_members(1)),
        ("GROUP_LIST", req::group_list()),
        ("GROUP_SEND", req::group_send(1, 1, "hi")),
    ]
}

#[test]
fn everything_but_hello_and_ping_needs_hello_first() {
    let server = TestServer::start();
    let mut client = server.connect();
    let mut cases = vec![
        ("REGISTER", register_request("alice"), Some(code::HELLO_REQUIRED)),
        ("LOGIN_START", req::login_start("alice", &[7; 16]), Some(code::HELLO_REQUIRED)),
        ("LOGIN_FINISH", req::login_finish(&[0; 32]), Some(code::HELLO_REQUIRED)),
        ("LOGOUT", req::logout(), Some(code::HELLO_REQUIRED)),
        ("unknown 0x7F", Request::new(0x7F, Body::new()), Some(code::UNKNOWN_OPCODE)),
    ];
    for (name, request) in messaging_requests() {
        cases.push((name, request, Some(code::HELLO_REQUIRED)));
    }
    check_state(&mut client, &cases);
    // The REGISTER above was refused without touching the store: alice is still free.
    client.hello();
    assert_eq!(client.call(register_request("alice")), Message::Ok);
}

#[test]
fn unauthenticated_connection_refuses_messaging_and_wrong_state_requests() {
    let server = TestServer::start();
    let mut client = server.hello();
    let mut cases = vec![
        ("second HELLO", req::hello(2), Some(code::INVALID_STATE)),
        ("LOGIN_FINISH without LOGIN_START", req::login_finish(&[0; 32]), Some(code::INVALID_STATE)),
        ("LOGOUT", req::logout(), Some(code::NOT_AUTHENTICATED)),
        ("unknown 0x7F", Request::new(0x7F, Body::new()), Some(code::UNKNOWN_OPCODE)),
    ];
    for (name, request) in messaging_requests() {
        cases.push((name, request, Some(code::NOT_AUTHENTICATED)));
    }
    check_state(&mut client, &cases);
}

#[test]
fn authenticating_connection_accepts_only_ping_and_login_finish() {
    let server = TestServer::start();
    server.register("alice");
    let mut client = server.hello();
    let challenge = client.call(req::login_start("alice", &[7; 16]));
    assert!(matches!(challenge, Message::LoginChallenge { .. }), "{challenge:?}");
    let mut cases = vec![
        ("second HELLO", req::hello(2), Some(code::INVALID_STATE)),
        ("unknown 0x7F", Request::new(0x7F, Body::new()), Some(code::UNKNOWN_OPCODE)),
    ];
    for (name, request) in messaging_requests() {
        cases.push((name, request, Some(code::NOT_AUTHENTICATED)));
    }
    check_state(&mut client, &cases);
}

#[test]
fn authenticated_connection_refuses_hello_register_and_login() {
    let server = TestServer::start();
    let mut client = server.user("alice");
    check_state(
        &mut client,
        &[
            ("second HELLO", req::hello(2), Some(code::INVALID_STATE)),
            ("REGISTER", register_request("bob"), Some(code::INVALID_STATE)),
            ("LOGIN_START", req::login_start("alice", &[7; 16]), Some(code::INVALID_STATE)),
            ("LOGIN_FINISH", req::login_finish(&[0; 32]), Some(code::INVALID_STATE)),
            ("unknown 0x7F", Request::new(0x7F, Body::new()), Some(code::UNKNOWN_OPCODE)),
            ("FRIEND_LIST", req::friend_list(), None),
        ],
    );
    // The refused REGISTER stored nothing: bob can still be registered.
    assert_eq!(server.hello().call(register_request("bob")), Message::Ok);
}

#[test]
fn unknown_opcodes_in_every_range() {
    let server = TestServer::start();
    let mut client = server.hello();
    let cases: Vec<_> = [0x00u8, 0x0A, 0x0F, 0x15, 0x24, 0x36, 0x7F, 0x80, 0x83, 0xBF, 0xC0, 0xFF]
        .into_iter()
        .map(|opcode| ("unknown", Request::new(opcode, Body::new()), Some(code::UNKNOWN_OPCODE)))
        .collect();
    check_state(&mut client, &cases);
}
