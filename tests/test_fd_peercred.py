"""Per-call socket peer credentials: an fd passed to EncryptFd/DecryptFd/UnlockFromFd that is a
unix socket connected to another uid's process is refused with AccessDenied, fds closed."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Callable, Iterator

import pytest

from agent_support import (
    FAST_ARGS,
    CallError,
    Client,
    agent_pid,
    fd_count,
    module_bus_with_key,
    settle_fds,
)
from conftest import PrivateBus, as_other_user, requires_root
from keyagent import protocol
from keyagentd.streams import check_fd_peers


@pytest.fixture(scope="module")
def bus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateBus]:
    with module_bus_with_key(tmp_path_factory.mktemp("peercred"), "s", agent_args=FAST_ARGS) as b:
        yield b


def assert_every_fd_call_refuses(
    c: Client, fd: int, reason: str, *more: Callable[[], object]
) -> None:
    """EncryptFd (``fd`` as input and as output), DecryptFd and UnlockFromFd of key "s",
    and ``more``, each answer AccessDenied naming ``reason``."""
    out_r, out_w = os.pipe()
    try:
        calls = [
            lambda: c.m("EncryptFd", "ashha{sv}", ["s"], fd, out_w, {}),
            lambda: c.m("EncryptFd", "ashha{sv}", ["s"], out_r, fd, {}),  # as output
            lambda: c.m("DecryptFd", "hha{sv}", fd, out_w, {}),
            lambda: c.k("s", "UnlockFromFd", "ha{sv}", fd, {}),
            *more,
        ]
        for call in calls:
            with pytest.raises(CallError) as e:
                call()
            assert e.value.name == protocol.ACCESS_DENIED
            assert reason in e.value.text
    finally:
        os.close(out_r)
        os.close(out_w)


@pytest.fixture
def foreign_socket() -> Iterator[socket.socket]:
    """A socket connected to a listener of uid 65534 (abstract address: no file permissions).

    A forked child, not a new interpreter: uid 65534 cannot execute the venv's Python."""
    name = f"\0keyagent-peercred-{os.getpid()}-{os.urandom(4).hex()}"
    ready_r, ready_w = os.pipe()
    child = os.fork()
    if child == 0:  # the child only makes syscalls, then waits to be killed
        try:
            os.close(ready_r)
            as_other_user()
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.bind(name)
            server.listen(8)
            os.write(ready_w, b"1")
            while True:
                signal.pause()
        finally:
            os._exit(1)
    os.close(ready_w)
    try:
        with os.fdopen(ready_r, "rb") as ready:
            assert ready.read(1) == b"1", "the uid-65534 listener did not start"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(name)
        with sock:
            yield sock
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)


@requires_root
def test_a_socket_to_another_user_is_refused(
    bus: PrivateBus, foreign_socket: socket.socket
) -> None:
    fd = foreign_socket.fileno()
    with Client(bus.address) as c:
        c.prop(protocol.MANAGER_PATH, protocol.MANAGER_INTERFACE, "Version")
        pid = agent_pid(bus)
        base = fd_count(pid)
        assert_every_fd_call_refuses(c, fd, "another user")
        assert settle_fds(pid, base) <= base  # every passed fd was closed


def test_a_socketpair_of_our_own_works(bus: PrivateBus) -> None:
    ours, theirs = socket.socketpair()
    out_r, out_w = os.pipe()
    with ours, theirs, Client(bus.address) as c:
        ours.sendall(b"streamed through a socket")
        ours.shutdown(socket.SHUT_WR)
        try:
            (written,) = c.m("EncryptFd", "ashha{sv}", ["s"], theirs.fileno(), out_w, {})
        finally:
            os.close(out_w)
        with os.fdopen(out_r, "rb") as f:
            ct = f.read()
        assert written == len(ct) > 0
        assert c.decrypt(ct) == (b"streamed through a socket", "s")


def test_check_fd_peers_compares_with_the_caller_uid() -> None:
    uids = {3: None, 4: 1000, 5: 0}
    check_fd_peers([3, 4], 1000, peer_uid=uids.__getitem__)  # a pipe and a same-uid socket
    for fds in ([3, 5], [5]):
        with pytest.raises(protocol.AccessDenied):
            check_fd_peers(fds, 1000, peer_uid=uids.__getitem__)
    with pytest.raises(protocol.AccessDenied):  # an unknown caller uid matches nothing
        check_fd_peers([4], None, peer_uid=uids.__getitem__)


def test_a_network_socket_is_refused(bus: PrivateBus) -> None:
    """A TCP loopback connection may belong to anyone: refused as input, output and
    passphrase fd, before anything is read or written."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    with server, Client(bus.address) as c:
        c.prop(protocol.MANAGER_PATH, protocol.MANAGER_INTERFACE, "Version")
        pid = agent_pid(bus)
        base = fd_count(pid)
        tcp = socket.create_connection(server.getsockname())
        peer, _ = server.accept()
        with tcp, peer:
            fd = tcp.fileno()
            peer.sendall(b"plaintext from the network")
            peer.shutdown(socket.SHUT_WR)

            def as_passphrase_fd() -> object:
                return c.encrypt([], b"x", **{"passphrase-fd": ("h", fd)})

            assert_every_fd_call_refuses(c, fd, "network socket", as_passphrase_fd)
            peer.setblocking(False)
            with pytest.raises(BlockingIOError):
                peer.recv(1)  # nothing was written to the network
        assert settle_fds(pid, base) <= base
