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
from typing import Any

from keyagent.protocol import Failed

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


@dataclass(frozen=True)
class Caller:
    """A bus connection as the bus daemon describes it."""

    sender: str
    uid: int | None
    pid: int | None

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

    return Caller(sender, value("UnixUserID"), value("ProcessID"))
