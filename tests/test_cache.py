"""The unlocked-key cache: timeouts, wiping, sealing in memory, thread safety."""

from __future__ import annotations

import threading

import pytest
from cryptography.exceptions import InvalidTag

from keyagent.protocol import InvalidArgs, Locked
from keyagentd.cache import KeyCache

SEED = bytes(range(1, 33))
WALL0 = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def wall(self) -> float:
        return WALL0 + (self.t - 1000.0)


class FakeIdentity:
    """Records what the cache built it from (a copy: the cache wipes its buffer afterwards)."""

    def __init__(self, key_type: str, seed: bytearray) -> None:
        self.key_type = key_type
        self.seed = bytes(seed)
        self.buffer = seed  # the transient buffer itself, to check it is wiped
        self.wiped = 0

    def wipe(self) -> None:
        self.wiped += 1


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cache(clock: Clock) -> KeyCache:
    return KeyCache(clock=clock, wall=clock.wall, identity_factory=FakeIdentity)  # type: ignore[arg-type]


def unlock(cache: KeyCache, name: str = "k", **kw: int) -> None:
    cache.unlock(name, "x25519", bytearray(SEED), **kw)


def test_unlock_use_and_wipe_of_callers_seed(cache: KeyCache) -> None:
    seed = bytearray(SEED)
    cache.unlock("k", "mlkem768x25519", seed)
    assert seed == bytes(32), "the caller's buffer is wiped once sealed"
    assert cache.is_unlocked("k") and cache.unlocked_names() == ["k"]
    with cache.use("k") as ident:
        assert isinstance(ident, FakeIdentity)
        assert ident.seed == SEED and ident.key_type == "mlkem768x25519"
        assert ident.buffer == SEED
    assert ident.buffer == bytes(32), "the transient plaintext is wiped after use"


def test_seed_is_not_stored_in_the_clear(cache: KeyCache) -> None:
    unlock(cache)
    entry = cache._entries["k"]
    assert len(entry.sealed) == 48 and SEED not in bytes(entry.sealed)
    assert SEED not in repr(cache.__dict__).encode()


def test_wipes_on_error_too(cache: KeyCache) -> None:
    seed = bytearray(SEED)
    with pytest.raises(InvalidArgs):
        cache.unlock("k", "x25519", seed, idle_timeout=0)
    assert seed == bytes(32) and not cache.is_unlocked("k")
    unlock(cache)
    buffers = []
    with pytest.raises(RuntimeError), cache.use("k") as ident:
        buffers.append(ident.buffer)
        raise RuntimeError("operation failed")
    assert buffers[0] == bytes(32)


def test_use_on_locked_raises_locked_with_name(cache: KeyCache) -> None:
    with pytest.raises(Locked) as err, cache.use("work"):
        pass
    assert err.value.names == ("work",) and "'work'" in err.value.message


def test_idle_expiry_and_reset_on_use(cache: KeyCache, clock: Clock) -> None:
    unlock(cache, idle_timeout=600, max_timeout=7200)
    assert cache.unlocked_until("k") == int(WALL0 + 600)
    clock.t += 599
    assert cache.is_unlocked("k")  # is_unlocked does not reset the timer
    with cache.use("k"):
        pass
    assert cache.unlocked_until("k") == int(WALL0 + 599 + 600)
    clock.t += 599
    assert cache.is_unlocked("k")
    clock.t += 1
    assert not cache.is_unlocked("k")
    assert cache.unlocked_until("k") == 0
    with pytest.raises(Locked), cache.use("k"):
        pass


def test_is_unlocked_does_not_extend(cache: KeyCache, clock: Clock) -> None:
    unlock(cache, idle_timeout=10)
    for _ in range(9):
        clock.t += 1
        assert cache.is_unlocked("k")
    clock.t += 1
    assert not cache.is_unlocked("k")


