//! The command layer without a network: a [`Session`] and bytes in, staged frames out. Each
//! case is one request in one state and the answer PROTOCOL.md §2 gives it.

use super::{Core, handle_frames};
use crate::config::Config;
use crate::protocol::client;
use crate::protocol::opcode as op;
use crate::protocol::request::Registration;
use crate::protocol::{ErrorCode, FrameHeader};
use crate::scram;
use crate::session::{CloseReason, Session, SessionState};
use crate::store::Store;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

const TOKEN: usize = 1;
const SALT: [u8; 16] = [3; 16];
const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

struct Harness {
    core: Core,
    _dir: tempfile::TempDir,
}

/// The first frame staged for the session: its opcode and, for an error, its code.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Frame(u8),
    Error(u16),
}

impl Harness {
    /// A fresh store with the user `alice` (password "pw", one KDF iteration).
    fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("cmd.db");
        let mut config = Config::with_defaults("127.0.0.1:0".parse().unwrap(), db.clone());
        config.min_kdf_iterations = 1;
        let core = Core::new(config, Store::open(&db).unwrap()).unwrap();
        let keys = scram::derive_keys(b"pw", &SALT, 1);
        let (stored, server) = (keys.stored, keys.server);
        let mut h = Harness { core, _dir: dir };
        let mut setup = h.session_after_hello();
        let r =
            Registration { username: "alice", salt: &SALT, iterations: 1, stored_key: &stored, server_key: &server };
        assert_eq!(h.send(&mut setup, |b| client::register(b, 2, &r)), vec![Answer::Frame(op::OK)]);
        h
    }

    /// Sends one request and returns every answer staged for the session, after the commit.
    fn send(&mut self, session: &mut Session, encode: impl FnOnce(&mut Vec<u8>)) -> Vec<Answer> {
        let mut bytes = Vec::new();
        encode(&mut bytes);
        let handled = handle_frames(&mut self.core.ctx(Instant::now()), TOKEN, session, 0, &bytes);
        assert_eq!(handled.used, bytes.len());
        let committed = self.core.store.finish_iteration();
        let mut answers = Vec::new();
        self.core.outbox.drain(committed, |to, _, frame, _| {
            if to == TOKEN && !frame.is_empty() {
                let header = FrameHeader::parse(frame);
                answers.push(if header.opcode == op::ERROR {
                    Answer::Error(u16::from_be_bytes([header.body[0], header.body[1]]))
                } else {
                    Answer::Frame(header.opcode)
                });
            }
        });
        answers
    }

    fn session_after_hello(&mut self) -> Session {
        let mut session = Session::new(LOOPBACK, Instant::now());
        assert_eq!(self.send(&mut session, |b| client::hello(b, 1, 2)), vec![Answer::Frame(op::HELLO_OK)]);
        session
    }

    /// Runs both SCRAM steps with `password`; returns LOGIN_FINISH's answers.
    fn login(&mut self, session: &mut Session, password: &[u8]) -> Vec<Answer> {
        let nonce = [9u8; 24];
        let mut bytes = Vec::new();
        client::login_start(&mut bytes, 3, "alice", &nonce);
        handle_frames(&mut self.core.ctx(Instant::now()), TOKEN, session, 0, &bytes);
        self.core.store.finish_iteration();
        let mut challenge = None;
        self.core.outbox.drain(true, |_, _, frame, _| {
            let header = FrameHeader::parse(frame);
            if let Ok(client::ServerFrame::LoginChallenge { salt, iterations, nonce }) =
                client::ServerFrame::decode(header.opcode, header.request_id, header.body)
            {
                challenge = Some((salt.to_vec(), iterations, nonce.to_vec()));
            }
        });
        let (salt, iterations, server_nonce) = challenge.expect("a LOGIN_CHALLENGE");
        let keys = scram::derive_keys(password, &salt, iterations);
        let message = scram::auth_message("alice", &nonce, &salt, iterations, &server_nonce);
        let proof = scram::client_proof(&keys, &message);
        self.send(session, |b| client::login_finish(b, 4, &proof, 7, "laptop"))
    }
}

fn error(code: ErrorCode) -> Vec<Answer> {
    vec![Answer::Error(code as u16)]
}

