"""D-Bus messages to and from bytes, with no I/O (the sockets are transport.py's).

The `keyagent` command starts on every use, so this module imports only C-level modules:
jeepney's import chain (typing, enum, re, socket, selectors...) was most of the command's
start-up. Values follow jeepney's conventions, which `keyagent.Client` was written against: a
variant is a ``(signature, value)`` tuple, ``a{..}`` a dict, any other array a list, ``ay``
bytes, a struct a tuple, ``h`` an int fd on the way out (its index in the message on the way
in: the client closes every fd it receives at once).

Out: little-endian method calls. In: method returns, errors and signals of either byte order,
checked strictly (padding, lengths, type codes, nesting and size limits of the specification):
anything else raises `WireError`, never loops and never recurses past the limits.
"""

from __future__ import annotations

from struct import Struct

TYPE_CHECKING = False  # importing `typing` costs milliseconds at every start of the command
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, Final, TypeVar

    K = TypeVar("K")
    V = TypeVar("V")
    Reader = Callable[[bytes | bytearray | memoryview, int, int, int], tuple[Any, int]]

METHOD_CALL: Final = 1
METHOD_RETURN: Final = 2
ERROR: Final = 3
SIGNAL: Final = 4

#: Header field codes (the specification's table).
PATH: Final = 1
INTERFACE: Final = 2
MEMBER: Final = 3
ERROR_NAME: Final = 4
REPLY_SERIAL: Final = 5
DESTINATION: Final = 6
SENDER: Final = 7
SIGNATURE: Final = 8
UNIX_FDS: Final = 9
_FIELD_TYPES: Final = {
    PATH: "o",
    INTERFACE: "s",
    MEMBER: "s",
    ERROR_NAME: "s",
    REPLY_SERIAL: "u",
    DESTINATION: "s",
    SENDER: "s",
    SIGNATURE: "g",
    UNIX_FDS: "u",
}
_REQUIRED: Final = {
    METHOD_CALL: frozenset((PATH, MEMBER)),
    METHOD_RETURN: frozenset((REPLY_SERIAL,)),
    ERROR: frozenset((ERROR_NAME, REPLY_SERIAL)),
    SIGNAL: frozenset((PATH, INTERFACE, MEMBER)),
}

MAX_MESSAGE: Final = 1 << 27  # 128 MiB
MAX_ARRAY: Final = 1 << 26  # 64 MiB
MAX_SIGNATURE: Final = 255
MAX_ARRAY_DEPTH: Final = 32
MAX_STRUCT_DEPTH: Final = 32
#: Containers nested in one message, variants included (the reference library's limit).
MAX_DEPTH: Final = 64
#: The fixed part of every header: endianness, type, flags, version, body length, serial,
#: and the header fields array's length.
FIXED_HEADER: Final = 16

_FIXED: Final = {
    "y": "B",
    "b": "I",
    "n": "h",
    "q": "H",
    "i": "i",
    "u": "I",
    "x": "q",
    "t": "Q",
    "d": "d",
    "h": "I",
}
_STRINGS: Final = frozenset("sog")
_BASIC: Final = frozenset(_FIXED) | _STRINGS


class WireError(ValueError):
    """A message that breaks the D-Bus specification (or a value that cannot be sent)."""


class Message:
    """One received message. A plain class: `dataclasses` costs milliseconds at start-up."""

    __slots__ = ("body", "fields", "flags", "kind", "serial")

    def __init__(
        self, kind: int, flags: int, serial: int, fields: dict[int, Any], body: tuple[Any, ...]
    ) -> None:
        self.kind = kind
        self.flags = flags
        self.serial = serial
        self.fields = fields
        self.body = body

    @property
    def reply_serial(self) -> int:
        return int(self.fields.get(REPLY_SERIAL, 0))

    @property
    def error_name(self) -> str:
        return str(self.fields.get(ERROR_NAME, ""))

    @property
    def sender(self) -> str:
        return str(self.fields.get(SENDER, ""))

    @property
    def unix_fds(self) -> int:
        return int(self.fields.get(UNIX_FDS, 0))


# -- signatures -------------------------------------------------------------------------------


def parse_signature(sig: str) -> list[Any]:
    """The complete types of a signature, checked against the specification's grammar: each
    a basic code or "v", ("a", item), ("(", fields) or ("{", key, value)."""
    if len(sig) > MAX_SIGNATURE:
        raise WireError("signature longer than 255")
    types: list[Any] = []
    pos = 0
    while pos < len(sig):
        t, pos = _one_type(sig, pos, 0, 0)
        types.append(t)
    return types


