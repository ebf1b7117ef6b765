"""Parsing and generating age keys (identities and recipients)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Literal, Protocol

from . import bech32, hybrid, x25519
from .errors import ParseError, UnsupportedError
from .format import Stanza
from .hybrid import HybridIdentity, HybridRecipient
from .x25519 import X25519Identity, X25519Recipient

KeyType = Literal["x25519", "mlkem768x25519"]
KEY_TYPES: tuple[KeyType, ...] = ("x25519", "mlkem768x25519")


class Recipient(Protocol):
    """Something a file can be encrypted to."""

    def wrap(self, file_key: bytes, rng: Callable[[int], bytes]) -> list[Stanza]: ...


class Identity(Protocol):
    """Something that can open files: ``unwrap`` returns the file key, None if no
    stanza is for it, and raises ParseError on a malformed stanza of its type.

    The key-pair identities (X25519, hybrid) also have ``wipe()``: after it, their
    secret buffers are zeroed and ``unwrap`` raises ValueError."""

    @property
    def stanza_type(self) -> str: ...

    def unwrap(self, stanzas: Sequence[Stanza]) -> bytes | None: ...


def parse_recipient(s: str) -> X25519Recipient | HybridRecipient:
    """An ``age1...`` (X25519) or ``age1pq1...`` (hybrid) recipient."""
    hrp, data = bech32.decode(s.strip())
    if hrp == x25519.RECIPIENT_HRP and len(data) == 32 and s.strip().islower():
        return X25519Recipient(data)
    if hrp == hybrid.RECIPIENT_HRP and s.strip().islower():
        return HybridRecipient(data)
    if hrp.startswith("age1") and hrp != hybrid.RECIPIENT_HRP:
        raise UnsupportedError("This kind of age recipient (a plugin?) is not supported.")
    raise ParseError("The recipient is not a valid age public key (age1...).")


def parse_identity(s: str) -> X25519Identity | HybridIdentity:
    """An ``AGE-SECRET-KEY-1...`` or ``AGE-SECRET-KEY-PQ-1...`` identity."""
    s = s.strip()
    hrp, data = bech32.decode(s)
    if not s.isupper():
        raise ParseError("The secret key is not valid: age secret keys are upper case.")
    if hrp == x25519.IDENTITY_HRP and len(data) == 32:
        return X25519Identity(data)
    if hrp == hybrid.IDENTITY_HRP and len(data) == 32:
        return HybridIdentity(data)
    if hrp.startswith("age-plugin-"):
        raise UnsupportedError("Plugin identities are not supported.")
    raise ParseError("The secret key is not a valid age identity (AGE-SECRET-KEY-...).")


def parse_identities(text: str) -> list[X25519Identity | HybridIdentity]:
    """Every identity of an age identity file (blank lines and ``#`` comments skipped)."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(parse_identity(line))
    if not out:
        raise ParseError("No age secret key found.")
    return out


def identity_from_seed(
    key_type: str, seed: bytes | bytearray | memoryview, public: bytes | None = None
) -> X25519Identity | HybridIdentity:
    """The identity of a 32-byte seed. It copies the seed into its own ``bytearray``
    (the caller still wipes ``seed``); call its ``wipe()`` when the operation is done.
    ``public``: an X25519 seed's public key if the caller kept it (`public_of_seed`)."""
    if key_type == "x25519":
        return X25519Identity(seed, public)
    if key_type == "mlkem768x25519":
        return HybridIdentity(seed)
    raise UnsupportedError(f"Unknown key type {key_type!r}: use x25519 or mlkem768x25519.")


def public_of_seed(key_type: str, seed: bytearray) -> bytes | None:
    """What `identity_from_seed` may be handed back as ``public`` (None: nothing to keep)."""
    if key_type != "x25519":
        return None
    identity = X25519Identity(seed)
    try:
        return identity.public_bytes
    finally:
        identity.wipe()


def generate_identity(
    key_type: str = "x25519", rng: Callable[[int], bytes] = os.urandom
) -> X25519Identity | HybridIdentity:
    if key_type not in KEY_TYPES:
        raise UnsupportedError(f"Unknown key type {key_type!r}: use x25519 or mlkem768x25519.")
    # ``rng`` returns bytes, a copy that cannot be wiped: generating is rare (CreateKey),
    # and the decrypt path never comes here.
    return identity_from_seed(key_type, rng(32))
