//! The protocol state of one connection: where it is in PROTOCOL.md §2 (hello, login, logged
//! in as a user on a device), its timers, its failed logins and the backlog still being
//! pushed. It knows nothing of sockets: commands change it through one method per transition,
//! and the transport that carries its bytes lives beside it in the connection table.

use crate::scram::Key;
use crate::store::{DeviceId, MessageId, UserId};
use crate::sync::Backlog;
use std::net::IpAddr;
use std::time::Instant;

/// Where a connection is in the protocol (PROTOCOL.md §2).
#[derive(Debug)]
pub enum SessionState {
    AwaitHello,
    Unauthenticated,
    Authenticating(Box<PendingLogin>),
    /// `since_ms`: when the login succeeded (milliseconds since the Unix epoch), for the
    /// operator's `ctl sessions`.
    Authenticated {
        user: UserId,
        device: DeviceId,
        since_ms: i64,
    },
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
    /// Accepted over `--max-connections`, only to be told `SERVER_FULL`.
    ServerFull,
    /// The store failed while the connection's backlog was read.
    StoreFailed,
    /// Another session of the account changed its password.
    CredentialsChanged,
    /// The account was deleted.
    AccountDeleted,
    /// An operator disabled the account.
    AccountDisabled,
    /// An HTTP request was answered (anything but a WebSocket upgrade).
    HttpAnswered,
    /// The WebSocket was closed by the client, or refused for a violation of RFC 6455.
    WebSocketEnded,
}

impl CloseReason {
    /// Whether the connection is kept a little after its session ends, for the client to read
    /// the frames that say why it is closed: not when the peer is gone, nor when the server
    /// is stopping.
    pub fn lingers(self) -> bool {
        !matches!(self, CloseReason::PeerClosed | CloseReason::IoError | CloseReason::ShuttingDown)
    }
}

pub struct Session {
    /// The client's address: login throttling and the registration limit count per address.
    pub peer: IpAddr,
    state: SessionState,
    /// When the last complete frame arrived: the idle timeout counts from here. Bytes alone do
    /// not count, or a client sending one byte a second would never be idle.
    last_frame_at: Instant,
    /// When the connection last became unauthenticated (accepted, or logged out): the login
    /// timeout counts from here, TLS handshake included.
    unauthenticated_since: Instant,
    failed_logins: u8,
    /// A logged-in session's challenge for a fresh proof of its password (`REAUTH_START`).
    reauth: Option<Box<PendingLogin>>,
    /// The backlog still being pushed after login, if any.
    backlog: Option<Box<Backlog>>,
    /// Every item for this connection's device with an id up to here has been queued on it:
    /// an `ACK` is clamped to it, so it can never acknowledge what was not sent.
    sent_through: MessageId,
    closing: Option<CloseReason>,
    /// Accepted over `--max-connections` on a TLS listener: told `SERVER_FULL` as soon as its
    /// handshake is done (it could not read the frame before), and closed.
    refused: bool,
}

impl Session {
    pub fn new(peer: IpAddr, now: Instant) -> Session {
        Session {
            peer,
            state: SessionState::AwaitHello,
            last_frame_at: now,
            unauthenticated_since: now,
            failed_logins: 0,
            reauth: None,
            backlog: None,
            sent_through: 0,
            closing: None,
            refused: false,
        }
    }

    /// Marks a connection to be refused with `SERVER_FULL` once it can read a frame.
    pub fn refuse_when_ready(&mut self) {
        self.refused = true;
    }

    pub fn is_refused(&self) -> bool {
        self.refused
    }

    pub fn state(&self) -> &SessionState {
        &self.state
    }

    pub fn user(&self) -> Option<UserId> {
        match self.state {
            SessionState::Authenticated { user, .. } => Some(user),
            _ => None,
        }
    }

    /// When a logged-in connection logged in (milliseconds since the Unix epoch).
    pub fn logged_in_at_ms(&self) -> Option<i64> {
        match self.state {
            SessionState::Authenticated { since_ms, .. } => Some(since_ms),
            _ => None,
        }
    }

    /// The device a logged-in connection speaks for.
    pub fn device(&self) -> Option<DeviceId> {
        match self.state {
            SessionState::Authenticated { device, .. } => Some(device),
            _ => None,
        }
    }

