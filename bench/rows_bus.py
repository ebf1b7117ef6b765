"""Bus rows: 1 KiB Decrypt/Encrypt latency against the bus floor, command start, cold
activation, and calls per second with 1, 8 and 32 concurrent client processes."""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from typing import Any

from bench.context import SMALL, Context
from bench.report import Goal, Row, failed
from bench.timing import Stats, interleaved, percentile, stopwatch, time_once


def _jeepney_conn(address: str) -> Any:
    from jeepney.io.blocking import open_dbus_connection

    return open_dbus_connection(bus=address)


def _get_id(conn: Any) -> Callable[[], object]:
    """The bus floor: org.freedesktop.DBus.GetId, answered by the bus daemon itself."""
    from jeepney import DBusAddress, new_method_call

    dbus = DBusAddress("/org/freedesktop/DBus", "org.freedesktop.DBus", "org.freedesktop.DBus")
    msg = new_method_call(dbus, "GetId")
    return lambda: conn.send_and_get_reply(msg, timeout=30)


def small_rows(ctx: Context) -> list[Row]:
    n = ctx.cfg.small_calls
    group = f"small messages, {SMALL} B over the bus ({n} calls each, interleaved)"
    try:
        ctx.h.ensure_key()
        client = ctx.h.client()
        ct = ctx.small_ciphertext()
        plain = ctx.plaintext(SMALL).read_bytes()
        recipient = ctx.h.identity()[1]
        if client.decrypt(ct)[0] != plain:
            raise RuntimeError("Decrypt returned the wrong plaintext")
    except Exception as e:
        why = f"agent unavailable: {type(e).__name__}: {e}"
        return [
            failed(group, f"{m} p50", "s", why, Goal("<=", 3.0)) for m in ("Decrypt", "Encrypt")
        ]
    conn = _jeepney_conn(ctx.h.address)
    fns: dict[str, Callable[[], object]] = {
        "floor": _get_id(conn),
        "Decrypt": lambda: client.decrypt(ct),
        "Encrypt": lambda: client.encrypt([recipient], plain),
    }
    stats = interleaved(fns, n, warmup=20)
    conn.close()
    client.close()
    floor = stats["floor"]
    rows = [
        Row(group, "bus floor GetId p50 (baseline)", floor.p50, "s", extra=_pct(floor)),
        Row(group, "bus floor GetId p99", floor.p99, "s"),
    ]
    for m in ("Decrypt", "Encrypt"):
        s = stats[m]
        rows.append(
            Row(
                group,
                f"{m} p50",
                s.p50,
                "s",
                floor.p50,
                "floor p50",
                Goal("<=", 3.0),
                extra=_pct(s),
            )
        )
        rows.append(Row(group, f"{m} p99", s.p99, "s", floor.p99, "floor p99"))
    return rows


def _pct(s: Stats) -> dict[str, Any]:
    return {
        "p50": s.p50,
        "p90": s.percentile(90),
        "p99": s.p99,
        "max": max(s.samples),
        "n": len(s.samples),
    }


def _run(argv: list[str], env: dict[str, str]) -> None:
    out = subprocess.run(argv, env=env, capture_output=True, text=True, check=False, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv[:4])} exited {out.returncode}: {out.stderr.strip()[-300:]}"
        )


def start_rows(ctx: Context) -> list[Row]:
    reps = ctx.cfg.start_reps
    group = f"command start, {SMALL} B file, key unlocked (median of {reps})"
    env = ctx.h.env
    py = ctx.python()
    src = ctx.ciphertext(SMALL)
    out = ctx.out("start")
    fns: dict[str, Callable[[], object]] = {
        "python -c pass": lambda: _run([py, "-c", "pass"], env),
    }
    notes: dict[str, str] = {}
    try:
        ctx.h.ensure_key()
        argv = [py, "-m", "keyagent", "decrypt", "-o", str(out), str(src)]
        _run(argv, env)
        fns["keyagent decrypt"] = lambda: _run(argv, env)
    except Exception as e:
        notes["keyagent decrypt"] = f"agent unavailable: {type(e).__name__}: {e}"
    if shutil.which("age"):
        idf = str(ctx.h.identity_file())
        fns["age -d -i"] = lambda: _run(["age", "-d", "-i", idf, "-o", str(out), str(src)], env)
    else:
        notes["age -d -i"] = "age is not installed"
    stats = interleaved(fns, reps, warmup=1, after=lambda _n: out.unlink(missing_ok=True))
    base = stats["python -c pass"].median
    rows = [Row(group, "python -c pass (baseline)", base, "s")]
    for name, goal in (("keyagent decrypt", Goal("<=", 4.0)), ("age -d -i", None)):
        if name in stats:
            rows.append(
                Row(
                    group,
                    name,
                    stats[name].median,
                    "s",
                    base,
                    "python",
                    goal,
                    extra={"seconds": list(stats[name].samples)},
                )
            )
        else:
            rows.append(failed(group, name, "s", notes[name], goal))
    return rows


