#!/usr/bin/env python3
"""Browser test of the web client (src/web/): two real headless Chromiums chatting.

Builds the server (`cargo build`; `--no-build` skips it; `--server BINARY` or `IM_SERVER_BIN`
names a binary built elsewhere), starts it with `--http-listen 127.0.0.1:0` and a database in
a temporary directory, starts chromedriver and opens two Chromium sessions, alice and bob,
each with a profile of its own, on the page the server serves. The browsers are driven through
chromedriver's W3C WebDriver HTTP API with urllib: nothing to install beyond Debian's
`chromium` and `chromium-driver`.

The scenario: every file of src/web served as it is; the page's codec and SCRAM checked
inside the browser against Python's; both register (alice ticks "remember me", bob does not);
a friend request accepted, another declined; chat both ways, each sent message going
sending -> sent -> read; bob closes his page while alice writes, comes back to the login form
(no "remember me"), logs in and finds the messages counted unread; a group created, a friend
invited, messages both ways; alice's reload keeps her session; a long absence (SYNC_GAP) read
from HISTORY; a long conversation read back page by page; alice's devices listed and her
phone removed (its connection told NO_SUCH_DEVICE and closed); the server restarted while
alice has a message to send, which arrives once after the page reconnects; alice removes bob
as a friend (bob's page is told) and they become friends again; alice changes her password
(a wrong one refused, her phone logged out, a reload logs in with the new keys); bob logs out
and a reload shows the login form; a third browser uses the TLS listener (https page, wss socket,
a certificate from scripts/make-cert.sh; skipped without openssl); bob deletes his account
from the page and alice's list loses him; no errors in any console.
Screenshots of both browsers at desktop and at phone width go to `--screenshots DIR`
(default target/web-screenshots).

Waits poll the page until the condition holds, with a timeout; nothing sleeps for an event.
Prints one line per step and `N passed, N failed` last; exits 1 if a step failed. Steps
build on each other, so the first failure skips the rest (the browsers' console is printed).
"""

import argparse
import base64
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import imclient  # noqa: E402
from imclient import Client, Device  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WEB_FILES = os.path.join(REPO, "src", "web")
MIN_KDF_ITERATIONS = 1000
WAIT_TIMEOUT = 20.0
STARTUP_TIMEOUT = 20.0
POLL_INTERVAL = 0.1
DESKTOP = (1280, 800)
PHONE = (390, 844)
PASSWORDS = {"alice": "correct horse alice", "bob": "battery staple bob", "carol": "carol's secret"}
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"
SCROLLBACK_MESSAGES = 90
# Small, so that a short absence is already a long one (SYNC_GAP): above every other absence
# of the scenario, below GAP_MESSAGES.
DEVICE_BACKLOG_CAP = 40
GAP_MESSAGES = 50


class CheckFailed(Exception):
    pass


def check(condition, message):
    if not condition:
        raise CheckFailed(message)


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------

