"""The agent's runner for stream payloads: batches ciphered on up to `MAX_WORKERS` threads.

The age engine describes a payload pass as batches (age/batches.py) and starts no threads;
threads and the core-count policy live here. Each worker takes the next batch under the
read lock (reads stay in order: pipes and the look-ahead byte need it), ciphers it on its
own (`decrypt_into`/`encrypt_into` release the GIL), then waits for its turn to emit (the
output stays in order). Every worker does all three steps, so the work splits evenly over
the cores: measured on 2 cores, 256 MiB on tmpfs, a reader+writer pair of threads made
~1,700 MiB/s at best (the cipher thread, reading and deciphering, was the bottleneck).

A batch is `BATCH_CHUNKS` chunks (1 MiB): one read and one write per batch, one hand-off
per batch. The first batch is a single chunk (a small stream allocates little and starts
no thread); helpers start once a full batch says more follows.

Errors keep the engine's order: a batch that fails (a chunk that does not authenticate, a
read error) emits its authenticated prefix in its turn and stops the stream; later
batches, already ciphered perhaps, emit nothing. A write error stops it the same way. The
first error in stream order is raised, after every worker has ended.
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
    """One worker's input and output buffers, grown once from the small first batch."""

    __slots__ = ("inb", "out")

    def __init__(self) -> None:
        self.inb = bytearray(0)
        self.out = bytearray(0)

    def ensure(self, in_size: int, out_size: int) -> None:
        if len(self.inb) < in_size:
            wipe(self.inb)
            self.inb = bytearray(in_size)
        if len(self.out) < out_size:
            wipe(self.out)
            self.out = bytearray(out_size)

    def wipe(self) -> None:
        wipe(self.inb)
        wipe(self.out)


class ParallelRun:
    """Runs one payload (a batches.py `Run`); pass the class as ``output=`` to `age.encrypt`
    / `Decryptor.decrypt_to`. Counts itself in `STREAMS` while it runs."""

    def __init__(self, payload: Payload) -> None:
        self._p = payload
        self._read_lock = threading.Lock()
        self._turn = threading.Condition()
        self._tickets = 0  # batches read (under the read lock)
        self._next = 0  # the batch whose turn it is to emit (under the condition)
        self._ended = False  # nothing more to read: the last batch, an error, the end
        self._stopped = False  # the stream is over: later batches emit nothing
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
                claim = self._claim(bufs, helper=helper)
                if claim is None:
                    return
                ticket, filled, size = claim
                inb, out = memoryview(bufs.inb), memoryview(bufs.out)
                try:
                    done = self._p.work(filled, inb[: size + 1], out)
                except Exception as exc:
                    done = Done(0, False, exc)
                self._emit_in_turn(ticket, done, out)
        finally:
            bufs.wipe()
            if not helper:
                self._ended = True  # helpers stop at their next batch

    def _claim(self, bufs: _Buffers, *, helper: bool) -> tuple[int, Filled, int] | None:
        """Read the next batch into ``bufs``: its turn, what was read, its input size."""
        with self._read_lock:
            if self._ended:
                return None
            if helper and self._workers > STREAMS.share():
                self._workers -= 1
                return None
            size = self._full if helper or self._tickets else self._p.chunk
            bufs.ensure(size + 1, self._p.out_size(size))
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

    def _emit_in_turn(self, ticket: int, done: Done, out: memoryview) -> None:
        with self._turn:
            while self._next != ticket:
                self._turn.wait()
        try:
            if not self._stopped:
                if done.size:
                    self._p.emit(out[: done.size])
                    self._total += done.size
                if done.error is not None:
                    self._stop(done.error)
                elif done.end:
                    self._stopped = True
        except Exception as exc:
            self._stop(exc)
        finally:
            with self._turn:
                self._next += 1
                self._turn.notify_all()

    def _stop(self, error: Exception) -> None:
        self._failed = error
        self._stopped = True
        self._ended = True


#: The name the agent's stream jobs (crypt.py) and bench/rows_stream.py pass as ``output=``.
OverlappedOutput: Final = ParallelRun
