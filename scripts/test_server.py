#!/usr/bin/env python3
"""End-to-end test of im-server against PROTOCOL.md (version 2), through scripts/imclient.py.

With no arguments: builds the server (`cargo build` in the repository root), starts
`target/debug/im-server` on 127.0.0.1:0 with a database in a temporary directory and a low
`--min-kdf-iterations`, runs every case, and stops the server. With `--addr HOST:PORT`: runs
against a server that is already running, with its default flags or any others: keys are
derived with at least the `min_kdf_iterations` of HELLO_OK and sends that meet `RETRY_LATER`
wait and retry. Before any case runs, one check says in one line what to change if that
server cannot run them (not reachable, another protocol version, registrations limited from
this address). User names are random, so the script can run again and again on the same
database; the cases that need a server of their own (limits, device caps, idle timeout,
durability, restart, shutdown) are skipped. `-k TEXT` runs only the cases whose name
contains TEXT.

With `--tls`, every case talks TLS: the server it starts also listens for TLS (on a
certificate made with scripts/make-cert.sh) and the cases use that port only; with `--addr`,
the server's certificate must verify against the system's trust store, or against `--ca FILE`.

Every login names a device: `Env.device(name, label)` keeps one stable id per user and label
("main" unless a case says otherwise), as a real client keeps its id from run to run.

Prints one line per case and `N passed, N failed` last; exits 1 if any case failed.
Nothing here sleeps for an event: every wait blocks on a socket with a timeout. The only
sleeps are the waits a `RETRY_LATER` asks for (a send rate, a login throttle).
"""

import argparse
import contextlib
import os
import secrets
import select
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import imclient  # noqa: E402
from imclient import (  # noqa: E402
    FRIEND_ACCEPTED, FRIEND_ASKED, FRIEND_DECLINED, FRIEND_REMOVED, FRIEND_YOU_ACCEPTED,
    FRIEND_YOU_ASKED, FRIEND_YOU_DECLINED, FRIEND_YOU_REMOVED, GROUP_JOINED, GROUP_LEFT,
    KIND_DIRECT, KIND_GROUP, LOBBY_GROUP_ID, NEWER, OLDER, Client, ConnectionClosed, Device, Op,
    ProtocolError, ServerError, auth_message, client_proof, derive_keys, encode_frame,
    encode_message, is_item, last_item_id, new_device_id, server_signature)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Registering asks for this many PBKDF2 iterations; the client raises it to the server's
# min_kdf_iterations (HELLO_OK), so a server with default flags gets its 100,000.
TEST_ITERATIONS = 4096
MIN_KDF_ITERATIONS = 1000
PUSH_TIMEOUT = 5.0
STARTUP_TIMEOUT = 30.0
# The flags of the test's own server: bursts of sends, so those limits are off (loopback is
# exempt from the registration limit by default). A case that needs a limit starts a server
# of its own.
OWN_SERVER_FLAGS = ["--min-kdf-iterations", str(MIN_KDF_ITERATIONS), "--send-rate", "0",
                    "--max-offline", "0"]
# Registrations the `--addr` check tries: one more than the default --register-limit (5).
REGISTRATION_PROBES = 6
EVERYTHING = 2 ** 64 - 1

CASES = []


def case(name, own_server_only=False):
    """Register a test case: a function taking the Env."""
    def register(function):
        CASES.append((name, function, own_server_only))
        return function
    return register


class CheckFailed(AssertionError):
    pass


def check(condition, what):
    if not condition:
        raise CheckFailed(what)


def eq(actual, expected, what):
    if actual != expected:
        raise CheckFailed("%s: got %r, expected %r" % (what, actual, expected))


def expect_error(error_name, function, /, *args, **kwargs):
    """Call `function`; it must raise ServerError `error_name`. Returns the error."""
    try:
        result = function(*args, **kwargs)
    except ServerError as error:
        if error.name != error_name:
            raise CheckFailed("expected %s, got %s" % (error_name, error)) from None
        return error
    raise CheckFailed("expected %s, got success %r" % (error_name, result))


# The TLS context every client of the run uses (`--tls`), or None for plain TCP; with a server
# of its own, the certificate and key that server is started with.
TLS = None
TLS_CERT = TLS_KEY = None


class PatientClient(Client):
    """imclient's Client, but a LOGIN_START answered RETRY_LATER LOGIN_THROTTLED waits as
    asked and is sent again. These cases fail logins on purpose, and a server with default
    flags makes a source wait once it failed many lately (several runs in a row with --addr).
    """

    def __init__(self, timeout=imclient.DEFAULT_TIMEOUT):
        super().__init__(timeout, tls=TLS)

    def request(self, opcode, /, timeout=None, **fields):
        while True:
            try:
                return super().request(opcode, timeout=timeout, **fields)
            except ServerError as error:
                if opcode != Op.LOGIN_START or error.name != "LOGIN_THROTTLED":
                    raise
                time.sleep(error.retry_after_ms / 1000)


class Env:
    """The server under test and the clients of the running case."""

    def __init__(self, host, port, own_server):
        self.host = host
        self.port = port
        self.own_server = own_server
        self.tag = secrets.token_hex(3)
        self.serial = 0
        self.passwords = {}
        self.keys = {}
        self.devices = {}
        self.clients = []
        self.server = None
        self.workdir = None

    # Names and accounts ----------------------------------------------------------------------

    def new_name(self, label="u"):
        """A fresh valid user name, unique across runs: `t<random>_<n><label>`."""
        self.serial += 1
        return ("t%s_%d%s" % (self.tag, self.serial, label))[:32]

    def connect(self, hello=True):
        client = PatientClient(timeout=10.0).connect(self.host, self.port)
        self.clients.append(client)
        if hello:
            client.hello()
        return client

    def register(self, label="u", password=None):
        """Register a fresh user on a throwaway connection; returns the name."""
        name = self.new_name(label)
        password = password or secrets.token_urlsafe(12)
        client = self.connect()
        self.keys[name] = client.register(name, password, iterations=TEST_ITERATIONS)
        self.passwords[name] = password
        client.close()
        return name

    def device(self, name, label="main"):
        """The device called `label` of user `name`: the same id every time it is asked for."""
        key = (name.lower(), label)
        if key not in self.devices:
            self.devices[key] = Device.new(label)
        return self.devices[key]

    def login(self, name, device="main"):
        """A new logged-in connection for `name` as its device `device`, after SYNC_DONE.

        The items pushed at login are in `client.backlog`, the SYNC_DONE count in
        `client.sync_count`, a SYNC_GAP (or None) in `client.sync_gap`.
        """
        client = self.connect()
        client.login(name, self.passwords[name], device=self.device(name, device),
                     keys=self.keys.get(name))
        client.backlog, client.sync_count = client.wait_sync(PUSH_TIMEOUT)
        return client

    def user(self, label="u"):
        return self.login(self.register(label))

    def close_all(self):
        for client in self.clients:
            client.close()
        self.clients = []


@contextlib.contextmanager
def side_server(env, db_name, extra):
    """A server of the case's own, started with the test flags plus `extra`, as an Env."""
    process, host, port = start_server(env.workdir, db_name, extra)
    side = Env(host, port, own_server=True)
    side.workdir = env.workdir
    try:
        yield side
    finally:
        side.close_all()
        stop_server(process)


def make_friends(a, b):
    """Make the logged-in users of `a` and `b` friends; ack the events; drop presence noise."""
    eq(a.friend_request(b.username)["outcome"], 0, "friend request outcome")
    asked = b.wait_push(Op.FRIEND_EVENT, lambda f: (f["username"] == a.username
                                                    and f["event"] == FRIEND_ASKED),
                        timeout=PUSH_TIMEOUT)
    b.friend_accept(a.username)
    accepted = a.wait_push(Op.FRIEND_EVENT, lambda f: (f["username"] == b.username
                                                       and f["event"] == FRIEND_ACCEPTED),
                           timeout=PUSH_TIMEOUT)
    b.ack(asked["message_id"])
    a.ack(accepted["message_id"])
    # The protocol does not say whether becoming friends pushes PRESENCE: drop any, so that
    # later presence checks see only what they cause.
    for client in (a, b):
        client.ping()
        client.pushes = type(client.pushes)(f for f in client.pushes if f.opcode != Op.PRESENCE)


def is_deliver(sender=None, body=None, group_id=None):
    def predicate(frame):
        return ((sender is None or frame["from"] == sender)
                and (body is None or frame["body"] == body)
                and (group_id is None or frame.get("group_id") == group_id))
    return predicate


def from_user(name):
    return lambda frame: frame["username"] == name


def response_frame(client, request_id, timeout=None):
    """The frame answering `request_id`, ERROR included (no exception)."""
    try:
        return client.wait_response(request_id, timeout)
    except ServerError as error:
        return error


def expect_raw_error(client, data, request_id, name):
    """Send raw bytes; the response to `request_id` must be ERROR `name`."""
    client.send_raw(data)
    answer = response_frame(client, request_id)
    check(isinstance(answer, ServerError), "expected %s, got %r" % (name, answer))
    eq(answer.name, name, "error for %s" % data[:16].hex())


