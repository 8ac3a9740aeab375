//! Accounts: the SCRAM verifier and where a new account's first device starts.

use super::{LOBBY_GROUP_ID, Store, StoreResult, UserId};
use rusqlite::{OptionalExtension, params};

/// A registered user as login needs it.
#[derive(Debug, Clone)]
pub struct UserRecord {
    pub id: UserId,
    pub name: String,
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

/// What the last step of a login checks again: it may have changed since the challenge.
#[derive(Debug, Clone)]
pub struct LoginCheck {
    pub stored_key: Vec<u8>,
    /// An operator disabled the account (`im-server ctl disable`): it cannot log in.
    pub disabled: bool,
}

/// A user as `im-server ctl users` lists them.
#[derive(Debug, Clone)]
pub struct UserSummary {
    pub id: UserId,
    pub name: String,
    pub created_at_ms: i64,
    pub devices: u32,
    pub disabled: bool,
}

/// What `REGISTER` stores.
pub struct NewUser<'a> {
    pub name: &'a str,
    pub name_key: &'a str,
    pub salt: &'a [u8],
    pub iterations: u32,
    pub stored_key: &'a [u8],
    pub server_key: &'a [u8],
    pub now_ms: i64,
}

impl Store {
    pub fn server_secret(&self) -> StoreResult<Vec<u8>> {
        Ok(self.db.query_row("SELECT value FROM meta WHERE key = 'server_secret'", [], |r| r.get(0))?)
    }

    /// Looks a user up by lowercase name.
    pub fn find_user(&self, name_key: &str) -> StoreResult<Option<UserRecord>> {
        let mut stmt = self.db.prepare_cached(
            "SELECT id, name, salt, iterations, stored_key, server_key
             FROM users WHERE name_key = ?1 AND deleted_at IS NULL",
        )?;
        let user = stmt
            .query_row([name_key], |r| {
                Ok(UserRecord {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    salt: r.get(2)?,
                    iterations: r.get(3)?,
                    stored_key: r.get(4)?,
                    server_key: r.get(5)?,
                })
            })
            .optional()?;
        Ok(user)
    }

    /// The account's verifier and whether it is disabled; `None` once it is deleted.
    pub fn login_check(&self, user: UserId) -> StoreResult<Option<LoginCheck>> {
        let mut stmt = self.db.prepare_cached(
            "SELECT stored_key, disabled_at IS NOT NULL FROM users WHERE id = ?1 AND deleted_at IS NULL",
        )?;
        let check =
            stmt.query_row([user], |r| Ok(LoginCheck { stored_key: r.get(0)?, disabled: r.get(1)? })).optional()?;
        Ok(check)
    }

    /// The id and display name of a user, by lowercase name; a deleted account is found too,
    /// until its name is registered again (the conversations with it stay readable).
    pub fn find_user_id_or_deleted(&self, name_key: &str) -> StoreResult<Option<(UserId, String)>> {
        let mut stmt = self.db.prepare_cached("SELECT id, name FROM users WHERE name_key = ?1")?;
        Ok(stmt.query_row([name_key], |r| Ok((r.get(0)?, r.get(1)?))).optional()?)
    }

    /// The id and display name of a user, by lowercase name (not a deleted one).
    pub fn find_user_id(&self, name_key: &str) -> StoreResult<Option<(UserId, String)>> {
        let mut stmt =
            self.db.prepare_cached("SELECT id, name FROM users WHERE name_key = ?1 AND deleted_at IS NULL")?;
        Ok(stmt.query_row([name_key], |r| Ok((r.get(0)?, r.get(1)?))).optional()?)
    }

    pub fn user_name(&self, id: UserId) -> StoreResult<String> {
        let mut stmt = self.db.prepare_cached("SELECT name FROM users WHERE id = ?1")?;
        Ok(stmt.query_row([id], |r| r.get(0))?)
    }

