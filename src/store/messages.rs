//! The one table of messages: inserts on the hot path, history pages, backlog pages.

use super::{Channel, MessageId, Store, StoreResult, UserId, posting};
use rusqlite::{Connection, OptionalExtension, params};

/// What a stored row is: a chat text or a friend event (the event's wire number).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    Text,
    FriendEvent(u8),
}

impl MessageKind {
    fn to_column(self) -> i64 {
        match self {
            MessageKind::Text => 0,
            MessageKind::FriendEvent(e) => e as i64,
        }
    }

    fn from_column(v: i64) -> Self {
        if v == 0 { MessageKind::Text } else { MessageKind::FriendEvent(v as u8) }
    }
}

/// A row to insert; the id comes from [`Store::next_message_id`].
pub struct NewMessage<'a> {
    pub channel: Channel,
    pub sender: UserId,
    pub client_msg_id: u64,
    pub kind: MessageKind,
    pub sent_at: i64,
    pub body: &'a [u8],
}

/// A message in a history page.
#[derive(Debug, Clone)]
pub struct HistoryRow {
    pub id: MessageId,
    pub sent_at: i64,
    pub sender: String,
    pub body: Vec<u8>,
}

/// An item of a user's offline backlog.
#[derive(Debug, Clone)]
pub struct BacklogRow {
    pub id: MessageId,
    pub sender: UserId,
    pub sender_name: String,
    pub kind: MessageKind,
    pub sent_at: i64,
    pub body: Vec<u8>,
}

/// A stored send, as the retry window remembers it.
#[derive(Debug, Clone, Copy)]
pub struct RecentSend {
    pub sender: UserId,
    pub client_msg_id: u64,
    pub id: MessageId,
    pub sent_at: i64,
}

pub(super) fn max_id(db: &Connection) -> rusqlite::Result<MessageId> {
    db.query_row("SELECT COALESCE(MAX(id), 0) FROM messages", [], |r| r.get(0))
}

impl Store {
    /// Stores a message in the iteration's transaction and returns its new id.
    pub fn insert_message(&mut self, m: &NewMessage) -> StoreResult<MessageId> {
        let id = self.next_message_id;
        self.write(|db| {
            db.prepare_cached(
                "INSERT INTO messages (id, channel, sender, client_msg_id, kind, sent_at, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![id, m.channel.0, m.sender, m.client_msg_id as i64, m.kind.to_column(), m.sent_at, m.body])
        })?;
        self.tail.push(m.channel, id);
        self.next_message_id += 1;
        Ok(id)
    }

    /// The newest `limit` sends, newest first, to rebuild the retry window at start.
    pub fn recent_sends(&self, limit: usize) -> StoreResult<Vec<RecentSend>> {
        let mut stmt = self.db.prepare(
            "SELECT sender, client_msg_id, id, sent_at FROM messages WHERE kind = 0 ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map([limit as i64], |r| {
            Ok(RecentSend {
                sender: r.get(0)?,
                client_msg_id: r.get::<_, i64>(1)? as u64,
                id: r.get(2)?,
                sent_at: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Ids of direct messages to `user` past the user's delivery cursor, ascending; at most
    /// `cap` of them per conversation, so more than `cap` in all means "at least `cap`".
    pub fn undelivered_direct(&self, user: UserId, cap: usize) -> StoreResult<Vec<MessageId>> {
        let after = self.delivered_up_to(user)?;
        let mut sender = self.db.prepare_cached("SELECT sender FROM messages WHERE id = ?1")?;
        let mut ids = Vec::new();
        for contact in self.contacts(user)? {
            let channel = Channel::direct(user, contact.peer);
            let mut found = 0;
            for id in posting::ids_after(&self.db, &self.tail, channel, after, MessageId::MAX, usize::MAX)? {
                if sender.query_row([id], |r| r.get::<_, UserId>(0))? != user {
                    ids.push(id);
                    found += 1;
                    if found > cap {
                        break;
                    }
                }
            }
        }
        ids.sort_unstable();
        Ok(ids)
    }

    /// Up to `limit` messages of a conversation with ids below `before`, newest first.
    pub fn history(&self, channel: Channel, before: MessageId, limit: usize) -> StoreResult<Vec<HistoryRow>> {
        let mut ids = posting::ids_before(&self.db, &self.tail, channel, before, limit)?;
        ids.reverse();
        let mut rows: Vec<HistoryRow> = self
            .rows_by_id(channel, &ids)?
            .into_iter()
            .map(|r| HistoryRow { id: r.id, sent_at: r.sent_at, sender: r.sender_name, body: r.body })
            .collect();
        rows.reverse();
        Ok(rows)
    }

    /// Up to `limit` items of a channel with `after < id <= up_to`, oldest first.
    pub fn backlog_page(
        &self,
        channel: Channel,
        after: MessageId,
        up_to: MessageId,
        limit: usize,
    ) -> StoreResult<Vec<BacklogRow>> {
        let ids = posting::ids_after(&self.db, &self.tail, channel, after, up_to, limit)?;
        self.rows_by_id(channel, &ids)
    }

    /// The rows of ascending `ids` of one channel. When the ids are dense in their range (a
    /// conversation that had the server to itself, as in a long offline backlog) one range
    /// scan reads them; otherwise each is looked up by id.
    fn rows_by_id(&self, channel: Channel, ids: &[MessageId]) -> StoreResult<Vec<BacklogRow>> {
        let (Some(&first), Some(&last)) = (ids.first(), ids.last()) else { return Ok(Vec::new()) };
        let map = |r: &rusqlite::Row| {
            Ok(BacklogRow {
                id: r.get(0)?,
                sender: r.get(1)?,
                sender_name: r.get(2)?,
                kind: MessageKind::from_column(r.get(3)?),
                sent_at: r.get(4)?,
                body: r.get(5)?,
            })
        };
        let mut rows = Vec::with_capacity(ids.len());
        if (last - first) as usize <= 4 * ids.len() {
            let mut stmt = self.db.prepare_cached(
                "SELECT id, sender, (SELECT name FROM users WHERE id = sender), kind, sent_at, body FROM messages
                 WHERE id BETWEEN ?1 AND ?2 AND channel = ?3 ORDER BY id",
            )?;
            for row in stmt.query_map(params![first, last, channel.0], map)? {
                rows.push(row?);
            }
        } else {
            let mut stmt = self.db.prepare_cached(
                "SELECT id, sender, (SELECT name FROM users WHERE id = sender), kind, sent_at, body FROM messages
                 WHERE id = ?1",
            )?;
            for &id in ids {
                rows.extend(stmt.query_row([id], map).optional()?);
            }
        }
        Ok(rows)
    }
}
