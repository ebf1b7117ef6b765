"""The agent: wiring of the core (keys, crypt, work, audit) to the bus, and its lifecycle.

`connect(config)` connects to the session bus and checks that the bus daemon runs as us or
root (SO_PEERCRED); the `Agent` it returns has every part built, nothing waits for a later
step. `start` reads the keystore, exports the objects, installs the dispatcher and the gate,
then claims the name (refusing if someone owns it). Stop: on SIGTERM/SIGINT, when the bus
connection drops, or after `idle_exit` seconds without calls while every key is locked.
Stopping releases the name first, so a caller arriving meanwhile activates a fresh agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from dbus_fast import Message, RequestNameReply
from dbus_fast.constants import NameFlag

from keyagent.protocol import (
    BUS_NAME,
    DEFAULT_MAX_PAYLOAD,
    KEY_INTERFACE,
    MANAGER_INTERFACE,
    MANAGER_PATH,
    Failed,
)
from keyagentd.audit import Audit
from keyagentd.auth import check_bus_peer
from keyagentd.bus.dispatch import Dispatcher, Method
from keyagentd.bus.fixes import FixedMessageBus, SignalSender, bus_socket
from keyagentd.bus.gate import Gate
from keyagentd.bus.manager import Manager
from keyagentd.bus.methods import manager_target, method_table
from keyagentd.bus.objects import KeyObjects
from keyagentd.cache import KeyCache
from keyagentd.config import Config as UserConfig
from keyagentd.crypt import Crypt
from keyagentd.desktop import LockTriggers, install_lock_triggers
from keyagentd.kdf import KdfParams
from keyagentd.keys import Keys
from keyagentd.keystore import KeyStore
from keyagentd.policy import AccessRecord
from keyagentd.streams import DEFAULT_MAX_STREAMS
from keyagentd.work import Work

log = logging.getLogger(__name__)

DEFAULT_IDLE_EXIT: Final = 300.0
#: How long a stopping agent waits for calls already running to answer.
DRAIN_SECONDS: Final = 5.0


@dataclass(frozen=True)
class Config:
    home: Path
    kdf: KdfParams = KdfParams()  # noqa: RUF009 - frozen
    idle_exit: float = DEFAULT_IDLE_EXIT  # 0: never exit when idle
    max_payload: int = DEFAULT_MAX_PAYLOAD
    max_streams: int = DEFAULT_MAX_STREAMS
    scrypt_work_factor: int | None = None  # None: chosen by target time, like age
    crypto_workers: int = 4
    bus_address: str | None = None
    user: UserConfig = UserConfig()  # noqa: RUF009 - frozen; config.toml


async def connect(config: Config, *, uid: int | None = None) -> Agent:
    """Connect to the session bus and build the agent; ``Failed`` (one sentence) if we can't."""
    uid = os.geteuid() if uid is None else uid
    try:
        bus = FixedMessageBus(session_bus_address(config.bus_address), negotiate_unix_fd=True)
        await bus.connect()
    except Exception as exc:
        raise Failed(f"Cannot connect to the session bus: {_reason(exc)}.") from None
    try:
        check_bus_peer(bus_socket(bus), uid)
    except BaseException:
        bus.disconnect()
        raise
    return Agent(config, bus, uid, asyncio.get_running_loop())


