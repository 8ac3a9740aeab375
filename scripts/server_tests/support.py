"""What every end-to-end case uses: the server under test (`Env`), clients that wait out a
login throttle (`PatientClient`), checks (`check`, `eq`, `expect_error`), the scenario helpers
shared by several areas, and starting and stopping servers of a case's own.

Cases are `unittest` methods of `ServerCase` subclasses, one module per area (`test_*.py`);
`scripts/test_server.py` runs them against one server and prints `N passed, N failed`.
"""

import atexit
import contextlib
import functools
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
import unittest

# imclient.py is in scripts/, one level up.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import imclient  # noqa: E402
# Every name here is the cases' vocabulary too: they import this module with *.
from imclient import (  # noqa: E402,F401
    FRIEND_ACCEPTED, FRIEND_ASKED, FRIEND_DECLINED, FRIEND_REMOVED, FRIEND_YOU_ACCEPTED,
    FRIEND_YOU_ASKED, FRIEND_YOU_DECLINED, FRIEND_YOU_REMOVED, GROUP_JOINED, GROUP_LEFT,
    KIND_DIRECT, KIND_GROUP, LOBBY_GROUP_ID, NEWER, OLDER, Client, ConnectionClosed, Device, Op,
    ProtocolError, ServerError, auth_message, client_proof, derive_keys, encode_frame,
    encode_message, is_item, last_item_id, new_device_id, server_signature)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
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
    eq(errors[-1]["code"], code_of(name), "closing error code (message %r)"
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


def code_of(name):
    return imclient.ERROR_CODES[name]


def u16str(text):
    data = text.encode("utf-8") if isinstance(text, str) else text
    return struct.pack(">H", len(data)) + data




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




def start_env_of_own():
    """An Env on a server started here, stopped (and its directory removed) at exit."""
    workdir = tempfile.TemporaryDirectory(prefix="im-server-test-")
    process, host, port = start_server(workdir.name)
    env = Env(host, port, own_server=True)
    env.server = process
    env.workdir = workdir.name

    def stop():
        # env.server, not process: the restart case replaces the server.
        stop_server(env.server)
        env.server.stdout.close()
        workdir.cleanup()
    atexit.register(stop)
    return env


def own_server_only(method):
    """Marks a case that needs a server of its own (limits, restarts): skipped with `--addr`."""
    @functools.wraps(method)
    def run(self):
        if not self.env.own_server:
            raise unittest.SkipTest("needs a server of its own")
        return method(self)
    return run


class ServerCase(unittest.TestCase):
    """A case against the run's server: `self.env` (set by the runner) is shared by all.

    Under another unittest runner, say `cd scripts && python3 -m unittest
    server_tests.test_friends`, no one has set it: the first case then starts a server of
    its own (see `start_server`, built beforehand), stopped when the run ends. Such a runner
    orders cases by name: the shutdown case (test_restarts) ends that server, so run it
    alone or last, as test_server.py does.
    """

    env = None

    @classmethod
    def setUpClass(cls):
        if ServerCase.env is None:
            ServerCase.env = start_env_of_own()

    def tearDown(self):
        self.env.close_all()
