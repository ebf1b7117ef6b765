"""Unlocked keys are not kept in the clear in the agent's memory.

The agent caches each unlocked seed sealed under a per-process key and opens it only for one
operation, wiping the plaintext afterwards. This test reads the running agent's writable memory
(/proc/PID/mem, as root: the agent is non-dumpable, so only root can) after Unlock and Decrypt,
and again after Lock, looking for the identity's 32-byte seed and its AGE-SECRET-KEY string.

The key is imported by one agent process and used by a fresh one: ImportKey necessarily carries
the identity string in a bus message, and Python strings cannot be wiped; the claim under test
is about keys that are unlocked and used, which is the agent's normal life.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

from conftest import PrivateBus, requires_root
from keyagentd.age import bech32

MAPS_LINE = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S{4})")


def find_in_memory(pid: int, needles: dict[str, bytes]) -> list[str]:
    """Names of the needles present anywhere in ``pid``'s readable, writable memory."""
    found: set[str] = set()
    overlap = max(len(n) for n in needles.values())
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for line in maps:
            m = MAPS_LINE.match(line)
            if not m or not m.group(3).startswith("rw"):
                continue  # secrets live in writable memory; read-only mappings are code and data
            start, end = int(m.group(1), 16), int(m.group(2), 16)
            tail = b""
            pos = start
            while pos < end:
                size = min(1 << 22, end - pos)
                try:
                    mem.seek(pos)
                    chunk = mem.read(size)
                except OSError:
                    break  # e.g. a guard page
                window = tail + chunk
                for name, needle in needles.items():
                    if needle in window:
                        found.add(name)
                tail = chunk[-overlap:]
                pos += size
    return sorted(found)


@requires_root
def test_unlocked_identity_is_not_in_agent_memory(private_bus: PrivateBus, tmp_path: Path) -> None:
    seed = os.urandom(32)
    identity = bech32.encode("AGE-SECRET-KEY-", seed).upper()
    identity_file = tmp_path / "identity.txt"
    identity_file.write_text(f"# created: test\n{identity}\n")
    label = os.urandom(16).hex()  # a positive control: the agent keeps labels in memory
    private_bus.keyagent(
        "import", "--passphrase-fd", "0", "--label", label, "mem", str(identity_file), input="pw\n"
    )
    recipient = private_bus.keyagent("recipient", "mem").stdout.strip()
    assert recipient.startswith("age1")
    identity_file.unlink()

    # A fresh agent: the import's bus message and its Python strings stay behind in the old one.
    old = private_bus.agent_pid()
    assert old is not None
    os.kill(old, signal.SIGTERM)
    assert private_bus.wait_agent_gone()

    plain = tmp_path / "plain.txt"
    plain.write_bytes(b"attack at dawn\n" * 100)
    sealed = tmp_path / "plain.txt.age"
    subprocess.run(["age", "-r", recipient, "-o", str(sealed), str(plain)], check=True)
    private_bus.keyagent("unlock", "--passphrase-fd", "0", "mem", input="pw\n")
    out = tmp_path / "out.txt"
    private_bus.keyagent("decrypt", "-o", str(out), str(sealed))
    assert out.read_bytes() == plain.read_bytes()
    agent = private_bus.agent_pid()
    assert agent is not None and agent != old

    needles = {
        "seed": seed,
        "identity": identity.encode(),
        "identity (lower case)": identity.lower().encode(),
    }
    # The scan itself works: the key's random label, which the agent holds, is found.
    assert find_in_memory(agent, {"label": label.encode()}) == ["label"]
    assert find_in_memory(agent, needles) == [], "while unlocked, after a decrypt"
    private_bus.keyagent("lock", "mem")
    assert find_in_memory(agent, needles) == [], "after lock"