def test_max_timeout_caps_regardless_of_use(cache: KeyCache, clock: Clock) -> None:
    unlock(cache, idle_timeout=600, max_timeout=1000)
    for _ in range(3):
        clock.t += 300
        with cache.use("k"):
            pass
    assert cache.unlocked_until("k") == int(WALL0 + 1000)  # min(idle, max) deadline
    clock.t = 1000.0 + 999.5
    assert cache.is_unlocked("k")
    clock.t = 1000.0 + 1000
    assert not cache.is_unlocked("k")


def test_lock_wipes_stored_bytes(cache: KeyCache) -> None:
    unlock(cache)
    sealed = cache._entries["k"].sealed
    assert any(sealed)
    assert cache.lock("k") is True
    assert sealed == bytearray(48)
    assert cache.lock("k") is False
    assert not cache.is_unlocked("k")


def test_lock_all_wipes_everything(cache: KeyCache) -> None:
    for name in ("b", "a", "c"):
        unlock(cache, name)
    buffers = [e.sealed for e in cache._entries.values()]
    assert cache.lock_all() == ["a", "b", "c"]
    assert all(b == bytearray(48) for b in buffers)
    assert cache.unlocked_names() == [] and cache.lock_all() == []


def test_expiry_wipes_and_is_reported_once(cache: KeyCache, clock: Clock) -> None:
    unlock(cache, "a", idle_timeout=10)
    unlock(cache, "b", idle_timeout=20)
    sealed_a = cache._entries["a"].sealed
    assert cache.next_deadline() == 1010.0
    assert cache.expire_due() == []
    clock.t += 10
    assert not cache.is_unlocked("a")  # noticed here: wiped at once...
    assert sealed_a == bytearray(48)
    assert cache.next_deadline() == clock.t  # ...and awaiting report
    assert cache.lock("a") is False
    assert cache.expire_due() == ["a"]
    assert cache.expire_due() == []
    assert cache.next_deadline() == 1020.0
    clock.t += 100
    assert cache.expire_due() == ["b"]
    assert cache.next_deadline() is None


def test_relock_before_report_is_not_reported(cache: KeyCache, clock: Clock) -> None:
    unlock(cache, idle_timeout=10)
    clock.t += 11
    assert cache.unlocked_names() == []
    unlock(cache, idle_timeout=10)  # unlocked again before the timer fired
    assert cache.expire_due() == []
    assert cache.is_unlocked("k")


def test_forget_drops_key_and_pending_expiry(cache: KeyCache, clock: Clock) -> None:
    unlock(cache, idle_timeout=5)
    clock.t += 5
    assert cache.forget("k") is False
    assert cache.expire_due() == []
    unlock(cache)
    assert cache.forget("k") is True and not cache.is_unlocked("k")


def test_reunlock_replaces_and_wipes_old(cache: KeyCache, clock: Clock) -> None:
    unlock(cache, idle_timeout=100)
    old = cache._entries["k"].sealed
    clock.t += 50
    cache.unlock("k", "x25519", bytearray(b"\x07" * 32), idle_timeout=300)
    assert old == bytearray(48)
    assert cache.timeouts("k") == (300, 7200)
    with cache.use("k") as ident:
        assert ident.seed == b"\x07" * 32


def test_timeouts_and_status(cache: KeyCache, clock: Clock) -> None:
    assert cache.timeouts("k") == (600, 7200)
    assert cache.status("k") is None
    unlock(cache, idle_timeout=30, max_timeout=90)
    assert cache.timeouts("k") == (30, 90)
    info = cache.status("k")
    assert info is not None
    assert (info.name, info.key_type, info.unlocked_at) == ("k", "x25519", WALL0)
    assert info.expires_at_wall == WALL0 + 30
    custom = KeyCache(clock=clock, default_idle_timeout=5, default_max_timeout=50)
    assert custom.timeouts("x") == (5, 50)
    custom.unlock("x", "x25519", bytearray(32))
    assert custom.next_deadline() == clock.t + 5


