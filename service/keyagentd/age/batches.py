"""A payload pass, batch by batch: read in order, transform anywhere, emit in order.

stream.py describes a pass as a `Payload`: `read` fills a buffer with whole chunks plus one
byte of look-ahead (so a batch knows whether anything follows it, which decides the STREAM
final flag), `work` turns one filled batch into output (no shared state: batches may be
worked on at once, in any order), `emit` hands authenticated output on. A `Runner` decides
where that happens: `SerialRun` here, on the calling thread, one chunk per batch (what the
engine always did); the agent passes its own (keyagentd/overlap.py), which runs batches of
many chunks on several threads. The engine starts no threads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

from keyagentd.secrets import wipe

from .source import Readable

#: The largest batch `SerialRun` grows to, in chunks (1 MiB).
SERIAL_MOST: Final = 16


@dataclass(frozen=True)
class Filled:
    """What `BatchReader.read` put in a buffer: ``n`` bytes from chunk ``first`` on.

    ``more``: bytes follow the batch (its chunks are all whole and none is final).
    ``error``: reading failed after ``n`` bytes (nothing follows for sure: only the chunks
    that bytes follow within the batch are known not to be final).
    """

    first: int
    n: int
    more: bool
    error: Exception | None = None


@dataclass(frozen=True)
class Done:
    """What `work` made of a batch: ``size`` bytes of output to emit (authenticated), then
    ``error`` to raise, if any; ``end``: the batch held the final chunk."""

    size: int
    end: bool
    error: Exception | None = None


@dataclass(frozen=True)
class Payload:
    """One pass over a payload (see the module docstring). ``chunk``: input bytes per chunk;
    ``out_size(n)``: the output room ``n`` input bytes may need."""

    chunk: int
    read: Callable[[memoryview], Filled]
    work: Callable[[Filled, memoryview, memoryview], Done]
    emit: Callable[[memoryview], None]
    out_size: Callable[[int], int]


class Run(Protocol):
    """One run of a `Payload`: `run` returns the bytes emitted or raises the first error in
    stream order, after emitting everything before it."""

    def run(self) -> int: ...


#: Makes the run of a payload (a class is one): `SerialRun`, or the agent's parallel run.
Runner = Callable[[Payload], Run]


class BatchReader:
    """Reads whole chunks in order, keeping one byte of look-ahead between batches."""

    __slots__ = ("_carry", "_chunk", "_next", "_src")

    def __init__(self, src: Readable, chunk: int) -> None:
        self._src = src
        self._chunk = chunk
        self._carry = -1  # the look-ahead byte, or -1
        self._next = 0

    def read(self, buf: memoryview) -> Filled:
        """Fill ``buf`` (``k`` chunks + 1 byte); the last byte read stays for the next batch."""
        total = 0
        if self._carry >= 0:
            buf[0] = self._carry
            total = 1
        first = self._next
        self._next += (len(buf) - 1) // self._chunk
        try:
            while total < len(buf):
                got = self._src.readinto(buf[total:])
                if got == 0:
                    break
                total += got
        except Exception as exc:  # raised in stream order, after the chunks before it
            self._carry = -1
            return Filled(first, total, False, exc)
        if total < len(buf):
            self._carry = -1
            return Filled(first, total, False)
        self._carry = buf[total - 1]
        return Filled(first, total - 1, True)


def chunks_in(f: Filled, chunk: int) -> tuple[int, bool]:
    """How many chunks of a batch to work on, and whether the last of them is final."""
    if f.more:
        return f.n // chunk, False
    if f.error is not None:
        return max(0, (f.n - 1) // chunk), False  # the chunks that bytes follow
    return max(1, -(-f.n // chunk)), True  # an empty batch is an empty final chunk


class SerialRun:
    """The engine's runner, on the calling thread. Batches grow from one chunk to
    `SERIAL_MOST` (doubling): a small payload allocates little, a big one pays the
    per-batch Python once per 1 MiB (one chunk per batch cost ~8% more CPU)."""

    __slots__ = ("_p",)

    def __init__(self, payload: Payload) -> None:
        self._p = payload

    def run(self) -> int:
        p = self._p
        chunks = 1
        inb = bytearray(p.chunk + 1)
        out = bytearray(0)
        used = total = 0  # used: how much of inb was ever filled (wiped at the end)
        try:
            while True:
                filled = p.read(memoryview(inb))
                used = max(used, filled.n + 1)
                need = p.out_size(filled.n)
                if len(out) < need:
                    wipe(out)
                    out = bytearray(need)
                done = p.work(filled, memoryview(inb), memoryview(out))
                if done.size:
                    p.emit(memoryview(out)[: done.size])
                    total += done.size
                if done.error is not None:
                    raise done.error
                if done.end:
                    return total
                if chunks < SERIAL_MOST:
                    chunks *= 2
                    wipe(memoryview(inb)[:used])
                    inb, used = bytearray(chunks * p.chunk + 1), 0  # the reader keeps the carry
        finally:
            wipe(memoryview(inb)[:used])  # plaintext when encrypting; a small call reads little
            wipe(out)


class IntoRun:
    """A runner whose output goes straight into ``into``, a buffer its owner wipes (the
    agent's reply buffer for a Decrypt): no output buffer, no copy. Batches are as large as
    ``into`` allows, so a payload held in memory runs in one. ``emit`` is not called: the
    output is already in place; `run` returns its length (a partial run raises)."""

    __slots__ = ("_into", "_p")

    def __init__(self, payload: Payload, into: memoryview) -> None:
        self._p = payload
        self._into = into

    def run(self) -> int:
        p, into = self._p, self._into
        inb = bytearray(-(-len(into) // p.chunk) * p.chunk + 1)
        total = used = 0
        try:
            while True:
                filled = p.read(memoryview(inb))
                used = max(used, filled.n + 1)
                if p.out_size(filled.n) > len(into) - total:
                    raise ValueError("The output buffer is full.")
                done = p.work(filled, memoryview(inb), into[total:])
                total += done.size
                if done.error is not None:
                    raise done.error
                if done.end:
                    return total
        finally:
            wipe(memoryview(inb)[:used])  # plaintext when encrypting
