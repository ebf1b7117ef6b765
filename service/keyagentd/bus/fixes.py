"""The seam with dbus-fast: every private name of dbus-fast the agent touches is used here,
and only here, and each is checked when this module is imported (`PRIVATE_NAMES`), so an
upgrade that moves one fails loudly at start. dbus-fast is pinned `>=5.2,<5.3`.

Stock behaviour -> ours (upstream report):

1. `_MessageWriter.write_callback` treats EAGAIN (a full send buffer) as fatal and
   disconnects -> `PatientWriter` keeps the buffer and waits with `loop.add_writer`,
   in order. (python-dbus-next #153, https://github.com/altdesktop/python-dbus-next/issues/153;
   PR #154, https://github.com/altdesktop/python-dbus-next/pull/154)
2. A failed connection leaves queued futures' OSError "never retrieved" -> they fail
   quietly, and the bus is finalized on the next loop turn: never inside dbus-fast's own
   loops (`_handle_signal` iterates the interface's buses, which `_finalize` empties:
   "Set changed size during iteration").
3. `_process_message` never closes the fds of unmatched calls, signals and replies, and
   fd-less messages share one list -> `FixedMessageBus._process_message` closes what no
   handler (nor the gate) took; each message gets its own list. (python-dbus-next #162,
   https://github.com/altdesktop/python-dbus-next/issues/162)
4. ObjectManager signals go out from the object's path -> from the manager's path (the
   D-Bus specification; GDBus's client expects it).
5. Error replies carry only the sentence (`s`) -> `ErrorWithData` sends the protocol
   error's whole body (`Locked`: `sas`, the candidate names as data).
6. No public way to reach the socket, call with a plain callback, replay a held message
   or introspect a path without its children -> `bus_socket`, `FixedMessageBus.call_back`,
   `FixedMessageBus.replay`, `introspection_without_children`.
7. The marshalled message stays in memory after it is sent, and an `ay` body is copied
   through an intermediate buffer -> `PatientWriter` wipes every sent buffer and puts a
   memoryview `ay` reply (Decrypt's plaintext) straight into the one buffer it sends.
8. GetManagedObjects is quadratic in the objects (after each object's properties it scans
   the whole result for missing ones: ~180 ms at 1,000 keys) and reads every property
   through its getter -> `FixedMessageBus._default_get_managed_objects_handler` is linear
   and takes an interface's ready values (`property_values()`, cached by the key objects);
   each object's entry is marshalled once per set of values (8 ms of 1,000 keys' 9,000
   variants otherwise) and the reply's body put together from them (`_Premarshalled`).
9. A signal is a `Message` marshalled whole on every send -> `SignalSender` marshals a fixed
   signal's header once and each body alone (the AccessLog signal, one per operation).

Method calls to our own interfaces never reach dbus-fast's method dispatch: the dispatcher
(dispatch.py) answers them from a user message handler (`add_message_handler`, public), and
sends replies and signals with `send` (public); see docs/DECISIONS.md.

Each fix has a test that fails without it, and a canary showing stock dbus-fast still has
the bug (tests/test_agent_fixes.py), so the day an upgrade fixes one upstream, it can go.
"""

from __future__ import annotations

import array
import contextlib
import logging
import operator
import os
import socket
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, Literal, cast

from dbus_fast import DBusError, Message, MessageType
from dbus_fast._private.marshaller import Marshaller
from dbus_fast.aio import MessageBus
from dbus_fast.aio import message_bus as _aio
from dbus_fast.message_bus import BaseMessageBus
from dbus_fast.service import ServiceInterface

from keyagentd.secrets import put, wipe

log = logging.getLogger(__name__)

MANAGED_OBJECTS = "a{oa{sa{sv}}}"


