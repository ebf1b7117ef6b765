"""The build: meson installs system files with bindir substituted; a wheel has both packages."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

from conftest import have

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _tool_env() -> dict[str, str]:
    # meson and ninja come from the project's venv.
    return {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}


def meson_install(
    tmp: Path, *options: str, meson: str = "meson", env: dict[str, str] | None = None
) -> tuple[Path, str]:
    """`meson setup` + `meson install --destdir`: the destdir and setup's output."""
    build, dest = tmp / "build", tmp / "dest"
    env = env or _tool_env()
    setup = subprocess.run(
        [meson, "setup", str(build), *options],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    subprocess.run(
        [meson, "install", "-C", str(build), "--destdir", str(dest)],
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    return dest, setup.stdout + setup.stderr


def installed_files(dest: Path) -> set[str]:
    """Every file outside the Python packages, relative to the destdir."""
    return {
        "/" + str(p.relative_to(dest))
        for p in dest.rglob("*")
        if p.is_file() and "-packages" not in str(p)
    }


@pytest.fixture(scope="module")
def meson_destdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest, _ = meson_install(tmp_path_factory.mktemp("meson"), "--prefix=/opt/ka")
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
    assert {"keyagent/py.typed", "keyagentd/py.typed"} <= set(names)
    assert "keyagent-0.1.0.dist-info/licenses/LICENSE" in names
    assert {
        "keyagent-0.1.0.data/data/share/man/man1/keyagent.1",
        "keyagent-0.1.0.data/data/share/man/man8/keyagentd.8",
    } <= set(names)
    assert not [n for n in names if "dbus-1" in n or "systemd" in n or n.endswith(".pyc")]
    metadata = zipfile.ZipFile(wheel).read("keyagent-0.1.0.dist-info/METADATA").decode()
    headers = metadata.split("\n\n", 1)[0].splitlines()
    assert "License-Expression: MIT" in headers
    assert "License-File: LICENSE" in headers
    assert [h for h in headers if h.startswith("Project-URL: Source, https://")]
    assert "MIT License" in (ROOT / "LICENSE").read_text()
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
    assert (env_dir / "share" / "man" / "man8" / "keyagentd.8").is_file()
    # The dependencies, from the test venv, after the wheel's own packages.
    site = next(env_dir.glob("lib/python3*/site-packages"))
    (site / "deps.pth").write_text(next(p for p in sys.path if p.endswith("site-packages")))
    _pip_user_gets_a_verified_unit(env_dir, tmp_path / "user")
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


# -- packagers' directories ---------------------------------------------------------------------

SYSTEM_DIR_OPTIONS = {
    "dbus_services_dir": "/srv/dbus",
    "systemd_user_unit_dir": "/srv/units",
    "bash_completions_dir": "/srv/bash",
    "zsh_completions_dir": "/srv/zsh",
    "fish_completions_dir": "/srv/fish",
}


def test_meson_options_move_every_system_file(tmp_path: Path) -> None:
    opts = [f"-D{k}={v}" for k, v in SYSTEM_DIR_OPTIONS.items()]
    dest, _ = meson_install(tmp_path, "--prefix=/usr", *opts)
    files = installed_files(dest)
    assert {
        "/srv/dbus/org.example.KeyAgent.service",
        "/srv/units/keyagent.service",
        "/srv/bash/keyagent",
        "/srv/zsh/_keyagent",
        "/srv/fish/keyagent.fish",
    } <= files
    assert not [f for f in files if "completion" in f or "systemd" in f or "services" in f]


def test_meson_defaults_come_from_pkg_config(tmp_path: Path) -> None:
    # .pc files read by the real pkg-config; ${prefix} is to be read as our --prefix.
    pc = tmp_path / "pc"
    pc.mkdir()
    for name, var, value in [
        ("dbus-1", "session_bus_services_dir", "${prefix}/pc/dbus"),
        ("systemd", "systemduserunitdir", "${prefix}/pc/units"),
        ("bash-completion", "completionsdir", "/pc/bash"),
        ("fish", "completionsdir", "${prefix}/pc/fish"),
    ]:
        (pc / f"{name}.pc").write_text(
            f"prefix=/usr\n{var}={value}\nName: {name}\nDescription: x\nVersion: 1\n"
        )
    env = {**_tool_env(), "PKG_CONFIG_LIBDIR": str(pc), "PKG_CONFIG_PATH": ""}
    dest, _ = meson_install(tmp_path, "--prefix=/opt/ka", env=env)
    assert {
        "/opt/ka/pc/dbus/org.example.KeyAgent.service",
        "/opt/ka/pc/units/keyagent.service",
        "/pc/bash/keyagent",
        "/opt/ka/pc/fish/keyagent.fish",
    } <= installed_files(dest)


def _shell_search_path(argv: list[str]) -> list[str]:
    # XDG_DATA_DIRS as the spec's default: fish derives its vendor directories from it.
    env = {**os.environ, "XDG_DATA_DIRS": "/usr/local/share:/usr/share"}
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=30, env=env)
    return out.stdout.split()


@pytest.mark.skipif(not (have("zsh") and have("fish")), reason="needs zsh and fish")
@pytest.mark.parametrize("prefix", ["/usr", "/usr/local"])
def test_completions_land_where_the_real_shells_look(tmp_path: Path, prefix: str) -> None:
    dest, _ = meson_install(tmp_path, f"--prefix={prefix}")
    files = installed_files(dest)
    zsh_dir = next(str(Path(f).parent) for f in files if f.endswith("/_keyagent"))
    fish_dir = next(str(Path(f).parent) for f in files if f.endswith("/keyagent.fish"))
    assert zsh_dir in _shell_search_path(["zsh", "-fc", "print -l $fpath"])
    assert fish_dir in _shell_search_path(["fish", "-c", "string join \\n $fish_complete_path"])


# -- the oldest meson we claim --------------------------------------------------------------------


def claimed_meson_minimum() -> str:
    text = (ROOT / "meson.build").read_text()
    match = re.search(r"meson_version: '>=([\d.]+)'", text)
    assert match, "meson.build declares no meson_version"
    return match.group(1)


def test_pyproject_claims_the_same_meson_minimum() -> None:
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]
    assert f"meson>={claimed_meson_minimum()}" in build["requires"]


