"""The input line: raw terminal mode, redrawn under whatever is printed above it, with
history, editing keys and Tab completion (plain line input when not a terminal)."""

import codecs
import os
import select
import shutil
import signal
import termios
import unicodedata
from .text import char_width, text_width



class LineEditor:
    """The line being typed, kept at the bottom of the terminal.

    In raw mode it reads keys itself, so that `show` can print above the line at any moment
    and redraw the prompt with the partial line and the cursor where they were. Lines longer
    than the terminal scroll sideways. When standard input is not a terminal it reads plain
    lines instead. `feed` turns bytes read from the terminal into events: ("line", text),
    ("eof",) or ("interrupt",).
    """

    def __init__(self, fd=0, out_fd=1):
        self.fd = fd
        self.out_fd = out_fd
        self.interactive = os.isatty(fd) and os.isatty(out_fd)
        self.encoding = "utf-8"
        self.prompt = "> "
        self.prompt_width = 2
        self.buffer = []
        self.cursor = 0
        self.scroll = 0
        self.history = []
        self.history_index = None
        self.saved_line = []
        self.escape = None
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.saved_attributes = None
        self.completer = None
        self.active = False
        self.plain_pending = ""

    # -- terminal modes ---------------------------------------------------------------------

    def start(self):
        """Enter raw mode (keys one by one, no echo, Ctrl-C as a key) and draw the prompt."""
        if self.interactive and self.saved_attributes is None:
            self.saved_attributes = termios.tcgetattr(self.fd)
            attributes = termios.tcgetattr(self.fd)
            attributes[0] &= ~(termios.IXON | termios.ICRNL)
            attributes[3] &= ~(termios.ICANON | termios.ECHO | termios.ISIG | termios.IEXTEN)
            attributes[6][termios.VMIN] = 1
            attributes[6][termios.VTIME] = 0
            termios.tcsetattr(self.fd, termios.TCSADRAIN, attributes)
        self.active = True
        self.redraw()

    def stop(self):
        """Leave raw mode, keeping what was typed off the screen."""
        if self.active and self.interactive:
            self._write("\r\x1b[K")
        self.active = False
        if self.saved_attributes is not None:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved_attributes)
            self.saved_attributes = None

    def suspend(self):
        """Ctrl-Z: give the terminal back, stop, and take it again when continued."""
        self.stop()
        os.kill(os.getpid(), signal.SIGTSTP)
        self.start()

    # -- output -----------------------------------------------------------------------------

    def _write(self, text):
        data = text.encode(self.encoding, "replace")
        while data:
            try:
                written = os.write(self.out_fd, data)
            except BlockingIOError:
                select.select([], [self.out_fd], [])
                continue
            except InterruptedError:
                continue
            data = data[written:]

    def set_prompt(self, prompt, width):
        self.prompt = prompt
        self.prompt_width = width
        self.redraw()

    def show(self, text):
        """Print `text` (one or more lines) above the input line, then redraw the line."""
        if not self.active or not self.interactive:
            self._write(text + "\n")
            return
        self._write("\r\x1b[K" + text + "\n")
        self.redraw()

    def redraw(self):
        if not self.active or not self.interactive:
            return
        columns = max(shutil.get_terminal_size((80, 24)).columns, 10)
        room = max(columns - self.prompt_width - 1, 4)
        if text_width("".join(self.buffer[:self.cursor])) <= room:
            self.scroll = 0
        self.scroll = min(self.scroll, self.cursor)
        while text_width("".join(self.buffer[self.scroll:self.cursor])) > room:
            self.scroll += 1
        visible, used = [], 0
        for char in self.buffer[self.scroll:]:
            width = char_width(char)
            if used + width > room:
                break
            visible.append(char)
            used += width
        after_cursor = text_width("".join(visible[self.cursor - self.scroll:]))
        line = "\r" + self.prompt + "".join(visible) + "\x1b[K"
        if after_cursor:
            line += "\x1b[%dD" % after_cursor
        self._write(line)

    # -- input ------------------------------------------------------------------------------

    def feed(self, data):
        """Bytes from the terminal in, a list of events out (see the class doc)."""
        text = self.decoder.decode(data)
        if not self.interactive:
            return self._feed_plain(text, eof=not data)
        events = []
        for char in text:
            if self.escape is not None:
                self._feed_escape(char)
                continue
            event = self._key(char)
            if event is not None:
                events.append(event)
        self.redraw()
        return events

    def _feed_plain(self, text, eof):
        self.plain_pending += text
        *lines, self.plain_pending = self.plain_pending.split("\n")
        events = [("line", line.rstrip("\r")) for line in lines]
        if eof:
            if self.plain_pending:
                events.append(("line", self.plain_pending))
                self.plain_pending = ""
            events.append(("eof",))
        return events

    def _feed_escape(self, char):
        self.escape += char
        sequence = self.escape
        if len(sequence) == 2 and char not in "[O":
            self.escape = None
            self._alt_key(char)
            return
        if len(sequence) > 2 and (0x40 <= ord(char) <= 0x7E) or len(sequence) > 16:
            self.escape = None
            self._escape_sequence(sequence)

    def _escape_sequence(self, sequence):
        action = {
            "\x1b[A": self._history_back, "\x1bOA": self._history_back,
            "\x1b[B": self._history_forward, "\x1bOB": self._history_forward,
            "\x1b[C": self._right, "\x1bOC": self._right,
            "\x1b[D": self._left, "\x1bOD": self._left,
            "\x1b[H": self._home, "\x1bOH": self._home, "\x1b[1~": self._home,
            "\x1b[7~": self._home,
            "\x1b[F": self._end, "\x1bOF": self._end, "\x1b[4~": self._end, "\x1b[8~": self._end,
            "\x1b[3~": self._delete,
            "\x1b[1;5C": self._word_right, "\x1b[1;5D": self._word_left,
        }.get(sequence)
        if action is not None:
            action()

    def _alt_key(self, char):
        if char == "b":
            self._word_left()
        elif char == "f":
            self._word_right()
        elif char in "\x7f\x08":
            self._delete_word_back()

    def _key(self, char):
        if char in "\r\n":
            line = "".join(self.buffer)
            self.buffer, self.cursor, self.scroll = [], 0, 0
            self.history_index = None
            if line.strip() and (not self.history or self.history[-1] != line):
                self.history.append(line)
            return ("line", line)
        if char == "\x03":
            if self.buffer:
                self.buffer, self.cursor = [], 0
                return None
            return ("interrupt",)
        if char == "\x04":
            if not self.buffer:
                return ("eof",)
            self._delete()
            return None
        if char == "\x1a":
            self.suspend()
            return None
        if char == "\x1b":
            self.escape = "\x1b"
            return None
        simple = {
            "\x01": self._home, "\x05": self._end, "\x02": self._left, "\x06": self._right,
            "\x7f": self._backspace, "\x08": self._backspace, "\x0b": self._kill_to_end,
            "\x15": self._kill_to_start, "\x17": self._delete_word_back,
            "\x10": self._history_back, "\x0e": self._history_forward,
            "\x0c": self._clear_screen, "\t": self._complete,
        }.get(char)
        if simple is not None:
            simple()
        elif unicodedata.category(char) != "Cc":
            self.buffer.insert(self.cursor, char)
            self.cursor += 1
        return None

    def _home(self):
        self.cursor = 0

    def _end(self):
        self.cursor = len(self.buffer)

    def _left(self):
        self.cursor = max(self.cursor - 1, 0)

    def _right(self):
        self.cursor = min(self.cursor + 1, len(self.buffer))

    def _word_left(self):
        while self.cursor > 0 and self.buffer[self.cursor - 1] == " ":
            self.cursor -= 1
        while self.cursor > 0 and self.buffer[self.cursor - 1] != " ":
            self.cursor -= 1

    def _word_right(self):
        end = len(self.buffer)
        while self.cursor < end and self.buffer[self.cursor] == " ":
            self.cursor += 1
        while self.cursor < end and self.buffer[self.cursor] != " ":
            self.cursor += 1

    def _backspace(self):
        if self.cursor > 0:
            self.cursor -= 1
            del self.buffer[self.cursor]

    def _delete(self):
        if self.cursor < len(self.buffer):
            del self.buffer[self.cursor]

    def _kill_to_end(self):
        del self.buffer[self.cursor:]

    def _kill_to_start(self):
        del self.buffer[:self.cursor]
        self.cursor = 0

    def _delete_word_back(self):
        start = self.cursor
        self._word_left()
        del self.buffer[self.cursor:start]

    def _clear_screen(self):
        self._write("\x1b[H\x1b[2J")

    def _history_back(self):
        if not self.history:
            return
        if self.history_index is None:
            self.saved_line = list(self.buffer)
            self.history_index = len(self.history)
        if self.history_index > 0:
            self.history_index -= 1
            self.buffer = list(self.history[self.history_index])
            self.cursor = len(self.buffer)

    def _history_forward(self):
        if self.history_index is None:
            return
        self.history_index += 1
        if self.history_index >= len(self.history):
            self.history_index = None
            self.buffer = list(self.saved_line)
        else:
            self.buffer = list(self.history[self.history_index])
        self.cursor = len(self.buffer)

    def _complete(self):
        """Tab: complete the word before the cursor; list the choices when there are several."""
        if self.completer is None:
            return
        before = "".join(self.buffer[:self.cursor])
        start = before.rfind(" ") + 1
        word = before[start:]
        choices = sorted(set(self.completer(before[:start], word)), key=str.lower)
        if not choices:
            return
        if len(choices) == 1:
            insert = choices[0] + " "
        else:
            insert = os.path.commonprefix([choice.lower() for choice in choices])
            if len(insert) <= len(word):
                self.show(self._style_choices(choices))
                return
            # Keep the letter case of a choice that starts with the common prefix.
            insert = next(choice for choice in choices
                          if choice.lower().startswith(insert))[:len(insert)]
        self.buffer[start:self.cursor] = list(insert)
        self.cursor = start + len(insert)

    @staticmethod
    def _style_choices(choices):
        return "  ".join(choices)
