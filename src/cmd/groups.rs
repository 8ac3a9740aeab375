//! GROUP_CREATE, GROUP_INVITE, GROUP_LEAVE, GROUP_MEMBERS, GROUP_LIST, GROUP_SEND.

use super::chat::{answer_retry, fan_out, store_text};
use super::{Ctx, Origin, Outcome, caps, check_body, name_of, refuse, take_send_token};
use crate::outbox::FrameKind;
use crate::protocol::ErrorCode;
use crate::protocol::response::{self, Conversation, Delivery, GroupEntry, GroupEvent, GroupNotice, MemberEntry};
use crate::store::{Channel, DeviceId, GroupId, LOBBY_GROUP_ID, MessageKind, NewMessage, UserId};
use crate::world::Token;

const NOT_A_MEMBER: &str = "you are not a member of that group";

/// The group, if `me` is a member of it. Non-members get the same answer whether the group
/// exists or not.
fn member_group(ctx: &Ctx, me: UserId, group_id: u64) -> Result<GroupId, super::Refusal> {
    let group = i64::try_from(group_id).unwrap_or(-1);
    if ctx.world.is_member(me, group) {
        Ok(group)
    } else {
        Err(super::Refusal::Error(ErrorCode::Forbidden, NOT_A_MEMBER))
    }
}

fn online_sessions(ctx: &Ctx, group: GroupId) -> Vec<Token> {
    ctx.world.online_members(group).flat_map(|u| ctx.world.sessions(u).iter().copied()).collect()
}

/// Stores a membership change as an item of the group (so members' devices that are away get
/// it too, in id order) and pushes it to the online members' connections but `origin`'s.
pub(super) fn group_event(
    ctx: &mut Ctx,
    (origin_token, origin_device): (Token, DeviceId),
    group: GroupId,
    event: GroupEvent,
    (who, name): (UserId, &str),
) -> Outcome {
    let group_name = ctx.world.groups.get(&group).map(|g| g.name.clone()).unwrap_or_default();
    let kind = match event {
        GroupEvent::Joined => MessageKind::GroupJoined,
        GroupEvent::Left => MessageKind::GroupLeft,
    };
    let id = ctx.store.insert_message(&NewMessage {
        channel: Channel::group(group),
        sender: who,
        client_msg_id: 0,
        kind,
        sent_at: ctx.now_ms,
        body: group_name.as_bytes(),
        device: origin_device,
    })?;
    ctx.outbox.own_item(origin_token, id);
    let notice = GroupNotice {
        message_id: id as u64,
        timestamp_ms: ctx.now_ms as u64,
        group_id: group as u64,
        event,
        username: name,
        group_name: &group_name,
    };
    for t in online_sessions(ctx, group).into_iter().filter(|&t| t != origin_token) {
        ctx.outbox.stage(t, FrameKind::Item { id }, |b| response::group_event(b, &notice));
    }
    Ok(())
}

pub fn create(ctx: &mut Ctx, o: &mut Origin, me: UserId, name: &str) -> Outcome {
    caps::check_create_group(ctx, me)?;
    let chars = name.chars().count();
    if !(1..=64).contains(&chars) || name.trim().is_empty() {
        return refuse(ErrorCode::InvalidArgument, "a group name is 1 to 64 characters");
    }
    let group = ctx.store.create_group(name, me, ctx.now_ms)?;
    ctx.world.join_group(me, group, name);
    let rid = o.request_id;
    ctx.outbox.respond(o.token, rid, |b| response::group_created(b, rid, group as u64));
    Ok(())
}