class _Premarshalled(Message):
    """A reply whose body was marshalled beforehand (`raw_body`, little-endian like every
    message dbus-fast writes): the header is marshalled around an empty array's 8 bytes."""

    raw_body: bytes

    def _marshall(self, negotiate_unix_fd: bool) -> bytearray:
        out = super()._marshall(negotiate_unix_fd)
        if out[0] != ord("l") or int.from_bytes(out[4:8], "little") != 8:
            raise RuntimeError("dbus-fast marshalled a message unlike the one expected")
        out[4:8] = len(self.raw_body).to_bytes(4, "little")
        out[-8:] = self.raw_body
        return out


#: Every private dbus-fast name used below: (owner, name). Instance attributes of the stock
#: writer are checked on a writer built around a stand-in bus (`_writer_attributes`).
PRIVATE_NAMES: tuple[tuple[object, str], ...] = (
    (_aio, "_MessageWriter"),
    (_aio, "_future_set_result"),
    (_aio._MessageWriter, "write_callback"),
    (_aio._MessageWriter, "schedule_write"),
    (_aio._MessageWriter, "buffer_message"),
    (BaseMessageBus, "_process_message"),
    (BaseMessageBus, "_call"),
    (BaseMessageBus, "_emit_interface_added"),
    (BaseMessageBus, "_emit_interface_removed"),
    (BaseMessageBus, "_introspect_export_path"),
    (BaseMessageBus, "_default_get_managed_objects_handler"),
    (BaseMessageBus, "_path_exports"),
    (Message, "_marshall"),
    (Marshaller, "marshall"),
    (MessageBus, "_writer"),
    (MessageBus, "_finalize"),
    (MessageBus, "_disconnected"),
    (MessageBus, "_user_disconnect"),
    (MessageBus, "_sock"),
    (ServiceInterface, "_get_all_property_values"),
    (DBusError, "_as_message"),
)
#: What `PatientWriter` reads and writes on the stock writer it replaces.
WRITER_ATTRIBUTES: tuple[str, ...] = (
    "bus", "loop", "sock", "fd", "buf", "offset", "messages", "unix_fds", "fut",
    "negotiate_unix_fd",
)  # fmt: skip


def _writer_attributes() -> list[str]:
    """The `WRITER_ATTRIBUTES` a stock writer lacks (built on a stand-in bus: no I/O)."""
    stand_in = SimpleNamespace(_negotiate_unix_fd=False, _sock=None, _loop=None, _fd=-1)
    try:
        writer = _aio._MessageWriter(stand_in)  # type: ignore[arg-type]
    except Exception:  # its constructor changed: report every attribute as unverified
        return list(WRITER_ATTRIBUTES)
    return [a for a in WRITER_ATTRIBUTES if not hasattr(writer, a)]


def check_dbus_fast() -> None:
    """Raise ImportError unless every dbus-fast internal this module relies on exists."""
    missing = [f"{getattr(o, '__name__', o)}.{a}" for o, a in PRIVATE_NAMES if not hasattr(o, a)]
    if not missing:
        missing = [f"_MessageWriter().{a}" for a in _writer_attributes()]
    if missing:
        raise ImportError(
            "keyagentd needs dbus-fast 5.2 (its fixes patch internals that this version lacks: "
            + ", ".join(missing)
            + ")"
        )


check_dbus_fast()


def introspection_without_children(bus: MessageBus, path: str) -> str:
    """What Introspect of ``path`` answers, minus its child nodes (key names, for one)."""
    node = bus._introspect_export_path(path)
    node.nodes = []
    return node.tostring()


def bus_socket(bus: MessageBus) -> socket.socket:
    """The connected bus's socket (for SO_PEERCRED)."""
    return cast(socket.socket, bus._sock)


class ErrorWithData(DBusError):
    """A `DBusError` whose reply carries a whole body: dbus-fast's carry only the sentence."""

    def __init__(self, name: str, signature: str, body: list[Any]) -> None:
        super().__init__(name, str(body[0]))
        self.signature, self.body = signature, body

    def _as_message(self, msg: Message) -> Message:
        return error_message(msg, self.type, self.signature, self.body)


