"""keyagent.wire / keyagent.wirecall against jeepney (an independent implementation), both
ways and both byte orders, and strict refusal of malformed messages."""

from __future__ import annotations

import functools
import os
import struct
import sys
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jeepney import DBusAddress, HeaderFields, MessageType, new_signal
from jeepney.low_level import Endianness, Header
from jeepney.low_level import Message as JMessage

from keyagent import wire
from keyagent.wirecall import method_call

DEST, PATH, IFACE = "org.example.KeyAgent", "/org/example/KeyAgent", "org.example.KeyAgent"

#: Every type code, and the shapes the client sends and receives.
CASES: list[tuple[str, tuple[Any, ...]]] = [
    ("ybnqiuxtd", (255, True, -(2**15), 2**16 - 1, -(2**31), 2**32 - 1, -(2**63), 2**64 - 1, 0.5)),
    ("sog", ("grüß dich", "/org/example/KeyAgent/keys/a_2db", "a{sv}(sasay)")),
    ("asaya{sv}", (["age1x", "age1y"], b"\x00\xffdata", {"armor": ("b", True), "n": ("u", 5)})),
    ("a(sasay)a{sv}", ([("X25519", ["arg"], b"\x01" * 32), ("scrypt", [], b"")], {})),
    ("v", (("v", ("a{sv}", {"inner": ("v", ("as", ["a", "b"]))})),)),
    ("a{oa{sa{sv}}}", ({"/k/a": {"org.example.KeyAgent.Key": {"Locked": ("b", False)}}},)),
    ("a(yt)ad", ([(1, 2), (3, 4)], [1.5, -2.0])),
    ("aaya{ys}", ([b"", b"x"], {1: "one", 2: "two"})),
    ("", ()),
]


def _jeepney_parse(data: bytes) -> JMessage:
    return JMessage.from_buffer(data)


@pytest.mark.parametrize(("sig", "body"), CASES)
def test_our_calls_parse_in_jeepney(sig: str, body: tuple[Any, ...]) -> None:
    data, fds = method_call(9, DEST, PATH, IFACE, "Member", sig, body)
    assert fds == []
    msg = _jeepney_parse(data)
    fields = msg.header.fields
    assert msg.header.message_type is MessageType.method_call and msg.header.serial == 9
    assert (fields[HeaderFields.path], fields[HeaderFields.interface]) == (PATH, IFACE)
    assert (fields[HeaderFields.member], fields[HeaderFields.destination]) == ("Member", DEST)
    assert fields.get(HeaderFields.signature, "") == sig
    assert msg.body == body
    assert wire.parse_message(data).body == body  # and our own reader agrees


def test_fds_go_out_as_indices_with_the_list() -> None:
    body = (3, 7, {"passphrase-fd": ("h", 11)})
    data, fds = method_call(2, DEST, PATH, IFACE, "DecryptFd", "hha{sv}", body)
    assert fds == [3, 7, 11]
    assert wire.parse_message(data).body == (0, 1, {"passphrase-fd": ("h", 2)})
    msg = JMessage.from_buffer(data, fds=[100, 101, 102])  # jeepney maps indices to fds
    assert msg.header.fields[HeaderFields.unix_fds] == 3
    assert msg.body == (100, 101, {"passphrase-fd": ("h", 102)})


def _jeepney_message(kind: MessageType, sig: str, body: tuple[Any, ...], big: bool) -> bytes:
    fields: dict[HeaderFields, Any] = {HeaderFields.sender: ":1.7"}
    if kind is MessageType.signal:
        fields.update({HeaderFields.path: PATH, HeaderFields.interface: IFACE})
        fields[HeaderFields.member] = "KeysChanged"
    else:
        fields[HeaderFields.reply_serial] = 42
    if kind is MessageType.error:
        fields[HeaderFields.error_name] = "org.example.KeyAgent.Error.Locked"
    if sig:
        fields[HeaderFields.signature] = sig
    order = Endianness.big if big else Endianness.little
    header = Header(order, kind, 0, 1, -1, None, fields)
    return bytes(JMessage(header, body).serialise(serial=77))


