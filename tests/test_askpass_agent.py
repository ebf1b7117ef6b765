"""Prompting without a terminal: the agent asks through $KEYAGENT_ASKPASS for `unlock
--askpass`, `Unlock("", {askpass: true})` and Decrypt/DecryptFd with the askpass option.

The agent is activated by the private dbus-daemon and inherits its environment, so the fake
askpass goes into the daemon's environment (`extra_env`)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent_support import FAST_ARGS, CallError, Client, opt
from cli_support import TtyRun, ka
from conftest import BusFactory, PrivateBus
from keyagent import protocol
from keyagentd import age, askpass
from keyagentd.cache import KeyCache
from keyagentd.config import Config as UserConfig
from keyagentd.kdf import KdfParams
from keyagentd.keys import Keys
from keyagentd.keystore import KeyStore
from keyagentd.work import Work

PASS = "pw"
PYTHON = os.path.realpath(sys.executable)  # what /proc/PID/exe shows for `keyagent`


class FakeAskpass:
    """An ssh-askpass stand-in: logs each prompt, answers from a list ("CANCEL": exit 1)."""

    def __init__(self, tmp: Path, answers: list[str]) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        self.prompts = tmp / "prompts"
        self.answers = tmp / "answers"
        self.prompts.write_text("")
        self.answers.write_text("".join(a + "\n" for a in answers))
        self.path = tmp / "askpass"
        self.path.write_text(
            "#!/bin/sh\n"
            f"printf '%s\\n' \"$1\" >> '{self.prompts}'\n"
            f"n=$(wc -l < '{self.prompts}')\n"
            f"line=$(sed -n \"${{n}}p\" '{self.answers}')\n"
            '[ "$line" = CANCEL ] && exit 1\n'
            "printf '%s\\n' \"$line\"\n"
        )
        self.path.chmod(0o755)

    def asked(self) -> list[str]:
        return self.prompts.read_text().splitlines()


def start(bus_factory: BusFactory, tmp: Path, answers: list[str]) -> tuple[PrivateBus, FakeAskpass]:
    fake = FakeAskpass(tmp / "askpass-dir", answers)
    bus = bus_factory(agent_args=FAST_ARGS, extra_env={"KEYAGENT_ASKPASS": str(fake.path)})
    bus.keyagent("init", "--passphrase-fd", "0", "work", input=f"{PASS}\n")
    return bus, fake


def locked(bus: PrivateBus, name: str = "work") -> bool:
    with Client(bus.address) as c:
        return bool(c.prop(protocol.key_path(name), protocol.KEY_INTERFACE, "Locked"))


def test_unlock_askpass_names_key_and_program(bus_factory: BusFactory, tmp_path: Path) -> None:
    bus, fake = start(bus_factory, tmp_path, ["wrong", PASS])
    out = bus.keyagent(
        "unlock", "--askpass", "--idle-timeout", "77", "work", stdin=subprocess.DEVNULL
    )
    assert out.returncode == 0, out.stderr
    assert not locked(bus)
    first, second = fake.asked()
    assert "'work'" in first and PYTHON in first and "pid " in first
    assert "wrong passphrase" in second and "wrong passphrase" not in first
    with Client(bus.address) as c:
        assert c.prop(protocol.key_path("work"), protocol.KEY_INTERFACE, "IdleTimeout") == 77


def test_cancelled_dialog_is_a_named_error(bus_factory: BusFactory, tmp_path: Path) -> None:
    bus, fake = start(bus_factory, tmp_path, ["CANCEL", PASS])
    out = bus.keyagent("unlock", "--askpass", "work", check=False, stdin=subprocess.DEVNULL)
    assert out.returncode == 1
    assert "No passphrase was entered for key 'work'" in out.stderr
    assert "Traceback" not in out.stderr
    assert len(fake.asked()) == 1 and locked(bus)
    both = bus.keyagent("unlock", "--askpass", "--passphrase-fd", "0", "work", check=False)
    assert both.returncode == 2 and "not both" in both.stderr
    with Client(bus.address) as c, pytest.raises(CallError) as e:
        c.unlock("work", PASS, askpass=("b", True))  # a passphrase and askpass: which one?
    assert e.value.name == protocol.INVALID_ARGS


def test_decrypt_asks_for_the_locked_key(bus_factory: BusFactory, tmp_path: Path) -> None:
    bus, fake = start(bus_factory, tmp_path, [PASS, PASS])
    with Client(bus.address) as c:
        ct = c.encrypt(["work"], b"secret data")
        with pytest.raises(CallError) as e:  # without the option: Locked, nobody asked
            c.decrypt(ct)
        assert e.value.short == "Locked" and fake.asked() == []
        assert c.decrypt(ct, askpass=("b", True)) == (b"secret data", "work")
        assert len(fake.asked()) == 1 and "'work'" in fake.asked()[0]
        assert str(os.getpid()) in fake.asked()[0]

        c.k("work", "Lock")
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        os.write(in_w, ct)
        os.close(in_w)
        try:
            key, written = c.m(
                "DecryptFd", "hha{sv}", in_r, out_w, opt(askpass=("b", True)), timeout=60
            )
        finally:
            os.close(in_r)
            os.close(out_w)
        with os.fdopen(out_r, "rb") as f:
            assert f.read() == b"secret data"
        assert (key, written) == ("work", 11)
        assert len(fake.asked()) == 2
    assert not locked(bus)


def test_commands_without_a_terminal_ask_through_askpass(
    bus_factory: BusFactory, tmp_path: Path
) -> None:
    """From a desktop script (no terminal, no --passphrase-fd) a command that meets a locked
    key has the agent ask; --no-askpass refuses; --askpass forces it even on a terminal."""
    bus, fake = start(bus_factory, tmp_path, [PASS, PASS, PASS, PASS])
    src = tmp_path / "plain"
    src.write_bytes(b"for the script")
    enc = tmp_path / "enc.age"
    assert ka(bus, "encrypt", "-k", "work", "-o", str(enc), str(src)).returncode == 0
    r = ka(bus, "decrypt", "--no-askpass", str(enc))
    assert r.returncode == 1 and b"is locked" in r.stderr and fake.asked() == []
    r = ka(bus, "decrypt", str(enc))
    assert r.returncode == 0 and r.stdout == b"for the script", r.stderr
    assert len(fake.asked()) == 1 and "'work'" in fake.asked()[0]
    with enc.open("rb") as f:  # a pipe: the agent asks within the same call, no replay
        ka(bus, "lock", "work")
        r = ka(bus, "decrypt", stdin=f.fileno())
    assert r.returncode == 0 and r.stdout == b"for the script", r.stderr
    assert len(fake.asked()) == 2
    ka(bus, "lock", "work")
    assert ka(bus, "unlock", "work").returncode == 0 and not locked(bus)
    assert len(fake.asked()) == 3
    assert ka(bus, "unlock", "--no-askpass", "work").returncode == 2
    ka(bus, "lock", "work")
    run = TtyRun.start(bus, "decrypt", "--askpass", str(enc))  # a terminal, but forced
    code, out, err = run.finish()
    assert code == 0 and out == b"for the script", err
    assert b"Passphrase" not in run.seen and len(fake.asked()) == 4
    ka(bus, "lock", "work")
    r = ka(bus, "delete", "--no-askpass", "--yes", "work")
    assert r.returncode == 2 and len(fake.asked()) == 4  # a passphrase, and nobody to ask
    fake.answers.write_text(f"{PASS}\n" * 4 + f"{PASS}\n")
    r = ka(bus, "delete", "--yes", "work")
    assert r.returncode == 0, r.stderr
    assert len(fake.asked()) == 5 and ka(bus, "list").stdout == b""


# --- in process: the rate limiter and a missing askpass program ---------------------------


class NoListener:
    """The core's `KeyEvents` with no bus behind it."""

    def added(self, record: object) -> None:
        pass

    def removed(self, name: str) -> None:
        pass

    def changed(self, name: str) -> None:
        pass


