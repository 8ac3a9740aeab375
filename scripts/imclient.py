#!/usr/bin/env python3
"""A client for im-server's wire protocol (PROTOCOL.md, version 2).

Standard library only, Python 3.9 or newer. Import it, or run it as a script to check its
encoders against the byte examples of PROTOCOL.md section 7 and its SCRAM math against the
RFC 7677 test vector::

    python3 scripts/imclient.py --self-test

Layout of this file, in reading order:

* wire tables: opcodes, error codes and the field list of every frame (``SCHEMAS``);
* encoding and decoding: ``encode_body``/``decode_body`` walk a schema, ``encode_frame`` and
  ``decode_frame`` add the frame header, ``split_frame`` cuts one frame off a byte buffer;
* SCRAM-SHA-256, the only copy of the client's steps (imchat and the tests use these):
  ``derive_keys`` and ``fresh_keys``, ``DerivedKeys.verifier`` (what REGISTER and
  PASSWORD_CHANGE send), ``answer_challenge`` (the proof for a LOGIN or REAUTH challenge),
  ``server_signature``; ``Client.login``, ``finish_login`` and ``fresh_proof`` put them in order;
* devices: ``Device`` and ``new_device_id`` (a login speaks for one device, which has its own
  delivery position on the server; the caller keeps the id from one run to the next);
* ``Client``: one TCP connection; requests are matched to responses by request id, pushes
  (and unsolicited errors, request id 0) wait in a queue until asked for.

Every blocking call takes a timeout and blocks on the socket, never in a sleep.
"""

import hashlib
import hmac
import secrets
import socket
import ssl
import struct
import sys
import time
from collections import deque

PROTOCOL_VERSION = 2
# The PBKDF2 iteration count this client registers with unless asked for another (OWASP's
# figure); never below the server's `min_kdf_iterations` from HELLO_OK.
DEFAULT_ITERATIONS = 600_000
DEFAULT_TIMEOUT = 10.0
# Bytes of random salt in a new verifier (RFC 7677's example uses 16).
SALT_BYTES = 16
# A frame from the server larger than this is treated as a protocol error by the client.
MAX_INCOMING_FRAME = 16 * 1024 * 1024
HEADER = struct.Struct(">IBI")  # length, opcode, request id
LOBBY_GROUP_ID = 1


# ---------------------------------------------------------------------------------------------
# Wire tables
# ---------------------------------------------------------------------------------------------

class Op:
    """Opcodes by name, as in PROTOCOL.md section 3."""

    # Requests.
    HELLO = 0x01
    PING = 0x02
    REGISTER = 0x03
    LOGIN_START = 0x04
    LOGIN_FINISH = 0x05
    LOGOUT = 0x06
    REAUTH_START = 0x07
    PASSWORD_CHANGE = 0x08
    ACCOUNT_DELETE = 0x09
    FRIEND_REQUEST = 0x10
    FRIEND_ACCEPT = 0x11
    FRIEND_DECLINE = 0x12
    FRIEND_REMOVE = 0x13
    FRIEND_LIST = 0x14
    SEND = 0x20
    ACK = 0x21
    HISTORY = 0x22
    READ = 0x23
    GROUP_CREATE = 0x30
    GROUP_INVITE = 0x31
    GROUP_LEAVE = 0x32
    GROUP_MEMBERS = 0x33
    GROUP_LIST = 0x34
    GROUP_SEND = 0x35
    DEVICE_LIST = 0x40
    DEVICE_REMOVE = 0x41
    # Responses.
    OK = 0x80
    HELLO_OK = 0x81
    PONG = 0x82
    ERROR = 0x83
    LOGIN_CHALLENGE = 0x84
    LOGIN_OK = 0x85
    FRIEND_REQUEST_OK = 0x86
    FRIEND_LIST_RESULT = 0x87
    SENT = 0x88
    HISTORY_PAGE = 0x89
    GROUP_CREATED = 0x8A
    GROUP_MEMBERS_RESULT = 0x8B
    GROUP_LIST_RESULT = 0x8C
    RETRY_LATER = 0x8D
    DEVICE_LIST_RESULT = 0x8E
    # Pushes.
    DELIVER = 0xC0
    FRIEND_EVENT = 0xC1
    PRESENCE = 0xC2
    READ_RECEIPT = 0xC3
    SYNC_DONE = 0xC4
    GROUP_EVENT = 0xC5
    SYNC_GAP = 0xC6


OPCODES = {name: value for name, value in vars(Op).items() if name.isupper()}
OPCODE_NAMES = {value: name for name, value in OPCODES.items()}

ERROR_NAMES = {
    1: "MALFORMED_FRAME",
    2: "UNKNOWN_OPCODE",
    3: "FRAME_TOO_LARGE",
    4: "UNSUPPORTED_VERSION",
    5: "HELLO_REQUIRED",
    6: "NOT_AUTHENTICATED",
    7: "INVALID_STATE",
    8: "SERVER_FULL",
    9: "IDLE_TIMEOUT",
    10: "INVALID_USERNAME",
    11: "USERNAME_TAKEN",
    12: "WEAK_CREDENTIALS",
    13: "AUTH_FAILED",
    14: "TOO_MANY_ATTEMPTS",
    15: "USER_NOT_FOUND",
    16: "ALREADY_FRIENDS",
    17: "REQUEST_PENDING",
    18: "NO_SUCH_REQUEST",
    19: "NOT_FRIENDS",
    20: "INVALID_BODY",
    21: "FORBIDDEN",
    22: "ALREADY_MEMBER",
    23: "INVALID_ARGUMENT",
    24: "STORE_UNAVAILABLE",
    25: "SHUTTING_DOWN",
    26: "SLOW_READER",
    27: "RATE_LIMITED",
    28: "RECIPIENT_QUEUE_FULL",
    29: "TOO_MANY_SESSIONS",
    30: "LOGIN_TIMEOUT",
    31: "TOO_MANY_DEVICES",
    32: "NO_SUCH_DEVICE",
    33: "FRAME_TIMEOUT",
    34: "TOO_MANY_GROUPS",
    35: "GROUP_FULL",
    36: "TOO_MANY_REQUESTS",
    37: "TOO_MANY_FRIENDS",
    38: "LOGIN_THROTTLED",
    39: "ACCOUNT_DISABLED",
    40: "CREDENTIALS_CHANGED",
    41: "ACCOUNT_DELETED",
}
# Codes newer than this table (a newer server) still decode: ServerError names them
# "ERROR_<code>" and keeps the server's message, so callers can act on the number.
ERROR_CODES = {name: code for code, name in ERROR_NAMES.items()}

# FRIEND_EVENT event values: what another user did to you (1-4)...
FRIEND_ASKED, FRIEND_ACCEPTED, FRIEND_DECLINED, FRIEND_REMOVED = 1, 2, 3, 4
# ... and what you did on another device of yours (5-8), to `username`.
FRIEND_YOU_ASKED, FRIEND_YOU_ACCEPTED, FRIEND_YOU_DECLINED, FRIEND_YOU_REMOVED = 5, 6, 7, 8
# GROUP_EVENT event values.
GROUP_JOINED, GROUP_LEFT = 1, 2
# DELIVER and HISTORY kinds.
KIND_DIRECT, KIND_GROUP = 0, 1
# HISTORY directions: ids below `from_message_id` newest first, or above it oldest first.
OLDER, NEWER = 0, 1