@pytest.mark.parametrize("big", [False, True])
@pytest.mark.parametrize("kind", [MessageType.method_return, MessageType.error, MessageType.signal])
@pytest.mark.parametrize(("sig", "body"), CASES)
def test_jeepney_messages_parse_here(
    sig: str, body: tuple[Any, ...], kind: MessageType, big: bool
) -> None:
    data = _jeepney_message(kind, sig, body, big)
    assert wire.message_length(data[:16]) == len(data)
    msg = wire.parse_message(data)
    assert (msg.kind, msg.serial, msg.sender) == (kind.value, 77, ":1.7")
    assert msg.body == body
    if kind is MessageType.signal:
        assert msg.fields[wire.MEMBER] == "KeysChanged" and msg.reply_serial == 0
    else:
        assert msg.reply_serial == 42
    if kind is MessageType.error:
        assert msg.error_name == "org.example.KeyAgent.Error.Locked"


def test_a_jeepney_signal_helper_message_parses() -> None:
    emitter = DBusAddress(PATH, interface=IFACE)
    data = bytes(new_signal(emitter, "KeysChanged", "as", (["a"],)).serialise(serial=3))
    assert wire.parse_message(data).body == (["a"],)


# -- generated values ---------------------------------------------------------------------------

_NAME = st.text(alphabet="abcXYZ019_", min_size=1, max_size=6)
_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "y": st.integers(0, 255),
    "b": st.booleans(),
    "n": st.integers(-(2**15), 2**15 - 1),
    "q": st.integers(0, 2**16 - 1),
    "i": st.integers(-(2**31), 2**31 - 1),
    "u": st.integers(0, 2**32 - 1),
    "x": st.integers(-(2**63), 2**63 - 1),
    "t": st.integers(0, 2**64 - 1),
    "d": st.floats(allow_nan=False),
    "s": st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0")),
    "o": st.one_of(
        st.just("/"), st.lists(_NAME, min_size=1, max_size=3).map(lambda p: "/" + "/".join(p))
    ),
    "g": st.sampled_from(["", "s", "a{sv}", "(sasay)", "aav", "ybnqiuxtdsogv"]),
}
_BASIC = sorted(_VALUES)


@st.composite
def _tree(draw: st.DrawFn, depth: int = 0) -> Any:
    """One complete type: a code, "v", ("a", item), ("(", fields) or ("{", key, value)."""
    kind = draw(st.sampled_from(_BASIC + (["a", "(", "{", "v"] if depth < 4 else [])))
    if kind == "a":
        return ("a", draw(_tree(depth + 1)))
    if kind == "(":
        return ("(", tuple(draw(st.lists(_tree(depth + 1), min_size=1, max_size=3))))
    if kind == "{":
        key = draw(st.sampled_from([k for k in _BASIC if k != "d"]))
        return ("{", key, draw(_tree(depth + 1)))
    return kind


def _sig(t: Any) -> str:
    if not isinstance(t, tuple):
        return str(t)
    if t[0] == "a":
        return "a" + _sig(t[1])
    if t[0] == "(":
        return "(" + "".join(map(_sig, t[1])) + ")"
    return "a{" + t[1] + _sig(t[2]) + "}"


def _values(t: Any, depth: int) -> st.SearchStrategy[Any]:
    if t == "v":
        return _typed(depth + 1).map(lambda sv: (sv[0], sv[1]))
    if not isinstance(t, tuple):
        return _VALUES[t]
    if t == ("a", "y"):
        return st.binary(max_size=40)
    if t[0] == "a":
        return st.lists(_values(t[1], depth + 1), max_size=3)
    if t[0] == "(":
        return st.tuples(*(_values(f, depth + 1) for f in t[1]))
    return st.dictionaries(_VALUES[t[1]], _values(t[2], depth + 1), max_size=3)


def _typed(depth: int = 0) -> st.SearchStrategy[tuple[str, Any]]:
    """A signature of one complete type and a value of it."""
    return _tree(depth).flatmap(lambda t: _values(t, depth).map(lambda v: (_sig(t), v)))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_typed(), max_size=4), st.booleans())
def test_generated_values_round_trip_both_ways(items: list[tuple[str, Any]], big: bool) -> None:
    sig = "".join(s for s, _ in items)
    body = tuple(v for _, v in items)
    data, _ = method_call(5, DEST, PATH, IFACE, "M", sig, body)
    assert _jeepney_parse(data).body == body
    assert wire.parse_message(data).body == body
    back = _jeepney_message(MessageType.method_return, sig, body, big)
    assert wire.parse_message(back).body == body


