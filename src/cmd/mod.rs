//! Commands: one file per family. Each handler parses nothing itself (the protocol module
//! decoded the request), checks the session's right to it, applies it to the store and the
//! world, and stages its answer and pushes in the outbox. No handler sees a socket:
//! [`handle_frames`] takes bytes and a [`Session`], so the whole layer runs without a network
//! (the fuzz target and the unit tests below drive it that way).

pub mod accounts;
mod auth;
mod caps;
mod chat;
mod devices;
mod friends;
mod groups;
mod history;
mod notify;
pub mod operator;
#[cfg(test)]
mod tests;

pub use auth::end_session;

use crate::config::Config;
use crate::outbox::Outbox;
use crate::protocol::frame::{self, FrameCheck};
use crate::protocol::{ErrorCode, FrameHeader, Request, response};
use crate::session::{CloseReason, Session, SessionState};
use crate::store::{DeviceId, Store, StoreError, UserId};
use crate::world::{Token, World};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// What commands work on, owned by the server: the store, the live state, the outbox.
pub struct Core {
    pub store: Store,
    pub world: World,
    pub outbox: Outbox,
    pub config: Config,
    pub server_secret: Vec<u8>,
}

impl Core {
    /// Opens the live state over `store`: forgets expired devices and rebuilds the retry
    /// window from the newest sends.
    pub fn new(config: Config, mut store: Store) -> Result<Core, String> {
        let server_secret = store.server_secret().map_err(|e| e.to_string())?;
        let expired = store.expire_devices(config.device_expiry_before(wall_clock_ms())).map_err(|e| e.to_string())?;
        if !store.finish_iteration() {
            return Err("cannot forget expired devices".into());
        }
        if expired > 0 {
            log::info!("forgot {expired} devices not seen for {} days", config.device_expiry_days);
        }
        let mut world = World::new(config.dedup_window);
        world.retries.rebuild(&store).map_err(|e| e.to_string())?;
        Ok(Core { store, world, outbox: Outbox::default(), config, server_secret })
    }

    /// The context of one loop iteration, at `now`.
    pub fn ctx(&mut self, now: Instant) -> Ctx<'_> {
        Ctx {
            store: &mut self.store,
            world: &mut self.world,
            outbox: &mut self.outbox,
            config: &self.config,
            server_secret: &self.server_secret,
            now_ms: wall_clock_ms(),
            now,
        }
    }
}

/// Milliseconds since the Unix epoch: the time stamps stored with messages and devices.
pub fn wall_clock_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Everything a command may touch besides its own session.
pub struct Ctx<'a> {
    pub store: &'a mut Store,
    pub world: &'a mut World,
    pub outbox: &'a mut Outbox,
    pub config: &'a Config,
    pub server_secret: &'a [u8],
    /// Wall-clock time of this loop iteration, in milliseconds since the Unix epoch.
    pub now_ms: i64,
    /// Monotonic time of this loop iteration, for limits.
    pub now: Instant,
}

/// The connection a request arrived on.
pub struct Origin<'c> {
    pub token: Token,
    pub request_id: u32,
    /// The device of a logged-in connection (0 before login): what it makes is not sent back
    /// to it as an item.
    pub device: DeviceId,
    pub session: &'c mut Session,
}

