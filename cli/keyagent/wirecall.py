"""A D-Bus method call to bytes (little-endian), the other half of wire.py.

Values follow jeepney's conventions (see wire.py); an ``h`` value is an int fd, which goes
into the returned fd list (sent as SCM_RIGHTS) and into the message as its index there.

A client sends the same few calls again and again, so the work that depends only on the
call's names is done once: a call's header fields (everything but the serial and the body's
length) are kept as bytes per (destination, path, interface, member, signature, fd count),
and a signature's writers per signature. What is left per call is the body's values.
"""

from __future__ import annotations

from struct import Struct
from struct import error as StructError

from keyagent.wire import (
    DESTINATION,
    FIXED_HEADER,
    INTERFACE,
    MAX_ARRAY,
    MAX_DEPTH,
    MAX_MESSAGE,
    MEMBER,
    METHOD_CALL,
    PATH,
    SIGNATURE,
    UNIX_FDS,
    WireError,
    alignment,
    is_object_path,
    parse_signature,
    remember,
    single_type,
)

TYPE_CHECKING = False  # `typing` costs milliseconds at every start of the command
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any, Final

    Writer = Callable[[bytearray, Any, list[int], int], None]
    HeaderKey = tuple[str, str, str | None, str, str, int]

_FIXED: Final = {
    "y": Struct("<B"),
    "b": Struct("<I"),
    "n": Struct("<h"),
    "q": Struct("<H"),
    "i": Struct("<i"),
    "u": Struct("<I"),
    "x": Struct("<q"),
    "t": Struct("<Q"),
    "d": Struct("<d"),
    "h": Struct("<I"),
}
_U32: Final = Struct("<I")
_HEAD: Final = Struct("<cBBBII")
#: Padding by length: `out += _ZEROS[-len(out) % step]`, no call.
_ZEROS: Final = tuple(bytes(n) for n in range(8))
NO_FLAGS: Final = 0


def method_call(
    serial: int,
    destination: str,
    path: str,
    interface: str | None,
    member: str,
    signature: str = "",
    body: Sequence[Any] = (),
) -> tuple[bytes, list[int]]:
    """The bytes of one method call, and the fds it passes (in their ``h`` index order)."""
    writers = _body_writers.get(signature)
    if writers is None:
        writers = _signature_writers(signature)
    if len(writers) != len(body):
        raise WireError(f"signature {signature!r} wants {len(writers)} values, not {len(body)}")
    fds: list[int] = []
    out = bytearray()
    try:
        for write, value in zip(writers, body, strict=True):
            write(out, value, fds, 0)
    except WireError:
        raise
    except (TypeError, AttributeError, ValueError):
        raise WireError(f"the values do not fit the signature {signature!r}") from None
    key = (destination, path, interface, member, signature, len(fds))
    fields = _headers.get(key) or _header_fields(key)
    if len(fields) + len(out) > MAX_MESSAGE:
        raise WireError("message larger than 128 MiB")
    head = _HEAD.pack(b"l", METHOD_CALL, NO_FLAGS, 1, len(out), serial)
    return b"".join((head, fields, out)), fds


_headers: dict[HeaderKey, bytes] = {}
_body_writers: dict[str, tuple[Writer, ...]] = {"": ()}


def _header_fields(key: HeaderKey) -> bytes:
    """The header from its fields array's length on (offset 12), padded to 8: checked once."""
    destination, path, interface, member, signature, nfds = key
    fields: list[tuple[int, tuple[str, Any]]] = [(PATH, ("o", path))]
    if interface is not None:
        fields.append((INTERFACE, ("s", interface)))
    fields += [(MEMBER, ("s", member)), (DESTINATION, ("s", destination))]
    if signature:
        fields.append((SIGNATURE, ("g", signature)))
    if nfds:
        fields.append((UNIX_FDS, ("u", nfds)))
    head = bytearray(FIXED_HEADER - 4)
    writer(("a", ("(", ("y", "v"))))(head, fields, [], 0)
    head += _ZEROS[-len(head) % 8]
    return remember(_headers, key, bytes(head[FIXED_HEADER - 4 :]))


def _signature_writers(signature: str) -> tuple[Writer, ...]:
    if not isinstance(signature, str):
        raise WireError("a signature is a string")
    return remember(_body_writers, signature, tuple(writer(t) for t in parse_signature(signature)))


_writers: dict[Any, Writer] = {}


def writer(t: Any) -> Writer:
    """The (cached) function that appends one value of type ``t``: (out, value, fds, depth)."""
    found = _writers.get(t)
    if found is None:
        found = remember(_writers, t, _make_writer(t))
    return found


def _make_writer(t: Any) -> Writer:
    if isinstance(t, tuple):
        if t[0] == "a":
            return _array_writer(t[1])
        if t[0] == "(":
            return _struct_writer([writer(f) for f in t[1]])
        return _struct_writer([writer(t[1]), writer(t[2])])
    if t in _FIXED:
        return _fixed_writer(t, _FIXED[t])
    if t == "v":
        return _write_variant
    return _string_writer(t)


