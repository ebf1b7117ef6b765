"""The agent: wiring of store, cache, bus objects and gate, and its lifecycle.

Start: check the keystore directory, connect to the session bus, check that the bus daemon
runs as us or root (SO_PEERCRED), export the objects, install the gate, then claim the name
(refusing if someone owns it). Stop: on SIGTERM/SIGINT, when the bus connection drops, or
after `idle_exit` seconds without calls while every key is locked. Stopping releases the
name first, so a caller arriving meanwhile activates a fresh agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar, cast

from dbus_fast import RequestNameReply
from dbus_fast.constants import NameFlag
from dbus_fast.service import ServiceInterface

from keyagent.protocol import (
    BUS_NAME,
    DEFAULT_MAX_PAYLOAD,
    KEY_INTERFACE,
    MANAGER_INTERFACE,
    MANAGER_PATH,
    BadPassphrase,
    Failed,
    InvalidArgs,
    NoSuchKey,
)
from keyagentd import askpass
from keyagentd.auth import Caller, check_bus_peer
from keyagentd.bus import oplog
from keyagentd.bus.accesslog import AccessLog
from keyagentd.bus.fixes import FixedMessageBus
from keyagentd.bus.gate import Gate, current_sender
from keyagentd.bus.key import KeyObject
from keyagentd.bus.manager import Manager
from keyagentd.bus.options import Options
from keyagentd.bus.registry import KeyRegistry
from keyagentd.bus.streams import DEFAULT_MAX_STREAMS, StreamRunner
from keyagentd.cache import KeyCache
from keyagentd.config import Config as UserConfig
from keyagentd.desktop import LockTriggers, install_lock_triggers
from keyagentd.kdf import KdfParams
from keyagentd.keystore import KeyRecord, KeyStore
from keyagentd.ratelimit import FailureLimiter
from keyagentd.secrets import wipe

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_IDLE_EXIT: Final = 300.0
#: How long a stopping agent waits for calls already running to answer.
DRAIN_SECONDS: Final = 5.0
#: An askpass unlock asks again after a wrong passphrase, like a terminal prompt.
ASKPASS_TRIES: Final = 3


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


def _signatures(*interfaces: ServiceInterface) -> dict[tuple[str, str], str]:
    """(interface, member) -> input signature of every method we export."""
    table = {}
    for iface in interfaces:
        for method in ServiceInterface._get_methods(iface):
            table[(iface.name, method.name)] = method.in_signature
    return table


class Agent(KeyRegistry):
    def __init__(self, config: Config, *, uid: int | None = None) -> None:
        self.config = config
        self.uid = os.geteuid() if uid is None else uid
        self.store = KeyStore(config.home, kdf=config.kdf)
        self.cache = KeyCache(
            default_idle_timeout=config.user.idle_timeout,
            default_max_timeout=config.user.max_timeout,
        )
        self._triggers: LockTriggers | None = None
        self.limiter = FailureLimiter()
        self.records: dict[str, KeyRecord] = {}
        self.keys: dict[str, KeyObject] = {}
        self.manager = Manager(self)
        self.access_log = AccessLog(self.manager.emit_access)
        # Passphrase dialogs wait for a person: never in the crypto pool (askpass.py also
        # shows one at a time).
        self._dialogs = ThreadPoolExecutor(1, thread_name_prefix="askpass")
        self._pool = ThreadPoolExecutor(config.crypto_workers, thread_name_prefix="crypto")
        self._streams = StreamRunner(config.max_streams)
        self._bus: FixedMessageBus | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._inflight = 0
        self._last_activity = 0.0
        self._idle_handle: asyncio.TimerHandle | None = None
        self._expiry_handle: asyncio.TimerHandle | None = None

    @property
    def bus(self) -> FixedMessageBus:
        """The connected session bus (after `start`), e.g. for desktop lock triggers."""
        assert self._bus is not None, "the agent has not started"
        return self._bus

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Prepare everything and claim the bus name; ``Failed`` (one sentence) if we can't."""
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        # Before the name is claimed: a SIGTERM once we own it must exit cleanly, even while
        # start() still awaits (lock triggers); run() finds the stop already requested.
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._loop.add_signal_handler(sig, self.stop, f"signal {sig.name}")
        self._last_activity = self._loop.time()
        self.store.prepare()
        for record in self.store.list():
            self.records[record.name] = record
        try:
            bus = FixedMessageBus(
                session_bus_address(self.config.bus_address), negotiate_unix_fd=True
            )
            await bus.connect()
        except Exception as exc:
            raise Failed(f"Cannot connect to the session bus: {_reason(exc)}.") from None
        self._bus = bus
        try:
            check_bus_peer(cast(socket.socket, bus._sock), self.uid)
            bus.object_manager_path = MANAGER_PATH
            bus.export(MANAGER_PATH, self.manager)
            for record in list(self.records.values()):
                try:
                    self._export_key(record)
                except Exception as exc:  # one odd file must not keep the others from service
                    log.warning("Skipping key %r: %s", record.name, exc)
                    self.records.pop(record.name, None)
            # A stand-in key object, only to read the Key interface's method signatures.
            sample = KeyObject(self, KeyRecord("x", "", "x25519", "", 0))
            gate = Gate(
                bus,
                uid=self.uid,
                max_payload=self.config.max_payload,
                signatures=_signatures(self.manager, sample),
                on_call=self._on_call,
                on_gone=self._caller_gone,
            )
            await gate.install()
            reply = await bus.request_name(BUS_NAME, NameFlag.DO_NOT_QUEUE)
            if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
                raise Failed(f"{BUS_NAME} is already owned on this bus: another agent is running.")
        except BaseException:
            bus.disconnect()
            raise
        oplog.set_operation_hook(self.access_log.on_operation)
        log.info("serving %s with %d key(s) from %s", BUS_NAME, len(self.records), self.config.home)
        try:
            self._triggers = await install_lock_triggers(
                bus, self.config.user, self.lock_from_trigger
            )
        except Exception as exc:  # a convenience: serving goes on (run() sees a lost bus)
            log.warning("Desktop lock triggers are off: %s.", _reason(exc))
        self._arm_idle()

    async def run(self) -> None:
        """Serve until a stop condition, then shut down cleanly."""
        assert self._bus is not None and self._stop is not None and self._loop is not None
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._loop.add_signal_handler(sig, self.stop, f"signal {sig.name}")
        disconnect = asyncio.ensure_future(_disconnected(self._bus))
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
        if self._stop is not None and not self._stop.is_set():
            log.info("exiting (%s)", reason or "stop requested")
            self._stop.set()

    async def _shutdown_bus(self) -> None:
        bus = self._bus
        assert bus is not None and self._loop is not None
        with contextlib.suppress(Exception):
            await asyncio.wait_for(bus.release_name(BUS_NAME), 2.0)
        deadline = self._loop.time() + DRAIN_SECONDS
        self._streams.shutdown()
        while self._inflight and self._loop.time() < deadline:
            await asyncio.sleep(0.05)
        bus.disconnect()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(_disconnected(bus), 2.0)

    def _close(self) -> None:
        for handle in (self._idle_handle, self._expiry_handle):
            if handle is not None:
                handle.cancel()
        self._streams.shutdown()
        self.cache.lock_all()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._dialogs.shutdown(wait=False, cancel_futures=True)
        oplog.set_operation_hook(None)

    def lock_from_trigger(self, reason: str) -> None:
        """The desktop locked, slept or started its screen saver: lock every key."""
        names = self.cache.lock_all()
        for name in names:
            self.key_changed(name)
        if names:
            log.info("locked %d key(s): %s", len(names), reason)

    # --- activity and idle exit ----------------------------------------------------------

    def _on_call(self, caller: Caller) -> None:
        assert self._loop is not None
        self._last_activity = self._loop.time()

    def _caller_gone(self, sender: str) -> None:
        self._streams.cancel(sender)
        self.access_log.forget(sender)

    def _touch(self) -> None:
        if self._loop is not None:
            self._last_activity = self._loop.time()
            self._arm_idle()

    def _arm_idle(self) -> None:
        if self.config.idle_exit <= 0 or self._idle_handle is not None or self._loop is None:
            return
        when = self._last_activity + self.config.idle_exit
        self._idle_handle = self._loop.call_at(when, self._idle_due)

    def _idle_due(self) -> None:
        assert self._loop is not None
        self._idle_handle = None
        if self.cache.unlocked_names():
            return  # re-armed when the last key locks
        if self._inflight or self._streams.active:
            self._last_activity = self._loop.time()
        elif self._loop.time() >= self._last_activity + self.config.idle_exit:
            self.stop(f"idle for {self.config.idle_exit:g} s with every key locked")
            return
        self._arm_idle()

    # --- operations shared by the objects ------------------------------------------------

    async def blocking(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run CPU or disk work (Argon2, crypto) in the worker pool, off the event loop."""
        assert self._loop is not None
        self._inflight += 1
        try:
            return await self._loop.run_in_executor(
                self._pool, functools.partial(fn, *args, **kwargs)
            )
        finally:
            self._inflight -= 1
            self._touch()

    async def stream(self, caller: str, fds: list[int], job: Callable[[threading.Event], T]) -> T:
        self._inflight += 1
        try:
            return await self._streams.run(caller, fds, job)
        finally:
            self._inflight -= 1
            self._touch()

    async def read_fd(self, fd: int, reader: Callable[[int, threading.Event], T]) -> T:
        """Run ``reader(fd, cancel)`` as a stream of the current caller; closes ``fd``."""
        return await self.stream(current_sender(), [fd], lambda cancel: reader(fd, cancel))

    async def unlock(self, name: str, passphrase: str, options: Options) -> None:
        record = self.require(name)
        idle, maximum = options.number("idle-timeout"), options.number("max-timeout")
        key_idle, key_max = self.config.user.timeouts_for(name)
        idle = key_idle if idle is None else idle
        maximum = key_max if maximum is None else maximum
        for value, what in ((idle, "idle-timeout"), (maximum, "max-timeout")):
            if value is not None and value < 1:
                raise InvalidArgs(f"The {what} option must be at least 1 second.")
        async with self.limiter.attempt(name):
            seed = await self.blocking(self.store.unseal, name, passphrase)
        if name not in self.records:  # deleted meanwhile
            wipe(seed)
            raise NoSuchKey(f"There is no key named {name!r}.")
        self.cache.unlock(name, record.key_type, seed, idle, maximum)
        self.key_changed(name)

    async def unlock_by_askpass(self, name: str, options: Options, pid: int) -> None:
        """Ask the person at the desktop for ``name``'s passphrase (askpass.py) and unlock.

        Up to ``ASKPASS_TRIES`` dialogs; each wrong passphrase counts in the rate limiter.
        Cancel or timeout: BadPassphrase; no askpass program at all: Failed.
        """
        assert self._loop is not None
        self.require(name)
        self.limiter.check(name)  # a locked-out key does not bother the person
        user = self.config.user
        if askpass.find_askpass(user.askpass) is None:
            raise Failed(
                f"Key '{name}' is locked and there is no askpass program to ask for its "
                "passphrase: set $KEYAGENT_ASKPASS or askpass in config.toml."
            )
        retry = False
        for attempt in range(ASKPASS_TRIES):
            ask = functools.partial(_ask_unlock, name, pid, user.askpass, retry)
            self._inflight += 1  # a pending dialog keeps the agent alive
            try:
                passphrase = await self._loop.run_in_executor(self._dialogs, ask)
            finally:
                self._inflight -= 1
                self._touch()
            if passphrase is None:
                raise BadPassphrase(
                    f"No passphrase was entered for key '{name}': "
                    "the prompt was cancelled or timed out."
                )
            try:
                await self.unlock(name, passphrase, options)
                return
            except BadPassphrase:
                if attempt == ASKPASS_TRIES - 1:
                    raise
            retry = True


def _ask_unlock(name: str, pid: int, program: str | None, retry: bool) -> str | None:
    # In the dialog thread: unlock_prompt reads /proc, the dialog waits for a person.
    prompt = askpass.unlock_prompt(name, pid)
    if retry:
        prompt += " (wrong passphrase: try again)"
    return askpass.ask_passphrase(prompt, config_askpass=program, key_name=name)


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
