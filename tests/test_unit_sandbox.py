"""The systemd user unit's sandbox: only options a user manager enforces, and the agent works
inside them (MemoryDenyWriteExecute) or, for a user namespace, refuses rather than guesses."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from cli_support import PASSPHRASE, create_key, ka, ka_pw
from conftest import ROOT, TEST_AGENT_ARGS, BusFactory, PrivateBus, have

UNIT = ROOT / "data" / "keyagent.service.in"
PYTHON = os.path.realpath(sys.executable)  # what /proc/PID/exe shows for `keyagent`
PR_SET_MDWE, PR_GET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 66, 1

#: What a user manager enforces with no user namespace (seccomp, rlimits, the umask).
USER_MANAGER_SAFE = {
    "Type", "BusName", "ExecStart", "LimitCORE", "NoNewPrivileges", "LockPersonality",
    "MemoryDenyWriteExecute", "RestrictRealtime", "RestrictSUIDSGID", "SystemCallArchitectures",
    "UMask",
}  # fmt: skip


def unit_settings() -> tuple[list[str], dict[str, str]]:
    sections, settings = [], {}
    for line in UNIT.read_text().splitlines():
        if line.startswith("["):
            sections.append(line)
        elif "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            settings[key] = value
    return sections, settings


def test_unit_has_only_options_a_user_manager_enforces() -> None:
    sections, settings = unit_settings()
    assert sections == ["[Unit]", "[Service]"]  # no [Install]: D-Bus activation starts it
    service = {k: v for k, v in settings.items() if k not in {"Description", "Documentation"}}
    assert set(service) <= USER_MANAGER_SAFE, set(service) - USER_MANAGER_SAFE
    assert service["MemoryDenyWriteExecute"] == "yes"
    assert service["LimitCORE"] == "0"


def _agent_wrapper(bus: PrivateBus, prefix: str) -> Path:
    """Replace the bus's `keyagentd` so activation runs the agent under ``prefix``."""
    log = bus.tmp / "agent.log"
    args = shlex.join([sys.executable, "-m", "keyagentd", *TEST_AGENT_ARGS])
    wrapper = bus.bindir / "keyagentd"
    wrapper.write_text(f'#!/bin/sh\nexec 2>>{shlex.quote(str(log))}\nexec {prefix} {args} "$@"\n')
    return log


#: Turn on the kernel's MDWE (inherited through exec), check it took, then exec the agent.
MDWE_EXEC = f"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0) != 0 or \\
        libc.prctl({PR_GET_MDWE}, 0, 0, 0, 0) != {PR_MDWE_REFUSE_EXEC_GAIN}:
    sys.exit("MDWE did not take")
os.execv(sys.argv[1], sys.argv[1:])
"""


#: systemd <= 252's MemoryDenyWriteExecute= (seccomp-util.c), loaded with the system Python's
#: libseccomp bindings: no W+X mmap, no mprotect/pkey_mprotect to executable, no SHM_EXEC.
SECCOMP_EXEC = """
import os, sys, errno, seccomp
from seccomp import Arg, ERRNO, MASKED_EQ
W, X, SHM_EXEC = 0x2, 0x4, 0o100000
f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
f.add_rule(ERRNO(errno.EPERM), "mmap", Arg(2, MASKED_EQ, W | X, W | X))
for call in ("mprotect", "pkey_mprotect"):
    f.add_rule(ERRNO(errno.EPERM), call, Arg(2, MASKED_EQ, X, X))
f.add_rule(ERRNO(errno.EPERM), "shmat", Arg(2, MASKED_EQ, SHM_EXEC, SHM_EXEC))
f.load()
os.execv(sys.argv[1], sys.argv[1:])
"""
SYSTEM_PYTHON = "/usr/bin/python3"


def _has_seccomp_bindings() -> bool:
    probe = [SYSTEM_PYTHON, "-c", "import seccomp"]
    return os.access(SYSTEM_PYTHON, os.X_OK) and subprocess.run(probe, check=False).returncode == 0


def _mdwe_prefix(kind: str) -> str:
    """A command prefix that runs what follows under MDWE: the kernel's (what systemd >= 253
    uses on Linux >= 6.3) or systemd 252's seccomp filter."""
    if kind == "prctl":
        if not _kernel_has_mdwe():
            pytest.skip("kernel without PR_SET_MDWE (Linux < 6.3)")
        return shlex.join([sys.executable, "-c", MDWE_EXEC])
    if not _has_seccomp_bindings():
        pytest.skip("needs python3-seccomp (scripts/sysdeps.sh installs it)")
    return shlex.join([SYSTEM_PYTHON, "-c", SECCOMP_EXEC])


def _kernel_has_mdwe() -> bool:
    probe = "import ctypes,sys; sys.exit(ctypes.CDLL(None).prctl(66, 0, 0, 0, 0) < 0)"
    return subprocess.run([sys.executable, "-c", probe], check=False).returncode == 0


