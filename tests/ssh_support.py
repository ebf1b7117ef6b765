"""SSH keys for the tests, made by the real `ssh-keygen`."""

from __future__ import annotations

import subprocess
from pathlib import Path


def keygen(d: Path, name: str, *args: str, passphrase: str = "") -> Path:
    """``ssh-keygen`` a key at ``d/name`` (and its ``.pub``); ``args`` pick the type, e.g. -t."""
    path = d / name
    subprocess.run(
        ["ssh-keygen", "-q", *args, "-N", passphrase, "-C", "me@host", "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path