U8, U16, U32, U64, STR, BYTES = "u8", "u16", "u32", "u64", "str", "bytes"
_INTS = {U8: struct.Struct(">B"), U16: struct.Struct(">H"), U32: struct.Struct(">I"),
         U64: struct.Struct(">Q")}


class ListOf:
    """A field holding a count (of `count_type`) followed by that many records of `fields`."""

    def __init__(self, count_type, fields):
        self.count_type = count_type
        self.fields = fields


class Switch:
    """Fields that depend on an earlier field's value: `cases[value]` is the field list."""

    def __init__(self, on, cases):
        self.on = on
        self.cases = cases


_TARGET = Switch("kind", {KIND_DIRECT: [("peer", STR)], KIND_GROUP: [("group_id", U64)]})
_DELIVER_TO = Switch("kind", {KIND_DIRECT: [("to", STR)], KIND_GROUP: [("group_id", U64)]})

# Every frame's body, field by field. A field is `(name, type)` or a `Switch`.
SCHEMAS = {
    Op.HELLO: [("version", U16)],
    Op.PING: [],
    Op.REGISTER: [("username", STR), ("salt", BYTES), ("iterations", U32),
                  ("stored_key", BYTES), ("server_key", BYTES)],
    Op.LOGIN_START: [("username", STR), ("client_nonce", BYTES)],
    Op.LOGIN_FINISH: [("client_proof", BYTES), ("device_id", U64), ("device_name", STR)],
    Op.LOGOUT: [],
    Op.REAUTH_START: [("client_nonce", BYTES)],
    Op.PASSWORD_CHANGE: [("client_proof", BYTES), ("salt", BYTES), ("iterations", U32),
                         ("stored_key", BYTES), ("server_key", BYTES)],
    Op.ACCOUNT_DELETE: [("client_proof", BYTES)],
    Op.FRIEND_REQUEST: [("username", STR)],
    Op.FRIEND_ACCEPT: [("username", STR)],
    Op.FRIEND_DECLINE: [("username", STR)],
    Op.FRIEND_REMOVE: [("username", STR)],
    Op.FRIEND_LIST: [],
    Op.SEND: [("to", STR), ("client_msg_id", U64), ("body", STR)],
    Op.ACK: [("up_to_message_id", U64)],
    Op.HISTORY: [("kind", U8), _TARGET, ("direction", U8), ("from_message_id", U64),
                 ("limit", U16)],
    Op.READ: [("peer", STR), ("up_to_message_id", U64)],
    Op.GROUP_CREATE: [("name", STR)],
    Op.GROUP_INVITE: [("group_id", U64), ("username", STR)],
    Op.GROUP_LEAVE: [("group_id", U64)],
    Op.GROUP_MEMBERS: [("group_id", U64)],
    Op.GROUP_LIST: [],
    Op.GROUP_SEND: [("group_id", U64), ("client_msg_id", U64), ("body", STR)],
    Op.DEVICE_LIST: [],
    Op.DEVICE_REMOVE: [("device_id", U64)],

    Op.OK: [],
    Op.HELLO_OK: [("version", U16), ("server", STR), ("max_frame", U32),
                  ("max_frame_before_login", U32), ("max_body", U32),
                  ("idle_timeout_secs", U32), ("login_timeout_secs", U32),
                  ("min_kdf_iterations", U32)],
    Op.PONG: [],
    Op.ERROR: [("code", U16), ("message", STR)],
    Op.RETRY_LATER: [("code", U16), ("retry_after_ms", U32), ("message", STR)],
    Op.LOGIN_CHALLENGE: [("salt", BYTES), ("iterations", U32), ("nonce", BYTES)],
    Op.LOGIN_OK: [("server_signature", BYTES), ("username", STR)],
    Op.FRIEND_REQUEST_OK: [("outcome", U8)],
    Op.FRIEND_LIST_RESULT: [("friends", ListOf(U16, [("username", STR), ("online", U8)])),
                            ("incoming", ListOf(U16, [("username", STR)])),
                            ("outgoing", ListOf(U16, [("username", STR)]))],
    Op.SENT: [("message_id", U64), ("timestamp_ms", U64)],
    Op.HISTORY_PAGE: [("messages", ListOf(U16, [("message_id", U64), ("timestamp_ms", U64),
                                                 ("sender", STR), ("body", STR)])),
                      ("next", U64)],
    Op.GROUP_CREATED: [("group_id", U64)],
    Op.GROUP_MEMBERS_RESULT: [("group_id", U64),
                              ("members", ListOf(U32, [("username", STR), ("online", U8),
                                                       ("owner", U8)]))],
    Op.GROUP_LIST_RESULT: [("groups", ListOf(U16, [("group_id", U64), ("name", STR),
                                                   ("owner", STR), ("members", U32)]))],
    Op.DEVICE_LIST_RESULT: [("devices", ListOf(U16, [("device_id", U64), ("name", STR),
                                                     ("last_seen_ms", U64), ("online", U8),
                                                     ("current", U8)]))],

    Op.DELIVER: [("message_id", U64), ("timestamp_ms", U64), ("from", STR), ("kind", U8),
                 _DELIVER_TO, ("body", STR)],
    Op.FRIEND_EVENT: [("message_id", U64), ("timestamp_ms", U64), ("event", U8),
                      ("username", STR)],
    Op.PRESENCE: [("username", STR), ("online", U8)],
    Op.READ_RECEIPT: [("message_id", U64), ("timestamp_ms", U64), ("reader", STR),
                      ("peer", STR), ("up_to_message_id", U64)],
    Op.SYNC_DONE: [("count", U32)],
    Op.GROUP_EVENT: [("message_id", U64), ("timestamp_ms", U64), ("group_id", U64),
                     ("event", U8), ("username", STR), ("group_name", STR)],
    Op.SYNC_GAP: [("after_message_id", U64), ("up_to_message_id", U64), ("skipped", U32)],
}

# The pushes that are items (PROTOCOL.md section 6, "Devices and delivery"): each has a
# `message_id`, arrives on a connection in strictly increasing id order, and stays past the
# device's position until that device ACKs it. PRESENCE, SYNC_DONE and SYNC_GAP are not items.
ITEM_OPCODES = frozenset((Op.DELIVER, Op.FRIEND_EVENT, Op.READ_RECEIPT, Op.GROUP_EVENT))


def is_item(frame):
    """True for a push that is an item, which a device acknowledges with ACK."""
    return frame.opcode in ITEM_OPCODES and frame.request_id == 0


def last_item_id(frames):
    """The highest `message_id` among the items in `frames` (0 if none): what to ACK once
    they are processed. Never pass a SENT here: ACK covers items received, not sent."""
    return max((frame["message_id"] for frame in frames if is_item(frame)), default=0)


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------

class ProtocolError(Exception):
    """The peer sent bytes that do not follow PROTOCOL.md (or the caller asked for such)."""


class ServerError(Exception):
    """An ERROR frame: `code` (int), `name` (from the table, e.g. "AUTH_FAILED"), `message`.

    `request_id` is 0 for an unsolicited error sent right before the server closes.
    """

    def __init__(self, code, message, request_id=0, retry_after_ms=None):
        self.code = code
        # Set for RETRY_LATER answers: the request may be repeated after this many ms.
        self.retry_after_ms = retry_after_ms
        self.name = ERROR_NAMES.get(code, "ERROR_%d" % code)
        self.message = message
        self.request_id = request_id
        super().__init__("%s (%d): %s" % (self.name, code, message))

    @classmethod
    def from_frame(cls, frame):
        retry_after_ms = frame["retry_after_ms"] if frame.opcode == Op.RETRY_LATER else None
        return cls(frame["code"], frame["message"], frame.request_id, retry_after_ms)