class Server:
    """im-server with its TCP and HTTP listeners; `restart` keeps both addresses."""

    def __init__(self, binary, workdir):
        self.binary = binary
        self.db = os.path.join(workdir, "web.db")
        self.log_path = os.path.join(workdir, "server.log")
        self.process = None
        self.address = None
        self.http = None
        self.tls = None
        # A self-signed certificate for the TLS listener (https and wss), when openssl is here.
        self.cert_dir = os.path.join(workdir, "certs")
        if shutil.which("openssl"):
            subprocess.run([os.path.join(REPO, "scripts", "make-cert.sh"), self.cert_dir,
                            "127.0.0.1"], check=True, stdout=subprocess.DEVNULL)
        else:
            self.cert_dir = None

    def start(self, listen="127.0.0.1:0", http="127.0.0.1:0", tls="127.0.0.1:0"):
        flags = ["--listen", listen, "--http-listen", http, "--db", self.db,
                 "--min-kdf-iterations", str(MIN_KDF_ITERATIONS),
                 "--device-backlog-cap", str(DEVICE_BACKLOG_CAP)]
        if self.cert_dir:
            flags += ["--tls-listen", tls, "--tls-cert", os.path.join(self.cert_dir, "cert.pem"),
                      "--tls-key", os.path.join(self.cert_dir, "key.pem")]
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen([self.binary] + flags, stdout=subprocess.PIPE,
                                        stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        prefixes = ["listening on", "listening for HTTP on"]
        if self.cert_dir:
            prefixes.append("listening for TLS on")
        lines = {}
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while len(lines) < len(prefixes):
            text = self._read_line(deadline)
            for prefix in prefixes:
                if text.startswith(prefix + " "):
                    lines[prefix] = text[len(prefix) + 1:]
        threading.Thread(target=self.process.stdout.read, daemon=True).start()
        self.address = lines["listening on"]
        self.http = lines["listening for HTTP on"]
        self.tls = lines.get("listening for TLS on")

    def _read_line(self, deadline):
        line = b""
        while not line.endswith(b"\n"):
            ready, _, _ = select.select([self.process.stdout], [], [],
                                        max(deadline - time.monotonic(), 0))
            if not ready:
                self.stop()
                raise RuntimeError("the server did not say where it listens in time")
            chunk = os.read(self.process.stdout.fileno(), 1)
            if not chunk:
                raise RuntimeError("the server exited (status %s) before listening; see %s"
                                   % (self.process.wait(), self.log_path))
            line += chunk
        return line.decode().strip()

    @property
    def url(self):
        return "http://%s/" % self.http

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
        self.start(self.address, self.http, self.tls or "127.0.0.1:0")

    def client(self):
        host, port = self.address.rsplit(":", 1)
        client = Client()
        client.connect(host, int(port))
        client.hello()
        return client


# ---------------------------------------------------------------------------------------------
# WebDriver
# ---------------------------------------------------------------------------------------------

class WebDriverError(Exception):
    pass


class ChromeDriver:
    """A chromedriver process of this test's own, on a free loopback port."""

    def __init__(self, chromedriver, workdir):
        self.port = free_port()
        self.log = open(os.path.join(workdir, "chromedriver.log"), "ab")
        self.process = subprocess.Popen(
            [chromedriver, "--port=%d" % self.port, "--allowed-ips=127.0.0.1"],
            stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL)
        self.base = "http://127.0.0.1:%d" % self.port
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            try:
                if self.call("GET", "/status").get("ready"):
                    break
            except (OSError, WebDriverError):
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("chromedriver did not start")
            time.sleep(POLL_INTERVAL)

    def call(self, method, path, body=None, timeout=60):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                answer = json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as error:
            answer = json.loads(error.read() or b"{}")
            value = answer.get("value") or {}
            raise WebDriverError("%s %s: %s: %s" % (method, path, value.get("error"),
                                                     (value.get("message") or "")[:300]))
        return answer.get("value")

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


class Browser:
    """One headless Chromium (a WebDriver session with a profile of its own)."""

    def __init__(self, driver, name, chromium, workdir, accept_insecure_certs=False):
        self.driver = driver
        self.name = name
        profile = os.path.join(workdir, "profile-" + name)
        options = {
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                     "--password-store=basic", "--user-data-dir=" + profile,
                     "--window-size=%d,%d" % DESKTOP, "--lang=en-US"],
        }
        if chromium:
            options["binary"] = chromium
        value = driver.call("POST", "/session", {"capabilities": {"alwaysMatch": {
            "browserName": "chrome", "goog:chromeOptions": options,
            "goog:loggingPrefs": {"browser": "ALL"}, "pageLoadStrategy": "normal",
            "acceptInsecureCerts": accept_insecure_certs}}})
        self.session = value["sessionId"]
        self.size = DESKTOP
        self.resize(*DESKTOP)

    def call(self, method, path, body=None):
        return self.driver.call(method, "/session/%s%s" % (self.session, path), body)

    def open(self, url):
        self.call("POST", "/url", {"url": url})

    def refresh(self):
        self.call("POST", "/refresh", {})

    def run(self, script, *args):
        """Runs `script` (a function body) in the page and returns what it returns."""
        return self.call("POST", "/execute/sync", {"script": script, "args": list(args)})

    def run_async(self, script, *args):
        """Runs `script`, which calls `arguments[arguments.length - 1]` with its result."""
        return self.call("POST", "/execute/async", {"script": script, "args": list(args)})

    def element(self, selector):
        found = self.call("POST", "/element", {"using": "css selector", "value": selector})
        return found[ELEMENT]

    def click(self, selector):
        self.wait_for(selector)
        self.call("POST", "/element/%s/click" % self.element(selector), {})

    def type(self, selector, text):
        self.wait_for(selector)
        element = self.element(selector)
        self.call("POST", "/element/%s/clear" % element, {})
        self.call("POST", "/element/%s/value" % element, {"text": text})

    def select(self, selector, value):
        self.wait_for(selector)
        option = self.element("%s option[value=%s]" % (selector, json.dumps(value)))
        self.call("POST", "/element/%s/click" % option, {})

    def wait(self, script, what, *args, timeout=WAIT_TIMEOUT):
        """Polls `script` until it returns something true; returns that."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.run(script, *args)
            if value:
                return value
            if time.monotonic() > deadline:
                raise CheckFailed("%s: timed out waiting for %s" % (self.name, what))
            time.sleep(POLL_INTERVAL)

    def wait_for(self, selector, timeout=WAIT_TIMEOUT):
        """Waits until an element matching `selector` is shown."""
        self.wait("const e = document.querySelector(arguments[0]);"
                  "return !!e && e.getClientRects().length > 0;",
                  "%s to be shown" % selector, selector, timeout=timeout)

    def text(self, selector):
        return self.run("const e = document.querySelector(arguments[0]);"
                        "return e ? e.textContent : null;", selector)

    def wait_text(self, selector, expected, timeout=WAIT_TIMEOUT):
        self.wait("const e = document.querySelector(arguments[0]);"
                  "return !!e && e.textContent.trim() === arguments[1] && e.getClientRects().length > 0;",
                  "%s to read %r (it reads %r)" % (selector, expected, self.text(selector)),
                  selector, expected, timeout=timeout)

    def messages(self):
        """The open conversation's messages: [{body, from, mine, state, id}]."""
        return self.run("""
            return [...document.querySelectorAll('[data-test=message]')].map((m) => ({
              body: m.querySelector('.body').textContent, from: m.dataset.from,
              mine: m.dataset.mine === '1', state: m.dataset.state || null,
              id: m.dataset.id || null}));""")

    def wait_message(self, body, state=None, timeout=WAIT_TIMEOUT):
        """Waits until the open conversation shows `body` (in `state`, for one's own; a tuple
        of states accepts any of them)."""
        states = None if state is None else list(state) if isinstance(state, tuple) else [state]
        script = """
            return [...document.querySelectorAll('[data-test=message]')].some((m) =>
              m.querySelector('.body').textContent === arguments[0]
              && (arguments[1] === null || arguments[1].includes(m.dataset.state)));"""
        try:
            self.wait(script, "message %r%s" % (body, " (%s)" % "/".join(states) if states else ""),
                      body, states, timeout=timeout)
        except CheckFailed as error:
            raise CheckFailed("%s; the conversation shows %s" % (error, self.messages()))

    def resize(self, width, height):
        """Makes the page's viewport `width` x `height` (the window is larger by its frame)."""
        self.call("POST", "/window/rect", {"width": width, "height": height})
        inner = self.run("return [window.innerWidth, window.innerHeight];")
        if inner != [width, height]:
            self.call("POST", "/window/rect", {"width": 2 * width - inner[0],
                                               "height": 2 * height - inner[1]})
        self.size = (width, height)

    def screenshot(self, path):
        data = self.call("GET", "/screenshot")
        with open(path, "wb") as handle:
            handle.write(base64.b64decode(data))

    def console(self):
        try:
            entries = self.call("POST", "/se/log", {"type": "browser"}) or []
        except WebDriverError:
            return []
        return ["%s %s" % (entry.get("level"), entry.get("message")) for entry in entries]

    def close(self):
        try:
            self.call("DELETE", "")
        except (OSError, WebDriverError):
            pass


