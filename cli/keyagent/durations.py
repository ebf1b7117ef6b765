"""Durations on the command line: `90`, `90s`, `10m`, `2h`, `1d`, `1w`, `1h30m` (the time
format of sshd_config(5), which `ssh-add -t` users type)."""

from __future__ import annotations

TYPE_CHECKING = False  # `typing` and `re` cost milliseconds at every start of `status`
if TYPE_CHECKING:
    from typing import Final

_UNITS: Final = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
#: The agent takes timeouts as uint32 seconds.
MAX_SECONDS: Final = 2**32 - 1


def parse_duration(text: str) -> int:
    """Seconds for a duration; a bare number is seconds. Raises ValueError with a clear text."""
    import re  # only for durations typed on the command line

    part = re.compile(r"(\d+)([smhdw]?)")
    value = text.strip().lower()
    pos, total = 0, 0
    while pos < len(value):
        m = part.match(value, pos)
        if m is None:
            break
        total += int(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
        if not m.group(2) and pos < len(value):
            break  # a bare number must be the whole text
    if not value or pos != len(value):
        raise ValueError(f"invalid duration {text!r}: use e.g. 90, 90s, 10m, 2h, 1d, 1w or 1h30m")
    if total <= 0 or total > MAX_SECONDS:
        raise ValueError(f"invalid duration {text!r}: it must be between 1 second and 136 years")
    return total


def format_duration(seconds: int) -> str:
    """A short human form: 45s, 9m 5s, 1h 59m, 2d 3h."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60}s" if s % 60 else f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h {s // 60 % 60}m" if s // 60 % 60 else f"{s // 3600}h"
    return f"{s // 86400}d {s // 3600 % 24}h" if s // 3600 % 24 else f"{s // 86400}d"
