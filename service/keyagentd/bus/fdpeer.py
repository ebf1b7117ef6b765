"""Per-call check of passed file descriptors that are unix sockets.

A caller may hand the agent a socket instead of a pipe or file. If the process at the other
end of that socket (SO_PEERCRED) runs as another user, the agent would be reading plaintext
from, or writing it to, that user: refuse with AccessDenied. Pipes, files and sockets that are
not connected carry no peer and pass. Runs before the stream starts; the caller's uid is the
one the bus daemon reported (the gate already checked it is ours).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from keyagent.protocol import AccessDenied
from keyagentd.hardening import peer_uid_of_socket


def check_fd_peers(
    fds: Sequence[int],
    caller_uid: int | None,
    *,
    peer_uid: Callable[[int], int | None] = peer_uid_of_socket,
) -> None:
    """Raise AccessDenied if one of ``fds`` is a socket to another uid (the caller closes
    the fds, once). ``caller_uid``: the checked caller's (None matches no socket)."""
    for fd in fds:
        uid = peer_uid(fd)
        if uid is not None and uid != caller_uid:
            raise AccessDenied(
                "A file descriptor passed to the agent is a socket connected to a process of "
                "another user."
            )
