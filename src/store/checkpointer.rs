//! WAL checkpoints off the loop's critical path.
//!
//! With SQLite's automatic checkpoints, the commit that crosses `wal_autocheckpoint` copies
//! the whole WAL into the database file and fsyncs it before returning: the loop, and every
//! answer waiting for that commit, stall for tens to hundreds of milliseconds (measured: p99.9
//! of 136–292 ms at 100 pairs, issue 13). So the loop's connection never checkpoints, and this
//! thread does, with its own connection to the same file: PASSIVE checkpoints copy committed
//! pages while the loop goes on appending, and never take a lock the loop waits for.
//!
//! What it shares with the loop is the database file and nothing else: it writes no rows (the
//! loop stays the only writer), and the loop tells it that a commit happened through a
//! one-slot channel it never blocks on. A crash at any point is safe: a checkpoint only copies
//! pages that are already durable in the WAL.

use rusqlite::{Connection, OpenFlags};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// Pause after each checkpoint, so that under load the database file is synced a few times a
/// second rather than after every batch.
const PAUSE: Duration = Duration::from_millis(100);

/// The checkpointing thread and the loop's end of its channel.
pub struct Checkpointer {
    wake: Option<SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
    /// Set while the loop wants to finish a checkpoint itself: the thread starts no pass (only
    /// one connection can checkpoint at a time).
    loop_wants_it: Arc<AtomicBool>,
}

impl Checkpointer {
    /// Opens a second connection to `path` and starts the thread.
    pub fn start(path: &Path) -> rusqlite::Result<Checkpointer> {
        let db =
            Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
        // PASSIVE never waits for a lock: whatever is busy is copied on the next pass.
        db.busy_timeout(Duration::ZERO)?;
        db.execute_batch("PRAGMA synchronous = NORMAL;")?;
        let (wake, woken) = mpsc::sync_channel(1);
        let loop_wants_it = Arc::new(AtomicBool::new(false));
        let shared = Arc::clone(&loop_wants_it);
        let thread = thread::Builder::new()
            .name("checkpointer".into())
            .spawn(move || run(db, woken, shared))
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        Ok(Checkpointer { wake: Some(wake), thread: Some(thread), loop_wants_it })
    }

    /// Tells the thread that a commit happened; never blocks (a pending wake-up is enough).
    pub fn nudge(&self) {
        if let Some(wake) = &self.wake {
            match wake.try_send(()) {
                Ok(()) | Err(TrySendError::Full(())) => {}
                Err(TrySendError::Disconnected(())) => log::error!("the checkpointer thread has stopped"),
            }
        }
    }

    /// Asks the thread to start no pass until [`Checkpointer::leave_it`].
    pub fn want_it(&self) {
        self.loop_wants_it.store(true, Ordering::Relaxed);
    }

    /// Lets the thread checkpoint again.
    pub fn leave_it(&self) {
        self.loop_wants_it.store(false, Ordering::Relaxed);
    }

    /// Stops the thread after its current checkpoint.
    pub fn stop(&mut self) {
        self.wake = None;
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            log::error!("the checkpointer thread panicked");
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(db: Connection, woken: Receiver<()>, loop_wants_it: Arc<AtomicBool>) {
    while woken.recv().is_ok() {
        if loop_wants_it.load(Ordering::Relaxed) {
            continue;
        }
        match db.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
        }) {
            Ok((_busy, log_pages, copied)) => {
                if copied < log_pages {
                    continue;
                }
            }
            Err(e) => log::warn!("checkpoint failed: {e}"),
        }
        thread::sleep(PAUSE);
    }
}
