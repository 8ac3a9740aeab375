//! The store against a model: messages in many conversations, committed in batches, with
//! posting-list blocks written every few dozen ids, so every read path crosses stored blocks
//! and the in-memory tail (in production blocks are written only every 65,536 messages).

use super::*;
use std::collections::BTreeMap;

/// A small deterministic generator (xorshift), so a failure repeats.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Each channel's ids, with whether the row is a chat text.
type Model = BTreeMap<i64, Vec<(MessageId, bool)>>;

/// A store in a temporary directory with two users, and the model of what it holds: the ids
/// of each channel and each id's kind.
fn filled(flush_at: usize, messages: usize, seed: u64) -> (tempfile::TempDir, Store, Model) {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("t.db")).unwrap();
    store.set_posting_flush_at(flush_at);
    for name in ["a", "b"] {
        store.create_user(&new_user(name)).unwrap().unwrap();
    }
    assert!(store.finish_iteration());
    let channels = [Channel::direct(1, 2), Channel::group(1), Channel::group(7), Channel::events_of(1)];
    let mut model = Model::new();
    let mut rng = Rng(seed);
    for n in 0..messages {
        let channel = channels[rng.below(channels.len() as u64) as usize];
        // Some group rows are events: stored in the conversation, never in history.
        let text = channel == Channel::direct(1, 2) || rng.below(4) > 0;
        let kind = if text { MessageKind::Text } else { MessageKind::GroupJoined };
        let body = format!("m{n}");
        let m = NewMessage {
            channel,
            sender: 1,
            client_msg_id: n as u64,
            kind,
            sent_at: n as i64,
            body: body.as_bytes(),
            device: 0,
        };
        let id = store.insert_message(&m).unwrap();
        model.entry(channel.0).or_default().push((id, text));
        if rng.below(10) == 0 {
            assert!(store.finish_iteration());
        }
    }
    assert!(store.finish_iteration());
    (dir, store, model)
}

#[test]
fn reads_cross_stored_blocks_and_the_tail_exactly() {
    let (_dir, mut store, model) = filled(37, 1500, 0x9E37_79B9);
    assert!(store.tail.indexed_up_to > 1000, "blocks were written: {}", store.tail.indexed_up_to);
    store.begin_batch();
    let mut rng = Rng(12345);
    for (&channel, rows) in &model {
        let channel = Channel(channel);
        let ids: Vec<MessageId> = rows.iter().map(|r| r.0).collect();
        for _ in 0..200 {
            let after = rng.below(1600) as i64;
            let up_to = after + rng.below(1600) as i64;
            let limit = 1 + rng.below(300) as usize;
            let expected: Vec<MessageId> =
                ids.iter().copied().filter(|&id| id > after && id <= up_to).take(limit).collect();
            assert_eq!(store.ids_after(channel, after, up_to, limit).unwrap(), expected, "after {after} up to {up_to}");
            let count = ids.iter().filter(|&&id| id > after && id <= up_to).count();
            assert_eq!(store.count_between(channel, after, up_to).unwrap(), count);
            let before = 1 + rng.below(1600) as i64;
            let expected: Vec<MessageId> = ids.iter().rev().copied().filter(|&id| id < before).take(limit).collect();
            let got = posting::ids_before(&store.db, &store.tail, channel, before, limit).unwrap();
            assert_eq!(got, expected, "before {before}");
        }
        assert_eq!(store.newest_in(channel).unwrap(), *ids.last().unwrap());
    }
}

#[test]
fn history_pages_skip_events_and_meet_exactly_in_both_directions() {
    let (_dir, mut store, model) = filled(29, 1200, 42);
    store.begin_batch();
    for (&channel, rows) in &model {
        let texts: Vec<MessageId> = rows.iter().filter(|r| r.1).map(|r| r.0).collect();
        for limit in [1, 7, 200] {
            let mut older = Vec::new();
            let mut anchor = 0;
            loop {
                let page = store.history(Channel(channel), HistoryDirection::Older, anchor, limit, usize::MAX).unwrap();
                assert!(page.rows.len() <= limit);
                older.extend(page.rows.iter().map(|r| r.id));
                if !page.more {
                    break;
                }
                anchor = page.rows.last().unwrap().id;
            }
            older.reverse();
            assert_eq!(older, texts, "older pages of {limit}");
            let mut newer = Vec::new();
            let mut anchor = 0;
            loop {
                let page = store.history(Channel(channel), HistoryDirection::Newer, anchor, limit, usize::MAX).unwrap();
                newer.extend(page.rows.iter().map(|r| r.id));
                if !page.more {
                    break;
                }
                anchor = page.rows.last().unwrap().id;
            }
            assert_eq!(newer, texts, "newer pages of {limit}");
        }
    }
}

