"""The agent's runner for stream payloads: batches ciphered on up to `MAX_WORKERS` threads.

The age engine describes a payload pass as batches (age/batches.py) and starts no threads;
threads and the core-count policy live here. Each worker takes the next batch under the
read lock (reads stay in order: pipes and the look-ahead byte need it) and ciphers it on
its own (`decrypt_into`/`encrypt_into` release the GIL). Output stays in order: a batch
whose turn has come is emitted by the worker that finished it, which then emits every
batch parked after it; a batch that finished early is parked (its worker goes on with its
second output buffer). Every worker does the same work, so it splits evenly over the
cores: on 2 cores a reader+writer pair of threads made ~1,700 MiB/s at best (the stage
reading and deciphering was the bottleneck); parking instead of waiting for the turn
measured 7-12% faster than waiting (same runs, shared machine).

A batch is `BATCH_CHUNKS` chunks (1 MiB): one read and one write per batch, one hand-off
per batch. The first batch is a single chunk (a small stream allocates little and starts
no thread); helpers start once a full batch says more follows.

Errors keep the engine's order: a batch that fails (a chunk that does not authenticate, a
read error) emits its authenticated prefix in its turn and stops the stream; later
batches, already ciphered perhaps, emit nothing. A write error stops it the same way. The
first error in stream order is raised, after every worker has ended and wiped its buffers.
"""

from __future__ import annotations

import os
import threading
from typing import Final

from keyagentd.age.batches import Done, Filled, Payload
from keyagentd.secrets import wipe

