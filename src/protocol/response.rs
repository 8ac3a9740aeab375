//! Encoding of responses and pushes (PROTOCOL.md §3), straight into a byte buffer.

use super::codec::FrameWriter;
use super::error_code::ErrorCode;
use super::opcode as op;

/// Request id carried by pushes and by unsolicited errors.
pub const PUSH_ID: u32 = 0;

/// The limits announced in `HELLO_OK`.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    pub max_frame: u32,
    pub max_frame_before_login: u32,
    pub max_body: u32,
    pub idle_timeout_secs: u32,
    pub login_timeout_secs: u32,
    pub min_kdf_iterations: u32,
}

/// A list short enough for the `u16` count sent before its items. Built only by
/// [`List16::new`], which refuses a longer one, so no encoder can send a count that lies
/// about the items after it.
#[derive(Debug, Clone, Copy)]
pub struct List16<'a, T>(&'a [T]);

impl<'a, T> List16<'a, T> {
    /// `None` for more than 65,535 items.
    pub fn new(items: &'a [T]) -> Option<Self> {
        (items.len() <= u16::MAX as usize).then_some(List16(items))
    }

    fn count(&self) -> u16 {
        // Cannot truncate: checked by `new`.
        self.0.len() as u16
    }

    fn items(&self) -> &'a [T] {
        self.0
    }
}

pub fn ok(buf: &mut Vec<u8>, request_id: u32) {
    FrameWriter::new(buf, op::OK, request_id).finish();
}

pub fn pong(buf: &mut Vec<u8>, request_id: u32) {
    FrameWriter::new(buf, op::PONG, request_id).finish();
}

pub fn hello_ok(buf: &mut Vec<u8>, request_id: u32, limits: &ServerLimits) {
    FrameWriter::new(buf, op::HELLO_OK, request_id)
        .u16(super::PROTOCOL_VERSION)
        .str(concat!("im-server ", env!("CARGO_PKG_VERSION")))
        .u32(limits.max_frame)
        .u32(limits.max_frame_before_login)
        .u32(limits.max_body)
        .u32(limits.idle_timeout_secs)
        .u32(limits.login_timeout_secs)
        .u32(limits.min_kdf_iterations)
        .finish();
}

pub fn error(buf: &mut Vec<u8>, request_id: u32, code: ErrorCode, message: &str) {
    FrameWriter::new(buf, op::ERROR, request_id).u16(code.code()).str(message).finish();
}

/// An error that clears by itself: the request may be repeated after `retry_after_ms`.
pub fn retry_later(buf: &mut Vec<u8>, request_id: u32, code: ErrorCode, retry_after_ms: u32, message: &str) {
    FrameWriter::new(buf, op::RETRY_LATER, request_id).u16(code.code()).u32(retry_after_ms).str(message).finish();
}

pub fn login_challenge(buf: &mut Vec<u8>, request_id: u32, salt: &[u8], iterations: u32, nonce: &[u8]) {
    FrameWriter::new(buf, op::LOGIN_CHALLENGE, request_id).bytes(salt).u32(iterations).bytes(nonce).finish();
}

pub fn login_ok(buf: &mut Vec<u8>, request_id: u32, server_signature: &[u8], username: &str) {
    FrameWriter::new(buf, op::LOGIN_OK, request_id).bytes(server_signature).str(username).finish();
}

/// `FRIEND_REQUEST_OK` outcomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FriendRequestOutcome {
    Requested = 0,
    BecameFriends = 1,
}

pub fn friend_request_ok(buf: &mut Vec<u8>, request_id: u32, outcome: FriendRequestOutcome) {
    FrameWriter::new(buf, op::FRIEND_REQUEST_OK, request_id).u8(outcome as u8).finish();
}

pub fn friend_list(
    buf: &mut Vec<u8>,
    request_id: u32,
    friends: List16<(String, bool)>,
    incoming: List16<String>,
    outgoing: List16<String>,
) {
    let mut w = FrameWriter::new(buf, op::FRIEND_LIST_RESULT, request_id).u16(friends.count());
    for (name, online) in friends.items() {
        w = w.str(name).u8(*online as u8);
    }
    w = w.u16(incoming.count());
    for name in incoming.items() {
        w = w.str(name);
    }
    w = w.u16(outgoing.count());
    for name in outgoing.items() {
        w = w.str(name);
    }
    w.finish();
}

pub fn sent(buf: &mut Vec<u8>, request_id: u32, message_id: u64, timestamp_ms: u64) {
    FrameWriter::new(buf, op::SENT, request_id).u64(message_id).u64(timestamp_ms).finish();
}

/// One message of a `HISTORY_PAGE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    pub message_id: u64,
    pub timestamp_ms: u64,
    pub sender: String,
    pub body: String,
}

