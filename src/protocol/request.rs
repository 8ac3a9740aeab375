//! Decoding of client requests (PROTOCOL.md §3, "Requests").

use super::codec::{DecodeError, Reader};
use super::opcode as op;

/// Which conversation a `HISTORY` request reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryTarget<'a> {
    Direct { peer: &'a str },
    Group { group_id: u64 },
}

/// Which way a `HISTORY` page reads from its anchor id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Ids below the anchor, newest first.
    Older,
    /// Ids above the anchor, oldest first.
    Newer,
}

/// A decoded request, borrowing its strings from the read buffer.
///
/// An opcode outside the request table decodes to [`Request::Unknown`], a value that earns an
/// `UNKNOWN_OPCODE` reply rather than a dropped connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request<'a> {
    Hello { version: u16 },
    Ping,
    Register(Registration<'a>),
    LoginStart { username: &'a str, client_nonce: &'a [u8] },
    LoginFinish { client_proof: &'a [u8], device_id: u64, device_name: &'a str },
    Logout,
    ReauthStart { client_nonce: &'a [u8] },
    PasswordChange { client_proof: &'a [u8], new: Verifier<'a> },
    AccountDelete { client_proof: &'a [u8] },
    FriendRequest { username: &'a str },
    FriendAccept { username: &'a str },
    FriendDecline { username: &'a str },
    FriendRemove { username: &'a str },
    FriendList,
    Send { to: &'a str, client_msg_id: u64, body: &'a str },
    Ack { up_to_message_id: u64 },
    History { target: HistoryTarget<'a>, direction: Direction, from_message_id: u64, limit: u16 },
    Read { peer: &'a str, up_to_message_id: u64 },
    GroupCreate { name: &'a str },
    GroupInvite { group_id: u64, username: &'a str },
    GroupLeave { group_id: u64 },
    GroupMembers { group_id: u64 },
    GroupList,
    GroupSend { group_id: u64, client_msg_id: u64, body: &'a str },
    DeviceList,
    DeviceRemove { device_id: u64 },
    Unknown { opcode: u8 },
}

/// The fields of `REGISTER`: the client-derived SCRAM verifier, never a password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registration<'a> {
    pub username: &'a str,
    pub salt: &'a [u8],
    pub iterations: u32,
    pub stored_key: &'a [u8],
    pub server_key: &'a [u8],
}

/// A new SCRAM verifier (`PASSWORD_CHANGE`): the fields of `REGISTER` but the name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verifier<'a> {
    pub salt: &'a [u8],
    pub iterations: u32,
    pub stored_key: &'a [u8],
    pub server_key: &'a [u8],
}

impl<'a> Request<'a> {
    /// Decodes the body of a request with the given opcode. Never panics, whatever the bytes.
    pub fn decode(opcode: u8, body: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let request = match opcode {
            op::HELLO => Request::Hello { version: r.u16()? },
            op::PING => Request::Ping,
            op::REGISTER => Request::Register(Registration {
                username: r.str()?,
                salt: r.bytes()?,
                iterations: r.u32()?,
                stored_key: r.bytes()?,
                server_key: r.bytes()?,
            }),
            op::LOGIN_START => Request::LoginStart { username: r.str()?, client_nonce: r.bytes()? },
            op::LOGIN_FINISH => {
                Request::LoginFinish { client_proof: r.bytes()?, device_id: r.u64()?, device_name: r.str()? }
            }
            op::LOGOUT => Request::Logout,
            op::REAUTH_START => Request::ReauthStart { client_nonce: r.bytes()? },
            op::PASSWORD_CHANGE => Request::PasswordChange {
                client_proof: r.bytes()?,
                new: Verifier {
                    salt: r.bytes()?,
                    iterations: r.u32()?,
                    stored_key: r.bytes()?,
                    server_key: r.bytes()?,
                },
            },
            op::ACCOUNT_DELETE => Request::AccountDelete { client_proof: r.bytes()? },
            op::FRIEND_REQUEST => Request::FriendRequest { username: r.str()? },
            op::FRIEND_ACCEPT => Request::FriendAccept { username: r.str()? },
            op::FRIEND_DECLINE => Request::FriendDecline { username: r.str()? },
            op::FRIEND_REMOVE => Request::FriendRemove { username: r.str()? },
            op::FRIEND_LIST => Request::FriendList,
            op::SEND => Request::Send { to: r.str()?, client_msg_id: r.u64()?, body: r.str()? },
            op::ACK => Request::Ack { up_to_message_id: r.u64()? },
            op::HISTORY => {
                let target = match r.u8()? {
                    0 => HistoryTarget::Direct { peer: r.str()? },
                    1 => HistoryTarget::Group { group_id: r.u64()? },
                    _ => return Err(DecodeError::BadValue),
                };
                let direction = match r.u8()? {
                    0 => Direction::Older,
                    1 => Direction::Newer,
                    _ => return Err(DecodeError::BadValue),
                };
                Request::History { target, direction, from_message_id: r.u64()?, limit: r.u16()? }
            }
            op::READ => Request::Read { peer: r.str()?, up_to_message_id: r.u64()? },
            op::GROUP_CREATE => Request::GroupCreate { name: r.str()? },
            op::GROUP_INVITE => Request::GroupInvite { group_id: r.u64()?, username: r.str()? },
            op::GROUP_LEAVE => Request::GroupLeave { group_id: r.u64()? },
            op::GROUP_MEMBERS => Request::GroupMembers { group_id: r.u64()? },
            op::GROUP_LIST => Request::GroupList,
            op::GROUP_SEND => Request::GroupSend { group_id: r.u64()?, client_msg_id: r.u64()?, body: r.str()? },
            op::DEVICE_LIST => Request::DeviceList,
            op::DEVICE_REMOVE => Request::DeviceRemove { device_id: r.u64()? },
            other => return Ok(Request::Unknown { opcode: other }),
        };
        r.finish()?;
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::codec::FrameWriter;
    use proptest::prelude::*;

    fn body_of(frame: &[u8]) -> &[u8] {
        &frame[9..]
    }

    #[test]
    fn decodes_send() {
        let mut buf = Vec::new();
        FrameWriter::new(&mut buf, op::SEND, 9).str("bob").u64(7).str("hi").finish();
        assert_eq!(
            Request::decode(op::SEND, body_of(&buf)),
            Ok(Request::Send { to: "bob", client_msg_id: 7, body: "hi" })
        );
    }

    #[test]
    fn decodes_history_targets_and_rejects_bad_kind() {
        let mut buf = Vec::new();
        FrameWriter::new(&mut buf, op::HISTORY, 1).u8(1).u64(5).u8(1).u64(0).u16(20).finish();
        assert_eq!(
            Request::decode(op::HISTORY, body_of(&buf)),
            Ok(Request::History {
                target: HistoryTarget::Group { group_id: 5 },
                direction: Direction::Newer,
                from_message_id: 0,
                limit: 20
            })
        );
        assert_eq!(Request::decode(op::HISTORY, &[2, 0, 0]), Err(DecodeError::BadValue));
        let mut buf = Vec::new();
        FrameWriter::new(&mut buf, op::HISTORY, 1).u8(1).u64(5).u8(2).u64(0).u16(20).finish();
        assert_eq!(Request::decode(op::HISTORY, body_of(&buf)), Err(DecodeError::BadValue));
    }

    #[test]
    fn unknown_opcode_is_a_value() {
        assert_eq!(Request::decode(0x7F, &[1, 2, 3]), Ok(Request::Unknown { opcode: 0x7F }));
    }

    #[test]
    fn empty_bodies_must_be_empty() {
        assert_eq!(Request::decode(op::PING, &[]), Ok(Request::Ping));
        assert_eq!(Request::decode(op::PING, &[0]), Err(DecodeError::TrailingBytes));
    }

    proptest! {
        #[test]
        fn never_panics_on_any_bytes(opcode in any::<u8>(), body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Request::decode(opcode, &body);
        }

        #[test]
        fn group_send_round_trips(group_id in any::<u64>(), id in any::<u64>(), body in ".{0,300}") {
            let mut buf = Vec::new();
            FrameWriter::new(&mut buf, op::GROUP_SEND, 1).u64(group_id).u64(id).str(&body).finish();
            prop_assert_eq!(
                Request::decode(op::GROUP_SEND, body_of(&buf)),
                Ok(Request::GroupSend { group_id, client_msg_id: id, body: &body })
            );
        }
    }
}
