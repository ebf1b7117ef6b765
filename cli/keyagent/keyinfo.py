"""`KeyInfo`: the public properties of one key, as an immutable record.

A tuple with named fields written out, not a `NamedTuple` nor a frozen dataclass: `typing`
and `dataclasses` cost milliseconds at every start of `keyagent status` and `list`. It is a
tuple still (unpacking, equality, hashing), as the `NamedTuple` it replaces was. A module of
its own so that `keyagent.client` loads it only when needed.
"""

from __future__ import annotations

import time

TYPE_CHECKING = False  # `typing` costs milliseconds at every start of the command
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

_Fields = tuple[str, str, str, str, int, bool, int, int, int]


class KeyInfo(_Fields):
    """The public properties of one key (org.example.KeyAgent.Key)."""

    __slots__ = ()
    _fields = (
        "name",
        "label",
        "type",
        "recipient",
        "created",
        "locked",
        "unlocked_until",
        "idle_timeout",
        "max_timeout",
    )

    def __new__(
        cls,
        name: str,
        label: str,
        type: str,
        recipient: str,
        created: int,
        locked: bool,
        unlocked_until: int,
        idle_timeout: int,
        max_timeout: int,
    ) -> KeyInfo:
        fields = (name, label, type, recipient, created, locked)
        return tuple.__new__(cls, (*fields, unlocked_until, idle_timeout, max_timeout))

    def __repr__(self) -> str:
        pairs = ", ".join(f"{f}={v!r}" for f, v in zip(self._fields, self, strict=True))
        return f"KeyInfo({pairs})"

    @property
    def name(self) -> str:
        return self[0]

    @property
    def label(self) -> str:
        return self[1]

    @property
    def type(self) -> str:
        return self[2]

    @property
    def recipient(self) -> str:
        return self[3]

    @property
    def created(self) -> int:
        return self[4]

    @property
    def locked(self) -> bool:
        return self[5]

    @property
    def unlocked_until(self) -> int:
        return self[6]

    @property
    def idle_timeout(self) -> int:
        return self[7]

    @property
    def max_timeout(self) -> int:
        return self[8]

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