def _one_type(sig: str, pos: int, arrays: int, structs: int) -> tuple[Any, int]:
    code = sig[pos] if pos < len(sig) else ""
    if code in _BASIC or code == "v":
        return code, pos + 1
    if code == "a":
        if arrays >= MAX_ARRAY_DEPTH:
            raise WireError("arrays nested too deep")
        if sig.startswith("{", pos + 1):
            entry, pos = _dict_entry(sig, pos + 2, arrays + 1, structs)
            return ("a", entry), pos
        item, pos = _one_type(sig, pos + 1, arrays + 1, structs)
        return ("a", item), pos
    if code == "(":
        if structs >= MAX_STRUCT_DEPTH:
            raise WireError("structs nested too deep")
        fields: list[Any] = []
        pos += 1
        while sig[pos : pos + 1] != ")":
            if pos >= len(sig):
                raise WireError(f"unclosed struct in signature {sig!r}")
            t, pos = _one_type(sig, pos, arrays, structs + 1)
            fields.append(t)
        if not fields:
            raise WireError("empty struct in signature")
        return ("(", tuple(fields)), pos + 1
    raise WireError(f"bad type code {code!r} in signature {sig!r}")


def _dict_entry(sig: str, pos: int, arrays: int, structs: int) -> tuple[Any, int]:
    if structs >= MAX_STRUCT_DEPTH:
        raise WireError("structs nested too deep")
    key = sig[pos : pos + 1]
    if key not in _BASIC:
        raise WireError(f"dict key must be a basic type in signature {sig!r}")
    value, pos = _one_type(sig, pos + 1, arrays, structs + 1)
    if sig[pos : pos + 1] != "}":
        raise WireError(f"bad dict entry in signature {sig!r}")
    return ("{", key, value), pos + 1


def single_type(sig: str) -> Any:
    types = parse_signature(sig)
    if len(types) != 1:
        raise WireError(f"a variant needs one complete type, not {sig!r}")
    return types[0]


def alignment(t: Any) -> int:
    if isinstance(t, tuple):
        return 4 if t[0] == "a" else 8
    if t in _FIXED:
        return _STRUCTS["<"][t].size
    return 1 if t in ("g", "v") else 4


_STRUCTS: Final = {e: {c: Struct(e + f) for c, f in _FIXED.items()} for e in "<>"}
_U32: Final = {e: Struct(e + "I") for e in "<>"}


# -- reading ----------------------------------------------------------------------------------

#: The bound of every cache of this module and wirecall.py: signatures and names can come
#: from peers or be of a caller's choosing.
CACHE_SIZE: Final = 256


def remember(cache: dict[K, V], key: K, value: V) -> V:
    """Keep ``value`` in a bounded cache. A full cache starts again: a long-lived client that
    has called many objects keeps caching the ones it calls now."""
    if len(cache) >= CACHE_SIZE:
        cache.clear()
    cache[key] = value
    return value


_readers: dict[tuple[Any, str], Reader] = {}


def reader(t: Any, endian: str) -> Reader:
    """The (cached) function that reads one value of type ``t``: (buf, pos, end, depth) ->
    (value, new pos). ``endian`` is "<" or ">"."""
    found = _readers.get((t, endian))
    if found is None:
        found = remember(_readers, (t, endian), _make_reader(t, endian))
    return found


_ZEROS: Final = tuple(bytes(n) for n in range(8))


def _pad(buf: bytes | bytearray | memoryview, pos: int, step: int, end: int) -> int:
    new = (pos + step - 1) & -step
    if new > end:
        raise WireError("message truncated")
    if new != pos and buf[pos:new] != _ZEROS[new - pos]:
        raise WireError("non-zero alignment padding")
    return new


def _make_reader(t: Any, endian: str) -> Reader:
    if isinstance(t, tuple):
        if t[0] == "a":
            return _array_reader(t[1], endian)
        if t[0] == "(":
            return _struct_reader([reader(f, endian) for f in t[1]])
        return _struct_reader([reader(t[1], endian), reader(t[2], endian)])
    if t in _FIXED:
        return _fixed_reader(t, _STRUCTS[endian][t])
    if t == "v":
        return _variant_reader(endian)
    return _string_reader(t, endian)


def _fixed_reader(code: str, st: Struct) -> Reader:
    size, unpack = st.size, st.unpack_from

    def read(buf: bytes | bytearray | memoryview, pos: int, end: int, depth: int) -> Any:
        if pos % size:
            pos = _pad(buf, pos, size, end)
        if pos + size > end:
            raise WireError("message truncated")
        return unpack(buf, pos)[0], pos + size

    def read_bool(buf: bytes | bytearray | memoryview, pos: int, end: int, depth: int) -> Any:
        value, pos = read(buf, pos, end, depth)
        if value > 1:
            raise WireError("boolean neither 0 nor 1")
        return value == 1, pos

    return read_bool if code == "b" else read


