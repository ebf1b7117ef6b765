"""Process hardening and caller facts, checked from outside the hardened process."""

from __future__ import annotations

import json
import os
import resource
import secrets
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from conftest import OTHER_UID, ROOT, as_other_user, requires_root
from keyagentd.hardening import (
    caller_comm,
    caller_executable,
    describe_caller,
    harden_process,
    has_capability,
    peer_credentials,
    peer_uid_of_socket,
    sanitize,
)

ENV = {**os.environ, "PYTHONPATH": f"{ROOT / 'service'}:{ROOT / 'cli'}"}
#: The venv's interpreter may live where another uid cannot go (a 0700 home): processes of
#: another uid use the system one, which is enough for the stdlib-only hardening module, with
#: a readable copy of our packages (the `other_user_pythonpath` fixture).
SYSTEM_PYTHON = "/usr/bin/python3"

REPORT = """
import json, resource
from keyagentd.hardening import harden_process, is_dumpable
def vmlck():
    for line in open('/proc/self/status'):
        if line.startswith('VmLck:'):
            return int(line.split()[1])
print(json.dumps({"before": is_dumpable(), "messages": harden_process(),
                  "after": is_dumpable(), "core": resource.getrlimit(resource.RLIMIT_CORE),
                  "vmlck_kib": vmlck()}), flush=True)
"""


def run_child(code: str, python: str = sys.executable, **kw: Any) -> dict[str, Any]:
    kw.setdefault("env", ENV)
    out = subprocess.run(  # type: ignore[call-overload]
        [python, "-c", code], capture_output=True, text=True, check=True, **kw
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def test_harden_process_clears_dumpable_and_core_limit() -> None:
    report = run_child(REPORT)
    assert report["before"] is True
    assert report["after"] is False
    assert report["core"] == [0, 0]
    messages = report["messages"]
    assert isinstance(messages, list) and len(messages) == 3
    assert any("not dumpable" in m for m in messages)
    assert any("core dumps disabled" in m for m in messages)


@requires_root
def test_privileged_process_locks_its_memory() -> None:
    # Root has CAP_IPC_LOCK: memory is locked (on fault) whatever RLIMIT_MEMLOCK says.
    assert has_capability(14)
    report = run_child(REPORT)
    assert any("memory locked" in m for m in report["messages"])
    assert isinstance(report["vmlck_kib"], int) and report["vmlck_kib"] > 0


def _small_memlock_other_user() -> None:
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (64 * 1024, 64 * 1024))
    as_other_user()


@requires_root
def test_memory_not_locked_under_a_finite_limit_says_so(other_user_pythonpath: str) -> None:
    report = run_child(
        REPORT,
        SYSTEM_PYTHON,
        preexec_fn=_small_memlock_other_user,
        cwd="/",
        env={**os.environ, "PYTHONPATH": other_user_pythonpath},
    )
    line = next(m for m in report["messages"] if "memory" in m)
    assert "memory not locked: RLIMIT_MEMLOCK is 64 KiB" in line
    assert "raise the memlock limit" in line
    assert report["vmlck_kib"] == 0
    assert report["after"] is False  # the rest of the hardening still applied


HOLD = """
import os, sys
from keyagentd.hardening import harden_process
if sys.argv[1] == "harden":
    harden_process(lock_memory=False)
os.environ["SECRET_MARKER"] = "x"
print("ready", flush=True)
sys.stdin.read()
"""


