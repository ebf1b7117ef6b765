"""Streaming rows: file-to-file decrypt and encrypt of one large file, five ways.

Baseline: a plain `cryptography` ChaCha20-Poly1305 loop over the same 64 KiB chunks with the
same nonces (the best a Python program can do: preallocated buffers, ``*_into`` calls,
unbuffered file I/O). Then our engine in-process, the agent through the `keyagent` command
(a subprocess, start-up included), the agent through DecryptFd/EncryptFd from this process
(start-up excluded: tells the command's cost from the agent's), the `age` command, and pyrage.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from bench.context import Context
from bench.report import Goal, Row, failed
from bench.timing import MIB, Stats, interleaved, mib_per_s

CHUNK = 64 * 1024
TAG = 16
UNIT = "MiB/s"


def _read_full(f: object, mv: memoryview) -> int:
    total = 0
    while total < len(mv):
        n = f.readinto(mv[total:])  # type: ignore[attr-defined]
        if not n:
            break
        total += n
    return total


def raw_encrypt(key: bytes, src: Path, dst: Path) -> None:
    aead = ChaCha20Poly1305(key)
    chunks = max(1, -(-src.stat().st_size // CHUNK))
    buf = memoryview(bytearray(CHUNK))
    out = memoryview(bytearray(CHUNK + TAG))
    with open(src, "rb", buffering=0) as f, open(dst, "wb", buffering=0) as g:
        for i in range(chunks):
            n = _read_full(f, buf)
            flag = b"\x01" if i == chunks - 1 else b"\x00"
            k = aead.encrypt_into(i.to_bytes(11, "big") + flag, buf[:n], None, out[: n + TAG])
            g.write(out[:k])


def raw_decrypt(key: bytes, src: Path, dst: Path) -> None:
    aead = ChaCha20Poly1305(key)
    chunks = max(1, -(-src.stat().st_size // (CHUNK + TAG)))
    buf = memoryview(bytearray(CHUNK + TAG))
    out = memoryview(bytearray(CHUNK))
    with open(src, "rb", buffering=0) as f, open(dst, "wb", buffering=0) as g:
        for i in range(chunks):
            n = _read_full(f, buf)
            flag = b"\x01" if i == chunks - 1 else b"\x00"
            k = aead.decrypt_into(i.to_bytes(11, "big") + flag, buf[:n], None, out[: n - TAG])
            g.write(out[:k])


def _run(argv: list[str], env: dict[str, str] | None = None) -> None:
    out = subprocess.run(argv, env=env, capture_output=True, text=True, check=False, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(
            f"{argv[0]} {argv[1] if len(argv) > 1 else ''} exited "
            f"{out.returncode}: {out.stderr.strip()[-300:]}"
        )


def _candidates(
    ctx: Context, direction: str
) -> tuple[dict[str, Callable[[], object]], dict[str, str]]:
    """The implementations that can run here, and why the others cannot."""
    size = ctx.cfg.stream_bytes
    plain = ctx.plaintext(size)
    cipher = ctx.ciphertext(size)
    secret, recipient = ctx.h.identity()
    out = ctx.out("stream")
    fns: dict[str, Callable[[], object]] = {}
    missing: dict[str, str] = {}
    key = os.urandom(32)

    # The raw loop's own ciphertext: same size and chunking as an age payload.
    raw_ct = ctx.dir / f"raw-{size}.bin"
    if direction == "decrypt" and not raw_ct.exists():
        raw_encrypt(key, plain, raw_ct)
    if direction == "decrypt":
        fns["raw cryptography loop"] = lambda: raw_decrypt(key, raw_ct, out)
    else:
        fns["raw cryptography loop"] = lambda: raw_encrypt(key, plain, out)

    try:
        from keyagentd import age as engine
        from keyagentd.overlap import ParallelRun

        ident = engine.parse_identity(secret)
        recip = engine.parse_recipient(recipient)

        def engine_decrypt() -> None:
            with open(cipher, "rb", buffering=0) as s, open(out, "wb", buffering=0) as d:
                engine.decrypt([ident], s, d)

        def engine_encrypt() -> None:
            with open(plain, "rb", buffering=0) as s, open(out, "wb", buffering=0) as d:
                engine.encrypt([recip], s, d)

        fns["engine in-process"] = engine_decrypt if direction == "decrypt" else engine_encrypt

        # The agent's stream jobs cipher on every free core (ParallelRun): the fair comparison.
        def engine_decrypt_overlap() -> None:
            with open(cipher, "rb", buffering=0) as s, open(out, "wb", buffering=0) as d:
                dec = engine.Decryptor(s)
                dec.unwrap([ident])
                dec.decrypt_to(d, output=ParallelRun)

        def engine_encrypt_overlap() -> None:
            with open(plain, "rb", buffering=0) as s, open(out, "wb", buffering=0) as d:
                engine.encrypt([recip], s, d, output=ParallelRun)

        fns["engine in-process, overlapped"] = (
            engine_decrypt_overlap if direction == "decrypt" else engine_encrypt_overlap
        )
    except Exception as e:  # the engine is not there yet: report, don't crash the run
        missing["engine in-process"] = f"engine unavailable: {type(e).__name__}: {e}"
        missing["engine in-process, overlapped"] = missing["engine in-process"]

    try:
        ctx.h.ensure_key()
        env = ctx.h.env
        py = ctx.python()
        if direction == "decrypt":
            argv = [py, "-m", "keyagent", "decrypt", "-o", str(out), str(cipher)]
        else:
            argv = [py, "-m", "keyagent", "encrypt", "-r", recipient, "-o", str(out), str(plain)]
        _run(argv, env)  # fail early (and warm the page cache of the modules)
        fns["agent: keyagent command"] = lambda: _run(argv, env)

        client = ctx.h.client()

        def fd_call() -> None:
            src = plain if direction == "encrypt" else cipher
            fi = os.open(src, os.O_RDONLY)
            fo = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                if direction == "decrypt":
                    client.decrypt_fd(fi, fo)
                else:
                    client.encrypt_fd([recipient], fi, fo)
            finally:
                os.close(fi)
                os.close(fo)

        fd_call()
        fns["agent: Client *Fd call"] = fd_call
    except Exception as e:
        reason = f"agent unavailable: {type(e).__name__}: {e}"
        missing["agent: keyagent command"] = reason
        missing["agent: Client *Fd call"] = reason

    if shutil.which("age"):
        idf = str(ctx.h.identity_file())
        if direction == "decrypt":
            fns["age command"] = lambda: _run(["age", "-d", "-i", idf, "-o", str(out), str(cipher)])
        else:
            fns["age command"] = lambda: _run(["age", "-r", recipient, "-o", str(out), str(plain)])
    else:
        missing["age command"] = "age is not installed"

    try:
        import pyrage

        pi = pyrage.x25519.Identity.from_str(secret)
        pr = pyrage.x25519.Recipient.from_str(recipient)
        if direction == "decrypt":
            fns["pyrage"] = lambda: pyrage.decrypt_file(str(cipher), str(out), [pi])
        else:
            fns["pyrage"] = lambda: pyrage.encrypt_file(str(plain), str(out), [pr])
    except ImportError:
        missing["pyrage"] = "pyrage is not installed"
    return fns, missing


def stream_rows(ctx: Context, direction: str) -> list[Row]:
    size = ctx.cfg.stream_bytes
    group = f"streaming {direction}, {size // MIB} MiB file to file (best of {ctx.cfg.stream_reps})"
    fns, missing = _candidates(ctx, direction)
    out = ctx.out("stream")
    stats: dict[str, Stats] = interleaved(
        fns, ctx.cfg.stream_reps, after=lambda _name: out.unlink(missing_ok=True)
    )
    # Best of the repetitions: the run least disturbed by whatever else shares the machine
    # (the JSON keeps every sample, and the median).
    speed = {name: mib_per_s(size, s.best) for name, s in stats.items()}
    raw = speed.get("raw cryptography loop")
    eng = speed.get("engine in-process")
    age = speed.get("age command")

    def row(
        name: str,
        base: float | None,
        base_name: str,
        goal: Goal | None = None,
        label: str | None = None,
    ) -> Row:
        label = label or name
        if name not in speed:
            return failed(group, label, UNIT, missing.get(name, "not measured"), goal)
        extra = {
            "seconds": list(stats[name].samples),
            "median_mib_s": mib_per_s(size, stats[name].median),
        }
        return Row(group, label, speed[name], UNIT, base, base_name, goal, extra=extra)

    rows = [
        row("raw cryptography loop", None, "", label="raw cryptography loop (baseline)"),
        row("engine in-process", raw, "raw", Goal(">=", 0.85)),
        row("engine in-process, overlapped", raw, "raw"),
        row(
            "agent: keyagent command",
            eng,
            "engine",
            Goal(">=", 0.90),
            label="agent via keyagent command vs engine",
        ),
        row(
            "agent: keyagent command",
            age,
            "age",
            Goal(">=", 1.5),
            label="agent via keyagent command vs age",
        ),
        row("agent: Client *Fd call", eng, "engine", label="agent via Client (no process start)"),
        row("age command", raw, "raw"),
        row("pyrage", raw, "raw"),
    ]
    return rows
