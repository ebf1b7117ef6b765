"""The passphrase (scrypt) recipient type (C2SP age, "The scrypt recipient type")."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from .errors import ParseError, UnsupportedError
from .format import FILE_KEY_SIZE, Stanza, b64decode, b64encode

STANZA_TYPE: Final = "scrypt"
_SALT_LABEL: Final = b"age-encryption.org/v1/scrypt"
_ZERO_NONCE: Final = bytes(12)
_BODY_SIZE: Final = FILE_KEY_SIZE + 16
_WORK_FACTOR_RE: Final = re.compile(r"[1-9][0-9]*")
#: Work factors above this are nonsense rather than merely expensive.
_MAX_SANE_WORK_FACTOR: Final = 64
#: Bounds of the automatic choice (age's default is 18; 2**20 needs 1 GiB).
MIN_AUTO_WORK_FACTOR: Final = 18
MAX_AUTO_WORK_FACTOR: Final = 20
_TARGET_SECONDS: Final = 1.0

_auto_work_factor: int | None = None


def _derive(passphrase: bytes, salt: bytes, log_n: int) -> bytes:
    kdf = Scrypt(salt=_SALT_LABEL + salt, length=32, n=1 << log_n, r=8, p=1)
    return kdf.derive(passphrase)


def auto_work_factor() -> int:
    """The work factor that takes about a second here (measured once per process)."""
    global _auto_work_factor
    if _auto_work_factor is None:
        probe = 14
        start = time.perf_counter()
        _derive(b"calibration", bytes(16), probe)
        elapsed = max(time.perf_counter() - start, 1e-6)
        log_n = probe
        while elapsed * 2 <= _TARGET_SECONDS and log_n < MAX_AUTO_WORK_FACTOR:
            elapsed *= 2
            log_n += 1
        _auto_work_factor = max(MIN_AUTO_WORK_FACTOR, log_n)
    return _auto_work_factor


class ScryptRecipient:
    """Encrypts to a passphrase. It must be the only recipient of a file."""

    __slots__ = ("_passphrase", "work_factor")

    stanza_type: Final = STANZA_TYPE

    def __init__(self, passphrase: str, work_factor: int | None = None) -> None:
        if not passphrase:
            raise ValueError("the passphrase must not be empty")
        if work_factor is not None and not 1 <= work_factor <= 30:
            raise ValueError("the scrypt work factor must be between 1 and 30")
        self._passphrase = passphrase.encode("utf-8")
        self.work_factor = work_factor

    def wrap(self, file_key: bytes, rng: Callable[[int], bytes]) -> list[Stanza]:
        log_n = self.work_factor if self.work_factor is not None else auto_work_factor()
        salt = rng(16)
        key = _derive(self._passphrase, salt, log_n)
        body = ChaCha20Poly1305(key).encrypt(_ZERO_NONCE, file_key, None)
        return [Stanza(STANZA_TYPE, (b64encode(salt), str(log_n)), body)]

    def __repr__(self) -> str:
        return f"ScryptRecipient(work_factor={self.work_factor!r})"


class ScryptIdentity:
    """Decrypts files encrypted to a passphrase, refusing work factors above the cap
    before doing any key derivation."""

    __slots__ = ("_passphrase", "max_work_factor")

    stanza_type: Final = STANZA_TYPE

    def __init__(self, passphrase: str, max_work_factor: int = 22) -> None:
        self._passphrase = passphrase.encode("utf-8")
        self.max_work_factor = max_work_factor

    def unwrap(self, stanzas: Sequence[Stanza]) -> bytes | None:
        for s in stanzas:
            if s.type == STANZA_TYPE and len(stanzas) != 1:
                raise ParseError("A passphrase-encrypted file must have exactly one stanza.")
        for s in stanzas:
            if s.type != STANZA_TYPE:
                continue
            if len(s.args) != 2:
                raise ParseError("A scrypt stanza is malformed.")
            salt = b64decode(s.args[0])
            if salt is None or len(salt) != 16:
                raise ParseError("A scrypt stanza has a malformed salt.")
            if _WORK_FACTOR_RE.fullmatch(s.args[1]) is None:
                raise ParseError("A scrypt stanza has a malformed work factor.")
            log_n = int(s.args[1]) if len(s.args[1]) <= 3 else _MAX_SANE_WORK_FACTOR + 1
            if log_n > _MAX_SANE_WORK_FACTOR:
                raise ParseError("A scrypt stanza has an impossible work factor.")
            if log_n > self.max_work_factor:
                raise UnsupportedError(
                    f"The file's passphrase work factor ({log_n}) is above this agent's "
                    f"limit ({self.max_work_factor})."
                )
            if len(s.body) != _BODY_SIZE:
                raise ParseError("A scrypt stanza body has the wrong size.")
            key = _derive(self._passphrase, salt, log_n)
            try:
                return ChaCha20Poly1305(key).decrypt(_ZERO_NONCE, s.body, None)
            except InvalidTag:
                return None
        return None

    def __repr__(self) -> str:
        return f"ScryptIdentity(max_work_factor={self.max_work_factor})"
