//! WebSocket framing (RFC 6455 §5) over a transport: the payloads of the client's binary
//! messages, in order, are the protocol's byte stream; each frame the server sends goes out as
//! one binary message. Headers are parsed and written by tungstenite's `FrameHeader`; the
//! rest (masking, fragments, control frames, limits) is here, because tungstenite's
//! `WebSocket` owns its stream and buffers, and ours belong to the transport and the loop.
//!
//! Every violation has one answer: a close frame with the RFC's status code, then the close
//! of the connection (see [`Violation`]).

use super::write_queue::WriteQueue;
use std::io::Cursor;
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};

/// Largest control frame payload (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: u64 = 125;

/// Why the client's WebSocket stream was refused; each is answered with a close frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// The client closed the WebSocket (its close frame is echoed).
    PeerClosed,
    /// A frame the RFC forbids: unmasked, reserved bits or opcodes, a fragmented or oversized
    /// control frame, a continuation with no message or a message inside another (1002).
    Protocol(&'static str),
    /// A text message: the protocol is binary (1003).
    Text,
    /// A message larger than the largest protocol frame allowed (1009).
    TooBig,
}

impl Violation {
    fn close_code(self) -> CloseCode {
        match self {
            Violation::PeerClosed => CloseCode::Normal,
            Violation::Protocol(_) => CloseCode::Protocol,
            Violation::Text => CloseCode::Unsupported,
            Violation::TooBig => CloseCode::Size,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Violation::PeerClosed => "the client closed the WebSocket",
            Violation::Protocol(why) => why,
            Violation::Text => "text messages are not accepted: send each frame as a binary message",
            Violation::TooBig => "a WebSocket message is larger than the largest frame allowed",
        }
    }
}

pub struct WebSocket {
    /// Received bytes not yet decoded (a frame still arriving).
    inbound: Vec<u8>,
    /// Inside a fragmented binary message.
    in_message: bool,
    /// Payload bytes of the message being received so far.
    message_len: u64,
    /// Largest message accepted: the largest protocol frame, length prefix included.
    max_message: u64,
    /// A close frame has been queued: nothing may follow it.
    close_sent: bool,
}

impl WebSocket {
    pub fn new(max_message: u64) -> WebSocket {
        WebSocket { inbound: Vec::new(), in_message: false, message_len: 0, max_message, close_sent: false }
    }

    /// The close frame that ends a WebSocket the server closes, unless one was sent already.
    pub fn goodbye(&mut self, out: &mut Vec<u8>, going_away: bool) {
        if !std::mem::replace(&mut self.close_sent, true) {
            let code = if going_away { CloseCode::Away } else { CloseCode::Normal };
            close_frame(out, code, "");
        }
    }

    /// Decodes the received `data`: appends message payloads to `payload` and control answers
    /// (pong, the close echo) to `out`. A violation queues its close frame and ends the stream.
    pub fn decode(&mut self, data: &[u8], payload: &mut Vec<u8>, out: &mut Vec<u8>) -> Result<(), Violation> {
        let mut inbound = std::mem::take(&mut self.inbound);
        inbound.extend_from_slice(data);
        let mut used = 0;
        let result = loop {
            match self.next_frame(&inbound[used..], payload, out) {
                Ok(Some(n)) => used += n,
                Ok(None) => break Ok(()),
                Err(violation) => break Err(violation),
            }
        };
        inbound.drain(..used);
        // An empty buffer is given back: idle connections hold none.
        self.inbound = if inbound.is_empty() { Vec::new() } else { inbound };
        if let Err(violation) = result {
            close_frame(out, violation.close_code(), violation.describe());
            self.close_sent = true;
        }
        result
    }

    /// Decodes one frame at the start of `buf`; returns its size, or `None` while incomplete.
    fn next_frame(&mut self, buf: &[u8], payload: &mut Vec<u8>, out: &mut Vec<u8>) -> Result<Option<usize>, Violation> {
        let mut cursor = Cursor::new(buf);
        let (header, length) = match FrameHeader::parse(&mut cursor) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => return Ok(None),
            Err(_) => return Err(Violation::Protocol("a reserved WebSocket opcode")),
        };
        let header_len = cursor.position() as usize;
        if header.rsv1 || header.rsv2 || header.rsv3 {
            return Err(Violation::Protocol("reserved bits set without an extension"));
        }
        let Some(mask) = header.mask else {
            return Err(Violation::Protocol("a client frame must be masked"));
        };
        match header.opcode {
            OpCode::Control(_) if !header.is_final || length > MAX_CONTROL_PAYLOAD => {
                return Err(Violation::Protocol("a control frame is fragmented or longer than 125 bytes"));
            }
            OpCode::Data(Data::Text) => return Err(Violation::Text),
            OpCode::Data(Data::Binary) if self.in_message => {
                return Err(Violation::Protocol("a new message began inside a fragmented one"));
            }
            OpCode::Data(Data::Continue) if !self.in_message => {
                return Err(Violation::Protocol("a continuation frame outside a message"));
            }
            OpCode::Data(Data::Binary | Data::Continue) => {
                let total = if self.in_message { self.message_len.saturating_add(length) } else { length };
                if total > self.max_message {
                    return Err(Violation::TooBig);
                }
            }
            _ => {}
        }
        // Checked above against max_message or 125: it fits in memory.
        let length = length as usize;
        if buf.len() < header_len + length {
            return Ok(None);
        }
        let body = &buf[header_len..header_len + length];
        match header.opcode {
            OpCode::Data(_) => {
                let start = payload.len();
                payload.extend_from_slice(body);
                unmask(&mut payload[start..], mask);
                self.message_len = if self.in_message { self.message_len + length as u64 } else { length as u64 };
                self.in_message = !header.is_final;
            }
            OpCode::Control(Control::Ping) => {
                let mut data = body.to_vec();
                unmask(&mut data, mask);
                control_frame(out, Control::Pong, &data);
            }
            OpCode::Control(Control::Close) => {
                return Err(Violation::PeerClosed);
            }
            OpCode::Control(_) => {}
        }
        Ok(Some(header_len + length))
    }
}

