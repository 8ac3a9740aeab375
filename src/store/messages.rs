//! The one table of messages: inserts on the hot path, history pages, backlog pages.

use super::{Channel, MessageId, Store, StoreResult, UserId};
use rusqlite::{Connection, params};

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

    /// Up to `limit` text messages of a conversation with ids below `before`, newest first.
    pub fn history(&self, channel: Channel, before: MessageId, limit: usize) -> StoreResult<Vec<HistoryRow>> {
        let mut stmt = self.db.prepare_cached(
            "SELECT m.id, m.sent_at, u.name, m.body FROM messages m JOIN users u ON u.id = m.sender
             WHERE m.channel = ?1 AND m.id < ?2 ORDER BY m.id DESC LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![channel.0, before, limit as i64], |r| {
            Ok(HistoryRow { id: r.get(0)?, sent_at: r.get(1)?, sender: r.get(2)?, body: r.get(3)? })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Up to `limit` items of a channel with `after < id <= up_to`, oldest first.
    pub fn backlog_page(
        &self,
        channel: Channel,
        after: MessageId,
        up_to: MessageId,
        limit: usize,
    ) -> StoreResult<Vec<BacklogRow>> {
        let mut stmt = self.db.prepare_cached(
            "SELECT m.id, m.sender, u.name, m.kind, m.sent_at, m.body FROM messages m JOIN users u ON u.id = m.sender
             WHERE m.channel = ?1 AND m.id > ?2 AND m.id <= ?3 ORDER BY m.id LIMIT ?4",
        )?;
        let rows = stmt.query_map(params![channel.0, after, up_to, limit as i64], |r| {
            Ok(BacklogRow {
                id: r.get(0)?,
                sender: r.get(1)?,
                sender_name: r.get(2)?,
                kind: MessageKind::from_column(r.get(3)?),
                sent_at: r.get(4)?,
                body: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
