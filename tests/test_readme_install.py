"""The README's install lines for PEP 668 systems, run as written (slow: pip fetches the
dependencies and build tools from the package index)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, BusFactory

README = ROOT / "README.md"


def install_section() -> str:
    text = README.read_text()
    return text[text.index("## Install") : text.index("## A short tour")]


def test_readme_shows_pipx_and_a_venv_for_externally_managed_pythons() -> None:
    section = install_section()
    assert "PEP 668" in section
    assert "pipx install ." in section
    assert re.search(r"python3 -m venv (\S+) && \1/bin/pip install \.", section)


@pytest.mark.slow
def test_readme_venv_lines_install_a_working_keyagent(
    bus_factory: BusFactory, tmp_path: Path
) -> None:
    blocks = re.findall(r"```sh\n(.*?)```", install_section(), flags=re.S)
    venv_block = next(b for b in blocks if "-m venv" in b)
    bus = bus_factory(standard_dirs=True)
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in bus.env.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    # The system's python3 first: on Debian it is the externally managed one.
    env.update(HOME=str(home), PATH=f"/usr/bin:/bin:{os.environ['PATH']}")
    out = subprocess.run(
        ["bash", "-euc", venv_block],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    keyagentd = home / ".local" / "lib" / "keyagent" / "bin" / "keyagentd"
    service = (
        Path(bus.env["XDG_DATA_HOME"]) / "dbus-1" / "services" / "org.example.KeyAgent.service"
    )
    # The venv's console script, started isolated (`python -I`, issue 13).
    python = keyagentd.read_text().splitlines()[0][2:].strip()
    assert f"Exec={python} -I -m keyagentd\n" in service.read_text()
    assert (
        home / ".local" / "lib" / "keyagent" / "share" / "man" / "man1" / "keyagent.1"
    ).is_file()
    version = bus.run(
        ["busctl", "--user", "get-property", "org.example.KeyAgent", "/org/example/KeyAgent",
         "org.example.KeyAgent", "Version"],
        check=False,
    )  # fmt: skip
    assert version.returncode == 0 and version.stdout.startswith('s "'), version.stderr
