//! SEND, ACK and READ: direct messages, acknowledgement of delivery, read receipts.

use super::{Ctx, Origin, Outcome, Refusal, check_body, name_of, refuse, take_send_token};
use crate::outbox::{FrameKind, Outbox};
use crate::protocol::ErrorCode;
use crate::protocol::response::{self, Conversation, Delivery, Receipt};
use crate::store::{Channel, MessageId, MessageKind, NewMessage, UserId};
use crate::world::{Token, Undelivered};

/// Answers a retry with its original `SENT`. If the original is still in the uncommitted
/// transaction, the answer waits for the commit like the original's.
pub(super) fn answer_retry(ctx: &mut Ctx, o: &Origin, id: MessageId, sent_at: i64) -> Outcome {
    if ctx.store.is_uncommitted(id) {
        ctx.outbox.mark_needs_commit();
    }
    let rid = o.request_id;
    ctx.outbox.respond(o.token, rid, |b| response::sent(b, rid, id as u64, sent_at as u64));
    Ok(())
}

/// Stores a text message in `channel`, remembers it for retries and stages its `SENT`;
/// returns its id and timestamp. Shared by `SEND` and `GROUP_SEND`.
pub(super) fn store_text(
    ctx: &mut Ctx,
    o: &Origin,
    me: UserId,
    channel: Channel,
    client_msg_id: u64,
    body: &str,
) -> Result<(MessageId, i64), Refusal> {
    let sent_at = ctx.now_ms;
    let message = NewMessage {
        channel,
        sender: me,
        client_msg_id,
        kind: MessageKind::Text,
        sent_at,
        body: body.as_bytes(),
        device: o.device,
    };
    let id = ctx.store.insert_message(&message)?;
    ctx.outbox.own_item(o.token, id);
    ctx.world.retries.remember(me, client_msg_id, id, sent_at);
    let rid = o.request_id;
    ctx.outbox.respond(o.token, rid, |b| response::sent(b, rid, id as u64, sent_at as u64));
    Ok((id, sent_at))
}

/// Stages one `DELIVER` item for the recipients' connections and the sender's connections
/// but `origin` (the sender's other devices get their own messages too, in the same id order
/// as everything else). A frame for more than one connection is encoded once and shared.
pub(super) fn fan_out(
    outbox: &mut Outbox,
    delivery: &Delivery,
    recipients: &[Token],
    senders: &[Token],
    origin: Token,
) {
    let item = FrameKind::Item { id: delivery.message_id as MessageId };
    let own = senders.iter().copied().filter(|&t| t != origin);
    match (recipients, senders.len()) {
        ([], 0 | 1) => {}
        (&[only], 0 | 1) => outbox.stage(only, item, |b| response::deliver(b, delivery)),
        _ => {
            let mut frame = Vec::new();
            response::deliver(&mut frame, delivery);
            let id = delivery.message_id as MessageId;
            outbox.stage_fan_out(recipients.iter().copied().chain(own).collect(), origin, id, &frame);
        }
    }
}

pub fn send(ctx: &mut Ctx, o: &mut Origin, me: UserId, to: &str, client_msg_id: u64, body: &str) -> Outcome {
    let Some(friend) = ctx.world.user(me).and_then(|u| u.friend_by_name(to)).cloned() else {
        return refuse(ErrorCode::NotFriends, "you can only message your friends");
    };
    check_body(ctx, body)?;
    if let Some((id, sent_at)) = ctx.world.retries.get(me, client_msg_id) {
        return answer_retry(ctx, o, id, sent_at);
    }
    take_send_token(ctx, me)?;
    check_recipient_queue(ctx, friend.id)?;
    let (id, sent_at) = store_text(ctx, o, me, Channel::direct(me, friend.id), client_msg_id, body)?;
    if let Some(undelivered) = ctx.world.undelivered.get_mut(&friend.id) {
        undelivered.ids.push_back(id);
    }

    let my_name = name_of(ctx, me);
    let delivery = Delivery {
        message_id: id as u64,
        timestamp_ms: sent_at as u64,
        from: &my_name,
        conversation: Conversation::Direct { to: &friend.name },
        body: body.as_bytes(),
    };
    fan_out(ctx.outbox, &delivery, ctx.world.sessions(friend.id), ctx.world.sessions(me), o.token);
    Ok(())
}