# ---------------------------------------------------------------------------------------------
# The scenario
# ---------------------------------------------------------------------------------------------

# Runs inside the page: the codec against PROTOCOL.md section 7's bytes, and SCRAM against
# RFC 7677's example and the AuthMessage Python computes. Returns a list of failures.
IN_PAGE_CHECKS = r"""
const done = arguments[arguments.length - 1];
const expected = arguments[0];
(async () => {
  const p = await import('/protocol.js');
  const s = await import('/scram.js');
  const hex = (bytes) => [...bytes].map((b) => b.toString(16).padStart(2, '0')).join('');
  const unhex = (text) => Uint8Array.from(text.match(/../g) || [], (h) => parseInt(h, 16));
  const failures = [];
  const same = (what, got, want) => { if (got !== want) failures.push(`${what}: got ${got}, want ${want}`); };
  same('HELLO', hex(p.encodeFrame(p.Op.HELLO, 1, { version: 2 })), '00000007010000000100' + '02');
  same('SEND', hex(p.encodeFrame(p.Op.SEND, 9, { to: 'bob', client_msg_id: 7n, body: 'hi' })),
    '0000001620000000090003626f62000000000000000700026869');
  const deliver = p.decodeFrame(unhex(expected.deliver));
  same('DELIVER from', deliver.fields.from, 'alice');
  same('DELIVER id', deliver.fields.message_id, 42n);
  same('DELIVER to', deliver.fields.to, 'bob');
  same('DELIVER body', deliver.fields.body, 'hi');
  for (const [what, bytes] of [['short', '000000058000'], ['trailing', '000000068000000001ff'],
    ['bad utf-8', '00000009c20000000000' + '01ff01']]) {
    try { p.decodeFrame(unhex(bytes)); failures.push(`${what} frame decoded`); } catch (e) {
      if (!(e instanceof p.ProtocolError)) failures.push(`${what}: ${e}`);
    }
  }
  const keys = await s.deriveKeys('pencil', s.fromBase64('W22ZaJ0SNY7soEsUEjb6gQ=='), 4096);
  const rfc = new TextEncoder().encode(expected.rfcAuthMessage);
  same('RFC 7677 proof', s.toBase64(await s.clientProof(keys, rfc)), 'dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=');
  same('RFC 7677 signature', s.toBase64(await s.serverSignature(keys, rfc)), '6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=');
  const a = expected.authMessage;
  same('AuthMessage', hex(s.authMessage(a.username, unhex(a.clientNonce), unhex(a.salt), a.iterations, unhex(a.nonce))), a.hex);
  const ours = await s.deriveKeys(expected.password, unhex(a.salt), a.iterations);
  same('StoredKey', hex(ours.storedKey), expected.storedKey);
  same('ServerKey', hex(ours.serverKey), expected.serverKey);
  same('registration iterations', s.registrationIterations(1000), 600000);
  same('registration iterations above the default', s.registrationIterations(700000), 700000);
  return failures;
})().then(done, (error) => done([`threw ${error}`]));
"""


