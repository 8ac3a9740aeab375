//! The SQLite store: the only module that uses rusqlite.
//!
//! Writes are batched by the server loop: the first write of a loop iteration opens a
//! transaction ([`Store::begin_write`]), and the loop commits once after every ready event has
//! been handled ([`Store::commit`]). Nothing that depends on a write is sent before that commit.

mod backup;
mod channel;
mod checkpointer;
mod contacts;
mod devices;
mod groups;
mod messages;
mod pending;
mod posting;
mod schema;
mod stats;
mod users;

#[cfg(test)]
mod tests;

pub use backup::{BackupSummary, backup};
pub use channel::Channel;
pub use contacts::{Contact, ContactState};
pub use devices::{DeviceId, DeviceRecord, DeviceRefusal};
pub use groups::{GroupInfo, GroupSummary, Membership};
pub use messages::{BacklogRow, HistoryDirection, HistoryPage, HistoryRow, MessageKind, NewMessage, RecentSend};
pub use stats::StoreStats;
pub use users::{NewUser, UserRecord, UserSummary};

use rusqlite::{Connection, OpenFlags};
use std::path::Path;

pub type UserId = i64;
pub type GroupId = i64;
pub type MessageId = i64;

/// The built-in group every user joins at registration.
pub const LOBBY_GROUP_ID: GroupId = 1;

/// A failure of the database; answered with `STORE_UNAVAILABLE`.
#[derive(Debug)]
pub struct StoreError(pub rusqlite::Error);

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError(e)
    }
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "database error: {}", self.0)
    }
}

impl std::error::Error for StoreError {}

pub type StoreResult<T> = Result<T, StoreError>;

/// Why the database could not be opened.
#[derive(Debug)]
pub enum OpenError {
    Sqlite(rusqlite::Error),
    /// The file's schema is newer than this binary knows.
    NewerSchema {
        found: i64,
        supported: i64,
    },
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Sqlite(e) => write!(f, "cannot open the database: {e}"),
            OpenError::NewerSchema { found, supported } => write!(
                f,
                "the database has schema version {found}, newer than the {supported} this \
                 im-server supports; use a newer im-server"
            ),
        }
    }
}

impl std::error::Error for OpenError {}

impl From<rusqlite::Error> for OpenError {
    fn from(e: rusqlite::Error) -> Self {
        OpenError::Sqlite(e)
    }
}

/// A point in [`Store::finish_iteration`] where a test may have the process abort, to check
/// what a crash there keeps (see [`CRASH_MARKERS_ENV`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CrashPoint {
    /// After the batch's last write, before its COMMIT: nothing of it may survive.
    BeforeCommit,
    /// After COMMIT, before any answer is written: all of it survives, unacknowledged.
    AfterCommit,
}

/// Test seam: when this environment variable is `1` at start, storing a message whose body
/// starts with `CRASH-BEFORE-COMMIT` or `CRASH-AFTER-COMMIT` aborts the process at that point
/// of the batch's commit. Unset in production; crash tests set it (tests/faults.rs).
pub const CRASH_MARKERS_ENV: &str = "IM_SERVER_TEST_CRASH_MARKERS";

/// WAL size past which the loop completes a checkpoint itself, so that the WAL restarts from
/// its beginning. It is also the `journal_size_limit`: at each restart the file is cut back to
/// it, so the file growing past it means the WAL has.
const WAL_LIMIT_BYTES: u64 = 16 << 20;

/// The database, with the transaction state of the current loop iteration.
pub struct Store {
    db: Connection,
    in_transaction: bool,
    failed: bool,
    writes: u64,
    /// `writes` when the open transaction began.
    writes_at_begin: u64,
    next_message_id: MessageId,
    first_uncommitted_id: MessageId,
    /// Messages (kind text) stored in the open transaction, counted at its commit.
    uncommitted_messages: u64,
    /// COMMIT times and the storing rate, for `im-server ctl stats`.
    pub stats: StoreStats,
    tail: posting::Tail,
    /// Messages of the open transaction not yet inserted ([`pending`]).
    pending: pending::PendingRows,
    crash_markers: bool,
    crash_at: Option<CrashPoint>,
    /// Tail length at which posting lists are written as blocks ([`posting::FLUSH_AT`]).
    flush_at: usize,
    /// Started at the first commit, so an idle server holds neither its thread nor its
    /// connection (about 400 KiB of resident memory).
    checkpointer: Option<checkpointer::Checkpointer>,
    path: std::path::PathBuf,
    wal_path: std::path::PathBuf,
}

