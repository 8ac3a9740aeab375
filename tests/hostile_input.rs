//! Framing and hostile bytes (PROTOCOL.md §1), in the spirit of mosquitto's small raw-socket
//! scripts: exact bytes in, exact replies or a close out.

mod support;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use support::{Body, Client, Message, Request, TestServer, code, frame, op, register_request, req};

/// A header claiming `length` bytes, with nothing after it.
fn header(length: u32) -> Vec<u8> {
    length.to_be_bytes().to_vec()
}

#[test]
fn header_claiming_4_gib_is_refused_without_reading_on() {
    let server = TestServer::start();
    let mut client = server.connect();
    client.write_raw(&header(0xFFFF_FFFF));
    client.assert_error_and_close(code::FRAME_TOO_LARGE);
    // The server is still there for everyone else.
    let mut other = server.connect();
    other.hello();
    assert_eq!(other.call(req::ping()), Message::Pong);
}

/// The last example of PROTOCOL.md §7, byte for byte.
#[test]
fn spec_example_frame_too_large_bytes() {
    let server = TestServer::start();
    let mut client = server.connect();
    client.write_raw(&[0xFF, 0xFF, 0xFF, 0xFF]);
    let reply = client.read_frame();
    let text = b"frame of 4294967295 bytes exceeds the limit of 4096";
    let mut expected = vec![0, 0, 0, 0x3C, 0x83, 0, 0, 0, 0, 0, 3, 0, 0x33];
    expected.extend_from_slice(text);
    assert_eq!(frame(reply.opcode, reply.request_id, &reply.body), expected);
    client.assert_closed();
}

#[test]
fn limit_before_login_is_4096() {
    let server = TestServer::start();
    // 4096 is allowed: a PING padded to exactly 4096 bytes is read whole, then refused as
    // malformed, and the connection stays.
    let mut client = server.hello();
    let padded_ping = Request::new(op::PING, Body::new().raw(&[0; 4091]));
    let reply = client.call(padded_ping);
    assert_eq!(reply.error_code(), Some(code::MALFORMED_FRAME), "{reply:?}");
    assert_eq!(client.call(req::ping()), Message::Pong);
    // 4097 is not, even before HELLO.
    for mut client in [server.hello(), server.connect()] {
        client.write_raw(&header(4097));
        client.assert_error_and_close(code::FRAME_TOO_LARGE);
    }
}

#[test]
fn limit_after_login_is_max_frame() {
    let server = TestServer::start_with(&["--max-frame", "10000", "--max-body", "8000"]);
    server.register_all(&["alice", "bob"]);
    let mut alice = server.device("alice");
    // Above the 4096 of the anonymous state: a padded PING of 10000 bytes is read whole.
    let padded_ping = Request::new(op::PING, Body::new().raw(&[0; 9995]));
    let reply = alice.call(padded_ping);
    assert_eq!(reply.error_code(), Some(code::MALFORMED_FRAME), "{reply:?}");
    assert_eq!(alice.call(req::ping()), Message::Pong);
    alice.write_raw(&header(10_001));
    alice.assert_error_and_close(code::FRAME_TOO_LARGE);
    // A logged-out connection is back to the anonymous limit.
    let mut bob = server.device("bob");
    assert_eq!(bob.call(req::logout()), Message::Ok);
    bob.write_raw(&header(4097));
    bob.assert_error_and_close(code::FRAME_TOO_LARGE);
}

#[test]
fn default_max_frame_is_65536() {
    let server = TestServer::start();
    server.register("alice");
    let mut alice = server.device("alice");
    let padded_ping = Request::new(op::PING, Body::new().raw(&vec![0; 65_531]));
    let reply = alice.call(padded_ping);
    assert_eq!(reply.error_code(), Some(code::MALFORMED_FRAME), "{reply:?}");
    alice.write_raw(&header(65_537));
    alice.assert_error_and_close(code::FRAME_TOO_LARGE);
}

#[test]
fn length_below_5_is_malformed_and_closes() {
    for length in [0u32, 1, 4] {
        let server = TestServer::start();
        let mut client = server.connect();
        client.write_raw(&header(length));
        client.assert_error_and_close(code::MALFORMED_FRAME);
    }
}

