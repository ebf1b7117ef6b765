"""EncryptFd/DecryptFd: streaming through fds in worker threads, and every fd closed."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyrage
import pytest
from jeepney import DBusAddress, new_method_call

from agent_support import (
    FAST_ARGS,
    MANAGER,
    MI,
    PASS,
    CallError,
    Client,
    agent_pid,
    fd_count,
    feed,
    module_bus,
    settle_fds,
)
from conftest import ROOT, PrivateBus
from keyagent import protocol

MAX_STREAMS = 2
PROPS = "org.freedesktop.DBus.Properties"


@pytest.fixture(scope="module")
def bus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateBus]:
    args = (*FAST_ARGS, "--max-streams", str(MAX_STREAMS))
    with module_bus(tmp_path_factory.mktemp("streams"), agent_args=args) as b:
        with Client(b.address) as c:
            c.create("s")
            c.unlock("s")
        yield b


def _drain(fd: int, sink: bytearray) -> threading.Thread:
    def run() -> None:
        try:
            while chunk := os.read(fd, 1 << 20):
                sink.extend(chunk)
        finally:
            os.close(fd)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def stream(c: Client, member: str, data: bytes, *args: object) -> tuple[tuple[object, ...], bytes]:
    """Run EncryptFd (args: recipients, options) or DecryptFd (args: options) over pipes."""
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    out = bytearray()
    feeder, drainer = feed(in_w, data), _drain(out_r, out)
    try:
        if member == "EncryptFd":
            recipients, options = args
            reply = c.m(member, "ashha{sv}", recipients, in_r, out_w, options, timeout=120)
        else:
            (options,) = args
            reply = c.m(member, "hha{sv}", in_r, out_w, options, timeout=120)
    finally:
        os.close(in_r)
        os.close(out_w)
        feeder.join(60)
        drainer.join(60)
    return reply, bytes(out)


def test_stream_round_trip_and_interop(bus: PrivateBus) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    with Client(bus.address) as c:
        recipient = c.prop(protocol.key_path("s"), protocol.KEY_INTERFACE, "Recipient")
        (written,), ct = stream(c, "EncryptFd", data, ["s"], {})
        assert written == len(ct) > len(data)
        (key, count), plain = stream(c, "DecryptFd", ct, {})
        assert (key, count, plain) == ("s", len(data), data)
        (written,), armored = stream(
            c, "EncryptFd", data[:1000], [recipient], {"armor": ("b", True)}
        )
        assert armored.startswith(b"-----BEGIN AGE ENCRYPTED FILE-----")
        assert stream(c, "DecryptFd", armored, {})[1] == data[:1000]
        ident = pyrage.x25519.Identity.generate()
        ct = stream(c, "EncryptFd", data, [str(ident.to_public())], {})[1]
        assert pyrage.decrypt(ct, [ident]) == data
        (_written,), ct = stream(c, "EncryptFd", b"pass", [], {"passphrase": ("s", "pp")})
        assert stream(c, "DecryptFd", ct, {"passphrase": ("s", "pp")})[0] == ("", 4)


def test_stream_errors_are_named_and_leave_no_fds(bus: PrivateBus) -> None:
    with Client(bus.address) as c:
        c.prop(MANAGER, MI, "Version")
        pid = agent_pid(bus)
        base = fd_count(pid)
        ct = stream(c, "EncryptFd", b"z" * 200_000, ["s"], {})[1]
        for data, expected in [
            (b"", "Malformed"),
            (b"not age at all" * 100, "Malformed"),
            (ct[:-100], "Integrity"),
        ]:
            with pytest.raises(CallError) as e:
                stream(c, "DecryptFd", data, {})
            assert e.value.short == expected
        # the reader of the output went away: EPIPE
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        os.close(out_r)
        feeder = feed(in_w, ct)
        with pytest.raises(CallError) as e:
            c.m("DecryptFd", "hha{sv}", in_r, out_w, {})
        assert e.value.short == "Failed"
        os.close(in_r)
        os.close(out_w)
        feeder.join(10)
        with pytest.raises(CallError) as e:  # a bad option: InvalidArgs, fds closed too
            stream(c, "DecryptFd", ct, {"armor": ("b", True)})
        assert e.value.name == protocol.INVALID_ARGS
        assert settle_fds(pid, base) <= base


def test_parallel_streams_keep_the_bus_responsive(bus: PrivateBus) -> None:
    data = os.urandom(8 * 1024 * 1024)
    with Client(bus.address) as c:
        ct = stream(c, "EncryptFd", data, ["s"], {})[1]
    results: list[bytes] = []

    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with Client(bus.address) as own:
                results.append(stream(own, "DecryptFd", ct, {})[1])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    with Client(bus.address) as c:
        pings = 0
        while any(t.is_alive() for t in threads):
            assert c.prop(MANAGER, MI, "Version") == "0.1.0"
            pings += 1
    for t in threads:
        t.join()
    assert errors == []
    assert results == [data] * 4
    assert pings > 0


def test_too_many_streams_per_caller(bus: PrivateBus) -> None:
    with Client(bus.address) as c:
        held = c.hold_decrypt_streams(MAX_STREAMS)  # streams that wait for input
        with pytest.raises(CallError) as e:
            stream(c, "DecryptFd", b"", {})
        assert e.value.short == "RateLimited"
        with Client(bus.address) as other:  # the limit is per caller
            with pytest.raises(CallError) as e:
                stream(other, "DecryptFd", b"", {})
            assert e.value.short == "Malformed"
        for in_w, out_r in held:
            os.close(in_w)  # EOF: the waiting streams end (Malformed)
            os.close(out_r)


def test_streams_of_a_caller_that_leaves_are_cancelled(bus: PrivateBus) -> None:
    with Client(bus.address) as c:
        c.prop(MANAGER, MI, "Version")
    pid = agent_pid(bus)
    base = fd_count(pid)
    leaving = Client(bus.address)
    # We keep the write end open: the stream would wait forever.
    ((in_w, out_r),) = leaving.hold_decrypt_streams(1)
    assert fd_count(pid) >= base + 2  # the stream holds its two fds
    leaving.close()
    assert settle_fds(pid, base) <= base  # cancelled when its caller left the bus
    with pytest.raises(BrokenPipeError):
        os.write(in_w, b"x")  # nobody reads the input any more
    os.close(in_w)
    os.close(out_r)


KILLED_CLIENT = """
import os, sys, time
from jeepney import DBusAddress, new_method_call
from jeepney.io.blocking import open_dbus_connection
conn = open_dbus_connection(bus=sys.argv[1], enable_fds=True)
src = os.open(sys.argv[2], os.O_RDONLY)
r, w = os.pipe()
addr = DBusAddress("/org/example/KeyAgent", bus_name="org.example.KeyAgent",
                   interface="org.example.KeyAgent")
