"""Unlocked keys, each with an idle timeout and a hard maximum lifetime.

Like gpg-agent's ``default-cache-ttl`` (idle, reset on each use; default 600 s)
and ``max-cache-ttl`` (counted from unlock, never extended; default 7200 s).

Hardening: a cached seed is kept sealed (ChaCha20-Poly1305) under a random key
that exists only in this process's memory, bound to the key's name and type.
``use()`` opens it into a transient ``bytearray`` for one operation and, on
exit, wipes that and the identity built from it (``identity.wipe()``: its own
seed buffer, and its OpenSSL keys, which OpenSSL cleanses when freed); locking
wipes the sealed bytes. An identity is good only inside its ``with`` block. The key's
public part (no secret) is derived once at unlock and kept beside the sealed seed, so a
use costs one X25519 multiplication (age/x25519.py), not two.
This keeps plaintext seeds out of long-lived memory (and out of most core
dumps and swap); it is not a defence against code running inside the agent.

Expiry is evaluated against an injectable monotonic clock. A key whose deadline
passed counts as locked everywhere at once, and its bytes are wiped the first
time any method notices; ``expire_due()`` reports it exactly once, so the bus
layer can call it from a timer set to ``next_deadline()`` and emit
``PropertiesChanged``.

All methods take one ``threading.Lock``: ``use()`` runs in worker threads while
the event loop locks and expires keys. An operation that already holds an
identity keeps it if its key is locked meanwhile.
"""

from __future__ import annotations

import bisect
import os
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Final

from keyagent.protocol import InvalidArgs, Locked
from keyagentd.secrets import wipe

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    from keyagentd.age import AnyIdentity

    #: What ``use()`` yields: a concrete age identity (``recipient()``, ``unwrap()``, ...).
    Identity = AnyIdentity

DEFAULT_IDLE_TIMEOUT: Final = 600
DEFAULT_MAX_TIMEOUT: Final = 7200
#: Timeouts travel as D-Bus ``u`` (uint32 seconds).
MAX_TIMEOUT_SECONDS: Final = 2**32 - 1
#: A seed is 32 bytes; an ssh-rsa key's secret (its DER) is longer.
MAX_SECRET_LEN: Final = 12 * 1024
_NONCE_LEN: Final = 12
_TAG_LEN: Final = 16

IdentityFactory = Callable[[str, bytearray], "Identity"]


@dataclass(frozen=True)
class UnlockedKey:
    """What the bus shows about an unlocked key."""

    name: str
    key_type: str
    unlocked_at: float  # wall clock, unix seconds
    idle_timeout: int
    max_timeout: int
    expires_at_wall: float  # when it locks if unused: min(idle deadline, max deadline)


class _Activity:
    """The part of an entry each use changes: mutated in place (under the cache's lock), so
    a use does not rebuild the frozen entry."""

    __slots__ = ("deadline", "deadline_wall")

    def __init__(self, deadline: float, deadline_wall: float) -> None:
        self.deadline = deadline  # monotonic: min(idle deadline, max deadline)
        self.deadline_wall = deadline_wall  # the same instant on the wall clock


@dataclass(frozen=True)
class _Entry:
    key_type: str
    nonce: bytes
    sealed: bytearray  # the seed under the process key; wiped in place on lock
    unlocked_mono: float
    unlocked_wall: float
    idle_timeout: int
    max_timeout: int
    activity: _Activity
    public: bytes | None  # the key's public part, derived once at unlock (no secret)

    @property
    def deadline(self) -> float:
        return self.activity.deadline

    def touch(self, now: float, wall: float) -> None:
        """A use at ``now``: push the idle deadline, never past the maximum lifetime."""
        deadline = min(now + self.idle_timeout, self.unlocked_mono + self.max_timeout)
        self.activity.deadline = deadline
        self.activity.deadline_wall = wall + (deadline - now)


def _check_timeout(value: int, what: str) -> int:
    if type(value) is not int or not 1 <= value <= MAX_TIMEOUT_SECONDS:
        raise InvalidArgs(f"The {what} timeout must be a whole number of seconds from 1 to 2^32-1.")
    return value


def _default_identity_factory(
    key_type: str, seed: bytearray, public: bytes | None = None
) -> Identity:
    global _identity_from_seed
    if _identity_from_seed is None:  # imported on first use: the cache does not need age
        from keyagentd.age import identity_from_seed

        _identity_from_seed = identity_from_seed  # not an import statement per use
    return _identity_from_seed(key_type, seed, public)


_identity_from_seed: Callable[[str, bytearray, bytes | None], Identity] | None = None


