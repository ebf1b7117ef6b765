"""Process hardening and facts about callers, from the kernel.

``harden_process()`` is called once at agent start, before any secret is read:
no core dumps, no ptrace or /proc/PID/mem access by other processes of the same
user (PR_SET_DUMPABLE 0), and, where the memory-lock limit allows it, no
swapping of the agent's pages. None of this stops root.
"""

from __future__ import annotations

import ctypes
import functools
import os
import resource
import socket
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, TypeVar

PR_SET_DUMPABLE: Final = 4
PR_GET_DUMPABLE: Final = 3
MCL_CURRENT: Final = 1
MCL_FUTURE: Final = 2
#: Lock pages as they are touched, not all reserved address space at once: thread stacks
#: and malloc arenas reserve far more than they use (Linux >= 4.4).
MCL_ONFAULT: Final = 4
CAP_IPC_LOCK: Final = 14
_UCRED: Final = struct.Struct("3i")

T = TypeVar("T")


@dataclass(frozen=True)
class PeerCredentials:
    pid: int
    uid: int
    gid: int


@functools.cache
def libc() -> ctypes.CDLL:
    """libc, through the process's own symbols: ``find_library`` would import subprocess and
    run ``ldconfig -p`` (~20 ms of every start)."""
    return ctypes.CDLL(None, use_errno=True)


def set_dumpable(value: bool) -> None:
    if libc().prctl(PR_SET_DUMPABLE, int(value), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def is_dumpable() -> bool:
    return bool(libc().prctl(PR_GET_DUMPABLE, 0, 0, 0, 0))


def has_capability(cap: int, status_path: str = "/proc/self/status") -> bool:
    """Whether ``cap`` is in this process's effective capability set."""
    try:
        with open(status_path) as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> cap & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


def harden_process(*, lock_memory: bool = True) -> list[str]:
    """Apply the hardening; return one line per measure for the log (never raises)."""
    messages: list[str] = []
    try:
        set_dumpable(False)
        messages.append("hardening: process is not dumpable (no ptrace or /proc/PID/mem access)")
    except OSError as e:
        messages.append(f"hardening: could not clear the dumpable flag: {e.strerror}")
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        messages.append("hardening: core dumps disabled (RLIMIT_CORE 0)")
    except (OSError, ValueError) as e:
        messages.append(f"hardening: could not disable core dumps: {e}")
    if lock_memory:
        messages.append(_lock_memory())
    return messages


def _lock_memory() -> str:
    soft, _hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    unlimited = soft == resource.RLIM_INFINITY
    # With MCL_FUTURE every later mapping counts against the limit: under a finite limit the
    # first 64 MiB Argon2 buffer would fail, so lock only when nothing can run out.
    if not unlimited and not has_capability(CAP_IPC_LOCK):
        return (
            f"hardening: memory not locked: RLIMIT_MEMLOCK is {soft // 1024} KiB "
            "(raise the memlock limit to unlimited to keep secrets out of swap)"
        )
    if libc().mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT) != 0:
        err = ctypes.get_errno()
        return f"hardening: memory not locked: mlockall failed ({os.strerror(err)})"
    return "hardening: memory locked (mlockall, pages stay out of swap)"


def _inspect_socket(fd: int, look: Callable[[socket.socket], T], unreadable: T) -> T | None:
    """``look`` at a dup of socket ``fd``: None when ``fd`` is not a socket, ``unreadable`` when
    it is one Python cannot wrap."""
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            return None
    except OSError:
        return None
    dup = os.dup(fd)
    try:
        sock = socket.socket(fileno=dup)
    except OSError:
        os.close(dup)
        return unreadable
    with sock:
        return look(sock)


def _unix_peer(sock: socket.socket) -> PeerCredentials | None:
    if sock.family != socket.AF_UNIX:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    except OSError:
        return None
    pid, uid, gid = _UCRED.unpack(raw)
    if uid < 0 or pid <= 0:  # not connected: the kernel reports uid -1 (overflow) and pid 0
        return None
    return PeerCredentials(pid, uid, gid)


def peer_credentials(fd: int) -> PeerCredentials | None:
    """SO_PEERCRED of ``fd`` when it is a connected unix socket, else None."""
    return _inspect_socket(fd, _unix_peer, None)


def socket_family(fd: int) -> int | None:
    """The address family of socket ``fd`` (AF_UNIX, AF_INET...), None when not a socket;
    -1 for a socket Python cannot look at (treated as foreign)."""
    return _inspect_socket(fd, lambda sock: int(sock.family), -1)


def peer_uid_of_socket(fd: int) -> int | None:
    """The uid of the process at the other end of unix socket ``fd``, else None."""
    creds = peer_credentials(fd)
    return None if creds is None else creds.uid


def caller_executable(pid: int) -> str | None:
    """``/proc/PID/exe`` of ``pid``, or None when gone or unreadable.

    Unreadable includes non-dumpable processes of the same user. A replaced
    binary reads as ``PATH (deleted)`` and so matches no allowed path.
    """
    if pid <= 0:
        return None
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def caller_comm(pid: int) -> str | None:
    """The process's self-chosen name (``/proc/PID/comm``): for display only, never trust it."""
    if pid <= 0:
        return None
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            raw = f.read(64)
    except OSError:
        return None
    return sanitize(raw.decode("utf-8", "replace").rstrip("\n"))


def sanitize(text: str, limit: int = 80) -> str:
    """Printable, single-line, bounded: process names and paths are chosen by the caller."""
    cleaned = text if text.isprintable() else "".join(c if c.isprintable() else "?" for c in text)
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"


def describe_caller(pid: int) -> str:
    """A readable caller for prompts and logs, e.g. ``firefox (pid 42, /usr/bin/firefox)``."""
    exe = caller_executable(pid)
    comm = caller_comm(pid)
    where = sanitize(exe, 200) if exe else "executable unknown"
    if comm is None and exe is None:
        return f"process {pid} (gone or not readable)"
    return f"{comm or '?'} (pid {pid}, {where})"


__all__ = [
    "PeerCredentials",
    "caller_comm",
    "caller_executable",
    "describe_caller",
    "harden_process",
    "has_capability",
    "is_dumpable",
    "peer_credentials",
    "peer_uid_of_socket",
    "set_dumpable",
]