def _read_proc_as_other_user(pid: int) -> str:
    # Another process of the *same* uid tries what a debugger or memory scraper does.
    code = textwrap.dedent(
        f"""
        try:
            open('/proc/{pid}/environ', 'rb').read(1)
            print('readable')
        except PermissionError:
            print('denied')
        """
    )
    return subprocess.run(
        [SYSTEM_PYTHON, "-c", code],
        preexec_fn=as_other_user,
        cwd="/",
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


@requires_root
def test_same_uid_process_cannot_read_a_hardened_process(other_user_pythonpath: str) -> None:
    results = {}
    for mode in ("plain", "harden"):
        child = subprocess.Popen(
            [SYSTEM_PYTHON, "-c", HOLD, mode],
            env={**os.environ, "PYTHONPATH": other_user_pythonpath},
            preexec_fn=as_other_user,
            cwd="/",
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout is not None and child.stdout.readline() == "ready\n"
            results[mode] = _read_proc_as_other_user(child.pid)
        finally:
            child.kill()
            child.wait()
    assert results == {"plain": "readable", "harden": "denied"}


def test_peer_uid_of_socketpair_is_ours() -> None:
    a, b = socket.socketpair()
    with a, b:
        assert peer_uid_of_socket(a.fileno()) == os.getuid()
        creds = peer_credentials(b.fileno())
        assert creds is not None and creds.pid == os.getpid() and creds.gid == os.getgid()
        # The probe works on a duplicate: the caller's fd stays open and usable.
        a.sendall(b"x")
        assert b.recv(1) == b"x"


def test_peer_uid_is_none_for_non_sockets_and_unconnected_sockets(tmp_path: Path) -> None:
    r, w = os.pipe()
    try:
        assert peer_uid_of_socket(r) is None
    finally:
        os.close(r)
        os.close(w)
    with (tmp_path / "f").open("w") as f:
        assert peer_uid_of_socket(f.fileno()) is None
    with socket.socket(socket.AF_UNIX) as s:
        assert peer_uid_of_socket(s.fileno()) is None
    with socket.socket(socket.AF_INET) as s:
        assert peer_uid_of_socket(s.fileno()) is None
    assert peer_uid_of_socket(10_000) is None  # not an open fd


@requires_root
def test_peer_uid_of_another_user() -> None:
    address = "\0keyagent-test-" + secrets.token_hex(8)  # abstract: no directory permissions
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(address)
        server.listen(1)
        code = f"import socket; s=socket.socket(socket.AF_UNIX); s.connect({address!r}); s.recv(1)"
        child = subprocess.Popen([SYSTEM_PYTHON, "-c", code], preexec_fn=as_other_user, cwd="/")
        try:
            conn, _ = server.accept()
            with conn:
                assert peer_uid_of_socket(conn.fileno()) == OTHER_UID
                creds = peer_credentials(conn.fileno())
                assert creds is not None and creds.pid == child.pid
        finally:
            child.kill()
            child.wait()


def test_caller_executable_and_comm() -> None:
    assert caller_executable(os.getpid()) == os.path.realpath(sys.executable)
    child = subprocess.Popen(["sleep", "30"])
    try:
        deadline = time.monotonic() + 5
        while caller_executable(child.pid) != os.path.realpath("/usr/bin/sleep"):
            assert time.monotonic() < deadline, caller_executable(child.pid)
            time.sleep(0.01)
        assert caller_comm(child.pid) == "sleep"
        text = describe_caller(child.pid)
        assert text.startswith(f"sleep (pid {child.pid}, ")
        assert "sleep)" in text
    finally:
        child.kill()
        child.wait()
    # Gone, or no such pid at all.
    assert caller_executable(child.pid) is None
    assert caller_comm(child.pid) is None
    assert "gone or not readable" in describe_caller(child.pid)
    assert caller_executable(0) is None and caller_executable(-1) is None


def test_comm_is_sanitized_for_display() -> None:
    # A process chooses its own comm: it must not be able to inject lines into a prompt.
    code = (
        "import ctypes,sys; ctypes.CDLL(None).prctl(15, b'evil\\nAllow?\\x1b[2J', 0, 0, 0);"
        "print('ok', flush=True); sys.stdin.read()"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "ok\n"
        comm = caller_comm(child.pid)
        assert comm is not None and "\n" not in comm and "\x1b" not in comm
        assert comm.startswith("evil?Allow?")
    finally:
        child.kill()
        child.wait()
    assert sanitize("a" * 100, 10) == "a" * 9 + "…"
    assert sanitize("tab\there") == "tab?here"


def test_harden_in_process_is_idempotent_messages_only() -> None:
    # harden_process never raises; run in a child so this test process stays dumpable.
    report = run_child(
        "import json; from keyagentd.hardening import harden_process as h; "
        "h(lock_memory=False); print(json.dumps({'messages': h(lock_memory=False)}))"
    )
    assert len(report["messages"]) == 2
    assert harden_process is not None
