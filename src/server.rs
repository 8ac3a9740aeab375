//! The poll loop: one thread, one `mio::Poll`, a `Slab` of connections.
//!
//! Each iteration handles every ready event (accepting, reading and dispatching frames), then
//! reaches the batch's safe point ([`Server::end_of_batch`]): commit the store's transaction,
//! hand the staged frames to the write queues, push backlog pages, write to the sockets, and
//! only then close what was marked to close. Nothing that acknowledges a write leaves before
//! the commit that makes it durable.

use crate::acceptor::{self, Acceptor};
use crate::cmd::{self, Ctx};
use crate::config::Config;
use crate::conn::{CloseReason, Conn, ConnState};
use crate::outbox::{FrameKind, Outbox};
use crate::protocol::frame::{self, FrameCheck, FrameHeader};
use crate::protocol::{ErrorCode, response};
use crate::store::Store;
use crate::world::World;
use foldhash::{HashSet, HashSetExt};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Tokens outside the slab's range.
const LISTENER: Token = Token(usize::MAX - 1);
const SIGNALS: Token = Token(usize::MAX - 2);
/// Bytes read per `read` call, into a buffer shared by all connections.
const READ_CHUNK: usize = 64 * 1024;
/// Backlog bytes queued per connection before waiting for the socket to drain; below the
/// default write-queue soft limit, so a backlog alone never makes a reader look slow.
const BACKLOG_BUDGET: usize = 128 * 1024;
/// Bytes read from one connection per iteration before the others get their turn.
const READ_BUDGET: usize = 4 * READ_CHUNK;

