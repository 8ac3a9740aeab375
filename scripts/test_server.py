#!/usr/bin/env python3
"""End-to-end test of im-server against PROTOCOL.md, through scripts/imclient.py.

With no arguments: builds the server (`cargo build` in the repository root), starts
`target/debug/im-server` on 127.0.0.1:0 with a database in a temporary directory and a low
`--min-kdf-iterations`, runs every case, and stops the server. With `--addr HOST:PORT`: runs
against a server that is already running (started with `--min-kdf-iterations` at most 4096);
user names are random, so the script can run again and again on the same database; the cases
that need a server of their own (limits, idle timeout, durability, restart, shutdown) are
skipped. `-k TEXT` runs only the cases whose name contains TEXT.

Prints one line per case and `N passed, N failed` last; exits 1 if any case failed.
Nothing here sleeps: every wait blocks on a socket with a timeout.
"""

import argparse
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
    FRIEND_ACCEPTED, FRIEND_ASKED, FRIEND_DECLINED, FRIEND_REMOVED, GROUP_JOINED, GROUP_LEFT,
    KIND_DIRECT, KIND_GROUP, LOBBY_GROUP_ID, Client, ConnectionClosed, Op, ServerError,
    auth_message, client_proof, derive_keys, encode_frame, encode_message, server_signature)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEST_ITERATIONS = 4096
MIN_KDF_ITERATIONS = 1000
PUSH_TIMEOUT = 5.0
STARTUP_TIMEOUT = 30.0

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
        self.clients = []
        self.server = None
        self.workdir = None

    # Names and accounts ----------------------------------------------------------------------

    def new_name(self, label="u"):
        """A fresh valid user name, unique across runs: `t<random>_<n><label>`."""
        self.serial += 1
        return ("t%s_%d%s" % (self.tag, self.serial, label))[:32]

    def connect(self, hello=True):
        client = Client(timeout=10.0).connect(self.host, self.port)
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

    def login(self, name):
        """A new logged-in connection for `name`, after its SYNC_DONE.

        The backlog pushed at login is in `client.backlog`, the SYNC_DONE count in
        `client.sync_count`.
        """
        client = self.connect()
        client.login(name, self.passwords[name], keys=self.keys.get(name))
        client.backlog, client.sync_count = client.wait_sync(PUSH_TIMEOUT)
        return client

    def user(self, label="u"):
        return self.login(self.register(label))

    def close_all(self):
        for client in self.clients:
            client.close()
        self.clients = []


