//! Shared helpers for the integration tests: they start the real `im-server` binary and talk
//! raw bytes to it, as PROTOCOL.md describes them.
//!
//! Layout:
//! - [`TestServer`] spawns the binary on port 0 with a temporary database and kills it on drop.
//! - [`Client`] is a blocking raw-socket client with read timeouts, so no test can hang.
//! - [`req`] builds the body of every request; [`frame`] wraps a body in a frame header.
//! - [`Message`] is every response and push, decoded strictly (a frame the server gets wrong
//!   fails the test with a description of the bytes).
//! - [`scram`] is the client side of PROTOCOL.md §5, including the AuthMessage bytes.
//!
//! Every test file includes this module, and none uses all of it.
#![allow(dead_code)]

pub mod tls;
pub mod websocket;

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use tempfile::TempDir;

/// How long any single read may block before the test fails instead of hanging.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The iteration count the tests register with: above the `--min-kdf-iterations 1000` every
/// test server is started with, and small enough that deriving keys costs a few milliseconds.
pub const ITERATIONS: u32 = 4096;

/// The id of the built-in group every registered user belongs to.
pub const LOBBY: u64 = 1;

/// The device id every test login uses unless it names another: one device per user, so
/// that logging in again continues where that device left off.
pub const DEVICE: u64 = 0x7E57;

/// Error codes, PROTOCOL.md §4.
pub mod code {
    pub const MALFORMED_FRAME: u16 = 1;
    pub const UNKNOWN_OPCODE: u16 = 2;
    pub const FRAME_TOO_LARGE: u16 = 3;
    pub const UNSUPPORTED_VERSION: u16 = 4;
    pub const HELLO_REQUIRED: u16 = 5;
    pub const NOT_AUTHENTICATED: u16 = 6;
    pub const INVALID_STATE: u16 = 7;
    pub const SERVER_FULL: u16 = 8;
    pub const IDLE_TIMEOUT: u16 = 9;
    pub const INVALID_USERNAME: u16 = 10;
    pub const USERNAME_TAKEN: u16 = 11;
    pub const WEAK_CREDENTIALS: u16 = 12;
    pub const AUTH_FAILED: u16 = 13;
    pub const TOO_MANY_ATTEMPTS: u16 = 14;
    pub const USER_NOT_FOUND: u16 = 15;
    pub const ALREADY_FRIENDS: u16 = 16;
    pub const REQUEST_PENDING: u16 = 17;
    pub const NO_SUCH_REQUEST: u16 = 18;
    pub const NOT_FRIENDS: u16 = 19;
    pub const INVALID_BODY: u16 = 20;
    pub const FORBIDDEN: u16 = 21;
    pub const ALREADY_MEMBER: u16 = 22;
    pub const INVALID_ARGUMENT: u16 = 23;
    pub const STORE_UNAVAILABLE: u16 = 24;
    pub const SHUTTING_DOWN: u16 = 25;
    pub const SLOW_READER: u16 = 26;
    pub const RATE_LIMITED: u16 = 27;
    pub const RECIPIENT_QUEUE_FULL: u16 = 28;
    pub const TOO_MANY_SESSIONS: u16 = 29;
    pub const LOGIN_TIMEOUT: u16 = 30;
    pub const TOO_MANY_DEVICES: u16 = 31;
    pub const NO_SUCH_DEVICE: u16 = 32;
    pub const FRAME_TIMEOUT: u16 = 33;
    pub const TOO_MANY_GROUPS: u16 = 34;
    pub const GROUP_FULL: u16 = 35;
    pub const TOO_MANY_REQUESTS: u16 = 36;
    pub const TOO_MANY_FRIENDS: u16 = 37;
    pub const LOGIN_THROTTLED: u16 = 38;
    pub const ACCOUNT_DISABLED: u16 = 39;
    pub const CREDENTIALS_CHANGED: u16 = 40;
    pub const ACCOUNT_DELETED: u16 = 41;
}

/// Opcodes, PROTOCOL.md §3.
pub mod op {
    pub const HELLO: u8 = 0x01;
    pub const PING: u8 = 0x02;
    pub const REGISTER: u8 = 0x03;
    pub const LOGIN_START: u8 = 0x04;
    pub const LOGIN_FINISH: u8 = 0x05;
    pub const LOGOUT: u8 = 0x06;
    pub const REAUTH_START: u8 = 0x07;
    pub const PASSWORD_CHANGE: u8 = 0x08;
    pub const ACCOUNT_DELETE: u8 = 0x09;
    pub const FRIEND_REQUEST: u8 = 0x10;
    pub const FRIEND_ACCEPT: u8 = 0x11;
    pub const FRIEND_DECLINE: u8 = 0x12;
    pub const FRIEND_REMOVE: u8 = 0x13;
    pub const FRIEND_LIST: u8 = 0x14;
    pub const SEND: u8 = 0x20;
    pub const ACK: u8 = 0x21;
    pub const HISTORY: u8 = 0x22;
    pub const READ: u8 = 0x23;
    pub const GROUP_CREATE: u8 = 0x30;
    pub const GROUP_INVITE: u8 = 0x31;
    pub const GROUP_LEAVE: u8 = 0x32;
    pub const GROUP_MEMBERS: u8 = 0x33;
    pub const GROUP_LIST: u8 = 0x34;
    pub const GROUP_SEND: u8 = 0x35;
    pub const DEVICE_LIST: u8 = 0x40;
    pub const DEVICE_REMOVE: u8 = 0x41;

    pub const OK: u8 = 0x80;
    pub const HELLO_OK: u8 = 0x81;
    pub const PONG: u8 = 0x82;
    pub const ERROR: u8 = 0x83;
    pub const LOGIN_CHALLENGE: u8 = 0x84;
    pub const LOGIN_OK: u8 = 0x85;
    pub const FRIEND_REQUEST_OK: u8 = 0x86;
    pub const FRIEND_LIST_RESULT: u8 = 0x87;
    pub const SENT: u8 = 0x88;
    pub const HISTORY_PAGE: u8 = 0x89;
    pub const GROUP_CREATED: u8 = 0x8A;
    pub const GROUP_MEMBERS_RESULT: u8 = 0x8B;
    pub const GROUP_LIST_RESULT: u8 = 0x8C;
    pub const RETRY_LATER: u8 = 0x8D;
    pub const DEVICE_LIST_RESULT: u8 = 0x8E;

    pub const DELIVER: u8 = 0xC0;
    pub const FRIEND_EVENT: u8 = 0xC1;
    pub const PRESENCE: u8 = 0xC2;
    pub const READ_RECEIPT: u8 = 0xC3;
    pub const SYNC_DONE: u8 = 0xC4;
    pub const GROUP_EVENT: u8 = 0xC5;
    pub const SYNC_GAP: u8 = 0xC6;
}

