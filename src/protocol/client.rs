//! The client's side of the wire (PROTOCOL.md §3): one encoder per request, and a strict
//! decoder of every response and push the server sends.
//!
//! The benchmark and tools speak the protocol through this module, so the encoders append to
//! a caller's buffer (no allocation of their own) and [`ServerFrame`] borrows its strings from
//! the read buffer. The decoder is strict on purpose: a field out of its table, a push with a
//! request id, an unknown opcode or a trailing byte is an error, so a tool that decodes a
//! frame the server got wrong says so instead of guessing.

use super::codec::{DecodeError, FrameWriter, Reader};
use super::error_code::ErrorCode;
use super::frame::{self, FrameCheck, FrameHeader};
use super::opcode as op;
use super::request::{Direction, HistoryTarget, Registration};

pub fn hello(buf: &mut Vec<u8>, request_id: u32, version: u16) {
    FrameWriter::new(buf, op::HELLO, request_id).u16(version).finish();
}

pub fn ping(buf: &mut Vec<u8>, request_id: u32) {
    FrameWriter::new(buf, op::PING, request_id).finish();
}

pub fn register(buf: &mut Vec<u8>, request_id: u32, r: &Registration) {
    FrameWriter::new(buf, op::REGISTER, request_id)
        .str(r.username)
        .bytes(r.salt)
        .u32(r.iterations)
        .bytes(r.stored_key)
        .bytes(r.server_key)
        .finish();
}

pub fn login_start(buf: &mut Vec<u8>, request_id: u32, username: &str, client_nonce: &[u8]) {
    FrameWriter::new(buf, op::LOGIN_START, request_id).str(username).bytes(client_nonce).finish();
}

pub fn login_finish(buf: &mut Vec<u8>, request_id: u32, client_proof: &[u8], device_id: u64, device_name: &str) {
    FrameWriter::new(buf, op::LOGIN_FINISH, request_id).bytes(client_proof).u64(device_id).str(device_name).finish();
}

pub fn logout(buf: &mut Vec<u8>, request_id: u32) {
    FrameWriter::new(buf, op::LOGOUT, request_id).finish();
}

pub fn reauth_start(buf: &mut Vec<u8>, request_id: u32, client_nonce: &[u8]) {
    FrameWriter::new(buf, op::REAUTH_START, request_id).bytes(client_nonce).finish();
}

pub fn password_change(buf: &mut Vec<u8>, request_id: u32, client_proof: &[u8], new: &super::request::Verifier) {
    FrameWriter::new(buf, op::PASSWORD_CHANGE, request_id)
        .bytes(client_proof)
        .bytes(new.salt)
        .u32(new.iterations)
        .bytes(new.stored_key)
        .bytes(new.server_key)
        .finish();
}

pub fn account_delete(buf: &mut Vec<u8>, request_id: u32, client_proof: &[u8]) {
    FrameWriter::new(buf, op::ACCOUNT_DELETE, request_id).bytes(client_proof).finish();
}

pub fn friend_request(buf: &mut Vec<u8>, request_id: u32, username: &str) {
    FrameWriter::new(buf, op::FRIEND_REQUEST, request_id).str(username).finish();
}

pub fn friend_accept(buf: &mut Vec<u8>, request_id: u32, username: &str) {
    FrameWriter::new(buf, op::FRIEND_ACCEPT, request_id).str(username).finish();
}

pub fn friend_decline(buf: &mut Vec<u8>, request_id: u32, username: &str) {
    FrameWriter::new(buf, op::FRIEND_DECLINE, request_id).str(username).finish();
}

pub fn friend_remove(buf: &mut Vec<u8>, request_id: u32, username: &str) {
    FrameWriter::new(buf, op::FRIEND_REMOVE, request_id).str(username).finish();
}

pub fn friend_list(buf: &mut Vec<u8>, request_id: u32) {
    FrameWriter::new(buf, op::FRIEND_LIST, request_id).finish();
}

pub fn send(buf: &mut Vec<u8>, request_id: u32, to: &str, client_msg_id: u64, body: &str) {
    FrameWriter::new(buf, op::SEND, request_id).str(to).u64(client_msg_id).str(body).finish();
}

