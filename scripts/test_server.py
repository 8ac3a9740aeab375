#!/usr/bin/env python3
"""End-to-end test of im-server against PROTOCOL.md (version 2), through scripts/imclient.py.

With no arguments: builds the server (`cargo build` in the repository root), starts
`target/debug/im-server` on 127.0.0.1:0 with a database in a temporary directory and a low
`--min-kdf-iterations`, runs every case, and stops the server. With `--addr HOST:PORT`: runs
against a server that is already running, with its default flags or any others: keys are
derived with at least the `min_kdf_iterations` of HELLO_OK and sends that meet `RETRY_LATER`
wait and retry. Before any case runs, one check says in one line what to change if that
server cannot run them (not reachable, another protocol version, registrations limited from
this address). User names are random, so the script can run again and again on the same
database; the cases that need a server of their own (limits, device caps, idle timeout,
durability, restart, shutdown) are skipped. `-k TEXT` runs only the cases whose name
contains TEXT.

With `--tls`, every case talks TLS: the server it starts also listens for TLS (on a
certificate made with scripts/make-cert.sh) and the cases use that port only; with `--addr`,
the server's certificate must verify against the system's trust store, or against `--ca FILE`.

Every login names a device: `Env.device(name, label)` keeps one stable id per user and label
("main" unless a case says otherwise), as a real client keeps its id from run to run.

The cases are `unittest` methods, one module per area under `scripts/server_tests/` (named
after what they check; `support.py` holds the shared helpers). This script is their runner:
it runs the areas in the order of AREAS and each area's cases in the order written, prints
one line per case and `N passed, N failed` last, and exits 1 if any case failed. Another
unittest runner works too (`cd scripts && python3 -m unittest server_tests.test_friends`):
the cases then start a server of their own (see `support.ServerCase`).
Nothing here sleeps for an event: every wait blocks on a socket with a timeout. The only
sleeps are the waits a `RETRY_LATER` asks for (a send rate, a login throttle).
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
import traceback
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import imclient  # noqa: E402
from server_tests import support  # noqa: E402
from server_tests.support import (  # noqa: E402
    REPO, CheckFailed, ConnectionClosed, Env, ServerError, build_server, preflight, start_server,
    stop_server)

# The areas, in the order they run.
AREAS = ["handshake", "framing", "accounts", "friends", "messages", "offline", "devices", "history",
         "groups", "limits", "restarts"]


def cases(selected):
    """Every case of every area, in the order written (not alphabetical: a reader follows the
    file), keeping those whose description contains one of `selected` (all if empty)."""
    suite = unittest.TestSuite()
    for area in AREAS:
        module = __import__("server_tests.test_" + area, fromlist=["*"])
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, support.ServerCase) and value is not support.ServerCase:
                for name, member in vars(value).items():
                    if name.startswith("test_") and callable(member):
                        case = value(name)
                        if not selected or any(word in describe(case) for word in selected):
                            suite.addTest(case)
    return suite


def describe(case):
    """A case's description: its docstring on one line."""
    return " ".join((case._testMethodDoc or case.id()).split())


class Lines(unittest.TestResult):
    """Prints `ok`, `skip` or `FAIL` and the description of each case as it ends."""

    def startTest(self, test):
        super().startTest(test)
        self.started = time.monotonic()

    def addSuccess(self, test):
        super().addSuccess(test)
        print("ok    %s (%.2fs)" % (describe(test), time.monotonic() - self.started), flush=True)

    def addSkip(self, test, reason):
        # With --addr the cases that need a server of their own are skipped: say which.
        super().addSkip(test, reason)
        print("skip  %s -- %s" % (describe(test), reason), flush=True)

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self.report(test, err)

    def addError(self, test, err):
        super().addError(test, err)
        self.report(test, err)

    def report(self, test, err):
        kind, error, tb = err
        detail = "%s: %s" % (kind.__name__, error)
        if not isinstance(error, (CheckFailed, ServerError, TimeoutError, ConnectionClosed)):
            detail += "\n" + "".join(traceback.format_exception(kind, error, tb)).rstrip()
        print("FAIL  %s -- %s" % (describe(test), detail), flush=True)


def run_cases(env, selected):
    support.ServerCase.env = env
    result = Lines()
    cases(selected).run(result)
    failed = len(result.failures) + len(result.errors)
    return result.testsRun - failed - len(result.skipped), failed


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--addr", help="HOST:PORT of a running server (default: start one)")
    parser.add_argument("-k", dest="select", action="append", default=[],
                        help="run only cases whose name contains this text (repeatable)")
    parser.add_argument("--no-build", action="store_true",
                        help="use target/debug/im-server as it is, without cargo build")
    parser.add_argument("--tls", action="store_true",
                        help="talk TLS (the server this script starts gets a TLS listener)")
    parser.add_argument("--ca", metavar="FILE",
                        help="with --addr --tls: trust this certificate (PEM), not the system's")
    args = parser.parse_args()
    certs = tempfile.TemporaryDirectory(prefix="im-server-test-cert-")
    if args.tls and not args.addr:
        subprocess.run([os.path.join(REPO, "scripts", "make-cert.sh"), certs.name],
                       check=True, stdout=subprocess.DEVNULL)
        support.TLS_CERT = os.path.join(certs.name, "cert.pem")
        support.TLS_KEY = os.path.join(certs.name, "key.pem")
        support.TLS = imclient.tls_context(support.TLS_CERT)
    elif args.tls or args.ca:
        support.TLS = imclient.tls_context(args.ca)
    if args.addr:
        host, _, port = args.addr.rpartition(":")
        problem = preflight(host.strip("[]"), int(port))
        if problem is not None:
            print("CANNOT RUN  %s" % problem)
            print("0 passed, 1 failed")
            return 1
        env = Env(host.strip("[]"), int(port), own_server=False)
        passed, failed = run_cases(env, args.select)
    else:
        try:
            if not args.no_build:
                build_server()
        except (OSError, subprocess.CalledProcessError) as error:
            print("FAIL  build: %s" % error)
            print("0 passed, 1 failed")
            return 1
        with tempfile.TemporaryDirectory(prefix="im-server-test-") as workdir:
            try:
                process, host, port = start_server(workdir)
            except (OSError, RuntimeError) as error:
                print("FAIL  start the server: %s" % error)
                print("0 passed, 1 failed")
                return 1
            env = Env(host, port, own_server=True)
            env.server = process
            env.workdir = workdir
            try:
                passed, failed = run_cases(env, args.select)
            finally:
                stop_server(env.server)
                if failed and os.environ.get("IM_TEST_SERVER_LOG") == "1":
                    with open(os.path.join(workdir, "test.db.log"), errors="replace") as log:
                        sys.stderr.write(log.read()[-8000:])
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
