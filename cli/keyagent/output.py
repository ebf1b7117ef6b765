"""Where results go: complete files only (temporary file, fsync, rename), and progress on stderr."""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Final, TextIO

#: Inputs larger than this (or of unknown size) get a progress bar on a terminal.
PROGRESS_THRESHOLD: Final = 16 * 1024 * 1024


class OutputError(Exception):
    """The output file could not be created or completed (text names the file, not data)."""


class AtomicOutput:
    """An output file that appears only complete.

    The data is written to a temporary file in the target's directory (so the final rename
    stays on one filesystem); :meth:`commit` fsyncs and renames it over the target. Leaving the
    ``with`` block without a commit removes the temporary file: an existing target is untouched.
    ``private`` output (plaintext, key exports) is created 0600, other output 0666 less umask.
    """

    def __init__(self, path: str | os.PathLike[str], *, private: bool) -> None:
        self.path = Path(path)
        self.private = private
        self.fd = -1
        self.tmp: Path | None = None
        self.committed = False

    def __enter__(self) -> AtomicOutput:
        directory = self.path.parent
        if self.path.is_dir():
            raise OutputError(f"Cannot write to '{self.path}': it is a directory.")
        try:
            fd, name = tempfile.mkstemp(dir=directory, prefix=f".{self.path.name}.", suffix=".tmp")
        except OSError as e:
            raise OutputError(f"Cannot create a file in '{directory}': {e.strerror}.") from None
        self.fd, self.tmp = fd, Path(name)
        if not self.private:  # mkstemp makes 0600; public output follows the umask like age
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(fd, 0o666 & ~umask)
        return self

    def reset(self) -> None:
        """Empty the file again (before a retry)."""
        os.ftruncate(self.fd, 0)
        os.lseek(self.fd, 0, os.SEEK_SET)

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]

    def commit(self) -> None:
        assert self.tmp is not None
        try:
            os.fsync(self.fd)
            os.replace(self.tmp, self.path)
        except OSError as e:
            raise OutputError(f"Cannot write '{self.path}': {e.strerror}.") from None
        self.committed = True
        with contextlib.suppress(OSError):  # the rename's durability; best effort
            dfd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if not self.committed and self.tmp is not None:
            with contextlib.suppress(OSError):
                self.tmp.unlink()


def input_size(fd: int) -> int | None:
    """The size of a regular file, None for pipes, terminals and sockets."""
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def fd_position(fd: int) -> int | None:
    """The file offset (shared with the agent's copy of the fd), None when not seekable."""
    try:
        return os.lseek(fd, 0, os.SEEK_CUR)
    except OSError:
        return None


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _clock(seconds: float) -> str:
    s = int(seconds)
    return (
        f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
    )


class Progress:
    """A one-line progress display on a terminal: bytes, rate, ETA (when the total is known).

    ``done`` is asked for the bytes processed so far; it may return None when that is unknown.
    """

    def __init__(
        self,
        done: Callable[[], int | None],
        total: int | None,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._done = done
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self._clock = clock
        self.start = self._now()
        self.shown = False

    def _now(self) -> float:
        return self._clock()

    def render(self, done: int | None, elapsed: float) -> str:
        parts = []
        if done is not None:
            rate = done / elapsed if elapsed > 0 else 0.0
            if self.total:
                frac = min(1.0, done / self.total)
                filled = int(frac * 20)
                parts.append(f"[{'#' * filled}{'.' * (20 - filled)}] {frac * 100:3.0f}%")
                parts.append(f"{_human(done)} / {_human(self.total)}")
            else:
                parts.append(_human(done))
            parts.append(f"{_human(rate)}/s")
            if self.total and rate > 0 and done < self.total:
                parts.append(f"ETA {_clock((self.total - done) / rate)}")
        parts.append(_clock(elapsed))
        return "  ".join(parts)

    def __call__(self) -> None:
        done = self._done()
        line = self.render(done, self._now() - self.start)
        self.stream.write(f"\r\x1b[K{line}")
        self.stream.flush()
        self.shown = True

    def finish(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
