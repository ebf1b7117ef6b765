"""keyagent.protocol: the one place wire names live, checked against the XML contract."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keyagent import protocol

XML = Path(__file__).resolve().parent.parent / "dbus" / "org.example.KeyAgent.xml"
NAMES = st.text(alphabet="abcXYZ019_-", min_size=1, max_size=64)
OBJECT_PATH_ELEMENT = re.compile(r"[A-Za-z0-9_]+")


def test_interface_names_match_the_xml() -> None:
    root = ET.parse(XML).getroot()  # noqa: S314 (our own file)
    interfaces = {i.get("name") for i in root.iter("interface")}
    assert interfaces == {protocol.MANAGER_INTERFACE, protocol.KEY_INTERFACE}


def test_every_error_name_is_documented_in_the_xml() -> None:
    text = XML.read_text()
    short = {n.removeprefix(protocol.ERROR_PREFIX) for n in protocol.AGENT_ERROR_NAMES}
    assert short == {
        "Locked", "NoSuchKey", "KeyExists", "BadPassphrase", "NoMatch", "Malformed",
        "Integrity", "Unsupported", "TooLarge", "InvalidName", "RateLimited", "Failed",
    }  # fmt: skip
    for name in short:
        assert re.search(rf"\b{name}\b", text), name


def test_wire_errors_map_back_to_their_classes() -> None:
    for wire, cls in protocol.ERRORS.items():
        err = protocol.error_from_wire(wire, "a sentence.")
        assert type(err) is cls and err.message == "a sentence."
    unknown = protocol.error_from_wire("com.example.Other", "boom")
    assert isinstance(unknown, protocol.Failed)


def test_locked_names_survive_the_wire() -> None:
    err = protocol.Locked.for_keys(["work", "my-key"])
    back = protocol.error_from_wire(err.wire_name(), err.message)
    assert isinstance(back, protocol.Locked)
    assert back.names == ("work", "my-key")
    signature, body = err.wire_args()
    assert signature == protocol.LOCKED_SIGNATURE == "sas"
    assert body == [err.message, ["work", "my-key"]]
    # The data wins over the sentence; names that are not key names are dropped.
    data = protocol.error_from_wire(err.wire_name(), "Key 'x' is locked.", ["a", "b/c"])
    assert isinstance(data, protocol.Locked) and data.names == ("a",)
    assert protocol.Failed("f.").wire_args() == ("s", ["f."])


@given(NAMES)
def test_key_paths_are_valid_and_reversible(name: str) -> None:
    path = protocol.key_path(name)
    element = path.removeprefix(protocol.KEYS_PATH_PREFIX)
    assert OBJECT_PATH_ELEMENT.fullmatch(element)
    assert protocol.key_name_from_path(path) == name


def test_distinct_names_get_distinct_paths() -> None:
    names = ["a-b", "a_b", "a_2db", "a_5fb", "ab"]
    assert len({protocol.key_path(n) for n in names}) == len(names)


@pytest.mark.parametrize("name", ["", "x" * 65, "a b", "a/b", "é", "a.b"])
def test_invalid_names_are_refused(name: str) -> None:
    assert not protocol.is_valid_key_name(name)
    with pytest.raises(protocol.InvalidName):
        protocol.key_path(name)


@pytest.mark.parametrize("path", ["/org/example/KeyAgent/keys/a_2D", "/org/example/KeyAgent/x"])
def test_foreign_paths_are_not_key_names(path: str) -> None:
    with pytest.raises(ValueError):
        protocol.key_name_from_path(path)
