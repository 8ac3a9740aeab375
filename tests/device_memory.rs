//! Memory per login stays bounded (PROTOCOL.md §6 and §8): a login's backlog costs the same
//! whatever the number of conversations, and connections still receiving their backlog hold
//! no live items, so silent ones are closed as slow readers with nothing lost.

mod support;

use std::time::{Duration, Instant};
use support::*;

/// A line of `/proc/PID/status`, in KiB.
fn status_kib(server: &TestServer, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).expect("server status");
    let line = status.lines().find(|l| l.starts_with(field)).unwrap_or_else(|| panic!("no {field}"));
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("a number")
}

/// The server's open file descriptors.
fn open_fds(server: &TestServer) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", server.pid())).expect("server fds").count()
}

/// Reads every push up to `SYNC_DONE`; returns the item ids, checking their order.
fn drain_backlog(client: &mut Client) -> Vec<u64> {
    let mut ids = Vec::new();
    loop {
        match client.push() {
            Message::SyncDone { count } => {
                assert_eq!(count as usize, ids.len());
                return ids;
            }
            message => ids.extend(message.item_id()),
        }
    }
}

/// A friend puts the victim into 700 groups and posts 16 messages of 4,000 bytes in each
/// (44 MB): the victim's login reads them through 700 small id queues, not 700 pages of
/// messages, so the server grows by far less than the backlog's size.
#[test]
fn a_login_in_700_busy_groups_costs_bounded_memory() {
    const GROUPS: usize = 700;
    const PER_GROUP: usize = 16;
    let server = TestServer::start_with(&["--device-backlog-cap", "100000", "--max-groups-per-user", "1000"]);
    server.register_all(&["spammer", "victim"]);
    let mut spammer = server.device("spammer");
    befriend_offline(&server, &mut spammer, &["victim"]);
    let creates: Vec<Request> = (0..GROUPS).map(|n| req::group_create(&format!("g{n}"))).collect();
    let groups: Vec<u64> = spammer.pipeline(&creates).iter().map(Message::group_id).collect();
    let invites: Vec<Request> = groups.iter().map(|&g| req::group_invite(g, "victim")).collect();
    assert!(spammer.pipeline(&invites).iter().all(|reply| *reply == Message::Ok));
    let body = "s".repeat(4000);
    let mut posts = Vec::new();
    for round in 0..PER_GROUP {
        posts.extend(groups.iter().map(|&g| req::group_send(g, (round * GROUPS) as u64 + g, &body)));
    }
    for chunk in posts.chunks(1000) {
        assert!(spammer.pipeline(chunk).iter().all(|reply| matches!(reply, Message::Sent { .. })));
    }

    let rss_before = status_kib(&server, "VmRSS:");
    let hwm_before = status_kib(&server, "VmHWM:");
    let (_, backlog) = server.login("victim");
    let items = backlog.iter().filter(|m| m.item_id().is_some()).count();
    assert_eq!(items, GROUPS * (PER_GROUP + 1), "every join and every message, once");
    let rss_after = status_kib(&server, "VmRSS:");
    let growth = status_kib(&server, "VmHWM:").saturating_sub(hwm_before.max(rss_before));
    println!("700 groups: VmRSS {rss_before} KiB before, {rss_after} KiB after, peak growth {growth} KiB");
    assert!(growth < 16 * 1024, "the login grew the server by {growth} KiB");
}

/// Eight connections log in with a 6 MB backlog and never read; then an 8 MB flood arrives in
/// the lobby. Syncing connections hold no live items (they read them from the store in their
/// turn), so memory stays flat; they are closed as slow readers, and a later login of the
/// device gets everything exactly once, in order.
#[test]
fn silent_syncing_sessions_hold_no_live_items_and_are_closed_losing_nothing() {
    let server = TestServer::start_with(&["--write-queue-soft-seconds", "2", "--device-backlog-cap", "100000"]);
    let (mut sender, reader) = {
        server.register_all(&["sender", "reader"]);
        let mut sender = server.device("sender");
        let mut reader = server.device("reader");
        make_friends(&mut sender, &mut reader);
        (sender, reader)
    };
    drop(reader);
    assert_eq!(sender.push(), presence_of("reader", false));
    let body = "b".repeat(4000);
    let backlog: Vec<Request> = (0..1500).map(|n| req::send("reader", n + 1, &body)).collect();
    let mut expected: Vec<u64> = Vec::new();
    for chunk in backlog.chunks(500) {
        expected.extend(sender.pipeline(chunk).iter().map(|r| r.sent().0));
    }

    let rss_before = status_kib(&server, "VmRSS:");
    let hwm_before = status_kib(&server, "VmHWM:");
    let fds_before = open_fds(&server);
    let mut silent = Vec::new();
    for _ in 0..8 {
        let mut client = server.hello();
        client.login("reader");
        silent.push(client);
    }
    let flood: Vec<Request> = (0..2000).map(|n| req::group_send(LOBBY, 10_000 + n, &body)).collect();
    for chunk in flood.chunks(500) {
        expected.extend(sender.pipeline(chunk).iter().map(|r| r.sent().0));
    }
    let growth = status_kib(&server, "VmHWM:").saturating_sub(hwm_before.max(rss_before));
    println!("8 silent sessions and an 8 MB flood: VmRSS {rss_before} KiB before, peak growth {growth} KiB");
    assert!(growth < 16 * 1024, "the server grew by {growth} KiB");

    // Each silent connection is closed as a slow reader (it reads nothing of its backlog):
    // the server's descriptors fall back while the clients still hold their sockets.
    let deadline = Instant::now() + Duration::from_secs(30);
    while open_fds(&server) > fds_before {
        assert!(Instant::now() < deadline, "the silent sessions were not closed");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(silent);
    // Nothing was acknowledged: the device gets every item, once, in order.
    let mut again = server.hello();
    again.login("reader");
    let got = drain_backlog(&mut again);
    assert_eq!(got.len(), expected.len(), "every item once");
    assert_eq!(got, expected);
}
