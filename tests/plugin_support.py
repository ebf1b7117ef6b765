"""Helpers for the age-plugin-keyagent tests: the plugin on PATH as installs put it there."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import termios
from collections import deque
from pathlib import Path

import pytest
from jeepney import MatchRule, Message
from jeepney.bus_messages import message_bus
from jeepney.io.blocking import DBusConnection, open_dbus_connection

from cli_support import FAST_AGENT_ARGS, TtyRun, create_key, ka_pw
from conftest import BusFactory, PrivateBus, render_wrapper
from keyagent.protocol import MANAGER_INTERFACE, MANAGER_PATH

PLUGIN = "age-plugin-keyagent"


def install_plugin(bus: PrivateBus) -> Path:
    """bin/wrapper.in as meson installs it (a Python script named age-plugin-keyagent, as
    pip's console script is), on this bus's PATH."""
    text = render_wrapper("keyagent.plugin.main")
    path = bus.bindir / PLUGIN
    path.write_text(text)
    path.chmod(0o755)
    bus.env["PATH"] = f"{bus.bindir}:{os.environ['PATH']}"
    return path


def start_plugin_bus(bus_factory: BusFactory, tmp: Path, **env: str) -> PrivateBus:
    """A private bus whose agent finds no askpass program on its PATH (unless ``env`` names
    one: KEYAGENT_ASKPASS), with the plugin on the PATH of the clients the test runs."""
    tools = tmp / "daemon-path"
    tools.mkdir(parents=True, exist_ok=True)
    daemon = shutil.which("dbus-daemon")
    assert daemon is not None
    (tools / "dbus-daemon").symlink_to(daemon)
    bus = bus_factory(agent_args=FAST_AGENT_ARGS, extra_env={"PATH": str(tools), **env})
    install_plugin(bus)
    return bus


@pytest.fixture
def plugin_bus(bus_factory: BusFactory, tmp_path: Path) -> PrivateBus:
    return start_plugin_bus(bus_factory, tmp_path / "plugin-bus")


def identity_file(bus: PrivateBus, name: str, where: Path) -> Path:
    r = bus.keyagent("identity", name)
    path = where / f"{name}.txt"
    path.write_text(r.stdout)
    return path


def age(
    bus: PrivateBus, *args: str, input: bytes | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[bytes]:
    """The age command, without a terminal (a new session), bytes in and out."""
    return subprocess.run(
        ["age", *args],
        env=bus.env,
        input=input,
        capture_output=True,
        start_new_session=True,
        timeout=timeout,
        check=False,
    )


def unlocked_key(bus: PrivateBus, name: str, *extra: str) -> str:
    """A new key, unlocked; returns its recipient."""
    recipient = create_key(bus, name, "pw-" + name, *extra)
    r = ka_pw(bus, ["pw-" + name], "unlock", name)
    assert r.returncode == 0, r.stderr
    return recipient


def age_on_tty(bus: PrivateBus, *args: str, stdin: int | None = None) -> TtyRun:
    """age with a pseudo-terminal as its controlling terminal (where it prompts)."""
    master, slave = os.openpty()

    def become_terminal_owner() -> None:
        os.setsid()
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(
        ["age", *args],
        env=bus.env,
        stdin=subprocess.DEVNULL if stdin is None else stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=become_terminal_owner,
        pass_fds=(slave,),
    )
    os.close(slave)
    return TtyRun(proc, master)


def write_config(bus: PrivateBus, text: str) -> Path:
    """config.toml, read when the agent starts (write it before the first call)."""
    path = Path(bus.env["XDG_CONFIG_HOME"]) / "keyagent" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


class AccessWatcher:
    """A connection subscribed to AccessLog, as a desktop audit tool would be."""

    def __init__(self, bus: PrivateBus) -> None:
        rule = MatchRule(
            type="signal", interface=MANAGER_INTERFACE, member="AccessLog", path=MANAGER_PATH
        )
        self.conn: DBusConnection = open_dbus_connection(bus=bus.address)
        self.conn.send_and_get_reply(message_bus.AddMatch(rule), timeout=10)
        self.queue: deque[Message] = deque()
        self._filter = self.conn.filter(rule, queue=self.queue, bufsize=1000)
        self._filter.__enter__()

    def next(self) -> tuple[str, str, int, str, str]:
        msg = self.conn.recv_until_filtered(self.queue, timeout=20)
        return tuple(msg.body)  # type: ignore[return-value]

    def close(self) -> None:
        self._filter.__exit__(None, None, None)
        self.conn.close()