/// `FRIEND_EVENT` event values, PROTOCOL.md §3.
pub mod friend_event {
    pub const ASKED: u8 = 1;
    pub const ACCEPTED: u8 = 2;
    pub const DECLINED: u8 = 3;
    pub const REMOVED: u8 = 4;
}

/// `GROUP_EVENT` event values, PROTOCOL.md §3.
pub mod group_event {
    pub const JOINED: u8 = 1;
    pub const LEFT: u8 = 2;
}

// ---------------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------------

/// A body under construction, field by field, big-endian as on the wire.
#[derive(Default, Clone)]
pub struct Body(pub Vec<u8>);

impl Body {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn u8(mut self, value: u8) -> Self {
        self.0.push(value);
        self
    }
    pub fn u16(mut self, value: u16) -> Self {
        self.0.extend_from_slice(&value.to_be_bytes());
        self
    }
    pub fn u32(mut self, value: u32) -> Self {
        self.0.extend_from_slice(&value.to_be_bytes());
        self
    }
    pub fn u64(mut self, value: u64) -> Self {
        self.0.extend_from_slice(&value.to_be_bytes());
        self
    }
    /// A `str` field: `u16` length, then the UTF-8 bytes.
    pub fn str(self, value: &str) -> Self {
        self.bytes(value.as_bytes())
    }
    /// A `bytes` field: `u16` length, then the bytes.
    pub fn bytes(mut self, value: &[u8]) -> Self {
        let length = u16::try_from(value.len()).expect("field longer than 65535 bytes");
        self.0.extend_from_slice(&length.to_be_bytes());
        self.0.extend_from_slice(value);
        self
    }
    /// Raw bytes with no length prefix, for building malformed bodies.
    pub fn raw(mut self, value: &[u8]) -> Self {
        self.0.extend_from_slice(value);
        self
    }
}

/// A request ready to be framed: its opcode and its body.
#[derive(Clone, Debug)]
pub struct Request {
    pub opcode: u8,
    pub body: Vec<u8>,
}

impl Request {
    pub fn new(opcode: u8, body: Body) -> Self {
        Self { opcode, body: body.0 }
    }
}

