"""The client's one mapping of error replies (`keyagent.errormap.error_for`), and what the
command says for each: a Locked reply's candidate names as data, a policy refusal's own hint."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli_support import error_line, ka
from conftest import PrivateBus
from keyagent.errormap import (
    AgentStartFailed,
    AgentUnavailable,
    BusError,
    BusRefused,
    NotYourAgent,
    PolicyRefused,
    error_for,
)
from keyagent.errors import exit_status, hint_for
from keyagent.protocol import Failed, Locked, NoSuchKey

DBUS = "org.freedesktop.DBus"
E = "org.freedesktop.DBus.Error."
LOCKED = "org.example.KeyAgent.Error.Locked"


def test_locked_names_come_from_the_second_argument_or_else_the_sentence() -> None:
    err = error_for(BusError(LOCKED, ":1.4", ("All candidate keys are locked.", ["b", "a"])))
    assert isinstance(err, Locked) and err.names == ("b", "a")
    assert err.message == "All candidate keys are locked."
    old = error_for(BusError(LOCKED, ":1.4", ("Key 'work' is locked: unlock it and retry.",)))
    assert isinstance(old, Locked) and old.names == ("work",)
    odd = error_for(BusError(LOCKED, ":1.4", ("Key 'w' is locked.", "not a list")))
    assert isinstance(odd, Locked) and odd.names == ("w",)


def test_bus_and_agent_errors_map_in_one_place() -> None:
    cases: list[tuple[BusError, dict[str, object], type, int]] = [
        (BusError(E + "ServiceUnknown", DBUS, ("gone",)), {}, AgentUnavailable, 3),
        (BusError(E + "Spawn.ChildExited", DBUS, ("exit 1",)), {}, AgentUnavailable, 3),
        (BusError(E + "UnknownObject", ":1.4", ("no",)), {"key": "w"}, NoSuchKey, 1),
        (BusError(E + "UnknownObject", ":1.4", ("no",)), {}, Failed, 1),
        (BusError(E + "AccessDenied", ":1.4", ("policy",)), {}, PolicyRefused, 4),
        (BusError(E + "AccessDenied", DBUS, ("rejected",)), {}, BusRefused, 4),
        (BusError("com.example.Other", ":1.4", ()), {}, Failed, 1),
    ]
    for reply, kw, cls, status in cases:
        err = error_for(reply, **kw)  # type: ignore[arg-type]
        assert type(err) is cls and exit_status(err) == status, reply.name
    started = error_for(BusError(E + "ServiceUnknown", DBUS, ("x",)), starting=True)
    assert started.message.startswith("The key agent is not installed on this bus")
    failed = error_for(BusError(E + "Spawn.ChildExited", DBUS, ("x",)), starting=True)
    assert failed.message.startswith("The key agent failed to start")
    # The agent's own sentence (keyagent.startnote), when it left one: its cause, its hint.
    noted = error_for(
        BusError(E + "Spawn.ChildExited", DBUS, ("x",)), starting=True, start_note="bad config"
    )
    assert type(noted) is AgentStartFailed and exit_status(noted) == 3
    assert noted.message == "The key agent failed to start: bad config"
    assert hint_for(noted) != hint_for(failed) and "install" not in hint_for(noted)
    assert error_for(BusError(E + "UnknownObject", ":1.4"), key="w").message == (
        "There is no key named 'w'."
    )


def test_each_refusal_has_its_own_hint() -> None:
    hints = {
        hint_for(NotYourAgent("x")),
        hint_for(PolicyRefused("x")),
        hint_for(BusRefused("x")),
    }
    assert len(hints) == 3 and all(hints)
    assert "not yours" in hint_for(NotYourAgent("x"))
    assert "not yours" not in hint_for(PolicyRefused("x"))
    assert "policy" in hint_for(PolicyRefused("x"))


#: Owns the agent's name and answers DecryptFd with a Locked error of the new shape (s, as),
#: whose sentence names no key, and Lock with an agent AccessDenied.
SCRIPTED_AGENT = r"""
import os
from jeepney import MessageType, HeaderFields
from jeepney.low_level import Message, Header, MessageFlag
from jeepney.bus_messages import message_bus
from jeepney.io.blocking import open_dbus_connection
from jeepney.wrappers import new_error
conn = open_dbus_connection(bus="SESSION", enable_fds=True)
conn.send_and_get_reply(message_bus.RequestName("org.example.KeyAgent", 4))
print("ready", flush=True)
while True:
    msg = conn.receive()
    if msg.header.message_type != MessageType.method_call:
        continue
    for fd in msg.body if isinstance(msg.body, tuple) else ():
        if hasattr(fd, "close") and hasattr(fd, "to_raw_fd"):
            fd.close()
    member = msg.header.fields.get(HeaderFields.member)
    if member == "DecryptFd":
        reply = new_error(msg, "org.example.KeyAgent.Error.Locked", "sas",
                          ("All the keys that could open it are locked.", ["home", "work"]))
    elif member == "Lock":
        reply = new_error(msg, "org.freedesktop.DBus.Error.AccessDenied", "s",
                          ("Key 'work' may not be used by /usr/bin/x.",))
    else:
        reply = new_error(msg, "org.freedesktop.DBus.Error.UnknownMethod", "s", ("no",))
    conn.send(reply)
"""


@pytest.fixture
def scripted_agent(private_bus: PrivateBus) -> Iterator[PrivateBus]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPTED_AGENT],
        env=private_bus.env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield private_bus
    finally:
        proc.kill()
        proc.wait()


def test_command_reads_locked_names_and_policy_refusals(
    scripted_agent: PrivateBus, tmp_path: Path
) -> None:
    sealed = tmp_path / "f.age"
    sealed.write_bytes(b"age-encryption.org/v1\n")
    r = ka(scripted_agent, "decrypt", "-o", str(tmp_path / "out"), str(sealed))
    assert r.returncode == 1, r.stderr
    assert error_line(r) == "keyagent: error: All the keys that could open it are locked."
    assert b"keyagent: hint: run 'keyagent unlock home'" in r.stderr
    assert not (tmp_path / "out").exists()

    r = ka(scripted_agent, "lock", "work")
    assert r.returncode == 4, r.stderr
    assert error_line(r) == "keyagent: error: Key 'work' may not be used by /usr/bin/x."
    assert b"not yours" not in r.stderr and b"policy" in r.stderr
