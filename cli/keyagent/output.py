"""Where results go: complete files only (unnamed file, fsync, link + rename), and progress on
stderr.

Imported on every `encrypt`/`decrypt`: no pathlib, no tempfile on this path (start-up time).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
import time

TYPE_CHECKING = False  # `typing` costs milliseconds at every start of the command
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType
    from typing import Final, TextIO

#: Inputs larger than this (or of unknown size) get a progress bar on a terminal.
PROGRESS_THRESHOLD: Final = 16 * 1024 * 1024

#: open(O_TMPFILE) errors that mean "not here" (filesystem or kernel): use a named file instead.
_NO_TMPFILE: Final = frozenset({errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOSYS})


class OutputError(Exception):
    """The output file could not be created or completed (text names the file, not data)."""


def _tmp_name(directory: str, base: str) -> str:
    return os.path.join(directory, f".{base}.{os.urandom(6).hex()}.tmp")


class _Output:
    """What every output shares: leaving its ``with`` block closes it."""

    def close(self) -> None:
        raise NotImplementedError

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AtomicOutput(_Output):
    """An output file that appears only complete.

    The data goes to an unnamed file (``O_TMPFILE``) in the target's directory, so a killed
    command leaves nothing behind; :meth:`commit` fsyncs it, links it in under a fresh
    temporary name and renames that over the target (one filesystem, atomic). Where the
    filesystem has no ``O_TMPFILE``, a named temporary file is used instead (removed on any
    failure, but left behind by ``kill -9``). Leaving the ``with`` block without a commit
    leaves an existing target untouched. ``private`` output (plaintext, key exports) is
    created 0600, other output 0666 less umask.
    """

    def __init__(self, path: str | os.PathLike[str], *, private: bool) -> None:
        self.path = os.fspath(path)
        self.private = private
        self.fd = -1
        #: The named temporary file (fallback only; None while the file has no name).
        self.tmp: str | None = None
        self.committed = False

    @property
    def directory(self) -> str:
        return os.path.dirname(self.path) or "."

    def __enter__(self) -> AtomicOutput:
        if os.path.isdir(self.path):
            raise OutputError(f"Cannot write to '{self.path}': it is a directory.")
        mode = 0o600 if self.private else 0o666  # the umask applies
        try:
            self.fd = self._open_unnamed(mode)
        except OSError as e:
            if e.errno not in _NO_TMPFILE:
                raise OutputError(
                    f"Cannot create a file in '{self.directory}': {e.strerror}."
                ) from None
            self.fd = self._open_named(mode)
        return self

    def _open_unnamed(self, mode: int) -> int:
        fd = os.open(self.directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, mode)
        try:
            os.stat(f"/proc/self/fd/{fd}")  # commit links through /proc: it must be there
        except OSError:
            os.close(fd)
            raise OSError(errno.EOPNOTSUPP, "no /proc/self/fd") from None
        return fd

    def _open_named(self, mode: int) -> int:
        base = os.path.basename(self.path)
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        for _ in range(100):
            name = _tmp_name(self.directory, base)
            try:
                fd = os.open(name, flags, mode)
            except FileExistsError:
                continue
            except OSError as e:
                raise OutputError(
                    f"Cannot create a file in '{self.directory}': {e.strerror}."
                ) from None
            self.tmp = name
            return fd
        raise OutputError(f"Cannot create a file in '{self.directory}': too many names taken.")

    def reset(self) -> None:
        """Empty the file again (before a retry)."""
        os.ftruncate(self.fd, 0)
        os.lseek(self.fd, 0, os.SEEK_SET)

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def write(self, data: bytes) -> None:
        AtomicOutput._write_fd(self.fd, data)

    def _link(self, dfd: int) -> None:
        """Give the unnamed file a temporary name next to the target (``dfd``: its directory)."""
        base = os.path.basename(self.path)
        # linkat(AT_EMPTY_PATH) needs CAP_DAC_READ_SEARCH; linkat(AT_SYMLINK_FOLLOW) of the
        # /proc link does not. (os.link only calls linkat, not link, when given a dir fd.)
        src = f"/proc/self/fd/{self.fd}"
        for _ in range(100):
            name = _tmp_name(self.directory, base)
            try:
                os.link(src, os.path.basename(name), dst_dir_fd=dfd, follow_symlinks=True)
            except FileExistsError:
                continue
            self.tmp = name
            return
        raise OSError(errno.EEXIST, "too many temporary names taken")

    def _copy_to_named(self) -> None:
        """The link failed (an unusual /proc): copy the data to a named temporary file."""
        fd = self._open_named(0o600 if self.private else 0o666)
        try:
            offset = 0
            while chunk := os.pread(self.fd, 1 << 20, offset):
                AtomicOutput._write_fd(fd, chunk)
                offset += len(chunk)
            os.fsync(fd)
        finally:
            os.close(fd)

    @staticmethod
    def _write_fd(fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]

    def commit(self) -> None:
        try:
            os.fsync(self.fd)
            dfd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise OutputError(f"Cannot write '{self.path}': {e.strerror}.") from None
        try:
            if self.tmp is None:
                try:
                    self._link(dfd)
                except OSError:
                    self._copy_to_named()
            assert self.tmp is not None
            os.replace(self.tmp, self.path)
            self.committed = True
            with contextlib.suppress(OSError):  # the rename's durability; best effort
                os.fsync(dfd)
        except OSError as e:
            raise OutputError(f"Cannot write '{self.path}': {e.strerror}.") from None
        finally:
            os.close(dfd)

    def close(self) -> None:
        """Close the file; without a commit, remove the named temporary file."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if not self.committed and self.tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.tmp)


