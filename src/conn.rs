//! One client connection: its socket, protocol state, read buffer and write queue.
//!
//! Buffers are allocated only while they hold bytes and given back when drained, so an idle
//! connection costs little more than this struct.

use crate::scram::Key;
use crate::store::{DeviceId, MessageId, UserId};
use crate::sync::Backlog;
use mio::net::TcpStream;
use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::net::IpAddr;
use std::rc::Rc;
use std::time::Instant;

/// Where a connection is in the protocol (PROTOCOL.md §2).
#[derive(Debug)]
pub enum ConnState {
    AwaitHello,
    Unauthenticated,
    Authenticating(Box<PendingLogin>),
    Authenticated { user: UserId, device: DeviceId },
}

/// What the server remembers between `LOGIN_START` and `LOGIN_FINISH`.
#[derive(Debug)]
pub struct PendingLogin {
    /// The name asked for, lowercased: a failure is counted against it even if no such user
    /// exists.
    pub name_key: String,
    /// `None` for an unknown name: the login will fail like a wrong password.
    pub user: Option<(UserId, String)>,
    pub stored_key: Key,
    pub server_key: Key,
    pub auth_message: Vec<u8>,
}

/// Why a connection is being closed; logged, and used to pick what is sent first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    PeerClosed,
    IoError,
    ProtocolError,
    IdleTimeout,
    TooManyAttempts,
    LoginTimeout,
    FrameTimeout,
    SlowReader,
    ShuttingDown,
    DeviceRemoved,
}

impl CloseReason {
    /// Whether the connection is kept a little after its session ends, for the client to read
    /// the frames that say why it is closed: not when the peer is gone, nor when the server
    /// is stopping.
    pub fn lingers(self) -> bool {
        !matches!(self, CloseReason::PeerClosed | CloseReason::IoError | CloseReason::ShuttingDown)
    }
}

enum Chunk {
    Owned(Vec<u8>),
    Shared(Rc<[u8]>),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Owned(v) => v,
            Chunk::Shared(rc) => rc,
        }
    }
}

/// Bytes above which an owned chunk is not extended further, so a write queue is never one
/// huge reallocation.
const OWNED_CHUNK_LIMIT: usize = 64 * 1024;
/// Chunks a write queue makes room for when it starts filling.
const QUEUE_CHUNKS_RESERVED: usize = 16;
/// Slices handed to one `writev`.
const MAX_IOVECS: usize = 64;

pub struct Conn {
    pub socket: TcpStream,
    pub peer: IpAddr,
    pub state: ConnState,
    /// When the last complete frame arrived: the idle timeout counts from here. Bytes alone do
    /// not count, or a client sending one byte a second would never be idle.
    pub last_frame_at: Instant,
    /// When the first byte of the frame still being received arrived, if one is: the frame
    /// timeout counts from here.
    pub partial_frame_since: Option<Instant>,
    /// When the connection last became unauthenticated (accepted, or logged out): the login
    /// timeout counts from here.
    pub unauthenticated_since: Instant,
    /// Since when the write queue has been above its soft limit.
    pub over_soft_limit_since: Option<Instant>,
    /// Reading is paused while this connection's own output is above the soft limit.
    pub read_paused: bool,
    pub failed_logins: u8,
    /// The backlog still being pushed after login, if any.
    pub backlog: Option<Box<Backlog>>,
    /// Every item for this connection's device with an id up to here has been queued on it:
    /// an `ACK` is clamped to it, so it can never acknowledge what was not sent.
    pub sent_through: MessageId,
    /// Until when a closed connection whose session has ended is kept to flush its last frames.
    pub linger_until: Option<Instant>,
    closing: Option<CloseReason>,
    /// Set once the connection's last frame is queued: nothing is queued after it.
    sealed: bool,
    read_buf: Vec<u8>,
    out: VecDeque<Chunk>,
    out_offset: usize,
    out_len: usize,
    writable_interest: bool,
}

impl Conn {
    pub fn new(socket: TcpStream, peer: IpAddr, now: Instant) -> Self {
        Conn {
            socket,
            peer,
            state: ConnState::AwaitHello,
            last_frame_at: now,
            partial_frame_since: None,
            unauthenticated_since: now,
            over_soft_limit_since: None,
            read_paused: false,
            failed_logins: 0,
            backlog: None,
            sent_through: 0,
            linger_until: None,
            closing: None,
            sealed: false,
            read_buf: Vec::new(),
            out: VecDeque::new(),
            out_offset: 0,
            out_len: 0,
            writable_interest: false,
        }
    }

    pub fn user(&self) -> Option<UserId> {
        match self.state {
            ConnState::Authenticated { user, .. } => Some(user),
            _ => None,
        }
    }

    /// The device a logged-in connection speaks for.
    pub fn device(&self) -> Option<DeviceId> {
        match self.state {
            ConnState::Authenticated { device, .. } => Some(device),
            _ => None,
        }
    }

    pub fn is_authenticated(&self) -> bool {
        matches!(self.state, ConnState::Authenticated { .. })
    }

    /// Marks the connection to be closed at the end of the batch. The first reason wins.
    pub fn close(&mut self, reason: CloseReason) {
        self.closing.get_or_insert(reason);
    }

    pub fn closing(&self) -> Option<CloseReason> {
        self.closing
    }

