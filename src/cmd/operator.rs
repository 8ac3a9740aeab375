//! What `im-server ctl` changes, done the way a user's own request would be: in the batch's
//! transaction, with the pushes staged in the outbox until it commits.

use super::{Ctx, Outcome, Refusal, accounts, groups, refuse};
use crate::outbox::FrameKind;
use crate::protocol::ErrorCode;
use crate::protocol::response::{self, GroupEvent};
use crate::session::CloseReason;
use crate::store::{GroupId, LOBBY_GROUP_ID, UserId};
use crate::world::Token;

/// A change made by no connection and no device.
const OPERATOR: (Token, crate::store::DeviceId) = (Token::MAX, 0);

/// Runs `action` as one command of the batch; returns whether it wrote (its answer must then
/// wait for the commit).
pub fn run(ctx: &mut Ctx, action: impl FnOnce(&mut Ctx) -> Outcome) -> Result<bool, Refusal> {
    ctx.outbox.begin_command();
    ctx.store.begin_batch();
    let writes_before = ctx.store.write_count();
    let outcome = action(ctx);
    let wrote = ctx.store.write_count() != writes_before;
    ctx.outbox.end_command(wrote);
    outcome.map(|()| wrote)
}

/// The live account called `name` (any letter case).
pub fn find(ctx: &Ctx, name: &str) -> Result<(UserId, String), Refusal> {
    match ctx.store.find_user_id(&name.to_ascii_lowercase())? {
        Some(found) => Ok(found),
        None => Err(Refusal::Error(ErrorCode::UserNotFound, "no such user")),
    }
}

/// Disables or enables an account. Disabling closes its sessions once it has committed, each
/// told `ACCOUNT_DISABLED`.
pub fn set_disabled(ctx: &mut Ctx, user: UserId, disabled: bool) -> Outcome {
    ctx.store.set_disabled(user, disabled, ctx.now_ms)?;
    if disabled {
        for token in ctx.world.sessions(user).to_vec() {
            ctx.outbox.stage(token, FrameKind::Push, |b| {
                response::error(b, 0, ErrorCode::AccountDisabled, "this account was disabled by the server's operator")
            });
            ctx.world.close_after_commit.push((token, CloseReason::AccountDisabled));
        }
    }
    Ok(())
}

/// Removes a member from a group as if they had left: the members get `GROUP_EVENT` left.
pub fn kick(ctx: &mut Ctx, group: GroupId, user: UserId, name: &str) -> Outcome {
    if group == LOBBY_GROUP_ID {
        return refuse(ErrorCode::InvalidArgument, "the lobby holds every user");
    }
    if !ctx.store.is_member(group, user)? {
        return refuse(ErrorCode::Forbidden, "that user is not a member of that group");
    }
    groups::group_event(ctx, OPERATOR, group, GroupEvent::Left, (user, name))?;
    ctx.store.remove_member(group, user)?;
    ctx.world.leave_group(user, group);
    ctx.world.sources_changed.insert(user);
    Ok(())
}

/// Deletes an account as `ACCOUNT_DELETE` would, without its proof.
pub fn delete(ctx: &mut Ctx, user: UserId) -> Outcome {
    accounts::delete_account(ctx, user, None)
}