/// Any member may invite a friend of theirs: a stranger cannot put anyone into groups (the
/// friendship is the invitee's consent to be contacted by the inviter; PROTOCOL.md §6).
pub fn invite(ctx: &mut Ctx, o: &mut Origin, me: UserId, group_id: u64, username: &str) -> Outcome {
    let group = member_group(ctx, me, group_id)?;
    if group == LOBBY_GROUP_ID {
        return refuse(ErrorCode::AlreadyMember, "every user is a member of the lobby");
    }
    let Some(friend) = ctx.world.user(me).and_then(|u| u.friend_by_name(username)).cloned() else {
        return refuse(ErrorCode::NotFriends, "you can only invite your friends");
    };
    if ctx.store.is_member(group, friend.id)? {
        return refuse(ErrorCode::AlreadyMember, "that user is already a member");
    }
    // After the friendship check, so a stranger's name never learns more than NOT_FRIENDS.
    caps::check_invite(ctx, group, friend.id)?;
    // The member's first item of the group is the event of their joining.
    ctx.store.add_member(group, friend.id, ctx.now_ms)?;
    let group_name = ctx.world.groups.get(&group).map(|g| g.name.clone()).unwrap_or_default();
    ctx.world.join_group(friend.id, group, &group_name);
    group_event(ctx, (o.token, o.device), group, GroupEvent::Joined, (friend.id, &friend.name))?;
    let rid = o.request_id;
    ctx.outbox.respond(o.token, rid, |b| response::ok(b, rid));
    Ok(())
}

pub fn leave(ctx: &mut Ctx, o: &mut Origin, me: UserId, group_id: u64) -> Outcome {
    let group = member_group(ctx, me, group_id)?;
    if group == LOBBY_GROUP_ID {
        return refuse(ErrorCode::InvalidArgument, "the lobby holds every user and cannot be left");
    }
    let my_name = name_of(ctx, me);
    group_event(ctx, (o.token, o.device), group, GroupEvent::Left, (me, &my_name))?;
    ctx.store.remove_member(group, me)?;
    ctx.world.leave_group(me, group);
    let rid = o.request_id;
    ctx.outbox.respond(o.token, rid, |b| response::ok(b, rid));
    Ok(())
}

pub fn members(ctx: &mut Ctx, o: &mut Origin, me: UserId, group_id: u64) -> Outcome {
    let group = member_group(ctx, me, group_id)?;
    let Some(info) = ctx.store.group_info(group)? else {
        return refuse(ErrorCode::Forbidden, NOT_A_MEMBER);
    };
    let mut members: Vec<MemberEntry> = info
        .members
        .into_iter()
        .map(|(id, username)| MemberEntry { username, online: ctx.world.is_online(id), owner: info.owner == Some(id) })
        .collect();
    members.sort_by_key(|m| m.username.to_ascii_lowercase());
    let rid = o.request_id;
    ctx.outbox.respond(o.token, rid, |b| response::group_members(b, rid, group as u64, &members));
    Ok(())
}

pub fn list(ctx: &mut Ctx, o: &mut Origin, me: UserId) -> Outcome {
    let groups: Vec<GroupEntry> = ctx
        .store
        .group_summaries(me)?
        .into_iter()
        .map(|g| GroupEntry { group_id: g.id as u64, name: g.name, owner: g.owner, members: g.members })
        .collect();
    let groups = caps::list16(&groups, ErrorCode::TooManyGroups, "you are in more groups than a list can hold")?;
    let rid = o.request_id;
    ctx.outbox.respond(o.token, rid, |b| response::group_list(b, rid, groups));
    Ok(())
}

pub fn send(ctx: &mut Ctx, o: &mut Origin, me: UserId, group_id: u64, client_msg_id: u64, body: &str) -> Outcome {
    let group = member_group(ctx, me, group_id)?;
    check_body(ctx, body)?;
    if let Some((id, sent_at)) = ctx.world.retries.get(me, client_msg_id) {
        return answer_retry(ctx, o, id, sent_at);
    }
    take_send_token(ctx, me)?;
    let (id, sent_at) = store_text(ctx, o, me, Channel::group(group), client_msg_id, body)?;

    let my_name = name_of(ctx, me);
    let delivery = Delivery {
        message_id: id as u64,
        timestamp_ms: sent_at as u64,
        from: &my_name,
        conversation: Conversation::Group { group_id: group as u64 },
        body: body.as_bytes(),
    };
    let items: Vec<Token> = ctx
        .world
        .online_members(group)
        .filter(|&u| u != me)
        .flat_map(|u| ctx.world.sessions(u).iter().copied())
        .collect();
    fan_out(ctx.outbox, &delivery, &items, ctx.world.sessions(me), o.token);
    Ok(())
}
