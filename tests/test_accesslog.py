"""The AccessLog signal: one per key operation, with the caller's pid and executable, the
result, and never a secret. Checked with a jeepney subscriber on a real private bus."""

from __future__ import annotations

import os
import subprocess
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jeepney import HeaderFields, MatchRule, Message
from jeepney.bus_messages import message_bus
from jeepney.io.blocking import DBusConnection, open_dbus_connection

from agent_support import FAST_ARGS, MANAGER, MI, CallError, Client, module_bus
from conftest import PrivateBus
from keyagent import protocol
from keyagentd.audit import Audit, ExecutableCache
from keyagentd.auth import Caller
from keyagentd.policy import AccessRecord

SECRET = "correct horse battery staple"
WRONG = "not-the-passphrase-42"
ME = os.readlink("/proc/self/exe")  # what the agent reads for this process


@pytest.fixture(scope="module")
def bus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateBus]:
    with module_bus(tmp_path_factory.mktemp("accesslog"), agent_args=FAST_ARGS) as b:
        yield b


class Watcher:
    """A second connection subscribed to AccessLog, as a desktop audit tool would be."""

    def __init__(self, bus: PrivateBus) -> None:
        self.conn: DBusConnection = open_dbus_connection(bus=bus.address)
        rule = MatchRule(type="signal", interface=MI, member="AccessLog", path=MANAGER)
        self.conn.send_and_get_reply(message_bus.AddMatch(rule), timeout=10)
        self.queue: deque[Message] = deque()
        self._filter = self.conn.filter(rule, queue=self.queue, bufsize=1000)
        self._filter.__enter__()
        self.raw: list[tuple[Any, ...]] = []

    def next(self) -> tuple[str, str, int, str, str]:
        msg = self.conn.recv_until_filtered(self.queue, timeout=20)
        body = tuple(msg.body)
        self.raw.append(body)
        assert msg.header.fields[HeaderFields.signature] == "ssuss"
        return body  # type: ignore[return-value]

    def close(self) -> None:
        self._filter.__exit__(None, None, None)
        self.conn.close()


def test_access_log_signals_for_unlock_decrypt_lock(bus: PrivateBus) -> None:
    watcher = Watcher(bus)
    pid = os.getpid()
    try:
        with Client(bus.address) as c:
            c.create("audited", SECRET)
            assert watcher.next() == ("CreateKey", "audited", pid, ME, "ok")
            with pytest.raises(CallError):
                c.unlock("audited", WRONG)
            assert watcher.next() == ("Unlock", "audited", pid, ME, "BadPassphrase")
            c.unlock("audited", SECRET)
            assert watcher.next() == ("Unlock", "audited", pid, ME, "ok")

            ct = c.encrypt(["audited"], b"hello")
            assert watcher.next() == ("Encrypt", "audited", pid, ME, "ok")
            assert c.decrypt(ct) == (b"hello", "audited")
            assert watcher.next() == ("Decrypt", "audited", pid, ME, "ok")
            # The Fd methods name their keys as Encrypt and Decrypt do (issue 17).
            r, w = os.pipe()
            out_r, out_w = os.pipe()
            os.write(w, b"streamed")
            os.close(w)
            c.m("EncryptFd", "ashha{sv}", ["audited"], r, out_w, {})
            os.close(r)
            os.close(out_w)
            assert watcher.next() == ("EncryptFd", "audited", pid, ME, "ok")
            with os.fdopen(out_r, "rb") as f:
                streamed = f.read()
            r, w = os.pipe()
            out_r, out_w = os.pipe()
            os.write(w, streamed)
            os.close(w)
            c.m("DecryptFd", "hha{sv}", r, out_w, {})
            os.close(r)
            os.close(out_w)
            os.close(out_r)
            assert watcher.next() == ("DecryptFd", "audited", pid, ME, "ok")

            c.k("audited", "Lock")
            assert watcher.next() == ("Lock", "audited", pid, ME, "ok")
            with pytest.raises(CallError) as e:
                c.decrypt(ct)
            assert e.value.short == "Locked"
            assert watcher.next() == ("Decrypt", "", pid, ME, "Locked")  # no key was used

            c.m("LockAll")
            assert watcher.next() == ("LockAll", "", pid, ME, "ok")
            # Encrypt to a plain recipient names no key.
            recipient = c.prop(protocol.key_path("audited"), protocol.KEY_INTERFACE, "Recipient")
            c.encrypt([recipient], b"x")
            assert watcher.next() == ("Encrypt", "", pid, ME, "ok")
            # Property reads are not operations: the next signal is the Export's.
            c.prop(protocol.key_path("audited"), protocol.KEY_INTERFACE, "Locked")
            c.k("audited", "Export", "s", SECRET)
            assert watcher.next() == ("Export", "audited", pid, ME, "ok")
        for body in watcher.raw:
            assert not any(SECRET in str(v) or WRONG in str(v) for v in body)
    finally:
        watcher.close()


def test_access_log_names_another_program(bus: PrivateBus) -> None:
    """A caller that is a different process (gdbus): its own pid and executable."""
    watcher = Watcher(bus)
    try:
        proc = subprocess.Popen(
            ["gdbus", "call", "--session", "--dest", protocol.BUS_NAME,
             "--object-path", MANAGER, "--method", f"{MI}.LockAll"],
            env=bus.env, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        assert proc.wait(30) == 0
        op, key, pid, exe, result = watcher.next()
        assert (op, key, pid, result) == ("LockAll", "", proc.pid, "ok")
        assert Path(exe).name == "gdbus"
    finally:
        watcher.close()


# --- units: the record and the executable cache -------------------------------------------


def test_executable_is_read_once_per_caller() -> None:
    looked: list[int] = []

    def lookup(pid: int) -> str | None:
        looked.append(pid)
        return f"/bin/p{pid}"

    cache = ExecutableCache(size=2, lookup=lookup)
    assert cache.get(":1.1", 11) == "/bin/p11"
    assert cache.get(":1.1", 11) == "/bin/p11"
    assert looked == [11]
    cache.get(":1.2", 12)
    cache.get(":1.3", 13)  # evicts :1.1, the least recently used
    assert len(cache) == 2
    cache.get(":1.1", 11)
    assert looked == [11, 12, 13, 11]
    cache.forget(":1.3")
    cache.get(":1.3", 13)
    assert looked[-1] == 13


def test_record_is_built_from_the_caller_it_is_given() -> None:
    sent: list[AccessRecord] = []
    log = Audit(sent.append, ExecutableCache(lookup=lambda pid: "/usr/bin/tool\nx"))
    caller = Caller(":1.9", os.getuid(), 4242)
    log.record("Decrypt", "work", caller, "ok")
    log.record("Export", "work", caller, "error")  # an internal error: the caller saw Failed
    log.record("LockAll", "", None, "ok")  # no caller known: pid 0, no executable
    assert [r.body() for r in sent] == [
        ["Decrypt", "work", 4242, "/usr/bin/tool?x", "ok"],
        ["Export", "work", 4242, "/usr/bin/tool?x", "Failed"],
        ["LockAll", "", 0, "", "ok"],
    ]


def test_a_failing_emitter_never_breaks_the_operation() -> None:
    def broken(record: AccessRecord) -> None:
        raise OSError("bus gone")

    Audit(broken).record("Lock", "k", None, "ok")  # no exception
