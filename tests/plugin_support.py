"""Helpers for the age-plugin-keyagent tests: the plugin on PATH as installs put it there."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli_support import FAST_AGENT_ARGS, create_key, ka_pw
from conftest import ROOT, BusFactory, PrivateBus

PLUGIN = "age-plugin-keyagent"


def install_plugin(bus: PrivateBus) -> Path:
    """bin/wrapper.in as meson installs it (a Python script named age-plugin-keyagent, as
    pip's console script is), on this bus's PATH."""
    text = (ROOT / "bin" / "wrapper.in").read_text()
    text = text.replace("@PYTHON@", sys.executable).replace("@MODULE@", "keyagent.plugin.main")
    path = bus.bindir / PLUGIN
    path.write_text(text)
    path.chmod(0o755)
    bus.env["PATH"] = f"{bus.bindir}:{os.environ['PATH']}"
    return path


@pytest.fixture
def plugin_bus(bus_factory: BusFactory) -> PrivateBus:
    bus = bus_factory(agent_args=FAST_AGENT_ARGS)
    install_plugin(bus)
    return bus


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
