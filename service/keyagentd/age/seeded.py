"""The seed-holding part shared by the key-pair identities (X25519, hybrid, SSH)."""

from __future__ import annotations

from typing import ClassVar

from keyagentd.secrets import scrub_bytes
from keyagentd.secrets import wipe as wipe_buffer

from . import bech32
from .errors import ParseError

SEED_SIZE = 32


class SeededIdentity:
    """An identity made from a 32-byte seed.

    The seed lives only in a ``bytearray`` this object owns (and in whatever key
    objects a subclass builds from it, which `_drop_keys` releases). ``wipe()`` zeroes
    it and drops the keys; it also runs when the identity is collected. After it,
    ``seed`` and ``encode()`` raise ValueError (and a subclass's ``unwrap()``, through
    its own liveness check).
    """

    __slots__ = ("_seed",)

    #: Set by each subclass: the bech32 prefix of its secret-key string (lower case;
    #: `encode` upper-cases the result) and the message for a seed of the wrong size.
    _identity_hrp: ClassVar[str]
    _size_error: ClassVar[str]
    #: The secret sizes a subclass accepts (an RSA key is longer than a seed).
    _sizes: ClassVar[range] = range(SEED_SIZE, SEED_SIZE + 1)

    def __init__(self, seed: bytes | bytearray | memoryview) -> None:
        if len(seed) not in self._sizes:
            raise ParseError(self._size_error)
        self._seed: bytearray | None = bytearray(seed)

    def _drop_keys(self) -> None:
        """Release the key objects built from the seed (the subclass's own slots)."""
        raise NotImplementedError

    def _live_seed(self) -> bytearray:
        if self._seed is None:
            raise ValueError("This identity has been wiped.")
        return self._seed

    @property
    def seed(self) -> bytearray:
        """The identity's own seed buffer, zeroed by ``wipe()``: copy it to keep it."""
        return self._live_seed()

    def wipe(self) -> None:
        """Zero the seed and release the keys (idempotent)."""
        seed = getattr(self, "_seed", None)  # unset if __init__ failed early
        self._seed = None
        self._drop_keys()
        if seed is not None:
            wipe_buffer(seed)

    def __del__(self) -> None:
        if getattr(self, "_seed", None) is not None:  # not wiped yet (usually it was)
            self.wipe()

    def encode(self) -> str:
        """The ``AGE-SECRET-KEY-...`` string: secret, and an immutable ``str`` that
        cannot be wiped; for Export only, never on the decrypt path."""
        data = bytes(self._live_seed())  # bech32 takes bytes: a copy, zeroed below
        try:
            return bech32.encode(self._identity_hrp, data).upper()
        finally:
            scrub_bytes(data)