/// Moves whole protocol frames from the front of `queue` into `out`, each as one binary
/// message, until `out` holds about `budget` bytes. A queue chunk always starts at a frame
/// boundary and holds whole frames, so frames are taken whole.
pub fn encode_frames(queue: &mut WriteQueue, out: &mut Vec<u8>, budget: usize) {
    while out.len() < budget {
        let Some(front) = queue.front() else { return };
        let Some(prefix) = front.get(..4) else { return };
        let frame_len = (4 + u32::from_be_bytes(prefix.try_into().expect("four bytes")) as usize).min(front.len());
        let header = FrameHeader { is_final: true, opcode: OpCode::Data(Data::Binary), ..FrameHeader::default() };
        header.format(frame_len as u64, out).expect("writing to a Vec");
        out.extend_from_slice(&front[..frame_len]);
        queue.advance(frame_len);
    }
}

/// Appends a close frame with `code` and a reason (cut to fit a control frame).
pub fn close_frame(out: &mut Vec<u8>, code: CloseCode, reason: &str) {
    let mut data = u16::from(code).to_be_bytes().to_vec();
    let mut cut = reason.len().min(MAX_CONTROL_PAYLOAD as usize - 2);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    data.extend_from_slice(&reason.as_bytes()[..cut]);
    control_frame(out, Control::Close, &data);
}

fn control_frame(out: &mut Vec<u8>, control: Control, data: &[u8]) {
    let header = FrameHeader { is_final: true, opcode: OpCode::Control(control), ..FrameHeader::default() };
    header.format(data.len() as u64, out).expect("writing to a Vec");
    out.extend_from_slice(data);
}

fn unmask(data: &mut [u8], mask: [u8; 4]) {
    for (i, byte) in data.iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame.
    fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let mut out = vec![first];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        out
    }

    fn decode_all(input: &[u8]) -> (Result<(), Violation>, Vec<u8>, Vec<u8>) {
        let mut ws = WebSocket::new(100);
        let (mut payload, mut out) = (Vec::new(), Vec::new());
        let result = ws.decode(input, &mut payload, &mut out);
        (result, payload, out)
    }

    #[test]
    fn binary_messages_and_fragments_become_one_byte_stream() {
        let mut input = client_frame(0x82, b"abc");
        input.extend(client_frame(0x02, b"de"));
        input.extend(client_frame(0x89, b"hi"));
        input.extend(client_frame(0x80, b"f"));
        let (result, payload, out) = decode_all(&input);
        assert_eq!(result, Ok(()));
        assert_eq!(payload, b"abcdef");
        // The ping in the middle of the fragments is answered with its data.
        assert_eq!(out, [0x8A, 2, b'h', b'i']);
    }

    #[test]
    fn bytes_arriving_one_at_a_time_decode_the_same() {
        let input = client_frame(0x82, b"hello");
        let mut ws = WebSocket::new(100);
        let (mut payload, mut out) = (Vec::new(), Vec::new());
        for byte in input {
            ws.decode(&[byte], &mut payload, &mut out).unwrap();
        }
        assert_eq!(payload, b"hello");
    }

    #[test]
    fn each_violation_gets_its_close_code() {
        let mut unmasked = client_frame(0x82, b"x");
        unmasked[1] &= 0x7F;
        unmasked.drain(2..6);
        let cases: [(&str, Vec<u8>, Violation, u16); 7] = [
            ("unmasked", unmasked, Violation::Protocol("a client frame must be masked"), 1002),
            ("text", client_frame(0x81, b"hi"), Violation::Text, 1003),
            ("too big", client_frame(0x82, &[0; 101]), Violation::TooBig, 1009),
            (
                "too big in pieces",
                [client_frame(0x02, &[0; 60]), client_frame(0x80, &[0; 41])].concat(),
                Violation::TooBig,
                1009,
            ),
            (
                "stray continuation",
                client_frame(0x80, b"x"),
                Violation::Protocol("a continuation frame outside a message"),
                1002,
            ),
            (
                "reserved bit",
                client_frame(0xC2, b"x"),
                Violation::Protocol("reserved bits set without an extension"),
                1002,
            ),
            ("close", client_frame(0x88, &[3, 232]), Violation::PeerClosed, 1000),
        ];
        for (name, input, violation, code) in cases {
            let (result, _, out) = decode_all(&input);
            assert_eq!(result, Err(violation), "{name}");
            assert_eq!(out[0], 0x88, "{name}: a close frame");
            assert_eq!(u16::from_be_bytes([out[2], out[3]]), code, "{name}");
        }
    }

    #[test]
    fn each_queued_frame_leaves_as_one_binary_message() {
        let mut queue = WriteQueue::default();
        queue.push(&[0, 0, 0, 5, 0x82, 0, 0, 0, 1, 0, 0, 0, 6, 0x80, 0, 0, 0, 2, 9]);
        let mut out = Vec::new();
        encode_frames(&mut queue, &mut out, 1 << 16);
        assert_eq!(out[..2], [0x82, 9]);
        assert_eq!(out[2..11], [0, 0, 0, 5, 0x82, 0, 0, 0, 1]);
        assert_eq!(out[11..13], [0x82, 10]);
        assert!(queue.is_empty());
    }
}
