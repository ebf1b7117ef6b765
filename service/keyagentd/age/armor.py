"""age's ASCII armor: strict PEM (RFC 7468) with label "AGE ENCRYPTED FILE".

As strict as age's Go ``armor`` package (armor/armor.go), rule by rule:

- lines end in LF; one CR before it (or before EOF) is dropped; the last line may lack its LF;
- before the BEGIN line only blank lines, at most 1 KiB of them (each counted with one byte
  for its line end); "blank" is Go's bytes.TrimSpace, so Unicode white space (NBSP, NEL, ...)
  counts, invalid UTF-8 does not;
- the BEGIN line is exactly the header; an empty line inside is an error, as is a line of
  more than 64 bytes;
- each line is strict base64 (padding required, canonical bits), except that CR bytes inside a
  line are ignored, as Go's base64 decoder does;
- a line that decodes to fewer than 48 bytes must be followed by the END line, which may also
  follow a full line; after it, less than 1 KiB of blank bytes (exactly 1 KiB is refused:
  Go reads 1 KiB and cannot tell it from more).

Every violation raises `ArmorError` (a `ParseError`: the agent's Malformed), so callers can tell an
armor failure from a malformed age header inside good armor.
"""

from __future__ import annotations

import binascii
from typing import Any, Final

from .errors import ArmorError
from .source import Readable, write_all

BEGIN: Final = b"-----BEGIN AGE ENCRYPTED FILE-----"
END: Final = b"-----END AGE ENCRYPTED FILE-----"
COLUMNS: Final = 64
BYTES_PER_LINE: Final = COLUMNS // 4 * 3
MAX_WHITESPACE: Final = 1024
_READ: Final = 256 * 1024
_WS: Final = b" \t\r\n\x0b\x0c"


#: What Go's unicode.IsSpace accepts (bytes.TrimSpace): ASCII space, NEL, NBSP, White_Space.
_GO_SPACE: Final = frozenset(
    " \t\n\v\f\r\x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000"
    + "".join(chr(c) for c in range(0x2000, 0x200B))
)


def _bad(why: str) -> ArmorError:
    return ArmorError(f"The armored age file is malformed: {why}.")


def _blank(data: bytes) -> bool:
    """Whether Go's bytes.TrimSpace would leave nothing of ``data``."""
    if not data.strip(_WS):
        return True
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return False  # Go reads an invalid byte as U+FFFD, which is not space
    return all(c in _GO_SPACE for c in text)