pub struct Server {
    config: Config,
    poll: Poll,
    /// `None` once shutting down.
    acceptor: Option<Acceptor>,
    signals: Signals,
    conns: Slab<Conn>,
    store: Store,
    world: World,
    outbox: Outbox,
    server_secret: Vec<u8>,
    scratch: Box<[u8]>,
    /// Connections marked to close, removed at the end of the batch.
    closing: HashSet<usize>,
    /// Connections with bytes to write.
    dirty: HashSet<usize>,
    /// Connections still receiving their offline backlog.
    syncing: HashSet<usize>,
    /// Connections to read again without waiting for an event: their read budget ran out, or
    /// their reading was paused and their write queue has drained.
    read_again: HashSet<usize>,
    /// Connections whose reading is paused until their write queue drains.
    paused: HashSet<usize>,
    shutting_down: bool,
    next_sweep: Instant,
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

impl Server {
    /// Binds the listening socket and prepares the loop; nothing is accepted until [`run`].
    ///
    /// [`run`]: Server::run
    pub fn bind(config: Config, store: Store) -> io::Result<Server> {
        let poll = Poll::new()?;
        let mut acceptor = Acceptor::bind(config.listen, Duration::from_secs(config.out_of_fds_wait))?;
        poll.registry().register(acceptor.listener_mut(), LISTENER, Interest::READABLE)?;
        let mut signals = Signals::new([SIGINT, SIGTERM])?;
        poll.registry().register(&mut signals, SIGNALS, Interest::READABLE)?;
        let server_secret = store.server_secret().map_err(io::Error::other)?;
        let mut store = store;
        let expired = store.expire_devices(config.device_expiry_before(now_ms())).map_err(io::Error::other)?;
        if !store.finish_iteration() {
            return Err(io::Error::other("cannot forget expired devices"));
        }
        if expired > 0 {
            log::info!("forgot {expired} devices not seen for {} days", config.device_expiry_days);
        }
        let mut world = World::new(config.dedup_window);
        world.retries.rebuild(&store).map_err(io::Error::other)?;
        Ok(Server {
            poll,
            acceptor: Some(acceptor),
            signals,
            // Reserved up front (address space only until used) so that growing never doubles
            // the table and copies it: an idle connection costs its own entry and no slack.
            conns: Slab::with_capacity(config.max_connections.min(1 << 16)),
            store,
            world,
            outbox: Outbox::default(),
            server_secret,
            scratch: vec![0u8; READ_CHUNK].into_boxed_slice(),
            closing: HashSet::new(),
            dirty: HashSet::new(),
            syncing: HashSet::new(),
            read_again: HashSet::new(),
            paused: HashSet::new(),
            shutting_down: false,
            next_sweep: Instant::now() + Self::sweep_interval(&config),
            config,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.acceptor.as_ref().map_or(Err(io::ErrorKind::NotConnected.into()), |a| a.local_addr())
    }

    fn sweep_interval(config: &Config) -> Duration {
        (config.frame_timeout() / 4).clamp(Duration::from_millis(100), Duration::from_secs(1))
    }

    /// Serves until SIGINT or SIGTERM, then shuts down cleanly.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = if self.backlog_waiting() || !self.read_again.is_empty() {
                Duration::ZERO
            } else {
                let sweep = self.next_sweep.saturating_duration_since(Instant::now());
                self.acceptor.as_ref().and_then(Acceptor::retry_in).map_or(sweep, |retry| retry.min(sweep))
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let now = Instant::now();
            let now_ms = now_ms();
            for token in std::mem::take(&mut self.read_again) {
                self.read_conn(token, now, now_ms);
            }
            // Clients waiting for a file descriptor get no event of their own.
            if self.acceptor.as_ref().is_some_and(|a| a.retry_in().is_some()) {
                self.accept_all(now);
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_all(now),
                    SIGNALS => self.take_signals(),
                    Token(i) => {
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.read_conn(i, now, now_ms);
                        }
                        if event.is_writable() || event.is_write_closed() || event.is_error() {
                            self.dirty.insert(i);
                        }
                    }
                }
            }
            if now >= self.next_sweep {
                self.sweep_idle(now);
                self.next_sweep = now + Self::sweep_interval(&self.config);
            }
            if self.shutting_down {
                self.close_all();
            }
            self.end_of_batch();
            if self.shutting_down {
                break;
            }
        }
        log::info!("shutting down: closing the database");
        self.store.close().map_err(io::Error::other)?;
        log::info!("stopped");
        Ok(())
    }

    fn take_signals(&mut self) {
        for signal in self.signals.pending() {
            log::info!("received signal {signal}; stopping");
            self.shutting_down = true;
        }
    }

    fn accept_all(&mut self, now: Instant) {
        let Server { acceptor, conns, poll, config, .. } = self;
        let Some(acceptor) = acceptor.as_mut() else { return };
        while let Some((mut socket, addr)) = acceptor.next(now) {
            if conns.len() >= config.max_connections {
                log::warn!("refusing {addr}: {} connections open", conns.len());
                acceptor::refuse(socket, "the server is full; try again later");
                continue;
            }
            let entry = conns.vacant_entry();
            let token = entry.key();
            if let Err(e) = poll.registry().register(&mut socket, Token(token), Interest::READABLE) {
                log::error!("cannot register a connection: {e}");
                continue;
            }
            let _ = socket.set_nodelay(true);
            entry.insert(Conn::new(socket, addr.ip(), now));
            log::debug!("connection {token} from {addr}");
        }
    }

    /// Reads until the socket would block, handling each complete frame as it arrives. Stops
    /// early when the connection's read budget for this iteration is spent (it is read again
    /// next iteration) or when its own output passes the soft limit (it is paused until its
    /// write queue drains): a client that writes without reading gets no unbounded buffering.
    fn read_conn(&mut self, token: usize, now: Instant, now_ms: i64) {
        let Server { conns, store, world, outbox, config, server_secret, scratch, .. } = self;
        let Some(conn) = conns.get_mut(token) else { return };
        if conn.closing().is_some() || conn.read_paused {
            return;
        }
        let mut ctx = Ctx { store, world, outbox, config, server_secret, now_ms, now };
        let mut pending = conn.take_read_buf();
        if !pending.is_empty() {
            // Frames held back by a pause go first.
            let used = handle_frames(&mut ctx, token, conn, &pending);
            pending.drain(..used);
        }
        let mut budget = READ_BUDGET;
        while conn.closing().is_none() && !conn.read_paused {
            if budget == 0 {
                self.read_again.insert(token);
                break;
            }
            match conn.socket.read(scratch) {
                Ok(0) => {
                    conn.close(CloseReason::PeerClosed);
                    break;
                }
                Ok(n) => {
                    budget = budget.saturating_sub(n);
                    if pending.is_empty() {
                        // The common case: parse straight from the shared buffer, keep only a tail.
                        let used = handle_frames(&mut ctx, token, conn, &scratch[..n]);
                        pending.extend_from_slice(&scratch[used..n]);
                    } else {
                        pending.extend_from_slice(&scratch[..n]);
                        let used = handle_frames(&mut ctx, token, conn, &pending);
                        pending.drain(..used);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::debug!("connection {token}: read failed: {e}");
                    conn.close(CloseReason::IoError);
                    break;
                }
            }
        }
        conn.keep_read_buf(pending, now);
        if conn.closing().is_some() {
            self.closing.insert(token);
        } else if conn.read_paused {
            self.paused.insert(token);
        }
        if conn.backlog.is_some() {
            self.syncing.insert(token);
        }
    }

    /// The once-a-tick timers: idle timeout, frame timeout, login timeout, slow readers held
    /// above the soft limit for too long, and closed connections that lingered long enough.
    fn sweep_idle(&mut self, now: Instant) {
        let idle = self.config.idle_timeout();
        let frame = self.config.frame_timeout();
        let login = self.config.login_timeout();
        let soft = Duration::from_secs(self.config.write_queue_soft_seconds);
        for (token, conn) in self.conns.iter_mut() {
            if conn.closing().is_some() {
                if conn.linger_until.is_some_and(|t| now >= t) {
                    // The client did not read its last frames in time.
                    conn.discard_output();
                    self.closing.insert(token);
                }
                continue;
            }
            // A paused connection's unread frames wait for the server, not for the client.
            let waiting_for_client = !conn.read_paused;
            let (code, reason, message) = if waiting_for_client && now.duration_since(conn.last_frame_at) >= idle {
                (ErrorCode::IdleTimeout, CloseReason::IdleTimeout, "no frame received within the idle timeout")
            } else if waiting_for_client && conn.partial_frame_since.is_some_and(|t| now.duration_since(t) >= frame) {
                (
                    ErrorCode::FrameTimeout,
                    CloseReason::FrameTimeout,
                    "a frame took longer than the frame timeout to arrive",
                )
            } else if !conn.is_authenticated() && now.duration_since(conn.unauthenticated_since) >= login {
                (ErrorCode::LoginTimeout, CloseReason::LoginTimeout, "not logged in within the login timeout")
            } else if conn.over_soft_limit_since.is_some_and(|t| now.duration_since(t) >= soft) {
                log::warn!("connection {token}: closing a slow reader ({} bytes queued)", conn.queued_bytes());
                close_slow_reader(conn);
                self.dirty.insert(token);
                self.closing.insert(token);
                continue;
            } else {
                continue;
            };
            log::debug!("connection {token}: {reason:?}");
            self.outbox.error(token, 0, code, message);
            conn.close(reason);
            self.closing.insert(token);
        }
        self.world.registrations.prune(Duration::from_secs(self.config.register_window), now);
        self.world.failed_logins.prune(self.config.login_limits().window, now);
    }

    fn close_all(&mut self) {
        if let Some(mut acceptor) = self.acceptor.take() {
            let _ = self.poll.registry().deregister(acceptor.listener_mut());
        }
        for (token, conn) in self.conns.iter_mut() {
            if conn.closing().is_none() {
                self.outbox.error(token, 0, ErrorCode::ShuttingDown, "the server is shutting down");
                conn.close(CloseReason::ShuttingDown);
                self.closing.insert(token);
            }
        }
    }

    /// The batch's safe point: commit, release staged frames, push backlogs, write, close.
    fn end_of_batch(&mut self) {
        let committed = self.store.finish_iteration();
        if !committed {
            log::error!("a transaction was rolled back; answers that depended on it report STORE_UNAVAILABLE");
            if let Err(e) = self.world.resync(&self.store) {
                log::error!("cannot reload live state from the database: {e}");
            }
        }
        self.deliver_outbox(committed);
        self.close_removed_devices(committed);
        self.fill_backlogs();
        self.flush_dirty();
        self.resume_paused();
        // Closing a session stages presence pushes for others; deliver those too before sleeping.
        while !self.closing.is_empty() {
            self.remove_closing();
            self.deliver_outbox(true);
            self.flush_dirty();
        }
    }

    /// Moves the staged frames into the write queues. An item for a connection still
    /// receiving its backlog is dropped: it is committed, so the backlog reads it from the
    /// store in its place (see `sync.rs`), and the connection's id order holds.
    fn deliver_outbox(&mut self, committed: bool) {
        let Server { conns, outbox, dirty, .. } = self;
        outbox.drain(committed, |to, kind, bytes, shared| {
            let Some(conn) = conns.get_mut(to) else { return };
            match kind {
                FrameKind::Item { .. } | FrameKind::OwnItem { .. } if conn.backlog.is_some() => return,
                FrameKind::Item { id } => conn.sent_through = conn.sent_through.max(id),
                FrameKind::OwnItem { id } => {
                    conn.sent_through = conn.sent_through.max(id);
                    return;
                }
                FrameKind::Response { .. } | FrameKind::Push => {}
            }
            match shared {
                Some(frame) => conn.enqueue_shared(frame),
                None => conn.enqueue(bytes),
            }
            dirty.insert(to);
        });
    }

    /// Closes the connections of devices removed in this batch, once the removal is durable
    /// (their `NO_SUCH_DEVICE` was staged with it).
    fn close_removed_devices(&mut self, committed: bool) {
        for token in std::mem::take(&mut self.world.removed_device_sessions) {
            if !committed {
                continue;
            }
            if let Some(conn) = self.conns.get_mut(token) {
                conn.close(CloseReason::DeviceRemoved);
                self.closing.insert(token);
            }
        }
    }

    fn fill_backlogs(&mut self) {
        if self.syncing.is_empty() {
            self.world.sources_changed.clear();
            return;
        }
        self.store.begin_batch();
        self.fill_backlog_pages();
        // Nothing was written: this ends the read transaction.
        self.store.finish_iteration();
    }

    fn fill_backlog_pages(&mut self) {
        let Server { conns, store, syncing, dirty, closing, world, .. } = self;
        let changed = std::mem::take(&mut world.sources_changed);
        syncing.retain(|&token| {
            let Some(conn) = conns.get_mut(token) else { return false };
            if conn.closing().is_some() {
                return false;
            }
            let queued = conn.queued_bytes();
            let user = conn.user();
            let Some(backlog) = conn.backlog.as_mut() else { return false };
            if user.is_some_and(|u| changed.contains(&u)) {
                backlog.mark_stale();
            }
            if queued >= BACKLOG_BUDGET {
                return true;
            }
            let mut out = Vec::new();
            let result = backlog.fill(store, &mut out, BACKLOG_BUDGET - queued);
            let read_to = backlog.read_to();
            conn.enqueue(&out);
            conn.sent_through = conn.sent_through.max(read_to);
            dirty.insert(token);
            match result {
                Ok(false) => true,
                Ok(true) => {
                    conn.backlog = None;
                    false
                }
                Err(e) => {
                    log::error!("connection {token}: cannot read the offline backlog: {e}");
                    let mut frame = Vec::new();
                    response::error(
                        &mut frame,
                        0,
                        ErrorCode::StoreUnavailable,
                        "the database failed while reading your offline messages; log in again",
                    );
                    conn.enqueue(&frame);
                    conn.close(CloseReason::IoError);
                    closing.insert(token);
                    false
                }
            }
        });
    }

    /// Whether a backlog can progress without waiting for an event.
    fn backlog_waiting(&self) -> bool {
        self.syncing.iter().any(|&t| self.conns.get(t).is_some_and(|c| c.queued_bytes() < BACKLOG_BUDGET))
    }

    fn flush_dirty(&mut self) {
        for token in self.dirty.drain() {
            let Some(conn) = self.conns.get_mut(token) else { continue };
            if let Err(e) = conn.flush() {
                log::debug!("connection {token}: write failed: {e}");
                conn.discard_output();
                conn.close(CloseReason::IoError);
                self.closing.insert(token);
                continue;
            }
            let queued = conn.queued_bytes();
            if conn.closing().is_some() {
                // Closed, and lingering at most until its last frames are written.
                if queued == 0 {
                    self.closing.insert(token);
                }
            } else if queued > self.config.write_queue_hard_limit {
                log::warn!("connection {token}: closing a slow reader ({queued} bytes queued)");
                close_slow_reader(conn);
                self.closing.insert(token);
                if let Err(e) = conn.flush() {
                    log::debug!("connection {token}: write failed: {e}");
                    conn.discard_output();
                }
            } else if queued > self.config.write_queue_soft_limit || stalled_backlog(conn) {
                conn.over_soft_limit_since.get_or_insert_with(Instant::now);
            } else {
                conn.over_soft_limit_since = None;
            }
            if let Some(want) = conn.wants_writable_change() {
                let interest = if want { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
                match self.poll.registry().reregister(&mut conn.socket, Token(token), interest) {
                    Ok(()) => conn.set_writable_interest(want),
                    Err(e) => {
                        log::error!("connection {token}: cannot change interest: {e}");
                        conn.discard_output();
                        conn.close(CloseReason::IoError);
                        self.closing.insert(token);
                    }
                }
            }
        }
    }

    /// Resumes reading connections that were paused for their output, once it has drained.
    fn resume_paused(&mut self) {
        let soft = self.config.write_queue_soft_limit;
        let Server { conns, paused, read_again, .. } = self;
        paused.retain(|&token| {
            let Some(conn) = conns.get_mut(token) else { return false };
            if conn.closing().is_some() {
                return false;
            }
            if conn.queued_bytes() >= soft {
                return true;
            }
            conn.read_paused = false;
            read_again.insert(token);
            false
        });
    }

    /// Ends the session of every connection marked to close, and removes it, unless it is
    /// left to linger until its last frames are written (for at most
    /// `--write-queue-soft-seconds`, the time any reader is given to catch up).
    fn remove_closing(&mut self) {
        let now = Instant::now();
        let linger = Duration::from_secs(self.config.write_queue_soft_seconds);
        let tokens: Vec<usize> = self.closing.drain().collect();
        for token in tokens {
            let Some(conn) = self.conns.get_mut(token) else { continue };
            if let Some(user) = conn.user() {
                // The socket may outlive the session: it is over now.
                conn.state = ConnState::Unauthenticated;
                conn.backlog = None;
                let mut ctx = Ctx {
                    store: &mut self.store,
                    world: &mut self.world,
                    outbox: &mut self.outbox,
                    config: &self.config,
                    server_secret: &self.server_secret,
                    now_ms: now_ms(),
                    now,
                };
                cmd::end_session(&mut ctx, token, user);
            }
            let conn = &mut self.conns[token];
            let lingers = conn.closing().is_some_and(CloseReason::lingers) && conn.queued_bytes() > 0;
            if lingers && conn.linger_until.is_none_or(|until| now < until) {
                conn.linger_until.get_or_insert(now + linger);
                continue;
            }
            let mut conn = self.conns.remove(token);
            self.syncing.remove(&token);
            self.dirty.remove(&token);
            self.paused.remove(&token);
            self.read_again.remove(&token);
            let _ = self.poll.registry().deregister(&mut conn.socket);
            log::debug!("connection {token} closed: {:?}", conn.closing());
            drop::<TcpStream>(conn.socket);
        }
    }
}

/// Closes a connection that does not read what it is sent. Its frames not yet begun on the
/// wire are dropped (the items among them were never acknowledged, so they wait for its next
/// login) and `ERROR SLOW_READER` takes their place, so the client learns why.
fn close_slow_reader(conn: &mut Conn) {
    let mut frame = Vec::new();
    response::error(&mut frame, 0, ErrorCode::SlowReader, "the connection did not read what it was sent");
    conn.replace_unsent_with_last(&frame);
    conn.close(CloseReason::SlowReader);
}

/// A syncing connection holds at most BACKLOG_BUDGET queued (the rest waits in the store): one
/// that reads nothing of it is as slow as one past the soft limit.
fn stalled_backlog(conn: &Conn) -> bool {
    conn.backlog.is_some() && conn.queued_bytes() >= BACKLOG_BUDGET
}

/// Handles every complete frame at the front of `data`; returns the bytes consumed. Public so
/// that the fuzz target can drive the whole command layer without a poll loop.
pub fn handle_frames(ctx: &mut Ctx, token: usize, conn: &mut Conn, data: &[u8]) -> usize {
    let mut used = 0;
    let staged_at_start = ctx.outbox.staged_bytes();
    while conn.closing().is_none() {
        if conn.queued_bytes() + (ctx.outbox.staged_bytes() - staged_at_start) > ctx.config.write_queue_soft_limit {
            // The rest waits in the read buffer until this connection's output drains.
            conn.read_paused = true;
            break;
        }
        let limit = if conn.is_authenticated() { ctx.config.max_frame } else { ctx.config.max_frame_before_login };
        match frame::check(&data[used..], limit) {
            FrameCheck::Incomplete => break,
            FrameCheck::TooLarge { length } => {
                let message = format!("frame of {length} bytes exceeds the limit of {limit}");
                log::debug!("connection {token}: {message}");
                ctx.outbox.error(token, 0, ErrorCode::FrameTooLarge, &message);
                conn.close(CloseReason::ProtocolError);
            }
            FrameCheck::TooShort { length } => {
                log::debug!("connection {token}: frame length {length} is below 5");
                ctx.outbox.error(token, 0, ErrorCode::MalformedFrame, "a frame length must be at least 5");
                conn.close(CloseReason::ProtocolError);
            }
            FrameCheck::Complete { total } => {
                conn.frame_received(ctx.now);
                cmd::dispatch(ctx, token, conn, FrameHeader::parse(&data[used..used + total]));
                used += total;
            }
        }
    }
    used
}
