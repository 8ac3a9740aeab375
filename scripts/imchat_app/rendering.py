"""What a chat session prints: the formatting of every item the server pushes."""

import time

from imclient import (
    FRIEND_ACCEPTED, FRIEND_ASKED, FRIEND_DECLINED, FRIEND_REMOVED, FRIEND_YOU_ACCEPTED,
    FRIEND_YOU_ASKED, FRIEND_YOU_DECLINED, FRIEND_YOU_REMOVED, GROUP_JOINED, GROUP_LEFT, Op)
from .model import Conversation
from .text import and_list, clean, clock, plural, text_width


class Rendering:
    """How a `Chat` shows what arrives: messages, friend events, receipts, group events,
    presence and the summary of an offline backlog (a mixin of `Chat`)."""

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
