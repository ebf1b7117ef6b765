"""Lock triggers: lock every key when the screen locks, the session locks, or the machine sleeps.

Watched signals (each behind its own config switch):

- session bus, ``lock_on_screensaver``: ``ActiveChanged(true)`` of
  ``org.freedesktop.ScreenSaver`` (KDE, XFCE, ...) and ``org.gnome.ScreenSaver``;
- system bus, ``lock_on_sleep``: logind's ``PrepareForSleep(true)``;
- system bus, ``lock_on_session_lock``: the login session's ``Lock`` signal
  (``loginctl lock-session``) and its ``LockedHint`` turning true (GNOME sets
  it when it locks). The session is ``$XDG_SESSION_ID``, else the agent's own
  (``GetSessionByPID``), else the user's display session (a systemd user
  service belongs to no session).

A signal counts only when it comes from the current owner of the well-known
name: the bus daemon filters on it (the match rule's ``sender``) and the
handler checks it again. On the session bus that is a weak guarantee, since any
program of the user may claim the name, but a false trigger only locks keys,
which any such program may already do with ``LockAll``. No system bus (a
container, a test) only turns the system-bus triggers off, with one log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus

from keyagentd.config import Config

log = logging.getLogger(__name__)

DBUS: Final = "org.freedesktop.DBus"
DBUS_PATH: Final = "/org/freedesktop/DBus"
SCREENSAVERS: Final = ("org.freedesktop.ScreenSaver", "org.gnome.ScreenSaver")
LOGIN1: Final = "org.freedesktop.login1"
LOGIN1_PATH: Final = "/org/freedesktop/login1"
LOGIN1_MANAGER: Final = "org.freedesktop.login1.Manager"
LOGIN1_SESSION: Final = "org.freedesktop.login1.Session"
LOGIN1_USER: Final = "org.freedesktop.login1.User"
PROPERTIES: Final = "org.freedesktop.DBus.Properties"
DEFAULT_SYSTEM_BUS: Final = "unix:path=/run/dbus/system_bus_socket"
CONNECT_TIMEOUT: Final = 2.0

REASON_SCREENSAVER: Final = "screensaver"
REASON_SLEEP: Final = "sleep"
REASON_SESSION_LOCK: Final = "session-lock"

OnLock = Callable[[str], None]


@dataclass(frozen=True)
class Watch:
    """One signal that locks: from ``name``'s owner, at ``path`` (any path when None)."""

    name: str
    interface: str
    member: str
    reason: str
    path: str | None = None

    def rule(self) -> str:
        parts = [
            "type='signal'",
            f"sender='{self.name}'",
            f"interface='{self.interface}'",
            f"member='{self.member}'",
        ]
        if self.path is not None:
            parts.append(f"path='{self.path}'")
        return ",".join(parts)

    def locks(self, msg: Message) -> bool:
        """Whether this signal's body means "locking now"."""
        if msg.interface != self.interface or msg.member != self.member:
            return False
        if self.path is not None and msg.path != self.path:
            return False
        if self.member == "PropertiesChanged":
            if msg.signature != "sa{sv}as" or msg.body[0] != LOGIN1_SESSION:
                return False
            hint = msg.body[1].get("LockedHint")
            return hint is not None and hint.signature == "b" and hint.value is True
        if self.member == "Lock":
            return True
        return msg.signature == "b" and msg.body[0] is True


def _owner_rule(name: str) -> str:
    return (
        f"type='signal',sender='{DBUS}',interface='{DBUS}',"
        f"member='NameOwnerChanged',path='{DBUS_PATH}',arg0='{name}'"
    )


class _Watcher:
    """The watches of one bus: match rules, the owners of their names, one message handler."""

    def __init__(self, bus: MessageBus, watches: list[Watch], on_lock: OnLock) -> None:
        self.bus = bus
        self.watches = watches
        self.on_lock = on_lock
        self.owners: dict[str, str | None] = {}
        self.rules: list[str] = []

    async def install(self) -> None:
        self.bus.add_message_handler(self._handle)
        for name in dict.fromkeys(w.name for w in self.watches):
            # Owner tracking first, then the lookup: a change in between is not missed.
            await self._add_match(_owner_rule(name))
            self.owners[name] = await _name_owner(self.bus, name)
        for watch in self.watches:
            await self._add_match(watch.rule())

    async def _add_match(self, rule: str) -> None:
        await _call(self.bus, DBUS, DBUS_PATH, DBUS, "AddMatch", "s", [rule])
        self.rules.append(rule)

    def _handle(self, msg: Message) -> None:
        # Never returns true: other handlers (the agent's gate) must still see every message.
        if msg.message_type is not MessageType.SIGNAL:
            return
        if (
            msg.member == "NameOwnerChanged"
            and msg.sender == DBUS
            and msg.interface == DBUS
            and msg.signature == "sss"
            and msg.body[0] in self.owners
        ):
            self.owners[msg.body[0]] = msg.body[2] or None
            return
        for watch in self.watches:
            owner = self.owners.get(watch.name)
            if owner is not None and msg.sender == owner and watch.locks(msg):
                self._fire(watch.reason)
                return

    def _fire(self, reason: str) -> None:
        try:
            self.on_lock(reason)
        except Exception:
            log.exception("lock trigger %s: the lock callback failed", reason)

    async def close(self) -> None:
        self.bus.remove_message_handler(self._handle)
        if not self.bus.connected:
            return
        for rule in self.rules:
            with contextlib.suppress(Exception):
                await _call(self.bus, DBUS, DBUS_PATH, DBUS, "RemoveMatch", "s", [rule])
        self.rules.clear()


