//! The command-stream fuzz harness, shared by the fuzz target (`fuzz_targets/command_stream.rs`)
//! and the corpus replay in `cargo test` (`tests/fuzz_corpus.rs`): it drives the whole command
//! layer (framing, decoding, the state machine and every handler) against a real store,
//! through `cmd::handle_frames`, the function the poll loop calls, with sessions and no socket.
//!
//! One store and one world live across inputs. Three users share one password (SCRAM keys
//! derived once with a single iteration): `alice` and `bob` are friends, `carol` is no one's
//! friend; `bob` stays logged in on a session of his own, so pushes to an online user are
//! exercised too.
//!
//! Input layout:
//! - byte 0, low 2 bits: the state the fuzzed connection starts in: 0 fresh, 1 after `HELLO`,
//!   2 logged in as `alice`, 3 logged in as `carol`;
//! - byte 1, low 3 bits: `k`, the number of chunk sizes that follow;
//! - the next `k` bytes: chunk sizes (each plus one), used in turn to cut the rest;
//! - the rest: the byte stream the client sends.
//!
//! Each chunk is one batch of the poll loop: `handle_frames`, commit, drain the outbox.
//! Besides "never panics", it checks that every frame the server stages decodes strictly, and
//! that the fuzzed connection gets exactly one response per request it sent, in order, with
//! the request's id (plus, when framing itself fails, one final id-0 error before the close).

use im_server::cmd::{self, Core};
use im_server::config::Config;
use im_server::outbox::FrameKind;
use im_server::protocol::ErrorCode;
use im_server::protocol::client::{self, ServerFrame};
use im_server::protocol::codec::Reader;
use im_server::protocol::frame::{self, FrameCheck, FrameHeader};
use im_server::protocol::opcode as op;
use im_server::protocol::request::Registration;
use im_server::scram::{self, ClientKeys};
use im_server::session::Session;
use im_server::store::Store;
use im_server::world::Token;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The connection under test.
const FUZZED: Token = 0;
/// Bob's connection, logged in for the whole run.
const BOB: Token = 1;
/// The connection that registers the users at start.
const SETUP: Token = 2;
const PASSWORD: &[u8] = b"fuzz";
const SALT: [u8; 16] = [7; 16];
const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

pub struct Harness {
    core: Core,
    keys: ClientKeys,
    /// Stays logged in; it never reads.
    _bob: Session,
    db: PathBuf,
}

/// A staged frame as the poll loop would hand it to a connection.
struct Staged {
    to: Token,
    kind: FrameKind,
    bytes: Vec<u8>,
}

fn remove_database(db: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
}

/// The harness's view of the command layer: feed bytes, settle the batch.
trait Driver {
    fn feed(&mut self, token: Token, session: &mut Session, data: &[u8]) -> (usize, bool);
    fn settle(&mut self) -> Vec<Staged>;
    fn end_session(&mut self, token: Token, session: &Session);
    fn call(&mut self, token: Token, session: &mut Session, frames: &[u8]) -> Vec<Staged>;
    fn login(&mut self, token: Token, session: &mut Session, keys: &ClientKeys, name: &str);
}

impl Driver for Core {
    /// Feeds bytes to a connection as one read would; returns the bytes consumed and
    /// whether reading paused for the connection's output.
    fn feed(&mut self, token: Token, session: &mut Session, data: &[u8]) -> (usize, bool) {
        // Nothing is ever queued on the harness's connections: each batch's frames are
        // collected by `settle`, as if the client read them at once.
        let handled = cmd::handle_frames(&mut self.ctx(Instant::now()), token, session, 0, data);
        (handled.used, handled.paused)
    }

    /// The batch's safe point: commit, then drain the outbox. Checks every staged frame.
    fn settle(&mut self) -> Vec<Staged> {
        let committed = self.store.finish_iteration();
        let mut staged = Vec::new();
        self.outbox.drain(committed, |to, kind, bytes, _| {
            if let FrameKind::OwnItem { .. } = kind {
                // No bytes: it only tells the connection what it made itself.
                assert!(bytes.is_empty(), "an own-item note carries bytes");
                return;
            }
            check_server_frame(kind, bytes);
            staged.push(Staged { to, kind, bytes: bytes.to_vec() });
        });
        staged
    }

    /// Ends a connection's session as the server does when it closes.
    fn end_session(&mut self, token: Token, session: &Session) {
        if let Some(user) = session.user() {
            cmd::end_session(&mut self.ctx(Instant::now()), token, user);
        }
        self.settle();
    }