@pytest.mark.parametrize("kind", ["prctl", "seccomp"])
def test_mdwe_wrappers_really_forbid_writable_executable_memory(kind: str) -> None:
    prefix = _mdwe_prefix(kind)
    probe = "import mmap; mmap.mmap(-1, 4096, prot=7)"  # READ|WRITE|EXEC
    free = subprocess.run([sys.executable, "-c", probe], capture_output=True, check=False)
    assert free.returncode == 0
    fenced = subprocess.run(
        [*shlex.split(prefix), sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=False,
    )
    assert fenced.returncode == 1 and "PermissionError" in fenced.stderr, fenced.stderr


@pytest.mark.parametrize("kind", ["prctl", "seccomp"])
def test_agent_survives_memory_deny_write_execute(bus_factory: BusFactory, kind: str) -> None:
    prefix = _mdwe_prefix(kind)
    bus = bus_factory()
    log = _agent_wrapper(bus, prefix)
    # Argon2 (argon2-cffi), X25519 and ChaCha20 (cryptography), scrypt, the bus (dbus-fast).
    recipient = create_key(bus, "work")
    assert ka_pw(bus, [PASSPHRASE], "unlock", "work").returncode == 0
    sealed = ka(bus, "encrypt", "-r", recipient, "-a", input=b"under MDWE\n")
    assert sealed.returncode == 0, sealed.stderr
    plain = ka(bus, "decrypt", input=sealed.stdout)
    assert (plain.returncode, plain.stdout) == (0, b"under MDWE\n"), plain.stderr
    scrypt = ka_pw(bus, ["pw2", "pw2"], "encrypt", "-p", input=b"x")
    assert scrypt.returncode == 0, scrypt.stderr
    pid = bus.agent_pid()
    assert pid is not None
    assert "MDWE did not take" not in log.read_text()
    if kind == "seccomp":  # 2: a filter is loaded (the agent itself loads none)
        assert "Seccomp:\t2\n" in Path(f"/proc/{pid}/status").read_text()


@pytest.mark.skipif(not have("unshare"), reason="needs unshare (util-linux)")
@pytest.mark.parametrize("namespaced", [False, True])
def test_allowed_executables_in_a_user_namespace(bus_factory: BusFactory, namespaced: bool) -> None:
    """What PrivateUsers= does to the agent: its own uid and gid mapped to themselves."""
    bus = bus_factory()
    uid, gid = os.getuid(), os.getgid()
    prefix = f"unshare --user --map-user={uid} --map-group={gid}" if namespaced else ""
    log = _agent_wrapper(bus, prefix)
    config = Path(bus.env["XDG_CONFIG_HOME"]) / "keyagent" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text(f'[keys.work]\nallowed_executables = ["{PYTHON}"]\n')
    recipient = create_key(bus, "work")
    assert ka_pw(bus, [PASSPHRASE], "unlock", "work").returncode == 0
    sealed = ka(bus, "encrypt", "-r", recipient, input=b"hello\n").stdout
    out = ka(bus, "decrypt", input=sealed)
    pid = bus.agent_pid()
    assert pid is not None
    in_userns = os.readlink(f"/proc/{pid}/ns/user") != os.readlink("/proc/self/ns/user")
    assert in_userns == namespaced
    if not namespaced:
        assert (out.returncode, out.stdout) == (0, b"hello\n"), out.stderr
        assert "user namespace" not in log.read_text()
        return
    # Inside, /proc/PID/exe of a caller outside is unreadable: the policy must refuse, not guess,
    # and the agent says why at start-up.
    assert (out.returncode, out.stdout) == (4, b"")
    assert b"cannot be identified" in out.stderr
    assert "allowed_executables" in log.read_text() and "user namespace" in log.read_text()


@pytest.mark.parametrize("kind", ["prctl", "seccomp"])
def test_mdwe_does_not_break_ctypes_callbacks(kind: str) -> None:
    """The agent's ctypes use (prctl, mlockall, mallopt) has no callbacks, but if one is added:
    ctypes closures survive MDWE here (cffi's ABI-mode ffi.callback() does not)."""
    prefix = _mdwe_prefix(kind)
    probe = (
        "import ctypes; CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)\n"
        "a = (ctypes.c_int * 3)(3, 1, 2)\n"
        "ctypes.CDLL(None).qsort(a, 3, 4, CB(lambda x, y: ctypes.cast(x, ctypes.POINTER("
        "ctypes.c_int))[0] - ctypes.cast(y, ctypes.POINTER(ctypes.c_int))[0]))\n"
        "print(list(a))"
    )
    r = subprocess.run(
        [*shlex.split(prefix), sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (r.returncode, r.stdout) == (0, "[1, 2, 3]\n"), r.stderr
