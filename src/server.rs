//! The poll loop: one thread, one `mio::Poll`, the table of connections.
//!
//! Each iteration handles every ready event (accepting, reading and dispatching frames), then
//! reaches the batch's safe point ([`Server::end_of_batch`]): commit the store's transaction,
//! hand the staged frames to the write queues, push backlog pages, write to the sockets, and
//! only then close what was marked to close. Nothing that acknowledges a write leaves before
//! the commit that makes it durable.

use crate::acceptor::Acceptor;
use crate::cmd::{self, Core};
use crate::config::Config;
use crate::conns::Conns;
use crate::ctl::{self, Ctl};
use crate::http;
use crate::protocol::ErrorCode;
use crate::session::{CloseReason, Session};
use crate::store::Store;
use crate::transport::{Codec, ReadEnd, Stream, Transport, tls};
use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Tokens outside the slab's range.
const PLAIN_LISTENER: Token = Token(usize::MAX - 1);
const SIGNALS: Token = Token(usize::MAX - 2);
const TLS_LISTENER: Token = Token(usize::MAX - 3);
const HTTP_LISTENER: Token = Token(usize::MAX - 4);
const CTL_LISTENER: Token = Token(usize::MAX - 5);
/// Operator connections' tokens start here: above any connection's, below the listeners'.
const CTL_BASE: usize = usize::MAX - 64;
/// Bytes read per `read` call, into a buffer shared by all connections.
const READ_CHUNK: usize = 64 * 1024;
/// Bytes read from one connection per iteration before the others get their turn.
const READ_BUDGET: usize = 4 * READ_CHUNK;

/// One listening socket and how its connections speak.
struct Listener {
    acceptor: Acceptor,
    /// `None` for plain text; for TLS, the configuration new connections get (replaced on
    /// SIGHUP, while connections keep the one they started with).
    tls: Option<Arc<rustls::ServerConfig>>,
    /// What its clients speak first: frames, HTTP, or either (TLS).
    speaks: Speaks,
}

#[derive(Clone, Copy)]
enum Speaks {
    Frames,
    Http,
    FramesOrHttp,
}

pub struct Server {
    core: Core,
    poll: Poll,
    /// Empty once shutting down.
    listeners: Vec<(Token, Listener)>,
    signals: Signals,
    conns: Conns,
    /// The operator socket (`im-server ctl`); `None` if it could not be made.
    ctl: Option<Ctl>,
    scratch: Box<[u8]>,
    shutting_down: bool,
    next_sweep: Instant,
}

impl Server {
    /// Binds the listening sockets and prepares the loop; nothing is accepted until [`run`].
    ///
    /// [`run`]: Server::run
    pub fn bind(config: Config, store: Store) -> io::Result<Server> {
        let poll = Poll::new()?;
        let wait = Duration::from_secs(config.out_of_fds_wait);
        let plain = Listener { acceptor: Acceptor::bind(config.listen, wait)?, tls: None, speaks: Speaks::Frames };
        let mut listeners = vec![(PLAIN_LISTENER, plain)];
        if !config.listen.ip().is_loopback() {
            log::warn!("{} accepts plain text from the network: use --tls-listen for clients elsewhere", config.listen);
        }
        if let (Some(address), Some(cert), Some(key)) = (config.tls_listen, &config.tls_cert, &config.tls_key) {
            let tls = tls::load_config(cert, key).map_err(io::Error::other)?;
            let acceptor = Acceptor::bind_silent(address, wait)?;
            listeners.push((TLS_LISTENER, Listener { acceptor, tls: Some(tls), speaks: Speaks::FramesOrHttp }));
        }
        if let Some(address) = config.http_listen {
            if !address.ip().is_loopback() {
                log::warn!("{address} serves the web client in plain HTTP: use --tls-listen for browsers elsewhere");
            }
            let acceptor = Acceptor::bind_silent(address, wait)?;
            listeners.push((HTTP_LISTENER, Listener { acceptor, tls: None, speaks: Speaks::Http }));
        }
        for (token, listener) in &mut listeners {
            poll.registry().register(listener.acceptor.listener_mut(), *token, Interest::READABLE)?;
        }
        let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
        poll.registry().register(&mut signals, SIGNALS, Interest::READABLE)?;
        let conns = Conns::with_capacity(config.max_connections.min(1 << 16));
        let next_sweep = Instant::now() + Self::sweep_interval(&config);
        let ctl = match Ctl::bind(ctl::socket_path(&config.db), poll.registry(), CTL_LISTENER, CTL_BASE) {
            Ok(ctl) => Some(ctl),
            Err(e) => {
                log::warn!("no operator socket ({e}): `im-server ctl` will not reach this server");
                None
            }
        };
        let core = Core::new(config, store).map_err(io::Error::other)?;
        Ok(Server {
            core,
            poll,
            listeners,
            signals,
            conns,
            ctl,
            scratch: vec![0u8; READ_CHUNK].into_boxed_slice(),
            shutting_down: false,
            next_sweep,
        })
    }

