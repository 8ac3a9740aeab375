"""One logged-in session in the terminal: a select loop over the terminal and the socket, the
requests in flight, the outbox of unconfirmed messages (resent with the same client_msg_id
after a reconnect), the offline backlog and the reconnection with backoff."""

import os
import secrets
import select
import signal
import time

from imclient import (
    KIND_DIRECT, AuthenticationError, Client, ConnectionClosed, KeysMismatch, Op,
    ProtocolError, ServerError, is_item)
from .commands import Commands
from .completion import Completion
from .model import Conversation, NotConnected, Outgoing, Pending
from .login import scram_login
from .rendering import Rendering
from .text import DEVICE_REMOVED, LOGIN_REFUSED, SENTENCES, clean, describe_os_error, explain
from .settings import ANSWER_TIMEOUT, BACKOFF_FIRST, BACKOFF_LAST, CONNECT_TIMEOUT, SHOWN_IDS_KEPT


class Chat(Rendering, Commands, Completion):
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
