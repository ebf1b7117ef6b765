"""Failed-unlock counters on disk, next to the key files (`NAME.failures`).

Any program of the user can kill the agent; a lock-out kept only in memory would end with
it. The count is written before a guess is checked (ratelimit.py), crash-safe through
atomic.py (temp file, fsync, rename), so a kill at any moment keeps every attempt that
was made. A right passphrase removes the file. The file holds two numbers: the failures
and the wall-clock time of the last one (the quiet period runs across restarts).
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path
from typing import Final

from keyagent.protocol import is_valid_key_name
from keyagentd.atomic import AtomicWriter

log = logging.getLogger(__name__)

SUFFIX: Final = ".failures"
_MAX_SIZE: Final = 64


class FailureFiles:
    """`FailureLimiter`'s store: one small file per key in the keystore directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._writer = AtomicWriter(root)

    def _name(self, key: str) -> str:
        if not is_valid_key_name(key):
            raise ValueError("not a key name")
        return key + SUFFIX

    def load(self, key: str) -> tuple[int, float] | None:
        """(failures, time of the last failure), or None when none are recorded. A damaged
        file reads as the lock-out (the safe side) and is logged."""
        path = self.root / self._name(key)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("Cannot read %s: %s", path, exc.strerror)
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ValueError("not a regular file")
            count, last = os.read(fd, _MAX_SIZE + 1).decode("ascii").split()
            failures, when = int(count), float(last)
            if failures < 0 or when != when:  # negative or NaN
                raise ValueError("out of range")
            return failures, when
        except (ValueError, UnicodeDecodeError, OSError):
            log.warning("Damaged failure counter %s: treated as a lock-out", path)
            return 1 << 20, float("inf")
        finally:
            os.close(fd)

    def save(self, key: str, failures: int, last_failure: float) -> None:
        """Record the count durably (a zero count removes the file)."""
        if failures <= 0:
            self.forget(key)
            return
        self._writer.replace(self._name(key), f"{failures} {last_failure!r}\n".encode("ascii"))

    def forget(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._writer.remove(self._name(key))
