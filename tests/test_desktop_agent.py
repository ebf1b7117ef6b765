"""The desktop modules inside the real agent: config file, lock triggers, per-key policy,
hardening. These exercise keyagentd as activated on a private bus, so they pass only once the
agent loads config.toml and wires desktop.py, policy.py and hardening.py in (see the wiring
notes in the desktop engineer's report).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from jeepney import DBusAddress, HeaderFields, new_method_call, new_signal
from jeepney.bus_messages import message_bus
from jeepney.io.blocking import DBusConnection, open_dbus_connection

from conftest import PrivateBus, requires_root

DEADLINE = 20.0  # hang protection only
PYTHON = os.path.realpath(sys.executable)  # what /proc/PID/exe shows for `keyagent`


def write_config(bus: PrivateBus, text: str) -> Path:
    path = Path(bus.env["XDG_CONFIG_HOME"]) / "keyagent" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def init_and_unlock(bus: PrivateBus, name: str = "work", *extra: str) -> str:
    bus.keyagent("init", "--passphrase-fd", "0", name, input="pw\n")
    bus.keyagent("unlock", "--passphrase-fd", "0", *extra, name, input="pw\n")
    return bus.keyagent("recipient", name).stdout.strip()


def key_state(bus: PrivateBus, name: str = "work") -> dict[str, Any]:
    doc = json.loads(bus.keyagent("status", "--json").stdout)
    return next(k for k in doc["keys"] if k["name"] == name)  # type: ignore[no-any-return]


def sealed_file(tmp_path: Path, recipient: str) -> Path:
    plain = tmp_path / "plain.txt"
    plain.write_text("hello\n")
    out = tmp_path / "plain.txt.age"
    subprocess.run(["age", "-r", recipient, "-o", str(out), str(plain)], check=True)
    return out


class ScreenSaver:
    """A connection owning org.freedesktop.ScreenSaver, as a desktop's screen saver does."""

    def __init__(self, bus: PrivateBus) -> None:
        self.conn: DBusConnection = open_dbus_connection(bus=bus.address)
        reply = self.conn.send_and_get_reply(
            message_bus.RequestName("org.freedesktop.ScreenSaver"), timeout=5
        )
        assert reply.body == (1,)

    def active_changed(self, active: bool) -> None:
        where = DBusAddress("/org/freedesktop/ScreenSaver", interface="org.freedesktop.ScreenSaver")
        self.conn.send(new_signal(where, "ActiveChanged", "b", (active,)))

    def drain(self, bus: PrivateBus) -> None:
        """Return once the agent has handled everything this connection sent before."""
        owner = self.conn.send_and_get_reply(
            message_bus.GetNameOwner("org.example.KeyAgent"), timeout=5
        ).body[0]
        ping = new_method_call(DBusAddress("/", owner, "org.freedesktop.DBus.Peer"), "Ping")
        self.conn.send_and_get_reply(ping, timeout=5)

    def close(self) -> None:
        self.conn.close()


def test_bad_config_stops_the_agent_with_one_sentence(private_bus: PrivateBus) -> None:
    path = write_config(private_bus, "idle_timeout = 10\nbogus = 1\n")
    out = private_bus.run([sys.executable, "-m", "keyagentd"], check=False, timeout=20)
    assert out.returncode == 1
    assert f"{path}: unknown option 'bogus'" in out.stderr
    assert "Traceback" not in out.stderr
    assert private_bus.agent_pid() is None


def test_config_timeouts_apply_to_unlock(private_bus: PrivateBus) -> None:
    write_config(
        private_bus, "idle_timeout = 77\nmax_timeout = 500\n[keys.short]\nmax_timeout = 60\n"
    )
    init_and_unlock(private_bus, "work")
    state = key_state(private_bus, "work")
    assert (state["idle_timeout"], state["max_timeout"]) == (77, 500)
    init_and_unlock(private_bus, "short")
    state = key_state(private_bus, "short")
    assert (state["idle_timeout"], state["max_timeout"]) == (60, 60)


def test_screensaver_locks_every_key(private_bus: PrivateBus) -> None:
    init_and_unlock(private_bus, "work")
    init_and_unlock(private_bus, "home")
    saver = ScreenSaver(private_bus)
    try:
        saver.active_changed(False)
        saver.drain(private_bus)
        assert not key_state(private_bus, "work")["locked"]
        saver.active_changed(True)
        saver.drain(private_bus)
        assert key_state(private_bus, "work")["locked"]
        assert key_state(private_bus, "home")["locked"]
    finally:
        saver.close()


