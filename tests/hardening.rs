//! Hardening II (issue 10): the defects found when the server was attacked. Each test shows
//! the attack and the documented answer (PROTOCOL.md §8).

mod support;

use std::io::Write;
use std::thread;
use std::time::{Duration, Instant};
use support::*;

/// Writes `first`, then one zero byte a second on another thread, until the socket fails or
/// `count` bytes are written: a frame that would take minutes to complete.
fn trickle(client: &Client, first: &'static [u8], count: usize) -> thread::JoinHandle<()> {
    let mut socket = client.writer();
    thread::spawn(move || {
        if socket.write_all(first).is_err() {
            return;
        }
        for _ in 0..count {
            thread::sleep(Duration::from_secs(1));
            if socket.write_all(&[0]).is_err() {
                return;
            }
        }
    })
}

/// A 60,000-byte frame announced, then sent a byte a second.
const SLOW_FRAME_HEADER: &[u8] = &[0x00, 0x00, 0xEA, 0x60];

#[test]
fn a_byte_trickle_does_not_reset_the_idle_timer() {
    let server = TestServer::start_with(&["--idle-timeout", "3"]);
    let mut client = server.user("trickler");
    let started = Instant::now();
    let writer = trickle(&client, SLOW_FRAME_HEADER, 11);
    client.assert_error_and_close(code::IDLE_TIMEOUT);
    let elapsed = started.elapsed();
    eprintln!("a byte trickle was closed after {elapsed:?}");
    assert!(elapsed < Duration::from_secs(8), "closed after {elapsed:?}");
    writer.join().unwrap();
}

#[test]
fn a_frame_slower_than_the_frame_timeout_is_refused() {
    let server = TestServer::start_with(&["--idle-timeout", "60", "--frame-timeout", "2"]);
    let mut client = server.user("trickler");
    let started = Instant::now();
    let writer = trickle(&client, SLOW_FRAME_HEADER, 11);
    client.assert_error_and_close(code::FRAME_TIMEOUT);
    let elapsed = started.elapsed();
    eprintln!("a frame cut short was closed after {elapsed:?}");
    assert!(elapsed < Duration::from_secs(6), "closed after {elapsed:?}");
    writer.join().unwrap();
}