/// Sends each malformed request on `client`: each must get `MALFORMED_FRAME` with its own
/// request id, and the connection must stay usable.
fn check_malformed(client: &mut Client, cases: &[(&str, Request)]) {
    for (label, request) in cases {
        let reply = client.call(request.clone());
        assert_eq!(reply.error_code(), Some(code::MALFORMED_FRAME), "{label}: {reply:?}");
    }
    assert_eq!(client.call(req::ping()), Message::Pong);
}

fn truncated(request: Request) -> Request {
    let mut request = request;
    request.body.pop();
    request
}

fn with_trailing_byte(request: Request) -> Request {
    let mut request = request;
    request.body.push(0);
    request
}

/// A REGISTER whose username is the given raw bytes.
fn register_with_raw_name(name: &[u8]) -> Request {
    let rest = register_request("x").body[3..].to_vec();
    Request::new(op::REGISTER, Body::new().bytes(name).raw(&rest))
}

#[test]
fn malformed_bodies_before_login() {
    let server = TestServer::start();
    let mut client = server.hello();
    check_malformed(
        &mut client,
        &[
            ("PING with a body", with_trailing_byte(req::ping())),
            ("REGISTER cut short", truncated(register_request("alice"))),
            ("REGISTER with a trailing byte", with_trailing_byte(register_request("alice"))),
            ("REGISTER empty", Request::new(op::REGISTER, Body::new())),
            (
                "REGISTER with a str longer than the body",
                Request::new(op::REGISTER, Body::new().raw(&[0x00, 0x50, b'a'])),
            ),
            ("REGISTER with invalid UTF-8", register_with_raw_name(&[b'a', 0xFF, 0xFE])),
            ("REGISTER with overlong UTF-8", register_with_raw_name(&[0xC0, 0x80])),
            ("REGISTER with a UTF-16 surrogate", register_with_raw_name(&[0xED, 0xA0, 0x80])),
            ("LOGIN_START empty", Request::new(op::LOGIN_START, Body::new())),
            ("LOGIN_START cut short", truncated(req::login_start("alice", &[1; 16]))),
            ("LOGIN_START with a trailing byte", with_trailing_byte(req::login_start("alice", &[1; 16]))),
        ],
    );
    // None of the malformed REGISTERs stored anything.
    assert_eq!(client.call(register_request("alice")), Message::Ok);
}

#[test]
fn malformed_bodies_after_login() {
    let server = TestServer::start();
    let mut client = server.user("alice");
    let history_kind_2 = Request::new(op::HISTORY, Body::new().u8(2).u64(1).u64(0).u16(10));
    let send_bad_utf8 = Request::new(op::SEND, Body::new().str("bob").u64(1).bytes(&[0x68, 0xFF]));
    check_malformed(
        &mut client,
        &[
            ("LOGOUT with a body", with_trailing_byte(req::logout())),
            ("FRIEND_LIST with a body", with_trailing_byte(req::friend_list())),
            ("FRIEND_REQUEST empty", Request::new(op::FRIEND_REQUEST, Body::new())),
            ("SEND cut short", truncated(req::send("bob", 1, "hi"))),
            ("SEND without a body field", Request::new(op::SEND, Body::new().str("bob").u64(1))),
            ("SEND with invalid UTF-8", send_bad_utf8),
            ("ACK of 7 bytes", Request::new(op::ACK, Body::new().raw(&[0; 7]))),
            ("ACK of 9 bytes", Request::new(op::ACK, Body::new().raw(&[0; 9]))),
            ("HISTORY of kind 2", history_kind_2),
            ("HISTORY cut short", truncated(req::history(&support::Target::Group(1), 0, 10))),
            ("READ without an id", Request::new(op::READ, Body::new().str("bob"))),
            ("GROUP_CREATE with a trailing byte", with_trailing_byte(req::group_create("g"))),
            ("GROUP_SEND with a trailing byte", with_trailing_byte(req::group_send(1, 1, "hi"))),
            ("GROUP_MEMBERS of 4 bytes", Request::new(op::GROUP_MEMBERS, Body::new().u32(1))),
        ],
    );
    // Still logged in: the malformed LOGOUT did not log out.
    let reply = client.call(req::friend_list());
    assert!(matches!(reply, Message::FriendList(_)), "{reply:?}");
    // And the malformed GROUP_CREATE and GROUP_SEND stored nothing.
    let Message::GroupList(groups) = client.call(req::group_list()) else {
        panic!("no GROUP_LIST_RESULT");
    };
    assert_eq!(
        groups.iter().map(|g| (g.group_id, g.name.as_str(), g.members)).collect::<Vec<_>>(),
        [(support::LOBBY, "lobby", 1)]
    );
    let lobby_history = client.call(req::history(&support::Target::Group(support::LOBBY), 0, 10));
    assert_eq!(lobby_history.history_page().0, []);
}