def _text(buf: bytes | bytearray | memoryview, pos: int, n: int, end: int) -> str:
    """The n bytes at pos as text: UTF-8, no nul inside, a nul right after."""
    if pos + n >= end or buf[pos + n] != 0:
        raise WireError("string truncated or not nul-terminated")
    try:
        text = str(buf[pos : pos + n], "utf-8")
    except UnicodeDecodeError:
        raise WireError("string is not UTF-8") from None
    if "\0" in text:
        raise WireError("nul inside a string")
    return text


#: Signatures already checked against the grammar (every reply repeats its own).
_valid_signatures: set[str] = set()


def _string_reader(code: str, endian: str) -> Reader:
    u32 = _U32[endian].unpack_from

    def read(buf: bytes | bytearray | memoryview, pos: int, end: int, depth: int) -> Any:
        if pos % 4:
            pos = _pad(buf, pos, 4, end)
        if pos + 4 > end:
            raise WireError("message truncated")
        n = u32(buf, pos)[0]
        text = _text(buf, pos + 4, n, end)
        if code == "o" and not is_object_path(text):
            raise WireError("invalid object path")
        return text, pos + n + 5

    def read_signature(buf: bytes | bytearray | memoryview, pos: int, end: int, depth: int) -> Any:
        if pos >= end:
            raise WireError("message truncated")
        text = _text(buf, pos + 1, buf[pos], end)
        if text not in _valid_signatures:
            parse_signature(text)
            if len(_valid_signatures) < 256:
                _valid_signatures.add(text)
        return text, pos + len(text) + 2

    return read_signature if code == "g" else read


def _array_reader(item: Any, endian: str) -> Reader:
    u32 = _U32[endian].unpack_from
    align = alignment(item)
    is_bytes = item == "y"
    is_dict = isinstance(item, tuple) and item[0] == "{"
    read_item = None if is_bytes else reader(item, endian)

    def read(buf: bytes | bytearray | memoryview, pos: int, end: int, depth: int) -> Any:
        if depth >= MAX_DEPTH:
            raise WireError("containers nested too deep")
        if pos % 4:
            pos = _pad(buf, pos, 4, end)
        if pos + 4 > end:
            raise WireError("message truncated")
        n = u32(buf, pos)[0]
        if n > MAX_ARRAY:
            raise WireError("array longer than 64 MiB")
        pos += 4
        if pos % align:
            pos = _pad(buf, pos, align, end)
        stop = pos + n
        if stop > end:
            raise WireError("array runs past the message")
        if read_item is None:
            return bytes(buf[pos:stop]), stop
        items = []
        while pos < stop:
            value, pos = read_item(buf, pos, stop, depth + 1)
            items.append(value)
        return (dict(items) if is_dict else items), pos

    return read


def _struct_reader(fields: list[Reader]) -> Reader:
    def read(buf: bytes | bytearray | memoryview, pos: int, end: int, depth: int) -> Any:
        if depth >= MAX_DEPTH:
            raise WireError("containers nested too deep")
        if pos % 8:
            pos = _pad(buf, pos, 8, end)
        values = []
        for field in fields:
            value, pos = field(buf, pos, end, depth + 1)
            values.append(value)
        return tuple(values), pos

    return read


def _variant_reader(endian: str) -> Reader:
    # A reply of many variants (GetManagedObjects) has few distinct signatures: each is
    # checked and its reader made once.
    known: dict[bytes, tuple[str, Reader]] = {}

    def read(buf: bytes | bytearray | memoryview, pos: int, end: int, depth: int) -> Any:
        if depth >= MAX_DEPTH:
            raise WireError("containers nested too deep")
        if pos >= end:
            raise WireError("message truncated")
        stop = pos + 1 + buf[pos]
        found = known.get(bytes(buf[pos + 1 : stop]))
        if found is None:
            sig = _text(buf, pos + 1, buf[pos], end)
            found = (sig, reader(single_type(sig), endian))
            if len(known) < 256:
                known[sig.encode()] = found
        elif stop >= end or buf[stop] != 0:
            raise WireError("string truncated or not nul-terminated")
        sig, read_value = found
        value, pos = read_value(buf, stop + 1, end, depth + 1)
        return (sig, value), pos

    return read


def is_object_path(path: str) -> bool:
    if path == "/":
        return True
    if not path.startswith("/") or path.endswith("/"):
        return False
    return all(part and _is_path_element(part) for part in path[1:].split("/"))