    /// Sends whole frames and returns the frames staged for that connection.
    fn call(&mut self, token: Token, session: &mut Session, frames: &[u8]) -> Vec<Staged> {
        assert_eq!(self.feed(token, session, frames).0, frames.len(), "setup frames are whole");
        self.settle().into_iter().filter(|s| s.to == token).collect()
    }

    /// Logs a connection in with SCRAM, as a client would.
    fn login(&mut self, token: Token, session: &mut Session, keys: &ClientKeys, name: &str) {
        let client_nonce = [name.len() as u8; 24];
        let mut buf = Vec::new();
        client::login_start(&mut buf, 1, name, &client_nonce);
        let answer = self.call(token, session, &buf);
        let Some(ServerFrame::LoginChallenge { salt, iterations, nonce }) = answer.first().map(|s| decode(&s.bytes))
        else {
            panic!("no LOGIN_CHALLENGE for {name}");
        };
        let message = scram::auth_message(name, &client_nonce, salt, iterations, nonce);
        let proof = scram::client_proof(keys, &message);
        buf.clear();
        client::login_finish(&mut buf, 2, &proof, 1, "fuzz");
        let answer = self.call(token, session, &buf);
        assert!(
            matches!(answer.first().map(|s| decode(&s.bytes)), Some(ServerFrame::LoginOk { .. })),
            "login of {name} failed"
        );
        assert!(session.is_authenticated());
        // The poll loop would push the offline backlog; this harness only drives commands.
        session.backlog_finished();
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        remove_database(&self.db);
    }
}

impl Harness {
    /// A fresh database at `db` (removed first) with the three users.
    pub fn new(db: PathBuf) -> Harness {
        remove_database(&db);
        let mut config = Config::with_defaults("127.0.0.1:0".parse().unwrap(), db.clone());
        config.min_kdf_iterations = 1;
        let store = Store::open(&db).expect("open the fuzz database");
        let mut core = Core::new(config, store).expect("start the command layer");

        let keys = scram::derive_keys(PASSWORD, &SALT, 1);
        let new_session = || Session::new(LOOPBACK, Instant::now());
        let mut setup = new_session();
        let mut buf = Vec::new();
        client::hello(&mut buf, 1, 2);
        for name in ["alice", "bob", "carol"] {
            let r = Registration {
                username: name,
                salt: &SALT,
                iterations: 1,
                stored_key: &keys.stored,
                server_key: &keys.server,
            };
            client::register(&mut buf, 2, &r);
        }
        let answers = core.call(SETUP, &mut setup, &buf);
        assert!(answers.iter().all(|s| s.bytes[4] != op::ERROR), "setup registration failed");

        core.login(SETUP, &mut setup, &keys, "alice");
        let mut bob = new_session();
        buf.clear();
        client::hello(&mut buf, 1, 2);
        core.call(BOB, &mut bob, &buf);
        core.login(BOB, &mut bob, &keys, "bob");
        buf.clear();
        client::friend_request(&mut buf, 3, "bob");
        core.call(SETUP, &mut setup, &buf);
        buf.clear();
        client::friend_accept(&mut buf, 3, "alice");
        let answer = core.call(BOB, &mut bob, &buf);
        assert!(answer.iter().any(|s| s.bytes[4] == op::OK), "bob could not accept alice");
        core.end_session(SETUP, &setup);

        Harness { core, keys, _bob: bob, db }
    }

    /// Runs one input (see the layout in the fuzz target's doc) and checks the answers.
    pub fn run(&mut self, data: &[u8]) {
        let (mode, sizes, stream) = split_input(data);
        let mut conn = Session::new(LOOPBACK, Instant::now());
        let mut buf = Vec::new();
        if mode >= 1 {
            client::hello(&mut buf, 1, 2);
            self.core.call(FUZZED, &mut conn, &buf);
        }
        match mode {
            2 => self.core.login(FUZZED, &mut conn, &self.keys, "alice"),
            3 => self.core.login(FUZZED, &mut conn, &self.keys, "carol"),
            _ => {}
        }

        let mut pending: Vec<u8> = Vec::new();
        let mut sent_ids: Vec<u32> = Vec::new();
        let mut responses: Vec<(u32, Vec<u8>)> = Vec::new();
        let mut rest = stream;
        let mut turn = 0;
        while !rest.is_empty() && conn.closing().is_none() {
            let size =
                if sizes.is_empty() { rest.len() } else { (sizes[turn % sizes.len()] as usize + 1).min(rest.len()) };
            turn += 1;
            pending.extend_from_slice(&rest[..size]);
            rest = &rest[size..];
            loop {
                let (used, paused) = self.core.feed(FUZZED, &mut conn, &pending);
                record_frames(&pending[..used], &mut sent_ids);
                pending.drain(..used);
                collect_responses(self.core.settle(), &mut responses);
                // A connection paused for its own output is read again once that has drained,
                // which `settle` just did.
                if !paused || conn.closing().is_some() {
                    break;
                }
            }
        }

        check_responses(&sent_ids, &responses, conn.closing().is_some());
        self.core.end_session(FUZZED, &conn);
    }
}

