//! The table of connections: a `Slab` of [`Conn`] (a session and its transport) and every set
//! of tokens the loop works through, owned here and nowhere else.
//!
//! A connection is closed one way only, [`Conns::close`], as Redis frees a client only through
//! `freeClientAsync`: it is marked, and removed at the batch's safe point
//! ([`Conns::remove_closing`]) after its session has ended and, if the reason calls for it,
//! after its last frames were written.

use crate::cmd::{self, Core};
use crate::config::Config;
use crate::outbox::{FrameKind, Outbox};
use crate::protocol::{ErrorCode, response};
use crate::session::{CloseReason, Session};
use crate::store::{Store, UserId};
use crate::transport::{self, Transport};
use foldhash::{HashSet, HashSetExt};
use mio::{Registry, Token};
use slab::Slab;
use std::time::{Duration, Instant};

/// Backlog bytes queued per connection before waiting for the socket to drain; below the
/// default write-queue soft limit, so a backlog alone never makes a reader look slow.
pub const BACKLOG_BUDGET: usize = 128 * 1024;

/// A connection as the operator sees it.
pub struct ConnInfo {
    pub peer: std::net::IpAddr,
    /// One of [`transport::KINDS`].
    pub transport: &'static str,
    /// `None` before login.
    pub logged_in_at_ms: Option<i64>,
}

/// One client connection: its protocol state and the transport that carries its bytes.
pub struct Conn {
    pub session: Session,
    pub transport: Transport,
    /// Reading is paused while this connection's own output is above the soft limit.
    read_paused: bool,
    /// Since when the write queue has been above its soft limit.
    over_soft_limit_since: Option<Instant>,
    /// Until when a closed connection whose session has ended is kept to flush its last frames.
    linger_until: Option<Instant>,
}

impl Conn {
    /// Whether the loop should read from it now.
    pub fn readable(&self) -> bool {
        self.session.closing().is_none() && !self.read_paused
    }

    /// Whether its timers run: a paused connection's unread frames wait for the server, not
    /// for the client.
    pub fn waits_for_client(&self) -> bool {
        !self.read_paused
    }

    /// The output limits (PROTOCOL.md §7), checked after every flush and on every sweep: a
    /// connection above the hard limit, or above the soft limit (or holding a whole backlog
    /// page unread) for `--write-queue-soft-seconds`, is a slow reader.
    fn is_slow_reader(&mut self, config: &Config, now: Instant) -> bool {
        let queued = self.transport.queued_bytes();
        match output_pressure(queued, self.session.is_syncing(), config) {
            OutputPressure::OverHard => true,
            OutputPressure::OverSoft => {
                let since = *self.over_soft_limit_since.get_or_insert(now);
                now.duration_since(since) >= Duration::from_secs(config.write_queue_soft_seconds)
            }
            OutputPressure::Within => {
                self.over_soft_limit_since = None;
                false
            }
        }
    }

    /// Closes a connection that does not read what it is sent. Its frames not yet begun on the
    /// wire are dropped (the items among them were never acknowledged, so they wait for its
    /// next login) and `ERROR SLOW_READER` takes their place, so the client learns why.
    fn close_slow_reader(&mut self) {
        let mut frame = Vec::new();
        response::error(&mut frame, 0, ErrorCode::SlowReader, "the connection did not read what it was sent");
        self.transport.queue_last(&frame);
        self.session.close(CloseReason::SlowReader);
    }
}

/// Where a connection's queued output stands against the output limits (PROTOCOL.md §7).
#[derive(Debug, PartialEq)]
enum OutputPressure {
    Within,
    /// The soft limit's clock runs.
    OverSoft,
    /// A slow reader at once.
    OverHard,
}

/// A queue above the hard limit is over it at once; one above the soft limit, or a syncing
/// connection's holding a whole backlog page (it has read nothing of the last one), starts the
/// soft limit's clock. A backlog below a page is being read and never counts.
fn output_pressure(queued: usize, syncing: bool, config: &Config) -> OutputPressure {
    if queued > config.write_queue_hard_limit {
        OutputPressure::OverHard
    } else if queued > config.write_queue_soft_limit || (syncing && queued >= BACKLOG_BUDGET) {
        OutputPressure::OverSoft
    } else {
        OutputPressure::Within
    }
}

pub struct Conns {
    slab: Slab<Conn>,
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
}

impl Conns {
    pub fn with_capacity(capacity: usize) -> Conns {
        Conns {
            // Reserved up front (address space only until used) so that growing never doubles
            // the table and copies it: an idle connection costs its own entry and no slack.
            slab: Slab::with_capacity(capacity),
            closing: HashSet::new(),
            dirty: HashSet::new(),
            syncing: HashSet::new(),
            read_again: HashSet::new(),
            paused: HashSet::new(),
        }
    }

