"""Helpers of the reliability suite: the agent's process state and a figures recorder."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

# Process-state helpers shared with the agent tests.
from agent_support import fd_count as fd_count
from agent_support import settle_fds as settle_fds
from agent_support import wait_until as wait_until

#: Figures each test records (calls made, faults injected, failures seen), printed at the end
#: of the run and written to FIGURES_PATH for the closing note.
FIGURES: dict[str, dict[str, Any]] = {}
FIGURES_PATH = Path(tempfile.gettempdir()) / "keyagent-reliability-figures.json"


def record(test: str, **figures: Any) -> None:
    FIGURES.setdefault(test, {}).update(figures)
    print(f"[reliability] {test}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))
    FIGURES_PATH.write_text(json.dumps(FIGURES, indent=2, sort_keys=True) + "\n")


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
