"""keyagent.transport on a real private dbus-daemon, with jeepney as the peer at the other end
(an independent implementation): authentication and Hello, fds, timeouts, strays, addresses."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from _socket import SO_RCVTIMEO, SOL_SOCKET
from collections.abc import Iterator
from pathlib import Path
from struct import Struct
from typing import Any

import pytest
from jeepney import MessageType, new_method_call, new_method_return
from jeepney.io.blocking import DBusConnection, open_dbus_connection
from jeepney.wrappers import DBusAddress

from conftest import PrivateBus
from keyagent import wire
from keyagent.connection import AgentConnection, AgentUnavailable
from keyagent.protocol import BUS_DAEMON
from keyagent.transport import BUS_PATH, BusSocket, ConnectFailed, socket_targets
from keyagent.wire import ERROR, METHOD_RETURN, WireError
from keyagent.wirecall import method_call

IFACE = "org.example.Test"
_TIMEVAL = Struct("@ll")


@pytest.fixture
def peer(private_bus: PrivateBus) -> Iterator[DBusConnection]:
    """A jeepney connection on the same bus that answers what the test tells it to."""
    conn = open_dbus_connection(bus=private_bus.address, enable_fds=True)
    try:
        yield conn
    finally:
        conn.close()


def _next_call(conn: DBusConnection) -> Any:
    while True:
        msg = conn.receive(timeout=30)
        if msg.header.message_type is MessageType.method_call:
            return msg


def test_auth_and_hello(private_bus: PrivateBus) -> None:
    with BusSocket(private_bus.address, timeout=30) as bus:
        assert bus.unique_name.startswith(":") and bus.fds
        reply = bus.call(BUS_DAEMON, BUS_PATH, BUS_DAEMON, "GetId", timeout=30)
        assert reply.kind == METHOD_RETURN and len(reply.body[0]) == 32
        reply = bus.call(
            BUS_DAEMON, BUS_PATH, BUS_DAEMON, "GetNameOwner", "s", ("no.such.Name",), timeout=30
        )
        assert reply.kind == ERROR
        assert reply.error_name == "org.freedesktop.DBus.Error.NameHasNoOwner"
        assert reply.sender == BUS_DAEMON


def test_a_call_passes_fds(private_bus: PrivateBus, peer: DBusConnection) -> None:
    r, w = os.pipe()
    os.write(w, b"through the bus")
    os.close(w)
    with BusSocket(private_bus.address, timeout=30) as bus:
        serial = bus.next_serial()
        data, fds = method_call(serial, peer.unique_name, "/t", IFACE, "Take", "ha{sv}", (r, {}))
        bus.send(data, fds, time.monotonic() + 30)
        os.close(r)  # the bus holds its own copy now
        call = _next_call(peer)
        fd = call.body[0]
        assert os.read(fd.fileno(), 100) == b"through the bus"
        fd.close()
        peer.send(new_method_return(call, "s", ("got it",)))
        assert bus.receive_reply(serial, time.monotonic() + 30).body == ("got it",)


def test_a_reply_timeout_and_progress(private_bus: PrivateBus, peer: DBusConnection) -> None:
    """No answer: the call gives up at its timeout; with a progress callback, the callback
    runs while the call waits (here it is what makes the peer answer)."""
    conn = AgentConnection(private_bus.address, timeout=30)
    try:
        conn._owner = peer.unique_name  # the peer stands in for the agent
        with pytest.raises(AgentUnavailable, match=r"did not answer within 0\.3 seconds"):
            conn._call("/t", IFACE, "Ignored", timeout=0.3)
        _next_call(peer)  # the ignored call arrived
        ticks: list[int] = []

        def progress() -> None:
            ticks.append(1)
            if len(ticks) == 2:
                peer.send(new_method_return(_next_call(peer), "u", (7,)))

        assert conn._call("/t", IFACE, "Slow", timeout=None, progress=progress) == (7,)
        assert len(ticks) == 2
    finally:
        conn.close()


def test_the_connection_skips_a_stray_and_closes_its_fd(
    private_bus: PrivateBus, peer: DBusConnection
) -> None:
    """An unexpected call carrying the write end of a pipe arrives before the reply: the
    call still gets its reply, and no copy of the write end is left open (end of file)."""
    r, w = os.pipe()
    os.set_blocking(r, False)
    conn = AgentConnection(private_bus.address, timeout=30)
    conn._owner = peer.unique_name
    me = conn._conn.unique_name

    def progress() -> None:
        if w not in closed:
            call = _next_call(peer)
            peer.send(new_method_call(DBusAddress("/x", me, IFACE), "Stray", "h", (w,)))
            os.close(w)
            closed.append(w)
            peer.send(new_method_return(call, "s", ("answer",)))

    closed: list[int] = []
    try:
        assert conn._call("/t", IFACE, "Echo", timeout=None, progress=progress) == ("answer",)
        assert os.read(r, 1) == b""
    finally:
        conn.close()
        os.close(r)


def test_strays_are_skipped_and_their_fds_closed(
    private_bus: PrivateBus, peer: DBusConnection
) -> None:
    r, w = os.pipe()
    os.set_blocking(r, False)
    with BusSocket(private_bus.address, timeout=30) as bus:
        serial = bus.next_serial()
        data, _ = method_call(serial, peer.unique_name, "/t", IFACE, "Echo")
        bus.send(data, (), time.monotonic() + 30)
        call = _next_call(peer)
        peer.send(new_method_call(DBusAddress("/x", bus.unique_name, IFACE), "Stray", "h", (w,)))
        os.close(w)
        peer.send(new_method_return(call, "s", ("answer",)))
        assert bus.receive_reply(serial, time.monotonic() + 30).body == ("answer",)
        # The stray came first and was read with the reply: its fd is closed already.
        assert os.read(r, 1) == b""
    os.close(r)


def test_a_long_reply_is_read_whole(private_bus: PrivateBus, peer: DBusConnection) -> None:
    payload = os.urandom(3 << 20)
    with BusSocket(private_bus.address, timeout=30) as bus:
        serial = bus.next_serial()
        data, _ = method_call(serial, peer.unique_name, "/t", IFACE, "Echo", "ay", (payload,))
        bus.send(data, (), time.monotonic() + 30)
        call = _next_call(peer)
        assert call.body == (payload,)
        peer.send(new_method_return(call, "ayay", (payload, b"end")))
        assert bus.receive_reply(serial, time.monotonic() + 30).body == (payload, b"end")


def test_the_first_live_address_is_used(private_bus: PrivateBus, tmp_path: Any) -> None:
    dead = f"unix:path={tmp_path / 'nobody-listens'}"
    listed = f"tcp:host=localhost,port=1;unix:abstract=keyagent-none-{os.getpid()};{dead};"
    with BusSocket(f"{listed}{private_bus.address},guid=0123", timeout=30) as bus:
        assert bus.unique_name.startswith(":")
    with pytest.raises(ConnectFailed, match="No such file or directory"):
        BusSocket(dead, timeout=30)
    with pytest.raises(AgentUnavailable, match="Cannot connect to the session bus"):
        AgentConnection(dead, timeout=30)


def test_runtime_addresses_and_escapes(
    private_bus: PrivateBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(private_bus.socket_path.parent))
    with BusSocket("unix:runtime=yes", timeout=30) as bus:
        assert bus.unique_name.startswith(":")
    escaped = "".join(f"%{b:02x}" for b in str(private_bus.socket_path).encode())
    with BusSocket(f"unix:path={escaped}", timeout=30) as bus:
        assert bus.unique_name.startswith(":")
    assert socket_targets("unix:abstract=a%20b;unix:path=/p,guid=1") == [b"\0a b", "/p"]
    monkeypatch.delenv("DBUS_SESSION_BUS_ADDRESS", raising=False)
    with pytest.raises(AgentUnavailable, match="DBUS_SESSION_BUS_ADDRESS is not set"):
        AgentConnection()


def test_a_value_that_cannot_be_sent_is_the_callers_error(
    private_bus: PrivateBus, peer: DBusConnection
) -> None:
    """Marshalling fails before anything is sent: WireError, and the connection still works."""
    conn = AgentConnection(private_bus.address, timeout=30)
    try:
        conn._owner = peer.unique_name
        with pytest.raises(WireError, match="out of range"):
            conn._call("/t", IFACE, "Bad", "y", (300,))
        assert conn.agent_running() is False  # the next call goes through (no agent yet)
    finally:
        conn.close()


def test_messages_straddling_the_buffer_are_read_whole(
    private_bus: PrivateBus, peer: DBusConnection
) -> None:
    """Messages of sizes that cut the 64 KiB read buffer anywhere, one longer than it, arrive
    whole and in order."""
    sizes = [5000, 70_000, 300, 65_536 - 40, 17, 40_000, 1 << 17, 9000, 64_000, 1]
    with BusSocket(private_bus.address, timeout=30) as bus:
        for i, size in enumerate(sizes):
            call = new_method_call(DBusAddress("/x", bus.unique_name, IFACE), "Stray", "uay")
            call.body = (i, bytes([i]) * size)
            peer.send(call)
        got: list[tuple[int, bytes]] = []
        while len(got) < len(sizes):
            msg = bus.receive(time.monotonic() + 30)
            if msg.kind == wire.METHOD_CALL and msg.fields[wire.MEMBER] == "Stray":
                got.append(msg.body)
        assert got == [(i, bytes([i]) * size) for i, size in enumerate(sizes)]


def _receive_timeout(conn: AgentConnection) -> float:
    sec, usec = _TIMEVAL.unpack(conn._conn._socket().getsockopt(SOL_SOCKET, SO_RCVTIMEO, 16))
    return float(sec + usec / 1e6)


def test_the_kernel_timeout_follows_the_calls(
    private_bus: PrivateBus, peer: DBusConnection
) -> None:
    """The socket's own receive timeout is what bounds a wait: the client's default for a
    call, a short one for a call that asks for it, and back."""
    conn = AgentConnection(private_bus.address, timeout=30)
    try:
        conn._owner = peer.unique_name
        assert conn.agent_running() is False
        assert 29 < _receive_timeout(conn) <= 30
        with pytest.raises(AgentUnavailable, match=r"did not answer within 0\.3 seconds"):
            conn._call("/t", IFACE, "Ignored", timeout=0.3)
        assert 0 < _receive_timeout(conn) <= 0.3
        assert conn.agent_running() is False
        assert 29 < _receive_timeout(conn) <= 30
    finally:
        conn.close()


_CALLS = """
import sys
from keyagent.connection import AgentConnection
conn = AgentConnection(timeout=30)
for _ in range(int(sys.argv[1])):
    assert conn.agent_running() is False
