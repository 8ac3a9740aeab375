//! Groups and their members' delivery cursors.

use super::{GroupId, MessageId, Store, StoreResult, UserId};
use rusqlite::{OptionalExtension, params};

/// A group's name and owner, and its members.
#[derive(Debug, Clone)]
pub struct GroupInfo {
    pub id: GroupId,
    pub name: String,
    pub owner: Option<UserId>,
    pub members: Vec<(UserId, String)>,
}

/// A user's membership: the group, and the newest message id when they joined.
#[derive(Debug, Clone, Copy)]
pub struct Membership {
    pub group: GroupId,
    pub joined_after: MessageId,
}

/// One line of `GROUP_LIST`.
#[derive(Debug, Clone)]
pub struct GroupSummary {
    pub id: GroupId,
    pub name: String,
    pub owner: String,
    pub members: u32,
}

impl Store {
    /// Creates a group with its creator as owner and only member.
    pub fn create_group(&mut self, name: &str, owner: UserId, now_ms: i64) -> StoreResult<GroupId> {
        let cursor = self.last_message_id();
        self.write(|db| {
            db.prepare_cached("INSERT INTO groups (name, owner_id, created_at) VALUES (?1, ?2, ?3)")?
                .execute(params![name, owner, now_ms])?;
            let id = db.last_insert_rowid();
            db.prepare_cached(
                "INSERT INTO group_members (group_id, user_id, joined_at, joined_after) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![id, owner, now_ms, cursor])?;
            Ok(id)
        })
    }

    /// Adds a member who receives messages newer than the newest one now.
    pub fn add_member(&mut self, group: GroupId, user: UserId, now_ms: i64) -> StoreResult<()> {
        let cursor = self.last_message_id();
        self.write(|db| {
            db.prepare_cached(
                "INSERT OR IGNORE INTO group_members (group_id, user_id, joined_at, joined_after) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![group, user, now_ms, cursor])?;
            Ok(())
        })
    }

    pub fn remove_member(&mut self, group: GroupId, user: UserId) -> StoreResult<()> {
        self.write(|db| {
            db.prepare_cached("DELETE FROM group_members WHERE group_id = ?1 AND user_id = ?2")?
                .execute([group, user])?;
            Ok(())
        })
    }

    /// A group with its members, or `None` if there is no such group.
    pub fn group_info(&self, group: GroupId) -> StoreResult<Option<GroupInfo>> {
        let mut stmt = self.db.prepare_cached("SELECT name, owner_id FROM groups WHERE id = ?1")?;
        let Some((name, owner)) = stmt.query_row([group], |r| Ok((r.get(0)?, r.get(1)?))).optional()? else {
            return Ok(None);
        };
        let mut stmt = self.db.prepare_cached(
            "SELECT user_id, (SELECT name FROM users WHERE id = user_id) FROM group_members WHERE group_id = ?1",
        )?;
        let members = stmt.query_map([group], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?;
        Ok(Some(GroupInfo { id: group, name, owner, members }))
    }

    /// The groups a user is a member of.
    pub fn memberships(&self, user: UserId) -> StoreResult<Vec<Membership>> {
        let mut stmt = self.db.prepare_cached("SELECT group_id, joined_after FROM group_members WHERE user_id = ?1")?;
        let rows = stmt.query_map([user], |r| Ok(Membership { group: r.get(0)?, joined_after: r.get(1)? }))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The user's groups for `GROUP_LIST`, by id.
    pub fn group_summaries(&self, user: UserId) -> StoreResult<Vec<GroupSummary>> {
        let mut stmt = self.db.prepare_cached(
            "SELECT g.id, g.name, COALESCE((SELECT name FROM users WHERE id = g.owner_id), ''),
                    (SELECT COUNT(*) FROM group_members c WHERE c.group_id = g.id)
             FROM groups g WHERE g.id IN (SELECT group_id FROM group_members WHERE user_id = ?1) ORDER BY g.id",
        )?;
        let rows = stmt.query_map([user], |r| {
            Ok(GroupSummary { id: r.get(0)?, name: r.get(1)?, owner: r.get(2)?, members: r.get(3)? })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

impl Store {
    /// A group's name, or `None` if there is no such group.
    pub fn group_name(&self, group: GroupId) -> StoreResult<Option<String>> {
        let mut stmt = self.db.prepare_cached("SELECT name FROM groups WHERE id = ?1")?;
        Ok(stmt.query_row([group], |r| r.get(0)).optional()?)
    }
}

impl Store {
    pub fn is_member(&self, group: GroupId, user: UserId) -> StoreResult<bool> {
        let mut stmt = self.db.prepare_cached("SELECT 1 FROM group_members WHERE group_id = ?1 AND user_id = ?2")?;
        Ok(stmt.exists([group, user])?)
    }
}

impl Store {
    /// How many groups a user is in, the lobby included.
    pub fn group_count(&self, user: UserId) -> StoreResult<u32> {
        let mut stmt = self.db.prepare_cached("SELECT COUNT(*) FROM group_members WHERE user_id = ?1")?;
        Ok(stmt.query_row([user], |r| r.get(0))?)
    }

    /// How many members a group has.
    pub fn member_count(&self, group: GroupId) -> StoreResult<u32> {
        let mut stmt = self.db.prepare_cached("SELECT COUNT(*) FROM group_members WHERE group_id = ?1")?;
        Ok(stmt.query_row([group], |r| r.get(0))?)
    }
}
