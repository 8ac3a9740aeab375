//! `im-server ctl`: the operator's line to the running server, over a Unix socket next to the
//! database (`<db>.ctl`, mode 0600: only the server's own user can use it), like redis-cli or
//! prosodyctl.
//!
//! The socket is polled by the same loop as the clients; each operator connection sends one
//! line, gets a text answer, and is closed. An answer to a command that changed something is
//! written only after the batch holding the change has committed.

mod commands;

use crate::cmd::Core;
use crate::conns::Conns;
use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Registry, Token};
use slab::Slab;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Operator connections served at once; more wait in the listen backlog until one closes.
const MAX_CONNECTIONS: usize = 8;
/// Longest command line.
const MAX_LINE: usize = 4096;
/// An operator connection still open this long after it was accepted is closed: it sent no
/// whole line, or does not read its answer. Either way it holds one of the few places.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The socket path for the database at `db`.
pub fn socket_path(db: &Path) -> PathBuf {
    let mut path = db.as_os_str().to_owned();
    path.push(".ctl");
    PathBuf::from(path)
}

struct Operator {
    stream: UnixStream,
    line: Vec<u8>,
    /// The answer, once the command has run; held back while `waits_for_commit`.
    answer: Vec<u8>,
    written: usize,
    answered: bool,
    waits_for_commit: bool,
    since: Instant,
}

pub struct Ctl {
    listener: UnixListener,
    path: PathBuf,
    operators: Slab<Operator>,
    /// Tokens: `base + slab key`, above every connection's token and below the listeners'.
    base: usize,
    listener_token: Token,
    /// The table was full when the listener last had something to accept: clients may be
    /// waiting in the backlog, and the listener (edge-triggered) will not say so again until
    /// yet another one connects, so a close must accept them.
    backlog_waiting: bool,
    pub started: Instant,
}