conn.close()
"""


def _syscalls(private_bus: PrivateBus, calls: int, out: Path) -> dict[str, int]:
    private_bus.run(
        ["strace", "-f", "-c", "-o", str(out), sys.executable, "-c", _CALLS, str(calls)]
    )
    counts: dict[str, int] = {}
    for line in out.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
            counts[parts[-1]] = int(parts[3])
    return counts


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_a_call_is_one_sendmsg_and_one_recvmsg(private_bus: PrivateBus, tmp_path: Path) -> None:
    """No poll, ioctl (settimeout) or setsockopt per call: 200 more calls cost 200 more
    sendmsg and recvmsg, and nothing else."""
    try:
        before = _syscalls(private_bus, 0, tmp_path / "0")
    except subprocess.CalledProcessError as e:
        pytest.skip(f"strace cannot trace here: {e.stderr.strip()[-200:]}")
    after = _syscalls(private_bus, 200, tmp_path / "200")
    more = {name: after.get(name, 0) - before.get(name, 0) for name in after}
    assert more["sendmsg"] == 200
    # give or take the bus's NameAcquired signal, read with Hello's reply or on its own
    assert 195 <= more["recvmsg"] <= 205
    extra = {k: v for k, v in more.items() if k not in ("sendmsg", "recvmsg") and v > 5}
    assert extra == {}
