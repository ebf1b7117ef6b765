"""Unit tests of the agent's small parts: rate limiter, options, gate size count, auth."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest
from dbus_fast import Variant

from keyagent.protocol import BadPassphrase, Failed, InvalidArgs, RateLimited
from keyagentd.auth import Caller, caller_from_credentials, check_bus_peer, socket_peer
from keyagentd.bus import options
from keyagentd.bus.gate import body_size
from keyagentd.ratelimit import FailureLimiter, LimitPolicy


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def limiter(t: FakeTime) -> FailureLimiter:
    policy = LimitPolicy(
        free_failures=3, base_delay=0.5, max_delay=4.0, max_failures=8, quiet_period=300.0
    )
    return FailureLimiter(policy, clock=t.clock, sleep=t.sleep)


async def attempt(lim: FailureLimiter, key: str, ok: bool) -> None:
    async with lim.attempt(key):
        if not ok:
            raise BadPassphrase()


def test_limiter_delays_grow_then_refuse_and_success_resets() -> None:
    t = FakeTime()
    lim = limiter(t)

    async def run() -> None:
        for _ in range(3):  # free failures: no delay
            with pytest.raises(BadPassphrase):
                await attempt(lim, "k", ok=False)
        assert t.slept == []
        for _ in range(5):
            with pytest.raises(BadPassphrase):
                await attempt(lim, "k", ok=False)
        assert t.slept == [0.5, 1.0, 2.0, 4.0, 4.0]  # doubling, capped
        with pytest.raises(RateLimited) as e:
            await attempt(lim, "k", ok=True)  # refused before even trying
        assert "'k'" in e.value.message
        await attempt(lim, "other", ok=True)  # per key
        t.now += 301  # a quiet period forgives
        await attempt(lim, "k", ok=True)
        assert lim.failures("k") == 0
        for _ in range(4):
            with pytest.raises(BadPassphrase):
                await attempt(lim, "k", ok=False)
        await attempt(lim, "k", ok=True)  # success resets
        assert lim.failures("k") == 0 and lim.delay("k") == 0

    asyncio.run(run())


def test_limiter_serialises_attempts_on_one_key() -> None:
    order: list[str] = []
    lim = FailureLimiter()

    async def slow(tag: str) -> None:
        async with lim.attempt("k"):
            order.append(tag + "+")
            await asyncio.sleep(0.01)
            order.append(tag + "-")

    async def run() -> None:
        await asyncio.gather(slow("a"), slow("b"))

    asyncio.run(run())
    assert order == ["a+", "a-", "b+", "b-"]


def test_limiter_other_errors_count_as_neither() -> None:
    t = FakeTime()
    lim = limiter(t)

    async def run() -> None:
        with pytest.raises(Failed):
            async with lim.attempt("k"):
                raise Failed("disk trouble")

    asyncio.run(run())
    assert lim.failures("k") == 0


def test_options_are_checked_by_name_and_type() -> None:
    parsed = options.parse({"armor": Variant("b", True)}, options.ENCRYPT)
    assert parsed.flag("armor") is True and parsed.text("passphrase") is None
    assert options.parse({}, options.UNLOCK).number("idle-timeout") is None
    with pytest.raises(InvalidArgs, match="Unknown option 'armour'"):
        options.parse({"armour": Variant("b", True)}, options.ENCRYPT)
    with pytest.raises(InvalidArgs, match="must have D-Bus type 'b'"):
        options.parse({"armor": Variant("s", "yes")}, options.ENCRYPT)
    with pytest.raises(InvalidArgs, match="type 'u'"):
        options.parse({"idle-timeout": Variant("i", 5)}, options.UNLOCK)


def test_body_size_counts_and_stops_early() -> None:
    assert body_size([b"x" * 1000, {}], 10**6) >= 1000
    assert body_size([["age1" * 10] * 100, b"", {"armor": Variant("b", True)}], 10**6) >= 4000
    huge = [["a"] * 1_000_000]
    assert body_size(huge, 1000) > 1000  # stopped as soon as it passed the limit


def test_caller_credentials() -> None:
    c = caller_from_credentials(
        ":1.5", {"UnixUserID": Variant("u", 1000), "ProcessID": Variant("u", 42)}
    )
    assert c == Caller(":1.5", 1000, 42) and c.allowed(1000) and not c.allowed(0)
    assert not caller_from_credentials(":1.6", {}).allowed(0)  # unknown uid: denied


def test_socket_peer_credentials() -> None:
    a, b = socket.socketpair()
    with a, b:
        peer = socket_peer(a)
        assert (peer.pid, peer.uid) == (os.getpid(), os.geteuid())
        assert check_bus_peer(a, os.geteuid()).uid == os.geteuid()
        if os.geteuid() == 0:
            check_bus_peer(a, 1234)  # root's bus is trusted by anyone
        else:
            with pytest.raises(Failed, match="refusing to serve"):
                check_bus_peer(a, os.geteuid() + 1)