pub fn history_page(buf: &mut Vec<u8>, request_id: u32, entries: List16<HistoryEntry>, next: u64) {
    let mut w = FrameWriter::new(buf, op::HISTORY_PAGE, request_id).u16(entries.count());
    for e in entries.items() {
        w = w.u64(e.message_id).u64(e.timestamp_ms).str(&e.sender).str(&e.body);
    }
    w.u64(next).finish();
}

pub fn group_created(buf: &mut Vec<u8>, request_id: u32, group_id: u64) {
    FrameWriter::new(buf, op::GROUP_CREATED, request_id).u64(group_id).finish();
}

/// One row of `GROUP_MEMBERS_RESULT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberEntry {
    pub username: String,
    pub online: bool,
    pub owner: bool,
}

pub fn group_members(buf: &mut Vec<u8>, request_id: u32, group_id: u64, members: &[MemberEntry]) {
    let mut w = FrameWriter::new(buf, op::GROUP_MEMBERS_RESULT, request_id).u64(group_id).u32(members.len() as u32);
    for m in members {
        w = w.str(&m.username).u8(m.online as u8).u8(m.owner as u8);
    }
    w.finish();
}

/// One row of `GROUP_LIST_RESULT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    pub group_id: u64,
    pub name: String,
    pub owner: String,
    pub members: u32,
}

pub fn group_list(buf: &mut Vec<u8>, request_id: u32, groups: List16<GroupEntry>) {
    let mut w = FrameWriter::new(buf, op::GROUP_LIST_RESULT, request_id).u16(groups.count());
    for g in groups.items() {
        w = w.u64(g.group_id).str(&g.name).str(&g.owner).u32(g.members);
    }
    w.finish();
}

/// Where a delivered message belongs, seen from the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conversation<'a> {
    Direct { to: &'a str },
    Group { group_id: u64 },
}

/// A chat message as pushed in `DELIVER`.
#[derive(Debug, Clone, Copy)]
pub struct Delivery<'a> {
    pub message_id: u64,
    pub timestamp_ms: u64,
    pub from: &'a str,
    pub conversation: Conversation<'a>,
    pub body: &'a [u8],
}

pub fn deliver(buf: &mut Vec<u8>, d: &Delivery) {
    let w = FrameWriter::new(buf, op::DELIVER, PUSH_ID).u64(d.message_id).u64(d.timestamp_ms).str(d.from);
    let w = match d.conversation {
        Conversation::Direct { to } => w.u8(0).str(to),
        Conversation::Group { group_id } => w.u8(1).u64(group_id),
    };
    w.bytes(d.body).finish();
}

/// `FRIEND_EVENT` kinds; the numbers are on the wire and in the store. 1–4 tell a user what
/// someone did to them; 5–8 tell a user's other devices what the user did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FriendEvent {
    Requested = 1,
    Accepted = 2,
    Declined = 3,
    Removed = 4,
    YouRequested = 5,
    YouAccepted = 6,
    YouDeclined = 7,
    YouRemoved = 8,
}

impl FriendEvent {
    pub fn from_u8(v: u8) -> Option<Self> {
        use FriendEvent::*;
        [Requested, Accepted, Declined, Removed, YouRequested, YouAccepted, YouDeclined, YouRemoved]
            .into_iter()
            .find(|e| *e as u8 == v)
    }

    /// The event the actor's other devices get for the event its target gets.
    pub fn for_actor(self) -> FriendEvent {
        use FriendEvent::*;
        match self {
            Requested | YouRequested => YouRequested,
            Accepted | YouAccepted => YouAccepted,
            Declined | YouDeclined => YouDeclined,
            Removed | YouRemoved => YouRemoved,
        }
    }
}

pub fn friend_event(buf: &mut Vec<u8>, message_id: u64, timestamp_ms: u64, event: FriendEvent, username: &str) {
    FrameWriter::new(buf, op::FRIEND_EVENT, PUSH_ID)
        .u64(message_id)
        .u64(timestamp_ms)
        .u8(event as u8)
        .str(username)
        .finish();
}

pub fn presence(buf: &mut Vec<u8>, username: &str, online: bool) {
    FrameWriter::new(buf, op::PRESENCE, PUSH_ID).str(username).u8(online as u8).finish();
}

/// A read position as an item: `reader` has read the conversation with `peer` up to an id.
#[derive(Debug, Clone, Copy)]
pub struct Receipt<'a> {
    pub message_id: u64,
    pub timestamp_ms: u64,
    pub reader: &'a str,
    pub peer: &'a str,
    pub up_to_message_id: u64,
}

