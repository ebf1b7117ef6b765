"""After lock, no plaintext of an in-message Decrypt stays in the agent's memory (issue 13).

The agent decrypts into a buffer of its own, hands it to the bus writer, and wipes both
once the reply is on the socket. Read as root from /proc/PID/mem, like
test_hardening_memory.py (the agent is non-dumpable).
"""

from __future__ import annotations

import os

import pyrage
import pytest

from agent_support import FAST_ARGS, Client, agent_pid
from conftest import BusFactory, requires_root
from test_hardening_memory import find_in_memory


@requires_root
@pytest.mark.parametrize("size", [300, 20_000, 300_000])
def test_decrypted_plaintext_is_wiped(bus_factory: BusFactory, size: int) -> None:
    bus = bus_factory(agent_args=FAST_ARGS)
    sizes = {"plain": size}
    plains = {name: os.urandom(n) for name, n in sizes.items()}
    with Client(bus.address) as c:
        recipient = c.create("k")
        c.unlock("k")
        sealed = {
            name: pyrage.encrypt(p, [pyrage.x25519.Recipient.from_str(recipient)])
            for name, p in plains.items()
        }
        for name, data in sealed.items():
            assert c.decrypt(data) == (plains[name], "k")
        c.m("LockAll")
        c.prop("/org/example/KeyAgent", "org.example.KeyAgent", "Version")  # a later call
        pid = agent_pid(bus)
        needles = {name: p[len(p) // 2 : len(p) // 2 + 32] for name, p in plains.items()}
        assert find_in_memory(pid, needles) == []