#[test]
fn frames_split_into_single_bytes() {
    let server = TestServer::start();
    let mut client = server.connect();
    let mut bytes = frame(op::HELLO, 1, &req::hello(2).body);
    bytes.extend(frame(op::PING, 2, &[]));
    bytes.extend(frame(op::REGISTER, 3, &register_request("alice").body));
    client.write_byte_by_byte(&bytes);
    let replies: Vec<_> = (0..3).map(|_| client.read_frame()).collect();
    assert_eq!(
        replies.iter().map(|f| (f.opcode, f.request_id)).collect::<Vec<_>>(),
        [(op::HELLO_OK, 1), (op::PONG, 2), (op::OK, 3)]
    );
    // The name was stored once.
    let reply = client.call(register_request("alice"));
    assert_eq!(reply.error_code(), Some(code::USERNAME_TAKEN));
}

#[test]
fn many_frames_in_one_write_are_answered_in_order() {
    let server = TestServer::start();
    let mut client = server.connect();
    let mut bytes = Vec::new();
    bytes.extend(frame(op::HELLO, 10, &req::hello(2).body));
    bytes.extend(frame(op::PING, 11, &[]));
    bytes.extend(frame(0x7F, 12, &[]));
    bytes.extend(frame(op::REGISTER, 13, &register_request("alice").body));
    bytes.extend(frame(op::PING, 14, &[1]));
    bytes.extend(frame(op::REGISTER, 15, &register_request("ALICE").body));
    bytes.extend(frame(op::PING, 16, &[]));
    client.write_raw(&bytes);
    let replies: Vec<_> = (0..7)
        .map(|_| {
            let frame = client.read_frame();
            (frame.request_id, frame.decode().error_code().unwrap_or(0), frame.opcode)
        })
        .collect();
    assert_eq!(
        replies,
        [
            (10, 0, op::HELLO_OK),
            (11, 0, op::PONG),
            (12, code::UNKNOWN_OPCODE, op::ERROR),
            (13, 0, op::OK),
            (14, code::MALFORMED_FRAME, op::ERROR),
            (15, code::USERNAME_TAKEN, op::ERROR),
            (16, 0, op::PONG),
        ]
    );
}

#[test]
fn a_frame_and_a_half_then_the_rest() {
    let server = TestServer::start();
    let mut client = server.connect();
    let mut bytes = frame(op::HELLO, 1, &req::hello(2).body);
    bytes.extend(frame(op::PING, 2, &[]));
    let (first, second) = bytes.split_at(14);
    client.write_raw(first);
    assert_eq!(client.read_frame().opcode, op::HELLO_OK);
    client.write_raw(second);
    assert_eq!((client.read_frame().opcode, 2), (op::PONG, 2));
}

/// Any well-framed request with any body, anonymous or logged in, gets one well-formed
/// response and leaves the connection answering `PING`.
#[test]
fn random_bodies_never_break_a_connection() {
    let server = TestServer::start();
    server.register("alice");
    let mut runner = TestRunner::new(Config { cases: 48, failure_persistence: None, ..Config::default() });
    let strategy = (
        any::<bool>(),
        any::<u8>().prop_filter("not HELLO", |opcode| *opcode != op::HELLO),
        proptest::collection::vec(any::<u8>(), 0..48),
    );
    runner
        .run(&strategy, |(logged_in, opcode, body)| {
            let mut client = if logged_in { server.device("alice") } else { server.hello() };
            let id = client.send(&Request { opcode, body });
            let reply = client.read_frame();
            prop_assert_eq!(reply.request_id, id, "{:?}", reply);
            let _ = reply.decode();
            // A LOGOUT or a stray login may have changed the state; PING is legal in all.
            let ping = client.barrier();
            prop_assert!(ping.iter().all(|push| push.error_code().is_none()), "{:?}", ping);
            Ok(())
        })
        .unwrap();
}
