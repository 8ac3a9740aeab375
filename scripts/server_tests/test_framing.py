"""End-to-end cases: framing and hostile input (split frames, unknown opcodes, malformed
bodies, frame-size limits, request ids)."""

from .support import *  # noqa: F401,F403 -- the shared vocabulary of every case


class FramingTests(ServerCase):
    """Frames as the server cuts them from the byte stream, hostile ones included."""

    def test_frames_split_byte_by_byte_and_many_in_one_write(self):
        """framing: frames split byte by byte and many in one write"""
        env = self.env
        client = env.connect(hello=False)
        for byte in encode_message(Op.HELLO, 1, version=2):
            client.send_raw(bytes([byte]))
        eq(client.wait_response(1).name, "HELLO_OK", "split HELLO")
        batch = (encode_frame(Op.PING, 2) + encode_frame(0x7E, 3, b"xyz") + encode_frame(Op.PING, 4)
                 + encode_frame(Op.FRIEND_LIST, 5) + encode_frame(Op.PING, 6))
        client.send_raw(batch)
        answers = [client.recv_frame() for _ in range(5)]
        eq([(f.request_id, f.name) for f in answers],
           [(2, "PONG"), (3, "ERROR"), (4, "PONG"), (5, "ERROR"), (6, "PONG")], "answers in order")
        eq(answers[1]["code"], code_of("UNKNOWN_OPCODE"), "unknown opcode in a batch")
        eq(answers[3]["code"], code_of("NOT_AUTHENTICATED"), "FRIEND_LIST before login")

    def test_unknown_opcodes_are_unknown_opcode_in_every_state_connection_stays(self):
        """framing: unknown opcodes are UNKNOWN_OPCODE in every state, connection stays"""
        env = self.env
        name = env.register()
        client = env.connect(hello=False)
        expect_raw_error(client, encode_frame(0x7F, 11), 11, "UNKNOWN_OPCODE")
        client.ping()
        client.hello()
        for request_id, opcode in ((12, 0x00), (13, 0x0A), (14, 0x80), (15, 0xC0), (16, 0xFF),
                                   (18, 0x42), (19, 0x8E), (20, 0xC6)):
            expect_raw_error(client, encode_frame(opcode, request_id, b"\x00\x01"), request_id,
                             "UNKNOWN_OPCODE")
        client.login(name, env.passwords[name], device=env.device(name))
        expect_raw_error(client, encode_frame(0x50, 17, b"junk"), 17, "UNKNOWN_OPCODE")
        client.ping()
        client.friend_list()

    def test_malformed_bodies_are_malformed_frame_connection_stays(self):
        """framing: malformed bodies are MALFORMED_FRAME, connection stays"""
        env = self.env
        name = env.register()
        client = env.connect(hello=False)
        expect_raw_error(client, encode_frame(Op.HELLO, 21, b"\x00"), 21, "MALFORMED_FRAME")
        expect_raw_error(client, encode_frame(Op.HELLO, 22, b"\x00\x02\x00"), 22, "MALFORMED_FRAME")
        expect_raw_error(client, encode_frame(Op.PING, 23, b"\x00"), 23, "MALFORMED_FRAME")
        client.hello()
        bad_utf8 = (b"\x00\x02\xc3\x28" + u16str(bytes(16)) + struct.pack(">I", 5000)
                    + u16str(bytes(32)) + u16str(bytes(32)))
        expect_raw_error(client, encode_frame(Op.REGISTER, 24, bad_utf8), 24, "MALFORMED_FRAME")
        expect_raw_error(client, encode_frame(Op.REGISTER, 25, bad_utf8[:-3]), 25,
                         "MALFORMED_FRAME")
        expect_raw_error(client, encode_frame(Op.LOGIN_START, 26, b"\x00\x09abc"), 26,
                         "MALFORMED_FRAME")
        # A version 1 LOGIN_FINISH (the proof alone) lacks the device fields; a body that does not
        # parse is MALFORMED_FRAME whatever the state.
        expect_raw_error(client, encode_frame(Op.LOGIN_FINISH, 34, u16str(bytes(32))), 34,
                         "MALFORMED_FRAME")
        device_name_bad_utf8 = u16str(bytes(32)) + struct.pack(">Q", 5) + b"\x00\x01\xff"
        expect_raw_error(client, encode_frame(Op.LOGIN_FINISH, 35, device_name_bad_utf8), 35,
                         "MALFORMED_FRAME")
        client.login(name, env.passwords[name], device=env.device(name))
        history_kind_2 = b"\x02" + struct.pack(">QBQH", 1, 0, 0, 10)
        expect_raw_error(client, encode_frame(Op.HISTORY, 27, history_kind_2), 27, "MALFORMED_FRAME")
        history_direction_2 = b"\x01" + struct.pack(">QBQH", 1, 2, 0, 10)
        expect_raw_error(client, encode_frame(Op.HISTORY, 36, history_direction_2), 36,
                         "MALFORMED_FRAME")
        history_v1 = b"\x01" + struct.pack(">QQH", 1, 0, 10)
        expect_raw_error(client, encode_frame(Op.HISTORY, 37, history_v1), 37, "MALFORMED_FRAME")
        send = encode_message(Op.SEND, 28, to="x", client_msg_id=1, body="hi")
        expect_raw_error(client, encode_frame(Op.SEND, 28, send[9:] + b"\x00"), 28,
                         "MALFORMED_FRAME")
        send_bad_body = u16str("x") + struct.pack(">Q", 1) + b"\x00\x01\xff"
        expect_raw_error(client, encode_frame(Op.SEND, 29, send_bad_body), 29, "MALFORMED_FRAME")
        surrogate = u16str("x") + struct.pack(">Q", 1) + b"\x00\x03\xed\xa0\x80"
        expect_raw_error(client, encode_frame(Op.SEND, 32, surrogate), 32, "MALFORMED_FRAME")
        overlong = u16str("x") + struct.pack(">Q", 1) + b"\x00\x02\xc0\xaf"
        expect_raw_error(client, encode_frame(Op.SEND, 33, overlong), 33, "MALFORMED_FRAME")
        expect_raw_error(client, encode_frame(Op.ACK, 30, b"\x00\x01"), 30, "MALFORMED_FRAME")
        expect_raw_error(client, encode_frame(Op.DEVICE_LIST, 38, b"\x00"), 38, "MALFORMED_FRAME")
        expect_raw_error(client, encode_frame(Op.DEVICE_REMOVE, 39, bytes(7)), 39,
                         "MALFORMED_FRAME")
        client.ping()
        client.friend_list()

    def test_length_below_5_is_malformed_frame_with_request_id_0_and_a_close(self):
        """framing: length below 5 is MALFORMED_FRAME with request id 0 and a close"""
        env = self.env
        client = env.connect()
        client.send_raw(b"\x00\x00\x00\x04")
        expect_close_with(client, "MALFORMED_FRAME")

    def test_oversized_frame_before_login_is_frame_too_large_and_a_close(self):
        """framing: oversized frame before login is FRAME_TOO_LARGE and a close"""
        env = self.env
        client = env.connect(hello=False)
        client.send_raw(struct.pack(">IBI", 4097, Op.PING, 1))
        expect_close_with(client, "FRAME_TOO_LARGE")
        client = env.connect()
        client.send_raw(b"\xff\xff\xff\xff")
        expect_close_with(client, "FRAME_TOO_LARGE")

    def test_oversized_frame_after_login_is_frame_too_large_a_close_and_presence_0(self):
        """framing: oversized frame after login is FRAME_TOO_LARGE, a close, and PRESENCE 0"""
        env = self.env
        client, friend = env.user(), env.user("f")
        make_friends(client, friend)
        name = client.username
        limit = client.hello_info["max_frame"]
        client.send_raw(struct.pack(">IBI", limit + 1, Op.SEND, 1))
        expect_close_with(client, "FRAME_TOO_LARGE")
        eq(friend.wait_push(Op.PRESENCE, from_user(name), PUSH_TIMEOUT)["online"], 0,
           "friend sees the closed user go offline")

    def test_a_frame_of_exactly_the_before_login_limit_is_read_and_answered(self):
        """framing: a frame of exactly the before-login limit is read and answered"""
        env = self.env
        client = env.connect()
        limit = client.hello_info["max_frame_before_login"]
        fixed = 4 + 2 + 16 + 4 + 2 + 32 + 2 + 32 + 2  # request id, salt, iterations, keys, name len
        username = "a" * (limit - 1 - fixed)
        body = (u16str(username) + u16str(bytes(16)) + struct.pack(">I", TEST_ITERATIONS)
                + u16str(bytes(32)) + u16str(bytes(32)))
        data = encode_frame(Op.REGISTER, 31, body)
        eq(len(data) - 4, limit, "frame length")
        client.send_raw(data)
        answer = response_frame(client, 31)
        check(isinstance(answer, ServerError) and answer.name in ("INVALID_USERNAME",
                                                                  "WEAK_CREDENTIALS"),
              "answer to a REGISTER at the limit: %r" % answer)
        client.ping()

    def test_a_frame_of_exactly_max_frame_after_login_is_read_and_answered(self):
        """framing: a frame of exactly max_frame after login is read and answered"""
        env = self.env
        client = env.user()
        limit = client.hello_info["max_frame"]
        to = "x" * (limit - 5 - 2 - 8 - 2 - 1)
        data = encode_message(Op.SEND, 41, to=to, client_msg_id=1, body="x")
        eq(len(data) - 4, limit, "frame length")
        client.send_raw(data)
        answer = response_frame(client, 41)
        check(isinstance(answer, ServerError) and answer.name in ("NOT_FRIENDS", "INVALID_ARGUMENT"),
              "answer to a SEND at the limit: %r" % answer)
        client.ping()

    def test_request_ids_are_echoed_as_sent_up_to_0xffffffff(self):
        """framing: request ids are echoed as sent, up to 0xFFFFFFFF"""
        env = self.env
        client = env.connect()
        for request_id in (0xFFFFFFFF, 0x80000000, 0x01020304):
            client.send_raw(encode_frame(Op.PING, request_id))
            answer = client.recv_frame()
            eq((answer.name, answer.request_id), ("PONG", request_id), "PONG")
