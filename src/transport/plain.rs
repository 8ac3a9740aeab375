//! Plain TCP: the bytes on the socket are the protocol's frames.

use super::write_queue::{MAX_IOVECS, WriteQueue};
use mio::net::TcpStream;
use std::io::{self, IoSlice, Read, Write};

/// Reads what the socket has, up to `buf.len()` bytes; `Ok(0)` is the peer closing.
pub fn read(socket: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    socket.read(buf)
}

/// Writes as much of the queue as the socket takes now, many chunks per `writev`.
pub fn flush(socket: &mut TcpStream, queue: &mut WriteQueue) -> io::Result<()> {
    while !queue.is_empty() {
        let mut slices: [IoSlice; MAX_IOVECS] = std::array::from_fn(|_| IoSlice::new(&[]));
        let n = queue.slices(&mut slices);
        match socket.write_vectored(&slices[..n]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(written) => queue.advance(written),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
