"""Side-by-side rows: keyagent against the peers a user would pick instead, and the limits.

- ``peer_call_rows``: 1 KiB per call. The floor is what no agent can avoid: one round trip to
  the agent (Peer.Ping) plus a compiled in-process age decrypt (pyrage) of the same file.
  gnome-keyring's GetSecret of a 1 KiB secret (secretstorage) is the nearest peer.
- ``peer_process_rows``: one process per secret: `keyagent decrypt`/`status`/`--version`,
  `age -d -i`, `gpg -d` (key cached in gpg-agent), `secret-tool lookup`, against `python -c pass`.
- ``limit_rows``: `cp` of the stream file and `openssl speed -evp chacha20-poly1305`, and one
  DecryptFd stream as a fraction of each.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.context import SMALL, Context
from bench.peers import SECRET_ATTRS, GnomeKeyring, Gpg
from bench.report import Goal, Row, failed
from bench.rows_agent import decrypt_fd
from bench.timing import MIB, Stats, interleaved, mib_per_s


def _ping(address: str) -> tuple[Any, Callable[[], object]]:
    from jeepney import DBusAddress, new_method_call
    from jeepney.io.blocking import open_dbus_connection

    conn = open_dbus_connection(bus=address)
    peer = DBusAddress("/org/example/KeyAgent", "org.example.KeyAgent", "org.freedesktop.DBus.Peer")
    msg = new_method_call(peer, "Ping")
    return conn, lambda: conn.send_and_get_reply(msg, timeout=30)


def peer_call_rows(ctx: Context) -> list[Row]:
    import pyrage

    n = ctx.cfg.small_calls
    group = f"peers, {SMALL} B per call (p50 of {n} calls each, interleaved)"
    ctx.h.ensure_key()
    client = ctx.h.client()
    ct = ctx.small_ciphertext()
    plain = ctx.plaintext(SMALL).read_bytes()
    secret, recipient = ctx.h.identity()
    ident = pyrage.x25519.Identity.from_str(secret)
    rcpt = pyrage.x25519.Recipient.from_str(recipient)
    conn, ping = _ping(ctx.h.address)
    fns: dict[str, Callable[[], object]] = {
        "ping": ping,
        "pyrage decrypt": lambda: pyrage.decrypt(ct, [ident]),
        "pyrage encrypt": lambda: pyrage.encrypt(plain, [rcpt]),
        "Decrypt": lambda: client.decrypt(ct),
        "Encrypt": lambda: client.encrypt([recipient], plain),
    }
    keyring: GnomeKeyring | None = None
    why = ""
    try:
        keyring = GnomeKeyring.start(ctx.h.env, ctx.dir / "gnome-keyring", plain)
        if keyring.get_secret() != plain:
            raise RuntimeError("GetSecret returned another secret")
        fns["GetSecret"] = keyring.get_secret
    except Exception as e:
        why = f"gnome-keyring unavailable: {type(e).__name__}: {e}"
    try:
        stats = interleaved(fns, n, warmup=20)
    finally:
        conn.close()
        client.close()
        if keyring is not None:
            keyring.stop()
    p50 = {name: s.p50 for name, s in stats.items()}
    floor_d = p50["ping"] + p50["pyrage decrypt"]
    floor_e = p50["ping"] + p50["pyrage encrypt"]
    rows = [
        Row(group, "Peer.Ping to the agent", p50["ping"], "s"),
        Row(group, "pyrage decrypt in-process", p50["pyrage decrypt"], "s"),
        Row(group, "floor: Ping + pyrage decrypt (baseline)", floor_d, "s"),
        Row(group, "Decrypt vs floor", p50["Decrypt"], "s", floor_d, "floor", Goal("<=", 1.3)),
        Row(group, "floor: Ping + pyrage encrypt (baseline)", floor_e, "s"),
        Row(group, "Encrypt vs floor", p50["Encrypt"], "s", floor_e, "floor", Goal("<=", 1.3)),
    ]
    if "GetSecret" in p50:
        gs = p50["GetSecret"]
        rows += [
            Row(group, "gnome-keyring GetSecret (secretstorage)", gs, "s"),
            Row(
                group, "Decrypt vs GetSecret", p50["Decrypt"], "s", gs, "GetSecret", Goal("<=", 0.6)
            ),
            Row(
                group, "Encrypt vs GetSecret", p50["Encrypt"], "s", gs, "GetSecret", Goal("<=", 0.6)
            ),
        ]
    else:
        rows += [
            failed(group, f"{m} vs GetSecret", "s", why, Goal("<=", 0.6))
            for m in ("Decrypt", "Encrypt")
        ]
    return rows


def _run(argv: list[str], env: dict[str, str]) -> None:
    out = subprocess.run(argv, env=env, capture_output=True, check=False, timeout=60)
    if out.returncode != 0:
        err = out.stderr.decode(errors="replace").strip()[-300:]
        raise RuntimeError(f"{' '.join(argv[:4])} exited {out.returncode}: {err}")


def _process_candidates(
    ctx: Context, out: Path, notes: dict[str, str]
) -> tuple[dict[str, Callable[[], object]], list[Callable[[], None]]]:
    env, py = ctx.h.env, ctx.python()
    src = ctx.ciphertext(SMALL)
    fns: dict[str, Callable[[], object]] = {"python -c pass": lambda: _run([py, "-c", "pass"], env)}
    stops: list[Callable[[], None]] = []
    ctx.h.ensure_key()
    for label, argv in (
        ("keyagent decrypt", [py, "-m", "keyagent", "decrypt", "-o", str(out), str(src)]),
        ("keyagent status", [py, "-m", "keyagent", "status"]),
        ("keyagent --version", [py, "-m", "keyagent", "--version"]),
        ("age -d -i", ["age", "-d", "-i", str(ctx.h.identity_file()), "-o", str(out), str(src)]),
    ):
        fns[label] = lambda argv=argv: _run(argv, env)
    try:
        gpg = Gpg.start(env, ctx.dir / "gnupg", ctx.plaintext(SMALL))
        stops.append(gpg.stop)
        fns["gpg -d (agent-cached key)"] = lambda: _run(gpg.decrypt_argv(out), gpg.env)
    except Exception as e:
        notes["gpg -d (agent-cached key)"] = f"{type(e).__name__}: {e}"
    try:
        keyring = GnomeKeyring.start(
            env, ctx.dir / "gnome-keyring-p", ctx.plaintext(SMALL).read_bytes()
        )
        stops.append(keyring.stop)
        lookup = ["secret-tool", "lookup", *(x for kv in SECRET_ATTRS.items() for x in kv)]
        if shutil.which("secret-tool") is None:
            raise RuntimeError("secret-tool is not installed (apt-get install libsecret-tools)")
        fns["secret-tool lookup"] = lambda: _run(lookup, keyring.env)
    except Exception as e:
        notes["secret-tool lookup"] = f"{type(e).__name__}: {e}"
    return fns, stops


PROCESS_GOALS = {
    "keyagent decrypt": Goal("<=", 2.5),
    "keyagent status": Goal("<=", 3.0),
    "keyagent --version": Goal("<=", 1.5),
}


def peer_process_rows(ctx: Context) -> list[Row]:
    reps = ctx.cfg.start_reps
    group = f"peers, one process per {SMALL} B secret (median of {reps})"
    out = ctx.out("peer-process")
    notes: dict[str, str] = {}
    fns, stops = _process_candidates(ctx, out, notes)
    try:
        for fn in fns.values():  # each must work before it is timed
            fn()
        stats = interleaved(fns, reps, warmup=1, after=lambda _n: out.unlink(missing_ok=True))
    finally:
        for stop in stops:
            stop()
    base = stats.pop("python -c pass").median
    rows = [Row(group, "python -c pass (baseline)", base, "s")]
    for name, s in stats.items():
        rows.append(Row(group, name, s.median, "s", base, "python", PROCESS_GOALS.get(name)))
    rows += [failed(group, name, "s", why) for name, why in notes.items()]
    return rows


def _openssl_chacha() -> float:
    """OpenSSL's ChaCha20-Poly1305 at 16 KiB blocks, MiB/s (the cipher's limit on this CPU)."""
    out = subprocess.run(
        ["openssl", "speed", "-seconds", "1", "-bytes", "16384", "-evp", "chacha20-poly1305"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    line = next(ln for ln in out.splitlines() if ln.lower().startswith("chacha20-poly1305"))
    kbytes = float(re.sub(r"k$", "", line.split()[-1]))  # "1234567.89k" = 1000s of bytes/s
    return kbytes * 1000 / MIB


def _cp_and_stream(ctx: Context, reps: int) -> tuple[Stats, Stats]:
    src = ctx.ciphertext(ctx.cfg.stream_bytes)
    dst = ctx.out("limit")
    ctx.h.ensure_key()
    fns: dict[str, Callable[[], object]] = {
        "cp": lambda: shutil.copyfile(src, dst),
        "DecryptFd": lambda: decrypt_fd(ctx, src, dst),
    }
    stats = interleaved(fns, reps, warmup=1, after=lambda _n: dst.unlink(missing_ok=True))
    return stats["cp"], stats["DecryptFd"]


def limit_rows(ctx: Context) -> list[Row]:
    reps = ctx.cfg.stream_reps
    size = ctx.cfg.stream_bytes
    group = f"limits: {size // MIB} MiB file to file against cp and OpenSSL (best of {reps})"
    rows: list[Row] = []
    cp, stream = _cp_and_stream(ctx, reps)
    cp_rate = mib_per_s(size, cp.best)
    rate = mib_per_s(size, stream.best)
    rows.append(Row(group, "cp of the same file (baseline)", cp_rate, "MiB/s"))
    rows.append(
        Row(group, "one DecryptFd stream vs cp", rate, "MiB/s", cp_rate, "cp", Goal(">=", 0.8))
    )
    try:
        limit = max(_openssl_chacha() for _ in range(2))
        rows.append(Row(group, "openssl speed chacha20-poly1305, 16 KiB", limit, "MiB/s"))
        rows.append(Row(group, "one DecryptFd stream vs openssl", rate, "MiB/s", limit, "openssl"))
    except Exception as e:
        rows.append(failed(group, "openssl speed chacha20-poly1305", "MiB/s", f"{e}"))
    with contextlib.suppress(FileNotFoundError):
        ctx.out("limit").unlink()
    return rows
