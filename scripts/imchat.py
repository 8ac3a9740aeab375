#!/usr/bin/env python3
"""imchat: chat with friends on an im-server, in a terminal.

    python3 scripts/imchat.py [--addr HOST:PORT] [--cache-keys PATH] [--device-file PATH]

Standard library only, Python 3.9 or newer; built on `imclient.py` next to it. Asks whether to
log in or register, then shows what arrives (messages, friend requests, presence, group
events, read receipts, and what you did on your other devices) above the line being typed,
each with its time, conversation and sender. `/help` lists the commands; Tab completes
commands and names.

Each installation is one *device* of your account (PROTOCOL.md section 6): the server keeps
what this device has seen, separately from your phone or another terminal. Its id and name
live in a small file (`--device-file`, by default `~/.config/imchat/device.json`), created on
first use; keep it, or the next run counts as a new device. `/devices` lists your devices and
`/devices remove ID` forgets one.

Layout of this file, in reading order:

* sentences: every error code of PROTOCOL.md section 4 as a sentence for people (`explain`);
* `LineEditor`: the input line in raw terminal mode, redrawn under whatever is printed above
  it, with history, editing keys and Tab completion (plain line input when not a terminal);
* `Chat`: one logged-in session: a select loop over the terminal and the socket, the
  commands, the outbox of unconfirmed messages (resent with the same client_msg_id after a
  reconnect, so the server's deduplication keeps them single), the offline backlog (shown,
  then acknowledged) and the reconnection with backoff;
* the login and registration prompts, the key cache, the device file, and `main`.

The password is never stored. The keys derived from it (password-equivalent) stay in memory
for reconnecting, and go to a file only with `--cache-keys PATH` (mode 0600).
"""

import argparse
import codecs
import json
import os
import re
import secrets
import select
import shutil
import signal
import socket
import string
import sys
import termios
import time
import unicodedata
from getpass import getpass

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from imclient import (  # noqa: E402
    DEFAULT_ITERATIONS, FRIEND_ACCEPTED, FRIEND_ASKED, FRIEND_DECLINED, FRIEND_REMOVED,
    FRIEND_YOU_ACCEPTED, FRIEND_YOU_ASKED, FRIEND_YOU_DECLINED, FRIEND_YOU_REMOVED,
    GROUP_JOINED, GROUP_LEFT, KIND_DIRECT, KIND_GROUP, LOBBY_GROUP_ID, MAX_DEVICE_NAME, OLDER,
    AuthenticationError, Client, ConnectionClosed, DerivedKeys, Device, Op, ProtocolError,
    ServerError, TlsError, auth_message, client_proof, derive_keys, is_item, new_device_id,
    server_signature, tls_context)

DEFAULT_ADDR = "127.0.0.1:7878"
# Seconds to wait for the server while connecting and logging in.
CONNECT_TIMEOUT = 8.0
# A request unanswered for this long means the connection is dead even if TCP has not noticed.
ANSWER_TIMEOUT = 20.0
# Reconnection delays grow from the first to the last, doubling.
BACKOFF_FIRST, BACKOFF_LAST = 1.0, 30.0
DEFAULT_HISTORY = 20
HISTORY_PAGE_LIMIT = 200
# How many delivered message ids to remember, to show nothing twice after a reconnect.
SHOWN_IDS_KEPT = 20_000
USERNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")


# ---------------------------------------------------------------------------------------------
# Sentences for errors
# ---------------------------------------------------------------------------------------------

# For each error code: a sentence that needs no context, then optionally one that names what
# the command was about ({name}, {group}, {wait}, {max_body}); the second is used when the
# caller knows every field it names.
SENTENCES = {
    1: ("The server could not read a request from this client; this is a bug in imchat, "
        "please report it.",),
    2: ("The server does not know that request; it may be an older version than this client.",),
    3: ("That was more than the server accepts in one go, so it closed the connection.",),
    4: ("This client speaks a protocol version the server does not support.",),
    5: ("The client forgot to greet the server first; this is a bug in imchat.",),
    6: ("You are not logged in.",),
    7: ("The server was not expecting that just now; please try again.",),
    8: ("The server is full at the moment; try again in a little while.",),
    9: ("The server closed the connection after a long silence.",),
    10: ("A name has 1 to 32 letters, digits, dots, dashes or underscores.",
         "\u201c{name}\u201d is not a valid name: a name has 1 to 32 letters, digits, dots, "
         "dashes or underscores."),
    11: ("That name is already taken.",
         "The name {name} is already taken (upper and lower case count as the same)."),
    12: ("The server asks for a stronger password hashing than this client used.",),
    13: ("That name and password do not match.",),
    14: ("Too many failed logins on this connection; the server hung up.",),
    15: ("There is no such user.", "There is no user called {name}."),
    16: ("You are already friends.", "You and {name} are already friends."),
    17: ("You already asked; they have not answered yet.",
         "You already asked {name} to be your friend; they have not answered yet."),
    18: ("There is no friend request from them to answer.",
         "{name} has not asked to be your friend, so there is nothing to answer."),
    19: ("You are not friends with them.",
         "You and {name} are not friends; ask first with /add {name}."),
    20: ("A message must have some text, and not too much of it.",
         "A message must have between 1 and {max_body} bytes of text."),
    21: ("You are not a member of that conversation.",
         "You are not a member of {group}."),
    22: ("They are already a member.", "{name} is already a member of {group}."),
    23: ("The server refused a value in that request as out of range.",),
    24: ("The server could not save that just now (its storage failed); nothing was stored, "
         "please try again.",),
    25: ("The server is shutting down.",),
    26: ("The server dropped the connection because this client fell behind reading.",),
    27: ("You are going too fast; please wait a moment.",
         "You are going too fast; please wait {wait}."),
    28: ("They have too many undelivered messages waiting; nothing was sent.",
         "{name} has too many undelivered messages waiting; nothing was sent, try again once "
         "they have caught up."),
    29: ("You are logged in on too many devices at once; log out on one of them first.",),
    30: ("Logging in took too long, so the server hung up.",),
    31: ("Your account already has as many devices as the server allows; on a device that is "
         "logged in, /devices remove ID forgets one you no longer use.",),
    32: ("Your account has no such device; /devices lists them.",),
    33: ("A request took too long to arrive whole, so the server hung up.",),
    34: ("Someone is in as many groups as the server allows.",
         "{name} is in as many groups as the server allows (or you are)."),
    35: ("That group is full.", "{group} is full."),
    36: ("Too many friend requests are waiting for an answer.",
         "Too many friend requests are waiting for an answer, from you or to {name}."),
    37: ("Someone has as many friends as the server allows.",
         "You or {name} already have as many friends as the server allows."),
    38: ("Too many failed logins from here lately; please wait a moment.",
         "Too many failed logins from here lately; please wait {wait}."),
}

# The server closes a connection with NO_SUCH_DEVICE when its device was removed elsewhere.
DEVICE_REMOVED = 32
# These, met when logging in again, will not clear by retrying.
LOGIN_REFUSED = (13, 31)


def explain(error, **context):
    """A sentence for a ServerError: the most specific one `context` can fill in.

    Codes this client does not know fall back on the server's own message, which PROTOCOL.md
    promises is an English sentence; the code itself is never shown.
    """
    if error.retry_after_ms is not None and "wait" not in context:
        context["wait"] = "%.1f s" % (error.retry_after_ms / 1000)
    choices = SENTENCES.get(error.code)
    if choices is None:
        text = (error.message or "The server refused that.").strip()
        return text if text.endswith(".") else text + "."
    for template in reversed(choices):
        fields = [field for _, field, _, _ in string.Formatter().parse(template) if field]
        if all(context.get(field) is not None for field in fields):
            return template.format(**context)
    return choices[0]


def describe_os_error(error):
    """A short phrase for a socket failure: "connection refused", "timed out", …"""
    if isinstance(error, ConnectionClosed):
        return "the server closed the connection"
    if isinstance(error, (socket.timeout, TimeoutError)):
        return "it did not answer in time"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, socket.gaierror):
        return "unknown host name"
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return text[0].lower() + text[1:]


# ---------------------------------------------------------------------------------------------
# Text helpers
# ---------------------------------------------------------------------------------------------

def char_width(char):
    """Terminal columns taken by `char`: 0 for combining marks, 2 for wide East Asian ones."""
    if unicodedata.combining(char):
        return 0
    return 2 if unicodedata.east_asian_width(char) in "WF" else 1


def text_width(text):
    return sum(char_width(char) for char in text)


def clean(text, indent=""):
    """`text` safe to print: control characters (escape sequences included) become U+FFFD,
    and line breaks continue on a new line starting with `indent`."""
    lines = text.replace("\r\n", "\n").split("\n")
    cleaned = []
    for line in lines:
        cleaned.append("".join(
            "\ufffd" if (unicodedata.category(char) == "Cc" and char != "\t") else char
            for char in line.replace("\t", "    ")))
    return ("\n" + indent).join(cleaned)


def clock(timestamp_ms, with_date=False):
    """Local time of a server timestamp: "14:02", or with the date if asked and not today."""
    moment = time.localtime(timestamp_ms / 1000)
    if with_date and time.strftime("%Y-%m-%d", moment) != time.strftime("%Y-%m-%d"):
        return time.strftime("%Y-%m-%d %H:%M", moment)
    return time.strftime("%H:%M", moment)


def plural(count, word):
    return "%d %s%s" % (count, word, "" if count == 1 else "s")


def and_list(items):
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


class Style:
    """ANSI colours, or nothing when the output is not a terminal or NO_COLOR is set."""

    def __init__(self, enabled):
        self.enabled = enabled

    def _wrap(self, code, text):
        return "\x1b[%sm%s\x1b[0m" % (code, text) if self.enabled else text

    def dim(self, text):
        return self._wrap("2", text)

    def bold(self, text):
        return self._wrap("1", text)

    def me(self, text):
        return self._wrap("1;32", text)

    def peer(self, text):
        return self._wrap("1;34", text)

    def direct(self, text):
        return self._wrap("36", text)

    def group(self, text):
        return self._wrap("35", text)

    def event(self, text):
        return self._wrap("33", text)

    def error(self, text):
        return self._wrap("31", text)


