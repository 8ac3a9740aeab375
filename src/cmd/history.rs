//! HISTORY: pages of a conversation, older or newer from an anchor, for its participants only.

use super::{Ctx, Origin, Outcome, caps, refuse};
use crate::protocol::ErrorCode;
use crate::protocol::request::{Direction, HistoryTarget};
use crate::protocol::response::{self, HistoryEntry};
use crate::store::{Channel, HistoryDirection, UserId};

pub const MAX_LIMIT: u16 = 200;
/// Bytes of bodies a page stops before (PROTOCOL.md §6): below the write queue's soft limit,
/// so one legal page never makes a fast reader look slow.
pub const MAX_PAGE_BYTES: usize = 128 * 1024;
const NOT_A_PARTICIPANT: &str = "you are not a participant of that conversation";

pub fn page(
    ctx: &mut Ctx,
    o: &mut Origin,
    me: UserId,
    target: HistoryTarget,
    direction: Direction,
    anchor: u64,
    limit: u16,
) -> Outcome {
    if !(1..=MAX_LIMIT).contains(&limit) {
        return refuse(ErrorCode::InvalidArgument, "limit must be 1 to 200");
    }
    let channel = match target {
        HistoryTarget::Direct { peer } => {
            let Some((peer_id, _)) = ctx.store.find_user_id_or_deleted(&peer.to_ascii_lowercase())? else {
                return refuse(ErrorCode::Forbidden, NOT_A_PARTICIPANT);
            };
            if peer_id == me || ctx.store.contact_state(me, peer_id)?.is_none() {
                return refuse(ErrorCode::Forbidden, NOT_A_PARTICIPANT);
            }
            Channel::direct(me, peer_id)
        }
        HistoryTarget::Group { group_id } => {
            let group = i64::try_from(group_id).unwrap_or(-1);
            if !ctx.world.is_member(me, group) {
                return refuse(ErrorCode::Forbidden, NOT_A_PARTICIPANT);
            }
            Channel::group(group)
        }
    };
    let direction = match direction {
        Direction::Older => HistoryDirection::Older,
        Direction::Newer => HistoryDirection::Newer,
    };
    let anchor = anchor.min(i64::MAX as u64) as i64;
    let page = ctx.store.history(channel, direction, anchor, limit as usize, MAX_PAGE_BYTES)?;
    let next = if page.more { page.rows.last().map_or(0, |r| r.id as u64) } else { 0 };
    let entries: Vec<HistoryEntry> = page
        .rows
        .into_iter()
        .map(|r| HistoryEntry {
            message_id: r.id as u64,
            timestamp_ms: r.sent_at as u64,
            sender: r.sender,
            body: String::from_utf8_lossy(&r.body).into_owned(),
        })
        .collect();
    // At most MAX_LIMIT entries: always a list for a u16 count.
    let entries = caps::list16(&entries, ErrorCode::InvalidArgument, "limit must be 1 to 200")?;
    let rid = o.request_id;
    ctx.outbox.respond(o.token, rid, |b| response::history_page(b, rid, entries, next));
    Ok(())
}
