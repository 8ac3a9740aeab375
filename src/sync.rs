//! The backlog of one login: every item past the device's position, pushed oldest first as
//! the connection's write queue drains, until the connection has caught up with the store.
//!
//! Each conversation of the user is a *source*: a short queue of the next ids of that
//! conversation, read from its posting list. A heap merges the sources' heads, so items leave
//! in id order whatever conversation they belong to, and rows are fetched only for the next
//! few ids, so memory is bounded by the number of conversations times a few ids, never by
//! their bodies (700 groups cost 700 small id queues, not 700 pages of messages).
//!
//! **Catching up instead of holding back.** While a connection syncs, live items for it are
//! not queued: the server drops them (see `Server::deliver_outbox`), because each fill reads
//! up to the newest committed id, so they come from the store in their place. A syncing
//! connection therefore holds no live items in memory at all, and when the backlog reaches
//! the newest id the connection turns live between two loop iterations: every item it is sent
//! has a higher id than the one before, whatever its source.

use crate::protocol::response::{self, Conversation, Delivery, FriendEvent, GroupEvent, GroupNotice, Receipt};
use crate::store::{BacklogRow, Channel, DeviceId, MessageId, MessageKind, Store, StoreResult, UserId};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::rc::Rc;

/// Ids held per source and load, shared out between sources.
const IDS_PER_LOAD: usize = 4096;
/// Rows fetched per query at most.
const MAX_ROWS_PER_FETCH: usize = 256;

/// What a conversation is, for encoding its rows.
#[derive(Debug, Clone)]
pub enum SourceKind {
    /// The user's own feed: friend events and read receipts.
    Events,
    Direct {
        peer_name: Rc<str>,
    },
    Group {
        group_id: u64,
    },
}

/// One conversation of the user, and the id below which it holds nothing for them.
#[derive(Debug, Clone)]
pub struct SourceSpec {
    pub channel: Channel,
    pub kind: SourceKind,
    pub floor: MessageId,
}

/// Every conversation the user's devices receive items from.
pub fn sources_of(store: &Store, user: UserId) -> StoreResult<Vec<SourceSpec>> {
    let mut specs = vec![SourceSpec { channel: Channel::events_of(user), kind: SourceKind::Events, floor: 0 }];
    for contact in store.contacts(user)? {
        specs.push(SourceSpec {
            channel: Channel::direct(user, contact.peer),
            kind: SourceKind::Direct { peer_name: contact.name.into() },
            floor: 0,
        });
    }
    for m in store.memberships(user)? {
        specs.push(SourceSpec {
            channel: Channel::group(m.group),
            kind: SourceKind::Group { group_id: m.group as u64 },
            floor: m.joined_after,
        });
    }
    Ok(specs)
}

#[derive(Debug)]
struct Source {
    channel: Channel,
    kind: SourceKind,
    /// Ids up to here have been loaded (into `ids`, or found absent).
    after: MessageId,
    ids: VecDeque<MessageId>,
}

/// The device and the limits a backlog works for.
#[derive(Debug, Clone)]
pub struct BacklogOwner {
    pub user: UserId,
    pub user_name: Rc<str>,
    pub device: DeviceId,
    /// The device's position at login.
    pub position: MessageId,
    /// `--device-backlog-cap`.
    pub cap: usize,
}

/// A login's backlog in progress.
#[derive(Debug)]
pub struct Backlog {
    owner: BacklogOwner,
    sources: Vec<Source>,
    heads: BinaryHeap<Reverse<(MessageId, usize)>>,
    ids_per_load: usize,
    started: bool,
    /// The user's conversations changed (a new friend or group): reload the sources.
    stale: bool,
    /// Every source is loaded up to at least this id (or holds ids below it).
    loaded_to: MessageId,
    /// Every item up to this id has been encoded (or skipped as the device's own).
    read_to: MessageId,
    count: u32,
    /// Bytes per encoded item so far, to size the next fetch to the budget left.
    average_item: usize,
}

impl Backlog {
    /// A backlog that starts at the device's position. Nothing is read until the first
    /// [`Backlog::fill`], which runs after the login's transaction has committed.
    pub fn new(owner: BacklogOwner) -> Self {
        let read_to = owner.position;
        Backlog {
            owner,
            sources: Vec::new(),
            heads: BinaryHeap::new(),
            ids_per_load: 16,
            started: false,
            stale: false,
            loaded_to: 0,
            read_to,
            count: 0,
            average_item: 256,
        }
    }

    /// Every item up to this id has been queued for the connection (or was its own).
    pub fn read_to(&self) -> MessageId {
        self.read_to
    }

    /// Notes that the user's conversations changed while the backlog was being pushed.
    pub fn mark_stale(&mut self) {
        self.stale = true;
    }

