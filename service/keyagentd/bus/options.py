"""Checking `a{sv}` option dictionaries against what a method accepts.

Unknown option names and values of the wrong D-Bus type are refused with InvalidArgs: a
typo must not silently fall back to a default (an Encrypt that forgot `armor`, an Unlock
that kept the default timeout).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dbus_fast import Variant

from keyagent.protocol import InvalidArgs

#: The D-Bus type of every option each method accepts.
#: `<secret>-fd` options (type `h`) carry a secret in a passed fd (secretfds.py).
CREATE_KEY = {"type": "s", "label": "s", "passphrase-fd": "h"}
IMPORT_KEY = {"label": "s", "identity-fd": "h", "passphrase-fd": "h"}
DELETE_KEY = {"passphrase": "s", "passphrase-fd": "h"}
ENCRYPT = {"armor": "b", "passphrase": "s", "passphrase-fd": "h"}
DECRYPT = {"key": "s", "passphrase": "s", "passphrase-fd": "h"}
UNLOCK = {"idle-timeout": "u", "max-timeout": "u"}
CHANGE_PASSPHRASE = {"old-passphrase-fd": "h", "new-passphrase-fd": "h"}
EXPORT = {"passphrase-fd": "h", "output-fd": "h"}


class Options:
    """Typed access to a checked option dictionary."""

    def __init__(self, values: dict[str, Any]) -> None:
        self._values = values

    def text(self, name: str, default: str | None = None) -> str | None:
        value = self._values.get(name, default)
        assert value is None or isinstance(value, str)
        return value

    def flag(self, name: str, default: bool = False) -> bool:
        value = self._values.get(name, default)
        assert isinstance(value, bool)
        return value

    def number(self, name: str) -> int | None:
        value = self._values.get(name)
        assert value is None or isinstance(value, int)
        return value

    def __contains__(self, name: str) -> bool:
        return name in self._values


def parse(options: Mapping[str, Variant], schema: Mapping[str, str]) -> Options:
    """Check ``options`` against ``schema`` (name -> D-Bus type); InvalidArgs if they differ."""
    values: dict[str, Any] = {}
    for name, variant in options.items():
        expected = schema.get(name)
        if expected is None:
            known = ", ".join(sorted(schema)) or "none"
            raise InvalidArgs(f"Unknown option {name!r} (known options: {known}).")
        if variant.signature != expected:
            raise InvalidArgs(
                f"Option {name!r} must have D-Bus type '{expected}', not '{variant.signature}'."
            )
        values[name] = variant.value
    return Options(values)