/// A handler's failure: an error code and a sentence, or a database failure.
pub enum Refusal {
    Error(ErrorCode, &'static str),
    /// A limit that clears by itself: answered with `RETRY_LATER`.
    RetryLater(ErrorCode, std::time::Duration, &'static str),
    Store(StoreError),
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Self {
        Refusal::Store(e)
    }
}

pub type Outcome = Result<(), Refusal>;

pub fn refuse(code: ErrorCode, message: &'static str) -> Outcome {
    Err(Refusal::Error(code, message))
}

/// What [`handle_frames`] did with the bytes it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handled {
    /// Bytes of whole frames consumed; the rest waits for more bytes (or for the pause to end).
    pub used: usize,
    /// The connection's output passed the soft limit: read no more until it drains.
    pub paused: bool,
}

/// Handles every complete frame at the front of `data`, which arrived on connection `token`
/// with `queued` bytes already waiting in its write queue. Stops when the session is closed
/// or its output (queued plus staged in this call) passes the soft limit: a client that
/// writes without reading gets no unbounded buffering.
pub fn handle_frames(ctx: &mut Ctx, token: Token, session: &mut Session, queued: usize, data: &[u8]) -> Handled {
    let mut used = 0;
    let staged_at_start = ctx.outbox.staged_bytes();
    while session.closing().is_none() {
        if queued + (ctx.outbox.staged_bytes() - staged_at_start) > ctx.config.write_queue_soft_limit {
            return Handled { used, paused: true };
        }
        let limit = if session.is_authenticated() { ctx.config.max_frame } else { ctx.config.max_frame_before_login };
        match frame::check(&data[used..], limit) {
            FrameCheck::Incomplete => break,
            FrameCheck::TooLarge { length } => {
                let message = format!("frame of {length} bytes exceeds the limit of {limit}");
                log::debug!("connection {token}: {message}");
                ctx.outbox.error(token, 0, ErrorCode::FrameTooLarge, &message);
                session.close(CloseReason::ProtocolError);
            }
            FrameCheck::TooShort { length } => {
                log::debug!("connection {token}: frame length {length} is below 5");
                ctx.outbox.error(token, 0, ErrorCode::MalformedFrame, "a frame length must be at least 5");
                session.close(CloseReason::ProtocolError);
            }
            FrameCheck::Complete { total } => {
                session.frame_received(ctx.now);
                dispatch(ctx, token, session, FrameHeader::parse(&data[used..used + total]));
                used += total;
            }
        }
    }
    Handled { used, paused: false }
}

/// Handles one complete frame from a connection.
fn dispatch(ctx: &mut Ctx, token: Token, session: &mut Session, frame: FrameHeader) {
    ctx.outbox.begin_command();
    ctx.store.begin_batch();
    let writes_before = ctx.store.write_count();
    let request_id = frame.request_id;
    let device = session.device().unwrap_or(0);
    let mut origin = Origin { token, request_id, device, session };
    let outcome = match Request::decode(frame.opcode, frame.body) {
        Ok(request) => route(ctx, &mut origin, request),
        Err(e) => refuse(ErrorCode::MalformedFrame, e.describe()),
    };
    match outcome {
        Ok(()) => {}
        Err(Refusal::Error(code, message)) => ctx.outbox.error(token, request_id, code, message),
        Err(Refusal::RetryLater(code, wait, message)) => {
            // Rounded up: a client that waits exactly this long must not be early.
            let ms = wait.as_nanos().div_ceil(1_000_000).clamp(1, u32::MAX as u128) as u32;
            ctx.outbox.respond(token, request_id, |b| response::retry_later(b, request_id, code, ms, message));
        }
        Err(Refusal::Store(e)) => {
            log::error!("request failed in the store: {e}");
            ctx.outbox.error(
                token,
                request_id,
                ErrorCode::StoreUnavailable,
                "the database failed; nothing was stored, try again",
            );
        }
    }
    ctx.outbox.end_command(ctx.store.write_count() != writes_before);
}

/// Checks the request against the session's state (PROTOCOL.md §2) and runs it.
fn route(ctx: &mut Ctx, o: &mut Origin, request: Request) -> Outcome {
    use Request as R;
    match (o.session.state(), request) {
        (_, R::Unknown { .. }) => refuse(ErrorCode::UnknownOpcode, "unknown opcode"),
        (_, R::Ping) => auth::ping(ctx, o),
        (SessionState::AwaitHello, R::Hello { version }) => auth::hello(ctx, o, version),
        (SessionState::AwaitHello, _) => refuse(ErrorCode::HelloRequired, "send HELLO first"),
        (_, R::Hello { .. }) => refuse(ErrorCode::InvalidState, "HELLO was already sent"),
        (SessionState::Unauthenticated, R::Register(r)) => auth::register(ctx, o, &r),
        (SessionState::Unauthenticated, R::LoginStart { username, client_nonce }) => {
            auth::login_start(ctx, o, username, client_nonce)
        }
        (SessionState::Authenticating(_), R::LoginFinish { client_proof, device_id, device_name }) => {
            auth::login_finish(ctx, o, client_proof, device_id, device_name)
        }
        (_, R::Register(_) | R::LoginStart { .. } | R::LoginFinish { .. }) => {
            refuse(ErrorCode::InvalidState, "that login step is not expected now")
        }
        (&SessionState::Authenticated { user, .. }, request) => authenticated(ctx, o, user, request),
        (_, _) => refuse(ErrorCode::NotAuthenticated, "log in first"),
    }
}

fn authenticated(ctx: &mut Ctx, o: &mut Origin, user: UserId, request: Request) -> Outcome {
    use Request as R;
    match request {
        R::Logout => auth::logout(ctx, o, user),
        R::ReauthStart { client_nonce } => accounts::reauth_start(ctx, o, user, client_nonce),
        R::PasswordChange { client_proof, new } => accounts::password_change(ctx, o, user, client_proof, &new),
        R::AccountDelete { client_proof } => accounts::delete(ctx, o, user, client_proof),
        R::FriendRequest { username } => friends::request(ctx, o, user, username),
        R::FriendAccept { username } => friends::answer(ctx, o, user, username, friends::Answer::Accept),
        R::FriendDecline { username } => friends::answer(ctx, o, user, username, friends::Answer::Decline),
        R::FriendRemove { username } => friends::remove(ctx, o, user, username),
        R::FriendList => friends::list(ctx, o, user),
        R::Send { to, client_msg_id, body } => chat::send(ctx, o, user, to, client_msg_id, body),
        R::Ack { up_to_message_id } => chat::ack(ctx, o, user, up_to_message_id),
        R::Read { peer, up_to_message_id } => chat::read(ctx, o, user, peer, up_to_message_id),
        R::History { target, direction, from_message_id, limit } => {
            history::page(ctx, o, user, target, direction, from_message_id, limit)
        }
        R::GroupCreate { name } => groups::create(ctx, o, user, name),
        R::GroupInvite { group_id, username } => groups::invite(ctx, o, user, group_id, username),
        R::GroupLeave { group_id } => groups::leave(ctx, o, user, group_id),
        R::GroupMembers { group_id } => groups::members(ctx, o, user, group_id),
        R::GroupList => groups::list(ctx, o, user),
        R::GroupSend { group_id, client_msg_id, body } => groups::send(ctx, o, user, group_id, client_msg_id, body),
        R::DeviceList => devices::list(ctx, o, user),
        R::DeviceRemove { device_id } => devices::remove(ctx, o, user, device_id),
        // Routed before a logged-in user is looked at; answered the same way for safety.
        R::Hello { .. }
        | R::Ping
        | R::Register(_)
        | R::LoginStart { .. }
        | R::LoginFinish { .. }
        | R::Unknown { .. } => refuse(ErrorCode::InvalidState, "that request is not expected now"),
    }
}

/// The display name of an online user (every authenticated connection's user is online).
fn name_of(ctx: &Ctx, user: UserId) -> std::rc::Rc<str> {
    ctx.world.user(user).map(|u| u.name.clone()).unwrap_or_else(|| "".into())
}

/// Takes a token from the user's send bucket (`--send-rate`, `--send-burst`).
fn take_send_token(ctx: &mut Ctx, user: UserId) -> Outcome {
    let (rate, burst) = (ctx.config.send_rate, ctx.config.send_burst);
    if rate == 0 {
        return Ok(());
    }
    let Some(u) = ctx.world.users.get_mut(&user) else { return Ok(()) };
    u.send_bucket
        .take(rate, burst, ctx.now)
        .map_err(|wait| Refusal::RetryLater(ErrorCode::RateLimited, wait, "you are sending too fast; slow down"))
}

/// Checks a message body against `--max-body`.
fn check_body(ctx: &Ctx, body: &str) -> Outcome {
    if body.is_empty() || body.len() > ctx.config.max_body as usize {
        return refuse(ErrorCode::InvalidBody, "a message body must be 1 to max_body bytes of UTF-8");
    }
    Ok(())
}