#: Names of fds we already hold: written through that fd, as a shell would.
_FD_DIRS: Final = ("/dev/fd/", "/proc/self/fd/")
_STD_NAMES: Final = {"/dev/stdout": 1, "/dev/stderr": 2}


def named_fd(path: str) -> int | None:
    """The fd that ``path`` names (/dev/stdout, /dev/fd/N, /proc/self/fd/N), else None."""
    if path in _STD_NAMES:
        return _STD_NAMES[path]
    for prefix in _FD_DIRS:
        rest = path.removeprefix(prefix)
        if rest != path and rest.isdigit():
            return int(rest)
    return None


def is_special(path: str) -> bool:
    """Whether ``path`` exists and is neither a regular file nor a directory (a character or
    block device, a FIFO, a socket): written into directly, never replaced."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


class SpecialOutput(_Output):
    """Output into an existing device or FIFO (or an fd we hold), like age: opened for
    writing, never created, renamed or truncated to a regular file. What was written before
    an error stays written: such a target cannot be replaced as a whole."""

    def __init__(self, path: str | None = None, fd: int = -1) -> None:
        self.path = path
        self.fd = fd
        self._own = path is not None

    def __enter__(self) -> SpecialOutput:
        if self.path is not None:
            try:
                self.fd = os.open(self.path, os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC)
            except OSError as e:
                raise OutputError(f"Cannot write '{self.path}': {e.strerror}.") from None
        elif self.fd == 1:
            sys.stdout.flush()
        return self

    def close(self) -> None:
        """Close the fd if this output opened it (an fd we were given stays open)."""
        if self._own and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def reset(self) -> None:
        """Nothing to undo: retries happen only after header errors, before any output."""

    def size(self) -> int | None:
        st = os.fstat(self.fd)
        return st.st_size if stat.S_ISREG(st.st_mode) else None

    def write(self, data: bytes) -> None:
        try:
            AtomicOutput._write_fd(self.fd, data)
        except OSError as e:
            raise OutputError(f"Cannot write '{self.path or self.fd}': {e.strerror}.") from None

    def commit(self) -> None:
        return None


class StdoutSink(SpecialOutput):
    """Output to stdout: written in place (the agent gets fd 1), through ``sys.stdout`` so
    it stays in order with anything printed there."""

    def __init__(self) -> None:
        super().__init__(fd=1)

    def write(self, data: bytes) -> None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()


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