conn.send(new_method_call(addr, "DecryptFd", "hha{sv}", (src, w, {})))
os.close(w)
got = 0
while got < 4 * 1024 * 1024:
    got += len(os.read(r, 1 << 16))
print("reading", flush=True)
time.sleep(60)
"""


def test_client_killed_mid_stream(bus: PrivateBus, tmp_path: Path) -> None:
    big = tmp_path / "big.age"
    with Client(bus.address) as c:
        c.prop(MANAGER, MI, "Version")
        src = os.open("/dev/zero", os.O_RDONLY)
        reader = subprocess.Popen(
            ["head", "-c", str(64 * 1024 * 1024)], stdin=src, stdout=subprocess.PIPE
        )
        os.close(src)
        assert reader.stdout is not None
        out = os.open(big, os.O_WRONLY | os.O_CREAT, 0o600)
        c.m("EncryptFd", "ashha{sv}", ["s"], reader.stdout.fileno(), out, {}, timeout=120)
        os.close(out)
        reader.stdout.close()
        reader.wait()
    pid = agent_pid(bus)
    base = fd_count(pid)
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'service'}:{ROOT / 'cli'}"}
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_CLIENT, bus.address, str(big)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "reading"
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stdout.close()
    assert settle_fds(pid, base) <= base
    with Client(bus.address) as c:
        assert c.prop(MANAGER, MI, "Version") == "0.1.0"
    assert bus.agent_pid() == pid


def test_fds_of_a_new_callers_queued_calls_stay_with_their_call(bus: PrivateBus) -> None:
    """A new caller's calls are held until its uid is known. dbus-fast gives every fd-less
    message one shared list and appends the next message's fds to it: a held Get would
    grow the DecryptFd's fds (and lose them to the stray-fd cleanup) without a copy.
    (Whether the DecryptFd arrives while the Get is held is a race: five tries.)"""
    with Client(bus.address) as c:
        ct = stream(c, "EncryptFd", b"queued", ["s"], {})[1]
    props = DBusAddress(MANAGER, bus_name=protocol.BUS_NAME, interface=PROPS)
    manager = DBusAddress(MANAGER, bus_name=protocol.BUS_NAME, interface=MI)
    for _ in range(5):
        with Client(bus.address) as fresh:
            in_r, in_w = os.pipe()
            out_r, out_w = os.pipe()
            fresh.conn.send(new_method_call(props, "Get", "ss", (MI, "Version")))
            fresh.conn.send(new_method_call(manager, "DecryptFd", "hha{sv}", (in_r, out_w, {})))
            os.close(in_r)
            os.close(out_w)
            os.write(in_w, ct)
            os.close(in_w)
            replies: list[Any] = []
            while len(replies) < 2:
                msg = fresh.conn.receive(timeout=10)
                if msg.header.message_type.name != "signal":
                    replies.append(msg)
            assert [m.header.message_type.name for m in replies] == ["method_return"] * 2
            assert replies[1].body == ("s", 6)
            assert os.read(out_r, 100) == b"queued"
            os.close(out_r)


@contextlib.contextmanager
def waiting_streams(address: str, *, first_byte: bytes) -> Iterator[None]:
    """Sixteen DecryptFd streams (the whole stream pool), four on each of four connections,
    on pipes that stay open but get nothing more than ``first_byte``: with a byte, each
    stream has started and holds a thread; without, it waits for its input to be readable."""
    manager = DBusAddress(MANAGER, bus_name=protocol.BUS_NAME, interface=MI)
    holders: list[Client] = []
    silent: list[int] = []
    try:
        for _ in range(4):
            holder = Client(address)
            holders.append(holder)
            for _ in range(4):
                r, w = os.pipe()
                out_r, out_w = os.pipe()
                if first_byte:
                    os.write(w, first_byte)
                holder.conn.send(new_method_call(manager, "DecryptFd", "hha{sv}", (r, out_w, {})))
                os.close(r)
                os.close(out_w)
                silent += [w, out_r]
            holder.prop(MANAGER, MI, "Version")  # its four calls have reached the agent
        yield
    finally:
        for fd in silent:
            os.close(fd)
        for holder in holders:
            holder.close()


def unlock_from_pipe(client: Client, name: str) -> None:
    """UnlockFromFd with the test passphrase (PASS) on a pipe that is already written and closed."""
    r, w = os.pipe()
    os.write(w, PASS.encode() + b"\n")
    os.close(w)
    try:
        client.k(name, "UnlockFromFd", "ha{sv}", r, {})
    finally:
        os.close(r)


def test_streams_on_silent_pipes_starve_no_one(private_bus: PrivateBus, tmp_path: Path) -> None:
    """Four connections, each with four DecryptFd streams on pipes nobody writes (16, the
    whole stream pool): another client's UnlockFromFd and DecryptFd still run (issue 13).
    A waiting stream holds no thread; it only uses up its own caller's quota."""
    with Client(private_bus.address) as setup:
        recipient = setup.create("starve")
        ct = setup.encrypt([recipient], b"not starved")
    with (
        waiting_streams(private_bus.address, first_byte=b""),
        Client(private_bus.address, timeout=30) as other,
    ):
        unlock_from_pipe(other, "starve")
        src = tmp_path / "in.age"
        src.write_bytes(ct)
        out = tmp_path / "out"
        fi = os.open(src, os.O_RDONLY)
        fo = os.open(out, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            assert other.m("DecryptFd", "hha{sv}", fi, fo, {}) == ("starve", 11)
        finally:
            os.close(fi)
            os.close(fo)
        assert out.read_bytes() == b"not starved"


def test_unlocks_never_queue_behind_stalled_streams(private_bus: PrivateBus) -> None:
    """Sixteen streams that started (their input sent a byte) and then stalled hold every
    stream thread; an UnlockFromFd still answers: it is read on the event loop (issue 13)."""
    with Client(private_bus.address) as setup:
        setup.create("stalled")
    with (
        waiting_streams(private_bus.address, first_byte=b"a"),
        Client(private_bus.address, timeout=30) as other,
    ):
        unlock_from_pipe(other, "stalled")
        assert (
            other.prop(protocol.key_path("stalled"), "org.example.KeyAgent.Key", "Locked") is False
        )
