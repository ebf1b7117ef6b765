"""The bench's private session bus and agent, reusing the test harness (tests/conftest.py).

The bus is started exactly as the tests start theirs (`start_private_bus`), but the agent runs
with its DEFAULT options (``agent_args=()``): default Argon2id parameters, default payload cap.
The agent is activated from this source tree by the real activation file.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from bench import ROOT

if TYPE_CHECKING:
    from keyagent.client import Client

BENCH_KEY = "bench"
BENCH_PASSPHRASE = "bench passphrase, not a secret"
MEMORY_KEY_PREFIX = "benchm"  # no "-": see the report (object paths)


def load_conftest() -> ModuleType:
    """tests/conftest.py as a module of its own (pytest need not be running)."""
    name = "keyagent_tests_conftest"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "tests" / "conftest.py")
    if spec is None or spec.loader is None:
        raise RuntimeError("cannot load tests/conftest.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


def proc_status(pid: int) -> dict[str, int]:
    """The memory fields of /proc/PID/status, in bytes (VmRSS, VmHWM, ...)."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if key.startswith(("Vm", "Rss")) and len(parts) == 2 and parts[1] == "kB":
            out[key] = int(parts[0]) * 1024
    return out


def reset_hwm(pid: int) -> bool:
    """Reset the peak RSS (VmHWM) to the current RSS: `echo 5 > /proc/PID/clear_refs`."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Harness:
    """One private bus for the whole run; agents come and go on it."""

    def __init__(self, workdir: Path) -> None:
        self.conftest = load_conftest()
        self.workdir = workdir
        self.bus: Any = None
        self.log = Path(os.devnull)  # set by `start`
        self._identity: tuple[str, str] | None = None

    def start(self, log: Path) -> None:
        """Start the bus; its stderr, and so the activated agents' logs, go to ``log``."""
        self.log = log
        self.bus = start_logged_bus(self.conftest, self.workdir / "bus", log, agent_args=())

    def stop(self) -> None:
        if self.bus is not None:
            self.conftest.stop_private_bus(self.bus)
            self.bus = None

    @property
    def address(self) -> str:
        return str(self.bus.address)

    @property
    def env(self) -> dict[str, str]:
        return dict(self.bus.env)

    def client(self, timeout: float = 120.0) -> Client:
        from keyagent.client import Client

        return Client(self.address, timeout=timeout)

    # -- the agent process ----------------------------------------------------------------

    def agent_pid(self) -> int | None:
        pid = self.bus.agent_pid()
        return int(pid) if pid else None

    def ensure_agent(self) -> int:
        """Activate the agent if needed; returns its pid."""
        with self.client() as c:
            c.version()
            return c.agent_pid()

    def stop_agent(self) -> None:
        pid = self.agent_pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not self.bus.wait_agent_gone(timeout=15):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            self.bus.wait_agent_gone(timeout=5)
        # The bus reports the name gone slightly before the process has exited.
        deadline = time.monotonic() + 5
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.01)

    # -- the bench key --------------------------------------------------------------------

    def identity(self) -> tuple[str, str]:
        """(secret identity, recipient) of the bench's X25519 key, made once per run."""
        if self._identity is None:
            import pyrage

            ident = pyrage.x25519.Identity.generate()
            self._identity = (str(ident), str(ident.to_public()))
        return self._identity

    def identity_file(self) -> Path:
        path = self.workdir / "identity.txt"
        if not path.exists():
            secret, recipient = self.identity()
            path.write_text(f"# public key: {recipient}\n{secret}\n")
            path.chmod(0o600)
        return path

    def ensure_key(self, client: Client | None = None) -> None:
        """The bench key exists in the agent's keystore and is unlocked."""
        from keyagent.protocol import NoSuchKey

        own = client is None
        c = self.client() if client is None else client
        try:
            try:
                info = c.key(BENCH_KEY)
            except NoSuchKey:
                c.import_key(BENCH_KEY, self.identity()[0], BENCH_PASSPHRASE, label="bench")
                info = c.key(BENCH_KEY)
            if info.locked:
                c.unlock_with_pipe(BENCH_KEY, BENCH_PASSPHRASE)
        finally:
            if own:
                c.close()


def start_logged_bus(conftest: Any, tmp: Path, log: Path, **kw: Any) -> Any:
    """`start_private_bus` with the bus daemon's stderr, and so its agents' logs (one line per
    operation), appended to ``log`` instead of the terminal."""
    saved = os.dup(2)
    try:
        with open(log, "ab") as f:
            os.dup2(f.fileno(), 2)  # inherited by dbus-daemon at spawn, then restored
        return conftest.start_private_bus(tmp, **kw)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
