"""The post-quantum hybrid recipient type ``mlkem768x25519`` (X-Wing via HPKE).

The identity is a 32-byte seed; SHAKE256(seed) gives 96 bytes: the first 64
are the ML-KEM-768 seed, the last 32 the X25519 scalar. The recipient is the
ML-KEM-768 encapsulation key (1184 bytes) then the X25519 public key.
The stanza wraps the file key with HPKE base mode (info below, empty aad).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import ClassVar, Final, Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey, MLKEM768PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from keyagentd.secrets import scrub_bytes

from . import bech32
from .errors import ParseError
from .format import FILE_KEY_SIZE, Stanza, b64decode, b64encode
from .seeded import SeededIdentity

STANZA_TYPE: Final = "mlkem768x25519"
RECIPIENT_HRP: Final = "age1pq"
IDENTITY_HRP: Final = "age-secret-key-pq-"
MLKEM_PUBLIC_SIZE: Final = 1184
MLKEM_CT_SIZE: Final = 1088
PUBLIC_SIZE: Final = MLKEM_PUBLIC_SIZE + 32
ENC_SIZE: Final = MLKEM_CT_SIZE + 32
_INFO: Final = b"age-encryption.org/mlkem768x25519"
_BODY_SIZE: Final = FILE_KEY_SIZE + 16
_SUITE: Final = hpke.Suite(
    hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305
)


class HybridRecipient:
    __slots__ = ("_encoded", "_key", "public_bytes")

    stanza_type: Final = STANZA_TYPE

    def __init__(self, public_bytes: bytes) -> None:
        if len(public_bytes) != PUBLIC_SIZE:
            raise ParseError("A post-quantum recipient has the wrong size.")
        self.public_bytes = bytes(public_bytes)
        self._encoded: str | None = None
        try:
            mlkem = MLKEM768PublicKey.from_public_bytes(self.public_bytes[:MLKEM_PUBLIC_SIZE])
            x25519 = X25519PublicKey.from_public_bytes(self.public_bytes[MLKEM_PUBLIC_SIZE:])
        except ValueError:
            raise ParseError("The post-quantum recipient is not a valid key.") from None
        self._key = hpke.MLKEM768X25519PublicKey(mlkem, x25519)

    def encode(self) -> str:
        """The ``age1...`` string (cached: the hybrid one takes milliseconds)."""
        if self._encoded is None:
            self._encoded = bech32.encode(RECIPIENT_HRP, self.public_bytes)
        return self._encoded

    def wrap(self, file_key: bytes, rng: Callable[[int], bytes]) -> list[Stanza]:
        # The KEM's randomness comes from OpenSSL: the library takes no rng.
        del rng
        sealed = _SUITE.encrypt(file_key, self._key, info=_INFO)
        enc, body = sealed[:ENC_SIZE], sealed[ENC_SIZE:]
        return [Stanza(STANZA_TYPE, (b64encode(enc),), body)]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HybridRecipient) and other.public_bytes == self.public_bytes

    def __hash__(self) -> int:
        return hash((STANZA_TYPE, self.public_bytes))

    def __repr__(self) -> str:
        s = self.encode()
        return f"HybridRecipient('{s[:16]}...{s[-8:]}')"


class HybridIdentity(SeededIdentity):
    """A hybrid identity: a 32-byte seed. ``repr`` shows only part of the public key.

    The seed lives only in the ``bytearray`` of `SeededIdentity` and in OpenSSL's key
    objects (cleansed when freed); the SHAKE256 expansion is zeroed as soon as
    the keys are built. ``wipe()`` zeroes the seed and drops the keys; it also
    runs when the identity is collected. After it, ``seed``, ``encode()`` and
    ``unwrap()`` raise ValueError; ``recipient()`` still works.
    """

    __slots__ = ("_key", "_recipient", "_x25519")

    key_type: Final[Literal["mlkem768x25519"]] = "mlkem768x25519"
    stanza_type: Final = STANZA_TYPE
    _identity_hrp: ClassVar[str] = IDENTITY_HRP
    _size_error: ClassVar[str] = "A post-quantum identity is 32 bytes."

    def __init__(self, seed: bytes | bytearray | memoryview) -> None:
        super().__init__(seed)
        # hashlib can only return the expansion as bytes: it is never sliced into
        # copies (cryptography reads views in place) and is zeroed right after.
        expanded = hashlib.shake_256(self._live_seed()).digest(96)
        try:
            with memoryview(expanded) as view:
                mlkem = MLKEM768PrivateKey.from_seed_bytes(view[:64])
                x25519 = X25519PrivateKey.from_private_bytes(view[64:])
        finally:
            scrub_bytes(expanded)
        self._x25519: X25519PrivateKey | None = x25519
        self._key: hpke.MLKEM768X25519PrivateKey | None = hpke.MLKEM768X25519PrivateKey(
            mlkem, x25519
        )
        self._recipient = HybridRecipient(
            mlkem.public_key().public_bytes_raw() + x25519.public_key().public_bytes_raw()
        )

    def _drop_keys(self) -> None:
        self._x25519, self._key = None, None

    def _live(self) -> tuple[X25519PrivateKey, hpke.MLKEM768X25519PrivateKey]:
        if self._seed is None or self._x25519 is None or self._key is None:
            raise ValueError("This identity has been wiped.")
        return self._x25519, self._key

    def recipient(self) -> HybridRecipient:
        return self._recipient

    def unwrap(self, stanzas: Sequence[Stanza]) -> bytes | None:
        x25519, key = self._live()
        for s in stanzas:
            if s.type != STANZA_TYPE:
                continue
            enc = b64decode(s.args[0]) if len(s.args) == 1 else None
            if enc is None or len(enc) != ENC_SIZE:
                raise ParseError("A post-quantum stanza is malformed.")
            if len(s.body) != _BODY_SIZE:
                raise ParseError("A post-quantum stanza body has the wrong size.")
            # The library reports a low-order X25519 share as a plain tag failure;
            # the spec makes it a header failure, so check it first.
            try:
                shared = x25519.exchange(X25519PublicKey.from_public_bytes(enc[MLKEM_CT_SIZE:]))
            except ValueError:
                shared = bytes(32)
            if shared == bytes(32):
                raise ParseError("A post-quantum stanza has a low-order X25519 share.")
            try:
                return _SUITE.decrypt(enc + s.body, key, info=_INFO)
            except (InvalidTag, ValueError):  # a failed open is "not for us"
                continue
        return None

    def __repr__(self) -> str:
        return f"HybridIdentity(recipient={self._recipient!r})"
