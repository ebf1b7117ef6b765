"""Files travel both ways between this engine and the reference tools:
pyrage (rage) and the ``age`` command."""

from __future__ import annotations

import fcntl
import os
import select
import shutil
import subprocess
import termios
import time
from pathlib import Path

import pyrage
import pytest

from keyagentd import age

SIZES = [0, 1, 65535, 65536, 65537, 3 * 1024 * 1024 + 12345]
AGE = shutil.which("age") or "/usr/bin/age"


@pytest.fixture(scope="module")
def identity() -> age.X25519Identity:
    ident = age.generate_identity("x25519")
    assert isinstance(ident, age.X25519Identity)
    return ident


def _data(size: int) -> bytes:
    return os.urandom(size)


@pytest.mark.parametrize("armor", [False, True])
@pytest.mark.parametrize("size", SIZES)
def test_pyrage_decrypts_ours(identity: age.X25519Identity, size: int, armor: bool) -> None:
    data = _data(size)
    ct = age.encrypt_bytes([identity.recipient()], data, armor=armor)
    assert ct.startswith(b"-----BEGIN AGE ENCRYPTED FILE-----\n" if armor else b"age-")
    peer = pyrage.x25519.Identity.from_str(identity.encode())
    assert pyrage.decrypt(ct, [peer]) == data


@pytest.mark.parametrize("armor", [False, True])
@pytest.mark.parametrize("size", SIZES)
def test_we_decrypt_pyrage(identity: age.X25519Identity, size: int, armor: bool) -> None:
    data = _data(size)
    recipient = pyrage.x25519.Recipient.from_str(identity.recipient().encode())
    ct = pyrage.encrypt(data, [recipient], armored=armor)
    assert age.decrypt_bytes([identity], ct) == data


def test_keys_agree_with_pyrage() -> None:
    peer = pyrage.x25519.Identity.generate()
    ours = age.parse_identity(str(peer))
    assert ours.encode() == str(peer)
    assert ours.recipient().encode() == str(peer.to_public())


@pytest.mark.parametrize("size", SIZES)
def test_pyrage_decrypts_our_passphrase_files(size: int) -> None:
    data = _data(size)
    ct = age.encrypt_bytes([age.ScryptRecipient("correct horse", work_factor=10)], data)
    assert pyrage.passphrase.decrypt(ct, "correct horse") == data


def _age_with_tty(args: list[str], passphrase: str) -> None:
    """Run ``age`` with a pseudo-terminal as its controlling tty, answering the
    passphrase prompts (age reads passphrases only from a terminal)."""
    master, slave = os.openpty()

    def become_tty_owner() -> None:
        os.setsid()
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(
        [AGE, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=slave,
        preexec_fn=become_tty_owner,  # the child must own the tty
    )
    os.close(slave)
    transcript = b""
    deadline = time.monotonic() + 60
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if not ready:
                continue
            try:
                chunk = os.read(master, 1024)
            except OSError:
                break
            transcript += chunk
            if b"assphrase" in chunk:
                os.write(master, passphrase.encode() + b"\n")
        assert proc.wait(timeout=60) == 0, transcript.decode(errors="replace")
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("armor", [False, True])
def test_we_decrypt_age_passphrase_file(tmp_path: Path, armor: bool) -> None:
    data = _data(65537)
    src, enc = tmp_path / "plain", tmp_path / "enc.age"
    src.write_bytes(data)
    _age_with_tty(["-p", *(["-a"] if armor else []), "-o", str(enc), str(src)], "battery staple")
    assert age.decrypt_bytes([age.ScryptIdentity("battery staple")], enc.read_bytes()) == data
    with pytest.raises(age.NoMatchError):
        age.decrypt_bytes([age.ScryptIdentity("wrong", max_work_factor=18)], enc.read_bytes())


@pytest.mark.parametrize("size", [0, 65536, 65537])
def test_age_decrypts_our_passphrase_file(tmp_path: Path, size: int) -> None:
    data = _data(size)
    enc, dec = tmp_path / "enc.age", tmp_path / "dec"
    enc.write_bytes(age.encrypt_bytes([age.ScryptRecipient("open sesame", work_factor=10)], data))
    _age_with_tty(["-d", "-o", str(dec), str(enc)], "open sesame")
    # age opens its output lazily: an empty plaintext leaves no file.
    assert (dec.read_bytes() if size or dec.exists() else b"") == data


def _age(*args: str, stdin: bytes | None = None) -> bytes:
    proc = subprocess.run([AGE, *args], input=stdin, capture_output=True, check=False)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc.stdout


@pytest.mark.parametrize("armor", [False, True])
@pytest.mark.parametrize("size", SIZES)
def test_age_decrypts_ours(
    identity: age.X25519Identity, tmp_path: Path, size: int, armor: bool
) -> None:
    data = _data(size)
    key_file = tmp_path / "key.txt"
    key_file.write_text(identity.encode() + "\n")
    src, enc = tmp_path / "plain", tmp_path / "enc.age"
    src.write_bytes(data)
    with src.open("rb") as f, enc.open("wb") as out:
        written = age.encrypt([identity.recipient()], f, out, armor=armor)
    assert written == enc.stat().st_size
    assert _age("-d", "-i", str(key_file), str(enc)) == data


@pytest.mark.parametrize("armor", [False, True])
@pytest.mark.parametrize("size", SIZES)
def test_we_decrypt_age(
    identity: age.X25519Identity, tmp_path: Path, size: int, armor: bool
) -> None:
    data = _data(size)
    src, enc, dec = tmp_path / "plain", tmp_path / "enc.age", tmp_path / "dec"
    src.write_bytes(data)
    flags = ["-a"] if armor else []
    _age("-r", identity.recipient().encode(), *flags, "-o", str(enc), str(src))
    with enc.open("rb") as f, dec.open("wb") as out:
        matched, n = age.decrypt([identity], f, out)
    assert matched is identity
    assert n == size
    assert dec.read_bytes() == data


def test_age_multiple_recipients(tmp_path: Path) -> None:
    ids = [age.generate_identity() for _ in range(3)]
    data = _data(70000)
    src, enc = tmp_path / "plain", tmp_path / "enc.age"
    src.write_bytes(data)
    args = [a for i in ids for a in ("-r", i.recipient().encode())]
    _age(*args, "-o", str(enc), str(src))
    assert age.decrypt_bytes([ids[2]], enc.read_bytes()) == data
    ours = age.encrypt_bytes([i.recipient() for i in ids], data)
    for i in ids:
        key = tmp_path / "k"
        key.write_text(i.encode() + "\n")
        assert _age("-d", "-i", str(key), stdin=ours) == data