class Agent:
    """The parts, wired: core objects know nothing of the bus; bus objects adapt them."""

    def __init__(
        self, config: Config, bus: FixedMessageBus, uid: int, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.config, self.bus, self.uid, self._loop = config, bus, uid, loop
        self._stop = asyncio.Event()
        self._idle_handle: asyncio.TimerHandle | None = None
        self._triggers: LockTriggers | None = None  # a convenience: may stay off
        user = config.user
        cache = KeyCache(
            default_idle_timeout=user.idle_timeout, default_max_timeout=user.max_timeout
        )
        self.methods: list[Method] = []  # the table, made once the core exists (below)
        self.manager = Manager(self._key_paths, self._table)
        self.objects = KeyObjects(bus, self.manager, cache, self._table, self._touch)
        self.work = Work(config.crypto_workers, config.max_streams, clock=loop.time)
        store = KeyStore(config.home, kdf=config.kdf)
        self.keys = Keys(store, cache, user, self.work, self.objects)
        self.crypt = Crypt(
            self.keys, max_payload=config.max_payload, scrypt_work_factor=config.scrypt_work_factor
        )
        self.methods = method_table(self.keys, self.crypt, self.work, self.objects.used)
        self.audit = Audit()
        self.gate = Gate(
            bus, uid=uid, on_gone=self._caller_gone, on_orphan=self._orphan,
            on_known=self.audit.known,
        )  # fmt: skip
        self.dispatcher = Dispatcher(
            bus,
            self.gate,
            self.audit,
            max_payload=config.max_payload,
            methods=self.methods,
            targets={
                MANAGER_INTERFACE: manager_target,
                KEY_INTERFACE: self.objects.target,
            },
            on_call=self.work.touch,
            announce=self._send_access,
        )
        # One per operation: its header is marshalled once (fixes.py).
        self._access_log = SignalSender(
            bus, MANAGER_PATH, MANAGER_INTERFACE, "AccessLog", AccessRecord.SIGNATURE,
            AccessRecord("", "", 0, "", "").body(),
        )  # fmt: skip

    # The bus objects list the method table in their introspection, read when asked.
    def _table(self) -> list[Method]:
        return self.methods

    def _key_paths(self) -> list[str]:
        return self.objects.key_paths()

    def _send_access(self, record: AccessRecord) -> None:
        self._access_log.send(record.body())  # a closed bus drops it quietly

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Export everything and claim the bus name; ``Failed`` (one sentence) if we can't."""
        # Before the name is claimed: a SIGTERM once we own it must exit cleanly, even while
        # start() still awaits (lock triggers); run() finds the stop already requested.
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._loop.add_signal_handler(sig, self.stop, f"signal {sig.name}")
        bus = self.bus
        try:
            records = self.keys.load()
            bus.object_manager_path = MANAGER_PATH
            bus.export(MANAGER_PATH, self.manager)
            for record in records:
                try:
                    self.objects.export(record)
                except Exception as exc:  # one odd file must not keep the others from service
                    log.warning("Skipping key %r: %s", record.name, exc)
                    self.keys.records.pop(record.name, None)
            bus.add_message_handler(self.dispatcher.handle)
            await self.gate.install()
            reply = await bus.request_name(BUS_NAME, NameFlag.DO_NOT_QUEUE)
            if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
                raise Failed(f"{BUS_NAME} is already owned on this bus: another agent is running.")
        except BaseException:
            bus.disconnect()
            raise
        log.info(
            "serving %s with %d key(s) from %s", BUS_NAME, len(self.keys.records), self.config.home
        )
        try:
            self._triggers = await install_lock_triggers(
                bus, self.config.user, self.lock_from_trigger
            )
        except Exception as exc:  # a convenience: serving goes on (run() sees a lost bus)
            log.warning("Desktop lock triggers are off: %s.", _reason(exc))
        self._arm_idle()

    async def run(self) -> None:
        """Serve until a stop condition, then shut down cleanly."""
        disconnect = asyncio.ensure_future(_disconnected(self.bus))
        stop = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait({disconnect, stop}, return_when=asyncio.FIRST_COMPLETED)
        if self._triggers is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._triggers.close(), 2.0)
        if disconnect.done():
            with contextlib.suppress(Exception):
                disconnect.result()
            log.info("the bus connection closed: exiting")
        else:
            disconnect.cancel()
            await self._shutdown_bus()
        stop.cancel()
        self._close()

    def stop(self, reason: str = "") -> None:
        if not self._stop.is_set():
            log.info("exiting (%s)", reason or "stop requested")
            self._stop.set()

    async def _shutdown_bus(self) -> None:
        bus = self.bus
        with contextlib.suppress(Exception):
            await asyncio.wait_for(bus.release_name(BUS_NAME), 2.0)
        deadline = self._loop.time() + DRAIN_SECONDS
        self.work.streams.shutdown()
        while self.work.inflight and self._loop.time() < deadline:
            await asyncio.sleep(0.05)
        bus.disconnect()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(_disconnected(bus), 2.0)

    def _close(self) -> None:
        if self._idle_handle is not None:
            self._idle_handle.cancel()
        self.keys.close()
        self.work.shutdown()

    def lock_from_trigger(self, reason: str) -> None:
        """The desktop locked, slept or started its screen saver: lock every key."""
        self.keys.lock_all(reason)

    # --- activity and idle exit ----------------------------------------------------------

    def _orphan(self, msg: Message) -> bool:
        return self.dispatcher.orphan(msg)

    def _caller_gone(self, sender: str) -> None:
        self.work.cancel(sender)
        self.audit.forget(sender)

    def _touch(self) -> None:
        self.work.touch()
        self._arm_idle()

    def _arm_idle(self) -> None:
        if self.config.idle_exit <= 0 or self._idle_handle is not None:
            return
        when = self.work.last_activity + self.config.idle_exit
        self._idle_handle = self._loop.call_at(when, self._idle_due)

    def _idle_due(self) -> None:
        self._idle_handle = None
        if self.keys.cache.unlocked_names():
            return  # re-armed when the last key locks
        if self.work.busy:
            self.work.touch()
        elif self._loop.time() >= self.work.last_activity + self.config.idle_exit:
            self.stop(f"idle for {self.config.idle_exit:g} s with every key locked")
            return
        self._arm_idle()


def session_bus_address(configured: str | None) -> str | None:
    """The configured address, else $DBUS_SESSION_BUS_ADDRESS, else $XDG_RUNTIME_DIR/bus (the
    systemd user bus, as GDBus and sd-bus find it); None lets dbus-fast explain."""
    if configured:
        return configured
    if os.environ.get("DBUS_SESSION_BUS_ADDRESS"):
        return None
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.exists(os.path.join(runtime, "bus")):
        return "unix:path=" + os.path.join(runtime, "bus")
    return None


async def _disconnected(bus: FixedMessageBus) -> None:
    # Shielded: cancelling a waiter must not cancel the bus's own disconnect future; the
    # callback marks its error (a dropped connection) as seen.
    task = asyncio.ensure_future(bus.wait_for_disconnect())  # type: ignore[no-untyped-call]
    task.add_done_callback(lambda t: t.cancelled() or t.exception())
    await asyncio.shield(task)


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return text.rstrip(".")


__all__ = ["KEY_INTERFACE", "MANAGER_INTERFACE", "Agent", "Config"]