def _is_path_element(part: str) -> bool:
    return part.isascii() and (part.isalnum() or part.replace("_", "a").isalnum())


def message_length(head: bytes | bytearray | memoryview, at: int = 0) -> int:
    """The whole length of the message whose first 16 bytes are ``head[at:at + 16]``."""
    endian = _endian(head[at])
    if head[at + 3] != 1:
        raise WireError("unknown protocol version")
    u32 = _U32[endian].unpack_from
    (body,) = u32(head, at + 4)
    (fields,) = u32(head, at + 12)
    if fields > MAX_ARRAY:
        raise WireError("header fields longer than 64 MiB")
    total: int = ((FIXED_HEADER + fields + 7) & -8) + body
    if total > MAX_MESSAGE:
        raise WireError("message larger than 128 MiB")
    return total


_ENDIANS: Final = {0x6C: "<", 0x42: ">"}  # "l", "B"


def _endian(code: int) -> str:
    endian = _ENDIANS.get(code)
    if endian is None:
        raise WireError("unknown byte order")
    return endian


def parse_message(buf: bytes | bytearray | memoryview) -> Message:
    """One whole message (``len(buf) == message_length(buf)``)."""
    if len(buf) < FIXED_HEADER or len(buf) != message_length(buf):
        raise WireError("message length does not match its header")
    endian = _ENDIANS[buf[0]]  # message_length checked it
    kind, flags = buf[1], buf[2]
    (body_len,) = _U32[endian].unpack_from(buf, 4)
    (serial,) = _U32[endian].unpack_from(buf, 8)
    if serial == 0:
        raise WireError("serial 0")
    start = len(buf) - body_len
    fields = _header_fields(buf, endian, start)
    if kind in _REQUIRED and not fields.keys() >= _REQUIRED[kind]:
        raise WireError("a required header field is missing")
    sig = fields.get(SIGNATURE, "")
    readers = _body_readers.get((sig, endian))
    if readers is None:
        readers = _signature_readers(sig, endian)
    body: list[Any] = []
    pos, end = start, len(buf)
    for read in readers:
        value, pos = read(buf, pos, end, 0)
        body.append(value)
    if pos != end:
        raise WireError("body length does not match its signature")
    return Message(kind, flags, serial, fields, tuple(body))


_body_readers: dict[tuple[str, str], tuple[Reader, ...]] = {}


def _signature_readers(sig: str, endian: str) -> tuple[Reader, ...]:
    readers = tuple(reader(t, endian) for t in parse_signature(sig))
    return remember(_body_readers, (sig, endian), readers)


#: A known header field's variant signature as it is on the wire: length 1, code, nul.
_FIELD_SIGNATURES: Final = {code: b"\x01" + t.encode() + b"\0" for code, t in _FIELD_TYPES.items()}


def _header_fields(buf: bytes | bytearray | memoryview, endian: str, start: int) -> dict[int, Any]:
    """The header fields array (at offset 12), and its padding up to the body at ``start``.

    Every message has the same few fields, each a variant of its fixed type: read directly.
    Anything else (unknown codes, wrong types) goes through the general variant reader.
    """
    (n,) = _U32[endian].unpack_from(buf, 12)
    pos, stop = FIXED_HEADER, FIXED_HEADER + n
    if stop > start:
        raise WireError("array runs past the message")
    u32 = _U32[endian].unpack_from
    readers = _field_readers[endian]
    fields: dict[int, Any] = {}
    while pos < stop:
        if pos & 7:  # _pad, inlined: every field but the first
            new = (pos + 7) & -8
            if new >= stop:
                raise WireError("message truncated")
            if buf[pos:new] != _ZEROS[new - pos]:
                raise WireError("non-zero alignment padding")
            pos = new
        code = buf[pos]
        known = _FIELD_SIGNATURES.get(code)
        if known is not None and buf[pos + 1 : pos + 4] == known:
            t = known[1]
            if t == 0x75:  # "u", 4-aligned already
                if pos + 8 > stop:
                    raise WireError("message truncated")
                (fields[code],) = u32(buf, pos + 4)
                pos += 8
            else:
                fields[code], pos = readers[t](buf, pos + 4, stop, 2)
            continue
        (sig, _value), pos = reader("v", endian)(buf, pos + 1, stop, 1)
        if code in _FIELD_TYPES:  # a known field of another type
            raise WireError(f"header field {code} has type {sig!r}")
        # unknown fields are ignored, as the specification says
    _pad(buf, pos, 8, start)
    return fields


#: The readers of the header fields' string types, by type code, per byte order.
_field_readers: Final = {e: {ord(t): reader(t, e) for t in "sog"} for e in "<>"}