# ---------------------------------------------------------------------------------------------
# The input line
# ---------------------------------------------------------------------------------------------

class LineEditor:
    """The line being typed, kept at the bottom of the terminal.

    In raw mode it reads keys itself, so that `show` can print above the line at any moment
    and redraw the prompt with the partial line and the cursor where they were. Lines longer
    than the terminal scroll sideways. When standard input is not a terminal it reads plain
    lines instead. `feed` turns bytes read from the terminal into events: ("line", text),
    ("eof",) or ("interrupt",).
    """

    def __init__(self, fd=0, out_fd=1):
        self.fd = fd
        self.out_fd = out_fd
        self.interactive = os.isatty(fd) and os.isatty(out_fd)
        self.encoding = "utf-8"
        self.prompt = "> "
        self.prompt_width = 2
        self.buffer = []
        self.cursor = 0
        self.scroll = 0
        self.history = []
        self.history_index = None
        self.saved_line = []
        self.escape = None
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.saved_attributes = None
        self.completer = None
        self.active = False
        self.plain_pending = ""

    # -- terminal modes ---------------------------------------------------------------------

    def start(self):
        """Enter raw mode (keys one by one, no echo, Ctrl-C as a key) and draw the prompt."""
        if self.interactive and self.saved_attributes is None:
            self.saved_attributes = termios.tcgetattr(self.fd)
            attributes = termios.tcgetattr(self.fd)
            attributes[0] &= ~(termios.IXON | termios.ICRNL)
            attributes[3] &= ~(termios.ICANON | termios.ECHO | termios.ISIG | termios.IEXTEN)
            attributes[6][termios.VMIN] = 1
            attributes[6][termios.VTIME] = 0
            termios.tcsetattr(self.fd, termios.TCSADRAIN, attributes)
        self.active = True
        self.redraw()

    def stop(self):
        """Leave raw mode, keeping what was typed off the screen."""
        if self.active and self.interactive:
            self._write("\r\x1b[K")
        self.active = False
        if self.saved_attributes is not None:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved_attributes)
            self.saved_attributes = None

    def suspend(self):
        """Ctrl-Z: give the terminal back, stop, and take it again when continued."""
        self.stop()
        os.kill(os.getpid(), signal.SIGTSTP)
        self.start()

    # -- output -----------------------------------------------------------------------------

    def _write(self, text):
        data = text.encode(self.encoding, "replace")
        while data:
            try:
                written = os.write(self.out_fd, data)
            except BlockingIOError:
                select.select([], [self.out_fd], [])
                continue
            except InterruptedError:
                continue
            data = data[written:]

    def set_prompt(self, prompt, width):
        self.prompt = prompt
        self.prompt_width = width
        self.redraw()

    def show(self, text):
        """Print `text` (one or more lines) above the input line, then redraw the line."""
        if not self.active or not self.interactive:
            self._write(text + "\n")
            return
        self._write("\r\x1b[K" + text + "\n")
        self.redraw()

    def redraw(self):
        if not self.active or not self.interactive:
            return
        columns = max(shutil.get_terminal_size((80, 24)).columns, 10)
        room = max(columns - self.prompt_width - 1, 4)
        if text_width("".join(self.buffer[:self.cursor])) <= room:
            self.scroll = 0
        self.scroll = min(self.scroll, self.cursor)
        while text_width("".join(self.buffer[self.scroll:self.cursor])) > room:
            self.scroll += 1
        visible, used = [], 0
        for char in self.buffer[self.scroll:]:
            width = char_width(char)
            if used + width > room:
                break
            visible.append(char)
            used += width
        after_cursor = text_width("".join(visible[self.cursor - self.scroll:]))
        line = "\r" + self.prompt + "".join(visible) + "\x1b[K"
        if after_cursor:
            line += "\x1b[%dD" % after_cursor
        self._write(line)

    # -- input ------------------------------------------------------------------------------

    def feed(self, data):
        """Bytes from the terminal in, a list of events out (see the class doc)."""
        text = self.decoder.decode(data)
        if not self.interactive:
            return self._feed_plain(text, eof=not data)
        events = []
        for char in text:
            if self.escape is not None:
                self._feed_escape(char)
                continue
            event = self._key(char)
            if event is not None:
                events.append(event)
        self.redraw()
        return events

    def _feed_plain(self, text, eof):
        self.plain_pending += text
        *lines, self.plain_pending = self.plain_pending.split("\n")
        events = [("line", line.rstrip("\r")) for line in lines]
        if eof:
            if self.plain_pending:
                events.append(("line", self.plain_pending))
                self.plain_pending = ""
            events.append(("eof",))
        return events

    def _feed_escape(self, char):
        self.escape += char
        sequence = self.escape
        if len(sequence) == 2 and char not in "[O":
            self.escape = None
            self._alt_key(char)
            return
        if len(sequence) > 2 and (0x40 <= ord(char) <= 0x7E) or len(sequence) > 16:
            self.escape = None
            self._escape_sequence(sequence)

    def _escape_sequence(self, sequence):
        action = {
            "\x1b[A": self._history_back, "\x1bOA": self._history_back,
            "\x1b[B": self._history_forward, "\x1bOB": self._history_forward,
            "\x1b[C": self._right, "\x1bOC": self._right,
            "\x1b[D": self._left, "\x1bOD": self._left,
            "\x1b[H": self._home, "\x1bOH": self._home, "\x1b[1~": self._home,
            "\x1b[7~": self._home,
            "\x1b[F": self._end, "\x1bOF": self._end, "\x1b[4~": self._end, "\x1b[8~": self._end,
            "\x1b[3~": self._delete,
            "\x1b[1;5C": self._word_right, "\x1b[1;5D": self._word_left,
        }.get(sequence)
        if action is not None:
            action()

    def _alt_key(self, char):
        if char == "b":
            self._word_left()
        elif char == "f":
            self._word_right()
        elif char in "\x7f\x08":
            self._delete_word_back()

    def _key(self, char):
        if char in "\r\n":
            line = "".join(self.buffer)
            self.buffer, self.cursor, self.scroll = [], 0, 0
            self.history_index = None
            if line.strip() and (not self.history or self.history[-1] != line):
                self.history.append(line)
            return ("line", line)
        if char == "\x03":
            if self.buffer:
                self.buffer, self.cursor = [], 0
                return None
            return ("interrupt",)
        if char == "\x04":
            if not self.buffer:
                return ("eof",)
            self._delete()
            return None
        if char == "\x1a":
            self.suspend()
            return None
        if char == "\x1b":
            self.escape = "\x1b"
            return None
        simple = {
            "\x01": self._home, "\x05": self._end, "\x02": self._left, "\x06": self._right,
            "\x7f": self._backspace, "\x08": self._backspace, "\x0b": self._kill_to_end,
            "\x15": self._kill_to_start, "\x17": self._delete_word_back,
            "\x10": self._history_back, "\x0e": self._history_forward,
            "\x0c": self._clear_screen, "\t": self._complete,
        }.get(char)
        if simple is not None:
            simple()
        elif unicodedata.category(char) != "Cc":
            self.buffer.insert(self.cursor, char)
            self.cursor += 1
        return None

    def _home(self):
        self.cursor = 0

    def _end(self):
        self.cursor = len(self.buffer)

    def _left(self):
        self.cursor = max(self.cursor - 1, 0)

    def _right(self):
        self.cursor = min(self.cursor + 1, len(self.buffer))

    def _word_left(self):
        while self.cursor > 0 and self.buffer[self.cursor - 1] == " ":
            self.cursor -= 1
        while self.cursor > 0 and self.buffer[self.cursor - 1] != " ":
            self.cursor -= 1

    def _word_right(self):
        end = len(self.buffer)
        while self.cursor < end and self.buffer[self.cursor] == " ":
            self.cursor += 1
        while self.cursor < end and self.buffer[self.cursor] != " ":
            self.cursor += 1

    def _backspace(self):
        if self.cursor > 0:
            self.cursor -= 1
            del self.buffer[self.cursor]

    def _delete(self):
        if self.cursor < len(self.buffer):
            del self.buffer[self.cursor]

    def _kill_to_end(self):
        del self.buffer[self.cursor:]

    def _kill_to_start(self):
        del self.buffer[:self.cursor]
        self.cursor = 0

    def _delete_word_back(self):
        start = self.cursor
        self._word_left()
        del self.buffer[self.cursor:start]

    def _clear_screen(self):
        self._write("\x1b[H\x1b[2J")

    def _history_back(self):
        if not self.history:
            return
        if self.history_index is None:
            self.saved_line = list(self.buffer)
            self.history_index = len(self.history)
        if self.history_index > 0:
            self.history_index -= 1
            self.buffer = list(self.history[self.history_index])
            self.cursor = len(self.buffer)

    def _history_forward(self):
        if self.history_index is None:
            return
        self.history_index += 1
        if self.history_index >= len(self.history):
            self.history_index = None
            self.buffer = list(self.saved_line)
        else:
            self.buffer = list(self.history[self.history_index])
        self.cursor = len(self.buffer)

    def _complete(self):
        """Tab: complete the word before the cursor; list the choices when there are several."""
        if self.completer is None:
            return
        before = "".join(self.buffer[:self.cursor])
        start = before.rfind(" ") + 1
        word = before[start:]
        choices = sorted(set(self.completer(before[:start], word)), key=str.lower)
        if not choices:
            return
        if len(choices) == 1:
            insert = choices[0] + " "
        else:
            insert = os.path.commonprefix([choice.lower() for choice in choices])
            if len(insert) <= len(word):
                self.show(self._style_choices(choices))
                return
            # Keep the letter case of a choice that starts with the common prefix.
            insert = next(choice for choice in choices
                          if choice.lower().startswith(insert))[:len(insert)]
        self.buffer[start:self.cursor] = list(insert)
        self.cursor = start + len(insert)

    @staticmethod
    def _style_choices(choices):
        return "  ".join(choices)


