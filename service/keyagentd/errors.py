"""The one table from the age engine's errors to the agent's wire errors.

The engine (age/) raises its own error types and knows no wire names; whatever reaches a
caller passes `wire_error` (bus/errors.py `convert` calls it, and the operation log uses
it for an operation's outcome). Core code that must tell "no match" from other failures
catches the engine's `NoMatchError` itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from keyagent.protocol import (
    BadPassphrase,
    Integrity,
    KeyAgentError,
    Malformed,
    NoMatch,
    TooLarge,
    Unsupported,
)
from keyagentd import age

#: Engine error -> wire error; the sentence carries over (none: the wire class's default).
AGE_TO_WIRE: Final[Mapping[type[age.AgeError], type[KeyAgentError]]] = {
    age.ParseError: Malformed,
    age.HeaderMacError: Integrity,
    age.PayloadError: Integrity,
    age.NoMatchError: NoMatch,
    age.UnsupportedError: Unsupported,
    age.PassphraseError: BadPassphrase,
    age.TooLargeError: TooLarge,
}


def wire_error(exc: BaseException) -> BaseException:
    """``exc`` as the caller should see it: an engine error becomes its wire error."""
    if isinstance(exc, age.AgeError):
        for cls in type(exc).__mro__:
            wire = AGE_TO_WIRE.get(cls)
            if wire is not None:
                return wire(exc.message)
        return Malformed(exc.message)
    return exc


__all__ = ["AGE_TO_WIRE", "wire_error"]
