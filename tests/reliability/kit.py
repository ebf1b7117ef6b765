"""Helpers of the reliability suite: the agent's process state and a figures recorder."""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: Figures each test records (calls made, faults injected, failures seen), printed at the end
#: of the run and written to FIGURES_PATH for the closing note.
FIGURES: dict[str, dict[str, Any]] = {}
FIGURES_PATH = Path(tempfile.gettempdir()) / "keyagent-reliability-figures.json"


def record(test: str, **figures: Any) -> None:
    FIGURES.setdefault(test, {}).update(figures)
    print(f"[reliability] {test}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))
    FIGURES_PATH.write_text(json.dumps(FIGURES, indent=2, sort_keys=True) + "\n")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss(pid: int) -> int:
    """Resident set size in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def wait_until(cond: Callable[[], bool], timeout: float = 10.0, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()


def settle_fds(pid: int, target: int, timeout: float = 10.0) -> int:
    """The agent's fd count once it is back at ``target`` (or whatever it is at the timeout)."""
    wait_until(lambda: fd_count(pid) <= target, timeout)
    return fd_count(pid)
