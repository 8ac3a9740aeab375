//! HELLO, PING, REGISTER, the two SCRAM login steps, and LOGOUT.

use super::{Ctx, Origin, Outcome, Refusal, name_of, notify, refuse};
use crate::protocol::request::Registration;
use crate::protocol::response::{self, ServerLimits};
use crate::protocol::{ErrorCode, PROTOCOL_VERSION};
use crate::scram::{self, KEY_LEN, Key, SERVER_NONCE_LEN};
use crate::session::{CloseReason, PendingLogin};
use crate::store::{DeviceRefusal, NewUser, UserId};
use crate::sync::{Backlog, BacklogOwner};
use crate::world::World;
use std::time::Duration;

/// Failed logins after which a connection is closed.
pub const MAX_FAILED_LOGINS: u8 = 5;

pub fn ping(ctx: &mut Ctx, o: &mut Origin) -> Outcome {
    let id = o.request_id;
    ctx.outbox.respond(o.token, id, |b| response::pong(b, id));
    Ok(())
}

pub fn hello(ctx: &mut Ctx, o: &mut Origin, version: u16) -> Outcome {
    if version != PROTOCOL_VERSION {
        o.session.close(CloseReason::ProtocolError);
        return refuse(ErrorCode::UnsupportedVersion, "this server speaks protocol version 2 only");
    }
    o.session.hello_accepted();
    let limits = ServerLimits {
        max_frame: ctx.config.max_frame,
        max_frame_before_login: ctx.config.max_frame_before_login,
        max_body: ctx.config.max_body,
        idle_timeout_secs: ctx.config.idle_timeout.min(u32::MAX as u64) as u32,
        login_timeout_secs: ctx.config.login_timeout.min(u32::MAX as u64) as u32,
        min_kdf_iterations: ctx.config.min_kdf_iterations,
    };
    let id = o.request_id;
    ctx.outbox.respond(o.token, id, |b| response::hello_ok(b, id, &limits));
    Ok(())
}

/// Usernames are 1–32 characters of `[A-Za-z0-9_.-]`.
pub fn valid_username(name: &str) -> bool {
    (1..=32).contains(&name.len()) && name.bytes().all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(&c))
}

pub fn register(ctx: &mut Ctx, o: &mut Origin, r: &Registration) -> Outcome {
    count_registration(ctx, o)?;
    if !valid_username(r.username) {
        return refuse(ErrorCode::InvalidUsername, "a username is 1 to 32 characters of A-Z, a-z, 0-9, _ . -");
    }
    check_verifier(ctx, r.salt, r.iterations, r.stored_key, r.server_key)?;
    let name_key = r.username.to_ascii_lowercase();
    let cooling_ms = i64::from(ctx.config.name_cooling_days) * 86_400_000;
    ctx.store.release_deleted_name(&name_key, ctx.now_ms - cooling_ms)?;
    let created = ctx.store.create_user(&NewUser {
        name: r.username,
        name_key: &name_key,
        salt: r.salt,
        iterations: r.iterations,
        stored_key: r.stored_key,
        server_key: r.server_key,
        now_ms: ctx.now_ms,
    })?;
    if created.is_none() {
        return refuse(ErrorCode::UsernameTaken, "that username is taken");
    }
    let id = o.request_id;
    ctx.outbox.respond(o.token, id, |b| response::ok(b, id));
    Ok(())
}

/// Refuses a SCRAM verifier (of `REGISTER` or `PASSWORD_CHANGE`) that is weaker than this
/// server accepts or malformed: `WEAK_CREDENTIALS`.
pub(super) fn check_verifier(ctx: &Ctx, salt: &[u8], iterations: u32, stored_key: &[u8], server_key: &[u8]) -> Outcome {
    if iterations < ctx.config.min_kdf_iterations {
        return refuse(
            ErrorCode::WeakCredentials,
            "the key derivation uses fewer iterations than this server requires",
        );
    }
    if !(16..=64).contains(&salt.len()) || stored_key.len() != KEY_LEN || server_key.len() != KEY_LEN {
        return refuse(ErrorCode::WeakCredentials, "the salt must be 16 to 64 bytes and each key 32 bytes");
    }
    Ok(())
}

