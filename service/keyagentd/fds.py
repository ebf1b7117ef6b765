"""The fds a method call brought, owned by one object from arrival until taken or closed.

D-Bus sends fds beside the body; an ``h`` argument is an index into them. The dispatcher
wraps a call's fds in `ReceivedFds` before anything else runs; a handler `take`s the ones
its ``h`` arguments name (then they are its to close), and the dispatcher closes the rest
when the handler ends, whatever happened: unused extras, and all of them on an error.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import cast

from keyagent.protocol import InvalidArgs

log = logging.getLogger(__name__)


class ReceivedFds:
    """A call's received fds; each is closed here unless a handler took it."""

    __slots__ = ("_fds", "_taken")

    def __init__(self, fds: Sequence[int]) -> None:
        self._fds = list(fds)
        self._taken: set[int] = set()

    def __len__(self) -> int:
        return len(self._fds)

    def get(self, index: object) -> int:
        """The fd an ``h`` argument names, still owned here (to look at, not to keep)."""
        if not isinstance(index, int) or not 0 <= index < len(self._fds):
            raise InvalidArgs("A file descriptor argument names no fd sent with the call.")
        return self._fds[index]

    def take(self, index: object) -> int:
        """The fd an ``h`` argument names; the caller owns (and closes) it from now on.
        The same index taken twice is the same fd, owned once."""
        fd = self.get(index)
        self._taken.add(cast(int, index))
        return fd

    def close(self) -> None:
        """Close every fd not taken (idempotent)."""
        if not self._fds:
            return  # most calls carry none
        rest = {fd for i, fd in enumerate(self._fds) if i not in self._taken}
        self._fds, self._taken = [], set()
        close_fds(rest)


def close_fds(fds: Sequence[int] | set[int]) -> None:
    for fd in set(fds):
        try:
            os.close(fd)
        except OSError:
            log.debug("fd %d was already closed", fd)