    /// The plain-text address actually bound (useful with port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.address_of(PLAIN_LISTENER)
    }

    /// The TLS address actually bound, when `--tls-listen` was given.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.address_of(TLS_LISTENER).ok()
    }

    /// The HTTP address actually bound, when `--http-listen` was given.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.address_of(HTTP_LISTENER).ok()
    }

    fn address_of(&self, token: Token) -> io::Result<SocketAddr> {
        let listener = self.listeners.iter().find(|(t, _)| *t == token);
        listener.map_or(Err(io::ErrorKind::NotConnected.into()), |(_, l)| l.acceptor.local_addr())
    }

    fn sweep_interval(config: &Config) -> Duration {
        (config.frame_timeout() / 4).clamp(Duration::from_millis(100), Duration::from_secs(1))
    }

    /// Serves until SIGINT or SIGTERM, then shuts down cleanly.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            self.poll_events(&mut events)?;
            let now = Instant::now();
            for token in self.conns.take_read_again() {
                self.read_conn(token, now);
            }
            // Clients waiting for a file descriptor get no event of their own.
            for index in 0..self.listeners.len() {
                if self.listeners[index].1.acceptor.retry_in().is_some() {
                    self.accept_all(index, now);
                }
            }
            for event in events.iter() {
                match event.token() {
                    SIGNALS => self.take_signals(),
                    token if self.ctl.as_ref().is_some_and(|c| c.owns(token)) => {
                        if let Some(ctl) = self.ctl.as_mut() {
                            ctl.event(token, self.poll.registry(), &mut self.core, &self.conns);
                        }
                    }
                    token @ (PLAIN_LISTENER | TLS_LISTENER | HTTP_LISTENER) => {
                        if let Some(index) = self.listeners.iter().position(|(t, _)| *t == token) {
                            self.accept_all(index, now);
                        }
                    }
                    Token(i) => {
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.read_conn(i, now);
                        }
                        if event.is_writable() || event.is_write_closed() || event.is_error() {
                            self.conns.mark_writable(i);
                        }
                    }
                }
            }
            if now >= self.next_sweep {
                self.conns.sweep(&mut self.core.outbox, &self.core.config, now);
                let config = &self.core.config;
                self.core.world.registrations.prune(Duration::from_secs(config.register_window), now);
                self.core.world.failed_logins.prune(config.login_limits().window, now);
                if let Some(ctl) = self.ctl.as_mut() {
                    ctl.sweep(now, self.poll.registry());
                }
                self.next_sweep = now + Self::sweep_interval(config);
            }
            if self.shutting_down {
                self.stop_listening();
                self.conns.close_all(&mut self.core.outbox);
            }
            self.end_of_batch();
            if self.shutting_down {
                break;
            }
        }
        if let Some(ctl) = self.ctl.take() {
            ctl.shut(self.poll.registry());
        }
        log::info!("shutting down: closing the database");
        self.core.store.close().map_err(io::Error::other)?;
        log::info!("stopped");
        Ok(())
    }

    /// Waits for events, no longer than the next timer; not at all while work is left over.
    fn poll_events(&mut self, events: &mut Events) -> io::Result<()> {
        let timeout = if self.conns.has_work_without_events() {
            Duration::ZERO
        } else {
            let sweep = self.next_sweep.saturating_duration_since(Instant::now());
            let retry = self.listeners.iter().filter_map(|(_, l)| l.acceptor.retry_in()).min();
            retry.map_or(sweep, |retry| retry.min(sweep))
        };
        match self.poll.poll(events, Some(timeout)) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                events.clear();
                Ok(())
            }
            other => other,
        }
    }

    fn take_signals(&mut self) {
        for signal in self.signals.pending() {
            if signal == SIGHUP {
                self.reload_certificates();
            } else {
                log::info!("received signal {signal}; stopping");
                self.shutting_down = true;
            }
        }
    }

    /// SIGHUP: reads the TLS certificate and key again, for connections accepted from now on.
    /// A file that does not load leaves the certificate in use as it was.
    fn reload_certificates(&mut self) {
        let config = &self.core.config;
        let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
            log::info!("received SIGHUP; no TLS certificate to reload");
            return;
        };
        let Some((_, listener)) = self.listeners.iter_mut().find(|(t, _)| *t == TLS_LISTENER) else { return };
        match tls::load_config(cert, key) {
            Ok(tls) => {
                listener.tls = Some(tls);
                log::info!("reloaded the TLS certificate {} for new connections", cert.display());
            }
            Err(e) => log::error!("cannot reload the TLS certificate, keeping the one in use: {e}"),
        }
    }

    fn stop_listening(&mut self) {
        for (_, mut listener) in self.listeners.drain(..) {
            let _ = self.poll.registry().deregister(listener.acceptor.listener_mut());
        }
    }

    /// Takes every waiting connection of listener `index`. One over `--max-connections` is
    /// still taken, to be told `SERVER_FULL` through its own transport (over TLS too) and
    /// closed once that is written.
    fn accept_all(&mut self, index: usize, now: Instant) {
        let Server { listeners, conns, poll, core, .. } = self;
        let (_, listener) = &mut listeners[index];
        while let Some((mut socket, addr)) = listener.acceptor.next(now) {
            let token = conns.next_token();
            if let Err(e) = poll.registry().register(&mut socket, Token(token), Interest::READABLE) {
                log::error!("cannot register a connection: {e}");
                continue;
            }
            let _ = socket.set_nodelay(true);
            let stream = match &listener.tls {
                None => Stream::Plain(socket),
                Some(config) => match tls::TlsStream::new(socket, Arc::clone(config)) {
                    Ok(tls) => Stream::Tls(Box::new(tls)),
                    Err(e) => {
                        log::error!("cannot start TLS for {addr}: {e}");
                        continue;
                    }
                },
            };
            let codec = match listener.speaks {
                Speaks::Frames => Codec::Frames,
                Speaks::Http => Codec::Http,
                Speaks::FramesOrHttp => Codec::Sniff,
            };
            let full = conns.len() >= core.config.max_connections;
            let token = conns.insert(Session::new(addr.ip(), now), Transport::new(stream, codec));
            if full {
                log::warn!("refusing {addr}: {} connections open", conns.len() - 1);
                let Some(conn) = conns.get_mut(token) else { continue };
                if conn.transport.is_handshaking() {
                    // Told once its handshake is done (see `read_conn`): bytes before it
                    // would not be read as a frame.
                    conn.session.refuse_when_ready();
                } else {
                    core.outbox.error(token, 0, ErrorCode::ServerFull, "the server is full; try again later");
                    conns.close(token, CloseReason::ServerFull);
                }
            } else {
                log::debug!("connection {token} from {addr}");
            }
        }
    }

    /// Reads what the connection sent, handling each complete frame as it arrives, within
    /// the read budget of one iteration.
    fn read_conn(&mut self, token: usize, now: Instant) {
        let Server { conns, core, scratch, .. } = self;
        let Some(conn) = conns.get_mut(token) else { return };
        if !conn.readable() {
            return;
        }
        let mut ctx = core.ctx(now);
        let session = &mut conn.session;
        let mut paused = false;
        let end = conn.transport.read(scratch, READ_BUDGET, now, |data, queued| {
            if session.is_refused() {
                // Not served: what it sends is dropped until it is closed, below.
                return (data.len(), false);
            }
            let handled = cmd::handle_frames(&mut ctx, token, session, queued, data);
            paused = handled.paused;
            (handled.used, !handled.paused && session.closing().is_none())
        });
        if conn.session.is_refused() && !conn.transport.is_handshaking() && conn.session.closing().is_none() {
            core.outbox.error(token, 0, ErrorCode::ServerFull, "the server is full; try again later");
            conn.session.close(CloseReason::ServerFull);
        }
        let read_again = matches!(end, ReadEnd::BudgetSpent);
        match end {
            ReadEnd::PeerClosed => conns.close(token, CloseReason::PeerClosed),
            ReadEnd::Failed(e) => {
                log::debug!("connection {token}: read failed: {e}");
                conns.close(token, CloseReason::IoError);
            }
            ReadEnd::HttpHead(head) => {
                let site = http::Site { scheme: conn.transport.scheme(), extra_origins: &core.config.web_origin };
                let answer = http::answer(&head, &site);
                log::debug!("connection {token}: HTTP {}", answer.status);
                let max_message = u64::from(core.config.max_frame) + 4;
                conn.transport.answer_http(&answer.response, answer.upgrade, max_message);
                if !answer.upgrade {
                    conns.close(token, CloseReason::HttpAnswered);
                }
            }
            ReadEnd::HttpHeadTooLarge => {
                let answer = http::error(431, "Request Header Fields Too Large");
                conn.transport.answer_http(&answer.response, false, 0);
                conns.close(token, CloseReason::HttpAnswered);
            }
            ReadEnd::WebSocketEnded(violation) => {
                log::debug!("connection {token}: {}", violation.describe());
                conns.close(token, CloseReason::WebSocketEnded);
            }
            ReadEnd::Drained | ReadEnd::BudgetSpent | ReadEnd::Stopped => {}
        }
        conns.after_read(token, paused, read_again);
    }

    /// The batch's safe point: commit, release staged frames, push backlogs, write, close.
    fn end_of_batch(&mut self) {
        let committed = self.core.store.finish_iteration();
        if !committed {
            log::error!("a transaction was rolled back; answers that depended on it report STORE_UNAVAILABLE");
            if let Err(e) = self.core.world.resync(&self.core.store) {
                log::error!("cannot reload live state from the database: {e}");
            }
        }
        self.conns.deliver(&mut self.core.outbox, committed);
        if let Some(ctl) = self.ctl.as_mut() {
            ctl.after_commit(committed, self.poll.registry());
        }
        for (token, reason) in std::mem::take(&mut self.core.world.close_after_commit) {
            // Their ERROR was staged with the change (a device removed, a password changed):
            // close them once it is durable.
            if committed {
                self.conns.close(token, reason);
            }
        }
        self.push_backlogs();
        // Closing a session stages presence pushes for others, and a failed backlog its
        // error: deliver those too before sleeping.
        loop {
            self.conns.deliver(&mut self.core.outbox, true);
            self.conns.flush(self.poll.registry(), &self.core.config);
            self.conns.resume_paused(&self.core.config);
            if !self.conns.has_closing() {
                break;
            }
            self.conns.remove_closing(&mut self.core, self.poll.registry(), &mut self.scratch);
        }
    }

    fn push_backlogs(&mut self) {
        let changed = std::mem::take(&mut self.core.world.sources_changed);
        if !self.conns.is_syncing_any() {
            return;
        }
        let core = &mut self.core;
        core.store.begin_batch();
        self.conns.push_backlogs(&mut core.store, &mut core.outbox, &changed);
        // Nothing was written: this ends the read transaction.
        core.store.finish_iteration();
    }
}
