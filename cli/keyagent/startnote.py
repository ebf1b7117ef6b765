"""The agent's last start failure, left for the command that activated it.

D-Bus activation reports only "exited with status 1"; the agent's own sentence (a typo in
config.toml, a keystore directory open to others, ...) goes to its stderr, which the person
running `keyagent` does not see. So the agent also writes that sentence to
``$XDG_RUNTIME_DIR/keyagent/start-error`` (directory 0700, file 0600) and removes it once it
serves; `keyagent` reads it when activation fails, if it was written after the attempt began.
Without $XDG_RUNTIME_DIR (an absolute path) there is no note. No secret is ever in it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Final

#: A note is one sentence; more than this is not ours.
MAX_NOTE: Final = 4096
#: A note older than the activation attempt by more than this is from an earlier failure.
SLACK: Final = 1.0


def note_path(env: Mapping[str, str] | None = None) -> Path | None:
    env = os.environ if env is None else env
    runtime = env.get("XDG_RUNTIME_DIR", "")
    if not runtime or not os.path.isabs(runtime):
        return None
    return Path(runtime) / "keyagent" / "start-error"


def record(message: str, env: Mapping[str, str] | None = None) -> None:
    """Leave ``message`` for the activating command (best effort: never fails the caller)."""
    path = note_path(env)
    if path is None:
        return
    with contextlib.suppress(OSError):
        path.parent.mkdir(mode=0o700, exist_ok=True)
        tmp = path.with_name(f".start-error.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(message.strip()[:MAX_NOTE] + "\n")
        os.replace(tmp, path)


def clear(env: Mapping[str, str] | None = None) -> None:
    path = note_path(env)
    if path is not None:
        with contextlib.suppress(OSError):
            path.unlink()


def read_since(started: float, env: Mapping[str, str] | None = None) -> str | None:
    """The note's sentence if it was written at or after ``started`` (time.time()), else None."""
    path = note_path(env)
    if path is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if st.st_uid != os.geteuid() or st.st_mtime < started - SLACK:
            return None
        text = f.read(MAX_NOTE).decode("utf-8", errors="replace").strip()
    return " ".join(text.split()) or None
