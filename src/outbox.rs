//! Frames produced while a batch of events is handled, held back until the batch's
//! transaction has committed.
//!
//! Handlers never write to sockets. They stage frames here; after the loop commits, the
//! server moves them into the connections' write queues. If the commit fails, every frame
//! staged by a command that wrote is withdrawn: its response becomes `STORE_UNAVAILABLE` and
//! its pushes are dropped, so no acknowledgement ever precedes the data it acknowledges.

use crate::protocol::{ErrorCode, response};
use crate::world::Token;
use std::rc::Rc;

/// How a staged frame is treated by the connection that receives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// The answer to a request.
    Response { request_id: u32 },
    /// A notice that is sent whatever the connection is doing.
    Push,
    /// A stored item (PROTOCOL.md §6) with its id. A connection still receiving its backlog
    /// does not queue it: the backlog reads it from the store in its place, in id order.
    Item { id: crate::store::MessageId },
    /// No bytes: an item the connection's own request made (so it is not sent it). Once
    /// delivered it tells the connection that every item up to `id` has reached it, so that
    /// an `ACK` of that id (or of "everything") may cover it.
    OwnItem { id: crate::store::MessageId },
}

/// The bytes of a staged frame.
#[derive(Debug, Clone)]
pub enum FrameBytes {
    /// A range of the outbox's own buffer.
    Staged { start: usize, end: usize },
    /// A frame encoded once and shared by many recipients (group fan-out).
    Shared(Rc<[u8]>),
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub to: Token,
    pub kind: FrameKind,
    pub bytes: FrameBytes,
    /// Set when the command that staged it wrote to the store.
    pub needs_commit: bool,
}

/// The staging area of one loop iteration.
#[derive(Debug, Default)]
pub struct Outbox {
    buf: Vec<u8>,
    entries: Vec<Entry>,
    command_start: usize,
    force_commit: bool,
}

impl Outbox {
    /// Stages a response encoded by `encode`.
    pub fn respond(&mut self, to: Token, request_id: u32, encode: impl FnOnce(&mut Vec<u8>)) {
        self.stage(to, FrameKind::Response { request_id }, encode);
    }

    /// Stages an `ERROR` response.
    pub fn error(&mut self, to: Token, request_id: u32, code: ErrorCode, message: &str) {
        self.respond(to, request_id, |b| response::error(b, request_id, code, message));
    }

    /// Stages a frame for one connection.
    pub fn stage(&mut self, to: Token, kind: FrameKind, encode: impl FnOnce(&mut Vec<u8>)) {
        let start = self.buf.len();
        encode(&mut self.buf);
        let end = self.buf.len();
        self.entries.push(Entry { to, kind, bytes: FrameBytes::Staged { start, end }, needs_commit: false });
    }

    /// Notes that a request of connection `to` made the item `id` (see [`FrameKind::OwnItem`]).
    pub fn own_item(&mut self, to: Token, id: crate::store::MessageId) {
        let at = self.buf.len();
        self.entries.push(Entry {
            to,
            kind: FrameKind::OwnItem { id },
            bytes: FrameBytes::Staged { start: at, end: at },
            needs_commit: false,
        });
    }

    /// Stages one already encoded frame for many connections.
    pub fn stage_shared(&mut self, to: impl IntoIterator<Item = Token>, kind: FrameKind, frame: &Rc<[u8]>) {
        for t in to {
            self.entries.push(Entry { to: t, kind, bytes: FrameBytes::Shared(Rc::clone(frame)), needs_commit: false });
        }
    }

    /// Marks the start of a command's frames.
    pub fn begin_command(&mut self) {
        self.command_start = self.entries.len();
    }

    /// Makes the current command's frames wait for the commit even if it wrote nothing.
    pub fn mark_needs_commit(&mut self) {
        self.force_commit = true;
    }

    /// Ends a command: if it wrote to the store, its frames wait for the commit.
    pub fn end_command(&mut self, wrote: bool) {
        if wrote || std::mem::take(&mut self.force_commit) {
            for e in &mut self.entries[self.command_start..] {
                e.needs_commit = true;
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes encoded into the staging buffer so far in this iteration.
    pub fn staged_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Hands every staged frame, in order, to `deliver`, after the batch's commit succeeded
    /// (`committed`) or failed. Frames withdrawn by a failed commit are replaced or dropped
    /// here. Leaves the outbox empty, keeping its memory for the next iteration.
    pub fn drain(&mut self, committed: bool, mut deliver: impl FnMut(Token, FrameKind, &[u8], Option<&Rc<[u8]>>)) {
        let mut scratch = Vec::new();
        for e in self.entries.drain(..) {
            if e.needs_commit && !committed {
                if let FrameKind::Response { request_id } = e.kind {
                    scratch.clear();
                    response::error(
                        &mut scratch,
                        request_id,
                        ErrorCode::StoreUnavailable,
                        "the database failed; nothing was stored, try again",
                    );
                    deliver(e.to, e.kind, &scratch, None);
                }
                continue;
            }
            match &e.bytes {
                FrameBytes::Staged { start, end } => deliver(e.to, e.kind, &self.buf[*start..*end], None),
                FrameBytes::Shared(rc) => deliver(e.to, e.kind, rc, Some(rc)),
            }
        }
        self.buf.clear();
        // A batch that staged more than a megabyte (a large fan-out) gives it back, so that
        // one burst does not keep an idle server's memory; the next batch starts at 64 KiB.
        if self.buf.capacity() > 1 << 20 {
            self.buf.shrink_to(1 << 16);
        }
        self.command_start = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_commit_turns_responses_into_errors_and_drops_pushes() {
        let mut o = Outbox::default();
        o.begin_command();
        o.respond(1, 7, |b| response::pong(b, 7));
        o.end_command(false);
        o.begin_command();
        o.respond(1, 8, |b| response::sent(b, 8, 1, 1));
        o.stage(2, FrameKind::Item { id: 1 }, |b| response::sync_done(b, 0));
        o.end_command(true);
        assert!(!o.is_empty());
        let mut got = Vec::new();
        o.drain(false, |to, _, bytes, _| got.push((to, bytes[4], bytes.to_vec())));
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].1, crate::protocol::opcode::PONG);
        assert_eq!(got[1].1, crate::protocol::opcode::ERROR);
        assert_eq!(&got[1].2[9..11], &[0, 24]);
        assert!(o.is_empty());
    }

    fn stage_bytes(o: &mut Outbox, n: usize) {
        o.begin_command();
        o.stage(2, FrameKind::Item { id: 1 }, |b| b.resize(b.len() + n, 0));
        o.end_command(false);
    }

    #[test]
    fn a_drain_keeps_a_buffer_up_to_a_megabyte_and_gives_back_a_larger_one() {
        let mut o = Outbox::default();
        o.buf.reserve_exact(1 << 20);
        stage_bytes(&mut o, 100_000);
        o.drain(true, |_, _, _, _| {});
        assert_eq!(o.buf.capacity(), 1 << 20, "a buffer of exactly a megabyte is kept");
        stage_bytes(&mut o, 2 << 20);
        o.drain(true, |_, _, bytes, _| assert_eq!(bytes.len(), 2 << 20));
        assert_eq!(o.buf.capacity(), 1 << 16, "a larger one shrinks to 64 KiB");
        assert!(o.is_empty());
    }
}
