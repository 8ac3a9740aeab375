"""Logging in and registering: the `Connector` that opens connections and explains
failures, and the questions asked until a login works (the key file and the prompts are
modules of their own)."""

from imclient import (
    AuthenticationError, Client, KeysMismatch, ProtocolError, ServerError, TlsError, fresh_keys)
from .key_file import load_cached_keys, save_cached_keys
from .prompts import ask, ask_password
from .settings import CONNECT_TIMEOUT, USERNAME_RE
from .text import SENTENCES, describe_os_error, explain


def scram_login(client, username, device, keys=None, password=None, on_derive=None):
    """Logs in as `device` with imclient's SCRAM steps; returns the keys that worked.

    Uses `keys` when they fit the challenge, else derives them from `password` (calling
    `on_derive()` first, since that takes a moment); raises KeysMismatch without one.
    """
    client.login(username, password, device=device, keys=keys, on_derive=on_derive)
    return client.keys


class Connector:
    """Opens a connection and greets the server; explains failures as sentences.

    It is opened only once everything the person types for a login is in: the server closes
    a connection that is not logged in within HELLO_OK's `login_timeout_secs`.
    """

    def __init__(self, host, port, tls=None):
        self.host, self.port = host, port
        self.tls = tls
        self.hello_info = None

    def open(self):
        client = Client(timeout=CONNECT_TIMEOUT, tls=self.tls)
        client.connect(self.host, self.port)
        client.hello()
        self.hello_info = client.hello_info
        return client

    def kdf_iterations(self, requested):
        """`requested`, raised to the minimum the server announced (REGISTER refuses fewer)."""
        if self.hello_info is None:
            return requested
        return max(requested, self.hello_info["min_kdf_iterations"])

    def probe(self):
        """Check that the server answers; returns its name, or None after saying why not."""
        try:
            client = self.open()
        except TlsError as error:
            print("Cannot talk TLS with the server at %s:%d: %s" % (self.host, self.port, error))
            return None
        except (OSError, ProtocolError) as error:
            print("Cannot reach the server at %s:%d (%s). Is it running? Start it with "
                  "`cargo run --release`, or pass --addr HOST:PORT."
                  % (self.host, self.port, describe_os_error(error)))
            return None
        except ServerError as error:
            print("The server at %s:%d refused the connection: %s"
                  % (self.host, self.port, explain(error)))
            return None
        name = client.hello_info["server"]
        client.close()
        return name


def login_prompt(connector, options):
    """Ask to log in or register until it works; returns (client, keys) or None to quit."""
    cached = load_cached_keys(options.cache_keys) if options.cache_keys else None
    if cached is not None:
        username, keys = cached
        answer = ask("Log in as %s with the saved key? [Y/n] " % username)
        if answer is None:
            return None
        if answer.strip().lower() in ("", "y", "yes"):
            result = attempt_login(connector, username, options.device, keys=keys)
            if result is not None:
                return result
    while True:
        answer = ask("Log in or register? [L/r, q to quit] ")
        if answer is None or answer.strip().lower() in ("q", "quit"):
            return None
        choice = answer.strip().lower()
        if choice in ("", "l", "login", "log in"):
            result = login_interactively(connector, options)
        elif choice in ("r", "register"):
            result = register_interactively(connector, options)
        else:
            print("Type l to log in, r to register or q to quit.")
            continue
        if result is not None:
            return result


def print_deriving():
    print("deriving key\u2026 ", end="", flush=True)


def attempt_login(connector, username, device, keys=None, password=None):
    """One login as `device`; returns (client, keys) or None after explaining what went
    wrong."""
    try:
        client = connector.open()
    except (OSError, ProtocolError) as error:
        print("Cannot reach the server (%s)." % describe_os_error(error))
        return None
    derived = []

    def on_derive():
        print_deriving()
        derived.append(True)
    try:
        keys = scram_login(client, username, device, keys=keys, password=password,
                           on_derive=on_derive)
    except ServerError as error:
        if derived:
            print()
        client.close()
        print(explain(error, name=username))
        return None
    except KeysMismatch as error:
        print("%s; please type the password." % str(error).capitalize())
        return None
    except (OSError, ProtocolError, AuthenticationError) as error:
        if derived:
            print()
        client.close()
        print("The login did not complete (%s)." % (
            describe_os_error(error) if isinstance(error, OSError) else error))
        return None
    if derived:
        print("done.")
    return client, keys


def login_interactively(connector, options):
    username = ask("Name: ")
    if username is None:
        return None
    username = username.strip()
    if not USERNAME_RE.match(username):
        print(SENTENCES[10][1].format(name=username))
        return None
    password = ask_password("Password: ")
    if not password:
        return None
    result = attempt_login(connector, username, options.device, password=password)
    if result is not None and options.cache_keys:
        save_cached_keys(options.cache_keys, result[0].username, result[1])
    return result


def register_interactively(connector, options):
    """Choose a name and password, derive the key once, REGISTER, then log in with it."""
    username = ask("Choose a name (letters, digits, . _ -): ")
    if username is None:
        return None
    username = username.strip()
    if not USERNAME_RE.match(username):
        print(SENTENCES[10][1].format(name=username))
        return None
    password = ask_password("Choose a password: ")
    if not password:
        print("A password cannot be empty.")
        return None
    if ask_password("Type it again: ") != password:
        print("The two passwords differ; let us start again.")
        return None
    print_deriving()
    keys = fresh_keys(password, connector.kdf_iterations(options.kdf_iterations))
    print("done.")
    while True:
        client = None
        try:
            client = connector.open()
            client.register(username, keys=keys)
            break
        except ServerError as error:
            if client is not None:
                client.close()
            print(explain(error, name=username))
            if error.code not in (10, 11):
                return None
            username = ask("Choose another name: ")
            if username is None or not username.strip():
                return None
            username = username.strip()
        except (OSError, ProtocolError) as error:
            print("Cannot reach the server (%s)." % describe_os_error(error))
            return None
    print("Registered %s." % username)
    try:
        scram_login(client, username, options.device, keys=keys)
    except ServerError as error:
        client.close()
        print(explain(error, name=username))
        return None
    except (OSError, ProtocolError, AuthenticationError, KeysMismatch) as error:
        client.close()
        print("The login did not complete (%s)." % error)
        return None
    if options.cache_keys:
        save_cached_keys(options.cache_keys, client.username, keys)
    return client, keys
