//! REAUTH_START, PASSWORD_CHANGE and ACCOUNT_DELETE: what a logged-in user does to their own
//! account, each only with a fresh proof of the password (PROTOCOL.md §5, "Changing the
//! password"). A session left open on a borrowed machine cannot take the account over.

use super::auth::{self, MAX_FAILED_LOGINS};
use super::notify::{self, FriendAction};
use super::{Ctx, Origin, Outcome, Refusal, refuse};
use crate::outbox::FrameKind;
use crate::protocol::ErrorCode;
use crate::protocol::request::Verifier;
use crate::protocol::response;
use crate::protocol::response::{FriendEvent, GroupEvent};
use crate::scram::{self, KEY_LEN};
use crate::session::{CloseReason, PendingLogin};
use crate::store::{LOBBY_GROUP_ID, UserId};

pub fn reauth_start(ctx: &mut Ctx, o: &mut Origin, me: UserId, client_nonce: &[u8]) -> Outcome {
    let name = ctx.store.user_name(me)?;
    let name_key = name.to_ascii_lowercase();
    auth::check_failed_logins(ctx, o, &name_key)?;
    let found = ctx.store.find_user(&name_key)?;
    let pending = auth::challenge(ctx, o, &name, name_key, client_nonce, found)?;
    o.session.reauth_started(pending);
    Ok(())
}

/// Checks the proof against the session's `REAUTH_START` challenge (used up either way); a
/// wrong proof counts as a failed login.
fn check_proof(ctx: &mut Ctx, o: &mut Origin, me: UserId, proof: &[u8]) -> Result<(), Refusal> {
    let Some(pending) = o.session.take_reauth() else {
        return refuse(ErrorCode::InvalidState, "send REAUTH_START first");
    };
    auth::check_failed_logins(ctx, o, &pending.name_key)?;
    let PendingLogin { name_key, user, stored_key, auth_message, .. } = *pending;
    let verified = user.is_some_and(|(id, _)| id == me) && scram::verify_proof(&stored_key, &auth_message, proof);
    if verified {
        ctx.world.failed_logins.succeeded(&name_key, o.session.peer);
        return Ok(());
    }
    ctx.world.failed_logins.failed(&name_key, o.session.peer, &ctx.config.login_limits(), ctx.now);
    if o.session.login_failed() >= MAX_FAILED_LOGINS {
        o.session.close(CloseReason::TooManyAttempts);
        return refuse(ErrorCode::TooManyAttempts, "too many wrong passwords; the connection is closed");
    }
    refuse(ErrorCode::AuthFailed, "wrong password")
}

pub fn password_change(ctx: &mut Ctx, o: &mut Origin, me: UserId, proof: &[u8], new: &Verifier) -> Outcome {
    check_proof(ctx, o, me, proof)?;
    if new.iterations < ctx.config.min_kdf_iterations {
        return refuse(
            ErrorCode::WeakCredentials,
            "the key derivation uses fewer iterations than this server requires",
        );
    }
    if !(16..=64).contains(&new.salt.len()) || new.stored_key.len() != KEY_LEN || new.server_key.len() != KEY_LEN {
        return refuse(ErrorCode::WeakCredentials, "the salt must be 16 to 64 bytes and each key 32 bytes");
    }
    ctx.store.set_verifier(me, new.salt, new.iterations, new.stored_key, new.server_key)?;
    // Every other session of the account was opened with the old password: end them.
    let others: Vec<_> = ctx.world.sessions(me).iter().copied().filter(|&t| t != o.token).collect();
    for token in others {
        ctx.outbox.stage(token, FrameKind::Push, |b| {
            response::error(
                b,
                0,
                ErrorCode::CredentialsChanged,
                "the password was changed on another device; log in again",
            )
        });
        ctx.world.close_after_commit.push((token, CloseReason::CredentialsChanged));
    }
    log::info!("user {me} changed their password");
    let rid = o.request_id;
    ctx.outbox.respond(o.token, rid, |b| response::ok(b, rid));
    Ok(())
}

/// Deletes the account: friends are told it is gone (a `FRIEND_EVENT` removed), its groups
/// that it left, its messages stay in the others' history under its name marked deleted, and
/// every session of it is closed (this one after its `OK`, the others with
/// `ERROR ACCOUNT_DELETED`). The name can be registered again after `--name-cooling-days`.
pub fn delete(ctx: &mut Ctx, o: &mut Origin, me: UserId, proof: &[u8]) -> Outcome {
    check_proof(ctx, o, me, proof)?;
    let my_name = super::name_of(ctx, me);
    let friends: Vec<(UserId, std::rc::Rc<str>)> =
        ctx.world.user(me).map(|u| u.friends.values().map(|f| (f.id, f.name.clone())).collect()).unwrap_or_default();
    for (friend, name) in friends {
        ctx.store.end_friendship(me, friend)?;
        ctx.world.remove_friendship(me, friend);
        let action = FriendAction {
            actor: me,
            actor_name: &my_name,
            target: friend,
            target_name: &name,
            event: FriendEvent::Removed,
        };
        notify::friend_event(ctx, (o.token, o.device), &action)?;
    }
    for membership in ctx.store.memberships(me)? {
        let group = membership.group;
        if group != LOBBY_GROUP_ID {
            super::groups::group_event(ctx, o, group, GroupEvent::Left, (me, &my_name))?;
        }
        ctx.store.remove_member(group, me)?;
        ctx.world.leave_group(me, group);
    }
    ctx.store.delete_account(me, ctx.now_ms)?;
    for token in ctx.world.sessions(me).to_vec() {
        if token != o.token {
            ctx.outbox.stage(token, FrameKind::Push, |b| {
                response::error(b, 0, ErrorCode::AccountDeleted, "this account was deleted from another device")
            });
        }
        ctx.world.close_after_commit.push((token, CloseReason::AccountDeleted));
    }
    log::info!("user {me} deleted their account");
    let rid = o.request_id;
    ctx.outbox.respond(o.token, rid, |b| response::ok(b, rid));
    Ok(())
}
