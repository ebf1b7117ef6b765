"""A blocking connection to a D-Bus bus: the address, SASL EXTERNAL, Hello, and messages with
fds over the Unix socket. The bytes of the messages are wire.py's and wirecall.py's.

`_socket`, not `socket`: the latter imports enum, selectors and more, milliseconds at every
start of the command. The authentication lines and Hello go out in one write (as sd-bus
does), so connecting costs one round trip.

A call costs two system calls: one `sendmsg`, one `recvmsg` (the reply, header and body, into
a fixed 64 KiB buffer). The socket stays blocking and its timeouts are the kernel's
(SO_SNDTIMEO, SO_RCVTIMEO), set again only when a wait must differ from the one set by more
than 10 ms, not on every call: a Python socket timeout costs an ioctl per `settimeout` and a
poll before every send and receive.
"""

from __future__ import annotations

import os
import time
from _socket import (
    AF_UNIX,
    CMSG_SPACE,
    MSG_CMSG_CLOEXEC,
    SCM_RIGHTS,
    SO_RCVTIMEO,
    SO_SNDTIMEO,
    SOCK_CLOEXEC,
    SOCK_STREAM,
    SOL_SOCKET,
    socket,
)
from struct import Struct

from keyagent.protocol import BUS_DAEMON
from keyagent.wire import ERROR, FIXED_HEADER, METHOD_RETURN, Message, message_length, parse_message
from keyagent.wirecall import method_call

TYPE_CHECKING = False  # `typing` costs milliseconds at every start of the command
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any, Final, Self

BUS_PATH: Final = "/org/freedesktop/DBus"
#: How many fds one received message may carry (dbus-daemon's default limit is 16).
MAX_RECEIVED_FDS: Final = 64
_CHUNK: Final = 65536
_COPY_UP_TO: Final = 1 << 20
_FD: Final = Struct("i")
_ANCILLARY: Final = CMSG_SPACE(MAX_RECEIVED_FDS * _FD.size)
#: `struct timeval` for SO_SNDTIMEO/SO_RCVTIMEO (two C longs on Linux).
_TIMEVAL: Final = Struct("@ll")
#: A kernel timeout already set may end a wait this much before or after a deadline before
#: it is set again: calls with the same timeout then set it once, not once per call.
_SLACK: Final = 0.01