/// Counts a REGISTER against its address's `--register-limit`, or refuses it. Every attempt
/// counts, whatever its answer: USERNAME_TAKEN tells whether a name exists, so probing names
/// costs what registering does.
fn count_registration(ctx: &mut Ctx, o: &Origin) -> Outcome {
    let peer = o.session.peer;
    if !ctx.config.limits_registrations_from(peer) {
        return Ok(());
    }
    let window = Duration::from_secs(ctx.config.register_window);
    if let Err(wait) = ctx.world.registrations.check(peer, ctx.config.register_limit, window, ctx.now) {
        return Err(Refusal::RetryLater(ErrorCode::RateLimited, wait, "too many registrations from this address"));
    }
    ctx.world.registrations.record(peer, ctx.now);
    Ok(())
}

pub(super) fn key_from(bytes: &[u8]) -> Key {
    let mut key = [0u8; KEY_LEN];
    if bytes.len() == KEY_LEN {
        key.copy_from_slice(bytes);
    }
    key
}

pub fn login_start(ctx: &mut Ctx, o: &mut Origin, username: &str, client_nonce: &[u8]) -> Outcome {
    let name_key = username.to_ascii_lowercase();
    check_failed_logins(ctx, o, &name_key)?;
    let found = if valid_username(username) { ctx.store.find_user(&name_key)? } else { None };
    let pending = challenge(ctx, o, username, name_key, client_nonce, found)?;
    o.session.login_started(pending);
    Ok(())
}

/// Answers with a `LOGIN_CHALLENGE` for `username` (the user `found`, or a fake challenge
/// like a real one) and returns what the proof will be checked against.
pub(super) fn challenge(
    ctx: &mut Ctx,
    o: &Origin,
    username: &str,
    name_key: String,
    client_nonce: &[u8],
    found: Option<crate::store::UserRecord>,
) -> Result<PendingLogin, Refusal> {
    if !(16..=64).contains(&client_nonce.len()) {
        return Err(Refusal::Error(ErrorCode::InvalidArgument, "the client nonce must be 16 to 64 bytes"));
    }
    // An unknown name gets a challenge like a real one; its all-zero StoredKey matches no proof.
    let (user, salt, iterations, stored_key, server_key) = match found {
        Some(u) => (Some((u.id, u.name)), u.salt, u.iterations, key_from(&u.stored_key), key_from(&u.server_key)),
        None => {
            let salt = scram::fake_salt(ctx.server_secret, &name_key).to_vec();
            (None, salt, scram::DEFAULT_ITERATIONS, [0u8; KEY_LEN], [0u8; KEY_LEN])
        }
    };
    let mut nonce = Vec::with_capacity(client_nonce.len() + SERVER_NONCE_LEN);
    nonce.extend_from_slice(client_nonce);
    let mut server_nonce = [0u8; SERVER_NONCE_LEN];
    if getrandom::fill(&mut server_nonce).is_err() {
        return Err(Refusal::Error(ErrorCode::StoreUnavailable, "the server could not draw random bytes; try again"));
    }
    nonce.extend_from_slice(&server_nonce);
    let auth_message = scram::auth_message(username, client_nonce, &salt, iterations, &nonce);
    let id = o.request_id;
    ctx.outbox.respond(o.token, id, |b| response::login_challenge(b, id, &salt, iterations, &nonce));
    Ok(PendingLogin { name_key, user, stored_key, server_key, auth_message })
}

