"""The dispatcher on its own (bus/dispatch.py): a table of two test methods on a real
private bus, called by a real dbus-fast client; no agent.

Each step of the pipeline is visible: size, caller, lookup and signature, the handler with
the explicit caller and the call's fds, the reply, and the audit record after it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from conftest import PrivateBus
from keyagent.protocol import INVALID_ARGS, NoSuchKey, TooLarge
from keyagentd.audit import Audit, ExecutableCache
from keyagentd.auth import Caller
from keyagentd.bus.dispatch import SIZE_SLACK, Dispatcher, Method, Reply, in_task
from keyagentd.bus.fixes import FixedMessageBus
from keyagentd.bus.gate import Gate
from keyagentd.fds import ReceivedFds
from keyagentd.policy import AccessRecord

IFACE = "test.Dispatch"
PATH = "/test"


class Recorder:
    """The handlers, and what they and the audit saw, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.kept: list[int] = []

    def echo(self, caller: Caller, args: list[Any], fds: ReceivedFds) -> Reply:
        self.events.append(("handler", (caller.sender, caller.uid, list(args), len(fds))))
        if len(fds):
            self.events.append(("extra fd", fds.get(0)))
        if args[0] == "missing":
            raise NoSuchKey("There is no key named 'missing'.")
        if args[0] == "boom":
            raise RuntimeError("a bug with a secret in it")
        return Reply([args[0].upper()], key="k1")

    async def keep(self, caller: Caller, args: list[Any], fds: ReceivedFds) -> Reply:
        await asyncio.sleep(0)
        self.kept.append(fds.take(args[0]))
        return Reply([len(fds)])

    async def eager(self, caller: Caller, args: list[Any], fds: ReceivedFds) -> Reply:
        """``Method.eager``: where each part of it ran (None: outside any task)."""
        (how,) = args
        self.events.append(("started in", asyncio.current_task()))
        if how == "raise":
            raise NoSuchKey("There is no key named 'x'.")
        if how == "wait":
            fut = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_soon(fut.set_exception, OSError("thrown in"))
            try:
                await fut  # the exception reaches the handler through the task
            except OSError as exc:
                how = str(exc)
            self.events.append(("went on in", asyncio.current_task()))
        if how == "in task":
            await in_task()
            async with asyncio.timeout(5):  # needs a task
                await asyncio.sleep(0)
            self.events.append(("went on in", asyncio.current_task()))
        return Reply([how])


async def _serve(
    address: str, test: Callable[[MessageBus, Recorder, list[AccessRecord]], Awaitable[None]]
) -> None:
    server = await FixedMessageBus(address, negotiate_unix_fd=True).connect()
    client = await MessageBus(address, negotiate_unix_fd=True).connect()
    rec, audited = Recorder(), []

    def emit(record: AccessRecord) -> None:
        rec.events.append(("audit", record.body()))
        audited.append(record)

    gate = Gate(server, uid=os.getuid())
    dispatcher = Dispatcher(
        server,
        gate,
        Audit(emit, ExecutableCache(lookup=lambda pid: "/bin/test")),
        max_payload=1024,
        methods=[
            Method(IFACE, "Echo", (("text", "s"),), (("text", "s"),), rec.echo),
            Method(IFACE, "Keep", (("fd", "h"),), (("count", "u"),), rec.keep),
            Method(IFACE, "Eager", (("how", "s"),), (("how", "s"),), rec.eager, eager=True),
        ],
        targets={IFACE: lambda path: [] if path == PATH else None},
    )
    server.add_message_handler(dispatcher.handle)
    await gate.install()
    try:
        await test(client, rec, audited)
    finally:
        client.disconnect()
        server.disconnect()


def run(bus: PrivateBus, test: Callable[..., Awaitable[None]]) -> None:
    asyncio.run(_serve(bus.address, test))


def test_a_call_flows_through_every_step(private_bus: PrivateBus) -> None:
    async def test(client: MessageBus, rec: Recorder, audited: list[AccessRecord]) -> None:
        dest = await _server_name(client)
        r, w = os.pipe()
        try:
            reply = await _to(client, dest, "Echo", "s", ["hi"], unix_fds=[r])
            assert reply.message_type is MessageType.METHOD_RETURN and reply.body == ["HI"]
            kinds = [kind for kind, _ in rec.events]
            assert kinds == ["handler", "extra fd", "audit"]  # audit after the reply
            sender, uid, args, nfds = rec.events[0][1]
            assert sender == client.unique_name and uid == os.getuid()  # the explicit caller
            assert args == ["hi"] and nfds == 1
            with pytest.raises(OSError):  # the fd no handler took was closed after it
                os.fstat(rec.events[1][1])
            assert audited[-1].body() == ["Echo", "k1", os.getpid(), "/bin/test", "ok"]
        finally:
            os.close(r)
            os.close(w)

    run(private_bus, test)


