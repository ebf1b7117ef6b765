"""Helpers for the `keyagent` command tests: run it without a terminal, with a passphrase fd, or
under a real pseudo-terminal that answers its prompts."""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import TEST_AGENT_ARGS, BusFactory, PrivateBus

KEYAGENT = (sys.executable, "-m", "keyagent")


def ka(
    bus: PrivateBus,
    *args: str,
    input: bytes | None = None,
    pass_fds: Sequence[int] = (),
    timeout: float = 60,
    env: dict[str, str] | None = None,
    stdin: int | None = None,
    stdout: int | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run `keyagent` with no controlling terminal (a new session), bytes in and out."""
    return subprocess.run(
        [*KEYAGENT, *args],
        env=bus.env if env is None else env,
        input=input,
        stdin=stdin if input is None else None,
        stdout=subprocess.PIPE if stdout is None else stdout,
        stderr=subprocess.PIPE,
        pass_fds=tuple(pass_fds),
        start_new_session=True,
        timeout=timeout,
        check=False,
    )


@contextlib.contextmanager
def passphrase_fd(*lines: str) -> Iterator[int]:
    """A pipe's read end holding the lines, for `--passphrase-fd N`."""
    r, w = os.pipe()
    os.write(w, "".join(line + "\n" for line in lines).encode())
    os.close(w)
    try:
        yield r
    finally:
        os.close(r)


def ka_pw(
    bus: PrivateBus, lines: Sequence[str], *args: str, **kw: object
) -> subprocess.CompletedProcess[bytes]:
    """Run `keyagent ARGS --passphrase-fd N` with the lines on N."""
    with passphrase_fd(*lines) as fd:
        return ka(bus, *args, "--passphrase-fd", str(fd), pass_fds=(fd,), **kw)  # type: ignore[arg-type]


PASSPHRASE = "correct horse"


def create_key(bus: PrivateBus, name: str, passphrase: str = PASSPHRASE, *extra: str) -> str:
    """`keyagent init NAME`; returns the recipient."""
    r = ka_pw(bus, [passphrase], "init", name, *extra)
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout.decode().strip()


def error_line(r: subprocess.CompletedProcess[bytes]) -> str:
    lines = [ln for ln in r.stderr.decode().splitlines() if ln.startswith("keyagent: error: ")]
    assert lines, f"no error line in {r.stderr!r}"
    return lines[0]


@dataclass
class TtyRun:
    """`keyagent` with a pseudo-terminal as its controlling terminal (what /dev/tty opens).

    stdin and stdout stay pipes (or files): prompts go to the terminal, data does not.
    """

    proc: subprocess.Popen[bytes]
    master: int
    seen: bytes = b""

    @classmethod
    def start(
        cls,
        bus: PrivateBus,
        *args: str,
        stdin: int | None = subprocess.DEVNULL,
        stderr_tty: bool = False,
        stdout_tty: bool = False,
    ) -> TtyRun:
        master, slave = os.openpty()

        def become_terminal_owner() -> None:
            os.setsid()
            fcntl.ioctl(slave, termios.TIOCSCTTY, 0)

        proc = subprocess.Popen(
            [*KEYAGENT, *args],
            env=bus.env,
            stdin=stdin,
            stdout=slave if stdout_tty else subprocess.PIPE,
            stderr=slave if stderr_tty else subprocess.PIPE,
            preexec_fn=become_terminal_owner,
            pass_fds=(slave,),
        )
        os.close(slave)
        return cls(proc, master)

    def read_some(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return True
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: the terminal's last user is gone
            return False
        if not data:
            return False
        self.seen += data
        return True

    def expect(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while text.encode() not in self.seen:
            if time.monotonic() > deadline or not self.read_some(0.1):
                if text.encode() in self.seen:
                    return
                raise AssertionError(f"{text!r} did not appear on the terminal: {self.seen!r}")
            if self.proc.poll() is not None:
                self.read_some(0.1)
                if text.encode() not in self.seen:
                    raise AssertionError(f"exited before {text!r} appeared: {self.seen!r}")

    def type(self, line: str) -> None:
        os.write(self.master, line.encode() + b"\n")

    def answer(self, prompt: str, line: str) -> None:
        self.expect(prompt)
        self.seen = self.seen[self.seen.index(prompt.encode()) + len(prompt) :]
        self.type(line)

    def finish(self, timeout: float = 60) -> tuple[int, bytes, bytes]:
        """Wait; returns (exit code, stdout, stderr); the terminal output is in .seen."""
        result: list[tuple[bytes, bytes]] = []
        # stdin belongs to the test (it may still be writing): communicate() must not close it.
        self.proc.stdin = None
        # Pipes drain in a thread while this one keeps the terminal drained: neither can block.
        t = threading.Thread(target=lambda: result.append(self.proc.communicate(timeout=timeout)))
        t.start()
        deadline = time.monotonic() + timeout
        while t.is_alive() and time.monotonic() < deadline:
            if not self.read_some(0.05):
                break
        t.join(timeout=max(1.0, deadline - time.monotonic()))
        while select.select([self.master], [], [], 0)[0] and self.read_some(0):
            pass
        os.close(self.master)
        out, err = result[0] if result else (b"", b"")
        return self.proc.returncode, out or b"", err or b""


#: The agent as the tests run it, with a cheap scrypt for passphrase files and exports
#: (the default targets about a second per file, which would dominate these tests).
FAST_AGENT_ARGS = (*TEST_AGENT_ARGS, "--scrypt-work-factor", "10")


# Fixtures of the command and client tests. A test module takes them with
# `from cli_support import files as files, private_bus as private_bus` (the `as` re-export
# keeps linters from reading the test parameters as redefinitions).


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """A directory of this test's files only (the private bus lives in tmp_path too)."""
    d = tmp_path / "files"
    d.mkdir()
    return d


@pytest.fixture
def private_bus(bus_factory: BusFactory) -> PrivateBus:
    """conftest's private bus, with FAST_AGENT_ARGS."""
    return bus_factory(agent_args=FAST_AGENT_ARGS)
