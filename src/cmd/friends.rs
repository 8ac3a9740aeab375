//! FRIEND_REQUEST, FRIEND_ACCEPT, FRIEND_DECLINE, FRIEND_REMOVE, FRIEND_LIST.

use super::notify::FriendAction;
use super::{Ctx, Origin, Outcome, caps, name_of, notify, refuse};
use crate::protocol::ErrorCode;
use crate::protocol::response::{self, FriendEvent, FriendRequestOutcome};
use crate::store::UserId;

pub enum Answer {
    Accept,
    Decline,
}

/// Stores a friend action as items for both users (see [`notify::friend_event`]).
fn tell(
    ctx: &mut Ctx,
    o: &Origin,
    (me, my_name): (UserId, &str),
    (them, their_name): (UserId, &str),
    event: FriendEvent,
) -> Outcome {
    let action = FriendAction { actor: me, actor_name: my_name, target: them, target_name: their_name, event };
    notify::friend_event(ctx, (o.token, o.device), &action)?;
    Ok(())
}

/// Makes two users friends in the store and the world, and tells the other side.
fn befriend(ctx: &mut Ctx, o: &Origin, me: UserId, my_name: &str, them: UserId, their_name: &str) -> Outcome {
    ctx.store.make_friends(me, them, ctx.now_ms)?;
    ctx.world.add_friendship((me, my_name), (them, their_name));
    tell(ctx, o, (me, my_name), (them, their_name), FriendEvent::Accepted)?;
    notify::presence_of(ctx, me, my_name, them);
    notify::presence_of(ctx, them, their_name, me);
    Ok(())
}

pub fn request(ctx: &mut Ctx, o: &mut Origin, me: UserId, username: &str) -> Outcome {
    caps::check_friend_request(ctx, me, username)?;
    let my_name = name_of(ctx, me);
    if username.eq_ignore_ascii_case(&my_name) {
        return refuse(ErrorCode::InvalidArgument, "you cannot send a friend request to yourself");
    }
    let Some((them, their_name)) = ctx.store.find_user_id(&username.to_ascii_lowercase())? else {
        return refuse(ErrorCode::UserNotFound, "there is no user with that name");
    };
    if ctx.world.user(me).is_some_and(|u| u.is_friend(them)) {
        return refuse(ErrorCode::AlreadyFriends, "you are already friends");
    }
    if ctx.store.request_exists(me, them)? {
        return refuse(ErrorCode::RequestPending, "your friend request is already pending");
    }
    let outcome = if ctx.store.delete_request(them, me)? {
        befriend(ctx, o, me, &my_name, them, &their_name)?;
        FriendRequestOutcome::BecameFriends
    } else {
        ctx.store.insert_request(me, them, ctx.now_ms)?;
        tell(ctx, o, (me, &my_name), (them, &their_name), FriendEvent::Requested)?;
        FriendRequestOutcome::Requested
    };
    let id = o.request_id;
    ctx.outbox.respond(o.token, id, |b| response::friend_request_ok(b, id, outcome));
    Ok(())
}

pub fn answer(ctx: &mut Ctx, o: &mut Origin, me: UserId, username: &str, answer: Answer) -> Outcome {
    if let Answer::Accept = answer {
        caps::check_friend_accept(ctx, me, username)?;
    }
    let found = ctx.store.find_user_id(&username.to_ascii_lowercase())?;
    let Some((them, their_name)) = found else {
        return refuse(ErrorCode::NoSuchRequest, "that user has not asked to be your friend");
    };
    if !ctx.store.request_exists(them, me)? {
        return refuse(ErrorCode::NoSuchRequest, "that user has not asked to be your friend");
    }
    ctx.store.delete_request(them, me)?;
    let my_name = name_of(ctx, me);
    match answer {
        Answer::Accept => befriend(ctx, o, me, &my_name, them, &their_name)?,
        Answer::Decline => tell(ctx, o, (me, &my_name), (them, &their_name), FriendEvent::Declined)?,
    }
    let id = o.request_id;
    ctx.outbox.respond(o.token, id, |b| response::ok(b, id));
    Ok(())
}

pub fn remove(ctx: &mut Ctx, o: &mut Origin, me: UserId, username: &str) -> Outcome {
    let Some(friend) = ctx.world.user(me).and_then(|u| u.friend_by_name(username)).cloned() else {
        return refuse(ErrorCode::NotFriends, "you are not friends with that user");
    };
    ctx.store.end_friendship(me, friend.id)?;
    ctx.world.remove_friendship(me, friend.id);
    let my_name = name_of(ctx, me);
    tell(ctx, o, (me, &my_name), (friend.id, &friend.name), FriendEvent::Removed)?;
    let id = o.request_id;
    ctx.outbox.respond(o.token, id, |b| response::ok(b, id));
    Ok(())
}

pub fn list(ctx: &mut Ctx, o: &mut Origin, me: UserId) -> Outcome {
    let mut friends: Vec<(String, bool)> = ctx
        .world
        .user(me)
        .map(|u| u.friends.values().map(|f| (f.name.to_string(), ctx.world.is_online(f.id))).collect())
        .unwrap_or_default();
    friends.sort_by_key(|(name, _)| name.to_ascii_lowercase());
    let incoming = ctx.store.incoming_requests(me)?;
    let outgoing = ctx.store.outgoing_requests(me)?;
    const TOO_LONG: &str = "your friends and requests are more than a list can hold";
    let friends = caps::list16(&friends, ErrorCode::TooManyFriends, TOO_LONG)?;
    let incoming = caps::list16(&incoming, ErrorCode::TooManyRequests, TOO_LONG)?;
    let outgoing = caps::list16(&outgoing, ErrorCode::TooManyRequests, TOO_LONG)?;
    let id = o.request_id;
    ctx.outbox.respond(o.token, id, |b| response::friend_list(b, id, friends, incoming, outgoing));
    Ok(())
}
