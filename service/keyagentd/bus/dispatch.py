"""The dispatcher: every method call to the agent's own interfaces is answered here.

One function, in the style of ssh-agent's ``process_message`` (`Dispatcher.handle`):

1. size: a body larger than the payload cap (plus room for the other arguments) is
   answered ``TooLarge`` before anything else looks at it;
2. caller: the gate (gate.py) says who is calling and whether they may; a sender seen for
   the first time is queued there and replayed once its credentials are known;
3. lookup by (interface, member), then the signature (``InvalidArgs`` if it differs);
4. ``handler(caller, args, fds)``: the caller explicit, the call's fds in one `ReceivedFds`
   (closed when the handler ends, unless it took them); an `eager` handler's coroutine runs
   at once up to its first wait (a small Decrypt never waits: no task, no loop turns);
5. the reply (or the error reply: protocol errors by name, anything else ``Failed``);
6. the audit record: the AccessLog signal right after the reply, then the log line.

Adding a method is one `Method` entry in the table (methods.py) and a core function.
Calls it does not own (Properties, Introspectable, Peer, ObjectManager, unknown members)
go on to dbus-fast's own handling once the gate let them through.
"""

from __future__ import annotations

import asyncio
import logging
import types
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, cast

from dbus_fast import Message, MessageFlag, MessageType, Variant

from keyagent.protocol import Failed, InvalidArgs, KeyAgentError, TooLarge
from keyagentd.audit import Audit
from keyagentd.auth import Caller
from keyagentd.bus.errors import INTERNAL_ERROR_TEXT, error_reply
from keyagentd.bus.fixes import FixedMessageBus
from keyagentd.bus.gate import Gate
from keyagentd.errors import wire_error
from keyagentd.fds import ReceivedFds
from keyagentd.policy import AccessRecord
from keyagentd.secrets import wipe

log = logging.getLogger(__name__)

#: Room for the arguments besides the payload (recipients, options) in the size check.
SIZE_SLACK: Final = 1024 * 1024


@dataclass(frozen=True)
class Reply:
    """What a handler answers: the reply body, and the key it used (for the audit)."""

    body: Sequence[Any] = ()
    key: str | None = None
    #: A buffer of the agent's own in the body (plaintext), wiped once the reply is sent.
    wipe: bytearray | None = None


#: ``handler(caller, args, fds)``; key methods get the key's name as ``args[0]``.
Handler = Callable[[Caller, list[Any], ReceivedFds], "Reply | Awaitable[Reply]"]


def _no_key(args: Sequence[Any]) -> str:
    return ""


@dataclass(frozen=True)
class Method:
    """One entry of the method table: the contract (names and types, as in the XML) and
    the code. ``audit_key`` names the key for the audit before the handler runs (a
    failed call still says which key it was about); the handler's `Reply.key` wins."""

    interface: str
    member: str
    in_args: tuple[tuple[str, str], ...]
    out_args: tuple[tuple[str, str], ...]
    handler: Handler
    audit_key: Callable[[Sequence[Any]], str] = field(default=_no_key)
    #: Runs even when its sender left before the gate could read its uid: only for calls
    #: that can take access away and never grant or reveal anything (LockAll).
    orphan_safe: bool = False
    #: The handler's coroutine runs at once, up to its first wait, outside any task (a small
    #: Decrypt never waits: no task, no loop turns); what needs a task (``asyncio.timeout``)
    #: must come after an ``await in_task()``.
    eager: bool = False
    #: Joined once here: every call compares its signature and builds its reply with them.
    in_signature: str = field(init=False)
    out_signature: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "in_signature", "".join(t for _, t in self.in_args))
        object.__setattr__(self, "out_signature", "".join(t for _, t in self.out_args))


#: Resolves a call's object path to the handler's leading arguments (None: no such object).
Target = Callable[[str], list[Any] | None]


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


