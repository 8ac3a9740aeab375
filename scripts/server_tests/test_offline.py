"""End-to-end cases: offline delivery, one position per device."""

from .support import *  # noqa: F401,F403 -- the shared vocabulary of every case


def pipelined_sends(client, to, bodies, batch=200):
    """SEND each body to `to`, `batch` requests per write; returns the SENT frames in order.

    Requests refused with RETRY_LATER (a server with its default --send-rate) are sent
    again one at a time, waiting as asked, with their client_msg_id."""
    results = []
    for start in range(0, len(bodies), batch):
        chunk = [(body, client.next_client_msg_id()) for body in bodies[start:start + batch]]
        request_ids = []
        data = bytearray()
        for body, client_msg_id in chunk:
            request_id = client.allocate_request_id()
            request_ids.append(request_id)
            data += encode_message(Op.SEND, request_id, to=to, body=body,
                                   client_msg_id=client_msg_id)
        client.send_raw(data)
        for (body, client_msg_id), request_id in zip(chunk, request_ids):
            try:
                results.append(client.wait_response(request_id))
            except ServerError as error:
                if error.retry_after_ms is None:
                    raise
                results.append(None)
        for index, (body, client_msg_id) in enumerate(chunk, start):
            if results[index] is None:
                results[index] = send_paced(client, body, to=to, client_msg_id=client_msg_id)
    return results


