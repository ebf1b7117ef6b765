"""Passphrases: from the terminal without echo (via /dev/tty), or from `--passphrase-fd N`.

The terminal is opened directly, like age and ssh do, so prompting works while stdin and
stdout carry data. Without a terminal and without a passphrase fd, reading fails with
`NoPassphraseSource` instead of silently reading stdin.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # `typing` costs milliseconds at every start of the command
if TYPE_CHECKING:
    from typing import Final

#: A passphrase fd is read whole once; more than this is not a passphrase.
MAX_FD_READ: Final = 64 * 1024


#: Entries of a new passphrase on the terminal before giving up (ssh-keygen asks three times).
NEW_TRIES: Final = 3
_EMPTY: Final = "The passphrase must not be empty."
_MISMATCH: Final = "The passphrases do not match."


class NoPassphraseSource(Exception):
    """Neither a terminal nor a passphrase fd is available."""


class PassphraseFdError(Exception):
    """The passphrase fd could not be read or ran out of lines."""


class Passphrases:
    """Where this command's passphrases come from.

    With an fd, each request takes the next line of what the fd holds (so `passwd` reads the old
    passphrase from the first line and the new one from the second). Otherwise each request
    prompts on the terminal.
    """

    def __init__(self, fd: int | None = None, tty_path: str = "/dev/tty") -> None:
        self.fd = fd
        self.tty_path = tty_path
        self._lines: list[str] | None = None

    @property
    def from_fd(self) -> bool:
        return self.fd is not None

    def interactive(self) -> bool:
        """True when prompts can reach a person (no fd, and a terminal is there)."""
        if self.fd is not None:
            return False
        try:
            fd = os.open(self.tty_path, os.O_RDWR | os.O_NOCTTY)
        except OSError:
            return False
        os.close(fd)
        return True

    def get(self, prompt: str) -> str:
        """One passphrase: the fd's next line, or typed at the terminal."""
        if self.fd is not None:
            return self._next_line()
        return read_tty(prompt, self.tty_path)

    def new(self, prompt: str, confirm: str) -> str:
        """A new passphrase: typed twice at the terminal (once from an fd); never empty.

        On the terminal a mismatch or an empty entry asks again, up to `NEW_TRIES` times in
        all, as ssh-keygen does.
        """
        if self.fd is not None:
            value = self._next_line()
            if not value:
                raise PassphraseMismatch(_EMPTY)
            return value
        problem = ""
        for _ in range(NEW_TRIES):
            again = f"{problem.removesuffix('.')}, try again. " if problem else ""
            value = read_tty(again + prompt, self.tty_path)
            if not value:
                problem = _EMPTY
            elif read_tty(confirm, self.tty_path) != value:
                problem = _MISMATCH
            else:
                return value
        raise PassphraseMismatch(problem)

    def _next_line(self) -> str:
        if self._lines is None:
            assert self.fd is not None
            self._lines = _read_fd_lines(self.fd)
        if not self._lines:
            raise PassphraseFdError(f"No more passphrases on file descriptor {self.fd}.")
        return self._lines.pop(0)


class PassphraseMismatch(Exception):
    """The two entries of a new passphrase differ, or it is empty."""


def _read_fd_lines(fd: int) -> list[str]:
    chunks: list[bytes] = []
    total = 0
    try:
        while True:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > MAX_FD_READ:
                raise PassphraseFdError(f"File descriptor {fd} holds too much to be a passphrase.")
    except OSError as e:
        raise PassphraseFdError(f"Cannot read file descriptor {fd}: {e.strerror}.") from None
    try:
        text = b"".join(chunks).decode()
    except UnicodeDecodeError:
        raise PassphraseFdError(f"File descriptor {fd} does not hold UTF-8 text.") from None
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the final newline ends the last line; it does not start another
    return [line.removesuffix("\r") for line in lines]


def read_tty(prompt: str, tty_path: str = "/dev/tty") -> str:
    """Prompt on the terminal and read one line with echo off."""
    import termios  # here: a shared library to load, on every start of the command otherwise

    try:
        fd = os.open(tty_path, os.O_RDWR | os.O_NOCTTY)
    except OSError:
        raise NoPassphraseSource("No terminal to ask for a passphrase.") from None
    with open(fd, "r+b", buffering=0) as tty:
        old = termios.tcgetattr(fd)
        new = termios.tcgetattr(fd)
        new[3] &= ~termios.ECHO
        # Echo off (and stale typeahead dropped) before the prompt appears, as getpass does.
        termios.tcsetattr(fd, termios.TCSAFLUSH, new)
        try:
            tty.write(prompt.encode())
            try:
                line = _read_line(fd)
            except EOFError:
                line = ""  # Ctrl-D: an empty answer, refused where a passphrase is required
        finally:
            termios.tcsetattr(fd, termios.TCSAFLUSH, old)
            tty.write(b"\n")
    return line


def _read_line(fd: int) -> str:
    buf = bytearray()
    while True:
        b = os.read(fd, 1)
        if not b:
            if not buf:
                raise EOFError
            break
        if b == b"\n":
            break
        buf += b
        if len(buf) > MAX_FD_READ:
            break
    return buf.decode(errors="replace").removesuffix("\r")


def ask_yes_no(question: str, tty_path: str = "/dev/tty") -> bool:
    """A yes/no question on the terminal (echo on); anything but y/yes is no."""
    try:
        fd = os.open(tty_path, os.O_RDWR | os.O_NOCTTY)
    except OSError:
        raise NoPassphraseSource("No terminal to ask for confirmation.") from None
    with open(fd, "r+b", buffering=0) as tty:
        tty.write(question.encode())
        try:
            answer = _read_line(fd)
        except EOFError:
            return False
    return answer.strip().lower() in ("y", "yes")