class ConnectionClosed(ConnectionError):
    """The server closed the connection. `error` is the last unsolicited ERROR, if any."""

    def __init__(self, message, error=None):
        self.error = error
        if error is not None:
            message = "%s (after %s)" % (message, error)
        super().__init__(message)


class AuthenticationError(Exception):
    """The server's LOGIN_OK signature did not prove that it knows our ServerKey."""


# ---------------------------------------------------------------------------------------------
# Encoding and decoding
# ---------------------------------------------------------------------------------------------

class Frame:
    """One decoded frame: `opcode`, `request_id` and the body's `fields` (a dict).

    Fields read as items (`frame["from"]`) or attributes (`frame.message_id`). List fields are
    lists of dicts. `raw` holds the frame's bytes as received, header included.
    """

    __slots__ = ("opcode", "request_id", "fields", "raw")

    def __init__(self, opcode, request_id, fields, raw=b""):
        self.opcode = opcode
        self.request_id = request_id
        self.fields = fields
        self.raw = raw

    @property
    def name(self):
        return OPCODE_NAMES.get(self.opcode, "0x%02X" % self.opcode)

    @property
    def is_push(self):
        """True for frames with request id 0: pushes and unsolicited errors."""
        return self.request_id == 0

    def __getitem__(self, key):
        return self.fields[key]

    def __contains__(self, key):
        return key in self.fields

    def get(self, key, default=None):
        return self.fields.get(key, default)

    def __getattr__(self, key):
        try:
            return self.fields[key]
        except KeyError:
            raise AttributeError(key) from None

    def __eq__(self, other):
        return (isinstance(other, Frame) and self.opcode == other.opcode
                and self.request_id == other.request_id and self.fields == other.fields)

    def __repr__(self):
        return "Frame(%s, rid=%d, %r)" % (self.name, self.request_id, self.fields)


def _encode_fields(schema, values, out):
    for field in schema:
        if isinstance(field, Switch):
            cases = field.cases.get(values[field.on])
            if cases is None:
                raise ValueError("%s=%r has no field list" % (field.on, values[field.on]))
            _encode_fields(cases, values, out)
            continue
        name, kind = field
        value = values[name]
        if isinstance(kind, ListOf):
            out += _INTS[kind.count_type].pack(len(value))
            for record in value:
                _encode_fields(kind.fields, record, out)
        elif kind in _INTS:
            try:
                out += _INTS[kind].pack(value)
            except struct.error as exc:
                raise ValueError("%s=%r does not fit %s" % (name, value, kind)) from exc
        else:
            data = value.encode("utf-8") if kind == STR else bytes(value)
            if len(data) > 0xFFFF:
                raise ValueError("%s is %d bytes, more than a u16 length" % (name, len(data)))
            out += struct.pack(">H", len(data)) + data


def encode_body(opcode, **fields):
    """The body of a frame with `opcode`, from keyword fields named as in SCHEMAS.

    >>> encode_body(Op.SEND, to="bob", client_msg_id=7, body="hi").hex()
    '0003626f62000000000000000700026869'
    """
    out = bytearray()
    _encode_fields(SCHEMAS[opcode], fields, out)
    return bytes(out)


def encode_frame(opcode, request_id, body=b""):
    """A whole frame: the u32 length, the opcode, the request id, then `body` (bytes)."""
    return HEADER.pack(5 + len(body), opcode, request_id) + body


def encode_message(opcode, request_id, **fields):
    """A whole frame with `opcode` and its body built from the keyword fields."""
    return encode_frame(opcode, request_id, encode_body(opcode, **fields))


class _Reader:
    def __init__(self, data):
        self.data = data
        self.pos = 0

    def take(self, count, what):
        end = self.pos + count
        if end > len(self.data):
            raise ProtocolError("body ends inside %s" % what)
        chunk = self.data[self.pos:end]
        self.pos = end
        return chunk


def _decode_fields(schema, reader, out):
    for field in schema:
        if isinstance(field, Switch):
            cases = field.cases.get(out[field.on])
            if cases is None:
                raise ProtocolError("%s=%r is not a known value" % (field.on, out[field.on]))
            _decode_fields(cases, reader, out)
            continue
        name, kind = field
        if isinstance(kind, ListOf):
            packer = _INTS[kind.count_type]
            (count,) = packer.unpack(reader.take(packer.size, name + " count"))
            records = []
            for _ in range(count):
                record = {}
                _decode_fields(kind.fields, reader, record)
                records.append(record)
            out[name] = records
        elif kind in _INTS:
            packer = _INTS[kind]
            (out[name],) = packer.unpack(reader.take(packer.size, name))
        else:
            (length,) = struct.unpack(">H", reader.take(2, name + " length"))
            data = reader.take(length, name)
            if kind == STR:
                try:
                    out[name] = data.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise ProtocolError("%s is not valid UTF-8" % name) from exc
            else:
                out[name] = bytes(data)


def decode_body(opcode, body):
    """The fields of a body as a dict; ProtocolError if it is short, long or invalid."""
    schema = SCHEMAS.get(opcode)
    if schema is None:
        raise ProtocolError("unknown opcode 0x%02X" % opcode)
    reader = _Reader(bytes(body))
    fields = {}
    _decode_fields(schema, reader, fields)
    if reader.pos != len(reader.data):
        raise ProtocolError("%d trailing bytes after %s" % (len(reader.data) - reader.pos,
                                                             OPCODE_NAMES[opcode]))
    return fields


def split_frame(buffer):
    """Cut one frame off the front of `buffer`: `(frame_bytes, rest)`, or None if incomplete."""
    if len(buffer) < 4:
        return None
    (length,) = struct.unpack_from(">I", buffer)
    if length < 5:
        raise ProtocolError("frame length %d is below 5" % length)
    if length > MAX_INCOMING_FRAME:
        raise ProtocolError("frame length %d is too large" % length)
    if len(buffer) < 4 + length:
        return None
    return bytes(buffer[:4 + length]), buffer[4 + length:]


def decode_frame(data):
    """Decode one whole frame (header included) into a Frame."""
    if len(data) < 9:
        raise ProtocolError("frame of %d bytes is shorter than a header" % len(data))
    length, opcode, request_id = HEADER.unpack_from(data)
    if length != len(data) - 4:
        raise ProtocolError("length field %d does not match %d bytes" % (length, len(data) - 4))
    return Frame(opcode, request_id, decode_body(opcode, data[9:]), bytes(data))


# ---------------------------------------------------------------------------------------------
# SCRAM-SHA-256 (PROTOCOL.md section 5)
# ---------------------------------------------------------------------------------------------

