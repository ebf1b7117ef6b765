"""The real-bus test harness: a private dbus-daemon per test, with the real activation file.

Every test that talks to the agent gets its own `dbus-daemon` started from a config file written
here: its own socket, its own <servicedir> holding `dbus/org.example.KeyAgent.service.in` with
@bindir@ pointing at a `keyagentd` wrapper that runs this source tree, and a temporary
KEYAGENT_HOME. Teardown kills the daemon's whole process group, activated agents included.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVICE_IN = ROOT / "dbus" / "org.example.KeyAgent.service.in"
BUS_NAME = "org.example.KeyAgent"

#: Fast KDF settings for tests (the agent's defaults are exercised by their own tests).
TEST_AGENT_ARGS = ("--argon2-memory", "1024", "--argon2-time", "1", "--argon2-parallelism", "1")
DAEMON_START_TIMEOUT = 10.0


@dataclass
class PrivateBus:
    """A running private session bus and everything a test needs to talk to it."""

    address: str
    socket_path: Path
    tmp: Path
    home: Path
    service_dir: Path
    bindir: Path
    env: dict[str, str]
    daemon: subprocess.Popen[bytes]
    extra_pids: list[int] = field(default_factory=list)

    def run(
        self, argv: list[str], *, check: bool = True, timeout: float = 30, **kw: object
    ) -> subprocess.CompletedProcess[str]:
        """Run a command with this bus as its session bus."""
        return subprocess.run(  # type: ignore[call-overload, no-any-return]
            argv, env=self.env, capture_output=True, text=True, check=check, timeout=timeout, **kw
        )

    def keyagent(self, *args: str, **kw: object) -> subprocess.CompletedProcess[str]:
        """Run the `keyagent` command from this source tree."""
        return self.run([sys.executable, "-m", "keyagent", *args], **kw)

    def agent_pid(self) -> int | None:
        """The pid of the process owning org.example.KeyAgent, or None when nobody owns it."""
        return name_owner_pid(self.env, BUS_NAME)

    def wait_agent_gone(self, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.agent_pid() is None:
                return True
            time.sleep(0.05)
        return False


def render_wrapper(module: str, *, python: str = sys.executable, flags: str = "") -> str:
    """bin/wrapper.in as meson's configure_file renders it for ``module`` (``flags``: " -I")."""
    text = (ROOT / "bin" / "wrapper.in").read_text()
    return text.replace("@PYTHON@", python).replace("@PYFLAGS@", flags).replace("@MODULE@", module)


def name_owner_pid(env: dict[str, str], name: str) -> int | None:
    """The pid of the process owning bus ``name`` on ``env``'s session bus, or None."""
    out = subprocess.run(
        [
            "dbus-send",
            "--session",
            "--print-reply",
            "--dest=org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus.GetConnectionUnixProcessID",
            f"string:{name}",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    return int(out.stdout.split()[-1]) if out.returncode == 0 else None


def _write_config(
    tmp: Path, socket_path: Path, service_dir: Path, *, any_user: bool, standard_dirs: bool
) -> Path:
    # A session-bus config of our own: a private socket, our service dir, nothing from the host
    # (or, with standard_dirs, the usual session dirs: $XDG_DATA_HOME/dbus-1/services first).
    allow_users = '<allow user="*"/>' if any_user else ""
    service_dirs = (
        "<standard_session_servicedirs/>"
        if standard_dirs
        else f"<servicedir>{service_dir}</servicedir>"
    )
    config = tmp / "bus.conf"
    config.write_text(
        f"""<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <keep_umask/>
  <listen>unix:path={socket_path}</listen>
  <auth>EXTERNAL</auth>
  {service_dirs}
  <policy context="default">
    {allow_users}
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
  <limit name="max_message_size">134217728</limit>
  <limit name="max_message_unix_fds">64</limit>
  <limit name="service_start_timeout">30000</limit>
</busconfig>
"""
    )
    return config


def write_activation_file(service_dir: Path, bindir: Path) -> Path:
    """The real activation file, with @bindir@ substituted as meson and `keyagent install` do."""
    service_dir.mkdir(parents=True, exist_ok=True)
    target = service_dir / "org.example.KeyAgent.service"
    target.write_text(SERVICE_IN.read_text().replace("@bindir@", str(bindir)))
    return target


def write_agent_wrapper(bindir: Path, agent_args: tuple[str, ...]) -> Path:
    """A `keyagentd` that runs this source tree's agent (on the bus's PYTHONPATH) with the
    test's arguments, started as the installed wrapper starts it (bin/wrapper.in): the
    interpreter straight from the shebang, no shell and no ``-m`` (runpy's imports)."""
    bindir.mkdir(parents=True, exist_ok=True)
    wrapper = bindir / "keyagentd"
    wrapper.write_text(
        f"#!{sys.executable}\n"
        "import sys\n\n"
        "from keyagentd.__main__ import main\n\n"
        f"sys.exit(main([*{list(agent_args)!r}, *sys.argv[1:]]))\n"
    )
    wrapper.chmod(0o755)
    return wrapper


def start_private_bus(
    tmp: Path,
    *,
    any_user: bool = False,
    agent_args: tuple[str, ...] = TEST_AGENT_ARGS,
    standard_dirs: bool = False,
    extra_env: dict[str, str] | None = None,
) -> PrivateBus:
    """``extra_env`` goes into the daemon's environment, so activated agents inherit it."""
    tmp.mkdir(parents=True, exist_ok=True)
    if any_user:
        tmp.chmod(0o755)  # other uids must reach the socket
    socket_path = tmp / "bus"
    service_dir = tmp / "services"
    bindir = tmp / "bin"
    home = tmp / "keystore"
    write_agent_wrapper(bindir, agent_args)
    if not standard_dirs:
        write_activation_file(service_dir, bindir)
    config = _write_config(
        tmp, socket_path, service_dir, any_user=any_user, standard_dirs=standard_dirs
    )
    address = f"unix:path={socket_path}"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DBUS_", "KEYAGENT_", "XDG_")) and k not in {"PYTHONPATH"}
    }
    env.update(
        DBUS_SESSION_BUS_ADDRESS=address,
        KEYAGENT_HOME=str(home),
        XDG_DATA_HOME=str(tmp / "data"),
        XDG_CONFIG_HOME=str(tmp / "config"),
        XDG_RUNTIME_DIR=str(tmp),
        PYTHONPATH=f"{ROOT / 'service'}:{ROOT / 'cli'}",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra_env or {})
    daemon = subprocess.Popen(
        ["dbus-daemon", "--nofork", "--nopidfile", f"--config-file={config}", "--print-address"],
        env=env,
        stdout=subprocess.PIPE,
        start_new_session=True,  # activated agents join this group, so teardown reaches them
    )
    assert daemon.stdout is not None
    deadline = time.monotonic() + DAEMON_START_TIMEOUT
    line = daemon.stdout.readline()
    while not socket_path.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    if not line or not socket_path.exists():
        daemon.kill()
        raise RuntimeError("the private dbus-daemon did not start")
    if any_user:
        socket_path.chmod(0o777)
    return PrivateBus(address, socket_path, tmp, home, service_dir, bindir, env, daemon)


def stop_private_bus(bus: PrivateBus) -> None:
    pgid = bus.daemon.pid
    agent = bus.agent_pid()
    for pid in [*(p for p in [agent] if p), *bus.extra_pids]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    bus.daemon.terminate()
    try:
        bus.daemon.wait(timeout=5)
    except subprocess.TimeoutExpired:
        bus.daemon.kill()
        bus.daemon.wait()
    if bus.daemon.stdout:
        bus.daemon.stdout.close()
    time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)  # any agent still running from this bus