    /// Takes the partial frame kept from earlier reads (leaving none).
    pub fn take_read_buf(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.read_buf)
    }

    /// Keeps the unparsed tail of a read for the next one. An empty tail frees the buffer; a
    /// tail that begins a new frame starts the frame timeout at `now`.
    pub fn keep_read_buf(&mut self, mut buf: Vec<u8>, now: Instant) {
        if buf.is_empty() {
            buf = Vec::new();
            self.partial_frame_since = None;
        } else {
            self.partial_frame_since.get_or_insert(now);
        }
        self.read_buf = buf;
    }

    /// Records a complete frame: the idle timer restarts, and whatever follows is a new frame.
    pub fn frame_received(&mut self, now: Instant) {
        self.last_frame_at = now;
        self.partial_frame_since = None;
    }

    /// Appends frame bytes to the write queue.
    pub fn enqueue(&mut self, bytes: &[u8]) {
        if self.sealed {
            return;
        }
        self.out_len += bytes.len();
        if let Some(Chunk::Owned(last)) = self.out.back_mut()
            && last.len() < OWNED_CHUNK_LIMIT
        {
            last.extend_from_slice(bytes);
            return;
        }
        let mut v = Vec::with_capacity(bytes.len().max(512));
        v.extend_from_slice(bytes);
        self.push_chunk(Chunk::Owned(v));
    }

    /// Appends a frame shared with other connections, without copying it.
    pub fn enqueue_shared(&mut self, frame: &Rc<[u8]>) {
        if self.sealed {
            return;
        }
        self.out_len += frame.len();
        self.push_chunk(Chunk::Shared(Rc::clone(frame)));
    }

    fn push_chunk(&mut self, chunk: Chunk) {
        if self.out.capacity() == 0 {
            // One allocation for a typical batch instead of growing 1, 2, 4, 8: a group message
            // reaches each member as one more shared chunk per loop iteration.
            self.out.reserve(QUEUE_CHUNKS_RESERVED);
        }
        self.out.push_back(chunk);
    }

    /// Replaces every frame not yet begun on the wire with `frame`, the last this connection
    /// is sent. The rest of a frame partly written goes first, so the client still reads whole
    /// frames.
    pub fn replace_unsent_with_last(&mut self, frame: &[u8]) {
        let remainder = match self.out.front() {
            Some(front) => {
                let bytes = front.bytes();
                bytes[self.out_offset..end_of_frame_at(bytes, self.out_offset)].to_vec()
            }
            None => Vec::new(),
        };
        self.discard_output();
        self.sealed = false;
        self.enqueue(&remainder);
        self.enqueue(frame);
        self.sealed = true;
    }

    /// Drops everything queued and accepts nothing more: for a socket nothing can reach.
    pub fn discard_output(&mut self) {
        self.out = VecDeque::new();
        self.out_offset = 0;
        self.out_len = 0;
        self.sealed = true;
    }

    /// Bytes waiting to be written.
    pub fn queued_bytes(&self) -> usize {
        self.out_len - self.out_offset
    }

    /// Writes as much of the queue as the socket takes now. Partial writes keep an offset.
    pub fn flush(&mut self) -> io::Result<()> {
        while !self.out.is_empty() {
            let mut slices: [IoSlice; MAX_IOVECS] = std::array::from_fn(|_| IoSlice::new(&[]));
            let mut n = 0;
            for (i, chunk) in self.out.iter().take(MAX_IOVECS).enumerate() {
                let bytes = chunk.bytes();
                slices[i] = IoSlice::new(if i == 0 { &bytes[self.out_offset..] } else { bytes });
                n += 1;
            }
            match self.socket.write_vectored(&slices[..n]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => self.advance(written),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        if self.out.is_empty() {
            // Give the queue's memory back: idle connections hold no buffers.
            self.out = VecDeque::new();
            self.out_len = 0;
            self.out_offset = 0;
        }
        Ok(())
    }

    fn advance(&mut self, mut written: usize) {
        while written > 0 {
            let front_left = self.out.front().map_or(0, |c| c.bytes().len()) - self.out_offset;
            if written >= front_left {
                written -= front_left;
                self.out_len -= front_left + self.out_offset;
                self.out_offset = 0;
                self.out.pop_front();
            } else {
                self.out_offset += written;
                written = 0;
            }
        }
    }

    /// Whether WRITABLE interest must change: asked for only while bytes wait.
    pub fn wants_writable_change(&self) -> Option<bool> {
        let want = !self.out.is_empty();
        (want != self.writable_interest).then_some(want)
    }

    pub fn set_writable_interest(&mut self, on: bool) {
        self.writable_interest = on;
    }
}

/// The end of the frame that byte `offset` of `chunk` belongs to, or `offset` itself when a
/// frame starts there. A write-queue chunk always starts at a frame boundary.
fn end_of_frame_at(chunk: &[u8], offset: usize) -> usize {
    let mut start = 0;
    while start < offset {
        let Some(length) = chunk.get(start..start + 4) else { return chunk.len() };
        let length = u32::from_be_bytes(length.try_into().expect("four bytes")) as usize;
        start = start.saturating_add(4 + length);
    }
    start.min(chunk.len())
}

#[cfg(test)]
mod tests {
    use super::end_of_frame_at;

    #[test]
    fn the_frame_an_offset_falls_in_is_found_by_walking_the_lengths() {
        // Two frames: 4 + 5 bytes, then 4 + 6 bytes.
        let mut chunk = vec![0, 0, 0, 5, 1, 0, 0, 0, 1];
        chunk.extend_from_slice(&[0, 0, 0, 6, 2, 0, 0, 0, 2, 9]);
        assert_eq!(end_of_frame_at(&chunk, 0), 0);
        assert_eq!(end_of_frame_at(&chunk, 1), 9);
        assert_eq!(end_of_frame_at(&chunk, 8), 9);
        assert_eq!(end_of_frame_at(&chunk, 9), 9);
        assert_eq!(end_of_frame_at(&chunk, 10), 19);
        assert_eq!(end_of_frame_at(&chunk, 19), 19);
    }
}
