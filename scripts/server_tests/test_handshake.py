"""End-to-end cases: handshake, framing and hostile input."""

from .support import *  # noqa: F401,F403 -- the shared vocabulary of every case


class HandshakeTests(ServerCase):
    """Handshake, framing and hostile input."""

    def test_encoders_match_protocol_md_section_7_scram_matches_rfc_7677(self):
        """client: encoders match PROTOCOL.md section 7, SCRAM matches RFC 7677"""
        env = self.env
        check(imclient.self_test() > 0, "self-test ran no check")

    def test_hello_ok_carries_version_2_the_limits_the_login_timeout_and_the_kdf_mi(self):
        """hello: HELLO_OK carries version 2, the limits, the login timeout and the KDF minimum"""
        env = self.env
        client = env.connect(hello=False)
        info = client.hello()
        eq(info["version"], 2, "version")
        check(info["server"].startswith("im-server"), "server name %r" % info["server"])
        check(info["max_frame_before_login"] <= info["max_frame"], "before-login limit <= limit")
        check(info["login_timeout_secs"] > 0, "a login timeout is announced")
        check(info["min_kdf_iterations"] > 0, "a KDF minimum is announced")
        if env.own_server:
            eq((info["max_frame"], info["max_frame_before_login"], info["max_body"],
                info["idle_timeout_secs"], info["login_timeout_secs"], info["min_kdf_iterations"]),
               (65536, 4096, 4096, 120, 10, MIN_KDF_ITERATIONS), "limits of the test server")

    def test_the_byte_example_of_protocol_md_section_7_a_server_with_default_flags(self):
        """hello: the byte example of PROTOCOL.md section 7 (a server with default flags)"""
        env = self.env
        def exchange(client):
            client.send_raw(bytes.fromhex("00000007 01 00000001 0002"))
            frame = client.recv_frame()
            eq((frame.name, frame.request_id), ("HELLO_OK", 1), "answer to HELLO")
            client.send_raw(bytes.fromhex("00000005 02 00000002"))
            eq(client.recv_frame().raw.hex(), "000000058200000002", "PONG bytes")
            return frame

        if not env.own_server:
            exchange(env.connect(hello=False))
            return
        # The example's numbers are the defaults, so a server started without flags must send
        # exactly its bytes, but for the server's name (and so the length).
        process, host, port = start_server(env.workdir, "defaults.db", flags=())
        try:
            client = PatientClient().connect(host, port)
            env.clients.append(client)
            frame = exchange(client)
            name = frame["server"].encode("utf-8")
            expected = ("%08x 81 00000001 0002 %04x %s 00010000 00001000 00001000 00000078"
                        " 0000000a 000186a0" % (5 + 2 + 2 + len(name) + 24, len(name), name.hex()))
            eq(frame.raw.hex(), expected.replace(" ", ""), "HELLO_OK bytes")
        finally:
            stop_server(process)

    def test_versions_1_and_3_are_unsupported_version_and_a_close(self):
        """hello: versions 1 and 3 are UNSUPPORTED_VERSION and a close"""
        env = self.env
        for version in (1, 3):
            client = env.connect(hello=False)
            client.send_raw(encode_message(Op.HELLO, 1, version=version))
            frames = client.wait_closed(PUSH_TIMEOUT)
            errors = [f for f in frames if f.opcode == Op.ERROR]
            check(errors, "no ERROR before the close: %r" % frames)
            eq(errors[0]["code"], code_of("UNSUPPORTED_VERSION"), "error code for version %d" % version)
            eq(errors[0].request_id, 1, "the error answers request 1")

    def test_a_second_hello_is_invalid_state(self):
        """hello: a second HELLO is INVALID_STATE"""
        env = self.env
        client = env.connect()
        expect_error("INVALID_STATE", client.hello)
        client.ping()

    def test_requests_before_hello_are_hello_required_ping_works(self):
        """hello: requests before HELLO are HELLO_REQUIRED, PING works"""
        env = self.env
        client = env.connect(hello=False)
        client.ping()
        name = env.new_name()
        expect_error("HELLO_REQUIRED", client.register, name, "pw", iterations=TEST_ITERATIONS)
        expect_error("HELLO_REQUIRED", client.login_start, name)
        expect_error("HELLO_REQUIRED", client.friend_list)
        expect_error("HELLO_REQUIRED", client.device_list)
        expect_error("HELLO_REQUIRED", client.request, Op.LOGOUT)
        client.hello()
        client.register(name, "pw", iterations=TEST_ITERATIONS)

    def test_pong_in_every_state(self):
        """ping: PONG in every state"""
        env = self.env
        name = env.register()
        client = env.connect(hello=False)
        eq(client.ping().name, "PONG", "before HELLO")
        client.hello()
        eq(client.ping().name, "PONG", "after HELLO")
        client.login_start(name)
        eq(client.ping().name, "PONG", "while authenticating")
        expect_error("AUTH_FAILED", client.login_finish, bytes(32), env.device(name))
        client.login(name, env.passwords[name], device=env.device(name))
        eq(client.ping().name, "PONG", "logged in")

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