#[test]
fn a_history_page_stops_before_its_byte_bound_but_holds_one_message() {
    let (_dir, mut store, model) = filled(1000, 300, 7);
    store.begin_batch();
    let channel = Channel::direct(1, 2);
    let texts = model[&channel.0].len();
    let page = store.history(channel, HistoryDirection::Older, 0, 200, 1).unwrap();
    assert_eq!(page.rows.len(), 1);
    assert_eq!(page.more, texts > 1);
    let page = store.history(channel, HistoryDirection::Older, 0, 200, 10).unwrap();
    assert!(page.rows.iter().map(|r| r.body.len()).sum::<usize>() <= 10);
}

#[test]
fn a_rolled_back_batch_leaves_no_ids_in_the_tail_or_blocks() {
    let (_dir, mut store, model) = filled(50, 120, 3);
    let channel = Channel::direct(1, 2);
    let before: Vec<MessageId> = model[&channel.0].iter().map(|r| r.0).collect();
    let doomed =
        NewMessage { channel, sender: 1, client_msg_id: 9, kind: MessageKind::Text, sent_at: 0, body: b"x", device: 0 };
    for _ in 0..60 {
        store.insert_message(&doomed).unwrap();
    }
    // A failed write marks the transaction: the commit rolls back, blocks included.
    assert!(store.write(|db| db.execute_batch("INSERT INTO no_such_table VALUES (1)")).is_err());
    assert!(!store.finish_iteration());
    store.begin_batch();
    assert_eq!(store.ids_after(channel, 0, MessageId::MAX, 10_000).unwrap(), before);
}

/// `ctl stats` counts what commits stored, messages apart, and measures only the commits that
/// wrote: neither a read-only batch nor a rolled-back one.
#[test]
fn stats_count_the_committed_writes_only() {
    let (_dir, store, model) = filled(50, 120, 5);
    let texts = model.values().flatten().filter(|(_, text)| *text).count() as u64;
    assert_eq!((store.stats.items_stored, store.stats.messages_stored), (120, texts));
    assert!(texts < 120, "the model holds events too");

    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("t.db")).unwrap();
    store.begin_batch();
    assert_eq!(store.find_user_id("nobody").unwrap(), None);
    assert!(store.finish_iteration());
    assert_eq!(store.stats.commit_quantile(0.5), None, "a read-only batch is not measured");
    let user = NewUser {
        name: "a",
        name_key: "a",
        salt: &[0; 16],
        iterations: 1,
        stored_key: &[0; 32],
        server_key: &[0; 32],
        now_ms: 0,
    };
    store.create_user(&user).unwrap().unwrap();
    assert!(store.finish_iteration());
    assert!(store.stats.commit_quantile(0.5).is_some(), "a commit that wrote is measured");
    let m = NewMessage {
        channel: Channel::group(1),
        sender: 1,
        client_msg_id: 1,
        kind: MessageKind::Text,
        sent_at: 0,
        body: b"x",
        device: 0,
    };
    store.insert_message(&m).unwrap();
    assert!(store.write(|db| db.execute_batch("INSERT INTO no_such_table VALUES (1)")).is_err());
    assert!(!store.finish_iteration());
    assert_eq!((store.stats.items_stored, store.stats.messages_stored), (0, 0), "rolled back");
    store.insert_message(&m).unwrap();
    assert!(store.finish_iteration());
    assert_eq!((store.stats.items_stored, store.stats.messages_stored), (1, 1));
}

