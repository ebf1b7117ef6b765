"""Slowing down passphrase guessing, per key.

The first few wrong passphrases for a key cost nothing extra; after that each attempt waits
a growing delay (doubling, capped) before it is checked, and past a limit attempts are
refused outright with ``RateLimited`` until a quiet period passes. A right passphrase resets
the count. Attempts on one key run one at a time, so parallel guesses gain nothing; the
wait is an `asyncio.sleep`, so other callers and other keys are never blocked.

With a store (failcounts.py) the counts survive the agent: an attempt is counted, and the
count written, before the guess is checked, so killing the agent mid-check loses nothing;
a right passphrase (or an error that is no guess) takes it back. The clock is the wall
clock for the same reason (the quiet period runs across restarts).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

from keyagent.protocol import BadPassphrase, RateLimited


@dataclass(frozen=True)
class LimitPolicy:
    free_failures: int = 3  # wrong passphrases before any delay
    base_delay: float = 0.5  # seconds before the first slowed attempt; doubles after that
    max_delay: float = 8.0
    max_failures: int = 10  # then RateLimited ...
    quiet_period: float = 300.0  # ... until this long after the last failure


@dataclass
class _State:
    failures: int = 0
    last_failure: float = 0.0
    lock: asyncio.Lock | None = None


class FailureStore(Protocol):
    def load(self, key: str) -> tuple[int, float] | None: ...
    def save(self, key: str, failures: int, last_failure: float) -> None: ...
    def forget(self, key: str) -> None: ...


async def _inline(fn: Callable[[], None]) -> None:
    fn()


class FailureLimiter:
    """Per-key failure counts, delays and refusals. ``store`` keeps the counts across
    restarts; ``offload`` runs its (fsyncing) writes off the event loop."""

    def __init__(
        self,
        policy: LimitPolicy = LimitPolicy(),
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        store: FailureStore | None = None,
        offload: Callable[[Callable[[], None]], Awaitable[None]] = _inline,
    ) -> None:
        self.policy = policy
        self._clock = clock
        self._sleep = sleep
        self._store = store
        self._offload = offload
        self._states: dict[str, _State] = {}

    def _state(self, key: str) -> _State:
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = _State()
            saved = self._store.load(key) if self._store is not None else None
            if saved is not None:
                state.failures, state.last_failure = saved
        if state.failures and self._clock() - state.last_failure >= self.policy.quiet_period:
            state.failures = 0  # a quiet period forgives
        return state

    def failures(self, key: str) -> int:
        return self._state(key).failures

    def delay(self, key: str) -> float:
        """Seconds the next attempt on ``key`` waits before it is checked."""
        excess = self._state(key).failures - self.policy.free_failures
        if excess < 0:
            return 0.0
        return float(min(self.policy.max_delay, self.policy.base_delay * 2**excess))

    def check(self, key: str) -> None:
        """Raise ``RateLimited`` if ``key`` has failed too often lately."""
        state = self._state(key)
        if state.failures >= self.policy.max_failures:
            wait = int(self.policy.quiet_period - (self._clock() - state.last_failure)) + 1
            raise RateLimited(
                f"Too many wrong passphrases for key {key!r}: try again in {wait} seconds."
            )

    def failure(self, key: str) -> None:
        state = self._state(key)
        state.failures += 1
        state.last_failure = self._clock()

    def success(self, key: str) -> None:
        self._state(key).failures = 0

    def forget(self, key: str) -> None:
        """The key is gone: drop its count, on disk too."""
        self._states.pop(key, None)
        if self._store is not None:
            self._store.forget(key)

    async def _persist(self, key: str, state: _State) -> None:
        if self._store is not None:
            save = functools.partial(self._store.save, key, state.failures, state.last_failure)
            await self._offload(save)

    @asynccontextmanager
    async def attempt(self, key: str) -> AsyncIterator[None]:
        """Serialise attempts on ``key``, refuse or delay as due, then run the body: a
        ``BadPassphrase`` from it counts as a failure, a normal exit as a success, and any
        other error (a missing or damaged key file) as neither."""
        state = self._state(key)
        if state.lock is None:
            state.lock = asyncio.Lock()
        async with state.lock:
            self.check(key)
            delay = self.delay(key)
            if delay > 0:
                await self._sleep(delay)
            before = (state.failures, state.last_failure)
            self.failure(key)  # counted until proven right (see the module text)
            await self._persist(key, state)
            try:
                yield
            except BadPassphrase:
                raise
            except BaseException:
                state.failures, state.last_failure = before  # no guess was checked
                await self._persist(key, state)
                raise
            self.success(key)
            await self._persist(key, state)