class DerivedKeys:
    """The keys derived from a password for one salt and iteration count.

    A client may keep them (they are password-equivalent: store them as carefully as the
    password) and pass them to `Client.login(keys=...)` to skip the slow PBKDF2 step.
    """

    __slots__ = ("salt", "iterations", "salted_password", "client_key", "stored_key",
                 "server_key")

    def __init__(self, salt, iterations, salted_password):
        self.salt = bytes(salt)
        self.iterations = iterations
        self.salted_password = bytes(salted_password)
        self.client_key = _hmac(self.salted_password, b"Client Key")
        self.stored_key = hashlib.sha256(self.client_key).digest()
        self.server_key = _hmac(self.salted_password, b"Server Key")

    def matches(self, salt, iterations):
        return self.salt == bytes(salt) and self.iterations == iterations

    def verifier(self):
        """The fields REGISTER and PASSWORD_CHANGE send: what the server stores, from which
        it can check a proof but never derive one."""
        return {"salt": self.salt, "iterations": self.iterations,
                "stored_key": self.stored_key, "server_key": self.server_key}

    def __repr__(self):
        return "DerivedKeys(salt=%s, iterations=%d)" % (self.salt.hex(), self.iterations)


def _hmac(key, message):
    return hmac.new(key, message, hashlib.sha256).digest()


def _xor(left, right):
    return bytes(a ^ b for a, b in zip(left, right))


def derive_keys(password, salt, iterations):
    """SaltedPassword, ClientKey, StoredKey and ServerKey for `password` (str or bytes).

    Checked against RFC 7677's example (user "user", password "pencil"):

    >>> import base64
    >>> keys = derive_keys("pencil", base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ=="), 4096)
    >>> message = RFC7677_AUTH_MESSAGE
    >>> base64.b64encode(client_proof(keys, message)).decode()
    'dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ='
    >>> base64.b64encode(server_signature(keys, message)).decode()
    '6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4='
    """
    if isinstance(password, str):
        password = password.encode("utf-8")
    salted = hashlib.pbkdf2_hmac("sha256", password, bytes(salt), iterations, 32)
    return DerivedKeys(salt, iterations, salted)


def fresh_keys(password, iterations):
    """Keys for a new verifier (registering, changing the password): a fresh random salt."""
    return derive_keys(password, secrets.token_bytes(SALT_BYTES), iterations)


def _wire_str(value):
    data = value.encode("utf-8")
    return struct.pack(">H", len(data)) + data


def _wire_bytes(value):
    return struct.pack(">H", len(value)) + bytes(value)


def auth_message(username, client_nonce, salt, iterations, nonce):
    """The AuthMessage of PROTOCOL.md: each field exactly as on the wire, length prefixes too."""
    return (_wire_str(username) + _wire_bytes(client_nonce) + _wire_bytes(salt)
            + struct.pack(">I", iterations) + _wire_bytes(nonce))


def client_proof(keys, message):
    """ClientProof = ClientKey XOR HMAC(StoredKey, AuthMessage)."""
    return _xor(keys.client_key, _hmac(keys.stored_key, message))


def server_signature(keys, message):
    """ServerSignature = HMAC(ServerKey, AuthMessage)."""
    return _hmac(keys.server_key, message)


def answer_challenge(username, client_nonce, challenge, keys):
    """The client's SCRAM step for a challenge (LOGIN_CHALLENGE or REAUTH_CHALLENGE) to a
    request that sent `client_nonce`: returns (ClientProof, AuthMessage), the AuthMessage kept
    to check the server's signature. `keys` must be derived for the challenge's salt and
    iterations.

    Raises AuthenticationError when the server's nonce does not extend ours: a server that
    drops our part could replay an old exchange (RFC 5802 section 5.1).
    """
    salt, iterations, nonce = challenge["salt"], challenge["iterations"], challenge["nonce"]
    if not nonce.startswith(client_nonce) or len(nonce) <= len(client_nonce):
        raise AuthenticationError("the server's nonce does not extend ours")
    message = auth_message(username, client_nonce, salt, iterations, nonce)
    return client_proof(keys, message), message


