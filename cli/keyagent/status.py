"""`keyagent status` and `keyagent list`: the agent and its keys, for people and for scripts.

The JSON form is a stable interface (documented in keyagent(1)); its top-level ``version``
changes only when a field changes meaning or goes away. New fields may be added.
"""

from __future__ import annotations

import time

from keyagent.durations import format_duration

TYPE_CHECKING = False  # `typing` costs milliseconds at every start of the command
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any, Final

    from keyagent.keyinfo import KeyInfo

#: Version of the status JSON document.
STATUS_JSON_VERSION: Final = 1
#: Longer recipients (age1pq1…: 1,959 characters) are shortened in human output.
SHORT_RECIPIENT_MAX: Final = 74
#: How many final characters a shortened recipient keeps (enough to tell keys apart).
SHORT_RECIPIENT_TAIL: Final = 12


def short_recipient(recipient: str) -> str:
    """The recipient for a table: whole when short, else its kind (``age1pq1``) + "…" + its
    last characters. The full form is in `keyagent recipient` and --json."""
    if len(recipient) <= SHORT_RECIPIENT_MAX:
        return recipient
    head = "age1pq1" if recipient.startswith("age1pq1") else recipient[:8]
    return f"{head}…{recipient[-SHORT_RECIPIENT_TAIL:]}"


def key_json(key: KeyInfo, now: float) -> dict[str, Any]:
    left = key.seconds_left(now)
    return {
        "name": key.name,
        "label": key.label,
        "type": key.type,
        "recipient": key.recipient,
        "created": key.created,
        "locked": key.locked,
        "unlocked_until": None if key.locked else key.unlocked_until,
        "seconds_left": left,
        "idle_timeout": key.idle_timeout,
        "max_timeout": key.max_timeout,
    }


def status_document(
    agent_version: str, agent_pid: int, keys: Sequence[KeyInfo], now: float | None = None
) -> dict[str, Any]:
    now = time.time() if now is None else now
    return {
        "version": STATUS_JSON_VERSION,
        "agent": {"version": agent_version, "pid": agent_pid},
        "keys": [key_json(k, now) for k in keys],
    }


def status_json(doc: dict[str, Any]) -> str:
    import json  # only for --json: it costs milliseconds at start-up

    return json.dumps(doc, indent=2, sort_keys=False) + "\n"


def state_text(key: KeyInfo, now: float) -> str:
    if key.locked:
        return "locked"
    left = key.seconds_left(now)
    return "unlocked" if left is None else f"unlocked ({format_duration(left)} left)"


def list_text(keys: Sequence[KeyInfo], now: float | None = None) -> str:
    """One aligned line per key: name, type, state, label."""
    now = time.time() if now is None else now
    rows = [(k.name, k.type, state_text(k, now), k.label) for k in keys]
    if not rows:
        return ""
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [
        "  ".join(
            [r[0].ljust(widths[0]), r[1].ljust(widths[1]), r[2].ljust(widths[2]), r[3]]
        ).rstrip()
        for r in rows
    ]
    return "\n".join(lines) + "\n"


def status_text(doc: dict[str, Any], keys: Sequence[KeyInfo], now: float | None = None) -> str:
    now = time.time() if now is None else now
    agent = doc["agent"]
    out = [f"agent: keyagentd {agent['version']} (pid {agent['pid']})"]
    if not keys:
        out.append("keys: none (create one with: keyagent init NAME)")
    for k in keys:
        out.append(f"key {k.name}: {state_text(k, now)}")
        out.append(f"  type:      {k.type}")
        if k.label:
            out.append(f"  label:     {k.label}")
        shown = short_recipient(k.recipient)
        whole = "" if shown == k.recipient else f" (whole: keyagent recipient {k.name})"
        out.append(f"  recipient: {shown}{whole}")
        if not k.locked and (k.idle_timeout or k.max_timeout):
            out.append(
                f"  timeouts:  idle {format_duration(k.idle_timeout)},"
                f" max {format_duration(k.max_timeout)}"
            )
    return "\n".join(out) + "\n"
