//! Non-blocking client sockets on one `mio::Poll`, and the loop that drives a [`Phase`].
//!
//! Every connection has a read buffer (bytes not yet consumed by the phase) and a write buffer
//! that the phase appends frames to; all dirty write buffers are flushed once per loop turn,
//! so frames queued while handling one read batch leave in as few syscalls as possible.

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use rustls::ClientConnection;
use rustls::pki_types::ServerName;
use slab::Slab;
use socket2::{Domain, Protocol, Socket, Type};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bytes read per `read` call, into a buffer shared by every connection.
const READ_CHUNK: usize = 256 * 1024;
/// A drained read buffer bigger than this is given back, so idle connections hold little.
const KEEP_READ_CAPACITY: usize = 64 * 1024;
/// Errno of a non-blocking connect that has started (Linux).
const EINPROGRESS: i32 = 115;

/// Open connections after which `Auto` binds source addresses itself. With most ephemeral
/// ports toward one destination taken, the kernel's port search at `connect` costs about a
/// millisecond of system time per socket (19,000 connections: 20 s instead of 4 s).
const AUTO_ROTATE_AFTER: usize = 4096;
/// Source addresses `Auto` rotates through: 127.0.0.2 to 127.0.0.17.
const AUTO_SOURCES: u8 = 16;

/// How client sockets pick their source address.
#[derive(Debug, Clone, Copy)]
pub enum SourceAddrs {
    /// The kernel picks while few connections are open (to a loopback server); past
    /// [`AUTO_ROTATE_AFTER`], or once its ports run out, rotate through 127.0.0.2–17.
    Auto,
    /// Bind each socket to 127.0.0.(2 + i mod n) before connecting.
    Rotate(u8),
}

/// TLS for every connection (`--tls`): the configuration and the name to verify.
#[derive(Clone)]
pub struct Tls {
    pub config: Arc<rustls::ClientConfig>,
    pub name: ServerName<'static>,
}

struct Conn {
    stream: TcpStream,
    /// With `--ws`: the WebSocket framing over the stream (or over TLS).
    ws: Option<Box<WebSocket>>,
    /// The TLS session over `stream`, with `--tls`: `rbuf` and `wbuf` hold plaintext.
    tls: Option<Box<ClientConnection>>,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    wpos: usize,
    connected: bool,
    writable_interest: bool,
    dirty: bool,
    next_request_id: u32,
    tag: usize,
}

/// What happened to a connection during one poll.
#[derive(Debug)]
pub enum NetEvent {
    /// New bytes are in the connection's read buffer.
    Data(usize),
    /// The connection failed or the peer closed it; it is no longer polled.
    Closed(usize, String),
}

pub struct Net {
    poll: Poll,
    events: Events,
    conns: Slab<Conn>,
    scratch: Box<[u8]>,
    dirty: Vec<usize>,
    sources: SourceAddrs,
    tls: Option<Tls>,
    ws: bool,
    /// Whether the kernel ran out of ports, so that every new socket rotates.
    rotating: bool,
    next_source: u64,
}

impl Net {
    pub fn new(sources: SourceAddrs, tls: Option<Tls>, ws: bool) -> io::Result<Net> {
        Ok(Net {
            poll: Poll::new()?,
            events: Events::with_capacity(4096),
            conns: Slab::new(),
            scratch: vec![0u8; READ_CHUNK].into_boxed_slice(),
            dirty: Vec::new(),
            sources,
            tls,
            ws,
            rotating: false,
            next_source: 0,
        })
    }

    /// Starts a non-blocking connect; bytes may be queued at once and leave when it completes.
    pub fn connect(&mut self, addr: SocketAddr, tag: usize) -> io::Result<usize> {
        let mut stream = self.open(addr)?;
        let tls = match &self.tls {
            None => None,
            Some(tls) => {
                let mut session = ClientConnection::new(Arc::clone(&tls.config), tls.name.clone())
                    .map_err(|e| io::Error::other(format!("TLS: {e}")))?;
                // The phases queue whole windows at once; rustls holds them until they are sent.
                session.set_buffer_limit(None);
                Some(Box::new(session))
            }
        };
        let ws = self.ws.then(|| Box::new(WebSocket::new(addr)));
        let entry = self.conns.vacant_entry();
        let token = entry.key();
        self.poll.registry().register(&mut stream, Token(token), Interest::READABLE | Interest::WRITABLE)?;
        entry.insert(Conn {
            stream,
            ws,
            tls,
            rbuf: Vec::new(),
            wbuf: Vec::new(),
            wpos: 0,
            connected: false,
            writable_interest: true,
            dirty: false,
            next_request_id: 1,
            tag,
        });
        Ok(token)
    }