def test_current_meson_sees_no_feature_newer_than_the_minimum(tmp_path: Path) -> None:
    _, output = meson_install(tmp_path, "--prefix=/usr")
    assert "WARNING" not in output and "DEPRECATION" not in output, output


def oldest_meson() -> Path:
    """That meson release from PyPI, in a venv kept in the user's cache between runs."""
    version = claimed_meson_minimum()
    version = version if version.count(".") == 2 else version + ".0"
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    env_dir = cache / "keyagent-tests" / f"meson-{version}"
    meson = env_dir / "bin" / "meson"
    if not meson.exists():
        venv.create(env_dir, with_pip=False, clear=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "--python", str(env_dir / "bin" / "python"),
             "install", "-q", f"meson=={version}"],
            check=True, capture_output=True, timeout=300,
        )  # fmt: skip
    return meson


def test_oldest_claimed_meson_builds_and_installs(tmp_path: Path) -> None:
    meson = oldest_meson()
    version = subprocess.run([meson, "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.strip().startswith(claimed_meson_minimum())
    dest, output = meson_install(tmp_path, "--prefix=/usr", meson=str(meson))
    assert "WARNING" not in output, output
    files = installed_files(dest)
    for path in (
        "/usr/share/dbus-1/services/org.example.KeyAgent.service",
        "/usr/lib/systemd/user/keyagent.service",
        "/usr/share/man/man1/keyagent.1",
        "/usr/share/man/man8/keyagentd.8",
        "/usr/bin/keyagent",
        "/usr/bin/keyagentd",
    ):
        assert path in files, path
    site = next(dest.glob("usr/lib/python3*/*-packages"))
    assert (site / "keyagent" / "py.typed").is_file()


def _pip_user_gets_a_verified_unit(env_dir: Path, home: Path) -> None:
    """`keyagent install` from a pip install: its unit passes `systemd-analyze verify`, whose
    man: checks find the wheel's man pages beside bin/ on PATH (no MANPATH)."""
    env = {k: v for k, v in os.environ.items() if k not in {"MANPATH", "PYTHONPATH"}}
    env.update(
        PATH=f"{env_dir / 'bin'}:/usr/bin:/bin",
        XDG_DATA_HOME=str(home / "data"),
        XDG_CONFIG_HOME=str(home / "config"),
        XDG_RUNTIME_DIR=str(home),
        DBUS_SESSION_BUS_ADDRESS=f"unix:path={home / 'no-bus'}",
    )
    home.mkdir()
    run = {"env": env, "capture_output": True, "text": True, "timeout": 60, "check": False}
    out = subprocess.run([str(env_dir / "bin" / "keyagent"), "install"], **run)  # type: ignore[call-overload]
    assert out.returncode == 0, out.stderr
    unit = home / "config" / "systemd" / "user" / "keyagent.service"
    verify = subprocess.run(["systemd-analyze", "--user", "verify", str(unit)], **run)  # type: ignore[call-overload]
    assert (verify.returncode, verify.stderr) == (0, ""), verify.stderr


def test_make_dist_builds_the_sdist_and_a_wheel_from_it(tmp_path: Path) -> None:
    # -o: the venv counts as set up (this test runs inside it); dist/ goes to tmp_path.
    out = subprocess.run(
        ["make", "-o", ".venv/.installed", "dist", f"DIST={tmp_path}"],
        cwd=ROOT,
        env=_tool_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    with tarfile.open(tmp_path / "keyagent-0.1.0.tar.gz") as sdist:
        names = {n.split("/", 1)[1] for n in sdist.getnames() if "/" in n}
        pkg_info = sdist.extractfile("keyagent-0.1.0/PKG-INFO")
        assert pkg_info is not None and b"License-Expression: MIT" in pkg_info.read()
    for path in ("LICENSE", "meson.build", "meson_options.txt", "cli/keyagent/py.typed",
                 "data/keyagent.service.in", "data/keyagentd.8", "PKG-INFO"):  # fmt: skip
        assert path in names, path
    wheel = zipfile.ZipFile(tmp_path / "keyagent-0.1.0-py3-none-any.whl")
    assert "keyagent-0.1.0.data/data/share/man/man8/keyagentd.8" in wheel.namelist()