def _public_of(key_type: str, seed: bytearray) -> bytes | None:
    from keyagentd.age import public_of_seed

    return public_of_seed(key_type, seed)


class KeyCache:
    """The agent's unlocked keys (a name that is absent is locked)."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        rng: Callable[[int], bytes] = os.urandom,
        identity_factory: IdentityFactory | None = None,
        default_idle_timeout: int = DEFAULT_IDLE_TIMEOUT,
        default_max_timeout: int = DEFAULT_MAX_TIMEOUT,
    ) -> None:
        self._clock = clock
        self._wall = wall
        self._rng = rng
        self._factory = identity_factory or _default_identity_factory
        # The age identities take the public key kept from unlock: a use is then one X25519
        # multiplication, not two (age/x25519.py). A test's own factory gets (type, seed).
        self._keeps_public = identity_factory is None
        self.default_idle_timeout = _check_timeout(default_idle_timeout, "idle")
        self.default_max_timeout = _check_timeout(default_max_timeout, "maximum")
        self._process_key = bytearray(rng(32))  # until the AEAD is made (`_cipher`)
        self._aead: ChaCha20Poly1305 | None = None
        self._aead_lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._sorted: list[str] = []  # the names of _entries, kept sorted (not per call)
        # No deadline is earlier than this (uses only push deadlines later): `_reap` scans
        # the entries only once it passed, so a lookup costs the same with 1 or 1,000 keys.
        self._earliest = float("inf")
        self._expired: list[str] = []  # wiped on expiry, not yet reported by expire_due()
        self._mutex = threading.Lock()

    def _cipher(self) -> ChaCha20Poly1305:
        """The AEAD of the cached seeds, made at the first unlock: importing cryptography
        (~5 ms) is not on the agent's start path (docs/DECISIONS.md, cold start)."""
        aead = self._aead
        if aead is not None:  # set once, never unset: no lock after the first unlock
            return aead
        with self._aead_lock:
            if self._aead is None:
                from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

                self._aead = ChaCha20Poly1305(self._process_key)
                wipe(self._process_key)  # the AEAD object keeps its own copy
            return self._aead

    def unlock(
        self,
        name: str,
        key_type: str,
        seed: bytearray,
        idle_timeout: int | None = None,
        max_timeout: int | None = None,
    ) -> None:
        """Cache ``seed`` (taking ownership: the caller's bytearray is wiped, even on error)."""
        try:
            if not 0 < len(seed) <= MAX_SECRET_LEN:
                raise ValueError(f"a key secret is 1 to {MAX_SECRET_LEN} bytes")
            idle = _check_timeout(
                self.default_idle_timeout if idle_timeout is None else idle_timeout, "idle"
            )
            most = _check_timeout(
                self.default_max_timeout if max_timeout is None else max_timeout, "maximum"
            )
            public = _public_of(key_type, seed) if self._keeps_public else None
            nonce = self._rng(_NONCE_LEN)
            sealed = bytearray(len(seed) + _TAG_LEN)
            self._cipher().encrypt_into(nonce, seed, _ad(name, key_type), sealed)
        finally:
            wipe(seed)
        with self._mutex:
            now, wall = self._clock(), self._wall()
            entry = _Entry(
                key_type=key_type,
                nonce=nonce,
                sealed=sealed,
                unlocked_mono=now,
                unlocked_wall=wall,
                idle_timeout=idle,
                max_timeout=most,
                activity=_Activity(now + min(idle, most), wall + min(idle, most)),
                public=public,
            )
            self._drop(name)
            if name in self._expired:
                self._expired.remove(name)  # locked and unlocked again before anyone asked
            self._entries[name] = entry
            bisect.insort(self._sorted, name)
            self._earliest = min(self._earliest, entry.deadline)

    def is_unlocked(self, name: str) -> bool:
        """Whether ``name`` is usable now (does not count as a use)."""
        with self._mutex:
            self._reap()
            return name in self._entries

    def unlocked_names(self) -> list[str]:
        """The unlocked names, sorted (a copy: kept sorted on change, not per call)."""
        with self._mutex:
            self._reap()
            return self._sorted.copy()

    def unlocked_count(self) -> int:
        with self._mutex:
            self._reap()
            return len(self._entries)

    def status(self, name: str) -> UnlockedKey | None:
        """The public facts about an unlocked key, or None if it is locked."""
        with self._mutex:
            self._reap()
            e = self._entries.get(name)
            if e is None:
                return None
            return UnlockedKey(
                name,
                e.key_type,
                e.unlocked_wall,
                e.idle_timeout,
                e.max_timeout,
                e.activity.deadline_wall,
            )

    def unlocked_until(self, name: str) -> int:
        """Unix seconds at which ``name`` locks if unused; 0 if it is locked."""
        info = self.status(name)
        return 0 if info is None else int(info.expires_at_wall)

    def timeouts(self, name: str) -> tuple[int, int]:
        """(idle, max) seconds in effect for ``name``; the defaults if it is locked."""
        info = self.status(name)
        if info is None:
            return (self.default_idle_timeout, self.default_max_timeout)
        return (info.idle_timeout, info.max_timeout)

    def use(self, name: str) -> AbstractContextManager[Identity]:
        """The key's identity for one operation (wiped on exit); resets its idle timer.

        ``with cache.use(name) as identity: ...``; entering raises ``Locked`` if locked.
        """
        return _Use(self, name)

    def _open(self, name: str, use: _Use) -> tuple[str, bytes | None]:
        """Unseal ``name``'s secret into a new ``use._seed`` and count a use: (key type,
        public part kept from unlock, or None)."""
        with self._mutex:
            self._reap()
            entry = self._entries.get(name)
            if entry is None:
                raise Locked.for_keys((name,))
            entry.touch(self._clock(), self._wall())
            seed = use._seed = bytearray(len(entry.sealed) - _TAG_LEN)
            self._cipher().decrypt_into(entry.nonce, entry.sealed, _ad(name, entry.key_type), seed)
            return entry.key_type, entry.public

    def lock(self, name: str) -> bool:
        """Wipe ``name``; True if it was unlocked."""
        with self._mutex:
            self._reap()
            return self._drop(name)

    def lock_all(self) -> list[str]:
        """Wipe every key; the names that were unlocked."""
        with self._mutex:
            self._reap()
            names = self._sorted.copy()
            for name in names:
                self._drop(name)
            return names

    def forget(self, name: str) -> bool:
        """For a deleted key: wipe it and drop any unreported expiry; True if it was unlocked."""
        with self._mutex:
            self._reap()
            if name in self._expired:
                self._expired.remove(name)
            return self._drop(name)

    def expire_due(self) -> list[str]:
        """Wipe keys whose deadline passed; each expired name is returned exactly once."""
        with self._mutex:
            self._reap()
            names, self._expired = sorted(self._expired), []
            return names

    def next_deadline(self) -> float | None:
        """Monotonic time of the next expiry (now, if one awaits ``expire_due``); None if none."""
        with self._mutex:
            self._reap()
            if self._expired:
                return self._clock()
            return min((e.deadline for e in self._entries.values()), default=None)

    def _drop(self, name: str) -> bool:
        entry = self._entries.pop(name, None)
        if entry is None:
            return False
        del self._sorted[bisect.bisect_left(self._sorted, name)]
        wipe(entry.sealed)
        return True

    def _reap(self) -> None:
        now = self._clock()
        if now < self._earliest:
            return  # no deadline passed yet: O(1), the common case
        for name in [n for n, e in self._entries.items() if now >= e.activity.deadline]:
            self._drop(name)
            self._expired.append(name)
        self._earliest = min((e.deadline for e in self._entries.values()), default=float("inf"))


