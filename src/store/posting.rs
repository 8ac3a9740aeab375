//! Per-conversation lists of message ids, kept off the hot path.
//!
//! A message insert touches only the append-only `messages` table. The ids of each channel
//! collect in memory (the *tail*) and are written in bulk, one `channel_blocks` row per
//! channel, once the tail holds [`FLUSH_AT`] ids: 65,536 messages across 1,000 conversations
//! cost 1,000 small row inserts instead of 65,536 random index inserts (measured in
//! `benches/store.rs`). The tail is derived data: at start it is rebuilt from the messages
//! above the `indexed_up_to` watermark, so a crash loses nothing.

use super::{Channel, MessageId};
use foldhash::HashMap;
use rusqlite::{Connection, params};

/// Ids held in memory before they are written as blocks.
pub const FLUSH_AT: usize = 65_536;

/// Ids above the watermark, by channel, ascending.
#[derive(Debug, Default)]
pub struct Tail {
    by_channel: HashMap<i64, Vec<MessageId>>,
    len: usize,
    /// Every id at or below it is in `channel_blocks`.
    pub indexed_up_to: MessageId,
}

impl Tail {
    /// Rebuilds the tail from the messages above the stored watermark.
    pub fn load(db: &Connection) -> rusqlite::Result<Tail> {
        let indexed_up_to: MessageId =
            db.query_row("SELECT COALESCE((SELECT value FROM meta WHERE key = 'indexed_up_to'), 0)", [], |r| r.get(0))?;
        let mut tail = Tail { indexed_up_to, ..Default::default() };
        let mut stmt = db.prepare("SELECT id, channel FROM messages WHERE id > ?1 ORDER BY id")?;
        let mut rows = stmt.query([indexed_up_to])?;
        while let Some(row) = rows.next()? {
            tail.push(Channel(row.get(1)?), row.get(0)?);
        }
        Ok(tail)
    }

    pub fn push(&mut self, channel: Channel, id: MessageId) {
        self.by_channel.entry(channel.0).or_default().push(id);
        self.len += 1;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Forgets ids of a rolled-back transaction (every id from `first` on).
    pub fn forget_from(&mut self, first: MessageId) {
        let mut len = 0;
        self.by_channel.retain(|_, ids| {
            let keep = ids.partition_point(|&id| id < first);
            ids.truncate(keep);
            len += ids.len();
            !ids.is_empty()
        });
        self.len = len;
    }

    /// The tail's ids of a channel, ascending.
    pub fn ids(&self, channel: Channel) -> &[MessageId] {
        self.by_channel.get(&channel.0).map_or(&[], |v| v.as_slice())
    }

    /// Writes every channel's ids as one block each and moves the watermark, inside the open
    /// transaction. The caller clears the tail once that transaction has committed.
    pub fn write_blocks(&self, db: &Connection, up_to: MessageId) -> rusqlite::Result<()> {
        let mut insert =
            db.prepare_cached("INSERT INTO channel_blocks (channel, last_id, first_id, ids) VALUES (?1, ?2, ?3, ?4)")?;
        let mut blob = Vec::new();
        for (channel, ids) in &self.by_channel {
            let (Some(&first), Some(&last)) = (ids.first(), ids.last()) else { continue };
            blob.clear();
            encode_ids(ids, &mut blob);
            insert.execute(params![channel, last, first, blob])?;
        }
        db.prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES ('indexed_up_to', ?1)")?.execute([up_to])?;
        Ok(())
    }

    /// Empties the tail after its blocks committed.
    pub fn clear(&mut self, indexed_up_to: MessageId) {
        self.by_channel.clear();
        self.len = 0;
        self.indexed_up_to = indexed_up_to;
    }
}

/// Ascending ids as LEB128 varints of the differences (the first from zero).
pub fn encode_ids(ids: &[MessageId], out: &mut Vec<u8>) {
    let mut previous = 0i64;
    for &id in ids {
        let mut delta = (id - previous) as u64;
        previous = id;
        loop {
            let byte = (delta & 0x7F) as u8;
            delta >>= 7;
            if delta == 0 {
                out.push(byte);
                break;
            }
            out.push(byte | 0x80);
        }
    }
}

/// The inverse of [`encode_ids`]. A corrupt blob ends the list where it stops making sense.
pub fn decode_ids(blob: &[u8]) -> Vec<MessageId> {
    let mut ids = Vec::new();
    let mut previous = 0i64;
    let mut delta = 0u64;
    let mut shift = 0;
    for &byte in blob {
        if shift >= 64 {
            break;
        }
        delta |= ((byte & 0x7F) as u64) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            previous = previous.saturating_add(delta as i64);
            ids.push(previous);
            delta = 0;
            shift = 0;
        }
    }
    ids
}

