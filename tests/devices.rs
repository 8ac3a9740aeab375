//! Devices and per-device delivery (PROTOCOL.md §6, "Devices and delivery"): every device of
//! a user gets every item exactly once, in strictly increasing id order per connection, and
//! an `ACK` moves only its own device's position.

mod support;

use std::collections::BTreeSet;
use support::*;

const PHONE: u64 = 1;
const LAPTOP: u64 = 2;
const TABLET: u64 = 3;

/// Reads pushes until `SYNC_DONE`, then `extra` more items; returns the item ids in arrival
/// order, checking that they strictly increase.
fn item_ids(pushes: &[Message]) -> Vec<u64> {
    let ids: Vec<u64> = pushes.iter().filter_map(Message::item_id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids out of order: {ids:?}");
    ids
}

/// Compares two long id lists, describing the first difference instead of printing both.
fn assert_same_ids(got: &[u64], expected: &[u64], what: &str) {
    if got != expected {
        let at = got.iter().zip(expected).position(|(a, b)| a != b).unwrap_or(got.len().min(expected.len()));
        panic!(
            "{what}: {} ids, expected {}; first difference at {at}: got {:?}, expected {:?}",
            got.len(),
            expected.len(),
            &got[at.saturating_sub(2)..(at + 3).min(got.len())],
            &expected[at.saturating_sub(2)..(at + 3).min(expected.len())]
        );
    }
}

/// The reported race: a user's own message sent from device 1 while device 2 is still
/// receiving its offline backlog must not overtake that backlog, and acknowledging the highest
/// id device 2 has processed must not lose anything.
#[test]
fn an_own_message_from_another_device_never_overtakes_a_backlog() {
    const BACKLOG: u64 = 3000;
    let server = TestServer::start();
    let (mut friend, u) = {
        server.register_all(&["friend", "u"]);
        let mut friend = server.device("friend");
        let mut u = server.device("u");
        make_friends(&mut friend, &mut u);
        (friend, u)
    };
    drop(u);
    assert_eq!(friend.push(), presence_of("u", false));
    // 3000 × 4 KB: more than the kernel's socket buffers hold, so device 2 is still
    // receiving its backlog when device 1's message is stored.
    let filler = "x".repeat(4000);
    let sends: Vec<Request> = (0..BACKLOG).map(|n| req::send("u", n + 1, &format!("queued {n:04} {filler}"))).collect();
    let queued: Vec<u64> = friend.pipeline(&sends).iter().map(|r| r.sent().0).collect();

    // Device 2 logs in and reads 50 items only.
    let mut device2 = server.hello();
    device2.login_as("u", LAPTOP);
    let mut received: Vec<Message> = (0..50).map(|_| device2.push()).collect();

    // Device 1 logs in and sends in the same write as its LOGIN_FINISH.
    let mut device1 = server.hello();
    let finish = device1.prepare_login("u", PHONE);
    let finish_id = device1.next_id();
    let send_id = device1.next_id();
    let mut bytes = frame(finish.opcode, finish_id, &finish.body);
    let own = req::send("friend", 99, "sent from my phone");
    bytes.extend(frame(own.opcode, send_id, &own.body));
    device1.write_raw(&bytes);
    assert!(matches!(device1.response(finish_id), Message::LoginOk { .. }));
    let (own_id, _) = device1.response(send_id).sent();

    // Device 2 acknowledges the id of device 1's message early, as a careless client would:
    // it was not sent that item yet, so the acknowledgement covers only what it was sent.
    assert_eq!(device2.call(req::ack(own_id)), Message::Ok);
    loop {
        match device2.push() {
            Message::SyncDone { .. } => break,
            message => received.push(message),
        }
    }
    // Device 1's message is part of device 2's backlog, after every older item.
    let ids = item_ids(&received);
    let mut expected = queued.clone();
    expected.push(own_id);
    assert_same_ids(&ids, &expected, "device 2 gets the backlog, then its own message from device 1");
    device2.assert_quiet();
    let own_copy = received.last().unwrap().deliver();
    assert_eq!((own_copy.from.as_str(), &own_copy.to), ("u", &Target::direct("friend")));

    // Acknowledging the highest id processed is correct: nothing is pushed again.
    device2.ack(own_id);
    drop(device2);
    let (_, again) = server.login_device("u", LAPTOP);
    assert_eq!(again, vec![], "device 2 acknowledged everything");
    // Device 1 never acknowledged: it gets the whole backlog, without its own message.
    let mut device1_items = Vec::new();
    loop {
        match device1.push() {
            Message::SyncDone { .. } => break,
            message => device1_items.push(message),
        }
    }
    assert_same_ids(&item_ids(&device1_items), &queued, "device 1 gets the backlog but not what it sent");
}

/// Three devices of one user, each offline at different times while messages, friend
/// events, a group invitation and read receipts happen: each ends with every item exactly
/// once, in id order.
#[test]
fn three_devices_each_get_every_item_exactly_once() {
    let server = TestServer::start();
    server.register_all(&["alice", "bob", "carol"]);
    let mut bob = server.device("bob");
    let mut carol = server.device("carol");
    // alice's three devices exist and have caught up.
    for device in [PHONE, LAPTOP, TABLET] {
        let (_, backlog) = server.login_device("alice", device);
        assert_eq!(backlog, vec![]);
    }
    let mut seen: [Vec<Message>; 3] = Default::default();

    // The phone is online for the friendship with bob.
    let (mut phone, _) = server.login_device("alice", PHONE);
    assert_eq!(phone.call(req::friend_request("bob")), Message::FriendRequestOk { outcome: 0 });
    let asked = bob.push();
    assert_eq!(bob.call(req::friend_accept("alice")), Message::Ok);
    bob.ack(asked.message_id().unwrap());
    let (m1, _) = bob.call(req::send("alice", 1, "one")).sent();
    seen[0].extend(phone.barrier());
    let phone_last = item_ids(&seen[0]).last().copied().unwrap();
    phone.ack(phone_last);
    drop(phone);

    // The laptop is online while carol asks and alice accepts, and bob invites alice.
    let (mut laptop, backlog) = server.login_device("alice", LAPTOP);
    seen[1].extend(backlog);
    assert_eq!(carol.call(req::friend_request("alice")), Message::FriendRequestOk { outcome: 0 });
    let asked_by_carol = laptop.push();
    assert!(matches!(&asked_by_carol, Message::FriendEvent { event: friend_event::ASKED, .. }));
    seen[1].push(asked_by_carol);
    assert_eq!(laptop.call(req::friend_accept("carol")), Message::Ok);
    let group = bob.call(req::group_create("trip")).group_id();
    assert_eq!(bob.call(req::group_invite(group, "alice")), Message::Ok);
    let (m2, _) = bob.call(req::group_send(group, 2, "welcome")).sent();
    // alice reads bob's messages on the laptop: bob gets a receipt, her other devices too.
    assert_eq!(laptop.call(req::read("bob", m1)), Message::Ok);
    seen[1].extend(laptop.barrier());
    let laptop_last = item_ids(&seen[1]).last().copied().unwrap();
    laptop.ack(laptop_last);
    drop(laptop);
    let receipt = bob.barrier().into_iter().find(|m| matches!(m, Message::ReadReceipt { .. }));
    assert!(
        matches!(&receipt, Some(Message::ReadReceipt { reader, up_to_message_id, .. }) if reader == "alice" && *up_to_message_id == m1),
        "{receipt:?}"
    );

    // While everyone of alice is away: bob reads her message, carol writes.
    carol.barrier();
    let (m3, _) = carol.call(req::send("alice", 1, "hi from carol")).sent();
    let (_, _) = (m2, m3);

    // Each device now logs in and catches up.
    for (k, device) in [PHONE, LAPTOP, TABLET].into_iter().enumerate() {
        let (mut client, backlog) = server.login_device("alice", device);
        seen[k].extend(backlog);
        if let Some(&last) = item_ids(&seen[k]).last() {
            client.ack(last);
        }
    }
    // Every device saw the same items, exactly once, in order, except what it did itself.
    let all: BTreeSet<u64> = seen.iter().flat_map(|s| item_ids(s)).collect();
    for (k, items) in seen.iter().enumerate() {
        let ids = item_ids(items);
        let own: Vec<u64> = all.iter().copied().filter(|id| !ids.contains(id)).collect();
        match k {
            // The phone sent the friend request: its own "you asked" item is not its item.
            0 => assert_eq!(own.len(), 1, "phone misses only its own action: {own:?} of {all:?}"),
            // The laptop accepted carol and read bob's message: two actions of its own.
            1 => assert_eq!(own.len(), 2, "laptop misses only its own actions: {own:?} of {all:?}"),
            _ => assert_eq!(own, Vec::<u64>::new(), "the tablet did nothing itself"),
        }
    }
    let tablet = &seen[2];
    assert!(tablet.iter().any(|m| matches!(m, Message::FriendEvent { event: 5, username, .. } if username == "bob")));
    assert!(tablet.iter().any(|m| matches!(m, Message::FriendEvent { event: 6, username, .. } if username == "carol")));
    assert!(tablet.iter().any(
        |m| matches!(m, Message::GroupEvent { event: group_event::JOINED, username, group_id, .. } if username == "alice" && *group_id == group)
    ));
    assert!(tablet.iter().any(
        |m| matches!(m, Message::ReadReceipt { reader, peer, up_to_message_id, .. } if reader == "alice" && peer == "bob" && *up_to_message_id == m1)
    ));
    // A second login of each device finds nothing: each acknowledged its own.
    for device in [PHONE, LAPTOP, TABLET] {
        let (_, backlog) = server.login_device("alice", device);
        assert_eq!(backlog, vec![], "device {device}");
    }
}

#[test]
fn an_ack_on_one_device_does_not_affect_another() {
    let server = TestServer::start();
    let (mut alice, bob) = alice_and_bob(&server);
    drop(bob);
    assert_eq!(alice.push(), presence_of("bob", false));
    for device in [PHONE, LAPTOP] {
        let (_, backlog) = server.login_device("bob", device);
        assert_eq!(backlog, vec![]);
    }
    let (id, _) = alice.call(req::send("bob", 1, "for both")).sent();
    let (mut phone, backlog) = server.login_device("bob", PHONE);
    assert_eq!(item_ids(&backlog), [id]);
    phone.ack(id);
    let (_, again) = server.login_device("bob", PHONE);
    assert_eq!(again, vec![]);
    let (_, laptop_backlog) = server.login_device("bob", LAPTOP);
    assert_eq!(item_ids(&laptop_backlog), [id], "the laptop still gets it");
}

/// The peer's read position reaches a device that was away, as an item of its backlog.
#[test]
fn a_peers_read_receipt_waits_in_the_backlog() {
    let server = TestServer::start();
    let (mut alice, mut bob) = alice_and_bob(&server);
    let (id, _) = bob.call(req::send("alice", 1, "read me later")).sent();
    drop(bob);
    assert_eq!(alice.push().deliver().message_id, id);
    assert_eq!(alice.push(), presence_of("bob", false));
    assert_eq!(alice.call(req::read("bob", id)), Message::Ok);
    let (_, backlog) = server.login("bob");
    assert!(
        matches!(&backlog[..], [Message::ReadReceipt { reader, peer, up_to_message_id, .. }]
            if reader == "alice" && peer == "bob" && *up_to_message_id == id),
        "{backlog:?}"
    );
}

/// A new device starts where the user's least advanced device is; the first at the account's
/// start.
#[test]
fn a_new_device_starts_at_the_lowest_position_of_the_others() {
    let server = TestServer::start();
    let (mut alice, bob) = alice_and_bob(&server);
    drop(bob);
    assert_eq!(alice.push(), presence_of("bob", false));
    let (a, _) = alice.call(req::send("bob", 1, "a")).sent();
    let (mut phone, backlog) = server.login_device("bob", PHONE);
    assert_eq!(item_ids(&backlog), [a]);
    phone.ack(a);
    drop(phone);
    let (b, _) = alice.call(req::send("bob", 2, "b")).sent();
    // The test device of bob (from alice_and_bob) never saw `a`: it is the lowest.
    let (_, backlog) = server.login_device("bob", LAPTOP);
    assert_eq!(item_ids(&backlog), [a, b]);
}

#[test]
fn devices_are_listed_and_a_removed_device_is_closed_and_holds_nothing_back() {
    let server = TestServer::start();
    let (mut alice, bob) = alice_and_bob(&server);
    drop(bob);
    assert_eq!(alice.push(), presence_of("bob", false));
    let (mut phone, _) = server.login_device("bob", PHONE);
    let (mut laptop, _) = server.login_device("bob", LAPTOP);
    let devices = match phone.call(req::device_list()) {
        Message::DeviceList(devices) => devices,
        other => panic!("expected DEVICE_LIST_RESULT, got {other:?}"),
    };
    let ids: Vec<(u64, bool, bool)> = devices.iter().map(|d| (d.device_id, d.online, d.current)).collect();
    assert_eq!(ids.len(), 3, "{devices:?}");
    assert!(ids.contains(&(PHONE, true, true)) && ids.contains(&(LAPTOP, true, false)), "{devices:?}");
    assert!(ids.contains(&(DEVICE, false, false)), "{devices:?}");
    assert!(devices.windows(2).all(|w| w[0].last_seen_ms >= w[1].last_seen_ms), "most recent first");
    assert_eq!(devices.iter().find(|d| d.device_id == LAPTOP).unwrap().name, format!("device {LAPTOP}"));

    let own = phone.call(req::device_remove(PHONE));
    assert_eq!(own.error_code(), Some(code::INVALID_ARGUMENT), "{own:?}");
    let unknown = phone.call(req::device_remove(12345));
    assert_eq!(unknown.error_code(), Some(code::NO_SUCH_DEVICE), "{unknown:?}");
    // Removing the laptop closes its connection with NO_SUCH_DEVICE.
    assert_eq!(phone.call(req::device_remove(LAPTOP)), Message::Ok);
    laptop.assert_error_and_close(code::NO_SUCH_DEVICE);
    // The old test device is removed too; the phone is the last, most advanced device.
    assert_eq!(phone.call(req::device_remove(DEVICE)), Message::Ok);
    let (id, _) = alice.call(req::send("bob", 1, "after the removal")).sent();
    assert_eq!(phone.push().deliver().message_id, id);
    phone.ack(id);
    drop(phone);
    // Nothing is held back for the removed devices: a login with the laptop's id is a new
    // device, starting where the phone is.
    let (_, backlog) = server.login_device("bob", LAPTOP);
    assert_eq!(backlog, vec![]);
}

#[test]
fn logins_past_max_devices_are_refused() {
    let server = TestServer::start_with(&["--max-devices", "2"]);
    server.register("alice");
    server.login_device("alice", PHONE);
    server.login_device("alice", LAPTOP);
    let mut third = server.hello();
    let refused = third.try_login_as("alice", &password_of("alice"), TABLET);
    assert_eq!(refused.unwrap_err().error_code(), Some(code::TOO_MANY_DEVICES));
    // The connection stays, unauthenticated; a known device still logs in.
    assert_eq!(third.try_login_as("alice", &password_of("alice"), PHONE), Ok("alice".to_string()));
}

#[test]
fn device_fields_are_checked() {
    let server = TestServer::start();
    server.register("alice");
    let mut client = server.hello();
    for (device_id, name) in [(0, "zero id"), (7, ""), (7, &"n".repeat(65)[..])] {
        // A real challenge first, so that only the device fields are wrong.
        client.prepare_login("alice", device_id);
        let request = req::login_finish_as(&[0; 32], device_id, name);
        let reply = client.call(request);
        assert_eq!(reply.error_code(), Some(code::INVALID_ARGUMENT), "{device_id} {name:?}: {reply:?}");
    }
}

#[test]
fn devices_not_seen_within_the_expiry_are_forgotten() {
    // An expiry of 0 days forgets every device not seen in this very millisecond.
    let server = TestServer::start_with(&["--device-expiry-days", "0"]);
    server.register("alice");
    server.login_device("alice", PHONE);
    std::thread::sleep(std::time::Duration::from_millis(5));
    let (mut laptop, _) = server.login_device("alice", LAPTOP);
    let Message::DeviceList(devices) = laptop.call(req::device_list()) else { panic!("no device list") };
    assert_eq!(devices.iter().map(|d| d.device_id).collect::<Vec<_>>(), [LAPTOP]);
}

/// A device further behind than `--device-backlog-cap` gets `SYNC_GAP` and the newest items,
/// and fills the gap exactly with forward `HISTORY` pages.
#[test]
fn a_device_past_the_cap_gets_a_gap_and_fills_it_with_forward_history() {
    const SENT: u64 = 500;
    const CAP: usize = 100;
    let server = TestServer::start_with(&["--device-backlog-cap", &CAP.to_string()]);
    let (mut alice, bob) = alice_and_bob(&server);
    drop(bob);
    assert_eq!(alice.push(), presence_of("bob", false));
    let sends: Vec<Request> = (0..SENT).map(|n| req::send("bob", n + 1, &format!("m{n}"))).collect();
    let sent: Vec<u64> = alice.pipeline(&sends).iter().map(|r| r.sent().0).collect();

    let (mut bob, backlog) = server.login("bob");
    let Message::SyncGap { after_message_id, up_to_message_id, skipped } = backlog[0].clone() else {
        panic!("expected SYNC_GAP first, got {:?}", backlog[0]);
    };
    let pushed = item_ids(&backlog[1..]);
    assert!(pushed.len() <= CAP && pushed.len() >= CAP - 2, "about the cap: {}", pushed.len());
    assert_eq!(pushed, sent[sent.len() - pushed.len()..], "the newest items");
    assert!(pushed[0] > up_to_message_id && after_message_id < sent[0]);
    assert_eq!(skipped as usize, sent.len() - pushed.len(), "skipped");

    // Forward HISTORY from the gap's start, until past its end, gives exactly the rest.
    let mut filled = Vec::new();
    let mut from = after_message_id;
    loop {
        let (items, next) = bob.call(req::history_newer(&Target::direct("alice"), from, 37)).history_page();
        assert!(items.windows(2).all(|w| w[0].message_id < w[1].message_id), "oldest first");
        filled.extend(items.iter().map(|i| i.message_id).filter(|&id| id <= up_to_message_id));
        if next == 0 || next > up_to_message_id {
            break;
        }
        from = next;
    }
    assert_eq!(filled, sent[..sent.len() - pushed.len()]);
    bob.ack(*pushed.last().unwrap());
    let (_, again) = server.login("bob");
    assert_eq!(again, vec![]);
}

/// A HISTORY page stops before 128 KiB of bodies, so one legal page of the largest messages
/// never makes a fast reader look slow; the rest comes with `next`.
#[test]
fn a_history_page_is_bounded_by_bytes() {
    let server = TestServer::start_with(&["--max-body", "65535", "--max-frame", "200000"]);
    let (mut alice, _bob) = alice_and_bob(&server);
    let body = "z".repeat(65_000);
    let sends: Vec<Request> = (0..200).map(|n| req::send("bob", n + 1, &body)).collect();
    let sent: Vec<u64> = alice.pipeline(&sends).iter().map(|r| r.sent().0).collect();
    let mut read = Vec::new();
    let mut before = 0;
    loop {
        let (items, next) = alice.call(req::history(&Target::direct("bob"), before, 200)).history_page();
        assert!(!items.is_empty());
        assert!(items.iter().map(|i| i.body.len()).sum::<usize>() <= 128 * 1024 || items.len() == 1);
        read.extend(items.iter().map(|i| i.message_id));
        if next == 0 {
            break;
        }
        before = next;
    }
    read.reverse();
    assert_eq!(read, sent);
}

/// READ clamps to the newest message of that conversation, not of the server.
#[test]
fn read_clamps_to_the_conversation() {
    let server = TestServer::start();
    server.register("carol");
    let (mut alice, mut bob) = alice_and_bob(&server);
    let (mine, _) = alice.call(req::send("bob", 1, "hi")).sent();
    bob.barrier();
    let (elsewhere, _) = bob.call(req::group_send(LOBBY, 1, "lobby")).sent();
    assert!(elsewhere > mine);
    alice.barrier();
    assert_eq!(bob.call(req::read("alice", u64::MAX)), Message::Ok);
    let receipt = alice.push();
    assert!(
        matches!(&receipt, Message::ReadReceipt { up_to_message_id, .. } if *up_to_message_id == mine),
        "{receipt:?}"
    );
}

/// A device still receiving its backlog when its user gains a friend and a group (on another
/// device) gets their items too, in their place: the backlog picks up new conversations.
#[test]
fn conversations_gained_during_a_backlog_are_part_of_it() {
    let server = TestServer::start();
    server.register_all(&["alice", "bob", "carol", "dave"]);
    let mut alice = server.device("alice");
    befriend_offline(&server, &mut alice, &["bob"]);
    let mut dave = server.device("dave");
    befriend_offline(&server, &mut dave, &["bob"]);
    let body = "a".repeat(4000);
    let sends: Vec<Request> = (0..3000).map(|n| req::send("bob", n + 1, &body)).collect();
    let queued: Vec<u64> = alice.pipeline(&sends).iter().map(|r| r.sent().0).collect();

    // The phone starts its backlog and reads one item only.
    let mut phone = server.hello();
    phone.login_as("bob", PHONE);
    let first = phone.push();
    assert_eq!(first.item_id(), Some(queued[0]));

    // Meanwhile, on the laptop: carol becomes a friend and writes; dave adds bob to a group.
    let (mut laptop, _) = server.login_device("bob", LAPTOP);
    let mut carol = server.device("carol");
    assert_eq!(carol.call(req::friend_request("bob")), Message::FriendRequestOk { outcome: 0 });
    assert_eq!(laptop.call(req::friend_accept("carol")), Message::Ok);
    let (from_carol, _) = carol.call(req::send("bob", 1, "hello from carol")).sent();
    let group = dave.call(req::group_create("climbers")).group_id();
    assert_eq!(dave.call(req::group_invite(group, "bob")), Message::Ok);
    let (in_group, _) = dave.call(req::group_send(group, 1, "group hello")).sent();

    let mut received = vec![first];
    loop {
        match phone.push() {
            Message::SyncDone { .. } => break,
            message => received.push(message),
        }
    }
    let ids = item_ids(&received);
    for id in queued.iter().chain([&from_carol, &in_group]) {
        assert!(ids.contains(id), "item {id} missing from the backlog");
    }
    let carol_message = received.iter().find(|m| m.item_id() == Some(from_carol)).unwrap().deliver();
    assert_eq!((carol_message.from.as_str(), &carol_message.to), ("carol", &Target::direct("bob")));
    let group_message = received.iter().find(|m| m.item_id() == Some(in_group)).unwrap().deliver();
    assert_eq!((group_message.from.as_str(), &group_message.to), ("dave", &Target::Group(group)));
    assert!(received.iter().any(
        |m| matches!(m, Message::GroupEvent { event: group_event::JOINED, username, group_id, .. } if username == "bob" && *group_id == group)
    ));
    assert!(
        received.iter().any(|m| matches!(m, Message::FriendEvent { event: 6, username, .. } if username == "carol"))
    );
    phone.assert_quiet();
}
