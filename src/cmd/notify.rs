//! Pushes shared by several commands: presence, and stored friend events.

use super::Ctx;
use crate::outbox::FrameKind;
use crate::protocol::response::{self, FriendEvent};
use crate::store::{Channel, MessageKind, NewMessage, StoreResult, UserId};
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

/// Stores a friend event in `to`'s feed (so it survives until acknowledged) and pushes it to
/// `to`'s connections.
pub fn friend_event(ctx: &mut Ctx, from: UserId, from_name: &str, to: UserId, event: FriendEvent) -> StoreResult<()> {
    let id = ctx.store.insert_message(&NewMessage {
        channel: Channel::events_of(to),
        sender: from,
        client_msg_id: 0,
        kind: MessageKind::FriendEvent(event as u8),
        sent_at: ctx.now_ms,
        body: &[],
    })?;
    let now = ctx.now_ms as u64;
    for &t in ctx.world.sessions(to) {
        ctx.outbox.stage(t, FrameKind::Item, |b| response::friend_event(b, id as u64, now, event, from_name));
    }
    Ok(())
}
