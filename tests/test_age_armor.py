"""The armor reader, rule by rule against age's Go `armor` package (armor/armor.go): what it
accepts, we accept; what it refuses, we refuse with ArmorError (a ParseError,
the agent's Malformed on the wire)."""

from __future__ import annotations

import base64
import io
import os

import pytest

from keyagent.protocol import Malformed
from keyagentd.age.armor import BEGIN, END, MAX_WHITESPACE, ArmorError, ArmorReader, ArmorWriter
from keyagentd.age.errors import ParseError
from keyagentd.errors import wire_error

LINE = base64.b64encode(bytes(range(48)))  # one full 64-column line: 48 bytes
SHORT = b"QUJDREVG"  # "ABCDEF"


def dearmor(data: bytes) -> bytes:
    reader = ArmorReader(io.BytesIO(data))
    out = bytearray()
    buf = bytearray(1000)
    while n := reader.readinto(memoryview(buf)):
        out += buf[:n]
    return bytes(out)


def armored(*lines: bytes, eol: bytes = b"\n") -> bytes:
    return eol.join([BEGIN, *lines, END]) + eol


@pytest.mark.parametrize("size", [0, 1, 47, 48, 49, 96, 1000, 20_000])
def test_round_trip(size: int) -> None:
    data = os.urandom(size)
    out = io.BytesIO()
    writer = ArmorWriter(out)
    writer.write(data)
    writer.close()
    assert dearmor(out.getvalue()) == data


ACCEPTED = {
    "lf": (armored(LINE, SHORT), bytes(range(48)) + b"ABCDEF"),
    "crlf": (armored(LINE, SHORT, eol=b"\r\n"), bytes(range(48)) + b"ABCDEF"),
    "mixed line ends": (
        BEGIN + b"\r\n" + LINE + b"\n" + SHORT + b"\r\n" + END,
        bytes(range(48)) + b"ABCDEF",
    ),
    "no eol after end": (armored(SHORT)[:-1], b"ABCDEF"),
    "cr but no lf after end": (armored(SHORT)[:-1] + b"\r", b"ABCDEF"),
    "full last line": (armored(LINE), bytes(range(48))),
    "empty file": (armored(), b""),
    "blank lines before": (b"\n \t\r\n\v\f\n" + armored(SHORT), b"ABCDEF"),
    "1024 bytes of blank lines before": (b"\n" * 1024 + armored(SHORT), b"ABCDEF"),
    "crlf blank lines count one byte per end": (b" \r\n" * 512 + armored(SHORT), b"ABCDEF"),
    "unicode white space before": ("\u00a0\u2003\u3000\n".encode() + armored(SHORT), b"ABCDEF"),
    "blank after end": (armored(SHORT) + b" \t\r\n" * 100, b"ABCDEF"),
    "1023 blank bytes after end": (armored(SHORT) + b" " * 1023, b"ABCDEF"),
    "unicode white space after end": (armored(SHORT) + "\u0085\u00a0\u2028".encode(), b"ABCDEF"),
    "cr inside a line is skipped": (armored(b"QUJD\rREVG"), b"ABCDEF"),
    "a line of only cr": (armored(b"\r\r"), b""),
}


@pytest.mark.parametrize("name", list(ACCEPTED))
def test_accepted(name: str) -> None:
    data, want = ACCEPTED[name]
    assert dearmor(data) == want


REFUSED = {
    "empty input": b"",
    "only blank": b"\n\n  \n",
    "no end line": BEGIN + b"\n" + LINE + b"\n",
    "begin only": BEGIN + b"\n",
    "1025 bytes of blank lines before": b"\n" * 1025 + armored(SHORT),
    "a long blank line before": b" " * 1030 + b"\n" + armored(SHORT),
    "not-go white space before (\\x1c)": b"\x1c\n" + armored(SHORT),
    "invalid utf-8 before": b"\xff\n" + armored(SHORT),
    "text before": b"hello\n" + armored(SHORT),
    "lower-case begin": armored(SHORT).replace(BEGIN, BEGIN.lower()),
    "space after begin": armored(SHORT).replace(BEGIN, BEGIN + b" "),
    "space before begin": b" " + armored(SHORT),
    "two cr after begin": armored(SHORT).replace(BEGIN + b"\n", BEGIN + b"\r\r\n"),
    "wrong label": armored(SHORT).replace(b"AGE ENCRYPTED FILE", b"PGP MESSAGE"),
    "empty line after begin": armored(b"", LINE, SHORT),
    "empty line before end": armored(LINE, b""),  # age's reader refuses it; ours let it by
    "empty line between lines": armored(LINE, b"", SHORT),
    "65 columns": armored(LINE + b"A"),
    "64 columns and a cr": armored(LINE[:32] + b"\r" + LINE[32:]),
    "space at end of line": armored(LINE, SHORT + b" "),
    "tab inside a line": armored(b"QUJD\tREVG"),
    "missing padding": armored(b"QUJDRA"),
    "non-canonical bits": armored(b"QUJDRB=="),
    "padding in the middle": armored(b"QQ==QUJD"),
    "only padding": armored(b"===="),
    "short line in the middle": armored(SHORT, LINE),
    "short line at eof": BEGIN + b"\n" + SHORT + b"\n",
    "short line then blank then end": armored(SHORT, b""),
    "header line": armored(b"Comment: hi", SHORT),
    "pgp checksum": armored(SHORT, b"=ABCD"),
    "data after end": armored(SHORT) + b"x",
    "second file after end": armored(SHORT) + armored(SHORT),
    "exactly 1024 blank bytes after end": armored(SHORT) + b" " * MAX_WHITESPACE,
    "much blank after end": armored(SHORT) + b"\n" * 5000,
    "nul after end": armored(SHORT) + b"\x00",
    "invalid utf-8 after end": armored(SHORT) + b"\xc2",
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_refused(name: str) -> None:
    with pytest.raises(ArmorError, match="armored age file is malformed"):
        dearmor(REFUSED[name])


def test_armor_errors_are_malformed_on_the_wire() -> None:
    assert issubclass(ArmorError, ParseError)
    wire = wire_error(ArmorError("x"))
    assert isinstance(wire, Malformed) and wire.message == "x"
