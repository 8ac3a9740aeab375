"""Words for people: every error code of PROTOCOL.md section 4 as a sentence (`explain`), the
width of text on a terminal, times, plurals, and the colours of `Style`."""

import socket
import string
import time
import unicodedata

from imclient import (
    ConnectionClosed)




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
