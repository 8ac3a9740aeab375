//! Pushes shared by several commands: presence, and stored friend events.

use super::Ctx;
use crate::outbox::FrameKind;
use crate::protocol::response::{self, FriendEvent};
use crate::store::{Channel, DeviceId, MessageKind, NewMessage, StoreResult, UserId};
use crate::world::{PresenceChange, Token};

/// Tells the online friends of `user` that they came online or went offline.
pub fn presence(ctx: &mut Ctx, name: &str, change: PresenceChange, friends: &[UserId]) {
    let online = match change {
        PresenceChange::CameOnline => true,
        PresenceChange::WentOffline => false,
        PresenceChange::Unchanged => return,
    };
    for &friend in friends {
        for &t in ctx.world.sessions(friend) {
            ctx.outbox.stage(t, FrameKind::Push, |b| response::presence(b, name, online));
        }
    }
}

/// Tells each session of `to` the current presence of `about` (used when two users become
/// friends, so each learns whether the other is online).
pub fn presence_of(ctx: &mut Ctx, about: UserId, about_name: &str, to: UserId) {
    if !ctx.world.is_online(about) {
        return;
    }
    let sessions: Vec<Token> = ctx.world.sessions(to).to_vec();
    for t in sessions {
        ctx.outbox.stage(t, FrameKind::Push, |b| response::presence(b, about_name, true));
    }
}

/// The two sides of a friend action: who did it (from which connection and device) and to whom.
pub struct FriendAction<'a> {
    pub actor: UserId,
    pub actor_name: &'a str,
    pub target: UserId,
    pub target_name: &'a str,
    /// The event the target gets; the actor's other devices get its [`FriendEvent::for_actor`].
    pub event: FriendEvent,
}

/// Stores a friend action as an item in both users' feeds — the target's event, and the
/// actor's own for their other devices — and pushes each to the connections that should see
/// it now. The connection that acted got its answer and is not sent the actor's item.
pub fn friend_event(ctx: &mut Ctx, origin: (Token, DeviceId), a: &FriendAction) -> StoreResult<()> {
    let (origin_token, origin_device) = origin;
    let now = ctx.now_ms;
    let for_target = ctx.store.insert_message(&NewMessage {
        channel: Channel::events_of(a.target),
        sender: a.actor,
        client_msg_id: 0,
        kind: MessageKind::FriendEvent(a.event as u8),
        sent_at: now,
        body: &[],
        device: origin_device,
    })?;
    let own = a.event.for_actor();
    let for_actor = ctx.store.insert_message(&NewMessage {
        channel: Channel::events_of(a.actor),
        sender: a.target,
        client_msg_id: 0,
        kind: MessageKind::FriendEvent(own as u8),
        sent_at: now,
        body: &[],
        device: origin_device,
    })?;
    ctx.outbox.own_item(origin_token, for_actor);
    for &t in ctx.world.sessions(a.target) {
        let item = FrameKind::Item { id: for_target };
        ctx.outbox.stage(t, item, |b| response::friend_event(b, for_target as u64, now as u64, a.event, a.actor_name));
    }
    for &t in ctx.world.sessions(a.actor).iter().filter(|&&t| t != origin_token) {
        let item = FrameKind::Item { id: for_actor };
        ctx.outbox.stage(t, item, |b| response::friend_event(b, for_actor as u64, now as u64, own, a.target_name));
    }
    Ok(())
}
