"""The gate: every incoming method call passes here before dbus-fast dispatches it.

One user message handler on the bus does it all (on dbus-fast 5.2, user handlers run before
the built-in Introspectable/Properties/Peer/ObjectManager handling and see every message):

1. Only method calls are examined; replies and signals always pass (swallowing a reply
   would hang the agent's own calls). NameOwnerChanged signals drop cached verdicts.
2. Size: a call whose body is larger than the payload cap (plus room for the other
   arguments) is answered ``TooLarge`` before anything else looks at it.
3. ``Introspectable`` and ``Peer`` are open to all, and the bus daemon itself passes.
4. Caller: the sender's uid, as the bus daemon reports it, must be the agent's. Verdicts
   are cached per unique name. A sender seen for the first time has its calls queued
   while one credentials lookup runs; then they are replayed, in order, through the bus's
   `replay` (which meets the cached verdict this time). A failed lookup denies.
   Denied calls get AccessDenied, or nothing when the caller asked for no reply.
5. A known member of our interfaces called with the wrong signature gets InvalidArgs
   (dbus-fast would answer UnknownMethod).

Checking inside each method instead would be unsafe: property getters and
GetManagedObjects never reach our methods.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import Any

from dbus_fast import Message, MessageFlag, MessageType, Variant

from keyagent.protocol import RateLimited, TooLarge
from keyagentd.auth import Caller, caller_from_credentials
from keyagentd.bus.errors import access_denied, error_reply, invalid_args
from keyagentd.bus.fixes import FixedMessageBus

log = logging.getLogger(__name__)

BUS_DAEMON = "org.freedesktop.DBus"
BUS_PATH = "/org/freedesktop/DBus"
OPEN_INTERFACES = frozenset({"org.freedesktop.DBus.Introspectable", "org.freedesktop.DBus.Peer"})
NAME_LOST_RULE = (
    "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',"
    "path='/org/freedesktop/DBus',member='NameOwnerChanged'"
)
#: Room for the arguments besides the payload (recipients, options) in the gate's size check.
SIZE_SLACK = 1024 * 1024
MAX_QUEUED_PER_SENDER = 64
MAX_PENDING_SENDERS = 256

#: The checked caller of the call being dispatched (copied into each method's task).
CURRENT_CALLER: ContextVar[Caller | None] = ContextVar("keyagent_current_caller", default=None)


def current_sender() -> str:
    """The unique bus name of the caller whose method is running ("" outside a call)."""
    caller = CURRENT_CALLER.get()
    return caller.sender if caller is not None else ""


_CALL = MessageType.METHOD_CALL
_SIGNAL = MessageType.SIGNAL
_ERROR = MessageType.ERROR


def body_size(body: Any, limit: int) -> int:
    """The size of a message body's data, counted until it passes ``limit`` (then returned).

    dbus-fast has already unmarshalled the message; this walks it cheaply instead of
    re-marshalling, and stops as soon as the answer is known.
    """
    total = 0
    stack = [body]
    while stack:
        value = stack.pop()
        if isinstance(value, bytes | bytearray | str):
            total += len(value) + 4
        elif isinstance(value, list | tuple):
            total += 4
            stack.extend(value)
        elif isinstance(value, dict):
            total += 4
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, Variant):
            total += 4
            stack.append(value.value)
        else:
            total += 8
        if total > limit:
            break
    return total


def _no_reply(msg: Message) -> bool:
    return bool(msg.flags.value & MessageFlag.NO_REPLY_EXPECTED.value)


class Gate:
    """The caller check; install with `await gate.install()` before owning the bus name."""

    def __init__(
        self,
        bus: FixedMessageBus,
        *,
        uid: int,
        max_payload: int,
        signatures: Mapping[tuple[str, str], str],
        on_call: Callable[[Caller], None] = lambda caller: None,
        on_gone: Callable[[str], None] = lambda sender: None,
    ) -> None:
        self._bus = bus
        self._uid = uid
        # Decrypt takes armored ciphertext of a payload at the cap: up to 1.5 times it.
        self._size_limit = max_payload * 3 // 2 + SIZE_SLACK
        self._signatures = dict(signatures)
        self._interfaces = frozenset(iface for iface, _ in signatures)
        self._on_call = on_call
        self._on_gone = on_gone
        self._verdicts: dict[str, Caller] = {}
        self._queues: dict[str, list[Message]] = {}
        self._gone_while_pending: set[str] = set()

    async def install(self) -> None:
        self._bus.add_message_handler(self.handle)
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

    # --- the handler ---------------------------------------------------------------------

    def handle(self, msg: Message) -> Message | bool | None:
        """dbus-fast user message handler: None lets the call through, else it is answered."""
        mtype = msg.message_type
        if mtype is not _CALL:
            if mtype is _SIGNAL and msg.member == "NameOwnerChanged" and msg.sender == BUS_DAEMON:
                self._name_owner_changed(msg)
            return None
        if msg.body and body_size(msg.body, self._size_limit) > self._size_limit:
            log.info("refused %s.%s: message too large", msg.interface, msg.member)
            return self._answer(msg, TooLarge("The message is too large: use the Fd methods."))
        sender = msg.sender
        if msg.interface in OPEN_INTERFACES or sender == BUS_DAEMON:
            return None
        if not sender:
            return self._deny(msg, None)
        caller = self._verdicts.get(sender)
        if caller is None:
            return self._enqueue(sender, msg)
        if not caller.allowed(self._uid):
            return self._deny(msg, caller)
        expected = self._signatures.get((msg.interface or "", msg.member or ""))
        if expected is not None and expected != msg.signature:
            text = f"{msg.member} takes arguments '{expected}', not '{msg.signature}'."
            return True if _no_reply(msg) else invalid_args(msg, text)
        CURRENT_CALLER.set(caller)
        self._on_call(caller)
        return None

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
        self._verdicts[sender] = caller
        for queued in self._queues.pop(sender, []):
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
