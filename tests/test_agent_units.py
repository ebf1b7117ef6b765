"""Unit tests of the agent's small parts: rate limiter, options, gate size count, auth."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest
from dbus_fast import Variant

from keyagent.protocol import BadPassphrase, Failed, InvalidArgs, RateLimited
from keyagentd.auth import Caller, caller_from_credentials, check_bus_peer, socket_peer
from keyagentd.bus import methods as options
from keyagentd.bus.dispatch import body_size
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
    parsed = options.parse_options({"armor": Variant("b", True)}, options.ENCRYPT)
    assert parsed.flag("armor") is True and parsed.text("passphrase") is None
    assert options.parse_options({}, options.UNLOCK).number("idle-timeout") is None
    with pytest.raises(InvalidArgs, match="Unknown option 'armour'"):
        options.parse_options({"armour": Variant("b", True)}, options.ENCRYPT)
    with pytest.raises(InvalidArgs, match="must have D-Bus type 'b'"):
        options.parse_options({"armor": Variant("s", "yes")}, options.ENCRYPT)
    with pytest.raises(InvalidArgs, match="type 'u'"):
        options.parse_options({"idle-timeout": Variant("i", 5)}, options.UNLOCK)


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


# --- small calls on the loop, recipients remembered, keys tried one at a time --------------


def test_runs_inline_only_small_keyless_work() -> None:
    from keyagentd import crypt as crypto
    from keyagentd.cache import KeyCache

    assert crypto.runs_inline(1024, None)
    assert crypto.runs_inline(crypto.INLINE_MAX, None)
    assert not crypto.runs_inline(crypto.INLINE_MAX + 1, None)  # big payloads: a thread
    assert not crypto.runs_inline(10, "pass")  # scrypt: a thread
    cache = KeyCache()
    for i in range(crypto.INLINE_MAX_KEYS + 1):
        assert crypto.runs_inline(10, None, cache)
        cache.unlock(f"k{i}", "x25519", bytearray(os.urandom(32)))
    assert not crypto.runs_inline(10, None, cache)  # many keys to try: a thread


def test_parse_recipient_is_remembered_but_errors_are_not() -> None:
    from keyagentd import age
    from keyagentd import crypt as crypto

    text = age.generate_identity("x25519").recipient().encode()
    first = crypto.parse_recipient(text)
    assert crypto.parse_recipient(text) is first
    assert first == age.parse_recipient(text)
    for _ in range(2):
        with pytest.raises(age.ParseError):
            crypto.parse_recipient("age1notarecipient")


def test_unwrap_tries_unlocked_keys_one_at_a_time() -> None:
    import io

    from keyagent.protocol import Locked, NoMatch
    from keyagentd import age
    from keyagentd import crypt as crypto
    from keyagentd.cache import KeyCache
    from keyagentd.keystore import KeyRecord

    built: list[object] = []

    def factory(key_type: str, seed: bytearray) -> age.X25519Identity:
        identity = age.X25519Identity(seed)
        built.append(identity)
        return identity

    cache = KeyCache(identity_factory=factory)
    ids = {n: age.generate_identity("x25519") for n in ("a", "b", "c", "d")}
    records = {n: KeyRecord(n, "", "x25519", i.recipient().encode(), 0) for n, i in ids.items()}
    for n in ("a", "b", "c"):
        cache.unlock(n, "x25519", bytearray(ids[n].seed))
    data = age.encrypt_bytes([ids["b"].recipient()], b"hi")
    assert crypto.unwrap(age.Decryptor(io.BytesIO(data)), cache, records) == "b"
    assert len(built) == 2  # "a" then "b": the search stopped at the match
    with pytest.raises(ValueError):  # each identity was wiped when its turn ended
        built[0].seed  # type: ignore[attr-defined]  # noqa: B018
    other = age.encrypt_bytes([ids["d"].recipient()], b"hi")
    with pytest.raises(Locked) as locked:  # "d" is locked and of a matching type
        crypto.unwrap(age.Decryptor(io.BytesIO(other)), cache, records)
    assert locked.value.names == ("d",)
    del records["d"]
    with pytest.raises(NoMatch):
        crypto.unwrap(age.Decryptor(io.BytesIO(other)), cache, records)


# --- streams: regular files are not polled; pipes are, and see the cancel flag --------------


def test_fd_source_and_sink_poll_only_what_can_block(tmp_path: object) -> None:
    import threading
    from pathlib import Path

    from keyagentd.streams import Cancelled, FdSink, FdSource

    path = Path(str(tmp_path)) / "f"
    path.write_bytes(b"abc")
    cancel = threading.Event()
    fd = os.open(path, os.O_RDWR)
    r, w = os.pipe()
    try:
        src = FdSource(fd, cancel)
        assert src._waiter._poller is None
        buf = bytearray(8)
        assert src.readinto(memoryview(buf)) == 3 and buf[:3] == b"abc"
        sink = FdSink(fd, cancel)
        assert sink._waiter._poller is None and sink.write(b"de") == 2
        pipe_src = FdSource(r, cancel)
        assert pipe_src._waiter._poller is not None
        os.write(w, b"xy")
        assert pipe_src.readinto(memoryview(buf)) == 2
        threading.Timer(0.05, cancel.set).start()
        with pytest.raises(Cancelled):  # an empty pipe whose writer stays open
            pipe_src.readinto(memoryview(buf))
        with pytest.raises(Cancelled):  # a regular file checks the flag per transfer
            src.readinto(memoryview(buf))
    finally:
        for f in (fd, r, w):
            os.close(f)


def test_stream_runner_shortens_the_gil_switch_interval() -> None:
    import sys

    from keyagentd.streams import SWITCH_INTERVAL, StreamRunner

    before = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.005)
        runner = StreamRunner()
        assert sys.getswitchinterval() <= SWITCH_INTERVAL < 0.005
        runner.shutdown()
    finally:
        sys.setswitchinterval(before)