    pub fn is_authenticated(&self) -> bool {
        matches!(self.state, SessionState::Authenticated { .. })
    }

    /// `HELLO` was accepted: login steps are legal now.
    pub fn hello_accepted(&mut self) {
        self.state = SessionState::Unauthenticated;
    }

    /// `LOGIN_START` was answered with a challenge.
    pub fn login_started(&mut self, pending: PendingLogin) {
        self.state = SessionState::Authenticating(Box::new(pending));
    }

    /// Takes what `LOGIN_START` left for `LOGIN_FINISH`; the session is unauthenticated again
    /// unless [`Session::logged_in`] follows.
    pub fn take_pending_login(&mut self) -> Option<Box<PendingLogin>> {
        match std::mem::replace(&mut self.state, SessionState::Unauthenticated) {
            SessionState::Authenticating(pending) => Some(pending),
            other => {
                self.state = other;
                None
            }
        }
    }

    /// `REAUTH_START` was answered with a challenge; a new one replaces an unused one.
    pub fn reauth_started(&mut self, pending: PendingLogin) {
        self.reauth = Some(Box::new(pending));
    }

    /// Takes the challenge of `REAUTH_START`: each is good for one proof.
    pub fn take_reauth(&mut self) -> Option<Box<PendingLogin>> {
        self.reauth.take()
    }

    /// Counts a failed login on this connection; returns how many it has had.
    pub fn login_failed(&mut self) -> u8 {
        self.failed_logins = self.failed_logins.saturating_add(1);
        self.failed_logins
    }

    /// The login succeeded at `now_ms`: the session speaks for `user` on `device`, whose
    /// position is `delivered_up_to`, and pushes `backlog` first.
    pub fn logged_in(
        &mut self,
        user: UserId,
        device: DeviceId,
        delivered_up_to: MessageId,
        backlog: Backlog,
        now_ms: i64,
    ) {
        self.state = SessionState::Authenticated { user, device, since_ms: now_ms };
        self.sent_through = delivered_up_to;
        self.backlog = Some(Box::new(backlog));
    }

    /// `LOGOUT`: the connection stays open, unauthenticated, and the login timeout restarts.
    pub fn logged_out(&mut self, now: Instant) {
        self.state = SessionState::Unauthenticated;
        self.reauth = None;
        self.unauthenticated_since = now;
        self.backlog = None;
        self.sent_through = 0;
    }

    /// The connection is closing: its session is over, though its socket may linger.
    pub fn ended(&mut self) {
        self.state = SessionState::Unauthenticated;
        self.backlog = None;
    }

    /// Marks the connection to be closed at the end of the batch. The first reason wins.
    pub fn close(&mut self, reason: CloseReason) {
        self.closing.get_or_insert(reason);
    }

    pub fn closing(&self) -> Option<CloseReason> {
        self.closing
    }

    /// Records a complete frame: the idle timer restarts.
    pub fn frame_received(&mut self, now: Instant) {
        self.last_frame_at = now;
    }

    /// Whether no frame arrived for `idle`.
    pub fn idle_for(&self, now: Instant, idle: std::time::Duration) -> bool {
        now.duration_since(self.last_frame_at) >= idle
    }

    /// Whether the connection has been unauthenticated for `login` (TLS handshake included).
    pub fn unauthenticated_for(&self, now: Instant, login: std::time::Duration) -> bool {
        !self.is_authenticated() && now.duration_since(self.unauthenticated_since) >= login
    }

    /// Every item up to `id` has been queued on this connection (or was made by it).
    pub fn items_sent_through(&mut self, id: MessageId) {
        self.sent_through = self.sent_through.max(id);
    }

    /// The highest item id this connection may acknowledge.
    pub fn sent_through(&self) -> MessageId {
        self.sent_through
    }

    pub fn is_syncing(&self) -> bool {
        self.backlog.is_some()
    }

    pub fn backlog_mut(&mut self) -> Option<&mut Backlog> {
        self.backlog.as_deref_mut()
    }

    /// The backlog reached the newest item: the connection is live from now on.
    pub fn backlog_finished(&mut self) {
        self.backlog = None;
    }
}
