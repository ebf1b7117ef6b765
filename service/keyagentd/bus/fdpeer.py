"""Per-call check of passed file descriptors that are sockets.

A caller may hand the agent a socket instead of a pipe or file. A socket of any family but
unix (TCP, UDP, vsock...) may lead to another user's process or another machine, and nothing
says whose: refuse it. If the process at the other end of a unix socket (SO_PEERCRED) runs as
another user, the agent would be reading plaintext from, or writing it to, that user: refuse
with AccessDenied. Pipes, files and unix sockets that are not connected carry no peer and
pass. Runs before the stream starts; the caller's uid is the one the bus daemon reported (the
gate already checked it is ours). What remains (SECURITY.md): a unix socketpair end or pipe of
ours handed on to another process is that process's, and no check can see it.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence

from keyagent.protocol import AccessDenied
from keyagentd.bus.gate import CURRENT_CALLER
from keyagentd.hardening import peer_uid_of_socket, socket_family


def check_fd_peers(
    fds: Sequence[int],
    caller_uid: int | None = None,
    *,
    peer_uid: Callable[[int], int | None] = peer_uid_of_socket,
    family: Callable[[int], int | None] = socket_family,
) -> None:
    """Raise AccessDenied if one of ``fds`` is a socket other than unix, or one to another
    uid (the caller closes the fds, once). ``caller_uid`` defaults to the uid of the caller
    being served."""
    if caller_uid is None:
        caller = CURRENT_CALLER.get()
        caller_uid = caller.uid if caller is not None else None
    for fd in fds:
        kind = family(fd)
        if kind is not None and kind != socket.AF_UNIX:
            raise AccessDenied(
                "A file descriptor passed to the agent is a network socket: use a pipe, a file "
                "or a unix socket."
            )
        uid = peer_uid(fd)
        if uid is not None and uid != caller_uid:
            raise AccessDenied(
                "A file descriptor passed to the agent is a socket connected to a process of "
                "another user."
            )