    /// Open connections, closing ones included.
    pub fn count(&self) -> usize {
        self.slab.len()
    }

    /// The token the next [`Conns::insert`] will use, to register the socket under first.
    pub fn next_token(&self) -> usize {
        self.slab.vacant_key()
    }

    pub fn insert(&mut self, session: Session, transport: Transport) -> usize {
        self.slab.insert(Conn {
            session,
            transport,
            read_paused: false,
            over_soft_limit_since: None,
            linger_until: None,
        })
    }

    pub fn get_mut(&mut self, token: usize) -> Option<&mut Conn> {
        self.slab.get_mut(token)
    }

    /// What the operator's `ctl sessions` shows of a connection.
    pub fn describe(&self, token: usize) -> Option<ConnInfo> {
        self.slab.get(token).map(|c| ConnInfo {
            peer: c.session.peer,
            transport: c.transport.kind(),
            logged_in_at_ms: c.session.logged_in_at_ms(),
        })
    }

    /// How many connections speak each of [`transport::KINDS`], in that order.
    pub fn count_by_transport(&self) -> [(&'static str, usize); transport::KINDS.len()] {
        let mut counts = transport::KINDS.map(|kind| (kind, 0));
        for (_, conn) in &self.slab {
            let kind = conn.transport.kind();
            if let Some(count) = counts.iter_mut().find(|(k, _)| *k == kind) {
                count.1 += 1;
            }
        }
        counts
    }

    /// Bytes waiting in every write queue.
    pub fn queued_bytes_total(&self) -> usize {
        self.slab.iter().map(|(_, c)| c.transport.queued_bytes()).sum()
    }

    /// The one way to close a connection: it is marked with its first reason and removed at
    /// the end of the batch.
    pub fn close(&mut self, token: usize, reason: CloseReason) {
        if let Some(conn) = self.slab.get_mut(token) {
            conn.session.close(reason);
            self.closing.insert(token);
        }
    }

    /// Closes every connection: the server is stopping.
    pub fn close_all(&mut self, outbox: &mut Outbox) {
        for (token, conn) in self.slab.iter_mut() {
            if conn.session.closing().is_none() {
                outbox.error(token, 0, ErrorCode::ShuttingDown, "the server is shutting down");
                conn.session.close(CloseReason::ShuttingDown);
                self.closing.insert(token);
            }
        }
    }

    /// The poll reported that the peer of `token` closed its end, or an error.
    pub fn note_hang_up(&mut self, token: usize) {
        if let Some(conn) = self.slab.get_mut(token) {
            conn.transport.note_hang_up();
        }
    }

    /// Notes that the socket can take bytes again.
    pub fn mark_writable(&mut self, token: usize) {
        self.dirty.insert(token);
    }

    /// Connections to read without waiting for an event.
    pub fn take_read_again(&mut self) -> HashSet<usize> {
        std::mem::take(&mut self.read_again)
    }

    /// Whether the loop has work that needs no event: a read left for later, or a backlog
    /// with room to grow.
    pub fn has_work_without_events(&self) -> bool {
        !self.read_again.is_empty()
            || self
                .syncing
                .iter()
                .any(|&t| self.slab.get(t).is_some_and(|c| c.transport.queued_bytes() < BACKLOG_BUDGET))
    }

    /// Files a connection just read into the sets its state calls for.
    pub fn after_read(&mut self, token: usize, paused: bool, read_again: bool) {
        let Some(conn) = self.slab.get_mut(token) else { return };
        if conn.session.closing().is_some() {
            self.closing.insert(token);
        } else if paused {
            conn.read_paused = true;
            self.paused.insert(token);
        } else if read_again {
            self.read_again.insert(token);
        }
        if conn.session.is_syncing() {
            self.syncing.insert(token);
        }
        if conn.transport.wants_flush() {
            // A TLS handshake answers reads with writes of its own.
            self.dirty.insert(token);
        }
    }

    /// Moves the staged frames into the write queues. An item for a connection still
    /// receiving its backlog is dropped: it is committed, so the backlog reads it from the
    /// store in its place (see `sync.rs`), and the connection's id order holds.
    pub fn deliver(&mut self, outbox: &mut Outbox, committed: bool) {
        let Conns { slab, dirty, .. } = self;
        outbox.drain(committed, |to, kind, bytes, shared| {
            let Some(conn) = slab.get_mut(to) else { return };
            match kind {
                FrameKind::Item { .. } | FrameKind::OwnItem { .. } if conn.session.is_syncing() => return,
                FrameKind::Item { id } => conn.session.items_sent_through(id),
                FrameKind::OwnItem { id } => {
                    conn.session.items_sent_through(id);
                    return;
                }
                FrameKind::Response { .. } | FrameKind::Push => {}
            }
            match shared {
                Some(frame) => conn.transport.queue_shared(frame),
                None => conn.transport.queue(bytes),
            }
            dirty.insert(to);
        });
    }

    /// Pushes the next backlog page of every syncing connection with room in its queue. A
    /// connection whose user gained a conversation (`changed`) reloads its backlog's sources.
    pub fn push_backlogs(&mut self, store: &mut Store, outbox: &mut Outbox, changed: &HashSet<UserId>) {
        let Conns { slab, syncing, dirty, closing, .. } = self;
        syncing.retain(|&token| {
            let Some(conn) = slab.get_mut(token) else { return false };
            if conn.session.closing().is_some() {
                return false;
            }
            let queued = conn.transport.queued_bytes();
            let user = conn.session.user();
            let Some(backlog) = conn.session.backlog_mut() else { return false };
            if user.is_some_and(|u| changed.contains(&u)) {
                backlog.mark_stale();
            }
            if queued >= BACKLOG_BUDGET {
                return true;
            }
            let mut out = Vec::new();
            let result = backlog.fill(store, &mut out, BACKLOG_BUDGET - queued);
            let read_to = backlog.read_to();
            conn.transport.queue(&out);
            conn.session.items_sent_through(read_to);
            dirty.insert(token);
            match result {
                Ok(false) => true,
                Ok(true) => {
                    conn.session.backlog_finished();
                    false
                }
                Err(e) => {
                    log::error!("connection {token}: cannot read the offline backlog: {e}");
                    outbox.error(
                        token,
                        0,
                        ErrorCode::StoreUnavailable,
                        "the database failed while reading your offline messages; log in again",
                    );
                    conn.session.close(CloseReason::StoreFailed);
                    closing.insert(token);
                    false
                }
            }
        });
    }

    pub fn is_syncing_any(&self) -> bool {
        !self.syncing.is_empty()
    }

    /// Writes every connection with bytes waiting, and applies the output limits to each.
    pub fn flush(&mut self, registry: &Registry, config: &Config) {
        let now = Instant::now();
        for token in std::mem::take(&mut self.dirty) {
            let Some(conn) = self.slab.get_mut(token) else { continue };
            if let Err(e) = conn.transport.flush() {
                log::debug!("connection {token}: write failed: {e}");
                conn.transport.discard_output();
                conn.session.close(CloseReason::IoError);
                self.closing.insert(token);
                continue;
            }
            if conn.session.closing().is_some() {
                // Closed, and lingering at most until its last frames are written.
                if !conn.transport.wants_flush() {
                    self.closing.insert(token);
                }
            } else if conn.is_slow_reader(config, now) {
                log::warn!(
                    "connection {token}: closing a slow reader ({} bytes queued)",
                    conn.transport.queued_bytes()
                );
                conn.close_slow_reader();
                self.closing.insert(token);
                if let Err(e) = conn.transport.flush() {
                    log::debug!("connection {token}: write failed: {e}");
                    conn.transport.discard_output();
                }
            }
            if let Some(interest) = conn.transport.interest_change() {
                match registry.reregister(conn.transport.socket(), Token(token), interest) {
                    Ok(()) => conn.transport.interest_changed(),
                    Err(e) => {
                        log::error!("connection {token}: cannot change interest: {e}");
                        conn.transport.discard_output();
                        conn.session.close(CloseReason::IoError);
                        self.closing.insert(token);
                    }
                }
            }
        }
    }

    /// Resumes reading connections that were paused for their output, once it has drained.
    pub fn resume_paused(&mut self, config: &Config) {
        let soft = config.write_queue_soft_limit;
        let Conns { slab, paused, read_again, .. } = self;
        paused.retain(|&token| {
            let Some(conn) = slab.get_mut(token) else { return false };
            if conn.session.closing().is_some() {
                return false;
            }
            if conn.transport.queued_bytes() >= soft {
                return true;
            }
            conn.read_paused = false;
            read_again.insert(token);
            false
        });
    }

    /// The once-a-tick timers: idle timeout, frame timeout, login timeout (a TLS handshake
    /// included), slow readers held above the soft limit for too long, and closed connections
    /// that lingered long enough.
    pub fn sweep(&mut self, outbox: &mut Outbox, config: &Config, now: Instant) {
        let idle = config.idle_timeout();
        let frame = config.frame_timeout();
        let login = config.login_timeout();
        for (token, conn) in self.slab.iter_mut() {
            if conn.session.closing().is_some() {
                if conn.linger_until.is_some_and(|t| now >= t) {
                    // The client did not read its last frames in time.
                    conn.transport.discard_output();
                    self.closing.insert(token);
                }
                continue;
            }
            let waiting = conn.waits_for_client();
            let (code, reason, message) = if waiting && conn.session.idle_for(now, idle) {
                (ErrorCode::IdleTimeout, CloseReason::IdleTimeout, "no frame received within the idle timeout")
            } else if waiting && conn.transport.partial_frame_since().is_some_and(|t| now.duration_since(t) >= frame) {
                (
                    ErrorCode::FrameTimeout,
                    CloseReason::FrameTimeout,
                    "a frame took longer than the frame timeout to arrive",
                )
            } else if conn.session.unauthenticated_for(now, login) {
                (ErrorCode::LoginTimeout, CloseReason::LoginTimeout, "not logged in within the login timeout")
            } else if conn.is_slow_reader(config, now) {
                log::warn!(
                    "connection {token}: closing a slow reader ({} bytes queued)",
                    conn.transport.queued_bytes()
                );
                conn.close_slow_reader();
                self.dirty.insert(token);
                self.closing.insert(token);
                continue;
            } else {
                continue;
            };
            log::debug!("connection {token}: {reason:?}");
            outbox.error(token, 0, code, message);
            conn.session.close(reason);
            self.closing.insert(token);
        }
    }

    pub fn has_closing(&self) -> bool {
        !self.closing.is_empty()
    }

    /// Ends the session of every connection marked to close, and removes it, unless it is
    /// left to linger until its last frames are written (for at most
    /// `--write-queue-soft-seconds`, the time any reader is given to catch up). A connection
    /// still in its TLS handshake has no way to read them and does not linger.
    pub fn remove_closing(&mut self, core: &mut Core, registry: &Registry, scratch: &mut [u8]) {
        let now = Instant::now();
        let linger = Duration::from_secs(core.config.write_queue_soft_seconds);
        for token in std::mem::take(&mut self.closing) {
            let Some(conn) = self.slab.get_mut(token) else { continue };
            if let Some(user) = conn.session.user() {
                // The socket may outlive the session: it is over now.
                conn.session.ended();
                cmd::end_session(&mut core.ctx(now), token, user);
            }
            let lingers = conn.session.closing().is_some_and(CloseReason::lingers)
                && conn.transport.wants_flush()
                && !conn.transport.is_handshaking();
            if lingers && conn.linger_until.is_none_or(|until| now < until) {
                conn.linger_until.get_or_insert(now + linger);
                continue;
            }
            let mut conn = self.slab.remove(token);
            self.syncing.remove(&token);
            self.dirty.remove(&token);
            self.paused.remove(&token);
            self.read_again.remove(&token);
            conn.transport.goodbye(conn.session.closing() == Some(CloseReason::ShuttingDown));
            conn.transport.drain_input(scratch);
            let _ = registry.deregister(conn.transport.socket());
            log::debug!("connection {token} closed: {:?}", conn.session.closing());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(soft: usize, hard: usize) -> Config {
        let mut config = Config::with_defaults(([127, 0, 0, 1], 0).into(), "unused.db".into());
        config.write_queue_soft_limit = soft;
        config.write_queue_hard_limit = hard;
        config
    }

    #[test]
    fn a_queue_is_over_a_limit_only_once_it_passes_it() {
        let config = limits(1_000_000, 4_000_000);
        assert_eq!(output_pressure(1_000_000, false, &config), OutputPressure::Within);
        assert_eq!(output_pressure(1_000_001, false, &config), OutputPressure::OverSoft);
        assert_eq!(output_pressure(4_000_000, false, &config), OutputPressure::OverSoft);
        assert_eq!(output_pressure(4_000_001, false, &config), OutputPressure::OverHard);
        assert_eq!(output_pressure(4_000_001, true, &config), OutputPressure::OverHard);
    }

    /// PROTOCOL.md §7: a connection receiving its backlog holds at most 128 KiB of it queued;
    /// holding all of it unread starts the soft limit's clock, holding less is reading.
    #[test]
    fn a_backlog_counts_against_the_soft_limit_only_when_a_whole_page_waits_unread() {
        let config = limits(1_000_000, 4_000_000);
        assert_eq!(output_pressure(0, true, &config), OutputPressure::Within);
        assert_eq!(output_pressure(4096, true, &config), OutputPressure::Within);
        assert_eq!(output_pressure(128 * 1024 - 1, true, &config), OutputPressure::Within);
        assert_eq!(output_pressure(128 * 1024, true, &config), OutputPressure::OverSoft);
        // The same bytes queued for a connection that is not syncing are answers and pushes,
        // held to the soft limit alone.
        assert_eq!(output_pressure(128 * 1024, false, &config), OutputPressure::Within);
    }
}
