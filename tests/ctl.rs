//! `im-server ctl`: the operator's commands over the Unix socket next to the database, run
//! through the real binary's `ctl` verb against a running server.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use support::*;

/// Runs `im-server --db DB ctl ARGS`; returns the exit code and what it printed.
fn ctl(server: &TestServer, args: &[&str]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_im-server"))
        .arg("--db")
        .arg(server.db_path())
        .arg("ctl")
        .args(args)
        .output()
        .expect("run im-server ctl");
    let text = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    (output.status.code().unwrap_or(-1), text)
}

/// The samples of a Prometheus text exposition: `(name, labels, value)` of each line that is
/// not a comment. Panics at a line that breaks the format, or at a sample whose metric had no
/// `# TYPE` line before it.
fn prometheus_samples(text: &str) -> Vec<(String, String, f64)> {
    let is_name = |s: &str| {
        s.chars()
            .enumerate()
            .all(|(i, c)| c == '_' || c == ':' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()))
            && !s.is_empty()
    };
    let mut typed = Vec::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or_else(|| panic!("{line:?}"));
            assert!(is_name(name) && ["gauge", "counter", "summary"].contains(&kind), "{line:?}");
            typed.push(name.to_string());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line:?}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("not a number: {line:?}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => {
                let labels = labels.strip_suffix('}').unwrap_or_else(|| panic!("unclosed labels: {line:?}"));
                for pair in labels.split(',') {
                    let (label, quoted) = pair.split_once('=').unwrap_or_else(|| panic!("{line:?}"));
                    assert!(is_name(label) && !label.contains(':'), "label {label:?} in {line:?}");
                    assert!(quoted.len() >= 2 && quoted.starts_with('"') && quoted.ends_with('"'), "{line:?}");
                }
                (name, labels)
            }
            None => (series, ""),
        };
        assert!(is_name(name), "name {name:?} in {line:?}");
        let family = name.trim_end_matches("_sum").trim_end_matches("_count");
        assert!(typed.iter().any(|t| t == name || t == family), "no # TYPE before {line:?}");
        samples.push((name.to_string(), labels.to_string(), value));
    }
    samples
}

#[test]
fn the_socket_is_private_and_stats_report_the_server() {
    let server = TestServer::start_with(&["--http-listen", "127.0.0.1:0"]);
    let socket = format!("{}.ctl", server.db_path().display());
    let mode = std::fs::metadata(&socket).expect("the socket exists").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
    let mut alice = server.user("alice");
    let mut bob = support::websocket::connect(server.http_port.expect("an HTTP port"));
    bob.hello();
    assert_eq!(bob.call(register_request("bob")), Message::Ok);
    bob.login("bob");
    bob.sync();
    make_friends(&mut alice, &mut bob);
    for n in 1..=2 {
        alice.call(req::send("bob", n, "hi")).sent();
        bob.push();
    }

    let (code, text) = ctl(&server, &["stats"]);
    assert_eq!(code, 0, "{text}");
    for line in [
        "connections          2 (tcp 1, tls 0, websocket 1, websocket+tls 0)\n",
        "online users         2\n",
        "messages stored      2 (since start)\n",
        "bytes queued         0\n",
    ] {
        assert!(text.contains(line), "{line:?} in {text}");
    }
    assert!(text.contains("\ncommit p99           ") && text.contains(" µs\n"), "{text}");

    let (code, text) = ctl(&server, &["stats", "--prometheus"]);
    assert_eq!(code, 0, "{text}");
    let samples = prometheus_samples(&text);
    let value = |name: &str, labels: &str| {
        samples
            .iter()
            .find(|s| s.0 == name && s.1 == labels)
            .unwrap_or_else(|| panic!("{name}{{{labels}}} in {text}"))
            .2
    };
    assert_eq!(value("im_server_connections", "transport=\"tcp\""), 1.0);
    assert_eq!(value("im_server_connections", "transport=\"websocket\""), 1.0);
    assert_eq!(value("im_server_online_users", ""), 2.0);
    assert_eq!(value("im_server_messages_stored_total", ""), 2.0);
    assert!(value("im_server_messages_per_second", "") > 0.0);
    assert!(value("im_server_commit_seconds", "quantile=\"0.99\"") > 0.0);
    assert!(value("im_server_commit_seconds", "quantile=\"0.5\"") > 0.0);
    assert_eq!(value("im_server_queued_bytes", ""), 0.0);
    assert!(value("im_server_database_bytes", "") > 0.0);
    assert!(value("im_server_wal_bytes", "") >= 0.0);
    assert!(value("im_server_uptime_seconds", "") >= 0.0);

    let (code, text) = ctl(&server, &["frobnicate"]);
    assert_eq!(code, 1, "{text}");
    assert_eq!(text, "error: unknown command or arguments: frobnicate (try help)\n");
}

