//! Check-then-parse framing: a frame is looked at from its header before its body is read.

use byteorder::{BigEndian, ByteOrder};

/// Bytes of the length prefix.
pub const LENGTH_PREFIX: usize = 4;
/// The smallest legal `length`: an opcode and a request id.
pub const MIN_LENGTH: u32 = 5;

/// What the front of a read buffer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameCheck {
    /// More bytes are needed; an expected condition, not an error.
    Incomplete,
    /// The header claims more than the limit allows; the body must not be read or allocated.
    TooLarge { length: u32 },
    /// The header claims fewer bytes than an opcode and a request id take.
    TooShort { length: u32 },
    /// A whole frame of `total` bytes (prefix included) is at the front of the buffer.
    Complete { total: usize },
}

/// Looks at the front of `buf` without allocating or consuming anything.
pub fn check(buf: &[u8], max_length: u32) -> FrameCheck {
    if buf.len() < LENGTH_PREFIX {
        return FrameCheck::Incomplete;
    }
    let length = BigEndian::read_u32(buf);
    if length > max_length {
        return FrameCheck::TooLarge { length };
    }
    if length < MIN_LENGTH {
        return FrameCheck::TooShort { length };
    }
    let total = LENGTH_PREFIX + length as usize;
    if buf.len() < total { FrameCheck::Incomplete } else { FrameCheck::Complete { total } }
}

/// The fixed part of a complete frame, and its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader<'a> {
    pub opcode: u8,
    pub request_id: u32,
    pub body: &'a [u8],
}

impl<'a> FrameHeader<'a> {
    /// Splits a frame that [`check`] reported `Complete` (exactly `total` bytes).
    pub fn parse(frame: &'a [u8]) -> Self {
        FrameHeader {
            opcode: frame[LENGTH_PREFIX],
            request_id: BigEndian::read_u32(&frame[LENGTH_PREFIX + 1..]),
            body: &frame[LENGTH_PREFIX + 5..],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_reports_each_case() {
        let cases: &[(&[u8], FrameCheck)] = &[
            (&[], FrameCheck::Incomplete),
            (&[0, 0, 0], FrameCheck::Incomplete),
            (&[0, 0, 0, 5, 2, 0, 0], FrameCheck::Incomplete),
            (&[0, 0, 0, 5, 2, 0, 0, 0, 1], FrameCheck::Complete { total: 9 }),
            (&[0, 0, 0, 5, 2, 0, 0, 0, 1, 0xAA], FrameCheck::Complete { total: 9 }),
            (&[0xFF, 0xFF, 0xFF, 0xFF], FrameCheck::TooLarge { length: u32::MAX }),
            (&[0, 0, 0, 4, 1, 2, 3, 4], FrameCheck::TooShort { length: 4 }),
        ];
        for (input, expected) in cases {
            assert_eq!(check(input, 4096), *expected, "input {input:?}");
        }
    }

    #[test]
    fn parse_splits_header_and_body() {
        let frame = [0, 0, 0, 7, 0x01, 0, 0, 0, 9, 0, 1];
        let header = FrameHeader::parse(&frame);
        assert_eq!(header.opcode, 0x01);
        assert_eq!(header.request_id, 9);
        assert_eq!(header.body, &[0, 1]);
    }
}