def expect_close_with(client, name):
    """The server must send ERROR `name` with request id 0 and then close."""
    frames = client.wait_closed(PUSH_TIMEOUT)
    errors = [f for f in frames if f.opcode == Op.ERROR]
    check(errors, "connection closed without an ERROR (frames %r)" % frames)
    eq(errors[-1].request_id, 0, "request id of the closing ERROR")
    eq(errors[-1]["code"], _code(name), "closing error code (message %r)"
       % errors[-1]["message"])


def pushes_until(client, opcode, timeout=PUSH_TIMEOUT):
    """Every push, in arrival order, up to and including the first `opcode`, for cases that
    check the order of pushes of different kinds."""
    frames = []
    deadline = time.monotonic() + timeout
    while not frames or frames[-1].opcode != opcode:
        frames.append(client.wait_push(timeout=max(deadline - time.monotonic(), 0)))
    return frames


def items_until(client, predicate, timeout=PUSH_TIMEOUT):
    """The items pushed to `client` up to and including the first one matching `predicate`."""
    items = []
    deadline = time.monotonic() + timeout
    while not items or not predicate(items[-1]):
        items.append(client.wait_push(predicate=is_item,
                                      timeout=max(deadline - time.monotonic(), 0)))
    return items


def increasing(ids):
    return all(x < y for x, y in zip(ids, ids[1:]))


def send_paced(client, body, to=None, group_id=None, client_msg_id=None):
    """SEND (or GROUP_SEND to `group_id`), waiting out RETRY_LATER: a server with default
    flags allows --send-rate per second after a burst. The retry keeps its client_msg_id."""
    client_msg_id = client.next_client_msg_id() if client_msg_id is None else client_msg_id
    while True:
        try:
            if group_id is None:
                return client.send(to, body, client_msg_id=client_msg_id)
            return client.group_send(group_id, body, client_msg_id=client_msg_id)
        except ServerError as error:
            if error.retry_after_ms is None:
                raise
            time.sleep(error.retry_after_ms / 1000)


def _code(name):
    return imclient.ERROR_CODES[name]


def _u16str(text):
    data = text.encode("utf-8") if isinstance(text, str) else text
    return struct.pack(">H", len(data)) + data


# ---------------------------------------------------------------------------------------------
# Handshake, framing and hostile input
# ---------------------------------------------------------------------------------------------

@case("client: encoders match PROTOCOL.md section 7, SCRAM matches RFC 7677")
def _(env):
    check(imclient.self_test() > 0, "self-test ran no check")


@case("hello: HELLO_OK carries version 2, the limits, the login timeout and the KDF minimum")
def _(env):
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


@case("hello: the byte example of PROTOCOL.md section 7 (a server with default flags)")
def _(env):
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


@case("hello: versions 1 and 3 are UNSUPPORTED_VERSION and a close")
def _(env):
    for version in (1, 3):
        client = env.connect(hello=False)
        client.send_raw(encode_message(Op.HELLO, 1, version=version))
        frames = client.wait_closed(PUSH_TIMEOUT)
        errors = [f for f in frames if f.opcode == Op.ERROR]
        check(errors, "no ERROR before the close: %r" % frames)
        eq(errors[0]["code"], _code("UNSUPPORTED_VERSION"), "error code for version %d" % version)
        eq(errors[0].request_id, 1, "the error answers request 1")


@case("hello: a second HELLO is INVALID_STATE")
def _(env):
    client = env.connect()
    expect_error("INVALID_STATE", client.hello)
    client.ping()


@case("hello: requests before HELLO are HELLO_REQUIRED, PING works")
def _(env):
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


@case("ping: PONG in every state")
def _(env):
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


@case("framing: frames split byte by byte and many in one write")
def _(env):
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
    eq(answers[1]["code"], _code("UNKNOWN_OPCODE"), "unknown opcode in a batch")
    eq(answers[3]["code"], _code("NOT_AUTHENTICATED"), "FRIEND_LIST before login")


@case("framing: unknown opcodes are UNKNOWN_OPCODE in every state, connection stays")
def _(env):
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


@case("framing: malformed bodies are MALFORMED_FRAME, connection stays")
def _(env):
    name = env.register()
    client = env.connect(hello=False)
    expect_raw_error(client, encode_frame(Op.HELLO, 21, b"\x00"), 21, "MALFORMED_FRAME")
    expect_raw_error(client, encode_frame(Op.HELLO, 22, b"\x00\x02\x00"), 22, "MALFORMED_FRAME")
    expect_raw_error(client, encode_frame(Op.PING, 23, b"\x00"), 23, "MALFORMED_FRAME")
    client.hello()
    bad_utf8 = (b"\x00\x02\xc3\x28" + _u16str(bytes(16)) + struct.pack(">I", 5000)
                + _u16str(bytes(32)) + _u16str(bytes(32)))
    expect_raw_error(client, encode_frame(Op.REGISTER, 24, bad_utf8), 24, "MALFORMED_FRAME")
    expect_raw_error(client, encode_frame(Op.REGISTER, 25, bad_utf8[:-3]), 25,
                     "MALFORMED_FRAME")
    expect_raw_error(client, encode_frame(Op.LOGIN_START, 26, b"\x00\x09abc"), 26,
                     "MALFORMED_FRAME")
    # A version 1 LOGIN_FINISH (the proof alone) lacks the device fields; a body that does not
    # parse is MALFORMED_FRAME whatever the state.
    expect_raw_error(client, encode_frame(Op.LOGIN_FINISH, 34, _u16str(bytes(32))), 34,
                     "MALFORMED_FRAME")
    device_name_bad_utf8 = _u16str(bytes(32)) + struct.pack(">Q", 5) + b"\x00\x01\xff"
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
    send_bad_body = _u16str("x") + struct.pack(">Q", 1) + b"\x00\x01\xff"
    expect_raw_error(client, encode_frame(Op.SEND, 29, send_bad_body), 29, "MALFORMED_FRAME")
    surrogate = _u16str("x") + struct.pack(">Q", 1) + b"\x00\x03\xed\xa0\x80"
    expect_raw_error(client, encode_frame(Op.SEND, 32, surrogate), 32, "MALFORMED_FRAME")
    overlong = _u16str("x") + struct.pack(">Q", 1) + b"\x00\x02\xc0\xaf"
    expect_raw_error(client, encode_frame(Op.SEND, 33, overlong), 33, "MALFORMED_FRAME")
    expect_raw_error(client, encode_frame(Op.ACK, 30, b"\x00\x01"), 30, "MALFORMED_FRAME")
    expect_raw_error(client, encode_frame(Op.DEVICE_LIST, 38, b"\x00"), 38, "MALFORMED_FRAME")
    expect_raw_error(client, encode_frame(Op.DEVICE_REMOVE, 39, bytes(7)), 39,
                     "MALFORMED_FRAME")
    client.ping()
    client.friend_list()


@case("framing: length below 5 is MALFORMED_FRAME with request id 0 and a close")
def _(env):
    client = env.connect()
    client.send_raw(b"\x00\x00\x00\x04")
    expect_close_with(client, "MALFORMED_FRAME")


@case("framing: oversized frame before login is FRAME_TOO_LARGE and a close")
def _(env):
    client = env.connect(hello=False)
    client.send_raw(struct.pack(">IBI", 4097, Op.PING, 1))
    expect_close_with(client, "FRAME_TOO_LARGE")
    client = env.connect()
    client.send_raw(b"\xff\xff\xff\xff")
    expect_close_with(client, "FRAME_TOO_LARGE")


@case("framing: oversized frame after login is FRAME_TOO_LARGE, a close, and PRESENCE 0")
def _(env):
    client, friend = env.user(), env.user("f")
    make_friends(client, friend)
    name = client.username
    limit = client.hello_info["max_frame"]
    client.send_raw(struct.pack(">IBI", limit + 1, Op.SEND, 1))
    expect_close_with(client, "FRAME_TOO_LARGE")
    eq(friend.wait_push(Op.PRESENCE, from_user(name), PUSH_TIMEOUT)["online"], 0,
       "friend sees the closed user go offline")


@case("framing: a frame of exactly the before-login limit is read and answered")
def _(env):
    client = env.connect()
    limit = client.hello_info["max_frame_before_login"]
    fixed = 4 + 2 + 16 + 4 + 2 + 32 + 2 + 32 + 2  # request id, salt, iterations, keys, name len
    username = "a" * (limit - 1 - fixed)
    body = (_u16str(username) + _u16str(bytes(16)) + struct.pack(">I", TEST_ITERATIONS)
            + _u16str(bytes(32)) + _u16str(bytes(32)))
    data = encode_frame(Op.REGISTER, 31, body)
    eq(len(data) - 4, limit, "frame length")
    client.send_raw(data)
    answer = response_frame(client, 31)
    check(isinstance(answer, ServerError) and answer.name in ("INVALID_USERNAME",
                                                              "WEAK_CREDENTIALS"),
          "answer to a REGISTER at the limit: %r" % answer)
    client.ping()


@case("framing: a frame of exactly max_frame after login is read and answered")
def _(env):
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


@case("framing: request ids are echoed as sent, up to 0xFFFFFFFF")
def _(env):
    client = env.connect()
    for request_id in (0xFFFFFFFF, 0x80000000, 0x01020304):
        client.send_raw(encode_frame(Op.PING, request_id))
        answer = client.recv_frame()
        eq((answer.name, answer.request_id), ("PONG", request_id), "PONG")


