//! The one table of messages: inserts on the hot path, history pages, backlog rows.
//!
//! Every item of PROTOCOL.md §6 is a row here: chat texts, friend events, read receipts and
//! group events, so that one id order and one delivery position cover them all.

use super::{Channel, DeviceId, MessageId, Store, StoreResult, UserId, posting};
use rusqlite::{Connection, OptionalExtension, params};

/// Rows fetched per query while a history page is assembled: a page of large bodies then
/// holds a few megabytes at most in memory, not `limit` × `--max-body`.
const HISTORY_BATCH: usize = 32;

/// What a stored row is. The column values are part of the file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// A chat message (`SEND`, `GROUP_SEND`); the only kind in history.
    Text,
    /// A friend event in a user's feed; the number is `FRIEND_EVENT`'s (1–8).
    FriendEvent(u8),
    /// In a user's feed: the sender has read the user's conversation with them; the body is
    /// the position (`u64`, big-endian).
    ReadByPeer,
    /// In a user's feed: the user (on another device) has read the conversation with the
    /// sender; the body is the position.
    ReadByOwner,
    /// In a group: the sender joined; the body is the group's name.
    GroupJoined,
    /// In a group: the sender left; the body is the group's name.
    GroupLeft,
}

impl MessageKind {
    fn to_column(self) -> i64 {
        match self {
            MessageKind::Text => 0,
            MessageKind::FriendEvent(e) => e as i64,
            MessageKind::ReadByPeer => 16,
            MessageKind::ReadByOwner => 17,
            MessageKind::GroupJoined => 32,
            MessageKind::GroupLeft => 33,
        }
    }

    fn from_column(v: i64) -> Self {
        match v {
            0 => MessageKind::Text,
            16 => MessageKind::ReadByPeer,
            17 => MessageKind::ReadByOwner,
            32 => MessageKind::GroupJoined,
            33 => MessageKind::GroupLeft,
            other => MessageKind::FriendEvent(other.clamp(1, 8) as u8),
        }
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
    /// The device whose request made it (0 for none): that device is not sent it again.
    pub device: DeviceId,
}

/// A message in a history page.
#[derive(Debug, Clone)]
pub struct HistoryRow {
    pub id: MessageId,
    pub sent_at: i64,
    pub sender: String,
    pub body: Vec<u8>,
}

/// An item of a device's backlog.
#[derive(Debug, Clone)]
pub struct BacklogRow {
    pub id: MessageId,
    pub channel: Channel,
    pub sender: UserId,
    pub sender_name: String,
    pub kind: MessageKind,
    pub sent_at: i64,
    pub body: Vec<u8>,
    pub device: DeviceId,
}

/// Which way a history page reads from its anchor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryDirection {
    /// Ids below the anchor, newest first.
    Older,
    /// Ids above the anchor, oldest first.
    Newer,
}

/// A history page: its messages, and whether another page follows in the same direction.
#[derive(Debug, Clone, Default)]
pub struct HistoryPage {
    pub rows: Vec<HistoryRow>,
    pub more: bool,
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
        // The row is inserted with its neighbours (see `pending.rs`), at the latest before
        // the COMMIT; the id is assigned here, so the answers and pushes can name it now.
        // Opens the transaction and counts the write, so the answers wait for the commit.
        self.write(|_| Ok(()))?;
        self.pending.push(id, m, m.kind.to_column());
        if self.pending.is_full() {
            self.insert_pending()?;
        }
        self.tail.push(m.channel, id);
        self.next_message_id += 1;
        if m.kind == MessageKind::Text {
            self.uncommitted_messages += 1;
        }
        if self.crash_markers {
            self.note_crash_marker(m.body);
        }
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

