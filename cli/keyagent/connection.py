"""The client's connection to the agent: the bus socket (transport.py), timeouts, and the
owner check.

Before the first call that carries a passphrase or data, the connection checks that the owner
of `org.example.KeyAgent` runs as our own uid, and from then on addresses that owner by its
unique name, so a name taken over later cannot receive our secrets. The calls themselves are
`keyagent.Client`'s (client.py).
"""

from __future__ import annotations

import os
import time

from keyagent import protocol
from keyagent.errormap import NOT_DELIVERED, AgentUnavailable, BusError, NotYourAgent, error_for
from keyagent.protocol import BUS_DAEMON
from keyagent.transport import BUS_PATH, BusSocket, ConnectFailed, NoAddress
from keyagent.wire import ERROR, METHOD_RETURN, Message, WireError
from keyagent.wirecall import method_call

TYPE_CHECKING = False  # `typing` costs milliseconds at every start of the command
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any, Final, Self

    #: A call not yet sent: destination, path, interface, member, signature, body.
    Call = tuple[str, str, str | None, str, str, Sequence[Any]]

__all__ = ["ACTIVATION_TIMEOUT", "DEFAULT_TIMEOUT", "AgentConnection", "AgentUnavailable"]

DEFAULT_TIMEOUT: Final = 30.0
#: Starting the agent includes Python start-up and the keystore scan; be generous.
ACTIVATION_TIMEOUT: Final = 60.0
#: How often a streaming call wakes up to report progress.
POLL_INTERVAL: Final = 0.2


def _bus_daemon(member: str, signature: str, *args: Any) -> Call:
    return (BUS_DAEMON, BUS_PATH, BUS_DAEMON, member, signature, args)


