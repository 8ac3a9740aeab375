//! The poll loop: one thread, one `mio::Poll`, the table of connections.
//!
//! Each iteration handles every ready event (accepting, reading and dispatching frames), then
//! reaches the batch's safe point ([`Server::end_of_batch`]): commit the store's transaction,
//! hand the staged frames to the write queues, push backlog pages, write to the sockets, and
//! only then close what was marked to close. Nothing that acknowledges a write leaves before
//! the commit that makes it durable.

use crate::cmd::{self, Core};
use crate::config::Config;
use crate::conns::Conns;
use crate::ctl::{self, Ctl};
use crate::listeners::{self, Listeners};
use crate::protocol::ErrorCode;
use crate::session::CloseReason;
use crate::store::Store;
use crate::transport::ReadEnd;
use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Tokens outside the slab's range, below the listeners' (see [`listeners`]).
const SIGNALS: Token = Token(usize::MAX - 2);
const CTL_LISTENER: Token = Token(usize::MAX - 5);
/// Operator connections' tokens start here: above any connection's, below the listeners'.
const CTL_BASE: usize = usize::MAX - 64;
/// Bytes read per `read` call, into a buffer shared by all connections.
const READ_CHUNK: usize = 64 * 1024;
/// Bytes read from one connection per iteration before the others get their turn.
const READ_BUDGET: usize = 4 * READ_CHUNK;

pub struct Server {
    core: Core,
    poll: Poll,
    listeners: Listeners,
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
        let listeners = Listeners::bind(&config, poll.registry())?;
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
        self.listeners.address_of(listeners::PLAIN)
    }

    /// The TLS address actually bound, when `--tls-listen` was given.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.listeners.address_of(listeners::TLS).ok()
    }

    /// The HTTP address actually bound, when `--http-listen` was given.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.listeners.address_of(listeners::HTTP).ok()
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
            self.listeners.retry_waiting(now, self.poll.registry(), &mut self.conns, &mut self.core);
            for event in events.iter() {
                match event.token() {
                    SIGNALS => self.take_signals(),
                    token if self.ctl.as_ref().is_some_and(|c| c.owns(token)) => {
                        if let Some(ctl) = self.ctl.as_mut() {
                            ctl.event(token, self.poll.registry(), &mut self.core, &self.conns);
                        }
                    }
                    token if self.listeners.owns(token) => {
                        self.listeners.accept_all(token, now, self.poll.registry(), &mut self.conns, &mut self.core);
                    }
                    Token(i) => {
                        if event.is_read_closed() || event.is_error() {
                            self.conns.note_hang_up(i);
                        }
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
                self.sweep(now);
            }
            if self.shutting_down {
                self.listeners.stop(self.poll.registry());
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
            self.listeners.retry_in().map_or(sweep, |retry| retry.min(sweep))
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
                self.listeners.reload_certificates(&self.core.config);
            } else {
                log::info!("received signal {signal}; stopping");
                self.shutting_down = true;
            }
        }
    }

    /// Timeouts of connections, and forgetting old registrations, failed logins and
    /// operator connections.
    fn sweep(&mut self, now: Instant) {
        self.conns.sweep(&mut self.core.outbox, &self.core.config, now);
        let config = &self.core.config;
        self.core.world.registrations.prune(Duration::from_secs(config.register_window), now);
        self.core.world.failed_logins.prune(config.login_limits().window, now);
        if let Some(ctl) = self.ctl.as_mut() {
            ctl.sweep(now, self.poll.registry());
        }
        self.next_sweep = now + Self::sweep_interval(config);
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
                let max_message = u64::from(core.config.max_frame) + 4;
                if !conn.transport.serve_http(&head, &core.config.web_origin, max_message) {
                    conns.close(token, CloseReason::HttpAnswered);
                }
            }
            ReadEnd::HttpHeadTooLarge => {
                conn.transport.refuse_http_head();
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
