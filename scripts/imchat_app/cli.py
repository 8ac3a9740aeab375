"""The command line: arguments, then the login prompt and chat sessions until /quit."""

import argparse
import os
import signal
import sys

from imclient import (
    DEFAULT_ITERATIONS, MAX_DEVICE_NAME, tls_context)
from .settings import DEFAULT_ADDR
from .line_editor import LineEditor
from .device_file import default_device_file, load_device, valid_device_name
from .login import Connector, login_prompt
from .session import Chat
from .text import Style


def parse_address(text):
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError("expected HOST:PORT, e.g. 127.0.0.1:7878")
    return host.strip("[]"), int(port)


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="imchat", description="Chat with friends on an im-server, in a terminal.")
    parser.add_argument("--addr", type=parse_address, default=parse_address(DEFAULT_ADDR),
                        help="the server, HOST:PORT (default %s)" % DEFAULT_ADDR)
    parser.add_argument("--cache-keys", metavar="PATH",
                        help="keep the key derived from your password in this file (mode "
                             "0600), so later logins skip the password; anyone who can read "
                             "the file can log in as you")
    parser.add_argument("--device-file", metavar="PATH", default=default_device_file(),
                        help="this installation's device id and name, created on first use "
                             "(default %(default)s). The server keeps what each device has "
                             "seen: keep this file (without it every run is a new device), "
                             "and give each installation its own")
    parser.add_argument("--device-name", metavar="NAME",
                        help="what /devices calls this device (1 to %d characters; default "
                             "\"imchat on HOSTNAME\"), saved in the device file"
                             % MAX_DEVICE_NAME)
    parser.add_argument("--tls", action="store_true",
                        help="talk TLS to the server's --tls-listen port, trusting the "
                             "system's certificates")
    parser.add_argument("--ca", metavar="FILE",
                        help="trust only this certificate (PEM), e.g. a self-signed server's; "
                             "implies --tls")
    # For tests: registering with fewer PBKDF2 rounds (the server must allow it).
    parser.add_argument("--kdf-iterations", type=int, help=argparse.SUPPRESS,
                        default=int(os.environ.get("IMCHAT_KDF_ITERATIONS",
                                                   DEFAULT_ITERATIONS)))
    return parser.parse_args(argv)


def main(argv=None):
    options = parse_args(sys.argv[1:] if argv is None else argv)
    if options.device_name is not None and not valid_device_name(options.device_name):
        print("A device name has 1 to %d characters." % MAX_DEVICE_NAME)
        return 2
    host, port = options.addr
    tls = tls_context(options.ca) if options.tls or options.ca else None
    connector = Connector(host, port, tls)
    color = (os.isatty(1) and "NO_COLOR" not in os.environ
             and os.environ.get("TERM", "dumb") != "dumb")
    style = Style(color)
    editor = LineEditor()
    # SIGTERM and SIGHUP end the program through its `finally` blocks, restoring the terminal.
    for number in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, lambda *_: sys.exit(1))
    server = connector.probe()
    if server is None:
        return 1
    print("imchat: connected to %s at %s:%d%s." % (server, host, port, " over TLS" if tls else ""))
    options.device = load_device(options.device_file, options.device_name)
    try:
        while True:
            session = login_prompt(connector, options)
            if session is None:
                break
            client, keys = session
            print("Hello %s! /help lists the commands; Tab completes them." % client.username)
            chat = Chat(editor, style, (host, port), client, keys, options.device, tls)
            if chat.run() == "quit":
                break
    except KeyboardInterrupt:
        print()
    finally:
        editor.stop()
    print("Bye.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
