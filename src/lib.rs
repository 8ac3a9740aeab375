//! im-server: a small, durable instant-messaging server on one thread.
//!
//! # Layout
//! - [`config`]: every limit and default, in one `Config` (also the command line).
//! - [`protocol`]: the wire format of PROTOCOL.md — framing, fields, opcodes, error codes. No IO.
//! - [`scram`]: SCRAM-SHA-256 math for both sides of a login.
//! - [`store`]: the only code that touches SQLite; the schema is `schema.sql`, embedded.
//! - [`limits`]: the send token bucket and the registration throttle.
//! - [`login_throttle`]: failed logins per account and source, across connections.
//! - [`retry`]: recent sends per sender, so a retried SEND is answered, not stored twice.
//! - [`world`]: in-memory state of who is online, their friends and groups, recent message ids.
//! - [`outbox`]: frames produced while handling a batch, held until the batch has committed.
//! - [`cmd`]: one file per command family; each parses, applies to store and world, answers.
//! - [`sync`]: the paged push of a user's offline backlog after login.
//! - [`session`]: the protocol state of one connection — hello, login, user, device, timers.
//! - [`transport`]: how bytes arrive and leave — plain TCP or TLS, frames as they are or in
//!   WebSocket messages; read buffer, write queue.
//! - [`http`]: the browser client's files and the WebSocket upgrade, one request per connection.
//! - [`conns`]: the table of connections, the sets the loop works through, the one close path.
//! - [`acceptor`]: taking new connections, and surviving the lack of file descriptors.
//! - [`ctl`]: the operator's Unix socket (`im-server ctl`): stats, users, disable, delete.
//! - [`server`]: the mio poll loop — accept, read, dispatch, commit, flush, close.
//! - [`buffer`]: byte buffers reused across batches, and when they give memory back.

pub mod acceptor;
pub mod buffer;
pub mod cmd;
pub mod config;
pub mod conns;
pub mod ctl;
pub mod db_lock;
pub mod http;
pub mod limits;
pub mod listeners;
pub mod login_throttle;
pub mod outbox;
pub mod protocol;
pub mod retry;
pub mod scram;
pub mod server;
pub mod session;
pub mod store;
pub mod sync;
pub mod transport;
pub mod world;
