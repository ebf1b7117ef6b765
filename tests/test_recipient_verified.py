"""The recipient of a locked key is used only once verified (issue 13).

A key file's header is authenticated by the passphrase alone: with the key locked, a program
that swaps the recipient and recomputes the checksum made `encrypt -k work` encrypt to it.
The agent now encrypts to a key name only after deriving that recipient from the identity
in this process (create, import, unlock); otherwise the answer is `Locked`.
"""

from __future__ import annotations

import hashlib
import os
import signal
from pathlib import Path

import pyrage
import pytest

from agent_support import FAST_ARGS, KI, PASS, CallError, Client, agent_pid
from cli_support import ka_pw
from conftest import BusFactory, PrivateBus
from keyagent.protocol import key_path


def _restart(bus: PrivateBus) -> None:
    os.kill(agent_pid(bus), signal.SIGKILL)
    assert bus.wait_agent_gone()


def _swap_recipient(path: Path, new: str) -> None:
    magic, header, box, _checksum = path.read_bytes().split(b"\n")[:4]
    start = header.index(b'"recipient":"') + len(b'"recipient":"')
    end = header.index(b'"', start)
    header = header[:start] + new.encode() + header[end:]
    body = b"\n".join([magic, header, box]) + b"\n"
    path.write_bytes(body + hashlib.sha256(body).hexdigest().encode() + b"\n")


def test_an_edited_recipient_is_never_encrypted_to(bus_factory: BusFactory) -> None:
    bus = bus_factory(agent_args=FAST_ARGS)
    attacker = pyrage.x25519.Identity.generate()
    with Client(bus.address) as c:
        real = c.create("work")
        c.create("other")
        c.unlock("work")
        ct = c.encrypt(["work"], b"fresh key: verified at creation")
        assert c.decrypt(ct) == (b"fresh key: verified at creation", "work")
    _restart(bus)
    _swap_recipient(bus.home / "work.key", str(attacker.to_public()))
    with Client(bus.address) as c:
        with pytest.raises(CallError) as e:
            c.encrypt(["work"], b"secret")
        assert e.value.short == "Locked" and "not verified" in e.value.text
        with pytest.raises(CallError) as e:
            c.unlock("work")  # the header is the box's associated data: it no longer opens
        assert e.value.short == "BadPassphrase"
        with pytest.raises(CallError) as e:
            c.encrypt(["work"], b"secret")
        assert e.value.short == "Locked"
        # An untouched key: verified by its unlock, then encrypted to as before.
        with pytest.raises(CallError):
            c.encrypt(["other"], b"x")
        c.unlock("other")
        assert c.decrypt(c.encrypt(["other"], b"x")) == (b"x", "other")
    assert real != str(attacker.to_public())


def test_the_command_unlocks_to_verify(bus_factory: BusFactory, tmp_path: Path) -> None:
    bus = bus_factory(agent_args=FAST_ARGS)
    with Client(bus.address) as c:
        recipient = c.create("work")
    _restart(bus)
    plain = tmp_path / "plain"
    plain.write_bytes(b"to a verified key\n")
    out = tmp_path / "out.age"
    r = ka_pw(bus, [PASS], "encrypt", "-k", "work", "-o", str(out), str(plain))
    assert r.returncode == 0, r.stderr.decode()
    with Client(bus.address) as c:
        assert c.decrypt(out.read_bytes()) == (b"to a verified key\n", "work")
        assert c.prop(key_path("work"), KI, "Recipient") == recipient