/// Up to `limit` ids of a channel with `after < id <= up_to`, ascending: stored blocks first,
/// then the tail.
pub fn ids_after(
    db: &Connection,
    tail: &Tail,
    channel: Channel,
    after: MessageId,
    up_to: MessageId,
    limit: usize,
) -> rusqlite::Result<Vec<MessageId>> {
    let mut out = Vec::with_capacity(limit.min(1024));
    if after < tail.indexed_up_to {
        let mut stmt =
            db.prepare_cached("SELECT ids FROM channel_blocks WHERE channel = ?1 AND last_id > ?2 ORDER BY last_id")?;
        let mut rows = stmt.query(params![channel.0, after])?;
        while let Some(row) = rows.next()? {
            let blob: Vec<u8> = row.get(0)?;
            for id in decode_ids(&blob) {
                if id > up_to || out.len() == limit {
                    return Ok(out);
                }
                if id > after {
                    out.push(id);
                }
            }
        }
    }
    let ids = tail.ids(channel);
    let start = ids.partition_point(|&id| id <= after);
    out.extend(ids[start..].iter().copied().take_while(|&id| id <= up_to).take(limit - out.len()));
    Ok(out)
}

/// How many ids a channel holds with `after < id <= up_to`: blocks that overlap the range are
/// decoded, the tail is searched.
pub fn count_between(
    db: &Connection,
    tail: &Tail,
    channel: Channel,
    after: MessageId,
    up_to: MessageId,
) -> rusqlite::Result<usize> {
    if up_to <= after {
        return Ok(0);
    }
    let mut count = 0;
    if after < tail.indexed_up_to {
        let mut stmt = db.prepare_cached(
            "SELECT ids FROM channel_blocks WHERE channel = ?1 AND last_id > ?2 AND first_id <= ?3 ORDER BY last_id",
        )?;
        let mut rows = stmt.query(params![channel.0, after, up_to])?;
        while let Some(row) = rows.next()? {
            let blob: Vec<u8> = row.get(0)?;
            count += decode_ids(&blob).into_iter().filter(|&id| id > after && id <= up_to).count();
        }
    }
    let ids = tail.ids(channel);
    count += ids.partition_point(|&id| id <= up_to).saturating_sub(ids.partition_point(|&id| id <= after));
    Ok(count)
}

/// Up to `limit` ids of a channel below `before`, newest first: the tail first, then blocks.
pub fn ids_before(
    db: &Connection,
    tail: &Tail,
    channel: Channel,
    before: MessageId,
    limit: usize,
) -> rusqlite::Result<Vec<MessageId>> {
    let ids = tail.ids(channel);
    let end = ids.partition_point(|&id| id < before);
    let mut out: Vec<MessageId> = ids[..end].iter().rev().copied().take(limit).collect();
    if out.len() < limit {
        let mut stmt = db.prepare_cached(
            "SELECT ids FROM channel_blocks WHERE channel = ?1 AND first_id < ?2 ORDER BY last_id DESC",
        )?;
        let mut rows = stmt.query(params![channel.0, before])?;
        while let Some(row) = rows.next()? {
            let blob: Vec<u8> = row.get(0)?;
            for id in decode_ids(&blob).into_iter().rev() {
                if out.len() == limit {
                    return Ok(out);
                }
                if id < before {
                    out.push(id);
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn ids_round_trip(mut ids in proptest::collection::vec(0i64..1 << 40, 0..200)) {
            ids.sort_unstable();
            ids.dedup();
            let mut blob = Vec::new();
            encode_ids(&ids, &mut blob);
            prop_assert_eq!(decode_ids(&blob), ids);
        }

        #[test]
        fn decode_never_panics(blob in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = decode_ids(&blob);
        }
    }

    #[test]
    fn forget_from_drops_rolled_back_ids() {
        let mut tail = Tail::default();
        tail.push(Channel(1), 5);
        tail.push(Channel(2), 6);
        tail.push(Channel(1), 7);
        tail.forget_from(6);
        assert_eq!(tail.ids(Channel(1)), &[5]);
        assert_eq!(tail.ids(Channel(2)), &[] as &[i64]);
        assert_eq!(tail.len(), 1);
    }
}
