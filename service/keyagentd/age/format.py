"""The age v1 header: canonical parsing and writing (C2SP age, "Header").

Parsing is strict: every rule the spec states is checked, so a header that
parses re-serialises to the very same bytes, and the MAC is computed over the
bytes as read.
"""

from __future__ import annotations

import binascii
import hmac
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from .errors import ParseError, UnsupportedError
from .source import Readable

INTRO: Final = b"age-encryption.org/v1\n"
VERSION_PREFIX: Final = b"age-encryption.org/"
STANZA_PREFIX: Final = b"-> "
FOOTER_PREFIX: Final = b"---"
COLUMNS: Final = 64
BYTES_PER_LINE: Final = COLUMNS // 4 * 3
FILE_KEY_SIZE: Final = 16
MAC_SIZE: Final = 32

#: Bounds that keep a hostile header from using unbounded memory or time.
MAX_HEADER: Final = 1 << 20
MAX_STANZAS: Final = 1024

_VCHARS: Final = re.compile(rb"[\x21-\x7e]+")


@dataclass(frozen=True)
class Stanza:
    """One recipient stanza: ``-> type args...`` and its decoded body."""

    type: str
    args: tuple[str, ...]
    body: bytes

    def __repr__(self) -> str:
        return f"Stanza(type={self.type!r}, args={self.args!r}, body=<{len(self.body)} bytes>)"


@dataclass(frozen=True)
class Header:
    stanzas: tuple[Stanza, ...]
    #: The header bytes the MAC covers: from the intro up to and including "---".
    mac_input: bytes
    mac: bytes


def b64encode(data: bytes) -> str:
    """Unpadded standard base64."""
    return binascii.b2a_base64(data, newline=False).rstrip(b"=").decode("ascii")


def b64decode(s: str | bytes) -> bytes | None:
    """Strict unpadded canonical base64, or None if ``s`` is anything else."""
    if isinstance(s, str):
        raw = s.encode("ascii", "replace")
    else:
        raw = s if type(s) is bytes else bytes(s)  # no copy on the header-parsing path
    if len(raw) % 4 == 1:
        return None
    try:
        out = binascii.a2b_base64(raw + b"=" * (-len(raw) % 4), strict_mode=True)
    except binascii.Error:
        return None
    # Re-encoding catches padding in the input and non-zero trailing bits.
    if binascii.b2a_base64(out, newline=False).rstrip(b"=") != raw:
        return None
    return out


def hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    # Imported here: the agent loads this module at start, cryptography on first use.
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


def header_mac(file_key: bytes, mac_input: bytes) -> bytes:
    key = hkdf(file_key, b"", b"header")
    return hmac.digest(key, mac_input, "sha256")  # OpenSSL's one-shot HMAC


def is_valid_arg(arg: str) -> bool:
    return _VCHARS.fullmatch(arg.encode("ascii", "replace")) is not None


def encode_stanza(stanza: Stanza) -> bytes:
    if not is_valid_arg(stanza.type) or not all(is_valid_arg(a) for a in stanza.args):
        raise ValueError("stanza arguments must be non-empty printable ASCII without spaces")
    out = [" ".join(("->", stanza.type, *stanza.args)).encode("ascii"), b"\n"]
    body = binascii.b2a_base64(stanza.body, newline=False).rstrip(b"=")
    for i in range(0, len(body), COLUMNS):
        out += [body[i : i + COLUMNS], b"\n"]
    if len(body) % COLUMNS == 0:
        # The body always ends with a short (here empty) line.
        out.append(b"\n")
    return b"".join(out)


def encode_header_without_mac(stanzas: Sequence[Stanza]) -> bytes:
    return INTRO + b"".join(encode_stanza(s) for s in stanzas) + FOOTER_PREFIX


def encode_header(stanzas: Sequence[Stanza], file_key: bytes) -> bytes:
    mac_input = encode_header_without_mac(stanzas)
    mac = header_mac(file_key, mac_input)
    return mac_input + b" " + b64encode(mac).encode("ascii") + b"\n"