impl Store {
    /// Opens (creating if needed) the database file and applies or migrates the schema.
    pub fn open(path: &Path) -> Result<Store, OpenError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let db = Connection::open_with_flags(path, flags)?;
        // WAL with synchronous=NORMAL: a commit is durable against a process crash at once and
        // against power loss from the next checkpoint. A 64 MiB page cache keeps large group
        // commits from spilling into the WAL mid-transaction (see STORAGE-NOTES).
        db.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             PRAGMA foreign_keys = ON;
             PRAGMA busy_timeout = 0;
             PRAGMA cache_size = -65536;
             PRAGMA wal_autocheckpoint = 0;
             PRAGMA journal_size_limit = 16777216;",
        )?;
        db.set_prepared_statement_cache_capacity(64);
        schema::apply(&db)?;
        let next_message_id = messages::max_id(&db)? + 1;
        let tail = posting::Tail::load(&db)?;
        Ok(Store {
            db,
            in_transaction: false,
            failed: false,
            writes: 0,
            writes_at_begin: 0,
            next_message_id,
            first_uncommitted_id: next_message_id,
            uncommitted_messages: 0,
            stats: StoreStats::default(),
            tail,
            pending: pending::PendingRows::default(),
            crash_markers: std::env::var(CRASH_MARKERS_ENV).is_ok_and(|v| v == "1"),
            crash_at: None,
            flush_at: posting::FLUSH_AT,
            checkpointer: None,
            path: path.to_path_buf(),
            wal_path: wal_path_of(path),
        })
    }

    /// Opens the transaction of this loop iteration for reading, if none is open, without
    /// counting a write. Reads inside a transaction skip the file locking that SQLite does
    /// around every statement in autocommit mode: measured, 4.6 µs a query becomes 0.45 µs.
    pub fn begin_batch(&mut self) {
        if !self.in_transaction {
            match self.db.execute_batch("BEGIN") {
                Ok(()) => {
                    self.in_transaction = true;
                    self.writes_at_begin = self.writes;
                    self.first_uncommitted_id = self.next_message_id;
                }
                // Reads then run in autocommit mode, only slower.
                Err(e) => log::warn!("cannot open a read transaction: {e}"),
            }
        }
    }

    /// Opens the transaction of this loop iteration if none is open. Every write calls it.
    fn begin_write(&mut self) -> StoreResult<()> {
        self.writes += 1;
        if !self.in_transaction {
            self.db.execute_batch("BEGIN")?;
            self.in_transaction = true;
            self.writes_at_begin = self.writes - 1;
            self.first_uncommitted_id = self.next_message_id;
        }
        Ok(())
    }

    /// Runs one write inside the iteration's transaction. A failure marks the whole
    /// transaction failed: it will be rolled back instead of committed.
    fn write<T>(&mut self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> StoreResult<T> {
        let result = self.begin_write().and_then(|()| f(&self.db).map_err(StoreError));
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    /// Inserts the messages still pending ([`pending`]); a failure marks the transaction
    /// failed like any write's. Every read of the messages table and the commit call it.
    fn insert_pending(&mut self) -> StoreResult<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let result = self.pending.insert_into(&self.db).map_err(StoreError);
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    /// Counts writes so far; the outbox compares it around a command to know whether that
    /// command's answers wait for the commit.
    pub fn write_count(&self) -> u64 {
        self.writes
    }

    /// True while the iteration's transaction holds a failed write.
    pub fn has_failed(&self) -> bool {
        self.failed
    }

    /// Commits the iteration's transaction, or rolls it back if a write in it failed.
    /// Returns whether the iteration's writes are durable.
    pub fn finish_iteration(&mut self) -> bool {
        if !self.in_transaction {
            self.failed = false;
            return true;
        }
        self.in_transaction = false;
        let crash_at = self.crash_at.take();
        let messages = std::mem::take(&mut self.uncommitted_messages);
        if self.failed {
            self.pending.clear();
        } else if let Err(e) = self.insert_pending() {
            log::error!("storing the batch's messages failed: {e}");
        }
        if !self.failed {
            if crash_at == Some(CrashPoint::BeforeCommit) {
                log::warn!("test crash point: aborting before COMMIT");
                std::process::abort();
            }
            // Posting lists are written in the same transaction as the batch that fills them.
            let flush = self.tail.len() >= self.flush_at;
            let up_to = self.last_message_id();
            let written = if flush { self.tail.write_blocks(&self.db, up_to) } else { Ok(()) };
            let started = std::time::Instant::now();
            match written.and_then(|()| self.db.execute_batch("COMMIT")) {
                Ok(()) => {
                    let now = std::time::Instant::now();
                    if flush {
                        self.tail.clear(up_to);
                    }
                    // Only a commit that wrote grows the WAL: a read-only batch needs neither
                    // the checkpointer nor a look at the WAL's size. Nor is it measured: its
                    // COMMIT only releases a lock, and counting it would hide what the
                    // commits that reach the disk take.
                    if self.writes != self.writes_at_begin {
                        let items = (up_to + 1 - self.first_uncommitted_id).max(0) as u64;
                        self.stats.commit(now.duration_since(started), items, messages, now);
                        self.nudge_checkpointer();
                        self.restart_wal_if_long();
                    }
                    if crash_at == Some(CrashPoint::AfterCommit) {
                        log::warn!("test crash point: aborting after COMMIT");
                        std::process::abort();
                    }
                    return true;
                }
                Err(e) => log::error!("commit failed, rolling back: {e}"),
            }
        }
        self.tail.forget_from(self.first_uncommitted_id);
        if let Err(e) = self.db.execute_batch("ROLLBACK") {
            log::error!("rollback failed: {e}");
        }
        self.failed = false;
        // Ids handed out in the rolled-back transaction are skipped: ids only need to grow.
        false
    }

    fn note_crash_marker(&mut self, body: &[u8]) {
        if body.starts_with(b"CRASH-BEFORE-COMMIT") {
            self.crash_at = Some(CrashPoint::BeforeCommit);
        } else if body.starts_with(b"CRASH-AFTER-COMMIT") {
            self.crash_at.get_or_insert(CrashPoint::AfterCommit);
        }
    }

    /// Writes posting-list blocks every `n` ids instead of every [`posting::FLUSH_AT`], so that
    /// tests reach the stored-block paths with a few hundred messages.
    #[doc(hidden)]
    pub fn set_posting_flush_at(&mut self, n: usize) {
        self.flush_at = n.max(1);
    }

    /// Wakes the checkpointer after a commit, starting it the first time.
    fn nudge_checkpointer(&mut self) {
        if self.checkpointer.is_none() {
            match checkpointer::Checkpointer::start(&self.path) {
                Ok(started) => self.checkpointer = Some(started),
                // The WAL then grows until the loop checkpoints it (restart_wal_if_long).
                Err(e) => log::error!("cannot start the checkpointer: {e}"),
            }
        }
        if let Some(checkpointer) = &self.checkpointer {
            checkpointer.nudge();
        }
    }

    /// Under sustained writes the background checkpointer copies the WAL but can never finish
    /// it (the loop appends while it copies), and SQLite restarts the WAL from its beginning
    /// only when a write starts on a fully copied one. So once the WAL passes
    /// [`WAL_LIMIT_BYTES`], the loop copies the frames the checkpointer has not, itself,
    /// between two batches: the next write then starts the WAL afresh. Measured at 100 pairs
    /// and 400k deliveries/s: without it the WAL grew 60 MB a second.
    fn restart_wal_if_long(&mut self) {
        let wal_len = std::fs::metadata(&self.wal_path).map_or(0, |m| m.len());
        if wal_len <= WAL_LIMIT_BYTES {
            return;
        }
        let Some(checkpointer) = &self.checkpointer else { return };
        checkpointer.want_it();
        let started = std::time::Instant::now();
        let pass =
            self.db.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?)));
        match pass {
            Ok((log, copied)) if copied == log => {
                log::debug!("WAL of {log} pages completed in {:?} on the loop", started.elapsed());
                checkpointer.leave_it();
            }
            Ok((log, copied)) => log::debug!("WAL of {log} pages, {copied} copied on the loop"),
            // The checkpointer is ending a pass; it starts no other until the loop has done.
            Err(e) => log::debug!("checkpoint on the loop deferred: {e}"),
        }
    }

    /// Whether a message id belongs to the transaction that is still open.
    pub fn is_uncommitted(&self, id: MessageId) -> bool {
        self.in_transaction && id >= self.first_uncommitted_id
    }

    /// The highest message id assigned so far (committed or in the open transaction).
    pub fn last_message_id(&self) -> MessageId {
        self.next_message_id - 1
    }

    /// Closes the database cleanly (checkpointing the WAL).
    pub fn close(mut self) -> StoreResult<()> {
        if let Some(checkpointer) = &mut self.checkpointer {
            checkpointer.stop();
        }
        self.db.close().map_err(|(_, e)| StoreError(e))
    }
}

/// SQLite's WAL file beside a database: its name with `-wal` appended.
fn wal_path_of(db: &Path) -> std::path::PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    name.into()
}