pub fn ack(buf: &mut Vec<u8>, request_id: u32, up_to_message_id: u64) {
    FrameWriter::new(buf, op::ACK, request_id).u64(up_to_message_id).finish();
}

pub fn history(
    buf: &mut Vec<u8>,
    request_id: u32,
    target: HistoryTarget,
    direction: Direction,
    from_message_id: u64,
    limit: u16,
) {
    let w = FrameWriter::new(buf, op::HISTORY, request_id);
    let w = match target {
        HistoryTarget::Direct { peer } => w.u8(0).str(peer),
        HistoryTarget::Group { group_id } => w.u8(1).u64(group_id),
    };
    let direction = match direction {
        Direction::Older => 0,
        Direction::Newer => 1,
    };
    w.u8(direction).u64(from_message_id).u16(limit).finish();
}

pub fn read(buf: &mut Vec<u8>, request_id: u32, peer: &str, up_to_message_id: u64) {
    FrameWriter::new(buf, op::READ, request_id).str(peer).u64(up_to_message_id).finish();
}

pub fn group_create(buf: &mut Vec<u8>, request_id: u32, name: &str) {
    FrameWriter::new(buf, op::GROUP_CREATE, request_id).str(name).finish();
}

pub fn group_invite(buf: &mut Vec<u8>, request_id: u32, group_id: u64, username: &str) {
    FrameWriter::new(buf, op::GROUP_INVITE, request_id).u64(group_id).str(username).finish();
}

pub fn group_leave(buf: &mut Vec<u8>, request_id: u32, group_id: u64) {
    FrameWriter::new(buf, op::GROUP_LEAVE, request_id).u64(group_id).finish();
}

pub fn group_members(buf: &mut Vec<u8>, request_id: u32, group_id: u64) {
    FrameWriter::new(buf, op::GROUP_MEMBERS, request_id).u64(group_id).finish();
}

pub fn group_list(buf: &mut Vec<u8>, request_id: u32) {
    FrameWriter::new(buf, op::GROUP_LIST, request_id).finish();
}

pub fn group_send(buf: &mut Vec<u8>, request_id: u32, group_id: u64, client_msg_id: u64, body: &str) {
    FrameWriter::new(buf, op::GROUP_SEND, request_id).u64(group_id).u64(client_msg_id).str(body).finish();
}

pub fn device_list(buf: &mut Vec<u8>, request_id: u32) {
    FrameWriter::new(buf, op::DEVICE_LIST, request_id).finish();
}

pub fn device_remove(buf: &mut Vec<u8>, request_id: u32, device_id: u64) {
    FrameWriter::new(buf, op::DEVICE_REMOVE, request_id).u64(device_id).finish();
}

/// Why a server frame was refused by the strict decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerFrameError {
    /// The body did not parse (short, trailing bytes, bad UTF-8, a value outside its table).
    Body(DecodeError),
    /// The opcode is not a response or push of PROTOCOL.md §3.
    UnknownOpcode(u8),
    /// A push carried a request id other than 0.
    PushWithRequestId(u32),
    /// The length prefix was below 5 or above the reader's limit.
    BadLength(u32),
}

impl From<DecodeError> for ServerFrameError {
    fn from(e: DecodeError) -> Self {
        ServerFrameError::Body(e)
    }
}

impl std::fmt::Display for ServerFrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerFrameError::Body(e) => f.write_str(e.describe()),
            ServerFrameError::UnknownOpcode(opcode) => write!(f, "opcode {opcode:#04x} is not a response or push"),
            ServerFrameError::PushWithRequestId(id) => write!(f, "a push carried request id {id}, not 0"),
            ServerFrameError::BadLength(length) => write!(f, "frame length {length} is out of range"),
        }
    }
}

impl std::error::Error for ServerFrameError {}

/// Where a delivered message belongs, as `DELIVER` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliverTarget<'a> {
    Direct { to: &'a str },
    Group { group_id: u64 },
}

