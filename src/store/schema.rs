//! Applying `schema.sql` to a new database, and refusing a newer one.

use super::OpenError;
use rusqlite::Connection;

/// The schema this binary writes; `PRAGMA user_version` holds it in the file.
pub const SCHEMA_VERSION: i64 = 1;
const SCHEMA_SQL: &str = include_str!("../../schema.sql");

/// Migrations from version N-1 to N, applied in order; index 0 is unused (version 1 is the
/// whole schema). Empty until the first change after version 1.
const MIGRATIONS: &[&str] = &[""];

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
