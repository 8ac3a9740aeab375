//! Hardening II (issue 10): the defects found when the server was attacked. Each test shows
//! the attack and the documented answer (PROTOCOL.md §8).

mod support;

use std::io::Write;
use std::net::{IpAddr, Shutdown};
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

/// The descriptor limit the server is started with in the test below.
const FD_LIMIT: usize = 128;

/// The server's descriptors numbered below [`FD_LIMIT`]: the ones the limit applies to (a
/// descriptor inherited from the test harness may have a higher number).
fn open_fds(server: &TestServer) -> usize {
    let entries = std::fs::read_dir(format!("/proc/{}/fd", server.pid())).expect("server fd directory");
    let numbers = entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<usize>().ok());
    numbers.filter(|&n| n < FD_LIMIT).count()
}

/// Waits until the server holds `expected` descriptors: accepting and closing are asynchronous.
fn await_fds(server: &TestServer, expected: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = open_fds(server);
        if now == expected {
            return;
        }
        assert!(Instant::now() < deadline, "server holds {now} descriptors, expected {expected}");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn out_of_descriptors_the_overflow_is_refused_and_a_waiting_client_is_served_later() {
    let server = TestServer::start_with_fd_limit(
        FD_LIMIT as u32,
        &["--login-timeout", "600", "--idle-timeout", "600", "--out-of-fds-wait", "3"],
    );
    let baseline = open_fds(&server);
    let mut crowd: Vec<Client> = (0..160).map(|_| server.connect()).collect();
    // The server accepts until it holds every descriptor it may (the listen backlog keeps the
    // rest), in the order the clients connected.
    await_fds(&server, FD_LIMIT);
    let accepted = FD_LIMIT - baseline;
    eprintln!("{baseline} descriptors at rest; {accepted} of 160 connections accepted under a limit of {FD_LIMIT}");
    assert!((100..160).contains(&accepted), "{accepted} accepted");
    // The overflow waited in the backlog; after --out-of-fds-wait each is told SERVER_FULL.
    for client in &mut crowd[accepted..] {
        client.assert_error_and_close(code::SERVER_FULL);
    }
    let mut served = crowd.split_off(0);
    served.truncate(accepted);
    for client in &mut served {
        assert_eq!(client.call(req::ping()), Message::Pong);
    }
    assert_eq!(open_fds(&server), FD_LIMIT, "the refusals gave their descriptors back");

    // One more client asks while the server is still out of descriptors; then the crowd leaves.
    let mut waiting = server.connect();
    let ping = waiting.send(&req::ping());
    let left = Instant::now();
    for client in served {
        client.writer().shutdown(Shutdown::Both).unwrap();
    }
    // No other connection arrives, yet the waiting client is served once descriptors are free.
    assert_eq!(waiting.response(ping), Message::Pong);
    eprintln!("the waiting client was served {:?} after the crowd left", left.elapsed());
    await_fds(&server, baseline + 1);
}

/// Logs in each name (registered first) and makes the first one friends with all the others:
/// on protocol version 2 only friends may be invited to a group.
fn befriended(server: &TestServer, names: &[&str]) -> Vec<Client> {
    let mut clients: Vec<Client> = names.iter().map(|name| server.user(name)).collect();
    let (first, others) = clients.split_first_mut().unwrap();
    for other in others {
        make_friends(first, other);
    }
    clients
}

#[test]
fn groups_per_user_are_capped() {
    let server = TestServer::start_with(&["--max-groups-per-user", "3"]);
    let mut clients = befriended(&server, &["alice", "bob"]);
    // The lobby is the first of the three.
    for name in ["one", "two"] {
        assert!(matches!(clients[0].call(req::group_create(name)), Message::GroupCreated { .. }));
    }
    assert_eq!(clients[0].call(req::group_create("three")).error_code(), Some(code::TOO_MANY_GROUPS));
    let Message::GroupList(groups) = clients[0].call(req::group_list()) else { panic!("expected GROUP_LIST") };
    assert_eq!(groups.len(), 3);
    // Bob's own groups fill his room, so he cannot be invited to alice's.
    let bobs = (0..2).map(|n| clients[1].call(req::group_create(&format!("b{n}")))).collect::<Vec<_>>();
    assert!(bobs.iter().all(|reply| matches!(reply, Message::GroupCreated { .. })), "{bobs:?}");
    let alices = groups.iter().find(|g| g.name == "one").unwrap().group_id;
    assert_eq!(clients[0].call(req::group_invite(alices, "bob")).error_code(), Some(code::TOO_MANY_GROUPS));
}

#[test]
fn group_members_are_capped_except_in_the_lobby() {
    let server = TestServer::start_with(&["--max-group-members", "2"]);
    let mut clients = befriended(&server, &["alice", "bob", "carol"]);
    let group = clients[0].call(req::group_create("pair")).group_id();
    assert_eq!(clients[0].call(req::group_invite(group, "bob")), Message::Ok);
    assert_eq!(clients[0].call(req::group_invite(group, "carol")).error_code(), Some(code::GROUP_FULL));
    // The lobby holds every user whatever the cap.
    let Message::GroupMembers { members, .. } = clients[0].call(req::group_members(LOBBY)) else {
        panic!("expected GROUP_MEMBERS")
    };
    assert_eq!(members.len(), 3);
}

#[test]
fn pending_friend_requests_are_capped_both_ways() {
    let server = TestServer::start_with(&["--max-pending-requests", "2"]);
    server.register_all(&["bob", "carol", "dave", "erin", "frank"]);
    let mut alice = server.user("alice");
    for name in ["bob", "carol"] {
        assert_eq!(alice.call(req::friend_request(name)), Message::FriendRequestOk { outcome: 0 });
    }
    assert_eq!(alice.call(req::friend_request("dave")).error_code(), Some(code::TOO_MANY_REQUESTS));
    // Bob has alice's request; two more strangers fill his incoming requests.
    let (mut erin, _) = server.login("erin");
    assert_eq!(erin.call(req::friend_request("bob")), Message::FriendRequestOk { outcome: 0 });
    let (mut frank, _) = server.login("frank");
    assert_eq!(frank.call(req::friend_request("bob")).error_code(), Some(code::TOO_MANY_REQUESTS));
    // Answering a request makes room.
    let (mut bob, _) = server.login("bob");
    assert_eq!(bob.call(req::friend_decline("erin")), Message::Ok);
    assert_eq!(frank.call(req::friend_request("bob")), Message::FriendRequestOk { outcome: 0 });
    let Message::FriendList(list) = bob.call(req::friend_list()) else { panic!("expected FRIEND_LIST") };
    assert_eq!(list.incoming, ["alice", "frank"]);
}

#[test]
fn friends_are_capped() {
    let server = TestServer::start_with(&["--max-friends", "1"]);
    let mut clients = befriended(&server, &["alice", "bob"]);
    let mut carol = server.user("carol");
    // Alice has her one friend: she may not ask for another, nor accept one.
    assert_eq!(clients[0].call(req::friend_request("carol")).error_code(), Some(code::TOO_MANY_FRIENDS));
    assert_eq!(carol.call(req::friend_request("alice")), Message::FriendRequestOk { outcome: 0 });
    assert_eq!(clients[0].call(req::friend_accept("carol")).error_code(), Some(code::TOO_MANY_FRIENDS));
    // Once bob is gone there is room for carol.
    assert_eq!(clients[0].call(req::friend_remove("bob")), Message::Ok);
    assert_eq!(clients[0].call(req::friend_accept("carol")), Message::Ok);
}

/// Bob stops reading while alice sends him 16 MB; once the server has closed him (alice sees
/// him go offline), he reads what reached him: whole frames, the last of them
/// `ERROR SLOW_READER`, then the close.
fn check_slow_reader_is_told(args: &[&str]) {
    check_slow_reader_is_told_after(args, Duration::ZERO);
}

/// The same, with bob starting to read `pause` after he was closed.
fn check_slow_reader_is_told_after(args: &[&str], pause: Duration) {
    let server = TestServer::start_with(args);
    let mut alice = server.user("alice");
    let mut bob = server.user("bob");
    make_friends(&mut alice, &mut bob);
    let body = "x".repeat(4000);
    let sends: Vec<_> = (0..4000).map(|n| req::send("bob", n, &body)).collect();
    for reply in alice.pipeline(&sends) {
        assert!(matches!(reply, Message::Sent { .. }), "{reply:?}");
    }
    assert_eq!(alice.push(), Message::Presence { username: "bob".into(), online: false });
    thread::sleep(pause);
    let mut frames = Vec::new();
    loop {
        match bob.try_read_frame() {
            Ok(frame) => frames.push(frame),
            Err(NoFrame::Closed) => break,
            Err(NoFrame::TimedOut) => panic!("bob still open after {} frames", frames.len()),
        }
    }
    let (last, delivered) = frames.split_last().expect("bob received frames");
    assert_eq!((last.opcode, last.request_id), (op::ERROR, 0), "the last of {} frames", frames.len());
    assert_eq!(last.decode().error_code(), Some(code::SLOW_READER));
    assert!(delivered.iter().all(|frame| frame.opcode == op::DELIVER && frame.decode().deliver().from == "alice"));
    eprintln!("bob read {} deliveries, then SLOW_READER", delivered.len());
}

/// Limits under which only the hard limit closes a reader: the soft one would take 600 s.
const HARD_LIMIT_ONLY: [&str; 6] =
    ["--write-queue-soft-limit", "16384", "--write-queue-hard-limit", "262144", "--write-queue-soft-seconds", "600"];

#[test]
fn a_reader_past_the_hard_limit_is_told_slow_reader_last() {
    check_slow_reader_is_told(&HARD_LIMIT_ONLY);
}

#[test]
fn a_closed_slow_reader_that_reads_late_within_the_linger_still_gets_every_frame() {
    // Closed, the connection lingers up to --write-queue-soft-seconds (600 s here) for its
    // last frames; bob starts reading after more than one sweep (at most a second apart).
    check_slow_reader_is_told_after(&HARD_LIMIT_ONLY, Duration::from_millis(1500));
}

#[test]
fn a_reader_above_the_soft_limit_too_long_is_told_slow_reader_last() {
    check_slow_reader_is_told(&[
        "--write-queue-soft-limit",
        "16384",
        "--write-queue-hard-limit",
        "67108864",
        "--write-queue-soft-seconds",
        "2",
    ]);
}

#[test]
fn a_slow_reader_that_never_reads_is_let_go_after_lingering() {
    let server = TestServer::start_with(&[
        "--write-queue-soft-limit",
        "16384",
        "--write-queue-hard-limit",
        "262144",
        "--write-queue-soft-seconds",
        "1",
    ]);
    let mut alice = server.user("alice");
    let mut bob = server.user("bob");
    make_friends(&mut alice, &mut bob);
    let with_bob = open_fds(&server);
    let body = "x".repeat(4000);
    let sends: Vec<_> = (0..4000).map(|n| req::send("bob", n, &body)).collect();
    alice.pipeline(&sends);
    assert_eq!(alice.push(), Message::Presence { username: "bob".into(), online: false });
    // Bob's socket stays open on his side and he reads nothing: after lingering a second for
    // him to read SLOW_READER, the server lets the connection go.
    await_fds(&server, with_bob - 1);
    drop(bob);
}

fn is_throttled(reply: &Message) -> Option<u32> {
    match reply {
        Message::RetryLater { code: code::LOGIN_THROTTLED, retry_after_ms, .. } => Some(*retry_after_ms),
        _ => None,
    }
}

#[test]
fn password_guessing_across_connections_is_slowed_and_the_user_still_logs_in_elsewhere() {
    let server = TestServer::start_with(&["--login-failures-per-account", "3", "--login-failures-per-address", "100"]);
    server.register("victim");
    let attacker: IpAddr = [127, 0, 0, 1].into();
    // Each guess on a connection of its own: the per-connection limit of 5 is never reached.
    let guess = || server.hello_from(attacker).try_login("victim", "guess").unwrap_err();
    for _ in 0..3 {
        assert_eq!(guess().error_code(), Some(code::AUTH_FAILED));
    }
    let first = guess();
    let first_wait = is_throttled(&first).unwrap_or_else(|| panic!("{first:?}"));
    assert!((1..=1000).contains(&first_wait), "{first:?}");
    // Once the wait is over, the next failure doubles it.
    thread::sleep(Duration::from_millis(first_wait.into()));
    assert_eq!(guess().error_code(), Some(code::AUTH_FAILED));
    let second = guess();
    let second_wait = is_throttled(&second).unwrap_or_else(|| panic!("{second:?}"));
    assert!((1001..=2000).contains(&second_wait), "{second:?}");
    // Even the right password waits from the attacker's address...
    let right = server.hello_from(attacker).try_login("victim", &password_of("victim")).unwrap_err();
    assert!(is_throttled(&right).is_some(), "{right:?}");
    // ...while the user logs in from another address at once.
    let mut user = server.hello_from([127, 0, 0, 2].into());
    user.login("victim");
}

#[test]
fn one_address_guessing_many_accounts_is_slowed() {
    let server = TestServer::start_with(&["--login-failures-per-account", "100", "--login-failures-per-address", "4"]);
    server.register("bystander");
    let guesser: IpAddr = [127, 0, 0, 3].into();
    let mut client = server.hello_from(guesser);
    // Unknown names fail like wrong passwords, and count the same.
    for n in 0..4 {
        client = server.hello_from(guesser);
        let (_, reply) = client.login_with_junk_proof(&format!("nobody{n}"));
        assert_eq!(reply.error_code(), Some(code::AUTH_FAILED), "{reply:?}");
    }
    let refused = client.call(req::login_start("nobody4", &[7; 16]));
    assert!(is_throttled(&refused).is_some(), "{refused:?}");
    // Other addresses are not slowed.
    server.hello().login("bystander");
}

#[test]
fn every_register_counts_toward_the_address_limit() {
    let server = TestServer::start_with(&["--register-limit", "3", "--limit-loopback"]);
    let mut owner = server.hello_from([127, 0, 0, 4].into());
    assert_eq!(owner.call(register_request("taken")), Message::Ok);
    // A prober learns from USERNAME_TAKEN that a name exists: each probe is an attempt.
    let mut prober = server.hello_from([127, 0, 0, 5].into());
    for _ in 0..3 {
        assert_eq!(prober.call(register_request("taken")).error_code(), Some(code::USERNAME_TAKEN));
    }
    let refused = prober.call(register_request("taken"));
    assert!(matches!(refused, Message::RetryLater { code: code::RATE_LIMITED, .. }), "{refused:?}");
}

#[test]
fn loopback_is_exempt_from_the_registration_limit_by_default() {
    let server = TestServer::start_with(&["--register-limit", "2"]);
    let mut client = server.hello();
    for name in ["r1", "r2", "r3", "r4"] {
        assert_eq!(client.call(register_request(name)), Message::Ok, "{name}");
    }
}