def no_reply(msg: Message) -> bool:
    return bool(msg.flags.value & MessageFlag.NO_REPLY_EXPECTED.value)


class Dispatcher:
    """Owns the bus's method calls; install with `bus.add_message_handler(d.handle)`."""

    def __init__(
        self,
        bus: FixedMessageBus,
        gate: Gate,
        audit: Audit,
        *,
        max_payload: int,
        methods: Iterable[Method],
        targets: dict[str, Target],
        on_call: Callable[[], None] = lambda: None,
        announce: Callable[[AccessRecord], None] = lambda record: None,
    ) -> None:
        self._bus = bus
        self._gate = gate
        self._audit = audit
        # Decrypt takes armored ciphertext of a payload at the cap: up to 1.5 times it.
        self._size_limit = max_payload * 3 // 2 + SIZE_SLACK
        self._methods = {(m.interface, m.member): m for m in methods}
        self._targets = targets
        self._on_call = on_call
        self._announce = announce
        self._tasks: set[asyncio.Task[Reply]] = set()

    @property
    def running(self) -> int:
        """Calls whose handler has not finished."""
        return len(self._tasks)

    def handle(self, msg: Message) -> Message | bool | None:
        """dbus-fast user message handler: None passes the message on, else it is answered."""
        if msg.message_type is not MessageType.METHOD_CALL:
            self._gate.observe(msg)
            return None
        if msg.body and body_size(msg.body, self._size_limit) > self._size_limit:
            log.info("refused %s.%s: message too large", msg.interface, msg.member)
            return self._answer(msg, TooLarge("The message is too large: use the Fd methods."))
        caller = self._gate.admit(msg)
        if not isinstance(caller, Caller):
            return caller  # answered (denied, queued) or open to all (None)
        self._on_call()  # any admitted call is activity (a property read too)
        method = self._methods.get((msg.interface or "", msg.member or ""))
        target = self._targets.get(method.interface) if method is not None else None
        lead = target(msg.path or "") if target is not None else None
        if method is None or lead is None:
            return None  # dbus-fast's: Properties, ObjectManager, unknown object or method
        if msg.signature != method.in_signature:
            text = f"{msg.member} takes arguments '{method.in_signature}', not '{msg.signature}'."
            return self._answer(msg, InvalidArgs(text))
        self._bus.keep_fds()  # from here `fds` owns them
        self._run(method, caller, msg, [*lead, *msg.body], ReceivedFds(msg.unix_fds))
        return True

    def orphan(self, msg: Message) -> bool:
        """The gate's ``on_orphan``: run ``msg`` if its method is `Method.orphan_safe`
        (its sender is gone, its uid unknown); True if it was run."""
        method = self._methods.get((msg.interface or "", msg.member or ""))
        if method is None or not method.orphan_safe or msg.signature != method.in_signature:
            return False
        target = self._targets.get(method.interface)
        lead = target(msg.path or "") if target is not None else None
        if lead is None:
            return False
        log.info("%s from %s, which left before its uid was known", msg.member, msg.sender)
        self._bus.keep_fds()
        caller = Caller(msg.sender or "", None, None)
        self._run(method, caller, msg, [*lead, *msg.body], ReceivedFds(msg.unix_fds))
        return True

    def _run(
        self, method: Method, caller: Caller, msg: Message, args: list[Any], fds: ReceivedFds
    ) -> None:
        key = method.audit_key(args)
        try:
            result = method.handler(caller, args, fds)
            if method.eager and isinstance(result, types.CoroutineType):
                result = _started(result)
        except (Exception, asyncio.CancelledError) as exc:
            fds.close()
            self._finish(method, caller, msg, key, _cancelled(exc))
            return
        if isinstance(result, Reply):
            fds.close()
            self._finish(method, caller, msg, key, result)
            return
        task = asyncio.ensure_future(result)
        self._tasks.add(task)

        def done(t: asyncio.Task[Reply]) -> None:
            self._tasks.discard(t)
            fds.close()
            if t.cancelled():
                self._finish(method, caller, msg, key, _cancelled(asyncio.CancelledError()))
            else:
                exc = t.exception()
                self._finish(method, caller, msg, key, exc if exc is not None else t.result())

        task.add_done_callback(done)

    def _finish(
        self,
        method: Method,
        caller: Caller,
        msg: Message,
        key: str,
        outcome: Reply | BaseException,
    ) -> None:
        """Send the reply, then the AccessLog signal, then write the log line."""
        if isinstance(outcome, Reply):
            reply = Message.new_method_return(msg, method.out_signature, list(outcome.body))
            key, short = outcome.key if outcome.key is not None else key, "ok"
        else:
            exc = wire_error(outcome)
            if isinstance(exc, KeyAgentError):
                short, key = exc.short_name, exc.key or key
            else:
                log.error("Internal error", exc_info=outcome)
                exc, short = Failed(INTERNAL_ERROR_TEXT), "error"
            reply = error_reply(msg, exc)
        try:
            if not no_reply(msg):
                self._bus.send(reply)  # marshalled here (fixes.py wipes its own copy once sent)
        finally:
            if isinstance(outcome, Reply) and outcome.wipe is not None:
                wipe(outcome.wipe)
        record = self._audit.access(method.member, key, caller, short)
        try:
            self._announce(record)  # the AccessLog signal, after the reply
        except Exception:  # a log signal must never break an operation or the loop
            log.exception("could not send the AccessLog signal")
        self._audit.log(record, short)  # once both are on their way: off the reply's path

    def _answer(self, msg: Message, exc: KeyAgentError) -> Message | bool:
        return True if no_reply(msg) else error_reply(msg, exc)


