"""keyagentd's command line, refusals, signals, idle exit and key timers."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import pytest
from jeepney import MatchRule, Message, message_bus

import conftest
from agent_support import FAST_ARGS, KI, MANAGER, MI, CallError, Client, agent_pid, wait_until
from conftest import OTHER_UID, PrivateBus, as_other_user, requires_root
from keyagent import protocol
from keyagentd import age


def keyagentd(
    env: dict[str, str], *args: str, timeout: float = 20
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "keyagentd", *FAST_ARGS, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def one_line_error(out: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("keyagentd: error:")]
    assert len(lines) == 1, out.stderr
    assert "Traceback" not in out.stderr
    return lines[0]


# --- command line ------------------------------------------------------------------------


def test_version_and_bad_options(private_bus: PrivateBus) -> None:
    out = keyagentd(private_bus.env, "--version")
    assert out.returncode == 0 and out.stdout.strip() == "keyagentd 0.1.0"
    for bad in (
        ["--idle-exit", "soon"],
        ["--argon2-memory", "4"],
        ["--argon2-time", "0"],
        ["--argon2-parallelism", "99"],
        ["--max-payload", "10"],
        ["--max-streams", "0"],
        ["--scrypt-work-factor", "40"],
        ["--no-such-option"],
        ["--argon2-memory", "16", "--argon2-parallelism", "4"],
    ):
        out = keyagentd(private_bus.env, *bad)
        assert out.returncode == 2, bad
        assert "keyagentd: error:" in out.stderr and "Traceback" not in out.stderr
    help_text = keyagentd(private_bus.env, "--help").stdout
    for option in (
        "--idle-exit",
        "--argon2-memory",
        "--max-payload",
        "--max-streams",
        "--scrypt-work-factor",
        "--verbose",
    ):
        assert option in help_text


def test_refuses_a_keystore_open_to_others(private_bus: PrivateBus, tmp_path: Path) -> None:
    home = tmp_path / "open"
    home.mkdir(mode=0o755)
    home.chmod(0o755)
    out = keyagentd({**private_bus.env, "KEYAGENT_HOME": str(home)})
    assert out.returncode == 1
    assert "chmod 700" in one_line_error(out)
    assert private_bus.agent_pid() is None  # it never claimed the name


@requires_root
def test_refuses_a_keystore_of_another_user(private_bus: PrivateBus, tmp_path: Path) -> None:
    home = tmp_path / "theirs"
    home.mkdir(mode=0o700)
    os.chown(home, OTHER_UID, OTHER_UID)
    out = keyagentd({**private_bus.env, "KEYAGENT_HOME": str(home)})
    assert out.returncode == 1
    assert f"uid {OTHER_UID}" in one_line_error(out)


def test_refuses_when_the_name_is_taken(private_bus: PrivateBus) -> None:
    with Client(private_bus.address) as c:
        c.prop(MANAGER, MI, "Version")
    first = agent_pid(private_bus)
    out = keyagentd(private_bus.env)
    assert out.returncode == 1
    assert "already owned" in one_line_error(out)
    assert private_bus.agent_pid() == first


def test_refuses_without_a_bus(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DBUS_", "XDG_"))}
    env.update(
        KEYAGENT_HOME=str(tmp_path / "ks"),
        XDG_RUNTIME_DIR=str(tmp_path),
        PYTHONPATH=f"{conftest.ROOT / 'service'}:{conftest.ROOT / 'cli'}",
        DBUS_SESSION_BUS_ADDRESS=f"unix:path={tmp_path / 'nothing-here'}",
    )
    out = keyagentd(env)
    assert out.returncode == 1
    assert "Cannot connect to the session bus" in one_line_error(out)
    del env["DBUS_SESSION_BUS_ADDRESS"]
    out = keyagentd(env)
    assert out.returncode == 1
    assert "session bus" in one_line_error(out)


@pytest.fixture
def foreign_bus() -> Iterator[dict[str, str]]:
    """A dbus-daemon running as uid 65534; yields an environment pointing at it."""
    top = Path(tempfile.mkdtemp(prefix="keyagent-foreign-"))
    top.chmod(0o755)
    os.chown(top, OTHER_UID, OTHER_UID)
    sock = top / "bus"
    try:
        config = conftest._write_config(
            top, sock, top / "services", any_user=True, standard_dirs=False
        )
    except TypeError:  # an older harness without standard_dirs
        config = conftest._write_config(top, sock, top / "services", any_user=True)  # type: ignore[call-arg]
    daemon = subprocess.Popen(
        ["dbus-daemon", "--nofork", "--nopidfile", f"--config-file={config}", "--print-address"],
        stdout=subprocess.PIPE,
        preexec_fn=as_other_user,
        cwd="/",
    )
    try:
        assert daemon.stdout is not None
        daemon.stdout.readline()
        assert wait_until(sock.exists)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DBUS_", "XDG_"))}
        ks = top / "ks"
        env.update(
            DBUS_SESSION_BUS_ADDRESS=f"unix:path={sock}",
            KEYAGENT_HOME=str(Path(tempfile.mkdtemp(prefix="keyagent-ks-")) / "ks"),
            PYTHONPATH=f"{conftest.ROOT / 'service'}:{conftest.ROOT / 'cli'}",
        )
        del ks
        yield env
    finally:
        daemon.terminate()
        daemon.wait(10)
        if daemon.stdout:
            daemon.stdout.close()
        shutil.rmtree(top, ignore_errors=True)


@requires_root
def test_refuses_a_bus_daemon_of_another_user(foreign_bus: dict[str, str]) -> None:
    out = keyagentd(foreign_bus)
    assert out.returncode == 1
    assert f"runs as uid {OTHER_UID}" in one_line_error(out)


# --- stopping ------------------------------------------------------------------------------


def test_sigterm_and_sigint_exit_cleanly(private_bus: PrivateBus) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        proc = subprocess.Popen(
            [sys.executable, "-m", "keyagentd", *FAST_ARGS],
            env=private_bus.env,
            stderr=subprocess.PIPE,
            text=True,
        )
        pid = proc.pid
        assert wait_until(lambda: private_bus.agent_pid() == pid)  # noqa: B023 - used at once
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err
        assert "Traceback" not in err and "exiting" in err
        assert private_bus.wait_agent_gone()


def test_exits_when_the_bus_goes_away(bus_factory: conftest.BusFactory) -> None:
    bus = bus_factory()
    proc = subprocess.Popen(
        [sys.executable, "-m", "keyagentd", *FAST_ARGS],
        env=bus.env,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert wait_until(lambda: bus.agent_pid() == proc.pid)
    bus.daemon.terminate()
    bus.daemon.wait(10)
    _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def test_idle_exit_waits_for_unlocked_keys(bus_factory: conftest.BusFactory) -> None:
    bus = bus_factory(agent_args=(*FAST_ARGS, "--idle-exit", "1"))
    with Client(bus.address) as c:
        c.create("idle")
        c.unlock_for("idle", 6)
        pid = agent_pid(bus)
    time.sleep(1.5)  # past --idle-exit, well before the key locks (a time feature: generous)
    assert bus.agent_pid() == pid  # an unlocked key keeps it alive past --idle-exit
    assert bus.wait_agent_gone(20)  # the key locks at 6 s, then 1 s idle
    with Client(bus.address) as c:  # activation brings it back, key still there
        assert c.prop(protocol.key_path("idle"), KI, "Locked") is True
        assert bus.agent_pid() != pid


def test_idle_exit_after_calls_stop(bus_factory: conftest.BusFactory) -> None:
    bus = bus_factory(agent_args=(*FAST_ARGS, "--idle-exit", "3"))
    with Client(bus.address) as c:
        c.prop(MANAGER, MI, "Version")
        pid = agent_pid(bus)
        for _ in range(8):  # calls keep it alive: 4 s in all, 0.5 s apart (2.5 s of margin)
            c.prop(MANAGER, MI, "Version")
            time.sleep(0.5)
        assert bus.agent_pid() == pid
    assert bus.wait_agent_gone(20)


# --- timers ------------------------------------------------------------------------------


@contextlib.contextmanager
def properties_changed(c: Client, path: str) -> Iterator[deque[Message]]:
    """The PropertiesChanged signals of the object at ``path`` as they arrive, for
    ``c.conn.recv_until_filtered``."""
    rule = MatchRule(
        type="signal",
        interface="org.freedesktop.DBus.Properties",
        member="PropertiesChanged",
        path=path,
    )
    c.conn.send_and_get_reply(message_bus.AddMatch(rule))
    with c.conn.filter(rule, bufsize=10) as changes:
        yield changes


def test_timeouts_lock_keys_and_emit_properties_changed(private_bus: PrivateBus) -> None:
    path = protocol.key_path("timed")
    with Client(private_bus.address) as c:
        c.create("timed")
        with properties_changed(c, path) as changes:
            c.unlock_for("timed", 1, 60)
            unlocked = c.conn.recv_until_filtered(changes, timeout=10)
            iface, values, _ = unlocked.body
            assert iface == KI and values["Locked"] == ("b", False)
            assert values["UnlockedUntil"][1] > time.time() - 5
            locked = c.conn.recv_until_filtered(changes, timeout=10)  # by the idle timer
            assert locked.body[1]["Locked"] == ("b", True)
            assert locked.body[1]["UnlockedUntil"] == ("t", 0)
            assert c.prop(path, KI, "Locked") is True
            # the hard maximum locks a key even while it is used
            c.unlock_for("timed", 60, 2)
            c.conn.recv_until_filtered(changes, timeout=10)
            recipient = c.prop(path, KI, "Recipient")
            ct = c.encrypt([recipient], b"use")
            start = time.monotonic()
            while time.monotonic() - start < 1.5:
                assert c.decrypt(ct)[1] == "timed"
                time.sleep(0.2)
            locked = c.conn.recv_until_filtered(changes, timeout=10)
            assert locked.body[1]["Locked"] == ("b", True)
            c.k("timed", "Lock")  # locking a locked key: no error, no signal


def test_a_use_that_moves_unlocked_until_is_signalled(private_bus: PrivateBus) -> None:
    """Properties and their signals agree (issue 17): a Decrypt moves the idle deadline, so
    UnlockedUntil changes and a (coalesced) PropertiesChanged says so."""
    path = protocol.key_path("used")
    with Client(private_bus.address) as c:
        recipient = c.create("used")
        ct = c.encrypt([recipient], b"use")
        with properties_changed(c, path) as changes:
            c.unlock_for("used", 600, 3600)
            until = c.conn.recv_until_filtered(changes, timeout=10).body[1]["UnlockedUntil"][1]
            # UnlockedUntil counts whole seconds: a use moves it once the clock has passed one.
            assert wait_until(lambda: time.time() >= until - 600 + 1, 5)
            assert c.decrypt(ct)[1] == "used"
            moved = c.conn.recv_until_filtered(changes, timeout=10)
            iface, values, _ = moved.body
            assert iface == KI and set(values) == {"UnlockedUntil"}
            assert values["UnlockedUntil"][1] == c.prop(path, KI, "UnlockedUntil") > until


def test_constant_properties_are_annotated_const(private_bus: PrivateBus) -> None:
    with Client(private_bus.address) as c:
        c.create("consts")
        xml = c.call(protocol.key_path("consts"), "org.freedesktop.DBus.Introspectable",
                     "Introspect")[0]  # fmt: skip
    emits = "org.freedesktop.DBus.Property.EmitsChangedSignal"
    props = {
        p.attrib["name"]: {a.attrib["name"]: a.attrib["value"] for a in p.findall("annotation")}
        for p in ET.fromstring(xml).iter("property")  # noqa: S314 - our agent's XML
    }
    for name in ("Name", "Label", "Type", "Recipient", "Created"):
        assert props[name].get(emits) == "const"
    for name in ("Locked", "UnlockedUntil", "IdleTimeout", "MaxTimeout"):
        assert props[name].get(emits, "true") == "true"


def test_log_lines_name_operations_but_never_secrets(
    private_bus: PrivateBus, tmp_path: Path
) -> None:
    identity = "AGE-SECRET-KEY-1" + "Q" * 58

    real = age.generate_identity("x25519")
    identity = real.encode()
    passphrase = "correct horse battery staple"
    log_path = tmp_path / "agent.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "keyagentd", *FAST_ARGS],
            env=private_bus.env,
            stderr=log_file,
        )
        pid = proc.pid
        try:
            assert wait_until(lambda: private_bus.agent_pid() == pid)
            with Client(private_bus.address) as c:
                c.m("ImportKey", "sssa{sv}", "logged", identity, passphrase, {})
                c.unlock("logged", passphrase)
                ct = c.encrypt(["logged"], b"plaintext never logged")
                c.decrypt(ct)
                with pytest.raises(CallError):
                    c.unlock("logged", "a wrong passphrase")
                c.k("logged", "Export", "s", passphrase)
        finally:
            proc.terminate()
            proc.wait(15)
    text = log_path.read_text()
    for secret in (identity, passphrase, "a wrong passphrase", "plaintext never logged"):
        assert secret not in text
    assert f"Unlock pid={os.getpid()} key=logged: ok" in text
    assert f"Unlock pid={os.getpid()} key=logged: BadPassphrase" in text
    assert f"Decrypt pid={os.getpid()} key=logged: ok" in text
    assert f"Encrypt pid={os.getpid()} key=logged: ok" in text


def test_core_dumps_are_off(private_bus: PrivateBus) -> None:
    with Client(private_bus.address) as c:
        c.prop(MANAGER, MI, "Version")
    limits = Path(f"/proc/{agent_pid(private_bus)}/limits").read_text()
    core = next(ln for ln in limits.splitlines() if ln.startswith("Max core file size"))
    assert core.split()[4:6] == ["0", "0"]