def error_message(msg: Message, name: str, signature: str, body: list[Any]) -> Message:
    """An error reply to ``msg`` (public API: `Message.new_error` makes only ``s``)."""
    return Message(
        message_type=MessageType.ERROR,
        reply_serial=msg.serial,
        destination=msg.sender,
        error_name=name,
        signature=signature,
        body=body,
    )


class PatientWriter(_aio._MessageWriter):
    """A writer that waits for a writable socket on EAGAIN instead of disconnecting."""

    _waiting: bool
    _failed: Exception | None  # the error the connection failed with, until finalized
    sock: socket.socket  # always set here (typed, so the hot path needs no cast() call)

    def _wait_writable(self) -> None:
        if not self._waiting:
            self._waiting = True
            self.loop.add_writer(cast(int, self.fd), self.write_callback)

    def _stop_waiting(self) -> None:
        if self._waiting:
            self._waiting = False
            self.loop.remove_writer(cast(int, self.fd))

    def write_callback(self, remove_writer: bool = True) -> None:
        sock = self.sock
        if self.bus._disconnected or self._failed is not None:
            self._drop_all(ConnectionError("The bus connection is closed."))
            return
        try:
            while True:
                if self.buf is None:
                    if not self.messages:
                        if self._waiting:
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
                fut = self.fut
                if fut is not None:  # a signal has none
                    _aio._future_set_result(fut, None)
        except Exception as exc:
            # The connection failed (or was closed under us while stopping). Every message
            # still queued fails with it, quietly: replies' futures have no one awaiting them,
            # and asyncio would log "Future exception was never retrieved" with a traceback.
            self._waiting = False
            self._drop_all(exc)
            self._fail_later(exc)

    def _fail_later(self, exc: Exception) -> None:
        """Finalize the bus on the next loop turn, once. We may be deep inside dbus-fast
        (`ServiceInterface._handle_signal` iterating the interface's set of buses, which
        `_finalize` empties by unexporting): finalizing here raised "Set changed size during
        iteration" into whoever sent the signal. Until then the bus counts as failed."""
        if self._failed is not None:
            return
        self._failed = exc

        def finalize() -> None:
            if not self.bus._disconnected:
                self.bus._finalize(exc)

        self.loop.call_soon(finalize)

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
        put(buf, start + 4, plain)  # in place: a slice assignment would copy it first
        fds = msg.unix_fds
        self.messages.append((buf, list(fds) if fds else None, future))

    def schedule_write(self, msg: Message | None = None, future: Any = None) -> None:
        if self.bus._disconnected or self._failed is not None:
            _fail_quietly(future, ConnectionError("The bus connection is closed."))
            return
        if msg is not None:
            self.buffer_message(msg, future)
        # While waiting for the socket, the writer callback will send this in order.
        if self.bus.unique_name and not self._waiting:
            self.write_callback()


