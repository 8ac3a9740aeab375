//! The offline backlog of one login: everything past the user's cursors, pushed oldest first
//! in pages as the connection's write queue drains.
//!
//! Each conversation the user takes part in is a source read in pages through the
//! `(channel, id)` index; a heap merges the sources' heads so items leave in id order. Memory
//! is bounded by the page size times the number of sources, whatever the backlog's length.
//! Items stored after the login are not read here: they reach the connection live, held back
//! (see [`Backlog::defer`]) until the backlog is done, so the whole stream stays in id order.

use crate::protocol::response::{self, Conversation, Delivery, FriendEvent};
use crate::store::{BacklogRow, Channel, MessageId, MessageKind, Store, StoreResult, UserId};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

/// Rows fetched per source and page, shared out between sources.
const ROWS_PER_PAGE: usize = 4096;

#[derive(Debug)]
enum SourceKind {
    Events,
    Direct,
    Group { group_id: u64 },
}

#[derive(Debug)]
struct Source {
    channel: Channel,
    kind: SourceKind,
    after: MessageId,
    rows: VecDeque<BacklogRow>,
    complete: bool,
}

/// A login's backlog in progress.
#[derive(Debug)]
pub struct Backlog {
    user: UserId,
    user_name: String,
    up_to: MessageId,
    sources: Vec<Source>,
    heads: BinaryHeap<Reverse<(MessageId, usize)>>,
    page: usize,
    count: u32,
    started: bool,
    deferred: Vec<u8>,
}

/// One conversation of the user with its cursor.
pub struct SourceSpec {
    pub channel: Channel,
    pub after: MessageId,
    pub group_id: Option<u64>,
}

impl Backlog {
    /// A backlog of everything in `sources` past each cursor, up to `up_to` (the newest id at
    /// login). Friend events come from the user's own feed, with the direct cursor.
    pub fn new(
        user: UserId,
        user_name: &str,
        direct_after: MessageId,
        up_to: MessageId,
        mut specs: Vec<SourceSpec>,
    ) -> Self {
        specs.push(SourceSpec { channel: Channel::events_of(user), after: direct_after, group_id: None });
        let page = (ROWS_PER_PAGE / specs.len()).clamp(16, 512);
        let sources = specs
            .into_iter()
            .filter(|s| s.after < up_to)
            .map(|s| Source {
                kind: match s.group_id {
                    Some(group_id) => SourceKind::Group { group_id },
                    None if s.channel == Channel::events_of(user) => SourceKind::Events,
                    None => SourceKind::Direct,
                },
                channel: s.channel,
                after: s.after,
                rows: VecDeque::new(),
                complete: false,
            })
            .collect();
        Backlog {
            user,
            user_name: user_name.to_string(),
            up_to,
            sources,
            heads: BinaryHeap::new(),
            page,
            count: 0,
            started: false,
            deferred: Vec::new(),
        }
    }

    /// Holds a live item that arrived while the backlog is still being pushed.
    pub fn defer(&mut self, frame: &[u8]) {
        self.deferred.extend_from_slice(frame);
    }

    fn refill(&mut self, store: &Store, i: usize) -> StoreResult<()> {
        let s = &mut self.sources[i];
        if s.complete || !s.rows.is_empty() {
            return Ok(());
        }
        let rows = store.backlog_page(s.channel, s.after, self.up_to, self.page)?;
        s.complete = rows.len() < self.page;
        if let Some(last) = rows.last() {
            s.after = last.id;
            self.heads.push(Reverse((rows[0].id, i)));
        }
        s.rows.extend(rows);
        Ok(())
    }

    /// Appends items to `out` until it holds at least `budget` bytes or the backlog is done.
    /// Returns true when done: `SYNC_DONE` and any deferred live items have been appended.
    pub fn fill(&mut self, store: &Store, out: &mut Vec<u8>, budget: usize) -> StoreResult<bool> {
        if !self.started {
            self.started = true;
            for i in 0..self.sources.len() {
                self.refill(store, i)?;
            }
        }
        while out.len() < budget {
            let Some(Reverse((_, i))) = self.heads.pop() else {
                response::sync_done(out, self.count);
                out.append(&mut self.deferred);
                return Ok(true);
            };
            let row = self.sources[i].rows.pop_front().expect("a head has a row");
            if let Some(next) = self.sources[i].rows.front() {
                self.heads.push(Reverse((next.id, i)));
            } else {
                self.refill(store, i)?;
            }
            if row.sender != self.user || matches!(self.sources[i].kind, SourceKind::Events) {
                self.encode(i, &row, out);
                self.count += 1;
            }
        }
        Ok(false)
    }

    fn encode(&self, i: usize, row: &BacklogRow, out: &mut Vec<u8>) {
        let conversation = match self.sources[i].kind {
            SourceKind::Events => {
                let event = match row.kind {
                    MessageKind::FriendEvent(e) => FriendEvent::from_u8(e).unwrap_or(FriendEvent::Requested),
                    MessageKind::Text => FriendEvent::Requested,
                };
                response::friend_event(out, row.id as u64, row.sent_at as u64, event, &row.sender_name);
                return;
            }
            SourceKind::Direct => Conversation::Direct { to: &self.user_name },
            SourceKind::Group { group_id } => Conversation::Group { group_id },
        };
        response::deliver(
            out,
            &Delivery {
                message_id: row.id as u64,
                timestamp_ms: row.sent_at as u64,
                from: &row.sender_name,
                conversation,
                body: &row.body,
            },
        );
    }
}
