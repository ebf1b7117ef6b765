"""Wipeable secret buffers.

Python's ``bytes`` are immutable and may be copied freely, so secrets the
agent controls live in ``bytearray``s that are overwritten in place as soon as
they are no longer needed. This narrows, not closes, the window in which key
material sits in memory (the interpreter, OpenSSL and the kernel keep their
own copies); it is cheap and it makes locking mean something.
"""

from __future__ import annotations

import ctypes


def wipe(buf: bytearray | memoryview) -> None:
    """Overwrite ``buf`` with zeros in place (a memoryview cannot be resized, so no realloc)."""
    view = memoryview(buf).cast("B")
    view[:] = bytes(len(view))
    view.release()


def put(dst: bytearray, offset: int, data: bytes | bytearray | memoryview) -> None:
    """Copy ``data`` into ``dst`` at ``offset`` with no copy in between (same length: no
    realloc). ``dst[a:b] = data`` would not do: CPython's bytearray slice assignment first
    copies any source that is not a bytearray into a new bytearray (bytearray_ass_subscript
    in Objects/bytearrayobject.c) and frees it unwiped. A memoryview assigns in place."""
    with memoryview(dst) as view:
        view[offset : offset + len(data)] = data


# Our own prototype, so the process-wide ``ctypes.pythonapi`` attributes are left alone.
_bytes_buffer = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.py_object)(
    ("PyBytes_AsString", ctypes.pythonapi)
)


def scrub_bytes(data: bytes) -> None:
    """Zero an immutable ``bytes`` object in place (CPython only).

    For the rare library call that can return a secret only as ``bytes``
    (``hashlib``'s SHAKE ``digest``). Only for an object the caller has just
    received and alone references: ``bytes`` may otherwise be shared, and every
    holder assumes they never change. Empty and one-byte objects are shared
    singletons, and are left alone.
    """
    if type(data) is not bytes or len(data) < 2:
        return
    address = _bytes_buffer(data)
    if address:
        ctypes.memset(address, 0, len(data))


class PlainBuffer:
    """A writable sink of fixed capacity for plaintext the agent returns in a reply: one
    allocation (growing would leave unwiped copies behind), wiped by its owner."""

    def __init__(self, capacity: int) -> None:
        self.buf = bytearray(capacity)
        self._n = 0

    def write(self, data: bytes | memoryview, /) -> int:
        n = len(data)
        if self._n + n > len(self.buf):
            raise ValueError("PlainBuffer is full")
        put(self.buf, self._n, data)  # not a slice assignment: that leaves a copy behind
        self._n += n
        return n

    def flush(self) -> None:
        pass

    def view(self, n: int | None = None) -> memoryview:
        """The first ``n`` bytes (default: what `write` put in)."""
        return memoryview(self.buf)[: self._n if n is None else n]
