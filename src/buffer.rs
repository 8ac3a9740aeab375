//! Byte buffers reused from one batch to the next.

/// Empties `buf` for its next use. It keeps its memory up to a megabyte, so that the next
/// batch does not grow it again; a larger one (a burst of large frames or bodies) shrinks to
/// 64 KiB, so that one burst does not stay in an idle server's memory.
pub fn clear_and_give_back(buf: &mut Vec<u8>) {
    buf.clear();
    if buf.capacity() > 1 << 20 {
        buf.shrink_to(1 << 16);
    }
}