    /// Appends items to `out` until it holds at least `budget` bytes or the backlog has
    /// caught up with the newest id in the store. Returns true when caught up: `SYNC_DONE`
    /// has been appended, and the connection receives live items from now on.
    pub fn fill(&mut self, store: &mut Store, out: &mut Vec<u8>, budget: usize) -> StoreResult<bool> {
        let up_to = store.last_message_id();
        if !self.started {
            self.started = true;
            self.set_sources(sources_of(store, self.owner.user)?);
            self.apply_cap(store, up_to, out)?;
        } else if std::mem::take(&mut self.stale) {
            self.set_sources(sources_of(store, self.owner.user)?);
        }
        if up_to > self.loaded_to {
            for i in 0..self.sources.len() {
                if self.sources[i].ids.is_empty() {
                    self.load(store, i, up_to)?;
                }
            }
            self.loaded_to = up_to;
        }
        while out.len() < budget {
            let want = rows_per_fetch(budget, out.len(), self.average_item);
            let batch = self.next_ids(store, want, up_to)?;
            let Some(&(last, _)) = batch.last() else {
                self.read_to = self.read_to.max(up_to);
                response::sync_done(out, self.count);
                return Ok(true);
            };
            let ids: Vec<MessageId> = batch.iter().map(|&(id, _)| id).collect();
            let rows = store.rows_with_ids(&ids)?;
            let before = out.len();
            let mut encoded = 0;
            let mut sources = batch.iter().peekable();
            for row in &rows {
                while sources.peek().is_some_and(|&&(id, _)| id < row.id) {
                    sources.next();
                }
                let Some(&&(_, i)) = sources.peek() else { break };
                if row.device != self.owner.device && self.encode(i, row, out) {
                    encoded += 1;
                }
            }
            self.count += encoded;
            if encoded > 0 {
                self.average_item = ((out.len() - before) / encoded as usize).max(16);
            }
            self.read_to = last;
        }
        Ok(false)
    }

    /// Takes the next `want` ids in id order, with the source each belongs to.
    fn next_ids(&mut self, store: &Store, want: usize, up_to: MessageId) -> StoreResult<Vec<(MessageId, usize)>> {
        let mut batch = Vec::with_capacity(want);
        while batch.len() < want {
            let Some(Reverse((id, i))) = self.heads.pop() else { break };
            self.sources[i].ids.pop_front();
            batch.push((id, i));
            match self.sources[i].ids.front() {
                Some(&next) => self.heads.push(Reverse((next, i))),
                None => self.load(store, i, up_to)?,
            }
        }
        Ok(batch)
    }

    /// Loads the next ids of source `i` up to `up_to`, and puts its head in the heap.
    fn load(&mut self, store: &Store, i: usize, up_to: MessageId) -> StoreResult<()> {
        let s = &mut self.sources[i];
        if s.after >= up_to {
            return Ok(());
        }
        let ids = store.ids_after(s.channel, s.after, up_to, self.ids_per_load)?;
        s.after = if ids.len() < self.ids_per_load { up_to } else { ids[ids.len() - 1] };
        if let Some(&first) = ids.first() {
            self.heads.push(Reverse((first, i)));
        }
        s.ids.extend(ids);
        Ok(())
    }

    /// Replaces the sources, keeping what is already loaded of those that stay. A new source
    /// starts after everything already pushed, so the order is never broken.
    fn set_sources(&mut self, specs: Vec<SourceSpec>) {
        let mut old: Vec<Source> = std::mem::take(&mut self.sources);
        for spec in specs {
            let source = match old.iter().position(|s| s.channel == spec.channel) {
                Some(k) => old.swap_remove(k),
                None => Source {
                    channel: spec.channel,
                    kind: spec.kind,
                    after: spec.floor.max(self.owner.position).max(self.read_to),
                    ids: VecDeque::new(),
                },
            };
            self.sources.push(source);
        }
        self.ids_per_load = ids_per_load(self.sources.len());
        self.heads = self.sources.iter().enumerate().filter_map(|(i, s)| Some(Reverse((*s.ids.front()?, i)))).collect();
        // Sources that were exhausted are loaded again on the next fill.
        self.loaded_to = 0;
    }

    /// Skips the oldest entries when more than the cap are waiting (PROTOCOL.md §6, "Long
    /// absences"): finds the lowest id `t` that leaves at most `cap` entries above it, moves
    /// every source past it, and tells the device with `SYNC_GAP`.
    fn apply_cap(&mut self, store: &Store, up_to: MessageId, out: &mut Vec<u8>) -> StoreResult<()> {
        let total = self.entries_above(store, self.owner.position, up_to)?;
        if total <= self.owner.cap {
            return Ok(());
        }
        let (mut low, mut high) = (self.owner.position, up_to);
        while low < high {
            let middle = low + (high - low) / 2;
            if self.entries_above(store, middle, up_to)? <= self.owner.cap {
                high = middle;
            } else {
                low = middle + 1;
            }
        }
        let kept = self.entries_above(store, low, up_to)?;
        for s in &mut self.sources {
            s.after = s.after.max(low);
        }
        self.read_to = self.read_to.max(low);
        let skipped = u32::try_from(total - kept).unwrap_or(u32::MAX);
        response::sync_gap(out, self.owner.position as u64, low as u64, skipped);
        Ok(())
    }