/// Refuses a message to a recipient who already has `--max-offline` undelivered ones. The
/// ids are read from the store the first time they are needed, then kept by SEND and ACK, so
/// the hot path is one map lookup.
fn check_recipient_queue(ctx: &mut Ctx, recipient: UserId) -> Outcome {
    let limit = ctx.config.max_offline as usize;
    if limit == 0 {
        return Ok(());
    }
    if !ctx.world.undelivered.contains_key(&recipient) {
        let ids = ctx.store.undelivered_direct(recipient, limit)?;
        let complete = ids.len() <= limit;
        ctx.world.undelivered.insert(recipient, Undelivered { ids: ids.into(), complete });
    }
    if ctx.world.undelivered.get(&recipient).is_some_and(|u| u.ids.len() >= limit) {
        return refuse(ErrorCode::RecipientQueueFull, "the recipient has too many undelivered messages; try later");
    }
    Ok(())
}

pub fn ack(ctx: &mut Ctx, o: &mut Origin, me: UserId, up_to: u64) -> Outcome {
    // A position never passes what this connection was sent: acknowledging an id it has not
    // received (a SENT's id, or the future) would lose the items below it.
    let up_to = (up_to.min(i64::MAX as u64) as i64).min(o.session.sent_through());
    ctx.store.acknowledge(o.device, up_to, ctx.now_ms)?;
    if let Some(undelivered) = ctx.world.undelivered.get_mut(&me) {
        if undelivered.complete {
            while undelivered.ids.front().is_some_and(|&id| id <= up_to) {
                undelivered.ids.pop_front();
            }
            if undelivered.ids.is_empty() {
                // Keep the (empty, complete) entry but give its memory back.
                undelivered.ids = Default::default();
            }
        } else {
            ctx.world.undelivered.remove(&me);
        }
    }
    let rid = o.request_id;
    ctx.outbox.respond(o.token, rid, |b| response::ok(b, rid));
    Ok(())
}

pub fn read(ctx: &mut Ctx, o: &mut Origin, me: UserId, peer: &str, up_to: u64) -> Outcome {
    let Some(friend) = ctx.world.user(me).and_then(|u| u.friend_by_name(peer)).cloned() else {
        return refuse(ErrorCode::NotFriends, "read receipts are for conversations with friends");
    };
    // The conversation's newest message, not the server's: a receipt never names an id of
    // another conversation.
    let newest = ctx.store.newest_in(Channel::direct(me, friend.id))?;
    let up_to = (up_to.min(i64::MAX as u64) as i64).min(newest);
    // A receipt that does not move forward changes nothing and is not pushed.
    if up_to > 0 && ctx.store.set_read_up_to(me, friend.id, up_to)? {
        let my_name = name_of(ctx, me);
        let stored = store_receipts(ctx, o, me, friend.id, up_to)?;
        // The same receipt twice, under the id of each copy: for the peer's connections, and
        // for this user's other ones.
        for (id, user) in [(stored.for_peer, friend.id), (stored.for_me, me)] {
            let receipt = Receipt {
                message_id: id as u64,
                timestamp_ms: ctx.now_ms as u64,
                reader: &my_name,
                peer: &friend.name,
                up_to_message_id: up_to as u64,
            };
            for &t in ctx.world.sessions(user).iter().filter(|&&t| t != o.token) {
                ctx.outbox.stage(t, FrameKind::Item { id }, |b| response::read_receipt(b, &receipt));
            }
        }
    }
    let rid = o.request_id;
    ctx.outbox.respond(o.token, rid, |b| response::ok(b, rid));
    Ok(())
}

/// The ids of a read position stored as items: in the peer's feed, and in the reader's own
/// for their other devices.
struct StoredReceipts {
    for_peer: MessageId,
    for_me: MessageId,
}

fn store_receipts(
    ctx: &mut Ctx,
    o: &Origin,
    me: UserId,
    peer: UserId,
    up_to: MessageId,
) -> Result<StoredReceipts, Refusal> {
    let body = (up_to as u64).to_be_bytes();
    let mut receipt = NewMessage {
        channel: Channel::events_of(peer),
        sender: me,
        client_msg_id: 0,
        kind: MessageKind::ReadByPeer,
        sent_at: ctx.now_ms,
        body: &body,
        device: o.device,
    };
    let for_peer = ctx.store.insert_message(&receipt)?;
    receipt.channel = Channel::events_of(me);
    receipt.sender = peer;
    receipt.kind = MessageKind::ReadByOwner;
    let for_me = ctx.store.insert_message(&receipt)?;
    ctx.outbox.own_item(o.token, for_me);
    Ok(StoredReceipts { for_peer, for_me })
}
