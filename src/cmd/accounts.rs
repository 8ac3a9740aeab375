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
use crate::scram;
use crate::session::{CloseReason, PendingLogin};
use crate::store::{ContactState, DeviceId, LOBBY_GROUP_ID, UserId};
use crate::world::Token;

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
    auth::check_verifier(ctx, new.salt, new.iterations, new.stored_key, new.server_key)?;
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

/// `ACCOUNT_DELETE`: with a fresh proof, [`delete_account`], answered `OK`; the connection
/// closes with the others.
pub fn delete(ctx: &mut Ctx, o: &mut Origin, me: UserId, proof: &[u8]) -> Outcome {
    check_proof(ctx, o, me, proof)?;
    delete_account(ctx, me, Some((o.token, o.device)))?;
    let rid = o.request_id;
    ctx.outbox.respond(o.token, rid, |b| response::ok(b, rid));
    Ok(())
}

/// Deletes the account of `me`, asked by its connection `origin` (or by an operator: `None`).
/// Friends are told it is gone (a `FRIEND_EVENT` removed), its groups that it left; its
/// messages stay in the others' history under its name marked deleted, and every session of
/// it is closed once this commits (the others with `ERROR ACCOUNT_DELETED`, `origin` after its
/// answer). The name can be registered again after `--name-cooling-days`.
pub fn delete_account(ctx: &mut Ctx, me: UserId, origin: Option<(Token, DeviceId)>) -> Outcome {
    // An operator's deletion is made by no connection and no device.
    let origin = origin.unwrap_or((Token::MAX, 0));
    let my_name = ctx.store.user_name(me)?;
    let friends: Vec<(UserId, String)> = ctx
        .store
        .contacts(me)?
        .into_iter()
        .filter(|c| matches!(c.state, ContactState::Friends))
        .map(|c| (c.peer, c.name))
        .collect();
    for (friend, name) in friends {
        ctx.store.end_friendship(me, friend)?;
        ctx.world.remove_friendship(me, friend);
        let event = FriendEvent::Removed;
        let action = FriendAction { actor: me, actor_name: &my_name, target: friend, target_name: &name, event };
        notify::friend_event(ctx, origin, &action)?;
    }
    for membership in ctx.store.memberships(me)? {
        let group = membership.group;
        if group != LOBBY_GROUP_ID {
            super::groups::group_event(ctx, origin, group, GroupEvent::Left, (me, &my_name))?;
        }
        ctx.store.remove_member(group, me)?;
        ctx.world.leave_group(me, group);
    }
    ctx.store.delete_account(me, ctx.now_ms)?;
    for token in ctx.world.sessions(me).to_vec() {
        if token != origin.0 {
            ctx.outbox.stage(token, FrameKind::Push, |b| {
                response::error(b, 0, ErrorCode::AccountDeleted, "this account was deleted")
            });
        }
        ctx.world.close_after_commit.push((token, CloseReason::AccountDeleted));
    }
    log::info!("user {me} deleted");
    Ok(())
}
