//! The web path (PROTOCOL.md §1, "WebSocket"): `--http-listen` serves the page and upgrades
//! `GET /ws`; the protocol's frames travel one per binary message; every bad request or
//! WebSocket violation has one defined answer.

mod support;

use std::time::{Duration, Instant};
use support::websocket::{self as ws, BINARY, CLOSE, PING, PONG, TEXT};
use support::*;

fn web_server(extra: &[&str]) -> (TestServer, u16) {
    let mut args = vec!["--http-listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let server = TestServer::start_with(&args);
    let port = server.http_port.expect("an HTTP port");
    (server, port)
}

fn hello_message() -> Vec<u8> {
    frame(op::HELLO, 1, &2u16.to_be_bytes())
}

#[test]
fn the_page_is_served_with_its_security_headers_and_nothing_else_is() {
    let (_server, port) = web_server(&[]);
    let (status, head, _) = ws::request(port, &format!("GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"));
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("Content-Security-Policy: default-src 'none'; script-src 'self';"), "{head}");
    assert!(head.contains("X-Content-Type-Options: nosniff"), "{head}");
    for path in ["/../Cargo.toml", "/etc/passwd", "/ws/", "/index.html/x"] {
        let (status, _, mut socket) = ws::request(port, &format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert_eq!(status, 404, "{path}");
        // The body, then the close.
        let mut body = String::new();
        std::io::Read::read_to_string(&mut socket, &mut body).unwrap();
        assert_eq!(body, "404 Not Found\n", "{path}");
    }
    let (status, _, _) = ws::request(port, "DELETE / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 404);
}

#[test]
fn a_request_head_is_bounded() {
    let (_server, port) = web_server(&[]);
    let huge = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Filler: {}\r\n\r\n", "a".repeat(9000));
    let (status, _, _) = ws::request(port, &huge);
    assert_eq!(status, 431);
}

#[test]
fn bad_upgrades_and_foreign_origins_are_refused() {
    let (_server, port) = web_server(&["--web-origin", "https://chat.example"]);
    let (status, _, _) = ws::request(port, &ws::upgrade_head(port, "https://evil.example"));
    assert_eq!(status, 403, "another site's page");
    let (status, _, _) = ws::request(port, &ws::upgrade_head(port, "null"));
    assert_eq!(status, 403, "an opaque origin");
    let (status, _, _) = ws::request(port, &ws::upgrade_head(port, "https://chat.example"));
    assert_eq!(status, 101, "a listed origin");
    let (status, _, _) = ws::request(port, &ws::upgrade_head(port, ""));
    assert_eq!(status, 101, "no origin: not a browser");
    let no_key = ws::upgrade_head(port, "").replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "");
    assert_eq!(ws::request(port, &no_key).0, 400);
    let old = ws::upgrade_head(port, "").replace("Version: 13", "Version: 8");
    let (status, head, _) = ws::request(port, &old);
    assert_eq!(status, 426);
    assert!(head.contains("Sec-WebSocket-Version: 13"), "{head}");
}

#[test]
fn frames_travel_one_per_binary_message() {
    let (_server, port) = web_server(&[]);
    let mut socket = ws::open(port);
    ws::send(&mut socket, true, BINARY, &hello_message(), true);
    let reply = ws::read(&mut socket).expect("HELLO_OK");
    assert_eq!((reply.fin, reply.opcode), (true, BINARY));
    assert_eq!(reply.payload[4], op::HELLO_OK);
    // Two frames in one message, and one frame cut over two messages: the payloads are one
    // byte stream, and each answer is still its own message.
    let ping = |id| frame(op::PING, id, &[]);
    ws::send(&mut socket, true, BINARY, &[ping(2), ping(3)].concat(), true);
    let split = ping(4);
    ws::send(&mut socket, true, BINARY, &split[..3], true);
    ws::send(&mut socket, true, BINARY, &split[3..], true);
    for id in 2..=4u32 {
        let pong = ws::read(&mut socket).unwrap();
        assert_eq!(pong.payload, frame(op::PONG, id, &[]));
    }
}

#[test]
fn a_fragmented_message_is_reassembled_around_a_ping() {
    let (_server, port) = web_server(&[]);
    let mut socket = ws::open(port);
    let hello = hello_message();
    ws::send(&mut socket, false, BINARY, &hello[..4], true);
    ws::send(&mut socket, true, PING, b"still there?", true);
    ws::send(&mut socket, true, 0x0, &hello[4..], true);
    let pong = ws::read(&mut socket).unwrap();
    assert_eq!((pong.opcode, pong.payload.as_slice()), (PONG, &b"still there?"[..]));
    assert_eq!(ws::read(&mut socket).unwrap().payload[4], op::HELLO_OK);
}

#[test]
fn each_violation_is_answered_with_its_close_code() {
    let (_server, port) = web_server(&["--max-frame-before-login", "100"]);
    let cases: [(&str, u8, Vec<u8>, bool, u16); 4] = [
        ("a text message", TEXT, b"hello".to_vec(), true, 1003),
        ("an unmasked frame", BINARY, hello_message(), false, 1002),
        ("a message above the frame limit", BINARY, vec![0; 70_000], true, 1009),
        ("a stray continuation", 0x0, hello_message(), true, 1002),
    ];
    for (name, opcode, payload, masked, code) in cases {
        let mut socket = ws::open(port);
        ws::send(&mut socket, true, opcode, &payload, masked);
        let close = ws::read_until_closed(&mut socket).unwrap_or_else(|| panic!("{name}: no close frame"));
        assert_eq!(close.close_code(), code, "{name}");
    }
    // A client's close is echoed, and the connection ends.
    let mut socket = ws::open(port);
    ws::send(&mut socket, true, CLOSE, &1000u16.to_be_bytes(), true);
    assert_eq!(ws::read_until_closed(&mut socket).unwrap().close_code(), 1000);
}

#[test]
fn a_message_as_large_as_the_largest_frame_is_read_as_frames() {
    // A message may carry one frame of --max-frame bytes (its length field) and the 4-byte
    // field itself; the frame's own limit then applies (FRAME_TOO_LARGE before login), not
    // the WebSocket close 1009 that a longer message gets.
    let (_server, port) = web_server(&["--max-frame", "65536"]);
    let mut message = 65_536u32.to_be_bytes().to_vec();
    message.push(op::PING);
    message.resize(4 + 65_536, 0);
    let mut socket = ws::open(port);
    ws::send(&mut socket, true, BINARY, &message, true);
    let error = ws::read(&mut socket).unwrap();
    assert_eq!((error.opcode, error.payload[4]), (BINARY, op::ERROR));
    assert_eq!(u16::from_be_bytes([error.payload[9], error.payload[10]]), code::FRAME_TOO_LARGE);
}

#[test]
fn protocol_limits_and_the_login_timeout_apply_to_websocket_clients() {
    let (_server, port) = web_server(&["--login-timeout", "1"]);
    // A frame above the limit before login: FRAME_TOO_LARGE in a message, then a close frame.
    let mut socket = ws::open(port);
    ws::send(&mut socket, true, BINARY, &[0, 0, 0x10, 0x01, op::PING, 0, 0, 0, 1], true);
    let error = ws::read(&mut socket).unwrap();
    assert_eq!(error.payload[4], op::ERROR);
    assert_eq!(u16::from_be_bytes([error.payload[9], error.payload[10]]), code::FRAME_TOO_LARGE);
    assert_eq!(ws::read_until_closed(&mut socket).unwrap().close_code(), 1000);
    // Silence after the upgrade: LOGIN_TIMEOUT, then the close.
    let started = Instant::now();
    let mut socket = ws::open(port);
    socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let error = ws::read(&mut socket).unwrap();
    assert_eq!(u16::from_be_bytes([error.payload[9], error.payload[10]]), code::LOGIN_TIMEOUT);
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(ws::read_until_closed(&mut socket).unwrap().close_code(), 1000);
}

#[test]
fn users_on_websockets_chat_with_users_on_tcp() {
    let (server, port) = web_server(&[]);
    let mut alice = ws::connect(port);
    alice.hello();
    assert_eq!(alice.call(register_request("alice")), Message::Ok);
    alice.login("alice");
    alice.sync();
    let mut bob = server.user("bob");
    make_friends(&mut alice, &mut bob);
    let (id, _) = bob.call(req::send("alice", 1, "from tcp")).sent();
    let pushed = alice.push();
    assert_eq!((pushed.deliver().body.as_str(), pushed.item_id()), ("from tcp", Some(id)));
    let long = "w".repeat(4000);
    alice.call(req::send("bob", 1, &long)).sent();
    assert_eq!(bob.push().deliver().body, long);
}

/// A sender's pipelined group messages are joined into one shared chunk per member (issue
/// 13): each member still receives every message as its own frame (over WebSocket, its own
/// binary message; the pump checks one frame per message), in id order, and the sender's
/// other device gets its copies in the same order.
#[test]
fn pipelined_group_messages_reach_every_member_whole_and_in_order() {
    let (server, port) = web_server(&[]);
    server.register_all(&["alice", "bob", "carol"]);
    let mut alice = server.device("alice");
    befriend_offline(&server, &mut alice, &["bob", "carol"]);
    let mut alice_laptop = server.device("alice");
    let mut bob = server.device("bob");
    let mut carol = ws::connect(port);
    carol.hello();
    carol.login("carol");
    assert!(carol.sync().is_empty());
    let group_id = alice.call(req::group_create("g")).group_id();
    for name in ["bob", "carol"] {
        assert_eq!(alice.call(req::group_invite(group_id, name)), Message::Ok);
    }
    for client in [&mut alice, &mut alice_laptop, &mut bob, &mut carol] {
        client.barrier();
    }

    let sends: Vec<Request> = (1..=40).map(|n| req::group_send(group_id, n, &format!("message {n}"))).collect();
    let ids: Vec<u64> = alice.pipeline(&sends).iter().map(|reply| reply.sent().0).collect();
    let expected: Vec<(u64, String)> = ids.iter().zip(1..).map(|(&id, n)| (id, format!("message {n}"))).collect();
    for (name, member) in [("alice's laptop", &mut alice_laptop), ("bob", &mut bob), ("carol", &mut carol)] {
        let got: Vec<(u64, String)> = (0..40)
            .map(|_| {
                let push = member.push();
                (push.item_id().expect("an item"), push.deliver().body.clone())
            })
            .collect();
        assert_eq!(got, expected, "{name}");
        assert_eq!(member.call(req::ack(ids[39])), Message::Ok, "{name}");
        member.assert_quiet();
    }
    alice.assert_quiet();
}