pub fn read_receipt(buf: &mut Vec<u8>, r: &Receipt) {
    FrameWriter::new(buf, op::READ_RECEIPT, PUSH_ID)
        .u64(r.message_id)
        .u64(r.timestamp_ms)
        .str(r.reader)
        .str(r.peer)
        .u64(r.up_to_message_id)
        .finish();
}

/// Tells a device that items in `(after, up_to]` were skipped (PROTOCOL.md §6, "Long absences").
pub fn sync_gap(buf: &mut Vec<u8>, after: u64, up_to: u64, skipped: u32) {
    FrameWriter::new(buf, op::SYNC_GAP, PUSH_ID).u64(after).u64(up_to).u32(skipped).finish();
}

/// One row of `DEVICE_LIST_RESULT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceEntry {
    pub device_id: u64,
    pub name: String,
    pub last_seen_ms: u64,
    pub online: bool,
    pub current: bool,
}

/// `DEVICE_LIST_RESULT`; the caller keeps the list within `--max-devices` (at most 1,000), so
/// the count always fits its `u16`.
pub fn device_list(buf: &mut Vec<u8>, request_id: u32, devices: &[DeviceEntry]) {
    let count = u16::try_from(devices.len()).expect("--max-devices is at most 1,000");
    let mut w = FrameWriter::new(buf, op::DEVICE_LIST_RESULT, request_id).u16(count);
    for d in devices {
        w = w.u64(d.device_id).str(&d.name).u64(d.last_seen_ms).u8(d.online as u8).u8(d.current as u8);
    }
    w.finish();
}

pub fn sync_done(buf: &mut Vec<u8>, count: u32) {
    FrameWriter::new(buf, op::SYNC_DONE, PUSH_ID).u32(count).finish();
}

/// `GROUP_EVENT` kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum GroupEvent {
    Joined = 1,
    Left = 2,
}

impl GroupEvent {
    pub fn from_u8(v: u8) -> Option<Self> {
        [GroupEvent::Joined, GroupEvent::Left].into_iter().find(|e| *e as u8 == v)
    }
}

/// A group's membership change as an item.
#[derive(Debug, Clone, Copy)]
pub struct GroupNotice<'a> {
    pub message_id: u64,
    pub timestamp_ms: u64,
    pub group_id: u64,
    pub event: GroupEvent,
    pub username: &'a str,
    pub group_name: &'a str,
}

pub fn group_event(buf: &mut Vec<u8>, n: &GroupNotice) {
    let GroupNotice { message_id, timestamp_ms, group_id, event, username, group_name } = *n;
    FrameWriter::new(buf, op::GROUP_EVENT, PUSH_ID)
        .u64(message_id)
        .u64(timestamp_ms)
        .u64(group_id)
        .u8(event as u8)
        .str(username)
        .str(group_name)
        .finish();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_longer_than_its_count_can_say_is_refused() {
        assert_eq!(List16::new(&vec![0u8; 65_535]).map(|l| l.count()), Some(65_535));
        assert!(List16::new(&vec![0u8; 65_536]).is_none());
    }

    /// The byte-by-byte examples of PROTOCOL.md §7.
    #[test]
    fn matches_the_protocol_examples() {
        let mut buf = Vec::new();
        let limits = ServerLimits {
            max_frame: 65536,
            max_frame_before_login: 4096,
            max_body: 4096,
            idle_timeout_secs: 120,
            login_timeout_secs: 10,
            min_kdf_iterations: 100_000,
        };
        hello_ok(&mut buf, 1, &limits);
        assert_eq!(&buf[..11], &[0, 0, 0, 48, 0x81, 0, 0, 0, 1, 0, 2]);
        assert_eq!(buf.len(), 52);
        assert_eq!(&buf[44..], &[0, 0, 0, 0x0A, 0, 0x01, 0x86, 0xA0]);

        buf.clear();
        sent(&mut buf, 9, 42, 1764108000000);
        assert_eq!(hex::encode(&buf), "000000158800000009000000000000002a0000019abd07db00");

        buf.clear();
        let d = Delivery {
            message_id: 42,
            timestamp_ms: 1764108000000,
            from: "alice",
            conversation: Conversation::Direct { to: "bob" },
            body: b"hi",
        };
        deliver(&mut buf, &d);
        assert_eq!(
            hex::encode(&buf),
            "00000026c000000000000000000000002a0000019abd07db000005616c6963650000036\
             26f6200026869"
        );

        buf.clear();
        error(&mut buf, 0, ErrorCode::FrameTooLarge, "frame of 4294967295 bytes exceeds the limit of 4096");
        assert_eq!(&buf[..11], &[0, 0, 0, 0x3C, 0x83, 0, 0, 0, 0, 0, 3]);
    }
}