# ---------------------------------------------------------------------------------------------
# Accounts
# ---------------------------------------------------------------------------------------------

@case("accounts: register, login (server signature checked), logout, login again")
def _(env):
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


@case("accounts: LOGIN_OK carries the name as registered, login in any case")
def _(env):
    name = env.new_name("MiXeD")
    client = env.connect()
    client.register(name, "pw", iterations=TEST_ITERATIONS)
    eq(client.login(name.lower(), "pw", device=env.device(name))["username"], name,
       "LOGIN_OK name")


@case("accounts: a taken name, in any case, is USERNAME_TAKEN")
def _(env):
    name = env.new_name("Dup")
    client = env.connect()
    client.register(name, "pw", iterations=TEST_ITERATIONS)
    expect_error("USERNAME_TAKEN", client.register, name, "pw", iterations=TEST_ITERATIONS)
    expect_error("USERNAME_TAKEN", client.register, name.upper(), "x", iterations=TEST_ITERATIONS)
    expect_error("USERNAME_TAKEN", client.register, name.lower(), "x", iterations=TEST_ITERATIONS)
    client.ping()
    client.login(name, "pw", device=env.device(name))


@case("accounts: invalid names are INVALID_USERNAME")
def _(env):
    client = env.connect()
    for bad in ("", "a" * 33, "has space", "\u00fcml\u00e4ut" + env.tag, "semi;colon",
                "slash/" + env.tag, "at@" + env.tag, "tab\t" + env.tag):
        expect_error("INVALID_USERNAME", client.register, bad, "pw", iterations=TEST_ITERATIONS)
    longest = (env.new_name("x") + "_" * 32)[:32]
    client.register(longest, "pw", iterations=TEST_ITERATIONS)
    dotted = ("d.-_" + env.new_name())[:32]
    client.register(dotted, "pw", iterations=TEST_ITERATIONS)


@case("accounts: weak credentials are WEAK_CREDENTIALS and store nothing")
def _(env):
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


@case("accounts: wrong password is AUTH_FAILED, connection stays, right one works")
def _(env):
    name = env.register()
    client = env.connect()
    expect_error("AUTH_FAILED", client.login, name, "not the password", device=env.device(name))
    client.ping()
    expect_error("NOT_AUTHENTICATED", client.friend_list)
    client.login(name, env.passwords[name], device=env.device(name))
    client.friend_list()


@case("accounts: unknown user gets a stable fake challenge and AUTH_FAILED")
def _(env):
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


@case("accounts: the fifth failed login is TOO_MANY_ATTEMPTS and a close")
def _(env):
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
    eq(errors[0]["code"], _code("TOO_MANY_ATTEMPTS"), "fifth failure")


@case("accounts: LOGIN_FINISH without LOGIN_START, REGISTER/LOGIN_START when in: INVALID_STATE")
def _(env):
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


@case("accounts: while authenticating, REGISTER/LOGIN_START are INVALID_STATE; login goes on")
def _(env):
    name = env.register()
    client = env.connect()
    nonce = secrets.token_bytes(16)
    challenge = client.login_start(name, nonce)
    eq(len(challenge["nonce"]), len(nonce) + 24, "combined nonce length")
    check(challenge["nonce"].startswith(nonce), "combined nonce starts with ours")
    expect_error("INVALID_STATE", client.register, env.new_name(), "pw",
                 iterations=TEST_ITERATIONS)
    expect_error("INVALID_STATE", client.login_start, name)
    keys = env.keys[name]
    message = auth_message(name, nonce, challenge["salt"], challenge["iterations"],
                           challenge["nonce"])
    ok = client.login_finish(client_proof(keys, message), env.device(name))
    eq(ok["server_signature"], server_signature(keys, message), "server signature")
    client.friend_list()


@case("accounts: a failed LOGIN_FINISH returns to Unauthenticated")
def _(env):
    name = env.register()
    device = env.device(name)
    client = env.connect()
    client.login_start(name)
    expect_error("AUTH_FAILED", client.login_finish, secrets.token_bytes(32), device)
    expect_error("INVALID_STATE", client.login_finish, secrets.token_bytes(32), device)
    expect_error("NOT_AUTHENTICATED", client.friend_list)
    client.login(name, env.passwords[name], device=device)


@case("accounts: messaging before login is NOT_AUTHENTICATED, store untouched")
def _(env):
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
    message = auth_message(name, nonce, challenge["salt"], challenge["iterations"],
                           challenge["nonce"])
    ok = client.login_finish(client_proof(keys, message), env.device(name))
    eq(ok["server_signature"], server_signature(keys, message), "server signature")
    backlog, count = client.wait_sync(PUSH_TIMEOUT)
    eq((backlog, count), ([], 0), "nothing was stored by the refused requests")
    eq([d["name"] for d in client.device_list()["devices"]], ["main"], "one device, this one")


# ---------------------------------------------------------------------------------------------
# Friends and presence
# ---------------------------------------------------------------------------------------------

@case("friends: request and accept, with FRIEND_EVENT pushes and FRIEND_LIST")
def _(env):
    a, b = env.user("a"), env.user("b")
    eq(a.friend_request(b.username)["outcome"], 0, "outcome")
    asked = b.wait_push(Op.FRIEND_EVENT, timeout=PUSH_TIMEOUT)
    eq((asked["event"], asked["username"]), (FRIEND_ASKED, a.username), "event at b")
    check(asked["message_id"] > 0, "friend event has a message id")
    check(abs(asked["timestamp_ms"] - time.time() * 1000) < 60000, "friend event timestamp")
    listing = b.friend_list()
    eq((listing["friends"], listing["incoming"], listing["outgoing"]),
       ([], [{"username": a.username}], []), "b's list before accepting")
    listing = a.friend_list()
    eq((listing["friends"], listing["incoming"], listing["outgoing"]),
       ([], [], [{"username": b.username}]), "a's list before accepting")
    b.friend_accept(a.username)
    accepted = a.wait_push(Op.FRIEND_EVENT, timeout=PUSH_TIMEOUT)
    eq((accepted["event"], accepted["username"]), (FRIEND_ACCEPTED, b.username), "event at a")
    check(accepted["message_id"] > asked["message_id"], "event ids increase")
    eq(a.friend_list().fields, {"friends": [{"username": b.username, "online": 1}],
                                "incoming": [], "outgoing": []}, "a's list")
    eq(b.friend_list().fields, {"friends": [{"username": a.username, "online": 1}],
                                "incoming": [], "outgoing": []}, "b's list")
    eq(a.expect_no_push(Op.FRIEND_EVENT), None, "no event back to the asking device")
    eq(b.expect_no_push(Op.FRIEND_EVENT), None, "no event back to the accepting device")


@case("friends: error cases")
def _(env):
    a, b = env.user("a"), env.user("b")
    expect_error("INVALID_ARGUMENT", a.friend_request, a.username)
    expect_error("INVALID_ARGUMENT", a.friend_request, a.username.upper())
    expect_error("USER_NOT_FOUND", a.friend_request, env.new_name("nobody"))
    expect_error("NO_SUCH_REQUEST", a.friend_accept, b.username)
    expect_error("NO_SUCH_REQUEST", a.friend_decline, b.username)
    expect_error("NOT_FRIENDS", a.friend_remove, b.username)
    a.friend_request(b.username)
    expect_error("REQUEST_PENDING", a.friend_request, b.username)
    expect_error("NO_SUCH_REQUEST", a.friend_accept, b.username)
    b.wait_push(Op.FRIEND_EVENT, timeout=PUSH_TIMEOUT)
    b.ping()
    eq([f for f in b.pushes if f.opcode == Op.FRIEND_EVENT], [], "one event for two requests")
    b.friend_accept(a.username)
    expect_error("ALREADY_FRIENDS", a.friend_request, b.username)
    expect_error("ALREADY_FRIENDS", b.friend_request, a.username)
    expect_error("NO_SUCH_REQUEST", b.friend_accept, a.username)


@case("friends: decline pushes event 3 and clears the request")
def _(env):
    a, b = env.user("a"), env.user("b")
    a.friend_request(b.username)
    b.wait_push(Op.FRIEND_EVENT, timeout=PUSH_TIMEOUT)
    b.friend_decline(a.username)
    declined = a.wait_push(Op.FRIEND_EVENT, timeout=PUSH_TIMEOUT)
    eq((declined["event"], declined["username"]), (FRIEND_DECLINED, b.username), "event")
    eq(a.friend_list().fields, {"friends": [], "incoming": [], "outgoing": []}, "a's list")
    eq(b.friend_list().fields, {"friends": [], "incoming": [], "outgoing": []}, "b's list")
    expect_error("NOT_FRIENDS", a.send, b.username, "hi")
    eq(a.friend_request(b.username)["outcome"], 0, "asking again is allowed")