/// Background checkpoints keep the WAL bounded under sustained writes (80 MB written in
/// commits of 1 MB with no pause), and the database stays intact.
#[test]
fn the_wal_stays_bounded_under_sustained_writes() {
    let (dir, mut store, _) = filled(1_000_000, 10, 1);
    let body = vec![b'w'; 4000];
    let wal = dir.path().join("t.db-wal");
    let mut largest = 0;
    for batch in 0..80 {
        for n in 0..256 {
            let m = NewMessage {
                channel: Channel::group(1),
                sender: 1,
                client_msg_id: batch * 256 + n,
                kind: MessageKind::Text,
                sent_at: 0,
                body: &body,
                device: 0,
            };
            store.insert_message(&m).unwrap();
        }
        assert!(store.finish_iteration());
        largest = largest.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
    }
    assert!(largest < 48 << 20, "the WAL grew to {largest} bytes");
    store.begin_batch();
    let check: String = store.db.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(check, "ok");
    assert!(store.finish_iteration());
}

/// A user for the tests that need one row to write.
fn new_user(name: &str) -> NewUser<'_> {
    NewUser {
        name,
        name_key: name,
        salt: &[0; 16],
        iterations: 1,
        stored_key: &[0; 32],
        server_key: &[0; 32],
        now_ms: 0,
    }
}

/// A failed write marks the transaction until the iteration ends, and its error names the
/// database, as the log shows it.
#[test]
fn a_failed_write_marks_the_transaction_until_it_is_rolled_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("t.db")).unwrap();
    store.create_user(&new_user("a")).unwrap().unwrap();
    assert!(!store.has_failed());
    let error = store.write(|db| db.execute_batch("INSERT INTO no_such_table VALUES (1)")).unwrap_err();
    assert!(error.to_string().starts_with("database error: no such table: no_such_table"), "{error}");
    assert!(store.has_failed());
    assert!(!store.finish_iteration());
    assert!(!store.has_failed());
    assert_eq!(store.find_user_id("a").unwrap(), None);
}

/// A file written by a newer im-server is refused, and the message names both versions.
#[test]
fn a_newer_schema_is_refused_with_both_versions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    Connection::open(&path)
        .unwrap()
        .execute_batch(&format!("PRAGMA user_version = {}", schema::SCHEMA_VERSION + 1))
        .unwrap();
    let Err(error) = Store::open(&path) else { panic!("a newer schema was opened") };
    assert!(
        matches!(error, OpenError::NewerSchema { found, supported: schema::SCHEMA_VERSION } if found == schema::SCHEMA_VERSION + 1),
        "{error:?}"
    );
    let expected = format!(
        "the database has schema version {}, newer than the {} this im-server supports; use a newer im-server",
        schema::SCHEMA_VERSION + 1,
        schema::SCHEMA_VERSION
    );
    assert_eq!(error.to_string(), expected);
}

/// The checkpointer starts with the first commit that wrote, however many writes the batch
/// held and whether its transaction was opened for reading or by its first write, and not for
/// a batch that only read.
#[test]
fn the_first_batch_that_writes_starts_the_checkpointer() {
    for (writes, read_first) in [(1, false), (2, false), (3, false), (1, true), (2, true)] {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("t.db")).unwrap();
        store.begin_batch();
        assert_eq!(store.find_user_id("u0").unwrap(), None);
        assert!(store.finish_iteration());
        assert!(store.checkpointer.is_none(), "a read-only batch started the checkpointer");
        if read_first {
            store.begin_batch();
        }
        for n in 0..writes {
            let name = format!("u{n}");
            store.create_user(&new_user(&name)).unwrap().unwrap();
        }
        assert!(store.finish_iteration());
        assert!(store.checkpointer.is_some(), "a batch of {writes} writes did not start the checkpointer");
    }
}

/// `ctl stats` counts what each commit stored: every message of a committed batch, none of a
/// rolled-back one, and nothing for a batch that only read.
#[test]
fn the_stats_count_the_messages_each_commit_stored() {
    let (_dir, mut store, _) = filled(1000, 0, 1);
    let message = |n: u64| NewMessage {
        channel: Channel::direct(1, 2),
        sender: 1,
        client_msg_id: n,
        kind: MessageKind::Text,
        sent_at: 0,
        body: b"x",
        device: 0,
    };
    for (batch, size) in [3, 1, 4].into_iter().enumerate() {
        for n in 0..size {
            store.insert_message(&message(batch as u64 * 10 + n)).unwrap();
        }
        assert!(store.finish_iteration());
    }
    assert_eq!(store.stats.items_stored, 8);
    store.insert_message(&message(99)).unwrap();
    assert!(store.write(|db| db.execute_batch("INSERT INTO no_such_table VALUES (1)")).is_err());
    assert!(!store.finish_iteration());
    store.begin_batch();
    assert!(store.finish_iteration());
    store.insert_message(&message(100)).unwrap();
    assert!(store.finish_iteration());
    assert_eq!(store.stats.items_stored, 9);
}