RFC7677_AUTH_MESSAGE = (
    b"n=user,r=rOprNGfwEbeRWgbNEkqO,"
    b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,"
    b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0")


# ---------------------------------------------------------------------------------------------
# Devices (PROTOCOL.md section 6, "Devices and delivery")
# ---------------------------------------------------------------------------------------------

MAX_DEVICE_NAME = 64


def new_device_id():
    """A fresh device id: a random nonzero u64, drawn once per installation and then kept,
    so that the next login of this installation continues from its delivery position."""
    while True:
        device_id = secrets.randbits(64)
        if device_id:
            return device_id


class Device:
    """The device a login speaks for: `device_id` (nonzero u64) and `name` (1-64 characters,
    shown in DEVICE_LIST). Keep it from one run to the next: a new id is a new device, which
    starts from the oldest position of the user's other devices and counts toward
    `--max-devices`."""

    __slots__ = ("device_id", "name")

    def __init__(self, device_id, name):
        self.device_id = device_id
        self.name = name

    @classmethod
    def new(cls, name):
        return cls(new_device_id(), name)

    def __eq__(self, other):
        return (isinstance(other, Device) and self.device_id == other.device_id
                and self.name == other.name)

    def __hash__(self):
        return hash((self.device_id, self.name))

    def __repr__(self):
        return "Device(%d, %r)" % (self.device_id, self.name)


# ---------------------------------------------------------------------------------------------
# The client
# ---------------------------------------------------------------------------------------------

def _opcode_of(value):
    if value is None or isinstance(value, int):
        return value
    return OPCODES[value]


class KeysMismatch(ValueError):
    """Saved keys do not fit the account's salt and iteration count, and no password was
    given to derive new ones."""

    def __init__(self):
        super().__init__("the saved key does not fit this account")


class TlsError(ConnectionError):
    """The TLS handshake failed: an untrusted certificate, or not a TLS port."""


def tls_context(ca_file=None):
    """A TLS context for `Client(tls=...)`: the system's trusted certificates, or only the
    one in `ca_file` (PEM) for a server with a self-signed certificate. TLS 1.2 at least."""
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class Client:
    """One connection to im-server.

    Requests block until their response arrives and return it as a Frame; an ERROR response
    raises ServerError. Pushes received meanwhile wait in `self.pushes` (a deque, oldest
    first) for `wait_push`, `wait_sync` or `drain_pushes`. `timeout` (seconds) bounds every
    wait that is not given its own.
    """

    def __init__(self, timeout=DEFAULT_TIMEOUT, tls=None):
        self.timeout = timeout
        # An ssl.SSLContext (see `tls_context`) to speak TLS, or None for plain TCP.
        self.tls = tls
        self.sock = None
        self.closed = False
        self.pushes = deque()
        self.hello_info = None
        self.username = None
        self.keys = None
        self.device = None
        # The SYNC_GAP of the latest login, if the server skipped part of the backlog.
        self.sync_gap = None
        self._buffer = bytearray()
        self._responses = {}
        self._next_request_id = 1
        self._next_client_msg_id = secrets.randbits(64)
        self.last_client_msg_id = None

    # -- connection -------------------------------------------------------------------------

    def connect(self, host, port):
        """Open the connection (TCP, then the TLS handshake if the client has a TLS context);
        returns self so that `Client().connect(h, p)` chains. A server whose certificate does
        not verify raises TlsError with a sentence saying so."""
        sock = socket.create_connection((host, port), timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls is not None:
            try:
                sock = self.tls.wrap_socket(sock, server_hostname=host)
            except ssl.SSLCertVerificationError as error:
                sock.close()
                raise TlsError("the server's certificate is not trusted (%s); for a self-signed "
                               "certificate, pass --ca with that certificate's file"
                               % error.verify_message) from None
            except (ssl.SSLError, OSError) as error:
                sock.close()
                raise TlsError("the TLS handshake with %s:%s failed (%s): is it the server's "
                               "TLS port?" % (host, port, getattr(error, "reason", None) or error)) from None
        self.sock = sock
        self.closed = False
        return self

    def close(self):
        """Close the socket without LOGOUT (as a crashed client would)."""
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None
                self.closed = True

    def abort(self):
        """Reset the connection (RST, no FIN handshake), like a killed process or lost link."""
        if self.sock is not None:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                     struct.pack("ii", 1, 0))
            except OSError:
                pass
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    # -- raw frames -------------------------------------------------------------------------

    def send_raw(self, data):
        """Write `data` as is (for hostile-input tests)."""
        self.sock.sendall(bytes(data))

    def allocate_request_id(self):
        request_id = self._next_request_id
        self._next_request_id = request_id + 1 if request_id < 0xFFFFFFFF else 1
        return request_id

    def send_request(self, opcode, /, **fields):
        """Send a request without waiting; returns its request id (see `wait_response`)."""
        opcode = _opcode_of(opcode)
        request_id = self.allocate_request_id()
        self.send_raw(encode_message(opcode, request_id, **fields))
        return request_id

    def request(self, opcode, /, timeout=None, **fields):
        """Send a request and return its response; ERROR raises ServerError."""
        return self.wait_response(self.send_request(opcode, **fields), timeout)

    def _deadline(self, timeout):
        return time.monotonic() + (self.timeout if timeout is None else timeout)

    def _last_error(self):
        for frame in reversed(self.pushes):
            if frame.opcode == Op.ERROR:
                return ServerError.from_frame(frame)
        return None

    def recv_frame(self, timeout=None):
        """The next frame off the wire, whatever it is, bypassing the push queue.

        Raises TimeoutError when none arrives in time, ConnectionClosed at end of stream.
        """
        return self._read_frame(self._deadline(timeout))

    def _read_frame(self, deadline):
        while True:
            cut = split_frame(self._buffer)
            if cut is not None:
                data, rest = cut
                self._buffer = bytearray(rest)
                return decode_frame(data)
            if self.sock is None:
                raise ConnectionClosed("the connection is closed", self._last_error())
            # Past the deadline, one last non-blocking read still takes what has arrived.
            self.sock.settimeout(max(deadline - time.monotonic(), 0.0))
            try:
                chunk = self.sock.recv(65536)
            except (socket.timeout, BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                raise TimeoutError("no frame from the server in time") from None
            except (ConnectionResetError, BrokenPipeError):
                chunk = b""
            if not chunk:
                self.closed = True
                if self._buffer:
                    raise ProtocolError("the server closed inside a frame")
                raise ConnectionClosed("the server closed the connection", self._last_error())
            self._buffer += chunk

    def _pump(self, deadline):
        """Read one frame and file it: a push goes to the queue, a response to its id."""
        frame = self._read_frame(deadline)
        if frame.is_push:
            self.pushes.append(frame)
        else:
            self._responses[frame.request_id] = frame
        return frame

    def wait_response(self, request_id, timeout=None):
        """The response to `request_id`; ERROR raises ServerError."""
        deadline = self._deadline(timeout)
        while request_id not in self._responses:
            self._pump(deadline)
        frame = self._responses.pop(request_id)
        if frame.opcode in (Op.ERROR, Op.RETRY_LATER):
            raise ServerError.from_frame(frame)
        return frame

    def _take_push(self, opcode, predicate):
        for index, frame in enumerate(self.pushes):
            if (opcode is None or frame.opcode == opcode) and (predicate is None
                                                                or predicate(frame)):
                del self.pushes[index]
                return frame
        return None

    def wait_push(self, opcode=None, predicate=None, timeout=None):
        """Take the oldest push matching `opcode` (int or name) and `predicate(frame)`.

        Other pushes stay queued. Blocks on the socket up to `timeout` seconds, then raises
        TimeoutError. Unsolicited ERROR frames (request id 0) are pushes too.
        """
        opcode = _opcode_of(opcode)
        deadline = self._deadline(timeout)
        frame = self._take_push(opcode, predicate)
        while frame is None:
            self._pump(deadline)
            frame = self._take_push(opcode, predicate)
        return frame

    def poll_push(self, timeout=0.0):
        """The oldest queued push, else the next one within `timeout` seconds, else None.

        With `fileno()` and `select`, this lets an interactive client wait on its terminal
        and the server at once. Frames already read into the buffer are served first.
        """
        try:
            return self.wait_push(timeout=timeout)
        except TimeoutError:
            return None

    def fileno(self):
        """The socket's file descriptor (for select); frames may also wait in the buffer."""
        return self.sock.fileno()

    def drain_pushes(self):
        """All queued pushes, oldest first; the queue is left empty."""
        frames = list(self.pushes)
        self.pushes.clear()
        return frames

    def wait_sync(self, timeout=None):
        """Wait for SYNC_DONE: returns `(backlog, count)`.

        `backlog` lists the items (DELIVER, FRIEND_EVENT, READ_RECEIPT, GROUP_EVENT) that
        arrived before SYNC_DONE, in order; they are taken off the queue with it, and so is a
        SYNC_GAP, which is kept in `sync_gap` (None when there was none). Other pushes
        (PRESENCE) stay queued. `count` is SYNC_DONE's count.
        """
        deadline = self._deadline(timeout)
        while True:
            for index, frame in enumerate(self.pushes):
                if frame.opcode == Op.SYNC_DONE:
                    return self._split_backlog(index), frame["count"]
            self._pump(deadline)

    def _split_backlog(self, done_index):
        backlog = []
        remaining = deque()
        for index, frame in enumerate(self.pushes):
            if index < done_index and is_item(frame):
                backlog.append(frame)
            elif index < done_index and frame.opcode == Op.SYNC_GAP:
                self.sync_gap = frame
            elif index != done_index:
                remaining.append(frame)
        self.pushes = remaining
        return backlog

    def ping(self, timeout=None):
        """PING and wait for PONG: also a barrier, since responses follow earlier pushes."""
        return self.request(Op.PING, timeout=timeout)

    def expect_no_push(self, opcode=None, predicate=None):
        """After a PING round trip, the matching push, if one is queued, else None."""
        self.ping()
        return self._take_push(_opcode_of(opcode), predicate)

    def wait_closed(self, timeout=None):
        """Read until the server closes; returns the frames read meanwhile (queued too).

        Raises TimeoutError if the connection is still open after `timeout`.
        """
        deadline = self._deadline(timeout)
        frames = []
        while True:
            try:
                frames.append(self._pump(deadline))
            except ConnectionClosed:
                return frames

    # -- session ----------------------------------------------------------------------------

    def hello(self, version=PROTOCOL_VERSION):
        self.hello_info = self.request(Op.HELLO, version=version)
        return self.hello_info

    def kdf_iterations(self, requested=None):
        """The PBKDF2 iteration count to register with: `requested` (or DEFAULT_ITERATIONS
        when None), raised to the server's `min_kdf_iterations` from HELLO_OK, since a
        count below it is refused with WEAK_CREDENTIALS."""
        count = DEFAULT_ITERATIONS if requested is None else requested
        if self.hello_info is not None:
            count = max(count, self.hello_info["min_kdf_iterations"])
        return count

    def register(self, username, password=None, iterations=None, salt=None, *, keys=None):
        """REGISTER; returns the DerivedKeys (usable by login).

        With `password`, derives keys for `salt` (a fresh one when None) and `iterations`
        raised to the server's minimum (see `kdf_iterations`). With `keys` instead, registers
        those as they are (derived beforehand: before connecting, or once for many users).
        Send a raw REGISTER request to offer what the server should refuse.
        """
        if keys is None:
            iterations = self.kdf_iterations(iterations)
            keys = (fresh_keys(password, iterations) if salt is None
                    else derive_keys(password, salt, iterations))
        self.request(Op.REGISTER, username=username, **keys.verifier())
        return keys

    def login_start(self, username, client_nonce=None):
        """LOGIN_START; returns the LOGIN_CHALLENGE frame."""
        client_nonce = secrets.token_bytes(24) if client_nonce is None else client_nonce
        return self.request(Op.LOGIN_START, username=username, client_nonce=client_nonce)

    def login_finish(self, proof, device):
        """LOGIN_FINISH with a raw proof for `device` (a Device); returns the LOGIN_OK frame
        (signature unchecked)."""
        return self.request(Op.LOGIN_FINISH, client_proof=proof, device_id=device.device_id,
                            device_name=device.name)

    def login(self, username, password=None, *, device, keys=None, salted_password=None,
              on_derive=None):
        """Log in with SCRAM-SHA-256 as `device` and check the server's signature.

        `device` is the Device this connection speaks for: keep it (its id above all) across
        runs, since the server keeps one delivery position per device.

        Give `password`, or cached key material: `keys` (DerivedKeys from `register`,
        `derive_keys` or an earlier login) or `salted_password` (32 bytes, valid for the salt
        and iteration count that the server will send). Cached `keys` that do not match the
        challenge's salt and iterations fall back to `password` (`on_derive()` is called first,
        since deriving takes a moment); with no password, the connection is closed without
        answering the challenge and KeysMismatch (a ValueError) is raised.

        Returns the LOGIN_OK frame; sets `self.username` (as registered), `self.keys` and
        `self.device`. Pushes that follow (SYNC_GAP perhaps, the backlog, then SYNC_DONE) are
        left in the queue: see `wait_sync`.
        """
        client_nonce = secrets.token_bytes(24)
        challenge = self.login_start(username, client_nonce)
        salt, iterations = challenge["salt"], challenge["iterations"]
        if keys is not None and not keys.matches(salt, iterations):
            keys = None
        if keys is None and salted_password is not None:
            keys = DerivedKeys(salt, iterations, salted_password)
        if keys is None and password is not None:
            if on_derive is not None:
                on_derive()
            keys = derive_keys(password, salt, iterations)
        if keys is None:
            self.close()
            raise KeysMismatch()
        return self.finish_login(username, client_nonce, challenge, keys, device)

    def finish_login(self, username, client_nonce, challenge, keys, device):
        """The second half of `login`, for a caller that sent LOGIN_START itself: answers
        `challenge` with `keys` (derived for its salt and iterations), checks the server's
        signature and returns the LOGIN_OK frame."""
        proof, message = answer_challenge(username, client_nonce, challenge, keys)
        self.sync_gap = None
        ok = self.login_finish(proof, device)
        if not hmac.compare_digest(ok["server_signature"], server_signature(keys, message)):
            self.close()
            raise AuthenticationError("the server could not prove it holds your account: "
                                      "this may not be the server you think it is")
        self.username = ok["username"]
        self.keys = keys
        self.device = device
        return ok

    def logout(self):
        result = self.request(Op.LOGOUT)
        self.username = None
        return result

    # -- your account -----------------------------------------------------------------------

    def fresh_proof(self, password):
        """REAUTH_START, then the proof of `password` for its challenge: what PASSWORD_CHANGE
        and ACCOUNT_DELETE ask for (PROTOCOL.md section 5, "Your account")."""
        client_nonce = secrets.token_bytes(24)
        challenge = self.request(Op.REAUTH_START, client_nonce=client_nonce)
        keys = derive_keys(password, challenge["salt"], challenge["iterations"])
        return answer_challenge(self.username, client_nonce, challenge, keys)[0]

    def change_password(self, old_password, new_password, iterations=None):
        """PASSWORD_CHANGE with a fresh proof of `old_password`; returns the new DerivedKeys.
        The account's other connections are closed by the server (CREDENTIALS_CHANGED)."""
        proof = self.fresh_proof(old_password)
        keys = fresh_keys(new_password, self.kdf_iterations(iterations))
        self.request(Op.PASSWORD_CHANGE, client_proof=proof, **keys.verifier())
        self.keys = keys
        return keys

    def delete_account(self, password):
        """ACCOUNT_DELETE with a fresh proof of `password`; the server then closes every
        connection of the account, this one included."""
        result = self.request(Op.ACCOUNT_DELETE, client_proof=self.fresh_proof(password))
        self.username = None
        return result

    # -- friends ----------------------------------------------------------------------------

    def friend_request(self, username):
        """FRIEND_REQUEST; the result's `outcome` is 0 (sent) or 1 (now friends)."""
        return self.request(Op.FRIEND_REQUEST, username=username)

    def friend_accept(self, username):
        return self.request(Op.FRIEND_ACCEPT, username=username)

    def friend_decline(self, username):
        return self.request(Op.FRIEND_DECLINE, username=username)

    def friend_remove(self, username):
        return self.request(Op.FRIEND_REMOVE, username=username)

    def friend_list(self):
        """FRIEND_LIST_RESULT: `friends` (username, online), `incoming`, `outgoing`."""
        return self.request(Op.FRIEND_LIST)

    # -- messages ---------------------------------------------------------------------------

    def next_client_msg_id(self):
        """A fresh client_msg_id: a counter that started at a random 64-bit value."""
        value = self._next_client_msg_id
        self._next_client_msg_id = (value + 1) & 0xFFFFFFFFFFFFFFFF
        self.last_client_msg_id = value
        return value

    def send(self, to, body, client_msg_id=None):
        """SEND a direct message; returns SENT (message_id, timestamp_ms).

        Pass the `client_msg_id` of an earlier attempt to retry it (`last_client_msg_id`
        holds the one used by the latest call).
        """
        if client_msg_id is None:
            client_msg_id = self.next_client_msg_id()
        self.last_client_msg_id = client_msg_id
        return self.request(Op.SEND, to=to, client_msg_id=client_msg_id, body=body)

    def ack(self, up_to_message_id):
        """ACK: moves this device's position up to that id (never past the items this
        connection was sent). Pass the highest item id processed (see `last_item_id`)."""
        return self.request(Op.ACK, up_to_message_id=up_to_message_id)

    def history(self, peer=None, group_id=None, direction=OLDER, from_id=0, limit=50):
        """HISTORY of a direct conversation (`peer`) or a group (`group_id`).

        `direction` OLDER (the default) reads ids below `from_id`, newest first (0: from the
        newest); NEWER reads ids above `from_id`, oldest first. Returns HISTORY_PAGE:
        `messages` (message_id, timestamp_ms, sender, body) and `next`, the `from_id` of the
        next page in the same direction (0 when there is none).
        """
        if (peer is None) == (group_id is None):
            raise ValueError("give exactly one of peer and group_id")
        target = {"kind": KIND_DIRECT, "peer": peer} if peer is not None else {
            "kind": KIND_GROUP, "group_id": group_id}
        return self.request(Op.HISTORY, direction=direction, from_message_id=from_id,
                            limit=limit, **target)

    def history_pages(self, peer=None, group_id=None, direction=OLDER, from_id=0, limit=50):
        """Every page of a conversation in one direction, following `next` until it is 0;
        yields the HISTORY_PAGE frames."""
        while True:
            page = self.history(peer, group_id, direction, from_id, limit)
            yield page
            if not page["next"]:
                return
            from_id = page["next"]

    def read(self, peer, up_to):
        return self.request(Op.READ, peer=peer, up_to_message_id=up_to)

    # -- groups -----------------------------------------------------------------------------

    def group_create(self, name):
        """GROUP_CREATE; the result's `group_id` names the new group."""
        return self.request(Op.GROUP_CREATE, name=name)

    def group_invite(self, group_id, username):
        return self.request(Op.GROUP_INVITE, group_id=group_id, username=username)

    def group_leave(self, group_id):
        return self.request(Op.GROUP_LEAVE, group_id=group_id)

    def group_members(self, group_id):
        """GROUP_MEMBERS_RESULT: `group_id` and `members` (username, online, owner)."""
        return self.request(Op.GROUP_MEMBERS, group_id=group_id)

    def group_list(self):
        """GROUP_LIST_RESULT: `groups` (group_id, name, owner, members)."""
        return self.request(Op.GROUP_LIST)

    def group_send(self, group_id, body, client_msg_id=None):
        """GROUP_SEND; returns SENT. `client_msg_id` as in `send`."""
        if client_msg_id is None:
            client_msg_id = self.next_client_msg_id()
        self.last_client_msg_id = client_msg_id
        return self.request(Op.GROUP_SEND, group_id=group_id, client_msg_id=client_msg_id,
                            body=body)

    # -- devices ----------------------------------------------------------------------------

    def device_list(self):
        """DEVICE_LIST_RESULT: `devices` (device_id, name, last_seen_ms, online, current),
        most recently seen first."""
        return self.request(Op.DEVICE_LIST)

    def device_remove(self, device_id):
        """DEVICE_REMOVE of another device of this user; its connections are closed."""
        return self.request(Op.DEVICE_REMOVE, device_id=device_id)


# ---------------------------------------------------------------------------------------------
# Self-check
# ---------------------------------------------------------------------------------------------

def _hex(text):
    return bytes.fromhex("".join(text.split()))


def self_test():
    """Check the encoders against PROTOCOL.md section 7 and SCRAM against RFC 7677."""
    import base64
    import doctest

    checks = 0

    def check(label, actual, expected):
        nonlocal checks
        if actual != expected:
            raise AssertionError("%s: got %r, expected %r" % (label, actual, expected))
        checks += 1

    hello = _hex("00 00 00 07 01 00 00 00 01 00 02")
    check("HELLO bytes", encode_message(Op.HELLO, 1, version=2), hello)
    check("HELLO decode", decode_frame(hello), Frame(Op.HELLO, 1, {"version": 2}))
    hello_ok = _hex("00 00 00 30 81 00 00 00 01 00 02"
                    "00 0F 69 6D 2D 73 65 72 76 65 72 20 30 2E 32 2E 30"
                    "00 01 00 00 00 00 10 00 00 00 10 00 00 00 00 78"
                    "00 00 00 0A 00 01 86 A0")
    hello_ok_fields = {"version": 2, "server": "im-server 0.2.0", "max_frame": 65536,
                       "max_frame_before_login": 4096, "max_body": 4096,
                       "idle_timeout_secs": 120, "login_timeout_secs": 10,
                       "min_kdf_iterations": 100000}
    check("HELLO_OK bytes", encode_message(Op.HELLO_OK, 1, **hello_ok_fields), hello_ok)
    check("HELLO_OK decode", decode_frame(hello_ok).fields, hello_ok_fields)
    check("PING bytes", encode_message(Op.PING, 2), _hex("00 00 00 05 02 00 00 00 02"))
    check("PONG bytes", encode_message(Op.PONG, 2), _hex("00 00 00 05 82 00 00 00 02"))
    send = _hex("00 00 00 16 20 00 00 00 09 00 03 62 6F 62 00 00 00 00 00 00 00 07"
                "00 02 68 69")
    check("SEND bytes", encode_message(Op.SEND, 9, to="bob", client_msg_id=7, body="hi"), send)
    sent = _hex("00 00 00 15 88 00 00 00 09 00 00 00 00 00 00 00 2A 00 00 01 9A BD 07 DB 00")
    check("SENT bytes", encode_message(Op.SENT, 9, message_id=42,
                                       timestamp_ms=1764108000000), sent)
    deliver = _hex("00 00 00 26 C0 00 00 00 00 00 00 00 00 00 00 00 2A"
                   "00 00 01 9A BD 07 DB 00 00 05 61 6C 69 63 65 00 00 03 62 6F 62"
                   "00 02 68 69")
    check("DELIVER decode", decode_frame(deliver).fields, {
        "message_id": 42, "timestamp_ms": 1764108000000, "from": "alice", "kind": 0,
        "to": "bob", "body": "hi"})
    check("DELIVER bytes", encode_message(Op.DELIVER, 0, **decode_frame(deliver).fields),
          deliver)
    text = "frame of 4294967295 bytes exceeds the limit of 4096"
    error = _hex("00 00 00 3C 83 00 00 00 00 00 03 00 33") + text.encode()
    check("ERROR decode", decode_frame(error).fields, {"code": 3, "message": text})
    group_deliver = encode_message(Op.DELIVER, 0, message_id=1, timestamp_ms=2, kind=1,
                                   group_id=5, body="x", **{"from": "a"})
    check("group DELIVER round trip", decode_frame(group_deliver)["group_id"], 5)
    history = encode_message(Op.HISTORY, 3, kind=1, group_id=1, direction=OLDER,
                             from_message_id=0, limit=5)
    check("HISTORY group bytes", history[9:], _hex("01 00 00 00 00 00 00 00 01 00"
                                                   "00 00 00 00 00 00 00 00 00 05"))
    forward = encode_message(Op.HISTORY, 4, kind=0, peer="bob", direction=NEWER,
                             from_message_id=42, limit=200)
    check("HISTORY forward bytes", forward, _hex("00 00 00 16 22 00 00 00 04 00 00 03 62 6F 62"
                                                 "01 00 00 00 00 00 00 00 2A 00 C8"))
    check("HISTORY forward decode", decode_frame(forward).fields, {
        "kind": 0, "peer": "bob", "direction": 1, "from_message_id": 42, "limit": 200})
    page = encode_message(Op.HISTORY_PAGE, 3, messages=[
        {"message_id": 9, "timestamp_ms": 1, "sender": "a", "body": "é"}], next=9)
    check("HISTORY_PAGE bytes", page[9:], _hex("00 01 00 00 00 00 00 00 00 09"
                                               "00 00 00 00 00 00 00 01 00 01 61 00 02 C3 A9"
                                               "00 00 00 00 00 00 00 09"))
    check("HISTORY_PAGE round trip", decode_frame(page)["messages"][0]["body"], "é")
    check("HISTORY_PAGE next", decode_frame(page)["next"], 9)
    login_finish = encode_message(Op.LOGIN_FINISH, 5, client_proof=bytes(range(32)),
                                  device_id=0x0102030405060708, device_name="phone")
    check("LOGIN_FINISH bytes", login_finish[9:], _hex(
        "00 20" + bytes(range(32)).hex() + "01 02 03 04 05 06 07 08 00 05 70 68 6F 6E 65"))
    check("LOGIN_FINISH decode", decode_frame(login_finish)["device_id"], 0x0102030405060708)
    check("DEVICE_LIST bytes", encode_message(Op.DEVICE_LIST, 6),
          _hex("00 00 00 05 40 00 00 00 06"))
    check("DEVICE_REMOVE bytes", encode_message(Op.DEVICE_REMOVE, 7, device_id=2 ** 64 - 1),
          _hex("00 00 00 0D 41 00 00 00 07 FF FF FF FF FF FF FF FF"))
    devices = [{"device_id": 7, "name": "laptop", "last_seen_ms": 1764108000000, "online": 1,
                "current": 1},
               {"device_id": 2 ** 63, "name": "ph\u00f6ne", "last_seen_ms": 5, "online": 0,
                "current": 0}]
    device_list = encode_message(Op.DEVICE_LIST_RESULT, 6, devices=devices)
    check("DEVICE_LIST_RESULT bytes", device_list[:9 + 2 + 8 + 8],
          _hex("00 00 00 3B 8E 00 00 00 06 00 02 00 00 00 00 00 00 00 07 00 06"
               "6C 61 70 74 6F 70"))
    check("DEVICE_LIST_RESULT round trip", decode_frame(device_list)["devices"], devices)
    gap = _hex("00 00 00 19 C6 00 00 00 00 00 00 00 00 00 00 00 0A 00 00 00 00 00 00 01 F4"
               "00 00 01 E3")
    check("SYNC_GAP decode", decode_frame(gap).fields, {
        "after_message_id": 10, "up_to_message_id": 500, "skipped": 483})
    receipt = _hex("00 00 00 29 C3 00 00 00 00 00 00 00 00 00 00 00 2B"
                   "00 00 01 9A BD 07 DB 00 00 03 62 6F 62 00 05 61 6C 69 63 65"
                   "00 00 00 00 00 00 00 2A")
    receipt_fields = {"message_id": 43, "timestamp_ms": 1764108000000, "reader": "bob",
                      "peer": "alice", "up_to_message_id": 42}
    check("READ_RECEIPT decode", decode_frame(receipt).fields, receipt_fields)
    check("READ_RECEIPT bytes", encode_message(Op.READ_RECEIPT, 0, **receipt_fields), receipt)
    group_event = _hex("00 00 00 29 C5 00 00 00 00 00 00 00 00 00 00 00 2C"
                       "00 00 01 9A BD 07 DB 00 00 00 00 00 00 00 00 05 01 00 03 62 6F 62"
                       "00 04 74 65 61 6D")
    check("GROUP_EVENT decode", decode_frame(group_event).fields, {
        "message_id": 44, "timestamp_ms": 1764108000000, "group_id": 5, "event": GROUP_JOINED,
        "username": "bob", "group_name": "team"})
    own_event = encode_message(Op.FRIEND_EVENT, 0, message_id=45, timestamp_ms=1,
                               event=FRIEND_YOU_REMOVED, username="bob")
    check("FRIEND_EVENT 8 round trip", decode_frame(own_event)["event"], 8)
    check("items", [is_item(decode_frame(f)) for f in (deliver, receipt, group_event, own_event,
                                                        gap)], [True, True, True, True, False])
    check("last item id", last_item_id([decode_frame(f) for f in (receipt, gap, deliver)]), 43)
    future = ServerError.from_frame(decode_frame(encode_message(
        Op.ERROR, 0, code=77, message="a code this client does not know")))
    check("unknown error code", (future.code, future.name, future.message),
          (77, "ERROR_77", "a code this client does not know"))
    check("TOO_MANY_DEVICES", ERROR_CODES["TOO_MANY_DEVICES"], 31)
    check("NO_SUCH_DEVICE", ERROR_CODES["NO_SUCH_DEVICE"], 32)
    check("LOGIN_THROTTLED", ERROR_CODES["LOGIN_THROTTLED"], 38)
    check("device ids are nonzero", all(new_device_id() for _ in range(100)), True)
    for label, bad in (("short", _hex("00 00 00 06 01 00 00 00 01 00")),
                       ("trailing", _hex("00 00 00 08 01 00 00 00 01 00 01 00")),
                       ("utf-8", encode_frame(Op.FRIEND_LIST_RESULT, 1,
                                              _hex("00 00 00 01 00 01 FF 00 00")))):
        try:
            decode_frame(bad)
        except ProtocolError:
            checks += 1
        else:
            raise AssertionError("%s body decoded" % label)
    check("split incomplete", split_frame(hello[:-1]), None)
    check("split two", split_frame(hello + hello[:3]), (hello, hello[:3]))

    salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    keys = derive_keys("pencil", salt, 4096)
    proof = base64.b64decode("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    signature = base64.b64decode("6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
    # From the RFC's proof: ClientKey = ClientProof XOR HMAC(StoredKey, AuthMessage), and
    # StoredKey = SHA256(ClientKey) must close the loop with what we derived.
    rfc_client_key = _xor(proof, _hmac(keys.stored_key, RFC7677_AUTH_MESSAGE))
    check("RFC 7677 ClientKey", keys.client_key, rfc_client_key)
    check("RFC 7677 StoredKey", keys.stored_key, hashlib.sha256(rfc_client_key).digest())
    check("RFC 7677 ClientProof", client_proof(keys, RFC7677_AUTH_MESSAGE), proof)
    check("RFC 7677 ServerSignature", server_signature(keys, RFC7677_AUTH_MESSAGE), signature)
    check("cached salted password", DerivedKeys(salt, 4096, keys.salted_password).server_key,
          keys.server_key)
    check("AuthMessage layout", auth_message("bob", b"\x01", b"\x02\x03", 7, b"\x01\x04"),
          _hex("00 03 62 6F 62 00 01 01 00 02 02 03 00 00 00 07 00 02 01 04"))
    challenge = {"salt": salt, "iterations": 4096, "nonce": b"\x01\x04"}
    check("answer_challenge", answer_challenge("bob", b"\x01", challenge, keys),
          (client_proof(keys, auth_message("bob", b"\x01", salt, 4096, b"\x01\x04")),
           auth_message("bob", b"\x01", salt, 4096, b"\x01\x04")))
    for label, nonce in (("not ours", b"\x02\x04"), ("only ours", b"\x01")):
        try:
            answer_challenge("bob", b"\x01", dict(challenge, nonce=nonce), keys)
        except AuthenticationError:
            checks += 1
        else:
            raise AssertionError("a server nonce %s was answered" % label)
    check("verifier", keys.verifier(), {"salt": salt, "iterations": 4096,
                                        "stored_key": keys.stored_key,
                                        "server_key": keys.server_key})
    check("fresh salts", fresh_keys("pencil", 1).salt != fresh_keys("pencil", 1).salt, True)

    failures, tried = doctest.testmod(sys.modules[__name__])
    if failures:
        raise AssertionError("%d of %d doctests failed" % (failures, tried))
    return checks + tried


if __name__ == "__main__":
    if sys.argv[1:] == ["--self-test"]:
        print("imclient self-test: %d checks passed" % self_test())
    else:
        print(__doc__)
        sys.exit(0 if not sys.argv[1:] else 2)
