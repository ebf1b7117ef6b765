"""Fixes for two bugs of dbus-fast 5.2.0, applied from outside in a `MessageBus` subclass.

1. `aio.message_bus._MessageWriter.write_callback` treats `BlockingIOError` (EAGAIN: the
   socket's send buffer is full) as fatal and disconnects the bus. A burst of replies, or one
   client that does not read a large reply, made a service lose its name. A send that raised
   EAGAIN sent nothing, so `PatientWriter` keeps the buffer and waits with `loop.add_writer`
   until the socket is writable; it writes at once only when nothing is pending, so messages
   keep their order. When the connection fails or is closed (e.g. the bus daemon exits
   while the agent is stopping) queued messages fail quietly: the stock writer left their
   futures' OSError "never retrieved", logged with a traceback.
2. `BaseMessageBus._process_message` never closes received file descriptors of method calls
   that match no exported method (or signature), nor of signals and replies: every such
   message leaks its fds. `FixedMessageBus._process_message` closes them after processing
   unless a method handler taking `h` arguments received them, or the caller gate queued
   the message for replay (`keep_fds`). Related: the unmarshaller shares one list object
   between all fd-less messages and appends the next message's fds to it, which matters
   once a message is held for later; each message gets its own copy first.

And one conformance fix: dbus-fast sends ObjectManager's InterfacesAdded/InterfacesRemoved
from the added object's own path, while the D-Bus specification (and GDBus's object manager
client) expects them from the object manager's path; `object_manager_path` re-routes them.

The fixes lean on private names of dbus-fast 5.2 (pinned `<5.3` in pyproject.toml); they are
checked when this module is imported, so an upgrade that moves them fails loudly at start.
"""

from __future__ import annotations

import array
import contextlib
import logging
import os
import socket
from collections.abc import Callable
from typing import Any, Literal, cast

from dbus_fast import Message, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.aio import message_bus as _aio
from dbus_fast.message_bus import BaseMessageBus
from dbus_fast.service import ServiceInterface
from dbus_fast.signature import get_signature_tree

from keyagentd.secrets import wipe

log = logging.getLogger(__name__)

_REQUIRED: tuple[tuple[object, str], ...] = (
    (_aio, "_MessageWriter"),
    (_aio, "_future_set_result"),
    (_aio, "_future_set_exception"),
    (_aio._MessageWriter, "write_callback"),
    (_aio._MessageWriter, "schedule_write"),
    (_aio._MessageWriter, "buffer_message"),
    (BaseMessageBus, "_process_message"),
    (MessageBus, "_make_method_handler"),
    (MessageBus, "_writer"),
    (MessageBus, "_finalize"),
    (BaseMessageBus, "_emit_interface_added"),
    (BaseMessageBus, "_emit_interface_removed"),
    (ServiceInterface, "_get_all_property_values"),
)


def check_dbus_fast() -> None:
    """Raise ImportError unless the dbus-fast internals these fixes rely on exist."""
    missing = [f"{getattr(o, '__name__', o)}.{a}" for o, a in _REQUIRED if not hasattr(o, a)]
    if missing:
        raise ImportError(
            "keyagentd needs dbus-fast 5.2 (its fixes patch internals that this version lacks: "
            + ", ".join(missing)
            + ")"
        )


check_dbus_fast()


