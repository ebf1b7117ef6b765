"""What every command gets: its arguments, a lazily opened client, passphrase sources, and the
two error kinds of the command line itself (usage mistakes and failed operations)."""

from __future__ import annotations

import os
import stat
import sys

from keyagent.lazy_client import LazyClient
from keyagent.output import (
    AtomicOutput,
    OutputError,
    SpecialOutput,
    StdoutSink,
    is_special,
    named_fd,
)
from keyagent.prompt import Passphrases
from keyagent.protocol import is_valid_key_name

TYPE_CHECKING = False  # `typing` costs milliseconds at every start of the command
if TYPE_CHECKING:
    from keyagent.client import Client
    from keyagent.grammar import Args


class UsageError(Exception):
    """The command line asks for something impossible (exit 2)."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


class CommandError(Exception):
    """The operation failed for a reason the command found itself (exit 1)."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


class Context(LazyClient):
    """A plain class, not a dataclass: `dataclasses` costs milliseconds at start-up."""

    def __init__(
        self,
        args: Args,
        passphrases: Passphrases,
        client: Client | None = None,
    ) -> None:
        super().__init__(client)
        self.args = args
        self.passphrases = passphrases


def askpass_wanted(ctx: Context) -> bool:
    """Whether the agent should ask at the desktop (its askpass program) for a locked key:
    always with --askpass, never with --no-askpass, otherwise when this command has nobody
    to ask itself (no terminal, no --passphrase-fd), as from a desktop script."""
    force, refuse = getattr(ctx.args, "askpass", False), getattr(ctx.args, "no_askpass", False)
    if force and refuse:
        raise UsageError("Give --askpass or --no-askpass, not both.")
    if force or refuse:
        return bool(force)
    return not ctx.passphrases.from_fd and not ctx.passphrases.interactive()


def key_name(name: str) -> str:
    """A key name from the command line, checked before anything is sent."""
    if not is_valid_key_name(name):
        raise UsageError(
            f"Invalid key name {name!r}: use 1-64 letters, digits, '_' or '-'.",
            "key names look like: work, backup-2024, laptop_ssd",
        )
    return name


class open_input:  # a class, not @contextmanager: `contextlib` costs milliseconds
    """A readable fd for a file, or stdin for None and '-'. Only opened files are closed."""

    def __init__(self, path: str | None) -> None:
        self._path = path
        self._opened: int | None = None

    def __enter__(self) -> int:
        path = self._path
        if path is None or path == "-":
            return sys.stdin.fileno()
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise CommandError(f"Cannot open '{path}': {e.strerror}.") from None
        try:
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                raise CommandError(f"Cannot read '{path}': it is a directory.")
        except BaseException:
            os.close(fd)
            raise
        self._opened = fd
        return fd

    def __exit__(self, *exc: object) -> None:
        if self._opened is not None:
            os.close(self._opened)
            self._opened = None


Sink = AtomicOutput | StdoutSink | SpecialOutput


def open_output(path: str | None, *, private: bool) -> Sink:
    """-o FILE (complete or absent), stdout for None and '-'; a device, FIFO or fd name
    (/dev/null, /dev/stdout) is written into, never replaced."""
    if path is None or path == "-":
        return StdoutSink()
    fd = named_fd(path)
    if fd is not None:
        return SpecialOutput(fd=fd)
    if is_special(path):
        return SpecialOutput(path)
    return AtomicOutput(path, private=private)


def to_stdout(path: str | None) -> bool:
    return path is None or path == "-"


def refuse_binary_terminal(path: str | None, armor: bool) -> None:
    """Like age: binary data never goes to a terminal by accident."""
    fd = 1 if to_stdout(path) else named_fd(path or "")
    if fd is not None and not armor and os.isatty(fd):
        raise UsageError(
            "Refusing to write binary data to the terminal.",
            "use -a for armored text, or -o FILE to write a file",
        )


__all__ = [
    "CommandError",
    "Context",
    "OutputError",
    "Sink",
    "StdoutSink",
    "UsageError",
    "askpass_wanted",
    "key_name",
    "open_input",
    "open_output",
    "refuse_binary_terminal",
    "to_stdout",
]
