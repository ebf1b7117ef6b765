"""The audit record of each operation: one log line and one `AccessLog` signal, never a secret.

The dispatcher (bus/dispatch.py) builds the record (`Audit.access`) as each operation's
reply has gone out, with the checked caller, sends the signal, then writes the line
(`Audit.log`, through `log.info_line`: no LogRecord per operation). The signal carries the
operation, the key ("" when none), the caller's pid as the bus daemon reported it, the
caller's executable (``/proc/PID/exe``) and the result (``ok`` or the error's short name).
No D-Bus types here: ``emit`` sends it.

The executable is read once per caller: a unique bus name is never reused and belongs to one
process, so it is cached per name (a small LRU, also dropped when the name leaves the bus).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

from keyagentd.auth import Caller
from keyagentd.hardening import caller_executable, sanitize
from keyagentd.log import info_line
from keyagentd.policy import AccessRecord, access_record

log = logging.getLogger(__name__)
#: One line per operation (what, pid, key, outcome): the operations log.
ops_log = logging.getLogger("keyagentd.ops")

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


class Audit:
    """One record per finished operation: a log line, and `AccessRecord` to ``emit`` (the
    AccessLog signal). The dispatcher calls `access` right after the reply went out, with
    the caller it checked (nothing here is ambient), and `log` once the signal is sent too."""

    def __init__(self, emit: Emit | None = None, cache: ExecutableCache | None = None) -> None:
        self._emit = emit
        self.executables = ExecutableCache() if cache is None else cache

    def record(self, operation: str, key: str, caller: Caller | None, outcome: str) -> AccessRecord:
        """``outcome``: "ok", an error's short name, or "error" for an unexpected exception
        (the caller saw Failed). The record, handed to ``emit``, and its log line."""
        record = self.access(operation, key, caller, outcome)
        self.log(record, outcome)
        return record

    def access(self, operation: str, key: str, caller: Caller | None, outcome: str) -> AccessRecord:
        """The record alone (handed to ``emit``), without its log line (`log`)."""
        pid = caller.pid if caller is not None and caller.pid is not None else 0
        key = sanitize(key, 4096)  # names are checked before; whatever is logged is escaped
        sender = caller.sender if caller is not None else ""
        exe = self.executables.get(sender, pid) if pid else ""
        if caller is not None and caller.via:
            exe = f"{exe} via {caller.via}"  # age-plugin-keyagent acting for exe (auth.py)
        result = "Failed" if outcome == "error" else outcome
        record = access_record(operation, key, pid, result, executable=exe)
        if self._emit is not None:
            try:
                self._emit(record)
            except Exception:  # a log signal must never break an operation or the loop
                log.exception("could not send the AccessLog signal")
        return record

    @staticmethod
    def log(record: AccessRecord, outcome: str) -> None:
        """The operations log line of ``record`` (``outcome`` as `record` takes it)."""
        if ops_log.isEnabledFor(logging.INFO):
            pid, key = record.pid or "-", record.key or "-"
            info_line(ops_log, f"{record.operation} pid={pid} key={key}: {outcome}")

    def known(self, caller: Caller) -> None:
        """A new caller: its executable read now, not after its first reply (a short-lived
        caller, gdbus or dbus-send, may have exited by then and be logged without one)."""
        if caller.pid:
            self.executables.get(caller.sender, caller.pid)

    def forget(self, sender: str) -> None:
        """``sender`` left the bus."""
        self.executables.forget(sender)