BusFactory = Callable[..., PrivateBus]


@pytest.fixture
def bus_factory(tmp_path: Path) -> Iterator[BusFactory]:
    """Start private buses on demand: `bus_factory(any_user=False, agent_args=(...))`."""
    started: list[PrivateBus] = []
    reachable: list[Path] = []

    def make(
        *,
        any_user: bool = False,
        agent_args: tuple[str, ...] = TEST_AGENT_ARGS,
        standard_dirs: bool = False,
        extra_env: dict[str, str] | None = None,
    ) -> PrivateBus:
        # Other uids must reach the socket, and pytest's basetemp is 0700: use /tmp then.
        top = tmp_path if not any_user else Path(tempfile.mkdtemp(prefix="keyagent-bus-"))
        if any_user:
            top.chmod(0o755)
            reachable.append(top)
        bus = start_private_bus(
            top / f"bus{len(started)}",
            any_user=any_user,
            agent_args=agent_args,
            standard_dirs=standard_dirs,
            extra_env=extra_env,
        )
        started.append(bus)
        return bus

    yield make
    for bus in started:
        stop_private_bus(bus)
    for top in reachable:
        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def private_bus(bus_factory: BusFactory) -> PrivateBus:
    """A private session bus whose only clients are this uid."""
    return bus_factory()


@pytest.fixture
def permissive_bus(bus_factory: BusFactory) -> PrivateBus:
    """A private session bus that also admits other uids (for the access-denied tests)."""
    return bus_factory(any_user=True)


OTHER_UID = 65534  # nobody


def as_other_user() -> None:
    """preexec_fn: drop to uid/gid 65534 (tests run as root in CI)."""
    os.setgroups([])
    os.setgid(OTHER_UID)
    os.setuid(OTHER_UID)


requires_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another uid")


def _copy_readable(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
    for path in [dst, *dst.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)


@pytest.fixture(scope="session")
def other_user_pythonpath() -> Iterator[str]:
    """A PYTHONPATH that uid 65534 can read, wherever the checkout and the venv live (a 0700
    home, a `mktemp -d` folder): copies of our packages in a world-readable dir, and of jeepney,
    which the command no longer needs but some tests use as the other uid's own client."""
    import jeepney

    top = Path(tempfile.mkdtemp(prefix="keyagent-other-uid-"))
    try:
        top.chmod(0o755)
        for package in (ROOT / "service" / "keyagentd", ROOT / "cli" / "keyagent"):
            _copy_readable(package, top / package.name)
        _copy_readable(Path(jeepney.__file__).resolve().parent, top / "jeepney")
        yield str(top)
    finally:
        shutil.rmtree(top, ignore_errors=True)


def have(tool: str) -> bool:
    return shutil.which(tool) is not None
