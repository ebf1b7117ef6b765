"""Helpers for the agent's tests: a tiny jeepney client, gdbus wrappers, process facts.

Test-only; deliberately independent of `keyagent.Client` so the agent is checked against
the wire contract, not against our own client library.
"""

from __future__ import annotations

import fcntl
import os
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from jeepney import DBusAddress, HeaderFields, MessageType, new_method_call
from jeepney.io.blocking import DBusConnection, open_dbus_connection

from conftest import TEST_AGENT_ARGS, PrivateBus, start_private_bus, stop_private_bus
from keyagent import protocol

BUS = protocol.BUS_NAME
MANAGER = protocol.MANAGER_PATH
MI = protocol.MANAGER_INTERFACE
KI = protocol.KEY_INTERFACE
PROPS = "org.freedesktop.DBus.Properties"
#: Export uses scrypt; a small work factor keeps the tests fast.
PASS = "pw"
FAST_ARGS = (*TEST_AGENT_ARGS, "--scrypt-work-factor", "10")


class CallError(Exception):
    """An error reply: ``name`` is the D-Bus error name, ``text`` its message, ``data`` the
    rest of its body (``Locked``: the candidate names)."""

    def __init__(self, name: str, text: str, data: tuple[Any, ...] = ()) -> None:
        super().__init__(f"{name}: {text}")
        self.name = name
        self.text = text
        self.data = data

    @property
    def short(self) -> str:
        return self.name.rsplit(".", 1)[-1]


class Client:
    """A minimal blocking client on jeepney (fd passing enabled)."""

    def __init__(self, address: str, *, timeout: float = 30.0) -> None:
        self.conn: DBusConnection = open_dbus_connection(bus=address, enable_fds=True)
        self.timeout = timeout

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def unique_name(self) -> str:
        return str(self.conn.unique_name)

    def call(
        self,
        path: str,
        interface: str,
        member: str,
        signature: str = "",
        *args: Any,
        timeout: float | None = None,
    ) -> tuple[Any, ...]:
        addr = DBusAddress(path, bus_name=BUS, interface=interface)
        msg = new_method_call(addr, member, signature or None, tuple(args))
        reply = self.conn.send_and_get_reply(msg, timeout=timeout or self.timeout)
        if reply.header.message_type == MessageType.error:
            name = reply.header.fields.get(HeaderFields.error_name, "")
            text = reply.body[0] if reply.body else ""
            raise CallError(name, text, tuple(reply.body[1:]))
        return tuple(reply.body)

    # conveniences for the manager and keys
    def m(self, member: str, signature: str = "", *args: Any, **kw: Any) -> tuple[Any, ...]:
        return self.call(MANAGER, MI, member, signature, *args, **kw)

    def k(self, name: str, member: str, signature: str = "", *args: Any) -> tuple[Any, ...]:
        return self.call(protocol.key_path(name), KI, member, signature, *args)

    def prop(self, path: str, interface: str, name: str) -> Any:
        return self.call(path, PROPS, "Get", "ss", interface, name)[0][1]

    def create(self, name: str, passphrase: str = PASS, **options: tuple[str, Any]) -> str:
        return str(self.m("CreateKey", "ssa{sv}", name, passphrase, options)[1])

    def unlock(self, name: str, passphrase: str = PASS, **options: tuple[str, Any]) -> None:
        self.k(name, "Unlock", "sa{sv}", passphrase, options)

    def unlock_for(self, name: str, idle: int, maximum: int | None = None) -> None:
        """Unlock with the idle-timeout (and max-timeout) options."""
        options: dict[str, tuple[str, Any]] = {"idle-timeout": ("u", idle)}
        if maximum is not None:
            options["max-timeout"] = ("u", maximum)
        self.k(name, "Unlock", "sa{sv}", PASS, options)

    def encrypt(self, recipients: list[str], data: bytes, **options: tuple[str, Any]) -> bytes:
        return bytes(self.m("Encrypt", "asaya{sv}", recipients, data, options)[0])

    def decrypt(self, data: bytes, **options: tuple[str, Any]) -> tuple[bytes, str]:
        plain, key = self.m("Decrypt", "aya{sv}", data, options)
        return bytes(plain), str(key)

    def hold_decrypt_streams(self, count: int) -> list[tuple[int, int]]:
        """Start ``count`` DecryptFd streams that wait for input (replies left unread), and
        wait until each one runs: its worker has read the first byte we gave it. Returns each
        stream's (input write end, output read end): closing them lets it end."""
        addr = DBusAddress(MANAGER, bus_name=BUS, interface=MI)
        held, watched = [], []
        for _ in range(count):
            in_r, in_w = os.pipe()
            out_r, out_w = os.pipe()
            self.conn.send(new_method_call(addr, "DecryptFd", "hha{sv}", (in_r, out_w, {})))
            os.write(in_w, b"a")  # an age header's first byte: the stream reads it, then waits
            os.close(out_w)
            held.append((in_w, out_r))
            watched.append(in_r)  # kept only to see when that byte is taken
        try:
            started = wait_until(lambda: not any(unread(fd) for fd in watched), 30, 0.002)
            assert started, "the streams did not start"
        finally:
            for fd in watched:
                os.close(fd)
        return held


def opt(**kw: tuple[str, Any]) -> dict[str, tuple[str, Any]]:
    """An a{sv} for jeepney: opt(armor=("b", True))."""
    return kw


def gdbus(bus: PrivateBus, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return bus.run(["gdbus", "call", "--session", "--dest", BUS, *args], check=check)


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def unread(fd: int) -> int:
    """Bytes waiting in a pipe, seen from its read end (FIONREAD: nothing is consumed)."""
    count: int = struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
    return count


def wait_until(cond: Callable[[], bool], timeout: float = 10.0, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()


def settle_fds(pid: int, at_most: int, timeout: float = 10.0) -> int:
    """The process's fd count once it is down to ``at_most`` (or whatever it is at the timeout)."""
    wait_until(lambda: fd_count(pid) <= at_most, timeout)
    return fd_count(pid)


def agent_pid(bus: PrivateBus) -> int:
    pid = bus.agent_pid()
    assert pid is not None, "the agent is not running"
    return pid


@contextmanager
def module_bus(tmp: Path, **kw: Any) -> Iterator[PrivateBus]:
    bus = start_private_bus(tmp, **kw)
    try:
        yield bus
    finally:
        stop_private_bus(bus)


@contextmanager
def module_bus_with_key(tmp: Path, name: str, **kw: Any) -> Iterator[PrivateBus]:
    """`module_bus` whose agent holds key ``name``, created and unlocked with the defaults."""
    with module_bus(tmp, **kw) as bus:
        with Client(bus.address) as c:
            c.create(name)
            c.unlock(name)
        yield bus


def feed(fd: int, data: bytes) -> threading.Thread:
    """Write ``data`` to the pipe ``fd`` from a thread, then close it (a reader that leaves
    early ends the writing quietly)."""

    def run() -> None:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view[: 1 << 20]) :]
        except BrokenPipeError:
            pass
        finally:
            os.close(fd)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t