#[test]
fn each_state_admits_only_its_requests() {
    let mut h = Harness::new();
    let fresh = |_: &mut Harness| Session::new(LOOPBACK, Instant::now());
    let after_hello = |h: &mut Harness| h.session_after_hello();
    let logged_in = |h: &mut Harness| {
        let mut s = h.session_after_hello();
        assert_eq!(h.login(&mut s, b"pw").first(), Some(&Answer::Frame(op::LOGIN_OK)));
        s
    };
    type Start = fn(&mut Harness) -> Session;
    type Request = fn(&mut Vec<u8>);
    let cases: Vec<(&str, Start, Request, Vec<Answer>)> = vec![
        ("ping before hello", fresh, |b| client::ping(b, 5), vec![Answer::Frame(op::PONG)]),
        (
            "login before hello",
            fresh,
            |b| client::login_start(b, 5, "alice", &[1; 24]),
            error(ErrorCode::HelloRequired),
        ),
        ("friend list before hello", fresh, |b| client::friend_list(b, 5), error(ErrorCode::HelloRequired)),
        ("old version", fresh, |b| client::hello(b, 5, 1), error(ErrorCode::UnsupportedVersion)),
        ("second hello", after_hello, |b| client::hello(b, 5, 2), error(ErrorCode::InvalidState)),
        ("friend list unauthenticated", after_hello, |b| client::friend_list(b, 5), error(ErrorCode::NotAuthenticated)),
        (
            "send unauthenticated",
            after_hello,
            |b| client::send(b, 5, "alice", 1, "hi"),
            error(ErrorCode::NotAuthenticated),
        ),
        (
            "finish without start",
            after_hello,
            |b| client::login_finish(b, 5, &[0; 32], 1, "d"),
            error(ErrorCode::InvalidState),
        ),
        (
            "unknown opcode",
            after_hello,
            |b| b.extend_from_slice(&[0, 0, 0, 5, 0x7f, 0, 0, 0, 5]),
            error(ErrorCode::UnknownOpcode),
        ),
        (
            "register when logged in",
            logged_in,
            |b| {
                client::register(
                    b,
                    5,
                    &Registration {
                        username: "x",
                        salt: &SALT,
                        iterations: 1,
                        stored_key: &[0; 32],
                        server_key: &[0; 32],
                    },
                )
            },
            error(ErrorCode::InvalidState),
        ),
        (
            "login when logged in",
            logged_in,
            |b| client::login_start(b, 5, "alice", &[1; 24]),
            error(ErrorCode::InvalidState),
        ),
        (
            "friend list when logged in",
            logged_in,
            |b| client::friend_list(b, 5),
            vec![Answer::Frame(op::FRIEND_LIST_RESULT)],
        ),
        ("logout when logged in", logged_in, |b| client::logout(b, 5), vec![Answer::Frame(op::OK)]),
    ];
    for (name, start, request, expected) in cases {
        let mut session = start(&mut h);
        assert_eq!(h.send(&mut session, request), expected, "{name}");
        if let Some(user) = session.user() {
            super::end_session(&mut h.core.ctx(Instant::now()), TOKEN, user);
            h.core.outbox.drain(true, |_, _, _, _| {});
        }
    }
}

#[test]
fn an_unsupported_version_closes_the_session() {
    let mut h = Harness::new();
    let mut session = Session::new(LOOPBACK, Instant::now());
    h.send(&mut session, |b| client::hello(b, 1, 1));
    assert_eq!(session.closing(), Some(CloseReason::ProtocolError));
}

#[test]
fn a_right_proof_logs_in_on_a_device_and_starts_the_backlog() {
    let mut h = Harness::new();
    let mut session = h.session_after_hello();
    assert_eq!(h.login(&mut session, b"pw"), vec![Answer::Frame(op::LOGIN_OK)]);
    // The state holds the server's number for the device the client named 7.
    assert!(matches!(session.state(), SessionState::Authenticated { .. }));
    assert!(session.device().is_some_and(|d| d > 0));
    assert!(session.is_syncing());
    assert_eq!(h.send(&mut session, |b| client::logout(b, 9)), vec![Answer::Frame(op::OK)]);
    assert!(matches!(session.state(), SessionState::Unauthenticated));
    assert!(!session.is_syncing());
}

#[test]
fn wrong_proofs_fail_alike_and_the_fifth_closes() {
    let mut h = Harness::new();
    let mut session = h.session_after_hello();
    for attempt in 1..=4 {
        assert_eq!(h.login(&mut session, b"wrong"), error(ErrorCode::AuthFailed), "attempt {attempt}");
        assert!(matches!(session.state(), SessionState::Unauthenticated));
        assert_eq!(session.closing(), None);
    }
    assert_eq!(h.login(&mut session, b"wrong"), error(ErrorCode::TooManyAttempts));
    assert_eq!(session.closing(), Some(CloseReason::TooManyAttempts));
}
