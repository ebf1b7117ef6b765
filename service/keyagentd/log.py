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
        prefix = self.prefix(record.levelno)
        return "\n".join(prefix + line for line in super().format(record).splitlines())

    @staticmethod
    def prefix(level: int) -> str:
        """What comes before a one-line message of ``level``."""
        return f"<{syslog_priority(level)}>"


class PlainFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{self.prefix(record.levelno)}{super().format(record)}"

    @staticmethod
    def prefix(level: int) -> str:
        return f"keyagentd: {logging.getLevelName(level).lower()}: "


#: The handler `setup` installed, while the logging setup is still its own.
_handler: logging.StreamHandler[TextIO] | None = None
#: A formatter and its INFO prefix (`info_line`'s, remembered).
_info_prefix: tuple[logging.Formatter | None, str] = (None, "")


def info_line(logger: logging.Logger, line: str) -> None:
    """Log ``line`` (one line, no arguments to format) at INFO, as ``logger.info(line)`` would.

    For the one line per operation (audit.py): while `setup`'s handler is the only one and
    nothing filters, the line is written as that handler would write it without building a
    LogRecord (a third of a small Decrypt's logging cost went to the record and finding the
    caller's frame); otherwise, and on any error, through ``logger.info``.
    """
    handler = _handler
    if (
        handler is None
        or not logger.isEnabledFor(logging.INFO)
        or logger.handlers
        or logger.filters
        or not logger.propagate
        or logging.root.handlers != [handler]
        or logging.root.filters
        or handler.filters
        or handler.level > logging.INFO
    ):
        logger.info("%s", line)
        return
    global _info_prefix
    formatter, prefix = handler.formatter, _info_prefix[1]
    if _info_prefix[0] is not formatter:  # worked out once per formatter, not per line
        assert isinstance(formatter, JournalFormatter | PlainFormatter)
        prefix = formatter.prefix(logging.INFO)
        _info_prefix = (formatter, prefix)
    text = prefix + line + handler.terminator
    lock = handler.lock  # what handler.acquire() takes, without its two calls
    assert lock is not None
    with lock:
        try:
            handler.stream.write(text)
            handler.stream.flush()
            written = True
        except Exception:  # logging reports its own errors its own way: below
            written = False
    if not written:
        logger.info("%s", line)


def setup(stream: TextIO, *, verbose: bool, env: Mapping[str, str] | None = None) -> None:
    """Configure the root logger once, for the whole process."""
    global _handler
    env = os.environ if env is None else env
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JournalFormatter() if journal_stream(stream, env) else PlainFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    _handler = handler
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    if not verbose:
        logging.getLogger("dbus_fast").setLevel(logging.WARNING)
