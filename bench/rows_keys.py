"""Rows in the number of keys: a 1 KiB Decrypt and the listing calls with 1 to 1,000 keys.

These run on a second private bus whose agent uses the test suite's cheap Argon2id settings:
what is measured is lookup and listing, not the passphrase KDF, and 1,000 unlocks at the
default 64 MiB would take minutes. Keys are created once per run and reused by every row.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

from bench.context import SMALL, Context
from bench.harness import BENCH_PASSPHRASE, start_logged_bus
from bench.report import Goal, Row, failed
from bench.timing import interleaved

MANY = 1000
FILLER = "fill"


def _checked(reply: Any) -> Any:
    from jeepney import MessageType

    if reply.header.message_type == MessageType.error:
        raise RuntimeError(f"error reply: {reply.body}")
    return reply


class KeysBus:
    """A bus whose agent holds the bench key (imported) plus ``FILLER`` keys."""

    def __init__(self, ctx: Context) -> None:
        conftest = ctx.h.conftest
        self.conftest = conftest
        self.bus = start_logged_bus(conftest, ctx.dir / "keys-bus", ctx.h.log)
        self.ctx = ctx
        from keyagent.client import Client

        self.client = Client(str(self.bus.address), timeout=600)
        self.client.import_key("file", ctx.h.identity()[0], BENCH_PASSPHRASE)
        self.fillers: list[str] = []

    def fill(self, total: int) -> None:
        while len(self.fillers) < total:
            name = f"{FILLER}{len(self.fillers):04d}"
            self.client.create_key(name, BENCH_PASSPHRASE)
            self.fillers.append(name)

    def unlock(self, names: list[str]) -> None:
        for name in names:
            self.client.unlock_with_pipe(name, BENCH_PASSPHRASE)

    def close(self) -> None:
        self.client.close()
        self.conftest.stop_private_bus(self.bus)


def _managed_objects(address: str) -> tuple[Any, Callable[[], object]]:
    from jeepney import DBusAddress, new_method_call
    from jeepney.io.blocking import open_dbus_connection

    conn = open_dbus_connection(bus=address)
    om = DBusAddress(
        "/org/example/KeyAgent", "org.example.KeyAgent", "org.freedesktop.DBus.ObjectManager"
    )
    msg = new_method_call(om, "GetManagedObjects")
    return conn, lambda: _checked(conn.send_and_get_reply(msg, timeout=60))


def _raw_reply(sock: Any) -> bytes:
    """One whole message as bytes, unparsed (16-byte fixed header: body and fields lengths)."""
    buf = bytearray()
    need = 16
    while len(buf) < need:
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise RuntimeError("the bus closed the connection")
        buf += chunk
        if len(buf) >= 16:
            body, fields = int.from_bytes(buf[4:8], "little"), int.from_bytes(buf[12:16], "little")
            need = 16 + (fields + 7) // 8 * 8 + body
    return bytes(buf)


def _managed_objects_raw(address: str) -> tuple[Any, Callable[[], object]]:
    """GetManagedObjects timed until the reply's last byte arrives, not parsed: the agent's
    time (and the transfer), without a Python client's unmarshalling (jeepney's, the row
    below, costs ~85 ms for 1,000 keys' 376 KB of nested variants on its own)."""
    import socket

    from jeepney import DBusAddress, new_method_call
    from jeepney.auth import BEGIN, make_auth_external
    from jeepney.bus import get_bus
    from jeepney.bus_messages import message_bus

    sock = socket.socket(socket.AF_UNIX)
    sock.connect(get_bus(address))
    sock.sendall(b"\0" + make_auth_external())
    if not sock.recv(4096).startswith(b"OK"):
        raise RuntimeError("the bus refused the authentication")
    sock.sendall(BEGIN + new_method_call(message_bus, "Hello").serialise(serial=1))
    _raw_reply(sock)  # Hello's reply (the NameAcquired signal, if it came, is read next time)
    om = DBusAddress(
        "/org/example/KeyAgent", "org.example.KeyAgent", "org.freedesktop.DBus.ObjectManager"
    )
    serial = iter(range(2, 1 << 31))

    def call() -> object:
        sock.sendall(new_method_call(om, "GetManagedObjects").serialise(serial=next(serial)))
        while True:
            reply = _raw_reply(sock)
            if reply[1] == 3:
                raise RuntimeError("error reply")
            if reply[1] == 2:
                return reply

    return sock, call


def _decrypt_p50(kb: KeysBus, ct: bytes, n: int) -> float:
    return interleaved({"d": lambda: kb.client.decrypt(ct)}, n, warmup=20)["d"].p50


def _status_median(kb: KeysBus, reps: int) -> float:
    argv = [sys.executable, "-m", "keyagent", "status"]
    env = kb.bus.env

    def run() -> None:
        subprocess.run(argv, env=env, capture_output=True, check=True, timeout=60)

    return interleaved({"s": run}, reps, warmup=1)["s"].median


def key_count_rows(ctx: Context) -> list[Row]:
    n = ctx.cfg.small_calls // 4
    group = f"number of keys: {SMALL} B Decrypt p50 ({n} calls), listing calls"
    try:
        kb = KeysBus(ctx)
    except Exception as e:
        return [failed(group, "(keys bus)", "s", f"{type(e).__name__}: {e}")]
    try:
        return _key_rows(ctx, kb, group, n)
    except Exception as e:
        return [failed(group, "(whole group)", "s", f"{type(e).__name__}: {e}")]
    finally:
        kb.close()


def _key_rows(ctx: Context, kb: KeysBus, group: str, n: int) -> list[Row]:
    ct = ctx.small_ciphertext()
    kb.unlock(["file"])
    _decrypt_p50(kb, ct, n)  # a fresh agent's first calls read slower: not the baseline
    one = _decrypt_p50(kb, ct, n)
    rows = [Row(group, "1 key stored, unlocked (baseline)", one, "s")]
    kb.fill(MANY - 1)
    stored = _decrypt_p50(kb, ct, n)
    rows.append(
        Row(group, f"{MANY} keys stored, 1 unlocked", stored, "s", one, "1 key", Goal("<=", 1.2))
    )
    for unlocked in (100, MANY):
        kb.unlock(kb.fillers[: unlocked - 1])
        p50 = _decrypt_p50(kb, ct, n)
        rows.append(
            Row(
                group,
                f"{unlocked} unlocked, file's key first",
                p50,
                "s",
                one,
                "1 key",
                Goal("<=", 1.5),
            )
        )
    conn, gmo = _managed_objects(str(kb.bus.address))
    sock, raw = _managed_objects_raw(str(kb.bus.address))
    try:
        p50 = interleaved({"g": gmo, "r": raw}, 50, warmup=3)
    finally:
        conn.close()
        sock.close()
    rows.append(
        Row(
            group,
            f"GetManagedObjects, {MANY} keys (reply received)",
            p50["r"].p50,
            "s",
            goal=Goal("<=", 0.010, "value"),
        )
    )
    rows.append(
        Row(group, f"GetManagedObjects, {MANY} keys (parsed by jeepney)", p50["g"].p50, "s")
    )
    rows.append(Row(group, f"keyagent status, {MANY} keys", _status_median(kb, 5), "s"))
    return rows
