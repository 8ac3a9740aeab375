//! Applying `schema.sql` to a new database, and refusing a newer one.

use super::OpenError;
use rusqlite::Connection;

/// The schema this binary writes; `PRAGMA user_version` holds it in the file.
pub const SCHEMA_VERSION: i64 = 3;
const SCHEMA_SQL: &str = include_str!("../../schema.sql");

/// Migrations from version N-1 to N, applied in order; index 0 is unused (version 1 is the
/// whole schema).
const MIGRATIONS: &[&str] = &[
    "",
    // 2: devices with their own positions. The user's one cursor becomes the account's start,
    // so the first device of an upgraded user continues exactly where the user was.
    "ALTER TABLE cursors RENAME TO account_starts;
     ALTER TABLE account_starts RENAME COLUMN delivered_up_to TO start_id;
     CREATE TABLE devices (
         id              INTEGER PRIMARY KEY,
         user_id         INTEGER NOT NULL REFERENCES users(id),
         client_id       INTEGER NOT NULL,
         name            TEXT    NOT NULL,
         delivered_up_to INTEGER NOT NULL,
         created_at      INTEGER NOT NULL,
         last_seen       INTEGER NOT NULL,
         UNIQUE (user_id, client_id)
     );
     ALTER TABLE messages ADD COLUMN device INTEGER NOT NULL DEFAULT 0;",
    // 3: accounts an operator disabled, and deleted accounts.
    "ALTER TABLE users ADD COLUMN disabled_at INTEGER;
     ALTER TABLE users ADD COLUMN deleted_at INTEGER;",
];

pub fn apply(db: &Connection) -> Result<(), OpenError> {
    let found: i64 = db.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if found > SCHEMA_VERSION {
        return Err(OpenError::NewerSchema { found, supported: SCHEMA_VERSION });
    }
    if found == 0 {
        let secret = random_secret();
        db.execute_batch(&format!("BEGIN; {SCHEMA_SQL}"))?;
        db.execute("INSERT INTO meta (key, value) VALUES ('server_secret', ?1)", [&secret[..]])?;
        db.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"))?;
        log::info!("created database schema version {SCHEMA_VERSION}");
        return Ok(());
    }
    for version in found + 1..=SCHEMA_VERSION {
        db.execute_batch(&format!(
            "BEGIN; {} PRAGMA user_version = {version}; COMMIT;",
            MIGRATIONS[version as usize - 1]
        ))?;
        log::info!("migrated database schema to version {version}");
    }
    Ok(())
}

fn random_secret() -> [u8; 32] {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).expect("the OS random source is available");
    secret
}
