"""Wipeable secret buffers.

Python's ``bytes`` are immutable and may be copied freely, so secrets the
agent controls live in ``bytearray``s that are overwritten in place as soon as
they are no longer needed. This narrows, not closes, the window in which key
material sits in memory (the interpreter, OpenSSL and the kernel keep their
own copies); it is cheap and it makes locking mean something.
"""

from __future__ import annotations


def wipe(buf: bytearray | memoryview) -> None:
    """Overwrite ``buf`` with zeros in place (a memoryview cannot be resized, so no realloc)."""
    view = memoryview(buf).cast("B")
    view[:] = bytes(len(view))
    view.release()