class _LineReader:
    """Reads LF-terminated lines from a Readable, keeping what follows the header.

    Holds what it read as one ``bytes`` so that a line is a single slice (one copy); a
    whole header usually arrives in the first read.
    """

    def __init__(self, src: Readable | None, data: bytes = b"") -> None:
        """``src`` None: ``data`` is all there is (a whole file in memory, read in place)."""
        self._src = src
        self._buf = data
        self._pos = 0
        self._consumed = 0
        self._eof = src is None

    def line(self) -> bytes:
        """The next line without its LF; raises ParseError at EOF or past the limit."""
        end = self._buf.find(b"\n", self._pos)
        if end < 0 or (self._src is None and end >= MAX_HEADER):
            end = self._fill()
        line = self._buf[self._pos : end]
        self._consumed += end + 1 - self._pos
        self._pos = end + 1
        return line

    def _fill(self) -> int:
        """Read until an LF arrives; returns its position in the new buffer.

        Accumulates in a ``bytearray`` (amortised appends), so a long line fed in tiny
        reads still costs linear time.
        """
        if self._src is None:  # nothing more to read: the header is cut short (or too big)
            if self._consumed == 0 and not self._buf:
                raise ParseError("The input is empty, not an age file.")
            raise ParseError("The input is not an age file, or its header is cut short.")
        acc = bytearray(self._buf[self._pos :])
        chunk = bytearray(8192)
        view = memoryview(chunk)
        while True:
            if self._eof or self._consumed + len(acc) > MAX_HEADER:
                if self._consumed == 0 and not acc:
                    raise ParseError("The input is empty, not an age file.")
                raise ParseError("The input is not an age file, or its header is cut short.")
            n = self._src.readinto(view)
            if n == 0:
                self._eof = True
                continue
            acc += view[:n]
            end = acc.find(b"\n", len(acc) - n)
            if end >= 0:
                self._buf = bytes(acc)
                self._pos = 0
                return end

    def rest(self) -> bytes:
        """Bytes read past the last returned line (the start of the payload)."""
        return self._buf[self._pos :]

    @property
    def offset(self) -> int:
        """Where the next line starts, in what was given (the data, in memory)."""
        return self._pos


def _parse_stanza(first: bytes, next_line: Callable[[], bytes], raw: list[bytes]) -> Stanza:
    parts = first.split(b" ")
    if parts[0] != b"->" or len(parts) < 2:
        raise ParseError("The age header has a malformed recipient stanza.")
    for a in parts[1:]:
        if _VCHARS.fullmatch(a) is None:
            raise ParseError("The age header has a malformed stanza argument.")
    body = b""
    while True:
        line = next_line()
        raw.append(line)
        decoded = b64decode(line)
        if decoded is None or len(decoded) > BYTES_PER_LINE:
            raise ParseError("The age header has a malformed stanza body.")
        body += decoded
        if len(decoded) < BYTES_PER_LINE:
            # ASCII-only (checked above), so this decode cannot fail.
            args = first[3:].decode("ascii").split(" ")
            return Stanza(args[0], tuple(args[1:]), body)


def parse_header(src: Readable) -> tuple[Header, bytes]:
    """Parse the header from ``src``; return it and the bytes already read past it."""
    lines = _LineReader(src)
    return _parse(lines.line), lines.rest()


def parse_header_bytes(data: bytes) -> tuple[Header, int]:
    """Parse the header at the start of ``data`` (a whole file) in place; return it and
    where the payload starts. The same rules and errors as `parse_header`; a header line
    must end within the first `MAX_HEADER` bytes."""
    # The header's lines split at once (no call per line) up to the first line that starts
    # with "---": where `_parse` stops, as a stanza line never starts so (its body lines, in
    # base64, cannot either: one that does is malformed, found so by `_parse` in turn).
    footer = data.find(b"\n---", 0, MAX_HEADER) + 1
    end = data.find(b"\n", footer, MAX_HEADER) if footer else -1
    if end < 0:  # no whole footer line in reach: the line reader says what is wrong
        lines = _LineReader(None, data)
        return _parse(lines.line), lines.offset
    try:
        return _parse(iter(data[:end].split(b"\n")).__next__), end + 1
    except StopIteration:  # cannot happen (the footer line ends the parse); kept a ParseError
        raise ParseError("The input is not an age file, or its header is cut short.") from None


def _parse(next_line: Callable[[], bytes]) -> Header:
    """The header from its lines (each without its LF, from ``next_line``)."""
    intro = next_line()
    if intro != INTRO[:-1]:
        if intro.startswith(VERSION_PREFIX) and _VCHARS.fullmatch(intro[len(VERSION_PREFIX) :]):
            raise UnsupportedError(
                "This age file uses a format version this agent doesn't support."
            )
        raise ParseError("The input is not an age file.")
    mac_input = [intro]
    stanzas: list[Stanza] = []
    while True:
        line = next_line()
        if line.startswith(FOOTER_PREFIX):
            parts = line.split(b" ")
            if parts[0] != FOOTER_PREFIX or len(parts) != 2:
                raise ParseError("The age header has a malformed MAC line.")
            mac = b64decode(parts[1])
            if mac is None or len(mac) != MAC_SIZE:
                raise ParseError("The age header has a malformed MAC line.")
            break
        mac_input.append(line)
        stanzas.append(_parse_stanza(line, next_line, mac_input))
        if len(stanzas) > MAX_STANZAS:
            raise ParseError("The age header has too many recipient stanzas.")
    if not stanzas:
        raise ParseError("The age header has no recipient stanza.")
    # The lines as they were, LFs and all, up to and including "---".
    return Header(tuple(stanzas), b"\n".join(mac_input) + b"\n" + FOOTER_PREFIX, mac)
