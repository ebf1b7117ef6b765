"""Files cross between `keyagent` and other age implementations: the `age` command, pyrage."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pyrage
import pytest

from cli_support import files as files
from cli_support import ka, ka_pw
from cli_support import private_bus as private_bus
from conftest import PrivateBus, have

pytestmark = pytest.mark.skipif(not have("age"), reason="the age command is not installed")

PW = "interop pw"


def _known_identity(bus: PrivateBus, files: Path) -> tuple[Path, str]:
    """An age-keygen identity, imported into the agent as 'k' and unlocked."""
    ident = files / "id.txt"
    subprocess.run(["age-keygen", "-o", str(ident)], check=True, capture_output=True)
    r = ka_pw(bus, [PW], "import", "k", str(ident))
    assert r.returncode == 0, r.stderr
    assert ka_pw(bus, [PW], "unlock", "k").returncode == 0
    return ident, r.stdout.decode().strip()


def test_age_to_keyagent(private_bus: PrivateBus, files: Path) -> None:
    _, recipient = _known_identity(private_bus, files)
    data = os.urandom(3 * 2**20 + 5)
    (files / "plain").write_bytes(data)
    for armor in ([], ["-a"]):
        enc = files / f"age{len(armor)}.age"
        subprocess.run(
            ["age", "-r", recipient, *armor, "-o", str(enc), str(files / "plain")], check=True
        )
        out = files / f"out{len(armor)}"
        r = ka(private_bus, "decrypt", "-o", str(out), str(enc))
        assert r.returncode == 0, r.stderr
        assert out.read_bytes() == data


def test_keyagent_to_age(private_bus: PrivateBus, files: Path) -> None:
    ident, recipient = _known_identity(private_bus, files)
    data = os.urandom(200_001)
    for args in (["-k", "k"], ["-r", recipient, "-a"]):
        r = ka(private_bus, "encrypt", *args, input=data)
        assert r.returncode == 0, r.stderr
        dec = subprocess.run(
            ["age", "-d", "-i", str(ident)], input=r.stdout, capture_output=True, check=True
        )
        assert dec.stdout == data


def test_exported_identity_works_with_age(private_bus: PrivateBus, files: Path) -> None:
    """`keyagent export` + pyrage gives an identity file that `age -d -i` accepts."""
    r = ka_pw(private_bus, [PW], "init", "fresh")
    recipient = r.stdout.decode().strip()
    r = ka_pw(private_bus, [PW], "export", "fresh", "-o", str(files / "fresh.age"))
    assert r.returncode == 0, r.stderr
    identity = pyrage.passphrase.decrypt((files / "fresh.age").read_bytes(), PW)
    (files / "fresh.txt").write_bytes(identity)
    enc = ka(private_bus, "encrypt", "-r", recipient, input=b"hello age").stdout
    dec = subprocess.run(
        ["age", "-d", "-i", str(files / "fresh.txt")], input=enc, capture_output=True, check=True
    )
    assert dec.stdout == b"hello age"


def test_pyrage_both_ways(private_bus: PrivateBus) -> None:
    r = ka_pw(private_bus, [PW], "init", "p")
    recipient = pyrage.x25519.Recipient.from_str(r.stdout.decode().strip())
    assert ka_pw(private_bus, [PW], "unlock", "p").returncode == 0
    r = ka(private_bus, "decrypt", input=pyrage.encrypt(b"from pyrage", [recipient]))
    assert r.returncode == 0 and r.stdout == b"from pyrage"
    other = pyrage.x25519.Identity.generate()
    r = ka(private_bus, "encrypt", "-r", str(other.to_public()), input=b"to pyrage")
    assert pyrage.decrypt(r.stdout, [other]) == b"to pyrage"
    r = ka(private_bus, "decrypt", input=pyrage.encrypt(b"x", [other.to_public()]))
    assert r.returncode == 1
    assert b"keyagent: error: " in r.stderr and b"keyagent: hint: " in r.stderr
