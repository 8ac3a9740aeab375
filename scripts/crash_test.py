#!/usr/bin/env python3
"""Crash-safety test of im-server: SIGKILL under load, and nothing acknowledged is lost.

Builds the release binary (`cargo build --release`; `--no-build` with `IM_SERVER_BIN` runs a
given binary instead), starts it on a temporary database, and runs several sender threads
that send direct messages to friends, pipelined, as fast as a small pause allows. Meanwhile
the server is killed with SIGKILL at random moments (`--kills` times, at least 20) and
restarted on the same database (on a new port). Senders reconnect and retry every message
they have no `SENT` for, with the same `client_msg_id`.

Then it checks, through the recipients and through the database:

* every message whose `SENT` a sender received is stored, under the id `SENT` gave;
* nothing is stored twice (retries are idempotent) and nothing is stored that no `SENT`
  acknowledged (the senders retry until every message is acknowledged);
* each recipient's offline backlog holds each of its messages exactly once, in strictly
  increasing id order, and after its `ACK` a new login of the same device gets none of them
  again (every user logs in as one device of its own, kept for the whole run, as a real
  client keeps its device id);
* `PRAGMA integrity_check` is `ok`, on a copy taken right after a SIGKILL and at the end.

Prints the counts (sent, acknowledged, found, lost, duplicated) and `N passed, N failed`
last; exits 1 if any check failed. Standard library only; speaks the protocol through
scripts/imclient.py.
"""

import argparse
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from imclient import (  # noqa: E402
    AuthenticationError, Client, Device, Op, ProtocolError, ServerError, derive_keys,
    last_item_id)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# IM_SERVER_BIN overrides the binary (as in tests/scripts.rs); `--no-build` then skips cargo.
BINARY = os.environ.get("IM_SERVER_BIN") or os.path.join(REPO, "target", "release", "im-server")
ITERATIONS = 1000
PASSWORD = "crash-test password"
STARTUP_TIMEOUT = 30.0
# Requests a sender has in flight at once: a kill usually catches several unanswered.
WINDOW = 4
# Pause between a sender's windows, so a run stores tens of thousands of messages, not millions.
PAUSE = 0.02


