"""End-to-end cases: connection limits and the idle timeout (servers of their own)."""

from .support import *  # noqa: F401,F403 -- the shared vocabulary of every case


class LimitsTests(ServerCase):
    """SERVER_FULL, IDLE_TIMEOUT and what resets the idle timer."""

    @own_server_only
    def test_hello_ok_shows_the_configured_limits_server_full_idle_timeout(self):
        """limits: HELLO_OK shows the configured limits; SERVER_FULL; IDLE_TIMEOUT"""
        env = self.env
        process, host, port = start_server(env.workdir, "limits.db", [
            "--max-connections", "2", "--idle-timeout", "2", "--max-frame", "8192",
            "--max-frame-before-login", "1024", "--max-body", "100", "--login-timeout", "7",
            "--min-kdf-iterations", "2000"])
        try:
            first = PatientClient().connect(host, port)
            second = PatientClient().connect(host, port)
            env.clients += [first, second]
            info = first.hello()
            eq((info["max_frame"], info["max_frame_before_login"], info["max_body"],
                info["idle_timeout_secs"], info["login_timeout_secs"], info["min_kdf_iterations"]),
               (8192, 1024, 100, 2, 7, 2000), "configured limits")
            second.ping()
            third = PatientClient().connect(host, port)
            env.clients.append(third)
            expect_close_with(third, "SERVER_FULL")
            # A frame over the before-login limit of this server.
            second.send_raw(struct.pack(">IBI", 1025, Op.PING, 7))
            expect_close_with(second, "FRAME_TOO_LARGE")
            name = env.new_name()
            eq(first.register(name, "pw", iterations=1000).iterations, 2000,
               "registered with the server's minimum, not fewer")
            first.login(name, "pw", device=Device.new("limits"))
            first.wait_sync(PUSH_TIMEOUT)
            expect_error("INVALID_BODY", first.group_send, LOBBY_GROUP_ID, "x" * 101)
            first.group_send(LOBBY_GROUP_ID, "x" * 100)
            started = time.monotonic()
            expect_close_with(first, "IDLE_TIMEOUT")
            waited = time.monotonic() - started
            check(1.0 <= waited <= 4.5, "idle close after %.1fs for a 2s timeout" % waited)
        finally:
            stop_server(process)

    @own_server_only
    def test_any_frame_resets_the_idle_timer_idle_close_pushes_presence_0(self):
        """limits: any frame resets the idle timer; idle close pushes PRESENCE 0"""
        env = self.env
        process, host, port = start_server(env.workdir, "idle.db", ["--idle-timeout", "2"])
        try:
            def login(name):
                client = PatientClient().connect(host, port)
                env.clients.append(client)
                client.hello()
                client.login(name, "pw", device=env.device(name))
                client.wait_sync(PUSH_TIMEOUT)
                return client

            names = [env.new_name("i"), env.new_name("w")]
            registrar = PatientClient().connect(host, port)
            env.clients.append(registrar)
            registrar.hello()
            for name in names:
                registrar.register(name, "pw", iterations=TEST_ITERATIONS)
            registrar.close()
            idler, watcher = login(names[0]), login(names[1])
            make_friends(idler, watcher)
            started = time.monotonic()
            # Three pings 1.2 s apart keep the idler open well past its 2 s timeout. Waiting for
            # a frame that must not come is the clock here: no sleep.
            for _ in range(3):
                for client in (idler, watcher):
                    try:
                        frame = client.recv_frame(timeout=0.6)
                    except TimeoutError:
                        continue
                    raise CheckFailed("unexpected frame while idle: %r" % (frame,))
                idler.ping()
                watcher.ping()
            check(time.monotonic() - started > 2.5, "pings spanned more than the timeout")
            # Now only the watcher pings; the idler must be closed and the watcher told.
            deadline = time.monotonic() + 6
            presence = None
            while presence is None and time.monotonic() < deadline:
                try:
                    presence = watcher.wait_push(Op.PRESENCE, from_user(names[0]), timeout=0.5)
                except TimeoutError:
                    watcher.ping()
            check(presence is not None, "no PRESENCE after the idle close")
            eq(presence["online"], 0, "presence after idle timeout")
            expect_close_with(idler, "IDLE_TIMEOUT")
        finally:
            stop_server(process)
