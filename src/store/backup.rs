//! `im-server backup`: a consistent copy of the database, taken while the server runs.
//!
//! `VACUUM INTO` reads the database inside one read transaction, so the copy is exactly the
//! database as of one commit: every message acknowledged before the backup started is in it.
//! In WAL mode a reader never blocks the server's writes, and this connection is read-only, so
//! the running server loses nothing but a little disk bandwidth.

use rusqlite::{Connection, OpenFlags};
use std::fmt;
use std::path::Path;
use std::time::{Duration, Instant};

/// What a finished backup holds.
#[derive(Debug)]
pub struct BackupSummary {
    pub bytes: u64,
    pub users: i64,
    pub messages: i64,
    pub newest_message_id: i64,
    pub elapsed: Duration,
}

impl fmt::Display for BackupSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "backup complete: {} bytes, {} users, {} messages (newest id {}), integrity ok, in {:.2} s",
            self.bytes,
            self.users,
            self.messages,
            self.newest_message_id,
            self.elapsed.as_secs_f64()
        )
    }
}

/// Why a backup failed.
#[derive(Debug)]
pub enum BackupError {
    TargetExists,
    Sqlite(rusqlite::Error),
    Io(std::io::Error),
    /// The copy did not pass `PRAGMA integrity_check` (it is left in place for inspection).
    Corrupt(String),
}

impl fmt::Display for BackupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackupError::TargetExists => write!(f, "the target file exists; choose a new name"),
            BackupError::Sqlite(e) => write!(f, "{e}"),
            BackupError::Io(e) => write!(f, "{e}"),
            BackupError::Corrupt(report) => write!(f, "the copy failed its integrity check: {report}"),
        }
    }
}

impl std::error::Error for BackupError {}

impl From<rusqlite::Error> for BackupError {
    fn from(e: rusqlite::Error) -> Self {
        BackupError::Sqlite(e)
    }
}

/// Copies the database at `db` to the new file `to`, then checks the copy.
pub fn backup(db: &Path, to: &Path) -> Result<BackupSummary, BackupError> {
    if to.exists() {
        return Err(BackupError::TargetExists);
    }
    let started = Instant::now();
    let source = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    source.busy_timeout(Duration::from_secs(10))?;
    let target = to.to_str().ok_or_else(|| BackupError::Io(std::io::Error::other("the target path is not UTF-8")))?;
    source.execute("VACUUM INTO ?1", [target])?;
    drop(source);

    let copy = Connection::open_with_flags(to, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let report: String = copy.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    if report != "ok" {
        return Err(BackupError::Corrupt(report));
    }
    let users = copy.query_row("SELECT count(*) FROM users", [], |r| r.get(0))?;
    let (messages, newest_message_id) =
        copy.query_row("SELECT count(*), COALESCE(max(id), 0) FROM messages", [], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let bytes = std::fs::metadata(to).map_err(BackupError::Io)?.len();
    Ok(BackupSummary { bytes, users, messages, newest_message_id, elapsed: started.elapsed() })
}
