"""The agent's key objects: one exported bus object per stored key, and the timer that
locks keys whose timeout passed. A base of `Agent` (service.py), which owns the state."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, cast

from keyagent.protocol import NoSuchKey
from keyagentd.bus.fixes import FixedMessageBus
from keyagentd.bus.key import KeyObject
from keyagentd.bus.manager import Manager
from keyagentd.cache import KeyCache
from keyagentd.keystore import KeyRecord
from keyagentd.ratelimit import FailureLimiter
from keyagentd.recipients import VerifiedRecipients

if TYPE_CHECKING:
    from keyagentd.bus.service import Agent

# The agent's logger: these messages were always the service's.
log = logging.getLogger("keyagentd.bus.service")


class KeyRegistry:
    """Adding, removing and re-announcing key objects, and the expiry timer."""

    # Set up by Agent.__init__ / Agent.start.
    cache: KeyCache
    limiter: FailureLimiter
    manager: Manager
    records: dict[str, KeyRecord]
    verified: VerifiedRecipients
    keys: dict[str, KeyObject]
    _bus: FixedMessageBus | None
    _loop: asyncio.AbstractEventLoop | None
    _expiry_handle: asyncio.TimerHandle | None

    def _touch(self) -> None:
        """Note activity (re-arms the idle exit): the agent's."""
        raise NotImplementedError

    def _export_key(self, record: KeyRecord) -> KeyObject:
        assert self._bus is not None
        obj = KeyObject(cast("Agent", self), record)  # only ever an Agent
        self._bus.export(obj.path, obj)
        self.keys[record.name] = obj
        self.records[record.name] = record
        return obj

    def key_paths(self) -> list[str]:
        return [self.keys[name].path for name in sorted(self.keys)]

    def require(self, name: str) -> KeyRecord:
        record = self.records.get(name)
        if record is None:
            raise NoSuchKey(f"There is no key named {name!r}.")
        return record

    def key_added(self, record: KeyRecord) -> str:
        obj = self._export_key(record)
        self.verified.mark(record.name)  # created or imported here: derived from the identity
        self._keys_changed()
        return obj.path

    def key_removed(self, name: str) -> None:
        assert self._bus is not None
        self.cache.forget(name)
        self.limiter.forget(name)
        self.verified.forget(name)
        self.records.pop(name, None)
        obj = self.keys.pop(name, None)
        if obj is not None:
            self._bus.unexport(obj.path)
        self._keys_changed()
        self._schedule_expiry()
        self._touch()

    def _keys_changed(self) -> None:
        """Tell watchers `Keys` changed without its value: sending the whole list with each
        CreateKey made creating n keys cost O(n²). Watchers Get it (or follow the
        ObjectManager's InterfacesAdded/Removed, which name the one key)."""
        self.manager.emit_properties_changed({}, ["Keys"])

    def lock_all(self, reason: str = "LockAll") -> list[str]:
        """Wipe every unlocked key (LockAll, or a desktop lock trigger); the names locked."""
        names = self.cache.lock_all()
        if names:
            log.info("locked %s (%s)", ", ".join(names), reason)
        for name in names:
            self.key_changed(name)
        return names

    def key_changed(self, name: str) -> None:
        """A key locked or unlocked: tell watchers, re-arm the expiry and idle timers."""
        obj = self.keys.get(name)
        if obj is not None:
            obj.emit_properties_changed(obj.state())
        self._schedule_expiry()
        self._touch()

    def _schedule_expiry(self) -> None:
        if self._loop is None:
            return
        if self._expiry_handle is not None:
            self._expiry_handle.cancel()
            self._expiry_handle = None
        deadline = self.cache.next_deadline()  # time.monotonic(), the loop's clock too
        if deadline is not None:
            self._expiry_handle = self._loop.call_at(deadline + 0.01, self._expire)

    def _expire(self) -> None:
        self._expiry_handle = None
        for name in self.cache.expire_due():
            log.info("key %s locked: its timeout passed", name)
            obj = self.keys.get(name)
            if obj is not None:
                obj.emit_properties_changed(obj.state())
            self._touch()
        self._schedule_expiry()
