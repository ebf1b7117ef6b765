"""age's SSH recipient types ``ssh-ed25519`` and ``ssh-rsa`` (C2SP age; age's agessh).

Both stanzas start with a tag: the first 4 bytes of SHA-256 of the SSH wire public key,
so an identity skips a stanza for another key without any key agreement.

- ssh-ed25519: ``-> ssh-ed25519 <tag> <share>``. X25519 with the Ed25519 key moved to
  Montgomery form (public: u = (1+y)/(1-y); secret: SHA-512(seed)[:32]); the shared secret
  is multiplied once more by a tweak, HKDF-SHA256(ikm="", salt=wire key, info=label), and
  the wrap key is HKDF(shared, salt=share || recipient, info=label).
- ssh-rsa: ``-> ssh-rsa <tag>``, body RSA-OAEP-SHA256(file key, label=the OAEP label).

The identities keep their secret (the Ed25519 seed; the RSA key as PKCS#8 DER) in a wiped
``bytearray`` like the other key-pair identities (`SeededIdentity`).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Sequence
from typing import ClassVar, Final, Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from keyagentd.secrets import scrub_bytes

from . import sshformat
from .errors import ParseError
from .format import FILE_KEY_SIZE, Stanza, b64decode, b64encode, hkdf
from .seeded import SeededIdentity
from .x25519 import _shared

ED25519_STANZA: Final = sshformat.ED25519
RSA_STANZA: Final = sshformat.RSA
_ED25519_LABEL: Final = b"age-encryption.org/v1/ssh-ed25519"
_RSA_LABEL: Final = b"age-encryption.org/v1/ssh-rsa"
_ZERO_NONCE: Final = bytes(12)
_BODY_SIZE: Final = FILE_KEY_SIZE + 16
_P: Final = 2**255 - 19
_D: Final = -121665 * pow(121666, -1, _P) % _P


def _oaep() -> padding.OAEP:
    return padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), _RSA_LABEL)


def tag(wire: bytes) -> str:
    return b64encode(hashlib.sha256(wire).digest()[:4])


def ed25519_wire(public: bytes) -> bytes:
    name = ED25519_STANZA.encode()
    return len(name).to_bytes(4, "big") + name + len(public).to_bytes(4, "big") + public


def montgomery(public: bytes) -> bytes:
    """The X25519 public key of an Ed25519 one; ParseError if it is not a curve point."""
    y = int.from_bytes(public, "little") & ((1 << 255) - 1)
    y %= _P  # non-canonical encodings are accepted, as Go's edwards25519 does
    x2 = (y * y - 1) * pow(_D * y * y + 1, -1, _P) % _P
    if x2 and pow(x2, (_P - 1) // 2, _P) != 1:
        raise ParseError("The ssh-ed25519 key is not a valid Ed25519 point.")
    u = (1 + y) * pow((1 - y) % _P, -1, _P) % _P if y != 1 else 0
    return u.to_bytes(32, "little")


def _tweak(wire: bytes) -> bytes:
    return hkdf(b"", wire, _ED25519_LABEL)


class _SshRecipient:
    """The parts both SSH recipients share: the wire key, its tag and its text form."""

    __slots__ = ("_tag", "wire")
    stanza_type: ClassVar[str]

    def __init__(self, wire: bytes) -> None:
        self.wire = bytes(wire)
        self._tag = tag(self.wire)

    def encode(self) -> str:
        """The ``authorized_keys`` form without comment."""
        return sshformat.encode_public(self.wire)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.wire == self.wire

    def __hash__(self) -> int:
        return hash((self.stanza_type, self.wire))

    def __repr__(self) -> str:
        s = self.encode()
        return f"{type(self).__name__}('{s[:24]}...{s[-8:]}')"


class SshEd25519Recipient(_SshRecipient):
    __slots__ = ("_key", "_tweak", "_u")
    stanza_type: ClassVar[str] = ED25519_STANZA

    def __init__(self, wire: bytes) -> None:
        super().__init__(wire)
        name, pos = sshformat.read_string(self.wire, 0)
        public, end = sshformat.read_string(self.wire, pos)
        if name != ED25519_STANZA.encode() or len(public) != 32 or end != len(self.wire):
            raise ParseError("The ssh-ed25519 key is not valid.")
        self._u = montgomery(public)
        self._key = X25519PublicKey.from_public_bytes(self._u)
        self._tweak = _tweak(self.wire)

    def wrap(self, file_key: bytes, rng: Callable[[int], bytes]) -> list[Stanza]:
        ephemeral = X25519PrivateKey.from_private_bytes(rng(32))
        share = ephemeral.public_key().public_bytes_raw()
        shared = _tweaked(_shared(ephemeral, self._key), self._tweak)
        wrap_key = hkdf(shared, share + self._u, _ED25519_LABEL)
        body = ChaCha20Poly1305(wrap_key).encrypt(_ZERO_NONCE, file_key, None)
        return [Stanza(ED25519_STANZA, (self._tag, b64encode(share)), body)]


def _tweaked(shared: bytes, tweak: bytes) -> bytes:
    return _shared(
        X25519PrivateKey.from_private_bytes(tweak), X25519PublicKey.from_public_bytes(shared)
    )


class SshRsaRecipient(_SshRecipient):
    __slots__ = ("_key",)
    stanza_type: ClassVar[str] = RSA_STANZA

    def __init__(self, wire: bytes) -> None:
        super().__init__(wire)
        try:
            key = serialization.load_ssh_public_key(self.encode().encode("ascii"))
        except (ValueError, TypeError):
            raise ParseError("The ssh-rsa key is not valid.") from None
        if not isinstance(key, rsa.RSAPublicKey):
            raise ParseError("The ssh-rsa key is not valid.")
        sshformat.check_rsa_bits(key.key_size)
        self._key = key

    def wrap(self, file_key: bytes, rng: Callable[[int], bytes]) -> list[Stanza]:
        # OAEP's randomness comes from OpenSSL: the library takes no rng.
        del rng
        return [Stanza(RSA_STANZA, (self._tag,), self._key.encrypt(file_key, _oaep()))]


@functools.lru_cache(maxsize=64)
def _ed25519_recipient(wire: bytes) -> SshEd25519Recipient:
    """Remembered (public data): the Montgomery conversion's modular arithmetic in Python
    costs ~160 us, and the cache builds an identity for every operation."""
    return SshEd25519Recipient(wire)


class SshEd25519Identity(SeededIdentity):
    """An ssh-ed25519 identity: the 32-byte Ed25519 seed (as in the OpenSSH key)."""

    __slots__ = ("_recipient", "_x25519")

    key_type: Final[Literal["ssh-ed25519"]] = "ssh-ed25519"
    stanza_type: Final = ED25519_STANZA
    _identity_hrp: ClassVar[str] = ""
    _size_error: ClassVar[str] = "An ssh-ed25519 identity is 32 bytes."

    def __init__(self, seed: bytes | bytearray | memoryview) -> None:
        super().__init__(seed)
        ed = Ed25519PrivateKey.from_private_bytes(self._live_seed())
        self._recipient = _ed25519_recipient(ed25519_wire(ed.public_key().public_bytes_raw()))
        expanded = hashlib.sha512(self._live_seed()).digest()
        try:
            with memoryview(expanded) as view:
                self._x25519: X25519PrivateKey | None = X25519PrivateKey.from_private_bytes(
                    view[:32]
                )
        finally:
            scrub_bytes(expanded)

    def _drop_keys(self) -> None:
        self._x25519 = None

    def recipient(self) -> SshEd25519Recipient:
        return self._recipient

    def unwrap(self, stanzas: Sequence[Stanza]) -> bytes | None:
        if self._seed is None or self._x25519 is None:
            raise ValueError("This identity has been wiped.")
        r = self._recipient
        for s in stanzas:
            if s.type != ED25519_STANZA:
                continue
            share = b64decode(s.args[1]) if len(s.args) == 2 else None
            if share is None or len(share) != 32:
                raise ParseError("An ssh-ed25519 stanza is malformed.")
            if s.args[0] != r._tag:
                continue
            if len(s.body) != _BODY_SIZE:
                raise ParseError("An ssh-ed25519 stanza body has the wrong size.")
            shared = _shared(self._x25519, X25519PublicKey.from_public_bytes(share))
            wrap_key = hkdf(_tweaked(shared, r._tweak), share + r._u, _ED25519_LABEL)
            try:
                return ChaCha20Poly1305(wrap_key).decrypt(_ZERO_NONCE, s.body, None)
            except InvalidTag:
                continue  # a tag collision with another key: not ours
        return None

    def encode(self) -> str:
        """The OpenSSH private key, unencrypted (for Export only, like the others)."""
        key = Ed25519PrivateKey.from_private_bytes(self._live_seed())
        return _openssh_text(key)

    def __repr__(self) -> str:
        return f"SshEd25519Identity(recipient={self._recipient!r})"


class SshRsaIdentity(SeededIdentity):
    """An ssh-rsa identity: the RSA private key as PKCS#8 DER, trusted as given (the full RSA
    check runs where a key enters: `sshload`)."""

    __slots__ = ("_key", "_recipient")

    key_type: Final[Literal["ssh-rsa"]] = "ssh-rsa"
    stanza_type: Final = RSA_STANZA
    _identity_hrp: ClassVar[str] = ""
    _size_error: ClassVar[str] = "An ssh-rsa identity is a PKCS#8 RSA key."
    _sizes: ClassVar[range] = range(64, 12 * 1024 + 1)

    def __init__(self, der: bytes | bytearray | memoryview) -> None:
        super().__init__(der)
        try:
            # The sealed DER was checked when it was imported (and the cache and key file
            # authenticate it): the full RSA check would cost ~130 ms at every use.
            key = serialization.load_der_private_key(
                self._live_seed(), None, unsafe_skip_rsa_key_validation=True
            )
        except (ValueError, TypeError):
            raise ParseError(self._size_error) from None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ParseError(self._size_error)
        sshformat.check_rsa_bits(key.key_size)
        self._key: rsa.RSAPrivateKey | None = key
        blob = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        self._recipient = SshRsaRecipient(sshformat.parse_public_line(blob.decode())[1])

    def _drop_keys(self) -> None:
        self._key = None

    def recipient(self) -> SshRsaRecipient:
        return self._recipient

    def unwrap(self, stanzas: Sequence[Stanza]) -> bytes | None:
        if self._seed is None or self._key is None:
            raise ValueError("This identity has been wiped.")
        for s in stanzas:
            if s.type != RSA_STANZA:
                continue
            if len(s.args) != 1:
                raise ParseError("An ssh-rsa stanza is malformed.")
            if s.args[0] != self._recipient._tag:
                continue
            try:
                file_key = self._key.decrypt(s.body, _oaep())
            except ValueError:
                continue  # a tag collision with another key: not ours
            if len(file_key) != FILE_KEY_SIZE:
                raise ParseError("An ssh-rsa stanza wraps a file key of the wrong size.")
            return file_key
        return None

    def encode(self) -> str:
        """The OpenSSH private key, unencrypted (for Export only, like the others)."""
        if self._key is None:
            raise ValueError("This identity has been wiped.")
        return _openssh_text(self._key)

    def __repr__(self) -> str:
        return f"SshRsaIdentity(recipient={self._recipient!r})"


def _openssh_text(key: Ed25519PrivateKey | rsa.RSAPrivateKey) -> str:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    return pem.decode("ascii").rstrip("\n")
