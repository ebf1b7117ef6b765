"""The one place where protocol exceptions become D-Bus errors (and back, for our own calls).

Methods raise `keyagent.protocol` exceptions; `convert` turns them into `DBusError`s with the
wire name of their class. Anything unexpected is logged here with its traceback and reaches
the caller only as a one-sentence `Failed`: never a traceback, never key material.
"""

from __future__ import annotations

import logging

from dbus_fast import DBusError, Message

from keyagent.protocol import (
    ACCESS_DENIED,
    INVALID_ARGS,
    Failed,
    InvalidArgs,
    KeyAgentError,
    error_from_wire,
)

log = logging.getLogger(__name__)

INTERNAL_ERROR_TEXT = "The agent hit an internal error; see its log."


def to_dbus_error(exc: KeyAgentError) -> DBusError:
    """The D-Bus error for a protocol exception (its class's wire name, its one sentence)."""
    return DBusError(exc.wire_name(), exc.message)


def from_dbus_error(exc: DBusError) -> KeyAgentError:
    """The protocol exception for a D-Bus error (unknown names become ``Failed``)."""
    return error_from_wire(exc.type, exc.text)


def error_reply(msg: Message, exc: KeyAgentError) -> Message:
    """An error reply to ``msg`` carrying ``exc``."""
    return Message.new_error(msg, exc.wire_name(), exc.message)


def access_denied(msg: Message) -> Message:
    return Message.new_error(msg, ACCESS_DENIED, "Only the user running the agent may use it.")


def invalid_args(msg: Message, text: str) -> Message:
    return Message.new_error(msg, INVALID_ARGS, text)


def convert(exc: BaseException) -> DBusError:
    """Map any exception raised by a method to the error its caller sees."""
    if isinstance(exc, DBusError):
        return exc
    if isinstance(exc, KeyAgentError):
        return to_dbus_error(exc)
    log.error("Internal error", exc_info=exc)
    return to_dbus_error(Failed(INTERNAL_ERROR_TEXT))


__all__ = [
    "INTERNAL_ERROR_TEXT",
    "InvalidArgs",
    "access_denied",
    "convert",
    "error_reply",
    "from_dbus_error",
    "invalid_args",
    "to_dbus_error",
]
