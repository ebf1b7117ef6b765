"""Agent rows: parallel DecryptFd streams, unlock (Argon2id) cost, and memory (RSS)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from bench.context import Context
from bench.harness import (
    BENCH_KEY,
    BENCH_PASSPHRASE,
    MEMORY_KEY_PREFIX,
    proc_status,
    reset_hwm,
)
from bench.report import Goal, Row, failed
from bench.timing import MIB, Stats, mib_per_s, time_once

MB = 1_000_000  # RSS goals are in MB (10^6), as `ps` and the issue state them


def decrypt_fd(ctx: Context, src: Path, dst: Path) -> None:
    with ctx.h.client(timeout=600) as c:
        fi = os.open(src, os.O_RDONLY)
        fo = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            c.decrypt_fd(fi, fo)
        finally:
            os.close(fi)
            os.close(fo)


def _parallel(ctx: Context, n: int, src: Path) -> float:
    """Wall seconds for ``n`` simultaneous DecryptFd streams, each its own client."""
    from keyagent.client import Client

    clients = [Client(ctx.h.address, timeout=600) for _ in range(n)]
    for c in clients:
        c.owner()  # resolve and check the agent before the clock starts
    barrier = threading.Barrier(n + 1)
    errors: list[BaseException] = []

    def one(i: int, c: Client) -> None:
        dst = ctx.out(f"par{i}")
        fi = os.open(src, os.O_RDONLY)
        fo = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            barrier.wait()
            c.decrypt_fd(fi, fo)
        except BaseException as e:
            errors.append(e)
        finally:
            os.close(fi)
            os.close(fo)
            dst.unlink(missing_ok=True)

    threads = [threading.Thread(target=one, args=(i, c)) for i, c in enumerate(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    for c in clients:
        c.close()
    if errors:
        raise RuntimeError(f"{len(errors)} of {n} streams failed: {errors[0]!r}")
    return elapsed


def scaling_rows(ctx: Context) -> list[Row]:
    size = ctx.cfg.stream_bytes
    group = f"scaling: parallel {size // MIB} MiB DecryptFd streams, aggregate (best of 2)"
    try:
        ctx.h.ensure_key()
        src = ctx.ciphertext(size)
        speeds: dict[int, float] = {}
        for n in (1, 2, 4):
            best = min(_parallel(ctx, n, src) for _ in range(2))
            speeds[n] = mib_per_s(n * size, best)
    except Exception as e:
        return [failed(group, "1 stream", "MiB/s", f"{type(e).__name__}: {e}")]
    return [
        Row(group, "1 stream (baseline)", speeds[1], "MiB/s"),
        Row(group, "2 streams", speeds[2], "MiB/s", speeds[1], "1 stream", Goal(">=", 1.5)),
        Row(group, "4 streams", speeds[4], "MiB/s", speeds[1], "1 stream"),
    ]


def unlock_rows(ctx: Context) -> list[Row]:
    """Unlock over the bus (Argon2id at the agent's defaults) against Argon2id in-process."""
    from argon2.low_level import Type, hash_secret_raw

    reps = ctx.cfg.unlock_reps
    group = f"unlock: Argon2id 64 MiB, t=3, p=4 (median of {reps})"

    def raw() -> None:
        hash_secret_raw(
            BENCH_PASSPHRASE.encode(),
            os.urandom(16),
            time_cost=3,
            memory_cost=65536,
            parallelism=4,
            hash_len=32,
            type=Type.ID,
        )

    base = Stats(tuple(time_once(raw) for _ in range(reps))).median
    rows = [Row(group, "argon2-cffi hash_secret_raw in-process (baseline)", base, "s")]
    try:
        ctx.h.ensure_key()
        samples = []
        with ctx.h.client() as c:
            for _ in range(reps):
                c.lock(BENCH_KEY)
                samples.append(time_once(lambda: c.unlock_with_pipe(BENCH_KEY, BENCH_PASSPHRASE)))
    except Exception as e:
        rows.append(failed(group, "Unlock over the bus", "s", f"{type(e).__name__}: {e}"))
        return rows
    rows.append(
        Row(
            group,
            "Unlock over the bus",
            Stats(tuple(samples)).median,
            "s",
            base,
            "argon2",
            extra={"seconds": samples},
        )
    )
    return rows


def memory_rows(ctx: Context) -> list[Row]:
    group = "memory: agent RSS (/proc/PID/status)"
    rows: list[Row] = []
    try:
        # Idle: a freshly activated agent that has answered one call.
        ctx.h.stop_agent()
        pid = ctx.h.ensure_agent()
        time.sleep(0.5)
        idle = proc_status(pid)["VmRSS"]
        rows.append(Row(group, "idle, fresh agent", idle / MB, "MB", goal=Goal("<=", 40, "value")))
    except Exception as e:
        return [failed(group, "idle, fresh agent", "MB", f"{type(e).__name__}: {e}")]

    rows.append(_peak_row(ctx, group))
    rows.append(_many_keys_row(ctx, group, idle))
    return rows


def _peak_row(ctx: Context, group: str) -> Row:
    size = ctx.cfg.memory_stream_bytes
    name = f"peak during a {size // MIB} MiB DecryptFd (VmHWM)"
    goal = Goal("<=", 60, "value")
    try:
        ctx.h.stop_agent()
        pid = ctx.h.ensure_agent()
        ctx.h.ensure_key()  # Argon2id's 64 MiB comes and goes here, before the reset
        src = ctx.ciphertext(size)
        before = proc_status(pid)["VmRSS"]
        if not reset_hwm(pid):
            return failed(group, name, "MB", "cannot reset VmHWM (/proc/PID/clear_refs)", goal)
        sampled = [before]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.01):
                try:
                    sampled.append(proc_status(pid)["VmRSS"])
                except OSError:
                    return

        t = threading.Thread(target=sample)
        t.start()
        try:
            decrypt_fd(ctx, src, ctx.out("peak"))
        finally:
            done.set()
            t.join()
            ctx.out("peak").unlink(missing_ok=True)
        hwm = proc_status(pid)["VmHWM"]
    except Exception as e:
        return failed(group, name, "MB", f"{type(e).__name__}: {e}", goal)
    return Row(
        group,
        name,
        hwm / MB,
        "MB",
        goal=goal,
        note="" if size >= 1024 * MIB else "quick mode: smaller stream than the goal's 1 GiB",
        extra={"rss_before": before, "max_sampled_rss": max(sampled), "vmhwm": hwm},
    )


def _many_keys_row(ctx: Context, group: str, idle: int) -> Row:
    n = ctx.cfg.memory_keys
    name = f"{n} keys unlocked"
    try:
        names = [f"{MEMORY_KEY_PREFIX}{i:03d}" for i in range(n)]
        with ctx.h.client(timeout=600) as c:
            have = set(c.key_names())
            t0 = time.perf_counter()
            for k in names:
                if k not in have:
                    c.create_key(k, BENCH_PASSPHRASE)
            created = time.perf_counter() - t0
            t0 = time.perf_counter()
            for k in names:
                c.unlock_with_pipe(k, BENCH_PASSPHRASE)
            unlocked = time.perf_counter() - t0
            pid = c.agent_pid()
            time.sleep(0.5)
            rss = proc_status(pid)["VmRSS"]
            c.lock_all()
    except Exception as e:
        return failed(group, name, "MB", f"{type(e).__name__}: {e}")
    return Row(
        group,
        name,
        rss / MB,
        "MB",
        idle / MB,
        "idle",
        extra={"create_s": created, "unlock_s": unlocked},
    )
