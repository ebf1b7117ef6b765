"""Minimal byte sources for streaming: pipes and sockets welcome, no seeking."""

from __future__ import annotations

from typing import Any, Protocol


class Readable(Protocol):
    def readinto(self, buf: memoryview, /) -> int:
        """Read up to ``len(buf)`` bytes (at least one unless at EOF); 0 means EOF."""
        ...


class RawSource:
    """Adapts a binary file object, or anything with ``readinto`` or ``read``.

    Uses ``readinto1`` when there is one, so header parsing never waits for
    more than the peer has sent.
    """

    def __init__(self, f: Any) -> None:
        self._readinto = getattr(f, "readinto1", None) or getattr(f, "readinto", None)
        self._read = getattr(f, "read", None)
        if self._readinto is None and self._read is None:
            raise TypeError("the source needs a readinto or read method")

    def readinto(self, buf: memoryview, /) -> int:
        if self._readinto is not None:
            n = self._readinto(buf)
        else:
            assert self._read is not None
            data = self._read(len(buf))
            n = None if data is None else len(data)
            if data:
                buf[: len(data)] = data
        if n is None:
            raise BlockingIOError("non-blocking source would block")
        return int(n)


class PrefixedSource:
    """Serves ``prefix`` first, then ``inner``."""

    def __init__(self, prefix: bytes | memoryview, inner: Readable) -> None:
        self._prefix = memoryview(prefix)
        self._inner = inner

    def readinto(self, buf: memoryview, /) -> int:
        if self._prefix:
            n = min(len(buf), len(self._prefix))
            buf[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        return self._inner.readinto(buf)


def read_full(src: Readable, buf: memoryview) -> int:
    """Fill ``buf`` unless EOF comes first; returns the byte count (short only at EOF)."""
    total = 0
    size = len(buf)
    while total < size:
        n = src.readinto(buf[total:])
        if n == 0:
            break
        total += n
    return total


def write_all(dst: Any, data: memoryview | bytes) -> None:
    """Write everything, looping on the short writes raw files and sockets may do."""
    mv = memoryview(data)
    while mv:
        n = dst.write(mv)
        if n is None:
            raise BlockingIOError("non-blocking destination would block")
        if n >= len(mv):
            return
        mv = mv[n:]
