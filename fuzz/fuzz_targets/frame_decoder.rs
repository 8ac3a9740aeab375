//! Fuzzes the first code that touches a client's bytes: `frame::check`, `FrameHeader::parse`
//! and `Request::decode`, over an arbitrary byte stream and each frame limit the server uses.
//!
//! Besides "never panics", it checks:
//! - `check` agrees with the length prefix: `TooLarge` exactly above the limit, `TooShort`
//!   exactly below 5, `Complete` with `total = 4 + length`, `Incomplete` only when bytes are
//!   missing, and every shorter prefix of a complete frame is `Incomplete`;
//! - `parse` splits the frame where the header says;
//! - a request that decodes re-encodes, through the crate's own client encoders, to exactly
//!   the bytes it came from, and `Unknown` is decoded for opcodes outside the table only;
//! - a body that decodes stops decoding with one byte more (trailing bytes) or one byte less.

#![no_main]

use im_server::protocol::codec::DecodeError;
use im_server::protocol::frame::{self, FrameCheck, FrameHeader, LENGTH_PREFIX, MIN_LENGTH};
use im_server::protocol::request::Request;
use im_server::protocol::{client, opcode as op};
use libfuzzer_sys::fuzz_target;

/// The limits the server applies: before login, after login (default), and none at all.
const LIMITS: [u32; 3] = [4_096, 65_536, u32::MAX];

/// Every request opcode of PROTOCOL.md §3.
const REQUEST_OPCODES: [u8; 24] = [
    op::HELLO,
    op::PING,
    op::REGISTER,
    op::LOGIN_START,
    op::LOGIN_FINISH,
    op::LOGOUT,
    op::REAUTH_START,
    op::PASSWORD_CHANGE,
    op::ACCOUNT_DELETE,
    op::FRIEND_REQUEST,
    op::FRIEND_ACCEPT,
    op::FRIEND_DECLINE,
    op::FRIEND_REMOVE,
    op::FRIEND_LIST,
    op::SEND,
    op::ACK,
    op::HISTORY,
    op::READ,
    op::GROUP_CREATE,
    op::GROUP_INVITE,
    op::GROUP_LEAVE,
    op::GROUP_MEMBERS,
    op::GROUP_LIST,
    op::GROUP_SEND,
];

fuzz_target!(|data: &[u8]| {
    for limit in LIMITS {
        walk(data, limit);
    }
});

/// Cuts `data` into frames the way the server's read loop does, checking each step.
fn walk(data: &[u8], limit: u32) {
    let mut rest = data;
    loop {
        let outcome = frame::check(rest, limit);
        if rest.len() < LENGTH_PREFIX {
            assert_eq!(outcome, FrameCheck::Incomplete, "fewer than 4 bytes");
            return;
        }
        let length = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
        match outcome {
            FrameCheck::Incomplete => {
                assert!((MIN_LENGTH..=limit).contains(&length), "Incomplete for length {length}");
                assert!(rest.len() < LENGTH_PREFIX + length as usize, "Incomplete with the whole frame there");
                return;
            }
            FrameCheck::TooLarge { length: claimed } => {
                assert_eq!(claimed, length);
                assert!(length > limit, "TooLarge for {length} under limit {limit}");
                return;
            }
            FrameCheck::TooShort { length: claimed } => {
                assert_eq!(claimed, length);
                assert!(length < MIN_LENGTH && length <= limit, "TooShort for {length}");
                return;
            }
            FrameCheck::Complete { total } => {
                assert_eq!(total, LENGTH_PREFIX + length as usize);
                assert!((MIN_LENGTH..=limit).contains(&length));
                assert!(total <= rest.len());
                // A frame split anywhere parses the same: each shorter prefix waits for more.
                for cut in [0, 1, LENGTH_PREFIX - 1, LENGTH_PREFIX, total / 2, total - 1] {
                    assert_eq!(frame::check(&rest[..cut], limit), FrameCheck::Incomplete, "prefix {cut} of {total}");
                }
                check_frame(&rest[..total]);
                rest = &rest[total..];
            }
        }
    }
}

/// Parses and decodes one complete frame and checks the result against its bytes.
fn check_frame(bytes: &[u8]) {
    let header = FrameHeader::parse(bytes);
    assert_eq!(header.opcode, bytes[4]);
    assert_eq!(header.request_id, u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]));
    assert_eq!(header.body, &bytes[9..]);
    let known = REQUEST_OPCODES.contains(&header.opcode);
    let decoded = Request::decode(header.opcode, header.body);
    match decoded {
        Ok(Request::Unknown { opcode }) => {
            assert_eq!(opcode, header.opcode);
            assert!(!known, "a request opcode {opcode:#04x} decoded as Unknown");
        }
        Ok(request) => {
            assert!(known, "opcode {:#04x} decoded as {request:?}", header.opcode);
            let mut again = Vec::new();
            encode(&mut again, header.request_id, &request);
            assert_eq!(again, bytes, "{request:?} does not re-encode to its bytes");
            // A body holds exactly its fields: one byte more or one byte less never decodes.
            let mut longer = header.body.to_vec();
            longer.push(0);
            assert_eq!(Request::decode(header.opcode, &longer), Err(DecodeError::TrailingBytes));
            if let Some((_, shorter)) = header.body.split_last() {
                assert!(Request::decode(header.opcode, shorter).is_err(), "{request:?} decoded one byte short");
            }
        }
        Err(_) => assert!(known, "opcode {:#04x} outside the table failed to decode", header.opcode),
    }
}

/// Encodes a decoded request with the client encoders of `protocol::client`.
fn encode(buf: &mut Vec<u8>, id: u32, request: &Request) {
    match *request {
        Request::Hello { version } => client::hello(buf, id, version),
        Request::Ping => client::ping(buf, id),
        Request::Register(ref r) => client::register(buf, id, r),
        Request::LoginStart { username, client_nonce } => client::login_start(buf, id, username, client_nonce),
        Request::LoginFinish { client_proof, device_id, device_name } => {
            client::login_finish(buf, id, client_proof, device_id, device_name)
        }
        Request::Logout => client::logout(buf, id),
        Request::FriendRequest { username } => client::friend_request(buf, id, username),
        Request::FriendAccept { username } => client::friend_accept(buf, id, username),
        Request::FriendDecline { username } => client::friend_decline(buf, id, username),
        Request::FriendRemove { username } => client::friend_remove(buf, id, username),
        Request::FriendList => client::friend_list(buf, id),
        Request::Send { to, client_msg_id, body } => client::send(buf, id, to, client_msg_id, body),
        Request::Ack { up_to_message_id } => client::ack(buf, id, up_to_message_id),
        Request::History { target, direction, from_message_id, limit } => {
            client::history(buf, id, target, direction, from_message_id, limit)
        }
        Request::Read { peer, up_to_message_id } => client::read(buf, id, peer, up_to_message_id),
        Request::GroupCreate { name } => client::group_create(buf, id, name),
        Request::GroupInvite { group_id, username } => client::group_invite(buf, id, group_id, username),
        Request::GroupLeave { group_id } => client::group_leave(buf, id, group_id),
        Request::GroupMembers { group_id } => client::group_members(buf, id, group_id),
        Request::GroupList => client::group_list(buf, id),
        Request::GroupSend { group_id, client_msg_id, body } => {
            client::group_send(buf, id, group_id, client_msg_id, body)
        }
        Request::DeviceList => client::device_list(buf, id),
        Request::DeviceRemove { device_id } => client::device_remove(buf, id, device_id),
        Request::Unknown { .. } => unreachable!("handled by the caller"),
    }
}
