//! How bytes reach a connection and leave it, one file per way: [`plain`] TCP and [`tls`].
//!
//! A [`Transport`] is the socket side of a connection behind one small interface: read bytes
//! in (keeping the partial frame for the next read, within a read budget), queue bytes out,
//! flush. What the bytes mean is the session's business (`session.rs`, `cmd/`): nothing here
//! knows a frame beyond its length prefix.

pub mod plain;
pub mod tls;
pub mod write_queue;

use mio::Interest;
use mio::net::TcpStream;
use std::io;
use std::rc::Rc;
use std::time::Instant;
use write_queue::WriteQueue;

/// The byte stream under a connection.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tls::TlsStream>),
}

/// Why [`Transport::read`] stopped.
#[derive(Debug)]
pub enum ReadEnd {
    /// The socket has nothing more for now.
    Drained,
    /// The budget for this iteration is spent: read again without waiting for an event.
    BudgetSpent,
    /// The handler asked to stop (the session closes, or its reading is paused).
    Stopped,
    PeerClosed,
    Failed(io::Error),
}

pub struct Transport {
    stream: Stream,
    /// The start of a frame still arriving (or frames held back by a pause).
    read_buf: Vec<u8>,
    /// When the first byte of the frame still arriving came: the frame timeout counts from here.
    partial_frame_since: Option<Instant>,
    out: WriteQueue,
    writable_interest: bool,
}

impl Transport {
    pub fn new(stream: Stream) -> Transport {
        Transport {
            stream,
            read_buf: Vec::new(),
            partial_frame_since: None,
            out: WriteQueue::default(),
            writable_interest: false,
        }
    }

    /// The socket, to register with the poll.
    pub fn socket(&mut self) -> &mut TcpStream {
        match &mut self.stream {
            Stream::Plain(socket) => socket,
            Stream::Tls(tls) => tls.socket(),
        }
    }

    /// Whether no byte of the protocol can pass yet (a TLS handshake is under way).
    pub fn is_handshaking(&self) -> bool {
        matches!(&self.stream, Stream::Tls(tls) if tls.is_handshaking())
    }

    /// Reads into `scratch` until the socket would block or `budget` bytes have arrived,
    /// handing the bytes (after any kept from earlier reads) to `handle`, which returns how
    /// many it consumed (whole frames) and whether to go on. What it leaves is kept for the
    /// next read.
    pub fn read(
        &mut self,
        scratch: &mut [u8],
        budget: usize,
        now: Instant,
        mut handle: impl FnMut(&[u8], usize) -> (usize, bool),
    ) -> ReadEnd {
        let mut pending = std::mem::take(&mut self.read_buf);
        let mut go_on = true;
        if !pending.is_empty() {
            // Frames held back by a pause go first.
            let (used, more) = handle(&pending, self.out.queued_bytes());
            self.consumed(used);
            pending.drain(..used);
            go_on = more;
        }
        let mut budget = budget;
        let end = loop {
            if !go_on {
                break ReadEnd::Stopped;
            }
            if budget == 0 {
                break ReadEnd::BudgetSpent;
            }
            let read = match &mut self.stream {
                Stream::Plain(socket) => plain::read(socket, scratch),
                Stream::Tls(tls) => tls.read(scratch),
            };
            match read {
                Ok(0) => break ReadEnd::PeerClosed,
                Ok(n) => {
                    budget = budget.saturating_sub(n);
                    let queued = self.out.queued_bytes();
                    if pending.is_empty() {
                        // The common case: parse straight from the shared buffer, keep only a tail.
                        let (used, more) = handle(&scratch[..n], queued);
                        self.consumed(used);
                        pending.extend_from_slice(&scratch[used..n]);
                        go_on = more;
                    } else {
                        pending.extend_from_slice(&scratch[..n]);
                        let (used, more) = handle(&pending, queued);
                        self.consumed(used);
                        pending.drain(..used);
                        go_on = more;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break ReadEnd::Drained,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break ReadEnd::Failed(e),
            }
        };
        self.keep_read_buf(pending, now);
        end
    }

    /// Whole frames were consumed: whatever follows starts a new frame, and its timeout.
    fn consumed(&mut self, used: usize) {
        if used > 0 {
            self.partial_frame_since = None;
        }
    }

    /// Keeps the unparsed tail of a read for the next one. An empty tail frees the buffer; a
    /// tail that begins a new frame starts the frame timeout at `now`.
    fn keep_read_buf(&mut self, buf: Vec<u8>, now: Instant) {
        if buf.is_empty() {
            self.read_buf = Vec::new();
            self.partial_frame_since = None;
        } else {
            self.read_buf = buf;
            self.partial_frame_since.get_or_insert(now);
        }
    }

    /// Since when a frame has been arriving without completing, if one is.
    pub fn partial_frame_since(&self) -> Option<Instant> {
        self.partial_frame_since
    }

    /// Reads and drops what the client sent and no one will read, so that closing the socket
    /// does not reset the connection (a reset can destroy the last frames before the client
    /// has read them).
    pub fn drain_input(&mut self, scratch: &mut [u8]) {
        if let Stream::Plain(socket) = &mut self.stream {
            let _ = plain::read(socket, scratch);
        }
    }

    /// Appends frame bytes to the write queue.
    pub fn queue(&mut self, bytes: &[u8]) {
        self.out.push(bytes);
    }

    /// Appends a frame shared with other connections, without copying it.
    pub fn queue_shared(&mut self, frame: &Rc<[u8]>) {
        self.out.push_shared(frame);
    }

    /// Replaces everything not yet begun on the wire with `frame`, the last frame sent.
    pub fn queue_last(&mut self, frame: &[u8]) {
        self.out.seal_with(frame);
    }

    /// Drops everything queued and accepts nothing more: for a socket nothing can reach.
    pub fn discard_output(&mut self) {
        self.out.discard();
    }

    /// Bytes waiting to be written.
    pub fn queued_bytes(&self) -> usize {
        self.out.queued_bytes()
    }

    /// Whether a flush has anything to do: queued frames, or TLS records of its own.
    pub fn wants_flush(&self) -> bool {
        !self.out.is_empty() || matches!(&self.stream, Stream::Tls(tls) if tls.wants_write())
    }

    /// Writes as much as the socket takes now.
    pub fn flush(&mut self) -> io::Result<()> {
        match &mut self.stream {
            Stream::Plain(socket) => plain::flush(socket, &mut self.out),
            Stream::Tls(tls) => tls.flush(&mut self.out),
        }
    }

    /// The interest to register when it must change: WRITABLE only while bytes wait.
    pub fn interest_change(&self) -> Option<Interest> {
        let want = self.wants_flush();
        (want != self.writable_interest).then_some(if want {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        })
    }

    /// Records that the interest returned by [`Transport::interest_change`] is registered.
    pub fn interest_changed(&mut self) {
        self.writable_interest = !self.writable_interest;
    }
}
