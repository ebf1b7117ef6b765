"""The two dbus-fast 5.2.0 fixes (see keyagentd/bus/fixes.py), each shown both ways.

For each bug: the agent survives it (it would not without the fix), and the stock
dbus-fast `MessageBus` in this process still shows the bug, so the day an upgrade fixes
it upstream, these tests say the fix can go.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusBytes
from dbus_fast.service import ServiceInterface, dbus_method
from jeepney import DBusAddress, new_method_call, new_signal

from agent_support import (
    FAST_ARGS,
    MANAGER,
    MI,
    Client,
    agent_pid,
    fd_count,
    module_bus,
    settle_fds,
)
import conftest
from conftest import PrivateBus
from keyagent import protocol
from keyagentd.bus.fixes import FixedMessageBus

BIG = 8 * 1024 * 1024


@pytest.fixture(scope="module")
def bus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateBus]:
    with module_bus(tmp_path_factory.mktemp("fixes"), agent_args=FAST_ARGS) as b:
        yield b


# --- fix 1: EAGAIN on a full socket must wait, not disconnect -----------------------------


@pytest.fixture
def tight_bus(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[PrivateBus]:
    """A bus daemon that stops reading from a connection while 1 MiB of its messages are
    undelivered (max_incoming_bytes): a reply to a client that does not read then fills the
    sender's socket completely, which is when dbus-fast's writer meets EAGAIN."""
    original = conftest._write_config

    def write(*args: Any, **kwargs: Any) -> Path:
        path = original(*args, **kwargs)
        limit = '<limit name="max_incoming_bytes">1048576</limit>'
        path.write_text(path.read_text().replace("</busconfig>", limit + "</busconfig>"))
        return path

    monkeypatch.setattr(conftest, "_write_config", write)
    with module_bus(tmp_path / "tight", agent_args=FAST_ARGS) as b:
        yield b


def _slow_reader(address: str) -> Client:
    slow = Client(address, timeout=60)
    slow.conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return slow


def _read_replies(slow: Client, count: int, size: int) -> None:
    replies = 0
    while replies < count:
        reply = slow.conn.receive(timeout=60)
        if reply.header.message_type.name == "signal":
            continue  # NameAcquired and the like
        assert reply.header.message_type.name == "method_return"
        assert len(reply.body[0]) == size
        replies += 1


def test_agent_survives_a_full_socket(tight_bus: PrivateBus) -> None:
    with Client(tight_bus.address) as c:
        recipient = c.create("big")
        c.unlock("big")
        ciphertext = c.encrypt([recipient], b"\x5a" * BIG)
        pid = agent_pid(tight_bus)
        slow = _slow_reader(tight_bus.address)
        addr = DBusAddress(MANAGER, bus_name=protocol.BUS_NAME, interface=MI)
        slow.conn.send(new_method_call(addr, "Decrypt", "aya{sv}", (ciphertext, {})))
        time.sleep(0.5)  # the reply is stuck: the daemon no longer reads from the agent
        answers: list[object] = []
        other = threading.Thread(
            target=lambda: answers.append(c.prop(MANAGER, MI, "Version")), daemon=True
        )
        other.start()  # its reply queues behind the stuck one: EAGAIN for dbus-fast 5.2
        time.sleep(1.0)
        _read_replies(slow, 1, BIG)  # the slow client finally reads: everything flows again
        other.join(30)
        assert answers == ["0.1.0"]
        assert tight_bus.agent_pid() == pid  # same process, still owning the name
        slow.close()


def test_agent_serves_others_while_a_client_does_not_read(bus: PrivateBus) -> None:
    with Client(bus.address) as c:
        recipient = c.create("big")
        c.unlock("big")
        ciphertext = c.encrypt([recipient], b"\x5a" * BIG)
        pid = agent_pid(bus)
        slow = _slow_reader(bus.address)
        addr = DBusAddress(MANAGER, bus_name=protocol.BUS_NAME, interface=MI)
        for _ in range(3):  # three 8 MiB replies it will not read for a while
            slow.conn.send(new_method_call(addr, "Decrypt", "aya{sv}", (ciphertext, {})))
        deadline = time.monotonic() + 1.0
        calls = 0
        while time.monotonic() < deadline:  # others are served meanwhile
            assert c.prop(MANAGER, MI, "Version") == "0.1.0"
            calls += 1
        assert calls > 10
        assert bus.agent_pid() == pid
        _read_replies(slow, 3, BIG)
        slow.close()


class _Big(ServiceInterface):
    def __init__(self) -> None:
        super().__init__("test.Big")

    @dbus_method()
    def Get(self) -> DBusBytes:
        return b"\0" * BIG


async def _stall(bus_cls: type[MessageBus], address: str) -> bool:
    """A service answers 8 MiB to a client that does not read, then sends more: True if
    its connection survived."""
    service = await bus_cls(address).connect()
    service.export("/big", _Big())
    slow = _slow_reader(address)
    slow.conn.send(new_method_call(DBusAddress("/big", service.unique_name, "test.Big"), "Get"))
    await asyncio.sleep(0.5)
    for _ in range(20):  # more outgoing traffic while the socket is full
        service.send(Message.new_signal("/big", "test.Big", "Tick"))
        await asyncio.sleep(0.02)
    alive = service.connected
    slow.close()
    service.disconnect()
    return bool(alive)


def test_stock_dbus_fast_still_disconnects_on_eagain(tight_bus: PrivateBus) -> None:
    assert asyncio.run(_stall(FixedMessageBus, tight_bus.address))
    assert not asyncio.run(_stall(MessageBus, tight_bus.address))


# --- fix 2: fds of unmatched messages are closed -------------------------------------------


def _flood_with_fds(bus: PrivateBus, count: int) -> None:
    r, w = os.pipe()
    try:
        with Client(bus.address) as c:
            target = protocol.BUS_NAME
            owner = (
                c.call("/org/freedesktop/DBus", "org.freedesktop.DBus", "GetNameOwner", "s", target)
                if False
                else None
            )
            del owner
            manager = DBusAddress(MANAGER, bus_name=target, interface=MI)
            for i in range(count):
                kind = i % 4
                if kind == 0:  # no such method
                    msg = new_method_call(manager, "NoSuchMethod", "h", (r,))
                elif kind == 1:  # right name, wrong signature
                    msg = new_method_call(manager, "DecryptFd", "hh", (r, r))
                elif kind == 2:  # a method without fd arguments, fds sent along anyway
                    msg = new_method_call(manager, "LockAll", "h", (r,))
                else:  # a signal carrying an fd, sent straight to the agent
                    msg = new_signal(DBusAddress("/x", interface="test.Sig"), "Fd", "h", (r,))
                    msg.header.fields[6] = _agent_unique_name(c)  # destination
                    c.conn.send(msg)
                    continue
                try:
                    c.conn.send_and_get_reply(msg, timeout=10)
                except Exception:  # error replies are fine; only the fds matter
                    pass
            c.prop(MANAGER, MI, "Version")  # a round trip after the signals
    finally:
        os.close(r)
        os.close(w)


_NAMES: dict[int, str] = {}


def _agent_unique_name(c: Client) -> str:
    key = id(c)
    if key not in _NAMES:
        _NAMES[key] = (
            c.call(
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus",
                "GetNameOwner",
                "s",
                protocol.BUS_NAME,
            )[0]
            if False
            else _get_owner(c)
        )
    return _NAMES[key]


def _get_owner(c: Client) -> str:
    from jeepney import message_bus

    reply = c.conn.send_and_get_reply(message_bus.GetNameOwner(protocol.BUS_NAME), timeout=10)
    return str(reply.body[0])


def test_agent_fd_count_stays_flat_under_calls_with_stray_fds(bus: PrivateBus) -> None:
    with Client(bus.address) as c:
        c.prop(MANAGER, MI, "Version")
    pid = agent_pid(bus)
    _flood_with_fds(bus, 40)  # warm up (lazy imports, caches)
    before = fd_count(pid)
    _flood_with_fds(bus, 1000)
    assert settle_fds(pid, before + 2) <= before + 2


async def _stock_bus_leaks(bus_cls: type[MessageBus], address: str, count: int) -> int:
    service = await bus_cls(address, negotiate_unix_fd=True).connect()
    r, w = os.pipe()
    try:
        before = fd_count(os.getpid())
        sender = await MessageBus(address, negotiate_unix_fd=True).connect()
        for _ in range(count):
            reply = await sender.call(
                Message(
                    destination=service.unique_name,
                    path="/none",
                    interface="test.None",
                    member="Nothing",
                    signature="h",
                    body=[0],
                    unix_fds=[r],
                )
            )
            assert reply.message_type is MessageType.ERROR
        await asyncio.sleep(0.1)
        leaked = fd_count(os.getpid()) - before
        sender.disconnect()
        service.disconnect()
        return leaked
    finally:
        os.close(r)
        os.close(w)


def test_stock_dbus_fast_still_leaks_fds(private_bus: PrivateBus) -> None:
    assert asyncio.run(_stock_bus_leaks(FixedMessageBus, private_bus.address, 200)) < 5
    assert asyncio.run(_stock_bus_leaks(MessageBus, private_bus.address, 200)) >= 200
