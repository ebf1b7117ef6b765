"""The desktop integration examples in data/examples, run as users run them, on a private bus.

The scripts call `gdbus`, `keyagent` and `notify-send` from PATH: `keyagent` is this source
tree's command, `notify-send` a fake that appends its arguments to a log file.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from jeepney import DBusAddress, new_signal
from jeepney.bus_messages import message_bus
from jeepney.io.blocking import open_dbus_connection

from conftest import ROOT, PrivateBus

EXAMPLES = ROOT / "data" / "examples"
DEADLINE = 20.0  # hang protection only


@pytest.fixture
def desk(private_bus: PrivateBus, tmp_path: Path) -> PrivateBus:
    """The private bus, with PATH holding `keyagent` and a fake `notify-send`."""
    bindir = tmp_path / "desk-bin"
    bindir.mkdir()
    (bindir / "keyagent").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m keyagent "$@"\n')
    log = tmp_path / "notifications"
    (bindir / "notify-send").write_text(
        f'#!/bin/sh\nprintf "%s|" "$@" >> "{log}"\necho >> "{log}"\n'
    )
    for tool in ("keyagent", "notify-send"):
        (bindir / tool).chmod(0o755)
    private_bus.env["PATH"] = f"{bindir}:{EXAMPLES}:{private_bus.env['PATH']}"
    private_bus.env["NOTIFY_LOG"] = str(log)
    return private_bus


def notifications(bus: PrivateBus) -> list[str]:
    log = Path(bus.env["NOTIFY_LOG"])
    return log.read_text().splitlines() if log.exists() else []


def wait_for(
    predicate: Callable[[], bool], what: str, action: Callable[[], None] | None = None
) -> None:
    deadline = time.monotonic() + DEADLINE
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        if action is not None:
            action()
        time.sleep(0.05)


def init_key(bus: PrivateBus, name: str = "work") -> None:
    bus.keyagent("init", "--passphrase-fd", "0", name, input="pw\n")


def unlock(bus: PrivateBus, name: str = "work", *extra: str) -> None:
    bus.keyagent("unlock", "--passphrase-fd", "0", *extra, name, input="pw\n")


def status(bus: PrivateBus) -> dict[str, Any]:
    return json.loads(bus.keyagent("status", "--json").stdout)  # type: ignore[no-any-return]


def locked(bus: PrivateBus, name: str = "work") -> bool:
    return next(k["locked"] for k in status(bus)["keys"] if k["name"] == name)  # type: ignore[no-any-return]


# --- keyagent-lock-all --------------------------------------------------------------------------


def test_lock_all_does_not_start_the_agent(desk: PrivateBus) -> None:
    out = desk.run(["keyagent-lock-all", "-n"])
    assert out.stdout == out.stderr == ""
    assert desk.agent_pid() is None
    assert notifications(desk) == []  # nothing was unlocked, nothing to say


def test_lock_all_locks_every_key(desk: PrivateBus) -> None:
    init_key(desk, "work")
    init_key(desk, "home")
    unlock(desk, "work")
    unlock(desk, "home")
    assert not locked(desk, "work") and not locked(desk, "home")
    desk.run(["keyagent-lock-all", "-n"])
    assert locked(desk, "work") and locked(desk, "home")
    assert notifications(desk) == [
        "--app-name=keyagent|--icon=changes-prevent|keyagent|All keys are locked|"
    ]


def test_lock_all_usage_and_no_bus(desk: PrivateBus) -> None:
    assert desk.run(["keyagent-lock-all", "-x"], check=False).returncode == 2
    assert "keyagent-lock-all [-n]" in desk.run(["keyagent-lock-all", "--help"]).stdout
    env = {**desk.env, "DBUS_SESSION_BUS_ADDRESS": "unix:path=/nonexistent"}
    out = subprocess.run(["keyagent-lock-all"], env=env, capture_output=True, text=True)
    assert out.returncode == 1
    assert "the session bus is not reachable" in out.stderr


# --- keyagent-waybar ----------------------------------------------------------------------------


def waybar(bus: PrivateBus) -> dict[str, str]:
    out = bus.run(["keyagent-waybar"])
    lines = out.stdout.splitlines()
    assert len(lines) == 1
    return json.loads(lines[0])  # type: ignore[no-any-return]


def test_waybar_states(desk: PrivateBus) -> None:
    stopped = waybar(desk)
    assert stopped["class"] == stopped["alt"] == "stopped"
    assert stopped["text"] == ""
    assert desk.agent_pid() is None  # asking the state did not start the agent
    init_key(desk, "work")
    init_key(desk, "home")
    state = waybar(desk)
    assert state["class"] == "locked"
    assert sorted(state["tooltip"].splitlines()) == ["home: locked", "work: locked"]
    unlock(desk, "work", "--idle-timeout", "10m")
    state = waybar(desk)
    assert state["class"] == state["alt"] == "unlocked"
    assert state["text"] in ("work 9m", "work 10m")
    assert "work: unlocked, " in state["tooltip"] and "home: locked" in state["tooltip"]
    unlock(desk, "home", "--idle-timeout", "90")
    state = waybar(desk)
    # Two unlocked keys: the count, and the time until the first one locks.
    assert state["text"] == "2 keys 1m"


def test_waybar_render_durations() -> None:
    # The script is a program, not a module: load it by path to test its formatting.
    import importlib.machinery
    import importlib.util

    loader = importlib.machinery.SourceFileLoader(
        "keyagent_waybar", str(EXAMPLES / "keyagent-waybar")
    )
    spec = importlib.util.spec_from_loader("keyagent_waybar", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    assert [module.duration(s) for s in (-5, 0, 59, 60, 3599, 3600, 7260)] == [
        "0s", "0s", "59s", "1m", "59m", "1h00m", "2h01m",
    ]  # fmt: skip
    doc = {"version": 1, "keys": [{"name": "k", "locked": False, "seconds_left": 100}]}
    assert module.render(doc, 50)["text"] == "k 50s"
    assert module.render(doc, 150)["text"] == "k 0s"
    forever = {"version": 1, "keys": [{"name": "k", "locked": False, "seconds_left": None}]}
    assert module.render(forever)["text"] == "k"
    assert module.render({"version": 1, "keys": []})["tooltip"] == "keyagent: no keys"


@pytest.fixture
def follower(desk: PrivateBus) -> Iterator[Callable[[], dict[str, str]]]:
    proc = subprocess.Popen(
        ["keyagent-waybar", "--follow"], env=desk.env, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)

    def next_line() -> dict[str, str]:
        assert selector.select(DEADLINE), "keyagent-waybar --follow printed nothing"
        assert proc.stdout is not None
        return json.loads(proc.stdout.readline())  # type: ignore[no-any-return]

    yield next_line
    proc.terminate()
    proc.wait()


def test_waybar_follow_prints_each_change(
    desk: PrivateBus, follower: Callable[[], dict[str, str]]
) -> None:
    init_key(desk, "work")
    # gdbus monitor starts the agent; the first line is the state once it answers.
    first = follower()
    if first["class"] == "stopped":
        first = follower()
    assert first["class"] == "locked"
    unlock(desk, "work", "--idle-timeout", "10m")
    assert follower()["class"] == "unlocked"
    desk.keyagent("lock", "work")
    assert follower()["class"] == "locked"


# --- keyagent-notify-lock -----------------------------------------------------------------------


@pytest.fixture
def notifier(desk: PrivateBus) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> subprocess.Popen[bytes]:
        # Own process group: the script's gdbus monitor child goes with it.
        proc = subprocess.Popen(
            ["keyagent-notify-lock", *args], env=desk.env, start_new_session=True
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        os.killpg(proc.pid, 15)
        proc.wait()


class FakeAgent:
    """Owns org.example.KeyAgent and emits key PropertiesChanged signals, as the agent does."""

    def __init__(self, bus: PrivateBus) -> None:
        self.conn = open_dbus_connection(bus=bus.address)
        reply = self.conn.send_and_get_reply(
            message_bus.RequestName("org.example.KeyAgent"), timeout=5
        )
        assert reply.body == (1,)

    def changed(self, key: str, is_locked: bool, path: str | None = None) -> None:
        address = DBusAddress(
            path or f"/org/example/KeyAgent/keys/{key}", interface="org.freedesktop.DBus.Properties"
        )
        props = {"Locked": ("b", is_locked), "UnlockedUntil": ("t", 0)}
        self.conn.send(
            new_signal(
                address, "PropertiesChanged", "sa{sv}as", ("org.example.KeyAgent.Key", props, [])
            )
        )

    def close(self) -> None:
        self.conn.close()


def test_notify_lock_on_fake_agent(desk: PrivateBus, notifier: Callable[..., Any]) -> None:
    agent = FakeAgent(desk)
    try:
        notifier()
        expected = "--app-name=keyagent|--icon=changes-prevent|keyagent|Key 'work' is locked|"
        # Until gdbus monitor has subscribed, signals go unseen: repeat until the first arrives.
        wait_for(
            lambda: bool(notifications(desk)), "a notification", lambda: agent.changed("work", True)
        )
        assert set(notifications(desk)) == {expected}
        count = len(notifications(desk))
        # Unlocks are quiet without -u; other objects and strange names are ignored.
        agent.changed("work", False)
        agent.changed("x", True, path="/org/example/KeyAgent")
        agent.changed("home", True)
        wait_for(lambda: len(notifications(desk)) > count, "the 'home' notification")
        assert notifications(desk)[count:] == [expected.replace("work", "home")]
        # Escaped path elements show the key's name; a bad escape is not a key of ours.
        count += 1
        for element in ("bad_2", "bad_41x", "my_2dkey", "a_5fb_2dc"):
            agent.changed("", True, path=f"/org/example/KeyAgent/keys/{element}")
        wait_for(lambda: len(notifications(desk)) >= count + 2, "the escaped names")
        assert notifications(desk)[count:] == [
            expected.replace("work", "my-key"),
            expected.replace("work", "a_b-c"),
        ]
    finally:
        agent.close()


def test_notify_unlock_with_u(desk: PrivateBus, notifier: Callable[..., Any]) -> None:
    agent = FakeAgent(desk)
    try:
        notifier("-u")
        wait_for(
            lambda: bool(notifications(desk)), "a notification", lambda: agent.changed("k", False)
        )
        assert set(notifications(desk)) == {
            "--app-name=keyagent|--icon=changes-allow|keyagent|Key 'k' is unlocked|"
        }
    finally:
        agent.close()


def test_notify_lock_with_the_real_agent(desk: PrivateBus, notifier: Callable[..., Any]) -> None:
    init_key(desk, "work")
    notifier()

    def cycle() -> None:
        unlock(desk, "work")
        desk.keyagent("lock", "work")

    wait_for(lambda: bool(notifications(desk)), "a lock notification", cycle)
    assert set(notifications(desk)) == {
        "--app-name=keyagent|--icon=changes-prevent|keyagent|Key 'work' is locked|"
    }
    # A timer lock is announced too.
    count = len(notifications(desk))
    unlock(desk, "work", "--idle-timeout", "1")
    wait_for(lambda: len(notifications(desk)) > count, "the timeout notification")
