"""The build: meson installs system files with bindir substituted; a wheel has both packages."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _tool_env() -> dict[str, str]:
    # meson and ninja come from the project's venv.
    return {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}


@pytest.fixture(scope="module")
def meson_destdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("meson")
    build, dest = tmp / "build", tmp / "dest"
    env = _tool_env()
    subprocess.run(
        ["meson", "setup", str(build), "--prefix=/opt/ka"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    subprocess.run(
        ["meson", "install", "-C", str(build), "--destdir", str(dest)],
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    return dest / "opt" / "ka"


def test_meson_installs_activation_file_with_bindir(meson_destdir: Path) -> None:
    service = meson_destdir / "share" / "dbus-1" / "services" / "org.example.KeyAgent.service"
    text = service.read_text()
    assert "Name=org.example.KeyAgent\n" in text
    assert "Exec=/opt/ka/bin/keyagentd\n" in text
    assert "SystemdService=keyagent.service" in text
    assert "@bindir@" not in text


def test_meson_installs_systemd_user_unit(meson_destdir: Path) -> None:
    unit = (meson_destdir / "lib" / "systemd" / "user" / "keyagent.service").read_text()
    assert "Type=dbus\n" in unit
    assert "BusName=org.example.KeyAgent\n" in unit
    assert "ExecStart=/opt/ka/bin/keyagentd\n" in unit
    assert "LimitCORE=0" in unit


def test_meson_installs_packages_and_commands(meson_destdir: Path) -> None:
    site = next(meson_destdir.glob("lib/python3*/site-packages"))
    assert (site / "keyagentd" / "__init__.py").is_file()
    assert (site / "keyagentd" / "age" / "__init__.py").is_file()
    assert (site / "keyagent" / "protocol.py").is_file()
    assert (site / "keyagent" / "templates" / "org.example.KeyAgent.service.in").is_file()
    assert not list(site.rglob("__pycache__/*.cpython-*.pyc.*"))
    for cmd in ("keyagent", "keyagentd", "age-plugin-keyagent"):
        wrapper = meson_destdir / "bin" / cmd
        assert os.access(wrapper, os.X_OK)
        assert wrapper.read_text().startswith("#!/")


def test_wheel_has_both_packages_and_no_system_files(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        env=_tool_env(),
        check=True,
        capture_output=True,
        timeout=300,
    )
    wheel = next(tmp_path.glob("keyagent-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "keyagentd/__main__.py" in names
    assert "keyagentd/age/__init__.py" in names
    assert "keyagent/cli.py" in names
    assert "keyagent/templates/keyagent.service.in" in names
    assert not [n for n in names if "dbus-1" in n or "systemd" in n or n.endswith(".pyc")]
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "keyagent = keyagent.cli:main" in scripts
    assert "keyagentd = keyagentd.__main__:main" in scripts
    assert "age-plugin-keyagent = keyagent.plugin.main:main" in scripts
    assert "keyagent/plugin/identity_v1.py" in names

    # Installed into a fresh venv, both commands exist and both packages import.
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(env_dir / "bin" / "python"),
            "install",
            "--no-deps",
            "-q",
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    for cmd in ("keyagent", "keyagentd", "age-plugin-keyagent"):
        assert os.access(env_dir / "bin" / cmd, os.X_OK)
    out = subprocess.run(
        [
            str(env_dir / "bin" / "python"),
            "-c",
            "import keyagent.protocol, keyagent.install; print(keyagent.protocol.BUS_NAME)",
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert out.stdout.strip() == "org.example.KeyAgent"