def test_errors_signatures_and_size(private_bus: PrivateBus) -> None:
    async def test(client: MessageBus, rec: Recorder, audited: list[AccessRecord]) -> None:
        dest = await _server_name(client)
        reply = await _to(client, dest, "Echo", "s", ["missing"])
        assert reply.error_name == NoSuchKey.wire_name()
        assert audited[-1].result == "NoSuchKey"
        reply = await _to(client, dest, "Echo", "s", ["boom"])
        assert reply.error_name.endswith(".Failed") and "secret" not in str(reply.body)
        assert audited[-1].result == "Failed"
        before = len(rec.events)
        reply = await _to(client, dest, "Echo", "u", [7])
        assert reply.error_name == INVALID_ARGS and "takes arguments 's'" in reply.body[0]
        reply = await _to(client, dest, "Echo", "s", ["x" * (1536 + SIZE_SLACK + 1)])
        assert reply.error_name == TooLarge.wire_name()
        assert len(rec.events) == before  # neither reached the handler nor the audit
        reply = await _to(client, dest, "Nothing", "", [])
        assert reply.error_name == "org.freedesktop.DBus.Error.UnknownMethod"  # dbus-fast's

    run(private_bus, test)


def test_a_handler_owns_the_fds_it_takes(private_bus: PrivateBus) -> None:
    async def test(client: MessageBus, rec: Recorder, audited: list[AccessRecord]) -> None:
        dest = await _server_name(client)
        r, w = os.pipe()
        try:
            reply = await _to(client, dest, "Keep", "h", [0], unix_fds=[r, w])
            assert reply.body == [2]
            (kept,) = rec.kept
            os.fstat(kept)  # still open: the handler took it
            os.close(kept)
            reply = await _to(client, dest, "Keep", "h", [5], unix_fds=[r])
            assert reply.error_name == INVALID_ARGS  # an index naming no fd
        finally:
            os.close(r)
            os.close(w)

    run(private_bus, test)


def test_an_eager_handler_runs_outside_a_task_until_it_waits(private_bus: PrivateBus) -> None:
    """`Method.eager`: a handler that never waits is answered without a task; one that waits
    goes on in a task (exceptions of what it awaits reach it there); `in_task` gives the
    rest of one a task (asyncio.timeout needs it); an early error is an error reply."""

    async def test(client: MessageBus, rec: Recorder, audited: list[AccessRecord]) -> None:
        dest = await _server_name(client)
        where = [
            ("now", ["now"]),
            ("wait", ["thrown in"]),
            ("in task", ["in task"]),
        ]
        for how, body in where:
            rec.events.clear()
            reply = await _to(client, dest, "Eager", "s", [how])
            assert reply.body == body
            assert rec.events[0] == ("started in", None)
            assert audited[-1].body()[0::4] == ["Eager", "ok"]
            if how != "now":
                assert rec.events[1][0] == "went on in"
                assert isinstance(rec.events[1][1], asyncio.Task)
        reply = await _to(client, dest, "Eager", "s", ["raise"])
        assert reply.error_name == NoSuchKey.wire_name()
        assert audited[-1].result == "NoSuchKey"

    run(private_bus, test)


async def _server_name(client: MessageBus) -> str:
    """The test server's unique name: the other connection on the private bus."""
    reply = await client.call(
        Message(
            destination="org.freedesktop.DBus",
            path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus",
            member="ListNames",
        )
    )
    names = [n for n in reply.body[0] if n.startswith(":") and n != client.unique_name]
    assert len(names) == 1
    return str(names[0])


async def _to(
    client: MessageBus, dest: str, member: str, signature: str, body: list[Any], **kw: Any
) -> Message:
    reply = await client.call(
        Message(
            destination=dest,
            path=PATH,
            interface=IFACE,
            member=member,
            signature=signature,
            body=body,
            **kw,
        )
    )
    assert reply is not None
    return reply
