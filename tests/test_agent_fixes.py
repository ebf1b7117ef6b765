"""The two dbus-fast 5.2.0 fixes (see keyagentd/bus/fixes.py), each shown both ways.

For each bug: the agent survives it (it would not without the fix), and the stock
dbus-fast `MessageBus` in this process still shows the bug, so the day an upgrade fixes
it upstream, these tests say the fix can go.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import gc
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, cast

import pytest
from dbus_fast import DBusError, Message, MessageType
from dbus_fast.aio import MessageBus
from dbus_fast.aio import message_bus as _aio
from dbus_fast.annotations import DBusSignature
from dbus_fast.service import ServiceInterface, dbus_signal
from jeepney import DBusAddress, HeaderFields, message_bus, new_method_call, new_signal

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
from conftest import PrivateBus
from keyagent import protocol
from keyagentd.bus import fixes
from keyagentd.bus.fixes import FixedMessageBus, PatientWriter

INTROSPECTABLE = "org.freedesktop.DBus.Introspectable"

BIG = 8 * 1024 * 1024


@pytest.fixture(scope="module")
def bus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateBus]:
    with module_bus(tmp_path_factory.mktemp("fixes"), agent_args=FAST_ARGS) as b:
        yield b


# --- fix 1: EAGAIN on a full socket must wait, not disconnect -----------------------------


def test_agent_survives_a_burst_of_calls(bus: PrivateBus) -> None:
    """2,000 pipelined calls in one write: the replies (Introspect, ~3 KiB each) outrun the
    bus daemon, the agent's socket fills, and dbus-fast 5.2 would disconnect on EAGAIN
    (the agent lost its name in 4 runs out of 4 without the fix)."""
    with Client(bus.address) as c:
        c.prop(MANAGER, MI, "Version")
        pid = agent_pid(bus)
        burst = Client(bus.address)
        addr = DBusAddress(MANAGER, bus_name=protocol.BUS_NAME, interface=INTROSPECTABLE)
        calls = 2000
        data = b"".join(
            new_method_call(addr, "Introspect").serialise(serial=i + 100) for i in range(calls)
        )
        burst.conn.sock.sendall(data)
        kinds: dict[str, int] = {}
        answered = 0
        while answered < calls:
            reply = burst.conn.receive(timeout=30)
            kind = reply.header.message_type.name
            if kind == "signal":
                continue
            kinds[kind] = kinds.get(kind, 0) + 1
            answered += 1
        burst.close()
        # The daemon itself refuses calls past its pending-reply limit (LimitsExceeded);
        # every call the agent received was answered.
        assert kinds.get("method_return", 0) >= 100
        assert bus.agent_pid() == pid
        assert c.prop(MANAGER, MI, "Version") == "0.1.0"


def test_agent_serves_others_while_a_client_does_not_read(bus: PrivateBus) -> None:
    with Client(bus.address) as c:
        recipient = c.create("big")
        c.unlock("big")
        ciphertext = c.encrypt([recipient], b"\x5a" * BIG)
        pid = agent_pid(bus)
        slow = Client(bus.address, timeout=60)
        slow.conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
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
        replies = 0
        while replies < 3:
            reply = slow.conn.receive(timeout=60)
            if reply.header.message_type.name == "signal":
                continue  # NameAcquired and the like
            assert reply.header.message_type.name == "method_return"
            assert reply.body[0] == b"\x5a" * BIG
            replies += 1
        slow.close()


def _writer_on(
    sock: socket.socket, loop: asyncio.AbstractEventLoop, patient: bool
) -> tuple[_aio._MessageWriter, SimpleNamespace]:
    """dbus-fast's message writer (our PatientWriter if ``patient``) on a stand-in bus that has
    only ``sock``; the caller gives the bus its ``_finalize``."""
    fake_bus = SimpleNamespace(
        _negotiate_unix_fd=False,
        _sock=sock,
        _loop=loop,
        _fd=sock.fileno(),
        unique_name=":1.1",
        _user_disconnect=False,
        _disconnected=False,
    )
    writer = _aio._MessageWriter(fake_bus)  # type: ignore[arg-type]
    if patient:
        writer.__class__ = PatientWriter
        cast(PatientWriter, writer)._waiting = False
        cast(PatientWriter, writer)._failed = None
    return writer, fake_bus


async def _write_into_a_full_socket(patient: bool) -> tuple[list[object], bytes]:
    """A writer whose socket is full when a message is scheduled: what it finalized with,
    and what the peer eventually read."""
    loop = asyncio.get_running_loop()
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    filler = 0
    with contextlib.suppress(BlockingIOError):
        while True:
            filler += ours.send(b"\0" * 65536)
    finalized: list[object] = []
    writer, fake_bus = _writer_on(ours, loop, patient)
    fake_bus._finalize = finalized.append
    msg = Message.new_signal("/t", "test.T", "Big", "ay", [b"\x07" * 300_000])
    msg.serial = 1
    writer.schedule_write(msg)
    received = bytearray()

    def drain() -> None:
        peer.settimeout(0.5)
        with contextlib.suppress(TimeoutError):
            while chunk := peer.recv(1 << 20):
                received.extend(chunk)

    reader = loop.run_in_executor(None, drain)
    for _ in range(100):
        await asyncio.sleep(0.01)
        if writer.buf is None and not writer.messages:
            break
    await reader
    ours.close()
    peer.close()
    return finalized, bytes(received[filler:])


def test_patient_writer_waits_where_stock_dbus_fast_disconnects() -> None:
    finalized, received = asyncio.run(_write_into_a_full_socket(patient=True))
    assert finalized == []
    assert len(received) > 300_000 and received.endswith(b"\x07" * 1000)
    finalized, _ = asyncio.run(_write_into_a_full_socket(patient=False))
    assert finalized and isinstance(finalized[0], BlockingIOError)  # the upstream bug


async def _write_to_a_closed_socket(patient: bool) -> tuple[list[object], list[str]]:
    """Replies sent (fire and forget, as dbus-fast sends them) after the socket was closed
    under the writer, as when the bus daemon and the agent stop together: what the writer
    finalized with, and what asyncio reported about their futures."""
    loop = asyncio.get_running_loop()
    reported: list[str] = []
    loop.set_exception_handler(lambda _loop, ctx: reported.append(str(ctx.get("message"))))
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    finalized: list[object] = []
    writer, fake_bus = _writer_on(ours, loop, patient)

    def finalize(err: object) -> None:  # as dbus-fast's: the bus is now closed
        finalized.append(type(err))  # not the error: its traceback would keep futures alive
        fake_bus._disconnected = True

    fake_bus._finalize = finalize
    peer.close()
    ours.close()
    for serial in (1, 2):
        msg = Message.new_signal("/t", "test.T", "Reply", "s", ["x"])
        msg.serial = serial
        # The stock writer then re-registers the closed fd with the loop, which raises.
        with contextlib.suppress(OSError) if not patient else contextlib.nullcontext():
            writer.schedule_write(msg, loop.create_future())  # nobody keeps the future
    del writer
    gc.collect()
    await asyncio.sleep(0)
    return finalized, reported


def test_patient_writer_fails_quietly_when_the_socket_is_gone() -> None:
    """SIGTERM while the bus daemon exits: the stock writer left an OSError in a reply's
    future that nobody awaits, and asyncio logged "Future exception was never retrieved"
    with a traceback. The patient writer finalizes once and reports nothing."""
    finalized, reported = asyncio.run(_write_to_a_closed_socket(patient=True))
    assert finalized == [OSError]
    assert reported == []
    _, reported = asyncio.run(_write_to_a_closed_socket(patient=False))
    assert any("never retrieved" in text for text in reported)  # the upstream behaviour


# --- fix 2: fds of unmatched messages are closed -------------------------------------------


def _flood_with_fds(bus: PrivateBus, count: int) -> None:
    """Calls and signals carrying an fd that no method takes."""
    r, w = os.pipe()
    try:
        with Client(bus.address) as c:
            reply = c.conn.send_and_get_reply(message_bus.GetNameOwner(protocol.BUS_NAME))
            agent_name = str(reply.body[0])
            manager = DBusAddress(MANAGER, bus_name=protocol.BUS_NAME, interface=MI)
            for i in range(count):
                kind = i % 4
                if kind == 0:  # no such method
                    msg = new_method_call(manager, "NoSuchMethod", "h", (r,))
                elif kind == 1:  # right name, wrong signature
                    msg = new_method_call(manager, "DecryptFd", "hh", (r, r))
                elif kind == 2:  # a method without fd arguments, an fd sent along anyway
                    msg = new_method_call(manager, "LockAll", "h", (r,))
                else:  # a signal carrying an fd, sent straight to the agent
                    msg = new_signal(DBusAddress("/x", interface="test.Sig"), "Fd", "h", (r,))
                    msg.header.fields[HeaderFields.destination] = agent_name
                    c.conn.send(msg)
                    continue
                c.conn.send_and_get_reply(msg, timeout=10)  # error replies are fine
            c.prop(MANAGER, MI, "Version")  # a round trip after the last signal
    finally:
        os.close(r)
        os.close(w)


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
        await asyncio.sleep(0)  # one loop turn: the last call's handling ends after its reply
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


# --- fix 3: a signal sent onto a dying bus must not break dbus-fast's signal loop ---------


class _Emitter(ServiceInterface):
    def __init__(self) -> None:
        super().__init__("test.Emitter")

    @dbus_signal()
    def Ping(self) -> Annotated[str, DBusSignature("s")]:
        return "ping"


async def _signal_onto_a_dying_bus(bus_cls: type[FixedMessageBus], address: str) -> str:
    """Emit a signal while the bus's socket refuses writes (as when the bus daemon has just
    exited): what the emitting code saw ("" when nothing was raised into it)."""
    bus = await bus_cls(address).connect()
    emitter = _Emitter()
    bus.export("/test", emitter)
    await bus.call(
        Message(
            destination="org.freedesktop.DBus",
            path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus.Peer",
            member="Ping",
        )
    )  # the writer has nothing queued
    cast(socket.socket, bus._sock).shutdown(socket.SHUT_WR)  # the next send fails: EPIPE
    try:
        emitter.Ping()
        seen = ""
    except RuntimeError as exc:
        seen = str(exc)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(bus.wait_for_disconnect(), 5)  # type: ignore[no-untyped-call]
    return seen


def test_a_signal_onto_a_dying_bus_raises_nothing(private_bus: PrivateBus) -> None:
    """dbus-fast's `_handle_signal` iterates the interface's set of buses and sends on each.
    Our writer sends at once (stock dbus-fast waits for the loop), and when that send failed
    it finalized the bus right there, which unexports it from inside that loop: "Set
    changed size during iteration" (the agent logged a traceback when the bus daemon
    restarted, test_rel_faults.py::test_bus_daemon_restart). It now finalizes on the next
    loop turn; this failed every run before."""
    assert asyncio.run(_signal_onto_a_dying_bus(FixedMessageBus, private_bus.address)) == ""


# --- fix 8: GetManagedObjects linear, its entries marshalled once -------------------------


def test_managed_objects_reply_is_byte_for_byte_the_stock_marshalling() -> None:
    """The reply put together from cached entries is the very message dbus-fast would
    marshal from the whole result, first (entries marshalled) and again (entries reused)."""
    from dbus_fast import Variant

    call = Message(destination=":1.9", path="/m", member="GetManagedObjects", serial=7)
    call.sender = ":1.4"

    def values(i: int) -> dict[str, Variant]:
        return {"Name": Variant("s", "k" * (i % 5)), "On": Variant("b", i % 2 == 0),
                "Until": Variant("t", 2**40 + i), "Idle": Variant("u", i)}  # fmt: skip

    result = {f"/m/k{i}": {"i.K": values(i), "i.L": {}} for i in range(40)}
    result["/m"] = {"i.M": {"Keys": Variant("ao", sorted(result))}}
    stand_in = SimpleNamespace()
    for _ in range(2):
        for serial in (5, 6):
            ours = FixedMessageBus._managed_reply(stand_in, call, result, set(result) - {"/m"})  # type: ignore[arg-type]
            ours.serial = serial
            stock = Message.new_method_return(call, fixes.MANAGED_OBJECTS, [result])
            stock.serial = serial
            assert bytes(ours._marshall(False)) == bytes(stock._marshall(False))
    assert stand_in._managed_cache.keys() == set(result) - {"/m"}
    empty = FixedMessageBus._managed_reply(stand_in, call, {}, set())  # type: ignore[arg-type]
    assert empty.body == [{}]


# --- fix 9: a fixed signal's header marshalled once -------------------------------------


def test_a_premarshalled_signal_is_byte_for_byte_the_stock_marshalling() -> None:
    sender = fixes.SignalSender(
        SimpleNamespace(), "/org/example/KeyAgent", "org.example.KeyAgent", "AccessLog",  # type: ignore[arg-type]
        "ssuss", ["", "", 0, "", ""],
    )  # fmt: skip
    for serial, body in enumerate(
        [["Decrypt", "k", 42, "/usr/bin/python3", "ok"], ["LockAll", "", 0, "", "ok"],
         ["Encrypt", "a,b" * 40, 2**32 - 1, "/bin/é via /x", "BadPassphrase"]], start=1
    ):  # fmt: skip
        stock = Message.new_signal(
            "/org/example/KeyAgent", "org.example.KeyAgent", "AccessLog", "ssuss", body
        )
        stock.serial = serial * 1000
        assert bytes(sender.message(body, serial * 1000)) == bytes(stock._marshall(False))


async def _premarshalled_onto_a_dying_bus(address: str) -> str:
    bus = await FixedMessageBus(address).connect()
    sender = fixes.SignalSender(bus, "/t", "test.T", "Sig", "s", [""])
    sender.send(["before"])  # a working bus: queued and sent
    cast(socket.socket, bus._sock).shutdown(socket.SHUT_WR)
    try:
        sender.send(["fails"])  # the send fails: the bus finalizes on the next turn
        with contextlib.suppress(Exception):
            await asyncio.wait_for(bus.wait_for_disconnect(), 5)  # type: ignore[no-untyped-call]
        sender.send(["after"])  # a closed bus drops it
        return ""
    except Exception as exc:
        return repr(exc)


def test_a_premarshalled_signal_onto_a_dying_bus_raises_nothing(private_bus: PrivateBus) -> None:
    assert asyncio.run(_premarshalled_onto_a_dying_bus(private_bus.address)) == ""


# --- the seam: every private dbus-fast name lives in fixes.py and is checked at import ----


def _dbus_fast_private_names() -> set[str]:
    from dbus_fast.message_bus import BaseMessageBus
    from dbus_fast.service import ServiceInterface

    owners = (MessageBus, BaseMessageBus, ServiceInterface, DBusError, Message, _aio)
    names = {n for o in owners for n in dir(o) if n.startswith("_") and not n.startswith("__")}
    return names | set(dir(_aio._MessageWriter)) - {n for n in dir(object)}


def _attributes(path: Path, *, seam: bool) -> set[str]:
    """Attribute names read or written in ``path``; in the seam also the methods it defines
    (overrides). Elsewhere ``self._x`` is our own classes' state, not dbus-fast's."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute):
            if not seam and isinstance(node.value, ast.Name) and node.value.id == "self":
                continue
            found.add(node.attr)
        elif seam and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            found.add(node.name)
    return found


def test_every_private_dbus_fast_name_is_in_the_seam_and_checked() -> None:
    private = {n for n in _dbus_fast_private_names() if n.startswith("_")}
    seam = Path(fixes.__file__)
    used = _attributes(seam, seam=True) & private
    checked = {name for _owner, name in fixes.PRIVATE_NAMES}
    assert used and used <= checked, sorted(used - checked)
    assert all(hasattr(owner, name) for owner, name in fixes.PRIVATE_NAMES)
    for path in sorted(seam.parent.parent.rglob("*.py")):
        if path != seam:
            outside = _attributes(path, seam=False) & private
            assert not outside, f"{path.name} uses dbus-fast internals {sorted(outside)}"


def test_the_seam_check_names_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(_aio._MessageWriter, "buffer_message")
    with pytest.raises(ImportError, match=r"_MessageWriter\.buffer_message"):
        fixes.check_dbus_fast()
    monkeypatch.undo()
    monkeypatch.setattr(fixes, "WRITER_ATTRIBUTES", (*fixes.WRITER_ATTRIBUTES, "no_such"))
    with pytest.raises(ImportError, match=r"_MessageWriter\(\)\.no_such"):
        fixes.check_dbus_fast()
