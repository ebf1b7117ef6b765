"""Who is calling: the bus daemon's view of a sender, and the bus daemon's own credentials.

The agent serves only its own user. A caller's uid comes from the bus daemon
(`GetConnectionCredentials`, or `GetConnectionUnixUser` on old daemons); the daemon itself
is trusted only if its socket's peer credentials (`SO_PEERCRED`) show our uid or root,
since a foreign bus could forge sender credentials.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from keyagent.protocol import Failed

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


#: A caller running this program is judged as the program that started it (see `judged`).
PLUGIN: Final = "age-plugin-keyagent"


@dataclass(frozen=True)
class Caller:
    """A bus connection as the bus daemon describes it. ``pid`` is the process that policy,
    prompts and logs judge: for age-plugin-keyagent, its parent, with ``via`` naming the
    plugin (see `judged`)."""

    sender: str
    uid: int | None
    pid: int | None
    via: str = ""

    def allowed(self, uid: int) -> bool:
        return self.uid is not None and self.uid == uid


@dataclass(frozen=True)
class PeerCred:
    pid: int
    uid: int
    gid: int


def socket_peer(sock: socket.socket) -> PeerCred:
    """The credentials of the process at the other end of a Unix socket (SO_PEERCRED)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return PeerCred(pid, uid, gid)


def check_bus_peer(sock: socket.socket, my_uid: int) -> PeerCred:
    """Refuse a bus daemon that runs as neither our uid nor root (``Failed``, one sentence)."""
    try:
        peer = socket_peer(sock)
    except OSError as exc:
        raise Failed(
            f"Cannot check who runs the session bus ({exc.strerror}): refusing to serve."
        ) from None
    if peer.uid not in (my_uid, 0):
        raise Failed(
            f"The session bus daemon runs as uid {peer.uid}, neither you (uid {my_uid}) nor "
            "root: refusing to serve on a bus that could forge callers."
        )
    return peer


def caller_from_credentials(sender: str, creds: Mapping[str, Any]) -> Caller:
    """A `Caller` from the body of GetConnectionCredentials (values may be Variants)."""

    def value(key: str) -> int | None:
        item = creds.get(key)
        item = getattr(item, "value", item)
        return item if isinstance(item, int) and not isinstance(item, bool) else None

    return judged(Caller(sender, value("UnixUserID"), value("ProcessID")))


def judged(caller: Caller, proc: str = "/proc") -> Caller:
    """The caller to judge: age-plugin-keyagent acts for the program that started it (age,
    rage, sops...), so that program is the one policy checks, prompts name and logs show.

    The plugin is recognised by its command line (``argv[0]`` or, for a script, ``argv[1]``
    ending in ``/age-plugin-keyagent``) and its parent read from ``/proc/PID/stat``. Both are
    the caller's to choose: a same-user process can claim to be the plugin and so be judged
    as its own parent (it cannot choose another process as its parent). Policy stops stray
    programs, not a same-user attacker (SECURITY.md)."""
    if caller.pid is None or caller.pid <= 0:
        return caller
    try:
        with open(f"{proc}/{caller.pid}/cmdline", "rb") as f:
            argv = f.read(8192).split(b"\0")[:2]
        if not any(a.rsplit(b"/", 1)[-1] == PLUGIN.encode() for a in argv):
            return caller
        with open(f"{proc}/{caller.pid}/stat", "rb") as f:
            stat = f.read(4096)
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        parent = int(stat[stat.rindex(b")") + 2 :].split()[1])
    except (OSError, ValueError, IndexError):
        return caller
    return Caller(caller.sender, caller.uid, parent, via=PLUGIN) if parent > 0 else caller