/// One row of `HISTORY_PAGE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryRow<'a> {
    pub message_id: u64,
    pub timestamp_ms: u64,
    pub sender: &'a str,
    pub body: &'a str,
}

/// One row of `GROUP_MEMBERS_RESULT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberRow<'a> {
    pub username: &'a str,
    pub online: bool,
    pub owner: bool,
}

/// One row of `GROUP_LIST_RESULT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupRow<'a> {
    pub group_id: u64,
    pub name: &'a str,
    pub owner: &'a str,
    pub members: u32,
}

/// One row of `DEVICE_LIST_RESULT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceRow<'a> {
    pub device_id: u64,
    pub name: &'a str,
    pub last_seen_ms: u64,
    pub online: bool,
    pub current: bool,
}

/// Every response (0x80–0xBF) and push (0xC0–0xFF) of PROTOCOL.md §3, borrowing from the frame.
///
/// Lists (friends, history, members, groups) are collected into vectors; every other frame
/// decodes without allocating, so the hot path (`SENT`, `DELIVER`, `OK`) costs nothing extra.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerFrame<'a> {
    Ok,
    HelloOk {
        version: u16,
        server: &'a str,
        max_frame: u32,
        max_frame_before_login: u32,
        max_body: u32,
        idle_timeout_secs: u32,
        login_timeout_secs: u32,
        min_kdf_iterations: u32,
    },
    Pong,
    /// An error that clears by itself; the request may be repeated after `retry_after_ms`.
    RetryLater {
        code: ErrorCode,
        retry_after_ms: u32,
        message: &'a str,
    },
    Error {
        code: ErrorCode,
        message: &'a str,
    },
    LoginChallenge {
        salt: &'a [u8],
        iterations: u32,
        nonce: &'a [u8],
    },
    LoginOk {
        server_signature: &'a [u8],
        username: &'a str,
    },
    /// `became_friends` is outcome 1: they had asked you, you are now friends.
    FriendRequestOk {
        became_friends: bool,
    },
    FriendListResult {
        friends: Vec<(&'a str, bool)>,
        incoming: Vec<&'a str>,
        outgoing: Vec<&'a str>,
    },
    Sent {
        message_id: u64,
        timestamp_ms: u64,
    },
    HistoryPage {
        rows: Vec<HistoryRow<'a>>,
        next: u64,
    },
    GroupCreated {
        group_id: u64,
    },
    GroupMembersResult {
        group_id: u64,
        members: Vec<MemberRow<'a>>,
    },
    GroupListResult {
        groups: Vec<GroupRow<'a>>,
    },
    DeviceListResult {
        devices: Vec<DeviceRow<'a>>,
    },
    Deliver {
        message_id: u64,
        timestamp_ms: u64,
        from: &'a str,
        target: DeliverTarget<'a>,
        body: &'a str,
    },
    /// `event`: 1 asked, 2 accepted, 3 declined, 4 removed; 5–8 the same done by you elsewhere.
    FriendEvent {
        message_id: u64,
        timestamp_ms: u64,
        event: u8,
        username: &'a str,
    },
    Presence {
        username: &'a str,
        online: bool,
    },
    ReadReceipt {
        message_id: u64,
        timestamp_ms: u64,
        reader: &'a str,
        peer: &'a str,
        up_to_message_id: u64,
    },
    SyncDone {
        count: u32,
    },
    /// `event`: 1 joined, 2 left.
    GroupEvent {
        message_id: u64,
        timestamp_ms: u64,
        group_id: u64,
        event: u8,
        username: &'a str,
        group_name: &'a str,
    },
    SyncGap {
        after_message_id: u64,
        up_to_message_id: u64,
        skipped: u32,
    },
}

fn flag(r: &mut Reader) -> Result<bool, DecodeError> {
    match r.u8()? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(DecodeError::BadValue),
    }
}

fn in_range(v: u8, low: u8, high: u8) -> Result<u8, DecodeError> {
    if (low..=high).contains(&v) { Ok(v) } else { Err(DecodeError::BadValue) }
}

