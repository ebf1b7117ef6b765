"""`-o` into devices, FIFOs and /dev/stdout (issue 13): written into, never replaced.

As root, `decrypt -o /dev/null` once replaced /dev/null with a 0600 file of plaintext. The
tests use a private null device (mknod in a temp dir), a FIFO and /dev/stdout; regular files
and new paths keep the atomic temp-and-rename.
"""

from __future__ import annotations

import os
import stat
import subprocess
import threading
from pathlib import Path

import pytest

from cli_support import KEYAGENT, PASSPHRASE, create_key, ka, ka_pw
from cli_support import files as files
from cli_support import private_bus as private_bus
from conftest import PrivateBus, requires_root

DATA = b"special output\n" * 1000


@pytest.fixture
def sealed(private_bus: PrivateBus, files: Path) -> Path:
    recipient = create_key(private_bus, "k")
    assert ka_pw(private_bus, [PASSPHRASE], "unlock", "k").returncode == 0
    (files / "plain").write_bytes(DATA)
    r = ka(
        private_bus, "encrypt", "-r", recipient, "-o", str(files / "f.age"), str(files / "plain")
    )
    assert r.returncode == 0, r.stderr
    return files / "f.age"


@requires_root
@pytest.mark.parametrize("command", ["decrypt", "encrypt"])
def test_a_character_device_is_written_not_replaced(
    private_bus: PrivateBus, files: Path, sealed: Path, command: str
) -> None:
    null = files / "null"
    os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # a null device of our own
    before = null.stat()
    args = ["-r", "k"] if command == "encrypt" else []
    src = sealed if command == "decrypt" else files / "plain"
    r = ka(private_bus, command, *args, "-o", str(null), str(src))
    assert r.returncode == 0, r.stderr
    after = null.stat()
    assert stat.S_ISCHR(after.st_mode) and after.st_ino == before.st_ino
    assert after.st_rdev == before.st_rdev and after.st_mode == before.st_mode
    assert sorted(p.name for p in files.iterdir()) == ["f.age", "null", "plain"]  # no temp left


@pytest.mark.parametrize("command", ["decrypt", "encrypt"])
def test_a_fifo_gets_the_data(
    private_bus: PrivateBus, files: Path, sealed: Path, command: str
) -> None:
    fifo = files / "fifo"
    os.mkfifo(fifo)
    got = bytearray()

    def reader() -> None:
        with open(fifo, "rb") as f:
            got.extend(f.read())

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    args = ["-r", "k"] if command == "encrypt" else []
    src = sealed if command == "decrypt" else files / "plain"
    r = ka(private_bus, command, *args, "-o", str(fifo), str(src))
    if t.is_alive() and stat.S_ISFIFO(fifo.stat().st_mode):  # the reader must see an end
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    t.join()
    assert r.returncode == 0, r.stderr
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    if command == "decrypt":
        assert bytes(got) == DATA
    else:
        assert bytes(got).startswith(b"age-encryption.org/v1\n")


#: Runs a command with a /dev of its own (a tmpfs in a private mount namespace), so that a
#: broken build replaces nothing of the machine's /dev/stdout.
PRIVATE_DEV = (
    "unshare", "-m", "--propagation", "private", "sh", "-c",
    "mount -t tmpfs keyagent-test /dev && ln -s /proc/self/fd/1 /dev/stdout"
    " && ln -s /proc/self/fd/2 /dev/stderr && ln -s /proc/self/fd /dev/fd && exec \"$@\"",
    "sh",
)  # fmt: skip


def _decrypt_to_dev_stdout(
    bus: PrivateBus, sealed: Path, stdout: int
) -> subprocess.CompletedProcess[bytes]:
    cmd = [*PRIVATE_DEV, *KEYAGENT, "decrypt", "-o", "/dev/stdout", str(sealed)]
    return subprocess.run(
        cmd, env=bus.env, stdout=stdout, stderr=subprocess.PIPE, timeout=60, check=False
    )


@requires_root
def test_dev_stdout_is_stdout(private_bus: PrivateBus, files: Path, sealed: Path) -> None:
    r = _decrypt_to_dev_stdout(private_bus, sealed, subprocess.PIPE)
    assert r.returncode == 0, r.stderr
    assert r.stdout == DATA
    out = files / "redirected"
    with open(out, "wb") as f:  # `> redirected`: the same file, written through fd 1
        ino = os.fstat(f.fileno()).st_ino
        r = _decrypt_to_dev_stdout(private_bus, sealed, f.fileno())
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == DATA and out.stat().st_ino == ino


def test_dev_fd_names_are_our_fds(private_bus: PrivateBus, sealed: Path) -> None:
    r = ka(private_bus, "decrypt", "-o", "/dev/fd/1", str(sealed))
    assert r.returncode == 0, r.stderr
    assert r.stdout == DATA


def test_a_regular_file_is_still_replaced_whole(
    private_bus: PrivateBus, files: Path, sealed: Path
) -> None:
    target = files / "out"
    target.write_bytes(b"old")
    ino = target.stat().st_ino
    r = ka(private_bus, "decrypt", "-o", str(target), str(sealed))
    assert r.returncode == 0, r.stderr
    assert target.read_bytes() == DATA and target.stat().st_ino != ino
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
