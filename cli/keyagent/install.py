"""`keyagent install` / `keyagent uninstall`: per-user activation and systemd files.

The user copies point at this installation's `keyagentd`, so D-Bus activation (dbus-daemon uses
`Exec=`) and systemd (dbus-broker activates through `SystemdService=`) start the right agent.
The templates are the very files meson installs system-wide (`dbus/…service.in`,
`data/keyagent.service.in`); meson also copies them into this package so a wheel has them.
After writing or removing the activation file we ask the session bus to reload: dbus-broker
only sees new activation files then (dbus-daemon watches the directory, reloading is harmless).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from keyagent.protocol import BUS_DAEMON, BUS_NAME
from keyagent.transport import BUS_PATH, BusSocket, ConnectFailed, NoAddress
from keyagent.wire import ERROR, WireError

RELOAD_TIMEOUT = 10.0  # seconds; a bus daemon re-reads its configuration in milliseconds

_HERE = Path(__file__).resolve().parent
#: Where the templates live: installed beside this module by meson, or in the source tree.
_TEMPLATE_DIRS = (_HERE / "templates", _HERE.parent.parent / "dbus", _HERE.parent.parent / "data")
ACTIVATION_TEMPLATE = f"{BUS_NAME}.service.in"
UNIT_TEMPLATE = "keyagent.service.in"


def read_template(name: str) -> str:
    for folder in _TEMPLATE_DIRS:
        if (folder / name).is_file():
            return (folder / name).read_text(encoding="utf-8")
    raise FileNotFoundError(f"template {name} is missing from this installation")


def _xdg(var: str, default: str) -> Path:
    value = os.environ.get(var, "")
    # The XDG spec says relative paths are invalid and must be ignored.
    return Path(value) if value and os.path.isabs(value) else Path.home() / default


def activation_file() -> Path:
    return _xdg("XDG_DATA_HOME", ".local/share") / "dbus-1" / "services" / f"{BUS_NAME}.service"


def systemd_unit() -> Path:
    return _xdg("XDG_CONFIG_HOME", ".config") / "systemd" / "user" / "keyagent.service"


def find_agent_bindir() -> Path:
    """The directory of this installation's `keyagentd`: beside our interpreter, else on PATH."""
    beside = Path(sys.executable).parent / "keyagentd"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside.parent.absolute()
    found = shutil.which("keyagentd")
    if found is None:
        raise FileNotFoundError("keyagentd is not installed beside this keyagent or on PATH")
    return Path(found).parent.absolute()


def agent_command(bindir: Path) -> str:
    """The command line that starts ``bindir``'s keyagentd isolated from the Python
    environment (``-I``: no PYTHONPATH and friends, no user site-packages), which any program
    of the user could otherwise set for activation (`dbus-update-activation-environment`).
    meson's wrapper already starts with ``-I``; a pip console script names its interpreter
    in the first line, which is then run directly."""
    script = bindir / "keyagentd"
    try:
        with open(script, "rb") as f:
            first = f.readline(4096).decode("utf-8", "replace").strip()
    except OSError:
        first = ""
    words = first[2:].split() if first.startswith("#!") else []
    if len(words) == 1 and "python" in Path(words[0]).name and " " not in words[0]:
        return f"{words[0]} -I -m keyagentd"
    return str(script)  # meson's wrapper (isolated already), or not a script we can read


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def reload_session_bus(bus: str = "SESSION") -> str | None:
    """org.freedesktop.DBus.ReloadConfig on the session bus; None, or why it did not happen."""
    try:
        with BusSocket(None if bus == "SESSION" else bus, timeout=RELOAD_TIMEOUT) as conn:
            reply = conn.call(
                BUS_DAEMON, BUS_PATH, BUS_DAEMON, "ReloadConfig", timeout=RELOAD_TIMEOUT
            )
    except NoAddress:
        return "no session bus (DBUS_SESSION_BUS_ADDRESS is not set)"
    except ConnectFailed as e:
        return f"cannot connect to the session bus: {e.reason}"
    except (OSError, WireError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else type(e).__name__
        return f"cannot connect to the session bus: {reason}"
    if reply.kind == ERROR:
        return f"the session bus refused to reload: {reply.body[0] if reply.body else 'error'}"
    return None


def _reload_or_say_why() -> None:
    problem = reload_session_bus()
    if problem is not None:  # the files are right; a bus started later reads them anyway
        print(f"keyagent: note: {problem}; log in again if activation fails", file=sys.stderr)


def install(bindir: Path | None = None) -> list[Path]:
    """Write the user activation file and systemd unit, reload the bus; return the paths."""
    where = bindir or find_agent_bindir()
    command = agent_command(where)
    written = []
    targets = ((activation_file(), ACTIVATION_TEMPLATE), (systemd_unit(), UNIT_TEMPLATE))
    for path, template in targets:
        text = read_template(template).replace("@bindir@/keyagentd", command)
        _write_atomically(path, text.replace("@bindir@", str(where)))
        written.append(path)
    _reload_or_say_why()
    return written


def uninstall() -> list[Path]:
    """Remove the user copies (and reload the bus if any were there); return those removed."""
    removed = []
    for path in (activation_file(), systemd_unit()):
        if path.exists():
            path.unlink()
            removed.append(path)
    if removed:
        _reload_or_say_why()
    return removed
