//! Server-wide limits and the process lifecycle: connection limit, idle timeout, SIGTERM,
//! restart on the same database.

mod support;

use std::thread;
use std::time::{Duration, Instant};

use support::{Message, Target, TestServer, alice_and_bob, code, make_friends, req};

#[test]
fn connection_limit() {
    let server = TestServer::start_with(&["--max-connections", "2"]);
    let mut first = server.hello();
    let mut second = server.connect();
    let mut third = server.connect();
    third.assert_error_and_close(code::SERVER_FULL);
    // The first two are unaffected.
    second.hello();
    assert_eq!(first.call(req::ping()), Message::Pong);
    assert_eq!(second.call(req::ping()), Message::Pong);
}

#[test]
fn idle_connections_are_closed() {
    let server = TestServer::start_with(&["--idle-timeout", "1"]);
    server.register("alice");
    let mut before_hello = server.connect();
    let mut anonymous = server.hello();
    let (mut logged_in, _) = server.login("alice");
    for client in [&mut before_hello, &mut anonymous, &mut logged_in] {
        // Blocks on the read (at most 5 s) until the server gives up on the connection.
        client.assert_error_and_close(code::IDLE_TIMEOUT);
    }
}

#[test]
fn pinging_keeps_a_connection_open_past_the_timeout() {
    // Pings every 100 ms against a 2 s timeout: a loaded machine would have to stall the
    // test for 20 times the pace to break it.
    let server = TestServer::start_with(&["--idle-timeout", "2"]);
    let mut busy = server.hello();
    let mut idle = server.hello();
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(4500) {
        assert_eq!(busy.call(req::ping()), Message::Pong);
        // Pacing the pings, not waiting for an event.
        thread::sleep(Duration::from_millis(100));
    }
    idle.assert_error_and_close(code::IDLE_TIMEOUT);
    assert_eq!(busy.call(req::ping()), Message::Pong);
}

#[test]
fn idle_timeout_ends_presence() {
    let server = TestServer::start_with(&["--idle-timeout", "2"]);
    server.register_all(&["alice", "bob"]);
    let mut alice = server.device("alice");
    let mut bob = server.device("bob");
    make_friends(&mut alice, &mut bob);
    // bob falls silent while alice keeps pinging until she hears he is gone (an event, with a
    // generous deadline).
    let mut pushes = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while pushes.is_empty() {
        assert!(Instant::now() < deadline, "bob was never timed out");
        pushes.extend(alice.barrier());
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(pushes, [Message::Presence { username: "bob".into(), online: false }]);
    bob.assert_error_and_close(code::IDLE_TIMEOUT);
}

#[test]
fn sigterm_shuts_down_cleanly() {
    let server = TestServer::start();
    server.register_all(&["alice", "bob"]);
    let mut alice = server.device("alice");
    let mut bob = server.device("bob");
    make_friends(&mut alice, &mut bob);
    let sent = alice.call(req::send("bob", 1, "before the shutdown"));
    let (message_id, _) = sent.sent();
    assert_eq!(bob.push().deliver().message_id, message_id);
    let mut anonymous = server.hello();

    let (status, dir) = server.terminate();
    assert!(status.success(), "exit status {status:?}");
    for client in [&mut alice, &mut bob, &mut anonymous] {
        client.assert_error_and_close(code::SHUTTING_DOWN);
    }

    let db = rusqlite::Connection::open(dir.path().join("im.db")).expect("open the database");
    let check: String = db.query_row("PRAGMA integrity_check", [], |row| row.get(0)).expect("integrity_check");
    assert_eq!(check, "ok");
    drop(db);

    // What was committed survives a restart: bob never acknowledged the message, so it is
    // pushed again, and it is in the history; a retry of the SEND is still recognised.
    let server = TestServer::start_in(dir, &[]);
    let (mut bob, backlog) = server.login("bob");
    assert_eq!(backlog.len(), 1, "{backlog:?}");
    assert_eq!(backlog[0].deliver().body, "before the shutdown");
    let (items, _) = bob.call(req::history(&Target::direct("alice"), 0, 10)).history_page();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].message_id, message_id);
    let mut alice = server.device("alice");
    assert_eq!(bob.push(), support::presence_of("alice", true));
    assert_eq!(alice.call(req::send("bob", 1, "before the shutdown")), sent);
    bob.assert_quiet();
}

