"""What a chat session keeps: its conversations, the messages on their way, the requests in
flight."""

import time


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