/// A whole frame: `length`, `opcode`, `request_id`, body.
pub fn frame(opcode: u8, request_id: u32, body: &[u8]) -> Vec<u8> {
    let length = u32::try_from(5 + body.len()).expect("frame too long to encode");
    let mut out = Vec::with_capacity(9 + body.len());
    out.extend_from_slice(&length.to_be_bytes());
    out.push(opcode);
    out.extend_from_slice(&request_id.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Where a `HISTORY` request points and where a `DELIVER` was addressed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Direct(String),
    Group(u64),
}

impl Target {
    pub fn direct(peer: &str) -> Self {
        Target::Direct(peer.to_string())
    }
}

/// Builders for every request of PROTOCOL.md §3, with the fields in the listed order.
pub mod req {
    use super::{Body, Request, Target, op};

    pub fn hello(version: u16) -> Request {
        Request::new(op::HELLO, Body::new().u16(version))
    }
    pub fn ping() -> Request {
        Request::new(op::PING, Body::new())
    }
    pub fn register(username: &str, salt: &[u8], iterations: u32, stored_key: &[u8], server_key: &[u8]) -> Request {
        let body = Body::new().str(username).bytes(salt).u32(iterations).bytes(stored_key).bytes(server_key);
        Request::new(op::REGISTER, body)
    }
    pub fn login_start(username: &str, client_nonce: &[u8]) -> Request {
        Request::new(op::LOGIN_START, Body::new().str(username).bytes(client_nonce))
    }
    /// `LOGIN_FINISH` for the test device (see [`super::DEVICE`]).
    pub fn login_finish(client_proof: &[u8]) -> Request {
        login_finish_as(client_proof, super::DEVICE, "test device")
    }
    pub fn login_finish_as(client_proof: &[u8], device_id: u64, device_name: &str) -> Request {
        Request::new(op::LOGIN_FINISH, Body::new().bytes(client_proof).u64(device_id).str(device_name))
    }
    pub fn logout() -> Request {
        Request::new(op::LOGOUT, Body::new())
    }
    pub fn reauth_start(client_nonce: &[u8]) -> Request {
        Request::new(op::REAUTH_START, Body::new().bytes(client_nonce))
    }
    pub fn password_change(
        client_proof: &[u8],
        salt: &[u8],
        iterations: u32,
        stored_key: &[u8],
        server_key: &[u8],
    ) -> Request {
        let body = Body::new().bytes(client_proof).bytes(salt).u32(iterations).bytes(stored_key).bytes(server_key);
        Request::new(op::PASSWORD_CHANGE, body)
    }
    pub fn account_delete(client_proof: &[u8]) -> Request {
        Request::new(op::ACCOUNT_DELETE, Body::new().bytes(client_proof))
    }
    pub fn friend_request(username: &str) -> Request {
        Request::new(op::FRIEND_REQUEST, Body::new().str(username))
    }
    pub fn friend_accept(username: &str) -> Request {
        Request::new(op::FRIEND_ACCEPT, Body::new().str(username))
    }
    pub fn friend_decline(username: &str) -> Request {
        Request::new(op::FRIEND_DECLINE, Body::new().str(username))
    }
    pub fn friend_remove(username: &str) -> Request {
        Request::new(op::FRIEND_REMOVE, Body::new().str(username))
    }
    pub fn friend_list() -> Request {
        Request::new(op::FRIEND_LIST, Body::new())
    }
    pub fn send(to: &str, client_msg_id: u64, body: &str) -> Request {
        Request::new(op::SEND, Body::new().str(to).u64(client_msg_id).str(body))
    }
    pub fn ack(up_to_message_id: u64) -> Request {
        Request::new(op::ACK, Body::new().u64(up_to_message_id))
    }
    /// `HISTORY` reading older messages (direction 0) below `before_message_id`.
    pub fn history(target: &Target, before_message_id: u64, limit: u16) -> Request {
        history_in(target, 0, before_message_id, limit)
    }
    /// `HISTORY` reading newer messages (direction 1) above `after_message_id`.
    pub fn history_newer(target: &Target, after_message_id: u64, limit: u16) -> Request {
        history_in(target, 1, after_message_id, limit)
    }
    pub fn history_in(target: &Target, direction: u8, from_message_id: u64, limit: u16) -> Request {
        let body = match target {
            Target::Direct(peer) => Body::new().u8(0).str(peer),
            Target::Group(group_id) => Body::new().u8(1).u64(*group_id),
        };
        Request::new(op::HISTORY, body.u8(direction).u64(from_message_id).u16(limit))
    }
    pub fn device_list() -> Request {
        Request::new(op::DEVICE_LIST, Body::new())
    }
    pub fn device_remove(device_id: u64) -> Request {
        Request::new(op::DEVICE_REMOVE, Body::new().u64(device_id))
    }
    pub fn read(peer: &str, up_to_message_id: u64) -> Request {
        Request::new(op::READ, Body::new().str(peer).u64(up_to_message_id))
    }
    pub fn group_create(name: &str) -> Request {
        Request::new(op::GROUP_CREATE, Body::new().str(name))
    }
    pub fn group_invite(group_id: u64, username: &str) -> Request {
        Request::new(op::GROUP_INVITE, Body::new().u64(group_id).str(username))
    }
    pub fn group_leave(group_id: u64) -> Request {
        Request::new(op::GROUP_LEAVE, Body::new().u64(group_id))
    }
    pub fn group_members(group_id: u64) -> Request {
        Request::new(op::GROUP_MEMBERS, Body::new().u64(group_id))
    }
    pub fn group_list() -> Request {
        Request::new(op::GROUP_LIST, Body::new())
    }
    pub fn group_send(group_id: u64, client_msg_id: u64, body: &str) -> Request {
        Request::new(op::GROUP_SEND, Body::new().u64(group_id).u64(client_msg_id).str(body))
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------------

/// A frame as read off the socket, before its body is interpreted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub opcode: u8,
    pub request_id: u32,
    pub body: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HelloOk {
    pub version: u16,
    pub server: String,
    pub max_frame: u32,
    pub max_frame_before_login: u32,
    pub max_body: u32,
    pub idle_timeout_secs: u32,
    pub login_timeout_secs: u32,
    pub min_kdf_iterations: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    pub device_id: u64,
    pub name: String,
    pub last_seen_ms: u64,
    pub online: bool,
    pub current: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FriendList {
    /// `(username, online)`.
    pub friends: Vec<(String, bool)>,
    pub incoming: Vec<String>,
    pub outgoing: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryItem {
    pub message_id: u64,
    pub timestamp_ms: u64,
    pub sender: String,
    pub body: String,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Member {
    pub username: String,
    pub online: bool,
    pub owner: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupInfo {
    pub group_id: u64,
    pub name: String,
    pub owner: String,
    pub members: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deliver {
    pub message_id: u64,
    pub timestamp_ms: u64,
    pub from: String,
    pub to: Target,
    pub body: String,
}

/// Every response and push of PROTOCOL.md §3, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Ok,
    HelloOk(HelloOk),
    Pong,
    Error { code: u16, message: String },
    RetryLater { code: u16, retry_after_ms: u32, message: String },
    LoginChallenge { salt: Vec<u8>, iterations: u32, nonce: Vec<u8> },
    LoginOk { server_signature: Vec<u8>, username: String },
    FriendRequestOk { outcome: u8 },
    FriendList(FriendList),
    Sent { message_id: u64, timestamp_ms: u64 },
    HistoryPage { items: Vec<HistoryItem>, next: u64 },
    GroupCreated { group_id: u64 },
    GroupMembers { group_id: u64, members: Vec<Member> },
    GroupList(Vec<GroupInfo>),
    DeviceList(Vec<Device>),
    Deliver(Deliver),
    FriendEvent { message_id: u64, timestamp_ms: u64, event: u8, username: String },
    Presence { username: String, online: bool },
    ReadReceipt { message_id: u64, timestamp_ms: u64, reader: String, peer: String, up_to_message_id: u64 },
    SyncDone { count: u32 },
    GroupEvent { message_id: u64, timestamp_ms: u64, group_id: u64, event: u8, username: String, group_name: String },
    SyncGap { after_message_id: u64, up_to_message_id: u64, skipped: u32 },
}

impl Message {
    /// The error code if this is an `ERROR`, for `assert_eq!(reply.error_code(), Some(..))`.
    pub fn error_code(&self) -> Option<u16> {
        match self {
            Message::Error { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// The `message_id` of an item (`DELIVER`, `FRIEND_EVENT`, `READ_RECEIPT`, `GROUP_EVENT`),
    /// or of a `SENT`.
    pub fn message_id(&self) -> Option<u64> {
        match self {
            Message::Deliver(deliver) => Some(deliver.message_id),
            Message::FriendEvent { message_id, .. }
            | Message::ReadReceipt { message_id, .. }
            | Message::GroupEvent { message_id, .. }
            | Message::Sent { message_id, .. } => Some(*message_id),
            _ => None,
        }
    }

    /// The `message_id` of an item only (never of a response).
    pub fn item_id(&self) -> Option<u64> {
        match self {
            Message::Sent { .. } => None,
            other => other.message_id(),
        }
    }

    /// Unwraps a `SENT`, panicking with the actual reply otherwise.
    pub fn sent(&self) -> (u64, u64) {
        match self {
            Message::Sent { message_id, timestamp_ms } => (*message_id, *timestamp_ms),
            other => panic!("expected SENT, got {other:?}"),
        }
    }

    /// Unwraps a `DELIVER`, panicking with the actual frame otherwise.
    pub fn deliver(&self) -> &Deliver {
        match self {
            Message::Deliver(deliver) => deliver,
            other => panic!("expected DELIVER, got {other:?}"),
        }
    }

    /// Unwraps a `GROUP_CREATED`.
    pub fn group_id(&self) -> u64 {
        match self {
            Message::GroupCreated { group_id } => *group_id,
            other => panic!("expected GROUP_CREATED, got {other:?}"),
        }
    }

    /// Unwraps a `HISTORY_PAGE` into its items and `next`.
    pub fn history_page(self) -> (Vec<HistoryItem>, u64) {
        match self {
            Message::HistoryPage { items, next } => (items, next),
            other => panic!("expected HISTORY_PAGE, got {other:?}"),
        }
    }

    /// An `ERROR` reduced to its code and its message with `name` replaced by `<name>`, so
    /// that answers about two different names can be compared for being the same answer.
    pub fn error_without_name(&self, name: &str) -> (u16, String) {
        match self {
            Message::Error { code, message } => (*code, message.replace(name, "<name>")),
            other => panic!("expected ERROR, got {other:?}"),
        }
    }
}

/// Reads the fields of one body in order, failing the test on any short or invalid field.
struct Fields<'a> {
    body: &'a [u8],
    position: usize,
    opcode: u8,
}

impl<'a> Fields<'a> {
    fn take(&mut self, count: usize) -> &'a [u8] {
        let end = self.position + count;
        assert!(
            end <= self.body.len(),
            "server frame 0x{:02X} is short: needs {count} bytes at offset {}, body {:02X?}",
            self.opcode,
            self.position,
            self.body
        );
        let slice = &self.body[self.position..end];
        self.position = end;
        slice
    }
    fn u8(&mut self) -> u8 {
        self.take(1)[0]
    }
    fn bool(&mut self) -> bool {
        match self.u8() {
            0 => false,
            1 => true,
            other => panic!("server frame 0x{:02X}: flag {other} is not 0 or 1", self.opcode),
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.take(2).try_into().unwrap())
    }
    fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.take(4).try_into().unwrap())
    }
    fn u64(&mut self) -> u64 {
        u64::from_be_bytes(self.take(8).try_into().unwrap())
    }
    fn bytes(&mut self) -> Vec<u8> {
        let length = usize::from(self.u16());
        self.take(length).to_vec()
    }
    fn str(&mut self) -> String {
        let bytes = self.bytes();
        String::from_utf8(bytes)
            .unwrap_or_else(|error| panic!("server frame 0x{:02X}: invalid UTF-8: {error}", self.opcode))
    }
    fn finish(self) {
        assert_eq!(
            self.position,
            self.body.len(),
            "server frame 0x{:02X} has trailing bytes: {:02X?}",
            self.opcode,
            &self.body[self.position..]
        );
    }
}

impl Frame {
    /// Decodes the body strictly: every field present, no trailing bytes, valid UTF-8.
    pub fn decode(&self) -> Message {
        let mut f = Fields { body: &self.body, position: 0, opcode: self.opcode };
        let message = match self.opcode {
            op::OK => Message::Ok,
            op::HELLO_OK => Message::HelloOk(HelloOk {
                version: f.u16(),
                server: f.str(),
                max_frame: f.u32(),
                max_frame_before_login: f.u32(),
                max_body: f.u32(),
                idle_timeout_secs: f.u32(),
                login_timeout_secs: f.u32(),
                min_kdf_iterations: f.u32(),
            }),
            op::PONG => Message::Pong,
            op::ERROR => Message::Error { code: f.u16(), message: f.str() },
            op::RETRY_LATER => Message::RetryLater { code: f.u16(), retry_after_ms: f.u32(), message: f.str() },
            op::LOGIN_CHALLENGE => Message::LoginChallenge { salt: f.bytes(), iterations: f.u32(), nonce: f.bytes() },
            op::LOGIN_OK => Message::LoginOk { server_signature: f.bytes(), username: f.str() },
            op::FRIEND_REQUEST_OK => Message::FriendRequestOk { outcome: f.u8() },
            op::FRIEND_LIST_RESULT => {
                let friends = (0..f.u16()).map(|_| (f.str(), f.bool())).collect();
                let incoming = (0..f.u16()).map(|_| f.str()).collect();
                let outgoing = (0..f.u16()).map(|_| f.str()).collect();
                Message::FriendList(FriendList { friends, incoming, outgoing })
            }
            op::SENT => Message::Sent { message_id: f.u64(), timestamp_ms: f.u64() },
            op::HISTORY_PAGE => {
                let items = (0..f.u16())
                    .map(|_| HistoryItem { message_id: f.u64(), timestamp_ms: f.u64(), sender: f.str(), body: f.str() })
                    .collect();
                Message::HistoryPage { items, next: f.u64() }
            }
            op::GROUP_CREATED => Message::GroupCreated { group_id: f.u64() },
            op::GROUP_MEMBERS_RESULT => {
                let group_id = f.u64();
                let members =
                    (0..f.u32()).map(|_| Member { username: f.str(), online: f.bool(), owner: f.bool() }).collect();
                Message::GroupMembers { group_id, members }
            }
            op::GROUP_LIST_RESULT => Message::GroupList(
                (0..f.u16())
                    .map(|_| GroupInfo { group_id: f.u64(), name: f.str(), owner: f.str(), members: f.u32() })
                    .collect(),
            ),
            op::DEVICE_LIST_RESULT => Message::DeviceList(
                (0..f.u16())
                    .map(|_| Device {
                        device_id: f.u64(),
                        name: f.str(),
                        last_seen_ms: f.u64(),
                        online: f.bool(),
                        current: f.bool(),
                    })
                    .collect(),
            ),
            op::DELIVER => {
                let message_id = f.u64();
                let timestamp_ms = f.u64();
                let from = f.str();
                let to = match f.u8() {
                    0 => Target::Direct(f.str()),
                    1 => Target::Group(f.u64()),
                    kind => panic!("DELIVER with kind {kind}"),
                };
                Message::Deliver(Deliver { message_id, timestamp_ms, from, to, body: f.str() })
            }
            op::FRIEND_EVENT => {
                Message::FriendEvent { message_id: f.u64(), timestamp_ms: f.u64(), event: f.u8(), username: f.str() }
            }
            op::PRESENCE => Message::Presence { username: f.str(), online: f.bool() },
            op::READ_RECEIPT => Message::ReadReceipt {
                message_id: f.u64(),
                timestamp_ms: f.u64(),
                reader: f.str(),
                peer: f.str(),
                up_to_message_id: f.u64(),
            },
            op::SYNC_DONE => Message::SyncDone { count: f.u32() },
            op::GROUP_EVENT => Message::GroupEvent {
                message_id: f.u64(),
                timestamp_ms: f.u64(),
                group_id: f.u64(),
                event: f.u8(),
                username: f.str(),
                group_name: f.str(),
            },
            op::SYNC_GAP => Message::SyncGap { after_message_id: f.u64(), up_to_message_id: f.u64(), skipped: f.u32() },
            other => panic!("server sent unknown opcode 0x{other:02X}: {self:?}"),
        };
        f.finish();
        let is_push = self.opcode >= 0xC0;
        if is_push {
            assert_eq!(self.request_id, 0, "push with a request id: {self:?}");
        }
        message
    }
}

// ---------------------------------------------------------------------------------------------
// SCRAM-SHA-256, PROTOCOL.md §5
// ---------------------------------------------------------------------------------------------

pub mod scram {
    use hmac::{Hmac, KeyInit, Mac};
    use sha2::{Digest, Sha256};

    use super::Body;

    pub fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("any key length");
        mac.update(data);
        mac.finalize().into_bytes().into()
    }

    pub fn sha256(data: &[u8]) -> [u8; 32] {
        Sha256::digest(data).into()
    }

    /// The keys a client derives from its password.
    pub struct Keys {
        pub client_key: [u8; 32],
        pub stored_key: [u8; 32],
        pub server_key: [u8; 32],
    }

    impl Keys {
        pub fn derive(password: &str, salt: &[u8], iterations: u32) -> Self {
            let mut salted_password = [0u8; 32];
            pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt, iterations, &mut salted_password);
            let client_key = hmac(&salted_password, b"Client Key");
            Keys { client_key, stored_key: sha256(&client_key), server_key: hmac(&salted_password, b"Server Key") }
        }
    }

    /// AuthMessage: each field with its wire length prefix, exactly as PROTOCOL.md §5 lists.
    pub fn auth_message(username: &str, client_nonce: &[u8], salt: &[u8], iterations: u32, nonce: &[u8]) -> Vec<u8> {
        Body::new().str(username).bytes(client_nonce).bytes(salt).u32(iterations).bytes(nonce).0
    }

    /// `ClientProof = ClientKey XOR HMAC(StoredKey, AuthMessage)`.
    pub fn client_proof(keys: &Keys, auth_message: &[u8]) -> [u8; 32] {
        let signature = hmac(&keys.stored_key, auth_message);
        let mut proof = keys.client_key;
        for (byte, mask) in proof.iter_mut().zip(signature) {
            *byte ^= mask;
        }
        proof
    }

    /// `ServerSignature = HMAC(ServerKey, AuthMessage)`.
    pub fn server_signature(keys: &Keys, auth_message: &[u8]) -> [u8; 32] {
        hmac(&keys.server_key, auth_message)
    }
}

/// The password every test user gets, derived from the name so tests need not carry it around.
pub fn password_of(username: &str) -> String {
    format!("correct horse battery staple for {username}")
}

/// A deterministic 16-byte salt per user: tests need not be random, only distinct.
pub fn salt_of(username: &str) -> Vec<u8> {
    scram::sha256(format!("salt:{username}").as_bytes())[..16].to_vec()
}

/// A well-formed `REGISTER` for `username` with the test password, salt and iterations.
pub fn register_request(username: &str) -> Request {
    let salt = salt_of(username);
    let keys = scram::Keys::derive(&password_of(username), &salt, ITERATIONS);
    req::register(username, &salt, ITERATIONS, &keys.stored_key, &keys.server_key)
}

// ---------------------------------------------------------------------------------------------
// The server process
// ---------------------------------------------------------------------------------------------

/// The signals that ask the server to shut down cleanly.
#[derive(Clone, Copy, Debug)]
pub enum Signal {
    Term,
    Int,
}

/// The real `im-server` binary on an ephemeral port with a database in a temporary directory.
/// Dropping it kills the process; a failing test prints the tail of the server's log.
pub struct TestServer {
    child: Option<Child>,
    pid: u32,
    pub port: u16,
    /// The `--tls-listen` port, when the test asked for one.
    pub tls_port: Option<u16>,
    /// The `--http-listen` port, when the test asked for one.
    pub http_port: Option<u16>,
    dir: Option<TempDir>,
}

impl TestServer {
    /// A server with the test defaults (`--min-kdf-iterations 1000`).
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A server with extra flags, e.g. `&["--max-connections", "2"]`.
    pub fn start_with(args: &[&str]) -> Self {
        Self::start_in(tempfile::tempdir().expect("temporary directory"), args)
    }

    /// A server on the database of an earlier one (see [`TestServer::terminate`]).
    pub fn start_in(dir: TempDir, args: &[&str]) -> Self {
        Self::launch(dir, args, None, &[])
    }

    /// A server allowed at most `limit` open file descriptors (`ulimit -n`).
    pub fn start_with_fd_limit(limit: u32, args: &[&str]) -> Self {
        Self::launch(tempfile::tempdir().expect("temporary directory"), args, Some(limit), &[])
    }

    /// [`TestServer::start_in`] with extra environment variables.
    pub fn start_in_with_env(dir: TempDir, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::launch(dir, args, None, env)
    }

    fn launch(dir: TempDir, args: &[&str], fd_limit: Option<u32>, env: &[(&str, &str)]) -> Self {
        let db = dir.path().join("im.db");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("server.log"))
            .expect("server log file");
        let binary = env!("CARGO_BIN_EXE_im-server");
        let mut command = match fd_limit {
            None => Command::new(binary),
            // `exec` keeps the process id, so `pid()` is still the server's.
            Some(limit) => {
                let mut shell = Command::new("sh");
                shell.args(["-c", &format!("ulimit -n {limit} && exec \"$0\" \"$@\""), binary]);
                shell
            }
        };
        command.arg("--listen").arg("127.0.0.1:0").arg("--db").arg(&db);
        // Test defaults, each unless the test sets the flag itself: cheap key derivation, and
        // no send-rate or offline-queue limits for tests that send in bursts (tests/limits.rs
        // sets them). Registrations from loopback are not limited unless --limit-loopback.
        for (flag, value) in [("--min-kdf-iterations", "1000"), ("--send-rate", "0"), ("--max-offline", "0")] {
            if !args.contains(&flag) {
                command.args([flag, value]);
            }
        }
        command.args(args);
        command.envs(env.iter().copied());
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn im-server");
        let pid = child.id();
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut first_line = String::new();
        stdout.read_line(&mut first_line).expect("read the server's first line");
        // The extra listeners' lines follow the first, in this order.
        let mut extra_port = |flag: &str, prefix: &str| {
            if !args.contains(&flag) {
                return None;
            }
            let mut line = String::new();
            stdout.read_line(&mut line).expect("read the server's listening line");
            let address = line.trim().strip_prefix(prefix).unwrap_or_else(|| panic!("{line:?}"));
            address.rsplit(':').next().and_then(|port| port.parse().ok())
        };
        let tls_port = extra_port("--tls-listen", "listening for TLS on ");
        let http_port = extra_port("--http-listen", "listening for HTTP on ");
        // Keep draining stdout so the server never blocks on a full pipe.
        thread::spawn(move || io::copy(&mut stdout, &mut io::sink()));
        let mut server = TestServer { child: Some(child), pid, port: 0, tls_port, http_port, dir: Some(dir) };
        let address = first_line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("first stdout line is {first_line:?}"));
        server.port = address
            .rsplit(':')
            .next()
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| panic!("no port in {first_line:?}"));
        server
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.as_ref().unwrap().path().join("im.db")
    }

    /// A raw connection that has sent nothing yet.
    pub fn connect(&self) -> Client {
        Client::connect(self.port)
    }

    /// A connection past `HELLO` from the local address `from` (see [`Client::connect_from`]).
    pub fn hello_from(&self, from: IpAddr) -> Client {
        let mut client = Client::connect_from(self.port, from);
        client.hello();
        client
    }

    /// A connection past `HELLO`.
    pub fn hello(&self) -> Client {
        let mut client = self.connect();
        client.hello();
        client
    }

    /// Registers `username` on a connection of its own.
    pub fn register(&self, username: &str) {
        let mut client = self.hello();
        assert_eq!(client.call(register_request(username)), Message::Ok);
    }

    /// Registers each name.
    pub fn register_all(&self, usernames: &[&str]) {
        let mut client = self.hello();
        for username in usernames {
            assert_eq!(client.call(register_request(username)), Message::Ok, "{username}");
        }
    }

    /// A new connection logged in as an existing user, with the backlog pushed at login.
    pub fn login(&self, username: &str) -> (Client, Vec<Message>) {
        let mut client = self.hello();
        client.login(username);
        let backlog = client.sync();
        (client, backlog)
    }

    /// A new connection logged in as an existing user on the device `device_id`, with the
    /// backlog pushed at login.
    pub fn login_device(&self, username: &str, device_id: u64) -> (Client, Vec<Message>) {
        let mut client = self.hello();
        client.login_as(username, device_id);
        let backlog = client.sync();
        (client, backlog)
    }

    /// A new connection logged in as an existing user with nothing waiting for them.
    pub fn device(&self, username: &str) -> Client {
        let (client, backlog) = self.login(username);
        assert!(backlog.is_empty(), "{username} has a backlog: {backlog:?}");
        client
    }

    /// Registers `username` and returns a logged-in, synced connection.
    pub fn user(&self, username: &str) -> Client {
        self.register(username);
        self.device(username)
    }

    /// Sends SIGTERM and waits (at most 10 s) for the exit; returns the status and the
    /// directory holding the database, for inspection or a restart.
    pub fn terminate(self) -> (ExitStatus, TempDir) {
        self.stop(Signal::Term)
    }

    /// Sends `signal` and waits (at most 10 s) for the exit; returns the status and the
    /// directory holding the database.
    pub fn stop(mut self, signal: Signal) -> (ExitStatus, TempDir) {
        let mut child = self.child.take().expect("server running");
        let flag = match signal {
            Signal::Term => "-TERM",
            Signal::Int => "-INT",
        };
        let status = Command::new("kill").args([flag, &self.pid.to_string()]).status().expect("run kill");
        assert!(status.success(), "kill {flag} failed");
        let (sender, receiver) = mpsc::channel();
        thread::spawn(move || {
            let _ = sender.send(child.wait());
        });
        let status = match receiver.recv_timeout(Duration::from_secs(10)) {
            Ok(status) => status.expect("wait for im-server"),
            Err(_) => {
                let _ = Command::new("kill").args(["-KILL", &self.pid.to_string()]).status();
                panic!("im-server did not exit within 10 s of {flag}");
            }
        };
        (status, self.dir.take().unwrap())
    }

    /// Waits (at most 10 s) for the server to exit by itself, e.g. at a crash point.
    pub fn wait_for_exit(mut self) -> (ExitStatus, TempDir) {
        let mut child = self.child.take().expect("server running");
        let (sender, receiver) = mpsc::channel();
        thread::spawn(move || {
            let _ = sender.send(child.wait());
        });
        let status = receiver
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("im-server did not exit within 10 s"))
            .expect("wait for im-server");
        (status, self.dir.take().unwrap())
    }

    /// Everything the server has logged so far.
    pub fn log(&self) -> String {
        let dir = self.dir.as_ref().expect("server running");
        String::from_utf8_lossy(&std::fs::read(dir.path().join("server.log")).unwrap_or_default()).into_owned()
    }

    /// Sends a signal by name (`HUP`, `USR1`...) without waiting for anything.
    pub fn signal(&self, name: &str) {
        let status =
            Command::new("kill").args([&format!("-{name}"), &self.pid.to_string()]).status().expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    fn log_tail(&self) -> String {
        let Some(dir) = &self.dir else {
            return String::new();
        };
        let log = std::fs::read(dir.path().join("server.log")).unwrap_or_default();
        let start = log.len().saturating_sub(4000);
        String::from_utf8_lossy(&log[start..]).into_owned()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if thread::panicking() {
            eprintln!("--- tail of the im-server log ---\n{}", self.log_tail());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The raw client
// ---------------------------------------------------------------------------------------------

/// How a read that found no frame ended.
#[derive(Debug)]
pub enum NoFrame {
    /// The server closed the connection (EOF or reset).
    Closed,
    /// Nothing arrived within [`READ_TIMEOUT`].
    TimedOut,
}

/// One blocking TCP connection that speaks raw frames. Responses are matched to requests by id;
/// pushes that arrive meanwhile are kept, in order, for [`Client::push`].
pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    next_request_id: u32,
    pushes: VecDeque<Message>,
    /// The name this connection logged in as, once it has.
    pub username: Option<String>,
    nonce_counter: u64,
}

impl Client {
    pub fn connect(port: u16) -> Self {
        Self::over(TcpStream::connect(("127.0.0.1", port)).expect("connect to im-server"))
    }

    /// A connection from the local address `from`: all of 127.0.0.0/8 is loopback, so one
    /// machine can play several hosts.
    pub fn connect_from(port: u16, from: IpAddr) -> Self {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.bind(&SocketAddr::new(from, 0).into()).expect("bind the client's address");
        socket.connect(&SocketAddr::from(([127, 0, 0, 1], port)).into()).expect("connect to im-server");
        Self::over(socket.into())
    }

    pub fn over(stream: TcpStream) -> Self {
        stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(READ_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        let writer = stream.try_clone().unwrap();
        Client {
            reader: BufReader::new(stream),
            writer,
            next_request_id: 1,
            pushes: VecDeque::new(),
            username: None,
            nonce_counter: 0,
        }
    }

    /// Writes bytes as they are.
    pub fn write_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("write to im-server");
        self.writer.flush().unwrap();
    }

    /// A second handle on the socket, for writing from another thread while this one reads.
    pub fn writer(&self) -> TcpStream {
        self.writer.try_clone().expect("clone the socket")
    }

    /// Writes bytes one at a time, each in its own `write` and flush.
    pub fn write_byte_by_byte(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.write_raw(std::slice::from_ref(byte));
        }
    }

    /// Takes the next request id.
    pub fn next_id(&mut self) -> u32 {
        let id = self.next_request_id;
        self.next_request_id += 1;
        id
    }

    /// Frames and writes a request; returns its request id.
    pub fn send(&mut self, request: &Request) -> u32 {
        let id = self.next_id();
        self.write_raw(&frame(request.opcode, id, &request.body));
        id
    }

    /// Reads one frame, or says why there is none.
    pub fn try_read_frame(&mut self) -> Result<Frame, NoFrame> {
        let mut header = [0u8; 9];
        read_exact(&mut self.reader, &mut header)?;
        let length = u32::from_be_bytes(header[..4].try_into().unwrap());
        assert!(length >= 5, "server sent a frame with length {length}");
        let mut body = vec![0u8; length as usize - 5];
        read_exact(&mut self.reader, &mut body)?;
        Ok(Frame { opcode: header[4], request_id: u32::from_be_bytes(header[5..].try_into().unwrap()), body })
    }

    /// Reads one frame; a close or a timeout fails the test.
    pub fn read_frame(&mut self) -> Frame {
        match self.try_read_frame() {
            Ok(frame) => frame,
            Err(reason) => panic!("expected a frame, got {reason:?}"),
        }
    }

    /// Reads the response to request `id`, keeping any pushes that come first. A response to
    /// another request fails the test: responses come in request order.
    pub fn response(&mut self, id: u32) -> Message {
        loop {
            let frame = self.read_frame();
            if frame.request_id == 0 {
                let message = frame.decode();
                if frame.opcode == op::ERROR {
                    panic!("unasked ERROR while waiting for response {id}: {message:?}");
                }
                self.pushes.push_back(message);
                continue;
            }
            assert_eq!(frame.request_id, id, "response out of order: {frame:?}");
            assert!((0x80..0xC0).contains(&frame.opcode), "request id {id} on a non-response: {frame:?}");
            return frame.decode();
        }
    }

    /// Sends a request and returns its response.
    pub fn call(&mut self, request: Request) -> Message {
        let id = self.send(&request);
        self.response(id)
    }

    /// Sends all requests at once from a second thread while this one reads the responses, so
    /// that neither side can block the other however many there are. Responses are in order.
    pub fn pipeline(&mut self, requests: &[Request]) -> Vec<Message> {
        let mut bytes = Vec::new();
        let mut ids = Vec::with_capacity(requests.len());
        for request in requests {
            let id = self.next_id();
            ids.push(id);
            bytes.extend_from_slice(&frame(request.opcode, id, &request.body));
        }
        let mut writer = self.writer.try_clone().unwrap();
        let write = thread::spawn(move || writer.write_all(&bytes));
        let responses = ids.into_iter().map(|id| self.response(id)).collect();
        write.join().unwrap().expect("pipelined write");
        responses
    }

    /// The next push: a kept one, or the next frame, which must be a push.
    pub fn push(&mut self) -> Message {
        if let Some(message) = self.pushes.pop_front() {
            return message;
        }
        let frame = self.read_frame();
        assert_eq!(frame.request_id, 0, "expected a push, got {frame:?}");
        frame.decode()
    }

    /// Sends a `PING` and returns every push that arrived before its `PONG` (kept ones
    /// included). Responses come in request order, so anything the server had queued for this
    /// connection before reading the `PING` is in the result.
    pub fn barrier(&mut self) -> Vec<Message> {
        let id = self.send(&req::ping());
        assert_eq!(self.response(id), Message::Pong);
        self.pushes.drain(..).collect()
    }

    /// Asserts that nothing was pushed to this connection (up to a `PING` round trip).
    #[track_caller]
    pub fn assert_quiet(&mut self) {
        let pushes = self.barrier();
        assert!(pushes.is_empty(), "unexpected pushes: {pushes:?}");
    }

    /// Asserts the server closed the connection without sending anything more.
    #[track_caller]
    pub fn assert_closed(&mut self) {
        match self.try_read_frame() {
            Err(NoFrame::Closed) => {}
            Err(NoFrame::TimedOut) => panic!("connection still open after {READ_TIMEOUT:?}"),
            Ok(frame) => panic!("expected a close, got {frame:?}"),
        }
    }

    /// Asserts the next frame is an unasked `ERROR` (request id 0) with `code`, then a close.
    #[track_caller]
    pub fn assert_error_and_close(&mut self, code: u16) {
        let frame = self.read_frame();
        assert_eq!((frame.opcode, frame.request_id), (op::ERROR, 0), "{frame:?}");
        assert_eq!(frame.decode().error_code(), Some(code), "{frame:?}");
        self.assert_closed();
    }

    /// Closes the socket without `LOGOUT`, as a crashed client would.
    pub fn kill(self) {
        let _ = self.writer.shutdown(Shutdown::Both);
    }

    /// Closes the socket with bytes from the server still unread, so the kernel resets the
    /// connection (RST) instead of closing it in order (FIN). The caller makes sure something
    /// is unread, e.g. by sending a PING first.
    pub fn kill_with_unread_data(self) {
        // Give the server's answer time to arrive: it is what makes the close a reset.
        let _ = self.reader.get_ref().set_read_timeout(Some(Duration::from_millis(200)));
        let mut probe = [0u8; 1];
        let _ = self.reader.get_ref().peek(&mut probe);
        drop(self);
    }

    /// Half-closes: no more bytes from this side, reading still possible.
    pub fn shutdown_write(&mut self) {
        self.writer.shutdown(Shutdown::Write).expect("shutdown write");
    }

    pub fn hello(&mut self) -> HelloOk {
        match self.call(req::hello(2)) {
            Message::HelloOk(hello) => hello,
            other => panic!("expected HELLO_OK, got {other:?}"),
        }
    }

    fn fresh_nonce(&mut self) -> Vec<u8> {
        self.nonce_counter += 1;
        let seed = format!("nonce:{}:{}", self.writer.local_addr().unwrap(), self.nonce_counter);
        scram::sha256(seed.as_bytes())[..16].to_vec()
    }

    /// The whole SCRAM exchange as `username` with `password`. On success checks the server's
    /// signature and returns the registered name; otherwise returns the failing reply.
    pub fn try_login(&mut self, username: &str, password: &str) -> Result<String, Message> {
        self.try_login_as(username, password, DEVICE)
    }

    /// [`Client::try_login`] speaking for the device `device_id`.
    pub fn try_login_as(&mut self, username: &str, password: &str, device_id: u64) -> Result<String, Message> {
        let client_nonce = self.fresh_nonce();
        let (salt, iterations, nonce) = match self.call(req::login_start(username, &client_nonce)) {
            Message::LoginChallenge { salt, iterations, nonce } => (salt, iterations, nonce),
            other => return Err(other),
        };
        assert!(nonce.starts_with(&client_nonce), "nonce lacks client part");
        assert_eq!(nonce.len(), client_nonce.len() + 24, "server nonce length");
        let keys = scram::Keys::derive(password, &salt, iterations);
        let auth_message = scram::auth_message(username, &client_nonce, &salt, iterations, &nonce);
        let proof = scram::client_proof(&keys, &auth_message);
        match self.call(req::login_finish_as(&proof, device_id, &format!("device {device_id}"))) {
            Message::LoginOk { server_signature, username } => {
                assert_eq!(
                    server_signature,
                    scram::server_signature(&keys, &auth_message),
                    "ServerSignature does not verify"
                );
                self.username = Some(username.clone());
                Ok(username)
            }
            other => Err(other),
        }
    }

    /// Reads frames until an `ERROR` (the items before it, the connection's own, are skipped),
    /// checks its code, and checks that the server then closes the connection.
    pub fn assert_items_then_error_and_close(&mut self, code: u16) {
        loop {
            let frame = self.read_frame();
            if frame.opcode == op::ERROR {
                assert_eq!(frame.decode().error_code(), Some(code), "{frame:?}");
                break;
            }
        }
        self.assert_closed();
    }

    /// `REAUTH_START`, then the proof of `password` for its challenge (for `PASSWORD_CHANGE`
    /// or `ACCOUNT_DELETE`).
    pub fn fresh_proof(&mut self, password: &str) -> [u8; 32] {
        let username = self.username.clone().expect("logged in");
        let client_nonce = self.fresh_nonce();
        let (salt, iterations, nonce) = match self.call(req::reauth_start(&client_nonce)) {
            Message::LoginChallenge { salt, iterations, nonce } => (salt, iterations, nonce),
            other => panic!("REAUTH_START: {other:?}"),
        };
        let keys = scram::Keys::derive(password, &salt, iterations);
        scram::client_proof(&keys, &scram::auth_message(&username, &client_nonce, &salt, iterations, &nonce))
    }

    /// `LOGIN_START` as `username` with the test password; returns the `LOGIN_FINISH` that
    /// completes it for `device_id`, unsent, so a test can write it together with other frames.
    pub fn prepare_login(&mut self, username: &str, device_id: u64) -> Request {
        let client_nonce = self.fresh_nonce();
        let (salt, iterations, nonce) = match self.call(req::login_start(username, &client_nonce)) {
            Message::LoginChallenge { salt, iterations, nonce } => (salt, iterations, nonce),
            other => panic!("LOGIN_START as {username}: {other:?}"),
        };
        let keys = scram::Keys::derive(&password_of(username), &salt, iterations);
        let auth_message = scram::auth_message(username, &client_nonce, &salt, iterations, &nonce);
        self.username = Some(username.to_string());
        req::login_finish_as(&scram::client_proof(&keys, &auth_message), device_id, "prepared")
    }

    /// `LOGIN_START` as `username`, then a `LOGIN_FINISH` with a proof of zeros, without
    /// deriving any key (an unknown user's challenge asks for 600,000 iterations). Returns the
    /// challenge and the answer to the proof.
    pub fn login_with_junk_proof(&mut self, username: &str) -> (Message, Message) {
        let client_nonce = self.fresh_nonce();
        let challenge = self.call(req::login_start(username, &client_nonce));
        assert!(matches!(challenge, Message::LoginChallenge { .. }), "{username}: {challenge:?}");
        let reply = self.call(req::login_finish(&[0; 32]));
        (challenge, reply)
    }

    /// Logs in as `username` with the test password, which must succeed.
    pub fn login(&mut self, username: &str) {
        self.login_as(username, DEVICE);
    }

    /// Logs in as `username` on the device `device_id`, which must succeed.
    pub fn login_as(&mut self, username: &str, device_id: u64) {
        let registered = self
            .try_login_as(username, &password_of(username), device_id)
            .unwrap_or_else(|reply| panic!("login as {username} on device {device_id} failed: {reply:?}"));
        assert_eq!(registered, username);
    }

    /// Reads the pushes up to `SYNC_DONE` and returns them; checks that `count` matches the
    /// items (`DELIVER`, `FRIEND_EVENT`) among them.
    pub fn sync(&mut self) -> Vec<Message> {
        let mut pushed = Vec::new();
        loop {
            match self.push() {
                Message::SyncDone { count } => {
                    let items = pushed.iter().filter(|message: &&Message| message.item_id().is_some()).count();
                    assert_eq!(count as usize, items, "SYNC_DONE count vs items {pushed:?}");
                    return pushed;
                }
                message => pushed.push(message),
            }
        }
    }

    /// Acknowledges everything up to `message_id`.
    pub fn ack(&mut self, message_id: u64) {
        assert_eq!(self.call(req::ack(message_id)), Message::Ok);
    }
}

fn read_exact(reader: &mut impl Read, buffer: &mut [u8]) -> Result<(), NoFrame> {
    match reader.read_exact(buffer) {
        Ok(()) => Ok(()),
        Err(error) => match error.kind() {
            ErrorKind::UnexpectedEof
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe => Err(NoFrame::Closed),
            ErrorKind::WouldBlock | ErrorKind::TimedOut => Err(NoFrame::TimedOut),
            _ => panic!("read from im-server: {error}"),
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios shared by several files
// ---------------------------------------------------------------------------------------------

/// The `PRESENCE` push for `username`.
pub fn presence_of(username: &str, online: bool) -> Message {
    Message::Presence { username: username.to_string(), online }
}

/// Removes the `PRESENCE(friend, 1)` the server pushes when two users become friends.
/// PROTOCOL.md does not mention that push (it speaks only of logins and logouts), so the tests
/// accept it where a friendship begins but do not require it.
pub fn without_new_friend_presence(pushes: Vec<Message>, friend: &str) -> Vec<Message> {
    let online = presence_of(friend, true);
    let mut pushes = pushes;
    if let Some(position) = pushes.iter().position(|push| *push == online) {
        pushes.remove(position);
    }
    pushes
}

/// alice and bob registered, logged in on their test devices and made friends, with nothing
/// waiting for either.
pub fn alice_and_bob(server: &TestServer) -> (Client, Client) {
    server.register_all(&["alice", "bob"]);
    let mut alice = server.device("alice");
    let mut bob = server.device("bob");
    make_friends(&mut alice, &mut bob);
    (alice, bob)
}

/// Makes two logged-in users friends: `a` asks, `b` accepts; both see their friend event and
/// acknowledge it, so neither has anything left to be pushed at a later login.
pub fn make_friends(a: &mut Client, b: &mut Client) {
    let a_name = a.username.clone().expect("a logged in");
    let b_name = b.username.clone().expect("b logged in");
    assert_eq!(a.call(req::friend_request(&b_name)), Message::FriendRequestOk { outcome: 0 });
    let asked = b.push();
    assert!(
        matches!(&asked, Message::FriendEvent { event: friend_event::ASKED, username, .. } if *username == a_name),
        "{asked:?}"
    );
    assert_eq!(b.call(req::friend_accept(&a_name)), Message::Ok);
    let a_pushes = without_new_friend_presence(a.barrier(), &b_name);
    let [accepted] = &a_pushes[..] else {
        panic!("{a_name} expected one FRIEND_EVENT, got {a_pushes:?}");
    };
    assert!(
        matches!(accepted, Message::FriendEvent { event: friend_event::ACCEPTED, username, .. } if *username == b_name),
        "{accepted:?}"
    );
    let b_pushes = without_new_friend_presence(b.barrier(), &a_name);
    assert_eq!(b_pushes, [], "{b_name} got more pushes");
    assert!(asked.message_id().is_some() && accepted.message_id().is_some());
    // "Everything": clamped to what each connection was sent, its own accepting included.
    b.ack(u64::MAX);
    a.ack(u64::MAX);
}

/// Makes the logged-in `a` friends with each of `names`, who are registered and offline: each
/// logs in on its test device, accepts and acknowledges, and logs off again, so its device has
/// nothing of the friendship left to be pushed. `a` acknowledges the acceptances.
pub fn befriend_offline(server: &TestServer, a: &mut Client, names: &[&str]) {
    let a_name = a.username.clone().expect("a logged in");
    for name in names {
        assert_eq!(a.call(req::friend_request(name)), Message::FriendRequestOk { outcome: 0 }, "{name}");
        let (mut b, backlog) = server.login(name);
        let asked = backlog.iter().rev().find_map(Message::item_id).expect("the friend request is in the backlog");
        assert_eq!(b.call(req::friend_accept(&a_name)), Message::Ok);
        assert!(asked > 0);
        b.ack(u64::MAX);
        drop(b);
        // `a` hears of the friendship, then of the new friend going offline: wait for that, so
        // that no push of this set-up arrives later.
        let gone = presence_of(name, false);
        while a.push() != gone {}
    }
    a.ack(u64::MAX);
}