@types.coroutine
def in_task() -> Generator[None, None, None]:
    """``await in_task()``: makes sure what follows runs in a task (`Method.eager` handlers
    start outside one; a bare yield hands the rest to a task, one loop turn later)."""
    if asyncio.current_task() is None:
        yield


def _started(coro: Coroutine[Any, Any, Reply]) -> Reply | Awaitable[Reply]:
    """Run a handler coroutine here up to its first wait: an inline Decrypt/Encrypt never
    waits, and is answered without a task and the two loop turns one costs. Raises what
    the handler raised; one that waits goes on in a task (`_resumed`)."""
    try:
        waited_on = coro.send(None)
    except StopIteration as stop:
        reply: Reply = stop.value  # a typed local, not cast(): one call fewer per Decrypt
        return reply
    return _resumed(coro, waited_on)


def _cancelled(exc: BaseException) -> BaseException:
    """What a call's caller is told when its handler was cancelled (else ``exc`` itself)."""
    if isinstance(exc, asyncio.CancelledError):
        return Failed("The operation was cancelled.")
    return exc


async def _resumed(coro: Coroutine[Any, Any, Reply], waited_on: Any) -> Reply:
    """The rest of a handler coroutine that `Dispatcher._run` started and that now waits on
    ``waited_on``, as a coroutine a task can run (the task waits on it, then goes on)."""
    return await _Resume(coro, waited_on)


class _Resume:
    """Awaiting it hands ``waited_on`` to the task, then relays between the task and
    ``coro`` as ``yield from coro`` would (values sent, exceptions thrown, the result)."""

    __slots__ = ("_coro", "_waited_on")

    def __init__(self, coro: Coroutine[Any, Any, Reply], waited_on: Any) -> None:
        self._coro, self._waited_on = coro, waited_on

    def __await__(self) -> Generator[Any, Any, Reply]:
        coro, value = self._coro, self._waited_on
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # thrown in by the task: a cancellation
                try:
                    value = coro.throw(exc)
                except StopIteration as stop:
                    return cast(Reply, stop.value)
            else:
                try:
                    value = coro.send(sent)
                except StopIteration as stop:
                    return cast(Reply, stop.value)