    /// Ids of direct messages to `user` that no device of theirs has acknowledged, ascending;
    /// at most `cap + 1` of them per conversation, so that a list longer than `cap` says "the
    /// queue is full, and this list may be incomplete".
    pub fn undelivered_direct(&mut self, user: UserId, cap: usize) -> StoreResult<Vec<MessageId>> {
        self.insert_pending()?;
        let after = self.most_advanced_position(user)?;
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

    /// A history page of a conversation: up to `limit` chat messages from `anchor` in
    /// `direction` (an anchor of 0 reading older means from the newest), stopping before the
    /// bodies pass `max_bytes` (always at least one message). Events and receipts stored in
    /// the same conversation are skipped.
    pub fn history(
        &mut self,
        channel: Channel,
        direction: HistoryDirection,
        anchor: MessageId,
        limit: usize,
        max_bytes: usize,
    ) -> StoreResult<HistoryPage> {
        let mut page = HistoryPage::default();
        let mut bytes = 0;
        let mut cursor = anchor;
        loop {
            let mut ids = match direction {
                HistoryDirection::Older => {
                    let before = if cursor == 0 { MessageId::MAX } else { cursor };
                    posting::ids_before(&self.db, &self.tail, channel, before, HISTORY_BATCH)?
                }
                HistoryDirection::Newer => {
                    posting::ids_after(&self.db, &self.tail, channel, cursor, MessageId::MAX, HISTORY_BATCH)?
                }
            };
            if ids.is_empty() {
                return Ok(page);
            }
            if direction == HistoryDirection::Older {
                ids.reverse();
            }
            let mut rows = self.rows_with_ids(&ids)?;
            if direction == HistoryDirection::Older {
                rows.reverse();
            }
            cursor = match direction {
                HistoryDirection::Older => ids[0],
                HistoryDirection::Newer => ids[ids.len() - 1],
            };
            for row in rows {
                if row.kind != MessageKind::Text {
                    continue;
                }
                if page.rows.len() == limit || (!page.rows.is_empty() && bytes + row.body.len() > max_bytes) {
                    page.more = true;
                    return Ok(page);
                }
                bytes += row.body.len();
                page.rows.push(HistoryRow {
                    id: row.id,
                    sent_at: row.sent_at,
                    sender: row.sender_name,
                    body: row.body,
                });
            }
        }
    }

    /// The newest id stored in a conversation, or 0 when it is empty.
    pub fn newest_in(&self, channel: Channel) -> StoreResult<MessageId> {
        Ok(posting::ids_before(&self.db, &self.tail, channel, MessageId::MAX, 1)?.first().copied().unwrap_or(0))
    }

    /// Up to `limit` ids of a conversation with `after < id <= up_to`, ascending.
    pub fn ids_after(
        &self,
        channel: Channel,
        after: MessageId,
        up_to: MessageId,
        limit: usize,
    ) -> StoreResult<Vec<MessageId>> {
        Ok(posting::ids_after(&self.db, &self.tail, channel, after, up_to, limit)?)
    }

    /// How many entries a conversation holds with `after < id <= up_to`.
    pub fn count_between(&self, channel: Channel, after: MessageId, up_to: MessageId) -> StoreResult<usize> {
        Ok(posting::count_between(&self.db, &self.tail, channel, after, up_to)?)
    }

    /// The rows with the given ascending ids, whatever their conversations. When the ids are
    /// dense in their range (a conversation that had the server to itself, as in a long
    /// offline backlog) one range scan reads them; otherwise each is looked up by id.
    pub fn rows_with_ids(&mut self, ids: &[MessageId]) -> StoreResult<Vec<BacklogRow>> {
        self.insert_pending()?;
        let (Some(&first), Some(&last)) = (ids.first(), ids.last()) else { return Ok(Vec::new()) };
        let mut rows = Vec::with_capacity(ids.len());
        if reads_as_one_range(first, last, ids.len()) {
            let mut stmt = self.db.prepare_cached(
                "SELECT id, channel, sender, (SELECT name FROM users WHERE id = sender), kind, sent_at, body, device
                 FROM messages WHERE id BETWEEN ?1 AND ?2 ORDER BY id",
            )?;
            let mut wanted = ids.iter().peekable();
            for row in stmt.query_map(params![first, last], backlog_row)? {
                let row = row?;
                while wanted.peek().is_some_and(|&&id| id < row.id) {
                    wanted.next();
                }
                if wanted.peek() == Some(&&row.id) {
                    rows.push(row);
                }
            }
        } else {
            let mut stmt = self.db.prepare_cached(
                "SELECT id, channel, sender, (SELECT name FROM users WHERE id = sender), kind, sent_at, body, device
                 FROM messages WHERE id = ?1",
            )?;
            for &id in ids {
                rows.extend(stmt.query_row([id], backlog_row).optional()?);
            }
        }
        Ok(rows)
    }
}

/// Whether ids from `first` to `last`, `count` of them, are read with one range scan (which
/// also reads the rows between that are not wanted) rather than one lookup each: when at
/// least a quarter of the range is wanted. A device's backlog from its few conversations is
/// usually dense in the id order; one of a quiet group among busy ones is not.
fn reads_as_one_range(first: MessageId, last: MessageId, count: usize) -> bool {
    (last - first) as usize <= 4 * count
}

fn backlog_row(r: &rusqlite::Row) -> rusqlite::Result<BacklogRow> {
    Ok(BacklogRow {
        id: r.get(0)?,
        channel: Channel(r.get(1)?),
        sender: r.get(2)?,
        sender_name: r.get::<_, Option<String>>(3)?.unwrap_or_default(),
        kind: MessageKind::from_column(r.get(4)?),
        sent_at: r.get(5)?,
        body: r.get(6)?,
        device: r.get(7)?,
    })
}

#[cfg(test)]
mod tests {
    use super::reads_as_one_range;

    #[test]
    fn ids_are_read_as_one_range_while_a_quarter_of_it_is_wanted() {
        assert!(reads_as_one_range(1, 10, 10));
        assert!(reads_as_one_range(1, 41, 10), "40 ids apart, 10 wanted");
        assert!(!reads_as_one_range(1, 42, 10));
        assert!(!reads_as_one_range(1, 1_000_000, 2));
        assert!(reads_as_one_range(7, 7, 1));
    }
}
