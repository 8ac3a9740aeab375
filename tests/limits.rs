//! Limits against abuse (PROTOCOL.md §8): send rate, registration throttle, offline quota,
//! sessions per user, login timeout, slow readers and fast writers. Each test starts a server
//! with the limit set low and shows the documented answer, and that nothing is lost.

mod support;

use std::time::{Duration, Instant};
use support::*;

/// Two friends, logged in.
fn friends(server: &TestServer) -> (Client, Client) {
    let mut a = server.user("alice");
    let mut b = server.user("bob");
    make_friends(&mut a, &mut b);
    (a, b)
}

fn is_rate_limited(reply: &Message) -> bool {
    matches!(reply, Message::RetryLater { code: code::RATE_LIMITED, retry_after_ms: 1..=1000, .. })
}

#[test]
fn sends_past_the_burst_are_rate_limited_and_not_stored() {
    let server = TestServer::start_with(&["--send-rate", "2", "--send-burst", "3"]);
    let (mut a, mut b) = friends(&server);
    for n in 0..3 {
        assert!(matches!(a.call(req::send("bob", n, "hi")), Message::Sent { .. }));
    }
    let refused = a.call(req::send("bob", 99, "too fast"));
    assert!(is_rate_limited(&refused), "{refused:?}");
    let delivered = b.barrier();
    assert_eq!(delivered.len(), 3, "{delivered:?}");
    // The group path shares the bucket.
    let refused = a.call(req::group_send(LOBBY, 100, "too fast"));
    assert!(is_rate_limited(&refused), "{refused:?}");
}

#[test]
fn registrations_are_throttled_per_address_and_loopback_only_when_asked() {
    let server = TestServer::start_with(&["--register-limit", "2", "--limit-loopback"]);
    let mut c = server.hello();
    assert_eq!(c.call(register_request("r1")), Message::Ok);
    assert_eq!(c.call(register_request("r2")), Message::Ok);
    let refused = c.call(register_request("r3"));
    assert!(
        matches!(refused, Message::RetryLater { code: code::RATE_LIMITED, retry_after_ms: 590_000..=600_000, .. }),
        "{refused:?}"
    );
    // The refused name was not stored.
    let mut other = server.hello();
    assert!(matches!(other.call(register_request("r3")), Message::RetryLater { .. }));

    let trusting = TestServer::start_with(&["--register-limit", "2"]);
    let mut c = trusting.hello();
    for name in ["t1", "t2", "t3", "t4"] {
        assert_eq!(c.call(register_request(name)), Message::Ok, "{name}");
    }
}

#[test]
fn a_full_offline_queue_refuses_until_the_recipient_acknowledges() {
    let server = TestServer::start_with(&["--max-offline", "3"]);
    let (mut a, b) = friends(&server);
    b.kill();
    for n in 0..3 {
        assert!(matches!(a.call(req::send("bob", n, "queued")), Message::Sent { .. }));
    }
    assert_eq!(a.call(req::send("bob", 3, "one too many")).error_code(), Some(code::RECIPIENT_QUEUE_FULL));

    let (mut b, backlog) = server.login("bob");
    assert_eq!(backlog.len(), 3, "nothing refused was stored: {backlog:?}");
    // Still full while unacknowledged, even though it was pushed.
    assert_eq!(a.call(req::send("bob", 4, "still full")).error_code(), Some(code::RECIPIENT_QUEUE_FULL));
    b.ack(backlog.last().and_then(Message::message_id).unwrap());
    assert!(matches!(a.call(req::send("bob", 5, "room again")), Message::Sent { .. }));
}

#[test]
fn the_offline_queue_is_counted_from_the_store_after_a_restart() {
    let server = TestServer::start_with(&["--max-offline", "2"]);
    let (mut a, b) = friends(&server);
    b.kill();
    for n in 0..2 {
        assert!(matches!(a.call(req::send("bob", n, "queued")), Message::Sent { .. }));
    }
    drop(a);
    let (status, dir) = server.terminate();
    assert!(status.success());
    let server = TestServer::start_in(dir, &["--max-offline", "2"]);
    let (mut a, _) = server.login("alice");
    assert_eq!(a.call(req::send("bob", 7, "full")).error_code(), Some(code::RECIPIENT_QUEUE_FULL));
}

#[test]
fn logins_past_max_sessions_are_refused() {
    let server = TestServer::start_with(&["--max-sessions", "2"]);
    server.register("carol");
    let mut first = server.device("carol");
    let _second = server.device("carol");
    let mut third = server.hello();
    let reply = third.try_login("carol", &password_of("carol")).unwrap_err();
    assert_eq!(reply.error_code(), Some(code::TOO_MANY_SESSIONS), "{reply:?}");
    assert_eq!(first.call(req::logout()), Message::Ok);
    assert_eq!(third.try_login("carol", &password_of("carol")), Ok("carol".to_string()));
}

