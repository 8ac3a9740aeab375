//! Friendships (current and former) and pending friend requests.

use super::{MessageId, Store, StoreResult, UserId};
use rusqlite::{OptionalExtension, params};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContactState {
    Former,
    Friends,
}

/// Someone a user is or was friends with.
#[derive(Debug, Clone)]
pub struct Contact {
    pub peer: UserId,
    pub name: String,
    pub state: ContactState,
}

/// A user's pending friend requests, counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingCounts {
    pub incoming: u32,
    pub outgoing: u32,
}

fn state_of(v: i64) -> ContactState {
    if v == 1 { ContactState::Friends } else { ContactState::Former }
}

impl Store {
    /// Everyone the user is or was friends with.
    pub fn contacts(&self, user: UserId) -> StoreResult<Vec<Contact>> {
        let mut stmt = self.db.prepare_cached(
            "SELECT peer_id, (SELECT name FROM users WHERE id = peer_id), state FROM contacts WHERE user_id = ?1",
        )?;
        let rows =
            stmt.query_map([user], |r| Ok(Contact { peer: r.get(0)?, name: r.get(1)?, state: state_of(r.get(2)?) }))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn contact_state(&self, user: UserId, peer: UserId) -> StoreResult<Option<ContactState>> {
        let mut stmt = self.db.prepare_cached("SELECT state FROM contacts WHERE user_id = ?1 AND peer_id = ?2")?;
        Ok(stmt.query_row([user, peer], |r| r.get(0)).optional()?.map(state_of))
    }

    /// Makes two users friends (both directions).
    pub fn make_friends(&mut self, a: UserId, b: UserId, now_ms: i64) -> StoreResult<()> {
        self.write(|db| {
            let mut stmt = db.prepare_cached(
                "INSERT INTO contacts (user_id, peer_id, state, since) VALUES (?1, ?2, 1, ?3)
                 ON CONFLICT (user_id, peer_id) DO UPDATE SET state = 1, since = ?3",
            )?;
            stmt.execute(params![a, b, now_ms])?;
            stmt.execute(params![b, a, now_ms])?;
            Ok(())
        })
    }

    /// Ends a friendship for both; the conversation stays for its history.
    pub fn end_friendship(&mut self, a: UserId, b: UserId) -> StoreResult<()> {
        self.write(|db| {
            let mut stmt = db.prepare_cached("UPDATE contacts SET state = 0 WHERE user_id = ?1 AND peer_id = ?2")?;
            stmt.execute([a, b])?;
            stmt.execute([b, a])?;
            Ok(())
        })
    }

    pub fn request_exists(&self, from: UserId, to: UserId) -> StoreResult<bool> {
        let mut stmt = self.db.prepare_cached("SELECT 1 FROM friend_requests WHERE from_id = ?1 AND to_id = ?2")?;
        Ok(stmt.exists([from, to])?)
    }

    pub fn insert_request(&mut self, from: UserId, to: UserId, now_ms: i64) -> StoreResult<()> {
        self.write(|db| {
            db.prepare_cached(
                "INSERT OR IGNORE INTO friend_requests (from_id, to_id, created_at) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![from, to, now_ms])?;
            Ok(())
        })
    }

    /// Removes a pending request; returns whether there was one.
    pub fn delete_request(&mut self, from: UserId, to: UserId) -> StoreResult<bool> {
        self.write(|db| {
            Ok(db
                .prepare_cached("DELETE FROM friend_requests WHERE from_id = ?1 AND to_id = ?2")?
                .execute([from, to])?
                > 0)
        })
    }

    /// Names of users with a pending request to `user`, sorted.
    pub fn incoming_requests(&self, user: UserId) -> StoreResult<Vec<String>> {
        self.names_by(
            "SELECT (SELECT name FROM users WHERE id = from_id) AS n FROM friend_requests WHERE to_id = ?1 ORDER BY lower(n)",
            user,
        )
    }

    /// Names of users `user` has a pending request to, sorted.
    pub fn outgoing_requests(&self, user: UserId) -> StoreResult<Vec<String>> {
        self.names_by(
            "SELECT (SELECT name FROM users WHERE id = to_id) AS n FROM friend_requests WHERE from_id = ?1 ORDER BY lower(n)",
            user,
        )
    }

    /// How many friends a user has now.
    pub fn friend_count(&self, user: UserId) -> StoreResult<u32> {
        let mut stmt = self.db.prepare_cached("SELECT COUNT(*) FROM contacts WHERE user_id = ?1 AND state = 1")?;
        Ok(stmt.query_row([user], |r| r.get(0))?)
    }

    /// How many requests are pending to `user` (incoming) and from `user` (outgoing).
    pub fn pending_request_counts(&self, user: UserId) -> StoreResult<PendingCounts> {
        let mut incoming = self.db.prepare_cached("SELECT COUNT(*) FROM friend_requests WHERE to_id = ?1")?;
        let incoming = incoming.query_row([user], |r| r.get(0))?;
        let mut outgoing = self.db.prepare_cached("SELECT COUNT(*) FROM friend_requests WHERE from_id = ?1")?;
        let outgoing = outgoing.query_row([user], |r| r.get(0))?;
        Ok(PendingCounts { incoming, outgoing })
    }

    fn names_by(&self, sql: &str, user: UserId) -> StoreResult<Vec<String>> {
        let mut stmt = self.db.prepare_cached(sql)?;
        let rows = stmt.query_map([user], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records that `user` has read `peer`'s messages up to `up_to` (never backwards).
    /// Returns whether the receipt moved forward.
    pub fn set_read_up_to(&mut self, user: UserId, peer: UserId, up_to: MessageId) -> StoreResult<bool> {
        self.write(|db| {
            let changed = db
                .prepare_cached(
                    "UPDATE contacts SET read_up_to = ?3 WHERE user_id = ?1 AND peer_id = ?2 AND read_up_to < ?3",
                )?
                .execute(params![user, peer, up_to])?;
            Ok(changed > 0)
        })
    }
}
