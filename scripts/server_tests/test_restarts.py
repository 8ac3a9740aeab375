"""End-to-end cases: durability, restart and shutdown (SIGKILL, a restart on the same
database, SIGTERM: each on the run's own server, so skipped with --addr)."""

from .support import *  # noqa: F401,F403 -- the shared vocabulary of every case


class RestartTests(ServerCase):
    """What survives SIGKILL and a restart, and how SIGTERM ends the sessions."""

    @own_server_only
    def test_a_message_answered_with_sent_survives_sigkill(self):
        """durability: a message answered with SENT survives SIGKILL"""
        env = self.env
        a, b = env.user("a"), env.user("b")
        make_friends(a, b)
        b.close()
        sent = a.send(b.username, "committed before SENT")
        env.server.kill()
        env.server.wait()
        env.close_all()
        env.server, env.host, env.port = start_server(env.workdir)
        b = env.login(b.username)
        eq([(f["message_id"], f["body"]) for f in b.backlog],
           [(sent["message_id"], "committed before SENT")], "backlog after SIGKILL")

    @own_server_only
    def test_accounts_devices_backlog_positions_and_retry_dedup_survive_a_restart(self):
        """restart: accounts, devices, backlog, positions and retry dedup survive a restart"""
        env = self.env
        a, b = env.user("a"), env.user("b")
        make_friends(a, b)
        phone = env.login(b.username, "phone")
        acked = a.send(b.username, "acknowledged by the phone only")
        phone.ack(phone.wait_push(Op.DELIVER, timeout=PUSH_TIMEOUT)["message_id"])
        b.close()
        phone.close()
        sent = a.send(b.username, "across the restart")
        cmid = a.last_client_msg_id
        env.close_all()
        stop_server(env.server)
        eq(env.server.returncode, 0, "exit status after SIGTERM")
        env.server, env.host, env.port = start_server(env.workdir)
        a = env.login(a.username)
        eq(a.send(b.username, "across the restart", client_msg_id=cmid).fields, sent.fields,
           "retry after restart")
        b = env.login(b.username)
        eq([f["message_id"] for f in b.backlog], [acked["message_id"], sent["message_id"]],
           "backlog after restart")
        eq(sorted(d["name"] for d in b.device_list()["devices"]), ["main", "phone"],
           "devices after restart")
        phone = env.login(b.username, "phone")
        eq([f["message_id"] for f in phone.backlog], [sent["message_id"]],
           "the phone's position after restart")
        newer = a.send(b.username, "after")
        check(newer["message_id"] > sent["message_id"], "ids keep increasing after a restart")

    @own_server_only
    def test_sigterm_sends_shutting_down_to_every_connection_and_exits_0(self):
        """shutdown: SIGTERM sends SHUTTING_DOWN to every connection and exits 0"""
        env = self.env
        a, b = env.user("a"), env.connect(hello=False)
        env.server.send_signal(signal.SIGTERM)
        for client in (a, b):
            expect_close_with(client, "SHUTTING_DOWN")
        eq(env.server.wait(timeout=10), 0, "exit status")
