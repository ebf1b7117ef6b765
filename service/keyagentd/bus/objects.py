"""The bus face of the keys: one exported object per stored key, and their signals.

`KeyObjects` is the `keys.KeyEvents` listener: a key added or removed exports or
unexports its object (and ObjectManager says so), a key locked or unlocked sends
PropertiesChanged. The dispatcher asks it which key a Key method's path names.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from keyagentd.bus.dispatch import Method
from keyagentd.bus.fixes import FixedMessageBus
from keyagentd.bus.key import KeyObject
from keyagentd.bus.manager import Manager
from keyagentd.cache import KeyCache
from keyagentd.keystore import KeyRecord


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

    # --- keys.KeyEvents ------------------------------------------------------------------

    def added(self, record: KeyRecord) -> None:
        self.export(record)
        self._manager.emit_properties_changed({"Keys": self.key_paths()})
        self._on_change()

    def removed(self, name: str) -> None:
        obj = self._objects.pop(name, None)
        if obj is not None:
            self._names.pop(obj.path, None)
            self._bus.unexport(obj.path)
        self._manager.emit_properties_changed({"Keys": self.key_paths()})
        self._on_change()

    def changed(self, name: str) -> None:
        obj = self._objects.get(name)
        if obj is not None:
            obj.emit_properties_changed(obj.state())
        self._on_change()
