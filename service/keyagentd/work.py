"""Where the agent's work runs off the event loop, and how much of it is running.

Three places: the crypto pool (Argon2, big payloads), one dialog thread (a passphrase
prompt waits for a person: never in the crypto pool; askpass.py shows one at a time too)
and the stream runner (EncryptFd/DecryptFd, bounded per caller). ``busy`` tells the idle
exit whether anything runs, ``last_activity`` when the last call or piece of work ended.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from keyagentd.streams import StreamRunner

T = TypeVar("T")


class Work:
    def __init__(
        self, crypto_workers: int, max_streams: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._pool = ThreadPoolExecutor(crypto_workers, thread_name_prefix="crypto")
        self._dialogs = ThreadPoolExecutor(1, thread_name_prefix="askpass")
        self.streams = StreamRunner(max_streams)
        self.inflight = 0
        self._clock = clock
        self.last_activity = clock()

    def touch(self) -> None:
        """A call arrived or work ended: the agent is not idle."""
        self.last_activity = self._clock()

    @property
    def busy(self) -> bool:
        return bool(self.inflight or self.streams.active)

    async def blocking(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run CPU or disk work in the crypto pool."""
        return await self._run(self._pool, functools.partial(fn, *args, **kwargs))

    async def dialog(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a dialog that waits for a person (it keeps the agent alive meanwhile)."""
        return await self._run(self._dialogs, functools.partial(fn, *args))

    async def stream(self, sender: str, fds: list[int], job: Callable[[threading.Event], T]) -> T:
        """Run ``job(cancel)`` as one of ``sender``'s streams; ``fds`` are closed after it.
        ``fds[0]`` is the input: the stream takes a thread only once it can be read."""
        self.inflight += 1
        try:
            return await self.streams.run(sender, fds, job, readable=fds[0])
        finally:
            self.inflight -= 1
            self.touch()

    async def track(self, work: Awaitable[T]) -> T:
        """Await ``work`` done on the loop itself (e.g. a pipe read), counted as running."""
        self.inflight += 1
        try:
            return await work
        finally:
            self.inflight -= 1
            self.touch()

    async def _run(self, pool: ThreadPoolExecutor, fn: Callable[[], T]) -> T:
        self.inflight += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, fn)
        finally:
            self.inflight -= 1
            self.touch()

    def cancel(self, sender: str) -> None:
        """``sender`` left the bus: stop its streams."""
        self.streams.cancel(sender)

    def shutdown(self) -> None:
        self.streams.shutdown()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._dialogs.shutdown(wait=False, cancel_futures=True)
