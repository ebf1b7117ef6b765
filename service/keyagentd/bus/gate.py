"""The gate: who is calling, and may they? Behind the dispatcher (dispatch.py).

1. Signals: NameOwnerChanged drops cached verdicts (`observe`).
2. ``Peer`` is open to all, and the bus daemon itself passes. ``Introspectable`` too, but
   a caller of another uid gets each node without its children (no key names).
3. Caller: the sender's uid, as the bus daemon reports it, must be the agent's. Verdicts
   are cached per unique name. A sender seen for the first time has its calls queued
   while one credentials lookup runs; then they are replayed, in order, through the bus's
   `replay` (which meets the cached verdict this time). A failed lookup denies.
   Denied calls get AccessDenied, or nothing when the caller asked for no reply.
   A sender that left before its credentials could be read is denied too, but its queued
   calls are first offered to ``on_orphan``: the dispatcher runs the ones that can only
   take access away (``LockAll``), so a fire-and-forget "lock everything" always locks.

Checking inside each method instead would be unsafe: property getters and
GetManagedObjects never reach our methods.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from dbus_fast import Message, MessageFlag, MessageType

from keyagent.protocol import RateLimited
from keyagentd.auth import Caller, caller_from_credentials
from keyagentd.bus.errors import access_denied, error_reply
from keyagentd.bus.fixes import FixedMessageBus, introspection_without_children

log = logging.getLogger(__name__)

BUS_DAEMON = "org.freedesktop.DBus"
BUS_PATH = "/org/freedesktop/DBus"
INTROSPECTABLE = "org.freedesktop.DBus.Introspectable"
PEER = "org.freedesktop.DBus.Peer"
NAME_LOST_RULE = (
    "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',"
    "path='/org/freedesktop/DBus',member='NameOwnerChanged'"
)
NAME_HAS_NO_OWNER = "org.freedesktop.DBus.Error.NameHasNoOwner"
MAX_QUEUED_PER_SENDER = 64
MAX_PENDING_SENDERS = 256

_CALL = MessageType.METHOD_CALL
_SIGNAL = MessageType.SIGNAL
_ERROR = MessageType.ERROR


def _no_reply(msg: Message) -> bool:
    return bool(msg.flags.value & MessageFlag.NO_REPLY_EXPECTED.value)


class Gate:
    """The caller check; install with `await gate.install()` before owning the bus name."""

    def __init__(
        self,
        bus: FixedMessageBus,
        *,
        uid: int,
        on_gone: Callable[[str], None] = lambda sender: None,
        on_orphan: Callable[[Message], bool] = lambda msg: False,
        on_known: Callable[[Caller], None] = lambda caller: None,
    ) -> None:
        """``on_known(caller)``: a sender's credentials are in, before its first call runs
        (the audit reads its executable then, while it is surely there to be read)."""
        self._bus = bus
        self._uid = uid
        self._on_gone = on_gone
        self._on_orphan = on_orphan
        self._on_known = on_known
        self._verdicts: dict[str, Caller] = {}
        self._queues: dict[str, list[Message]] = {}
        self._gone_while_pending: set[str] = set()

    async def install(self) -> None:
        await self._bus.call(
            Message(
                destination=BUS_DAEMON,
                path=BUS_PATH,
                interface=BUS_DAEMON,
                member="AddMatch",
                signature="s",
                body=[NAME_LOST_RULE],
            )
        )

    def cached(self, sender: str) -> Caller | None:
        return self._verdicts.get(sender)

    # --- the checks --------------------------------------------------------------------

    def observe(self, msg: Message) -> None:
        """A message that is not a call (replies and signals always pass on)."""
        if (
            msg.message_type is _SIGNAL
            and msg.member == "NameOwnerChanged"
            and msg.sender == BUS_DAEMON
        ):
            self._name_owner_changed(msg)

    def admit(self, msg: Message) -> Caller | Message | bool | None:
        """A method call's caller if they may call; else None (open to all: pass it on to
        dbus-fast), or the answer (an error reply; True: answered, or queued for replay)."""
        sender = msg.sender
        if msg.interface == PEER or sender == BUS_DAEMON:
            return None
        if not sender:
            return None if msg.interface == INTROSPECTABLE else self._deny(msg, None)
        caller = self._verdicts.get(sender)
        if caller is None:
            return self._enqueue(sender, msg)
        if not caller.allowed(self._uid):
            if msg.interface == INTROSPECTABLE and msg.member == "Introspect":
                return self._introspect_for_others(msg)
            return self._deny(msg, caller)
        return caller

    def _introspect_for_others(self, msg: Message) -> Message | bool:
        """Another uid may introspect, but sees no children: no key names."""
        if _no_reply(msg):
            return True
        xml = introspection_without_children(self._bus, msg.path or "/")
        return Message.new_method_return(msg, "s", [xml])

    def _answer(self, msg: Message, exc: Any) -> Message | bool:
        return True if _no_reply(msg) else error_reply(msg, exc)

    def _deny(self, msg: Message, caller: Caller | None) -> Message | bool:
        log.warning(
            "denied %s.%s from %s (uid %s, pid %s)",
            msg.interface,
            msg.member,
            msg.sender,
            caller.uid if caller else None,
            caller.pid if caller else None,
        )
        return True if _no_reply(msg) else access_denied(msg)

    def _enqueue(self, sender: str, msg: Message) -> Message | bool:
        queue = self._queues.get(sender)
        if queue is None:
            if len(self._queues) >= MAX_PENDING_SENDERS:
                return self._answer(msg, RateLimited("The agent is busy: retry shortly."))
            queue = self._queues[sender] = []
            self._lookup(sender, "GetConnectionCredentials")
        elif len(queue) >= MAX_QUEUED_PER_SENDER:
            return self._answer(msg, RateLimited("Too many calls at once: retry shortly."))
        queue.append(msg)
        self._bus.keep_fds()  # the replay owns them now
        return True

    # --- credentials lookups ---------------------------------------------------------------

    def _lookup(self, sender: str, member: str) -> None:
        def done(reply: Message | None, err: Exception | None) -> None:
            self._looked_up(sender, member, reply, err)

        self._bus.call_back(
            Message(
                destination=BUS_DAEMON,
                path=BUS_PATH,
                interface=BUS_DAEMON,
                member=member,
                signature="s",
                body=[sender],
            ),
            done,
        )

    def _looked_up(
        self, sender: str, member: str, reply: Message | None, err: Exception | None
    ) -> None:
        caller = Caller(sender, None, None)  # a failed lookup denies
        if err is None and reply is not None and reply.message_type is not _ERROR:
            if member == "GetConnectionCredentials":
                caller = caller_from_credentials(sender, reply.body[0])
            elif isinstance(reply.body[0], int):
                caller = Caller(sender, reply.body[0], None)
        elif (
            reply is not None
            and member == "GetConnectionCredentials"
            and reply.error_name == "org.freedesktop.DBus.Error.UnknownMethod"
        ):
            self._lookup(sender, "GetConnectionUnixUser")  # an old bus daemon
            return
        gone = reply is not None and reply.error_name == NAME_HAS_NO_OWNER
        self._verdicts[sender] = caller
        if caller.allowed(self._uid):
            self._on_known(caller)
        for queued in self._queues.pop(sender, []):
            # The sender left before its uid could be read: its calls are denied, except
            # those that can only take access away (LockAll from a hotkey's dbus-send).
            if not (gone and self._on_orphan(queued)):
                self._bus.replay(queued)
        if sender in self._gone_while_pending:
            self._gone_while_pending.discard(sender)
            self._verdicts.pop(sender, None)

    def _name_owner_changed(self, msg: Message) -> None:
        body = msg.body
        if len(body) != 3 or not isinstance(body[0], str) or not body[0].startswith(":"):
            return
        name, new_owner = body[0], body[2]
        if new_owner:
            return
        if name in self._queues:
            self._gone_while_pending.add(name)
        if self._verdicts.pop(name, None) is not None:
            self._on_gone(name)