/// A text from `sender` in a direct conversation; returns its id.
fn send(store: &mut Store, sender: UserId, to: UserId, body: &str) -> MessageId {
    let m = NewMessage {
        channel: Channel::direct(sender, to),
        sender,
        client_msg_id: 0,
        kind: MessageKind::Text,
        sent_at: 0,
        body: body.as_bytes(),
        device: 0,
    };
    store.insert_message(&m).unwrap()
}

/// The offline queue as SEND reads it after a restart: the peers' messages above the user's
/// most advanced device position, never the user's own, and per conversation at most one more
/// than the cap (enough to tell "full").
#[test]
fn undelivered_direct_counts_the_peers_messages_above_the_best_position() {
    let (_dir, mut store, _) = filled(1000, 0, 1);
    let carol = store.create_user(&new_user("c")).unwrap().unwrap();
    store.make_friends(1, 2, 0).unwrap();
    store.make_friends(carol, 2, 0).unwrap();
    let from_a: Vec<MessageId> = (0..3).map(|n| send(&mut store, 1, 2, &format!("a{n}"))).collect();
    for n in 0..2 {
        send(&mut store, 2, 1, &format!("b{n}"));
    }
    let from_c: Vec<MessageId> = (0..4).map(|n| send(&mut store, carol, 2, &format!("c{n}"))).collect();
    assert!(store.finish_iteration());

    let all: Vec<MessageId> = from_a.iter().chain(&from_c).copied().collect();
    assert_eq!(store.undelivered_direct(2, 10).unwrap(), all);
    let capped: Vec<MessageId> = from_a.iter().chain(&from_c[..3]).copied().collect();
    assert_eq!(store.undelivered_direct(2, 2).unwrap(), capped);

    let phone = store.login_device(2, 7, "phone", 10, 0, 0).unwrap().unwrap();
    store.acknowledge(phone.id, from_a[1], 0).unwrap();
    assert!(store.finish_iteration());
    let above: Vec<MessageId> = all.iter().copied().filter(|&id| id > from_a[1]).collect();
    assert_eq!(store.undelivered_direct(2, 10).unwrap(), above);
}

/// A reopened store goes on from the highest id it holds, and its posting lists cover the
/// messages both in stored blocks and in the tail it rebuilds.
#[test]
fn a_reopened_store_continues_its_ids_and_rebuilds_its_tail() {
    let (dir, mut store, model) = filled(40, 100, 5);
    let channel = Channel::direct(1, 2);
    let mut expected: Vec<MessageId> = model[&channel.0].iter().map(|r| r.0).collect();
    // Commit until the tail holds ids that no block does.
    while store.tail.len() == 0 {
        expected.push(send(&mut store, 1, 2, "in the tail"));
        assert!(store.finish_iteration());
    }
    let highest = store.last_message_id();
    store.close().unwrap();
    let mut store = Store::open(&dir.path().join("t.db")).unwrap();
    assert_eq!(store.last_message_id(), highest);
    assert!(store.tail.indexed_up_to > 0 && store.tail.indexed_up_to < highest, "{}", store.tail.indexed_up_to);
    let id = send(&mut store, 1, 2, "after the restart");
    assert_eq!(id, highest + 1);
    assert!(store.finish_iteration());
    expected.push(id);
    store.begin_batch();
    assert_eq!(store.ids_after(channel, 0, MessageId::MAX, 10_000).unwrap(), expected);
}

/// A page holds messages while their bodies fit the byte bound exactly, and stops at the
/// first that would pass it.
#[test]
fn a_history_page_fills_its_byte_bound_exactly() {
    let (_dir, mut store, _) = filled(1000, 0, 1);
    let ids: Vec<MessageId> = ["one..", "two..", "three"].iter().map(|body| send(&mut store, 1, 2, body)).collect();
    assert!(store.finish_iteration());
    store.begin_batch();
    let channel = Channel::direct(1, 2);
    for (max_bytes, expected) in [(10, &ids[..2]), (14, &ids[..2]), (15, &ids[..])] {
        let page = store.history(channel, HistoryDirection::Newer, 0, 200, max_bytes).unwrap();
        let got: Vec<MessageId> = page.rows.iter().map(|r| r.id).collect();
        assert_eq!(got, expected, "a bound of {max_bytes} bytes");
        assert_eq!(page.more, expected.len() < ids.len());
    }
}

