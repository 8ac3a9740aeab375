//! The wire format of PROTOCOL.md, with no IO: framing, field codec, opcodes, error codes,
//! request decoding and response encoding.

pub mod client;
pub mod codec;
pub mod error_code;
pub mod frame;
pub mod opcode;
pub mod request;
pub mod response;

pub use codec::{DecodeError, FrameWriter, Reader};
pub use error_code::ErrorCode;
pub use frame::{FrameCheck, FrameHeader};
pub use request::Request;

/// The protocol version this server speaks; `HELLO` must carry it.
pub const PROTOCOL_VERSION: u16 = 2;