impl<'a> ServerFrame<'a> {
    /// Decodes the body of a server frame with the given opcode and request id.
    pub fn decode(opcode: u8, request_id: u32, body: &'a [u8]) -> Result<Self, ServerFrameError> {
        if op::is_push(opcode) && request_id != 0 {
            return Err(ServerFrameError::PushWithRequestId(request_id));
        }
        let mut r = Reader::new(body);
        let frame = match opcode {
            op::OK => ServerFrame::Ok,
            op::HELLO_OK => ServerFrame::HelloOk {
                version: r.u16()?,
                server: r.str()?,
                max_frame: r.u32()?,
                max_frame_before_login: r.u32()?,
                max_body: r.u32()?,
                idle_timeout_secs: r.u32()?,
                login_timeout_secs: r.u32()?,
                min_kdf_iterations: r.u32()?,
            },
            op::PONG => ServerFrame::Pong,
            op::RETRY_LATER => ServerFrame::RetryLater {
                code: ErrorCode::from_u16(r.u16()?).ok_or(DecodeError::BadValue)?,
                retry_after_ms: r.u32()?,
                message: r.str()?,
            },
            op::ERROR => ServerFrame::Error {
                code: ErrorCode::from_u16(r.u16()?).ok_or(DecodeError::BadValue)?,
                message: r.str()?,
            },
            op::LOGIN_CHALLENGE => {
                ServerFrame::LoginChallenge { salt: r.bytes()?, iterations: r.u32()?, nonce: r.bytes()? }
            }
            op::LOGIN_OK => ServerFrame::LoginOk { server_signature: r.bytes()?, username: r.str()? },
            op::FRIEND_REQUEST_OK => ServerFrame::FriendRequestOk { became_friends: flag(&mut r)? },
            op::FRIEND_LIST_RESULT => {
                let mut friends = Vec::new();
                for _ in 0..r.u16()? {
                    friends.push((r.str()?, flag(&mut r)?));
                }
                let mut incoming = Vec::new();
                for _ in 0..r.u16()? {
                    incoming.push(r.str()?);
                }
                let mut outgoing = Vec::new();
                for _ in 0..r.u16()? {
                    outgoing.push(r.str()?);
                }
                ServerFrame::FriendListResult { friends, incoming, outgoing }
            }
            op::SENT => ServerFrame::Sent { message_id: r.u64()?, timestamp_ms: r.u64()? },
            op::HISTORY_PAGE => {
                let mut rows = Vec::new();
                for _ in 0..r.u16()? {
                    rows.push(HistoryRow {
                        message_id: r.u64()?,
                        timestamp_ms: r.u64()?,
                        sender: r.str()?,
                        body: r.str()?,
                    });
                }
                ServerFrame::HistoryPage { rows, next: r.u64()? }
            }
            op::GROUP_CREATED => ServerFrame::GroupCreated { group_id: r.u64()? },
            op::GROUP_MEMBERS_RESULT => {
                let group_id = r.u64()?;
                let mut members = Vec::new();
                for _ in 0..r.u32()? {
                    members.push(MemberRow { username: r.str()?, online: flag(&mut r)?, owner: flag(&mut r)? });
                }
                ServerFrame::GroupMembersResult { group_id, members }
            }
            op::GROUP_LIST_RESULT => {
                let mut groups = Vec::new();
                for _ in 0..r.u16()? {
                    groups.push(GroupRow { group_id: r.u64()?, name: r.str()?, owner: r.str()?, members: r.u32()? });
                }
                ServerFrame::GroupListResult { groups }
            }
            op::DEVICE_LIST_RESULT => {
                let mut devices = Vec::new();
                for _ in 0..r.u16()? {
                    devices.push(DeviceRow {
                        device_id: r.u64()?,
                        name: r.str()?,
                        last_seen_ms: r.u64()?,
                        online: flag(&mut r)?,
                        current: flag(&mut r)?,
                    });
                }
                ServerFrame::DeviceListResult { devices }
            }
            op::DELIVER => {
                let message_id = r.u64()?;
                let timestamp_ms = r.u64()?;
                let from = r.str()?;
                let target = match r.u8()? {
                    0 => DeliverTarget::Direct { to: r.str()? },
                    1 => DeliverTarget::Group { group_id: r.u64()? },
                    _ => return Err(DecodeError::BadValue.into()),
                };
                ServerFrame::Deliver { message_id, timestamp_ms, from, target, body: r.str()? }
            }
            op::FRIEND_EVENT => ServerFrame::FriendEvent {
                message_id: r.u64()?,
                timestamp_ms: r.u64()?,
                event: in_range(r.u8()?, 1, 8)?,
                username: r.str()?,
            },
            op::PRESENCE => ServerFrame::Presence { username: r.str()?, online: flag(&mut r)? },
            op::READ_RECEIPT => ServerFrame::ReadReceipt {
                message_id: r.u64()?,
                timestamp_ms: r.u64()?,
                reader: r.str()?,
                peer: r.str()?,
                up_to_message_id: r.u64()?,
            },
            op::SYNC_DONE => ServerFrame::SyncDone { count: r.u32()? },
            op::GROUP_EVENT => ServerFrame::GroupEvent {
                message_id: r.u64()?,
                timestamp_ms: r.u64()?,
                group_id: r.u64()?,
                event: in_range(r.u8()?, 1, 2)?,
                username: r.str()?,
                group_name: r.str()?,
            },
            op::SYNC_GAP => {
                ServerFrame::SyncGap { after_message_id: r.u64()?, up_to_message_id: r.u64()?, skipped: r.u32()? }
            }
            other => return Err(ServerFrameError::UnknownOpcode(other)),
        };
        r.finish()?;
        Ok(frame)
    }
}

