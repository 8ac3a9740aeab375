"""The slash commands: what each asks of the server and how its answer is shown."""

import os
import secrets

from imclient import (
    DEFAULT_ITERATIONS, AuthenticationError, answer_challenge, derive_keys, fresh_keys,
    KIND_DIRECT, KIND_GROUP, LOBBY_GROUP_ID, OLDER, Op)
from .settings import DEFAULT_HISTORY, HISTORY_PAGE_LIMIT, USERNAME_RE
from .prompts import ask_password
from .model import Conversation, NotConnected
from .text import SENTENCES, clean, clock, explain, plural


# What Tab completes (completion.py); handle_line below maps each command to its method.
COMMANDS = ["/add", "/accept", "/decline", "/remove", "/friends", "/msg", "/open", "/close",
            "/history", "/read", "/group", "/g", "/devices", "/password", "/delete-account",
            "/help", "/logout", "/quit"]
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
  /password              change your password (your other devices are logged out)
  /delete-account NAME   delete your account (NAME is yours, to be sure)
  /logout                log out and go back to the login prompt
  /quit                  leave (Ctrl-D does the same)
Keys: arrows and Ctrl-A/E move, Up/Down recall lines, Ctrl-U/K/W delete, Ctrl-L clears."""


class Commands:
    """The slash commands of a `Chat` (a mixin of `Chat`; their Tab completion is in
    `completion`)."""

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
            "/password": self.command_password, "/delete-account": self.command_delete_account,
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

    def ask_secret(self, prompt):
        """A password typed without echo, the input line put aside meanwhile; None if empty."""
        self.editor.stop()
        try:
            return ask_password(prompt) or None
        finally:
            self.editor.start()
            self.update_prompt()

    def fresh_proof_then(self, password, then):
        """REAUTH_START, then `then(proof)` with the proof of `password` for its challenge.

        imclient's `Client.fresh_proof` does the same but waits for the answer; the chat's
        select loop must not block, so it takes the same SCRAM step in a callback.
        """
        nonce = secrets.token_bytes(24)

        def challenged(challenge):
            keys = derive_keys(password, challenge["salt"], challenge["iterations"])
            try:
                proof, _ = answer_challenge(self.username, nonce, challenge, keys)
            except AuthenticationError:
                self.error("The server's challenge does not match ours; nothing was changed.")
                return
            then(proof)
        self.request(Op.REAUTH_START, challenged, client_nonce=nonce)

    def command_password(self, _):
        old = self.ask_secret("Current password: ")
        new = old and self.ask_secret("New password: ")
        again = new and self.ask_secret("New password again: ")
        if not new or new != again:
            self.error("The new passwords differ (or one was empty); nothing was changed.")
            return
        # IMCHAT_KDF_ITERATIONS: fewer rounds for tests, as at registration (cli.py).
        wanted = int(os.environ.get("IMCHAT_KDF_ITERATIONS", DEFAULT_ITERATIONS))
        iterations = self.client.kdf_iterations(wanted)

        def prove(proof):
            keys = fresh_keys(new, iterations)

            def changed(_):
                self.keys = keys
                self.note("Password changed. Your other devices were logged out; log them in "
                          "with the new password.")
            self.request(Op.PASSWORD_CHANGE, changed, client_proof=proof, **keys.verifier())
        self.note("Deriving keys…")
        self.fresh_proof_then(old, prove)

    def command_delete_account(self, rest):
        if rest.strip() != self.username:
            self.error("This deletes your account for good: your friends and groups are told, "
                       "and the name stays taken for a while. To go ahead: /delete-account %s"
                       % self.username)
            return
        password = self.ask_secret("Password, to confirm: ")
        if not password:
            return

        def prove(proof):
            def deleted(_):
                self.note("Your account is deleted. Goodbye.")
                self.outcome = "quit"
            self.request(Op.ACCOUNT_DELETE, deleted, client_proof=proof)
        self.fresh_proof_then(password, prove)

    def command_quit(self, _):
        if self.outbox and not self.quit_warned:
            self.quit_warned = True
            self.error("%s not sent yet; /quit again to leave anyway."
                       % plural(len(self.outbox), "message is").replace("messages is",
                                                                        "messages are"))
            return
        self.outcome = "quit"