class Scenario:
    def __init__(self, server, driver, chromium, workdir, screenshots):
        self.server = server
        self.driver = driver
        self.chromium = chromium
        self.workdir = workdir
        self.screenshots = screenshots
        self.alice = None
        self.bob = None
        self.bob_phone_device = Device.new("bob's phone (test)")
        self.alice_phone_device = Device.new("alice's phone (test)")

    def start_browsers(self):
        self.alice = Browser(self.driver, "alice", self.chromium, self.workdir)
        self.bob = Browser(self.driver, "bob", self.chromium, self.workdir)
        for browser in (self.alice, self.bob):
            browser.open(self.server.url)

    # -- helpers --------------------------------------------------------------------------------

    def login_form(self, browser, name, remember, button="login"):
        browser.wait_for("[data-test=login-form]")
        browser.type("[data-test=username]", name)
        browser.type("[data-test=password]", PASSWORDS[name])
        ticked = browser.run("return document.querySelector('[data-test=remember]').checked;")
        if ticked != remember:
            browser.click("[data-test=remember]")
        browser.click("[data-test=%s]" % button)

    def wait_logged_in(self, browser, name):
        browser.wait_text("[data-test=me]", name, timeout=60)
        browser.wait("return document.querySelector('[data-test=connection]').dataset.state === 'online';",
                     "the connection to be online", timeout=60)

    def open_conversation(self, browser, selector):
        if browser.size[0] < 720:
            # One pane at a time: back to the list first when a conversation is shown.
            browser.run("const b = document.querySelector('[data-test=back]');"
                        "if (b && b.getClientRects().length) b.click();")
        browser.click(selector)
        browser.wait_for("[data-test=composer]")

    def send(self, browser, body):
        browser.type("[data-test=composer]", body)
        browser.click("[data-test=send]")

    def group_selector(self, name):
        return '[data-test^="conversation-group-"][data-name="%s"]' % name

    def online_state(self, browser, friend):
        return browser.run("const e = document.querySelector(arguments[0]);"
                           "return e ? e.dataset.online : null;",
                           "[data-test=conversation-%s]" % friend)

    def wait_online(self, browser, friend, online):
        browser.wait("const e = document.querySelector(arguments[0]);"
                     "return !!e && e.dataset.online === arguments[1];",
                     "%s shown %s" % (friend, "online" if online else "offline"),
                     "[data-test=conversation-%s]" % friend, "1" if online else "0")

    def shoot(self, browser, label):
        os.makedirs(self.screenshots, exist_ok=True)
        path = os.path.join(self.screenshots, "%s-%s.png" % (browser.name, label))
        browser.screenshot(path)
        return path

    # -- steps ----------------------------------------------------------------------------------

    def step_files_served(self):
        for name in sorted(os.listdir(WEB_FILES)):
            if name.startswith("."):
                continue
            with urllib.request.urlopen(self.server.url + name, timeout=10) as response:
                body = response.read()
                check(response.status == 200, "%s: status %d" % (name, response.status))
            with open(os.path.join(WEB_FILES, name), "rb") as handle:
                check(body == handle.read(), "%s is served other than it is in src/web" % name)
        with urllib.request.urlopen(self.server.url, timeout=10) as response:
            policy = response.headers.get("Content-Security-Policy") or ""
            check("script-src 'self'" in policy, "the page has no strict CSP: %r" % policy)

    def step_codec_and_scram_in_the_browser(self):
        self.start_browsers()
        self.alice.wait_for("[data-test=login-form]")
        salt = bytes(range(16))
        client_nonce = bytes(range(100, 124))
        nonce = client_nonce + bytes(range(200, 224))
        keys = imclient.derive_keys(PASSWORDS["alice"], salt, 1000)
        message = imclient.auth_message("alice", client_nonce, salt, 1000, nonce)
        expected = {
            "rfcAuthMessage": imclient.RFC7677_AUTH_MESSAGE.decode(),
            "authMessage": {"username": "alice", "clientNonce": client_nonce.hex(),
                            "salt": salt.hex(), "iterations": 1000, "nonce": nonce.hex(),
                            "hex": message.hex()},
            "password": PASSWORDS["alice"],
            # PROTOCOL.md section 7's DELIVER, as Python encodes it.
            "deliver": imclient.encode_message(
                imclient.Op.DELIVER, 0, message_id=42, timestamp_ms=1764108000000, **{"from": "alice"},
                kind=0, to="bob", body="hi").hex(),
            "storedKey": keys.stored_key.hex(),
            "serverKey": keys.server_key.hex(),
        }
        failures = self.alice.run_async(IN_PAGE_CHECKS, expected)
        check(failures == [], "in the browser: %s" % "; ".join(failures))

    def step_register_both(self):
        self.login_form(self.alice, "alice", remember=True, button="register")
        self.login_form(self.bob, "bob", remember=False, button="register")
        self.wait_logged_in(self.alice, "alice")
        self.wait_logged_in(self.bob, "bob")
        # Each browser is a device of its own, named after the browser.
        with self.server.client() as probe:
            probe.login("alice", PASSWORDS["alice"], device=Device.new("probe"))
            devices = probe.request(imclient.Op.DEVICE_LIST)["devices"]
        names = sorted(d["name"] for d in devices if not d["current"])
        check(names == ["Chrome on Linux"], "alice's devices: %s" % names)

    def step_befriend(self):
        self.alice.type("[data-test=friend-name]", "bob")
        self.alice.click("[data-test=friend-add]")
        self.alice.wait_for("[data-test=request-out-bob]")
        self.bob.click("[data-test=request-accept-alice]")
        self.wait_online(self.bob, "alice", True)
        self.wait_online(self.alice, "bob", True)
        self.alice.wait("return !document.querySelector('[data-test=request-out-bob]');",
                        "the outgoing request to go")

    def step_decline(self):
        # carol (imclient) asks alice, who declines in the page; carol is told.
        with self.server.client() as carol:
            carol.register("carol", PASSWORDS["carol"], iterations=MIN_KDF_ITERATIONS)
            carol.login("carol", PASSWORDS["carol"], device=Device.new("carol's terminal"))
            carol.wait_sync()
            carol.friend_request("alice")
            self.alice.click("[data-test=request-decline-carol]")
            self.alice.wait("return !document.querySelector('[data-test=request-in-carol]');",
                            "the declined request to go")
            event = carol.wait_push(imclient.Op.FRIEND_EVENT, timeout=WAIT_TIMEOUT)
            check(event["event"] == imclient.FRIEND_DECLINED and event["username"] == "alice",
                  "carol was told %s" % event)
        check(not self.alice.run("return !!document.querySelector('[data-test=conversation-carol]');"),
              "carol is in alice's list after the decline")

    def step_chat_both_ways(self):
        self.open_conversation(self.alice, "[data-test=conversation-bob]")
        self.send(self.alice, "hello bob")
        self.alice.wait_message("hello bob", "sent")
        self.bob.wait_text("[data-test=unread-alice]", "1")
        self.open_conversation(self.bob, "[data-test=conversation-alice]")
        self.bob.wait_message("hello bob")
        self.alice.wait_message("hello bob", "read")
        self.bob.wait("return document.querySelector('[data-test=unread-alice]').hidden;",
                      "the unread count to clear")
        self.send(self.bob, "hi alice, how are you?")
        self.alice.wait_message("hi alice, how are you?")
        self.bob.wait_message("hi alice, how are you?", "read")

    def step_offline_and_back(self):
        self.bob.open("about:blank")
        self.wait_online(self.alice, "bob", False)
        for body in ("are you there?", "I wrote while you were away", "three of them"):
            self.send(self.alice, body)
            self.alice.wait_message(body, "sent")
        # Without "remember me", coming back is the login form.
        self.bob.open(self.server.url)
        self.bob.wait_for("[data-test=login-form]")
        check(not self.bob.run("return !!localStorage.getItem('im.session');"),
              "bob's keys were stored without remember me")
        self.login_form(self.bob, "bob", remember=True)
        self.wait_logged_in(self.bob, "bob")
        self.bob.wait_text("[data-test=unread-alice]", "3")
        self.wait_online(self.alice, "bob", True)
        self.open_conversation(self.bob, "[data-test=conversation-alice]")
        for body in ("hello bob", "are you there?", "I wrote while you were away", "three of them"):
            self.bob.wait_message(body)
        self.alice.wait_message("three of them", "read")

    def step_group(self):
        self.alice.type("[data-test=group-name]", "weekend trip")
        self.alice.click("[data-test=group-create]")
        self.alice.wait_text("[data-test=conversation-title]", "weekend trip")
        self.alice.wait("return !!document.querySelector('[data-test=invite-name] option[value=bob]');",
                        "bob among the friends to invite")
        self.alice.select("[data-test=invite-name]", "bob")
        self.alice.click("[data-test=invite]")
        self.bob.wait_for(self.group_selector("weekend trip"))
        self.send(self.alice, "who brings the tent?")
        self.alice.wait_message("who brings the tent?", "sent")
        self.bob.wait_text(self.group_selector("weekend trip") + " .badge", "1")
        self.open_conversation(self.bob, self.group_selector("weekend trip"))
        self.bob.wait_message("who brings the tent?")
        self.send(self.bob, "Ça marche — I do!")
        self.alice.wait_message("Ça marche — I do!")
        self.bob.wait_message("Ça marche — I do!", "sent")

    def step_screenshots(self):
        self.open_conversation(self.alice, "[data-test=conversation-bob]")
        self.send(self.alice, "see you on Saturday then")
        self.alice.wait_message("see you on Saturday then", "sent")
        self.shoot(self.alice, "desktop")
        self.shoot(self.bob, "desktop")
        for browser in (self.alice, self.bob):
            browser.resize(*PHONE)
        self.bob.wait("return getComputedStyle(document.querySelector('[data-test=sidebar]')).display === 'none';",
                      "the phone layout to show one pane")
        self.shoot(self.bob, "phone-conversation")
        self.bob.click("[data-test=back]")
        self.bob.wait_for("[data-test=conversations]")
        self.shoot(self.bob, "phone-list")
        # On a phone, the browser's own back returns from a conversation to the list.
        self.open_conversation(self.bob, "[data-test=conversation-alice]")
        self.bob.call("POST", "/back", {})
        self.bob.wait_for("[data-test=conversations]")
        check(self.bob.run("return location.href;") == self.server.url,
              "back left the page for %s" % self.bob.run("return location.href;"))
        self.shoot(self.alice, "phone-conversation")
        self.open_conversation(self.bob, "[data-test=conversation-alice]")
        self.bob.wait_message("see you on Saturday then")
        for browser in (self.alice, self.bob):
            browser.resize(*DESKTOP)

    def step_leave_group(self):
        # alice makes a second group with bob in it; bob leaves it (Leave asks twice).
        self.alice.type("[data-test=group-name]", "book club")
        self.alice.click("[data-test=group-create]")
        self.alice.wait_text("[data-test=conversation-title]", "book club")
        self.alice.wait("return !!document.querySelector('[data-test=invite-name] option[value=bob]');",
                        "bob among the friends to invite")
        self.alice.select("[data-test=invite-name]", "bob")
        self.alice.click("[data-test=invite]")
        self.alice.wait_text("[data-test=conversation-status]", "2 members")
        self.open_conversation(self.bob, self.group_selector("book club"))
        self.bob.click("[data-test=group-leave]")
        check(self.bob.run("return !!document.querySelector(arguments[0]);",
                           self.group_selector("book club")),
              "one click left the group without asking")
        self.bob.click("[data-test=group-leave]")
        self.bob.wait("return !document.querySelector(arguments[0]);", "the group to leave bob's list",
                      self.group_selector("book club"))
        self.alice.wait_text("[data-test=conversation-status]", "1 member")
        self.alice.wait("return [...document.querySelectorAll('[data-test=event]')]"
                        ".some((e) => e.textContent === 'bob left');", "alice told that bob left")
        self.open_conversation(self.bob, "[data-test=conversation-alice]")

    def step_reload_keeps_a_remembered_session(self):
        self.alice.refresh()
        self.wait_logged_in(self.alice, "alice")
        check(self.alice.run("return document.getElementById('login').hidden;"),
              "alice's reload showed the login form")
        check(self.alice.run("return document.querySelector('[data-test=password]').value === '';"),
              "the password field is filled")
        self.open_conversation(self.alice, "[data-test=conversation-bob]")
        self.alice.wait_message("hello bob", "read")
        self.alice.wait_message("hi alice, how are you?")

    def step_long_absence(self):
        # bob (remembered since he came back) leaves; alice's phone writes him more than the
        # server's --device-backlog-cap, so his return is a SYNC_GAP the page reads from HISTORY.
        self.bob.open("about:blank")
        self.wait_online(self.alice, "bob", False)
        with self.server.client() as phone:
            phone.login("alice", PASSWORDS["alice"], device=self.alice_phone_device)
            for n in range(GAP_MESSAGES):
                phone.send("bob", "catching up, %d" % (n + 1))
        self.alice.wait_message("catching up, %d" % GAP_MESSAGES, "sent")
        self.bob.open(self.server.url)
        self.wait_logged_in(self.bob, "bob")
        self.bob.wait("return document.querySelector('[data-test=notice]').textContent"
                      ".includes('away a long time');", "the page to tell of the gap")
        self.bob.wait_text("[data-test=unread-alice]", str(GAP_MESSAGES))
        self.open_conversation(self.bob, "[data-test=conversation-alice]")
        for n in (1, GAP_MESSAGES // 2, GAP_MESSAGES):
            self.bob.wait_message("catching up, %d" % n)
        bodies = [m["body"] for m in self.bob.messages()]
        caught = [b for b in bodies if b.startswith("catching up")]
        check(caught == ["catching up, %d" % (n + 1) for n in range(GAP_MESSAGES)],
              "bob's conversation after the gap: %s" % caught)
        self.alice.wait_message("catching up, %d" % GAP_MESSAGES, "read")

    def step_scroll_back(self):
        # bob's phone (a device of his own, driven with imclient) writes a long conversation.
        with self.server.client() as phone:
            phone.login("bob", PASSWORDS["bob"], device=self.bob_phone_device)
            for n in range(SCROLLBACK_MESSAGES):
                phone.send("alice", "long story, part %d" % (n + 1))
        self.alice.wait_message("long story, part %d" % SCROLLBACK_MESSAGES)
        self.alice.refresh()
        self.wait_logged_in(self.alice, "alice")
        self.open_conversation(self.alice, "[data-test=conversation-bob]")
        self.alice.wait_message("long story, part %d" % SCROLLBACK_MESSAGES)
        first = len(self.alice.messages())
        check(first < SCROLLBACK_MESSAGES, "the first page already held %d messages" % first)
        deadline = time.monotonic() + WAIT_TIMEOUT
        while not any(m["body"] == "hello bob" for m in self.alice.messages()):
            check(time.monotonic() < deadline, "scrolling up never reached the first message")
            self.alice.run("document.querySelector('[data-test=messages]').scrollTop = 0;"
                           "const more = document.querySelector('[data-test=history-more]');"
                           "if (!more.hidden && !more.disabled) more.click();")
            time.sleep(POLL_INTERVAL)
        bodies = [m["body"] for m in self.alice.messages()]
        parts = [b for b in bodies if b.startswith("long story")]
        check(parts == ["long story, part %d" % (n + 1) for n in range(SCROLLBACK_MESSAGES)],
              "the scroll-back is not the conversation in order: %s" % parts[:5])
        check(len(set(m["id"] for m in self.alice.messages())) == len(bodies),
              "a message is shown twice")
        self.alice.wait("return document.querySelector('[data-test=history-more]').hidden;",
                        "the end of the history")

    def step_reconnect_and_resend(self):
        self.server.stop()
        self.alice.wait("return document.querySelector('[data-test=connection]').dataset.state !== 'online';",
                        "the page to notice the server is gone")
        self.send(self.alice, "sent while the server was down")
        self.alice.wait_message("sent while the server was down", "sending")
        self.server.restart()
        self.wait_logged_in(self.alice, "alice")
        # Stored: bob's page, open on the conversation, may read it before a poll sees "sent".
        self.alice.wait_message("sent while the server was down", ("sent", "read"))
        self.wait_logged_in(self.bob, "bob")
        self.bob.wait_message("sent while the server was down")
        self.send(self.alice, "and one after")
        self.bob.wait_message("and one after")
        count = sum(m["body"] == "sent while the server was down" for m in self.bob.messages())
        check(count == 1, "bob shows the resent message %d times" % count)
        with self.server.client() as phone:
            phone.login("bob", PASSWORDS["bob"], device=self.bob_phone_device)
            page = phone.request(imclient.Op.HISTORY, kind=0, peer="alice", direction=0,
                                 from_message_id=0, limit=5)
        stored = [m["body"] for m in page["messages"]].count("sent while the server was down")
        check(stored == 1, "the server stored the resent message %d times" % stored)

    def step_logout(self):
        self.bob.click("[data-test=logout]")
        self.bob.wait_for("[data-test=login-form]")
        self.bob.refresh()
        self.bob.wait_for("[data-test=login-form]")
        self.bob.resize(*PHONE)
        self.shoot(self.bob, "phone-login")
        self.bob.resize(*DESKTOP)
        check(not self.bob.run("return !!localStorage.getItem('im.session');"),
              "bob's keys stayed in storage after logging out")
        self.wait_online(self.alice, "bob", False)

    def step_https_and_wss(self):
        if not self.server.tls:
            print("      (openssl is not installed: the TLS listener was not started)")
            return
        # A third browser, trusting the self-signed certificate, is alice on another device.
        laptop = Browser(self.driver, "alice-https", self.chromium, self.workdir,
                         accept_insecure_certs=True)
        try:
            laptop.open("https://%s/" % self.server.tls)
            self.login_form(laptop, "alice", remember=False)
            self.wait_logged_in(laptop, "alice")
            self.open_conversation(laptop, "[data-test=conversation-bob]")
            laptop.wait_message("and one after")
            self.send(laptop, "written over wss")
            laptop.wait_message("written over wss", "sent")
            self.alice.wait_message("written over wss", "sent")
            check(laptop.run("return location.protocol;") == "https:", "the page is not https")
        finally:
            laptop.close()

    def step_devices(self):
        # alice's phone (imclient) is online while her page lists her devices: the browser is
        # "this device", with no Remove; the phone is removed with two clicks, and its
        # connection is told NO_SUCH_DEVICE and closed.
        phone_id = self.alice_phone_device.device_id
        row = "[data-test=device-%d]" % phone_id
        remove = "[data-test=device-remove-%d]" % phone_id
        with self.server.client() as phone:
            phone.login("alice", PASSWORDS["alice"], device=self.alice_phone_device)
            self.alice.click("[data-test=account]")
            self.alice.wait_for(row)
            self.alice.wait_text("[data-test=device-seen-%d]" % phone_id, "online now")
            check(self.alice.text(row + " .device-name") == self.alice_phone_device.name,
                  "the phone's row: %r" % self.alice.text(row))
            mine = self.alice.run(
                "return [...document.querySelectorAll('[data-test=device-list] li')]"
                ".filter((li) => li.querySelector('.device-seen').textContent === 'this device')"
                ".map((li) => !!li.querySelector('button'));")
            check(mine == [False], "this browser's row, with a Remove button or not: %s" % mine)
            self.shoot(self.alice, "devices")
            self.alice.click(remove)
            check(self.alice.run("return !!document.querySelector(arguments[0]);", row),
                  "one click removed the device without asking")
            self.alice.click(remove)
            self.alice.wait("return !document.querySelector(arguments[0]);", "the phone to leave the list", row)
            frames = phone.wait_closed(timeout=WAIT_TIMEOUT)
            told = [f for f in frames if f.name == "ERROR" and f.is_push]
            check([f["code"] for f in told] == [imclient.ERROR_CODES["NO_SUCH_DEVICE"]],
                  "the phone was told %s" % [(f.name, f.fields) for f in frames])
        self.alice.click("[data-test=account-close]")
        check(self.alice.run("return document.getElementById('account').hidden;"), "the panel stayed open")

    def step_remove_friend(self):
        # alice ends the friendship from the conversation's header (asked twice): the
        # conversation leaves her list, and bob's page shows alice as not a friend.
        self.open_conversation(self.alice, "[data-test=conversation-bob]")
        self.open_conversation(self.bob, "[data-test=conversation-alice]")
        self.alice.click("[data-test=friend-remove]")
        check(self.alice.run("return !!document.querySelector('[data-test=conversation-bob]');"),
              "one click removed the friend without asking")
        self.alice.click("[data-test=friend-remove]")
        self.alice.wait("return !document.querySelector('[data-test=conversation-bob]');",
                        "bob to leave alice's list")
        self.bob.wait_text("[data-test=conversation-status]", "not a friend")
        check(self.bob.run("return document.querySelector('[data-test=friend-remove]').hidden;"),
              "bob's page offers to remove a friend he no longer has")
        with self.server.client() as check_client:
            check_client.login("bob", PASSWORDS["bob"], device=self.bob_phone_device)
            friends = check_client.friend_list()
            check(not friends["friends"], "bob's friends on the server: %s" % friends.fields)
        # Friends again: alice asks, bob accepts; the conversation and its history are back.
        self.alice.type("[data-test=friend-name]", "bob")
        self.alice.click("[data-test=friend-add]")
        self.bob.wait_for("[data-test=request-accept-alice]")
        self.bob.click("[data-test=request-accept-alice]")
        self.alice.wait_for("[data-test=conversation-bob]")
        self.open_conversation(self.alice, "[data-test=conversation-bob]")
        self.alice.wait_message("and one after")
        self.bob.wait_text("[data-test=conversation-status]", "online")

    def notice_is(self, browser, text):
        browser.wait("return document.querySelector('[data-test=notice]').textContent === arguments[0];",
                     "the notice %r" % text, text, timeout=60)

    def login_fails(self, name, password):
        with self.server.client() as probe:
            try:
                probe.login(name, password, device=Device.new("probe"))
            except imclient.ServerError as error:
                return error.name
        return None

    def step_change_password(self):
        # alice changes her password on the page while her phone is connected: a wrong current
        # password is refused; the right one changes it, the phone is told CREDENTIALS_CHANGED
        # and closed, the page stays online, and only the new password logs in.
        old, new = PASSWORDS["alice"], "a new horse for alice"
        with self.server.client() as phone:
            phone.login("alice", old, device=self.alice_phone_device)
            self.alice.click("[data-test=account]")
            self.alice.wait("return !document.getElementById('account').hidden;", "the account panel")
            self.shoot(self.alice, "account")
            self.alice.type("[data-test=password-current]", "not my password")
            self.alice.type("[data-test=password-new]", new)
            self.alice.click("[data-test=password-change]")
            self.notice_is(self.alice, "Wrong password.")
            phone.ping()
            self.alice.type("[data-test=password-current]", old)
            self.alice.type("[data-test=password-new]", new)
            self.alice.click("[data-test=password-change]")
            self.notice_is(self.alice, "Password changed; your other devices were logged out.")
            frames = phone.wait_closed(timeout=WAIT_TIMEOUT)
            told = [f["code"] for f in frames if f.name == "ERROR" and f.is_push]
            check(told == [imclient.ERROR_CODES["CREDENTIALS_CHANGED"]],
                  "the phone was told %s" % [(f.name, f.fields) for f in frames])
        PASSWORDS["alice"] = new
        check(self.alice.run("return document.querySelector('[data-test=connection]').dataset.state;") == "online",
              "the page that changed the password was logged out")
        check(self.alice.run("return document.querySelector('[data-test=password-new]').value;") == "",
              "the new password stayed in its field")
        self.alice.click("[data-test=account-close]")
        check(self.login_fails("alice", old) == "AUTH_FAILED", "the old password still logs in")
        check(self.login_fails("alice", new) is None, "the new password does not log in")
        # alice's remembered keys are the new ones: a reload logs her in again.
        self.alice.refresh()
        self.wait_logged_in(self.alice, "alice")
        self.open_conversation(self.alice, "[data-test=conversation-bob]")
        self.alice.wait_message("and one after")

    def step_delete_account(self):
        # bob logs in again and deletes his account (his name typed, his password, asked
        # twice): his page returns to the login form, alice's list loses him, and his name no
        # longer logs in.
        self.login_form(self.bob, "bob", remember=False)
        self.wait_logged_in(self.bob, "bob")
        self.bob.click("[data-test=account]")
        self.bob.wait("return !document.getElementById('account').hidden;", "the account panel")
        self.bob.type("[data-test=delete-name]", "bob")
        self.bob.type("[data-test=delete-password]", PASSWORDS["bob"])
        self.bob.click("[data-test=delete-account]")
        check(not self.bob.run("return document.getElementById('chat').hidden;"),
              "one click deleted the account without asking")
        self.bob.click("[data-test=delete-account]")
        self.bob.wait_text("[data-test=login-status]", "Your account was deleted.", timeout=60)
        self.bob.wait_for("[data-test=login-form]")
        self.alice.wait("return !document.querySelector('[data-test=conversation-bob]');",
                        "bob to leave alice's list")
        check(self.login_fails("bob", PASSWORDS["bob"]) == "AUTH_FAILED", "the deleted account still logs in")

    def step_consoles_clean(self):
        # Failed WebSocket connections while the server was down are expected; anything else
        # (a script error, a CSP violation) is not.
        errors = []
        for browser in (self.alice, self.bob):
            for line in browser.console():
                if line.startswith("SEVERE") and "WebSocket connection to" not in line:
                    errors.append("%s: %s" % (browser.name, line))
        check(not errors, "console errors:\n" + "\n".join(errors))

    STEPS = [
        ("every file of the page is served as it is, with a strict CSP", "step_files_served"),
        ("codec and SCRAM inside the browser", "step_codec_and_scram_in_the_browser"),
        ("both register and log in (each browser a device)", "step_register_both"),
        ("a friend request, accepted; presence", "step_befriend"),
        ("a friend request declined", "step_decline"),
        ("chat both ways: sending, sent, read; unread count", "step_chat_both_ways"),
        ("offline and back: login form without remember me, missed messages unread",
         "step_offline_and_back"),
        ("a group: create, invite, messages both ways", "step_group"),
        ("screenshots at desktop and phone width", "step_screenshots"),
        ("leaving a group (asked twice); the others are told", "step_leave_group"),
        ("a reload keeps the session with remember me", "step_reload_keeps_a_remembered_session"),
        ("a long absence: SYNC_GAP filled from HISTORY, counted unread", "step_long_absence"),
        ("scroll-back through HISTORY", "step_scroll_back"),
        ("devices: listed, this one marked, another removed (asked twice) and logged out", "step_devices"),
        ("server restart: reconnect, the unsent message sent once", "step_reconnect_and_resend"),
        ("removing a friend (asked twice); the other page is told; friends again",
         "step_remove_friend"),
        ("changing the password: a wrong one refused, the other devices logged out, a reload logs in",
         "step_change_password"),
        ("logout: a reload shows the login form", "step_logout"),
        ("the TLS listener: the page over https, its socket over wss", "step_https_and_wss"),
        ("deleting the account (asked twice): back to the login form, friends told", "step_delete_account"),
        ("no errors in the browsers' consoles", "step_consoles_clean"),
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
            for browser in (scenario.alice, scenario.bob):
                if browser is not None:
                    try:
                        scenario.shoot(browser, "failure")
                        lines = browser.console()
                    except Exception as inner:  # The browser itself may be what broke.
                        lines = ["(no console: %s)" % inner]
                    for line in lines[-20:]:
                        print("  %s console: %s" % (browser.name, line))
            with open(scenario.server.log_path, errors="replace") as log:
                for line in log.read().splitlines()[-20:]:
                    print("  server: %s" % line)
        else:
            passed += 1
            print("ok    %s (%.2fs)" % (label, time.monotonic() - started), flush=True)
    return passed, failed


def find_chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-build", action="store_true",
                        help="use the server binary as it is, without cargo build")
    parser.add_argument("--server", metavar="BINARY", help="the im-server binary to test")
    parser.add_argument("--screenshots", metavar="DIR",
                        default=os.path.join(REPO, "target", "web-screenshots"),
                        help="where the screenshots go (default target/web-screenshots)")
    parser.add_argument("--chromium", default=find_chromium(), help="the Chromium binary")
    parser.add_argument("--chromedriver", default=shutil.which("chromedriver"),
                        help="the chromedriver binary")
    args = parser.parse_args()
    if not args.chromium or not args.chromedriver:
        print("FAIL  chromium and chromedriver are needed (Debian: apt-get install chromium "
              "chromium-driver)")
        print("0 passed, 1 failed")
        return 1
    binary = args.server or os.environ.get("IM_SERVER_BIN")
    if binary is None:
        binary = os.path.join(REPO, "target", "debug", "im-server")
        if not args.no_build:
            try:
                subprocess.run(["cargo", "build", "--quiet"], cwd=REPO, check=True,
                               stdout=sys.stderr, stderr=sys.stderr)
            except (OSError, subprocess.CalledProcessError) as error:
                print("FAIL  build: %s" % error)
                print("0 passed, 1 failed")
                return 1
    started = time.monotonic()
    if os.path.isdir(args.screenshots):
        for name in os.listdir(args.screenshots):
            if name.endswith("-failure.png"):
                os.remove(os.path.join(args.screenshots, name))
    with tempfile.TemporaryDirectory(prefix="web-test-") as workdir:
        server = Server(binary, workdir)
        driver = None
        scenario = None
        try:
            server.start()
            driver = ChromeDriver(args.chromedriver, workdir)
            scenario = Scenario(server, driver, args.chromium, workdir, args.screenshots)
            passed, failed = run_steps(scenario)
        except (OSError, RuntimeError, WebDriverError) as error:
            print("FAIL  setup: %s" % error)
            passed, failed = 0, 1
        finally:
            for browser in (scenario.alice, scenario.bob) if scenario else ():
                if browser is not None:
                    browser.close()
            if driver is not None:
                driver.stop()
            server.stop()
    print("screenshots in %s (%.1fs)" % (args.screenshots, time.monotonic() - started))
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