@pytest.mark.parametrize("bad", [0, -1, 2**32, 1.5, True])
def test_bad_timeouts(cache: KeyCache, bad: object) -> None:
    with pytest.raises(InvalidArgs):
        cache.unlock("k", "x25519", bytearray(32), idle_timeout=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgs):
        cache.unlock("k", "x25519", bytearray(32), max_timeout=bad)  # type: ignore[arg-type]
    assert not cache.is_unlocked("k")


def test_sealed_entries_are_bound_to_name_and_type(cache: KeyCache) -> None:
    """Swapping two sealed entries must not hand one key's seed out under the other name."""
    unlock(cache, "a")
    cache.unlock("b", "x25519", bytearray(b"\x09" * 32))
    cache._entries["a"], cache._entries["b"] = cache._entries["b"], cache._entries["a"]
    with pytest.raises(InvalidTag), cache.use("a"):
        pass


def test_process_key_differs_per_cache(clock: Clock) -> None:
    fixed = bytes(12)
    c1 = KeyCache(clock=clock, rng=lambda n: b"\x01" * n if n == 32 else fixed)
    c2 = KeyCache(clock=clock, rng=lambda n: b"\x02" * n if n == 32 else fixed)
    for c in (c1, c2):
        c.unlock("k", "x25519", bytearray(SEED))
    assert c1._entries["k"].sealed != c2._entries["k"].sealed


def test_lock_during_use_does_not_break_the_operation(cache: KeyCache) -> None:
    unlock(cache)
    with cache.use("k") as ident:
        assert cache.lock("k")
        assert ident.seed == SEED  # the running operation keeps its identity
    assert not cache.is_unlocked("k")


def test_concurrent_use_and_lock(clock: Clock) -> None:
    cache = KeyCache(clock=clock, identity_factory=FakeIdentity)  # type: ignore[arg-type]
    errors: list[BaseException] = []
    stop = threading.Event()

    def user() -> None:
        while not stop.is_set():
            try:
                with cache.use("k") as ident:
                    if ident.seed != SEED:
                        errors.append(AssertionError("wrong seed"))
            except Locked:
                pass
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

    threads = [threading.Thread(target=user) for _ in range(3)]
    for t in threads:
        t.start()
    for _ in range(300):
        unlock(cache)
        cache.lock("k")
        unlock(cache)
        cache.lock_all()
    stop.set()
    for t in threads:
        t.join()
    assert errors == []


@pytest.mark.parametrize("key_type", ["x25519", "mlkem768x25519"])
def test_default_factory_builds_age_identity(key_type: str) -> None:
    from keyagentd.age import identity_from_seed

    cache = KeyCache()
    cache.unlock("k", key_type, bytearray(SEED))
    with cache.use("k") as ident:
        assert ident.key_type == key_type
        assert ident.recipient() == identity_from_seed(key_type, SEED).recipient()


def test_default_factory_identity_decrypts_age_files() -> None:
    """End to end with an independent implementation: pyrage encrypts, the cached key opens."""
    import pyrage  # a test dependency: an independent age implementation

    from keyagentd.age import decrypt_bytes, identity_from_seed

    recipient = identity_from_seed("x25519", SEED).recipient().encode()
    ciphertext = pyrage.encrypt(b"hello", [pyrage.x25519.Recipient.from_str(recipient)])
    cache = KeyCache()
    cache.unlock("k", "x25519", bytearray(SEED))
    with cache.use("k") as ident:
        assert decrypt_bytes([ident], ciphertext) == b"hello"


def test_use_wipes_the_identity_on_exit_and_on_error(cache: KeyCache) -> None:
    unlock(cache)
    with cache.use("k") as ident:
        assert isinstance(ident, FakeIdentity) and ident.wiped == 0
    assert ident.wiped == 1
    with pytest.raises(RuntimeError), cache.use("k") as ident:
        raise RuntimeError("the operation failed")
    assert ident.wiped == 1 and ident.buffer == bytes(32)


