//! A connection's outgoing bytes: whole frames, queued until the socket takes them.
//!
//! Buffers are allocated only while they hold bytes and given back when drained, so an idle
//! connection costs little more than the empty queue. A frame shared by many connections (a
//! group message) is queued by reference, not copied.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::rc::Rc;

enum Chunk {
    Owned(Vec<u8>),
    Shared(Rc<[u8]>),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Owned(v) => v,
            Chunk::Shared(rc) => rc,
        }
    }
}

/// Bytes above which an owned chunk is not extended further, so a write queue is never one
/// huge reallocation.
const OWNED_CHUNK_LIMIT: usize = 64 * 1024;
/// Chunks a write queue makes room for when it starts filling.
const QUEUE_CHUNKS_RESERVED: usize = 16;
/// Slices handed to one `writev`.
pub const MAX_IOVECS: usize = 64;

#[derive(Default)]
pub struct WriteQueue {
    chunks: VecDeque<Chunk>,
    /// Bytes of the front chunk already taken by the socket.
    offset: usize,
    /// Bytes in all chunks, the taken part of the front one included.
    len: usize,
    /// Set once the connection's last frame is queued: nothing is queued after it.
    sealed: bool,
}

impl WriteQueue {
    /// Appends frame bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.sealed || bytes.is_empty() {
            return;
        }
        self.len += bytes.len();
        if let Some(Chunk::Owned(last)) = self.chunks.back_mut()
            && last.len() < OWNED_CHUNK_LIMIT
        {
            last.extend_from_slice(bytes);
            return;
        }
        let mut v = Vec::with_capacity(bytes.len().max(512));
        v.extend_from_slice(bytes);
        self.push_chunk(Chunk::Owned(v));
    }

    /// Appends a frame shared with other connections, without copying it.
    pub fn push_shared(&mut self, frame: &Rc<[u8]>) {
        if self.sealed {
            return;
        }
        self.len += frame.len();
        self.push_chunk(Chunk::Shared(Rc::clone(frame)));
    }

    fn push_chunk(&mut self, chunk: Chunk) {
        if self.chunks.capacity() == 0 {
            // One allocation for a typical batch instead of growing 1, 2, 4, 8: a group message
            // reaches each member as one more shared chunk per loop iteration.
            self.chunks.reserve(QUEUE_CHUNKS_RESERVED);
        }
        self.chunks.push_back(chunk);
    }

    /// Replaces every frame not yet begun on the wire with `frame`, the last this connection
    /// is sent. The rest of a frame partly written goes first, so the client still reads whole
    /// frames.
    pub fn seal_with(&mut self, frame: &[u8]) {
        let remainder = match self.chunks.front() {
            Some(front) => {
                let bytes = front.bytes();
                bytes[self.offset..end_of_frame_at(bytes, self.offset)].to_vec()
            }
            None => Vec::new(),
        };
        self.discard();
        self.sealed = false;
        self.push(&remainder);
        self.push(frame);
        self.sealed = true;
    }

    /// Drops everything queued and accepts nothing more: for a socket nothing can reach.
    pub fn discard(&mut self) {
        self.chunks = VecDeque::new();
        self.offset = 0;
        self.len = 0;
        self.sealed = true;
    }

    /// Bytes waiting to be written.
    pub fn queued_bytes(&self) -> usize {
        self.len - self.offset
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Fills `slices` with the unwritten bytes, front first; returns how many were filled.
    pub fn slices<'a>(&'a self, slices: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (slot, chunk) in slices.iter_mut().zip(self.chunks.iter()) {
            let bytes = chunk.bytes();
            *slot = IoSlice::new(if n == 0 { &bytes[self.offset..] } else { bytes });
            n += 1;
        }
        n
    }

    /// The unwritten part of the front chunk.
    pub fn front(&self) -> Option<&[u8]> {
        self.chunks.front().map(|c| &c.bytes()[self.offset..])
    }

    /// Marks `written` bytes from the front as taken by the socket. An emptied queue gives its
    /// memory back: idle connections hold no buffers.
    pub fn advance(&mut self, written: usize) {
        // A socket never takes more than it was given; were a caller to claim so, the loop
        // below would spin on an empty queue, so the claim is clamped (and fails loudly in
        // tests).
        debug_assert!(written <= self.queued_bytes(), "{written} bytes written of {} queued", self.queued_bytes());
        let mut written = written.min(self.queued_bytes());
        while written > 0 {
            let front_left = self.chunks.front().map_or(0, |c| c.bytes().len()) - self.offset;
            if written >= front_left {
                written -= front_left;
                self.len -= front_left + self.offset;
                self.offset = 0;
                self.chunks.pop_front();
            } else {
                self.offset += written;
                written = 0;
            }
        }
        if self.chunks.is_empty() {
            self.chunks = VecDeque::new();
            self.len = 0;
            self.offset = 0;
        }
    }
}

