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
    /// Whether the kernel ran out of ports, so that every new socket rotates.
    rotating: bool,
    next_source: u64,
}

impl Net {
    pub fn new(sources: SourceAddrs, tls: Option<Tls>) -> io::Result<Net> {
        Ok(Net {
            poll: Poll::new()?,
            events: Events::with_capacity(4096),
            conns: Slab::new(),
            scratch: vec![0u8; READ_CHUNK].into_boxed_slice(),
            dirty: Vec::new(),
            sources,
            tls,
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
        let entry = self.conns.vacant_entry();
        let token = entry.key();
        self.poll.registry().register(&mut stream, Token(token), Interest::READABLE | Interest::WRITABLE)?;
        entry.insert(Conn {
            stream,
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
            let want = conn.wpos < conn.wbuf.len() || !conn.connected || tls_pending;
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
                    if conn.tls.as_ref().is_some_and(|t| t.wants_write()) && !conn.dirty {
                        // The handshake answers reads with writes of its own.
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
                            conn.rbuf.extend_from_slice(&self.scratch[..n]);
                            conn.connected = true;
                            got = true;
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
    let mut closed = None;
    loop {
        match tls.read_tls(&mut conn.stream) {
            Ok(0) => {
                closed = Some("the peer closed the connection".to_string());
                break;
            }
            Ok(_) => {
                conn.connected = true;
                if let Err(e) = tls.process_new_packets() {
                    closed = Some(format!("TLS: {e}"));
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::NotConnected => break,
            Err(e) => {
                closed = Some(format!("read failed: {e}"));
                break;
            }
        }
    }
    let mut got = false;
    loop {
        match tls.reader().read(scratch) {
            Ok(0) => {
                closed.get_or_insert_with(|| "the peer closed the TLS session".to_string());
                break;
            }
            Ok(n) => {
                conn.rbuf.extend_from_slice(&scratch[..n]);
                got = true;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => {
                closed.get_or_insert_with(|| format!("TLS: {e}"));
                break;
            }
        }
    }
    (got, closed)
}

fn write_out(conn: &mut Conn) -> io::Result<()> {
    if !conn.connected {
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
