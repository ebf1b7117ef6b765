"""The one place where the client turns an error reply into an exception: the agent's own
errors (org.example.KeyAgent.Error.*) and the bus daemon's (org.freedesktop.DBus.Error.*).

`error_for` is the whole mapping; the connection calls it for every error reply it gets, with
what it knows about the call (starting the agent, or addressing a key).
"""

from __future__ import annotations

from keyagent.protocol import (
    ACCESS_DENIED,
    BUS_DAEMON,
    ERRORS,
    AccessDenied,
    Failed,
    KeyAgentError,
    Locked,
    NoSuchKey,
)

TYPE_CHECKING = False  # `typing` costs milliseconds at every start of the command
if TYPE_CHECKING:
    from typing import Any, Final

_DBUS_ERR: Final = "org.freedesktop.DBus.Error."

#: Bus errors that mean "nobody is there to answer" (exit code 3 in the command).
UNAVAILABLE_ERRORS: Final = frozenset(
    _DBUS_ERR + n
    for n in (
        "ServiceUnknown",
        "NameHasNoOwner",
        "NoReply",
        "Disconnected",
        "TimedOut",
        "Timeout",
        "NoServer",
    )
)
#: A call to a unique name that has gone away was never delivered: safe to resolve and resend.
NOT_DELIVERED: Final = frozenset({_DBUS_ERR + "ServiceUnknown", _DBUS_ERR + "NameHasNoOwner"})
_NO_OBJECT: Final = frozenset({_DBUS_ERR + "UnknownObject", _DBUS_ERR + "UnknownMethod"})


class AgentUnavailable(KeyAgentError):
    """The session bus or the agent cannot be reached, or the agent did not answer in time."""

    short_name = "AgentUnavailable"

    @classmethod
    def default_message(cls) -> str:
        return "The key agent is not available."


class AgentStartFailed(AgentUnavailable):
    """The agent was started and said why it could not run (keyagent.startnote)."""


class NotYourAgent(AccessDenied):
    """The service on this bus runs as another uid: the client refused to send it anything."""


class PolicyRefused(AccessDenied):
    """The agent refused the call: a key's policy (allowed_executables, confirm) or a check
    of the passed file descriptors."""


class BusRefused(AccessDenied):
    """The bus daemon refused to deliver the call (its own policy)."""


class BusError(Exception):
    """An error reply as it came: its name, its sender and its whole body."""

    def __init__(self, name: str, sender: str = "", body: tuple[Any, ...] = ()) -> None:
        super().__init__(name)
        self.name = name
        self.sender = sender
        self.body = body

    @property
    def text(self) -> str:
        return self.body[0] if self.body and isinstance(self.body[0], str) else ""


def error_for(
    err: BusError, *, starting: bool = False, key: str | None = None, start_note: str | None = None
) -> KeyAgentError:
    """The exception for an error reply.

    ``starting``: the reply answers StartServiceByName; ``key``: the call addressed this key's
    object (a missing object is then a missing key); ``start_note``: the sentence the agent
    left when it failed to start (keyagent.startnote), which names the cause.
    """
    name, text = err.name, err.text
    if starting and name == _DBUS_ERR + "ServiceUnknown":
        return AgentUnavailable(f"The key agent is not installed on this bus ({text})")
    if starting and (name.startswith(_DBUS_ERR + "Spawn.") or name in UNAVAILABLE_ERRORS):
        if start_note is not None:
            return AgentStartFailed(f"The key agent failed to start: {start_note}")
        return AgentUnavailable(f"The key agent failed to start: {text}")
    if name in UNAVAILABLE_ERRORS or name.startswith(_DBUS_ERR + "Spawn."):
        return AgentUnavailable(text or AgentUnavailable.default_message())
    if key is not None and name in _NO_OBJECT:
        return NoSuchKey(f"There is no key named '{key}'.")
    if name == ACCESS_DENIED:
        cls = BusRefused if err.sender == BUS_DAEMON else PolicyRefused
        return cls(text or "Access denied.")
    if name == Locked.wire_name():
        return Locked(text, _names(err.body))
    known = ERRORS.get(name)
    if known is None:
        return Failed(text or name)
    return known(text)


def _names(body: tuple[Any, ...]) -> tuple[str, ...]:
    """Locked's candidate keys: its second argument (``as``) when the agent sends one; older
    agents name them only in the sentence, which `Locked` then reads."""
    if len(body) > 1 and isinstance(body[1], list) and all(isinstance(n, str) for n in body[1]):
        return tuple(body[1])
    return ()