def _agent(tmp: Path) -> Keys:
    """The core's keys alone: no bus, no agent process."""
    kdf = KdfParams(memory_kib=1024, time_cost=1, parallelism=1)
    store = KeyStore(tmp / "home", kdf=kdf)
    keys = Keys(store, KeyCache(), UserConfig(), Work(1, 4), NoListener())
    identity = age.generate_identity("x25519")
    keys.load()
    keys.records["k"] = store.create(
        "k", "x25519", bytearray(identity.seed), identity.recipient().encode(), PASS, ""
    )
    return keys


def test_wrong_askpass_passphrases_count_in_the_rate_limiter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeAskpass(tmp_path / "ask", ["bad1", "bad2", "bad3", PASS])
    monkeypatch.setenv("KEYAGENT_ASKPASS", str(fake.path))
    agent = _agent(tmp_path)

    async def run() -> None:
        with pytest.raises(protocol.BadPassphrase):
            await agent.unlock_by_askpass("k", os.getpid())
        assert agent.limiter.failures("k") == 3
        assert not agent.cache.is_unlocked("k")
        await agent.unlock_by_askpass("k", os.getpid())
        assert agent.cache.is_unlocked("k") and agent.limiter.failures("k") == 0

    try:
        asyncio.run(run())
    finally:
        agent.close()
        agent.work.shutdown()
    assert len(fake.asked()) == 4


@pytest.mark.skipif(askpass.password_agent_running(), reason="a password agent runs here")
def test_systemd_ask_password_without_a_password_agent_fails_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("KEYAGENT_ASKPASS", "SSH_ASKPASS", "DISPLAY", "WAYLAND_DISPLAY"):
        monkeypatch.delenv(var, raising=False)
    # A systemd-ask-password that nobody answers: it would hang (as the real one waits 120 s).
    fake = tmp_path / "bin" / "systemd-ask-password"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\ntouch '{tmp_path}/ran'\nexec sleep 600\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(fake.parent))
    agent = _agent(tmp_path)

    async def run() -> None:
        with pytest.raises(protocol.Failed) as e:
            await agent.unlock_by_askpass("k", os.getpid())
        assert "$KEYAGENT_ASKPASS" in e.value.message and "\n" not in e.value.message

    try:
        asyncio.run(run())
    finally:
        agent.close()
        agent.work.shutdown()
    assert not (tmp_path / "ran").exists()


def test_no_askpass_program_is_failed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("KEYAGENT_ASKPASS", "SSH_ASKPASS", "DISPLAY", "WAYLAND_DISPLAY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no zenity, kdialog, systemd-ask-password
    agent = _agent(tmp_path)

    async def run() -> None:
        with pytest.raises(protocol.Failed, match="there is no askpass program"):
            await agent.unlock_by_askpass("k", os.getpid())

    try:
        asyncio.run(run())
    finally:
        agent.close()
        agent.work.shutdown()
