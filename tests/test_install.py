"""`keyagent install` / `uninstall`, and activation through the installed user files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import BusFactory, PrivateBus

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
    # Started isolated from the Python environment (issue 13): a pip console script is run
    # as `<its python> -I -m keyagentd`; meson's wrapper has `-I` in its first line already.
    script = INSTALLED_BIN / "keyagentd"
    first = script.read_text().splitlines()[0]
    command = str(script) if " -I" in first else f"{first[2:].strip()} -I -m keyagentd"
    assert f"Exec={command}\n" in service.read_text()
    assert f"ExecStart={command}\n" in unit.read_text()

    # No reload by hand: the services dir did not exist when the bus started, so it only
    # knows the name because `keyagent install` asked it to reload (as dbus-broker needs).
    answer = bus.run(VERSION_CALL)
    assert answer.stdout.strip().startswith("(<'")
    pid = bus.agent_pid()
    assert pid is not None
    exe = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert any(part.endswith(b"keyagentd") for part in exe)

    with ReloadWatch(bus) as watch:
        bus.run([str(INSTALLED_BIN / "keyagent"), "uninstall"])
    assert not service.exists() and not unit.exists()
    assert watch.seen()


class ReloadWatch:
    """dbus-monitor, ready before the body runs, recording the ReloadConfig calls it makes."""

    def __init__(self, bus: PrivateBus) -> None:
        self.bus = bus
        self.output = ""

    def __enter__(self) -> ReloadWatch:
        rules = [
            f"type='method_call',interface='org.freedesktop.DBus',member='{member}'"
            for member in ("ReloadConfig", "GetId")
        ]
        self.proc = subprocess.Popen(
            ["dbus-monitor", "--session", *rules], env=self.bus.env, stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # it is monitoring once it has lost its own name
            if "NameLost" in line:
                break
        return self

    def __exit__(self, *exc: object) -> None:
        # A GetId after the body: once the monitor shows it, it has shown everything before.
        self.bus.run(["dbus-send", "--session", "--dest=org.freedesktop.DBus", "--print-reply",
                      "/org/freedesktop/DBus", "org.freedesktop.DBus.GetId"])  # fmt: skip
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if "member=GetId" in line:
                break
            self.output += line
        self.proc.terminate()
        self.proc.wait(timeout=10)

    def seen(self) -> bool:
        return "member=ReloadConfig" in self.output


def test_install_without_a_session_bus_writes_the_files_and_says_so(
    bus_factory: BusFactory,
) -> None:
    bus = bus_factory(standard_dirs=True)
    env = {**bus.env, "DBUS_SESSION_BUS_ADDRESS": f"unix:path={bus.tmp / 'no-such-bus'}"}
    out = subprocess.run(
        [sys.executable, "-m", "keyagent", "install"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "keyagent: note: cannot connect to the session bus" in out.stderr
    assert (Path(bus.env["XDG_DATA_HOME"]) / "dbus-1" / "services").is_dir()


def test_uninstall_without_install_is_harmless(bus_factory: BusFactory) -> None:
    bus = bus_factory(standard_dirs=True)
    out = bus.run([sys.executable, "-m", "keyagent", "uninstall"])
    assert out.returncode == 0