class ServerProcess:
    """The server on one database; `start` after every kill picks a new port."""

    def __init__(self, db):
        self.db = db
        self.process = None
        self.addr = None
        self.lock = threading.Lock()

    def start(self):
        process = subprocess.Popen(
            [BINARY, "--listen", "127.0.0.1:0", "--db", self.db,
             "--min-kdf-iterations", str(ITERATIONS),
             # Load from loopback (exempt from the registration limit): no send-rate or
             # offline-queue limits.
             "--send-rate", "0", "--max-offline", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        line = process.stdout.readline().decode().strip()
        if not line.startswith("listening on "):
            process.kill()
            raise RuntimeError("the server did not start: %r" % line)
        host, port = line[len("listening on "):].rsplit(":", 1)
        with self.lock:
            self.process = process
            self.addr = (host, int(port))

    def address(self):
        with self.lock:
            return self.addr

    def kill(self):
        with self.lock:
            process, self.addr = self.process, None
        process.send_signal(signal.SIGKILL)
        process.wait()

    def stop(self):
        """SIGTERM and wait; returns the exit status."""
        with self.lock:
            process, self.addr = self.process, None
        process.send_signal(signal.SIGTERM)
        return process.wait(timeout=30)


class Message:
    __slots__ = ("to", "client_msg_id", "body", "message_id", "attempts", "last_attempt_ms",
                 "original")

    def __init__(self, to, client_msg_id, body):
        self.to = to
        self.client_msg_id = client_msg_id
        self.body = body
        self.message_id = None
        self.attempts = 0
        self.last_attempt_ms = 0
        # Set when a retry was answered with the SENT of an attempt that had been stored
        # before a kill (its timestamp predates the retry).
        self.original = False


class Sender(threading.Thread):
    """Sends to its friends until told to stop; every message is retried until acknowledged."""

    def __init__(self, server, name, keys, device, friends):
        super().__init__(name=name, daemon=True)
        self.server = server
        self.username = name
        self.keys = keys
        self.device = device
        self.friends = friends
        self.messages = []        # every message this sender made, in order
        self.unacked = []         # those without SENT yet, oldest first
        self.errors = []          # unexpected answers
        self.stop_new = threading.Event()
        self.client = None
        self.reconnects = 0
        self.next_id = random.getrandbits(63)

    def connect(self):
        while True:
            addr = self.server.address()
            if addr is not None:
                client = Client(timeout=5.0)
                try:
                    client.connect(*addr)
                    client.hello()
                    client.login(self.username, keys=self.keys, device=self.device)
                    self.client = client
                    return
                except (OSError, ServerError, ProtocolError, AuthenticationError, ValueError):
                    client.close()
            time.sleep(0.02)

    def new_message(self):
        index = len(self.messages)
        to = self.friends[index % len(self.friends)]
        self.next_id += 1
        body = "crash-test %s->%s #%d" % (self.username, to, index)
        message = Message(to, self.next_id, body)
        self.messages.append(message)
        self.unacked.append(message)

    def run(self):
        while True:
            if self.stop_new.is_set() and not self.unacked:
                break
            if not self.stop_new.is_set():
                while len(self.unacked) < WINDOW:
                    self.new_message()
            if self.client is None:
                self.connect()
                self.reconnects += 1
            batch = self.unacked[:WINDOW]
            try:
                ids = []
                for message in batch:
                    message.attempts += 1
                    message.last_attempt_ms = int(time.time() * 1000)
                    ids.append(self.client.send_request(Op.SEND, to=message.to,
                                                        client_msg_id=message.client_msg_id,
                                                        body=message.body))
                for message, request_id in zip(batch, ids):
                    try:
                        sent = self.client.wait_response(request_id)
                    except ServerError as e:
                        if e.name != "STORE_UNAVAILABLE":
                            self.errors.append("%s: %s" % (message.body, e))
                        continue
                    message.message_id = sent["message_id"]
                    message.original = (message.attempts > 1
                                        and sent["timestamp_ms"] < message.last_attempt_ms)
                    self.unacked.remove(message)
                self.client.drain_pushes()
            except (OSError, ProtocolError, ValueError):
                # Killed mid-window: what has no SENT is retried, same client_msg_id.
                self.client.close()
                self.client = None
                continue
            time.sleep(PAUSE)
        if self.client is not None:
            self.client.close()


class Checks:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, condition, what, detail=""):
        if condition:
            self.passed += 1
            print("ok    %s" % what)
        else:
            self.failed += 1
            print("FAIL  %s%s" % (what, (": " + detail) if detail else ""))


def signed64(value):
    return value - (1 << 64) if value >= 1 << 63 else value


def integrity(path):
    db = sqlite3.connect(path)
    try:
        return db.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        db.close()


def copy_and_check_integrity(db, workdir):
    """Copies the database and its WAL as a crash left them, and checks the copy."""
    copy = os.path.join(workdir, "after-kill.db")
    for suffix in ("", "-wal"):
        if os.path.exists(db + suffix):
            shutil.copyfile(db + suffix, copy + suffix)
    return integrity(copy)


def setup_users(server, senders, recipients):
    """Registers everyone and makes each sender a friend of each of its recipients.

    Returns the keys (one password for all), each user's device, and each sender's friends.
    """
    # One salt and password for everyone, so the slow PBKDF2 step runs once, not per user.
    keys = derive_keys(PASSWORD, bytes(range(16)), ITERATIONS)
    devices = {name: Device.new("crash-test " + name) for name in senders + recipients}
    clients = {}
    for name in senders + recipients:
        c = Client(timeout=10.0).connect(*server.address())
        c.hello()
        c.register(name, keys=keys)
        c.login(name, keys=keys, device=devices[name])
        c.wait_sync()
        clients[name] = c
    friends = {}
    for i, sender in enumerate(senders):
        friends[sender] = [recipients[i % len(recipients)], recipients[(i + 1) % len(recipients)]]
        for recipient in friends[sender]:
            clients[sender].friend_request(recipient)
            clients[recipient].friend_accept(sender)
    for c in clients.values():
        c.close()
    return keys, devices, friends


def receive_backlog(server, name, keys, device):
    """Logs in as `device`, returns the DELIVER pushes of the backlog, ACKs the newest item,
    logs out."""
    c = Client(timeout=30.0).connect(*server.address())
    c.hello()
    c.login(name, keys=keys, device=device)
    backlog, _count = c.wait_sync(timeout=120.0)
    delivers = [f for f in backlog if f.opcode == Op.DELIVER]
    if backlog:
        c.ack(last_item_id(backlog))
    c.logout()
    c.close()
    return delivers


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=22, help="SIGKILLs under load (at least 20)")
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--recipients", type=int, default=3)
    parser.add_argument("--min-uptime", type=float, default=0.3, help="seconds, before a kill")
    parser.add_argument("--max-uptime", type=float, default=1.5, help="seconds, before a kill")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--no-build", action="store_true",
                        help="use the binary as it is, without cargo")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    random.seed(seed)
    print("seed %d" % seed)

    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=REPO, check=True)
    checks = Checks()
    started = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="im-crash-test-")
    server = None
    try:
        db = os.path.join(workdir, "crash.db")
        server = ServerProcess(db)
        server.start()
        sender_names = ["sender%d" % i for i in range(args.senders)]
        recipient_names = ["recipient%d" % i for i in range(args.recipients)]
        keys, devices, friends = setup_users(server, sender_names, recipient_names)

        senders = [Sender(server, name, keys, devices[name], friends[name])
                   for name in sender_names]
        for s in senders:
            s.start()
        kills = 0
        for _ in range(args.kills):
            time.sleep(random.uniform(args.min_uptime, args.max_uptime))
            server.kill()
            kills += 1
            server.start()
        # Let the senders finish what they have in flight, then stop for good.
        time.sleep(0.5)
        for s in senders:
            s.stop_new.set()
        for s in senders:
            s.join(timeout=60)
        stuck = [s.name for s in senders if s.is_alive()]
        checks.check(kills >= 20, "the server was killed with SIGKILL under load %d times" % kills)
        checks.check(not stuck, "every sender got SENT for every message",
                     "still retrying: %s" % stuck)
        errors = [e for s in senders for e in s.errors]
        checks.check(not errors, "no SEND was refused", "; ".join(errors[:5]))

        # One more kill with everything acknowledged, and a look at the files it leaves.
        server.kill()
        kills += 1
        result = copy_and_check_integrity(db, workdir)
        checks.check(result == "ok", "integrity_check right after a SIGKILL is ok", result)
        server.start()

        messages = [m for s in senders for m in s.messages]
        acked = {m.message_id: (s.username, m)
                 for s in senders for m in s.messages if m.message_id is not None}
        attempts = sum(m.attempts for m in messages)
        retried = sum(1 for m in messages if m.attempts > 1)
        originals = sum(1 for m in messages if m.original)

        # Through the recipients: each message exactly once, then never again after ACK.
        seen = {}
        wrong = []
        unordered = []
        for name in recipient_names:
            backlog = receive_backlog(server, name, keys, devices[name])
            ids = [frame["message_id"] for frame in backlog]
            if any(x >= y for x, y in zip(ids, ids[1:])):
                unordered.append(name)
            for frame in backlog:
                mid = frame["message_id"]
                seen[mid] = seen.get(mid, 0) + 1
                owner = acked.get(mid)
                if owner is None:
                    wrong.append("unacknowledged id %d (%r) delivered to %s"
                                 % (mid, frame["body"], name))
                elif (frame["from"], frame["to"], frame["body"]) != (owner[0], name, owner[1].body):
                    wrong.append("id %d delivered to %s as %r from %s"
                                 % (mid, name, frame["body"], frame["from"]))
        delivered_once = sum(1 for mid in acked if seen.get(mid) == 1)
        not_delivered = [mid for mid in acked if mid not in seen]
        delivered_twice = [mid for mid, n in seen.items() if n > 1]
        checks.check(not not_delivered, "every acknowledged message reached its recipient",
                     "%d missing, e.g. %s" % (len(not_delivered), not_delivered[:5]))
        checks.check(not delivered_twice, "no message reached its recipient twice",
                     "%d twice, e.g. %s" % (len(delivered_twice), delivered_twice[:5]))
        checks.check(not wrong, "recipients got only acknowledged messages, as sent",
                     "; ".join(wrong[:5]))
        checks.check(not unordered, "each backlog arrived in strictly increasing id order",
                     "out of order for %s" % unordered)
        again = sum(len(receive_backlog(server, name, keys, devices[name]))
                    for name in recipient_names)
        checks.check(again == 0, "after ACK, a new login is pushed nothing again",
                     "%d redelivered" % again)

        status = server.stop()
        checks.check(status == 0, "the server exits 0 on SIGTERM", "exit status %s" % status)

        # Through the database, read-only.
        ro = sqlite3.connect("file:%s?mode=ro" % db, uri=True)
        users = dict(ro.execute("SELECT name, id FROM users"))
        sender_ids = {users[name]: name for name in sender_names}
        rows = ro.execute(
            "SELECT id, sender, client_msg_id, body FROM messages WHERE kind = 0 AND sender IN (%s)"
            % ",".join(str(i) for i in sender_ids)).fetchall()
        ro_integrity = ro.execute("PRAGMA integrity_check").fetchone()[0]
        ro.close()
        by_id = {row[0]: row for row in rows}
        per_key = {}
        for row in rows:
            per_key[(row[1], row[2])] = per_key.get((row[1], row[2]), 0) + 1
        found = 0
        lost = []
        for mid, (sender, m) in acked.items():
            row = by_id.get(mid)
            if row is None:
                lost.append(mid)
                continue
            body = row[3].decode() if isinstance(row[3], bytes) else row[3]
            expected = (sender, signed64(m.client_msg_id), m.body)
            if (sender_ids.get(row[1]), row[2], body) == expected:
                found += 1
            else:
                lost.append(mid)
        duplicated = sum(n - 1 for n in per_key.values() if n > 1)
        phantoms = [row[0] for row in rows if row[0] not in acked]
        checks.check(not lost, "every acknowledged message is stored under its SENT id",
                     "%d lost, e.g. %s" % (len(lost), lost[:5]))
        checks.check(duplicated == 0, "no (sender, client_msg_id) is stored twice",
                     "%d duplicates" % duplicated)
        checks.check(not phantoms, "nothing is stored that was not acknowledged",
                     "%d, e.g. %s" % (len(phantoms), phantoms[:5]))
        checks.check(ro_integrity == "ok", "integrity_check at the end is ok", ro_integrity)

        print()
        print("kills %d, reconnects %d, seconds %.1f" % (kills, sum(s.reconnects for s in senders),
                                                          time.monotonic() - started))
        print("sent %d (SEND requests %d; messages retried %d, of which %d were answered with "
              "the SENT of an attempt stored before a kill)"
              % (len(messages), attempts, retried, originals))
        print("acknowledged %d, found %d, delivered once %d, lost %d, duplicated %d"
              % (len(acked), found, delivered_once, len(lost), duplicated + len(delivered_twice)))
    finally:
        if server is not None and server.process is not None and server.process.poll() is None:
            server.process.kill()
            server.process.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    print("%d passed, %d failed" % (checks.passed, checks.failed))
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