impl Ctl {
    /// Creates the socket at `path` with mode 0600 and registers it. The socket is made in a
    /// private directory and renamed into place, so it is never reachable with wider modes; a
    /// stale socket from a server that did not stop cleanly is replaced, a live one is not.
    pub fn bind(path: PathBuf, registry: &Registry, listener_token: Token, base: usize) -> io::Result<Ctl> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        // Someone answers: another server of this database. Taking its socket would leave it
        // unreachable, and the operator talking to the wrong one.
        if std::os::unix::net::UnixStream::connect(&path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{} is served by another running server of this database", path.display()),
            ));
        }
        let dir = path.with_extension(format!("ctl-new-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let staged = dir.join("socket");
        let bound = UnixListener::bind(&staged).and_then(|listener| {
            std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
            std::fs::rename(&staged, &path)?;
            Ok(listener)
        });
        let _ = std::fs::remove_dir_all(&dir);
        let mut listener = bound?;
        registry.register(&mut listener, listener_token, Interest::READABLE)?;
        Ok(Ctl {
            listener,
            path,
            operators: Slab::new(),
            base,
            listener_token,
            backlog_waiting: false,
            started: Instant::now(),
        })
    }

    pub fn owns(&self, token: Token) -> bool {
        token == self.listener_token || (token.0 >= self.base && token.0 < self.base + MAX_CONNECTIONS)
    }

    /// Handles an event of the listener or of an operator connection.
    pub fn event(&mut self, token: Token, registry: &Registry, core: &mut Core, conns: &Conns) {
        if token == self.listener_token {
            self.accept(registry);
        } else {
            let key = token.0 - self.base;
            self.read(key, core, conns);
            self.write(key, registry);
        }
    }

    fn accept(&mut self, registry: &Registry) {
        loop {
            if self.operators.len() == MAX_CONNECTIONS {
                self.backlog_waiting = true;
                return;
            }
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    let key = self.operators.vacant_key();
                    if registry.register(&mut stream, Token(self.base + key), Interest::READABLE).is_err() {
                        continue;
                    }
                    self.operators.insert(Operator {
                        stream,
                        line: Vec::new(),
                        answer: Vec::new(),
                        written: 0,
                        answered: false,
                        waits_for_commit: false,
                        since: Instant::now(),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    fn read(&mut self, key: usize, core: &mut Core, conns: &Conns) {
        let Some(op) = self.operators.get_mut(key) else { return };
        if op.answered {
            return;
        }
        let mut buf = [0u8; 1024];
        // Whether the client has finished sending (or the socket failed): what it sent is
        // all there will be.
        let mut ended = false;
        loop {
            match op.stream.read(&mut buf) {
                Ok(0) => {
                    ended = true;
                    break;
                }
                Ok(n) => {
                    op.line.extend_from_slice(&buf[..n]);
                    if op.line.contains(&b'\n') || op.line.len() > MAX_LINE {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    ended = true;
                    break;
                }
            }
        }
        let end = match op.line.iter().position(|&b| b == b'\n') {
            Some(end) if end <= MAX_LINE => end,
            // `printf stats | nc -U`: a last line without its newline is still the line.
            None if ended && !op.line.is_empty() && op.line.len() <= MAX_LINE => op.line.len(),
            None if ended && op.line.is_empty() => {
                // Gone without a word: an empty answer, so the write closes it at once.
                op.answered = true;
                return;
            }
            None if op.line.len() <= MAX_LINE => return,
            _ => {
                op.answer = b"error: the command line is too long\n".to_vec();
                op.answered = true;
                return;
            }
        };
        let line = String::from_utf8_lossy(&op.line[..end]).into_owned();
        let (answer, wrote) = commands::execute(line.trim(), core, conns, self.started);
        op.answer = answer.into_bytes();
        op.answered = true;
        op.waits_for_commit = wrote;
    }

    /// After the batch's commit: answers that waited for it may go (or say it failed).
    pub fn after_commit(&mut self, committed: bool, registry: &Registry) {
        let keys: Vec<usize> = self.operators.iter().filter(|(_, op)| op.waits_for_commit).map(|(k, _)| k).collect();
        for key in keys {
            let op = &mut self.operators[key];
            op.waits_for_commit = false;
            if !committed {
                op.answer = b"error: the database failed; nothing was changed\n".to_vec();
            }
            self.write(key, registry);
        }
    }

    fn write(&mut self, key: usize, registry: &Registry) {
        let Some(op) = self.operators.get_mut(key) else { return };
        if !op.answered || op.waits_for_commit {
            return;
        }
        while op.written < op.answer.len() {
            match op.stream.write(&op.answer[op.written..]) {
                Ok(n) if n > 0 => op.written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let token = Token(self.base + key);
                    let _ = registry.reregister(&mut op.stream, token, Interest::READABLE | Interest::WRITABLE);
                    return;
                }
                _ => break,
            }
        }
        self.close(key, registry);
    }

    /// Closes an operator connection; its place goes to a client waiting in the backlog.
    fn close(&mut self, key: usize, registry: &Registry) {
        if let Some(mut op) = self.operators.try_remove(key) {
            let _ = registry.deregister(&mut op.stream);
        }
        if std::mem::take(&mut self.backlog_waiting) {
            self.accept(registry);
        }
    }

    /// Closes operator connections open longer than [`TIMEOUT`], except those whose answer
    /// waits for this batch's commit (they are answered at its end).
    pub fn sweep(&mut self, now: Instant, registry: &Registry) {
        let stale: Vec<usize> = self
            .operators
            .iter()
            .filter(|(_, op)| !op.waits_for_commit && now.duration_since(op.since) >= TIMEOUT)
            .map(|(k, _)| k)
            .collect();
        for key in stale {
            self.close(key, registry);
        }
    }

    /// Stops listening and removes the socket file.
    pub fn shut(mut self, registry: &Registry) {
        let _ = registry.deregister(&mut self.listener);
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether `path` is a socket only its owner can use, owned by this user: anything else may
/// have been put there by someone else, to read the commands or answer them falsely.
fn check_socket(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        // Not there: the connect below says so.
        Err(_) => return Ok(()),
    };
    if !meta.file_type().is_socket() {
        return Err("it is not a socket".into());
    }
    if meta.mode() & 0o077 != 0 {
        return Err(format!("others may use it (mode {:o}); the server makes it 0600", meta.mode() & 0o777));
    }
    let me = std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(u32::MAX);
    if meta.uid() != me {
        return Err(format!("it belongs to user {}, not to this one ({me})", meta.uid()));
    }
    Ok(())
}

/// The `ctl` verb: sends `args` as one line to the server of the database `db` and prints the
/// answer. Fails (1) when the server answers an error, (2) when it cannot be reached.
pub fn run_client(db: &Path, args: &[String]) -> std::process::ExitCode {
    use std::process::ExitCode;
    // The server reads one line: a line break inside an argument would cut the command short.
    if args.iter().any(|a| a.contains(['\n', '\r'])) {
        eprintln!("im-server ctl: an argument holds a line break");
        return ExitCode::from(2);
    }
    let path = socket_path(db);
    if let Err(why) = check_socket(&path) {
        eprintln!("im-server ctl: refusing {}: {why}", path.display());
        return ExitCode::from(2);
    }
    let mut stream = match std::os::unix::net::UnixStream::connect(&path) {
        Ok(stream) => stream,
        Err(e) => {
            eprintln!(
                "im-server ctl: cannot reach {} ({e}): is the server running with --db {}?",
                path.display(),
                db.display()
            );
            return ExitCode::from(2);
        }
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(30)));
    let line = format!("{}\n", args.join(" "));
    let mut answer = String::new();
    if let Err(e) = stream.write_all(line.as_bytes()).and_then(|()| stream.read_to_string(&mut answer)) {
        eprintln!("im-server ctl: {e}");
        return ExitCode::from(2);
    }
    if answer.is_empty() {
        eprintln!("im-server ctl: the server closed the connection without answering (busy? try again)");
        return ExitCode::from(2);
    }
    print!("{answer}");
    if answer.starts_with("error:") { ExitCode::from(1) } else { ExitCode::SUCCESS }
}
