"""Crash-safe small-file writes in one directory.

Every write goes to a temporary file in the target directory (created with
``O_CREAT|O_EXCL``, mode 0600), is written in full and fsynced, then moved into
place; the directory is fsynced last so the new name is durable. A crash at any
step leaves the old file or the new one, never neither and never a partial
file; the only debris is a temporary file whose name starts with ``TMP_PREFIX``,
which ``remove_leftovers`` clears (the keystore calls it on start).

``create`` never replaces an existing file: it uses ``link(2)``, which fails
with ``EEXIST`` atomically, so two concurrent creates cannot clobber each
other. ``replace`` uses ``rename(2)``.

The system calls go through a ``FileOps`` object so tests can fail or "crash"
at each step.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Final

TMP_PREFIX: Final = ".keyagent-tmp-"

log = logging.getLogger(__name__)

_TMP_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
#: link(2) errors that mean "this filesystem has no hard links", not "the name exists".
_NO_LINK_ERRNOS: Final = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV})


class FileOps:
    """The system calls an ``AtomicWriter`` makes, one method each (tests override them)."""

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        return os.open(path, flags, mode)

    def write(self, fd: int, data: memoryview) -> int:
        return os.write(fd, data)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def close(self, fd: int) -> None:
        os.close(fd)

    def link(self, src: str, dst: str) -> None:
        os.link(src, dst, follow_symlinks=False)

    def rename(self, src: str, dst: str) -> None:
        os.rename(src, dst)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def exists(self, path: str) -> bool:
        return os.path.lexists(path)


class AtomicWriter:
    """Atomic create / replace / remove of files inside ``directory``."""

    def __init__(
        self,
        directory: Path,
        *,
        ops: FileOps | None = None,
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.directory = directory
        self.ops = ops if ops is not None else FileOps()
        self._rng = rng

    def create(self, name: str, data: bytes) -> None:
        """Write a new file ``name``; ``FileExistsError`` if it exists (nothing is replaced)."""
        final = str(self.directory / name)
        tmp = self._write_temp(data)
        try:
            try:
                self.ops.link(tmp, final)
            except FileExistsError:
                raise
            except OSError as exc:
                if exc.errno not in _NO_LINK_ERRNOS:
                    raise
                # No hard links here (some FUSE/network filesystems): check then rename.
                # The agent is the only writer (one bus name) and serialises its own
                # writes, so the gap between the check and the rename is not contended.
                if self.ops.exists(final):
                    raise FileExistsError(errno.EEXIST, "file exists", final) from None
                self.ops.rename(tmp, final)
                tmp = ""
        except BaseException:
            if tmp:
                self._discard(tmp)
            raise
        if tmp:
            # Both names point at the complete file now; a crash here leaves only debris.
            self._discard(tmp)
        self._sync_directory()

    def replace(self, name: str, data: bytes) -> None:
        """Atomically replace (or create) file ``name`` with ``data``."""
        final = str(self.directory / name)
        tmp = self._write_temp(data)
        try:
            self.ops.rename(tmp, final)
        except BaseException:
            self._discard(tmp)
            raise
        self._sync_directory()

    def remove(self, name: str) -> None:
        """Delete file ``name`` durably; ``FileNotFoundError`` if absent."""
        self.ops.unlink(str(self.directory / name))
        self._sync_directory()

    def remove_leftovers(self) -> list[str]:
        """Delete temporary files left by interrupted writes; return their names."""
        removed = []
        for entry in os.scandir(self.directory):
            if entry.name.startswith(TMP_PREFIX):
                with contextlib.suppress(FileNotFoundError):
                    self.ops.unlink(entry.path)
                    removed.append(entry.name)
        return sorted(removed)

    def _write_temp(self, data: bytes) -> str:
        tmp = str(self.directory / (TMP_PREFIX + self._rng(8).hex()))
        fd = self.ops.open(tmp, _TMP_FLAGS, 0o600)
        open_fd = True
        try:
            view = memoryview(data)
            while view:
                view = view[self.ops.write(fd, view) :]
            self.ops.fsync(fd)
            open_fd = False
            self.ops.close(fd)
        except BaseException:
            if open_fd:
                with contextlib.suppress(OSError):
                    self.ops.close(fd)
            self._discard(tmp)
            raise
        return tmp

    def _discard(self, path: str) -> None:
        # Best effort: if this fails too, remove_leftovers() collects it later.
        with contextlib.suppress(OSError):
            self.ops.unlink(path)

    def _sync_directory(self) -> None:
        # Runs after the change is visible: failing here would report a write that
        # happened as one that did not (a changed passphrase the user thinks unchanged),
        # so an error only costs durability and is logged, not raised.
        try:
            fd = self.ops.open(str(self.directory), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, 0)
            try:
                self.ops.fsync(fd)
            finally:
                self.ops.close(fd)
        except OSError as exc:
            log.warning("Could not fsync directory %s: %s", self.directory, exc.strerror)