class PatientWriter(_aio._MessageWriter):
    """A writer that waits for a writable socket on EAGAIN instead of disconnecting."""

    _waiting: bool

    def _wait_writable(self) -> None:
        if not self._waiting:
            self._waiting = True
            self.loop.add_writer(cast(int, self.fd), self.write_callback)

    def _stop_waiting(self) -> None:
        if self._waiting:
            self._waiting = False
            self.loop.remove_writer(cast(int, self.fd))

    def write_callback(self, remove_writer: bool = True) -> None:
        sock = cast(socket.socket, self.sock)
        if self.bus._disconnected:
            self._drop_all(ConnectionError("The bus connection is closed."))
            return
        try:
            while True:
                if self.buf is None:
                    if not self.messages:
                        self._stop_waiting()
                        return
                    buf, unix_fds, fut = self.messages.popleft()
                    self.unix_fds = unix_fds
                    self.buf = memoryview(buf)
                    self.offset = 0
                    self.fut = fut
                try:
                    if self.unix_fds and self.negotiate_unix_fd:
                        ancdata = [
                            (socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", self.unix_fds))
                        ]
                        sent = sock.sendmsg([self.buf[self.offset :]], ancdata)
                        self.unix_fds = None  # they travel with the first byte sent
                    else:
                        sent = sock.send(self.buf[self.offset :])
                except (BlockingIOError, InterruptedError):
                    # Nothing was sent: keep the buffer, try again when the socket drains.
                    self._wait_writable()
                    return
                self.offset += sent
                if self.offset < len(self.buf):
                    self._wait_writable()
                    return
                sent_buf = self.buf.obj
                self.buf.release()
                self.buf = None
                if isinstance(sent_buf, bytearray):
                    wipe(sent_buf)  # replies may carry plaintext: nothing stays behind
                _aio._future_set_result(cast(Any, self.fut), None)
        except Exception as exc:
            # The connection failed (or was closed under us while stopping). Every message
            # still queued fails with it, quietly: replies' futures have no one awaiting them,
            # and asyncio would log "Future exception was never retrieved" with a traceback.
            self._waiting = False
            self._drop_all(exc)
            if not self.bus._disconnected:
                self.bus._finalize(exc)

    def _drop_all(self, exc: Exception) -> None:
        """Fail the message being written and every queued one (the connection is gone)."""
        futures = [self.fut] if self.buf is not None else []
        futures.extend(fut for _buf, _fds, fut in self.messages)
        self.buf, self.fut, self.unix_fds = None, None, None
        self.messages.clear()
        if self._waiting:
            self._waiting = False
            with contextlib.suppress(Exception):  # the loop may have dropped the fd already
                self.loop.remove_writer(cast(int, self.fd))
        for fut in futures:
            if self.bus._user_disconnect:
                _aio._future_set_result(cast(Any, fut), None)
            else:
                _fail_quietly(fut, exc)

    def buffer_message(self, msg: Message, future: Any = None) -> None:
        body = msg.body
        if not (msg.signature.startswith("ay") and body and isinstance(body[0], memoryview)):
            super().buffer_message(msg, future)
            return
        # A plaintext reply (Decrypt): dbus-fast would copy it into an intermediate body
        # buffer and leave that behind unwiped. Marshal zeros of its length instead and put
        # the plaintext straight into the one buffer that is sent (and wiped once sent).
        plain: memoryview = body[0]
        body[0] = bytes(len(plain))
        try:
            buf = msg._marshall(self.negotiate_unix_fd)
        finally:
            body[0] = plain
        order: Literal["little", "big"] = "little" if buf[0:1] == b"l" else "big"
        start = len(buf) - int.from_bytes(buf[4:8], order)  # the body follows the header
        assert int.from_bytes(buf[start : start + 4], order) == len(plain)
        buf[start + 4 : start + 4 + len(plain)] = plain
        fds = msg.unix_fds
        self.messages.append((buf, list(fds) if fds else None, future))

    def schedule_write(self, msg: Message | None = None, future: Any = None) -> None:
        if self.bus._disconnected:
            _fail_quietly(future, ConnectionError("The bus connection is closed."))
            return
        if msg is not None:
            self.buffer_message(msg, future)
        # While waiting for the socket, the writer callback will send this in order.
        if self.bus.unique_name and not self._waiting:
            self.write_callback()


def _fail_quietly(fut: Any, exc: BaseException) -> None:
    """Set ``exc`` on ``fut`` and mark it retrieved: whoever awaits it still gets the error,
    but an unawaited one (a reply's) is not logged with a traceback when collected."""
    if fut is not None and not fut.done():
        fut.set_exception(exc)
        fut.exception()


def install_patient_writer(bus: MessageBus) -> None:
    """Turn the connected bus's writer into a `PatientWriter`, keeping its queue."""
    writer = bus._writer
    assert writer is not None
    writer.__class__ = PatientWriter
    assert isinstance(writer, PatientWriter)
    writer._waiting = False
    # The stock writer may have left its callback registered; ours tracks registration itself.
    writer.loop.remove_writer(cast(int, writer.fd))
    if writer.buf is not None or writer.messages:
        writer.write_callback()


def _close_fds(fds: list[int]) -> None:
    for fd in set(fds):
        try:
            os.close(fd)
        except OSError:
            log.debug("fd %d was already closed", fd)


def _top_level_fd_indices(method_signature: str, body: list[Any]) -> set[int]:
    """The fd indices a call's top-level `h` arguments refer to (all ours are top level)."""
    types = get_signature_tree(method_signature).types
    return {
        value
        for type_, value in zip(types, body, strict=False)
        if type_.token == "h" and isinstance(value, int)
    }


def _option_fd_indices(msg: Message, top_level: set[int]) -> set[int]:
    """The fd indices `h` values in the call's top-level option dictionaries name. One that
    a top-level argument names too gets a duplicate of its own (appended to the message's
    fds): the option's owner and the argument's close theirs separately."""
    found: set[int] = set()
    for arg in msg.body:
        if not isinstance(arg, dict):
            continue
        for key, value in list(arg.items()):
            if not (isinstance(value, Variant) and value.signature == "h"):
                continue
            index = value.value
            if not isinstance(index, int) or not 0 <= index < len(msg.unix_fds):
                continue
            if index in top_level:
                msg.unix_fds.append(os.dup(msg.unix_fds[index]))
                index = len(msg.unix_fds) - 1
                arg[key] = Variant("h", index)
            found.add(index)
    return found


OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"


class FixedMessageBus(MessageBus):
    """The aio `MessageBus` with the fixes applied."""

    _fds_taken: bool
    object_manager_path: str | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._fds_taken = False
        self.object_manager_path = None

    def _managed(self, path: str) -> str | None:
        """The path to send ObjectManager signals about ``path`` from (None: send none)."""
        root = self.object_manager_path
        if root is None:
            return path
        return root if path.startswith(root + "/") else None

    def _emit_interface_added(self, path: str, interface: ServiceInterface) -> None:
        sender_path = self._managed(path)
        if self._disconnected or sender_path is None:
            return

        def send(iface: ServiceInterface, values: Any, _data: Any, err: Exception | None) -> None:
            if err is not None:
                log.error("Could not read the properties of %s for InterfacesAdded", path)
            self.send(
                Message.new_signal(
                    path=sender_path,
                    interface=OBJECT_MANAGER,
                    member="InterfacesAdded",
                    signature="oa{sa{sv}}",
                    body=[path, {iface.name: values}],
                )
            )

        ServiceInterface._get_all_property_values(interface, send)

    def _emit_interface_removed(self, path: str, removed_interfaces: list[str]) -> None:
        sender_path = self._managed(path)
        if self._disconnected or sender_path is None:
            return
        self.send(
            Message.new_signal(
                path=sender_path,
                interface=OBJECT_MANAGER,
                member="InterfacesRemoved",
                signature="oas",
                body=[path, removed_interfaces],
            )
        )

    async def connect(self) -> FixedMessageBus:
        await super().connect()
        install_patient_writer(self)
        return self

    def keep_fds(self) -> None:
        """Called while processing a message: its fds stay open (someone else owns them now)."""
        self._fds_taken = True

    def _process_message(self, msg: Message) -> None:
        # The unmarshaller hands every fd-less message the same empty list and later appends
        # the next message's fds to it: a message kept for replay (the gate's queue) would
        # grow someone else's fds. Each message gets a list of its own.
        msg.unix_fds = fds = list(msg.unix_fds)
        if not fds:
            super()._process_message(msg)
            return
        outer = self._fds_taken  # replays nest inside the processing of another message
        self._fds_taken = False
        try:
            super()._process_message(msg)
        finally:
            taken = self._fds_taken
            self._fds_taken = outer
            if not taken:
                _close_fds(fds)

    def _make_method_handler(
        self, interface: ServiceInterface, method: Any
    ) -> Callable[[Message, Any], None]:
        inner = super()._make_method_handler(interface, method)
        signature: str = method.in_signature
        if "h" not in signature and "a{sv}" not in signature:
            return inner

        def handler(msg: Message, send_reply: Any) -> None:
            if not msg.unix_fds:
                inner(msg, send_reply)
                return
            used = _top_level_fd_indices(signature, list(msg.body))
            used |= _option_fd_indices(msg, used)
            inner(msg, send_reply)  # if this raises, the fds are closed as unclaimed
            self._fds_taken = True
            # The method owns the fds its `h` arguments and options name (secretfds.py);
            # close any extra ones sent along.
            extra = [fd for i, fd in enumerate(msg.unix_fds) if i not in used]
            if extra:
                _close_fds(extra)

        return handler