class ArmorReader:
    """A Readable of the binary age file inside an armored one."""

    def __init__(self, src: Readable, prefix: bytes = b"") -> None:
        self._src = src
        self._buf = bytearray(prefix)
        self._pos = 0
        self._eof = False
        self._started = False
        self._done = False
        self._out = bytearray()
        self._out_pos = 0

    def readinto(self, buf: memoryview, /) -> int:
        while self._out_pos == len(self._out):
            if self._done:
                return 0
            self._out = self._decode_some()
            self._out_pos = 0
        n = min(len(buf), len(self._out) - self._out_pos)
        buf[:n] = memoryview(self._out)[self._out_pos : self._out_pos + n]
        self._out_pos += n
        return n

    def _fill(self) -> bool:
        """Read more input; False at EOF."""
        if self._eof:
            return False
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        chunk = bytearray(_READ)
        n = self._src.readinto(memoryview(chunk))
        if n == 0:
            self._eof = True
            return False
        self._buf += memoryview(chunk)[:n]
        return True

    def _line(self) -> bytes:
        """Next line without its LF or CRLF; at EOF the unterminated rest."""
        while True:
            end = self._buf.find(b"\n", self._pos)
            if end >= 0:
                line = bytes(self._buf[self._pos : end])
                self._pos = end + 1
                break
            if len(self._buf) - self._pos > MAX_WHITESPACE + len(BEGIN):
                raise _bad("a line is too long")
            if not self._fill():
                if self._pos == len(self._buf):
                    raise _bad("it ends before its END line")
                line = bytes(self._buf[self._pos :])
                self._pos = len(self._buf)
                break
        return line[:-1] if line.endswith(b"\r") else line

    def _decode_some(self) -> bytearray:
        if not self._started:
            skipped = 0
            while True:
                line = self._line()
                if not _blank(line):
                    break
                skipped += len(line) + 1
                if skipped > MAX_WHITESPACE:
                    raise _bad("too much whitespace before it")
            if line != BEGIN:
                raise _bad("the first line is not " + BEGIN.decode())
            self._started = True
        fast = self._decode_full_lines()
        if fast is not None:
            return fast
        line = self._line()
        if line == END:
            self._finish()
            return bytearray()
        if not line:
            raise _bad("it has an empty line")
        if len(line) > COLUMNS:
            raise _bad("a line is longer than 64 columns")
        data = _decode_line(line)
        if len(data) < BYTES_PER_LINE:
            if self._line() != END:
                raise _bad("the last line is not " + END.decode())
            self._finish()
        return bytearray(data)

    def _decode_full_lines(self) -> bytearray | None:
        """Decode a run of full 64-column lines at once (the common case), all
        ending in LF or all in CRLF; anything unusual goes to the careful path."""
        if len(self._buf) - self._pos < 2 * (COLUMNS + 2):
            self._fill()
        pos = self._pos
        eol = b"\r\n" if self._buf[pos + COLUMNS : pos + COLUMNS + 2] == b"\r\n" else b"\n"
        stride = COLUMNS + len(eol)
        count = (len(self._buf) - pos) // stride - 1  # keep the last line for the careful path
        if count <= 0:
            return None
        block = self._buf[pos : pos + count * stride]
        if block[COLUMNS::stride] != eol[:1] * count or block.count(b"\n") != count:
            return None
        if eol == b"\r\n" and (
            block[COLUMNS + 1 :: stride] != b"\n" * count or block.count(b"\r") != count
        ):
            return None
        try:
            data = binascii.a2b_base64(block.replace(eol, b""), strict_mode=True)
        except binascii.Error:
            return None
        if len(data) != count * BYTES_PER_LINE:
            return None  # a padded line: let the careful path see where it ends
        self._pos += count * stride
        return bytearray(data)

    def _finish(self) -> None:
        # Like Go: look at the next 1 KiB only; blank and shorter than that, or an error.
        while len(self._buf) - self._pos < MAX_WHITESPACE and self._fill():
            pass
        rest = bytes(self._buf[self._pos : self._pos + MAX_WHITESPACE])
        if not _blank(rest):
            raise _bad("there is data after its END line")
        if len(rest) == MAX_WHITESPACE:
            raise _bad("too much whitespace after it")
        self._done = True


def _decode_line(line: bytes) -> bytes:
    line = line.replace(b"\r", b"")  # Go's base64 decoder skips CR (and LF) even when strict
    try:
        data = binascii.a2b_base64(line, strict_mode=True)
    except binascii.Error:
        raise _bad("a line is not valid base64") from None
    if binascii.b2a_base64(data, newline=False) != line:
        raise _bad("a line is not canonical base64")
    return data


def looks_armored(head: bytes) -> bool:
    """Whether input starting with ``head`` is armored: its first non-blank byte is '-'."""
    stripped = head.lstrip(_WS)
    return stripped[:1] == b"-"


class ArmorWriter:
    """Buffers binary output and writes it as armored lines to ``dst``."""

    def __init__(self, dst: Any) -> None:
        self._dst = dst
        self._pending = bytearray()
        self.written = 0
        self._emit(BEGIN + b"\n")

    def _emit(self, data: bytes) -> None:
        write_all(self._dst, data)
        self.written += len(data)

    def write(self, data: memoryview | bytes) -> int:
        self._pending += data
        full = len(self._pending) // BYTES_PER_LINE * BYTES_PER_LINE
        if full >= 16 * 1024:
            self._emit(_encode_lines(memoryview(self._pending)[:full]))
            del self._pending[:full]
        return len(data)

    def close(self) -> None:
        """Write what is left and the END line (call once, at the end)."""
        if self._pending:
            self._emit(_encode_lines(memoryview(self._pending)))
            self._pending.clear()
        self._emit(END + b"\n")


def _encode_lines(data: memoryview) -> bytes:
    encoded = binascii.b2a_base64(data, newline=False)
    return b"".join(encoded[i : i + COLUMNS] + b"\n" for i in range(0, len(encoded), COLUMNS))
