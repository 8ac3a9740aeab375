"""Asking the person for a line or a password, before the chat's line editor takes the
terminal (and, for /password, while it has put it aside)."""

import os
import sys
from getpass import getpass


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