/// Reads whose limit ends past a stored block, in the tail: a block of four ids, then three
/// in the tail.
#[test]
fn a_limit_counts_the_ids_of_a_block_and_the_tail_together() {
    let (_dir, mut store, _) = filled(4, 0, 1);
    let stored: Vec<MessageId> = (0..4).map(|n| send(&mut store, 1, 2, &format!("s{n}"))).collect();
    assert!(store.finish_iteration());
    let tail: Vec<MessageId> = (0..3).map(|n| send(&mut store, 1, 2, &format!("t{n}"))).collect();
    assert!(store.finish_iteration());
    assert_eq!(store.tail.indexed_up_to, stored[3]);
    store.begin_batch();
    let channel = Channel::direct(1, 2);
    let all: Vec<MessageId> = stored.iter().chain(&tail).copied().collect();
    for limit in 1..=8 {
        let expected: Vec<MessageId> = all.iter().copied().take(limit).collect();
        assert_eq!(store.ids_after(channel, 0, MessageId::MAX, limit).unwrap(), expected, "limit {limit}");
        let expected: Vec<MessageId> = all.iter().rev().copied().take(limit).collect();
        let got = posting::ids_before(&store.db, &store.tail, channel, MessageId::MAX, limit).unwrap();
        assert_eq!(got, expected, "limit {limit}");
    }
}

/// At start, devices not seen since the cut-off are forgotten and counted; a second pass
/// finds none.
#[test]
fn expire_devices_forgets_exactly_the_devices_not_seen_since_the_cut_off() {
    let (_dir, mut store, _) = filled(1000, 0, 1);
    let old = store.login_device(1, 1, "old", 10, 0, 100).unwrap().unwrap();
    let recent = store.login_device(1, 2, "recent", 10, 0, 5000).unwrap().unwrap();
    store.login_device(2, 1, "other old", 10, 0, 999).unwrap().unwrap();
    assert!(store.finish_iteration());
    assert_eq!(store.expire_devices(1000).unwrap(), 2);
    assert!(store.finish_iteration());
    assert_eq!(store.devices_of(1).unwrap(), vec![recent]);
    assert_eq!(store.devices_of(2).unwrap(), vec![]);
    assert_eq!(store.find_device(1, old.client_id).unwrap(), None);
    assert_eq!(store.expire_devices(1000).unwrap(), 0);
}

/// Each new database gets its own random secret (it derives the fake salts of unknown names,
/// so a shared one would let anyone tell unknown names from real ones offline).
#[test]
fn every_new_database_gets_its_own_secret() {
    let dir = tempfile::tempdir().unwrap();
    let secrets: Vec<Vec<u8>> = ["1.db", "2.db"]
        .iter()
        .map(|name| Store::open(&dir.path().join(name)).unwrap().server_secret().unwrap())
        .collect();
    assert_eq!(secrets[0].len(), 32);
    assert_ne!(secrets[0], secrets[1]);
    assert!(secrets.iter().all(|s| s.iter().any(|&b| b != s[0])), "a secret of one repeated byte");
}

/// A backup never overwrites a file, and says so.
#[test]
fn a_backup_refuses_an_existing_target() {
    let (dir, store, _) = filled(1000, 3, 1);
    let target = dir.path().join("copy.db");
    std::fs::write(&target, b"keep me").unwrap();
    let error = backup(&dir.path().join("t.db"), &target).unwrap_err();
    assert_eq!(error.to_string(), "the target file exists; choose a new name");
    assert_eq!(std::fs::read(&target).unwrap(), b"keep me");
    store.close().unwrap();
}

/// Closing the store first ends the checkpointer's thread and its connection, so the loop's
/// connection is the last: SQLite checkpoints the WAL into the database and removes it.
#[test]
fn closing_the_store_ends_the_checkpointer_and_removes_the_wal() {
    let (dir, mut store, _) = filled(1000, 20, 1);
    assert!(store.checkpointer.is_some());
    send(&mut store, 1, 2, "last");
    assert!(store.finish_iteration());
    let wal = dir.path().join("t.db-wal");
    assert!(wal.exists());
    store.close().unwrap();
    assert!(!wal.exists(), "the WAL outlived the store");
}