    fn open(&mut self, addr: SocketAddr) -> io::Result<TcpStream> {
        let rotate = match self.sources {
            SourceAddrs::Rotate(n) => Some(n.max(1)),
            SourceAddrs::Auto if !addr.ip().is_loopback() => None,
            SourceAddrs::Auto if self.rotating || self.conns.len() >= AUTO_ROTATE_AFTER => Some(AUTO_SOURCES),
            SourceAddrs::Auto => None,
        };
        let Some(n) = rotate else {
            match TcpStream::connect(addr) {
                Err(e) if e.kind() == io::ErrorKind::AddrNotAvailable && addr.ip().is_loopback() => {
                    eprintln!("im-bench: local ports for 127.0.0.1 ran out; rotating source addresses");
                    self.rotating = true;
                    return self.open(addr);
                }
                other => return other,
            }
        };
        // Try each source address once, starting with the next in turn.
        let mut last = io::Error::from(io::ErrorKind::AddrNotAvailable);
        for _ in 0..n {
            let ip = 2 + (self.next_source % u64::from(n)) as u8;
            self.next_source += 1;
            match bind_and_connect(Ipv4Addr::new(127, 0, 0, ip), addr) {
                Err(e) if matches!(e.kind(), io::ErrorKind::AddrNotAvailable | io::ErrorKind::AddrInUse) => last = e,
                other => return other,
            }
        }
        Err(last)
    }

    pub fn tag(&self, token: usize) -> usize {
        self.conns[token].tag
    }

    /// The next request id of a connection: 1, 2, … (0 is left for pushes).
    pub fn next_id(&mut self, token: usize) -> u32 {
        let conn = &mut self.conns[token];
        let id = conn.next_request_id;
        conn.next_request_id = conn.next_request_id.checked_add(1).unwrap_or(1);
        id
    }