class _Use:
    """``KeyCache.use``: a plain class, cheaper per call than a generator context manager."""

    __slots__ = ("_cache", "_identity", "_name", "_seed")

    def __init__(self, cache: KeyCache, name: str) -> None:
        self._cache = cache
        self._name = name
        self._seed: bytearray | None = None
        self._identity: Identity | None = None

    def __enter__(self) -> Identity:
        if self._seed is not None:
            raise RuntimeError("KeyCache.use() is good for one with-block")
        try:
            key_type, public = self._cache._open(self._name, self)
            seed = self._seed
            assert seed is not None
            # Building the identity (ML-KEM expansion) runs outside the lock.
            if public is None:
                self._identity = self._cache._factory(key_type, seed)
            else:
                self._identity = _default_identity_factory(key_type, seed, public)
        except BaseException:
            self._close()
            raise
        return self._identity

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._close()

    def _close(self) -> None:
        if self._seed is not None:
            wipe(self._seed)
        # Also on exceptions: the identity holds its own copy of the seed.
        identity, self._identity = self._identity, None
        if identity is not None:
            identity.wipe()


def _ad(name: str, key_type: str) -> bytes:
    # Binds a sealed seed to its slot: entries cannot be swapped between names or types.
    return f"keyagent-cache\0{name}\0{key_type}".encode()
