"""Secrets passed as file descriptors: the `<secret>-fd` options (docs/DECISIONS.md).

A passphrase or identity in a message body is visible to every same-user bus monitor. Every
method that takes one also accepts it as an `h` option named after it plus ``-fd``
(``passphrase-fd``, ``identity-fd``, ``old-passphrase-fd``, ``new-passphrase-fd``): the
agent reads the fd (a pipe's read end) to EOF, drops one trailing newline, at most 4 KiB.
``output-fd`` (Export) is where the agent writes instead of replying.

Option fds belong to the call: `operation` (oplog.py) closes them when the method ends,
whatever happened; readers work on a duplicate, so nothing here closes them twice.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final

from dbus_fast import Variant

from keyagent.protocol import MAX_SECRET_BYTES, BadPassphrase, InvalidArgs, TooLarge
from keyagentd.bus import options as opts
from keyagentd.bus.fdpeer import check_fd_peers
from keyagentd.bus.streams import FdSink, FdSource
from keyagentd.secrets import wipe

if TYPE_CHECKING:
    from keyagentd.bus.service import Agent

MAX_PASSPHRASE_BYTES: Final = MAX_SECRET_BYTES
PASSPHRASE_READ_TIMEOUT: Final = 30.0
FD_SUFFIX: Final = "-fd"


def fd_options(*secrets: str) -> dict[str, str]:
    """The schema entries for the fd forms of ``secrets``."""
    return {secret + FD_SUFFIX: "h" for secret in secrets}


def option_fds(args: Iterable[object]) -> list[int]:
    """The fds that `h` values in a call's top-level option dictionaries name."""
    fds: list[int] = []
    for arg in args:
        if isinstance(arg, dict):
            for value in arg.values():
                if isinstance(value, Variant) and value.signature == "h":
                    fd: Any = value.value
                    if isinstance(fd, int) and fd >= 0:
                        fds.append(fd)
    return fds


def read_passphrase(fd: int, cancel: threading.Event) -> str:
    """The text written to ``fd`` up to EOF, minus one trailing newline."""
    src = FdSource(fd, cancel, timeout=PASSPHRASE_READ_TIMEOUT)
    buf = bytearray(MAX_PASSPHRASE_BYTES + 1)
    view = memoryview(buf)
    try:
        total = 0
        while total < len(buf):
            n = src.readinto(view[total:])
            if n == 0:
                break
            total += n
        if total > MAX_PASSPHRASE_BYTES:
            raise TooLarge(f"A passphrase is at most {MAX_PASSPHRASE_BYTES} bytes.")
        end = total - 1 if total and buf[total - 1] == 0x0A else total
        try:
            return bytes(view[:end]).decode("utf-8")
        except UnicodeDecodeError:
            raise BadPassphrase("The passphrase is not valid UTF-8.") from None
    finally:
        view.release()
        wipe(buf)


async def secret_option(agent: Agent, parsed: opts.Options, name: str) -> str | None:
    """The secret option ``name``, or what its ``-fd`` option's fd holds (not both)."""
    key = name + FD_SUFFIX
    if key not in parsed:
        return parsed.text(name)
    if name in parsed:
        raise InvalidArgs(f"Give the {name} or the {key} option, not both.")
    return await agent.read_fd(_dup(parsed, key), read_passphrase)


async def secret_arg(agent: Agent, parsed: opts.Options, name: str, inline: str) -> str:
    """The secret argument ``name`` (``inline``), or its ``-fd`` option's (then ``inline``
    must be empty)."""
    key = name + FD_SUFFIX
    if key not in parsed:
        return inline
    if inline:
        raise InvalidArgs(f"Give the {name} argument or the {key} option, not both.")
    return await agent.read_fd(_dup(parsed, key), read_passphrase)


async def write_output(agent: Agent, parsed: opts.Options, data: bytes) -> None:
    """Write ``data`` to the caller's ``output-fd`` (on a duplicate, in a stream thread)."""

    def job(dup: int, cancel: threading.Event) -> None:
        sink, view = FdSink(dup, cancel), memoryview(data)
        while view:
            view = view[sink.write(view) :]

    await agent.read_fd(_dup(parsed, "output-fd"), job)


def _dup(parsed: opts.Options, key: str) -> int:
    """A duplicate of option ``key``'s fd for a reader that closes it; refused if it is a
    socket that may lead elsewhere (fdpeer.py)."""
    fd = parsed.number(key)
    if fd is None:
        raise InvalidArgs(f"The {key} option does not name a file descriptor.")
    check_fd_peers([fd])
    try:
        return os.dup(fd)
    except OSError:
        raise InvalidArgs(f"The {key} option does not name an open file.") from None
