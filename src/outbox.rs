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
    /// One of the batch's fan-outs ([`FanOut`]), shared by every connection it reaches.
    FanOut(usize),
}

/// Items for many connections (a group's messages), encoded once and shared. Consecutive
/// fan-outs to the same connections are joined into one: a sender's pipelined group messages
/// then reach each member as one shared chunk, one outbox entry and one write, whatever
/// their number. Only the sender's own frames may come between two that are joined, so no
/// member's frames change order.
#[derive(Debug)]
struct FanOut {
    to: Vec<Token>,
    /// The connection whose requests made the items; it is not among `to`.
    origin: Token,
    /// Its first entry (the others follow it), whose `needs_commit` says whether its first
    /// command wrote.
    first_entry: usize,
    bytes: Vec<u8>,
    /// The newest item's id: a member sent the fan-out has been sent every item up to it.
    last_id: crate::store::MessageId,
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
    fan_outs: Vec<FanOut>,
    /// The last fan-out, while the next one to the same connections may still join it.
    open_fan_out: Option<usize>,
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
        self.push(Entry { to, kind, bytes: FrameBytes::Staged { start, end }, needs_commit: false });
    }

    /// Notes that a request of connection `to` made the item `id` (see [`FrameKind::OwnItem`]).
    pub fn own_item(&mut self, to: Token, id: crate::store::MessageId) {
        let at = self.buf.len();
        self.push(Entry {
            to,
            kind: FrameKind::OwnItem { id },
            bytes: FrameBytes::Staged { start: at, end: at },
            needs_commit: false,
        });
    }

    /// Any frame but a fan-out's: one for a connection other than the open fan-out's origin
    /// closes it (it may be one of the members, whose frames must stay in order).
    fn push(&mut self, entry: Entry) {
        if self.open_fan_out.is_some_and(|k| self.fan_outs[k].origin != entry.to) {
            self.open_fan_out = None;
        }
        self.entries.push(entry);
    }

    /// Stages item `id`, already encoded as `frame`, for the connections `to` (more than
    /// one; `origin`, whose request made it, is not among them). It joins the previous
    /// fan-out when that went to the same connections, its command wrote, and nothing but
    /// `origin`'s frames was staged since.
    pub fn stage_fan_out(&mut self, to: Vec<Token>, origin: Token, id: crate::store::MessageId, frame: &[u8]) {
        if to.is_empty() {
            return;
        }
        if let Some(k) = self.open_fan_out
            && self.fan_outs[k].to == to
            && self.fan_outs[k].origin == origin
            && self.entries[self.fan_outs[k].first_entry].needs_commit
        {
            let joined = &mut self.fan_outs[k];
            joined.bytes.extend_from_slice(frame);
            joined.last_id = id;
            return;
        }
        let k = self.fan_outs.len();
        let first_entry = self.entries.len();
        let kind = FrameKind::Item { id };
        for &t in &to {
            self.entries.push(Entry { to: t, kind, bytes: FrameBytes::FanOut(k), needs_commit: false });
        }
        self.fan_outs.push(FanOut { to, origin, first_entry, bytes: frame.to_vec(), last_id: id });
        self.open_fan_out = Some(k);
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
        let fan_outs: Vec<(Rc<[u8]>, FrameKind)> =
            self.fan_outs.drain(..).map(|f| (Rc::from(f.bytes), FrameKind::Item { id: f.last_id })).collect();
        self.open_fan_out = None;
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
                FrameBytes::FanOut(k) => {
                    let (frame, kind) = &fan_outs[*k];
                    deliver(e.to, *kind, frame, Some(frame))
                }
            }
        }
        crate::buffer::clear_and_give_back(&mut self.buf);
        self.command_start = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MessageId;

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

    /// One GROUP_SEND as `chat::fan_out` stages it: the sender's own item and SENT, then the
    /// item for the members.
    fn group_send(o: &mut Outbox, origin: Token, members: &[Token], id: MessageId, body: u8) {
        o.begin_command();
        o.own_item(origin, id);
        o.respond(origin, id as u32, |b| b.extend_from_slice(&[0, 0, 0, 1, 0xAA]));
        o.stage_fan_out(members.to_vec(), origin, id, &[0, 0, 0, 1, body]);
        o.end_command(true);
    }

    type Delivered = Vec<(Token, FrameKind, Vec<u8>, bool)>;

    fn drain_all(o: &mut Outbox, committed: bool) -> Delivered {
        let mut got = Vec::new();
        o.drain(committed, |to, kind, bytes, shared| got.push((to, kind, bytes.to_vec(), shared.is_some())));
        got
    }

    fn frames_for(got: &Delivered, to: Token) -> Vec<(FrameKind, Vec<u8>)> {
        got.iter().filter(|d| d.0 == to).map(|d| (d.1, d.2.clone())).collect()
    }

    #[test]
    fn pipelined_fan_outs_to_the_same_members_reach_each_as_one_shared_frame() {
        let mut o = Outbox::default();
        for (id, body) in [(5, 1), (6, 2), (7, 3)] {
            group_send(&mut o, 9, &[1, 2], id, body);
        }
        let got = drain_all(&mut o, true);
        for member in [1, 2] {
            let frames = frames_for(&got, member);
            assert_eq!(frames, vec![(FrameKind::Item { id: 7 }, vec![0, 0, 0, 1, 1, 0, 0, 0, 1, 2, 0, 0, 0, 1, 3])]);
        }
        assert!(got.iter().filter(|d| d.0 != 9).all(|d| d.3), "members share the joined frame");
        let own: Vec<FrameKind> = frames_for(&got, 9).into_iter().map(|f| f.0).collect();
        assert_eq!(own.len(), 6, "the sender's own items and answers are untouched");
        assert_eq!(own[0], FrameKind::OwnItem { id: 5 });
        assert_eq!(own[4], FrameKind::OwnItem { id: 7 });
    }

    #[test]
    fn a_frame_for_a_member_in_between_keeps_the_members_order() {
        let mut o = Outbox::default();
        group_send(&mut o, 9, &[1, 2], 5, 1);
        o.begin_command();
        o.respond(2, 77, |b| b.extend_from_slice(&[0, 0, 0, 1, 0xBB]));
        o.end_command(true);
        group_send(&mut o, 9, &[1, 2], 6, 2);
        let got = drain_all(&mut o, true);
        let member_two = frames_for(&got, 2);
        assert_eq!(member_two.len(), 3);
        assert_eq!(member_two[0], (FrameKind::Item { id: 5 }, vec![0, 0, 0, 1, 1]));
        assert_eq!(member_two[1].1, vec![0, 0, 0, 1, 0xBB]);
        assert_eq!(member_two[2], (FrameKind::Item { id: 6 }, vec![0, 0, 0, 1, 2]));
    }

    #[test]
    fn fan_outs_to_other_connections_or_from_another_origin_are_not_joined() {
        let mut o = Outbox::default();
        group_send(&mut o, 9, &[1, 2], 5, 1);
        group_send(&mut o, 9, &[1, 3], 6, 2);
        group_send(&mut o, 8, &[1, 3], 7, 3);
        let got = drain_all(&mut o, true);
        let kinds = |t| frames_for(&got, t).into_iter().map(|f| f.0).collect::<Vec<_>>();
        assert_eq!(kinds(1), vec![FrameKind::Item { id: 5 }, FrameKind::Item { id: 6 }, FrameKind::Item { id: 7 }]);
        assert_eq!(kinds(2), vec![FrameKind::Item { id: 5 }]);
        assert_eq!(kinds(3), vec![FrameKind::Item { id: 6 }, FrameKind::Item { id: 7 }]);
    }

    #[test]
    fn a_fan_out_of_a_command_that_did_not_write_is_not_joined_and_a_failed_commit_drops_all() {
        let mut o = Outbox::default();
        o.begin_command();
        o.stage_fan_out(vec![1, 2], 9, 5, &[0, 0, 0, 1, 1]);
        o.end_command(false);
        group_send(&mut o, 9, &[1, 2], 6, 2);
        group_send(&mut o, 9, &[1, 2], 7, 3);
        let got = drain_all(&mut o, true);
        let kinds: Vec<FrameKind> = frames_for(&got, 1).into_iter().map(|f| f.0).collect();
        assert_eq!(kinds, vec![FrameKind::Item { id: 5 }, FrameKind::Item { id: 7 }]);

        group_send(&mut o, 9, &[1, 2], 8, 4);
        group_send(&mut o, 9, &[1, 2], 9, 5);
        let got = drain_all(&mut o, false);
        assert!(got.iter().all(|d| d.0 == 9), "only the sender hears, and only errors: {got:?}");
        o.stage_fan_out(Vec::new(), 9, 10, &[0, 0, 0, 1, 6]);
        assert!(o.is_empty(), "a fan-out to no one stages nothing");
    }
}
