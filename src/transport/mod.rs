//! How bytes reach a connection and leave it, one file per way: [`plain`] TCP and [`tls`]
//! carry bytes; the protocol's frames travel on them as they are, or inside [`websocket`]
//! messages after an HTTP upgrade.
//!
//! A [`Transport`] is the socket side of a connection behind one small interface: read bytes
//! in (keeping the partial frame for the next read, within a read budget), queue bytes out,
//! flush. What the bytes mean is the session's business (`session.rs`, `cmd/`): nothing here
//! knows a frame beyond its length prefix.

pub mod plain;
pub mod tls;
pub mod websocket;
pub mod write_queue;

use crate::http;
use mio::Interest;
use mio::net::TcpStream;
use std::io;
use std::rc::Rc;
use std::time::Instant;
use write_queue::WriteQueue;

/// Bytes of WebSocket messages prepared per write.
const WEBSOCKET_BATCH: usize = 64 * 1024;

/// The byte stream under a connection.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tls::TlsStream>),
}

impl Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(socket) => plain::read(socket, buf),
            Stream::Tls(tls) => tls.read(buf),
        }
    }

    /// Writes bytes that are not protocol frames (an HTTP response, WebSocket frames); returns
    /// how many were taken, 0 when the socket takes none now.
    fn send(&mut self, data: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(socket) => match io::Write::write(socket, data) {
                Ok(0) if !data.is_empty() => Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => Ok(n),
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => Ok(0),
                Err(e) => Err(e),
            },
            Stream::Tls(tls) => tls.send(data),
        }
    }
}

/// What the bytes on the stream are.
pub enum Codec {
    /// The protocol's frames, as they are.
    Frames,
    /// The first bytes decide: `GET ` begins an HTTP request, anything else is frames (the TLS
    /// listener serves both; no frame can start so, its length would be above a gigabyte).
    Sniff,
    /// An HTTP request head is arriving.
    Http,
    /// Frames inside WebSocket messages, after the upgrade.
    WebSocket(Box<websocket::WebSocket>),
    /// An HTTP response was queued; the connection closes once it is written.
    Answered,
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
    /// A whole HTTP request head: the server answers it with [`Transport::serve_http`].
    HttpHead(Vec<u8>),
    /// A request head above [`http::MAX_HEAD`].
    HttpHeadTooLarge,
    /// The WebSocket was closed by the client or for a violation; its close frame is queued.
    WebSocketEnded(websocket::Violation),
}

pub struct Transport {
    stream: Stream,
    codec: Codec,
    /// Bytes to write before any queued frame: an HTTP response, WebSocket frames.
    raw_out: Vec<u8>,
    /// The start of a frame still arriving (or frames held back by a pause).
    read_buf: Vec<u8>,
    /// When the first byte of the frame still arriving came: the frame timeout counts from here.
    partial_frame_since: Option<Instant>,
    out: WriteQueue,
    writable_interest: bool,
    /// The poll reported the peer's end closed (or an error): read until the socket says so,
    /// never stopping at a short read (see [`Transport::read`]).
    hung_up: bool,
}

/// Every [`Transport::kind`], in the order `ctl stats` lists them.
pub const KINDS: [&str; 4] = ["tcp", "tls", "websocket", "websocket+tls"];

impl Transport {
    pub fn new(stream: Stream, codec: Codec) -> Transport {
        Transport {
            stream,
            codec,
            raw_out: Vec::new(),
            read_buf: Vec::new(),
            partial_frame_since: None,
            out: WriteQueue::default(),
            writable_interest: false,
            hung_up: false,
        }
    }

    /// The socket, to register with the poll.
    pub fn socket(&mut self) -> &mut TcpStream {
        match &mut self.stream {
            Stream::Plain(socket) => socket,
            Stream::Tls(tls) => tls.socket(),
        }
    }

    /// Whether no frame of the protocol can reach the client yet (a TLS handshake or an HTTP
    /// request is under way), so that a closing connection need not wait for its last frames.
    pub fn is_handshaking(&self) -> bool {
        matches!(&self.stream, Stream::Tls(tls) if tls.is_handshaking()) || matches!(self.codec, Codec::Http)
    }

