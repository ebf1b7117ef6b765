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
from keyagentd.bus.fixes import ErrorWithData, error_message
from keyagentd.errors import wire_error

log = logging.getLogger(__name__)

INTERNAL_ERROR_TEXT = "The agent hit an internal error; see its log."


def to_dbus_error(exc: KeyAgentError) -> DBusError:
    """The D-Bus error for a protocol exception (its class's wire name, its one sentence,
    then any data, e.g. `Locked`'s candidate names)."""
    signature, body = exc.wire_args()
    return ErrorWithData(exc.wire_name(), signature, body)


def from_dbus_error(exc: DBusError) -> KeyAgentError:
    """The protocol exception for a D-Bus error (unknown names become ``Failed``)."""
    data = exc.reply.body[1:] if exc.reply is not None else []
    return error_from_wire(exc.type, exc.text, *data)


def error_reply(msg: Message, exc: KeyAgentError) -> Message:
    """An error reply to ``msg`` carrying ``exc``."""
    return error_message(msg, exc.wire_name(), *exc.wire_args())


def access_denied(msg: Message) -> Message:
    return Message.new_error(msg, ACCESS_DENIED, "Only the user running the agent may use it.")


def invalid_args(msg: Message, text: str) -> Message:
    return Message.new_error(msg, INVALID_ARGS, text)


def convert(exc: BaseException) -> DBusError:
    """Map any exception raised by a method to the error its caller sees."""
    exc = wire_error(exc)
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
