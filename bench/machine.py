"""What the numbers were measured on: CPU, cores, library and tool versions."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def tool_version(argv: list[str]) -> str:
    if shutil.which(argv[0]) is None:
        return "not installed"
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else "?"


def fs_type(path: Path) -> str:
    """The filesystem type of the mount holding ``path`` (from /proc/mounts)."""
    best, kind = "", "unknown"
    try:
        target = str(path.resolve())
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            mnt = parts[1]
            if (target == mnt or target.startswith(mnt.rstrip("/") + "/")) and len(mnt) > len(best):
                best, kind = mnt, parts[2]
    except OSError:
        pass
    return kind


def openssl_version() -> str:
    try:
        from cryptography.hazmat.backends.openssl import backend

        return str(backend.openssl_version_text())
    except Exception:  # an informational field: never fail the run for it
        return "unknown"


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def describe(tmpdir: Path) -> dict[str, Any]:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": affinity,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "cryptography": _version("cryptography"),
        "openssl": openssl_version(),
        "dbus-fast": _version("dbus-fast"),
        "jeepney": _version("jeepney"),
        "argon2-cffi": _version("argon2-cffi"),
        "pyrage": _version("pyrage"),
        "age": tool_version(["age", "--version"]),
        "dbus-daemon": tool_version(["dbus-daemon", "--version"]),
        "tmpdir": str(tmpdir),
        "tmpdir_fs": fs_type(tmpdir),
        "loadavg_start": loadavg(),
    }


def header_text(h: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"keyagent bench - {h['started']} - mode {h['mode']}",
            f"CPU: {h['cpu']} ({h['cores']} cores, {h['cores_usable']} usable); "
            f"kernel {h['kernel']}",
            f"Python {h['python']}, cryptography {h['cryptography']} ({h['openssl']}), "
            f"dbus-fast {h['dbus-fast']}, jeepney {h['jeepney']}, argon2-cffi {h['argon2-cffi']}, "
            f"pyrage {h['pyrage']}, age {h['age']}",
            f"files in {h['tmpdir']} ({h['tmpdir_fs']}); stream size {h['stream_mib']} MiB, "
            f"memory stream {h['memory_stream_mib']} MiB",
            f"load average at start: {h['loadavg_start']} (other work skews figures)",
        ]
    )