    /// Whether protocol frames can be carried now (not while HTTP is spoken).
    fn carries_frames(&self) -> bool {
        matches!(self.codec, Codec::Frames | Codec::Sniff | Codec::WebSocket(_))
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
        if !pending.is_empty() && matches!(self.codec, Codec::Frames | Codec::WebSocket(_)) {
            // Frames held back by a pause go first.
            let (used, more) = handle(&pending, self.queued_bytes());
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
            match self.stream.read(scratch) {
                Ok(0) => break ReadEnd::PeerClosed,
                Ok(n) => {
                    budget = budget.saturating_sub(n);
                    match self.take_bytes(&scratch[..n], &mut pending, &mut handle) {
                        Ok(more) => go_on = more,
                        Err(end) => break end,
                    }
                    if n < scratch.len() && go_on && self.stops_at_short_read() {
                        break ReadEnd::Drained;
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

    /// The poll reported the peer's end closed or an error: the next reads go on to the end.
    pub fn note_hang_up(&mut self) {
        self.hung_up = true;
    }

    /// Whether a read that returned less than asked for may end the turn without another read
    /// (which would only say "would block": one system call per connection and iteration).
    /// The socket's queue was empty at that read, and on a plain socket any byte that arrives
    /// after it raises a new edge-triggered event (Linux's epoll and the BSDs' kqueue signal
    /// every arrival). Not once a hang-up was reported: the end of the stream raises no
    /// further event. Not under TLS either, whose reads go through rustls' own buffer.
    fn stops_at_short_read(&self) -> bool {
        matches!(self.stream, Stream::Plain(_)) && !self.hung_up
    }

    /// Passes bytes just read through the codec to `handle`; `pending` holds what an earlier
    /// read left. Returns whether to go on reading, or why to stop.
    fn take_bytes(
        &mut self,
        data: &[u8],
        pending: &mut Vec<u8>,
        handle: &mut impl FnMut(&[u8], usize) -> (usize, bool),
    ) -> Result<bool, ReadEnd> {
        let queued = self.queued_bytes();
        match &mut self.codec {
            Codec::Frames if pending.is_empty() => {
                // The common case: parse straight from the shared buffer, keep only a tail.
                let (used, more) = handle(data, queued);
                self.consumed(used);
                pending.extend_from_slice(&data[used..]);
                Ok(more)
            }
            Codec::Frames => {
                pending.extend_from_slice(data);
                Ok(self.handle_pending(pending, handle))
            }
            Codec::WebSocket(ws) => {
                if let Err(violation) = ws.decode(data, pending, &mut self.raw_out) {
                    return Err(ReadEnd::WebSocketEnded(violation));
                }
                Ok(self.handle_pending(pending, handle))
            }
            Codec::Sniff => {
                pending.extend_from_slice(data);
                if pending.len() < 4 {
                    return Ok(true);
                }
                if pending.starts_with(b"GET ") {
                    self.codec = Codec::Http;
                    return self.take_http(pending);
                }
                self.codec = Codec::Frames;
                Ok(self.handle_pending(pending, handle))
            }
            Codec::Http => {
                pending.extend_from_slice(data);
                self.take_http(pending)
            }
            // A response is on its way and the connection closes after it: the rest is dropped.
            Codec::Answered => Ok(true),
        }
    }

    fn handle_pending(
        &mut self,
        pending: &mut Vec<u8>,
        handle: &mut impl FnMut(&[u8], usize) -> (usize, bool),
    ) -> bool {
        let (used, more) = handle(pending, self.queued_bytes());
        self.consumed(used);
        pending.drain(..used);
        more
    }

    /// Stops reading once a request head is complete; the bytes after it stay pending.
    fn take_http(&mut self, pending: &mut Vec<u8>) -> Result<bool, ReadEnd> {
        match http::head_length(pending) {
            http::Head::Incomplete => Ok(true),
            http::Head::TooLarge => {
                pending.clear();
                Err(ReadEnd::HttpHeadTooLarge)
            }
            http::Head::Complete(length) => Err(ReadEnd::HttpHead(pending.drain(..length).collect())),
        }
    }

    /// Answers the HTTP request `head` (the page, a file, or the WebSocket upgrade) with this
    /// stream's scheme for the origin check. True when the connection became a WebSocket of
    /// messages up to `max_message` bytes; otherwise it is to be closed after the answer.
    pub fn serve_http(&mut self, head: &[u8], extra_origins: &[String], max_message: u64) -> bool {
        let site = http::Site { scheme: self.scheme(), extra_origins };
        let answer = http::answer(head, &site);
        log::debug!("HTTP {}", answer.status);
        self.answer_http(&answer.response, answer.upgrade, max_message);
        answer.upgrade
    }

    /// Answers a request head past [`http::MAX_HEAD`]; the connection is to be closed.
    pub fn refuse_http_head(&mut self) {
        let answer = http::error(431, "Request Header Fields Too Large");
        self.answer_http(&answer.response, false, 0);
    }

    /// Queues the answer to the HTTP request; an upgrade turns the stream into WebSocket
    /// messages of at most `max_message` bytes, anything else closes after the answer.
    fn answer_http(&mut self, response: &[u8], upgrade: bool, max_message: u64) {
        self.raw_out.extend_from_slice(response);
        self.codec = if upgrade {
            Codec::WebSocket(Box::new(websocket::WebSocket::new(max_message)))
        } else {
            self.read_buf = Vec::new();
            Codec::Answered
        };
    }

    /// Queues the last bytes of a connection the server closes: a WebSocket's close frame.
    pub fn goodbye(&mut self, going_away: bool) {
        if let Codec::WebSocket(ws) = &mut self.codec {
            ws.goodbye(&mut self.raw_out, going_away);
        }
        let _ = self.flush();
        if let Stream::Tls(tls) = &mut self.stream {
            tls.close_notify();
        }
    }

    /// How the connection speaks, for the operator: one of [`KINDS`].
    pub fn kind(&self) -> &'static str {
        match (&self.stream, &self.codec) {
            (Stream::Plain(_), Codec::WebSocket(_)) => "websocket",
            (Stream::Tls(_), Codec::WebSocket(_)) => "websocket+tls",
            (Stream::Plain(_), _) => "tcp",
            (Stream::Tls(_), _) => "tls",
        }
    }

    /// The scheme a page served on this stream was loaded with.
    pub fn scheme(&self) -> &'static str {
        match self.stream {
            Stream::Plain(_) => "http",
            Stream::Tls(_) => "https",
        }
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

    /// Appends frame bytes to the write queue (dropped while HTTP is spoken: a client that
    /// has not upgraded cannot read them).
    pub fn queue(&mut self, bytes: &[u8]) {
        if self.carries_frames() {
            self.out.push(bytes);
        }
    }

    /// Appends a frame shared with other connections, without copying it.
    pub fn queue_shared(&mut self, frame: &Rc<[u8]>) {
        if self.carries_frames() {
            self.out.push_shared(frame);
        }
    }

    /// Replaces everything not yet begun on the wire with `frame`, the last frame sent.
    pub fn queue_last(&mut self, frame: &[u8]) {
        self.out.seal_with(frame);
    }

    /// Drops everything queued and accepts nothing more: for a socket nothing can reach.
    pub fn discard_output(&mut self) {
        self.out.discard();
        self.raw_out = Vec::new();
    }

    /// Bytes waiting to be written.
    pub fn queued_bytes(&self) -> usize {
        self.out.queued_bytes() + self.raw_out.len()
    }

    /// Whether a flush has anything to do: queued frames, other bytes, or TLS records.
    pub fn wants_flush(&self) -> bool {
        !self.out.is_empty()
            || !self.raw_out.is_empty()
            || matches!(&self.stream, Stream::Tls(tls) if tls.wants_write())
    }

    /// Writes as much as the socket takes now.
    pub fn flush(&mut self) -> io::Result<()> {
        match (&mut self.stream, &self.codec) {
            (Stream::Plain(socket), Codec::Frames | Codec::Sniff) => plain::flush(socket, &mut self.out),
            (Stream::Tls(tls), Codec::Frames | Codec::Sniff | Codec::Http) => tls.flush(&mut self.out),
            (Stream::Plain(_), Codec::Http) => Ok(()),
            (_, Codec::WebSocket(_) | Codec::Answered) => loop {
                while !self.raw_out.is_empty() {
                    let sent = self.stream.send(&self.raw_out)?;
                    if sent == 0 {
                        return Ok(());
                    }
                    self.raw_out.drain(..sent);
                }
                if self.out.is_empty() || !self.carries_frames() {
                    self.raw_out = Vec::new();
                    // What TLS still holds is written here or at the next writable event.
                    return match &mut self.stream {
                        Stream::Tls(tls) => tls.send(&[]).map(drop),
                        Stream::Plain(_) => Ok(()),
                    };
                }
                websocket::encode_frames(&mut self.out, &mut self.raw_out, WEBSOCKET_BATCH);
            },
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
