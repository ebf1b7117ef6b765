"""The native X25519 recipient type (C2SP age, "The X25519 recipient type")."""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable, Sequence
from typing import ClassVar, Final, Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from keyagentd.secrets import wipe

from . import bech32
from .errors import ParseError
from .format import FILE_KEY_SIZE, Stanza, b64decode, b64encode, hkdf
from .seeded import SeededIdentity

STANZA_TYPE: Final = "X25519"
RECIPIENT_HRP: Final = "age"
IDENTITY_HRP: Final = "age-secret-key-"
_INFO: Final = b"age-encryption.org/v1/X25519"
_ZERO_NONCE: Final = bytes(12)
_ZERO_SHARED: Final = bytes(32)
_BODY_SIZE: Final = FILE_KEY_SIZE + 16


def _shared(private: X25519PrivateKey, peer: X25519PublicKey) -> bytes:
    """X25519 with the all-zero result refused, as the spec requires."""
    try:
        shared = private.exchange(peer)
    except ValueError:
        # cryptography refuses an all-zero shared secret itself.
        raise ParseError("An X25519 stanza has a low-order share.") from None
    if shared == _ZERO_SHARED:
        raise ParseError("An X25519 stanza has a low-order share.")
    return shared


_Point = ctypes.c_char * 32


@functools.cache
def _sodium() -> ctypes.CDLL | None:
    """libsodium, when the system has it: its ``crypto_scalarmult`` is one X25519
    multiplication, where loading a private key into OpenSSL costs a second (it derives
    the public key). Without it the identities use OpenSSL, as before."""
    for name in ("libsodium.so.23", "libsodium.so.26", "libsodium.so"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        if lib.sodium_init() >= 0:
            return lib
    return None


def _scalarmult(lib: ctypes.CDLL, scalar: bytearray, point: bytes | None) -> bytes:
    """``scalar`` x ``point`` (the base point if None), the scalar read in place: no copy."""
    out = bytearray(32)
    try:
        if point is None:
            rc = lib.crypto_scalarmult_base(_Point.from_buffer(out), _Point.from_buffer(scalar))
        else:
            rc = lib.crypto_scalarmult(
                _Point.from_buffer(out), _Point.from_buffer(scalar), _Point.from_buffer_copy(point)
            )
        if rc != 0 or out == _ZERO_SHARED:  # libsodium refuses an all-zero result itself
            raise ParseError("An X25519 stanza has a low-order share.")
        return bytes(out)
    finally:
        wipe(out)


class X25519Recipient:
    __slots__ = ("_encoded", "_key", "public_bytes")

    def __init__(self, public_bytes: bytes) -> None:
        if len(public_bytes) != 32:
            raise ParseError("An X25519 recipient is 32 bytes.")
        self.public_bytes = bytes(public_bytes)
        self._encoded: str | None = None
        self._key = X25519PublicKey.from_public_bytes(self.public_bytes)

    stanza_type: Final = STANZA_TYPE

    def encode(self) -> str:
        """The ``age1...`` string (cached: the hybrid one takes milliseconds)."""
        if self._encoded is None:
            self._encoded = bech32.encode(RECIPIENT_HRP, self.public_bytes)
        return self._encoded

    def wrap(self, file_key: bytes, rng: Callable[[int], bytes]) -> list[Stanza]:
        ephemeral = X25519PrivateKey.from_private_bytes(rng(32))
        share = ephemeral.public_key().public_bytes_raw()
        shared = _shared(ephemeral, self._key)
        wrap_key = hkdf(shared, share + self.public_bytes, _INFO)
        body = ChaCha20Poly1305(wrap_key).encrypt(_ZERO_NONCE, file_key, None)
        return [Stanza(STANZA_TYPE, (b64encode(share),), body)]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, X25519Recipient) and other.public_bytes == self.public_bytes

    def __hash__(self) -> int:
        return hash((STANZA_TYPE, self.public_bytes))

    def __repr__(self) -> str:
        return f"X25519Recipient({self.encode()!r})"


class X25519Identity(SeededIdentity):
    """An X25519 identity: a 32-byte seed (the scalar). ``repr`` shows only the public key.

    The seed lives only in the ``bytearray`` of `SeededIdentity` (libsodium reads it in
    place, per multiplication) or, without libsodium, also in OpenSSL's key object
    (cleansed when freed). ``wipe()`` zeroes the one and drops the other;
    it also runs when the identity is collected. After it, ``seed``,
    ``encode()`` and ``unwrap()`` raise ValueError; ``recipient()`` still works.
    """

    __slots__ = ("_key", "_public", "_recipient")

    key_type: Final[Literal["x25519"]] = "x25519"
    stanza_type: Final = STANZA_TYPE
    _identity_hrp: ClassVar[str] = IDENTITY_HRP
    _size_error: ClassVar[str] = "An X25519 identity is 32 bytes."

    def __init__(self, seed: bytes | bytearray | memoryview, public: bytes | None = None) -> None:
        """``public``: this seed's public key, when the caller kept it (the agent's cache
        does, from unlock): with libsodium an unwrap is then one scalar multiplication."""
        super().__init__(seed)
        self._key: X25519PrivateKey | None = None
        lib = _sodium()
        if lib is not None:
            self._public = bytes(public) if public else _scalarmult(lib, self._live_seed(), None)
        else:
            # cryptography reads the buffer in place: no ``bytes`` copy of the scalar. OpenSSL
            # derives the public key here (one scalar multiplication) whether or not we ask.
            self._key = X25519PrivateKey.from_private_bytes(self._live_seed())
            self._public = self._key.public_key().public_bytes_raw()
        # Built on demand: the decrypt path needs only the public bytes.
        self._recipient: X25519Recipient | None = None

    def _drop_keys(self) -> None:
        self._key = None

    def _exchange(self, share: bytes) -> bytes:
        seed = self._live_seed()
        if self._key is None:
            lib = _sodium()
            assert lib is not None
            return _scalarmult(lib, seed, share)
        return _shared(self._key, X25519PublicKey.from_public_bytes(share))

    @property
    def public_bytes(self) -> bytes:
        """The public key (the recipient's 32 bytes): no secret, kept after ``wipe()``."""
        return self._public

    def recipient(self) -> X25519Recipient:
        if self._recipient is None:
            self._recipient = X25519Recipient(self._public)
        return self._recipient

    def unwrap(self, stanzas: Sequence[Stanza]) -> bytes | None:
        self._live_seed()  # a wiped identity raises even with no stanza of its type
        for s in stanzas:
            if s.type != STANZA_TYPE:
                continue
            share = b64decode(s.args[0]) if len(s.args) == 1 else None
            if share is None or len(share) != 32:
                raise ParseError("An X25519 stanza is malformed.")
            if len(s.body) != _BODY_SIZE:
                raise ParseError("An X25519 stanza body has the wrong size.")
            shared = self._exchange(share)
            wrap_key = hkdf(shared, share + self._public, _INFO)
            try:
                file_key = ChaCha20Poly1305(wrap_key).decrypt(_ZERO_NONCE, s.body, None)
            except InvalidTag:
                continue
            return file_key
        return None

    def __repr__(self) -> str:
        return f"X25519Identity(recipient={self.recipient().encode()!r})"