# ---------------------------------------------------------------------------------------------
# Conversations and the outbox
# ---------------------------------------------------------------------------------------------

class Conversation:
    """A direct conversation (`peer` set) or a group (`group_id` set)."""

    __slots__ = ("peer", "group_id")

    def __init__(self, peer=None, group_id=None):
        self.peer = peer
        self.group_id = group_id

    @property
    def key(self):
        return ("user", self.peer.lower()) if self.peer is not None else ("group", self.group_id)

    def __eq__(self, other):
        return isinstance(other, Conversation) and self.key == other.key

    def __hash__(self):
        return hash(self.key)


class Outgoing:
    """A message typed by the person, kept until the server confirms it (SENT).

    `client_msg_id` is chosen once: every retry carries the same one, so the server stores
    the message once however many times the connection drops on the way.
    """

    __slots__ = ("conversation", "body", "client_msg_id", "request_id", "retry_at")

    def __init__(self, conversation, body, client_msg_id):
        self.conversation = conversation
        self.body = body
        self.client_msg_id = client_msg_id
        self.request_id = None
        self.retry_at = None


class Pending:
    """A request waiting for its answer: what to do with it, and when it was sent."""

    __slots__ = ("on_answer", "on_error", "context", "sent_at")

    def __init__(self, on_answer, on_error, context):
        self.on_answer = on_answer
        self.on_error = on_error
        self.context = context
        self.sent_at = time.monotonic()


class NotConnected(Exception):
    """A command needs the server while the connection is down."""


COMMANDS = ["/add", "/accept", "/decline", "/remove", "/friends", "/msg", "/open", "/close",
            "/history", "/read", "/group", "/g", "/devices", "/help", "/logout", "/quit"]
GROUP_SUBCOMMANDS = ["create", "invite", "leave", "members", "list"]
DEVICE_SUBCOMMANDS = ["remove"]

HELP = """\
Commands (Tab completes commands and names):
  /add NAME              ask NAME to be your friend
  /accept NAME           accept NAME's friend request      /decline NAME   turn it down
  /friends               your friends, who is online, and requests waiting for an answer
  /remove NAME           stop being friends with NAME
  /msg NAME TEXT         send TEXT to NAME
  /open NAME or #GROUP   talk to NAME or a group: plain lines then go there (/close stops)
  /history [N]           the last N messages of the open conversation (default 20)
  /read                  tell the other person you have read the open conversation
  /group create NAME     start a group             /group invite GROUP NAME   add someone
  /group leave GROUP     leave a group             /group members [GROUP]     who is in it
  /group list            your groups (#lobby holds everyone)
  /g GROUP TEXT          send TEXT to a group
  /devices               your devices (phones, terminals…), which are online, this one marked
  /devices remove ID     forget a device (the first digits of its ID, or its name will do):
                         it is logged out, and starts afresh if it logs in again
  /logout                log out and go back to the login prompt
  /quit                  leave (Ctrl-D does the same)
Keys: arrows and Ctrl-A/E move, Up/Down recall lines, Ctrl-U/K/W delete, Ctrl-L clears."""


# ---------------------------------------------------------------------------------------------
# A logged-in session
# ---------------------------------------------------------------------------------------------