#: Chunks per full batch (64 KiB each).
BATCH_CHUNKS: Final = 16
#: Threads ciphering one stream at most (the stream's own thread included).
MAX_WORKERS: Final = 4
#: Output buffers per worker: one may wait for its turn while the worker ciphers the next.
OUTS: Final = 2


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class _Streams:
    """Parallel runs going on now: each gets an even share of the cores. More threads than
    cores only contend for the GIL (two streams with a writer thread each made 1,550-1,620
    MiB/s together on 2 cores, against 1,870 without)."""

    def __init__(self, cores: int) -> None:
        self.cores = cores
        self._n = 0
        self._lock = threading.Lock()

    def enter(self) -> None:
        with self._lock:
            self._n += 1

    def leave(self) -> None:
        with self._lock:
            self._n -= 1

    @property
    def running(self) -> int:
        return self._n

    def share(self) -> int:
        """Workers each stream may use now."""
        return max(1, min(MAX_WORKERS, self.cores // max(1, self._n)))


STREAMS: Final = _Streams(_cores())


class _Buffers:
    """One worker's input buffer and its `OUTS` output buffers: a batch waiting for its turn
    keeps one (``busy``, under the run's condition) while the worker goes on with another."""

    __slots__ = ("busy", "inb", "outs")

    def __init__(self) -> None:
        self.inb = bytearray(0)
        self.outs = [bytearray(0) for _ in range(OUTS)]
        self.busy: set[int] = set()

    def ensure_in(self, size: int) -> None:
        if len(self.inb) < size:
            wipe(self.inb)
            self.inb = bytearray(size)

    def ensure_out(self, slot: int, size: int) -> None:
        if len(self.outs[slot]) < size:
            wipe(self.outs[slot])
            self.outs[slot] = bytearray(size)

    def wipe(self) -> None:
        wipe(self.inb)
        for out in self.outs:
            wipe(out)


#: A deciphered batch and where it is: (its `Done`, its worker's buffers, the output slot).
_Ready = tuple[Done, _Buffers, int]


class ParallelRun:
    """Runs one payload (a batches.py `Run`); pass the class as ``output=`` to `age.encrypt`
    / `Decryptor.decrypt_to`. Counts itself in `STREAMS` while it runs."""

    def __init__(self, payload: Payload) -> None:
        self._p = payload
        self._read_lock = threading.Lock()
        self._turn = threading.Condition()  # guards what follows, to _stopped
        self._next = 0  # the batch to emit next
        self._emitting = False  # a worker is emitting (batch _next, then what is parked)
        self._parked: dict[int, _Ready] = {}  # deciphered batches waiting for their turn
        self._stopped = False  # the stream is over: later batches emit nothing
        self._tickets = 0  # batches read (under the read lock)
        self._ended = False  # nothing more to read: the last batch, an error, the end
        self._failed: Exception | None = None
        self._total = 0
        self._workers = 1
        self._threads: list[threading.Thread] = []
        #: Helper threads started so far (they come and go with the other streams).
        self.started = 0
        self._full = BATCH_CHUNKS * payload.chunk

    def run(self) -> int:
        STREAMS.enter()
        try:
            self._work(helper=False)
        finally:
            for thread in self._threads:
                thread.join()
            STREAMS.leave()
        if self._failed is not None:
            raise self._failed
        return self._total

    @property
    def workers(self) -> int:
        """Workers now (the stream's own thread and its helpers)."""
        return self._workers

    def _work(self, *, helper: bool) -> None:
        bufs = _Buffers()
        try:
            while True:
                slot = self._free_slot(bufs)
                claim = self._claim(bufs, helper=helper)
                if claim is None:
                    return
                ticket, filled, size = claim
                bufs.ensure_out(slot, self._p.out_size(size))
                try:
                    inb = memoryview(bufs.inb)[: size + 1]
                    done = self._p.work(filled, inb, memoryview(bufs.outs[slot]))
                except Exception as exc:
                    done = Done(0, False, exc)
                self._finish(ticket, (done, bufs, slot))
        finally:
            with self._turn:  # our parked batches are emitted by whoever holds the turn
                self._turn.wait_for(lambda: not bufs.busy)
            bufs.wipe()
            if not helper:
                self._ended = True  # helpers stop at their next batch

    def _free_slot(self, bufs: _Buffers) -> int:
        """An output buffer of ``bufs`` no batch waits in (waits for one to be emitted)."""
        with self._turn:
            self._turn.wait_for(lambda: len(bufs.busy) < OUTS)
            return next(i for i in range(OUTS) if i not in bufs.busy)

    def _claim(self, bufs: _Buffers, *, helper: bool) -> tuple[int, Filled, int] | None:
        """Read the next batch into ``bufs``: its turn, what was read, its input size."""
        with self._read_lock:
            if self._ended:
                return None
            if helper and self._workers > STREAMS.share():
                self._workers -= 1
                return None
            size = self._full if helper or self._tickets else self._p.chunk
            bufs.ensure_in(size + 1)
            filled = self._p.read(memoryview(bufs.inb)[: size + 1])
            ticket = self._tickets
            self._tickets += 1
            if not filled.more:
                self._ended = True
            elif size == self._full and not helper:
                self._start_helpers()
            return ticket, filled, size

    def _start_helpers(self) -> None:
        while self._workers < STREAMS.share():
            thread = threading.Thread(
                target=self._work, kwargs={"helper": True}, name="age-cipher", daemon=True
            )
            self._threads.append(thread)
            self._workers += 1
            self.started += 1
            thread.start()

    def _finish(self, ticket: int, ready: _Ready) -> None:
        """Emit batch ``ticket`` now if it is its turn, then every parked batch after it;
        else park it for whoever emits the batch before it."""
        with self._turn:
            ready[1].busy.add(ready[2])
            if self._emitting or self._next != ticket:
                self._parked[ticket] = ready
                return
            self._emitting = True
        while True:
            self._emit(*ready)
            with self._turn:
                ready[1].busy.discard(ready[2])
                self._next += 1
                following = self._parked.pop(self._next, None)
                self._turn.notify_all()
                if following is None:
                    self._emitting = False
                    return
            ready = following

    def _emit(self, done: Done, bufs: _Buffers, slot: int) -> None:
        if self._stopped:
            return
        try:
            if done.size:
                self._p.emit(memoryview(bufs.outs[slot])[: done.size])
                self._total += done.size
            if done.error is not None:
                self._stop(done.error)
            elif done.end:
                self._stopped = True
        except Exception as exc:
            self._stop(exc)

    def _stop(self, error: Exception) -> None:
        self._failed = error
        self._stopped = True
        self._ended = True