class SignalSender:
    """One signal (path, interface, member, signature fixed) whose header is marshalled once:
    a send marshals only the body and queues the bytes (no `Message`, no future). For the
    AccessLog signal, one per operation: ~2.5x cheaper than `MessageBus.send`."""

    def __init__(
        self, bus: MessageBus, path: str, interface: str, member: str, signature: str,
        sample: list[Any],
    ) -> None:  # fmt: skip
        """``sample``: any body of ``signature`` (the header does not depend on it)."""
        self._bus, self._signature = bus, signature
        probe = Message.new_signal(path, interface, member, signature, sample)
        full = probe._marshall(False)
        if full[0] != ord("l"):
            raise RuntimeError("dbus-fast marshalled a message unlike the one expected")
        self._header = bytes(full[: len(full) - int.from_bytes(full[4:8], "little")])

    def message(self, body: list[Any], serial: int) -> bytearray:
        """The marshalled signal with ``body`` and ``serial`` (what `send` queues)."""
        data = Marshaller(self._signature, body).marshall()
        out = bytearray(self._header)
        out += data
        out[4:8] = len(data).to_bytes(4, "little")
        out[8:12] = serial.to_bytes(4, "little")
        return out

    def send(self, body: list[Any]) -> None:
        """Queue the signal with ``body`` (dropped quietly if the bus is closed)."""
        bus = self._bus
        writer = bus._writer
        if bus._disconnected or not isinstance(writer, PatientWriter) or writer._failed:
            return
        writer.messages.append((self.message(body, bus.next_serial()), None, None))
        writer.schedule_write()


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
    writer._failed = None
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

    def call_back(
        self, msg: Message, done: Callable[[Message | None, Exception | None], None]
    ) -> None:
        """Send a method call; ``done(reply, error)`` runs from the reader (no task, no turn)."""
        self._call(msg, done)

    def replay(self, msg: Message) -> None:
        """Process a held message as if it had just arrived (the gate's queue)."""
        self._process_message(msg)

    def keep_fds(self) -> None:
        """Called while processing a message: its fds stay open (someone else owns them now:
        the dispatcher's `ReceivedFds`, or the gate's queue until the replay)."""
        self._fds_taken = True

    def _default_get_managed_objects_handler(self, msg: Message, send_reply: Any) -> None:
        path = msg.path or "/"
        nodes = [n for n in self._path_exports if path == "/" or n.startswith(path + "/")]
        result: dict[str, dict[str, Any]] = {}
        pending: list[tuple[str, ServiceInterface]] = []
        for node in nodes:
            result[node] = {}
            for interface in self._path_exports[node].values():
                ready = getattr(interface, "property_values", None)
                if ready is not None:
                    result[node][interface.name] = ready()
                else:
                    pending.append((node, interface))
        cacheable = set(nodes) - {node for node, _ in pending}
        if not pending:
            send_reply(self._managed_reply(msg, result, cacheable))
            return
        failed = False

        def got(iface: ServiceInterface, values: Any, node: str, err: Exception | None) -> None:
            nonlocal failed
            if failed:
                return
            if err is not None:
                failed = True
                send_reply.send_error(err)
                return
            result[node][iface.name] = values
            pending.remove((node, iface))
            if not pending:
                send_reply(self._managed_reply(msg, result, cacheable))

        for node, interface in list(pending):
            ServiceInterface._get_all_property_values(interface, got, node)

    def _managed_reply(
        self, msg: Message, result: dict[str, dict[str, Any]], cacheable: set[str]
    ) -> Message:
        """The GetManagedObjects reply, each object's entry marshalled once per set of
        values: ``property_values()`` hands back the same dict until something changed."""
        old: dict[str, tuple[tuple[object, ...], bytes]] = getattr(self, "_managed_cache", {})
        cache: dict[str, tuple[tuple[object, ...], bytes]] = {}
        parts: list[bytes] = []
        for node, interfaces in result.items():
            key = tuple(interfaces.values())
            hit = old.get(node)
            if hit is not None and len(hit[0]) == len(key) and all(map(operator.is_, hit[0], key)):
                entry = hit[1]
            else:  # the dict entry as it lies 8-aligned after the array's length and padding
                entry = bytes(Marshaller(MANAGED_OBJECTS, [{node: interfaces}]).marshall())[8:]
            if node in cacheable:
                cache[node] = (key, entry)
            parts.append(entry)
        self._managed_cache = cache
        if not parts:
            return Message.new_method_return(msg, MANAGED_OBJECTS, [{}])
        body = bytearray(8)  # the array's length, then padding to its 8-aligned entries
        for entry in parts:
            body += bytes(-len(body) % 8)
            body += entry
        body[0:4] = (len(body) - 8).to_bytes(4, "little")
        reply = _Premarshalled(
            message_type=MessageType.METHOD_RETURN,
            reply_serial=msg.serial,
            destination=msg.sender,
            signature=MANAGED_OBJECTS,
            body=[{}],
        )
        reply.raw_body = bytes(body)
        return reply

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
