//! Caps on what one user accumulates: groups, members of a group, pending friend requests and
//! friends (PROTOCOL.md §8). Besides bounding what one user can make the server hold, they keep
//! every list inside the `u16` count it is sent with: the flags cannot exceed 65,535.
//!
//! The friend-request checks run first in their handlers and pass whatever they cannot judge
//! (an unknown name, a request that is not there), so the handler's own refusal for those
//! stays the answer; the invitation check runs after the handler's own checks. Either way a
//! cap never reveals what a refusal would hide.

use super::{Ctx, Outcome, Refusal, refuse};
use crate::protocol::ErrorCode;
use crate::protocol::response::List16;
use crate::store::{ContactState, GroupId, UserId};

/// `GROUP_CREATE`: the creator joins the new group.
pub fn check_create_group(ctx: &Ctx, me: UserId) -> Outcome {
    if ctx.store.group_count(me)? >= ctx.config.max_groups_per_user {
        return refuse(ErrorCode::TooManyGroups, "you are in as many groups as a user may be; leave one first");
    }
    Ok(())
}

/// `GROUP_INVITE` of `them`, a friend of the inviter and no member yet, to a group other than
/// the lobby (the handler has checked all three): the group needs room for one more member,
/// and the invitee for one more group.
pub fn check_invite(ctx: &Ctx, group: GroupId, them: UserId) -> Outcome {
    if ctx.store.member_count(group)? >= ctx.config.max_group_members {
        return refuse(ErrorCode::GroupFull, "that group has as many members as a group may have");
    }
    if ctx.store.group_count(them)? >= ctx.config.max_groups_per_user {
        return refuse(ErrorCode::TooManyGroups, "that user is in as many groups as a user may be");
    }
    Ok(())
}

/// `FRIEND_REQUEST`: a new request needs room on both sides; one that answers the other's
/// request makes a friendship at once, which needs room for a friend on both sides.
pub fn check_friend_request(ctx: &Ctx, me: UserId, username: &str) -> Outcome {
    let Some((them, _)) = ctx.store.find_user_id(&username.to_ascii_lowercase())? else { return Ok(()) };
    let already_friends = ctx.store.contact_state(me, them)? == Some(ContactState::Friends);
    if them == me || already_friends || ctx.store.request_exists(me, them)? {
        return Ok(());
    }
    if ctx.store.request_exists(them, me)? {
        return check_befriend(ctx, me, them);
    }
    if ctx.store.friend_count(me)? >= ctx.config.max_friends {
        return refuse(ErrorCode::TooManyFriends, "you have as many friends as a user may have; remove one first");
    }
    let max = ctx.config.max_pending_requests;
    if ctx.store.pending_request_counts(me)?.outgoing >= max {
        return refuse(
            ErrorCode::TooManyRequests,
            "you have as many friend requests waiting for an answer as a user may",
        );
    }
    if ctx.store.pending_request_counts(them)?.incoming >= max {
        return refuse(ErrorCode::TooManyRequests, "that user has as many friend requests to answer as a user may");
    }
    Ok(())
}

/// `FRIEND_ACCEPT`: the friendship needs room on both sides.
pub fn check_friend_accept(ctx: &Ctx, me: UserId, username: &str) -> Outcome {
    let Some((them, _)) = ctx.store.find_user_id(&username.to_ascii_lowercase())? else { return Ok(()) };
    if !ctx.store.request_exists(them, me)? {
        return Ok(());
    }
    check_befriend(ctx, me, them)
}

fn check_befriend(ctx: &Ctx, me: UserId, them: UserId) -> Outcome {
    if ctx.store.friend_count(me)? >= ctx.config.max_friends {
        return refuse(ErrorCode::TooManyFriends, "you have as many friends as a user may have; remove one first");
    }
    if ctx.store.friend_count(them)? >= ctx.config.max_friends {
        return refuse(ErrorCode::TooManyFriends, "that user has as many friends as a user may have");
    }
    Ok(())
}

/// `items` as a list for a `u16` count, or the refusal `code` when there are more: possible
/// only for a list that grew before its cap existed or was lowered.
pub fn list16<'a, T>(items: &'a [T], code: ErrorCode, message: &'static str) -> Result<List16<'a, T>, Refusal> {
    List16::new(items).ok_or(Refusal::Error(code, message))
}
