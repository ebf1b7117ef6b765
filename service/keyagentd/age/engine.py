"""Encrypting and decrypting whole age files, streaming in constant memory."""

from __future__ import annotations

import hmac
import io
import os
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO, Final

from . import hybrid, scrypt
from .armor import MAX_WHITESPACE, ArmorReader, ArmorWriter, looks_armored
from .batches import Runner
from .errors import HeaderMacError, NoMatchError, ParseError, TooLargeError, UnsupportedError
from .format import (
    FILE_KEY_SIZE,
    MAX_HEADER,
    MAX_STANZAS,
    Header,
    encode_header,
    header_mac,
    parse_header,
    parse_header_bytes,
)
from .keys import Identity, Recipient
from .source import PrefixedSource, RawSource, Readable, read_full, write_all
from .stream import NONCE_SIZE, decrypt_payload, encrypt_payload, payload_key

_PQ: Final = hybrid.STANZA_TYPE
_SCRYPT: Final = scrypt.STANZA_TYPE


def encrypt(
    recipients: Sequence[Recipient],
    src: BinaryIO,
    dst: BinaryIO,
    *,
    armor: bool = False,
    rng: Callable[[int], bytes] = os.urandom,
    output: Runner | None = None,
) -> int:
    """Encrypt ``src`` to ``recipients`` into ``dst``; returns the bytes written to ``dst``.

    ``output`` runs the payload's batches (batches.py `Runner`; default: on the calling
    thread). The agent passes its parallel run.

    A passphrase (scrypt) recipient must be alone, and the post-quantum hybrid
    is not mixed with classic recipients (it would lose its point): both raise
    UnsupportedError before anything is written. A header that `Decryptor` would refuse (more
    than MAX_STANZAS stanzas or MAX_HEADER bytes: ~670 post-quantum recipients) raises
    TooLargeError: what this engine writes, it reads back.
    """
    if not recipients:
        raise ValueError("Encrypting needs at least one recipient.")
    check_recipient_count(len(recipients))
    _check_mix([getattr(r, "stanza_type", None) for r in recipients])
    file_key = rng(FILE_KEY_SIZE)
    stanzas = [s for r in recipients for s in r.wrap(file_key, rng)]
    _check_mix([s.type for s in stanzas])
    check_recipient_count(len(stanzas))
    header = encode_header(stanzas, file_key)
    if len(header) > MAX_HEADER:
        raise TooLargeError(
            f"The header for {len(stanzas)} recipients would be larger than {MAX_HEADER} "
            "bytes, more than age files read here may hold: use fewer recipients."
        )
    nonce = rng(NONCE_SIZE)
    key = payload_key(file_key, nonce)
    source = RawSource(src)
    if not armor:
        write_all(dst, header + nonce)
        return len(header) + NONCE_SIZE + encrypt_payload(key, source, dst, output=output)
    out = ArmorWriter(dst)
    out.write(header + nonce)
    encrypt_payload(key, source, out, output=output)
    out.close()
    return out.written


def check_recipient_count(count: int) -> None:
    """TooLargeError for more recipients than a file read here may name (MAX_STANZAS)."""
    if count > MAX_STANZAS:
        raise TooLargeError(
            f"At most {MAX_STANZAS} recipients: an age file read here names no more (got {count})."
        )


def _check_mix(types: Sequence[str | None]) -> None:
    if _SCRYPT in types and len(types) > 1:
        raise UnsupportedError("A passphrase can't be combined with other recipients.")
    if _PQ in types and any(t != _PQ for t in types):
        raise UnsupportedError(
            "Post-quantum recipients can't be mixed with classic ones: "
            "the file would be only as strong as the weakest."
        )


