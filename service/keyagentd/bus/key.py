"""Key objects: /org/example/KeyAgent/keys/<name>, interface org.example.KeyAgent.Key."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

from dbus_fast import Variant
from dbus_fast import introspection as intr
from dbus_fast.annotations import DBusBool, DBusStr, DBusUInt32, DBusUInt64
from dbus_fast.constants import PropertyAccess
from dbus_fast.service import ServiceInterface, dbus_property

from keyagent.protocol import KEY_INTERFACE, key_path
from keyagentd.bus.dispatch import Method
from keyagentd.bus.manager import mark_constants, with_methods
from keyagentd.cache import KeyCache
from keyagentd.keystore import KeyRecord

#: Properties fixed for the object's life: introspection says so (EmitsChangedSignal=const).
CONSTANT_PROPERTIES: Final = frozenset({"Name", "Label", "Type", "Recipient", "Created"})
#: The D-Bus types of the properties `state` returns.
SIGNATURES: Final = {"Locked": "b", "UnlockedUntil": "t", "IdleTimeout": "u", "MaxTimeout": "u"}


class KeyObject(ServiceInterface):
    """One stored key: properties only, reflecting the cache. Its methods are answered by
    the dispatcher (dispatch.py, table in methods.py); `introspect` lists them."""

    def __init__(
        self, cache: KeyCache, record: KeyRecord, methods: Callable[[], Sequence[Method]]
    ) -> None:
        super().__init__(KEY_INTERFACE)
        self.cache = cache
        self.record = record
        self.key_name = record.name
        self.path = key_path(record.name)
        self._methods = methods
        # Every property as a Variant, for GetManagedObjects (fixes.py): built once and
        # dropped by `invalidate` whenever the key locks, unlocks or is used.
        self._values: dict[str, Variant] | None = None

    def introspect(self) -> intr.Interface:
        base = with_methods(super().introspect(), self._methods(), KEY_INTERFACE)
        return mark_constants(base, CONSTANT_PROPERTIES)

    # --- properties ----------------------------------------------------------------------

    @dbus_property(access=PropertyAccess.READ)
    def Name(self) -> DBusStr:
        return self.record.name

    @dbus_property(access=PropertyAccess.READ)
    def Label(self) -> DBusStr:
        return self.record.label

    @dbus_property(access=PropertyAccess.READ)
    def Type(self) -> DBusStr:
        return self.record.key_type

    @dbus_property(access=PropertyAccess.READ)
    def Recipient(self) -> DBusStr:
        return self.record.recipient

    @dbus_property(access=PropertyAccess.READ)
    def Created(self) -> DBusUInt64:
        return max(0, self.record.created)

    @dbus_property(access=PropertyAccess.READ)
    def Locked(self) -> DBusBool:
        return not self.cache.is_unlocked(self.key_name)

    @dbus_property(access=PropertyAccess.READ)
    def UnlockedUntil(self) -> DBusUInt64:
        return self.cache.unlocked_until(self.key_name)

    @dbus_property(access=PropertyAccess.READ)
    def IdleTimeout(self) -> DBusUInt32:
        return self.cache.timeouts(self.key_name)[0]

    @dbus_property(access=PropertyAccess.READ)
    def MaxTimeout(self) -> DBusUInt32:
        return self.cache.timeouts(self.key_name)[1]

    def invalidate(self) -> None:
        self._values = None

    def property_values(self) -> dict[str, Variant]:
        """All properties, as GetAll answers them (cached until `invalidate`)."""
        values = self._values
        if values is not None and (values["Locked"].value or self.cache.is_unlocked(self.key_name)):
            return values  # an expiry the timer has not reported yet must not show unlocked
        record = self.record
        values = {
            "Name": Variant("s", record.name),
            "Label": Variant("s", record.label),
            "Type": Variant("s", record.key_type),
            "Recipient": Variant("s", record.recipient),
            "Created": Variant("t", max(0, record.created)),
        }
        values.update((k, Variant(SIGNATURES[k], v)) for k, v in self.state().items())
        self._values = values
        return values

    def state(self) -> dict[str, object]:
        """The properties that change when the key locks or unlocks."""
        cache = self.cache
        info = cache.status(self.key_name)  # one look: the four agree with each other
        if info is None:
            return {
                "Locked": True,
                "UnlockedUntil": 0,
                "IdleTimeout": cache.default_idle_timeout,
                "MaxTimeout": cache.default_max_timeout,
            }
        return {
            "Locked": False,
            "UnlockedUntil": int(info.expires_at_wall),
            "IdleTimeout": info.idle_timeout,
            "MaxTimeout": info.max_timeout,
        }
