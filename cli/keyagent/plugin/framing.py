"""The age plugin protocol's stanza framing (C2SP age-plugin.md, as the age header's stanzas).

A stanza is ``-> TYPE ARG...`` and its body in unpadded standard base64, wrapped at 64
columns; the last body line is shorter than 64 characters (possibly empty). A conversation
that breaks these rules is a `ProtocolError`, which the state machines answer with the
spec's ``error`` command where the protocol still allows one.
"""

from __future__ import annotations

import binascii

TYPE_CHECKING = False  # `typing` costs milliseconds at every start of the plugin
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import BinaryIO, Final

COLUMNS: Final = 64
#: Bounds against a runaway peer: no real command comes near them.
MAX_LINE: Final = 4096
MAX_BODY: Final = 1 << 20
_B64: Final = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


def _is_arg(word: bytes) -> bool:
    """Printable ASCII without spaces, at least one character (no regex: start-up time)."""
    return bool(word) and all(0x21 <= c <= 0x7E for c in word)


class ProtocolError(Exception):
    """The other side broke the plugin protocol (the text is for a person, one line)."""


class Stanza(tuple[str, tuple[str, ...], bytes]):
    """One stanza: a tuple with named fields, not a NamedTuple or a dataclass (`typing` and
    `dataclasses` cost milliseconds at start, on every decrypt)."""

    __slots__ = ()

    def __new__(cls, type: str, args: tuple[str, ...] = (), body: bytes = b"") -> Stanza:
        return tuple.__new__(cls, (type, args, body))

    @property
    def type(self) -> str:
        return self[0]

    @property
    def args(self) -> tuple[str, ...]:
        return self[1]

    @property
    def body(self) -> bytes:
        return self[2]

    def __repr__(self) -> str:  # a file key travels in a body: never show one
        return f"Stanza({self.type!r}, {self.args!r}, <{len(self.body)} bytes>)"


def encode(stanza: Stanza) -> bytes:
    words = (stanza.type, *stanza.args)
    if not all(_is_arg(w.encode("ascii", "replace")) for w in words):
        raise ValueError("stanza type and arguments must be printable ASCII without spaces")
    b64 = binascii.b2a_base64(stanza.body, newline=False).rstrip(b"=")
    lines = [b64[i : i + COLUMNS] for i in range(0, len(b64), COLUMNS)]
    if not lines or len(lines[-1]) == COLUMNS:
        lines.append(b"")
    head = " ".join(("->", *words)).encode("ascii")
    return b"\n".join([head, *lines]) + b"\n"


def decode_body(b64: bytes) -> bytes:
    """Strict unpadded canonical base64 (ProtocolError otherwise)."""
    if not _B64.issuperset(b64) or len(b64) % 4 == 1:
        raise ProtocolError("The plugin conversation has a stanza body that is not base64.")
    data = binascii.a2b_base64(b64 + b"=" * (-len(b64) % 4))
    if binascii.b2a_base64(data, newline=False).rstrip(b"=") != b64:
        raise ProtocolError("The plugin conversation has a non-canonical base64 body.")
    return data


class StanzaReader:
    def __init__(self, src: BinaryIO) -> None:
        self._src = src

    def _line(self) -> bytes | None:
        line = self._src.readline(MAX_LINE + 1)
        if not line:
            return None
        if not line.endswith(b"\n"):
            raise ProtocolError("The plugin conversation has an unterminated or too long line.")
        return line[:-1]

    def read(self) -> Stanza | None:
        """The next stanza, or None at a clean end of input."""
        head = self._line()
        if head is None:
            return None
        words = head.split(b" ")
        if words[0] != b"->" or len(words) < 2 or not all(_is_arg(w) for w in words[1:]):
            raise ProtocolError("The plugin conversation has a malformed stanza line.")
        body = bytearray()
        while True:
            line = self._line()
            if line is None:
                raise ProtocolError("The plugin conversation ends inside a stanza.")
            if len(line) > COLUMNS:
                raise ProtocolError("The plugin conversation has an over-long body line.")
            body += line
            if len(body) > MAX_BODY:
                raise ProtocolError("The plugin conversation has an over-long stanza body.")
            if len(line) < COLUMNS:
                break
        text = [w.decode("ascii") for w in words[1:]]
        return Stanza(text[0], tuple(text[1:]), decode_body(bytes(body)))


class Channel:
    """Both directions of one conversation: stanzas in from ``src``, out to ``dst``."""

    def __init__(self, src: BinaryIO, dst: BinaryIO) -> None:
        self.reader = StanzaReader(src)
        self._dst = dst

    def send(self, kind: str, *args: str, body: bytes = b"") -> None:
        self._dst.write(encode(Stanza(kind, args, body)))
        self._dst.flush()

    def receive(self) -> Stanza:
        stanza = self.reader.read()
        if stanza is None:
            raise ProtocolError("The age client closed the plugin conversation early.")
        return stanza

    def phase1(self) -> Iterator[Stanza]:
        """Phase 1: the client's commands, up to (not including) its ``done``."""
        while (stanza := self.receive()).type != "done":
            yield stanza

    def command(self, kind: str, *args: str, body: bytes = b"") -> Stanza:
        """Phase 2: send a command and return the client's response (ok, fail, unsupported)."""
        self.send(kind, *args, body=body)
        reply = self.receive()
        if reply.type not in ("ok", "fail", "unsupported"):
            raise ProtocolError(f"The age client answered {kind!r} with {reply.type[:40]!r}.")
        return reply


def only_arg(stanza: Stanza) -> str:
    """The one argument of a command that takes exactly one (``add-identity``, ...)."""
    if len(stanza.args) != 1:
        raise ProtocolError(f"The age client sent a malformed {stanza.type} command.")
    return stanza.args[0]
