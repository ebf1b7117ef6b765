"""`KeyInfo`: the public properties of one key, as an immutable record.

A `NamedTuple`, not a frozen dataclass: `dataclasses` (with `inspect`/`ast`/`dis`) costs about
8 ms at every start of `keyagent status` and `list`, a sixth of their run; `typing` is loaded
by jeepney anyway. A module of its own so that `keyagent.client` loads it only when needed.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, NamedTuple


class KeyInfo(NamedTuple):
    """The public properties of one key (org.example.KeyAgent.Key)."""

    name: str
    label: str
    type: str
    recipient: str
    created: int
    locked: bool
    unlocked_until: int
    idle_timeout: int
    max_timeout: int

    @classmethod
    def from_properties(cls, props: Mapping[str, tuple[str, Any]]) -> KeyInfo:
        def get(prop: str, default: Any) -> Any:
            item = props.get(prop)
            return default if item is None else item[1]

        return cls(
            name=str(get("Name", "")),
            label=str(get("Label", "")),
            type=str(get("Type", "")),
            recipient=str(get("Recipient", "")),
            created=int(get("Created", 0)),
            locked=bool(get("Locked", True)),
            unlocked_until=int(get("UnlockedUntil", 0)),
            idle_timeout=int(get("IdleTimeout", 0)),
            max_timeout=int(get("MaxTimeout", 0)),
        )

    def seconds_left(self, now: float | None = None) -> int | None:
        """Seconds until the key locks unless used (the agent's UnlockedUntil), None when locked."""
        if self.locked or not self.unlocked_until:
            return None
        now = time.time() if now is None else now
        return max(0, int(self.unlocked_until - now))
