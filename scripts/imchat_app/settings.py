"""The chat's timings and limits, in one place."""

import re

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