def make_friends(a, b):
    """Make the logged-in users of `a` and `b` friends; ack the events; drop presence noise."""
    eq(a.friend_request(b.username)["outcome"], 0, "friend request outcome")
    asked = b.wait_push(Op.FRIEND_EVENT, lambda f: f["username"] == a.username,
                        timeout=PUSH_TIMEOUT)
    b.friend_accept(a.username)
    accepted = a.wait_push(Op.FRIEND_EVENT, lambda f: f["username"] == b.username,
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


@case("hello: HELLO_OK carries version 1 and the limits")
def _(env):
    client = env.connect(hello=False)
    info = client.hello()
    eq(info["version"], 1, "version")
    check(info["server"].startswith("im-server"), "server name %r" % info["server"])
    check(info["max_frame_before_login"] <= info["max_frame"], "before-login limit <= limit")
    if env.own_server:
        eq((info["max_frame"], info["max_frame_before_login"], info["max_body"],
            info["idle_timeout_secs"]), (65536, 4096, 4096, 120), "default limits")


@case("hello: the byte example of PROTOCOL.md section 7")
def _(env):
    client = env.connect(hello=False)
    client.send_raw(bytes.fromhex("00000007 01 00000001 0001"))
    frame = client.recv_frame()
    eq(frame.name, "HELLO_OK", "answer to HELLO")
    eq(frame.request_id, 1, "request id")
    if env.own_server and frame["server"] == "im-server 0.1.0":
        eq(frame.raw.hex(), ("00000028 81 00000001 0001 000f696d2d7365727665722030 2e312e30"
                             "00010000 00001000 00001000 00000078").replace(" ", ""),
           "HELLO_OK bytes")
    client.send_raw(bytes.fromhex("00000005 02 00000002"))
    eq(client.recv_frame().raw.hex(), "000000058200000002", "PONG bytes")


@case("hello: version 2 is UNSUPPORTED_VERSION and a close")
def _(env):
    client = env.connect(hello=False)
    client.send_raw(encode_message(Op.HELLO, 1, version=2))
    frames = client.wait_closed(PUSH_TIMEOUT)
    errors = [f for f in frames if f.opcode == Op.ERROR]
    check(errors, "no ERROR before the close: %r" % frames)
    eq(errors[0]["code"], _code("UNSUPPORTED_VERSION"), "error code")
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
    expect_error("AUTH_FAILED", client.login_finish, bytes(32))
    client.login(name, env.passwords[name])
    eq(client.ping().name, "PONG", "logged in")


@case("framing: frames split byte by byte and many in one write")
def _(env):
    client = env.connect(hello=False)
    for byte in encode_message(Op.HELLO, 1, version=1):
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
    for request_id, opcode in ((12, 0x00), (13, 0x07), (14, 0x80), (15, 0xC0), (16, 0xFF)):
        expect_raw_error(client, encode_frame(opcode, request_id, b"\x00\x01"), request_id,
                         "UNKNOWN_OPCODE")
    client.login(name, env.passwords[name])
    expect_raw_error(client, encode_frame(0x50, 17, b"junk"), 17, "UNKNOWN_OPCODE")
    client.ping()
    client.friend_list()


@case("framing: malformed bodies are MALFORMED_FRAME, connection stays")
def _(env):
    name = env.register()
    client = env.connect(hello=False)
    expect_raw_error(client, encode_frame(Op.HELLO, 21, b"\x00"), 21, "MALFORMED_FRAME")
    expect_raw_error(client, encode_frame(Op.HELLO, 22, b"\x00\x01\x00"), 22, "MALFORMED_FRAME")
    expect_raw_error(client, encode_frame(Op.PING, 23, b"\x00"), 23, "MALFORMED_FRAME")
    client.hello()
    bad_utf8 = (b"\x00\x02\xc3\x28" + _u16str(bytes(16)) + struct.pack(">I", 5000)
                + _u16str(bytes(32)) + _u16str(bytes(32)))
    expect_raw_error(client, encode_frame(Op.REGISTER, 24, bad_utf8), 24, "MALFORMED_FRAME")
    expect_raw_error(client, encode_frame(Op.REGISTER, 25, bad_utf8[:-3]), 25,
                     "MALFORMED_FRAME")
    expect_raw_error(client, encode_frame(Op.LOGIN_START, 26, b"\x00\x09abc"), 26,
                     "MALFORMED_FRAME")
    client.login(name, env.passwords[name])
    history_kind_2 = b"\x02" + struct.pack(">QQH", 1, 0, 10)
    expect_raw_error(client, encode_frame(Op.HISTORY, 27, history_kind_2), 27, "MALFORMED_FRAME")
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
    expect_error("NOT_AUTHENTICATED", client.friend_list)  # REGISTER does not log in
    eq(client.login(name, "correct horse")["username"], name, "LOGIN_OK name")
    client.wait_sync(PUSH_TIMEOUT)
    client.friend_list()
    client.logout()
    expect_error("NOT_AUTHENTICATED", client.friend_list)
    expect_error("NOT_AUTHENTICATED", client.logout)
    eq(client.login(name, keys=keys)["username"], name, "login with cached keys")
    client.logout()
    client.login(name, salted_password=keys.salted_password)
    client.friend_list()


@case("accounts: LOGIN_OK carries the name as registered, login in any case")
def _(env):
    name = env.new_name("MiXeD")
    client = env.connect()
    client.register(name, "pw", iterations=TEST_ITERATIONS)
    eq(client.login(name.lower(), "pw")["username"], name, "LOGIN_OK name")


@case("accounts: a taken name, in any case, is USERNAME_TAKEN")
def _(env):
    name = env.new_name("Dup")
    client = env.connect()
    client.register(name, "pw", iterations=TEST_ITERATIONS)
    expect_error("USERNAME_TAKEN", client.register, name, "pw", iterations=TEST_ITERATIONS)
    expect_error("USERNAME_TAKEN", client.register, name.upper(), "x", iterations=TEST_ITERATIONS)
    expect_error("USERNAME_TAKEN", client.register, name.lower(), "x", iterations=TEST_ITERATIONS)
    client.ping()
    client.login(name, "pw")


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
    good = derive_keys("pw", bytes(16), TEST_ITERATIONS)

    def register(salt=bytes(16), iterations=TEST_ITERATIONS, stored=good.stored_key,
                 server=good.server_key):
        return client.request(Op.REGISTER, username=name, salt=salt, iterations=iterations,
                              stored_key=stored, server_key=server)

    expect_error("WEAK_CREDENTIALS", register, iterations=1)
    if env.own_server:
        expect_error("WEAK_CREDENTIALS", register, iterations=MIN_KDF_ITERATIONS - 1)
    expect_error("WEAK_CREDENTIALS", register, salt=bytes(15))
    expect_error("WEAK_CREDENTIALS", register, salt=bytes(65))
    expect_error("WEAK_CREDENTIALS", register, stored=bytes(31))
    expect_error("WEAK_CREDENTIALS", register, server=bytes(33))
    expect_error("WEAK_CREDENTIALS", register, stored=b"")
    client.register(name, "pw", iterations=TEST_ITERATIONS, salt=secrets.token_bytes(64))
    if env.own_server:
        client.register(env.new_name(), "pw", iterations=MIN_KDF_ITERATIONS)


@case("accounts: wrong password is AUTH_FAILED, connection stays, right one works")
def _(env):
    name = env.register()
    client = env.connect()
    expect_error("AUTH_FAILED", client.login, name, "not the password")
    client.ping()
    expect_error("NOT_AUTHENTICATED", client.friend_list)
    client.login(name, env.passwords[name])
    client.friend_list()


@case("accounts: unknown user gets a stable fake challenge and AUTH_FAILED")
def _(env):
    real = env.register()
    ghost = env.new_name("ghost")
    client = env.connect()
    nonce = secrets.token_bytes(16)
    challenge = client.login_start(ghost, nonce)
    eq(len(challenge["salt"]), 16, "fake salt length")
    eq(challenge["iterations"], 600000, "fake iterations")
    check(challenge["nonce"].startswith(nonce), "nonce starts with the client nonce")
    eq(len(challenge["nonce"]), len(nonce) + 24, "nonce length")
    expect_error("AUTH_FAILED", client.login_finish, secrets.token_bytes(32))
    again = client.login_start(ghost.upper(), secrets.token_bytes(32))
    eq(again["salt"], challenge["salt"], "same fake salt for the same name, any case")
    check(again["nonce"][32:] != challenge["nonce"][16:], "fresh server nonce")
    expect_error("AUTH_FAILED", client.login_finish, secrets.token_bytes(32))
    genuine = client.login_start(real, secrets.token_bytes(16))
    eq((len(genuine["salt"]), genuine["iterations"]), (16, TEST_ITERATIONS), "real challenge")
    eq(genuine["salt"], env.keys[real].salt, "real salt")
    expect_error("AUTH_FAILED", client.login_finish, secrets.token_bytes(32))


@case("accounts: the fifth failed login is TOO_MANY_ATTEMPTS and a close")
def _(env):
    name = env.register()
    client = env.connect()
    for attempt in range(4):
        expect_error("AUTH_FAILED", client.login, name, "wrong %d" % attempt)
    client.login_start(name)
    client.send_raw(encode_message(Op.LOGIN_FINISH, 99, client_proof=bytes(32)))
    frames = client.wait_closed(PUSH_TIMEOUT)
    errors = [f for f in frames if f.opcode == Op.ERROR]
    check(errors, "closed without ERROR: %r" % frames)
    eq(errors[0]["code"], _code("TOO_MANY_ATTEMPTS"), "fifth failure")


@case("accounts: LOGIN_FINISH without LOGIN_START, REGISTER/LOGIN_START when in: INVALID_STATE")
def _(env):
    name = env.register()
    client = env.connect()
    expect_error("INVALID_STATE", client.login_finish, bytes(32))
    client.login(name, env.passwords[name])
    expect_error("INVALID_STATE", client.register, env.new_name(), "pw",
                 iterations=TEST_ITERATIONS)
    expect_error("INVALID_STATE", client.login_start, name)
    expect_error("INVALID_STATE", client.login_finish, bytes(32))
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
    ok = client.login_finish(client_proof(keys, message))
    eq(ok["server_signature"], server_signature(keys, message), "server signature")
    client.friend_list()


@case("accounts: a failed LOGIN_FINISH returns to Unauthenticated")
def _(env):
    name = env.register()
    client = env.connect()
    client.login_start(name)
    expect_error("AUTH_FAILED", client.login_finish, secrets.token_bytes(32))
    expect_error("INVALID_STATE", client.login_finish, secrets.token_bytes(32))
    expect_error("NOT_AUTHENTICATED", client.friend_list)
    client.login(name, env.passwords[name])


@case("accounts: messaging before login is NOT_AUTHENTICATED, store untouched")
def _(env):
    name = env.register()
    client = env.connect()
    requests = [
        (Op.FRIEND_REQUEST, {"username": name}), (Op.FRIEND_ACCEPT, {"username": name}),
        (Op.FRIEND_DECLINE, {"username": name}), (Op.FRIEND_REMOVE, {"username": name}),
        (Op.FRIEND_LIST, {}), (Op.SEND, {"to": name, "client_msg_id": 1, "body": "x"}),
        (Op.ACK, {"up_to_message_id": 1}),
        (Op.HISTORY, {"kind": 0, "peer": name, "before_message_id": 0, "limit": 5}),
        (Op.READ, {"peer": name, "up_to_message_id": 1}), (Op.GROUP_CREATE, {"name": "g"}),
        (Op.GROUP_INVITE, {"group_id": 1, "username": name}), (Op.GROUP_LEAVE, {"group_id": 1}),
        (Op.GROUP_MEMBERS, {"group_id": 1}), (Op.GROUP_LIST, {}),
        (Op.GROUP_SEND, {"group_id": 1, "client_msg_id": 1, "body": "x"}), (Op.LOGOUT, {}),
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
    ok = client.login_finish(client_proof(keys, message))
    eq(ok["server_signature"], server_signature(keys, message), "server signature")
    backlog, count = client.wait_sync(PUSH_TIMEOUT)
    eq((backlog, count), ([], 0), "nothing was stored by the refused requests")


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


@case("friends: error cases")
def _(env):
    a, b = env.user("a"), env.user("b")
    expect_error("INVALID_ARGUMENT", a.friend_request, a.username)
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
    presence_b = lambda: a.wait_push(Op.PRESENCE, from_user(b_name), PUSH_TIMEOUT)
    b1.logout()
    eq(presence_b()["online"], 0, "after b's logout")
    eq(a.friend_list()["friends"], [{"username": b_name, "online": 0}], "offline in list")
    b1.login(b_name, env.passwords[b_name])
    eq(presence_b()["online"], 1, "after b's login")
    b2 = env.login(b_name)
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
    a2 = env.login(a1.username)
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
    b2 = env.login(b1.username)
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
    check(all(x < y for x, y in zip(ids, ids[1:])), "ids increase: %r" % ids)
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
    b.ack(sent[-1]["message_id"])
    b.close()
    b = env.login(b.username)
    eq((b.backlog, b.sync_count), ([], 0), "after ACK")
    a.close()
    a = env.login(a.username)
    eq([f["body"] for f in a.backlog], ["from b before going offline"],
       "a's backlog: b's message, not a's own")


@case("offline: ACK is per user, counts for every device, never moves backwards")
def _(env):
    a, b1 = env.user("a"), env.user("b")
    make_friends(a, b1)
    first = a.send(b1.username, "live")
    b1.wait_push(Op.DELIVER, timeout=PUSH_TIMEOUT)
    b1.ack(first["message_id"])
    b2 = env.login(b1.username)
    eq((b2.backlog, b2.sync_count), ([], 0), "second device: acked by the first")
    b1.close()
    b2.close()
    m2 = a.send(b1.username, "m2")
    m3 = a.send(b1.username, "m3")
    b1 = env.login(b1.username)
    eq([f["body"] for f in b1.backlog], ["m2", "m3"], "backlog")
    b1.ack(m2["message_id"])
    b1.ack(first["message_id"])
    b1.close()
    b2 = env.login(b1.username)
    eq([f["message_id"] for f in b2.backlog], [m3["message_id"]], "only the unacked one")
    b2.ack(m3["message_id"])


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


@case("offline: a 300-item backlog from two cursors arrives in id order, with a live one")
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
        expected.append(a.send(b_name, "d%d" % i)["message_id"])
        expected.append(a.group_send(group_id, "g%d" % i)["message_id"])
        if i == 74:
            asker.friend_request(b_name)
    b = env.connect()
    b.login(b_name, env.passwords[b_name])
    live = a.send(b_name, "live")["message_id"]
    expected.append(live)
    backlog, count = b.wait_sync(PUSH_TIMEOUT)
    eq(count, len(backlog), "SYNC_DONE count is the number of items pushed before it")
    b.ping()
    after = [f for f in b.drain_pushes() if f.opcode == Op.DELIVER]
    received = [(f.name, f["message_id"]) for f in backlog + after]
    events = [i for i, item in enumerate(received) if item[0] == "FRIEND_EVENT"]
    eq(len(events), 1, "one friend event in the backlog")
    eq(events[0], 150, "the friend event in its place")
    del received[150]
    eq(len(received), len(expected), "number of messages received")
    eq([message_id for _, message_id in received], expected, "every message once, in id order")
    b.ack(live)
    b.close()
    eq(env.login(b_name).sync_count, 0, "one ACK covers the direct and the group cursor")


def pipelined_sends(client, to, bodies, batch=200):
    """SEND each body to `to`, `batch` requests per write; returns the SENT frames in order."""
    results = []
    for start in range(0, len(bodies), batch):
        request_ids = []
        data = bytearray()
        for body in bodies[start:start + batch]:
            request_id = client.allocate_request_id()
            request_ids.append(request_id)
            data += encode_message(Op.SEND, request_id, to=to, body=body,
                                   client_msg_id=client.next_client_msg_id())
        client.send_raw(data)
        results += [client.wait_response(request_id) for request_id in request_ids]
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
    b.login(b_name, env.passwords[b_name])
    expected += [s["message_id"] for s in pipelined_sends(
        a, b_name, ["live %d" % i for i in range(50)], batch=50)]
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
# History and read receipts
# ---------------------------------------------------------------------------------------------

@case("history: newest first, paged with next_before, same for both sides")
def _(env):
    a, b = env.user("a"), env.user("b")
    make_friends(a, b)
    eq(a.history(peer=b.username).fields, {"messages": [], "next_before": 0}, "empty")
    sent = []
    for i in range(5):
        sender, peer = (a, b) if i % 2 == 0 else (b, a)
        result = sender.send(peer.username, "h%d" % i)
        sent.append({"message_id": result["message_id"], "timestamp_ms": result["timestamp_ms"],
                     "sender": sender.username, "body": "h%d" % i})
    newest_first = list(reversed(sent))
    for client in (a, b):
        peer = b if client is a else a
        pages = []
        before = 0
        for _ in range(4):
            page = client.history(peer=peer.username, before=before, limit=2)
            pages.append(page["messages"])
            before = page["next_before"]
            if before == 0:
                break
        eq(pages, [newest_first[0:2], newest_first[2:4], newest_first[4:5]],
           "pages of 2 for %s" % client.username)
    whole = a.history(peer=b.username, limit=200)
    eq(whole["messages"], newest_first, "one page of 200")
    eq(whole["next_before"], 0, "next_before when nothing is left")
    exact = a.history(peer=b.username, limit=5)
    eq((exact["messages"], exact["next_before"]), (newest_first, 0),
       "a page that ends exactly at the oldest message")
    older = a.history(peer=b.username, before=sent[2]["message_id"], limit=10)
    eq(older["messages"], [sent[1], sent[0]], "before a given id")
    expect_error("INVALID_ARGUMENT", a.history, peer=b.username, limit=0)
    expect_error("INVALID_ARGUMENT", a.history, peer=b.username, limit=201)


@case("history: someone else's conversation is FORBIDDEN")
def _(env):
    a, b, c = env.user("a"), env.user("b"), env.user("c")
    make_friends(a, b)
    a.send(b.username, "private")
    expect_error("FORBIDDEN", c.history, peer=a.username)
    expect_error("FORBIDDEN", c.history, peer=b.username)
    expect_error("FORBIDDEN", c.history, peer=env.new_name("nobody"))
    a.friend_request(c.username)
    expect_error("FORBIDDEN", c.history, peer=a.username)


@case("read: READ pushes READ_RECEIPT to every connection of the peer")
def _(env):
    a1, b = env.user("a"), env.user("b")
    make_friends(a1, b)
    a2 = env.login(a1.username)
    a1.send(b.username, "r1")
    m2 = a1.send(b.username, "r2")
    b.read(a1.username, m2["message_id"])
    for device in (a1, a2):
        receipt = device.wait_push(Op.READ_RECEIPT, timeout=PUSH_TIMEOUT)
        eq(receipt.fields, {"username": b.username, "up_to_message_id": m2["message_id"]},
           "READ_RECEIPT")
    c = env.user("c")
    expect_error("NOT_FRIENDS", b.read, c.username, m2["message_id"])


# ---------------------------------------------------------------------------------------------
# Groups
# ---------------------------------------------------------------------------------------------

@case("groups: three users, invites, GROUP_EVENTs, GROUP_SEND, offline member catches up")
def _(env):
    a, b1 = env.user("a"), env.user("b")
    c_name = env.register("c")
    name = "team " + env.tag
    group_id = a.group_create(name)["group_id"]
    check(group_id > LOBBY_GROUP_ID, "new group id %d" % group_id)
    a.group_invite(group_id, b1.username)
    for client in (a, b1):
        event = client.wait_push(Op.GROUP_EVENT, timeout=PUSH_TIMEOUT)
        eq(event.fields, {"group_id": group_id, "event": GROUP_JOINED, "username": b1.username,
                          "group_name": name}, "join event at %s" % client.username)
    b2 = env.login(b1.username)
    b1.group_invite(group_id, c_name)  # any member may invite
    for client in (a, b1, b2):
        event = client.wait_push(Op.GROUP_EVENT, timeout=PUSH_TIMEOUT)
        eq((event["event"], event["username"]), (GROUP_JOINED, c_name), "c joined")
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
    eq([f.fields for f in c.backlog], [expected], "c's backlog")
    eq(c.sync_count, 1, "c's SYNC_DONE count")
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
    b1.close()
    b2.close()
    b = env.login(b_name)
    eq((b.backlog, b.sync_count), ([], 0), "own group message not pushed back at login")
    a.close()
    a = env.login(a.username)
    eq([f["message_id"] for f in a.backlog], [sent["message_id"]], "a's unacked backlog")


@case("groups: invite errors, leave with events, owner leaves, leaver is refused")
def _(env):
    a, b, c = env.user("a"), env.user("b"), env.user("c")
    group_id = a.group_create("g " + env.tag)["group_id"]
    a.group_invite(group_id, b.username)
    a.group_invite(group_id, c.username)
    expect_error("ALREADY_MEMBER", a.group_invite, group_id, b.username)
    expect_error("ALREADY_MEMBER", b.group_invite, group_id, a.username)
    expect_error("USER_NOT_FOUND", a.group_invite, group_id, env.new_name("nobody"))
    for client in (a, b, c):
        client.ping()
        client.drain_pushes()
    c.group_leave(group_id)
    for client in (a, b, c):
        event = client.wait_push(Op.GROUP_EVENT, timeout=PUSH_TIMEOUT)
        eq((event["group_id"], event["event"], event["username"]),
           (group_id, GROUP_LEFT, c.username), "leave event at %s" % client.username)
    for call in (lambda: c.group_send(group_id, "x"), lambda: c.group_members(group_id),
                 lambda: c.history(group_id=group_id), lambda: c.group_leave(group_id),
                 lambda: c.group_invite(group_id, c.username)):
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


@case("groups: an invitee's cursor starts at the newest message, older ones in HISTORY")
def _(env):
    a = env.user("a")
    b_name = env.register("b")
    group_id = a.group_create("late " + env.tag)["group_id"]
    old = [a.group_send(group_id, "old %d" % i)["message_id"] for i in range(2)]
    a.group_invite(group_id, b_name)
    b = env.login(b_name)
    eq((b.backlog, b.sync_count), ([], 0), "nothing old pushed")
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
    a, c = env.user("a"), env.user("c")
    group_id = a.group_create("closed " + env.tag)["group_id"]
    a.group_send(group_id, "members only")
    for target in (group_id, 2 ** 63):
        for call in (lambda: c.group_send(target, "x"), lambda: c.group_members(target),
                     lambda: c.history(group_id=target), lambda: c.group_leave(target),
                     lambda: c.group_invite(target, c.username)):
            expect_error("FORBIDDEN", call)
    eq(c.expect_no_push(Op.DELIVER), None, "no DELIVER to a non-member")


@case("groups: lobby (id 1) holds every user; a lobby message reaches everyone online")
def _(env):
    x, y = env.user("x"), env.user("y")
    groups = {g["group_id"]: g for g in x.group_list()["groups"]}
    eq(groups.get(LOBBY_GROUP_ID, {}).get("name"), "lobby", "lobby in GROUP_LIST")
    members = {m["username"]: m for m in x.group_members(LOBBY_GROUP_ID)["members"]}
    check(x.username in members and y.username in members, "both in lobby's members")
    eq(members[x.username]["online"], 1, "x online in lobby")
    body = "lobby hello " + env.tag
    sent = x.group_send(LOBBY_GROUP_ID, body)
    got = y.wait_push(Op.DELIVER, is_deliver(body=body), PUSH_TIMEOUT)
    eq((got["message_id"], got["kind"], got["group_id"], got["from"]),
       (sent["message_id"], KIND_GROUP, LOBBY_GROUP_ID, x.username), "lobby DELIVER")
    eq(y.history(group_id=LOBBY_GROUP_ID, limit=1)["messages"][0]["message_id"],
       sent["message_id"], "lobby history")
    y.ack(got["message_id"])
    x.ack(sent["message_id"])


@case("limits: HELLO_OK shows the configured limits; SERVER_FULL; IDLE_TIMEOUT",
      own_server_only=True)
def _(env):
    process, host, port = start_server(env.workdir, "limits.db", [
        "--max-connections", "2", "--idle-timeout", "2", "--max-frame", "8192",
        "--max-frame-before-login", "1024", "--max-body", "100"])
    try:
        first = Client().connect(host, port)
        second = Client().connect(host, port)
        env.clients += [first, second]
        info = first.hello()
        eq((info["max_frame"], info["max_frame_before_login"], info["max_body"],
            info["idle_timeout_secs"]), (8192, 1024, 100, 2), "configured limits")
        second.ping()
        third = Client().connect(host, port)
        env.clients.append(third)
        expect_close_with(third, "SERVER_FULL")
        # A frame over the before-login limit of this server.
        second.send_raw(struct.pack(">IBI", 1025, Op.PING, 7))
        expect_close_with(second, "FRAME_TOO_LARGE")
        name = env.new_name()
        first.register(name, "pw", iterations=TEST_ITERATIONS)
        first.login(name, "pw")
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
            client = Client().connect(host, port)
            env.clients.append(client)
            client.hello()
            client.login(name, "pw")
            client.wait_sync(PUSH_TIMEOUT)
            return client

        names = [env.new_name("i"), env.new_name("w")]
        registrar = Client().connect(host, port)
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


@case("restart: accounts, backlog, cursors and retry dedup survive a restart",
      own_server_only=True)
def _(env):
    a, b = env.user("a"), env.user("b")
    make_friends(a, b)
    b.close()
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
    eq([f["message_id"] for f in b.backlog], [sent["message_id"]], "backlog after restart")
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


def start_server(workdir, db_name="test.db", extra=()):
    """Start the built server on 127.0.0.1:0; returns (process, host, port).

    The database is `workdir/db_name`; the log (stderr) goes to `workdir/<db_name>.log`.
    """
    # IM_SERVER_BIN lets a caller that built the server elsewhere (cargo test) name the binary.
    binary = os.environ.get("IM_SERVER_BIN") or os.path.join(REPO, "target", "debug", "im-server")
    log = open(os.path.join(workdir, db_name + ".log"), "ab")
    process = subprocess.Popen(
        [binary, "--listen", "127.0.0.1:0", "--db", os.path.join(workdir, db_name),
         "--min-kdf-iterations", str(MIN_KDF_ITERATIONS),
         # Many users from one loopback address, and bursts of sends: limits off but sessions.
         "--trust-loopback", "--send-rate", "0", "--max-offline", "0"] + list(extra),
        stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL)
    log.close()
    line = b""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while not line.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        ready, _, _ = select.select([process.stdout], [], [], max(remaining, 0))
        if not ready:
            process.kill()
            process.wait()
            raise RuntimeError("the server printed no 'listening on' line in time")
        chunk = os.read(process.stdout.fileno(), 1)
        if not chunk:
            raise RuntimeError("the server exited (status %s) before listening; see %s.log"
                               % (process.wait(), db_name))
        line += chunk
    text = line.decode().strip()
    if not text.startswith("listening on "):
        process.kill()
        process.wait()
        raise RuntimeError("unexpected first line %r" % text)
    # Keep reading stdout so that the server never blocks on a full pipe.
    threading.Thread(target=process.stdout.read, daemon=True).start()
    host, _, port = text[len("listening on "):].rpartition(":")
    return process, host.strip("[]"), int(port)


def stop_server(process):
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


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
    args = parser.parse_args()
    if args.addr:
        host, _, port = args.addr.rpartition(":")
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
