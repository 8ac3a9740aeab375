//! Big-endian field reading and frame writing (PROTOCOL.md §1).

use byteorder::{BigEndian, ByteOrder};

/// Why a frame body did not parse. Every variant is answered with `MALFORMED_FRAME`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The body ended before a field did.
    Truncated,
    /// Bytes were left after the last field.
    TrailingBytes,
    /// A `str` field was not valid UTF-8.
    InvalidUtf8,
    /// An enumerated field held a value outside its table.
    BadValue,
}

impl DecodeError {
    /// A sentence for the `ERROR` frame's message.
    pub fn describe(self) -> &'static str {
        match self {
            DecodeError::Truncated => "the frame body ended before its last field",
            DecodeError::TrailingBytes => "the frame body has bytes after its last field",
            DecodeError::InvalidUtf8 => "a text field is not valid UTF-8",
            DecodeError::BadValue => "a field holds a value outside its documented range",
        }
    }
}

/// Reads fields from a frame body, front to back, without allocating.
pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(body: &'a [u8]) -> Self {
        Reader { rest: body }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.rest.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(BigEndian::read_u16(self.take(2)?))
    }

    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(BigEndian::read_u32(self.take(4)?))
    }

    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(BigEndian::read_u64(self.take(8)?))
    }

    /// A `bytes` field: `u16` length, then the bytes.
    pub fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.u16()? as usize;
        self.take(len)
    }

    /// A `str` field: like `bytes`, and validated as UTF-8.
    pub fn str(&mut self) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.bytes()?).map_err(|_| DecodeError::InvalidUtf8)
    }

    /// Succeeds only if every byte was consumed: a body holds exactly its fields.
    pub fn finish(self) -> Result<(), DecodeError> {
        if self.rest.is_empty() { Ok(()) } else { Err(DecodeError::TrailingBytes) }
    }
}

/// Appends one frame to a byte buffer; the length prefix is patched in by [`FrameWriter::finish`].
///
/// Writing straight into the destination buffer (a connection's write queue or a shared
/// staging area) means encoding a response costs no allocation of its own.
pub struct FrameWriter<'a> {
    buf: &'a mut Vec<u8>,
    start: usize,
}

impl<'a> FrameWriter<'a> {
    pub fn new(buf: &'a mut Vec<u8>, opcode: u8, request_id: u32) -> Self {
        let start = buf.len();
        buf.extend_from_slice(&[0, 0, 0, 0, opcode]);
        buf.extend_from_slice(&request_id.to_be_bytes());
        FrameWriter { buf, start }
    }

    pub fn u8(self, v: u8) -> Self {
        self.buf.push(v);
        self
    }

    pub fn u16(self, v: u16) -> Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn u32(self, v: u32) -> Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn u64(self, v: u64) -> Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// A `bytes` field. Callers keep fields under 64 KiB; longer input is cut at the limit
    /// rather than producing a length prefix that lies.
    pub fn bytes(self, v: &[u8]) -> Self {
        let v = &v[..v.len().min(u16::MAX as usize)];
        self.buf.extend_from_slice(&(v.len() as u16).to_be_bytes());
        self.buf.extend_from_slice(v);
        self
    }

    pub fn str(self, v: &str) -> Self {
        self.bytes(v.as_bytes())
    }

    /// Writes the length prefix; returns the frame's total size including the prefix.
    pub fn finish(self) -> usize {
        let total = self.buf.len() - self.start;
        let length = (total - 4) as u32;
        self.buf[self.start..self.start + 4].copy_from_slice(&length.to_be_bytes());
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_field_type() {
        let mut buf = Vec::new();
        let total =
            FrameWriter::new(&mut buf, 0x42, 7).u8(1).u16(2).u32(3).u64(u64::MAX).bytes(&[9, 9]).str("héllo").finish();
        assert_eq!(total, buf.len());
        assert_eq!(&buf[..4], &((total - 4) as u32).to_be_bytes());
        assert_eq!(buf[4], 0x42);
        let mut r = Reader::new(&buf[9..]);
        assert_eq!(r.u8(), Ok(1));
        assert_eq!(r.u16(), Ok(2));
        assert_eq!(r.u32(), Ok(3));
        assert_eq!(r.u64(), Ok(u64::MAX));
        assert_eq!(r.bytes(), Ok(&[9u8, 9][..]));
        assert_eq!(r.str(), Ok("héllo"));
        assert_eq!(r.finish(), Ok(()));
    }

    #[test]
    fn rejects_short_trailing_and_bad_utf8() {
        assert_eq!(Reader::new(&[0]).u16(), Err(DecodeError::Truncated));
        assert_eq!(Reader::new(&[0, 3, b'a']).str(), Err(DecodeError::Truncated));
        assert_eq!(Reader::new(&[0, 1, 0xFF]).str(), Err(DecodeError::InvalidUtf8));
        assert_eq!(Reader::new(&[1]).finish(), Err(DecodeError::TrailingBytes));
    }
}
