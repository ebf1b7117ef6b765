"""Run settings and the data files shared by the rows."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.harness import Harness
from bench.timing import MIB

SMALL = 1024


@dataclass(frozen=True)
class Config:
    quick: bool
    tmpdir: Path
    stream_bytes: int  # streaming rows and scaling
    memory_stream_bytes: int  # the peak-RSS stream
    stream_reps: int
    small_calls: int  # latency samples per small-message row
    start_reps: int
    cold_reps: int
    concurrency_seconds: float
    unlock_reps: int
    memory_keys: int

    @classmethod
    def make(cls, *, quick: bool, tmpdir: Path, size_mib: int | None) -> Config:
        if quick:
            return cls(True, tmpdir, (size_mib or 32) * MIB, 128 * MIB, 2, 300, 5, 2, 1.0, 2, 25)
        return cls(False, tmpdir, (size_mib or 256) * MIB, 1024 * MIB, 3, 2000, 20, 5, 3.0, 5, 100)


def default_tmpdir() -> Path:
    """tmpfs (/dev/shm) when there is room: the rows measure CPU, not a disk."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 6 * 1024 * MIB:
        return shm
    return Path(os.environ.get("TMPDIR", "/tmp"))


class Context:
    """Everything a row needs: settings, the harness, and lazily made input files."""

    def __init__(self, cfg: Config, harness: Harness, workdir: Path) -> None:
        self.cfg = cfg
        self.h = harness
        self.dir = workdir
        self._files: dict[str, Path] = {}

    def out(self, name: str) -> Path:
        return self.dir / f"out-{name}"

    def python(self) -> str:
        return sys.executable

    def plaintext(self, size: int) -> Path:
        """Random bytes (incompressible), made once per size."""
        key = f"plain-{size}"
        if key not in self._files:
            path = self.dir / key
            block = os.urandom(min(size, 16 * MIB)) if size else b""
            with open(path, "wb") as f:
                left = size
                while left > 0:
                    f.write(block[: min(left, len(block))])
                    left -= len(block)
            self._files[key] = path
        return self._files[key]

    def ciphertext(self, size: int) -> Path:
        """The plaintext of ``size`` encrypted to the bench key by the `age` command (a neutral
        producer), or by pyrage when `age` is missing."""
        key = f"cipher-{size}"
        if key not in self._files:
            src = self.plaintext(size)
            path = self.dir / f"{key}.age"
            recipient = self.h.identity()[1]
            if shutil.which("age"):
                subprocess.run(["age", "-r", recipient, "-o", str(path), str(src)], check=True)
            else:
                import pyrage

                pyrage.encrypt_file(
                    str(src), str(path), [pyrage.x25519.Recipient.from_str(recipient)]
                )
            self._files[key] = path
        return self._files[key]

    def small_ciphertext(self) -> bytes:
        return self.ciphertext(SMALL).read_bytes()