class LockTriggers:
    """The installed triggers; ``close()`` removes them (and the system bus connection)."""

    def __init__(self) -> None:
        self.active: list[str] = []  # e.g. ["screensaver", "sleep", "session-lock"]
        self.session_path: str | None = None
        self._watchers: list[_Watcher] = []
        self._system_bus: MessageBus | None = None

    async def close(self) -> None:
        for watcher in self._watchers:
            await watcher.close()
        self._watchers.clear()
        if self._system_bus is not None:
            self._system_bus.disconnect()
            self._system_bus = None
        self.active.clear()


async def install_lock_triggers(
    session_bus: MessageBus,
    config: Config,
    on_lock: OnLock,
    *,
    system_bus_address: str | None = None,
    env: Mapping[str, str] | None = None,
) -> LockTriggers:
    """Watch the desktop and call ``on_lock(reason)`` when keys should lock.

    ``system_bus_address`` defaults to ``$DBUS_SYSTEM_BUS_ADDRESS``, then the
    standard socket. Never raises for a missing system bus or login session.
    """
    env = os.environ if env is None else env
    triggers = LockTriggers()
    if config.lock_on_screensaver:
        watches = [Watch(n, n, "ActiveChanged", REASON_SCREENSAVER) for n in SCREENSAVERS]
        watcher = _Watcher(session_bus, watches, on_lock)
        await watcher.install()
        triggers._watchers.append(watcher)
        triggers.active.append(REASON_SCREENSAVER)
    if config.lock_on_sleep or config.lock_on_session_lock:
        await _install_system(triggers, config, on_lock, system_bus_address, env)
    return triggers


async def _install_system(
    triggers: LockTriggers,
    config: Config,
    on_lock: OnLock,
    address: str | None,
    env: Mapping[str, str],
) -> None:
    address = address or env.get("DBUS_SYSTEM_BUS_ADDRESS") or DEFAULT_SYSTEM_BUS
    try:
        bus = MessageBus(bus_address=address, bus_type=BusType.SYSTEM)
        await asyncio.wait_for(bus.connect(), CONNECT_TIMEOUT)
    except Exception as e:
        log.info(
            "lock triggers: system bus not reachable (%s): no lock on sleep or session lock", e
        )
        return
    triggers._system_bus = bus
    watches: list[Watch] = []
    if config.lock_on_sleep:
        watches.append(Watch(LOGIN1, LOGIN1_MANAGER, "PrepareForSleep", REASON_SLEEP, LOGIN1_PATH))
    if config.lock_on_session_lock:
        session = await find_session(bus, env)
        if session is None:
            log.info("lock triggers: no login session found: no lock on session lock")
        else:
            triggers.session_path = session
            watches.append(Watch(LOGIN1, LOGIN1_SESSION, "Lock", REASON_SESSION_LOCK, session))
            watches.append(
                Watch(LOGIN1, PROPERTIES, "PropertiesChanged", REASON_SESSION_LOCK, session)
            )
    if not watches:
        bus.disconnect()
        triggers._system_bus = None
        return
    watcher = _Watcher(bus, watches, on_lock)
    try:
        await watcher.install()
    except Exception as e:
        log.info("lock triggers: cannot watch logind (%s): no lock on sleep or session lock", e)
        bus.disconnect()
        triggers._system_bus = None
        return
    triggers._watchers.append(watcher)
    triggers.active.extend(dict.fromkeys(w.reason for w in watches))


async def find_session(bus: MessageBus, env: Mapping[str, str]) -> str | None:
    """The login session's object path: $XDG_SESSION_ID, our pid's session, the user's display."""
    session_id = env.get("XDG_SESSION_ID")
    if session_id:
        with contextlib.suppress(Exception):
            return str(await _login1(bus, "GetSession", "s", [session_id]))
    with contextlib.suppress(Exception):
        return str(await _login1(bus, "GetSessionByPID", "u", [os.getpid()]))
    with contextlib.suppress(Exception):
        user = await _login1(bus, "GetUser", "u", [os.getuid()])
        reply = await _call(
            bus, LOGIN1, str(user), PROPERTIES, "Get", "ss", [LOGIN1_USER, "Display"]
        )
        _display_id, path = reply[0].value
        if path and path != "/":
            return str(path)
    return None


async def _login1(bus: MessageBus, member: str, signature: str, body: list[Any]) -> Any:
    return (await _call(bus, LOGIN1, LOGIN1_PATH, LOGIN1_MANAGER, member, signature, body))[0]


async def _name_owner(bus: MessageBus, name: str) -> str | None:
    try:
        return str((await _call(bus, DBUS, DBUS_PATH, DBUS, "GetNameOwner", "s", [name]))[0])
    except Exception:
        return None  # no owner yet: NameOwnerChanged will tell


async def _call(
    bus: MessageBus,
    destination: str,
    path: str,
    interface: str,
    member: str,
    signature: str,
    body: list[Any],
) -> list[Any]:
    reply = await bus.call(
        Message(
            destination=destination,
            path=path,
            interface=interface,
            member=member,
            signature=signature,
            body=body,
        )
    )
    if reply is None or reply.message_type is MessageType.ERROR:
        detail = reply.body[0] if reply is not None and reply.body else "no reply"
        raise RuntimeError(f"{interface}.{member} failed: {detail}")
    return list(reply.body)
