"""Faults: clients killed mid-stream, the agent killed mid-write, the bus daemon restarted."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pyrage
import pytest

from conftest import BusFactory, PrivateBus, start_private_bus, stop_private_bus
from keyagent.client import Client
from keyagent.protocol import BadPassphrase, NoSuchKey
from keyagentd.atomic import TMP_PREFIX
from keyagentd.keystore import SUFFIX, KeyStore
from reliability import kit
from reliability.conftest import KEY, Agent

STREAMS = 50
STREAM_BYTES = 48 * 1024 * 1024
WRITES = 50


def _keyagent(bus: PrivateBus, *args: str, **kw: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
        [sys.executable, "-m", "keyagent", *args], env=bus.env, stderr=subprocess.DEVNULL, **kw
    )


def _output_size(p: subprocess.Popen[bytes], out: Path) -> int:
    """How much the agent wrote so far to the command's output file for ``out`` (the unnamed
    file, or the named temporary one, the command holds open in its directory); the full size
    once the command has exited."""
    if p.poll() is not None:
        return STREAM_BYTES
    size = 0
    with contextlib.suppress(OSError):  # the command may exit, or close fds, meanwhile
        for fd in os.listdir(f"/proc/{p.pid}/fd"):
            link = f"/proc/{p.pid}/fd/{fd}"
            target = os.readlink(link)
            if target.startswith(f"{out.parent}/") and (
                target.endswith(" (deleted)") or target.startswith(f"{out.parent}/.{out.name}.")
            ):
                size = max(size, os.stat(link).st_size)
    return size


def _output_reached(p: subprocess.Popen[bytes], out: Path, size: int) -> bool:
    return _output_size(p, out) >= size


def test_clients_killed_mid_stream(agent: Agent, tmp_path: Path) -> None:
    rng = random.Random(50)
    plain = tmp_path / "plain"
    plain.write_bytes(os.urandom(1024 * 1024) * (STREAM_BYTES // (1024 * 1024)))
    digest = hashlib.sha256(plain.read_bytes()).hexdigest()
    ct = tmp_path / "plain.age"
    pyrage.encrypt_file(str(plain), str(ct), [pyrage.x25519.Recipient.from_str(agent.recipient)])
    pid = agent.pid()
    warm = _keyagent(agent.bus, "decrypt", "-o", str(tmp_path / "warm"), str(ct))
    assert warm.wait(60) == 0
    fds0 = kit.fd_count(pid)

    outcomes: Counter[str] = Counter()
    leftovers = 0
    for i in range(STREAMS):
        if i % 2 == 0:
            # `keyagent decrypt -o OUT`: killed at a random moment, OUT is absent or complete.
            out = tmp_path / f"out{i}"
            p = _keyagent(agent.bus, "decrypt", "-o", str(out), str(ct))
            if i % 4 == 0:
                time.sleep(rng.uniform(0.0, 0.4))  # anywhere: start-up, prompt, stream, rename
            else:  # inside the stream: once the unwritten output holds a random share of it
                want = rng.randrange(1, STREAM_BYTES)
                reached = functools.partial(_output_reached, p, out, want)
                assert kit.wait_until(reached, 60, 0.002), "the stream made no progress"
            p.kill()
            p.wait()
            if out.exists():
                assert hashlib.sha256(out.read_bytes()).hexdigest() == digest, "partial -o output"
                outcomes["file complete"] += 1
                out.unlink()
            else:
                outcomes["file absent"] += 1
            temps = list(tmp_path.glob(f".{out.name}.*"))
            leftovers += len(temps)
            for t in temps:
                t.unlink()
        else:
            # To stdout (a pipe we read): kill the client after a random amount, stop reading.
            p = _keyagent(agent.bus, "decrypt", str(ct), stdout=subprocess.PIPE)
            assert p.stdout is not None
            want = rng.randrange(0, STREAM_BYTES)
            got = 0
            while got < want:
                chunk = p.stdout.read1(1 << 16)
                if not chunk:
                    break
                got += len(chunk)
            p.kill()
            p.wait()
            p.stdout.close()  # the agent's next write gets EPIPE
            outcomes["pipe killed"] += 1

    assert agent.pid() == pid, "the agent died"
    assert outcomes["file absent"] > 0, "no kill landed inside a stream"
    fds1 = kit.settle_fds(pid, fds0, timeout=20)
    with agent.client() as c:
        assert c.decrypt(pyrage.encrypt(b"still here", [agent.identity.to_public()])) == (
            b"still here",
            KEY,
        )
    kit.record(
        "clients_killed_mid_stream",
        streams=STREAMS,
        outcomes=dict(outcomes),
        cli_temp_files_left=leftovers,
        fds_before=fds0,
        fds_after=fds1,
    )
    assert fds1 <= fds0, f"{fds1 - fds0} fds leaked"


def _opens(store: KeyStore, name: str, passphrase: str) -> bool:
    try:
        seed = store.unseal(name, passphrase)
    except BadPassphrase:
        return False
    seed[:] = bytes(len(seed))
    return True


def test_agent_killed_during_key_writes(private_bus: PrivateBus) -> None:
    rng = random.Random(51)
    bus = private_bus
    store = KeyStore(bus.home)
    current: dict[str, str] = {}  # key name -> the passphrase it opens with
    outcomes: Counter[str] = Counter()
    temps_seen = 0
    for i in range(WRITES):
        with Client(bus.address) as c:
            c.version()  # activate
            pid = c.agent_pid()
        ops = ["create"] + (["change", "delete"] if current else [])
        op = rng.choice(ops)
        name = f"k{i}" if op == "create" else rng.choice(sorted(current))
        old = current.get(name)
        new = f"pass-{i}"

        def call(op: str = op, name: str = name, old: str | None = old, new: str = new) -> None:
            with contextlib.suppress(Exception), Client(bus.address, timeout=10) as c:
                if op == "create":
                    c.create_key(name, new)
                elif op == "change":
                    assert old is not None
                    c.change_passphrase(name, old, new)
                else:
                    c.delete_key(name, passphrase=old)

        t = threading.Thread(target=call)
        t.start()
        time.sleep(rng.uniform(0.0, 0.012))  # the whole write takes a few ms
        os.kill(pid, signal.SIGKILL)
        t.join(30)
        # A call not yet delivered when the agent died is resent by the client to a new
        # agent (that is its retry rule): the call has then finished before we look.
        if bus.wait_agent_gone(2):
            temps_seen += sum(1 for p in bus.home.iterdir() if p.name.startswith(TMP_PREFIX))
        else:
            outcomes["retried by the client on a new agent"] += 1

        # The key file is the old one or the new one, never neither, never broken.
        exists = (bus.home / f"{name}{SUFFIX}").exists()
        if op == "create":
            if exists:
                assert _opens(store, name, new)
                current[name] = new
            outcomes[f"create {'done' if exists else 'not done'}"] += 1
        elif op == "change":
            assert exists and old is not None
            if _opens(store, name, new):
                current[name] = new
                outcomes["change done"] += 1
            else:
                assert _opens(store, name, old), f"{name} opens with neither passphrase"
                outcomes["change not done"] += 1
        else:
            if exists:
                assert old is not None and _opens(store, name, old)
                outcomes["delete not done"] += 1
            else:
                del current[name]
                outcomes["delete done"] += 1

    # The next start clears the debris, and every key opens with its passphrase.
    with Client(bus.address) as c:
        names = set(c.key_names())
    assert not [p.name for p in bus.home.iterdir() if p.name.startswith(TMP_PREFIX)]
    assert names == set(current)
    for name, passphrase in current.items():
        assert _opens(store, name, passphrase)
    with pytest.raises(NoSuchKey):
        store.get("never-created")
    kit.record(
        "agent_killed_during_writes",
        kills=WRITES,
        outcomes=dict(sorted(outcomes.items())),
        temp_files_seen_after_kill=temps_seen,
        keys_at_end=len(current),
    )


def _start_bus_logging(tmp: Path, log: Path) -> PrivateBus:
    """A private bus whose daemon (and so the agent) writes its stderr to ``log``."""
    saved = os.dup(2)
    try:
        with open(log, "ab") as f:
            os.dup2(f.fileno(), 2)
        return start_private_bus(tmp)
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def test_bus_daemon_restart(bus_factory: BusFactory, tmp_path: Path) -> None:
    del bus_factory  # only for its cleanup of stray daemons' process groups
    tmp = tmp_path / "restart"
    log = tmp_path / "bus.log"
    bus = _start_bus_logging(tmp, log)
    try:
        with Client(bus.address) as c:
            recipient = c.create_key("survivor", "survivor passphrase")
            pid = c.agent_pid()
        bus.daemon.send_signal(signal.SIGTERM)
        bus.daemon.wait(10)
        t0 = time.monotonic()
        assert kit.wait_until(lambda: not kit.alive(pid), 10), "the agent outlived its bus"
        exit_s = time.monotonic() - t0
    finally:
        stop_private_bus(bus)
    text = log.read_text(errors="replace")
    assert "Traceback" not in text, text[-2000:]

    bus.socket_path.unlink(missing_ok=True)
    bus2 = _start_bus_logging(tmp, log)  # same directory, so the same keystore
    try:
        with Client(bus2.address) as c:
            assert c.key("survivor").recipient == recipient  # activates a new agent
            pid2 = c.agent_pid()
            c.unlock_with_pipe("survivor", "survivor passphrase")
    finally:
        stop_private_bus(bus2)
    assert pid2 != pid
    kit.record("bus_restart", agent_exit_seconds=round(exit_s, 2), new_agent=pid2 != pid)