class Chat:
    """One logged-in session in the terminal, across reconnections, until /logout or /quit."""

    def __init__(self, editor, style, address, client, keys, device, tls=None):
        self.editor = editor
        self.style = style
        self.host, self.port = address
        self.tls = tls
        self.client = client
        self.keys = keys
        self.device = device
        self.username = client.username
        self.max_body = client.hello_info["max_body"] if client.hello_info else 4096
        idle = client.hello_info["idle_timeout_secs"] if client.hello_info else 120
        self.ping_interval = max(min(idle / 3.0, 30.0), 1.0)
        self.friends = {}  # lower-case name -> [name, online]
        self.incoming = {}  # lower-case name -> name
        self.outgoing = {}
        self.groups = {}  # group id -> name
        self.known_names = {}  # every user name seen, lower-case -> name, for completion
        self.current = None
        self.pending = {}  # request id -> Pending
        self.outbox = []  # Outgoing, oldest first
        self.next_client_msg_id = secrets.randbits(64)
        self.syncing = True
        self.groups_known = False
        self.sync_done = False
        self.backlog = []
        self.sync_gap = None
        self.device_names = {}  # device id -> name, from the latest /devices, for completion
        self.shown_ids = set()
        self.shown_order = []
        self.latest = {}  # Conversation key -> newest message id seen in it
        self.ack_wanted = 0
        self.ack_sent = 0
        self.last_request_at = time.monotonic()
        self.closing_error = None
        self.reconnect_at = None
        self.backoff = BACKOFF_FIRST
        self.reconnects = 0
        self.quit_warned = False
        self.input_closed = False
        self.held_lines = []
        self.outcome = None
        editor.completer = self.complete

    # -- output -----------------------------------------------------------------------------

    def say(self, text):
        self.editor.show(text)

    def note(self, text, at_ms=None):
        """A line from the client itself (answers to commands, state changes); `at_ms` is the
        server's time of the event it reports, if any (else now)."""
        stamp = time.strftime("%H:%M") if at_ms is None else clock(at_ms)
        self.say(self.style.dim(stamp) + " " + self.style.event("* " + text))

    def error(self, text):
        self.say(self.style.dim(time.strftime("%H:%M")) + " " + self.style.error("! " + text))

    def label(self, conversation):
        if conversation.peer is not None:
            return self.style.direct("@" + conversation.peer)
        name = self.groups.get(conversation.group_id, "group %d" % conversation.group_id)
        return self.style.group("#" + clean(name))

    def plain_label(self, conversation):
        if conversation.peer is not None:
            return "@" + conversation.peer
        return "#" + clean(self.groups.get(conversation.group_id,
                                           "group %d" % conversation.group_id))

    def format_message(self, timestamp_ms, conversation, sender, body, with_date=False):
        stamp = clock(timestamp_ms, with_date)
        who = (self.style.me if sender.lower() == self.username.lower() else
               self.style.peer)(sender)
        indent = " " * (len(stamp) + 1)
        return "%s %s %s: %s" % (self.style.dim(stamp), self.label(conversation), who,
                                 clean(body, indent))

    def update_prompt(self):
        if self.current is None:
            text, width = "> ", 2
        else:
            plain = self.plain_label(self.current)
            text, width = self.label(self.current) + "> ", text_width(plain) + 2
        if self.client is None:
            text, width = self.style.error("(offline) ") + text, width + 10
        self.editor.set_prompt(text, width)

    # -- the loop ---------------------------------------------------------------------------

    def run(self):
        """Serve the terminal and the socket until /logout ("logout") or /quit ("quit")."""
        self.update_prompt()
        self.editor.start()
        previous_winch = signal.signal(signal.SIGWINCH, lambda *_: self.editor.redraw())
        try:
            try:
                self.after_login(first=True)
            except NotConnected:
                pass
            self.read_frames()
            while self.outcome is None:
                sources = [] if self.input_closed else [self.editor.fd]
                if self.client is not None:
                    sources.append(self.client.sock)
                ready, _, _ = select.select(sources, [], [], self.next_wakeup())
                if self.editor.fd in ready:
                    self.read_terminal()
                if self.client is not None and self.client.sock in ready:
                    self.read_frames()
                self.run_timers()
                self.flush_ack()
                if self.input_closed:
                    self.finish_when_idle()
        finally:
            signal.signal(signal.SIGWINCH, previous_winch)
            self.editor.stop()
            if self.client is not None:
                self.client.close()
                self.client = None
        return self.outcome

    def next_wakeup(self):
        now = time.monotonic()
        times = []
        if self.reconnect_at is not None:
            times.append(self.reconnect_at)
        if self.client is not None:
            times.append(self.last_request_at + self.ping_interval)
            if self.pending:
                times.append(min(p.sent_at for p in self.pending.values()) + ANSWER_TIMEOUT)
            times.extend(entry.retry_at for entry in self.outbox if entry.retry_at)
        if not times:
            return None
        return min(max(min(times) - now, 0.0), 5.0)

    def run_timers(self):
        now = time.monotonic()
        if self.client is None:
            if self.reconnect_at is not None and now >= self.reconnect_at:
                self.reconnect()
            return
        if any(now - p.sent_at > ANSWER_TIMEOUT for p in self.pending.values()):
            self.connection_lost("the server stopped answering")
            return
        for entry in self.outbox:
            if entry.retry_at is not None and now >= entry.retry_at:
                entry.retry_at = None
                self.transmit(entry)
        if self.client is not None and now - self.last_request_at >= self.ping_interval:
            try:
                self.request(Op.PING)
            except NotConnected:
                pass

    def read_terminal(self):
        try:
            data = os.read(self.editor.fd, 4096)
        except InterruptedError:
            return
        for event in self.editor.feed(data):
            if event[0] == "eof" and not self.editor.interactive:
                # Input from a file or pipe: finish its work first (see finish_when_idle).
                self.input_closed = True
            elif event[0] in ("interrupt", "eof"):
                self.command_quit("")
            elif self.syncing and self.client is not None:
                # Until the backlog is in, names of groups and friends may be unknown.
                self.held_lines.append(event[1])
            else:
                self.handle_line(event[1])
            if self.outcome is not None:
                return

    def finish_when_idle(self):
        """After the end of piped input: quit once every answer and message is in, or when
        the connection is down (nothing more can be done)."""
        if self.client is None or not (self.pending or self.outbox or self.syncing
                                       or self.held_lines):
            self.outcome = "quit"

    def read_frames(self):
        if self.client is None:
            return
        for frame in self.client.drain_pushes():
            self.handle_frame(frame)
        while self.client is not None:
            try:
                frame = self.client.recv_frame(timeout=0)
            except TimeoutError:
                return
            except ConnectionClosed:
                self.connection_lost(None)
                return
            except (OSError, ProtocolError) as error:
                self.connection_lost(describe_os_error(error))
                return
            self.handle_frame(frame)

    # -- requests ---------------------------------------------------------------------------

    def request(self, opcode, on_answer=None, on_error=None, context=None, **fields):
        """Send a request now; `on_answer(frame)` or `on_error(error)` runs on its answer.

        Without `on_error`, an error is shown as a sentence filled in from `context`.
        Raises NotConnected while the connection is down.
        """
        if self.client is None:
            raise NotConnected()
        try:
            self.client.sock.settimeout(CONNECT_TIMEOUT)
            request_id = self.client.send_request(opcode, **fields)
        except OSError as error:
            self.connection_lost(describe_os_error(error))
            raise NotConnected() from None
        self.pending[request_id] = Pending(on_answer, on_error, context or {})
        self.last_request_at = time.monotonic()
        return request_id

    def handle_frame(self, frame):
        pending = self.pending.pop(frame.request_id, None) if frame.request_id else None
        try:
            self.dispatch(frame, pending)
        except NotConnected:
            pass

    def dispatch(self, frame, pending):
        if pending is not None:
            if frame.opcode in (Op.ERROR, Op.RETRY_LATER):
                error = ServerError.from_frame(frame)
                if pending.on_error is not None:
                    pending.on_error(error)
                else:
                    self.error(explain(error, **pending.context))
            elif pending.on_answer is not None:
                pending.on_answer(frame)
            return
        if is_item(frame):
            self.on_item(frame)
            return
        handler = {
            Op.PRESENCE: self.on_presence, Op.SYNC_GAP: self.on_sync_gap,
            Op.SYNC_DONE: self.on_sync_done,
            Op.ERROR: self.on_unsolicited_error, Op.RETRY_LATER: self.on_unsolicited_error,
        }.get(frame.opcode)
        if handler is not None:
            handler(frame)

    def on_unsolicited_error(self, frame):
        # The server closes right after these; the close is reported with this reason.
        self.closing_error = ServerError.from_frame(frame)

    # -- connection loss and reconnection ---------------------------------------------------

    def connection_lost(self, reason):
        if self.client is None:
            return
        self.client.abort()
        self.client = None
        removed = self.closing_error is not None and self.closing_error.code == DEVICE_REMOVED
        if self.closing_error is not None:
            reason = explain(self.closing_error).rstrip(".")
            reason = reason[0].lower() + reason[1:]
            self.closing_error = None
        for entry in self.outbox:
            entry.request_id = None
            entry.retry_at = None
        self.pending.clear()
        self.backlog = []
        self.syncing = False
        self.ack_sent = 0
        self.backoff = BACKOFF_FIRST
        if removed:
            # Logging in again would quietly create this device anew: the person decides.
            self.reconnect_at = None
            self.error("This device was removed from your account on another device, so the "
                       "server logged it out. /logout, then log in again to use it as a new "
                       "device (it will not get what was sent meanwhile).")
            self.update_prompt()
            return
        self.reconnect_at = time.monotonic() + self.backoff
        waiting = ""
        if self.outbox:
            waiting = " %s will be sent once it is back." % (
                "Your unsent message" if len(self.outbox) == 1 else
                "Your %d unsent messages" % len(self.outbox))
        self.error("Lost the connection to the server (%s); reconnecting in %d s.%s"
                   % (reason or "the server closed the connection", self.backoff, waiting))
        self.update_prompt()

    def reconnect(self):
        client = Client(timeout=CONNECT_TIMEOUT, tls=self.tls)
        try:
            client.connect(self.host, self.port)
            client.hello()
            scram_login(client, self.username, self.device, keys=self.keys)
        except ServerError as error:
            client.close()
            if error.code in LOGIN_REFUSED:
                self.reconnect_at = None
                self.error("The server no longer accepts this login: %s Use /logout and log "
                           "in again." % explain(error))
                return
            reason = explain(error).rstrip(".")
            self.retry_later(reason[0].lower() + reason[1:], error.retry_after_ms)
            return
        except (OSError, ProtocolError, AuthenticationError, KeysMismatch) as error:
            client.close()
            self.retry_later(describe_os_error(error) if isinstance(error, OSError)
                             else str(error))
            return
        self.client = client
        self.reconnect_at = None
        self.backoff = BACKOFF_FIRST
        self.reconnects += 1
        self.last_request_at = time.monotonic()
        self.note("Reconnected.")
        self.update_prompt()
        try:
            self.after_login(first=False)
        except NotConnected:
            pass

    def retry_later(self, reason, wait_ms=None):
        """Try to reconnect after the backoff, or after `wait_ms` if the server asked for a
        longer wait (RETRY_LATER)."""
        self.backoff = min(self.backoff * 2, BACKOFF_LAST)
        delay = self.backoff * (0.8 + 0.4 * secrets.randbelow(1000) / 1000)
        delay = max(delay, (wait_ms or 0) / 1000)
        self.reconnect_at = time.monotonic() + delay
        self.error("Still cannot reach the server (%s); trying again in %d s."
                   % (reason, round(delay)))

    def after_login(self, first):
        """Right after LOGIN_OK: learn friends and groups; the backlog follows as pushes."""
        self.syncing = True
        self.backlog = []
        self.sync_gap = None
        self.groups_known = False
        self.sync_done = False
        self.request(Op.FRIEND_LIST, on_answer=lambda frame: self.on_friend_list(frame, first))
        self.request(Op.GROUP_LIST, on_answer=self.on_group_list)

    def on_friend_list(self, frame, announce):
        self.friends = {f["username"].lower(): [f["username"], bool(f["online"])]
                        for f in frame["friends"]}
        self.incoming = {f["username"].lower(): f["username"] for f in frame["incoming"]}
        self.outgoing = {f["username"].lower(): f["username"] for f in frame["outgoing"]}
        for table in (self.incoming, self.outgoing):
            self.known_names.update(table)
        self.known_names.update({key: value[0] for key, value in self.friends.items()})
        if not announce:
            return
        online = [name for name, is_online in self.friends.values() if is_online]
        if not self.friends:
            self.note("You have no friends here yet: /add NAME asks someone.")
        elif online:
            self.note("Friends online: %s." % and_list(online))
        else:
            self.note("None of your %s is online." % plural(len(self.friends), "friend"))
        for name in self.incoming.values():
            self.note("%s wants to be your friend: /accept %s or /decline %s."
                      % (name, name, name))

    def on_group_list(self, frame):
        self.groups = {g["group_id"]: g["name"] for g in frame["groups"]}
        if not self.groups_known:
            self.groups_known = True
            if self.sync_done:
                self.finish_sync()

    # -- items: everything a device sees once, acknowledged after it is shown ---------------

    def on_item(self, frame):
        if self.syncing:
            self.backlog.append(frame)
            return
        self.show_item(frame)

    def show_item(self, frame, quiet=False):
        """Show an item once (unless `quiet`), and mark it for acknowledgement."""
        message_id = frame["message_id"]
        self.ack_wanted = max(self.ack_wanted, message_id)
        if message_id in self.shown_ids:
            return
        self.remember_shown(message_id)
        if quiet:
            return
        show = {Op.DELIVER: self.show_message, Op.FRIEND_EVENT: self.show_friend_event,
                Op.READ_RECEIPT: self.show_read_receipt,
                Op.GROUP_EVENT: self.show_group_event}[frame.opcode]
        show(frame)

    def show_message(self, frame):
        """A DELIVER: from a friend, to a group, or sent by me on another device."""
        conversation = self.conversation_of(frame)
        key = conversation.key
        self.latest[key] = max(self.latest.get(key, 0), frame["message_id"])
        self.known_names.setdefault(frame["from"].lower(), frame["from"])
        self.say(self.format_message(frame["timestamp_ms"], conversation, frame["from"],
                                     frame["body"]))

    def is_me(self, name):
        return name.lower() == self.username.lower()

    def remember_shown(self, message_id):
        self.shown_ids.add(message_id)
        self.shown_order.append(message_id)
        if len(self.shown_order) > SHOWN_IDS_KEPT:
            for old in self.shown_order[:SHOWN_IDS_KEPT // 2]:
                self.shown_ids.discard(old)
            del self.shown_order[:SHOWN_IDS_KEPT // 2]

    def conversation_of(self, frame):
        if frame["kind"] == KIND_DIRECT:
            peer = frame["to"] if self.is_me(frame["from"]) else frame["from"]
            return Conversation(peer=self.friend_name(peer))
        return Conversation(group_id=frame["group_id"])

    def friend_name(self, name):
        entry = self.friends.get(name.lower())
        return entry[0] if entry else name

    def show_friend_event(self, frame):
        """What someone did (events 1-4), or what I did on another device (5-8)."""
        name = frame["username"]
        key = name.lower()
        self.known_names[key] = name
        event = frame["event"]
        at = frame["timestamp_ms"]
        if event == FRIEND_ASKED:
            self.incoming[key] = name
            self.note("%s wants to be your friend: /accept %s or /decline %s."
                      % (name, name, name), at)
        elif event == FRIEND_ACCEPTED:
            self.outgoing.pop(key, None)
            self.friends.setdefault(key, [name, False])
            self.note("%s accepted your friend request: /open %s to chat." % (name, name), at)
        elif event == FRIEND_DECLINED:
            self.outgoing.pop(key, None)
            self.note("%s declined your friend request." % name, at)
        elif event == FRIEND_REMOVED:
            self.friends.pop(key, None)
            self.note("%s removed you from their friends." % name, at)
        elif event == FRIEND_YOU_ASKED:
            self.outgoing[key] = name
            self.note("On another device, you asked %s to be your friend." % name, at)
        elif event == FRIEND_YOU_ACCEPTED:
            self.incoming.pop(key, None)
            self.outgoing.pop(key, None)
            self.friends.setdefault(key, [name, False])
            self.note("On another device, you and %s became friends: /open %s to chat."
                      % (name, name), at)
        elif event == FRIEND_YOU_DECLINED:
            self.incoming.pop(key, None)
            self.note("On another device, you declined %s's friend request." % name, at)
        elif event == FRIEND_YOU_REMOVED:
            self.friends.pop(key, None)
            self.note("On another device, you removed %s from your friends." % name, at)

    def show_read_receipt(self, frame):
        """The peer read my messages, or I read theirs on another device."""
        reader, peer = frame["reader"], frame["peer"]
        if self.is_me(reader):
            conversation = Conversation(peer=self.friend_name(peer))
            text = "You read this conversation on another device."
        else:
            conversation = Conversation(peer=self.friend_name(reader))
            text = "%s has read your messages." % reader
        self.say(self.style.dim(clock(frame["timestamp_ms"])) + " " + self.label(conversation)
                 + " " + self.style.dim(text))

    def show_group_event(self, frame):
        group_id, name = frame["group_id"], frame["username"]
        self.groups.setdefault(group_id, frame["group_name"])
        label = self.plain_label(Conversation(group_id=group_id))
        at = frame["timestamp_ms"]
        if frame["event"] == GROUP_JOINED:
            self.groups[group_id] = frame["group_name"]
            if self.is_me(name):
                self.note("You are now a member of %s: /open %s to talk there."
                          % (label, label), at)
            else:
                self.known_names.setdefault(name.lower(), name)
                self.note("%s joined %s." % (name, label), at)
        elif frame["event"] == GROUP_LEFT:
            if self.is_me(name):
                # The device that left had its answer; this is another one of mine.
                self.note("On another device, you left %s." % label, at)
                self.groups.pop(group_id, None)
                if self.current is not None and self.current.group_id == group_id:
                    self.current = None
                    self.update_prompt()
            else:
                self.note("%s left %s." % (name, label), at)

    def on_sync_gap(self, frame):
        """The server skipped the oldest part of this device's backlog; shown first."""
        self.sync_gap = frame

    def on_sync_done(self, _frame):
        """The offline backlog is complete; it is shown once the group names are known too
        (items arriving meanwhile join it)."""
        self.sync_done = True
        if self.groups_known:
            self.finish_sync()

    def finish_sync(self):
        """Summarise the backlog, show it, then acknowledge it and send what waits."""
        self.syncing = False
        if self.sync_gap is not None:
            skipped = self.sync_gap["skipped"]
            self.note("You were away a long time: %s not shown here; /history [N] in a "
                      "conversation reads them." % (
                          "1 older message is" if skipped == 1 else
                          "about %d older messages are" % skipped))
            self.sync_gap = None
        fresh = [item for item in self.backlog if item["message_id"] not in self.shown_ids]
        messages = [item for item in fresh if item.opcode == Op.DELIVER]
        if messages:
            self.note("While you were away: %s." % self.summarise(messages))
        elif self.reconnects == 0:
            self.note("No new messages.")
        # Only the newest receipt of each conversation is worth a line.
        newest_receipt = {}
        for item in fresh:
            if item.opcode == Op.READ_RECEIPT:
                newest_receipt[(item["reader"].lower(), item["peer"].lower())] = item
        for item in self.backlog:
            stale = (item.opcode == Op.READ_RECEIPT and newest_receipt.get(
                (item["reader"].lower(), item["peer"].lower())) is not item)
            self.show_item(item, quiet=stale)
        if any(item.opcode in (Op.FRIEND_EVENT, Op.GROUP_EVENT) for item in fresh):
            # Old events replayed may disagree with the lists fetched at login: ask again.
            self.request(Op.FRIEND_LIST, on_answer=lambda frame: self.on_friend_list(
                frame, announce=False))
            self.request(Op.GROUP_LIST, on_answer=self.on_group_list)
        self.backlog = []
        self.flush_ack()
        for entry in self.outbox:
            if entry.request_id is None and entry.retry_at is None:
                self.transmit(entry)
        held, self.held_lines = self.held_lines, []
        for line in held:
            self.handle_line(line)
            if self.outcome is not None:
                return

    def summarise(self, messages):
        """ "3 new messages from bob and 2 new messages from carol in #team, and 1 you sent
        from another device" """
        counts, senders, order = {}, {}, []
        mine = 0
        for item in messages:
            if self.is_me(item["from"]):
                mine += 1
                continue
            conversation = self.conversation_of(item)
            if conversation not in counts:
                order.append(conversation)
                counts[conversation] = 0
                senders[conversation] = []
            counts[conversation] += 1
            if item["from"] not in senders[conversation]:
                senders[conversation].append(item["from"])
        parts = []
        for conversation in order:
            text = "%s from %s" % (plural(counts[conversation], "new message"),
                                   and_list(senders[conversation]))
            if conversation.group_id is not None:
                text += " in " + self.plain_label(conversation)
            parts.append(text)
        if mine:
            parts.append("%s you sent from another device" % plural(mine, "message"))
        return and_list(parts)

    def flush_ack(self):
        """ACK the highest item id shown or sent from here, once per pass of the loop."""
        if self.client is None or self.syncing or self.ack_wanted <= self.ack_sent:
            return
        self.ack_sent = self.ack_wanted
        try:
            self.request(Op.ACK, up_to_message_id=self.ack_wanted)
        except NotConnected:
            pass

    # -- other pushes -----------------------------------------------------------------------

    def on_presence(self, frame):
        name, online = frame["username"], bool(frame["online"])
        entry = self.friends.get(name.lower())
        if entry is None:
            # A new friend's state arrives just before the answer that makes them a friend;
            # that answer reports it.
            self.friends[name.lower()] = [name, online]
            return
        entry[1] = online
        self.note("%s is %s." % (name, "online" if online else "offline"))

    # -- sending ----------------------------------------------------------------------------

    def send_message(self, conversation, body):
        """Show the line as sent, then send it, now or as soon as the connection is back."""
        size = len(body.encode("utf-8"))
        if size > self.max_body:
            self.error("That message is %d bytes long; the server takes at most %d."
                       % (size, self.max_body))
            return
        if conversation.peer is not None and conversation.peer.lower() not in self.friends:
            self.error(SENTENCES[19][1].format(name=conversation.peer))
            return
        entry = Outgoing(conversation, body, self.next_client_msg_id)
        self.next_client_msg_id = (self.next_client_msg_id + 1) & 0xFFFFFFFFFFFFFFFF
        self.outbox.append(entry)
        self.say(self.format_message(time.time() * 1000, conversation, self.username, body))
        if self.client is None:
            self.note("Not connected: this will be sent once the connection is back.")
        elif not self.syncing:
            self.transmit(entry)

    def transmit(self, entry):
        conversation = entry.conversation
        on_answer = lambda frame: self.on_sent(entry, frame)  # noqa: E731
        on_error = lambda error: self.on_send_failed(entry, error)  # noqa: E731
        try:
            if conversation.peer is not None:
                entry.request_id = self.request(
                    Op.SEND, on_answer, on_error, to=conversation.peer,
                    client_msg_id=entry.client_msg_id, body=entry.body)
            else:
                entry.request_id = self.request(
                    Op.GROUP_SEND, on_answer, on_error, group_id=conversation.group_id,
                    client_msg_id=entry.client_msg_id, body=entry.body)
        except NotConnected:
            entry.request_id = None

    def on_sent(self, entry, frame):
        if entry in self.outbox:
            self.outbox.remove(entry)
        message_id = frame["message_id"]
        self.remember_shown(message_id)
        key = entry.conversation.key
        self.latest[key] = max(self.latest.get(key, 0), message_id)
        # PROTOCOL.md §6: an ACK may cover what this connection made itself (the server clamps
        # it to what the connection was sent), so this device's own messages never pile up
        # ahead of its position.
        self.ack_wanted = max(self.ack_wanted, message_id)

    def on_send_failed(self, entry, error):
        if error.retry_after_ms is not None:
            entry.request_id = None
            entry.retry_at = time.monotonic() + error.retry_after_ms / 1000
            return
        if entry in self.outbox:
            self.outbox.remove(entry)
        preview = entry.body if len(entry.body) <= 30 else entry.body[:29] + "\u2026"
        context = {"name": entry.conversation.peer, "max_body": self.max_body,
                   "group": self.plain_label(entry.conversation)}
        self.error("Not sent to %s (\u201c%s\u201d): %s" % (
            self.plain_label(entry.conversation), clean(preview), explain(error, **context)))

    # -- commands ---------------------------------------------------------------------------

    def handle_line(self, line):
        self.quit_warned = self.quit_warned and line.strip() in ("/quit", "/exit", "/logout")
        if not line.strip():
            return
        if not line.startswith("/") or line.startswith("//"):
            text = line[1:] if line.startswith("//") else line
            if self.current is None:
                self.error("No conversation is open: /open NAME first, or /msg NAME TEXT.")
                return
            self.send_message(self.current, text)
            return
        command, _, rest = line.partition(" ")
        handler = {
            "/add": self.command_add, "/accept": self.command_accept,
            "/decline": self.command_decline, "/remove": self.command_remove,
            "/friends": self.command_friends, "/msg": self.command_msg,
            "/open": self.command_open, "/close": self.command_close,
            "/history": self.command_history, "/read": self.command_read,
            "/group": self.command_group, "/g": self.command_group_send,
            "/devices": self.command_devices,
            "/help": self.command_help, "/logout": self.command_logout,
            "/quit": self.command_quit, "/exit": self.command_quit,
        }.get(command.lower())
        if handler is None:
            self.error("There is no command %s; /help lists them." % command)
            return
        try:
            handler(rest.strip())
        except NotConnected:
            self.error("Not connected to the server right now; try again once it is back.")

    def command_help(self, _):
        self.say(HELP)

    def need_name(self, rest, usage):
        name = rest.split()[0] if rest.split() else ""
        if not name:
            self.error("Usage: %s" % usage)
            return None
        if not USERNAME_RE.match(name):
            self.error(SENTENCES[10][1].format(name=name))
            return None
        return name

    def command_add(self, rest):
        name = self.need_name(rest, "/add NAME")
        if name is None:
            return
        if name.lower() == self.username.lower():
            self.error("You cannot be your own friend here; /add someone else.")
            return

        def answered(frame):
            if frame["outcome"] == 1:
                self.incoming.pop(name.lower(), None)
                self.friends.setdefault(name.lower(), [name, False])
                self.note("%s had already asked you: you are now friends." % name)
            else:
                self.outgoing[name.lower()] = name
                self.note("Friend request sent to %s." % name)
        self.request(Op.FRIEND_REQUEST, answered, context={"name": name}, username=name)

    def command_accept(self, rest):
        name = self.need_name(rest, "/accept NAME")
        if name is None:
            return
        name = self.incoming.get(name.lower(), name)

        def answered(_):
            self.incoming.pop(name.lower(), None)
            entry = self.friends.setdefault(name.lower(), [name, False])
            self.note("You and %s are now friends (%s is %s): /open %s to chat."
                      % (name, name, "online" if entry[1] else "offline", name))
        self.request(Op.FRIEND_ACCEPT, answered, context={"name": name}, username=name)

    def command_decline(self, rest):
        name = self.need_name(rest, "/decline NAME")
        if name is None:
            return
        name = self.incoming.get(name.lower(), name)

        def answered(_):
            self.incoming.pop(name.lower(), None)
            self.note("You declined %s's friend request." % name)
        self.request(Op.FRIEND_DECLINE, answered, context={"name": name}, username=name)

    def command_remove(self, rest):
        name = self.need_name(rest, "/remove NAME")
        if name is None:
            return
        name = self.friend_name(name)

        def answered(_):
            self.friends.pop(name.lower(), None)
            self.note("You and %s are no longer friends." % name)
        self.request(Op.FRIEND_REMOVE, answered, context={"name": name}, username=name)

    def command_friends(self, _):
        self.request(Op.FRIEND_LIST, self.show_friends)

    def show_friends(self, frame):
        self.on_friend_list(frame, announce=False)
        lines = []
        if frame["friends"]:
            lines.append("Friends:")
            for friend in frame["friends"]:
                state = (self.style.me("online") if friend["online"] else
                         self.style.dim("offline"))
                lines.append("  %-20s %s" % (friend["username"], state))
        else:
            lines.append("You have no friends here yet: /add NAME asks someone.")
        if frame["incoming"]:
            names = [f["username"] for f in frame["incoming"]]
            lines.append("Waiting for your answer: %s (/accept NAME or /decline NAME)"
                         % ", ".join(names))
        if frame["outgoing"]:
            names = [f["username"] for f in frame["outgoing"]]
            lines.append("You asked, no answer yet: %s" % ", ".join(names))
        self.say("\n".join(lines))

    def command_msg(self, rest):
        target, _, text = rest.partition(" ")
        if not target or not text.strip():
            self.error("Usage: /msg NAME TEXT (or /g GROUP TEXT for a group)")
            return
        conversation = self.resolve(target)
        if conversation is not None:
            self.send_message(conversation, text)

    def command_group_send(self, rest):
        target, _, text = rest.partition(" ")
        if not target or not text.strip():
            self.error("Usage: /g GROUP TEXT")
            return
        group_id = self.resolve_group(target)
        if group_id is not None:
            self.send_message(Conversation(group_id=group_id), text)

    def resolve(self, target):
        """A conversation from "NAME", "@NAME" or "#GROUP" (a bare group name works too when
        no friend has that name); None after explaining why not."""
        if target.startswith("#"):
            group_id = self.resolve_group(target)
            return None if group_id is None else Conversation(group_id=group_id)
        name = target.lstrip("@")
        if name.lower() not in self.friends and not name.isdigit():
            matches = [gid for gid, gname in self.groups.items()
                       if gname.lower() == name.lower()]
            if len(matches) == 1:
                return Conversation(group_id=matches[0])
        if not USERNAME_RE.match(name):
            self.error(SENTENCES[10][1].format(name=name))
            return None
        return Conversation(peer=self.friend_name(name))

    def resolve_group(self, text):
        name = text[1:] if text.startswith("#") else text
        matches = [gid for gid, gname in self.groups.items() if gname.lower() == name.lower()]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            self.error("You are in %d groups called %s; use the number from /group list."
                       % (len(matches), clean(name)))
            return None
        if name.isdigit() and int(name) in self.groups:
            return int(name)
        self.error("You are not in a group called %s; /group list shows yours." % clean(name))
        return None

    def command_open(self, rest):
        if not rest:
            self.command_close(rest)
            return
        conversation = self.resolve(rest.split()[0])
        if conversation is None:
            return
        self.current = conversation
        self.update_prompt()
        self.note("Talking in %s now: plain lines go there; /history, /close."
                  % self.plain_label(conversation))

    def command_close(self, _):
        if self.current is not None:
            self.note("Closed %s." % self.plain_label(self.current))
        self.current = None
        self.update_prompt()

    def command_history(self, rest):
        if self.current is None:
            self.error("Open a conversation first: /open NAME, then /history.")
            return
        count = DEFAULT_HISTORY
        if rest:
            if not rest.isdigit() or int(rest) < 1:
                self.error("Usage: /history [N], with N a number of messages.")
                return
            count = int(rest)
        self.fetch_history(self.current, count, 0, [])

    def fetch_history(self, conversation, wanted, before, collected):
        """The `wanted` newest messages below `before` (0: the newest), page by page."""
        def answered(frame):
            collected.extend(frame["messages"])
            if len(collected) < wanted and frame["next"]:
                self.fetch_history(conversation, wanted, frame["next"], collected)
                return
            self.show_history(conversation, collected[:wanted])

        context = {"name": conversation.peer, "group": self.plain_label(conversation)}
        limit = min(wanted - len(collected), HISTORY_PAGE_LIMIT)
        target = ({"kind": KIND_DIRECT, "peer": conversation.peer}
                  if conversation.peer is not None else
                  {"kind": KIND_GROUP, "group_id": conversation.group_id})
        self.request(Op.HISTORY, answered, context=context, direction=OLDER,
                     from_message_id=before, limit=limit, **target)

    def show_history(self, conversation, messages):
        label = self.plain_label(conversation)
        if not messages:
            self.note("No messages in %s yet." % label)
            return
        key = conversation.key
        self.latest[key] = max(self.latest.get(key, 0), messages[0]["message_id"])
        lines = [self.style.dim("--- the last %s in %s ---"
                                % (plural(len(messages), "message"), label))]
        for message in reversed(messages):
            lines.append(self.format_message(message["timestamp_ms"], conversation,
                                             message["sender"], message["body"],
                                             with_date=True))
        lines.append(self.style.dim("--- end of history ---"))
        self.say("\n".join(lines))

    def command_read(self, rest):
        conversation = self.resolve(rest.split()[0]) if rest else self.current
        if conversation is None:
            if not rest:
                self.error("Open a conversation first (/open NAME), or give a name: /read NAME.")
            return
        if conversation.peer is None:
            self.error("Read receipts are for conversations with one person, not groups.")
            return
        up_to = self.latest.get(conversation.key)
        if not up_to:
            self.note("Nothing to mark as read with %s yet." % conversation.peer)
            return

        def answered(_):
            self.note("Told %s you have read their messages." % conversation.peer)
        self.request(Op.READ, answered, context={"name": conversation.peer},
                     peer=conversation.peer, up_to_message_id=up_to)

    def command_group(self, rest):
        words = rest.split()
        sub = words[0].lower() if words else ""
        args = words[1:]
        if sub == "create" and len(args) == 1:
            self.group_create(args[0])
        elif sub == "create":
            self.error("Usage: /group create NAME (one word: use - or _ instead of spaces)")
        elif sub == "invite" and len(args) == 2:
            self.group_invite(args[0], args[1])
        elif sub == "invite":
            self.error("Usage: /group invite GROUP NAME")
        elif sub == "leave" and len(args) == 1:
            self.group_leave(args[0])
        elif sub == "leave" and not args and self.current and self.current.group_id:
            self.group_leave(str(self.current.group_id))
        elif sub == "leave":
            self.error("Usage: /group leave GROUP")
        elif sub == "members":
            self.group_members(args[0] if args else None)
        elif sub == "list":
            self.request(Op.GROUP_LIST, self.show_groups)
        else:
            self.error("Usage: /group create|invite|leave|members|list; /help explains each.")

    def group_create(self, name):
        name = name.lstrip("#")
        if not 1 <= len(name) <= 64:
            self.error("A group name has 1 to 64 characters.")
            return

        def answered(frame):
            self.groups[frame["group_id"]] = name
            self.note("Created #%s. Add people with /group invite %s NAME." % (name, name))
        self.request(Op.GROUP_CREATE, answered, name=name)

    def group_invite(self, group, name):
        group_id = self.resolve_group(group)
        if group_id is None or not USERNAME_RE.match(name):
            if group_id is not None:
                self.error(SENTENCES[10][1].format(name=name))
            return
        label = self.plain_label(Conversation(group_id=group_id))
        name = self.friend_name(name)

        def answered(_):
            # The other members (and my other devices) get a GROUP_EVENT; this device, which
            # asked, has only this answer.
            self.note("You added %s to %s." % (name, label))
        self.request(Op.GROUP_INVITE, answered, context={"name": name, "group": label},
                     group_id=group_id, username=name)

    def group_leave(self, group):
        group_id = self.resolve_group(group)
        if group_id is None:
            return
        if group_id == LOBBY_GROUP_ID:
            self.error("Everyone is in #lobby; it cannot be left.")
            return
        label = self.plain_label(Conversation(group_id=group_id))

        def answered(_):
            self.note("You left %s." % label)
            self.groups.pop(group_id, None)
            if self.current is not None and self.current.group_id == group_id:
                self.current = None
                self.update_prompt()
        self.request(Op.GROUP_LEAVE, answered, context={"group": label}, group_id=group_id)

    def group_members(self, group):
        if group is None:
            if self.current is None or self.current.group_id is None:
                self.error("Usage: /group members GROUP (or open the group first)")
                return
            group_id = self.current.group_id
        else:
            group_id = self.resolve_group(group)
            if group_id is None:
                return
        label = self.plain_label(Conversation(group_id=group_id))

        def answered(frame):
            members = frame["members"]
            lines = ["%s has %s:" % (label, plural(len(members), "member"))]
            for member in members:
                state = (self.style.me("online") if member["online"] else
                         self.style.dim("offline"))
                owner = " (owner)" if member["owner"] else ""
                lines.append("  %-20s %s%s" % (member["username"], state, owner))
            self.say("\n".join(lines))
        self.request(Op.GROUP_MEMBERS, answered, context={"group": label}, group_id=group_id)

    def show_groups(self, frame):
        self.on_group_list(frame)
        lines = ["Your groups:"]
        for group in frame["groups"]:
            owner = (" owned by %s" % group["owner"]) if group["owner"] else ""
            lines.append("  %-20s %s%s (number %d)" % (
                "#" + clean(group["name"]), plural(group["members"], "member"), owner,
                group["group_id"]))
        self.say("\n".join(lines))

    def command_devices(self, rest):
        words = rest.split(None, 1)
        if not words:
            self.request(Op.DEVICE_LIST, self.show_devices)
        elif words[0].lower() == "remove" and len(words) == 2:
            # Resolved against a fresh list, so that what the person saw last is not stale.
            wanted = words[1].strip()
            self.request(Op.DEVICE_LIST, lambda frame: self.remove_device(frame, wanted))
        else:
            self.error("Usage: /devices, or /devices remove ID")

    def show_devices(self, frame):
        devices = frame["devices"]
        self.device_names = {d["device_id"]: d["name"] for d in devices}
        lines = ["Your devices, most recently seen first:"]
        for device in devices:
            if device["current"]:
                state = self.style.me("this device")
            elif device["online"]:
                state = self.style.me("online")
            else:
                state = self.style.dim("last seen " + clock(device["last_seen_ms"],
                                                            with_date=True))
            lines.append("  %-20d  %-24s %s" % (device["device_id"], clean(device["name"]),
                                                 state))
        lines.append(self.style.dim("/devices remove ID forgets one (the first digits of its "
                                    "ID will do)."))
        self.say("\n".join(lines))

    def remove_device(self, frame, wanted):
        """DEVICE_REMOVE of the device `wanted` names: its id, the start of it, or its name."""
        devices = frame["devices"]
        self.device_names = {d["device_id"]: d["name"] for d in devices}
        matches = [d for d in devices if str(d["device_id"]) == wanted]
        if not matches:
            matches = [d for d in devices if str(d["device_id"]).startswith(wanted)
                       or d["name"].lower() == wanted.lower()]
        if not matches:
            self.error("None of your devices has the ID or name %s; /devices lists them."
                       % clean(wanted))
            return
        if len(matches) > 1:
            self.error("%s fits %d devices; type more of the ID." % (clean(wanted),
                                                                    len(matches)))
            return
        device = matches[0]
        if device["current"]:
            self.error("That is this device; /logout instead to leave it.")
            return
        name = clean(device["name"])

        def answered(_):
            self.device_names.pop(device["device_id"], None)
            self.note("Removed the device %s: it is logged out, and if it logs in again it "
                      "starts afresh, as a new device." % name)
        self.request(Op.DEVICE_REMOVE, answered, device_id=device["device_id"])

    def command_logout(self, _):
        if self.outbox and not self.quit_warned:
            self.quit_warned = True
            self.error("%s not sent yet; /logout again to log out anyway."
                       % plural(len(self.outbox), "message is").replace("messages is",
                                                                        "messages are"))
            return
        if self.client is None:
            self.note("Logged out.")
            self.outcome = "logout"
            return

        def answered(_):
            self.note("Logged out.")
            self.outcome = "logout"

        def failed(error):
            self.error(explain(error))
            self.outcome = "logout"
        self.request(Op.LOGOUT, answered, failed)

    def command_quit(self, _):
        if self.outbox and not self.quit_warned:
            self.quit_warned = True
            self.error("%s not sent yet; /quit again to leave anyway."
                       % plural(len(self.outbox), "message is").replace("messages is",
                                                                        "messages are"))
            return
        self.outcome = "quit"

    # -- completion -------------------------------------------------------------------------

    def complete(self, before, word):
        """Choices for `word`, the word being typed after the text `before` (see LineEditor)."""
        words = before.split()
        if not words:
            return [c for c in COMMANDS if c.startswith(word.lower())] if word.startswith(
                "/") else self.match(self.conversation_names(), word)
        command = words[0].lower()
        position = len(words)
        friends = [entry[0] for entry in self.friends.values()]
        groups = list(self.groups.values())
        if command in ("/accept", "/decline") and position == 1:
            names = list(self.incoming.values()) or list(self.known_names.values())
        elif command == "/add" and position == 1:
            names = [n for key, n in self.known_names.items()
                     if key not in self.friends and key != self.username.lower()]
        elif command in ("/msg", "/remove", "/read") and position == 1:
            names = friends
        elif command == "/open" and position == 1:
            names = self.conversation_names()
        elif command == "/g" and position == 1:
            names = groups
        elif command == "/group" and position == 1:
            names = GROUP_SUBCOMMANDS
        elif command == "/group" and position == 2 and words[1].lower() != "create":
            names = groups
        elif command == "/group" and position == 3 and words[1].lower() == "invite":
            names = friends + list(self.known_names.values())
        elif command == "/devices" and position == 1:
            names = DEVICE_SUBCOMMANDS
        elif command == "/devices" and position == 2 and words[1].lower() == "remove":
            names = [str(device_id) for device_id in self.device_names]
        else:
            names = []
        return self.match(names, word)

    def conversation_names(self):
        return [entry[0] for entry in self.friends.values()] + [
            "#" + name for name in self.groups.values()]

    @staticmethod
    def match(names, word):
        lowered = word.lower()
        prefix = "#" if lowered.startswith("#") else ""
        found = [name for name in names if name.lower().startswith(lowered)]
        if prefix == "" or found:
            return found
        return ["#" + name for name in names if ("#" + name).lower().startswith(lowered)]


# ---------------------------------------------------------------------------------------------
# Logging in
# ---------------------------------------------------------------------------------------------

class KeysMismatch(Exception):
    """Cached keys do not fit the account's salt and iteration count (and no password)."""

    def __init__(self):
        super().__init__("the saved key does not fit this account")


def scram_login(client, username, device, keys=None, password=None, on_derive=None):
    """LOGIN_START and LOGIN_FINISH with SCRAM-SHA-256 as `device`; returns the keys that
    worked.

    Uses `keys` when they fit the challenge, else derives them from `password` (calling
    `on_derive()` first, since that takes a moment). Checks the server's signature.
    """
    client_nonce = secrets.token_bytes(24)
    challenge = client.login_start(username, client_nonce)
    salt, iterations, nonce = challenge["salt"], challenge["iterations"], challenge["nonce"]
    if keys is None or not keys.matches(salt, iterations):
        if password is None:
            client.close()
            raise KeysMismatch()
        if on_derive is not None:
            on_derive()
        keys = derive_keys(password, salt, iterations)
    if not nonce.startswith(client_nonce) or len(nonce) <= len(client_nonce):
        raise AuthenticationError("the server's answer does not match this login")
    message = auth_message(username, client_nonce, salt, iterations, nonce)
    ok = client.login_finish(client_proof(keys, message), device)
    if not secrets.compare_digest(ok["server_signature"], server_signature(keys, message)):
        client.close()
        raise AuthenticationError("the server could not prove it holds your account: "
                                  "this may not be the server you think it is")
    client.username = ok["username"]
    client.keys = keys
    client.device = device
    return keys


def load_cached_keys(path):
    """(username, DerivedKeys) from a key file, or None if there is none or it is unusable."""
    try:
        with open(path, encoding="utf-8") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            data = json.load(handle)
        keys = DerivedKeys(bytes.fromhex(data["salt"]), int(data["iterations"]),
                           bytes.fromhex(data["salted_password"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        print("The key file %s cannot be read; ignoring it." % path)
        return None
    if mode & 0o077:
        print("Warning: %s can be read by other users; run: chmod 600 %s" % (path, path))
    return data["username"], keys


def save_cached_keys(path, username, keys):
    """Write the derived keys (never the password) to `path`, readable by its owner only."""
    data = json.dumps({"username": username, "salt": keys.salt.hex(),
                       "iterations": keys.iterations,
                       "salted_password": keys.salted_password.hex()})
    temporary = "%s.tmp%d" % (path, os.getpid())
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write(data + "\n")
        os.replace(temporary, path)
    except OSError as error:
        print("Could not save the key to %s: %s." % (path, describe_os_error(error)))
        return
    print("Saved your key (not your password) to %s; anyone who can read that file can log "
          "in as you." % path)


def default_device_file():
    """~/.config/imchat/device.json, or under $XDG_CONFIG_HOME when it is set."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "imchat", "device.json")


def default_device_name():
    return ("imchat on %s" % (socket.gethostname() or "this computer"))[:MAX_DEVICE_NAME]


def valid_device_name(name):
    return 1 <= len(name) <= MAX_DEVICE_NAME


def load_device(path, name=None):
    """This installation's Device from `path`, created there on first use.

    `name` (from --device-name) renames it. When the file cannot be written the device lives
    for this run only, and the person is told that the next run will be a new device.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        device = Device(int(data["device_id"]), str(data["device_name"]))
        if not 0 < device.device_id < 2 ** 64 or not valid_device_name(device.name):
            raise ValueError("out of range")
    except FileNotFoundError:
        device = Device(new_device_id(), name or default_device_name())
    except (OSError, ValueError, KeyError, TypeError):
        # Not overwritten: it may be a file the person keeps for another reason.
        print("The device file %s cannot be read; this run is a new device that is not "
              "saved (use --device-file PATH for another file)." % path)
        return Device(new_device_id(), name or default_device_name())
    else:
        if name is None or name == device.name:
            return device
        device = Device(device.device_id, name)
    save_device(path, device)
    return device


def save_device(path, device):
    data = json.dumps({"device_id": device.device_id, "device_name": device.name})
    temporary = "%s.tmp%d" % (path, os.getpid())
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(data + "\n")
        os.replace(temporary, path)
    except OSError as error:
        print("Could not save this device to %s (%s); the next run will count as a new "
              "device." % (path, describe_os_error(error)))


def read_line_unbuffered(prompt):
    """A line from standard input read byte by byte, for when it is not a terminal: input()
    would read ahead into a buffer that the chat's select loop cannot see."""
    sys.stdout.write(prompt)
    sys.stdout.flush()
    data = bytearray()
    while True:
        chunk = os.read(0, 1)
        if not chunk:
            if not data:
                raise EOFError
            break
        if chunk == b"\n":
            break
        data += chunk
    return data.decode("utf-8", "replace").rstrip("\r")


def ask(prompt):
    """A line typed by the person; None at end of input (Ctrl-D)."""
    try:
        return input(prompt) if os.isatty(0) else read_line_unbuffered(prompt)
    except EOFError:
        print()
        return None


def ask_password(prompt):
    """A password, not echoed (read as a plain line when input is not a terminal)."""
    try:
        return getpass(prompt) if os.isatty(0) else read_line_unbuffered(prompt)
    except EOFError:
        print()
        return None


class Connector:
    """Opens a connection and greets the server; explains failures as sentences.

    It is opened only once everything the person types for a login is in: the server closes
    a connection that is not logged in within HELLO_OK's `login_timeout_secs`.
    """

    def __init__(self, host, port, tls=None):
        self.host, self.port = host, port
        self.tls = tls
        self.hello_info = None

    def open(self):
        client = Client(timeout=CONNECT_TIMEOUT, tls=self.tls)
        client.connect(self.host, self.port)
        client.hello()
        self.hello_info = client.hello_info
        return client

    def kdf_iterations(self, requested):
        """`requested`, raised to the minimum the server announced (REGISTER refuses fewer)."""
        if self.hello_info is None:
            return requested
        return max(requested, self.hello_info["min_kdf_iterations"])

    def probe(self):
        """Check that the server answers; returns its name, or None after saying why not."""
        try:
            client = self.open()
        except TlsError as error:
            print("Cannot talk TLS with the server at %s:%d: %s" % (self.host, self.port, error))
            return None
        except (OSError, ProtocolError) as error:
            print("Cannot reach the server at %s:%d (%s). Is it running? Start it with "
                  "`cargo run --release`, or pass --addr HOST:PORT."
                  % (self.host, self.port, describe_os_error(error)))
            return None
        except ServerError as error:
            print("The server at %s:%d refused the connection: %s"
                  % (self.host, self.port, explain(error)))
            return None
        name = client.hello_info["server"]
        client.close()
        return name


def login_prompt(connector, options):
    """Ask to log in or register until it works; returns (client, keys) or None to quit."""
    cached = load_cached_keys(options.cache_keys) if options.cache_keys else None
    if cached is not None:
        username, keys = cached
        answer = ask("Log in as %s with the saved key? [Y/n] " % username)
        if answer is None:
            return None
        if answer.strip().lower() in ("", "y", "yes"):
            result = attempt_login(connector, username, options.device, keys=keys)
            if result is not None:
                return result
    while True:
        answer = ask("Log in or register? [L/r, q to quit] ")
        if answer is None or answer.strip().lower() in ("q", "quit"):
            return None
        choice = answer.strip().lower()
        if choice in ("", "l", "login", "log in"):
            result = login_interactively(connector, options)
        elif choice in ("r", "register"):
            result = register_interactively(connector, options)
        else:
            print("Type l to log in, r to register or q to quit.")
            continue
        if result is not None:
            return result


def print_deriving():
    print("deriving key\u2026 ", end="", flush=True)


def attempt_login(connector, username, device, keys=None, password=None):
    """One login as `device`; returns (client, keys) or None after explaining what went
    wrong."""
    try:
        client = connector.open()
    except (OSError, ProtocolError) as error:
        print("Cannot reach the server (%s)." % describe_os_error(error))
        return None
    derived = []

    def on_derive():
        print_deriving()
        derived.append(True)
    try:
        keys = scram_login(client, username, device, keys=keys, password=password,
                           on_derive=on_derive)
    except ServerError as error:
        if derived:
            print()
        client.close()
        print(explain(error, name=username))
        return None
    except KeysMismatch as error:
        print("%s; please type the password." % str(error).capitalize())
        return None
    except (OSError, ProtocolError, AuthenticationError) as error:
        if derived:
            print()
        client.close()
        print("The login did not complete (%s)." % (
            describe_os_error(error) if isinstance(error, OSError) else error))
        return None
    if derived:
        print("done.")
    return client, keys


def login_interactively(connector, options):
    username = ask("Name: ")
    if username is None:
        return None
    username = username.strip()
    if not USERNAME_RE.match(username):
        print(SENTENCES[10][1].format(name=username))
        return None
    password = ask_password("Password: ")
    if not password:
        return None
    result = attempt_login(connector, username, options.device, password=password)
    if result is not None and options.cache_keys:
        save_cached_keys(options.cache_keys, result[0].username, result[1])
    return result


def register_interactively(connector, options):
    """Choose a name and password, derive the key once, REGISTER, then log in with it."""
    username = ask("Choose a name (letters, digits, . _ -): ")
    if username is None:
        return None
    username = username.strip()
    if not USERNAME_RE.match(username):
        print(SENTENCES[10][1].format(name=username))
        return None
    password = ask_password("Choose a password: ")
    if not password:
        print("A password cannot be empty.")
        return None
    if ask_password("Type it again: ") != password:
        print("The two passwords differ; let us start again.")
        return None
    print_deriving()
    keys = derive_keys(password, secrets.token_bytes(16),
                       connector.kdf_iterations(options.kdf_iterations))
    print("done.")
    while True:
        client = None
        try:
            client = connector.open()
            client.request(Op.REGISTER, username=username, salt=keys.salt,
                           iterations=keys.iterations, stored_key=keys.stored_key,
                           server_key=keys.server_key)
            break
        except ServerError as error:
            if client is not None:
                client.close()
            print(explain(error, name=username))
            if error.code not in (10, 11):
                return None
            username = ask("Choose another name: ")
            if username is None or not username.strip():
                return None
            username = username.strip()
        except (OSError, ProtocolError) as error:
            print("Cannot reach the server (%s)." % describe_os_error(error))
            return None
    print("Registered %s." % username)
    try:
        scram_login(client, username, options.device, keys=keys)
    except ServerError as error:
        client.close()
        print(explain(error, name=username))
        return None
    except (OSError, ProtocolError, AuthenticationError, KeysMismatch) as error:
        client.close()
        print("The login did not complete (%s)." % error)
        return None
    if options.cache_keys:
        save_cached_keys(options.cache_keys, client.username, keys)
    return client, keys


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------

def parse_address(text):
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError("expected HOST:PORT, e.g. 127.0.0.1:7878")
    return host.strip("[]"), int(port)


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="imchat", description="Chat with friends on an im-server, in a terminal.")
    parser.add_argument("--addr", type=parse_address, default=parse_address(DEFAULT_ADDR),
                        help="the server, HOST:PORT (default %s)" % DEFAULT_ADDR)
    parser.add_argument("--cache-keys", metavar="PATH",
                        help="keep the key derived from your password in this file (mode "
                             "0600), so later logins skip the password; anyone who can read "
                             "the file can log in as you")
    parser.add_argument("--device-file", metavar="PATH", default=default_device_file(),
                        help="this installation's device id and name, created on first use "
                             "(default %(default)s). The server keeps what each device has "
                             "seen: keep this file (without it every run is a new device), "
                             "and give each installation its own")
    parser.add_argument("--device-name", metavar="NAME",
                        help="what /devices calls this device (1 to %d characters; default "
                             "\"imchat on HOSTNAME\"), saved in the device file"
                             % MAX_DEVICE_NAME)
    parser.add_argument("--tls", action="store_true",
                        help="talk TLS to the server's --tls-listen port, trusting the "
                             "system's certificates")
    parser.add_argument("--ca", metavar="FILE",
                        help="trust only this certificate (PEM), e.g. a self-signed server's; "
                             "implies --tls")
    # For tests: registering with fewer PBKDF2 rounds (the server must allow it).
    parser.add_argument("--kdf-iterations", type=int, help=argparse.SUPPRESS,
                        default=int(os.environ.get("IMCHAT_KDF_ITERATIONS",
                                                   DEFAULT_ITERATIONS)))
    return parser.parse_args(argv)


def main(argv=None):
    options = parse_args(sys.argv[1:] if argv is None else argv)
    if options.device_name is not None and not valid_device_name(options.device_name):
        print("A device name has 1 to %d characters." % MAX_DEVICE_NAME)
        return 2
    host, port = options.addr
    tls = tls_context(options.ca) if options.tls or options.ca else None
    connector = Connector(host, port, tls)
    color = (os.isatty(1) and "NO_COLOR" not in os.environ
             and os.environ.get("TERM", "dumb") != "dumb")
    style = Style(color)
    editor = LineEditor()
    # SIGTERM and SIGHUP end the program through its `finally` blocks, restoring the terminal.
    for number in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, lambda *_: sys.exit(1))
    server = connector.probe()
    if server is None:
        return 1
    print("imchat: connected to %s at %s:%d%s." % (server, host, port, " over TLS" if tls else ""))
    options.device = load_device(options.device_file, options.device_name)
    try:
        while True:
            session = login_prompt(connector, options)
            if session is None:
                break
            client, keys = session
            print("Hello %s! /help lists the commands; Tab completes them." % client.username)
            chat = Chat(editor, style, (host, port), client, keys, options.device, tls)
            if chat.run() == "quit":
                break
    except KeyboardInterrupt:
        print()
    finally:
        editor.stop()
    print("Bye.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
