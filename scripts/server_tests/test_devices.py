"""End-to-end cases: devices."""

from .support import *  # noqa: F401,F403 -- the shared vocabulary of every case


class DevicesTests(ServerCase):
    """Devices."""

    def test_password_change_needs_a_fresh_proof_the_other_sessions_are_closed_only(self):
        """accounts: PASSWORD_CHANGE needs a fresh proof; the other sessions are closed; only the
        new password logs in"""
        env = self.env
        name = env.register("pw")
        laptop, phone = env.login(name, "laptop"), env.login(name, "phone")
        expect_error("AUTH_FAILED", laptop.change_password, "not the password", "new secret")
        new_keys = laptop.change_password(env.passwords[name], "new secret",
                                          iterations=TEST_ITERATIONS)
        expect_close_with(phone, "CREDENTIALS_CHANGED")
        laptop.ping()
        stale = env.connect()
        expect_error("AUTH_FAILED", stale.login, name, env.passwords[name],
                     device=env.device(name, "laptop"))
        fresh = env.connect()
        fresh.login(name, "new secret", device=env.device(name, "laptop"))
        env.passwords[name], env.keys[name] = "new secret", new_keys

    def test_account_delete_tells_friends_keeps_their_history_under_a_marked_name_a(self):
        """accounts: ACCOUNT_DELETE tells friends, keeps their history under a marked name and
        keeps the name taken"""
        env = self.env
        alice, bob = env.user("del"), env.user("friend")
        make_friends(alice, bob)
        alice.send(bob.username, "remember me")
        bob.wait_push(Op.DELIVER, timeout=PUSH_TIMEOUT)
        gone = alice.username
        alice.delete_account(env.passwords[gone])
        alice.wait_closed(PUSH_TIMEOUT)
        removed = bob.wait_push(Op.FRIEND_EVENT, lambda f: f["event"] == FRIEND_REMOVED,
                                timeout=PUSH_TIMEOUT)
        eq(removed["username"], gone, "who removed bob")
        senders = [m["sender"] for m in bob.history(peer=gone)["messages"]]
        eq(senders, [gone + " (deleted)"], "the sender of the kept message")
        again = env.connect()
        expect_error("USERNAME_TAKEN", again.register, gone, "pw", iterations=TEST_ITERATIONS)
        expect_error("AUTH_FAILED", again.login, gone, env.passwords[gone],
                     device=env.device(gone))

    def test_three_devices_offline_at_different_times_each_get_every_item_once_in_o(self):
        """devices: three devices offline at different times each get every item once, in order"""
        env = self.env
        a, c = env.user("a"), env.user("c")
        b_name = env.register("b")
        # A device that never acknowledges and never leaves sees every item of b live: the list
        # each other device is checked against.
        watcher = env.login(b_name, "watcher")
        devices = {label: env.login(b_name, label) for label in ("phone", "tablet", "laptop")}
        phone, tablet, laptop = devices["phone"], devices["tablet"], devices["laptop"]
        acked = {}

        def ack_all(label, items):
            acked[label] = last_item_id(items)
            devices[label].ack(acked[label])

        # Phase 1, all online: the friendship's items (a's request, phone's "you accepted"), then
        # a message; the phone and the laptop acknowledge what they got.
        make_friends(a, phone)
        m1 = a.send(b_name, "m1")
        got = {label: items_until(devices[label], lambda f: f.get("message_id") == m1["message_id"])
               for label in ("tablet", "laptop")}
        phone_items = items_until(phone, lambda f: f.get("message_id") == m1["message_id"])
        ack_all("phone", phone_items)
        ack_all("laptop", got["laptop"])
        # Phase 2: the phone is away. A group invitation and a group message.
        phone.close()
        m2 = a.send(b_name, "m2")
        group_id = a.group_create("three " + env.tag)["group_id"]
        a.group_invite(group_id, b_name)
        g1 = a.group_send(group_id, "g1")
        until_g1 = lambda f: f.get("message_id") == g1["message_id"]  # noqa: E731
        items_until(tablet, until_g1)
        ack_all("laptop", items_until(laptop, until_g1))
        # Phase 3: the tablet is away too. A request from c; the laptop writes to a and reads
        # a's messages (both items for b's other devices); a reads the laptop's message.
        tablet.close()
        c.friend_request(b_name)
        own = laptop.send(a.username, "from the laptop")
        laptop.read(a.username, m2["message_id"])
        a.wait_push(Op.DELIVER, is_deliver(body="from the laptop"), PUSH_TIMEOUT)
        a.read(b_name, own["message_id"])
        items_until(laptop, lambda f: f.opcode == Op.READ_RECEIPT and f["reader"] == a.username)
        laptop.close()
        # Phase 4: all three away.
        m3 = a.send(b_name, "m3")
        g2 = a.group_send(group_id, "g2")
        # They come back one at a time, with live items in between.
        back = {"phone": env.login(b_name, "phone")}
        a.send(b_name, "m4")
        back["tablet"] = env.login(b_name, "tablet")
        a.send(b_name, "m5")
        back["laptop"] = env.login(b_name, "laptop")
        end = a.send(b_name, "end")["message_id"]
        until_end = lambda f: f.get("message_id") == end  # noqa: E731
        everything = items_until(watcher, until_end)
        ids = [f["message_id"] for f in everything]
        check(increasing(ids), "the watcher's items in strictly increasing id order")
        kinds = {(f.name, f.get("event")) for f in everything}
        for kind in (("FRIEND_EVENT", FRIEND_ASKED), ("FRIEND_EVENT", FRIEND_YOU_ACCEPTED),
                     ("GROUP_EVENT", GROUP_JOINED), ("READ_RECEIPT", None), ("DELIVER", None)):
            check(kind in kinds, "the watcher got a %s %s" % kind)
        check(m3["message_id"] in ids and g2["message_id"] in ids, "the watcher got m3 and g2")
        # What a device made itself is never pushed to it.
        made_by = {
            "phone": lambda f: f.opcode == Op.FRIEND_EVENT and f["event"] == FRIEND_YOU_ACCEPTED,
            "tablet": lambda f: False,
            "laptop": lambda f: ((f.opcode == Op.DELIVER and f["from"] == b_name)
                                 or (f.opcode == Op.READ_RECEIPT and f["reader"] == b_name)),
        }
        acked.setdefault("tablet", 0)
        for label, client in back.items():
            received = client.backlog + items_until(client, until_end)
            expected = [f for f in everything if f["message_id"] > acked[label]
                        and not made_by[label](f)]
            eq([(f.name, f["message_id"]) for f in received],
               [(f.name, f["message_id"]) for f in expected],
               "%s: every item past its position, once, in id order" % label)
            eq([f.fields for f in received], [f.fields for f in expected],
               "%s: the items as the watcher saw them" % label)

    def test_own_messages_receipts_and_group_leaves_from_another_device_are_items(self):
        """devices: own messages, receipts and group leaves from another device are items"""
        env = self.env
        a1, b = env.user("a"), env.user("b")
        make_friends(a1, b)
        a2 = env.login(a1.username, "second")
        group_id = a1.group_create("own " + env.tag)["group_id"]
        direct = a1.send(b.username, "sent on the first device")
        group = a1.group_send(group_id, "to the group from the first device")
        for sent, fields in ((direct, {"kind": KIND_DIRECT, "to": b.username}),
                             (group, {"kind": KIND_GROUP, "group_id": group_id})):
            got = a2.wait_push(Op.DELIVER, timeout=PUSH_TIMEOUT)
            eq((got["message_id"], got["from"]), (sent["message_id"], a1.username),
               "own message at the other device")
            eq({key: got[key] for key in fields}, fields, "own message's conversation")
        reply = b.send(a1.username, "reply")
        for device in (a1, a2):
            device.wait_push(Op.DELIVER, is_deliver(body="reply"), PUSH_TIMEOUT)
        a1.read(b.username, reply["message_id"])
        for device in (a2, b):
            receipt = device.wait_push(Op.READ_RECEIPT, timeout=PUSH_TIMEOUT)
            eq((receipt["reader"], receipt["peer"], receipt["up_to_message_id"]),
               (a1.username, b.username, reply["message_id"]), "own read position elsewhere")
        a1.group_leave(group_id)
        left = a2.wait_push(Op.GROUP_EVENT, timeout=PUSH_TIMEOUT)
        eq((left["group_id"], left["event"], left["username"]), (group_id, GROUP_LEFT, a1.username),
           "own leave at the other connected device")
        a1.ping()
        eq([f for f in a1.drain_pushes() if is_item(f)], [],
           "the device that did all this got none of it")
        # Offline, the other device finds its own messages in its backlog.
        a2.ack(left["message_id"])
        a2.close()
        later = a1.send(b.username, "while the second device is away")
        a2 = env.login(a1.username, "second")
        eq([(f["message_id"], f["from"], f["to"]) for f in a2.backlog],
           [(later["message_id"], a1.username, b.username)], "own message in the other backlog")
        a1.ack(reply["message_id"])
        a1.close()
        a1 = env.login(a1.username)
        eq((a1.backlog, a1.sync_count), ([], 0), "nothing of its own back to the first device")

    def test_login_finish_checks_the_device_fields_first_a_later_login_renames(self):
        """devices: LOGIN_FINISH checks the device fields first; a later login renames"""
        env = self.env
        name = env.register()
        client = env.connect()
        for device, what in ((Device(0, "zero"), "device id 0"),
                             (Device(new_device_id(), ""), "an empty name"),
                             (Device(new_device_id(), "n" * 65), "a name of 65 characters")):
            client.login_start(name)
            # The proof is wrong too: the device fields are checked before it.
            expect_error("INVALID_ARGUMENT", client.login_finish, bytes(32), device)
            expect_error("NOT_AUTHENTICATED", client.friend_list)
        device = Device(new_device_id(), "\u00e9" * 64)
        client.login(name, env.passwords[name], device=device)
        eq([(d["device_id"], d["name"]) for d in client.device_list()["devices"]],
           [(device.device_id, device.name)], "64 characters (128 bytes) is a valid name")
        client.logout()
        client.login(name, env.passwords[name], device=Device(device.device_id, "renamed"))
        eq([(d["device_id"], d["name"]) for d in client.device_list()["devices"]],
           [(device.device_id, "renamed")], "the same device, renamed")

    def test_device_list_device_remove_closes_the_removed_device_with_no_such_devic(self):
        """devices: DEVICE_LIST; DEVICE_REMOVE closes the removed device with NO_SUCH_DEVICE"""
        env = self.env
        a, main = env.user("a"), env.user("b")
        make_friends(a, main)
        b_name = main.username
        env.login(b_name, "tablet").close()
        phone = env.login(b_name, "phone")
        first_backlog = [f.fields for f in phone.backlog]
        now = time.time() * 1000
        for client, current in ((main, "main"), (phone, "phone")):
            devices = client.device_list()["devices"]
            eq(sorted((d["name"], d["device_id"], d["online"], d["current"]) for d in devices),
               sorted((label, env.device(b_name, label).device_id, int(label != "tablet"),
                       int(label == current)) for label in ("main", "tablet", "phone")),
               "devices listed from %s" % current)
            seen = [d["last_seen_ms"] for d in devices]
            eq(seen, sorted(seen, reverse=True), "most recently seen first")
            check(all(abs(ms - now) < 60000 for ms in seen), "last seen near now: %r" % seen)
        own = env.device(b_name).device_id
        expect_error("INVALID_ARGUMENT", main.device_remove, own)
        expect_error("NO_SUCH_DEVICE", main.device_remove, new_device_id())
        a_device = env.device(a.username).device_id
        expect_error("NO_SUCH_DEVICE", main.device_remove, a_device)
        eq(len(a.device_list()["devices"]), 1, "another user's device is out of reach")
        main.device_remove(env.device(b_name, "phone").device_id)
        expect_close_with(phone, "NO_SUCH_DEVICE")
        eq(a.expect_no_push(Op.PRESENCE, from_user(b_name)), None, "b is still online")
        main.device_remove(env.device(b_name, "tablet").device_id)
        expect_error("NO_SUCH_DEVICE", main.device_remove, env.device(b_name, "tablet").device_id)
        eq([d["name"] for d in main.device_list()["devices"]], ["main"], "one device left")
        # A login with a removed id creates the device anew, at the lowest position of the other
        # devices (main's, which never acknowledges the "you accepted" it made itself).
        phone = env.login(b_name, "phone")
        eq([f.fields for f in phone.backlog], first_backlog, "a new device's backlog again")
        eq(sorted(d["name"] for d in main.device_list()["devices"]), ["main", "phone"], "again")

    @own_server_only
    def test_a_new_device_past_max_devices_is_too_many_devices(self):
        """devices: a new device past --max-devices is TOO_MANY_DEVICES"""
        env = self.env
        with side_server(env, "devices.db", ["--max-devices", "2"]) as side:
            name = side.register("d")
            password = side.passwords[name]
            one = side.login(name, "one")
            two = side.login(name, "two")
            client = side.connect()
            three = side.device(name, "three")
            expect_error("TOO_MANY_DEVICES", client.login, name, password, device=three)
            expect_error("NOT_AUTHENTICATED", client.friend_list)
            # The proof is checked before the device count.
            expect_error("AUTH_FAILED", client.login, name, "not the password", device=three)
            client.login(name, password, device=side.device(name, "two"))
            client.wait_sync(PUSH_TIMEOUT)
            client.logout()
            one.device_remove(side.device(name, "two").device_id)
            expect_close_with(two, "NO_SUCH_DEVICE")
            client.login(name, password, device=three)
            eq(sorted(d["name"] for d in one.device_list()["devices"]), ["one", "three"], "devices")

    @own_server_only
    def test_past_device_backlog_cap_sync_gap_the_newest_items_and_forward_history(self):
        """devices: past --device-backlog-cap, SYNC_GAP, the newest items, and forward HISTORY
        reads the gap exactly"""
        env = self.env
        cap = 20
        with side_server(env, "gap.db", ["--device-backlog-cap", str(cap)]) as side:
            a, b = side.user("a"), side.user("b")
            make_friends(a, b)
            b_name = b.username
            group_id = a.group_create("gap")["group_id"]
            a.group_invite(group_id, b_name)
            position = b.wait_push(Op.GROUP_EVENT, timeout=PUSH_TIMEOUT)["message_id"]
            b.ack(position)
            b.close()
            sent = []
            for i in range(45):
                sent.append(a.send(b_name, "d%d" % i)["message_id"])
                if i % 3 == 0:
                    sent.append(a.group_send(group_id, "g%d" % i)["message_id"])
                if i % 10 == 0:
                    sent.append(a.group_send(LOBBY_GROUP_ID, "lobby %d" % i)["message_id"])
            b = side.connect()
            b.login(b_name, side.passwords[b_name], device=side.device(b_name))
            pushes = [f for f in pushes_until(b, Op.SYNC_DONE) if f.opcode != Op.PRESENCE]
            eq(pushes[0].name, "SYNC_GAP", "the first push after LOGIN_OK")
            gap, items, done = pushes[0], pushes[1:-1], pushes[-1]
            eq(gap["after_message_id"], position, "the gap starts at the device's position")
            check(all(f.opcode == Op.DELIVER for f in items), "only messages after the gap")
            ids = [f["message_id"] for f in items]
            check(increasing(ids), "items in id order")
            check(ids and ids[0] > gap["up_to_message_id"], "items above the gap's end")
            check(0 < len(items) <= cap, "%d items pushed for a cap of %d" % (len(items), cap))
            eq(done["count"], len(items), "SYNC_DONE counts what came after the gap")
            in_gap = []
            for target in ({"peer": a.username}, {"group_id": group_id},
                           {"group_id": LOBBY_GROUP_ID}):
                for page in b.history_pages(direction=NEWER, from_id=gap["after_message_id"],
                                            limit=7, **target):
                    messages = [m["message_id"] for m in page["messages"]]
                    check(increasing(messages), "a forward page is oldest first")
                    in_gap += [m for m in messages if m <= gap["up_to_message_id"]]
                    if messages and messages[-1] >= gap["up_to_message_id"]:
                        break
            eq(sorted(in_gap + ids), sorted(sent), "the gap and the items: every message once")
            eq(gap["skipped"], len(in_gap), "skipped counts the messages in the gap")
            b.ack(ids[-1])
            b.close()
            b = side.login(b_name)
            eq((b.sync_gap, b.backlog), (None, []), "after ACK: no gap, nothing pushed")
