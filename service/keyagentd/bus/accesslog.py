"""The `AccessLog` signal: one per key-using or key-changing operation, never a secret.

oplog.py calls `AccessLog.on_operation(name, key, outcome)` as each operation ends, on the
event loop and inside the method's context, so `CURRENT_CALLER` still names the caller. The
signal carries the operation, the key ("" when none), the caller's pid as the bus daemon
reported it, the caller's executable (``/proc/PID/exe``) and the result (``ok`` or the
error's short name).

The executable is read once per caller: a unique bus name is never reused and belongs to one
process, so it is cached per name (a small LRU, also dropped when the name leaves the bus).
The signal is sent after the method's reply (two `call_soon` hops, as oplog does), so a
caller never waits for it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

from keyagentd.bus.gate import CURRENT_CALLER
from keyagentd.hardening import caller_executable
from keyagentd.policy import AccessRecord, access_record

log = logging.getLogger(__name__)

#: How many callers' executables are remembered.
CACHE_SIZE: Final = 256

Emit = Callable[[AccessRecord], None]


class ExecutableCache:
    """``/proc/PID/exe`` per unique bus name, least recently used first out."""

    def __init__(
        self, size: int = CACHE_SIZE, lookup: Callable[[int], str | None] = caller_executable
    ) -> None:
        self._size = size
        self._lookup = lookup
        self._entries: OrderedDict[str, str] = OrderedDict()

    def get(self, sender: str, pid: int) -> str:
        """The executable of ``sender`` (pid ``pid``), or "" when it cannot be read."""
        exe = self._entries.get(sender)
        if exe is not None:
            self._entries.move_to_end(sender)
            return exe
        exe = self._lookup(pid) or ""
        if sender:
            self._entries[sender] = exe
            if len(self._entries) > self._size:
                self._entries.popitem(last=False)
        return exe

    def forget(self, sender: str) -> None:
        self._entries.pop(sender, None)

    def __len__(self) -> int:
        return len(self._entries)


class AccessLog:
    """Turns finished operations into records and hands them to ``emit`` (the signal)."""

    def __init__(self, emit: Emit, cache: ExecutableCache | None = None) -> None:
        self._emit = emit
        self.executables = ExecutableCache() if cache is None else cache

    def on_operation(self, operation: str, key: str, outcome: str) -> None:
        """oplog's hook: build the record now (the caller is known), send it soon."""
        caller = CURRENT_CALLER.get()
        pid = caller.pid if caller is not None and caller.pid is not None else 0
        sender = caller.sender if caller is not None else ""
        exe = self.executables.get(sender, pid) if pid else ""
        if caller is not None and caller.via:
            exe = f"{exe} via {caller.via}"  # age-plugin-keyagent acting for exe (auth.py)
        # oplog says "error" for an unexpected exception; the caller saw Failed.
        result = "Failed" if outcome == "error" else outcome
        record = access_record(operation, key, pid, result, executable=exe)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on the event loop (unit tests): send it now
            self._send(record)
            return
        loop.call_soon(loop.call_soon, self._send, record)

    def forget(self, sender: str) -> None:
        """``sender`` left the bus."""
        self.executables.forget(sender)

    def _send(self, record: AccessRecord) -> None:
        try:
            self._emit(record)
        except Exception:  # a log signal must never break an operation or the loop
            log.exception("could not send the AccessLog signal")
