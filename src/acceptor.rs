//! Accepting connections, including while the process has no file descriptor left.
//!
//! Out of descriptors (`EMFILE`, `ENFILE`), `accept` fails and the connection stays in the
//! kernel's listen backlog; the listener, edge-triggered, reports nothing more until another
//! client arrives. So the acceptor remembers that clients are waiting, and the loop retries
//! every [`RETRY_INTERVAL`] (nginx's answer), serving them as soon as descriptors are free.
//! Clients still waiting after `--out-of-fds-wait` are accepted on a descriptor kept spare for
//! this (libuv's answer), told `SERVER_FULL` and closed, so none waits on a server that cannot
//! take it.

use crate::protocol::{ErrorCode, response};
use mio::net::{TcpListener, TcpStream};
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How often accepting is retried while clients wait for a descriptor.
pub const RETRY_INTERVAL: Duration = Duration::from_millis(100);

/// `errno` values of a process (`EMFILE`) or system (`ENFILE`) out of descriptors; the same
/// numbers on Linux and the BSDs.
const EMFILE: i32 = 24;
const ENFILE: i32 = 23;

pub struct Acceptor {
    listener: TcpListener,
    /// A descriptor held only to be given up when the others run out, so that a waiting
    /// client can still be accepted and told why it is refused.
    spare: Option<File>,
    /// Since when clients have been waiting because accepting failed.
    stalled_since: Option<Instant>,
    /// `--out-of-fds-wait`.
    wait: Duration,
    /// Whether a refused client can read a frame in clear (not on a TLS listener, where it
    /// expects a handshake: it is only closed).
    answers_in_clear: bool,
}

impl Acceptor {
    pub fn bind(address: SocketAddr, wait: Duration) -> io::Result<Acceptor> {
        let listener = TcpListener::bind(address)?;
        Ok(Acceptor { listener, spare: open_spare(), stalled_since: None, wait, answers_in_clear: true })
    }

    /// Binds a listener whose clients do not expect a frame first (TLS, HTTP): a client
    /// refused for want of a descriptor is only closed.
    pub fn bind_silent(address: SocketAddr, wait: Duration) -> io::Result<Acceptor> {
        Ok(Acceptor { answers_in_clear: false, ..Acceptor::bind(address, wait)? })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The listening socket, to register with the poll.
    pub fn listener_mut(&mut self) -> &mut TcpListener {
        &mut self.listener
    }

    /// How soon to try accepting again without an event: only while clients wait.
    pub fn retry_in(&self) -> Option<Duration> {
        self.stalled_since.map(|_| RETRY_INTERVAL)
    }

    /// The next waiting connection, or `None` when there is none to take now: the backlog is
    /// empty, or accepting failed (then [`Acceptor::retry_in`] says when to try again).
    pub fn next(&mut self, now: Instant) -> Option<(TcpStream, SocketAddr)> {
        loop {
            match self.listener.accept() {
                Ok(accepted) => {
                    self.stalled_since = None;
                    return Some(accepted);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.stalled_since = None;
                    return None;
                }
                // A client that reset before being accepted, or a signal: try the next.
                Err(e) if matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted) => {}
                Err(e) => {
                    self.stalled(&e, now);
                    return None;
                }
            }
        }
    }

    fn stalled(&mut self, error: &io::Error, now: Instant) {
        let since = *self.stalled_since.get_or_insert_with(|| {
            log::warn!("cannot accept connections: {error}; retrying every {RETRY_INTERVAL:?}");
            now
        });
        let out_of_descriptors = matches!(error.raw_os_error(), Some(EMFILE | ENFILE));
        if out_of_descriptors && now.saturating_duration_since(since) >= self.wait {
            self.refuse_waiting(now);
        }
    }

    /// Accepts every waiting client on the spare descriptor, one after the other, and refuses
    /// each with `SERVER_FULL`.
    fn refuse_waiting(&mut self, now: Instant) {
        self.spare = None;
        let mut refused = 0;
        let drained = loop {
            match self.listener.accept() {
                Ok((socket, _)) => {
                    if self.answers_in_clear {
                        refuse(socket, "the server has no room for another connection; try again later");
                    }
                    refused += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break true,
                Err(e) if matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted) => {}
                Err(_) => break false,
            }
        };
        self.spare = open_spare();
        log::warn!("out of file descriptors: refused {refused} waiting connections with SERVER_FULL");
        // Clients who came in the meantime get a wait of their own.
        self.stalled_since = if drained { None } else { Some(now) };
    }
}

/// Answers a connection that will not be served with `ERROR SERVER_FULL` and closes it. Only
/// for a client accepted on the spare descriptor: it is closed at once to free that
/// descriptor, so it cannot wait in the connection table for its answer to go through the
/// outbox like every other error.
fn refuse(mut socket: TcpStream, message: &str) {
    // What the client already sent is read and dropped: a socket closed with unread bytes is
    // reset, and a reset can destroy the answer before the client has read it.
    let _ = socket.read(&mut [0u8; 4096]);
    let mut frame = Vec::new();
    response::error(&mut frame, 0, ErrorCode::ServerFull, message);
    // A new socket's send buffer is empty: one write takes the whole frame.
    let _ = socket.write(&frame);
}

fn open_spare() -> Option<File> {
    File::open("/dev/null").map_err(|e| log::warn!("cannot keep a spare descriptor: {e}")).ok()
}
