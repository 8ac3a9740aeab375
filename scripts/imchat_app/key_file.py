"""The key file (`--cache-keys PATH`, only when asked): the keys derived from the password,
never the password, readable by its owner only, so later logins skip the password and the
slow derivation."""

import json
import os

from imclient import DerivedKeys
from .text import describe_os_error


def load_cached_keys(path):
    """(username, DerivedKeys) from a key file, or None if there is none or it is unusable."""
    try:
        with open(path, encoding="utf-8") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            data = json.load(handle)
        keys = DerivedKeys(bytes.fromhex(data["salt"]), int(data["iterations"]),
                           bytes.fromhex(data["salted_password"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        print("The key file %s cannot be read; ignoring it." % path)
        return None
    if mode & 0o077:
        print("Warning: %s can be read by other users; run: chmod 600 %s" % (path, path))
    return data["username"], keys


def save_cached_keys(path, username, keys):
    """Write the derived keys (never the password) to `path`, readable by its owner only."""
    data = json.dumps({"username": username, "salt": keys.salt.hex(),
                       "iterations": keys.iterations,
                       "salted_password": keys.salted_password.hex()})
    temporary = "%s.tmp%d" % (path, os.getpid())
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write(data + "\n")
        os.replace(temporary, path)
    except OSError as error:
        print("Could not save the key to %s: %s." % (path, describe_os_error(error)))
        return
    print("Saved your key (not your password) to %s; anyone who can read that file can log "
          "in as you." % path)