/// The end of the frame that byte `offset` of `chunk` belongs to, or `offset` itself when a
/// frame starts there. A write-queue chunk always starts at a frame boundary.
fn end_of_frame_at(chunk: &[u8], offset: usize) -> usize {
    let mut start = 0;
    while start < offset {
        let Some(length) = chunk.get(start..start + 4) else { return chunk.len() };
        let length = u32::from_be_bytes(length.try_into().expect("four bytes")) as usize;
        start = start.saturating_add(4 + length);
    }
    start.min(chunk.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_an_offset_falls_in_is_found_by_walking_the_lengths() {
        // Two frames: 4 + 5 bytes, then 4 + 6 bytes.
        let mut chunk = vec![0, 0, 0, 5, 1, 0, 0, 0, 1];
        chunk.extend_from_slice(&[0, 0, 0, 6, 2, 0, 0, 0, 2, 9]);
        assert_eq!(end_of_frame_at(&chunk, 0), 0);
        assert_eq!(end_of_frame_at(&chunk, 1), 9);
        assert_eq!(end_of_frame_at(&chunk, 8), 9);
        assert_eq!(end_of_frame_at(&chunk, 9), 9);
        assert_eq!(end_of_frame_at(&chunk, 10), 19);
        assert_eq!(end_of_frame_at(&chunk, 19), 19);
    }

    #[test]
    fn sealing_keeps_the_rest_of_a_frame_begun_on_the_wire_and_nothing_after() {
        let mut q = WriteQueue::default();
        q.push(&[0, 0, 0, 5, 1, 0, 0, 0, 1]);
        q.push(&[0, 0, 0, 5, 2, 0, 0, 0, 2]);
        q.advance(3);
        q.seal_with(&[0, 0, 0, 5, 9, 0, 0, 0, 0]);
        q.push(&[1, 2, 3]);
        assert_eq!(q.queued_bytes(), 6 + 9);
        assert_eq!(q.front(), Some(&[5, 1, 0, 0, 0, 1, 0, 0, 0, 5, 9, 0, 0, 0, 0][..]));
        q.advance(15);
        assert!(q.is_empty());
        assert_eq!(q.queued_bytes(), 0);
    }

    #[test]
    fn a_shared_frame_is_queued_whole_and_not_after_the_seal() {
        let frame: Rc<[u8]> = Rc::from(&[0, 0, 0, 2, 7, 8][..]);
        let mut q = WriteQueue::default();
        q.push_shared(&frame);
        assert!(!q.is_empty());
        assert_eq!(q.queued_bytes(), 6);
        assert_eq!(q.front(), Some(&frame[..]));
        q.advance(1);
        q.seal_with(&[0, 0, 0, 1, 9]);
        q.push_shared(&frame);
        assert_eq!(q.queued_bytes(), 5 + 5);
        assert_eq!(q.front(), Some(&[0, 0, 2, 7, 8, 0, 0, 0, 1, 9][..]));
        q.advance(10);
        assert!(q.is_empty());
    }

    #[test]
    fn small_frames_share_one_owned_chunk_and_slices_start_at_the_offset() {
        let frame: Rc<[u8]> = Rc::from(&[0, 0, 0, 1, 5][..]);
        let mut q = WriteQueue::default();
        q.push(&[0, 0, 0, 1, 1]);
        q.push(&[0, 0, 0, 1, 2]);
        q.push_shared(&frame);
        q.advance(2);
        let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
        let n = q.slices(&mut slices);
        assert_eq!(n, 2, "two small owned frames extend one chunk");
        assert_eq!(&*slices[0], &[0, 1, 1, 0, 0, 0, 1, 2][..]);
        assert_eq!(&*slices[1], &frame[..]);
        assert_eq!(q.queued_bytes(), 8 + 5);
        q.advance(8);
        assert_eq!(q.queued_bytes(), 5, "popping a chunk begun on the wire");
        assert_eq!(q.front(), Some(&frame[..]));
    }
}