/// Splits the input into the start state, the chunk sizes and the stream.
fn split_input(data: &[u8]) -> (u8, &[u8], &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return (0, &[], &[]) };
    let Some((&k, rest)) = rest.split_first() else { return (mode & 3, &[], &[]) };
    let k = ((k & 7) as usize).min(rest.len());
    let (sizes, stream) = rest.split_at(k);
    (mode & 3, sizes, stream)
}

/// Appends the request id of each complete frame in `consumed` (exactly the frames dispatched).
fn record_frames(mut consumed: &[u8], ids: &mut Vec<u32>) {
    while !consumed.is_empty() {
        let FrameCheck::Complete { total } = frame::check(consumed, u32::MAX) else {
            panic!("handle_frames consumed a partial frame");
        };
        ids.push(FrameHeader::parse(&consumed[..total]).request_id);
        consumed = &consumed[total..];
    }
}

fn collect_responses(staged: Vec<Staged>, responses: &mut Vec<(u32, Vec<u8>)>) {
    for s in staged {
        if s.to != FUZZED {
            continue;
        }
        if let FrameKind::Response { request_id } = s.kind {
            let on_wire = u32::from_be_bytes([s.bytes[5], s.bytes[6], s.bytes[7], s.bytes[8]]);
            assert_eq!(on_wire, request_id, "a response carries another request's id");
            responses.push((request_id, s.bytes));
        }
    }
}

/// One response per request, in order; a framing failure adds one id-0 error and a close.
fn check_responses(sent: &[u32], responses: &[(u32, Vec<u8>)], closed: bool) {
    let ids: Vec<u32> = responses.iter().map(|(id, _)| *id).collect();
    assert!(ids.len() >= sent.len() && ids[..sent.len()] == *sent, "responses {ids:?} for requests {sent:?}");
    match ids.len() - sent.len() {
        0 => {}
        1 => {
            let (id, bytes) = &responses[sent.len()];
            assert!(closed, "an extra response without a close");
            assert_eq!(*id, 0);
            assert_eq!(bytes[4], op::ERROR);
            let code = u16::from_be_bytes([bytes[9], bytes[10]]);
            assert!(code == 1 || code == 3, "a framing failure answered with code {code}");
        }
        extra => panic!("{extra} responses more than requests: {ids:?} for {sent:?}"),
    }
}

fn decode(bytes: &[u8]) -> ServerFrame<'_> {
    let header = FrameHeader::parse(bytes);
    ServerFrame::decode(header.opcode, header.request_id, header.body)
        .unwrap_or_else(|e| panic!("the server staged a frame that does not decode ({e}): {bytes:02x?}"))
}

/// Every frame the server stages is one whole, well-formed response or push.
fn check_server_frame(kind: FrameKind, bytes: &[u8]) {
    let FrameCheck::Complete { total } = frame::check(bytes, u32::MAX) else {
        panic!("a staged frame has a bad length prefix: {bytes:02x?}");
    };
    assert_eq!(total, bytes.len(), "a staged frame is not exactly one frame");
    let header = FrameHeader::parse(bytes);
    assert!(header.opcode >= 0x80, "the server staged a request opcode {:#04x}", header.opcode);
    if !matches!(kind, FrameKind::Response { .. }) {
        assert_eq!(header.request_id, 0, "a push carries request id {}", header.request_id);
    }
    if header.opcode == op::ERROR || header.opcode == op::RETRY_LATER {
        // Checked against the whole table of PROTOCOL.md §4 (`ErrorCode::ALL`).
        let mut r = Reader::new(header.body);
        let code = r.u16().expect("error code");
        assert!(ErrorCode::from_u16(code).is_some(), "error code {code} is not in the table");
        if header.opcode == op::RETRY_LATER {
            r.u32().expect("retry_after_ms");
        }
        r.str().expect("error message");
        r.finish().expect("nothing after the message");
        return;
    }
    decode(bytes);
}
