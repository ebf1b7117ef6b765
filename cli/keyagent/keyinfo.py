"""`KeyInfo`: the public properties of one key, as a frozen record.

A module of its own so that `keyagent.client` need not import `dataclasses` (milliseconds of
`inspect`/`ast`/`dis`) on the command's hot path: only `list`, `status` and API users load it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class KeyInfo:
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
