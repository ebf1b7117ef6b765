"""Lock triggers on real private buses: a fake screen saver on the session bus, a fake logind
on a second bus standing in for the system bus.

Ordering without sleeps: messages from one connection reach another in order, so after a
sender's signal, a Peer.Ping from the same sender to the watching connection returns only once
the watcher has handled the signal.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.service import ServiceInterface, method

from conftest import BusFactory, PrivateBus
from keyagentd.config import Config
from keyagentd.desktop import (
    LOGIN1_SESSION,
    REASON_SCREENSAVER,
    REASON_SESSION_LOCK,
    REASON_SLEEP,
    Watch,
    install_lock_triggers,
)

FDO = "org.freedesktop.ScreenSaver"
GNOME = "org.gnome.ScreenSaver"
SESSION_PATH = "/org/freedesktop/login1/session/_32"
OTHER_SESSION = "/org/freedesktop/login1/session/_37"
USER_PATH = f"/org/freedesktop/login1/user/_{os.getuid()}"
TIMEOUT = 10.0  # hang protection only


def run(coro: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(coro(), 60))


async def connect(bus: PrivateBus) -> MessageBus:
    return await MessageBus(bus_address=bus.address).connect()


async def own(bus: PrivateBus, name: str) -> MessageBus:
    conn = await connect(bus)
    await conn.request_name(name)
    return conn


async def emit(
    conn: MessageBus, interface: str, member: str, signature: str, body: list[Any], path: str
) -> None:
    await conn.send(Message.new_signal(path, interface, member, signature, body))


async def drain(sender: MessageBus, watcher: MessageBus) -> None:
    """Return once `watcher` has processed everything `sender` sent before."""
    reply = await sender.call(
        Message(
            destination=watcher.unique_name,
            path="/",
            interface="org.freedesktop.DBus.Peer",
            member="Ping",
        )
    )
    assert reply is not None and reply.message_type is MessageType.METHOD_RETURN


class Recorder:
    def __init__(self) -> None:
        self.reasons: list[str] = []

    def __call__(self, reason: str) -> None:
        self.reasons.append(reason)


NO_SYSTEM = {"DBUS_SYSTEM_BUS_ADDRESS": "unix:path=/nonexistent/system_bus_socket"}


def test_screensaver_active_changed_locks(private_bus: PrivateBus) -> None:
    async def scenario() -> None:
        agent = await connect(private_bus)
        saver = await own(private_bus, FDO)
        calls = Recorder()
        triggers = await install_lock_triggers(agent, Config(), calls, env=NO_SYSTEM)
        assert triggers.active == [REASON_SCREENSAVER]
        await emit(saver, FDO, "ActiveChanged", "b", [False], "/org/freedesktop/ScreenSaver")
        await drain(saver, agent)
        assert calls.reasons == []  # the screen saver going away locks nothing
        await emit(saver, FDO, "ActiveChanged", "b", [True], "/org/freedesktop/ScreenSaver")
        await drain(saver, agent)
        assert calls.reasons == [REASON_SCREENSAVER]
        # KDE also emits on /ScreenSaver: any path of the owner counts.
        await emit(saver, FDO, "ActiveChanged", "b", [True], "/ScreenSaver")
        # A wrong signature is ignored.
        await emit(saver, FDO, "ActiveChanged", "s", ["true"], "/ScreenSaver")
        await drain(saver, agent)
        assert calls.reasons == [REASON_SCREENSAVER] * 2
        await triggers.close()
        await emit(saver, FDO, "ActiveChanged", "b", [True], "/ScreenSaver")
        await drain(saver, agent)
        assert calls.reasons == [REASON_SCREENSAVER] * 2  # closed: nothing more
        for conn in (agent, saver):
            conn.disconnect()

    run(scenario)


def test_gnome_screensaver_and_owner_changes(private_bus: PrivateBus) -> None:
    async def scenario() -> None:
        agent = await connect(private_bus)
        calls = Recorder()
        # Installed before anyone owns the name: ownership is tracked as it comes.
        await install_lock_triggers(agent, Config(), calls, env=NO_SYSTEM)
        gnome = await own(private_bus, GNOME)
        await emit(gnome, GNOME, "ActiveChanged", "b", [True], "/org/gnome/ScreenSaver")
        await drain(gnome, agent)
        assert calls.reasons == [REASON_SCREENSAVER]
        # The owner leaves; a newcomer takes the name; the old connection is ignored.
        await gnome.release_name(GNOME)
        newcomer = await own(private_bus, GNOME)
        await drain(newcomer, agent)
        await emit(gnome, GNOME, "ActiveChanged", "b", [True], "/org/gnome/ScreenSaver")
        await drain(gnome, agent)
        assert calls.reasons == [REASON_SCREENSAVER]
        await emit(newcomer, GNOME, "ActiveChanged", "b", [True], "/org/gnome/ScreenSaver")
        await drain(newcomer, agent)
        assert calls.reasons == [REASON_SCREENSAVER] * 2
        for conn in (agent, gnome, newcomer):
            conn.disconnect()

    run(scenario)


def test_signal_from_a_non_owner_is_ignored(private_bus: PrivateBus) -> None:
    async def scenario() -> None:
        agent = await connect(private_bus)
        saver = await own(private_bus, FDO)
        impostor = await connect(private_bus)
        calls = Recorder()
        await install_lock_triggers(agent, Config(), calls, env=NO_SYSTEM)
        await emit(impostor, FDO, "ActiveChanged", "b", [True], "/org/freedesktop/ScreenSaver")
        await drain(impostor, agent)
        assert calls.reasons == []
        for conn in (agent, saver, impostor):
            conn.disconnect()

    run(scenario)


def test_handler_checks_the_sender_itself() -> None:
    # Defence in depth behind the bus daemon's sender filter: the handler compares senders too.
    from keyagentd.desktop import _Watcher

    calls = Recorder()
    watch = Watch(FDO, FDO, "ActiveChanged", REASON_SCREENSAVER)
    watcher = _Watcher(None, [watch], calls)  # type: ignore[arg-type]
    watcher.owners[FDO] = ":1.5"

    def signal(sender: str, body: list[Any]) -> Message:
        return Message(
            message_type=MessageType.SIGNAL,
            path="/ScreenSaver",
            interface=FDO,
            member="ActiveChanged",
            signature="b",
            body=body,
            sender=sender,
        )

    watcher._handle(signal(":1.9", [True]))
    assert calls.reasons == []
    watcher._handle(signal(":1.5", [True]))
    assert calls.reasons == [REASON_SCREENSAVER]
    # NameOwnerChanged from the daemon moves the trust.
    watcher._handle(
        Message(
            message_type=MessageType.SIGNAL,
            path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus",
            member="NameOwnerChanged",
            signature="sss",
            body=[FDO, ":1.5", ":1.9"],
            sender="org.freedesktop.DBus",
        )
    )
    watcher._handle(signal(":1.5", [True]))
    watcher._handle(signal(":1.9", [True]))
    assert calls.reasons == [REASON_SCREENSAVER] * 2


def test_disabled_trigger_does_nothing(private_bus: PrivateBus) -> None:
    async def scenario() -> None:
        agent = await connect(private_bus)
        saver = await own(private_bus, FDO)
        calls = Recorder()
        config = Config(lock_on_screensaver=False, lock_on_sleep=False, lock_on_session_lock=False)
        triggers = await install_lock_triggers(agent, config, calls, env=NO_SYSTEM)
        assert triggers.active == []
        await emit(saver, FDO, "ActiveChanged", "b", [True], "/org/freedesktop/ScreenSaver")
        await drain(saver, agent)
        assert calls.reasons == []
        await triggers.close()
        for conn in (agent, saver):
            conn.disconnect()

    run(scenario)


def test_callback_failure_is_logged_not_fatal(
    private_bus: PrivateBus, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        agent = await connect(private_bus)
        saver = await own(private_bus, FDO)

        def broken(reason: str) -> None:
            raise RuntimeError("boom")

        await install_lock_triggers(agent, Config(), broken, env=NO_SYSTEM)
        await emit(saver, FDO, "ActiveChanged", "b", [True], "/ScreenSaver")
        await drain(saver, agent)
        assert agent.connected
        for conn in (agent, saver):
            conn.disconnect()

    with caplog.at_level(logging.ERROR, logger="keyagentd.desktop"):
        run(scenario)
    assert "the lock callback failed" in caplog.text


def test_no_system_bus_is_one_log_line(
    private_bus: PrivateBus, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        agent = await connect(private_bus)
        triggers = await install_lock_triggers(agent, Config(), Recorder(), env=NO_SYSTEM)
        assert triggers.active == [REASON_SCREENSAVER]
        await triggers.close()
        agent.disconnect()

    with caplog.at_level(logging.INFO, logger="keyagentd.desktop"):
        run(scenario)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1
    assert "system bus not reachable" in lines[0]
    assert "no lock on sleep or session lock" in lines[0]


# --- logind on a stand-in system bus ---------------------------------------------------------


class FakeManager(ServiceInterface):
    def __init__(self, sessions: dict[str, str], by_pid: bool) -> None:
        super().__init__("org.freedesktop.login1.Manager")
        self.sessions = sessions
        self.by_pid = by_pid

    @method()
    def GetSession(self, session_id: s) -> o:  # type: ignore[name-defined] # noqa: F821
        if session_id not in self.sessions:
            raise ValueError("no such session")
        return self.sessions[session_id]

    @method()
    def GetSessionByPID(self, pid: u) -> o:  # type: ignore[name-defined] # noqa: F821
        if not self.by_pid:
            raise ValueError("PID does not belong to any known session")
        return SESSION_PATH

    @method()
    def GetUser(self, uid: u) -> o:  # type: ignore[name-defined] # noqa: F821
        return USER_PATH


async def fake_logind(bus: PrivateBus, *, by_pid: bool, display: str) -> MessageBus:
    conn = await connect(bus)
    manager = FakeManager({"32": SESSION_PATH, "37": OTHER_SESSION}, by_pid)
    conn.export("/org/freedesktop/login1", manager)

    # The User's Display property (so), answered by hand: dbus-fast's @dbus_property needs a
    # struct, and a plain handler keeps the fake obvious.
    def user_props(msg: Message) -> Message | None:
        if (
            msg.message_type is MessageType.METHOD_CALL
            and msg.path == USER_PATH
            and msg.member == "Get"
            and msg.body == ["org.freedesktop.login1.User", "Display"]
        ):
            return Message.new_method_return(msg, "v", [Variant("(so)", ["32", display])])
        return None

    conn.add_message_handler(user_props)
    await conn.request_name("org.freedesktop.login1")
    return conn


def test_logind_sleep_and_session_lock(bus_factory: BusFactory) -> None:
    session_bus, system_bus = bus_factory(), bus_factory()

    async def scenario() -> None:
        agent = await connect(session_bus)
        logind = await fake_logind(system_bus, by_pid=False, display="/")
        calls = Recorder()
        triggers = await install_lock_triggers(
            agent,
            Config(lock_on_screensaver=False),
            calls,
            system_bus_address=system_bus.address,
            env={"XDG_SESSION_ID": "32"},
        )
        assert triggers.active == [REASON_SLEEP, REASON_SESSION_LOCK]
        assert triggers.session_path == SESSION_PATH
        watcher = triggers._system_bus
        assert watcher is not None
        manager = "org.freedesktop.login1.Manager"
        await emit(logind, manager, "PrepareForSleep", "b", [False], "/org/freedesktop/login1")
        await emit(logind, LOGIN1_SESSION, "Lock", "", [], OTHER_SESSION)  # not our session
        await drain(logind, watcher)
        assert calls.reasons == []
        await emit(logind, manager, "PrepareForSleep", "b", [True], "/org/freedesktop/login1")
        await emit(logind, LOGIN1_SESSION, "Lock", "", [], SESSION_PATH)
        await drain(logind, watcher)
        assert calls.reasons == [REASON_SLEEP, REASON_SESSION_LOCK]
        props = "org.freedesktop.DBus.Properties"
        unlocked = [LOGIN1_SESSION, {"LockedHint": Variant("b", False)}, []]
        locked = [LOGIN1_SESSION, {"LockedHint": Variant("b", True)}, []]
        other = ["org.freedesktop.login1.Seat", {"LockedHint": Variant("b", True)}, []]
        await emit(logind, props, "PropertiesChanged", "sa{sv}as", unlocked, SESSION_PATH)
        await emit(logind, props, "PropertiesChanged", "sa{sv}as", other, SESSION_PATH)
        await emit(logind, props, "PropertiesChanged", "sa{sv}as", locked, OTHER_SESSION)
        await drain(logind, watcher)
        assert calls.reasons == [REASON_SLEEP, REASON_SESSION_LOCK]
        await emit(logind, props, "PropertiesChanged", "sa{sv}as", locked, SESSION_PATH)
        await drain(logind, watcher)
        assert calls.reasons == [REASON_SLEEP, REASON_SESSION_LOCK, REASON_SESSION_LOCK]
        await triggers.close()
        assert not watcher.connected
        for conn in (agent, logind):
            conn.disconnect()

    run(scenario)


@pytest.mark.parametrize(
    ("env", "by_pid", "display", "expected"),
    [
        ({"XDG_SESSION_ID": "37"}, True, "/", OTHER_SESSION),  # the environment wins
        ({"XDG_SESSION_ID": "99"}, True, "/", SESSION_PATH),  # unknown id: by pid
        ({}, True, "/", SESSION_PATH),
        ({}, False, OTHER_SESSION, OTHER_SESSION),  # a user service: the display session
        ({}, False, "/", None),  # no session at all: the Lock trigger is off
    ],
)
def test_session_lookup(
    bus_factory: BusFactory,
    env: dict[str, str],
    by_pid: bool,
    display: str,
    expected: str | None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    session_bus, system_bus = bus_factory(), bus_factory()

    async def scenario() -> None:
        agent = await connect(session_bus)
        logind = await fake_logind(system_bus, by_pid=by_pid, display=display)
        calls = Recorder()
        triggers = await install_lock_triggers(
            agent,
            Config(lock_on_screensaver=False, lock_on_sleep=False),
            calls,
            system_bus_address=system_bus.address,
            env=env,
        )
        assert triggers.session_path == expected
        if expected is None:
            assert triggers.active == []
            assert triggers._system_bus is None  # nothing to watch: connection dropped
        else:
            assert triggers.active == [REASON_SESSION_LOCK]
            assert triggers._system_bus is not None
            await emit(logind, LOGIN1_SESSION, "Lock", "", [], expected)
            await drain(logind, triggers._system_bus)
            assert calls.reasons == [REASON_SESSION_LOCK]
        await triggers.close()
        for conn in (agent, logind):
            conn.disconnect()

    with caplog.at_level(logging.INFO, logger="keyagentd.desktop"):
        run(scenario)
    if expected is None:
        assert "no login session found" in caplog.text


def test_sleep_from_a_non_owner_of_login1_is_ignored(bus_factory: BusFactory) -> None:
    session_bus, system_bus = bus_factory(), bus_factory()

    async def scenario() -> None:
        agent = await connect(session_bus)
        logind = await fake_logind(system_bus, by_pid=True, display="/")
        impostor = await connect(system_bus)
        calls = Recorder()
        triggers = await install_lock_triggers(
            agent, Config(lock_on_screensaver=False), calls, system_bus_address=system_bus.address
        )
        assert triggers._system_bus is not None
        manager = "org.freedesktop.login1.Manager"
        await emit(impostor, manager, "PrepareForSleep", "b", [True], "/org/freedesktop/login1")
        await emit(impostor, LOGIN1_SESSION, "Lock", "", [], SESSION_PATH)
        await drain(impostor, triggers._system_bus)
        assert calls.reasons == []
        await triggers.close()
        for conn in (agent, logind, impostor):
            conn.disconnect()

    run(scenario)
