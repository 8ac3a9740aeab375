"""End-to-end cases: the handshake (HELLO, PING) and the client's own encoders."""

from .support import *  # noqa: F401,F403 -- the shared vocabulary of every case


class HandshakeTests(ServerCase):
    """HELLO and PING in every state; the client checked against PROTOCOL.md."""

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