/// A new account's first device starts at the newest id when the account was made; a later
/// device starts at the lowest position of the others.
#[test]
fn a_first_device_starts_where_its_account_did() {
    let (_dir, mut store, _) = filled(1000, 10, 1);
    let start = store.last_message_id();
    let carol = store.create_user(&new_user("c")).unwrap().unwrap();
    send(&mut store, 1, 2, "after carol registered");
    assert!(store.finish_iteration());
    assert_eq!(store.account_start(carol).unwrap(), start);
    let phone = store.login_device(carol, 1, "phone", 10, 0, 0).unwrap().unwrap();
    assert_eq!(phone.delivered_up_to, start);
    store.acknowledge(phone.id, start + 1, 0).unwrap();
    let laptop = store.login_device(carol, 2, "laptop", 10, 0, 0).unwrap().unwrap();
    assert_eq!(laptop.delivered_up_to, start + 1);
}

/// Ending a friendship is stored for both sides, and making friends again restores it.
#[test]
fn an_ended_friendship_is_stored_for_both() {
    let (_dir, mut store, _) = filled(1000, 0, 1);
    store.make_friends(1, 2, 0).unwrap();
    assert!(store.finish_iteration());
    assert_eq!((store.friend_count(1).unwrap(), store.friend_count(2).unwrap()), (1, 1));
    store.end_friendship(2, 1).unwrap();
    assert!(store.finish_iteration());
    assert_eq!(store.contact_state(1, 2).unwrap(), Some(ContactState::Former));
    assert_eq!(store.contact_state(2, 1).unwrap(), Some(ContactState::Former));
    assert_eq!((store.friend_count(1).unwrap(), store.friend_count(2).unwrap()), (0, 0));
    store.make_friends(2, 1, 5).unwrap();
    assert_eq!(store.contact_state(1, 2).unwrap(), Some(ContactState::Friends));
}

/// A group's name and counts as the limits and a login read them: members of the group, and
/// groups of a user with the lobby included.
#[test]
fn group_names_and_counts_are_read_back_exactly() {
    let (_dir, mut store, _) = filled(1000, 0, 1);
    let group = store.create_group("rustaceans", 1, 0).unwrap();
    store.add_member(group, 2, 0).unwrap();
    let carol = store.create_user(&new_user("c")).unwrap().unwrap();
    store.add_member(group, carol, 0).unwrap();
    assert!(store.finish_iteration());
    assert_eq!(store.group_name(group).unwrap().as_deref(), Some("rustaceans"));
    assert_eq!(store.group_name(group + 1).unwrap(), None);
    assert_eq!(store.member_count(group).unwrap(), 3);
    store.remove_member(group, carol).unwrap();
    assert_eq!(store.member_count(group).unwrap(), 2);
    assert_eq!((store.group_count(1).unwrap(), store.group_count(carol).unwrap()), (2, 1));
}

/// `ctl users`: a case-insensitive substring in which `_` and `%` are letters, not wildcards;
/// deleted accounts left out; the count of all matches beside the capped list.
#[test]
fn users_are_listed_by_a_literal_substring_ignoring_case() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("t.db")).unwrap();
    let mut ids = Vec::new();
    for (name, key) in [("Alice", "alice"), ("al_x", "al_x"), ("alxx", "alxx"), ("bob", "bob"), ("Al", "al")] {
        ids.push(store.create_user(&NewUser { name, name_key: key, ..new_user(name) }).unwrap().unwrap());
    }
    store.set_disabled(ids[0], true, 5).unwrap();
    store.delete_account(ids[4], 5).unwrap();
    assert!(store.finish_iteration());
    let names = |pattern: &str, limit: usize| {
        let (users, total) = store.list_users(pattern, limit).unwrap();
        (users.iter().map(|u| (u.name.clone(), u.disabled)).collect::<Vec<_>>(), total)
    };
    let all = vec![("al_x".to_string(), false), ("Alice".to_string(), true), ("alxx".to_string(), false)];
    assert_eq!(names("AL", 10), (all.clone(), 3));
    assert_eq!(names("AL", 2), (all[..2].to_vec(), 3));
    assert_eq!(names("l_", 10), (vec![all[0].clone()], 1));
    assert_eq!(names("%", 10), (vec![], 0));
    assert_eq!(names("", 10).1, 4);
}