class Decryptor:
    """Decrypts one age file in three steps: parse (on construction), ``unwrap``
    with candidate identities, then ``decrypt_to``.

    ``stanza_types`` tells which key types could open the file before any key
    is chosen. Armor is detected unless ``armor`` says otherwise. ``src`` may be the whole
    file as ``bytes`` (a Decrypt's): a binary one is then parsed in place, no reads.
    """

    def __init__(self, src: BinaryIO | bytes, *, armor: bool | None = None) -> None:
        if isinstance(src, bytes):
            head = src[: MAX_WHITESPACE + 64]  # what `_peek_start` reads of it first
            if not armor and not (armor is None and looks_armored(head)):
                self.armored = False
                header, start = parse_header_bytes(src)
                self._init(header, PrefixedSource(memoryview(src)[start:], _NOTHING))
                return
            src = io.BytesIO(src)
        raw: Readable = RawSource(src)
        head = _peek_start(raw)
        source: Readable = PrefixedSource(head, raw)
        if armor or (armor is None and looks_armored(head)):
            source = ArmorReader(source)
        self.armored = isinstance(source, ArmorReader)
        header, rest = parse_header(source)
        self._init(header, PrefixedSource(rest, source))

    def _init(self, header: Header, payload: Readable) -> None:
        self._header: Header = header
        #: The header's stanzas (an attribute, not a property: read per key tried).
        self.stanzas: tuple[Any, ...] = header.stanzas
        self._source: Readable = payload
        self.stanza_types: frozenset[str] = frozenset([s.type for s in header.stanzas])
        if _SCRYPT in self.stanza_types and len(header.stanzas) != 1:
            raise ParseError("A passphrase-encrypted file must have exactly one recipient stanza.")
        self._file_key: bytes | None = None
        self._payload_key = b""
        self._done = False

    def unwrap(self, identities: Sequence[Identity]) -> Identity:
        """Find the file key and check the header MAC; returns the identity that matched.

        Raises NoMatchError, HeaderMacError or ParseError (a stanza of one of the
        identities' types is malformed, or the payload nonce is missing).
        """
        if self._file_key is not None:
            raise RuntimeError("Decryptor.unwrap was already called.")
        for identity in identities:
            file_key = identity.unwrap(self._header.stanzas)
            if file_key is None:
                continue
            if len(file_key) != FILE_KEY_SIZE:
                raise ParseError("A recipient stanza holds a file key of the wrong size.")
            mac = header_mac(file_key, self._header.mac_input)
            if not hmac.compare_digest(mac, self._header.mac):
                raise HeaderMacError("The age header failed its integrity check (MAC).")
            # Go's age reads the nonce only now, making a short one a header failure.
            nonce = bytearray(NONCE_SIZE)
            if read_full(self._source, memoryview(nonce)) != NONCE_SIZE:
                raise ParseError("The age file ends before its payload.")
            self._file_key = file_key
            self._payload_key = payload_key(file_key, bytes(nonce))
            return identity
        raise NoMatchError()

    def opens(self, identity: Identity) -> bool:
        """Whether ``identity`` unwraps this file's key (header MAC checked), without taking
        it: a key that opens the file may still be refused by per-key policy, and the next
        key is then tried."""
        file_key = identity.unwrap(self._header.stanzas)
        if file_key is None:
            return False
        if len(file_key) != FILE_KEY_SIZE:
            raise ParseError("A recipient stanza holds a file key of the wrong size.")
        mac = header_mac(file_key, self._header.mac_input)
        if not hmac.compare_digest(mac, self._header.mac):
            raise HeaderMacError("The age header failed its integrity check (MAC).")
        return True

    def file_key_for_tests(self) -> bytes | None:
        """The unwrapped file key, for the conformance runner only (it is secret)."""
        return self._file_key

    def decrypt_to(
        self,
        dst: BinaryIO,
        *,
        progress: Callable[[int], None] | None = None,
        output: Runner | None = None,
    ) -> int:
        """Stream the plaintext to ``dst``, each chunk written only once authenticated.

        Returns plaintext bytes written. Raises PayloadError if a chunk fails or the
        file is cut short; what was written by then is the authenticated prefix.
        ``output`` runs the payload's batches (as in `encrypt`).
        """
        if self._file_key is None:
            raise RuntimeError("Decryptor.unwrap must succeed before decrypt_to.")
        if self._done:
            raise RuntimeError("This file was already decrypted.")
        self._done = True
        return decrypt_payload(self._payload_key, self._source, dst, progress, output=output)


class _Nothing:
    """An empty source (what follows a file given whole)."""

    def readinto(self, buf: memoryview, /) -> int:
        return 0


_NOTHING: Final = _Nothing()


def _peek_start(src: Readable) -> bytes:
    """Read just enough to tell armored from binary: past leading whitespace."""
    buf = bytearray()
    chunk = bytearray(MAX_WHITESPACE + 64)
    while len(buf) <= MAX_WHITESPACE:
        n = src.readinto(memoryview(chunk))
        if n == 0:
            break
        buf += memoryview(chunk)[:n]
        if buf.lstrip(b" \t\r\n\x0b\x0c"):
            break
    return bytes(buf)


def decrypt(identities: Sequence[Identity], src: BinaryIO, dst: BinaryIO) -> tuple[Identity, int]:
    d = Decryptor(src)
    identity = d.unwrap(identities)
    return identity, d.decrypt_to(dst)
