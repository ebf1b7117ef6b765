"""The agent starts isolated from the Python environment (issue 13).

Any program of the user can put PYTHONPATH into the activation environment with one
`dbus-update-activation-environment`; a `sitecustomize.py` there would run inside the agent.
The files `keyagent install` writes, and meson's wrapper, start it with ``python -I``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import ROOT, BusFactory, render_wrapper

VERSION_CALL = [
    "gdbus", "call", "--session", "--dest", "org.example.KeyAgent",
    "--object-path", "/org/example/KeyAgent",
    "--method", "org.freedesktop.DBus.Properties.Get", "org.example.KeyAgent", "Version",
]  # fmt: skip
SOURCE_PATH = f"{ROOT / 'service'}:{ROOT / 'cli'}"


def _evil_site(tmp: Path) -> tuple[Path, Path]:
    """A PYTHONPATH directory whose sitecustomize leaves a marker file; (dir, marker)."""
    evil, marker = tmp / "evil", tmp / "ran-inside"
    evil.mkdir()
    (evil / "sitecustomize.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    return evil, marker


def test_activation_ignores_the_python_environment(bus_factory: BusFactory, tmp_path: Path) -> None:
    bus = bus_factory(standard_dirs=True)
    bindir = tmp_path / "pipbin"
    bindir.mkdir()
    script = bindir / "keyagentd"  # what pip writes for [project.scripts]
    script.write_text(
        f"#!{sys.executable}\nimport sys\nfrom keyagentd.__main__ import main\nsys.exit(main())\n"
    )
    script.chmod(0o755)
    env = {**bus.env, "PYTHONPATH": SOURCE_PATH}
    cmd = [sys.executable, "-m", "keyagent", "install", "--bindir", str(bindir)]
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    evil, marker = _evil_site(tmp_path)
    bus.run(["dbus-update-activation-environment", f"PYTHONPATH={evil}", "PYTHONNOUSERSITE="])
    answer = bus.run(VERSION_CALL)
    assert answer.stdout.startswith("(<'")
    assert bus.agent_pid() is not None
    assert not marker.exists(), "code from PYTHONPATH ran inside the agent"
    service = Path(bus.env["XDG_DATA_HOME"]) / "dbus-1" / "services"
    text = (service / "org.example.KeyAgent.service").read_text()
    assert f"Exec={sys.executable} -I -m keyagentd\n" in text


def test_meson_wrapper_starts_isolated(tmp_path: Path) -> None:
    wrapper = tmp_path / "keyagentd"
    wrapper.write_text(render_wrapper("keyagentd.__main__", flags=" -I"))
    wrapper.chmod(0o755)
    evil, marker = _evil_site(tmp_path)
    r = subprocess.run(
        [str(wrapper), "--version"],
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{evil}:{SOURCE_PATH}"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert not marker.exists(), "code from PYTHONPATH ran inside the agent"


def test_install_keeps_an_isolated_wrapper(tmp_path: Path) -> None:
    from keyagent.install import agent_command

    script = tmp_path / "keyagentd"
    script.write_text(f"#!{sys.executable} -I\nimport sys\n")
    assert agent_command(tmp_path) == str(script)  # meson's wrapper: isolated already
    script.write_text(f"#!{sys.executable}\nimport sys\n")
    assert agent_command(tmp_path) == f"{sys.executable} -I -m keyagentd"
