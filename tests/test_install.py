"""`keyagent install` / `uninstall`, and activation through the installed user files."""

from __future__ import annotations

import sys
from pathlib import Path

from conftest import BusFactory

VERSION_CALL = [
    "gdbus", "call", "--session", "--dest", "org.example.KeyAgent",
    "--object-path", "/org/example/KeyAgent",
    "--method", "org.freedesktop.DBus.Properties.Get", "org.example.KeyAgent", "Version",
]  # fmt: skip

INSTALLED_BIN = Path(sys.executable).parent  # the venv that `make test` installed the project into


def test_install_then_gdbus_activates_the_installed_agent(bus_factory: BusFactory) -> None:
    bus = bus_factory(standard_dirs=True)
    assert bus.agent_pid() is None
    before = bus.run(VERSION_CALL, check=False)
    assert before.returncode != 0  # nothing installed yet: the name cannot be activated

    out = bus.run([str(INSTALLED_BIN / "keyagent"), "install"])
    data, config = Path(bus.env["XDG_DATA_HOME"]), Path(bus.env["XDG_CONFIG_HOME"])
    service = data / "dbus-1" / "services" / "org.example.KeyAgent.service"
    unit = config / "systemd" / "user" / "keyagent.service"
    assert str(service) in out.stdout and str(unit) in out.stdout
    assert f"Exec={INSTALLED_BIN / 'keyagentd'}\n" in service.read_text()
    assert f"ExecStart={INSTALLED_BIN / 'keyagentd'}\n" in unit.read_text()
    bus.run(["dbus-send", "--session", "--dest=org.freedesktop.DBus", "--type=method_call",
             "/org/freedesktop/DBus", "org.freedesktop.DBus.ReloadConfig"])  # fmt: skip

    answer = bus.run(VERSION_CALL)
    assert answer.stdout.strip().startswith("(<'")
    pid = bus.agent_pid()
    assert pid is not None
    exe = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert any(part.endswith(b"keyagentd") for part in exe)

    bus.run([str(INSTALLED_BIN / "keyagent"), "uninstall"])
    assert not service.exists() and not unit.exists()


def test_uninstall_without_install_is_harmless(bus_factory: BusFactory) -> None:
    bus = bus_factory(standard_dirs=True)
    out = bus.run([sys.executable, "-m", "keyagent", "uninstall"])
    assert out.returncode == 0