# -- malformed input ----------------------------------------------------------------------------


def _reply(sig: str, body: bytes, *, fields_extra: bytes = b"") -> bytes:
    """A little-endian method return built by hand: reply serial 1, then ``sig``."""
    fields = struct.pack("<B3sI", wire.REPLY_SERIAL, b"\x01u\x00", 1)
    sig_bytes = sig.encode()
    fields += b"\0" * (-len(fields) % 8)
    fields += struct.pack("<B3sB", wire.SIGNATURE, b"\x01g\x00", len(sig_bytes)) + sig_bytes + b"\0"
    fields += fields_extra
    head = struct.pack("<cBBBIII", b"l", 2, 0, 1, len(body), 5, len(fields)) + fields
    return head + b"\0" * (-len(head) % 8) + body


def test_the_hand_built_reply_is_valid() -> None:
    assert wire.parse_message(_reply("ay", struct.pack("<I", 2) + b"ok")).body == (b"ok",)


@pytest.mark.parametrize(
    ("sig", "body", "why"),
    [
        ("ay", struct.pack("<I", 100) + b"ok", "past the message"),  # an array longer than all
        ("s", struct.pack("<I", 50) + b"ok\0", "string truncated"),
        ("s", struct.pack("<I", 2) + b"okX", "not nul-terminated"),
        ("s", struct.pack("<I", 2) + b"\xff\xfe\0", "not UTF-8"),
        ("s", struct.pack("<I", 3) + b"o\0k\0", "nul inside"),
        ("o", struct.pack("<I", 3) + b"a/b\0", "object path"),
        ("yt", b"\x01\x00\x00\x01\x00\x00\x00\x00" + bytes(8), "padding"),  # a non-zero pad
        ("b", struct.pack("<I", 2), "boolean"),
        ("u", b"\x01\x02", "truncated"),
        ("v", b"\x01z\x00\x00", "bad type code"),
        ("v", b"\x02yy\x00\x01\x02", "one complete type"),
        ("g", b"\x01(\x00", "unclosed struct"),
        ("ay", struct.pack("<I", 2**26 + 1), "64 MiB"),
        ("y", b"\x01\x02", "body length"),  # bytes left over
    ],
)
def test_malformed_bodies_raise_wire_error(sig: str, body: bytes, why: str) -> None:
    with pytest.raises(wire.WireError, match=why):
        wire.parse_message(_reply(sig, body))


def test_an_unknown_type_in_the_signature_field() -> None:
    data = _reply("ay", struct.pack("<I", 0)).replace(b"\x02ay\x00", b"\x02zy\x00")
    with pytest.raises(wire.WireError, match="bad type code"):
        wire.parse_message(data)


@pytest.mark.parametrize(
    "sig",
    ["a" * 33 + "y", "(" * 33 + "y" + ")" * 33, "a{vy}", "a{sv", "(", "()", "x" * 256, "a", "}"],
)
def test_bad_signatures(sig: str) -> None:
    with pytest.raises(wire.WireError):
        wire.parse_signature(sig)
    with pytest.raises(wire.WireError):
        method_call(1, DEST, PATH, IFACE, "M", sig, (None,))


def test_variants_nested_past_the_limit() -> None:
    """A thousand variants in variants: WireError, not RecursionError or a crash."""
    ok = b"\x01v\x00" * 60 + b"\x01y\x00\x07"
    assert wire.parse_message(_reply("v", ok)).body[0][0] == "v"
    deep = b"\x01v\x00" * 1000 + b"\x01y\x00\x07"
    with pytest.raises(wire.WireError, match="too deep"):
        wire.parse_message(_reply("v", deep))
    value: Any = ("y", 7)
    for _ in range(100):
        value = ("v", value)
    with pytest.raises(wire.WireError, match="too deep"):
        method_call(1, DEST, PATH, IFACE, "M", "v", (value,))


def test_sizes_past_the_specification() -> None:
    head = struct.pack("<cBBBIII", b"l", 2, 0, 1, 2**27, 5, 0)
    with pytest.raises(wire.WireError, match="128 MiB"):
        wire.message_length(head)
    with pytest.raises(wire.WireError, match="byte order"):
        wire.message_length(b"X" + head[1:])
    with pytest.raises(wire.WireError, match="version"):
        wire.message_length(head[:3] + b"\x02" + head[4:])