    /// The write buffer of a connection, to append frames to; it is flushed on the next turn.
    pub fn out(&mut self, token: usize) -> &mut Vec<u8> {
        let conn = &mut self.conns[token];
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(token);
        }
        &mut conn.wbuf
    }

    /// Closes a connection now (dropping whatever it had not written).
    pub fn close(&mut self, token: usize) {
        if let Some(mut conn) = self.conns.try_remove(token) {
            let _ = self.poll.registry().deregister(&mut conn.stream);
        }
    }

    /// Writes every dirty connection as far as its socket takes.
    pub fn flush(&mut self) -> Vec<(usize, String)> {
        let mut failed = Vec::new();
        for token in std::mem::take(&mut self.dirty) {
            let Some(conn) = self.conns.get_mut(token) else { continue };
            conn.dirty = false;
            if let Err(e) = write_out(conn) {
                failed.push((token, format!("write failed: {e}")));
                continue;
            }
            let tls_pending = conn.tls.as_ref().is_some_and(|t| t.wants_write());
            let ws_pending = conn.ws.as_ref().is_some_and(|w| w.has_output());
            let want = conn.wpos < conn.wbuf.len() || !conn.connected || tls_pending || ws_pending;
            if want != conn.writable_interest {
                let interest = if want { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
                if let Err(e) = self.poll.registry().reregister(&mut conn.stream, Token(token), interest) {
                    failed.push((token, format!("reregister failed: {e}")));
                    continue;
                }
                conn.writable_interest = want;
            }
        }
        failed
    }

    /// Waits up to `timeout` and reads every ready socket until it would block.
    pub fn poll(&mut self, timeout: Duration, out: &mut Vec<NetEvent>) -> io::Result<()> {
        match self.poll.poll(&mut self.events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        for event in self.events.iter() {
            let token = event.token().0;
            let Some(conn) = self.conns.get_mut(token) else { continue };
            if event.is_writable() {
                if !conn.connected {
                    match conn.stream.take_error() {
                        Ok(None) => {}
                        Ok(Some(e)) | Err(e) => {
                            out.push(NetEvent::Closed(token, format!("connect failed: {e}")));
                            continue;
                        }
                    }
                    match conn.stream.peer_addr() {
                        Ok(_) => conn.connected = true,
                        Err(e) if e.kind() == io::ErrorKind::NotConnected => continue,
                        Err(e) => {
                            out.push(NetEvent::Closed(token, format!("connect failed: {e}")));
                            continue;
                        }
                    }
                }
                if !conn.dirty {
                    conn.dirty = true;
                    self.dirty.push(token);
                }
            }
            if event.is_readable() || event.is_read_closed() || event.is_error() {
                if conn.tls.is_some() {
                    let (got, closed) = read_tls(conn, &mut self.scratch);
                    if got {
                        out.push(NetEvent::Data(token));
                    }
                    let ws_waiting = conn.ws.is_some()
                        && (conn.wpos < conn.wbuf.len() || conn.ws.as_ref().is_some_and(|w| w.has_output()));
                    if (conn.tls.as_ref().is_some_and(|t| t.wants_write()) || ws_waiting) && !conn.dirty {
                        // The handshake answers reads with writes of its own, and frames queued
                        // before a WebSocket upgrade leave once it is answered.
                        conn.dirty = true;
                        self.dirty.push(token);
                    }
                    if let Some(why) = closed {
                        out.push(NetEvent::Closed(token, why));
                    }
                    continue;
                }
                let mut got = false;
                let mut closed = None;
                loop {
                    match conn.stream.read(&mut self.scratch) {
                        Ok(0) => {
                            closed = Some("the peer closed the connection".to_string());
                            break;
                        }
                        Ok(n) => {
                            conn.connected = true;
                            match take_plaintext(&mut conn.ws, &mut conn.rbuf, &self.scratch[..n]) {
                                Ok(more) => got |= more,
                                Err(why) => {
                                    closed = Some(why);
                                    break;
                                }
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) if e.kind() == io::ErrorKind::NotConnected => break,
                        Err(e) => {
                            closed = Some(format!("read failed: {e}"));
                            break;
                        }
                    }
                }
                if got {
                    out.push(NetEvent::Data(token));
                }
                let ws_waiting = conn.ws.is_some()
                    && (conn.wpos < conn.wbuf.len() || conn.ws.as_ref().is_some_and(|w| w.has_output()));
                if ws_waiting && !conn.dirty {
                    // Frames queued before the WebSocket upgrade leave once it is answered.
                    conn.dirty = true;
                    self.dirty.push(token);
                }
                if let Some(why) = closed {
                    out.push(NetEvent::Closed(token, why));
                }
            }
        }
        Ok(())
    }

    fn take_rbuf(&mut self, token: usize) -> Option<Vec<u8>> {
        self.conns.get_mut(token).map(|c| std::mem::take(&mut c.rbuf))
    }

    fn put_rbuf(&mut self, token: usize, mut buf: Vec<u8>, used: usize) {
        buf.drain(..used);
        if buf.is_empty() && buf.capacity() > KEEP_READ_CAPACITY {
            buf = Vec::new();
        }
        if let Some(conn) = self.conns.get_mut(token) {
            // Bytes that arrived meanwhile cannot exist: reads happen only in `poll`.
            conn.rbuf = buf;
        }
    }
}

fn bind_and_connect(source: Ipv4Addr, addr: SocketAddr) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::new(IpAddr::V4(source), 0).into())?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(EINPROGRESS) || e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(socket.into()))
}

