"""EncryptFd/DecryptFd: streaming between caller-supplied fds in a bounded worker pool.

Each stream runs in its own worker thread, so the bus stays responsive. Every wait on a
pipe or socket is a `poll` with a short timeout that also checks the stream's cancel flag:
when the caller leaves the bus its streams stop, even if the other end of a pipe stays open.
Regular files never block: they are read and written directly, the flag checked per chunk.
The fds a stream received are closed when it ends, whatever happens.

`check_fd_peers`: a caller may hand the agent a socket instead of a pipe or file. A socket
of any family but unix (TCP, UDP, vsock...) may lead to another user's process or another
machine, and nothing says whose: refused. If the process at the other end of a unix socket
(SO_PEERCRED) runs as another user, the agent would be reading plaintext from, or writing
it to, that user: refused with AccessDenied before the stream starts. Pipes, files and
unconnected unix sockets carry no peer and pass. What remains (SECURITY.md): a unix
socketpair end or pipe of ours handed on to another process is that process's, and no
check can see it.

`read_passphrase_async` / `write_secret_async`: the `<secret>-fd` options and Export's
``output-fd`` (methods.py) are read and written on the event loop, never in a stream thread.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import socket
import stat
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, TypeVar

from keyagent.protocol import (
    MAX_SECRET_BYTES,
    AccessDenied,
    BadPassphrase,
    Failed,
    RateLimited,
    TooLarge,
)
from keyagentd.fds import close_fds
from keyagentd.hardening import peer_uid_of_socket, socket_family
from keyagentd.secrets import wipe

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_MAX_STREAMS: Final = 4
POLL_MS: Final = 250
#: The most written to a pipe or socket at once (a chunk; see `FdSink`).
PIPE_WRITE: Final = 64 * 1024
#: The GIL switch interval while the agent runs (seconds; see `StreamRunner`).
SWITCH_INTERVAL: Final = 0.0005
#: Large reads: the engine asks for whole 64 KiB chunks; pipes hand over up to their size.
_READ_EVENTS: Final = select.POLLIN | select.POLLHUP | select.POLLERR
_WRITE_EVENTS: Final = select.POLLOUT | select.POLLERR | select.POLLHUP


class Cancelled(Failed):
    """The stream was stopped because its caller went away or the agent is exiting."""


class _Waiter:
    """Waits until one fd is ready, checking the cancel flag every `POLL_MS`.

    A regular file never blocks, so it is never polled (only the cancel flag is checked).
    Other fds (pipes, sockets) are polled before each transfer, with one poll object per
    fd: a blocking read of a pipe whose writer stays open would never see the cancel flag.
    `poll` releases the GIL while it waits; building a poll object per call did not, and
    cost parallel streams about a fifth of their scaling.
    """

    __slots__ = ("_cancel", "_poller", "_timeout")

    def __init__(
        self, fd: int, events: int, cancel: threading.Event, timeout: float | None = None
    ) -> None:
        self._cancel = cancel
        self._timeout = timeout
        self._poller: Any = None
        try:
            regular = stat.S_ISREG(os.fstat(fd).st_mode)
        except OSError:
            regular = False  # let the transfer report the error
        if not regular:
            self._poller = select.poll()
            self._poller.register(fd, events)

    @property
    def polled(self) -> bool:
        """Whether the fd may block (not a regular file)."""
        return self._poller is not None

    def before(self) -> None:
        """Called before each transfer: raise if cancelled; wait if the fd may block."""
        if self._cancel.is_set():
            raise Cancelled("The operation was cancelled.")
        if self._poller is not None:
            self.wait()

    def wait(self) -> None:
        """Wait for readiness (also after EAGAIN on a non-blocking fd)."""
        poller = self._poller
        if poller is None:  # a regular file said EAGAIN: poll would not help, just retry
            return
        loops = 0
        while not poller.poll(POLL_MS):
            loops += 1
            if self._cancel.is_set():
                raise Cancelled("The operation was cancelled.")
            if self._timeout is not None and loops * POLL_MS / 1000 >= self._timeout:
                raise Failed("Timed out waiting for the caller's data.")
        if self._cancel.is_set():
            raise Cancelled("The operation was cancelled.")


class FdSource:
    """A readable fd for the age engine (`readinto`); EOF is 0 bytes."""

    def __init__(self, fd: int, cancel: threading.Event, timeout: float | None = None) -> None:
        self.fd = fd
        self._waiter = _Waiter(fd, _READ_EVENTS, cancel, timeout)

    def readinto(self, buf: memoryview, /) -> int:
        self._waiter.before()
        while True:
            try:
                return os.readv(self.fd, [buf])
            except BlockingIOError:
                self._waiter.wait()  # a non-blocking fd shared with the caller
            except OSError as exc:
                raise Failed(f"Reading the input failed: {exc.strerror}.") from None


class FdSink:
    """A writable fd for the age engine (`write` may be short; the engine loops).

    The agent writes batches of 1 MiB: to a pipe or socket at most `PIPE_WRITE` at a time,
    so a blocking write waits for the reader to drain no more than that before the cancel
    flag is looked at again (poll says writable with a page free).
    """

    def __init__(self, fd: int, cancel: threading.Event) -> None:
        self.fd = fd
        self._waiter = _Waiter(fd, _WRITE_EVENTS, cancel)
        self._most = PIPE_WRITE if self._waiter.polled else None

    def write(self, data: memoryview | bytes, /) -> int:
        self._waiter.before()
        if self._most is not None:
            data = data[: self._most]
        while True:
            try:
                return os.write(self.fd, data)
            except BlockingIOError:
                self._waiter.wait()
            except BrokenPipeError:
                raise Failed("The output was closed before the end.") from None
            except OSError as exc:
                raise Failed(f"Writing the output failed: {exc.strerror}.") from None

    def flush(self) -> None:
        pass


class StreamRunner:
    """Runs fd jobs in a bounded pool, at most ``max_per_caller`` at once per caller.

    A stream whose input has nothing to read yet waits on the event loop, not in the pool:
    the threads are the scarce resource, and a caller holding streams on pipes nobody writes
    must not starve everyone else's streams and unlocks (it only uses up its own quota).
    """

    def __init__(self, max_per_caller: int = DEFAULT_MAX_STREAMS, max_workers: int = 16) -> None:
        # A stream thread gives up the GIL around every read, decrypt and write, and takes
        # it straight back: a thread that asked for it meanwhile (the event loop, answering
        # a call or starting a second stream) waits for the forced switch, 5 ms by default,
        # at each of its own system calls. A shorter interval keeps the bus responsive and
        # lets a second stream start at once instead of tens of milliseconds late.
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL))
        self.max_per_caller = max_per_caller
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="stream")
        self._running: dict[str, list[threading.Event]] = {}
        self._waiting: dict[threading.Event, asyncio.Future[None]] = {}

    @property
    def active(self) -> int:
        return sum(len(v) for v in self._running.values())

    async def run(
        self,
        caller: str,
        fds: list[int],
        job: Callable[[threading.Event], T],
        readable: int | None = None,
    ) -> T:
        """Run ``job(cancel)`` in a worker once ``readable`` (the input) has data or EOF;
        ``fds`` are closed when it ends (or is refused)."""
        events = self._running.setdefault(caller, [])
        if len(events) >= self.max_per_caller:
            if not events:
                del self._running[caller]
            close_fds(fds)
            raise RateLimited(
                f"Too many streams at once (at most {self.max_per_caller} per caller): "
                "wait for one to finish."
            )
        cancel = threading.Event()
        events.append(cancel)

        def work() -> T:
            try:
                return job(cancel)
            finally:
                close_fds(fds)

        try:
            if readable is not None:
                await self._until_readable(readable, cancel)
            future = self._pool.submit(work)
        except RuntimeError:  # shutting down
            close_fds(fds)
            self._release(caller, cancel)
            raise Cancelled("The agent is shutting down.") from None
        except BaseException:
            close_fds(fds)
            self._release(caller, cancel)
            raise
        try:
            return await asyncio.wrap_future(future)
        finally:
            self._release(caller, cancel)

    async def _until_readable(self, fd: int, cancel: threading.Event) -> None:
        """Wait on the loop until ``fd`` can be read (data, EOF or error), or cancellation."""
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                return  # a regular file never blocks
        except OSError:
            return  # let the job report it
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()

        def ready() -> None:
            if not waiter.done():
                waiter.set_result(None)

        try:
            loop.add_reader(fd, ready)
        except (OSError, ValueError):
            return  # not pollable: the job's own waits take over
        self._waiting[cancel] = waiter
        try:
            await waiter
        finally:
            loop.remove_reader(fd)
            self._waiting.pop(cancel, None)
        if cancel.is_set():
            raise Cancelled("The operation was cancelled.")

    def _wake(self, cancel: threading.Event) -> None:
        cancel.set()
        waiter = self._waiting.get(cancel)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _release(self, caller: str, cancel: threading.Event) -> None:
        events = self._running.get(caller)
        if events is not None:
            events.remove(cancel)
            if not events:
                del self._running[caller]

    def cancel(self, caller: str) -> None:
        """Stop every stream of ``caller`` (it left the bus)."""
        for event in self._running.get(caller, []):
            self._wake(event)

    def shutdown(self) -> None:
        for events in self._running.values():
            for event in events:
                self._wake(event)
        self._pool.shutdown(wait=False, cancel_futures=True)


def stream_job(fn: Callable[..., T], *args: Any) -> Callable[[threading.Event], T]:
    """Bind ``fn(*args, cancel)`` as a job for `StreamRunner.run`."""

    def job(cancel: threading.Event) -> T:
        return fn(*args, cancel)

    return job


def check_fd_peers(
    fds: Sequence[int],
    caller_uid: int | None,
    *,
    peer_uid: Callable[[int], int | None] = peer_uid_of_socket,
    family: Callable[[int], int | None] = socket_family,
) -> None:
    """Raise AccessDenied if one of ``fds`` is a socket other than unix, or one to another
    uid (the caller closes the fds, once). ``caller_uid``: the checked caller's (None
    matches no socket)."""
    for fd in fds:
        kind = family(fd)
        if kind is not None and kind != socket.AF_UNIX:
            raise AccessDenied(
                "A file descriptor passed to the agent is a network socket: use a pipe, a file "
                "or a unix socket."
            )
        uid = peer_uid(fd)
        if uid is not None and uid != caller_uid:
            raise AccessDenied(
                "A file descriptor passed to the agent is a socket connected to a process of "
                "another user."
            )


#: UnlockFromFd and the `<secret>-fd` options read at most this much (not a file).
MAX_PASSPHRASE_BYTES: Final = MAX_SECRET_BYTES
PASSPHRASE_READ_TIMEOUT: Final = 30.0


async def read_passphrase_async(fd: int) -> str:
    """The passphrase written to ``fd`` up to EOF, minus one trailing newline. Read on the
    event loop: an unlock never waits for (or holds) a stream thread, whatever the streams
    are doing. Times out after `PASSPHRASE_READ_TIMEOUT`."""
    buf = bytearray(MAX_PASSPHRASE_BYTES + 1)
    view = memoryview(buf)
    try:
        total = 0
        try:
            async with asyncio.timeout(PASSPHRASE_READ_TIMEOUT):
                while total < len(buf):
                    await _until_readable(fd)
                    try:
                        n = os.readv(fd, [view[total:]])
                    except BlockingIOError:
                        continue
                    except OSError as exc:
                        raise Failed(f"Reading the input failed: {exc.strerror}.") from None
                    if n == 0:
                        break
                    total += n
        except TimeoutError:
            raise Failed("Timed out waiting for the caller's data.") from None
        if total > MAX_PASSPHRASE_BYTES:
            raise TooLarge(f"A passphrase is at most {MAX_PASSPHRASE_BYTES} bytes.")
        end = total - 1 if total and buf[total - 1] == 0x0A else total
        try:
            return bytes(view[:end]).decode("utf-8")
        except UnicodeDecodeError:
            raise BadPassphrase("The passphrase is not valid UTF-8.") from None
    finally:
        view.release()
        wipe(buf)


async def write_secret_async(fd: int, data: bytes) -> None:
    """Write ``data`` (a small secret file: Export) to ``fd`` on the event loop, in pieces
    of at most PIPE_BUF once it is writable, so a blocking pipe never blocks the loop; times
    out after `PASSPHRASE_READ_TIMEOUT` (a reader that never reads)."""
    view = memoryview(data)
    try:
        async with asyncio.timeout(PASSPHRASE_READ_TIMEOUT):
            while view:
                await _until_ready(fd, write=True)
                try:
                    n = os.write(fd, view[: select.PIPE_BUF])
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as exc:
                    raise Failed(f"Writing the output failed: {exc.strerror}.") from None
                view = view[n:]
    except TimeoutError:
        raise Failed("Timed out waiting for the caller to read the output.") from None


async def _until_readable(fd: int) -> None:
    await _until_ready(fd)


async def _until_ready(fd: int, *, write: bool = False) -> None:
    """Wait on the loop until ``fd`` can be read (written); at once for what cannot be
    polled."""
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            return
    except OSError:
        return  # the read reports it
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    add, remove = loop.add_reader, loop.remove_reader
    if write:
        add, remove = loop.add_writer, loop.remove_writer
    try:
        add(fd, wake)
    except (OSError, ValueError):
        return
    try:
        await ready
    finally:
        remove(fd)