/// Message rows are inserted 32 at a time (`pending.rs`), but every read of the open
/// transaction sees each message stored before it: backlog rows, history pages and the
/// offline queue, at any count of rows waiting (none, a partial set, a full set and more).
#[test]
fn messages_not_yet_inserted_are_read_back_in_their_own_transaction() {
    let (_dir, mut store, _) = filled(1000, 0, 1);
    store.make_friends(1, 2, 0).unwrap();
    assert!(store.finish_iteration());
    let channel = Channel::direct(1, 2);
    let mut sent = Vec::new();
    for n in 0..75 {
        sent.push(send(&mut store, 1, 2, &format!("m{n}")));
        if [1, 31, 32, 33, 64, 74].contains(&n) {
            let rows = store.rows_with_ids(&sent).unwrap();
            assert_eq!(rows.iter().map(|r| r.id).collect::<Vec<_>>(), sent, "rows after {} sends", n + 1);
            assert_eq!(rows.last().unwrap().body, format!("m{n}").as_bytes());
            assert_eq!(store.undelivered_direct(2, 1000).unwrap(), sent, "offline queue after {} sends", n + 1);
            let page = store.history(channel, HistoryDirection::Older, 0, 200, usize::MAX).unwrap();
            assert_eq!(page.rows.len(), n + 1);
            assert_eq!(page.rows[0].body, format!("m{n}").as_bytes());
        }
    }
    assert!(store.finish_iteration());
    let page = store.history(channel, HistoryDirection::Newer, 0, 200, usize::MAX).unwrap();
    let stored: Vec<(MessageId, Vec<u8>)> = page.rows.into_iter().map(|r| (r.id, r.body)).collect();
    let expected: Vec<(MessageId, Vec<u8>)> =
        sent.iter().enumerate().map(|(n, &id)| (id, format!("m{n}").into_bytes())).collect();
    assert_eq!(stored, expected);
}

/// A row that fails when it is finally inserted (here at the commit) fails its batch like
/// any write: nothing of the batch is stored, and the next batch is stored normally.
#[test]
fn a_message_row_that_fails_at_the_commit_rolls_back_its_batch() {
    let (_dir, mut store, _) = filled(1000, 0, 1);
    store.make_friends(1, 2, 0).unwrap();
    assert!(store.finish_iteration());
    store
        .write(|db| {
            db.execute_batch(
                "CREATE TRIGGER refuse AFTER INSERT ON messages WHEN CAST(NEW.body AS TEXT) = 'refused'
                 BEGIN SELECT RAISE(ABORT, 'refused'); END;",
            )
        })
        .unwrap();
    assert!(store.finish_iteration());
    let channel = Channel::direct(1, 2);
    send(&mut store, 1, 2, "kept back");
    send(&mut store, 1, 2, "refused");
    assert!(!store.has_failed(), "the rows wait to be inserted");
    assert!(!store.finish_iteration());
    store.begin_batch();
    assert_eq!(store.ids_after(channel, 0, MessageId::MAX, 100).unwrap(), vec![]);
    let later = send(&mut store, 1, 2, "later");
    assert!(store.finish_iteration());
    let page = store.history(channel, HistoryDirection::Older, 0, 200, usize::MAX).unwrap();
    assert_eq!(page.rows.iter().map(|r| (r.id, r.body.as_slice())).collect::<Vec<_>>(), vec![(later, &b"later"[..])]);
}

/// The rows reach SQLite 32 at a time as they are stored, not all at the commit: a batch of
/// thousands of messages holds at most one set in memory.
#[test]
fn message_rows_reach_the_table_a_full_set_at_a_time() {
    let (_dir, mut store, _) = filled(1000, 0, 1);
    store.make_friends(1, 2, 0).unwrap();
    assert!(store.finish_iteration());
    let in_table =
        |store: &Store| -> i64 { store.db.query_row("SELECT count(*) FROM messages", [], |r| r.get(0)).unwrap() };
    for n in 1..=64 {
        send(&mut store, 1, 2, "x");
        assert_eq!(
            in_table(&store),
            if n < 32 {
                0
            } else if n < 64 {
                32
            } else {
                64
            },
            "after {n} sends"
        );
    }
    send(&mut store, 1, 2, "x");
    assert!(store.finish_iteration());
    assert_eq!(in_table(&store), 65);
}
