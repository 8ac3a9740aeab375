"""End-to-end cases: direct messages."""

from .support import *  # noqa: F401,F403 -- the shared vocabulary of every case


class MessagesTests(ServerCase):
    """Direct messages."""

    def test_sent_to_the_sender_deliver_to_the_recipient_and_the_sender_s_other_dev(self):
        """send: SENT to the sender, DELIVER to the recipient and the sender's other device"""
        env = self.env
        a1, b = env.user("a"), env.user("b")
        make_friends(a1, b)
        a2 = env.login(a1.username, "second")
        body = "hello \u2713 \U0001F600"
        before = int(time.time() * 1000)
        sent = a1.send(b.username, body)
        after = int(time.time() * 1000)
        check(before - 60000 <= sent["timestamp_ms"] <= after + 60000, "timestamp near now")
        expected = {"message_id": sent["message_id"], "timestamp_ms": sent["timestamp_ms"],
                    "from": a1.username, "kind": KIND_DIRECT, "to": b.username, "body": body}
        eq(b.wait_push(Op.DELIVER, timeout=PUSH_TIMEOUT).fields, expected, "DELIVER at b")
        eq(a2.wait_push(Op.DELIVER, timeout=PUSH_TIMEOUT).fields, expected, "DELIVER at a's 2nd")
        eq(a1.expect_no_push(Op.DELIVER), None, "nothing back to the sending connection")
        ids = [a1.send(b.username, "m%d" % i)["message_id"] for i in range(3)]
        check(sent["message_id"] < ids[0] < ids[1] < ids[2], "message ids increase: %r" % ids)

    def test_send_read_to_a_non_friend_or_unknown_name_is_not_friends(self):
        """send: SEND/READ to a non-friend or unknown name is NOT_FRIENDS"""
        env = self.env
        a, c = env.user("a"), env.user("c")
        expect_error("NOT_FRIENDS", a.send, c.username, "hi")
        expect_error("NOT_FRIENDS", a.send, env.new_name("nobody"), "hi")
        expect_error("NOT_FRIENDS", a.read, c.username, 1)
        expect_error("NOT_FRIENDS", a.send, a.username, "to myself")
        eq(c.expect_no_push(Op.DELIVER), None, "nothing delivered")

    def test_body_of_1_max_body_bytes_else_invalid_body(self):
        """send: body of 1..max_body bytes, else INVALID_BODY"""
        env = self.env
        a, b = env.user("a"), env.user("b")
        make_friends(a, b)
        max_body = a.hello_info["max_body"]
        expect_error("INVALID_BODY", a.send, b.username, "")
        expect_error("INVALID_BODY", a.send, b.username, "x" * (max_body + 1))
        expect_error("INVALID_BODY", a.send, b.username, "\u00e9" * (max_body // 2) + "x")
        a.send(b.username, "x" * max_body)
        a.send(b.username, "\u00e9" * (max_body // 2))
        eq(len(b.wait_push(Op.DELIVER, timeout=PUSH_TIMEOUT)["body"]), max_body, "long body")

    def test_a_second_device_of_the_recipient_gets_the_deliver_too(self):
        """send: a second device of the recipient gets the DELIVER too"""
        env = self.env
        a, b1 = env.user("a"), env.user("b")
        make_friends(a, b1)
        b2 = env.login(b1.username, "second")
        sent = a.send(b1.username, "to both")
        for device in (b1, b2):
            eq(device.wait_push(Op.DELIVER, timeout=PUSH_TIMEOUT)["message_id"],
               sent["message_id"], "DELIVER on each device")
        b2.logout()
        b2.drain_pushes()
        later = a.send(b1.username, "to the logged-in one")
        eq(b1.wait_push(Op.DELIVER, timeout=PUSH_TIMEOUT)["message_id"], later["message_id"],
           "DELIVER on the device still logged in")
        eq(b2.expect_no_push(Op.DELIVER), None, "nothing to a connection that logged out")

    def test_a_retry_with_the_same_client_msg_id_returns_the_same_sent_stores_once(self):
        """send: a retry with the same client_msg_id returns the same SENT, stores once"""
        env = self.env
        a, b = env.user("a"), env.user("b")
        make_friends(a, b)
        first = a.send(b.username, "once")
        cmid = a.last_client_msg_id
        again = a.send(b.username, "once", client_msg_id=cmid)
        eq(again.fields, first.fields, "retry SENT")
        changed = a.send(b.username, "different body", client_msg_id=cmid)
        eq(changed.fields, first.fields, "retry with another body")
        other_sender = b.send(a.username, "same id, other sender", client_msg_id=cmid)
        check(other_sender["message_id"] != first["message_id"], "dedup is per sender")
        a.send(b.username, "next")
        bodies = [b.wait_push(Op.DELIVER, is_deliver(sender=a.username), PUSH_TIMEOUT)["body"]
                  for _ in range(2)]
        eq(bodies, ["once", "next"], "b got the message once")
        history = [m["body"] for m in a.history(peer=b.username)["messages"]]
        eq(history, ["next", "same id, other sender", "once"], "stored once")

    def test_pipelined_sends_are_answered_in_order_ids_increasing_delivered_in_orde(self):
        """send: pipelined SENDs are answered in order, ids increasing, delivered in order"""
        env = self.env
        a, b = env.user("a"), env.user("b")
        make_friends(a, b)
        request_ids = [a.allocate_request_id() for _ in range(50)]
        batch = b"".join(encode_message(Op.SEND, request_id, to=b.username, body="p%d" % i,
                                        client_msg_id=a.next_client_msg_id())
                         for i, request_id in enumerate(request_ids))
        a.send_raw(batch)
        answers = []
        while len(answers) < len(request_ids):
            frame = a.recv_frame()
            if not frame.is_push:
                answers.append(frame)
        eq([(f.request_id, f.name) for f in answers], [(r, "SENT") for r in request_ids],
           "responses in request order")
        ids = [f["message_id"] for f in answers]
        check(increasing(ids), "ids increase: %r" % ids)
        delivered = [b.wait_push(Op.DELIVER, timeout=PUSH_TIMEOUT) for _ in ids]
        eq([(f["message_id"], f["body"]) for f in delivered],
           [(m, "p%d" % i) for i, m in enumerate(ids)], "DELIVERs in order")

    def test_send_and_group_send_share_the_sender_client_msg_id_dedup_key(self):
        """send: SEND and GROUP_SEND share the (sender, client_msg_id) dedup key"""
        env = self.env
        a, b = env.user("a"), env.user("b")
        make_friends(a, b)
        group_id = a.group_create("dedup " + env.tag)["group_id"]
        sent = a.send(b.username, "direct")
        again = a.group_send(group_id, "group", client_msg_id=a.last_client_msg_id)
        eq(again.fields, sent.fields, "GROUP_SEND retrying a SEND's client_msg_id")
        eq(a.history(group_id=group_id)["messages"], [], "nothing stored in the group")
