"""End-to-end cases: groups."""

from .support import *  # noqa: F401,F403 -- the shared vocabulary of every case


def group_event_fields(frame):
    return (frame["group_id"], frame["event"], frame["username"], frame["group_name"])


class GroupsTests(ServerCase):
    """Groups."""

    def test_three_users_invites_group_events_group_send_offline_member_catches_up(self):
        """groups: three users, invites, GROUP_EVENTs, GROUP_SEND, offline member catches up"""
        env = self.env
        a, b1, c = env.user("a"), env.user("b"), env.user("c")
        make_friends(a, b1)
        make_friends(b1, c)
        c_name = c.username
        c.close()
        name = "team " + env.tag
        group_id = a.group_create(name)["group_id"]
        check(group_id > LOBBY_GROUP_ID, "new group id %d" % group_id)
        a.group_invite(group_id, b1.username)
        joined = b1.wait_push(Op.GROUP_EVENT, timeout=PUSH_TIMEOUT)
        eq(group_event_fields(joined), (group_id, GROUP_JOINED, b1.username, name), "join event")
        check(abs(joined["timestamp_ms"] - time.time() * 1000) < 60000, "join event timestamp")
        eq(a.expect_no_push(Op.GROUP_EVENT), None, "the inviting device had its OK, no event")
        # A new device starts at the lowest position of the other devices: b's join is unacked.
        b2 = env.login(b1.username, "second")
        eq([f.fields for f in b2.backlog], [joined.fields], "the new device's backlog")
        b1.group_invite(group_id, c_name)  # any member may invite a friend
        for client in (a, b2):
            event = client.wait_push(Op.GROUP_EVENT, timeout=PUSH_TIMEOUT)
            eq((event["event"], event["username"]), (GROUP_JOINED, c_name), "c joined")
        c_joined = event
        eq(b1.expect_no_push(Op.GROUP_EVENT), None, "the inviting device had its OK, no event")
        sent = b1.group_send(group_id, "hello team")
        expected = {"message_id": sent["message_id"], "timestamp_ms": sent["timestamp_ms"],
                    "from": b1.username, "kind": KIND_GROUP, "group_id": group_id,
                    "body": "hello team"}
        for client in (a, b2):
            eq(client.wait_push(Op.DELIVER, timeout=PUSH_TIMEOUT).fields, expected,
               "group DELIVER at %s" % client.username)
        eq(b1.expect_no_push(Op.DELIVER), None, "nothing back to the sending connection")
        members = a.group_members(group_id)
        eq(sorted((m["username"], m["online"], m["owner"]) for m in members["members"]),
           sorted([(a.username, 1, 1), (b1.username, 1, 0), (c_name, 0, 0)]),
           "members, c offline")
        c = env.login(c_name)
        eq([f.fields for f in c.backlog], [c_joined.fields, expected],
           "c's backlog: its invitation, then the message")
        eq(c.sync_count, 2, "c's SYNC_DONE count")
        members = a.group_members(group_id)
        eq(members["group_id"], group_id, "members' group id")
        eq(sorted((m["username"], m["online"], m["owner"]) for m in members["members"]),
           sorted([(a.username, 1, 1), (b1.username, 1, 0), (c_name, 1, 0)]), "members")
        for client in (a, b1, c):
            groups = {g["group_id"]: g for g in client.group_list()["groups"]}
            eq(groups.get(group_id), {"group_id": group_id, "name": name, "owner": a.username,
                                      "members": 3}, "GROUP_LIST entry of %s" % client.username)
            check(LOBBY_GROUP_ID in groups, "lobby in GROUP_LIST of %s" % client.username)
        retry = b1.group_send(group_id, "hello team", client_msg_id=b1.last_client_msg_id)
        eq(retry.fields, sent.fields, "GROUP_SEND retry")
        history = c.history(group_id=group_id)
        eq(history["messages"], [{"message_id": sent["message_id"],
                                  "timestamp_ms": sent["timestamp_ms"], "sender": b1.username,
                                  "body": "hello team"}], "group history")
        b_name = b1.username
        b1.ack(joined["message_id"])
        b1.close()
        b2.close()
        b = env.login(b_name)
        eq((b.backlog, b.sync_count), ([], 0), "what the device did itself is not pushed back")
        b2 = env.login(b_name, "second")
        eq([f["message_id"] for f in b2.backlog],
           [joined["message_id"], c_joined["message_id"], sent["message_id"]],
           "the other device's unacked items, its own message included")
        a.close()
        a = env.login(a.username)
        eq([f["message_id"] for f in a.backlog], [c_joined["message_id"], sent["message_id"]],
           "a's unacked backlog")

    def test_invite_errors_leave_with_events_owner_leaves_leaver_is_refused(self):
        """groups: invite errors, leave with events, owner leaves, leaver is refused"""
        env = self.env
        a, b, c = env.user("a"), env.user("b"), env.user("c")
        for one, other in ((a, b), (a, c), (b, c)):
            make_friends(one, other)
        c2 = env.login(c.username, "second")
        stranger = env.register("s")
        group_id = a.group_create("g " + env.tag)["group_id"]
        a.group_invite(group_id, b.username)
        a.group_invite(group_id, c.username)
        expect_error("ALREADY_MEMBER", a.group_invite, group_id, b.username)
        expect_error("ALREADY_MEMBER", b.group_invite, group_id, a.username)
        expect_error("NOT_FRIENDS", a.group_invite, group_id, stranger)
        expect_error("NOT_FRIENDS", a.group_invite, group_id, env.new_name("nobody"))
        expect_error("ALREADY_MEMBER", a.group_invite, LOBBY_GROUP_ID, b.username)
        for client in (a, b, c, c2):
            client.ping()
            client.drain_pushes()
        c.group_leave(group_id)
        for client in (a, b, c2):
            event = client.wait_push(Op.GROUP_EVENT, timeout=PUSH_TIMEOUT)
            eq((event["group_id"], event["event"], event["username"]),
               (group_id, GROUP_LEFT, c.username), "leave event at %s" % client.username)
        eq(c.expect_no_push(Op.GROUP_EVENT), None, "the leaving device had its OK, no event")
        for call in (lambda: c.group_send(group_id, "x"), lambda: c.group_members(group_id),
                     lambda: c.history(group_id=group_id), lambda: c.group_leave(group_id),
                     lambda: c.group_invite(group_id, a.username)):
            expect_error("FORBIDDEN", call)
        check(group_id not in [g["group_id"] for g in c.group_list()["groups"]], "c's GROUP_LIST")
        a.group_leave(group_id)
        event = b.wait_push(Op.GROUP_EVENT, timeout=PUSH_TIMEOUT)
        eq((event["event"], event["username"]), (GROUP_LEFT, a.username), "owner left")
        listing = {g["group_id"]: g for g in b.group_list()["groups"]}
        eq(listing.get(group_id, {}).get("owner"), a.username, "recorded owner kept")
        eq(listing.get(group_id, {}).get("members"), 1, "member count")
        eq([(m["username"], m["owner"]) for m in b.group_members(group_id)["members"]],
           [(b.username, 0)], "members after the owner left")
        b.group_send(group_id, "alone")
        b.group_invite(group_id, c.username)

    def test_an_invitee_s_position_starts_at_the_newest_message_older_ones_in_histo(self):
        """groups: an invitee's position starts at the newest message, older ones in HISTORY"""
        env = self.env
        a, b = env.user("a"), env.user("b")
        make_friends(a, b)
        b_name = b.username
        b.close()
        group_id = a.group_create("late " + env.tag)["group_id"]
        old = [a.group_send(group_id, "old %d" % i)["message_id"] for i in range(2)]
        a.group_invite(group_id, b_name)
        b = env.login(b_name)
        eq([(f.name, f["group_id"], f["event"], f["username"]) for f in b.backlog],
           [("GROUP_EVENT", group_id, GROUP_JOINED, b_name)], "only the invitation is pushed")
        eq([m["message_id"] for m in b.history(group_id=group_id)["messages"]],
           list(reversed(old)), "old messages in history")
        new = a.group_send(group_id, "new")
        eq(b.wait_push(Op.DELIVER, timeout=PUSH_TIMEOUT)["message_id"], new["message_id"], "live")

    def test_name_of_1_64_characters_else_invalid_argument(self):
        """groups: name of 1..64 characters, else INVALID_ARGUMENT"""
        env = self.env
        a = env.user("a")
        expect_error("INVALID_ARGUMENT", a.group_create, "")
        expect_error("INVALID_ARGUMENT", a.group_create, "n" * 65)
        a.group_create("n" * 64)
        a.group_create("\u00e9" * 64)
        expect_error("INVALID_BODY", a.group_send, a.group_create("b")["group_id"], "")

    def test_a_non_member_is_forbidden_whether_the_group_exists_or_not(self):
        """groups: a non-member is FORBIDDEN, whether the group exists or not"""
        env = self.env
        a, c, d = env.user("a"), env.user("c"), env.user("d")
        make_friends(c, d)
        group_id = a.group_create("closed " + env.tag)["group_id"]
        a.group_send(group_id, "members only")
        for target in (group_id, 2 ** 63):
            for call in (lambda: c.group_send(target, "x"), lambda: c.group_members(target),
                         lambda: c.history(group_id=target), lambda: c.group_leave(target),
                         lambda: c.history(group_id=target, direction=NEWER),
                         lambda: c.group_invite(target, d.username)):
                expect_error("FORBIDDEN", call)
        eq(c.expect_no_push(Op.DELIVER), None, "no DELIVER to a non-member")

    def test_lobby_id_1_holds_every_user_a_lobby_message_reaches_everyone_online(self):
        """groups: lobby (id 1) holds every user; a lobby message reaches everyone online"""
        env = self.env
        x, y = env.user("x"), env.user("y")
        groups = {g["group_id"]: g for g in x.group_list()["groups"]}
        eq(groups.get(LOBBY_GROUP_ID, {}).get("name"), "lobby", "lobby in GROUP_LIST")
        eq(groups.get(LOBBY_GROUP_ID, {}).get("owner"), "", "the lobby has no owner")
        members = {m["username"]: m for m in x.group_members(LOBBY_GROUP_ID)["members"]}
        check(x.username in members and y.username in members, "both in lobby's members")
        eq(members[x.username]["online"], 1, "x online in lobby")
        eq(members[x.username]["owner"], 0, "no owner flag in the lobby")
        expect_error("INVALID_ARGUMENT", x.group_leave, LOBBY_GROUP_ID)
        body = "lobby hello " + env.tag
        sent = x.group_send(LOBBY_GROUP_ID, body)
        got = y.wait_push(Op.DELIVER, is_deliver(body=body), PUSH_TIMEOUT)
        eq((got["message_id"], got["kind"], got["group_id"], got["from"]),
           (sent["message_id"], KIND_GROUP, LOBBY_GROUP_ID, x.username), "lobby DELIVER")
        eq(y.history(group_id=LOBBY_GROUP_ID, limit=1)["messages"][0]["message_id"],
           sent["message_id"], "lobby history")
        y.ack(got["message_id"])
