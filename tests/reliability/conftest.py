"""Fixtures of the reliability suite: one agent per module with a known key, and the figures."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyrage
import pytest

from conftest import PrivateBus, start_private_bus, stop_private_bus
from keyagent.client import Client
from reliability import kit

KEY = "rel"
PASSPHRASE = "reliability passphrase"


@dataclass
class Agent:
    """A private bus with an activated agent holding one unlocked X25519 key, imported from
    an identity the test knows (so results can be checked independently with pyrage)."""

    bus: PrivateBus
    identity: Any  # pyrage.x25519.Identity
    recipient: str

    def client(self, timeout: float = 60.0) -> Client:
        return Client(self.bus.address, timeout=timeout)

    def pid(self) -> int:
        pid = self.bus.agent_pid()
        assert pid is not None, "the agent is not running"
        return pid


def start_agent(tmp: Path, **bus_args: Any) -> Agent:
    bus = start_private_bus(tmp, **bus_args)
    ident = pyrage.x25519.Identity.generate()
    try:
        with Client(bus.address) as c:
            c.import_key(KEY, str(ident), PASSPHRASE)
            c.unlock_with_pipe(KEY, PASSPHRASE)
    except BaseException:
        stop_private_bus(bus)
        raise
    return Agent(bus, ident, str(ident.to_public()))


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    """One agent for a whole module (hypothesis tests need a fixture that outlives examples)."""
    a = start_agent(tmp_path_factory.mktemp("relbus"))
    yield a
    stop_private_bus(a.bus)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not kit.FIGURES:
        return
    terminalreporter.section("keyagent reliability figures")
    for test, figs in kit.FIGURES.items():
        terminalreporter.write_line(f"{test}: " + ", ".join(f"{k}={v}" for k, v in figs.items()))
    terminalreporter.write_line(f"(also in {kit.FIGURES_PATH})")