pub fn login_finish(ctx: &mut Ctx, o: &mut Origin, proof: &[u8], device_id: u64, device_name: &str) -> Outcome {
    let Some(pending) = o.session.take_pending_login() else {
        return refuse(ErrorCode::InvalidState, "LOGIN_FINISH needs a LOGIN_START first");
    };
    if device_id == 0 || !(1..=64).contains(&device_name.chars().count()) {
        return refuse(ErrorCode::InvalidArgument, "a device id is a nonzero u64 and its name 1 to 64 characters");
    }
    // Checked again: other connections may have failed since this one's LOGIN_START.
    check_failed_logins(ctx, o, &pending.name_key)?;
    let verified = scram::verify_proof(&pending.stored_key, &pending.auth_message, proof);
    if verified {
        ctx.world.failed_logins.succeeded(&pending.name_key, o.session.peer);
    }
    let Some((user, name)) = pending.user.filter(|_| verified) else {
        ctx.world.failed_logins.failed(&pending.name_key, o.session.peer, &ctx.config.login_limits(), ctx.now);
        if o.session.login_failed() >= MAX_FAILED_LOGINS {
            log::info!("closing a connection after {MAX_FAILED_LOGINS} failed logins");
            o.session.close(CloseReason::TooManyAttempts);
            return refuse(ErrorCode::TooManyAttempts, "too many failed logins; the connection is closed");
        }
        return refuse(ErrorCode::AuthFailed, "wrong username or password");
    };
    // Read again rather than taken from LOGIN_START: since the challenge the operator may
    // have disabled or deleted the account, or its owner changed the password. Checked after
    // the proof, so that it tells nothing to someone without the password.
    match ctx.store.login_check(user)? {
        Some(check) if check.stored_key[..] == pending.stored_key[..] => {
            if check.disabled {
                return refuse(ErrorCode::AccountDisabled, "this account is disabled by the server's operator");
            }
        }
        // The credentials proved are gone: a wrong password, though not the client's failure.
        _ => return refuse(ErrorCode::AuthFailed, "wrong username or password"),
    }
    if ctx.config.max_sessions > 0 && ctx.world.sessions(user).len() >= ctx.config.max_sessions {
        return refuse(
            ErrorCode::TooManySessions,
            "this user has too many connections logged in; log out of one first",
        );
    }
    // Everything the session needs is read or written before answering, so a database
    // failure leaves the connection logged out with a single error.
    let expire_before = ctx.config.device_expiry_before(ctx.now_ms);
    let max_devices = ctx.config.max_devices as usize;
    let device = match ctx.store.login_device(user, device_id, device_name, max_devices, expire_before, ctx.now_ms)? {
        Ok(device) => device,
        Err(DeviceRefusal::TooMany) => {
            return refuse(ErrorCode::TooManyDevices, "this user has too many devices; remove one from another device");
        }
    };
    let store = &*ctx.store;
    let session = (o.token, device.id);
    let change = ctx.world.start_session(user, &name, session, ctx.now, || World::snapshot(store, user))?;
    let signature = scram::server_signature(&pending.server_key, &pending.auth_message);
    let id = o.request_id;
    ctx.outbox.respond(o.token, id, |b| response::login_ok(b, id, &signature, &name));
    let friends: Vec<UserId> =
        ctx.world.user(user).map(|u| u.friends.values().map(|f| f.id).collect()).unwrap_or_default();
    notify::presence(ctx, &name, change, &friends);
    let backlog = Backlog::new(BacklogOwner {
        user,
        user_name: name.as_str().into(),
        device: device.id,
        position: device.delivered_up_to,
        cap: ctx.config.device_backlog_cap,
    });
    o.session.logged_in(user, device.id, device.delivered_up_to, backlog, ctx.now_ms);
    log::debug!("user {user} logged in");
    Ok(())
}

/// Refuses a login from a source that failed too often lately, as this account or as any
/// (`--login-failures-per-account`, `--login-failures-per-address`).
pub(super) fn check_failed_logins(ctx: &Ctx, o: &Origin, name_key: &str) -> Outcome {
    ctx.world.failed_logins.check(name_key, o.session.peer, ctx.now).map_err(|wait| {
        Refusal::RetryLater(ErrorCode::LoginThrottled, wait, "too many failed logins from your address; wait")
    })
}

/// Ends this connection's session; the last session of a user takes them offline.
pub fn end_session(ctx: &mut Ctx, token: crate::world::Token, user: UserId) {
    let name = name_of(ctx, user);
    let friends: Vec<UserId> =
        ctx.world.user(user).map(|u| u.friends.values().map(|f| f.id).collect()).unwrap_or_default();
    let change = ctx.world.end_session(user, token);
    notify::presence(ctx, &name, change, &friends);
}

pub fn logout(ctx: &mut Ctx, o: &mut Origin, user: UserId) -> Outcome {
    end_session(ctx, o.token, user);
    o.session.logged_out(ctx.now);
    let id = o.request_id;
    ctx.outbox.respond(o.token, id, |b| response::ok(b, id));
    Ok(())
}
