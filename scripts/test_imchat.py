#!/usr/bin/env python3
"""End-to-end test of scripts/imchat.py: two people chatting in real terminals.

Builds the server (`cargo build`; `--no-build` skips it, and `IM_SERVER_BIN` names a binary
built elsewhere), starts it on 127.0.0.1:0 with a database in a temporary directory, and
drives two imchat clients, alice and bob, each in its own tmux session (120x40) on a tmux
server of this test's own: `send-keys` types, `capture-pane` reads the screen. Each imchat
keeps its device in a file of the test's own (`--device-file`). The scenario: both register
and see their one device in /devices, become friends, chat both ways (one of them mid-line
while a message arrives), meet errors; alice's phone (a second device, driven through
imclient) writes and reads, which her terminal shows as hers, until she removes the phone
with /devices remove; alice quits while bob writes to her, comes back to "3 new messages
from bob" and then the messages, and again to nothing (they were acknowledged); a group;
a longer absence than the server's --device-backlog-cap, shown as a gap that /history
fills; the server restarts while alice has a line to send, which arrives once; the phone
removes alice's terminal, which says so and logs in again as a new device.

Waits poll the screen until the text appears, with a timeout; nothing sleeps for an event.
Prints one line per step and `N passed, N failed` last; exits 1 if a step failed. Steps
build on each other, so the first failure skips the rest. `--screens DIR` saves the final
screens of both clients there. The tmux server and im-server are stopped at the end.
"""

import argparse
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from imclient import Client, Device, Op  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMCHAT = os.path.join(REPO, "scripts", "imchat.py")
MIN_KDF_ITERATIONS = 1000
CLIENT_KDF_ITERATIONS = 4096
WAIT_TIMEOUT = 15.0
STARTUP_TIMEOUT = 20.0
POLL_INTERVAL = 0.05
PASSWORDS = {"alice": "correct horse alice", "bob": "battery staple bob"}
# Small, so that a short absence is already a long one (SYNC_GAP); above every other
# absence of the scenario.
DEVICE_BACKLOG_CAP = 6
NO_SUCH_DEVICE = 32