def test_header_fields_are_checked() -> None:
    good = _reply("", b"")
    with pytest.raises(wire.WireError, match="required"):  # a return without a reply serial
        wire.parse_message(good.replace(b"\x05\x01u\x00", b"\x0a\x01u\x00"))
    with pytest.raises(wire.WireError, match="type"):  # a reply serial of the wrong type
        wire.parse_message(good.replace(b"\x05\x01u\x00", b"\x05\x01i\x00"))
    zero = good[:8] + bytes(4) + good[12:]
    with pytest.raises(wire.WireError, match="serial 0"):
        wire.parse_message(zero)


def test_every_truncation_is_refused() -> None:
    data = _jeepney_message(MessageType.method_return, CASES[2][0], CASES[2][1], big=True)
    for cut in range(len(data)):
        with pytest.raises(wire.WireError):
            wire.parse_message(data[:cut])


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_corrupted_messages_parse_or_raise_wire_error(data: st.DataObject) -> None:
    sig, body = data.draw(st.sampled_from(CASES[:-1]))
    raw = bytearray(
        _jeepney_message(MessageType.method_return, sig, body, data.draw(st.booleans()))
    )
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    try:
        wire.message_length(raw[:16])
        wire.parse_message(bytes(raw))
    except wire.WireError:
        pass


def test_bad_values_raise_wire_error() -> None:
    for sig, value in [
        ("y", 256),
        ("u", -1),
        ("s", 5),
        ("s", "a\0b"),
        ("o", "no/slash"),
        ("ay", "text"),
        ("(ss)", ("one",)),
        ("a{sv}", {"k": ("zz", 1)}),
        ("h", -1),
        ("as", None),
    ]:
        with pytest.raises(wire.WireError):
            method_call(1, DEST, PATH, IFACE, "M", sig, (value,))
    with pytest.raises(wire.WireError, match="wants 2 values"):
        method_call(1, DEST, PATH, IFACE, "M", "ss", ("one",))


def test_a_large_payload_round_trips() -> None:
    payload = os.urandom(3 << 20)
    data, _ = method_call(1, DEST, PATH, IFACE, "Encrypt", "asaya{sv}", ([], payload, {}))
    assert _jeepney_parse(data).body[1] == payload
    assert wire.parse_message(data).body[1] == payload


def _python_calls(fn: Any) -> int:
    """How many Python functions ``fn()`` calls (itself included): independent of load."""
    count = 0

    def profile(frame: Any, event: str, arg: Any) -> None:
        nonlocal count
        count += event == "call"

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return count


def test_a_repeated_call_is_marshalled_from_what_was_kept() -> None:
    """The second Decrypt/Encrypt of a kind reuses its header and its signature's writers: a
    handful of Python calls, not hundreds. Also bounded: 300 distinct paths still marshal."""
    ct = os.urandom(1300)
    calls = [
        ("Decrypt", "aya{sv}", (ct, {})),
        ("Encrypt", "asaya{sv}", (["age1x"], ct, {"armor": ("b", True)})),
    ]
    for member, sig, body in calls:
        first = method_call(1, DEST, PATH, IFACE, member, sig, body)
        again = functools.partial(method_call, 1, DEST, PATH, IFACE, member, sig, body)
        assert _python_calls(again) <= 10
        assert method_call(1, DEST, PATH, IFACE, member, sig, body) == first
        assert _jeepney_parse(first[0]).body == body
    for i in range(300):  # more objects than the cache holds: it starts again when full
        data, _ = method_call(i + 1, DEST, f"{PATH}/k{i}", IFACE, "Lock")
        assert _jeepney_parse(data).header.fields[HeaderFields.path] == f"{PATH}/k{i}"
    assert _python_calls(again) > 10  # forgotten with the first 256
    again()
    assert _python_calls(again) <= 10  # kept again: a long-lived client keeps caching


def test_a_reply_parses_in_a_few_calls() -> None:
    """A Decrypt reply's known header fields are read directly and its body's readers kept."""
    data = _jeepney_message(MessageType.method_return, "ays", (os.urandom(1024), "work"), False)
    want = wire.parse_message(data).body
    assert _python_calls(lambda: wire.parse_message(data)) <= 24
    assert wire.parse_message(data).body == want