#[test]
fn connections_that_do_not_log_in_in_time_are_closed() {
    let server = TestServer::start_with(&["--login-timeout", "1", "--idle-timeout", "60"]);
    server.register("dave");
    let mut idle = server.hello();
    let mut logged_in = server.device("dave");
    let started = Instant::now();
    idle.assert_error_and_close(code::LOGIN_TIMEOUT);
    assert!(started.elapsed() < Duration::from_secs(4));
    // A logged-in connection is not subject to the login timeout.
    logged_in.assert_quiet();
}

/// Sends `count` bodies of `size` bytes from `a` to `bob`, pipelined, reading only the answers.
fn flood(a: &mut Client, count: u64, size: usize) {
    let body = "x".repeat(size);
    let requests: Vec<_> = (0..count).map(|n| req::send("bob", 1000 + n, &body)).collect();
    for reply in a.pipeline(&requests) {
        assert!(matches!(reply, Message::Sent { .. }), "{reply:?}");
    }
}

#[test]
fn a_reader_past_the_hard_limit_is_closed_and_loses_nothing() {
    let server = TestServer::start_with(&[
        "--write-queue-soft-limit",
        "16384",
        // Above all 4,000 of alice's SENT answers (100 KB), so only bob can pass it however
        // slowly alice's test thread reads.
        "--write-queue-hard-limit",
        "262144",
        "--write-queue-soft-seconds",
        "600",
    ]);
    let (mut a, b) = friends(&server);
    // Bob never reads: kernel buffers fill, then the server's queue passes the hard limit.
    flood(&mut a, 4000, 4000);
    // Alice sees bob go offline: the server closed him and kept serving her.
    assert_eq!(a.push(), Message::Presence { username: "bob".into(), online: false });
    drop(b);
    let (_bob, backlog) = server.login("bob");
    let delivered: Vec<u64> = backlog.iter().filter_map(Message::message_id).collect();
    assert_eq!(delivered.len(), 4000, "every message reaches bob at his next login");
    assert!(delivered.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn a_reader_above_the_soft_limit_for_too_long_is_closed() {
    let server = TestServer::start_with(&["--write-queue-soft-limit", "16384", "--write-queue-soft-seconds", "1"]);
    let (mut a, _bob) = friends(&server);
    flood(&mut a, 3000, 4000);
    let flooded = Instant::now();
    // Bob reads nothing; after a second above the soft limit the server closes him, and
    // alice sees him go offline.
    assert_eq!(a.push(), Message::Presence { username: "bob".into(), online: false });
    assert!(flooded.elapsed() < Duration::from_secs(4));
}

#[test]
fn a_reader_behind_but_below_the_soft_limit_is_never_timed_out() {
    // More than a backlog page (128 KiB) queued, but below the soft limit: a reader catching
    // up, not a slow one. Only a backlog page left unread starts the soft timer below it.
    let server = TestServer::start_with(&[
        "--write-queue-soft-limit",
        "67108864",
        "--write-queue-hard-limit",
        "134217728",
        "--write-queue-soft-seconds",
        "1",
    ]);
    let (mut a, mut b) = friends(&server);
    // 16 MB for bob, who reads nothing yet: more than the kernel's buffers take, so megabytes
    // wait in his write queue.
    flood(&mut a, 4000, 4000);
    // Nothing can be awaited here: the test is that nothing happens in three times the soft
    // timeout (the sweep runs at least once a second).
    std::thread::sleep(Duration::from_secs(3));
    for n in 0..4000 {
        let message = b.push();
        assert!(matches!(message, Message::Deliver(_)), "delivery {n}: {message:?}");
    }
    a.assert_quiet();
}

/// The server's peak resident memory, in KiB.
fn peak_rss_kib(server: &TestServer) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).expect("server status");
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM line");
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("VmHWM value")
}

#[test]
fn a_client_that_writes_without_reading_is_paused_not_buffered() {
    let server = TestServer::start_with(&["--write-queue-soft-limit", "65536", "--write-queue-soft-seconds", "600"]);
    let (mut a, _b) = friends(&server);
    let body = "y".repeat(4000);
    let sends: Vec<_> = (0..100).map(|n| req::send("bob", n, &body)).collect();
    a.pipeline(&sends);
    let before = peak_rss_kib(&server);
    // 100 HISTORY requests of 100 messages each ask for about 13 MB of answers. Written at
    // once without reading, they would all be answered into memory; paused, the server holds
    // one answer at a time beyond what the kernel buffers take.
    let mut requests = Vec::new();
    for _ in 0..100 {
        let id = a.next_id();
        let request = req::history(&Target::direct("bob"), 0, 100);
        requests.push(id);
        a.write_raw(&frame(request.opcode, id, &request.body));
    }
    for id in requests {
        // A page stops before its bodies pass 128 KiB (PROTOCOL.md §6): 32 of 4,000 bytes.
        let (items, next) = a.response(id).history_page();
        assert_eq!(items.len(), 128 * 1024 / 4000);
        assert_eq!(next, items.last().unwrap().message_id);
    }
    let growth = peak_rss_kib(&server).saturating_sub(before);
    assert!(growth < 20 * 1024, "server memory grew by {growth} KiB");
}
