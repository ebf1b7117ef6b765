"""A D-Bus method call to bytes (little-endian), the other half of wire.py.

Values follow jeepney's conventions (see wire.py); an ``h`` value is an int fd, which goes
into the returned fd list (sent as SCM_RIGHTS) and into the message as its index there.
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
    single_type,
)

TYPE_CHECKING = False  # `typing` costs milliseconds at every start of the command
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any, Final

    Writer = Callable[[bytearray, Any, list[int], int], None]

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
    types = parse_signature(signature)
    if len(types) != len(body):
        raise WireError(f"signature {signature!r} wants {len(types)} values, not {len(body)}")
    fds: list[int] = []
    out = bytearray()
    try:
        for t, value in zip(types, body, strict=True):
            writer(t)(out, value, fds, 0)
    except WireError:
        raise
    except (TypeError, AttributeError, ValueError):
        raise WireError(f"the values do not fit the signature {signature!r}") from None
    fields: list[tuple[int, tuple[str, Any]]] = [(PATH, ("o", path))]
    if interface is not None:
        fields.append((INTERFACE, ("s", interface)))
    fields += [(MEMBER, ("s", member)), (DESTINATION, ("s", destination))]
    if signature:
        fields.append((SIGNATURE, ("g", signature)))
    if fds:
        fields.append((UNIX_FDS, ("u", len(fds))))
    head = bytearray(FIXED_HEADER - 4)
    writer(("a", ("(", ("y", "v"))))(head, fields, [], 0)
    head += bytes(-len(head) % 8)
    if len(head) + len(out) > MAX_MESSAGE:
        raise WireError("message larger than 128 MiB")
    _HEAD.pack_into(head, 0, b"l", METHOD_CALL, NO_FLAGS, 1, len(out), serial)
    return bytes(head + out), fds


_writers: dict[Any, Writer] = {}


def writer(t: Any) -> Writer:
    """The (cached) function that appends one value of type ``t``: (out, value, fds, depth)."""
    found = _writers.get(t)
    if found is None:
        found = _make_writer(t)
        if len(_writers) < 256:  # variants bring signatures of the caller's choosing
            _writers[t] = found
    return found


def _pad(out: bytearray, step: int) -> None:
    n = -len(out) % step
    if n:
        out += bytes(n)


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
        _pad(out, size)
        if code == "b":
            value = 1 if value else 0
        elif code == "h":
            if not isinstance(value, int) or value < 0:
                raise WireError("an fd must be a non-negative int")
            fds.append(value)
            value = len(fds) - 1
        try:
            out += pack(value)
        except StructError:
            raise WireError(f"value out of range for type {code!r}") from None

    return write


def _string_writer(code: str) -> Writer:
    def write(out: bytearray, value: Any, fds: list[int], depth: int) -> None:
        if not isinstance(value, str) or "\0" in value:
            raise WireError(f"type {code!r} wants a string without nul")
        if code == "o" and not is_object_path(value):
            raise WireError("invalid object path")
        data = value.encode()
        if code == "g":
            parse_signature(value)
            out.append(len(data))
        else:
            _pad(out, 4)
            out += _U32.pack(len(data))
        out += data
        out.append(0)

    return write


def _array_writer(item: Any) -> Writer:
    align = alignment(item)
    is_dict = isinstance(item, tuple) and item[0] == "{"
    write_item = writer(item)

    def write(out: bytearray, value: Any, fds: list[int], depth: int) -> None:
        if depth >= MAX_DEPTH:
            raise WireError("containers nested too deep")
        _pad(out, 4)
        at = len(out)
        out += bytes(4)
        _pad(out, align)
        start = len(out)
        if item == "y":
            if not isinstance(value, bytes | bytearray | memoryview):
                raise WireError("type 'ay' wants bytes")
            out += value
        else:
            for element in value.items() if is_dict else value:
                write_item(out, element, fds, depth + 1)
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
        _pad(out, 8)
        for field, v in zip(fields, value, strict=True):
            field(out, v, fds, depth + 1)

    return write


def _write_variant(out: bytearray, value: Any, fds: list[int], depth: int) -> None:
    if depth >= MAX_DEPTH:
        raise WireError("containers nested too deep")
    sig, inner = value
    t = single_type(sig)
    _string_writer("g")(out, sig, fds, depth)
    writer(t)(out, inner, fds, depth + 1)