/// Reads TLS records until the socket would block and moves the plaintext into `rbuf`;
/// returns whether plaintext arrived and why the connection ended, if it did.
fn read_tls(conn: &mut Conn, scratch: &mut [u8]) -> (bool, Option<String>) {
    let Some(tls) = conn.tls.as_mut() else { return (false, None) };
    let mut got = false;
    loop {
        // Records are read and their plaintext taken one read at a time: rustls holds only a
        // bounded amount of received plaintext, and refuses more records until it is taken.
        let read = match tls.read_tls(&mut conn.stream) {
            Ok(0) => return (got, Some("the peer closed the connection".to_string())),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return (got, None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return (got, None),
            Err(e) => return (got, Some(format!("read failed: {e}"))),
        };
        debug_assert!(read > 0);
        conn.connected = true;
        if let Err(e) = tls.process_new_packets() {
            return (got, Some(format!("TLS: {e}")));
        }
        loop {
            match tls.reader().read(scratch) {
                Ok(0) => return (got, Some("the peer closed the TLS session".to_string())),
                Ok(n) => match take_plaintext(&mut conn.ws, &mut conn.rbuf, &scratch[..n]) {
                    Ok(more) => got |= more,
                    Err(why) => return (got, Some(why)),
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return (got, Some(format!("TLS: {e}"))),
            }
        }
    }
}

/// Files plaintext that arrived: protocol bytes into `rbuf`, through the WebSocket framing
/// with `--ws`. Returns whether protocol bytes arrived, or why the connection must end.
fn take_plaintext(ws: &mut Option<Box<WebSocket>>, rbuf: &mut Vec<u8>, data: &[u8]) -> Result<bool, String> {
    match ws.as_mut() {
        None => {
            rbuf.extend_from_slice(data);
            Ok(true)
        }
        Some(ws) => {
            let before = rbuf.len();
            ws.take(data, rbuf)?;
            Ok(rbuf.len() > before)
        }
    }
}

/// Writes `data` as plaintext (through TLS with `--tls`); returns how much was taken.
fn write_plaintext(stream: &mut TcpStream, tls: Option<&mut Box<ClientConnection>>, data: &[u8]) -> io::Result<usize> {
    if let Some(tls) = tls {
        tls.writer().write_all(data)?;
        while tls.wants_write() {
            match tls.write_tls(stream) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        return Ok(data.len());
    }
    let mut written = 0;
    while written < data.len() {
        match stream.write(&data[written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}

fn write_out(conn: &mut Conn) -> io::Result<()> {
    if !conn.connected {
        return Ok(());
    }
    if let Some(ws) = conn.ws.as_mut() {
        conn.wpos += ws.wrap(&conn.wbuf[conn.wpos..]);
        if conn.wpos == conn.wbuf.len() {
            conn.wbuf.clear();
            conn.wpos = 0;
        }
        let written = write_plaintext(&mut conn.stream, conn.tls.as_mut(), ws.output())?;
        ws.written(written);
        return Ok(());
    }
    if let Some(tls) = conn.tls.as_mut() {
        if conn.wpos < conn.wbuf.len() {
            tls.writer().write_all(&conn.wbuf[conn.wpos..])?;
            conn.wbuf.clear();
            conn.wpos = 0;
            if conn.wbuf.capacity() > KEEP_READ_CAPACITY {
                conn.wbuf = Vec::new();
            }
        }
        while tls.wants_write() {
            match tls.write_tls(&mut conn.stream) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        return Ok(());
    }
    while conn.wpos < conn.wbuf.len() {
        match conn.stream.write(&conn.wbuf[conn.wpos..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => conn.wpos += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    if conn.wpos == conn.wbuf.len() {
        conn.wbuf.clear();
        conn.wpos = 0;
        if conn.wbuf.capacity() > KEEP_READ_CAPACITY {
            conn.wbuf = Vec::new();
        }
    } else if conn.wpos > conn.wbuf.len() / 2 {
        conn.wbuf.drain(..conn.wpos);
        conn.wpos = 0;
    }
    Ok(())
}

/// One step of a benchmark: a state machine fed by the bytes of its connections.
pub trait Phase {
    /// Consumes whole frames at the front of `data` (the connection's unread bytes); returns
    /// how many bytes were used. `now` is when the bytes were read.
    fn on_data(&mut self, net: &mut Net, token: usize, data: &[u8], now: Instant) -> Result<usize, String>;

    /// A connection ended; by default that fails the phase.
    fn on_closed(&mut self, _net: &mut Net, token: usize, why: &str) -> Result<(), String> {
        Err(format!("connection {token}: {why}"))
    }

    /// Called once per loop turn, before writing; time-driven work goes here.
    fn tick(&mut self, _net: &mut Net, _now: Instant) -> Result<(), String> {
        Ok(())
    }

    fn done(&self) -> bool;
}

/// Runs `phase` until it is done, fails, or `deadline` passes (which fails it, naming `what`).
pub fn drive(net: &mut Net, phase: &mut impl Phase, deadline: Instant, what: &str) -> Result<(), String> {
    let mut events = Vec::new();
    loop {
        let now = Instant::now();
        phase.tick(net, now)?;
        for (token, why) in net.flush() {
            net.close(token);
            phase.on_closed(net, token, &why)?;
        }
        if phase.done() {
            return Ok(());
        }
        if now >= deadline {
            return Err(format!("{what}: timed out"));
        }
        let timeout = (deadline - now).min(Duration::from_millis(5));
        net.poll(timeout, &mut events).map_err(|e| format!("{what}: poll failed: {e}"))?;
        let now = Instant::now();
        for event in events.drain(..) {
            match event {
                NetEvent::Data(token) => {
                    let Some(buf) = net.take_rbuf(token) else { continue };
                    let used = phase.on_data(net, token, &buf, now).map_err(|e| format!("{what}: {e}"))?;
                    net.put_rbuf(token, buf, used);
                }
                NetEvent::Closed(token, why) => {
                    net.close(token);
                    phase.on_closed(net, token, &why).map_err(|e| format!("{what}: {e}"))?;
                }
            }
        }
    }
}

/// The client side of a WebSocket (RFC 6455) carrying the protocol, for `--ws`: the upgrade
/// request first, then each protocol frame as one masked binary message; the server's
/// messages are unwrapped into the read buffer.
struct WebSocket {
    upgraded: bool,
    /// The response head while it arrives, then undecoded frame bytes.
    inbound: Vec<u8>,
    /// Bytes for the wire, from `out_pos` on.
    out: Vec<u8>,
    out_pos: usize,
}

impl WebSocket {
    fn new(addr: SocketAddr) -> WebSocket {
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        WebSocket { upgraded: false, inbound: Vec::new(), out: request.into_bytes(), out_pos: 0 }
    }

    fn has_output(&self) -> bool {
        self.out_pos < self.out.len()
    }

    fn output(&self) -> &[u8] {
        &self.out[self.out_pos..]
    }

    fn written(&mut self, n: usize) {
        self.out_pos += n;
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        }
    }

    /// Wraps the whole protocol frames at the start of `frames` (once upgraded); returns the
    /// bytes taken.
    fn wrap(&mut self, frames: &[u8]) -> usize {
        if !self.upgraded {
            return 0;
        }
        let mut used = 0;
        while let Some(prefix) = frames.get(used..used + 4) {
            let len = 4 + u32::from_be_bytes(prefix.try_into().expect("four bytes")) as usize;
            let Some(frame) = frames.get(used..used + len) else { break };
            self.message(0x2, frame);
            used += len;
        }
        used
    }

    /// Appends one masked frame with `opcode`.
    fn message(&mut self, opcode: u8, payload: &[u8]) {
        self.out.push(0x80 | opcode);
        match payload.len() {
            n if n < 126 => self.out.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                self.out.push(0x80 | 126);
                self.out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                self.out.push(0x80 | 127);
                self.out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        // A fixed mask: RFC 6455 wants it unpredictable to proxies, a benchmark has none.
        let mask = [0x5a, 0x1c, 0xe3, 0x07];
        self.out.extend_from_slice(&mask);
        self.out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    }

    /// Takes bytes from the server: the upgrade response, then messages whose payloads go to
    /// `rbuf`; a ping is answered, a close ends the connection.
    fn take(&mut self, data: &[u8], rbuf: &mut Vec<u8>) -> Result<(), String> {
        self.inbound.extend_from_slice(data);
        if !self.upgraded {
            let Some(end) = self.inbound.windows(4).position(|w| w == b"\r\n\r\n") else { return Ok(()) };
            let head = String::from_utf8_lossy(&self.inbound[..end]).into_owned();
            if !head.starts_with("HTTP/1.1 101") {
                return Err(format!("WebSocket upgrade refused: {}", head.lines().next().unwrap_or("")));
            }
            self.inbound.drain(..end + 4);
            self.upgraded = true;
        }
        let mut used = 0;
        loop {
            let buf = &self.inbound[used..];
            let Some(&[first, second]) = buf.get(..2).map(|b| <&[u8; 2]>::try_from(b).expect("two bytes")) else {
                break;
            };
            let (len, header) = match second & 0x7F {
                126 => match buf.get(2..4) {
                    Some(b) => (u16::from_be_bytes([b[0], b[1]]) as usize, 4),
                    None => break,
                },
                127 => match buf.get(2..10) {
                    Some(b) => (u64::from_be_bytes(b.try_into().expect("eight bytes")) as usize, 10),
                    None => break,
                },
                n => (n as usize, 2),
            };
            let Some(payload) = buf.get(header..header + len) else { break };
            match first & 0x0F {
                0x0 | 0x2 => rbuf.extend_from_slice(payload),
                0x8 => return Err("the server closed the WebSocket".into()),
                0x9 => {
                    let payload = payload.to_vec();
                    self.message(0xA, &payload);
                }
                0xA => {}
                other => return Err(format!("unexpected WebSocket opcode {other}")),
            }
            used += header + len;
        }
        self.inbound.drain(..used);
        Ok(())
    }
}
