//! Peers that vanish: reset in the middle of a frame, half-closed sockets, and connections
//! that never speak. Each is cleaned up — presence updated, file descriptors given back —
//! while the server keeps serving.

mod support;

use std::time::{Duration, Instant};
use support::*;

fn open_fds(server: &TestServer) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", server.pid())).expect("server fd directory").count()
}

/// Waits until the server holds `expected` descriptors: closing is asynchronous to the peer.
fn await_fds(server: &TestServer, expected: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = open_fds(server);
        if now == expected {
            return;
        }
        assert!(Instant::now() < deadline, "server holds {now} descriptors, expected {expected}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The first 7 bytes of a 20-byte SEND frame: a frame cut in the middle.
fn half_a_frame() -> Vec<u8> {
    let request = req::send("bob", 1, "hello there");
    frame(request.opcode, 77, &request.body)[..7].to_vec()
}

#[test]
fn vanished_peers_are_cleaned_up_and_their_presence_ends() {
    let server = TestServer::start_with(&["--login-timeout", "1", "--idle-timeout", "60"]);
    let mut alice = server.user("alice");
    let mut bob = server.user("bob");
    make_friends(&mut alice, &mut bob);
    let baseline = open_fds(&server);

    // Bob's second device resets in the middle of a frame: it closes with the server's PONG
    // unread, which makes the kernel send RST instead of FIN.
    let mut reset = server.device("bob");
    reset.send(&req::ping());
    reset.write_raw(&half_a_frame());
    reset.kill_with_unread_data();
    // Bob's first device half-closes in the middle of a frame.
    bob.write_raw(&half_a_frame());
    bob.shutdown_write();
    // Alice sees bob go offline exactly once, when his last connection is gone.
    assert_eq!(alice.push(), Message::Presence { username: "bob".into(), online: false });
    alice.assert_quiet();

    // Bob's connection is gone; alice's stays.
    let without_bob = baseline - 1;
    await_fds(&server, without_bob);
    // Ten connections that never speak are accepted, then closed by the login timeout.
    let silent: Vec<Client> = (0..10).map(|_| server.connect()).collect();
    await_fds(&server, without_bob + 10);
    await_fds(&server, without_bob);
    drop(silent);

    // Twenty that say HELLO and then vanish, half of them mid-frame.
    for n in 0..20 {
        let mut c = server.hello();
        if n % 2 == 0 {
            c.write_raw(&half_a_frame());
        }
        c.kill();
    }
    await_fds(&server, without_bob);
    // The server still serves: bob logs in again and alice sees him come back.
    let _bob = server.device("bob");
    assert_eq!(alice.push(), Message::Presence { username: "bob".into(), online: true });
}

#[test]
fn a_peer_that_closes_while_its_backlog_is_pushed_is_cleaned_up() {
    let server = TestServer::start();
    let mut alice = server.user("alice");
    let mut bob = server.user("bob");
    make_friends(&mut alice, &mut bob);
    bob.kill();
    let sends: Vec<_> = (0..5000).map(|n| req::send("bob", n, &"z".repeat(1000))).collect();
    alice.pipeline(&sends);
    alice.barrier();
    let baseline = open_fds(&server);
    // Bob logs in (the 5 MB backlog starts) and vanishes without reading it.
    let mut c = server.hello();
    c.login("bob");
    c.kill_with_unread_data();
    assert_eq!(alice.push(), Message::Presence { username: "bob".into(), online: true });
    assert_eq!(alice.push(), Message::Presence { username: "bob".into(), online: false });
    await_fds(&server, baseline);
    // Nothing was acknowledged, so all of it waits for his next login.
    let (_bob, backlog) = server.login("bob");
    assert_eq!(backlog.len(), 5000);
}

#[test]
fn a_frame_with_the_close_right_behind_it_ends_the_session() {
    // A turn of reading ends at a short read, and a later byte raises a new event; but a
    // hang-up that came with the data raises none, so then the server must read on to the end
    // of the stream. Stopped while bob sends a frame and closes, it finds both queued at once.
    let server = TestServer::start_with(&["--idle-timeout", "600"]);
    let mut alice = server.user("alice");
    let mut bob = server.user("bob");
    make_friends(&mut alice, &mut bob);
    server.signal("STOP");
    bob.send(&req::ping());
    bob.shutdown_write();
    server.signal("CONT");
    assert_eq!(alice.push(), Message::Presence { username: "bob".into(), online: false });
    alice.assert_quiet();
}
