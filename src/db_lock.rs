//! One server per database.
//!
//! The loop keeps state that must match the database alone: the next message id, the posting
//! lists' tails, who is online. A second server on the same file would hand out the same ids
//! and overwrite the first one's rows, so it is refused at start. The lock is an advisory
//! `flock` on `<db>.lock`, not on the database: SQLite holds POSIX locks on the database file,
//! and closing any other descriptor of that file would drop them. The kernel releases the lock
//! when the process ends, however it ends, so a crash leaves no stale lock behind.
//! `im-server backup` and `im-server ctl` do not take it: they run beside the server.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Held while the server runs; dropping it lets another server start.
pub struct DbLock {
    _file: File,
}

/// `<db>.lock`, beside the database.
pub fn lock_path(db: &Path) -> PathBuf {
    let mut path = db.as_os_str().to_owned();
    path.push(".lock");
    PathBuf::from(path)
}

impl DbLock {
    /// Takes the database for this process, or says which process has it.
    pub fn take(db: &Path) -> io::Result<DbLock> {
        let path = lock_path(db);
        let mut file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(&path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let who = if holder.is_empty() { String::new() } else { format!(" (pid {holder})") };
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!("another im-server{who} is using this database (it holds {})", path.display()),
                ));
            }
            Err(TryLockError::Error(e)) => return Err(e),
        }
        // The holder's pid, for the message the next one gets.
        file.set_len(0)?;
        file.rewind()?;
        write!(file, "{}", std::process::id())?;
        Ok(DbLock { _file: file })
    }
}
