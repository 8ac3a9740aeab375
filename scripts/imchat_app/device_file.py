"""The device file (`--device-file`, by default ~/.config/imchat/device.json): this
installation's device id and name, kept from run to run because the server keeps one delivery
position per device (PROTOCOL.md section 6)."""

import json
import os
import socket

from imclient import MAX_DEVICE_NAME, Device, new_device_id
from .text import describe_os_error


def default_device_file():
    """~/.config/imchat/device.json, or under $XDG_CONFIG_HOME when it is set."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "imchat", "device.json")


def default_device_name():
    return ("imchat on %s" % (socket.gethostname() or "this computer"))[:MAX_DEVICE_NAME]


def valid_device_name(name):
    return 1 <= len(name) <= MAX_DEVICE_NAME


def load_device(path, name=None):
    """This installation's Device from `path`, created there on first use.

    `name` (from --device-name) renames it. When the file cannot be written the device lives
    for this run only, and the person is told that the next run will be a new device.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        device = Device(int(data["device_id"]), str(data["device_name"]))
        if not 0 < device.device_id < 2 ** 64 or not valid_device_name(device.name):
            raise ValueError("out of range")
    except FileNotFoundError:
        device = Device(new_device_id(), name or default_device_name())
    except (OSError, ValueError, KeyError, TypeError):
        # Not overwritten: it may be a file the person keeps for another reason.
        print("The device file %s cannot be read; this run is a new device that is not "
              "saved (use --device-file PATH for another file)." % path)
        return Device(new_device_id(), name or default_device_name())
    else:
        if name is None or name == device.name:
            return device
        device = Device(device.device_id, name)
    save_device(path, device)
    return device


def save_device(path, device):
    data = json.dumps({"device_id": device.device_id, "device_name": device.name})
    temporary = "%s.tmp%d" % (path, os.getpid())
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(data + "\n")
        os.replace(temporary, path)
    except OSError as error:
        print("Could not save this device to %s (%s); the next run will count as a new "
              "device." % (path, describe_os_error(error)))