@case("friends: mutual requests become friends at once (outcome 1, event 2)")
def _(env):
    a, b = env.user("a"), env.user("b")
    eq(a.friend_request(b.username)["outcome"], 0, "first request")
    b.wait_push(Op.FRIEND_EVENT, timeout=PUSH_TIMEOUT)
    eq(b.friend_request(a.username)["outcome"], 1, "second request")
    accepted = a.wait_push(Op.FRIEND_EVENT, timeout=PUSH_TIMEOUT)
    eq((accepted["event"], accepted["username"]), (FRIEND_ACCEPTED, b.username), "event at a")
    eq(a.friend_list()["friends"], [{"username": b.username, "online": 1}], "a's friends")
    eq(b.friend_list().fields, {"friends": [{"username": a.username, "online": 1}],
                                "incoming": [], "outgoing": []}, "b's list")
    a.send(b.username, "now we can talk")


@case("friends: remove pushes event 4 and ends messaging both ways")
def _(env):
    a, b = env.user("a"), env.user("b")
    make_friends(a, b)
    a.send(b.username, "before")
    a.friend_remove(b.username)
    removed = b.wait_push(Op.FRIEND_EVENT, timeout=PUSH_TIMEOUT)
    eq((removed["event"], removed["username"]), (FRIEND_REMOVED, a.username), "event at b")
    expect_error("NOT_FRIENDS", a.send, b.username, "after")
    expect_error("NOT_FRIENDS", b.send, a.username, "after")
    expect_error("NOT_FRIENDS", a.friend_remove, b.username)
    expect_error("NOT_FRIENDS", b.read, a.username, removed["message_id"])
    eq(a.friend_list()["friends"], [], "a's friends")
    eq(b.friend_list()["friends"], [], "b's friends")
    bodies = [m["body"] for m in b.history(peer=a.username)["messages"]]
    eq(bodies, ["before"], "former friends still read their history")


@case("friends: what I do on one device reaches my other devices as events 5-8")
def _(env):
    a1 = env.user("a")
    a2 = env.login(a1.username, "second")
    b, c, d, e = env.user("b"), env.user("c"), env.user("d"), env.user("e")

    def own_event(event, name):
        got = a2.wait_push(Op.FRIEND_EVENT, from_user(name), PUSH_TIMEOUT)
        eq((got["event"], got["username"]), (event, name), "event at a's other device")
        return got

    eq(a1.friend_request(b.username)["outcome"], 0, "request to b")
    own_event(FRIEND_YOU_ASKED, b.username)
    b.friend_accept(a1.username)
    for device in (a1, a2):
        got = device.wait_push(Op.FRIEND_EVENT, from_user(b.username), PUSH_TIMEOUT)
        eq(got["event"], FRIEND_ACCEPTED, "b accepted, at each of a's devices")
    c.friend_request(a1.username)
    d.friend_request(a1.username)
    for device in (a1, a2):
        for asker in (c, d):
            got = device.wait_push(Op.FRIEND_EVENT, from_user(asker.username), PUSH_TIMEOUT)
            eq(got["event"], FRIEND_ASKED, "a request at each of a's devices")
    a1.friend_accept(c.username)
    own_event(FRIEND_YOU_ACCEPTED, c.username)
    a1.friend_decline(d.username)
    own_event(FRIEND_YOU_DECLINED, d.username)
    a1.friend_remove(b.username)
    removed = own_event(FRIEND_YOU_REMOVED, b.username)
    # A request that meets theirs makes friends at once: the other devices hear "accepted".
    e.friend_request(a1.username)
    a2.wait_push(Op.FRIEND_EVENT, from_user(e.username), PUSH_TIMEOUT)
    a1.wait_push(Op.FRIEND_EVENT, from_user(e.username), PUSH_TIMEOUT)
    eq(a1.friend_request(e.username)["outcome"], 1, "mutual request")
    newest = own_event(FRIEND_YOU_ACCEPTED, e.username)
    a1.ping()
    own = [f for f in a1.drain_pushes() if f.opcode == Op.FRIEND_EVENT]
    eq(own, [], "the device that acted gets no event for it")
    friends = sorted([c.username, e.username])
    eq(a2.friend_list().fields, {"friends": [{"username": n, "online": 1} for n in friends],
                                 "incoming": [], "outgoing": []}, "the other device's list")
    # Offline, the other device gets what came after its position at its next login.
    a2.ack(newest["message_id"])
    a2.close()
    a1.friend_request(b.username)
    a2 = env.login(a1.username, "second")
    eq([(f["event"], f["username"]) for f in a2.backlog], [(FRIEND_YOU_ASKED, b.username)],
       "backlog of the other device: only what came after what it was sent")
    check(a2.backlog[0]["message_id"] > removed["message_id"], "ids increase")


@case("friends: FRIEND_LIST lists are sorted by name")
def _(env):
    me = env.user("me")
    names = {label: env.register(label) for label in ("f2", "f1", "i2", "i1", "o2", "o1")}
    for label in ("f2", "f1"):
        other = env.login(names[label])
        make_friends(me, other)
    for label in ("i2", "i1"):
        env.login(names[label]).friend_request(me.username)
    for label in ("o2", "o1"):
        me.friend_request(names[label])
    listing = me.friend_list()
    for key in ("friends", "incoming", "outgoing"):
        listed = [f["username"] for f in listing[key]]
        expected = sorted(names[label] for label in names if label[0] == key[0])
        eq(listed, expected, key)


@case("presence: first login online, last logout offline, never twice the same")
def _(env):
    a, b1 = env.user("a"), env.user("b")
    make_friends(a, b1)
    b_name = b1.username
    presence_b = lambda: a.wait_push(Op.PRESENCE, from_user(b_name), PUSH_TIMEOUT)  # noqa: E731
    b1.logout()
    eq(presence_b()["online"], 0, "after b's logout")
    eq(a.friend_list()["friends"], [{"username": b_name, "online": 0}], "offline in list")
    b1.login(b_name, env.passwords[b_name], device=env.device(b_name))
    eq(presence_b()["online"], 1, "after b's login")
    b2 = env.login(b_name, "second")
    b2.logout()
    b1.logout()
    eq(presence_b()["online"], 0, "after the last device logged out (no repeat of online)")
    b3 = env.login(b_name)
    eq(presence_b()["online"], 1, "online again")
    check(a.expect_no_push(Op.PRESENCE, from_user(b_name)) is None, "no extra presence")
    eq(a.friend_list()["friends"], [{"username": b_name, "online": 1}], "online in list")
    b3.logout()


@case("presence: offline pushed when a socket is closed or reset without LOGOUT")
def _(env):
    a, b = env.user("a"), env.user("b")
    make_friends(a, b)
    b.close()
    eq(a.wait_push(Op.PRESENCE, from_user(b.username), PUSH_TIMEOUT)["online"], 0, "after close")
    b = env.login(b.username)
    eq(a.wait_push(Op.PRESENCE, from_user(b.username), PUSH_TIMEOUT)["online"], 1, "login")
    b.abort()
    eq(a.wait_push(Op.PRESENCE, from_user(b.username), PUSH_TIMEOUT)["online"], 0, "after reset")
    # b's friend sees a's logout too, through a socket that died mid-frame.
    b = env.login(b.username)
    a.send_raw(b"\x00\x00\x00\x20\x20")
    a.close()
    eq(b.wait_push(Op.PRESENCE, from_user(a.username), PUSH_TIMEOUT)["online"], 0,
       "after a half frame and a close")


# ---------------------------------------------------------------------------------------------
# Direct messages
# ---------------------------------------------------------------------------------------------

@case("send: SENT to the sender, DELIVER to the recipient and the sender's other device")
def _(env):
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


@case("send: SEND/READ to a non-friend or unknown name is NOT_FRIENDS")
def _(env):
    a, c = env.user("a"), env.user("c")
    expect_error("NOT_FRIENDS", a.send, c.username, "hi")
    expect_error("NOT_FRIENDS", a.send, env.new_name("nobody"), "hi")
    expect_error("NOT_FRIENDS", a.read, c.username, 1)
    expect_error("NOT_FRIENDS", a.send, a.username, "to myself")
    eq(c.expect_no_push(Op.DELIVER), None, "nothing delivered")