class ConnectFailed(Exception):
    """No connection to the bus; ``reason`` says why, for a person."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NoAddress(ConnectFailed):
    """DBUS_SESSION_BUS_ADDRESS is not set."""


def session_address() -> str:
    address = os.environ.get("DBUS_SESSION_BUS_ADDRESS", "")
    if not address:
        raise NoAddress("DBUS_SESSION_BUS_ADDRESS is not set")
    return address


def socket_targets(address: str) -> list[str | bytes]:
    """What to connect to for each usable entry of a D-Bus address list, in order: a path, or
    bytes starting with NUL for an abstract socket. Other transports are skipped."""
    targets: list[str | bytes] = []
    for entry in address.split(";"):
        transport, _, rest = entry.partition(":")
        if transport != "unix":
            continue
        keys = dict(_unescape_pair(kv) for kv in rest.split(",") if "=" in kv)
        if "path" in keys:
            targets.append(keys["path"].decode("utf-8", "surrogateescape"))
        elif "abstract" in keys:
            targets.append(b"\0" + keys["abstract"])
        elif keys.get("runtime") == b"yes" and os.environ.get("XDG_RUNTIME_DIR"):
            targets.append(os.environ["XDG_RUNTIME_DIR"] + "/bus")
    return targets


def _unescape_pair(pair: str) -> tuple[str, bytes]:
    key, _, value = pair.partition("=")
    raw = value.encode("utf-8", "surrogateescape")
    if b"%" not in raw:
        return key, raw
    parts = raw.split(b"%")
    out = bytearray(parts[0])
    for part in parts[1:]:
        try:
            out.append(int(part[:2], 16))
        except ValueError:
            raise ConnectFailed("a malformed bus address") from None
        out += part[2:]
    return key, bytes(out)


class BusSocket:
    """An authenticated connection with its unique name (`unique_name`).

    ``fds`` tells whether the bus agreed to pass file descriptors. Received fds are closed
    at once: no reply the client waits for carries any.
    """

    def __init__(self, address: str | None = None, *, timeout: float) -> None:
        self._sock: socket | None = None
        # Received bytes not yet returned are _buf[_start:_end].
        self._buf = bytearray(_CHUNK)
        self._view = memoryview(self._buf)
        self._start = self._end = 0
        self._msg: bytearray | None = None  # a long message being read, `_have` bytes so far
        self._have = 0
        self._serial = 0
        #: The kernel's send and receive timeouts as set (seconds; 0.0: none).
        self._timeouts = {SO_SNDTIMEO: 0.0, SO_RCVTIMEO: 0.0}
        self.fds = False
        deadline = time.monotonic() + timeout
        targets = socket_targets(session_address() if address is None else address)
        if not targets:
            raise ConnectFailed("no usable unix socket in the bus address")
        self._sock = _connect_first(targets, timeout)
        try:
            hello = self.next_serial()
            self._sock.settimeout(None)  # blocking: the kernel's timeouts apply (see _arm)
            self.send(
                _auth_lines() + method_call(hello, BUS_DAEMON, BUS_PATH, BUS_DAEMON, "Hello")[0],
                (),
                deadline,
            )
            self.fds = self._read_auth_answer(deadline)
            reply = self.receive_reply(hello, deadline)
        except BaseException:
            self.close()
            raise
        if reply.kind != METHOD_RETURN or not reply.body or not isinstance(reply.body[0], str):
            self.close()
            raise ConnectFailed("the bus refused Hello")
        self.unique_name: str = reply.body[0]

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def next_serial(self) -> int:
        self._serial = self._serial % 0xFFFFFFFF + 1
        return self._serial

    # -- authentication ---------------------------------------------------------------------

    def _read_auth_answer(self, deadline: float) -> bool:
        """Read OK and the answer to NEGOTIATE_UNIX_FD; whether fds may pass."""
        lines: list[bytes] = []
        while len(lines) < 2:
            end = self._buf.find(b"\r\n", self._start, self._end)
            if end < 0:
                if self._end > 4096:
                    raise ConnectFailed("the bus sent a malformed authentication answer")
                self._end += self._recv_into(self._view[self._end :], deadline)
                continue
            lines.append(bytes(self._buf[self._start : end]))
            self._start = end + 2
            if not lines[0].startswith(b"OK "):
                raise ConnectFailed("the bus refused authentication")
        return lines[1] == b"AGREE_UNIX_FD"

    # -- messages ---------------------------------------------------------------------------

    def send(self, data: bytes, fds: Sequence[int], deadline: float | None) -> None:
        """Send whole messages (several at once: one write), ``fds`` with the first bytes."""
        sock = self._socket()
        if fds and not self.fds:
            raise ConnectFailed("the bus does not pass file descriptors")
        ancillary = [(SOL_SOCKET, SCM_RIGHTS, b"".join(_FD.pack(fd) for fd in fds))] if fds else []
        view = memoryview(data)
        while view:
            self._arm(SO_SNDTIMEO, deadline)
            try:
                sent = sock.sendmsg([view], ancillary)
            except BlockingIOError:  # SO_SNDTIMEO: the bus reads nothing more
                raise TimeoutError from None
            ancillary = []
            view = view[sent:]

    def receive(self, deadline: float | None) -> Message:
        """The next message; TimeoutError past ``deadline`` (None: wait for ever). A message
        cut by a timeout stays buffered for the next call."""
        if self._msg is not None:
            return self._read_long(deadline)
        while True:
            at, have = self._start, self._end - self._start
            if have >= FIXED_HEADER:
                total = message_length(self._buf, at)
                if have >= total:
                    self._start = at + total
                    if self._start == self._end:
                        self._start = self._end = 0
                    # bytes: one copy, and the values parse fastest from it
                    return parse_message(bytes(self._view[at : at + total]))
                if total > len(self._buf):
                    # A long message: read the rest straight into one buffer (a 16 MiB reply:
                    # no chunks joined, no byte past the message read).
                    self._msg, self._have = bytearray(total), have
                    self._msg[:have] = self._view[at : self._end]
                    self._start = self._end = 0
                    return self._read_long(deadline)
                if at + total > len(self._buf):
                    self._compact()
            elif self._end == len(self._buf):
                self._compact()
            self._end += self._recv_into(self._view[self._end :], deadline)

    def _compact(self) -> None:
        """Move the unread bytes to the start of the buffer (rare: a message cut by a read)."""
        have = self._end - self._start
        self._buf[:have] = bytes(self._view[self._start : self._end])
        self._start, self._end = 0, have

    def _read_long(self, deadline: float | None) -> Message:
        assert self._msg is not None
        with memoryview(self._msg) as view:
            while self._have < len(view):
                self._have += self._recv_into(view[self._have :], deadline)
            # Many small values parse faster from bytes; a large payload is copied only once
            # from a view.
            msg = parse_message(bytes(view) if len(view) <= _COPY_UP_TO else view)
        self._msg = None
        return msg

    def call(
        self,
        destination: str,
        path: str,
        interface: str | None,
        member: str,
        signature: str = "",
        body: Sequence[Any] = (),
        *,
        timeout: float | None,
    ) -> Message:
        """One method call and its reply (a return or an error), signals skipped."""
        deadline = None if timeout is None else time.monotonic() + timeout
        serial = self.next_serial()
        data, fds = method_call(serial, destination, path, interface, member, signature, body)
        self.send(data, fds, deadline)
        return self.receive_reply(serial, deadline)

    def receive_reply(self, serial: int, deadline: float | None) -> Message:
        while True:
            msg = self.receive(deadline)
            if msg.kind in (METHOD_RETURN, ERROR) and msg.reply_serial == serial:
                return msg

    def _socket(self) -> socket:
        if self._sock is None:
            raise ConnectionError("the connection is closed")
        return self._sock

    def _arm(self, option: int, deadline: float | None) -> None:
        """Have the kernel end the next wait at ``deadline``, give or take _SLACK (a wait that
        ends early raises TimeoutError all the same; the connection waits again for what is
        left)."""
        if deadline is None:
            want = 0.0
        else:
            want = deadline - time.monotonic()
            if want <= 0:
                raise TimeoutError
            want = max(want, 0.001)  # 0 would mean no timeout at all
        armed = self._timeouts[option]
        if armed == want or (want and armed and -_SLACK <= armed - want <= _SLACK):
            return
        sec = int(want)
        self._socket().setsockopt(
            SOL_SOCKET, option, _TIMEVAL.pack(sec, int((want - sec) * 1_000_000))
        )
        self._timeouts[option] = want

    def _recv_into(self, view: memoryview, deadline: float | None) -> int:
        sock = self._socket()
        self._arm(SO_RCVTIMEO, deadline)
        with view:
            try:
                n, ancillary, _flags, _addr = sock.recvmsg_into(
                    [view], _ANCILLARY, MSG_CMSG_CLOEXEC
                )
            except BlockingIOError:  # SO_RCVTIMEO
                raise TimeoutError from None
        if ancillary:
            _close_passed_fds(ancillary)
        if not n:
            raise ConnectionError("the bus closed the connection")
        return n


def _close_passed_fds(ancillary: list[tuple[int, int, bytes]]) -> None:
    for level, kind, payload in ancillary:
        if level == SOL_SOCKET and kind == SCM_RIGHTS:
            usable = len(payload) - len(payload) % _FD.size
            for (fd,) in _FD.iter_unpack(payload[:usable]):
                os.close(fd)


def _auth_lines() -> bytes:
    uid = str(os.getuid()).encode().hex().encode()
    return b"\0AUTH EXTERNAL " + uid + b"\r\nNEGOTIATE_UNIX_FD\r\nBEGIN\r\n"


def _connect_first(targets: list[str | bytes], timeout: float) -> socket:
    """The first target that accepts a connection; the last failure's reason otherwise."""
    reason = "no usable unix socket in the bus address"
    for target in targets:
        sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC)
        try:
            sock.settimeout(timeout)
            sock.connect(target)
            return sock
        except OSError as e:
            sock.close()
            reason = e.strerror or type(e).__name__
    raise ConnectFailed(reason)
