"""The one timing helper every benchmark row uses.

Wall-clock time from ``time.perf_counter``; statistics are computed here so each row reports
the same way (median of repetitions, p50/p99 of latency samples). Runs of competing
implementations are interleaved (round robin) so that drift of a shared machine - another
process, CPU frequency, page cache - spreads over all of them instead of biasing one.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

MIB = 1024 * 1024


@dataclass(frozen=True)
class Stats:
    """Summary of a list of durations (seconds)."""

    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def best(self) -> float:
        return min(self.samples)

    def percentile(self, p: float) -> float:
        return percentile(self.samples, p)

    @property
    def p50(self) -> float:
        return self.percentile(50)

    @property
    def p99(self) -> float:
        return self.percentile(99)


def percentile(samples: Sequence[float], p: float) -> float:
    """The nearest-rank percentile (p in 0..100) - no interpolation, a value that was seen."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def time_once(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


@contextmanager
def stopwatch() -> Iterator[list[float]]:
    """``with stopwatch() as t: ...`` then ``t[0]`` holds the elapsed seconds."""
    box: list[float] = []
    t0 = time.perf_counter()
    try:
        yield box
    finally:
        box.append(time.perf_counter() - t0)


def interleaved(
    fns: Mapping[str, Callable[[], object]],
    reps: int,
    *,
    warmup: int = 0,
    before: Callable[[str], object] | None = None,
    after: Callable[[str], object] | None = None,
) -> dict[str, Stats]:
    """Time each function ``reps`` times, round robin; ``before``/``after`` run untimed."""
    for _ in range(warmup):
        for name, fn in fns.items():
            if before:
                before(name)
            fn()
            if after:
                after(name)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            if before:
                before(name)
            samples[name].append(time_once(fn))
            if after:
                after(name)
    return {name: Stats(tuple(s)) for name, s in samples.items()}


def mib_per_s(nbytes: int, seconds: float) -> float:
    return nbytes / MIB / seconds if seconds > 0 else math.inf