class AgentConnection:
    """A session-bus connection that calls the agent, once it is known to be ours.

    ``bus`` is ``"SESSION"`` (from ``$DBUS_SESSION_BUS_ADDRESS``) or a D-Bus address. Use as a
    context manager, or call :meth:`close`.
    """

    def __init__(self, bus: str = "SESSION", *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.timeout = timeout
        self._owner: str | None = None
        try:
            self._conn = BusSocket(None if bus == "SESSION" else bus, timeout=timeout)
        except NoAddress as e:
            raise AgentUnavailable("No session bus: DBUS_SESSION_BUS_ADDRESS is not set.") from e
        except (ConnectFailed, OSError, WireError) as e:
            raise AgentUnavailable(f"Cannot connect to the session bus: {_reason(e)}.") from e

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._conn.close()

    # -- the agent's identity ----------------------------------------------------------------

    def owner(self) -> str:
        """The unique bus name of the agent, started if needed and checked to be ours."""
        if self._owner is None:
            self._owner = self._resolve_owner()
        return self._owner

    def _bus_call(
        self, member: str, signature: str, *args: Any, timeout: float | None = None
    ) -> Any:
        call = _bus_daemon(member, signature, *args)
        return self._send(call, timeout=self.timeout if timeout is None else timeout)

    def _resolve_owner(self) -> str:
        # One round trip: the owner, the uid of the name's owner, the owner again. The bus
        # answers one connection's calls in order, so when both owners agree the uid is theirs.
        name = protocol.BUS_NAME
        first, uid_reply, last = self._exchange(
            [
                _bus_daemon("GetNameOwner", "s", name),
                _bus_daemon("GetConnectionUnixUser", "s", name),
                _bus_daemon("GetNameOwner", "s", name),
            ],
            timeout=self.timeout,
        )
        if isinstance(first, BusError):
            if first.name not in NOT_DELIVERED:
                raise error_for(first) from None
            owner = self._activate()
            uid = self._uid_of(owner)
        elif isinstance(uid_reply, BusError) or isinstance(last, BusError) or last != first:
            # The name changed hands meanwhile (rare): ask about one owner by its unique name.
            owner = str(last[0]) if not isinstance(last, BusError) else str(first[0])
            uid = self._uid_of(owner)
        else:
            owner, uid = str(first[0]), int(uid_reply[0])
        if uid != os.getuid():
            # Never send a passphrase or data to a service run by someone else.
            raise NotYourAgent(
                f"The service {protocol.BUS_NAME} on this bus runs as uid {uid}, not as you."
            )
        return owner

    def _uid_of(self, unique_name: str) -> int:
        try:
            return int(self._bus_call("GetConnectionUnixUser", "s", unique_name)[0])
        except BusError as e:
            raise error_for(e) from None

    def _activate(self) -> str:
        started = time.time()
        try:
            self._bus_call(
                "StartServiceByName", "su", protocol.BUS_NAME, 0, timeout=ACTIVATION_TIMEOUT
            )
            return str(self._bus_call("GetNameOwner", "s", protocol.BUS_NAME)[0])
        except BusError as e:
            from keyagent import startnote

            # the agent's own sentence, if it left one during this attempt
            note = startnote.read_since(started)
            raise error_for(e, starting=True, start_note=note) from None

    def agent_running(self) -> bool:
        """Whether the agent runs now (never starts it)."""
        try:
            return bool(self._bus_call("NameHasOwner", "s", protocol.BUS_NAME)[0])
        except BusError as e:
            raise error_for(e) from None

    def agent_pid(self) -> int:
        try:
            return int(self._bus_call("GetConnectionUnixProcessID", "s", self.owner())[0])
        except BusError as e:
            raise error_for(e) from None

    # -- raw calls ---------------------------------------------------------------------------

    def _send(
        self,
        call: Call,
        *,
        timeout: float | None,
        progress: Callable[[], None] | None = None,
    ) -> tuple[Any, ...]:
        """Send and wait for the reply; raise BusError for an error reply. The one-call case of
        `_exchange`, written out: it is every call's path."""
        deadline = None if timeout is None else time.monotonic() + timeout
        serial = self._conn.next_serial()
        message = method_call(serial, *call)  # before anything is sent: see _marshal
        try:
            self._write([message], deadline)
            while True:
                reply = self._next(deadline, progress)
                if reply.kind in _REPLIES and reply.reply_serial == serial:
                    break  # anything else: signals and strays, not ours
        except TimeoutError:
            raise _no_answer(timeout) from None
        except (OSError, WireError) as e:
            raise AgentUnavailable("The connection to the session bus was lost.") from e
        if reply.kind == ERROR:
            raise BusError(reply.error_name, reply.sender, reply.body)
        return reply.body

    def _exchange(
        self,
        calls: Sequence[Call],
        *,
        timeout: float | None,
    ) -> list[tuple[Any, ...] | BusError]:
        """Send every call at once, then wait for every reply (a BusError for an error)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: dict[int, Message] = {}
        serials, messages = self._marshal(calls)
        try:
            self._write(messages, deadline)
            while len(replies) < len(serials):
                reply = self._next(deadline, None)
                serial = reply.reply_serial if reply.kind in _REPLIES else 0
                if serial in serials and serial not in replies:
                    replies[serial] = reply  # anything else: signals and strays, not ours
        except TimeoutError:
            raise _no_answer(timeout) from None
        except (OSError, WireError) as e:
            raise AgentUnavailable("The connection to the session bus was lost.") from e
        return [_unpack(replies[serial]) for serial in serials]

    def _next(self, deadline: float | None, progress: Callable[[], None] | None) -> Message:
        """The next message; TimeoutError past ``deadline``. With ``progress``, wakes every
        POLL_INTERVAL to call it."""
        while True:
            wait = deadline
            if progress is not None:
                wait = time.monotonic() + POLL_INTERVAL
                if deadline is not None:
                    wait = min(wait, deadline)
            try:
                return self._conn.receive(wait)
            except TimeoutError:
                if deadline is not None and time.monotonic() >= deadline:
                    raise
                if progress is not None:
                    progress()

    def _marshal(self, calls: Sequence[Call]) -> tuple[list[int], list[tuple[bytes, list[int]]]]:
        """Serials and bytes, before anything is sent: a value that cannot go out is the
        caller's error (WireError), not a lost connection."""
        serials = [self._conn.next_serial() for _ in calls]
        return serials, [method_call(n, *call) for n, call in zip(serials, calls, strict=True)]

    def _write(self, messages: list[tuple[bytes, list[int]]], deadline: float | None) -> None:
        """One write for calls without fds (the owner check's three); fds go one call a write,
        so each message's fds arrive with it."""
        try:
            pending = b""
            for data, fds in messages:
                if fds:
                    if pending:
                        self._conn.send(pending, (), deadline)
                        pending = b""
                    self._conn.send(data, fds, deadline)
                else:
                    pending += data
            if pending:
                self._conn.send(pending, (), deadline)
        except ConnectFailed as e:  # the bus refused fd passing at authentication
            raise AgentUnavailable(f"Cannot call the agent: {e.reason}.") from None

    def _call(
        self,
        path: str,
        interface: str,
        member: str,
        signature: str | None = None,
        args: Sequence[Any] = (),
        *,
        timeout: float | None = -1.0,
        progress: Callable[[], None] | None = None,
    ) -> tuple[Any, ...]:
        """Call the agent; map error replies to protocol exceptions.

        ``timeout``: seconds, None for no limit, negative for the client's default.
        """
        t = self.timeout if timeout is not None and timeout < 0 else timeout
        for attempt in (1, 2):
            call = (self._owner or self.owner(), path, interface, member, signature or "", args)
            try:
                return self._send(call, timeout=t, progress=progress)
            except BusError as e:
                if e.name in NOT_DELIVERED and attempt == 1:
                    # The agent exited (idle) between our check and the call: restart it.
                    self._owner = None
                    continue
                key = protocol.key_name_from_path(path) if _is_key(path) else None
                raise error_for(e, key=key) from None
        raise AssertionError("unreachable")


_REPLIES: Final = (METHOD_RETURN, ERROR)


def _no_answer(timeout: float | None) -> AgentUnavailable:
    return AgentUnavailable(f"The key agent did not answer within {timeout:g} seconds.")


def _is_key(path: str) -> bool:
    return path.startswith(protocol.KEYS_PATH_PREFIX)


def _unpack(reply: Message) -> tuple[Any, ...] | BusError:
    if reply.kind == ERROR:
        return BusError(reply.error_name, reply.sender, reply.body)
    return reply.body


def _reason(e: Exception) -> str:
    if isinstance(e, ConnectFailed):
        return e.reason
    return e.strerror if isinstance(e, OSError) and e.strerror else type(e).__name__