def test_screensaver_trigger_can_be_turned_off(private_bus: PrivateBus) -> None:
    write_config(private_bus, "lock_on_screensaver = false\n")
    init_and_unlock(private_bus, "work")
    saver = ScreenSaver(private_bus)
    try:
        saver.active_changed(True)
        saver.drain(private_bus)
        assert not key_state(private_bus, "work")["locked"]
    finally:
        saver.close()


@pytest.mark.parametrize("allowed", [True, False])
def test_allowed_executables(private_bus: PrivateBus, tmp_path: Path, allowed: bool) -> None:
    exe = PYTHON if allowed else "/usr/bin/not-this-one"
    write_config(private_bus, f'[keys.work]\nallowed_executables = ["{exe}"]\n')
    sealed = sealed_file(tmp_path, init_and_unlock(private_bus, "work"))
    out = private_bus.keyagent("decrypt", str(sealed), check=False)
    if allowed:
        assert (out.returncode, out.stdout) == (0, "hello\n")
    else:
        assert out.returncode == 4
        assert f"Key 'work' may not be used by {PYTHON}" in out.stderr
        assert "hint: the agent refused: a key's policy" in out.stderr  # not "not yours"
        assert out.stdout == ""


@pytest.mark.parametrize("answer", [0, 1])
def test_confirm_through_askpass(private_bus: PrivateBus, tmp_path: Path, answer: int) -> None:
    program = tmp_path / "askpass"
    log = tmp_path / "asked"
    program.write_text(f'#!/bin/sh\necho "$SSH_ASKPASS_PROMPT $1" >> {log}\nexit {answer}\n')
    program.chmod(0o755)
    write_config(private_bus, f'askpass = "{program}"\n[keys.work]\nconfirm = true\n')
    sealed = sealed_file(tmp_path, init_and_unlock(private_bus, "work"))
    out = private_bus.keyagent("decrypt", str(sealed), check=False)
    asked = log.read_text()
    assert asked.startswith("confirm keyagent: allow ")
    assert "decrypt with key 'work'" in asked
    if answer == 0:
        assert (out.returncode, out.stdout) == (0, "hello\n")
    else:
        assert out.returncode == 4
        assert "was not confirmed" in out.stderr


def agent_status_field(pid: int, field: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {field} in /proc/{pid}/status")


@requires_root
def test_agent_is_hardened(private_bus: PrivateBus) -> None:
    private_bus.keyagent("status")
    pid = private_bus.agent_pid()
    assert pid is not None
    # Hardening runs before the agent serves: by now its memory is locked (root may lock).
    assert agent_status_field(pid, "VmLck") != "0 kB"
    limits = Path(f"/proc/{pid}/limits").read_text().splitlines()
    core = next(line for line in limits if line.startswith("Max core file size"))
    assert core.split()[4:6] == ["0", "0"]


def decrypt_in_message(bus: PrivateBus, ciphertext: bytes) -> tuple[str, Any]:
    """Call Decrypt (data in the message) from this process: (error name or "", body)."""
    conn = open_dbus_connection(bus=bus.address)
    try:
        where = DBusAddress("/org/example/KeyAgent", "org.example.KeyAgent", "org.example.KeyAgent")
        reply = conn.send_and_get_reply(
            new_method_call(where, "Decrypt", "aya{sv}", (ciphertext, {})), timeout=30
        )
    finally:
        conn.close()
    error = reply.header.fields.get(HeaderFields.error_name, "")
    return error, reply.body


@pytest.mark.parametrize("policy", ["executables", "confirm"])
def test_policy_applies_to_in_message_decrypt(
    private_bus: PrivateBus, tmp_path: Path, policy: str
) -> None:
    program = tmp_path / "askpass"
    program.write_text("#!/bin/sh\nexit 1\n")  # always "no"
    program.chmod(0o755)
    rule = (
        'allowed_executables = ["/usr/bin/nope"]' if policy == "executables" else "confirm = true"
    )
    write_config(private_bus, f'askpass = "{program}"\n[keys.work]\n{rule}\n')
    sealed = sealed_file(tmp_path, init_and_unlock(private_bus, "work"))
    error, body = decrypt_in_message(private_bus, sealed.read_bytes())
    assert error == "org.freedesktop.DBus.Error.AccessDenied"
    assert "work" in body[0]
    # Without a policy, the same call from the same process decrypts.
    write_config(private_bus, "")
    private_bus.keyagent("lock", "--all")
    pid = private_bus.agent_pid()
    assert pid is not None
    os.kill(pid, 15)
    assert private_bus.wait_agent_gone()
    private_bus.keyagent("unlock", "--passphrase-fd", "0", "work", input="pw\n")
    error, body = decrypt_in_message(private_bus, sealed.read_bytes())
    assert (error, body) == ("", (b"hello\n", "work"))