    /// Stores a new account and makes it a member of the lobby. Returns `None` when the
    /// name is taken (ignoring case).
    pub fn create_user(&mut self, user: &NewUser) -> StoreResult<Option<UserId>> {
        let cursor = self.last_message_id();
        self.write(|db| {
            let inserted = db
                .prepare_cached(
                    "INSERT INTO users (name, name_key, salt, iterations, stored_key, server_key, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (name_key) DO NOTHING",
                )?
                .execute(params![
                    user.name,
                    user.name_key,
                    user.salt,
                    user.iterations,
                    user.stored_key,
                    user.server_key,
                    user.now_ms
                ])?;
            if inserted == 0 {
                return Ok(None);
            }
            let id = db.last_insert_rowid();
            db.prepare_cached("INSERT INTO account_starts (user_id, start_id) VALUES (?1, ?2)")?
                .execute([id, cursor])?;
            db.prepare_cached(
                "INSERT INTO group_members (group_id, user_id, joined_at, joined_after) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![LOBBY_GROUP_ID, id, user.now_ms, cursor])?;
            Ok(Some(id))
        })
    }
}

impl Store {
    /// Replaces a user's SCRAM verifier (`PASSWORD_CHANGE`).
    pub fn set_verifier(
        &mut self,
        user: UserId,
        salt: &[u8],
        iterations: u32,
        stored_key: &[u8],
        server_key: &[u8],
    ) -> StoreResult<()> {
        self.write(|db| {
            db.prepare_cached(
                "UPDATE users SET salt = ?2, iterations = ?3, stored_key = ?4, server_key = ?5 WHERE id = ?1",
            )?
            .execute(params![user, salt, iterations, stored_key, server_key])?;
            Ok(())
        })
    }
}

impl Store {
    /// Marks an account deleted: its name shows as deleted wherever its messages are read, its
    /// devices and pending friend requests are forgotten, and it can no longer log in. Its
    /// friendships and group memberships are ended by the caller, which tells the others.
    pub fn delete_account(&mut self, user: UserId, now_ms: i64) -> StoreResult<()> {
        self.write(|db| {
            db.prepare_cached("UPDATE users SET deleted_at = ?2, name = name || ' (deleted)' WHERE id = ?1")?
                .execute(params![user, now_ms])?;
            db.prepare_cached("DELETE FROM friend_requests WHERE from_id = ?1 OR to_id = ?1")?.execute([user])?;
            db.prepare_cached("DELETE FROM devices WHERE user_id = ?1")?.execute([user])?;
            Ok(())
        })
    }

    /// Frees the name of an account deleted before `deleted_before_ms`, so that it can be
    /// registered again (the old account keeps its display name, marked deleted).
    pub fn release_deleted_name(&mut self, name_key: &str, deleted_before_ms: i64) -> StoreResult<()> {
        let releasable: bool = self
            .db
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM users WHERE name_key = ?1 AND deleted_at IS NOT NULL AND deleted_at <= ?2)",
            )?
            .query_row(params![name_key, deleted_before_ms], |r| r.get(0))?;
        if releasable {
            // '#' is not a username character: the old row's key can never be asked for.
            self.write(|db| {
                db.prepare_cached("UPDATE users SET name_key = '#deleted:' || id WHERE name_key = ?1")?
                    .execute([name_key])
            })?;
        }
        Ok(())
    }
}

impl Store {
    /// Disables (`true`) or enables an account; returns whether it exists (and is not deleted).
    pub fn set_disabled(&mut self, user: UserId, disabled: bool, now_ms: i64) -> StoreResult<()> {
        self.write(|db| {
            db.prepare_cached("UPDATE users SET disabled_at = CASE WHEN ?2 THEN ?3 ELSE NULL END WHERE id = ?1")?
                .execute(params![user, disabled, now_ms])?;
            Ok(())
        })
    }

    /// Live accounts whose name contains `pattern` (ignoring ASCII case), by name, at most
    /// `limit`; and how many match in all.
    pub fn list_users(&self, pattern: &str, limit: usize) -> StoreResult<(Vec<UserSummary>, u64)> {
        let like =
            format!("%{}%", pattern.to_ascii_lowercase().replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"));
        let total: i64 = self
            .db
            .prepare_cached("SELECT count(*) FROM users WHERE deleted_at IS NULL AND name_key LIKE ?1 ESCAPE '\\'")?
            .query_row([&like], |r| r.get(0))?;
        let mut stmt = self.db.prepare_cached(
            "SELECT id, name, created_at, (SELECT count(*) FROM devices WHERE user_id = users.id), disabled_at IS NOT NULL
             FROM users WHERE deleted_at IS NULL AND name_key LIKE ?1 ESCAPE '\\' ORDER BY name_key LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![like, limit as i64], |r| {
            Ok(UserSummary {
                id: r.get(0)?,
                name: r.get(1)?,
                created_at_ms: r.get(2)?,
                devices: r.get(3)?,
                disabled: r.get(4)?,
            })
        })?;
        Ok((rows.collect::<Result<_, _>>()?, total.max(0) as u64))
    }
}
