"""The manager object: /org/example/KeyAgent, interface org.example.KeyAgent.

Properties and the AccessLog signal only: its methods are answered by the dispatcher
(dispatch.py, from the table in methods.py); `introspect` lists them from that table.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Final

from dbus_fast import introspection as intr
from dbus_fast.annotations import DBusSignature, DBusStr
from dbus_fast.constants import ArgDirection, PropertyAccess
from dbus_fast.service import ServiceInterface, dbus_property, dbus_signal

import keyagentd
from keyagent.protocol import MANAGER_INTERFACE
from keyagentd.bus.dbustypes import DBusPathList
from keyagentd.bus.dispatch import Method


def with_methods(base: intr.Interface, methods: Sequence[Method], interface: str) -> intr.Interface:
    """``base`` (properties and signals, from dbus-fast) plus the table's methods of
    ``interface``, with every argument named as the contract names it."""

    def args(pairs: Sequence[tuple[str, str]], direction: ArgDirection) -> list[intr.Arg]:
        return [intr.Arg(sig, direction, name) for name, sig in pairs]

    for m in (m for m in methods if m.interface == interface):
        base.methods.append(
            intr.Method(
                m.member, args(m.in_args, ArgDirection.IN), args(m.out_args, ArgDirection.OUT)
            )
        )
    return base


EMITS_CHANGED: Final = "org.freedesktop.DBus.Property.EmitsChangedSignal"


def mark_constants(base: intr.Interface, constants: frozenset[str]) -> intr.Interface:
    """Annotate the properties that never change as such (the default is "true")."""
    for prop in base.properties:
        if prop.name in constants:
            prop.annotations[EMITS_CHANGED] = "const"
    return base


class Manager(ServiceInterface):
    def __init__(
        self, key_paths: Callable[[], list[str]], methods: Callable[[], Sequence[Method]]
    ) -> None:
        super().__init__(MANAGER_INTERFACE)
        self._key_paths = key_paths
        self._methods = methods

    def introspect(self) -> intr.Interface:
        base = with_methods(super().introspect(), self._methods(), MANAGER_INTERFACE)
        base = mark_constants(base, frozenset({"Version"}))
        for prop in base.properties:
            if prop.name == "Keys":  # objects.py sends it as invalidated, without its value
                prop.annotations[EMITS_CHANGED] = "invalidates"
        return base

    # --- properties ----------------------------------------------------------------------

    @dbus_property(access=PropertyAccess.READ)
    def Keys(self) -> DBusPathList:
        return self._key_paths()

    @dbus_property(access=PropertyAccess.READ)
    def Version(self) -> DBusStr:
        return keyagentd.__version__

    # --- signals -------------------------------------------------------------------------

    @dbus_signal()
    def AccessLog(
        self, operation: str, key: str, pid: int, executable: str, result: str
    ) -> Annotated[tuple[str, str, int, str, str], DBusSignature("ssuss")]:
        """Declared for introspection; the agent sends it (service.py `_send_access`)."""
        return (operation, key, pid, executable, result)
