//! A user's devices and their delivery positions (PROTOCOL.md §6, "Devices and delivery").
//!
//! One narrow row per device, updated in place by every `ACK`: the position is a cursor over
//! the user's conversations, never a row per message per device.

use super::{MessageId, Store, StoreResult, UserId};
use rusqlite::{OptionalExtension, params};

/// The server's number for a device (`devices.id`, and `messages.device` of what it made).
pub type DeviceId = i64;

/// A device as login and `DEVICE_LIST` see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    pub id: DeviceId,
    /// The `u64` the client chose.
    pub client_id: u64,
    pub name: String,
    pub delivered_up_to: MessageId,
    pub last_seen_ms: i64,
}

/// Why a login could not get its device.
#[derive(Debug)]
pub enum DeviceRefusal {
    /// The user already has this many devices.
    TooMany,
}

impl Store {
    /// Where the user's first device starts (the newest id at registration).
    pub fn account_start(&self, user: UserId) -> StoreResult<MessageId> {
        let mut stmt = self.db.prepare_cached("SELECT start_id FROM account_starts WHERE user_id = ?1")?;
        Ok(stmt.query_row([user], |r| r.get(0)).optional()?.unwrap_or(0))
    }

    /// The user's devices, most recently seen first.
    pub fn devices_of(&self, user: UserId) -> StoreResult<Vec<DeviceRecord>> {
        let mut stmt = self.db.prepare_cached(
            "SELECT id, client_id, name, delivered_up_to, last_seen FROM devices WHERE user_id = ?1
             ORDER BY last_seen DESC, client_id",
        )?;
        let rows = stmt.query_map([user], |r| {
            Ok(DeviceRecord {
                id: r.get(0)?,
                client_id: r.get::<_, i64>(1)? as u64,
                name: r.get(2)?,
                delivered_up_to: r.get(3)?,
                last_seen_ms: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The device a login speaks for: the existing one (renamed if the name changed, and
    /// marked seen), or a new one starting at the lowest position of the user's other devices,
    /// or at the account's start for the first. Devices not seen since `expire_before_ms` are
    /// forgotten first, so they count toward no limit.
    pub fn login_device(
        &mut self,
        user: UserId,
        client_id: u64,
        name: &str,
        max_devices: usize,
        expire_before_ms: i64,
        now_ms: i64,
    ) -> StoreResult<Result<DeviceRecord, DeviceRefusal>> {
        self.expire_devices_of(user, expire_before_ms)?;
        let devices = self.devices_of(user)?;
        if let Some(mut device) = devices.iter().find(|d| d.client_id == client_id).cloned() {
            self.write(|db| {
                db.prepare_cached("UPDATE devices SET name = ?2, last_seen = ?3 WHERE id = ?1")?
                    .execute(params![device.id, name, now_ms])
            })?;
            device.name = name.to_string();
            device.last_seen_ms = now_ms;
            return Ok(Ok(device));
        }
        if devices.len() >= max_devices {
            return Ok(Err(DeviceRefusal::TooMany));
        }
        let start = match devices.iter().map(|d| d.delivered_up_to).min() {
            Some(lowest) => lowest,
            None => self.account_start(user)?,
        };
        let id = self.write(|db| {
            db.prepare_cached(
                "INSERT INTO devices (user_id, client_id, name, delivered_up_to, created_at, last_seen)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
            )?
            .execute(params![user, client_id as i64, name, start, now_ms])?;
            Ok(db.last_insert_rowid())
        })?;
        Ok(Ok(DeviceRecord { id, client_id, name: name.to_string(), delivered_up_to: start, last_seen_ms: now_ms }))
    }

    /// Moves a device's position forward to `up_to` (never back) and marks it seen.
    pub fn acknowledge(&mut self, device: DeviceId, up_to: MessageId, now_ms: i64) -> StoreResult<()> {
        self.write(|db| {
            db.prepare_cached(
                "UPDATE devices SET delivered_up_to = max(delivered_up_to, ?2), last_seen = ?3 WHERE id = ?1",
            )?
            .execute(params![device, up_to, now_ms])?;
            Ok(())
        })
    }

    /// The most advanced position of the user's devices (or the account's start): items at or
    /// below it have reached at least one device.
    pub fn most_advanced_position(&self, user: UserId) -> StoreResult<MessageId> {
        let mut stmt = self.db.prepare_cached("SELECT max(delivered_up_to) FROM devices WHERE user_id = ?1")?;
        match stmt.query_row([user], |r| r.get::<_, Option<MessageId>>(0))? {
            Some(position) => Ok(position),
            None => self.account_start(user),
        }
    }

    /// The server's number for one of the user's devices, by the id its client chose.
    pub fn find_device(&self, user: UserId, client_id: u64) -> StoreResult<Option<DeviceId>> {
        let mut stmt = self.db.prepare_cached("SELECT id FROM devices WHERE user_id = ?1 AND client_id = ?2")?;
        Ok(stmt.query_row(params![user, client_id as i64], |r| r.get(0)).optional()?)
    }

    /// Forgets a device.
    pub fn remove_device(&mut self, device: DeviceId) -> StoreResult<()> {
        self.write(|db| db.prepare_cached("DELETE FROM devices WHERE id = ?1")?.execute([device]))?;
        Ok(())
    }

    fn expire_devices_of(&mut self, user: UserId, before_ms: i64) -> StoreResult<()> {
        let stale: bool = self
            .db
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM devices WHERE user_id = ?1 AND last_seen < ?2)")?
            .query_row(params![user, before_ms], |r| r.get(0))?;
        if stale {
            self.write(|db| {
                db.prepare_cached("DELETE FROM devices WHERE user_id = ?1 AND last_seen < ?2")?
                    .execute(params![user, before_ms])
            })?;
        }
        Ok(())
    }

    /// Forgets every device not seen since `before_ms` (at start); returns how many.
    pub fn expire_devices(&mut self, before_ms: i64) -> StoreResult<usize> {
        // Read first: a start with nothing to forget writes nothing.
        let stale: bool =
            self.db
                .query_row("SELECT EXISTS (SELECT 1 FROM devices WHERE last_seen < ?1)", [before_ms], |r| r.get(0))?;
        if !stale {
            return Ok(0);
        }
        let removed = self.write(|db| db.prepare("DELETE FROM devices WHERE last_seen < ?1")?.execute([before_ms]))?;
        Ok(removed)
    }
}
