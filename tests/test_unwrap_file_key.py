"""UnwrapFileKey on the bus, called directly (as typage or another age implementation would):
the file key and key name, and every bad input a named error with the agent still running."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import pytest

from cli_support import FAST_AGENT_ARGS, ka, ka_pw
from conftest import BusFactory, PrivateBus
from keyagent import protocol
from keyagent.client import Client
from keyagentd import age as agelib
from plugin_support import AccessWatcher

PYTHON = os.path.realpath(sys.executable)  # what /proc/PID/exe shows for this process


@pytest.fixture
def bus(bus_factory: BusFactory, tmp_path: Path) -> PrivateBus:
    b = bus_factory(agent_args=FAST_AGENT_ARGS)
    for name, key_type in (("work", "x25519"), ("pq", "mlkem768x25519")):
        ident = agelib.generate_identity(key_type)
        src = tmp_path / f"{name}.key"
        src.write_text(ident.encode() + "\n")
        assert ka_pw(b, ["pw", "pw"], "import", name, str(src)).returncode == 0
        assert ka_pw(b, ["pw"], "unlock", name).returncode == 0
        (tmp_path / f"{name}.id").write_text(ident.encode())
    return b


def stanzas_and_key(
    identity: str, recipient: str
) -> tuple[list[tuple[str, list[str], bytes]], bytes]:
    ct = agelib.encrypt_bytes([agelib.parse_recipient(recipient)], b"data")
    dec = agelib.Decryptor(io.BytesIO(ct))
    dec.unwrap([agelib.parse_identity(identity)])
    key = dec.file_key_for_tests()
    assert key is not None
    return [(s.type, list(s.args), s.body) for s in dec.stanzas], key


@pytest.mark.parametrize("name", ["work", "pq"])
def test_returns_file_key_and_key_name(bus: PrivateBus, tmp_path: Path, name: str) -> None:
    identity = (tmp_path / f"{name}.id").read_text()
    recipient = agelib.parse_identity(identity).recipient().encode()
    stanzas, key = stanzas_and_key(identity, recipient)
    grease = ("example.com/grease", ["x"], os.urandom(7))
    with Client(bus.address) as c:
        assert c.unwrap_file_key([grease, *stanzas]) == (key, name)
        assert c.unwrap_file_key(stanzas, key=name) == (key, name)


def test_access_log_names_the_direct_caller(bus: PrivateBus, tmp_path: Path) -> None:
    identity = (tmp_path / "work.id").read_text()
    stanzas, _ = stanzas_and_key(identity, agelib.parse_identity(identity).recipient().encode())
    watcher = AccessWatcher(bus)
    try:
        with Client(bus.address) as c:
            c.unwrap_file_key(stanzas)
        assert watcher.next() == ("UnwrapFileKey", "work", os.getpid(), PYTHON, "ok")
    finally:
        watcher.close()


def test_bad_input_is_a_named_error(bus: PrivateBus, tmp_path: Path) -> None:
    agent = bus.agent_pid()
    identity = (tmp_path / "work.id").read_text()
    stanzas, _ = stanzas_and_key(identity, agelib.parse_identity(identity).recipient().encode())
    other = agelib.generate_identity("x25519")
    foreign, _ = stanzas_and_key(other.encode(), other.recipient().encode())
    (kind, args, body) = stanzas[0]
    cases: list[tuple[list[tuple[str, list[str], bytes]], dict[str, str], type[Exception], str]] = [
        ([], {}, protocol.Malformed, "No recipient stanza"),
        ([("bad type", [], b"")], {}, protocol.Malformed, "malformed type"),
        ([(kind, args, body[:5])], {}, protocol.Malformed, "wrong size"),
        ([("X25519", [], body)], {}, protocol.Malformed, "malformed"),
        ([("scrypt", ["salt", "10"], body)], {}, protocol.NoMatch, "passphrase"),
        (foreign, {}, protocol.NoMatch, "No key in the agent matches"),
        (stanzas, {"key": "ghost"}, protocol.NoSuchKey, "ghost"),
        (stanzas, {"key": "bad name!"}, protocol.InvalidName, "Invalid key name"),
        (stanzas, {"key": "pq"}, protocol.NoMatch, "'pq' does not match"),
    ]
    with Client(bus.address) as c:
        for raw, opts, error, text in cases:
            with pytest.raises(error, match=text):
                c.unwrap_file_key(raw, **opts)
    ka(bus, "lock", "work")
    with Client(bus.address) as c, pytest.raises(protocol.Locked) as exc:
        c.unwrap_file_key(stanzas)
    assert exc.value.names == ("work",)
    assert bus.agent_pid() == agent
