"""The bus face of the keys: one exported object per stored key, and their signals.

`KeyObjects` is the `keys.KeyEvents` listener: a key added or removed exports or
unexports its object (and ObjectManager says so), a key locked or unlocked sends
PropertiesChanged. The dispatcher asks it which key a Key method's path names.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Final

from keyagentd.bus.dispatch import Method
from keyagentd.bus.fixes import FixedMessageBus
from keyagentd.bus.key import KeyObject
from keyagentd.bus.manager import Manager
from keyagentd.cache import KeyCache
from keyagentd.keystore import KeyRecord

#: How long uses of a key are gathered into one UnlockedUntil PropertiesChanged (seconds).
USE_COALESCE: Final = 1.0


class KeyObjects:
    def __init__(
        self,
        bus: FixedMessageBus,
        manager: Manager,
        cache: KeyCache,
        methods: Callable[[], Sequence[Method]],
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self._bus = bus
        self._manager = manager
        self._cache = cache
        self._methods = methods
        self._on_change = on_change
        self._objects: dict[str, KeyObject] = {}
        self._names: dict[str, str] = {}  # object path -> key name
        self._used: set[str] = set()  # keys whose UnlockedUntil moved, signal pending
        self._announced: dict[str, int] = {}  # the UnlockedUntil last signalled

    def export(self, record: KeyRecord) -> KeyObject:
        obj = KeyObject(self._cache, record, self._methods)
        self._bus.export(obj.path, obj)
        self._objects[record.name] = obj
        self._names[obj.path] = record.name
        return obj

    def target(self, path: str) -> list[str] | None:
        """The dispatcher's target for Key methods: [name] of the key at ``path``."""
        name = self._names.get(path)
        return None if name is None else [name]

    def key_paths(self) -> list[str]:
        return [self._objects[name].path for name in sorted(self._objects)]

    def _keys_changed(self) -> None:
        """Tell watchers `Keys` changed without its value: sending the whole list with each
        CreateKey made creating n keys cost O(n²). Watchers Get it (or follow the
        ObjectManager's InterfacesAdded/Removed, which name the one key)."""
        self._manager.emit_properties_changed({}, ["Keys"])

    # --- keys.KeyEvents ------------------------------------------------------------------

    def added(self, record: KeyRecord) -> None:
        self.export(record)
        self._keys_changed()
        self._on_change()

    def removed(self, name: str) -> None:
        obj = self._objects.pop(name, None)
        self._used.discard(name)
        self._announced.pop(name, None)
        if obj is not None:
            self._names.pop(obj.path, None)
            self._bus.unexport(obj.path)
        self._keys_changed()
        self._on_change()

    def changed(self, name: str) -> None:
        self._used.discard(name)  # the full state goes out now
        obj = self._objects.get(name)
        if obj is not None:
            obj.invalidate()
            state = obj.state()
            self._announced[name] = self._cache.unlocked_until(name)
            obj.emit_properties_changed(state)
        self._on_change()

    def used(self, name: str) -> None:
        """A use moved ``name``'s UnlockedUntil: one PropertiesChanged per key per
        `USE_COALESCE` seconds, however many uses (a burst of Decrypts sends one)."""
        obj = self._objects.get(name)
        if obj is None:
            return
        obj.invalidate()  # UnlockedUntil may have moved
        if name in self._used:
            return
        if self._cache.unlocked_until(name) == self._announced.get(name):
            return  # pending already, or not moved (the maximum lifetime bounds it)
        self._used.add(name)
        asyncio.get_running_loop().call_later(USE_COALESCE, self._send_used, name)

    def _send_used(self, name: str) -> None:
        if name not in self._used:
            return  # sent meanwhile (locked, unlocked) or the key went away
        self._used.discard(name)
        obj = self._objects.get(name)
        if obj is not None:
            until = self._announced[name] = self._cache.unlocked_until(name)
            obj.emit_properties_changed({"UnlockedUntil": until})
