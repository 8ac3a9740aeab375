"""End-to-end cases: friends and presence."""

from .support import *  # noqa: F401,F403 -- the shared vocabulary of every case


class FriendsTests(ServerCase):
    """Friends and presence."""

    def test_request_and_accept_with_friend_event_pushes_and_friend_list(self):
        """friends: request and accept, with FRIEND_EVENT pushes and FRIEND_LIST"""
        env = self.env
        a, b = env.user("a"), env.user("b")
        eq(a.friend_request(b.username)["outcome"], 0, "outcome")
        asked = b.wait_push(Op.FRIEND_EVENT, timeout=PUSH_TIMEOUT)
        eq((asked["event"], asked["username"]), (FRIEND_ASKED, a.username), "event at b")
        check(asked["message_id"] > 0, "friend event has a message id")
        check(abs(asked["timestamp_ms"] - time.time() * 1000) < 60000, "friend event timestamp")
        listing = b.friend_list()
        eq((listing["friends"], listing["incoming"], listing["outgoing"]),
           ([], [{"username": a.username}], []), "b's list before accepting")
        listing = a.friend_list()
        eq((listing["friends"], listing["incoming"], listing["outgoing"]),
           ([], [], [{"username": b.username}]), "a's list before accepting")
        b.friend_accept(a.username)
        accepted = a.wait_push(Op.FRIEND_EVENT, timeout=PUSH_TIMEOUT)
        eq((accepted["event"], accepted["username"]), (FRIEND_ACCEPTED, b.username), "event at a")
        check(accepted["message_id"] > asked["message_id"], "event ids increase")
        eq(a.friend_list().fields, {"friends": [{"username": b.username, "online": 1}],
                                    "incoming": [], "outgoing": []}, "a's list")
        eq(b.friend_list().fields, {"friends": [{"username": a.username, "online": 1}],
                                    "incoming": [], "outgoing": []}, "b's list")
        eq(a.expect_no_push(Op.FRIEND_EVENT), None, "no event back to the asking device")
        eq(b.expect_no_push(Op.FRIEND_EVENT), None, "no event back to the accepting device")

    def test_error_cases(self):
        """friends: error cases"""
        env = self.env
        a, b = env.user("a"), env.user("b")
        expect_error("INVALID_ARGUMENT", a.friend_request, a.username)
        expect_error("INVALID_ARGUMENT", a.friend_request, a.username.upper())
        expect_error("USER_NOT_FOUND", a.friend_request, env.new_name("nobody"))
        expect_error("NO_SUCH_REQUEST", a.friend_accept, b.username)
        expect_error("NO_SUCH_REQUEST", a.friend_decline, b.username)
        expect_error("NOT_FRIENDS", a.friend_remove, b.username)
        a.friend_request(b.username)
        expect_error("REQUEST_PENDING", a.friend_request, b.username)
        expect_error("NO_SUCH_REQUEST", a.friend_accept, b.username)
        b.wait_push(Op.FRIEND_EVENT, timeout=PUSH_TIMEOUT)
        b.ping()
        eq([f for f in b.pushes if f.opcode == Op.FRIEND_EVENT], [], "one event for two requests")
        b.friend_accept(a.username)
        expect_error("ALREADY_FRIENDS", a.friend_request, b.username)
        expect_error("ALREADY_FRIENDS", b.friend_request, a.username)
        expect_error("NO_SUCH_REQUEST", b.friend_accept, a.username)

    def test_decline_pushes_event_3_and_clears_the_request(self):
        """friends: decline pushes event 3 and clears the request"""
        env = self.env
        a, b = env.user("a"), env.user("b")
        a.friend_request(b.username)
        b.wait_push(Op.FRIEND_EVENT, timeout=PUSH_TIMEOUT)
        b.friend_decline(a.username)
        declined = a.wait_push(Op.FRIEND_EVENT, timeout=PUSH_TIMEOUT)
        eq((declined["event"], declined["username"]), (FRIEND_DECLINED, b.username), "event")
        eq(a.friend_list().fields, {"friends": [], "incoming": [], "outgoing": []}, "a's list")
        eq(b.friend_list().fields, {"friends": [], "incoming": [], "outgoing": []}, "b's list")
        expect_error("NOT_FRIENDS", a.send, b.username, "hi")
        eq(a.friend_request(b.username)["outcome"], 0, "asking again is allowed")

    def test_mutual_requests_become_friends_at_once_outcome_1_event_2(self):
        """friends: mutual requests become friends at once (outcome 1, event 2)"""
        env = self.env
        a, b = env.user("a"), env.user("b")
        eq(a.friend_request(b.username)["outcome"], 0, "first request")
        b.wait_push(Op.FRIEND_EVENT, timeout=PUSH_TIMEOUT)
        eq(b.friend_request(a.username)["outcome"], 1, "second request")
        accepted = a.wait_push(Op.FRIEND_EVENT, timeout=PUSH_TIMEOUT)
        eq((accepted["event"], accepted["username"]), (FRIEND_ACCEPTED, b.username), "event at a")
        eq(a.friend_list()["friends"], [{"username": b.username, "online": 1}], "a's friends")
        eq(b.friend_list().fields, {"friends": [{"username": a.username, "online": 1}],
                                    "incoming": [], "outgoing": []}, "b's list")
        a.send(b.username, "now we can talk")

    def test_remove_pushes_event_4_and_ends_messaging_both_ways(self):
        """friends: remove pushes event 4 and ends messaging both ways"""
        env = self.env
        a, b = env.user("a"), env.user("b")
        make_friends(a, b)
        a.send(b.username, "before")
        a.friend_remove(b.username)
        removed = b.wait_push(Op.FRIEND_EVENT, timeout=PUSH_TIMEOUT)
        eq((removed["event"], removed["username"]), (FRIEND_REMOVED, a.username), "event at b")
        expect_error("NOT_FRIENDS", a.send, b.username, "after")
        expect_error("NOT_FRIENDS", b.send, a.username, "after")
        expect_error("NOT_FRIENDS", a.friend_remove, b.username)
        expect_error("NOT_FRIENDS", b.read, a.username, removed["message_id"])
        eq(a.friend_list()["friends"], [], "a's friends")
        eq(b.friend_list()["friends"], [], "b's friends")
        bodies = [m["body"] for m in b.history(peer=a.username)["messages"]]
        eq(bodies, ["before"], "former friends still read their history")

    def test_what_i_do_on_one_device_reaches_my_other_devices_as_events_5_8(self):
        """friends: what I do on one device reaches my other devices as events 5-8"""
        env = self.env
        a1 = env.user("a")
        a2 = env.login(a1.username, "second")
        b, c, d, e = env.user("b"), env.user("c"), env.user("d"), env.user("e")

        def own_event(event, name):
            got = a2.wait_push(Op.FRIEND_EVENT, from_user(name), PUSH_TIMEOUT)
            eq((got["event"], got["username"]), (event, name), "event at a's other device")
            return got

        eq(a1.friend_request(b.username)["outcome"], 0, "request to b")
        own_event(FRIEND_YOU_ASKED, b.username)
        b.friend_accept(a1.username)
        for device in (a1, a2):
            got = device.wait_push(Op.FRIEND_EVENT, from_user(b.username), PUSH_TIMEOUT)
            eq(got["event"], FRIEND_ACCEPTED, "b accepted, at each of a's devices")
        c.friend_request(a1.username)
        d.friend_request(a1.username)
        for device in (a1, a2):
            for asker in (c, d):
                got = device.wait_push(Op.FRIEND_EVENT, from_user(asker.username), PUSH_TIMEOUT)
                eq(got["event"], FRIEND_ASKED, "a request at each of a's devices")
        a1.friend_accept(c.username)
        own_event(FRIEND_YOU_ACCEPTED, c.username)
        a1.friend_decline(d.username)
        own_event(FRIEND_YOU_DECLINED, d.username)
        a1.friend_remove(b.username)
        removed = own_event(FRIEND_YOU_REMOVED, b.username)
        # A request that meets theirs makes friends at once: the other devices hear "accepted".
        e.friend_request(a1.username)
        a2.wait_push(Op.FRIEND_EVENT, from_user(e.username), PUSH_TIMEOUT)
        a1.wait_push(Op.FRIEND_EVENT, from_user(e.username), PUSH_TIMEOUT)
        eq(a1.friend_request(e.username)["outcome"], 1, "mutual request")
        newest = own_event(FRIEND_YOU_ACCEPTED, e.username)
        a1.ping()
        own = [f for f in a1.drain_pushes() if f.opcode == Op.FRIEND_EVENT]
        eq(own, [], "the device that acted gets no event for it")
        friends = sorted([c.username, e.username])
        eq(a2.friend_list().fields, {"friends": [{"username": n, "online": 1} for n in friends],
                                     "incoming": [], "outgoing": []}, "the other device's list")
        # Offline, the other device gets what came after its position at its next login.
        a2.ack(newest["message_id"])
        a2.close()
        a1.friend_request(b.username)
        a2 = env.login(a1.username, "second")
        eq([(f["event"], f["username"]) for f in a2.backlog], [(FRIEND_YOU_ASKED, b.username)],
           "backlog of the other device: only what came after what it was sent")
        check(a2.backlog[0]["message_id"] > removed["message_id"], "ids increase")

    def test_friend_list_lists_are_sorted_by_name(self):
        """friends: FRIEND_LIST lists are sorted by name"""
        env = self.env
        me = env.user("me")
        names = {label: env.register(label) for label in ("f2", "f1", "i2", "i1", "o2", "o1")}
        for label in ("f2", "f1"):
            other = env.login(names[label])
            make_friends(me, other)
        for label in ("i2", "i1"):
            env.login(names[label]).friend_request(me.username)
        for label in ("o2", "o1"):
            me.friend_request(names[label])
        listing = me.friend_list()
        for key in ("friends", "incoming", "outgoing"):
            listed = [f["username"] for f in listing[key]]
            expected = sorted(names[label] for label in names if label[0] == key[0])
            eq(listed, expected, key)

    def test_first_login_online_last_logout_offline_never_twice_the_same(self):
        """presence: first login online, last logout offline, never twice the same"""
        env = self.env
        a, b1 = env.user("a"), env.user("b")
        make_friends(a, b1)
        b_name = b1.username
        presence_b = lambda: a.wait_push(Op.PRESENCE, from_user(b_name), PUSH_TIMEOUT)  # noqa: E731
        b1.logout()
        eq(presence_b()["online"], 0, "after b's logout")
        eq(a.friend_list()["friends"], [{"username": b_name, "online": 0}], "offline in list")
        b1.login(b_name, env.passwords[b_name], device=env.device(b_name))
        eq(presence_b()["online"], 1, "after b's login")
        b2 = env.login(b_name, "second")
        b2.logout()
        b1.logout()
        eq(presence_b()["online"], 0, "after the last device logged out (no repeat of online)")
        b3 = env.login(b_name)
        eq(presence_b()["online"], 1, "online again")
        check(a.expect_no_push(Op.PRESENCE, from_user(b_name)) is None, "no extra presence")
        eq(a.friend_list()["friends"], [{"username": b_name, "online": 1}], "online in list")
        b3.logout()

    def test_offline_pushed_when_a_socket_is_closed_or_reset_without_logout(self):
        """presence: offline pushed when a socket is closed or reset without LOGOUT"""
        env = self.env
        a, b = env.user("a"), env.user("b")
        make_friends(a, b)
        b.close()
        eq(a.wait_push(Op.PRESENCE, from_user(b.username), PUSH_TIMEOUT)["online"], 0, "after close")
        b = env.login(b.username)
        eq(a.wait_push(Op.PRESENCE, from_user(b.username), PUSH_TIMEOUT)["online"], 1, "login")
        b.abort()
        eq(a.wait_push(Op.PRESENCE, from_user(b.username), PUSH_TIMEOUT)["online"], 0, "after reset")
        # b's friend sees a's logout too, through a socket that died mid-frame.
        b = env.login(b.username)
        a.send_raw(b"\x00\x00\x00\x20\x20")
        a.close()
        eq(b.wait_push(Op.PRESENCE, from_user(a.username), PUSH_TIMEOUT)["online"], 0,
           "after a half frame and a close")
