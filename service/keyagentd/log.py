"""Where keyagentd's log lines go and how they look.

On a terminal or a plain pipe: ``keyagentd: LEVEL: message``, like the command line's errors.
Under systemd (``$JOURNAL_STREAM`` names the very file stderr is): ``<N>message`` on every line,
N the syslog priority, which journald reads and strips; it adds ``keyagentd[PID]:`` itself.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Final, TextIO

#: Python levels to syslog priorities (sd-daemon(3)): err, warning, info, debug.
PRIORITY: Final = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6}
DEBUG_PRIORITY: Final = 7


def syslog_priority(level: int) -> int:
    """The priority of the nearest standard level at or below ``level``."""
    for threshold, priority in sorted(PRIORITY.items(), reverse=True):
        if level >= threshold:
            return priority
    return DEBUG_PRIORITY


def journal_stream(stream: TextIO, env: Mapping[str, str]) -> bool:
    """True when ``stream`` is the journal's stream: ``$JOURNAL_STREAM`` is its ``DEV:INODE``.

    A child that merely inherited the variable has another stderr and so gets plain lines.
    """
    dev, sep, ino = env.get("JOURNAL_STREAM", "").partition(":")
    if not sep:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return False
    return (dev, ino) == (str(st.st_dev), str(st.st_ino))


class JournalFormatter(logging.Formatter):
    """``<N>`` before each line, so a traceback's lines keep the record's priority."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines())


class PlainFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"keyagentd: {record.levelname.lower()}: {super().format(record)}"


def setup(stream: TextIO, *, verbose: bool, env: Mapping[str, str] | None = None) -> None:
    """Configure the root logger once, for the whole process."""
    env = os.environ if env is None else env
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JournalFormatter() if journal_stream(stream, env) else PlainFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    if not verbose:
        logging.getLogger("dbus_fast").setLevel(logging.WARNING)