class CheckFailed(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------

class Server:
    """im-server on one database; `restart` brings it back on the same port."""

    def __init__(self, workdir):
        self.binary = (os.environ.get("IM_SERVER_BIN")
                       or os.path.join(REPO, "target", "debug", "im-server"))
        self.db = os.path.join(workdir, "x.db")
        self.log_path = os.path.join(workdir, "server.log")
        self.process = None
        self.address = None

    def start(self, listen="127.0.0.1:0"):
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [self.binary, "--listen", listen, "--db", self.db,
             "--min-kdf-iterations", str(MIN_KDF_ITERATIONS),
             "--device-backlog-cap", str(DEVICE_BACKLOG_CAP)],
            stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        line = b""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not line.endswith(b"\n"):
            ready, _, _ = select.select([self.process.stdout], [], [],
                                        max(deadline - time.monotonic(), 0))
            if not ready:
                self.stop()
                raise RuntimeError("the server printed no 'listening on' line in time")
            chunk = os.read(self.process.stdout.fileno(), 1)
            if not chunk:
                raise RuntimeError("the server exited (status %s) before listening; see %s"
                                   % (self.process.wait(), self.log_path))
            line += chunk
        text = line.decode().strip()
        if not text.startswith("listening on "):
            self.stop()
            raise RuntimeError("unexpected first line %r" % text)
        threading.Thread(target=self.process.stdout.read, daemon=True).start()
        self.address = text[len("listening on "):]

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def restart(self):
        self.stop()
        self.start(self.address)


# ---------------------------------------------------------------------------------------------
# Terminals
# ---------------------------------------------------------------------------------------------

class Tmux:
    """A tmux server of this test's own (its own socket), so nothing else is touched."""

    def __init__(self):
        self.socket = "imchat-test-%d" % os.getpid()

    def run(self, *args, check=True):
        result = subprocess.run(["tmux", "-L", self.socket] + list(args),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if check and result.returncode != 0:
            raise CheckFailed("tmux %s: %s" % (" ".join(args[:2]), result.stderr.strip()))
        return result.stdout

    def kill(self):
        self.run("kill-server", check=False)


class Screen:
    """One person's terminal: a shell in a tmux session, where imchat is started."""

    def __init__(self, tmux, name, workdir):
        self.tmux = tmux
        self.name = name
        self.target = "=%s:" % name
        rcfile = os.path.join(workdir, "bashrc")
        with open(rcfile, "w") as handle:
            handle.write("PS1='$ '\n")
        tmux.run("new-session", "-d", "-s", name, "-x", "120", "-y", "40", "-c", REPO,
                 "env LANG=C.UTF-8 TERM=screen bash --noprofile --rcfile %s -i" % rcfile)
        tmux.run("set-option", "-t", self.target, "history-limit", "5000")
        # The rcfile sets the prompt, but CI once showed a shell with the system's prompt
        # ("root@vm:/tmp/cc#") instead: set it again by hand, so every wait for "$" holds.
        self.type("PS1='$ '")
        self.clear()

    def type(self, text, enter=True):
        if text:
            self.tmux.run("send-keys", "-t", self.target, "-l", text)
        if enter:
            self.tmux.run("send-keys", "-t", self.target, "Enter")

    def key(self, *keys):
        self.tmux.run("send-keys", "-t", self.target, *keys)

    def text(self):
        """Everything the terminal shows and has scrolled off, trailing blank lines cut."""
        return self.tmux.run("capture-pane", "-p", "-J", "-t", self.target,
                             "-S", "-", "-E", "-").rstrip("\n")

    def input_line(self):
        """The bottom non-empty line of the visible screen: where the person types."""
        lines = [line for line in self.tmux.run("capture-pane", "-p", "-t",
                                                self.target).split("\n") if line.strip()]
        return lines[-1] if lines else ""

    def clear(self):
        self.type("printf '\\033[H\\033[2J'")

        # tmux moves a cleared screen into the history, and the shell may not have run the
        # printf yet (the prompt already showing "$" may be the one before it, when the host
        # is busy): so clear the history on every look until only the new prompt is left.
        def cleared():
            self.tmux.run("clear-history", "-t", self.target)
            return self.text().strip() == "$"
        self.wait_for(cleared, "a cleared screen")

    def wait_for(self, predicate, what, timeout=WAIT_TIMEOUT):
        deadline = time.monotonic() + timeout
        while True:
            if predicate():
                return
            if time.monotonic() > deadline:
                raise CheckFailed("%s's screen never showed %s; it shows:\n%s"
                                  % (self.name, what, indent(self.text())))
            time.sleep(POLL_INTERVAL)

    def wait_text(self, *texts, timeout=WAIT_TIMEOUT):
        """Wait until every one of `texts` is on the screen; returns the screen."""
        self.wait_for(lambda: all(text in self.text() for text in texts),
                      " and ".join(repr(text) for text in texts), timeout)
        return self.text()

    def wait_input(self, expected):
        """Wait for the input line to end with `expected` (capture-pane drops trailing
        spaces, so they are not compared)."""
        expected = expected.rstrip()
        self.wait_for(lambda: self.input_line().rstrip().endswith(expected),
                      "an input line ending in %r" % expected)


def indent(text):
    return "\n".join("    | " + line for line in text.split("\n"))


def check(condition, message):
    if not condition:
        raise CheckFailed(message)


# ---------------------------------------------------------------------------------------------
# The scenario
# ---------------------------------------------------------------------------------------------

class Scenario:
    def __init__(self, tmux, server, workdir):
        self.tmux = tmux
        self.server = server
        self.workdir = workdir
        self.alice = None
        self.bob = None
        self.phone_device = Device.new("alice's phone")

    def device_file(self, screen):
        return os.path.join(self.workdir, screen.name + "-device.json")

    def launch(self, screen):
        screen.wait_text("$")
        screen.type("IMCHAT_KDF_ITERATIONS=%d %s %s --addr %s --device-file %s" % (
            CLIENT_KDF_ITERATIONS, sys.executable, IMCHAT, self.server.address,
            self.device_file(screen)))
        screen.wait_text("Log in or register?")

    def register(self, screen):
        self.launch(screen)
        screen.type("r")
        screen.wait_text("Choose a name")
        screen.type(screen.name)
        screen.wait_text("Choose a password:")
        screen.type(PASSWORDS[screen.name])
        screen.wait_text("Type it again:")
        screen.type(PASSWORDS[screen.name])
        text = screen.wait_text("deriving key\u2026", "Registered %s." % screen.name,
                                "No new messages.")
        check(PASSWORDS[screen.name] not in text, "the password was echoed")
        check(text.count("deriving key") == 1, "the key was derived more than once")

    def log_in(self, screen):
        self.launch(screen)
        self.answer_login(screen)

    def answer_login(self, screen):
        """At "Log in or register?": log in with the name and password. Each answer waits for
        a prompt that is new on the screen: an earlier login's "Name:" is still in the
        scrollback, and typing ahead of the prompt would echo the password."""
        names, passwords = screen.text().count("Name:"), screen.text().count("Password:")
        screen.type("l")
        self.wait_count(screen, "Name:", names + 1)
        screen.type(screen.name)
        self.wait_count(screen, "Password:", passwords + 1)
        screen.type(PASSWORDS[screen.name])
        text = screen.wait_text("deriving key\u2026", "Hello %s!" % screen.name)
        check(PASSWORDS[screen.name] not in text, "the password was echoed")

    def quit(self, screen):
        screen.type("/quit")
        screen.wait_text("Bye.")
        screen.wait_input("$")

    def phone_login(self):
        """alice's phone, a second device of hers, through imclient."""
        host, _, port = self.server.address.rpartition(":")
        phone = Client(timeout=WAIT_TIMEOUT).connect(host, int(port))
        phone.hello()
        phone.login("alice", PASSWORDS["alice"], device=self.phone_device)
        phone.wait_sync(WAIT_TIMEOUT)
        return phone

    def wait_count(self, screen, text, count):
        screen.wait_for(lambda: screen.text().count(text) >= count,
                        "%r %d times" % (text, count))

    # -- steps ------------------------------------------------------------------------------

    def step_register_both(self):
        self.alice = Screen(self.tmux, "alice", self.workdir)
        self.bob = Screen(self.tmux, "bob", self.workdir)
        self.register(self.alice)
        self.register(self.bob)

    def step_devices_listed(self):
        for screen in (self.alice, self.bob):
            screen.type("/devices")
            text = screen.wait_text("Your devices, most recently seen first:", "this device")
            listed = text.rsplit("Your devices", 1)[-1]
            check(listed.count("imchat on ") == 1, "one device listed:\n" + indent(listed))

    def step_friend_request_with_tab_completion(self):
        self.alice.type("/add bob")
        self.alice.wait_text("Friend request sent to bob.")
        self.bob.wait_text("alice wants to be your friend")
        self.bob.type("/acc", enter=False)
        self.bob.key("Tab")
        self.bob.wait_input("> /accept ")
        self.bob.type("al", enter=False)
        self.bob.key("Tab")
        self.bob.wait_input("> /accept alice ")
        self.bob.key("Enter")
        self.bob.wait_text("You and alice are now friends (alice is online)")
        self.alice.wait_text("bob accepted your friend request")

    def step_chat_both_ways(self):
        self.alice.type("/msg bob Hi bob, it works!")
        self.bob.wait_text("@alice alice: Hi bob, it works!")
        self.bob.type("/open alice")
        self.bob.wait_input("@alice> ")
        self.bob.type("Hello alice \u00e9\u00e8 \U0001F600")
        self.alice.wait_text("@bob bob: Hello alice \u00e9\u00e8 \U0001F600")

    def step_typing_is_not_broken_by_arrivals(self):
        self.alice.type("/open bob")
        self.alice.wait_input("@bob> ")
        self.alice.type("half a li", enter=False)
        self.alice.wait_input("@bob> half a li")
        self.bob.type("a message while alice types")
        self.alice.wait_text("@bob bob: a message while alice types")
        self.alice.wait_input("@bob> half a li")
        self.alice.type("ne")
        self.bob.wait_text("@alice alice: half a line")
        self.alice.wait_input("@bob> ")

    def step_errors_are_sentences(self):
        self.alice.type("/add nobody_here")
        self.alice.wait_text("There is no user called nobody_here.")
        self.alice.type("/msg stranger hello?")
        self.alice.wait_text("You and stranger are not friends; ask first with /add stranger.")
        self.alice.type("/remove stranger")
        self.alice.wait_for(lambda: self.alice.text().count(
            "You and stranger are not friends") == 2, "the server's NOT_FRIENDS as a sentence")
        self.alice.type("/accept bob")
        self.alice.wait_text("bob has not asked to be your friend")
        self.alice.type("/frobnicate")
        text = self.alice.wait_text("There is no command /frobnicate")
        for word in ("USER_NOT_FOUND", "NOT_FRIENDS", "NO_SUCH_REQUEST", "Traceback",
                     "Error:", "(15)", "(19)"):
            check(word not in text, "alice's screen shows %r:\n%s" % (word, indent(text)))

    def step_friends_and_help(self):
        self.alice.type("/friends")
        self.alice.wait_for(lambda: any(line.split() == ["bob", "online"]
                                        for line in self.alice.text().split("\n")),
                            "bob online in /friends")
        self.alice.type("/help")
        self.alice.wait_text("/group invite GROUP NAME", "/history [N]")

    def step_another_device(self):
        phone = self.phone_login()
        try:
            phone.send("bob", "sent from alice's phone")
            self.alice.wait_text("@bob alice: sent from alice's phone")
            self.bob.wait_text("@alice alice: sent from alice's phone")
            self.bob.type("/msg alice a reply for the phone")
            reply = phone.wait_push(Op.DELIVER, lambda f: f["body"] == "a reply for the phone",
                                    timeout=WAIT_TIMEOUT)
            phone.read("bob", reply["message_id"])
            self.alice.wait_text("You read this conversation on another device.")
            self.bob.wait_text("alice has read your messages.")
            self.alice.type("/devices")
            self.alice.wait_for(lambda: "alice's phone" in self.alice.text().rsplit(
                "Your devices", 1)[-1], "the phone in /devices")
            self.alice.type("/devices remove %s" % str(self.phone_device.device_id)[:8])
            self.alice.wait_text("Removed the device alice's phone")
            codes = [f["code"] for f in phone.wait_closed(WAIT_TIMEOUT) if f.opcode == Op.ERROR]
            check(codes == [NO_SUCH_DEVICE], "the phone was closed with %r" % codes)
            self.alice.type("/devices remove %s" % self.alice_device_id())
            self.alice.wait_text("That is this device; /logout instead")
        finally:
            phone.close()

    def alice_device_id(self):
        with open(self.device_file(self.alice), encoding="utf-8") as handle:
            return json.load(handle)["device_id"]

    def step_offline_messages_shown_then_acknowledged(self):
        self.quit(self.alice)
        self.bob.wait_text("alice is offline.")
        for text in ("first while you were away", "second while you were away"):
            self.bob.type(text)
        self.bob.type("/msg alice third while you were away")
        # HISTORY answers from the database: once it lists all three, they are stored.
        self.bob.type("/history 3")
        self.bob.wait_text("--- the last 3 messages in @alice ---")
        self.bob.wait_for(lambda: self.bob.text().rsplit("--- the last 3", 1)[-1].count(
            "while you were away") == 3, "the three messages in /history")
        self.alice.clear()
        self.log_in(self.alice)
        text = self.alice.wait_text("3 new messages from bob", "third while you were away")
        summary = text.index("3 new messages from bob")
        positions = [text.index("bob: %s while you were away" % word)
                     for word in ("first", "second", "third")]
        check(summary < positions[0] < positions[1] < positions[2],
              "the messages are not shown after the summary, in order:\n" + indent(text))
        self.bob.wait_text("alice is online.")
        # They were acknowledged once shown: the next login has nothing new.
        self.quit(self.alice)
        self.alice.clear()
        self.log_in(self.alice)
        text = self.alice.wait_text("No new messages.")
        check("while you were away" not in text, "old messages came again:\n" + indent(text))

    def step_group_chat(self):
        self.alice.type("/group create team")
        self.alice.wait_text("Created #team.")
        self.alice.type("/group invite team bob")
        self.alice.wait_text("You added bob to #team.")
        self.bob.wait_text("You are now a member of #team")
        self.bob.type("/g team hello team")
        self.alice.wait_text("#team bob: hello team")
        self.alice.type("/group members team")
        self.alice.wait_text("#team has 2 members:")

    def step_long_absence_is_a_gap(self):
        self.quit(self.alice)
        for i in range(DEVICE_BACKLOG_CAP + 4):
            self.bob.type("/msg alice long absence %d" % i)
        self.bob.type("/history %d" % (DEVICE_BACKLOG_CAP + 4))
        header = "--- the last %d messages in @alice ---" % (DEVICE_BACKLOG_CAP + 4)
        self.bob.wait_text(header)
        self.bob.wait_for(lambda: self.bob.text().rsplit(header, 1)[-1].count(
            "long absence") == DEVICE_BACKLOG_CAP + 4, "every message in /history")
        self.alice.clear()
        self.log_in(self.alice)
        last = "bob: long absence %d" % (DEVICE_BACKLOG_CAP + 3)
        text = self.alice.wait_text("You were away a long time", "/history [N]", last)
        check("long absence 0" not in text, "the oldest was pushed despite the gap:\n"
              + indent(text))
        check(text.index("You were away a long time") < text.index(last),
              "the gap is not told first:\n" + indent(text))
        self.alice.type("/open bob")
        self.alice.type("/history %d" % (DEVICE_BACKLOG_CAP + 4))
        self.alice.wait_text(header.replace("@alice", "@bob"), "bob: long absence 0")

    def step_reconnect_resends_once(self):
        self.alice.type("/open bob")
        self.alice.wait_input("@bob> ")
        self.server.stop()
        self.alice.wait_text("Lost the connection to the server (the server is shutting down)")
        self.bob.wait_text("Lost the connection to the server")
        self.alice.type("sent while the server was down")
        self.alice.wait_text("this will be sent once the connection is back")
        self.server.restart()
        self.alice.wait_text("Reconnected.")
        self.bob.wait_text("Reconnected.")
        self.bob.wait_text("alice: sent while the server was down")
        # A further message proves the queue drained; then nothing is doubled.
        self.alice.type("and one after")
        self.bob.wait_text("alice: and one after")
        count = self.bob.text().count("alice: sent while the server was down")
        check(count == 1, "bob saw the resent message %d times" % count)
        self.alice.type("/history 3")
        text = self.alice.wait_text("--- the last 3 messages in @bob ---")
        tail = text.rsplit("--- the last 3 messages", 1)[-1]
        check(tail.count("sent while the server was down") == 1,
              "the server stored the resent message twice:\n" + indent(tail))

    def step_removed_on_another_device(self):
        phone = self.phone_login()  # a new device now: its old id was removed
        try:
            phone.device_remove(self.alice_device_id())
        finally:
            phone.close()
        self.alice.wait_text("This device was removed from your account on another device")
        self.alice.type("/logout")
        self.alice.wait_text("Logged out.", "Log in or register?")
        self.answer_login(self.alice)
        self.wait_count(self.alice, "Hello alice!", 2)

    def step_password_change(self):
        phone = self.phone_login()
        new = "a new horse for alice"
        self.alice.type("/password")
        self.alice.wait_text("Current password:")
        self.alice.type(PASSWORDS["alice"])
        self.alice.wait_text("New password:")
        self.alice.type(new)
        self.alice.wait_text("New password again:")
        self.alice.type(new)
        text = self.alice.wait_text("Password changed.")
        check(new not in text and PASSWORDS["alice"] not in text, "a password was echoed")
        try:
            frames = phone.wait_closed(WAIT_TIMEOUT)
        finally:
            phone.close()
        errors = [f["code"] for f in frames if f.opcode == Op.ERROR]
        check(errors == [40], "the phone was not told CREDENTIALS_CHANGED: %r" % frames)
        PASSWORDS["alice"] = new
        self.phone_login().close()

    def step_logout(self):
        self.bob.type("/logout")
        self.bob.wait_text("Logged out.", "Log in or register?")
        self.alice.wait_text("bob is offline.")
        self.bob.type("q")
        self.bob.wait_text("Bye.")

    STEPS = [
        ("both register", "step_register_both"),
        ("/devices lists this device", "step_devices_listed"),
        ("friend request, accepted with Tab completion",
         "step_friend_request_with_tab_completion"),
        ("chat both ways", "step_chat_both_ways"),
        ("a message arrives above a half-typed line", "step_typing_is_not_broken_by_arrivals"),
        ("errors are sentences", "step_errors_are_sentences"),
        ("/friends and /help", "step_friends_and_help"),
        ("another device: its messages and reads shown as mine; /devices remove",
         "step_another_device"),
        ("offline messages: N new messages, then acknowledged",
         "step_offline_messages_shown_then_acknowledged"),
        ("group chat", "step_group_chat"),
        ("a long absence: the gap is told, /history reads it", "step_long_absence_is_a_gap"),
        ("server restart: reconnect, resend once", "step_reconnect_resends_once"),
        ("removed on another device: told, and logs in again as new",
         "step_removed_on_another_device"),
        ("/password: the other devices are logged out, the new one logs in",
         "step_password_change"),
        ("logout", "step_logout"),
    ]


def run_steps(scenario):
    passed = failed = 0
    broken = False
    for label, method in Scenario.STEPS:
        if broken:
            print("skip  %s" % label, flush=True)
            continue
        started = time.monotonic()
        try:
            getattr(scenario, method)()
        except Exception as error:  # A failure is reported, then the later steps skipped.
            failed += 1
            broken = True
            print("FAIL  %s -- %s: %s" % (label, type(error).__name__, error), flush=True)
            for screen in (scenario.alice, scenario.bob):
                if screen is not None and not isinstance(error, CheckFailed):
                    print("  %s's screen:\n%s" % (screen.name, indent(screen.text())))
        else:
            passed += 1
            print("ok    %s (%.2fs)" % (label, time.monotonic() - started), flush=True)
    return passed, failed


def save_screens(scenario, directory):
    os.makedirs(directory, exist_ok=True)
    for screen in (scenario.alice, scenario.bob):
        if screen is not None:
            with open(os.path.join(directory, screen.name + ".txt"), "w") as handle:
                handle.write(screen.text() + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-build", action="store_true",
                        help="use the server binary as it is, without cargo build")
    parser.add_argument("--screens", metavar="DIR", help="save both final screens in DIR")
    args = parser.parse_args()
    if shutil.which("tmux") is None:
        print("FAIL  tmux is not installed; this test drives real terminals with it")
        print("0 passed, 1 failed")
        return 1
    if not args.no_build:
        try:
            subprocess.run(["cargo", "build", "--quiet"], cwd=REPO, check=True,
                           stdout=sys.stderr, stderr=sys.stderr)
        except (OSError, subprocess.CalledProcessError) as error:
            print("FAIL  build: %s" % error)
            print("0 passed, 1 failed")
            return 1
    tmux = Tmux()
    with tempfile.TemporaryDirectory(prefix="imchat-test-") as workdir:
        server = Server(workdir)
        try:
            server.start()
        except (OSError, RuntimeError) as error:
            print("FAIL  server start: %s" % error)
            print("0 passed, 1 failed")
            return 1
        scenario = Scenario(tmux, server, workdir)
        try:
            passed, failed = run_steps(scenario)
            if args.screens:
                save_screens(scenario, args.screens)
        finally:
            tmux.kill()
            server.stop()
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
