//! WebSocket for the integration tests (RFC 6455 from the client's side, written out here so
//! the tests check the server against the RFC rather than against a library's reading of it).
//!
//! [`connect`] gives any test a [`Client`] whose frames travel as WebSocket messages: two pump
//! threads carry the test's plain bytes to the server, one protocol frame per masked binary
//! message, and back, checking that every message the server sends holds exactly one frame.

use super::{Client, READ_TIMEOUT};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::thread;

pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

/// One message (or control frame) as the server sent it.
#[derive(Debug, PartialEq, Eq)]
pub struct WsFrame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl WsFrame {
    /// The status code of a close frame.
    pub fn close_code(&self) -> u16 {
        assert_eq!(self.opcode, CLOSE, "not a close frame: {self:?}");
        u16::from_be_bytes([self.payload[0], self.payload[1]])
    }
}

/// Sends `head` (a whole request head) and returns the status code and the response head.
pub fn request(port: u16, head: &str) -> (u16, String, TcpStream) {
    let mut socket = TcpStream::connect(("127.0.0.1", port)).expect("connect to the HTTP port");
    socket.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    socket.write_all(head.as_bytes()).unwrap();
    let mut response = Vec::new();
    let mut byte = [0u8];
    while !response.ends_with(b"\r\n\r\n") {
        match socket.read(&mut byte) {
            Ok(1) => response.push(byte[0]),
            other => panic!("the response head ended early ({other:?}): {:?}", String::from_utf8_lossy(&response)),
        }
    }
    let text = String::from_utf8(response).expect("an ASCII head");
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status code");
    (status, text, socket)
}

/// The head of an upgrade request to `/ws` from a page of `origin` (none if empty).
pub fn upgrade_head(port: u16, origin: &str) -> String {
    let origin = if origin.is_empty() { String::new() } else { format!("Origin: {origin}\r\n") };
    format!(
        "GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{origin}\r\n"
    )
}

/// An upgraded socket, as the page served on `port` would open it.
pub fn open(port: u16) -> TcpStream {
    let (status, head, socket) = request(port, &upgrade_head(port, &format!("http://127.0.0.1:{port}")));
    assert_eq!(status, 101, "{head}");
    assert!(head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"), "{head}");
    socket
}

/// Writes one frame; client frames are masked unless `masked` is false (a violation).
pub fn send(socket: &mut TcpStream, fin: bool, opcode: u8, payload: &[u8], masked: bool) {
    let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xFFFF => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    if masked {
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    } else {
        out.extend_from_slice(payload);
    }
    socket.write_all(&out).unwrap();
}

/// Reads one frame from the server, or `None` once it has closed the connection.
pub fn read(socket: &mut TcpStream) -> Option<WsFrame> {
    let mut head = [0u8; 2];
    if socket.read_exact(&mut head).is_err() {
        return None;
    }
    assert_eq!(head[1] & 0x80, 0, "a server frame must not be masked");
    let length = match head[1] & 0x7F {
        126 => {
            let mut b = [0u8; 2];
            socket.read_exact(&mut b).unwrap();
            u16::from_be_bytes(b) as usize
        }
        127 => {
            let mut b = [0u8; 8];
            socket.read_exact(&mut b).unwrap();
            u64::from_be_bytes(b) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0u8; length];
    socket.read_exact(&mut payload).unwrap();
    Some(WsFrame { fin: head[0] & 0x80 != 0, opcode: head[0] & 0x0F, payload })
}

/// Reads until the server closes the connection; returns the close frame it sent, if any.
pub fn read_until_closed(socket: &mut TcpStream) -> Option<WsFrame> {
    let mut close = None;
    while let Some(frame) = read(socket) {
        if frame.opcode == CLOSE {
            close = Some(frame);
        }
    }
    close
}

/// A [`Client`] whose frames travel over a WebSocket to the server's HTTP port.
pub fn connect(port: u16) -> Client {
    let server = open(port);
    server.set_read_timeout(None).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let local = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (pump, _) = listener.accept().unwrap();
    let (mut up_from, mut up_to) = (pump.try_clone().unwrap(), server.try_clone().unwrap());
    thread::spawn(move || {
        // Test → server: one complete protocol frame per binary message.
        let mut pending = Vec::new();
        let mut buf = [0u8; 64 * 1024];
        while let Ok(n) = up_from.read(&mut buf) {
            if n == 0 {
                break;
            }
            pending.extend_from_slice(&buf[..n]);
            while pending.len() >= 4 {
                let total = 4 + u32::from_be_bytes(pending[..4].try_into().unwrap()) as usize;
                if pending.len() < total {
                    break;
                }
                send(&mut up_to, true, BINARY, &pending[..total], true);
                pending.drain(..total);
            }
        }
        let _ = up_to.shutdown(Shutdown::Write);
    });
    let (mut down_from, mut down_to) = (server, pump);
    thread::spawn(move || {
        // Server → test: each message must be exactly one frame.
        while let Some(frame) = read(&mut down_from) {
            match frame.opcode {
                BINARY => {
                    assert!(frame.fin, "the server fragmented a message");
                    let length = u32::from_be_bytes(frame.payload[..4].try_into().unwrap()) as usize;
                    assert_eq!(frame.payload.len(), 4 + length, "a server message is not exactly one frame");
                    if down_to.write_all(&frame.payload).is_err() {
                        break;
                    }
                }
                CLOSE => break,
                other => panic!("unexpected WebSocket opcode {other} from the server"),
            }
        }
        let _ = down_to.shutdown(Shutdown::Both);
    });
    Client::over(local)
}