    fn entries_above(&self, store: &Store, after: MessageId, up_to: MessageId) -> StoreResult<usize> {
        let mut total = 0;
        for s in &self.sources {
            total += store.count_between(s.channel, s.after.max(after), up_to)?;
        }
        Ok(total)
    }

    /// Encodes one row of source `i`; returns false for a row that is not an item.
    fn encode(&self, i: usize, row: &BacklogRow, out: &mut Vec<u8>) -> bool {
        let me: &str = &self.owner.user_name;
        let (id, at) = (row.id as u64, row.sent_at as u64);
        match (&self.sources[i].kind, row.kind) {
            (SourceKind::Events, MessageKind::FriendEvent(e)) => {
                let Some(event) = FriendEvent::from_u8(e) else { return false };
                response::friend_event(out, id, at, event, &row.sender_name);
            }
            (SourceKind::Events, MessageKind::ReadByPeer | MessageKind::ReadByOwner) => {
                let Ok(position) = <[u8; 8]>::try_from(row.body.as_slice()) else { return false };
                let (reader, peer) = match row.kind {
                    MessageKind::ReadByPeer => (row.sender_name.as_str(), me),
                    _ => (me, row.sender_name.as_str()),
                };
                let receipt = Receipt {
                    message_id: id,
                    timestamp_ms: at,
                    reader,
                    peer,
                    up_to_message_id: u64::from_be_bytes(position),
                };
                response::read_receipt(out, &receipt);
            }
            (SourceKind::Direct { peer_name }, MessageKind::Text) => {
                let to: &str = if row.sender == self.owner.user { peer_name } else { me };
                let delivery = Delivery {
                    message_id: id,
                    timestamp_ms: at,
                    from: &row.sender_name,
                    conversation: Conversation::Direct { to },
                    body: &row.body,
                };
                response::deliver(out, &delivery);
            }
            (SourceKind::Group { group_id }, MessageKind::Text) => {
                let delivery = Delivery {
                    message_id: id,
                    timestamp_ms: at,
                    from: &row.sender_name,
                    conversation: Conversation::Group { group_id: *group_id },
                    body: &row.body,
                };
                response::deliver(out, &delivery);
            }
            (SourceKind::Group { group_id }, MessageKind::GroupJoined | MessageKind::GroupLeft) => {
                let event = if row.kind == MessageKind::GroupJoined { GroupEvent::Joined } else { GroupEvent::Left };
                let notice = GroupNotice {
                    message_id: id,
                    timestamp_ms: at,
                    group_id: *group_id,
                    event,
                    username: &row.sender_name,
                    group_name: &String::from_utf8_lossy(&row.body),
                };
                response::group_event(out, &notice);
            }
            _ => return false,
        }
        true
    }
}

/// How many rows one fetch asks for: as many as the budget left holds at the average encoded
/// size so far, at least one, at most [`MAX_ROWS_PER_FETCH`].
fn rows_per_fetch(budget: usize, filled: usize, average_item: usize) -> usize {
    ((budget - filled) / average_item.max(1)).clamp(1, MAX_ROWS_PER_FETCH)
}

/// How many ids each source loads at a time: [`IDS_PER_LOAD`] shared among the sources, so a
/// user in a thousand groups holds as many ids in memory as one in a single conversation,
/// within 8..=256 per source.
fn ids_per_load(sources: usize) -> usize {
    (IDS_PER_LOAD / sources.max(1)).clamp(8, 256)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fetch_asks_for_what_the_budget_left_holds() {
        assert_eq!(rows_per_fetch(10_000, 2_000, 100), 80);
        assert_eq!(rows_per_fetch(128 * 1024, 0, 256), 256, "at most MAX_ROWS_PER_FETCH");
        assert_eq!(rows_per_fetch(1_000, 990, 256), 1, "at least one row");
        assert_eq!(rows_per_fetch(1_000, 0, 0), 256, "no average yet counts as one byte");
    }

    #[test]
    fn the_ids_held_are_shared_among_the_sources() {
        assert_eq!(ids_per_load(0), 256);
        assert_eq!(ids_per_load(1), 256);
        assert_eq!(ids_per_load(32), 128);
        assert_eq!(ids_per_load(100), 40);
        assert_eq!(ids_per_load(1000), 8);
    }
}