def _fixed_writer(code: str, st: Struct) -> Writer:
    size, pack = st.size, st.pack

    def write(out: bytearray, value: Any, fds: list[int], depth: int) -> None:
        out += _ZEROS[-len(out) % size]
        try:
            out += pack(value)
        except StructError:
            raise WireError(f"value out of range for type {code!r}") from None

    def write_bool(out: bytearray, value: Any, fds: list[int], depth: int) -> None:
        out += _ZEROS[-len(out) % 4]
        out += pack(1 if value else 0)

    def write_fd(out: bytearray, value: Any, fds: list[int], depth: int) -> None:
        if not isinstance(value, int) or value < 0:
            raise WireError("an fd must be a non-negative int")
        fds.append(value)
        out += _ZEROS[-len(out) % 4]
        out += pack(len(fds) - 1)

    return write_bool if code == "b" else write_fd if code == "h" else write


def _string_writer(code: str) -> Writer:
    def write(out: bytearray, value: Any, fds: list[int], depth: int) -> None:
        if not isinstance(value, str) or "\0" in value:
            raise WireError(f"type {code!r} wants a string without nul")
        if code == "o" and not is_object_path(value):
            raise WireError("invalid object path")
        data = value.encode()
        out += _ZEROS[-len(out) % 4]
        out += _U32.pack(len(data))
        out += data
        out.append(0)

    def write_signature(out: bytearray, value: Any, fds: list[int], depth: int) -> None:
        out += _signature_bytes(value)

    return write_signature if code == "g" else write


def _signature_bytes(sig: Any) -> bytes:
    """A signature as it goes out (length byte, text, nul), checked against the grammar."""
    if not isinstance(sig, str) or "\0" in sig:
        raise WireError("type 'g' wants a string without nul")
    parse_signature(sig)
    data = sig.encode()
    return bytes((len(data),)) + data + b"\0"


def _array_writer(item: Any) -> Writer:
    if item == "y":
        return _write_bytes
    if isinstance(item, tuple) and item[0] == "{":
        return _dict_writer(writer(item[1]), writer(item[2]))
    align = alignment(item)
    write_item = writer(item)

    def write(out: bytearray, value: Any, fds: list[int], depth: int) -> None:
        if depth >= MAX_DEPTH:
            raise WireError("containers nested too deep")
        out += _ZEROS[-len(out) % 4]
        at = len(out)
        out += _ZEROS[4]
        out += _ZEROS[-len(out) % align]
        start = len(out)
        for element in value:
            write_item(out, element, fds, depth + 1)
        if len(out) - start > MAX_ARRAY:
            raise WireError("array longer than 64 MiB")
        _U32.pack_into(out, at, len(out) - start)

    return write


def _write_bytes(out: bytearray, value: Any, fds: list[int], depth: int) -> None:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise WireError("type 'ay' wants bytes")
    if depth >= MAX_DEPTH:
        raise WireError("containers nested too deep")
    n = len(value) if not isinstance(value, memoryview) else value.nbytes
    if n > MAX_ARRAY:
        raise WireError("array longer than 64 MiB")
    out += _ZEROS[-len(out) % 4]
    out += _U32.pack(n)
    out += value


def _dict_writer(write_key: Writer, write_value: Writer) -> Writer:
    def write(out: bytearray, value: Any, fds: list[int], depth: int) -> None:
        if depth >= MAX_DEPTH - 1:  # the array, and its entries inside it
            raise WireError("containers nested too deep")
        out += _ZEROS[-len(out) % 4]
        at = len(out)
        out += _ZEROS[4]
        out += _ZEROS[-len(out) % 8]
        start = len(out)
        for k, v in value.items():
            out += _ZEROS[-len(out) % 8]
            write_key(out, k, fds, depth + 2)
            write_value(out, v, fds, depth + 2)
        if len(out) - start > MAX_ARRAY:
            raise WireError("array longer than 64 MiB")
        _U32.pack_into(out, at, len(out) - start)

    return write


def _struct_writer(fields: list[Writer]) -> Writer:
    def write(out: bytearray, value: Any, fds: list[int], depth: int) -> None:
        if depth >= MAX_DEPTH:
            raise WireError("containers nested too deep")
        if len(value) != len(fields):
            raise WireError(f"a struct of {len(fields)} fields, not {len(value)}")
        out += _ZEROS[-len(out) % 8]
        for field, v in zip(fields, value, strict=True):
            field(out, v, fds, depth + 1)

    return write


#: A variant's signature as it goes out, and the writer of its value, per signature.
_variants: dict[str, tuple[bytes, Writer]] = {}


def _write_variant(out: bytearray, value: Any, fds: list[int], depth: int) -> None:
    if depth >= MAX_DEPTH:
        raise WireError("containers nested too deep")
    sig, inner = value
    found = _variants.get(sig) if isinstance(sig, str) else None
    if found is None:
        found = (_signature_bytes(sig), writer(single_type(sig)))
        if isinstance(sig, str):
            remember(_variants, sig, found)
    out += found[0]
    found[1](out, inner, fds, depth + 1)
