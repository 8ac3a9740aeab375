"""End-to-end cases: history and read receipts."""

from .support import *  # noqa: F401,F403 -- the shared vocabulary of every case


class HistoryTests(ServerCase):
    """History and read receipts."""

    def test_pages_backwards_and_forwards_with_next_same_for_both_sides(self):
        """history: pages backwards and forwards with next, same for both sides"""
        env = self.env
        a, b = env.user("a"), env.user("b")
        make_friends(a, b)
        eq(a.history(peer=b.username).fields, {"messages": [], "next": 0}, "empty")
        eq(a.history(peer=b.username, direction=NEWER).fields, {"messages": [], "next": 0},
           "empty, forwards")
        sent = []
        for i in range(5):
            sender, peer = (a, b) if i % 2 == 0 else (b, a)
            result = sender.send(peer.username, "h%d" % i)
            sent.append({"message_id": result["message_id"], "timestamp_ms": result["timestamp_ms"],
                         "sender": sender.username, "body": "h%d" % i})
        newest_first = list(reversed(sent))
        for client in (a, b):
            peer = b if client is a else a
            for direction, order in ((OLDER, newest_first), (NEWER, sent)):
                pages = [page["messages"] for page in client.history_pages(
                    peer=peer.username, direction=direction, limit=2)]
                eq(pages, [order[0:2], order[2:4], order[4:5]],
                   "pages of 2 for %s, direction %d" % (client.username, direction))
        page = a.history(peer=b.username, limit=2)
        eq(page["next"], newest_first[1]["message_id"], "next is the id of the page's last message")
        whole = a.history(peer=b.username, limit=200)
        eq((whole["messages"], whole["next"]), (newest_first, 0), "one page of 200")
        exact = a.history(peer=b.username, limit=5)
        eq((exact["messages"], exact["next"]), (newest_first, 0),
           "a page that ends exactly at the oldest message")
        exact = a.history(peer=b.username, direction=NEWER, limit=5)
        eq((exact["messages"], exact["next"]), (sent, 0),
           "a forward page that ends exactly at the newest message")
        older = a.history(peer=b.username, from_id=sent[2]["message_id"], limit=10)
        eq(older["messages"], [sent[1], sent[0]], "below a given id")
        newer = a.history(peer=b.username, direction=NEWER, from_id=sent[2]["message_id"], limit=10)
        eq((newer["messages"], newer["next"]), ([sent[3], sent[4]], 0), "above a given id")
        eq(a.history(peer=b.username, direction=NEWER, from_id=sent[4]["message_id"]).fields,
           {"messages": [], "next": 0}, "nothing above the newest")
        for direction in (OLDER, NEWER):
            expect_error("INVALID_ARGUMENT", a.history, peer=b.username, direction=direction,
                         limit=0)
            expect_error("INVALID_ARGUMENT", a.history, peer=b.username, direction=direction,
                         limit=201)

    def test_a_page_stops_before_128_kib_of_bodies_with_at_least_one_message(self):
        """history: a page stops before 128 KiB of bodies, with at least one message"""
        env = self.env
        a, b = env.user("a"), env.user("b")
        make_friends(a, b)
        size = a.hello_info["max_body"]
        count = 128 * 1024 // size + 3
        ids = [send_paced(a, "%05d" % i + "x" * (size - 5), to=b.username)["message_id"]
               for i in range(count)]
        for direction, order in ((OLDER, list(reversed(ids))), (NEWER, ids)):
            pages = list(a.history_pages(peer=b.username, direction=direction, limit=200))
            for page in pages:
                total = sum(len(m["body"].encode("utf-8")) for m in page["messages"])
                check(page["messages"] and total <= 128 * 1024,
                      "a page of %d messages, %d bytes of bodies" % (len(page["messages"]), total))
            check(len(pages) >= 2, "%d messages of %d bytes fit one page" % (count, size))
            eq([m["message_id"] for page in pages for m in page["messages"]], order,
               "the pages hold every message once (direction %d)" % direction)

    def test_someone_else_s_conversation_is_forbidden(self):
        """history: someone else's conversation is FORBIDDEN"""
        env = self.env
        a, b, c = env.user("a"), env.user("b"), env.user("c")
        make_friends(a, b)
        a.send(b.username, "private")
        for direction in (OLDER, NEWER):
            expect_error("FORBIDDEN", c.history, peer=a.username, direction=direction)
            expect_error("FORBIDDEN", c.history, peer=b.username, direction=direction)
            expect_error("FORBIDDEN", c.history, peer=env.new_name("nobody"), direction=direction)
        a.friend_request(c.username)
        expect_error("FORBIDDEN", c.history, peer=a.username)

    def test_read_pushes_a_read_receipt_item_to_the_peer_s_and_the_reader_s_other_d(self):
        """read: READ pushes a READ_RECEIPT item to the peer's and the reader's other devices"""
        env = self.env
        a1, b1 = env.user("a"), env.user("b")
        make_friends(a1, b1)
        a2 = env.login(a1.username, "second")
        b2 = env.login(b1.username, "second")
        a1.send(b1.username, "r1")
        m2 = a1.send(b1.username, "r2")
        for device in (b1, b2):
            device.wait_push(Op.DELIVER, is_deliver(body="r2"), PUSH_TIMEOUT)
        b1.read(a1.username, m2["message_id"])
        receipts = []
        for device in (a1, a2, b2):
            receipt = device.wait_push(Op.READ_RECEIPT, timeout=PUSH_TIMEOUT)
            eq((receipt["reader"], receipt["peer"], receipt["up_to_message_id"]),
               (b1.username, a1.username, m2["message_id"]), "READ_RECEIPT")
            receipts.append(receipt.fields)
        check(receipts[0]["message_id"] > m2["message_id"], "a receipt is an item with its own id")
        eq(receipts[1], receipts[0], "the same item on each device of the peer")
        eq(b1.expect_no_push(Op.READ_RECEIPT), None, "not to the device that read")
        # An id above the conversation's newest is taken as the newest, which is stored already:
        # nothing moves, nothing is pushed. So is a READ below the stored one.
        b1.read(a1.username, m2["message_id"] + 10 ** 9)
        b1.read(a1.username, m2["message_id"] - 1)
        eq(a1.expect_no_push(Op.READ_RECEIPT), None, "no receipt when nothing moves")
        m3 = a1.send(b1.username, "r3")
        b1.read(a1.username, m3["message_id"] + 10 ** 9)
        receipt = a1.wait_push(Op.READ_RECEIPT, timeout=PUSH_TIMEOUT)
        eq(receipt["up_to_message_id"], m3["message_id"], "clamped to the newest message")
        c = env.user("c")
        expect_error("NOT_FRIENDS", b1.read, c.username, m2["message_id"])