/// What the front of a client's read buffer holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextFrame<'a> {
    /// More bytes are needed.
    Incomplete,
    /// A whole frame: its total size (prefix included), request id and decoded contents.
    Frame { total: usize, request_id: u32, frame: ServerFrame<'a> },
}

/// Checks and decodes the frame at the front of `buf`, refusing lengths above `max_length`.
pub fn next_frame(buf: &[u8], max_length: u32) -> Result<NextFrame<'_>, ServerFrameError> {
    match frame::check(buf, max_length) {
        FrameCheck::Incomplete => Ok(NextFrame::Incomplete),
        FrameCheck::TooLarge { length } | FrameCheck::TooShort { length } => Err(ServerFrameError::BadLength(length)),
        FrameCheck::Complete { total } => {
            let header = FrameHeader::parse(&buf[..total]);
            let frame = ServerFrame::decode(header.opcode, header.request_id, header.body)?;
            Ok(NextFrame::Frame { total, request_id: header.request_id, frame })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Request;
    use crate::protocol::response::{
        self, Conversation, Delivery, DeviceEntry, FriendEvent, FriendRequestOutcome, GroupEntry, GroupEvent,
        GroupNotice, HistoryEntry, MemberEntry, Receipt, ServerLimits,
    };

    /// Decodes exactly one frame from `buf`, which must hold nothing else.
    fn decode_one(buf: &[u8]) -> (u32, ServerFrame<'_>) {
        match next_frame(buf, u32::MAX) {
            Ok(NextFrame::Frame { total, request_id, frame }) => {
                assert_eq!(total, buf.len(), "the buffer holds exactly one frame");
                (request_id, frame)
            }
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    fn list<T>(items: &[T]) -> response::List16<'_, T> {
        response::List16::new(items).expect("a short list")
    }

    fn check(encode: impl FnOnce(&mut Vec<u8>), request_id: u32, expected: ServerFrame) {
        let mut buf = Vec::new();
        encode(&mut buf);
        assert_eq!(decode_one(&buf), (request_id, expected));
    }

    #[test]
    fn decodes_every_response() {
        let limits = ServerLimits {
            max_frame: 65536,
            max_frame_before_login: 4096,
            max_body: 4096,
            idle_timeout_secs: 120,
            login_timeout_secs: 10,
            min_kdf_iterations: 100_000,
        };
        check(|b| response::ok(b, 3), 3, ServerFrame::Ok);
        check(|b| response::pong(b, 4), 4, ServerFrame::Pong);
        check(
            |b| response::hello_ok(b, 1, &limits),
            1,
            ServerFrame::HelloOk {
                version: 2,
                server: concat!("im-server ", env!("CARGO_PKG_VERSION")),
                max_frame: 65536,
                max_frame_before_login: 4096,
                max_body: 4096,
                idle_timeout_secs: 120,
                login_timeout_secs: 10,
                min_kdf_iterations: 100_000,
            },
        );
        check(
            |b| response::error(b, 0, ErrorCode::ShuttingDown, "bye"),
            0,
            ServerFrame::Error { code: ErrorCode::ShuttingDown, message: "bye" },
        );
        check(
            |b| response::login_challenge(b, 5, &[1; 16], 4096, &[2; 40]),
            5,
            ServerFrame::LoginChallenge { salt: &[1; 16], iterations: 4096, nonce: &[2; 40] },
        );
        check(
            |b| response::login_ok(b, 6, &[7; 32], "Alice"),
            6,
            ServerFrame::LoginOk { server_signature: &[7; 32], username: "Alice" },
        );
        check(
            |b| response::friend_request_ok(b, 7, FriendRequestOutcome::BecameFriends),
            7,
            ServerFrame::FriendRequestOk { became_friends: true },
        );
        check(
            |b| response::friend_request_ok(b, 7, FriendRequestOutcome::Requested),
            7,
            ServerFrame::FriendRequestOk { became_friends: false },
        );
        let friends = vec![("bob".to_string(), true), ("carol".to_string(), false)];
        check(
            |b| response::friend_list(b, 8, list(&friends), list(&["dave".to_string()]), list(&[])),
            8,
            ServerFrame::FriendListResult {
                friends: vec![("bob", true), ("carol", false)],
                incoming: vec!["dave"],
                outgoing: vec![],
            },
        );
        check(
            |b| response::sent(b, 9, 42, 1764108000000),
            9,
            ServerFrame::Sent { message_id: 42, timestamp_ms: 1764108000000 },
        );
        let entries = vec![HistoryEntry { message_id: 3, timestamp_ms: 4, sender: "bob".into(), body: "hé".into() }];
        check(
            |b| response::history_page(b, 10, list(&entries), 2),
            10,
            ServerFrame::HistoryPage {
                rows: vec![HistoryRow { message_id: 3, timestamp_ms: 4, sender: "bob", body: "hé" }],
                next: 2,
            },
        );
        check(|b| response::group_created(b, 11, 77), 11, ServerFrame::GroupCreated { group_id: 77 });
        let members = vec![MemberEntry { username: "bob".into(), online: true, owner: false }];
        check(
            |b| response::group_members(b, 12, 77, &members),
            12,
            ServerFrame::GroupMembersResult {
                group_id: 77,
                members: vec![MemberRow { username: "bob", online: true, owner: false }],
            },
        );
        let groups = vec![GroupEntry { group_id: 1, name: "lobby".into(), owner: "".into(), members: 3 }];
        check(
            |b| response::group_list(b, 13, list(&groups)),
            13,
            ServerFrame::GroupListResult {
                groups: vec![GroupRow { group_id: 1, name: "lobby", owner: "", members: 3 }],
            },
        );
        let devices =
            vec![DeviceEntry { device_id: 7, name: "phone".into(), last_seen_ms: 9, online: true, current: false }];
        check(
            |b| response::device_list(b, 14, &devices),
            14,
            ServerFrame::DeviceListResult {
                devices: vec![DeviceRow { device_id: 7, name: "phone", last_seen_ms: 9, online: true, current: false }],
            },
        );
    }

    #[test]
    fn decodes_every_push() {
        let direct = Delivery {
            message_id: 42,
            timestamp_ms: 1764108000000,
            from: "alice",
            conversation: Conversation::Direct { to: "bob" },
            body: b"hi",
        };
        check(
            |b| response::deliver(b, &direct),
            0,
            ServerFrame::Deliver {
                message_id: 42,
                timestamp_ms: 1764108000000,
                from: "alice",
                target: DeliverTarget::Direct { to: "bob" },
                body: "hi",
            },
        );
        let group = Delivery { conversation: Conversation::Group { group_id: 9 }, ..direct };
        check(
            |b| response::deliver(b, &group),
            0,
            ServerFrame::Deliver {
                message_id: 42,
                timestamp_ms: 1764108000000,
                from: "alice",
                target: DeliverTarget::Group { group_id: 9 },
                body: "hi",
            },
        );
        check(
            |b| response::friend_event(b, 5, 6, FriendEvent::Declined, "bob"),
            0,
            ServerFrame::FriendEvent { message_id: 5, timestamp_ms: 6, event: 3, username: "bob" },
        );
        check(|b| response::presence(b, "bob", true), 0, ServerFrame::Presence { username: "bob", online: true });
        let receipt = Receipt { message_id: 9, timestamp_ms: 10, reader: "bob", peer: "al", up_to_message_id: 8 };
        check(
            |b| response::read_receipt(b, &receipt),
            0,
            ServerFrame::ReadReceipt {
                message_id: 9,
                timestamp_ms: 10,
                reader: "bob",
                peer: "al",
                up_to_message_id: 8,
            },
        );
        check(
            |b| response::friend_event(b, 5, 6, FriendEvent::YouRemoved, "bob"),
            0,
            ServerFrame::FriendEvent { message_id: 5, timestamp_ms: 6, event: 8, username: "bob" },
        );
        check(
            |b| response::sync_gap(b, 3, 900, 800),
            0,
            ServerFrame::SyncGap { after_message_id: 3, up_to_message_id: 900, skipped: 800 },
        );
        check(|b| response::sync_done(b, 100_000), 0, ServerFrame::SyncDone { count: 100_000 });
        let notice = GroupNotice {
            message_id: 11,
            timestamp_ms: 12,
            group_id: 9,
            event: GroupEvent::Left,
            username: "bob",
            group_name: "team",
        };
        check(
            |b| response::group_event(b, &notice),
            0,
            ServerFrame::GroupEvent {
                message_id: 11,
                timestamp_ms: 12,
                group_id: 9,
                event: 2,
                username: "bob",
                group_name: "team",
            },
        );
    }

    #[test]
    fn refuses_what_the_table_does_not_allow() {
        let mut buf = Vec::new();
        FrameWriter::new(&mut buf, op::SYNC_DONE, 3).u32(1).finish();
        assert_eq!(next_frame(&buf, u32::MAX), Err(ServerFrameError::PushWithRequestId(3)));

        buf.clear();
        FrameWriter::new(&mut buf, op::PRESENCE, 0).str("bob").u8(2).finish();
        assert_eq!(next_frame(&buf, u32::MAX), Err(ServerFrameError::Body(DecodeError::BadValue)));

        buf.clear();
        FrameWriter::new(&mut buf, op::ERROR, 1).u16(999).str("?").finish();
        assert_eq!(next_frame(&buf, u32::MAX), Err(ServerFrameError::Body(DecodeError::BadValue)));

        buf.clear();
        FrameWriter::new(&mut buf, op::OK, 1).u8(0).finish();
        assert_eq!(next_frame(&buf, u32::MAX), Err(ServerFrameError::Body(DecodeError::TrailingBytes)));

        buf.clear();
        FrameWriter::new(&mut buf, 0x8F, 1).finish();
        assert_eq!(next_frame(&buf, u32::MAX), Err(ServerFrameError::UnknownOpcode(0x8F)));

        assert_eq!(next_frame(&[0, 0, 0, 4, 0], u32::MAX), Err(ServerFrameError::BadLength(4)));
        assert_eq!(next_frame(&[0, 0, 0, 9, 0x80], u32::MAX), Ok(NextFrame::Incomplete));
        assert_eq!(next_frame(&[0, 1, 0, 0], 1000), Err(ServerFrameError::BadLength(65536)));
    }

    /// Encodes a request and decodes it with the server's own decoder.
    fn round_trip(encode: impl FnOnce(&mut Vec<u8>), request_id: u32, expected: Request) {
        let mut buf = Vec::new();
        encode(&mut buf);
        let FrameCheck::Complete { total } = frame::check(&buf, u32::MAX) else { panic!("incomplete frame") };
        assert_eq!(total, buf.len());
        let header = FrameHeader::parse(&buf);
        assert_eq!(header.request_id, request_id);
        assert_eq!(Request::decode(header.opcode, header.body), Ok(expected));
    }

    #[test]
    fn requests_decode_on_the_server_side() {
        let reg = Registration {
            username: "alice",
            salt: &[1; 16],
            iterations: 4096,
            stored_key: &[2; 32],
            server_key: &[3; 32],
        };
        round_trip(|b| hello(b, 1, 2), 1, Request::Hello { version: 2 });
        round_trip(|b| ping(b, 2), 2, Request::Ping);
        round_trip(|b| register(b, 3, &reg), 3, Request::Register(reg));
        round_trip(
            |b| login_start(b, 4, "alice", &[5; 16]),
            4,
            Request::LoginStart { username: "alice", client_nonce: &[5; 16] },
        );
        round_trip(
            |b| login_finish(b, 5, &[6; 32], 77, "phone"),
            5,
            Request::LoginFinish { client_proof: &[6; 32], device_id: 77, device_name: "phone" },
        );
        round_trip(|b| logout(b, 6), 6, Request::Logout);
        round_trip(|b| friend_request(b, 7, "bob"), 7, Request::FriendRequest { username: "bob" });
        round_trip(|b| friend_accept(b, 8, "bob"), 8, Request::FriendAccept { username: "bob" });
        round_trip(|b| friend_decline(b, 9, "bob"), 9, Request::FriendDecline { username: "bob" });
        round_trip(|b| friend_remove(b, 10, "bob"), 10, Request::FriendRemove { username: "bob" });
        round_trip(|b| friend_list(b, 11), 11, Request::FriendList);
        round_trip(
            |b| send(b, 12, "bob", u64::MAX, "hi"),
            12,
            Request::Send { to: "bob", client_msg_id: u64::MAX, body: "hi" },
        );
        round_trip(|b| ack(b, 13, 99), 13, Request::Ack { up_to_message_id: 99 });
        for target in [HistoryTarget::Direct { peer: "bob" }, HistoryTarget::Group { group_id: 4 }] {
            for direction in [Direction::Older, Direction::Newer] {
                round_trip(
                    |b| history(b, 14, target, direction, 50, 20),
                    14,
                    Request::History { target, direction, from_message_id: 50, limit: 20 },
                );
            }
        }
        round_trip(|b| read(b, 15, "bob", 7), 15, Request::Read { peer: "bob", up_to_message_id: 7 });
        round_trip(|b| group_create(b, 16, "team"), 16, Request::GroupCreate { name: "team" });
        round_trip(|b| group_invite(b, 17, 4, "bob"), 17, Request::GroupInvite { group_id: 4, username: "bob" });
        round_trip(|b| group_leave(b, 18, 4), 18, Request::GroupLeave { group_id: 4 });
        round_trip(|b| group_members(b, 19, 4), 19, Request::GroupMembers { group_id: 4 });
        round_trip(|b| group_list(b, 20), 20, Request::GroupList);
        round_trip(
            |b| group_send(b, 21, 4, 8, "yo"),
            21,
            Request::GroupSend { group_id: 4, client_msg_id: 8, body: "yo" },
        );
        round_trip(|b| device_list(b, 22), 22, Request::DeviceList);
        round_trip(|b| device_remove(b, 23, 7), 23, Request::DeviceRemove { device_id: 7 });
    }

    /// The request bytes of PROTOCOL.md §7.
    #[test]
    fn matches_the_protocol_example_bytes() {
        let mut buf = Vec::new();
        hello(&mut buf, 1, 2);
        assert_eq!(hex::encode(&buf), "0000000701000000010002");
        buf.clear();
        ping(&mut buf, 2);
        assert_eq!(hex::encode(&buf), "000000050200000002");
        buf.clear();
        send(&mut buf, 9, "bob", 7, "hi");
        assert_eq!(hex::encode(&buf), "0000001620000000090003626f62000000000000000700026869");
    }
}
