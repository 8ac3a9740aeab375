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

The program lives in the package `imchat_app/` next to this file (its `__init__` lists the
modules); this file only puts the scripts directory on the import path and runs it, so
`python3 scripts/imchat.py` needs nothing installed.

The password is never stored. The keys derived from it (password-equivalent) stay in memory
for reconnecting, and go to a file only with `--cache-keys PATH` (mode 0600).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from imchat_app.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