@pytest.mark.parametrize("key_type", ["x25519", "mlkem768x25519"])
def test_real_identity_is_wiped_after_use(key_type: str) -> None:
    cache = KeyCache()
    cache.unlock("k", key_type, bytearray(SEED))
    with cache.use("k") as ident:
        buffer = ident.seed  # the identity's own buffer
        assert buffer == SEED
    assert buffer == bytes(32)
    with pytest.raises(ValueError):
        ident.unwrap([])


def test_failed_identity_build_wipes_the_seed(clock: Clock) -> None:
    buffers: list[bytearray] = []

    def broken(key_type: str, seed: bytearray) -> FakeIdentity:
        buffers.append(seed)
        assert seed == SEED
        raise ValueError("cannot build")

    cache = KeyCache(clock=clock, wall=clock.wall, identity_factory=broken)  # type: ignore[arg-type]
    unlock(cache)
    with pytest.raises(ValueError), cache.use("k"):
        pass
    assert buffers == [bytearray(32)], "wiped though the with-body never ran"
    assert cache.is_unlocked("k")


def test_a_use_is_good_for_one_with_block(cache: KeyCache) -> None:
    unlock(cache)
    use = cache.use("k")
    with use as ident:
        assert ident.seed == SEED
    assert ident.wiped == 1 and ident.buffer == bytes(32)
    with pytest.raises(RuntimeError), use:
        pass
    assert ident.wiped == 1  # re-entering did not unseal or wipe anything again


def test_each_use_moves_only_its_own_deadline(cache: KeyCache, clock: Clock) -> None:
    unlock(cache, "a", idle_timeout=100)
    unlock(cache, "b", idle_timeout=100)
    clock.t += 60
    with cache.use("a"):
        pass
    assert cache.unlocked_until("a") == int(WALL0 + 160)
    assert cache.unlocked_until("b") == int(WALL0 + 100)
    assert cache.next_deadline() == 1100.0
    clock.t += 40
    assert cache.unlocked_names() == ["a"] and cache.expire_due() == ["b"]


def test_lookups_with_many_keys_match_a_full_scan(cache: KeyCache, clock: Clock) -> None:
    """The O(1) lookups (sorted names kept on change, a scan only once the earliest deadline
    passed) answer exactly what a scan of every entry would, across uses and expiries."""
    names = [f"k{i:04d}" for i in range(1000)]
    for i, name in enumerate(reversed(names)):
        unlock(cache, name, idle_timeout=10 + i % 7, max_timeout=100)
    assert cache.unlocked_names() == names and cache.unlocked_count() == 1000
    alive = {n: 10 + (999 - i) % 7 for i, n in enumerate(names)}
    assert alive[names[-1]] == 10  # among the first to expire...
    clock.t += 5
    with cache.use(names[-1]):  # ...until this use pushes it past the lower bound
        pass
    alive[names[-1]] = 15
    for step in range(1, 20):
        clock.t = 1000.0 + step
        expected = sorted(n for n, deadline in alive.items() if step < deadline)
        assert [n for n in names if cache.is_unlocked(n)] == expected, step
        assert cache.unlocked_names() == expected and cache.unlocked_count() == len(expected)
    assert sorted(cache.expire_due()) == names  # each reported once
    assert cache.expire_due() == [] and cache.next_deadline() is None


def test_names_stay_sorted_through_lock_forget_and_reunlock(cache: KeyCache) -> None:
    for name in ("m", "b", "x", "a"):
        unlock(cache, name)
    cache.lock("b")
    cache.forget("x")
    unlock(cache, "c")
    unlock(cache, "m")  # again: replaced, not listed twice
    assert cache.unlocked_names() == ["a", "c", "m"] and cache.unlocked_count() == 3
    assert cache.lock_all() == ["a", "c", "m"]
    assert cache.unlocked_names() == [] and not cache.is_unlocked("a")
