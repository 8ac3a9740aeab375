"""Tab completion of commands, names, groups and device ids, from what the session knows
(a mixin of `session.Chat`; the line editor calls `complete`)."""

from .commands import COMMANDS, DEVICE_SUBCOMMANDS, GROUP_SUBCOMMANDS


class Completion:
    """`complete(before, word)` for the LineEditor, from the friends, groups, requests and
    devices a `Chat` keeps."""

    def complete(self, before, word):
        """Choices for `word`, the word being typed after the text `before` (see LineEditor)."""
        words = before.split()
        if not words:
            return [c for c in COMMANDS if c.startswith(word.lower())] if word.startswith(
                "/") else self.match(self.conversation_names(), word)
        command = words[0].lower()
        position = len(words)
        friends = [entry[0] for entry in self.friends.values()]
        groups = list(self.groups.values())
        if command in ("/accept", "/decline") and position == 1:
            names = list(self.incoming.values()) or list(self.known_names.values())
        elif command == "/add" and position == 1:
            names = [n for key, n in self.known_names.items()
                     if key not in self.friends and key != self.username.lower()]
        elif command in ("/msg", "/remove", "/read") and position == 1:
            names = friends
        elif command == "/open" and position == 1:
            names = self.conversation_names()
        elif command == "/g" and position == 1:
            names = groups
        elif command == "/group" and position == 1:
            names = GROUP_SUBCOMMANDS
        elif command == "/group" and position == 2 and words[1].lower() != "create":
            names = groups
        elif command == "/group" and position == 3 and words[1].lower() == "invite":
            names = friends + list(self.known_names.values())
        elif command == "/devices" and position == 1:
            names = DEVICE_SUBCOMMANDS
        elif command == "/devices" and position == 2 and words[1].lower() == "remove":
            names = [str(device_id) for device_id in self.device_names]
        else:
            names = []
        return self.match(names, word)

    def conversation_names(self):
        return [entry[0] for entry in self.friends.values()] + [
            "#" + name for name in self.groups.values()]

    @staticmethod
    def match(names, word):
        lowered = word.lower()
        prefix = "#" if lowered.startswith("#") else ""
        found = [name for name in names if name.lower().startswith(lowered)]
        if prefix == "" or found:
            return found
        return ["#" + name for name in names if ("#" + name).lower().startswith(lowered)]