#[test]
fn stats_count_the_bytes_waiting_for_a_reader() {
    let server =
        TestServer::start_with(&["--write-queue-soft-limit", "67108864", "--write-queue-hard-limit", "134217728"]);
    let mut alice = server.user("alice");
    let mut bob = server.user("bob");
    make_friends(&mut alice, &mut bob);
    // 16 MB for bob, who reads nothing: the kernel's buffers take a few MB, the rest waits in
    // his write queue.
    let body = "q".repeat(4000);
    let sends: Vec<_> = (0..4000).map(|n| req::send("bob", n, &body)).collect();
    alice.pipeline(&sends);
    let (code, text) = ctl(&server, &["stats"]);
    assert_eq!(code, 0, "{text}");
    let queued: u64 = text
        .lines()
        .find_map(|line| line.strip_prefix("bytes queued"))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no bytes queued in {text}"));
    assert!((1 << 20..16_000_000).contains(&queued), "{queued} bytes queued");
    drop(bob);
}

#[test]
fn users_and_sessions_are_listed() {
    let server = TestServer::start();
    server.register_all(&["alice", "albert", "bob"]);
    let _alice = server.device("alice");
    let (code, text) = ctl(&server, &["users", "AL"]);
    assert_eq!(code, 0, "{text}");
    let names: Vec<&str> = text.lines().skip(1).map(|l| l.split('\t').next().unwrap()).collect();
    assert_eq!(names, ["albert", "alice"], "{text}");
    assert!(text.lines().any(|l| l.starts_with("alice\t") && l.contains("\tyes\tno")), "alice online, enabled: {text}");

    let (code, text) = ctl(&server, &["sessions", "alice"]);
    assert_eq!(code, 0, "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[..2], ["alice: 1 session(s)", "connection\tpeer\ttransport\tdevice\tsince"], "{text}");
    let columns: Vec<&str> = lines[2].split('\t').collect();
    assert_eq!(columns[1..4], ["127.0.0.1", "tcp", "device 32343 (32343)"], "{text}");
    let since = columns[4].as_bytes();
    assert!(since.len() == 20 && since[10] == b'T' && since[19] == b'Z' && since.starts_with(b"20"), "{text}");
    let (_, text) = ctl(&server, &["sessions", "bob"]);
    assert_eq!(text, "bob: offline\n");
}

#[test]
fn a_disabled_account_is_closed_and_refused_until_enabled() {
    let server = TestServer::start();
    server.register("alice");
    let mut alice = server.device("alice");
    let (code, text) = ctl(&server, &["disable", "ALICE"]);
    assert_eq!((code, text.as_str()), (0, "alice disabled\n"));
    alice.assert_error_and_close(code::ACCOUNT_DISABLED);
    let mut again = server.hello();
    let refused = again.try_login("alice", &password_of("alice")).unwrap_err();
    assert_eq!(refused.error_code(), Some(code::ACCOUNT_DISABLED));
    // A wrong password is still only a wrong password: being disabled is not revealed.
    assert_eq!(again.try_login("alice", "wrong").unwrap_err().error_code(), Some(code::AUTH_FAILED));
    assert_eq!(ctl(&server, &["enable", "alice"]).1, "alice enabled\n");
    assert_eq!(server.hello().try_login("alice", &password_of("alice")).unwrap(), "alice");
}

#[test]
fn kick_and_delete_tell_the_others() {
    let server = TestServer::start();
    let (mut alice, mut bob) = alice_and_bob(&server);
    let group = alice.call(req::group_create("book club")).group_id();
    assert_eq!(alice.call(req::group_invite(group, "bob")), Message::Ok);
    bob.push();
    let (code, text) = ctl(&server, &["kick", &group.to_string(), "bob"]);
    assert_eq!((code, text.as_str()), (0, "bob removed from the group\n"));
    for member in [&mut alice, &mut bob] {
        let left = member.push();
        assert!(matches!(&left, Message::GroupEvent { username, event: 2, .. } if username == "bob"), "{left:?}");
    }
    assert_eq!(ctl(&server, &["kick", "1", "bob"]).0, 1, "the lobby cannot be left");

    let (code, text) = ctl(&server, &["delete", "bob"]);
    assert_eq!((code, text.as_str()), (0, "bob deleted\n"));
    // Bob's own items of the deletion (the friendship ended) come first, then the error.
    bob.assert_items_then_error_and_close(code::ACCOUNT_DELETED);
    let removed = alice.push();
    assert!(
        matches!(&removed, Message::FriendEvent { event: friend_event::REMOVED, username, .. } if username == "bob"),
        "{removed:?}"
    );
    assert_eq!(ctl(&server, &["delete", "bob"]).1, "error: no such user\n");
}

/// Sends `bytes` on a raw connection to the operator socket, then (with `Finish::Shutdown`)
/// says it has nothing more to send; returns the whole answer.
fn raw(server: &TestServer, bytes: &[u8], finish: Finish) -> String {
    use std::io::{Read, Write};
    let socket = format!("{}.ctl", server.db_path().display());
    let mut stream = std::os::unix::net::UnixStream::connect(&socket).expect("connect");
    stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    stream.write_all(bytes).unwrap();
    if finish == Finish::Shutdown {
        stream.shutdown(std::net::Shutdown::Write).unwrap();
    }
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("the server answers and closes");
    String::from_utf8_lossy(&answer).into_owned()
}

#[derive(PartialEq)]
enum Finish {
    KeepOpen,
    Shutdown,
}

#[test]
fn garbage_lines_get_an_error_answer() {
    let server = TestServer::start();
    assert_eq!(
        raw(&server, b"\xff\xfe\x00\n", Finish::KeepOpen),
        "error: unknown command or arguments: \u{fffd}\u{fffd}\0 (try help)\n"
    );
    assert_eq!(
        raw(&server, b"users a b c\n", Finish::KeepOpen),
        "error: unknown command or arguments: users (try help)\n"
    );
    assert_eq!(raw(&server, b"kick lobby alice\n", Finish::KeepOpen), "error: lobby is not a group id\n");
    assert_eq!(raw(&server, &[b'a'; 5000], Finish::KeepOpen), "error: the command line is too long\n");
    // A last line without its newline (`printf stats | nc -U`) is still a line.
    assert!(raw(&server, b"stats", Finish::Shutdown).starts_with("connections "));
    // A client gone without a word is closed at once.
    assert_eq!(raw(&server, b"", Finish::Shutdown), "");
    let mut client = server.hello();
    assert_eq!(client.call(req::ping()), Message::Pong);
}

#[test]
fn silent_operator_connections_do_not_stop_the_server_nor_the_next_operator() {
    let server = TestServer::start();
    let socket = format!("{}.ctl", server.db_path().display());
    // Eight fill the operator table; the ninth waits in the listen backlog.
    let _silent: Vec<_> = (0..9).map(|_| std::os::unix::net::UnixStream::connect(&socket).expect("connect")).collect();
    let mut client = server.hello();
    assert_eq!(client.call(req::ping()), Message::Pong);
    // The command waits behind them until they time out (5 s), then is served: the places
    // they held are handed to the backlog, though the listener says nothing new.
    let started = std::time::Instant::now();
    let (code, text) = ctl(&server, &["help"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.starts_with("commands:\n"), "{text}");
    assert!(started.elapsed() < std::time::Duration::from_secs(15), "{:?}", started.elapsed());
}

#[test]
fn ctl_refuses_a_socket_others_may_use() {
    let server = TestServer::start();
    let socket = format!("{}.ctl", server.db_path().display());
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (code, text) = ctl(&server, &["stats"]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("refusing") && text.contains("mode 666"), "{text}");
    // Not a socket at all: a plain file in its place.
    std::fs::remove_file(&socket).unwrap();
    std::fs::write(&socket, "").unwrap();
    let (code, text) = ctl(&server, &["stats"]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("not a socket"), "{text}");
}

/// Finishes a login whose `LOGIN_START` was answered before `between` ran, with the right
/// password; returns the answer.
fn login_across(server: &TestServer, name: &str, between: impl FnOnce()) -> Message {
    let mut client = server.hello();
    let client_nonce = [7u8; 16];
    let Message::LoginChallenge { salt, iterations, nonce } = client.call(req::login_start(name, &client_nonce)) else {
        panic!("no challenge");
    };
    between();
    let keys = scram::Keys::derive(&password_of(name), &salt, iterations);
    let proof = scram::client_proof(&keys, &scram::auth_message(name, &client_nonce, &salt, iterations, &nonce));
    client.call(req::login_finish(&proof))
}

#[test]
fn a_change_between_login_start_and_finish_is_not_missed() {
    let server = TestServer::start();
    server.register_all(&["alice", "bob", "carol"]);
    let refused = login_across(&server, "alice", || assert_eq!(ctl(&server, &["disable", "alice"]).0, 0));
    assert_eq!(refused.error_code(), Some(code::ACCOUNT_DISABLED), "{refused:?}");
    let refused = login_across(&server, "bob", || assert_eq!(ctl(&server, &["delete", "bob"]).0, 0));
    assert_eq!(refused.error_code(), Some(code::AUTH_FAILED), "{refused:?}");
    // Not the operator's, but the same gap: the password changed on another connection.
    let refused = login_across(&server, "carol", || {
        let (mut carol, _) = server.login("carol");
        let proof = carol.fresh_proof(&password_of("carol"));
        let keys = scram::Keys::derive("a new password", &[9; 16], ITERATIONS);
        let change = req::password_change(&proof, &[9; 16], ITERATIONS, &keys.stored_key, &keys.server_key);
        assert_eq!(carol.call(change), Message::Ok);
    });
    assert_eq!(refused.error_code(), Some(code::AUTH_FAILED), "{refused:?}");
    // None got a session: bob is gone, alice is listed disabled with no device.
    let (_, users) = ctl(&server, &["users"]);
    let lines: Vec<&str> = users.lines().collect();
    assert_eq!(lines.len(), 3, "{users}");
    assert!(lines[1].starts_with("alice\t") && lines[1].ends_with("\t0\tno\tyes"), "{users}");
}

#[test]
fn ctl_says_why_it_cannot_reach_a_server() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("nothing-here.db");
    let output =
        Command::new(env!("CARGO_BIN_EXE_im-server")).arg("--db").arg(&db).args(["ctl", "stats"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&format!("is the server running with --db {}?", db.display())), "{stderr}");

    let server = TestServer::start();
    let (code, text) = ctl(&server, &["users", "a\nstats"]);
    assert_eq!((code, text.as_str()), (2, "im-server ctl: an argument holds a line break\n"));
}

#[test]
fn a_stale_socket_is_replaced_at_start_and_the_socket_removed_at_a_clean_stop() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("im.db.ctl");
    // What a crashed server leaves: a socket file nobody listens on (here open to all).
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let server = TestServer::start_in(dir, &[]);
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
    let (code, text) = ctl(&server, &["stats"]);
    assert_eq!(code, 0, "{text}");
    let (status, _dir) = server.terminate();
    assert!(status.success(), "{status}");
    assert!(!socket.exists(), "the socket is removed at a clean stop");
}

#[test]
fn a_second_server_of_the_database_is_refused_and_the_first_goes_on() {
    let server = TestServer::start();
    let mut alice = server.user("alice");
    // It would hand out the first one's message ids again: it must not start at all.
    let mut second = Command::new(env!("CARGO_BIN_EXE_im-server"))
        .arg("--db")
        .arg(server.db_path())
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // It exits at once; one that serves instead is stopped, and the test fails below.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while second.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = second.kill();
    let second = second.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{log}");
    assert!(String::from_utf8_lossy(&second.stdout).is_empty(), "it never listened");
    assert!(log.contains(&format!("another im-server (pid {}) is using this database", server.pid())), "{log}");
    // The first server still serves, and its socket still leads to it.
    assert_eq!(alice.call(req::ping()), Message::Pong);
    let (code, text) = ctl(&server, &["stats"]);
    assert!(code == 0 && text.contains("online users         1\n"), "{text}");
}