def cold_rows(ctx: Context) -> list[Row]:
    """First call to a stopped agent until its reply (bus activation, Python start, keystore)."""
    reps = ctx.cfg.cold_reps
    group = f"cold activation (median of {reps})"
    from jeepney import DBusAddress, new_method_call

    conn = _jeepney_conn(ctx.h.address)
    addr = DBusAddress(
        "/org/example/KeyAgent", "org.example.KeyAgent", "org.freedesktop.DBus.Properties"
    )
    samples: list[float] = []
    try:
        for _ in range(reps):
            ctx.h.stop_agent()
            msg = new_method_call(addr, "Get", "ss", ("org.example.KeyAgent", "Version"))
            with stopwatch() as t:
                _checked(conn.send_and_get_reply(msg, timeout=60))
            samples.append(t[0])
    except Exception as e:
        return [failed(group, "first call until reply", "s", f"{type(e).__name__}: {e}")]
    finally:
        conn.close()
    py = ctx.python()
    base = Stats(
        tuple(time_once(lambda: _run([py, "-c", "pass"], ctx.h.env)) for _ in range(reps))
    ).median
    return [
        Row(
            group,
            "first call until reply",
            Stats(tuple(samples)).median,
            "s",
            base,
            "python -c pass",
            extra={"seconds": samples},
        )
    ]


def _checked(reply: Any) -> Any:
    from jeepney import MessageType

    if reply.header.message_type == MessageType.error:
        raise RuntimeError(f"error reply: {reply.body}")
    return reply


# -- concurrent clients -----------------------------------------------------------------------


def _worker(address: str, ct: bytes, barrier: Any, seconds: float, results: Any) -> None:
    """One client process: warm up, wait for the others, call Decrypt for ``seconds``."""
    from keyagent.client import Client

    count = errors = 0
    lat: list[float] = []
    with Client(address, timeout=60) as c:
        c.decrypt(ct)
        barrier.wait(timeout=120)
        end = time.perf_counter() + seconds
        while True:
            t0 = time.perf_counter()
            if t0 >= end:
                break
            try:
                c.decrypt(ct)
                count += 1
            except Exception:
                errors += 1
            lat.append(time.perf_counter() - t0)
    results.put((count, errors, percentile(lat, 50) if lat else 0.0))


def concurrency_rows(ctx: Context) -> list[Row]:
    secs = ctx.cfg.concurrency_seconds
    group = f"concurrent clients of 1 KiB Decrypt (processes, {secs:g} s each)"
    try:
        ctx.h.ensure_key()
        ct = ctx.small_ciphertext()
    except Exception as e:
        return [failed(group, "1 client", "calls/s", f"agent unavailable: {type(e).__name__}: {e}")]
    mpc = mp.get_context("spawn")  # no fork of a process holding bus connections
    rows: list[Row] = []
    one: float | None = None
    for n in (1, 8, 32):
        barrier = mpc.Barrier(n)
        results = mpc.Queue()
        procs = [
            mpc.Process(target=_worker, args=(ctx.h.address, ct, barrier, secs, results))
            for _ in range(n)
        ]
        for p in procs:
            p.start()
        got = [results.get(timeout=180) for _ in procs]
        for p in procs:
            p.join(timeout=30)
        calls = sum(g[0] for g in got)
        errors = sum(g[1] for g in got)
        rate = calls / secs
        note = f"{errors} failed calls" if errors else ""
        rows.append(
            Row(
                group,
                f"{n} client{'s' if n > 1 else ''}",
                rate,
                "calls/s",
                one,
                "1 client" if one else "",
                note=note,
                extra={
                    "calls": calls,
                    "errors": errors,
                    "client_p50_s": sorted(g[2] for g in got)[len(got) // 2],
                    "cpus": os.cpu_count(),
                },
            )
        )
        if one is None:
            one = rate
    return rows