#[test]
fn sigint_with_no_clients_exits_zero() {
    let server = TestServer::start();
    let (status, dir) = server.stop(support::Signal::Int);
    assert!(status.success(), "exit status {status:?}");
    let db = rusqlite::Connection::open(dir.path().join("im.db")).expect("open the database");
    let check: String = db.query_row("PRAGMA integrity_check", [], |row| row.get(0)).unwrap();
    assert_eq!(check, "ok");
}

#[test]
fn oversize_frame_from_a_logged_in_user_ends_their_presence() {
    let server = TestServer::start();
    server.register_all(&["alice", "bob"]);
    let mut alice = server.device("alice");
    let mut bob = server.device("bob");
    make_friends(&mut alice, &mut bob);
    bob.write_raw(&[0xFF, 0xFF, 0xFF, 0xFF]);
    bob.assert_error_and_close(code::FRAME_TOO_LARGE);
    assert_eq!(alice.push(), Message::Presence { username: "bob".into(), online: false });
}

#[test]
fn a_locked_database_is_store_unavailable_and_stores_nothing() {
    let server = TestServer::start();
    server.register_all(&["alice", "bob"]);
    let mut alice = server.device("alice");
    let mut bob = server.device("bob");
    make_friends(&mut alice, &mut bob);

    // Another process holds the write lock.
    let locker = rusqlite::Connection::open(server.db_path()).expect("open the database");
    locker.busy_timeout(Duration::from_secs(2)).unwrap();
    locker.execute_batch("BEGIN IMMEDIATE").expect("take the write lock");
    let reply = alice.call(req::send("bob", 1, "while locked"));
    assert_eq!(reply.error_code(), Some(code::STORE_UNAVAILABLE), "{reply:?}");
    let reply = alice.call(req::group_create("while locked"));
    assert_eq!(reply.error_code(), Some(code::STORE_UNAVAILABLE), "{reply:?}");
    bob.assert_quiet();
    locker.execute_batch("ROLLBACK").unwrap();
    drop(locker);

    // Nothing was stored, so the same client_msg_id is a new message now.
    let (message_id, _) = alice.call(req::send("bob", 1, "after the lock")).sent();
    assert_eq!(bob.push().deliver().message_id, message_id);
    let (items, _) = bob.call(req::history(&Target::direct("alice"), 0, 10)).history_page();
    assert_eq!(items.iter().map(|item| item.body.as_str()).collect::<Vec<_>>(), ["after the lock"]);
}

/// CPU time (user and system) the process has used so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("server stat");
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')').expect("stat format").1.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // The kernel's USER_HZ is 100 on every Linux this runs on.
    Duration::from_millis(ticks * 10)
}

#[test]
fn an_idle_server_sleeps_until_something_happens() {
    let server = TestServer::start();
    let (mut alice, mut bob) = alice_and_bob(&server);
    alice.call(req::send("bob", 1, "hi")).sent();
    bob.push();
    // Two seconds with connections open and nothing to do: a loop that polled without
    // waiting would burn them whole (or at least half, on a machine shared with other work).
    let before = cpu_time(server.pid());
    thread::sleep(Duration::from_secs(2));
    let used = cpu_time(server.pid()) - before;
    assert!(used < Duration::from_millis(500), "{used:?} of CPU in 2 s of idleness");
    assert_eq!(alice.call(req::ping()), Message::Pong);
}

#[test]
fn listeners_on_loopback_start_without_a_plain_text_warning() {
    // The warning is for plain text reachable from the network; loopback is the default and
    // must not cry wolf (a non-loopback address cannot be used in tests).
    let server = TestServer::start_with(&["--http-listen", "127.0.0.1:0"]);
    let mut alice = server.user("alice");
    assert_eq!(alice.call(req::ping()), Message::Pong);
    let log = server.log();
    assert!(log.contains("listening on"), "{log}");
    assert!(!log.contains("plain text from the network") && !log.contains("in plain HTTP"), "{log}");
}
