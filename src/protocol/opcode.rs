//! The opcode table of PROTOCOL.md §3. Requests are 0x01–0x7F, responses 0x80–0xBF, pushes
//! 0xC0–0xFF.

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

/// Whether a server frame's opcode marks it as a push rather than a response.
pub fn is_push(opcode: u8) -> bool {
    opcode >= 0xC0
}