@case("send: body of 1..max_body bytes, else INVALID_BODY")
def _(env):
    a, b = env.user("a"), env.user("b")
    make_friends(a, b)
    max_body = a.hello_info["max_body"]
    expect_error("INVALID_BODY", a.send, b.username, "")
    expect_error("INVALID_BODY", a.send, b.username, "x" * (max_body + 1))
    expect_error("INVALID_BODY", a.send, b.username, "\u00e9" * (max_body // 2) + "x")
    a.send(b.username, "x" * max_body)
    a.send(b.username, "\u00e9" * (max_body // 2))
    eq(len(b.wait_push(Op.DELIVER, timeout=PUSH_TIMEOUT)["body"]), max_body, "long body")


@case("send: a second device of the recipient gets the DELIVER too")
def _(env):
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


@case("send: a retry with the same client_msg_id returns the same SENT, stores once")
def _(env):
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


@case("send: pipelined SENDs are answered in order, ids increasing, delivered in order")
def _(env):
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


@case("send: SEND and GROUP_SEND share the (sender, client_msg_id) dedup key")
def _(env):
    a, b = env.user("a"), env.user("b")
    make_friends(a, b)
    group_id = a.group_create("dedup " + env.tag)["group_id"]
    sent = a.send(b.username, "direct")
    again = a.group_send(group_id, "group", client_msg_id=a.last_client_msg_id)
    eq(again.fields, sent.fields, "GROUP_SEND retrying a SEND's client_msg_id")
    eq(a.history(group_id=group_id)["messages"], [], "nothing stored in the group")


# ---------------------------------------------------------------------------------------------
# Offline delivery, one position per device
# ---------------------------------------------------------------------------------------------

@case("offline: backlog then SYNC_DONE; unacked items come again; ACK ends them")
def _(env):
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


@case("offline: ACK is per device: one device's ACK leaves another's backlog whole")
def _(env):
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


@case("offline: two connections of one device share its position")
def _(env):
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


@case("offline: friend events wait for login and count in SYNC_DONE")
def _(env):
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


@case("offline: a 300-item backlog from three sources arrives in id order, with a live one")
def _(env):
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


@case("offline: a 2,000-item backlog arrives whole and in order while more arrive live")
def _(env):
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


# ---------------------------------------------------------------------------------------------
# Devices
# ---------------------------------------------------------------------------------------------

@case("accounts: PASSWORD_CHANGE needs a fresh proof; the other sessions are closed; only the "
      "new password logs in")
def _(env):
    name = env.register("pw")
    laptop, phone = env.login(name, "laptop"), env.login(name, "phone")
    expect_error("AUTH_FAILED", laptop.change_password, "not the password", "new secret")
    new_keys = laptop.change_password(env.passwords[name], "new secret",
                                      iterations=TEST_ITERATIONS)
    expect_close_with(phone, "CREDENTIALS_CHANGED")
    laptop.ping()
    stale = env.connect()
    expect_error("AUTH_FAILED", stale.login, name, env.passwords[name],
                 device=env.device(name, "laptop"))
    fresh = env.connect()
    fresh.login(name, "new secret", device=env.device(name, "laptop"))
    env.passwords[name], env.keys[name] = "new secret", new_keys


@case("accounts: ACCOUNT_DELETE tells friends, keeps their history under a marked name and "
      "keeps the name taken")
def _(env):
    alice, bob = env.user("del"), env.user("friend")
    make_friends(alice, bob)
    alice.send(bob.username, "remember me")
    bob.wait_push(Op.DELIVER, timeout=PUSH_TIMEOUT)
    gone = alice.username
    alice.delete_account(env.passwords[gone])
    alice.wait_closed(PUSH_TIMEOUT)
    removed = bob.wait_push(Op.FRIEND_EVENT, lambda f: f["event"] == FRIEND_REMOVED,
                            timeout=PUSH_TIMEOUT)
    eq(removed["username"], gone, "who removed bob")
    senders = [m["sender"] for m in bob.history(peer=gone)["messages"]]
    eq(senders, [gone + " (deleted)"], "the sender of the kept message")
    again = env.connect()
    expect_error("USERNAME_TAKEN", again.register, gone, "pw", iterations=TEST_ITERATIONS)
    expect_error("AUTH_FAILED", again.login, gone, env.passwords[gone],
                 device=env.device(gone))


@case("devices: three devices offline at different times each get every item once, in order")
def _(env):
    a, c = env.user("a"), env.user("c")
    b_name = env.register("b")
    # A device that never acknowledges and never leaves sees every item of b live: the list
    # each other device is checked against.
    watcher = env.login(b_name, "watcher")
    devices = {label: env.login(b_name, label) for label in ("phone", "tablet", "laptop")}
    phone, tablet, laptop = devices["phone"], devices["tablet"], devices["laptop"]
    acked = {}

    def ack_all(label, items):
        acked[label] = last_item_id(items)
        devices[label].ack(acked[label])

    # Phase 1, all online: the friendship's items (a's request, phone's "you accepted"), then
    # a message; the phone and the laptop acknowledge what they got.
    make_friends(a, phone)
    m1 = a.send(b_name, "m1")
    got = {label: items_until(devices[label], lambda f: f.get("message_id") == m1["message_id"])
           for label in ("tablet", "laptop")}
    phone_items = items_until(phone, lambda f: f.get("message_id") == m1["message_id"])
    ack_all("phone", phone_items)
    ack_all("laptop", got["laptop"])
    # Phase 2: the phone is away. A group invitation and a group message.
    phone.close()
    m2 = a.send(b_name, "m2")
    group_id = a.group_create("three " + env.tag)["group_id"]
    a.group_invite(group_id, b_name)
    g1 = a.group_send(group_id, "g1")
    until_g1 = lambda f: f.get("message_id") == g1["message_id"]  # noqa: E731
    items_until(tablet, until_g1)
    ack_all("laptop", items_until(laptop, until_g1))
    # Phase 3: the tablet is away too. A request from c; the laptop writes to a and reads
    # a's messages (both items for b's other devices); a reads the laptop's message.
    tablet.close()
    c.friend_request(b_name)
    own = laptop.send(a.username, "from the laptop")
    laptop.read(a.username, m2["message_id"])
    a.wait_push(Op.DELIVER, is_deliver(body="from the laptop"), PUSH_TIMEOUT)
    a.read(b_name, own["message_id"])
    items_until(laptop, lambda f: f.opcode == Op.READ_RECEIPT and f["reader"] == a.username)
    laptop.close()
    # Phase 4: all three away.
    m3 = a.send(b_name, "m3")
    g2 = a.group_send(group_id, "g2")
    # They come back one at a time, with live items in between.
    back = {"phone": env.login(b_name, "phone")}
    a.send(b_name, "m4")
    back["tablet"] = env.login(b_name, "tablet")
    a.send(b_name, "m5")
    back["laptop"] = env.login(b_name, "laptop")
    end = a.send(b_name, "end")["message_id"]
    until_end = lambda f: f.get("message_id") == end  # noqa: E731
    everything = items_until(watcher, until_end)
    ids = [f["message_id"] for f in everything]
    check(increasing(ids), "the watcher's items in strictly increasing id order")
    kinds = {(f.name, f.get("event")) for f in everything}
    for kind in (("FRIEND_EVENT", FRIEND_ASKED), ("FRIEND_EVENT", FRIEND_YOU_ACCEPTED),
                 ("GROUP_EVENT", GROUP_JOINED), ("READ_RECEIPT", None), ("DELIVER", None)):
        check(kind in kinds, "the watcher got a %s %s" % kind)
    check(m3["message_id"] in ids and g2["message_id"] in ids, "the watcher got m3 and g2")
    # What a device made itself is never pushed to it.
    made_by = {
        "phone": lambda f: f.opcode == Op.FRIEND_EVENT and f["event"] == FRIEND_YOU_ACCEPTED,
        "tablet": lambda f: False,
        "laptop": lambda f: ((f.opcode == Op.DELIVER and f["from"] == b_name)
                             or (f.opcode == Op.READ_RECEIPT and f["reader"] == b_name)),
    }
    acked.setdefault("tablet", 0)
    for label, client in back.items():
        received = client.backlog + items_until(client, until_end)
        expected = [f for f in everything if f["message_id"] > acked[label]
                    and not made_by[label](f)]
        eq([(f.name, f["message_id"]) for f in received],
           [(f.name, f["message_id"]) for f in expected],
           "%s: every item past its position, once, in id order" % label)
        eq([f.fields for f in received], [f.fields for f in expected],
           "%s: the items as the watcher saw them" % label)


@case("devices: own messages, receipts and group leaves from another device are items")
def _(env):
    a1, b = env.user("a"), env.user("b")
    make_friends(a1, b)
    a2 = env.login(a1.username, "second")
    group_id = a1.group_create("own " + env.tag)["group_id"]
    direct = a1.send(b.username, "sent on the first device")
    group = a1.group_send(group_id, "to the group from the first device")
    for sent, fields in ((direct, {"kind": KIND_DIRECT, "to": b.username}),
                         (group, {"kind": KIND_GROUP, "group_id": group_id})):
        got = a2.wait_push(Op.DELIVER, timeout=PUSH_TIMEOUT)
        eq((got["message_id"], got["from"]), (sent["message_id"], a1.username),
           "own message at the other device")
        eq({key: got[key] for key in fields}, fields, "own message's conversation")
    reply = b.send(a1.username, "reply")
    for device in (a1, a2):
        device.wait_push(Op.DELIVER, is_deliver(body="reply"), PUSH_TIMEOUT)
    a1.read(b.username, reply["message_id"])
    for device in (a2, b):
        receipt = device.wait_push(Op.READ_RECEIPT, timeout=PUSH_TIMEOUT)
        eq((receipt["reader"], receipt["peer"], receipt["up_to_message_id"]),
           (a1.username, b.username, reply["message_id"]), "own read position elsewhere")
    a1.group_leave(group_id)
    left = a2.wait_push(Op.GROUP_EVENT, timeout=PUSH_TIMEOUT)
    eq((left["group_id"], left["event"], left["username"]), (group_id, GROUP_LEFT, a1.username),
       "own leave at the other connected device")
    a1.ping()
    eq([f for f in a1.drain_pushes() if is_item(f)], [],
       "the device that did all this got none of it")
    # Offline, the other device finds its own messages in its backlog.
    a2.ack(left["message_id"])
    a2.close()
    later = a1.send(b.username, "while the second device is away")
    a2 = env.login(a1.username, "second")
    eq([(f["message_id"], f["from"], f["to"]) for f in a2.backlog],
       [(later["message_id"], a1.username, b.username)], "own message in the other backlog")
    a1.ack(reply["message_id"])
    a1.close()
    a1 = env.login(a1.username)
    eq((a1.backlog, a1.sync_count), ([], 0), "nothing of its own back to the first device")


@case("devices: LOGIN_FINISH checks the device fields first; a later login renames")
def _(env):
    name = env.register()
    client = env.connect()
    for device, what in ((Device(0, "zero"), "device id 0"),
                         (Device(new_device_id(), ""), "an empty name"),
                         (Device(new_device_id(), "n" * 65), "a name of 65 characters")):
        client.login_start(name)
        # The proof is wrong too: the device fields are checked before it.
        expect_error("INVALID_ARGUMENT", client.login_finish, bytes(32), device)
        expect_error("NOT_AUTHENTICATED", client.friend_list)
    device = Device(new_device_id(), "\u00e9" * 64)
    client.login(name, env.passwords[name], device=device)
    eq([(d["device_id"], d["name"]) for d in client.device_list()["devices"]],
       [(device.device_id, device.name)], "64 characters (128 bytes) is a valid name")
    client.logout()
    client.login(name, env.passwords[name], device=Device(device.device_id, "renamed"))
    eq([(d["device_id"], d["name"]) for d in client.device_list()["devices"]],
       [(device.device_id, "renamed")], "the same device, renamed")


@case("devices: DEVICE_LIST; DEVICE_REMOVE closes the removed device with NO_SUCH_DEVICE")
def _(env):
    a, main = env.user("a"), env.user("b")
    make_friends(a, main)
    b_name = main.username
    env.login(b_name, "tablet").close()
    phone = env.login(b_name, "phone")
    first_backlog = [f.fields for f in phone.backlog]
    now = time.time() * 1000
    for client, current in ((main, "main"), (phone, "phone")):
        devices = client.device_list()["devices"]
        eq(sorted((d["name"], d["device_id"], d["online"], d["current"]) for d in devices),
           sorted((label, env.device(b_name, label).device_id, int(label != "tablet"),
                   int(label == current)) for label in ("main", "tablet", "phone")),
           "devices listed from %s" % current)
        seen = [d["last_seen_ms"] for d in devices]
        eq(seen, sorted(seen, reverse=True), "most recently seen first")
        check(all(abs(ms - now) < 60000 for ms in seen), "last seen near now: %r" % seen)
    own = env.device(b_name).device_id
    expect_error("INVALID_ARGUMENT", main.device_remove, own)
    expect_error("NO_SUCH_DEVICE", main.device_remove, new_device_id())
    a_device = env.device(a.username).device_id
    expect_error("NO_SUCH_DEVICE", main.device_remove, a_device)
    eq(len(a.device_list()["devices"]), 1, "another user's device is out of reach")
    main.device_remove(env.device(b_name, "phone").device_id)
    expect_close_with(phone, "NO_SUCH_DEVICE")
    eq(a.expect_no_push(Op.PRESENCE, from_user(b_name)), None, "b is still online")
    main.device_remove(env.device(b_name, "tablet").device_id)
    expect_error("NO_SUCH_DEVICE", main.device_remove, env.device(b_name, "tablet").device_id)
    eq([d["name"] for d in main.device_list()["devices"]], ["main"], "one device left")
    # A login with a removed id creates the device anew, at the lowest position of the other
    # devices (main's, which never acknowledges the "you accepted" it made itself).
    phone = env.login(b_name, "phone")
    eq([f.fields for f in phone.backlog], first_backlog, "a new device's backlog again")
    eq(sorted(d["name"] for d in main.device_list()["devices"]), ["main", "phone"], "again")


@case("devices: a new device past --max-devices is TOO_MANY_DEVICES", own_server_only=True)
def _(env):
    with side_server(env, "devices.db", ["--max-devices", "2"]) as side:
        name = side.register("d")
        password = side.passwords[name]
        one = side.login(name, "one")
        two = side.login(name, "two")
        client = side.connect()
        three = side.device(name, "three")
        expect_error("TOO_MANY_DEVICES", client.login, name, password, device=three)
        expect_error("NOT_AUTHENTICATED", client.friend_list)
        # The proof is checked before the device count.
        expect_error("AUTH_FAILED", client.login, name, "not the password", device=three)
        client.login(name, password, device=side.device(name, "two"))
        client.wait_sync(PUSH_TIMEOUT)
        client.logout()
        one.device_remove(side.device(name, "two").device_id)
        expect_close_with(two, "NO_SUCH_DEVICE")
        client.login(name, password, device=three)
        eq(sorted(d["name"] for d in one.device_list()["devices"]), ["one", "three"], "devices")


@case("devices: past --device-backlog-cap, SYNC_GAP, the newest items, and forward HISTORY "
      "reads the gap exactly", own_server_only=True)
def _(env):
    cap = 20
    with side_server(env, "gap.db", ["--device-backlog-cap", str(cap)]) as side:
        a, b = side.user("a"), side.user("b")
        make_friends(a, b)
        b_name = b.username
        group_id = a.group_create("gap")["group_id"]
        a.group_invite(group_id, b_name)
        position = b.wait_push(Op.GROUP_EVENT, timeout=PUSH_TIMEOUT)["message_id"]
        b.ack(position)
        b.close()
        sent = []
        for i in range(45):
            sent.append(a.send(b_name, "d%d" % i)["message_id"])
            if i % 3 == 0:
                sent.append(a.group_send(group_id, "g%d" % i)["message_id"])
            if i % 10 == 0:
                sent.append(a.group_send(LOBBY_GROUP_ID, "lobby %d" % i)["message_id"])
        b = side.connect()
        b.login(b_name, side.passwords[b_name], device=side.device(b_name))
        pushes = [f for f in pushes_until(b, Op.SYNC_DONE) if f.opcode != Op.PRESENCE]
        eq(pushes[0].name, "SYNC_GAP", "the first push after LOGIN_OK")
        gap, items, done = pushes[0], pushes[1:-1], pushes[-1]
        eq(gap["after_message_id"], position, "the gap starts at the device's position")
        check(all(f.opcode == Op.DELIVER for f in items), "only messages after the gap")
        ids = [f["message_id"] for f in items]
        check(increasing(ids), "items in id order")
        check(ids and ids[0] > gap["up_to_message_id"], "items above the gap's end")
        check(0 < len(items) <= cap, "%d items pushed for a cap of %d" % (len(items), cap))
        eq(done["count"], len(items), "SYNC_DONE counts what came after the gap")
        in_gap = []
        for target in ({"peer": a.username}, {"group_id": group_id},
                       {"group_id": LOBBY_GROUP_ID}):
            for page in b.history_pages(direction=NEWER, from_id=gap["after_message_id"],
                                        limit=7, **target):
                messages = [m["message_id"] for m in page["messages"]]
                check(increasing(messages), "a forward page is oldest first")
                in_gap += [m for m in messages if m <= gap["up_to_message_id"]]
                if messages and messages[-1] >= gap["up_to_message_id"]:
                    break
        eq(sorted(in_gap + ids), sorted(sent), "the gap and the items: every message once")
        eq(gap["skipped"], len(in_gap), "skipped counts the messages in the gap")
        b.ack(ids[-1])
        b.close()
        b = side.login(b_name)
        eq((b.sync_gap, b.backlog), (None, []), "after ACK: no gap, nothing pushed")


# ---------------------------------------------------------------------------------------------
# History and read receipts
# ---------------------------------------------------------------------------------------------

@case("history: pages backwards and forwards with next, same for both sides")
def _(env):
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


@case("history: a page stops before 128 KiB of bodies, with at least one message")
def _(env):
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


@case("history: someone else's conversation is FORBIDDEN")
def _(env):
    a, b, c = env.user("a"), env.user("b"), env.user("c")
    make_friends(a, b)
    a.send(b.username, "private")
    for direction in (OLDER, NEWER):
        expect_error("FORBIDDEN", c.history, peer=a.username, direction=direction)
        expect_error("FORBIDDEN", c.history, peer=b.username, direction=direction)
        expect_error("FORBIDDEN", c.history, peer=env.new_name("nobody"), direction=direction)
    a.friend_request(c.username)
    expect_error("FORBIDDEN", c.history, peer=a.username)


@case("read: READ pushes a READ_RECEIPT item to the peer's and the reader's other devices")
def _(env):
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


# ---------------------------------------------------------------------------------------------
# Groups
# ---------------------------------------------------------------------------------------------

def group_event_fields(frame):
    return (frame["group_id"], frame["event"], frame["username"], frame["group_name"])


@case("groups: three users, invites, GROUP_EVENTs, GROUP_SEND, offline member catches up")
def _(env):
    a, b1, c = env.user("a"), env.user("b"), env.user("c")
    make_friends(a, b1)
    make_friends(b1, c)
    c_name = c.username
    c.close()
    name = "team " + env.tag
    group_id = a.group_create(name)["group_id"]
    check(group_id > LOBBY_GROUP_ID, "new group id %d" % group_id)
    a.group_invite(group_id, b1.username)
    joined = b1.wait_push(Op.GROUP_EVENT, timeout=PUSH_TIMEOUT)
    eq(group_event_fields(joined), (group_id, GROUP_JOINED, b1.username, name), "join event")
    check(abs(joined["timestamp_ms"] - time.time() * 1000) < 60000, "join event timestamp")
    eq(a.expect_no_push(Op.GROUP_EVENT), None, "the inviting device had its OK, no event")
    # A new device starts at the lowest position of the other devices: b's join is unacked.
    b2 = env.login(b1.username, "second")
    eq([f.fields for f in b2.backlog], [joined.fields], "the new device's backlog")
    b1.group_invite(group_id, c_name)  # any member may invite a friend
    for client in (a, b2):
        event = client.wait_push(Op.GROUP_EVENT, timeout=PUSH_TIMEOUT)
        eq((event["event"], event["username"]), (GROUP_JOINED, c_name), "c joined")
    c_joined = event
    eq(b1.expect_no_push(Op.GROUP_EVENT), None, "the inviting device had its OK, no event")
    sent = b1.group_send(group_id, "hello team")
    expected = {"message_id": sent["message_id"], "timestamp_ms": sent["timestamp_ms"],
                "from": b1.username, "kind": KIND_GROUP, "group_id": group_id,
                "body": "hello team"}
    for client in (a, b2):
        eq(client.wait_push(Op.DELIVER, timeout=PUSH_TIMEOUT).fields, expected,
           "group DELIVER at %s" % client.username)
    eq(b1.expect_no_push(Op.DELIVER), None, "nothing back to the sending connection")
    members = a.group_members(group_id)
    eq(sorted((m["username"], m["online"], m["owner"]) for m in members["members"]),
       sorted([(a.username, 1, 1), (b1.username, 1, 0), (c_name, 0, 0)]),
       "members, c offline")
    c = env.login(c_name)
    eq([f.fields for f in c.backlog], [c_joined.fields, expected],
       "c's backlog: its invitation, then the message")
    eq(c.sync_count, 2, "c's SYNC_DONE count")
    members = a.group_members(group_id)
    eq(members["group_id"], group_id, "members' group id")
    eq(sorted((m["username"], m["online"], m["owner"]) for m in members["members"]),
       sorted([(a.username, 1, 1), (b1.username, 1, 0), (c_name, 1, 0)]), "members")
    for client in (a, b1, c):
        groups = {g["group_id"]: g for g in client.group_list()["groups"]}
        eq(groups.get(group_id), {"group_id": group_id, "name": name, "owner": a.username,
                                  "members": 3}, "GROUP_LIST entry of %s" % client.username)
        check(LOBBY_GROUP_ID in groups, "lobby in GROUP_LIST of %s" % client.username)
    retry = b1.group_send(group_id, "hello team", client_msg_id=b1.last_client_msg_id)
    eq(retry.fields, sent.fields, "GROUP_SEND retry")
    history = c.history(group_id=group_id)
    eq(history["messages"], [{"message_id": sent["message_id"],
                              "timestamp_ms": sent["timestamp_ms"], "sender": b1.username,
                              "body": "hello team"}], "group history")
    b_name = b1.username
    b1.ack(joined["message_id"])
    b1.close()
    b2.close()
    b = env.login(b_name)
    eq((b.backlog, b.sync_count), ([], 0), "what the device did itself is not pushed back")
    b2 = env.login(b_name, "second")
    eq([f["message_id"] for f in b2.backlog],
       [joined["message_id"], c_joined["message_id"], sent["message_id"]],
       "the other device's unacked items, its own message included")
    a.close()
    a = env.login(a.username)
    eq([f["message_id"] for f in a.backlog], [c_joined["message_id"], sent["message_id"]],
       "a's unacked backlog")


@case("groups: invite errors, leave with events, owner leaves, leaver is refused")
def _(env):
    a, b, c = env.user("a"), env.user("b"), env.user("c")
    for one, other in ((a, b), (a, c), (b, c)):
        make_friends(one, other)
    c2 = env.login(c.username, "second")
    stranger = env.register("s")
    group_id = a.group_create("g " + env.tag)["group_id"]
    a.group_invite(group_id, b.username)
    a.group_invite(group_id, c.username)
    expect_error("ALREADY_MEMBER", a.group_invite, group_id, b.username)
    expect_error("ALREADY_MEMBER", b.group_invite, group_id, a.username)
    expect_error("NOT_FRIENDS", a.group_invite, group_id, stranger)
    expect_error("NOT_FRIENDS", a.group_invite, group_id, env.new_name("nobody"))
    expect_error("ALREADY_MEMBER", a.group_invite, LOBBY_GROUP_ID, b.username)
    for client in (a, b, c, c2):
        client.ping()
        client.drain_pushes()
    c.group_leave(group_id)
    for client in (a, b, c2):
        event = client.wait_push(Op.GROUP_EVENT, timeout=PUSH_TIMEOUT)
        eq((event["group_id"], event["event"], event["username"]),
           (group_id, GROUP_LEFT, c.username), "leave event at %s" % client.username)
    eq(c.expect_no_push(Op.GROUP_EVENT), None, "the leaving device had its OK, no event")
    for call in (lambda: c.group_send(group_id, "x"), lambda: c.group_members(group_id),
                 lambda: c.history(group_id=group_id), lambda: c.group_leave(group_id),
                 lambda: c.group_invite(group_id, a.username)):
        expect_error("FORBIDDEN", call)
    check(group_id not in [g["group_id"] for g in c.group_list()["groups"]], "c's GROUP_LIST")
    a.group_leave(group_id)
    event = b.wait_push(Op.GROUP_EVENT, timeout=PUSH_TIMEOUT)
    eq((event["event"], event["username"]), (GROUP_LEFT, a.username), "owner left")
    listing = {g["group_id"]: g for g in b.group_list()["groups"]}
    eq(listing.get(group_id, {}).get("owner"), a.username, "recorded owner kept")
    eq(listing.get(group_id, {}).get("members"), 1, "member count")
    eq([(m["username"], m["owner"]) for m in b.group_members(group_id)["members"]],
       [(b.username, 0)], "members after the owner left")
    b.group_send(group_id, "alone")
    b.group_invite(group_id, c.username)


@case("groups: an invitee's position starts at the newest message, older ones in HISTORY")
def _(env):
    a, b = env.user("a"), env.user("b")
    make_friends(a, b)
    b_name = b.username
    b.close()
    group_id = a.group_create("late " + env.tag)["group_id"]
    old = [a.group_send(group_id, "old %d" % i)["message_id"] for i in range(2)]
    a.group_invite(group_id, b_name)
    b = env.login(b_name)
    eq([(f.name, f["group_id"], f["event"], f["username"]) for f in b.backlog],
       [("GROUP_EVENT", group_id, GROUP_JOINED, b_name)], "only the invitation is pushed")
    eq([m["message_id"] for m in b.history(group_id=group_id)["messages"]],
       list(reversed(old)), "old messages in history")
    new = a.group_send(group_id, "new")
    eq(b.wait_push(Op.DELIVER, timeout=PUSH_TIMEOUT)["message_id"], new["message_id"], "live")


@case("groups: name of 1..64 characters, else INVALID_ARGUMENT")
def _(env):
    a = env.user("a")
    expect_error("INVALID_ARGUMENT", a.group_create, "")
    expect_error("INVALID_ARGUMENT", a.group_create, "n" * 65)
    a.group_create("n" * 64)
    a.group_create("\u00e9" * 64)
    expect_error("INVALID_BODY", a.group_send, a.group_create("b")["group_id"], "")


@case("groups: a non-member is FORBIDDEN, whether the group exists or not")
def _(env):
    a, c, d = env.user("a"), env.user("c"), env.user("d")
    make_friends(c, d)
    group_id = a.group_create("closed " + env.tag)["group_id"]
    a.group_send(group_id, "members only")
    for target in (group_id, 2 ** 63):
        for call in (lambda: c.group_send(target, "x"), lambda: c.group_members(target),
                     lambda: c.history(group_id=target), lambda: c.group_leave(target),
                     lambda: c.history(group_id=target, direction=NEWER),
                     lambda: c.group_invite(target, d.username)):
            expect_error("FORBIDDEN", call)
    eq(c.expect_no_push(Op.DELIVER), None, "no DELIVER to a non-member")


@case("groups: lobby (id 1) holds every user; a lobby message reaches everyone online")
def _(env):
    x, y = env.user("x"), env.user("y")
    groups = {g["group_id"]: g for g in x.group_list()["groups"]}
    eq(groups.get(LOBBY_GROUP_ID, {}).get("name"), "lobby", "lobby in GROUP_LIST")
    eq(groups.get(LOBBY_GROUP_ID, {}).get("owner"), "", "the lobby has no owner")
    members = {m["username"]: m for m in x.group_members(LOBBY_GROUP_ID)["members"]}
    check(x.username in members and y.username in members, "both in lobby's members")
    eq(members[x.username]["online"], 1, "x online in lobby")
    eq(members[x.username]["owner"], 0, "no owner flag in the lobby")
    expect_error("INVALID_ARGUMENT", x.group_leave, LOBBY_GROUP_ID)
    body = "lobby hello " + env.tag
    sent = x.group_send(LOBBY_GROUP_ID, body)
    got = y.wait_push(Op.DELIVER, is_deliver(body=body), PUSH_TIMEOUT)
    eq((got["message_id"], got["kind"], got["group_id"], got["from"]),
       (sent["message_id"], KIND_GROUP, LOBBY_GROUP_ID, x.username), "lobby DELIVER")
    eq(y.history(group_id=LOBBY_GROUP_ID, limit=1)["messages"][0]["message_id"],
       sent["message_id"], "lobby history")
    y.ack(got["message_id"])


# ---------------------------------------------------------------------------------------------
# Limits, durability, restart and shutdown (servers of their own)
# ---------------------------------------------------------------------------------------------

@case("limits: HELLO_OK shows the configured limits; SERVER_FULL; IDLE_TIMEOUT",
      own_server_only=True)
def _(env):
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


@case("limits: any frame resets the idle timer; idle close pushes PRESENCE 0",
      own_server_only=True)
def _(env):
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


@case("durability: a message answered with SENT survives SIGKILL", own_server_only=True)
def _(env):
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


@case("restart: accounts, devices, backlog, positions and retry dedup survive a restart",
      own_server_only=True)
def _(env):
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


@case("shutdown: SIGTERM sends SHUTTING_DOWN to every connection and exits 0",
      own_server_only=True)
def _(env):
    a, b = env.user("a"), env.connect(hello=False)
    env.server.send_signal(signal.SIGTERM)
    for client in (a, b):
        expect_close_with(client, "SHUTTING_DOWN")
    eq(env.server.wait(timeout=10), 0, "exit status")


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------

def build_server():
    subprocess.run(["cargo", "build", "--quiet"], cwd=REPO, check=True,
                   stdout=sys.stderr, stderr=sys.stderr)


def merge_flags(flags, extra):
    """`flags` then `extra`, leaving out the flags of `flags` that `extra` sets again (the
    server refuses a flag given twice)."""
    kept, index = [], 0
    while index < len(flags):
        takes_value = index + 1 < len(flags) and not flags[index + 1].startswith("--")
        group = flags[index:index + (2 if takes_value else 1)]
        if group[0] not in extra:
            kept += group
        index += len(group)
    return kept + list(extra)


def start_server(workdir, db_name="test.db", extra=(), flags=OWN_SERVER_FLAGS):
    """Start the built server on 127.0.0.1:0 with `flags` and `extra`; returns (process,
    host, port). `flags=()` starts it with its defaults.

    The database is `workdir/db_name`; the log (stderr) goes to `workdir/<db_name>.log`.
    """
    # IM_SERVER_BIN lets a caller that built the server elsewhere (cargo test) name the binary.
    binary = os.environ.get("IM_SERVER_BIN") or os.path.join(REPO, "target", "debug", "im-server")
    tls_flags = []
    if TLS is not None:
        # The run's certificate (made by main) is trusted by TLS; the cases use this port.
        tls_flags = ["--tls-listen", "127.0.0.1:0", "--tls-cert", TLS_CERT, "--tls-key", TLS_KEY]
    log = open(os.path.join(workdir, db_name + ".log"), "ab")
    process = subprocess.Popen(
        [binary, "--listen", "127.0.0.1:0", "--db", os.path.join(workdir, db_name)]
        + tls_flags + merge_flags(list(flags), list(extra)),
        stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL)
    log.close()
    deadline = time.monotonic() + STARTUP_TIMEOUT
    text = read_line(process, deadline, db_name)
    if not text.startswith("listening on "):
        process.kill()
        process.wait()
        raise RuntimeError("unexpected first line %r" % text)
    address = text[len("listening on "):]
    if TLS is not None:
        text = read_line(process, deadline, db_name)
        if not text.startswith("listening for TLS on "):
            process.kill()
            process.wait()
            raise RuntimeError("unexpected second line %r" % text)
        address = text[len("listening for TLS on "):]
    # Keep reading stdout so that the server never blocks on a full pipe.
    threading.Thread(target=process.stdout.read, daemon=True).start()
    host, _, port = address.rpartition(":")
    return process, host.strip("[]"), int(port)


def read_line(process, deadline, db_name):
    """One line of the server's standard output, read byte by byte (nothing read ahead)."""
    line = b""
    while not line.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        ready, _, _ = select.select([process.stdout], [], [], max(remaining, 0))
        if not ready:
            process.kill()
            process.wait()
            raise RuntimeError("the server printed no 'listening' line in time")
        chunk = os.read(process.stdout.fileno(), 1)
        if not chunk:
            raise RuntimeError("the server exited (status %s) before listening; see %s.log"
                               % (process.wait(), db_name))
        line += chunk
    return line.decode().strip()


def stop_server(process):
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def preflight(host, port):
    """None if the server at host:port can run the cases, else one line saying what to
    change. Registers a few throwaway users: one more than the default --register-limit."""
    where = "%s:%d" % (host, port)
    try:
        client = PatientClient(timeout=10.0).connect(host, port)
    except OSError as error:
        return ("cannot connect to %s (%s): start im-server there (cargo run --release), or "
                "pass its address with --addr HOST:PORT" % (where, error))
    with client:
        try:
            client.hello()
        except ServerError as error:
            if error.name == "UNSUPPORTED_VERSION":
                return ("the server at %s does not speak protocol version %d (%s): run a "
                        "server built from this repository" % (where, imclient.PROTOCOL_VERSION,
                                                               error.message))
            return "the server at %s refused HELLO: %s" % (where, error)
        except (OSError, ProtocolError) as error:
            return ("the server at %s did not answer HELLO (%s): is it an im-server?"
                    % (where, error))
        tag = secrets.token_hex(3)
        for serial in range(REGISTRATION_PROBES):
            name = "t%s_probe%d" % (tag, serial)
            try:
                client.register(name, secrets.token_urlsafe(12), iterations=TEST_ITERATIONS)
            except ServerError as error:
                if error.name == "RATE_LIMITED":
                    return ("the server at %s limits registrations from this address (the "
                            "cases register hundreds of users): run this script on the "
                            "server's host without --limit-loopback on the server, or restart "
                            "the server with --register-limit 0" % where)
                return "registering a test user on %s failed: %s" % (where, error)
            except (OSError, ProtocolError) as error:
                return "registering a test user on %s failed: %s" % (where, error)
    return None


def run_cases(env, selected):
    passed = failed = 0
    for name, function, own_only in CASES:
        if selected and not any(word in name for word in selected):
            continue
        if own_only and not env.own_server:
            continue
        started = time.monotonic()
        try:
            function(env)
        except Exception as error:  # A case's failure must not stop the others.
            failed += 1
            detail = "%s: %s" % (type(error).__name__, error)
            if not isinstance(error, (CheckFailed, ServerError, TimeoutError,
                                      ConnectionClosed)):
                detail += "\n" + "".join(traceback.format_exc()).rstrip()
            print("FAIL  %s -- %s" % (name, detail), flush=True)
        else:
            passed += 1
            print("ok    %s (%.2fs)" % (name, time.monotonic() - started), flush=True)
        finally:
            env.close_all()
    return passed, failed


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--addr", help="HOST:PORT of a running server (default: start one)")
    parser.add_argument("-k", dest="select", action="append", default=[],
                        help="run only cases whose name contains this text (repeatable)")
    parser.add_argument("--no-build", action="store_true",
                        help="use target/debug/im-server as it is, without cargo build")
    parser.add_argument("--tls", action="store_true",
                        help="talk TLS (the server this script starts gets a TLS listener)")
    parser.add_argument("--ca", metavar="FILE",
                        help="with --addr --tls: trust this certificate (PEM), not the system's")
    args = parser.parse_args()
    global TLS, TLS_CERT, TLS_KEY
    certs = tempfile.TemporaryDirectory(prefix="im-server-test-cert-")
    if args.tls and not args.addr:
        subprocess.run([os.path.join(REPO, "scripts", "make-cert.sh"), certs.name],
                       check=True, stdout=subprocess.DEVNULL)
        TLS_CERT, TLS_KEY = os.path.join(certs.name, "cert.pem"), os.path.join(certs.name, "key.pem")
        TLS = imclient.tls_context(TLS_CERT)
    elif args.tls or args.ca:
        TLS = imclient.tls_context(args.ca)
    if args.addr:
        host, _, port = args.addr.rpartition(":")
        problem = preflight(host.strip("[]"), int(port))
        if problem is not None:
            print("CANNOT RUN  %s" % problem)
            print("0 passed, 1 failed")
            return 1
        env = Env(host.strip("[]"), int(port), own_server=False)
        passed, failed = run_cases(env, args.select)
    else:
        try:
            if not args.no_build:
                build_server()
        except (OSError, subprocess.CalledProcessError) as error:
            print("FAIL  build: %s" % error)
            print("0 passed, 1 failed")
            return 1
        with tempfile.TemporaryDirectory(prefix="im-server-test-") as workdir:
            try:
                process, host, port = start_server(workdir)
            except (OSError, RuntimeError) as error:
                print("FAIL  start the server: %s" % error)
                print("0 passed, 1 failed")
                return 1
            env = Env(host, port, own_server=True)
            env.server = process
            env.workdir = workdir
            try:
                passed, failed = run_cases(env, args.select)
            finally:
                stop_server(env.server)
                if failed and os.environ.get("IM_TEST_SERVER_LOG") == "1":
                    with open(os.path.join(workdir, "test.db.log"), errors="replace") as log:
                        sys.stderr.write(log.read()[-8000:])
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
