"""End-to-end cases: accounts."""

from .support import *  # noqa: F401,F403 -- the shared vocabulary of every case


class AccountsTests(ServerCase):
    """Accounts."""

    def test_register_login_server_signature_checked_logout_login_again(self):
        """accounts: register, login (server signature checked), logout, login again"""
        env = self.env
        name = env.new_name()
        client = env.connect()
        keys = client.register(name, "correct horse", iterations=TEST_ITERATIONS)
        check(keys.iterations >= client.hello_info["min_kdf_iterations"],
              "registered with %d iterations, below the server's minimum" % keys.iterations)
        device = env.device(name)
        expect_error("NOT_AUTHENTICATED", client.friend_list)  # REGISTER does not log in
        eq(client.login(name, "correct horse", device=device)["username"], name, "LOGIN_OK name")
        client.wait_sync(PUSH_TIMEOUT)
        client.friend_list()
        client.logout()
        expect_error("NOT_AUTHENTICATED", client.friend_list)
        expect_error("NOT_AUTHENTICATED", client.logout)
        eq(client.login(name, keys=keys, device=device)["username"], name, "login with cached keys")
        client.logout()
        client.login(name, salted_password=keys.salted_password, device=device)
        client.friend_list()

    def test_login_ok_carries_the_name_as_registered_login_in_any_case(self):
        """accounts: LOGIN_OK carries the name as registered, login in any case"""
        env = self.env
        name = env.new_name("MiXeD")
        client = env.connect()
        client.register(name, "pw", iterations=TEST_ITERATIONS)
        eq(client.login(name.lower(), "pw", device=env.device(name))["username"], name,
           "LOGIN_OK name")

    def test_a_taken_name_in_any_case_is_username_taken(self):
        """accounts: a taken name, in any case, is USERNAME_TAKEN"""
        env = self.env
        name = env.new_name("Dup")
        client = env.connect()
        client.register(name, "pw", iterations=TEST_ITERATIONS)
        expect_error("USERNAME_TAKEN", client.register, name, "pw", iterations=TEST_ITERATIONS)
        expect_error("USERNAME_TAKEN", client.register, name.upper(), "x", iterations=TEST_ITERATIONS)
        expect_error("USERNAME_TAKEN", client.register, name.lower(), "x", iterations=TEST_ITERATIONS)
        client.ping()
        client.login(name, "pw", device=env.device(name))

    def test_invalid_names_are_invalid_username(self):
        """accounts: invalid names are INVALID_USERNAME"""
        env = self.env
        client = env.connect()
        for bad in ("", "a" * 33, "has space", "\u00fcml\u00e4ut" + env.tag, "semi;colon",
                    "slash/" + env.tag, "at@" + env.tag, "tab\t" + env.tag):
            expect_error("INVALID_USERNAME", client.register, bad, "pw", iterations=TEST_ITERATIONS)
        longest = (env.new_name("x") + "_" * 32)[:32]
        client.register(longest, "pw", iterations=TEST_ITERATIONS)
        dotted = ("d.-_" + env.new_name())[:32]
        client.register(dotted, "pw", iterations=TEST_ITERATIONS)

    def test_weak_credentials_are_weak_credentials_and_store_nothing(self):
        """accounts: weak credentials are WEAK_CREDENTIALS and store nothing"""
        env = self.env
        client = env.connect()
        name = env.new_name()
        minimum = client.hello_info["min_kdf_iterations"]
        good = derive_keys("pw", bytes(16), minimum)

        def register(salt=bytes(16), iterations=minimum, stored=good.stored_key,
                     server=good.server_key):
            return client.request(Op.REGISTER, username=name, salt=salt, iterations=iterations,
                                  stored_key=stored, server_key=server)

        expect_error("WEAK_CREDENTIALS", register, iterations=1)
        expect_error("WEAK_CREDENTIALS", register, iterations=minimum - 1)
        expect_error("WEAK_CREDENTIALS", register, salt=bytes(15))
        expect_error("WEAK_CREDENTIALS", register, salt=bytes(65))
        expect_error("WEAK_CREDENTIALS", register, stored=bytes(31))
        expect_error("WEAK_CREDENTIALS", register, server=bytes(33))
        expect_error("WEAK_CREDENTIALS", register, stored=b"")
        client.register(name, "pw", iterations=TEST_ITERATIONS, salt=secrets.token_bytes(64))
        name = env.new_name()
        register()  # exactly the minimum is enough

    def test_wrong_password_is_auth_failed_connection_stays_right_one_works(self):
        """accounts: wrong password is AUTH_FAILED, connection stays, right one works"""
        env = self.env
        name = env.register()
        client = env.connect()
        expect_error("AUTH_FAILED", client.login, name, "not the password", device=env.device(name))
        client.ping()
        expect_error("NOT_AUTHENTICATED", client.friend_list)
        client.login(name, env.passwords[name], device=env.device(name))
        client.friend_list()

    def test_unknown_user_gets_a_stable_fake_challenge_and_auth_failed(self):
        """accounts: unknown user gets a stable fake challenge and AUTH_FAILED"""
        env = self.env
        real = env.register()
        ghost = env.new_name("ghost")
        device = env.device(ghost)
        client = env.connect()
        nonce = secrets.token_bytes(16)
        challenge = client.login_start(ghost, nonce)
        eq(len(challenge["salt"]), 16, "fake salt length")
        eq(challenge["iterations"], 600000, "fake iterations")
        check(challenge["nonce"].startswith(nonce), "nonce starts with the client nonce")
        eq(len(challenge["nonce"]), len(nonce) + 24, "nonce length")
        expect_error("AUTH_FAILED", client.login_finish, secrets.token_bytes(32), device)
        again = client.login_start(ghost.upper(), secrets.token_bytes(32))
        eq(again["salt"], challenge["salt"], "same fake salt for the same name, any case")
        check(again["nonce"][32:] != challenge["nonce"][16:], "fresh server nonce")
        expect_error("AUTH_FAILED", client.login_finish, secrets.token_bytes(32), device)
        genuine = client.login_start(real, secrets.token_bytes(16))
        eq((len(genuine["salt"]), genuine["iterations"]), (16, env.keys[real].iterations),
           "real challenge")
        eq(genuine["salt"], env.keys[real].salt, "real salt")
        expect_error("AUTH_FAILED", client.login_finish, secrets.token_bytes(32), device)

    def test_the_fifth_failed_login_is_too_many_attempts_and_a_close(self):
        """accounts: the fifth failed login is TOO_MANY_ATTEMPTS and a close"""
        env = self.env
        name = env.register()
        device = env.device(name)
        client = env.connect()
        for attempt in range(4):
            expect_error("AUTH_FAILED", client.login, name, "wrong %d" % attempt, device=device)
        client.login_start(name)
        client.send_raw(encode_message(Op.LOGIN_FINISH, 99, client_proof=bytes(32),
                                       device_id=device.device_id, device_name=device.name))
        frames = client.wait_closed(PUSH_TIMEOUT)
        errors = [f for f in frames if f.opcode == Op.ERROR]
        check(errors, "closed without ERROR: %r" % frames)
        eq(errors[0]["code"], code_of("TOO_MANY_ATTEMPTS"), "fifth failure")

    def test_login_finish_without_login_start_register_login_start_when_in_invalid(self):
        """accounts: LOGIN_FINISH without LOGIN_START, REGISTER/LOGIN_START when in: INVALID_STATE"""
        env = self.env
        name = env.register()
        device = env.device(name)
        client = env.connect()
        expect_error("INVALID_STATE", client.login_finish, bytes(32), device)
        client.login(name, env.passwords[name], device=device)
        expect_error("INVALID_STATE", client.register, env.new_name(), "pw",
                     iterations=TEST_ITERATIONS)
        expect_error("INVALID_STATE", client.login_start, name)
        expect_error("INVALID_STATE", client.login_finish, bytes(32), device)
        client.friend_list()

    def test_while_authenticating_register_login_start_are_invalid_state_login_goes(self):
        """accounts: while authenticating, REGISTER/LOGIN_START are INVALID_STATE; login goes on"""
        env = self.env
        name = env.register()
        client = env.connect()
        nonce = secrets.token_bytes(16)
        challenge = client.login_start(name, nonce)
        eq(len(challenge["nonce"]), len(nonce) + 24, "combined nonce length")
        check(challenge["nonce"].startswith(nonce), "combined nonce starts with ours")
        expect_error("INVALID_STATE", client.register, env.new_name(), "pw",
                     iterations=TEST_ITERATIONS)
        expect_error("INVALID_STATE", client.login_start, name)
        # finish_login checks the server's signature.
        client.finish_login(name, nonce, challenge, env.keys[name], env.device(name))
        client.friend_list()

    def test_a_failed_login_finish_returns_to_unauthenticated(self):
        """accounts: a failed LOGIN_FINISH returns to Unauthenticated"""
        env = self.env
        name = env.register()
        device = env.device(name)
        client = env.connect()
        client.login_start(name)
        expect_error("AUTH_FAILED", client.login_finish, secrets.token_bytes(32), device)
        expect_error("INVALID_STATE", client.login_finish, secrets.token_bytes(32), device)
        expect_error("NOT_AUTHENTICATED", client.friend_list)
        client.login(name, env.passwords[name], device=device)

    def test_messaging_before_login_is_not_authenticated_store_untouched(self):
        """accounts: messaging before login is NOT_AUTHENTICATED, store untouched"""
        env = self.env
        name = env.register()
        client = env.connect()
        requests = [
            (Op.FRIEND_REQUEST, {"username": name}), (Op.FRIEND_ACCEPT, {"username": name}),
            (Op.FRIEND_DECLINE, {"username": name}), (Op.FRIEND_REMOVE, {"username": name}),
            (Op.FRIEND_LIST, {}), (Op.SEND, {"to": name, "client_msg_id": 1, "body": "x"}),
            (Op.ACK, {"up_to_message_id": 1}),
            (Op.HISTORY, {"kind": 0, "peer": name, "direction": OLDER, "from_message_id": 0,
                          "limit": 5}),
            (Op.READ, {"peer": name, "up_to_message_id": 1}), (Op.GROUP_CREATE, {"name": "g"}),
            (Op.GROUP_INVITE, {"group_id": 1, "username": name}), (Op.GROUP_LEAVE, {"group_id": 1}),
            (Op.GROUP_MEMBERS, {"group_id": 1}), (Op.GROUP_LIST, {}),
            (Op.GROUP_SEND, {"group_id": 1, "client_msg_id": 1, "body": "x"}),
            (Op.DEVICE_LIST, {}), (Op.DEVICE_REMOVE, {"device_id": 1}), (Op.LOGOUT, {}),
        ]
        for opcode, fields in requests:
            expect_error("NOT_AUTHENTICATED", client.request, opcode, **fields)
        # While authenticating too; the pending login survives the refused request.
        nonce = secrets.token_bytes(16)
        challenge = client.login_start(name, nonce)
        expect_error("NOT_AUTHENTICATED", client.friend_list)
        keys = derive_keys(env.passwords[name], challenge["salt"], challenge["iterations"])
        client.finish_login(name, nonce, challenge, keys, env.device(name))
        backlog, count = client.wait_sync(PUSH_TIMEOUT)
        eq((backlog, count), ([], 0), "nothing was stored by the refused requests")
        eq([d["name"] for d in client.device_list()["devices"]], ["main"], "one device, this one")