class OfflineTests(ServerCase):
    """Offline delivery, one position per device."""

    def test_backlog_then_sync_done_unacked_items_come_again_ack_ends_them(self):
        """offline: backlog then SYNC_DONE; unacked items come again; ACK ends them"""
        env = self.env
        a, b = env.user("a"), env.user("b")
        make_friends(a, b)
        b_name = b.username
        b.send(a.username, "from b before going offline")
        b.logout()
        sent = [a.send(b_name, "offline %d" % i) for i in range(3)]
        b = env.login(b_name)
        expected = [(s["message_id"], "offline %d" % i) for i, s in enumerate(sent)]
        eq([(f["message_id"], f["body"]) for f in b.backlog], expected, "backlog at first login")
        eq(b.sync_count, 3, "SYNC_DONE count")
        eq(b.backlog[0]["timestamp_ms"], sent[0]["timestamp_ms"], "timestamp kept")
        b.close()
        b = env.login(b.username)
        eq([(f["message_id"], f["body"]) for f in b.backlog], expected, "unacked: again")
        eq(b.sync_count, 3, "SYNC_DONE count again")
        # "Everything" acknowledges only what this connection was sent.
        b.ack(EVERYTHING)
        b.close()
        later = a.send(b_name, "after the ACK")
        b = env.login(b.username)
        eq([f["message_id"] for f in b.backlog], [later["message_id"]], "after ACK, only the later")
        b.ack(later["message_id"])
        b.close()
        b = env.login(b.username)
        eq((b.backlog, b.sync_count), ([], 0), "after the second ACK")
        a.close()
        a = env.login(a.username)
        eq([f["body"] for f in a.backlog], ["from b before going offline"],
           "a's backlog: b's message, not what a's device sent itself")

    def test_ack_is_per_device_one_device_s_ack_leaves_another_s_backlog_whole(self):
        """offline: ACK is per device: one device's ACK leaves another's backlog whole"""
        env = self.env
        a, b1 = env.user("a"), env.user("b")
        make_friends(a, b1)
        b_name = b1.username
        first = a.send(b_name, "live")
        b1.wait_push(Op.DELIVER, timeout=PUSH_TIMEOUT)
        b1.ack(first["message_id"])
        # A new device starts at the lowest position of the user's other devices.
        b2 = env.login(b_name, "second")
        eq((b2.backlog, b2.sync_count), ([], 0), "a new device starts where the other one is")
        b1.close()
        b2.close()
        m2 = a.send(b_name, "m2")
        m3 = a.send(b_name, "m3")
        b1 = env.login(b_name)
        eq([f["body"] for f in b1.backlog], ["m2", "m3"], "backlog")
        b1.ack(m2["message_id"])
        b1.ack(first["message_id"])  # backwards: ignored
        b1.close()
        b1 = env.login(b_name)
        eq([f["message_id"] for f in b1.backlog], [m3["message_id"]], "only the unacked one")
        b1.close()
        b2 = env.login(b_name, "second")
        eq([f["message_id"] for f in b2.backlog], [m2["message_id"], m3["message_id"]],
           "the other device's ACKs do not count here")
        b2.ack(m3["message_id"])
        b2.close()
        b1 = env.login(b_name)
        eq([f["message_id"] for f in b1.backlog], [m3["message_id"]], "nor this one's there")
        b1.ack(m3["message_id"])

    def test_two_connections_of_one_device_share_its_position(self):
        """offline: two connections of one device share its position"""
        env = self.env
        a, tab1 = env.user("a"), env.user("b")
        make_friends(a, tab1)
        b_name = tab1.username
        tab2 = env.login(b_name)  # the same device, "main"
        sent = a.send(b_name, "to both tabs")
        for tab in (tab1, tab2):
            eq(tab.wait_push(Op.DELIVER, timeout=PUSH_TIMEOUT)["message_id"], sent["message_id"],
               "DELIVER on each connection of the device")
        eq([d["name"] for d in tab1.device_list()["devices"]], ["main"], "one device")
        tab1.ack(sent["message_id"])
        tab1.close()
        tab2.close()
        eq(env.login(b_name).sync_count, 0, "one tab's ACK moved the device's position")

    def test_friend_events_wait_for_login_and_count_in_sync_done(self):
        """offline: friend events wait for login and count in SYNC_DONE"""
        env = self.env
        a = env.user("a")
        b_name = env.register("b")
        a.friend_request(b_name)
        b = env.login(b_name)
        eq([(f.name, f["event"], f["username"]) for f in b.backlog],
           [("FRIEND_EVENT", FRIEND_ASKED, a.username)], "backlog")
        eq(b.sync_count, 1, "SYNC_DONE count")
        b.friend_accept(a.username)
        a.wait_push(Op.FRIEND_EVENT, timeout=PUSH_TIMEOUT)
        b.ack(b.backlog[0]["message_id"])
        b.close()
        eq(env.login(b_name).sync_count, 0, "acked")

    def test_a_300_item_backlog_from_three_sources_arrives_in_id_order_with_a_live(self):
        """offline: a 300-item backlog from three sources arrives in id order, with a live one"""
        env = self.env
        a = env.user("a")
        b_name = env.register("b")
        b = env.login(b_name)
        make_friends(a, b)
        b.close()
        group_id = a.group_create("backlog " + env.tag)["group_id"]
        a.group_invite(group_id, b_name)
        expected = []
        asker = env.user("c")
        for i in range(150):
            expected.append(send_paced(a, "d%d" % i, to=b_name)["message_id"])
            expected.append(send_paced(a, "g%d" % i, group_id=group_id)["message_id"])
            if i == 74:
                asker.friend_request(b_name)
        b = env.connect()
        b.login(b_name, env.passwords[b_name], device=env.device(b_name))
        live = send_paced(a, "live", to=b_name)["message_id"]
        expected.append(live)
        backlog, count = b.wait_sync(PUSH_TIMEOUT)
        eq(count, len(backlog), "SYNC_DONE count is the number of items pushed before it")
        b.ping()
        received = backlog + [f for f in b.drain_pushes() if is_item(f)]
        ids = [f["message_id"] for f in received]
        check(increasing(ids), "item ids increase on the connection")
        eq((received[0].name, received[0]["event"], received[0]["username"]),
           ("GROUP_EVENT", GROUP_JOINED, b_name), "the invitation first")
        events = [f for f in received if f.opcode == Op.FRIEND_EVENT]
        eq([(f["event"], f["username"]) for f in events], [(FRIEND_ASKED, asker.username)],
           "one friend event")
        check(expected[149] < events[0]["message_id"] < expected[150], "the friend event in its place")
        eq([f["message_id"] for f in received if f.opcode == Op.DELIVER], expected,
           "every message once, in id order")
        b.ack(last_item_id(received))
        b.close()
        eq(env.login(b_name).sync_count, 0, "one ACK covers every conversation")

    def test_a_2_000_item_backlog_arrives_whole_and_in_order_while_more_arrive_live(self):
        """offline: a 2,000-item backlog arrives whole and in order while more arrive live"""
        env = self.env
        a, b = env.user("a"), env.user("b")
        b_name = b.username
        make_friends(a, b)
        b.close()
        expected = [s["message_id"] for s in pipelined_sends(
            a, b_name, ["bulk %d" % i for i in range(2000)])]
        b = env.connect()
        b.login(b_name, env.passwords[b_name], device=env.device(b_name))
        expected += [s["message_id"] for s in pipelined_sends(
            a, b_name, ["live %d" % i for i in range(50)], batch=50)]
        expected.sort()
        backlog, count = b.wait_sync(30)
        eq(count, len(backlog), "SYNC_DONE count is the number of items pushed before it")
        check(count >= 2000, "SYNC_DONE count %d covers the 2,000 waiting items" % count)
        b.ping()
        received = [f["message_id"] for f in backlog] + [
            f["message_id"] for f in b.drain_pushes() if f.opcode == Op.DELIVER]
        eq(len(received), len(expected), "number of items received")
        check(received == expected, "items out of order or repeated (first difference at %r)"
              % next((i for i, (x, y) in enumerate(zip(received, expected)) if x != y), None))
        b.ack(expected[-1])
